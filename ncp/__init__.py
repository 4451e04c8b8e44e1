"""ncp-vae: noise contrastive priors for VAEs (Aneja et al., NeurIPS 2021), stage by stage.

Stages (one module each, run by `ncp <stage>`): prepare_data, train_vae, cache_latents, train_nce,
sample, evaluate, tables. Libraries: models/ (backbones), priors/ (classifiers and the NCP prior),
samplers/ (SIR, Langevin dynamics), metrics/ (FID, MMD, NLL, log Z), data/.
"""

__version__ = "0.1.0"
