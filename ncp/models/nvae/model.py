"""NVAE (Vahdat & Kautz 2020): a hierarchical VAE with convolutional latent groups, re-implemented with
NVAE's parameter names so that official checkpoints load strictly.

Bottom-up: x -> stem -> pre-process cells -> encoder tower, whose features at each group position are
kept for the top-down pass. Top-down: the decoder state s starts from the learned ``prior_ftr0``; for each
group k (coarsest first) the prior p(z_k | z_<k) comes from s (k = 0: a fixed Normal), z_k is picked
(from the posterior in ``forward``, from the prior when sampling), and a combiner feeds z_k into s.
Post-process cells turn the final s into the decoder's output parameters. The decoder state s in front
of group k's prior is the context c(z_<k) stage 2 conditions on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Independent

from ncp.models.base import GroupDraw, GroupSampler, PriorWalk, VAEOutput, sample_from_prior
from ncp.models.nvae.cells import DecCombinerCell, EncCombinerCell
from ncp.models.nvae.config import (
    ARCH_CELLS,
    CHANNEL_MULT,
    NVAE_DEFAULT_ARGS,
    NVAEConfig,
    split_training_flags,
)
from ncp.models.nvae.distributions import (
    DiscretizedLogisticMixture,
    bernoulli_log_prob,
    check_unit_interval,
    normal_decoder,
    normal_decoder_log_prob,
    normal_kl,
    nvae_normal,
    quantize_bits,
    sample_with_noise,
)
from ncp.models.nvae.layers import PlainConv2d, WeightNormConv2d
from ncp.models.nvae.regularizers import (
    SpectralNormEstimator,
    balanced_kl,
    batchnorm_loss,
    kl_balance_alpha,
)
from ncp.models.nvae.towers import (
    build_decoder_tower,
    build_encoder_tower,
    build_post_process,
    build_pre_process,
    build_samplers,
)

# Internal rule of the top-down walk: (group k, raw prior mean, raw prior log-std, context or None) -> z_k.
# Raw means before NVAE's soft clamp, which the residual posterior needs.
LatentPicker = Callable[[int, Tensor, Tensor, Tensor | None], Tensor]


class NVAE(nn.Module):
    """NVAE's AutoEncoder implementing the LatentVAE contract (ncp.models.base)."""

    config_class = NVAEConfig

    def __init__(self, config: NVAEConfig, args: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.args = dict(args) if args is not None else {}  # NVAE's flags, enough to rebuild the model
        c = config
        arch = ARCH_CELLS[c.arch_instance]
        top_side = c.decoder_scale_side(0)
        # Registration order below is NVAE's, so state_dict() lists entries in the same order.
        self.prior_ftr0 = nn.Parameter(torch.rand(c.decoder_scale_channels(0), top_side, top_side))
        self.stem = WeightNormConv2d(c.input_channels, c.num_channels_enc, 3, padding=1, bias=True)
        self.pre_process, mult = build_pre_process(c, arch, mult=1)
        self.enc_tower = nn.ModuleList() if c.is_vanilla else build_encoder_tower(c, arch, mult)
        mult = c.top_channel_mult
        top_enc = int(c.num_channels_enc * mult)
        self.enc0 = nn.Sequential(nn.ELU(), WeightNormConv2d(top_enc, top_enc, 1, bias=True), nn.ELU())
        self.enc_sampler, self.dec_sampler, self.nf_cells = build_samplers(c)
        if c.is_vanilla:
            self.stem_decoder = WeightNormConv2d(
                c.num_latent_per_group, int(mult * c.num_channels_enc), 1, bias=True
            )
        else:
            self.dec_tower = build_decoder_tower(c, arch)
            mult = mult / CHANNEL_MULT ** (c.num_latent_scales - 1)
        self.post_process, mult = build_post_process(c, arch, mult)
        self.image_conditional = nn.Sequential(
            nn.ELU(),
            WeightNormConv2d(int(c.num_channels_dec * mult), c.output_channels, 3, padding=1, bias=True),
        )
        self._spectral_norm = SpectralNormEstimator(num_power_iter=4)

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> NVAE:
        """Build from NVAE's architecture flags (a dict); missing flags get NVAE's defaults, unknown
        ones are an error (an official checkpoint's training flags: ``from_official_args``)."""
        config = NVAEConfig.from_args(args)
        return cls(config, {**NVAE_DEFAULT_ARGS, **{k: v for k, v in args.items() if v is not None}})

    @classmethod
    def from_official_args(cls, args: Mapping[str, Any]) -> tuple[NVAE, list[str]]:
        """Build from an official checkpoint's whole argparse Namespace (as a dict): the training flags
        are dropped, and their names returned so the caller can say so."""
        architecture, training = split_training_flags(args)
        return cls.from_args(architecture), sorted(training)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> NVAE:
        """An official NVAE checkpoint, rebuilt from its args, loaded strictly, in eval mode."""
        from ncp.models.nvae.checkpoint import load_nvae_checkpoint

        args, state_dict = load_nvae_checkpoint(path)
        model, _ = cls.from_official_args(args)
        model.load_state_dict(state_dict, strict=True)
        return model.eval()

    @classmethod
    def config_from_params(cls, section: Mapping[str, Any], data_name: str) -> NVAEConfig:
        """The typed config of the params' ``vae.nvae``, NVAE's dataset name taken from ``data.name``."""
        return NVAEConfig.from_params(section, data_name)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NVAE:
        """Build from ``dataclasses.asdict`` of an NVAEConfig or a checkpoint's arch_args (= from_args)."""
        return cls.from_args(config)

    # ---- the latent hierarchy -------------------------------------------------------------------
    @property
    def num_groups(self) -> int:
        """Number of latent groups K."""
        return self.config.num_groups

    def group_shapes(self) -> list[tuple[int, ...]]:
        """(C_z, H_k, W_k) of every group, coarsest first."""
        c = self.config
        return [
            (c.num_latent_per_group, c.decoder_scale_side(s), c.decoder_scale_side(s))
            for s in c.group_scales()
        ]

    def context_shapes(self) -> list[tuple[int, ...] | None]:
        """Shape of the decoder state feeding each group's prior; None for group 0 (fixed prior)."""
        c = self.config
        shapes: list[tuple[int, ...] | None] = [None]
        for s in c.group_scales()[1:]:
            shapes.append((c.decoder_scale_channels(s), c.decoder_scale_side(s), c.decoder_scale_side(s)))
        return shapes

    def _bottom_up(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Encoder: (top feature, encoder features at the combiner slots in decoder order)."""
        state = self.stem(2 * x - 1.0)
        for cell in self.pre_process:
            state = cell(state)
        slot_features = []
        for cell in self.enc_tower:
            if isinstance(cell, EncCombinerCell):
                slot_features.append(state)  # the combiner itself runs top-down, once s is known
            else:
                state = cell(state)
        return state, slot_features[::-1]  # deepest slot pairs with decoder group 1 (ladder structure)

    def _top_down(
        self, batch_size: int, pick: LatentPicker, last_group: int | None = None
    ) -> tuple[Tensor | None, list[Tensor], list[Tensor | None]]:
        """The decoder walk shared by forward and sampling: (output parameters, z per group, contexts).
        With ``last_group`` the walk stops once that group is picked (output parameters None): nothing
        below it is needed to know z_<=k, and on a 36-group model most cells lie below most groups."""
        latents: list[Tensor] = []
        contexts: list[Tensor | None] = []

        def visit(k: int, state: Tensor | None) -> Tensor:
            if k == 0:
                zeros = self.prior_ftr0.new_zeros(batch_size, *self.group_shapes()[0])  # (B, C_z, H, W)
                z = pick(0, zeros, zeros, None)
            else:
                mu, log_sigma = torch.chunk(self.dec_sampler[k - 1](state), 2, dim=1)  # (B, C_z, H, W) each
                z = pick(k, mu, log_sigma, state)
            latents.append(z)
            contexts.append(None if k == 0 else state)
            return z

        if self.config.is_vanilla:
            z = visit(0, None)
            if last_group == 0:
                return None, latents, contexts
            state = self.stem_decoder(z)
        else:
            state = self.prior_ftr0.unsqueeze(0).expand(batch_size, -1, -1, -1)  # (B, C, H, W)
            k = 0
            for cell in self.dec_tower:
                if isinstance(cell, DecCombinerCell):
                    z = visit(k, state)
                    if k == last_group:
                        return None, latents, contexts
                    state = cell(state, z)
                    k += 1
                else:
                    state = cell(state)
        for cell in self.post_process:
            state = cell(state)
        return self.image_conditional(state), latents, contexts

    def _apply_flows(self, k: int, z: Tensor) -> Tensor:
        """Group k's flow cells (shift-only, so log q is unchanged)."""
        for flow in self.nf_cells[k * self.config.num_nf : (k + 1) * self.config.num_nf]:
            z = flow(z)
        return z

    def forward(self, x: Tensor, noise_scale: float = 1.0) -> VAEOutput:
        """Encode x (B, C, H, W) in [0, 1], draw each z_k = mu_q + noise_scale * sigma_q * eps (0: the mean),
        decode. kl[:, k] is analytic, or log q - log p at the post-flow z when flows are used."""
        return self._posterior_pass(x, noise_scale)

    def posterior_group(self, x: Tensor, group: int, noise_scale: float = 1.0) -> GroupDraw:
        """forward's z_group, its prior and context, with the walk stopped after that group: the same
        values as forward's under the same seed (the draws of z_<=k come in the same order)."""
        if not 0 <= group < self.num_groups:
            raise ValueError(f"group {group} out of range for a VAE with {self.num_groups} groups")
        output = self._posterior_pass(x, noise_scale, last_group=group)
        return GroupDraw(output.latents[group], output.contexts[group], output.priors[group])

    def _posterior_pass(self, x: Tensor, noise_scale: float, last_group: int | None = None) -> VAEOutput:
        """forward, or with ``last_group`` its groups up to that one (logits None, kl and log q / log p
        over those groups only)."""
        self._check_images(x)
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        top_feature, slot_features = self._bottom_up(quantize_bits(x, self.config.num_x_bits))
        combiners = [cell for cell in self.enc_tower if isinstance(cell, EncCombinerCell)][::-1]
        log_q, log_p, kl, priors = [], [], [], []

        def posterior(k: int, mu_p: Tensor, log_sigma_p: Tensor, context: Tensor | None) -> Tensor:
            feature = self.enc0(top_feature) if k == 0 else combiners[k - 1](slot_features[k - 1], context)
            mu_q, log_sigma_q = torch.chunk(self.enc_sampler[k](feature), 2, dim=1)
            if k > 0 and self.config.res_dist:  # residual posterior: q's parameters are offsets from p's
                mu_q, log_sigma_q = mu_p + mu_q, log_sigma_p + log_sigma_q
            q, p = nvae_normal(mu_q, log_sigma_q), nvae_normal(mu_p, log_sigma_p)
            z = sample_with_noise(q, noise_scale)
            log_q_z = q.log_prob(z)  # (B, C_z, H, W)
            z = self._apply_flows(k, z)
            log_p_z = p.log_prob(z)
            kl_z = log_q_z - log_p_z if self.config.num_nf > 0 else normal_kl(q, p)
            log_q.append(log_q_z.sum(dim=[1, 2, 3]))
            log_p.append(log_p_z.sum(dim=[1, 2, 3]))
            kl.append(kl_z.sum(dim=[1, 2, 3]))
            priors.append(Independent(p, 3, validate_args=False))
            return z

        logits, latents, contexts = self._top_down(x.size(0), posterior, last_group)
        return VAEOutput(
            logits=logits,
            log_q=torch.stack(log_q, 1).sum(1),
            log_p=torch.stack(log_p, 1).sum(1),
            kl=torch.stack(kl, dim=1),
            latents=latents,
            contexts=contexts,
            priors=priors,
        )

    def walk_prior(self, num_images: int, choose: GroupSampler, temperature: float = 1.0) -> PriorWalk:
        """Ancestral sampling: p(z_k | z_<k) with every std scaled by ``temperature`` (group 0 included, as
        NVAE), z_k = choose(k, prior, context); flows are not used (NVAE samples without them)."""
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        shapes = self.group_shapes()

        def from_prior(k: int, mu: Tensor, log_sigma: Tensor, context: Tensor | None) -> Tensor:
            prior = Independent(nvae_normal(mu, log_sigma, temperature), 3, validate_args=False)
            z = choose(k, prior, context)
            if tuple(z.shape) != (num_images, *shapes[k]):
                raise ValueError(
                    f"group {k}: chosen z has shape {tuple(z.shape)}, expected {(num_images, *shapes[k])}"
                )
            return z

        logits, latents, contexts = self._top_down(num_images, from_prior)
        return PriorWalk(logits=logits, latents=latents, contexts=contexts)

    def sample(self, num_images: int, temperature: float = 1.0) -> Tensor:
        """Decoder output parameters for images drawn from the prior at ``temperature``."""
        return self.walk_prior(num_images, sample_from_prior, temperature).logits

    # ---- the image likelihood -------------------------------------------------------------------
    def _check_images(self, x: Tensor) -> None:
        c = self.config
        expected = (c.input_channels, c.input_size, c.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"NVAE expects images (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        check_unit_interval(x)

    def log_px(self, logits: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) per image, (B,), summed over the scored pixels (the central 28x28 for MNIST)."""
        self._check_images(x)
        c = self.config
        x = quantize_bits(x, c.num_x_bits)
        if c.likelihood == "bernoulli":
            per_pixel = bernoulli_log_prob(logits, x)  # (B, C, H, W)
        elif c.likelihood == "dmol":
            per_pixel = DiscretizedLogisticMixture(logits, c.num_mixture_dec, c.num_x_bits).log_prob(
                x
            )  # (B, H, W)
        else:
            per_pixel = normal_decoder_log_prob(logits, x)  # (B, C, H, W)
        crop = c.likelihood_crop
        if crop:
            per_pixel = per_pixel[..., crop:-crop, crop:-crop]
        return per_pixel.flatten(1).sum(dim=1)

    def mean_image(self, logits: Tensor) -> Tensor:
        """The decoder's mean image (B, C, H, W) in [0, 1] (NVAE's DMOL mean for colour, used for FID)."""
        c = self.config
        if c.likelihood == "bernoulli":
            return torch.sigmoid(logits)
        if c.likelihood == "dmol":
            return DiscretizedLogisticMixture(logits, c.num_mixture_dec, c.num_x_bits).mean()
        return torch.clamp(normal_decoder(logits).loc, -1.0, 1.0) / 2.0 + 0.5

    def sample_image(self, logits: Tensor, temperature: float = 1.0) -> Tensor:
        """A pixel sample from the decoder (B, C, H, W) in [0, 1]; ``temperature`` scales the DMOL and
        Normal noise (NVAE's Normal decoder ignores it)."""
        c = self.config
        if c.likelihood == "bernoulli":
            return torch.bernoulli(torch.sigmoid(logits))
        if c.likelihood == "dmol":
            return DiscretizedLogisticMixture(logits, c.num_mixture_dec, c.num_x_bits).sample(temperature)
        decoder = normal_decoder(logits)
        values = decoder.loc + temperature * decoder.scale * torch.randn_like(decoder.loc)
        return torch.clamp(values, -1.0, 1.0) / 2.0 + 0.5

    # ---- training terms -------------------------------------------------------------------------
    def spectral_loss(self) -> Tensor:
        """Sum of spectral norms of every conv kernel (power iteration with persistent vectors)."""
        kernels = [
            m.normalized_weight() for m in self.modules() if isinstance(m, (WeightNormConv2d, PlainConv2d))
        ]
        return self._spectral_norm(kernels)

    def batchnorm_loss(self) -> Tensor:
        """Sum of max |gamma| over BatchNorm layers."""
        return batchnorm_loss(self)

    def kl_alpha(self, scheme: str = "square") -> Tensor:
        """Per-group alpha_k of NVAE's KL balancing, (K,), on the model's device."""
        return kl_balance_alpha(self.config.groups_per_decoder_scale, scheme).to(self.prior_ftr0.device)

    def kl_term(self, kl_per_group: Tensor, beta: float, balance: bool) -> Tensor:
        """beta * sum_k gamma_k KL_k per image, (B,): with ``balance``, NVAE's balancing coefficients
        gamma_k while beta < 1 (from this batch, per process, as NVAE's kl_balancer), else gamma_k = 1."""
        if balance:
            return beta * balanced_kl(kl_per_group, self.kl_alpha(), beta)
        return beta * kl_per_group.sum(dim=1)

    def regulariser(self) -> Tensor:
        """NVAE's smoothness term, spectral + BatchNorm (its weight is vae.train.weight_decay_norm)."""
        return self.spectral_loss() + self.batchnorm_loss()

    def scored_dims(self) -> int:
        """Values log p(x|z) scores per image (bits/dim divide by it): the central 28x28 for MNIST."""
        c = self.config
        return c.input_channels * (c.input_size - 2 * c.likelihood_crop) ** 2

    def initialise_from_data(self, images: Tensor) -> None:
        """NVAE starts from its own initialisation: the training images are not needed."""

    def prepare_for_temperature(self, temperature: float, batch_size: int, num_passes: int = 100) -> None:
        """NVAE's --readjust_bn: BatchNorm statistics of ``num_passes`` prior batches at ``temperature``."""
        with torch.no_grad():
            readjust_batchnorm(self, temperature, num_passes=num_passes, batch_size=batch_size)


@torch.no_grad()
def readjust_batchnorm(model: NVAE, temperature: float, num_passes: int = 500, batch_size: int = 16) -> NVAE:
    """NVAE's --readjust_bn: run ``num_passes`` prior-sampling passes in train mode at ``temperature`` so the
    decoder's BatchNorm running statistics (momentum 0.05) match samples at that temperature; then eval()."""
    if num_passes < 1 or batch_size < 2:
        raise ValueError("readjust_batchnorm needs num_passes >= 1 and batch_size >= 2")
    model.train()
    for _ in range(num_passes):
        model.sample(batch_size, temperature)
    return model.eval()
