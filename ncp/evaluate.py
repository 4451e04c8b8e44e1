"""Stage 4 (`ncp evaluate <metric>`): FID/KID, latent MMD, test NLL and Fig. 4's neighbours.

The features they compare against are stage 4a's (`ncp evaluate features`, ncp/evaluate_features.py).

- fid: FID and KID of each sampler's images, and of reconstructions (z ~ q instead of the prior:
  the paper's "Recon" rows), against the reference; FID's spread bootstraps both sides, KID's is the
  std over clean-fid's subsets.
- mmd: per group, MMD^2 between q(z_k) and p(z_k), and between q(z_k) and p_NCP(z_k) (paper Table 9);
  q is encoded from the test split, which neither the VAE nor the classifiers saw.
- nll: importance-weighted test NLL of the base VAE and of NCP-VAE (prior p r / Z, log Z estimated
  under several seeds), and their paired difference with log Z's error in quadrature.

- neighbours: Fig. 4, NCP samples beside their nearest training images.

Every metrics file carries a ``provenance`` block (ncp/provenance.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ncp import model_origin
from ncp.config import ExperimentConfig
from ncp.data import float_to_uint8, iterate_batches, load_image_set
from ncp.evaluate_features import feature_net_label, load_feature_net
from ncp.metrics.fid import (
    compute_features,
    fid_against_reference,
    load_reference_features,
)
from ncp.metrics.log_z import estimate_log_z_over_seeds
from ncp.metrics.mmd import encode_latents, latent_mmd, ncp_closer_counts
from ncp.metrics.nll import importance_weighted_nll, paired_difference
from ncp.models.registry import load_vae_checkpoint
from ncp.priors.checkpoints import load_ncp_prior
from ncp.provenance import with_provenance
from ncp.runtime import load_torch, pick_device, seed_everything, write_json


@torch.no_grad()
def reconstructions(model, images: torch.Tensor, binary: bool, batch_size: int, seed: int) -> torch.Tensor:
    """uint8 decoder means for z ~ q(z | x) of the given images (the "Recon" rows)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    for x in iterate_batches(images, batch_size, shuffle=False, generator=generator, binary=binary):
        logits = model(x.to(device), noise_scale=1.0).logits
        out.append(float_to_uint8(model.mean_image(logits)).cpu())
    return torch.cat(out)


def evaluate_fid(
    cfg: ExperimentConfig,
    reference_path: Path,
    samples: Sequence[Path],
    checkpoint: Path | None,
    train_data: Path | None,
    out: Path,
) -> None:
    """FID/KID (with bootstrap spread) of every sample file and, given the checkpoint, of reconstructions."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed + 13)
    kind = cfg.evaluate.fid.features
    reference = load_reference_features(reference_path)
    if reference.dataset not in (None, cfg.data.name):
        raise ValueError(
            f"{reference_path} holds reference features of {reference.dataset}, but this run's data.name is "
            f"{cfg.data.name}: rerun `ncp evaluate features` on this run's training data"
        )
    feature_net = load_feature_net(kind, reference_path, device)
    # the paper reports no spread; ours resamples both sides, and KID's comes from its subsets
    spread_settings = {
        "num_bootstrap": cfg.evaluate.fid.bootstrap,
        "kid_subsets": cfg.evaluate.fid.kid_subsets,
    }
    methods, sampling = {}, {}
    for path in samples:
        drawn = load_torch(path)
        feats = compute_features(drawn["images"], feature_net, desc=f"features {drawn['method']}")
        result = fid_against_reference(feats, reference, feature_net.name, seed=cfg.seed, **spread_settings)
        methods[drawn["method"]] = result.to_dict()
        sampling[drawn["method"]] = {
            key: drawn.get(key)
            for key in (
                "sampler",
                "setting",
                "seconds_per_image",
                "peak_memory_bytes",
                "memory_kind",
                "time_1_s",
                "time_10_s",
                "peak_memory_10_bytes",
                "diagnostics",
                "model_origin",
            )
        } | {"num_samples": len(drawn["images"])}
    num_samples = min(
        s["num_samples"] for s in sampling.values()
    )  # the images scored (a Table 8 sweep may draw fewer)
    if checkpoint is not None:  # the Table 8 sweep scores samples only
        model = load_vae_checkpoint(checkpoint, device)
        train = load_image_set(train_data)
        recon = reconstructions(
            model, train.images[:num_samples], train.binary, cfg.sample.batch_size, cfg.seed
        )
        methods["recon"] = fid_against_reference(
            compute_features(recon, feature_net, desc="features recon"),
            reference,
            feature_net.name,
            seed=cfg.seed,
            **spread_settings,
        ).to_dict()
    record = {
        "features": feature_net_label(kind, reference_path),
        "feature_net": feature_net.name,
        "num_samples": num_samples,
        "num_reference": reference.num_images,
        "bootstrap": cfg.evaluate.fid.bootstrap,
        "spread": "FID: std over bootstrap resamples of the generated and the reference features; "
        "KID: std over clean-fid's random subsets",
        "methods": methods,
        "sampling": sampling,
        "model_origin": model_origin.merge(s.get("model_origin") for s in sampling.values()),
    }
    write_json(with_provenance(record, "evaluate fid", cfg, cfg.seed, device), out)


def held_out_q_latents(
    cfg: ExperimentConfig, checkpoint: Path, test_data: Path
) -> tuple[list[torch.Tensor], dict]:
    """Per group, z_k ~ q(z_k | z_<k, x) for test images x: the classifiers were trained on latents of the
    training split only (`cache-latents`), so Table 9's q must not come from there. The test split is used
    rather than a reserved part of the training split because it is held out from the VAE and from stage 2
    alike and needs no change to their data."""
    model = load_vae_checkpoint(checkpoint, pick_device(cfg.device))
    test = load_image_set(test_data)
    num_q = cfg.evaluate.mmd.num_q or len(test.images)
    generator = torch.Generator().manual_seed(cfg.seed + 23)
    latents = encode_latents(model, test, num_q, cfg.sample.batch_size, generator)
    source = {
        "q_source": "test split, encoded with noise 1 (held out from the VAE and the classifiers)",
        "num_test_images": len(test.images),
        "q_passes": -(-num_q // len(test.images)),
    }
    return latents, source


def mmd_populations(cfg: ExperimentConfig, samples: Sequence[Path]) -> tuple[str, dict, dict]:
    """(NCP method, base prior's sample record, NCP sampler's record), checked to hold enough images."""
    by_method = {load_torch(path)["method"]: path for path in samples}
    ncp_method = "sir" if "sir" in by_method else next((m for m in by_method if m != "base"), None)
    if ncp_method is None or "base" not in by_method:
        raise ValueError("MMD needs the base prior's samples and one NCP sampler's samples")
    base, ncp = load_torch(by_method["base"]), load_torch(by_method[ncp_method])
    n = cfg.evaluate.mmd.num_samples
    held = min(len(base["latents"][0]), len(ncp["latents"][0]))
    if held < n:
        raise ValueError(
            f"evaluate.mmd.num_samples is {n} but the sample files hold {held} images: "
            f"raise sample.num_samples or lower evaluate.mmd.num_samples"
        )
    return ncp_method, base, ncp


def evaluate_mmd(
    cfg: ExperimentConfig, checkpoint: Path, test_data: Path, samples: Sequence[Path], out: Path
) -> None:
    """Per group: MMD^2(q, p) and MMD^2(q, p_NCP) at shared bandwidths, with standard errors (paper Table 9);
    q from held-out test images (see ``held_out_q_latents``)."""
    seed_everything(cfg.seed + 29)
    populations = mmd_populations(cfg, samples)  # fails before any encoding
    q_latents, q_source = held_out_q_latents(cfg, checkpoint, test_data)
    write_mmd(cfg, q_latents, q_source, populations, out)


def write_mmd(
    cfg: ExperimentConfig,
    q_latents: Sequence[torch.Tensor],
    q_source: dict,
    populations: tuple[str, dict, dict],
    out: Path,
) -> None:
    """Table 9's record from q's latents per group and the samplers' latents (see ``mmd_populations``)."""
    ncp_method, base, ncp = populations
    mmd, n = cfg.evaluate.mmd, cfg.evaluate.mmd.num_samples
    per_group = []
    for k, z_q in enumerate(q_latents):
        result = latent_mmd(
            z_q.float(),
            base["latents"][k][:n].float(),
            ncp["latents"][k][:n].float(),
            pca_dim=mmd.pca_dim,
            bandwidth_scales=mmd.bandwidth_scales,
            seed=cfg.seed,
        )
        headline = result.headline
        per_group.append(
            {
                "group": k,
                "dim": result.latent_dim,
                "bandwidth": headline["bandwidth"],
                "q_p": headline["mmd2_q_p"],
                "q_p_se": headline["mmd2_q_p_se"],
                "q_pncp": headline["mmd2_q_ncp"],
                "q_pncp_se": headline["mmd2_q_ncp_se"],
                "z_score": headline["z_score"],
                **result.to_dict(),
            }
        )

    record = {
        "num_samples": n,
        "num_q": per_group[0]["num_q"],
        **q_source,
        "ncp_method": ncp_method,
        "estimator": "unbiased MMD^2, Gaussian kernel",
        "bandwidth": "median heuristic on pooled q and p, times each scale; the headline is scale 1",
        "standard_error": "first-order (Hoeffding) plug-in, as Bounliphone et al. 2016; conservative where "
        "two populations are the same distribution",
        "z_score": "(MMD^2(q, p) - MMD^2(q, p_NCP)) / its standard error: > 2 means p_NCP is closer to q",
        "ncp_closer": ncp_closer_counts(per_group),
        "model_origin": model_origin.merge([base.get("model_origin"), ncp.get("model_origin")]),
        "per_group": per_group,
    }
    write_json(with_provenance(record, "evaluate mmd", cfg, cfg.seed, pick_device(cfg.device)), out)


def evaluate_nll(
    cfg: ExperimentConfig, checkpoint: Path, classifier_files: Sequence[Path], test_data: Path, out: Path
) -> None:
    """Test NLL in nats: base prior, and NCP prior with log Z estimated by Monte Carlo through the hierarchy
    under ``evaluate.nll.log_z_seeds`` seeds; and the paired difference base - NCP with its full error."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed + 17)
    model = load_vae_checkpoint(checkpoint, device)
    ncp_prior = load_ncp_prior(classifier_files, device, vae_checkpoint=checkpoint)
    test = load_image_set(test_data)
    images = (
        test.images if cfg.evaluate.nll.num_images is None else test.images[: cfg.evaluate.nll.num_images]
    )
    ev = cfg.evaluate.nll
    log_z = estimate_log_z_over_seeds(
        model,
        ncp_prior,
        ev.log_z_samples,
        seeds=[cfg.seed + 1000 * (i + 1) for i in range(ev.log_z_seeds)],
        batch_size=min(ev.log_z_samples, 1000),
    )
    seed_everything(cfg.seed + 17)  # the IW estimates do not depend on how many log Z seeds ran
    num_dims = model.scored_dims()  # e.g. MNIST's central 28x28: bits/dim over 784 pixels
    results = {}
    for name, log_r_fn, z in (("base", None, 0.0), ("ncp", ncp_prior.sum_log_r, log_z.pooled.log_z)):
        generator = torch.Generator().manual_seed(cfg.seed + 19) if test.binary else None
        with torch.no_grad():
            results[name] = importance_weighted_nll(
                model,
                images,
                ev.iw_samples,
                ev.batch_size,
                log_r_fn=log_r_fn,
                log_z=z,
                binarize_generator=generator,
                num_dims=num_dims,
                desc=f"NLL {name}",
            )
    difference = paired_difference(results["base"], results["ncp"], log_z.std_error)
    ncp_record = results["ncp"].to_dict()
    ncp_record["std_error_images"] = ncp_record["std_error"]
    ncp_record["std_error"] = math.hypot(ncp_record["std_error"], log_z.std_error)
    record = {
        "base": results["base"].to_dict(),
        "ncp": ncp_record,
        "base_minus_ncp": difference.to_dict(),
        "log_z": log_z.pooled.log_z,
        "log_z_se": log_z.std_error,
        "log_z_ess": log_z.pooled.ess,
        "log_z_samples": log_z.pooled.num_samples,
        "log_z_seeds": log_z.to_dict(),
        "indicative_only": bool(log_z.warnings()),
        "warnings": log_z.warnings(),
        "iw_samples": ev.iw_samples,
        "num_images": len(images),
        "note": "NCP NLL = -(IW bound with prior p r) + log Z; with Z estimated it is an estimate, not a bound. "
        "ncp.std_error includes log Z's error in quadrature (ncp.std_error_images: the images' alone)",
        "paired": "both priors see the same binarisations of the test images; base_minus_ncp is the mean "
        "per-image difference, its error the images' in quadrature with log Z's",
        "log_z_error": "log_z_se = the larger of the delta-method error and the seeds' std / sqrt(seeds)",
        "model_origin": model_origin.checkpoint_origin(model, checkpoint),
    }
    write_json(with_provenance(record, "evaluate nll", cfg, cfg.seed, device), out)
    flag = f" [indicative only: {'; '.join(log_z.warnings())}]" if log_z.warnings() else ""
    print(
        f"NLL base {results['base'].nats:.3f}, NCP {results['ncp'].nats:.3f} nats; base - NCP "
        f"{difference.nats:.3f} +- {difference.std_error:.3f}; log Z = {log_z.pooled.log_z:.4f} +- "
        f"{log_z.std_error:.4f} (seed std {log_z.seed_std:.3f}){flag}"
    )


def write_neighbours(cfg: ExperimentConfig, samples: Sequence[Path], train_data: Path, out: Path) -> None:
    """Fig. 4: the first samples of ``samples[0]`` beside their nearest training images."""
    from ncp.metrics.neighbours import write_neighbour_figure

    settings = cfg.evaluate.neighbours
    record = write_neighbour_figure(
        samples[0],
        train_data,
        out,
        num_queries=settings.num_queries,
        num_neighbours=settings.num_neighbours,
        resize=settings.resize,
        crop=settings.crop,
        seed=cfg.seed,
    )
    print(f"nearest neighbours: {record}")


def run(
    metric: str,
    cfg: ExperimentConfig,
    *,
    out: Path,
    checkpoint: Path | None = None,
    train_data: Path | None = None,
    test_data: Path | None = None,
    features: Path | None = None,
    samples: Sequence[Path] = (),
    classifiers: Sequence[Path] = (),
) -> None:
    """Dispatch one metric; each needs only some of the paths."""

    def need(**paths):
        missing = [f"--{name.replace('_', '-')}" for name, value in paths.items() if not value]
        if missing:
            raise ValueError(f"`ncp evaluate {metric}` needs {', '.join(missing)}")

    if metric == "fid":
        need(features=features, samples=samples)
        if checkpoint is not None:
            need(train_data=train_data)
        evaluate_fid(cfg, features, samples, checkpoint, train_data, out)
    elif metric == "neighbours":
        need(samples=samples, train_data=train_data)
        write_neighbours(cfg, samples, train_data, out)
    elif metric == "mmd":
        need(checkpoint=checkpoint, test_data=test_data, samples=samples)
        evaluate_mmd(cfg, checkpoint, test_data, samples, out)
    elif metric == "nll":
        need(checkpoint=checkpoint, classifiers=classifiers, test_data=test_data)
        evaluate_nll(cfg, checkpoint, classifiers, test_data, out)
    else:
        raise ValueError(f"unknown metric {metric!r}")
