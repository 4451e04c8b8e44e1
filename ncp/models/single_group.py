"""What the single-group VAEs share: a standard Normal base prior and the LatentVAE plumbing.

With one latent group there is no context (c = None) and ancestral sampling is one step; the MLP VAE
(Table 2) and the conv VAE (Table 1) only add their encoder and decoder networks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from ncp.models.base import GroupDraw, GroupSampler, PriorWalk, VAEOutput, sample_from_prior
from ncp.priors.gmm import GMMPrior

BasePriorKind = Literal["gaussian", "gmm"]


class StandardNormalPrior(nn.Module):
    """N(0, t^2 I) over a flat latent of ``latent_dim`` dims, with batch shape (num_images,)."""

    def __init__(self, latent_dim: int):
        """``latent_dim``: D, the size of the latent vector."""
        super().__init__()
        self.latent_dim = latent_dim
        # Not saved in checkpoints: it only carries the device and dtype the prior should use.
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def forward(self, num_images: int, temperature: float = 1.0) -> Independent:
        """The prior with batch shape (num_images,) and standard deviation ``temperature``."""
        if num_images < 1:
            raise ValueError(f"num_images must be positive; got {num_images}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        loc = self._zero.expand(num_images, self.latent_dim)  # (B, D)
        return Independent(Normal(loc, torch.full_like(loc, temperature)), 1)


def check_base_prior_fields(kind: str, gmm_components: int, gmm_covariance: str) -> None:
    """Raise ValueError for a bad base-prior choice in a single-group VAE config."""
    if kind not in ("gaussian", "gmm"):
        raise ValueError(f"base_prior must be 'gaussian' or 'gmm'; got {kind!r}")
    if gmm_components < 1:
        raise ValueError(f"gmm_components must be positive; got {gmm_components}")
    if gmm_covariance not in ("full", "diag"):
        raise ValueError(f"gmm_covariance must be 'full' or 'diag'; got {gmm_covariance!r}")


def config_from_dict(config_class: type, values: dict[str, Any]) -> Any:
    """Build a frozen config dataclass from a plain dict (e.g. read from a checkpoint or YAML);
    unknown keys raise ValueError, and lists (YAML / JSON sequences) become tuples."""
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys: {unknown}")
    converted = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    return config_class(**converted)


class SingleGroupVAE(nn.Module):
    """The ``LatentVAE`` contract for a VAE with one flat latent group z of ``latent_dim`` dims.

    Subclasses provide ``encode`` (x -> q(z|x)), ``decode`` (z -> decoder output parameters),
    ``log_px`` and ``mean_image``, and a frozen ``config`` with the fields ``latent_dim``,
    ``base_prior``, ``gmm_components`` and ``gmm_covariance``.
    """

    num_groups = 1
    config: Any

    def _build_base_prior(self) -> None:
        """Create the base prior the config names (a placeholder GMM, filled by load_state_dict)."""
        if self.config.base_prior == "gmm":
            self.base_prior: nn.Module = GMMPrior.placeholder(
                self.config.gmm_components, self.config.latent_dim, self.config.gmm_covariance
            )
        else:
            self.base_prior = StandardNormalPrior(self.config.latent_dim)

    @property
    def latent_dim(self) -> int:
        """D, the size of the single latent group."""
        return self.config.latent_dim

    def set_base_prior(self, prior: nn.Module) -> None:
        """Swap the base prior (e.g. for a ``GMMPrior`` fitted after training) and record the
        choice in ``config``, so that ``from_config`` + ``load_state_dict`` rebuild it."""
        device = next(self.parameters()).device
        if isinstance(prior, GMMPrior):
            if prior.latent_dim != self.latent_dim:
                raise ValueError(
                    f"GMM prior has latent_dim {prior.latent_dim}, the VAE has {self.latent_dim}"
                )
            self.config = dataclasses.replace(
                self.config,
                base_prior="gmm",
                gmm_components=prior.num_components,
                gmm_covariance=prior.covariance_type,
            )
        elif isinstance(prior, StandardNormalPrior):
            if prior.latent_dim != self.latent_dim:
                raise ValueError(f"prior has latent_dim {prior.latent_dim}, the VAE has {self.latent_dim}")
            self.config = dataclasses.replace(self.config, base_prior="gaussian")
        else:
            raise ValueError(
                f"base prior must be a StandardNormalPrior or GMMPrior; got {type(prior).__name__}"
            )
        self.base_prior = prior.to(device)

    def base_prior_spec(self) -> dict[str, Any]:
        """What kind of base prior the model holds, for the checkpoint (registry.py): its weights
        travel in the state dict, this says how to shape the module that receives them."""
        if isinstance(self.base_prior, GMMPrior):
            return {
                "kind": "gmm",
                "num_components": self.base_prior.num_components,
                "covariance_type": self.base_prior.covariance_type,
            }
        return {"kind": "gaussian"}

    def install_base_prior(self, spec: dict[str, Any]) -> None:
        """Install an empty base prior shaped as ``spec`` (from ``base_prior_spec``), ready for
        ``load_state_dict`` to fill in."""
        kind = spec.get("kind", "gaussian")
        if kind == "gaussian":
            self.set_base_prior(StandardNormalPrior(self.latent_dim))
        elif kind == "gmm":
            self.set_base_prior(
                GMMPrior.placeholder(
                    spec["num_components"], self.latent_dim, spec.get("covariance_type", "full")
                )
            )
        else:
            raise ValueError(f"unknown base prior kind {kind!r}; expected 'gaussian' or 'gmm'")

    def group_shapes(self) -> list[tuple[int, ...]]:
        """One group: z is a flat vector of ``latent_dim`` entries."""
        return [(self.latent_dim,)]

    def context_shapes(self) -> list[tuple[int, ...] | None]:
        """The single group's prior takes no input, so it has no context."""
        return [None]

    def encode(self, x: Tensor) -> Independent:
        """q(z|x): a diagonal Gaussian with batch shape (B,) and event shape (latent_dim,)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output parameters for latents z of shape (B, latent_dim)."""
        raise NotImplementedError

    def _check_latents(self, z: Tensor, num_images: int) -> None:
        """Raise ValueError unless z has shape (num_images, latent_dim)."""
        if z.shape != (num_images, self.latent_dim):
            raise ValueError(
                f"expected latents of shape ({num_images}, {self.latent_dim}); got {tuple(z.shape)}"
            )

    def forward(self, x: Tensor, noise_scale: float = 1.0) -> VAEOutput:
        """Encode x, draw z = mu + noise_scale * sigma * eps, decode; KL is analytic for a Gaussian
        base prior and the single-sample log q(z|x) - log p(z) otherwise (e.g. a GMM)."""
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be non-negative; got {noise_scale}")
        posterior = self.encode(x)
        loc, scale = posterior.base_dist.loc, posterior.base_dist.scale  # (B, D) each
        z = loc + noise_scale * scale * torch.randn_like(loc)  # (B, D)
        prior = self.base_prior(x.shape[0])
        log_q = posterior.log_prob(z)  # (B,)
        log_p = prior.log_prob(z)  # (B,)
        try:
            kl = kl_divergence(posterior, prior)  # (B,)
        except NotImplementedError:
            # No closed form (Gaussian vs. mixture): the usual one-sample estimate.
            kl = log_q - log_p
        return VAEOutput(
            logits=self.decode(z),
            log_q=log_q,
            log_p=log_p,
            kl=kl[:, None],  # (B, 1): one group
            latents=[z],
            contexts=[None],
            priors=[prior],
        )

    def posterior_group(self, x: Tensor, group: int, noise_scale: float = 1.0) -> GroupDraw:
        """The one group of forward (the decoder runs too: it is the cheap part of a single-group VAE)."""
        if group != 0:
            raise ValueError(f"group {group} out of range for a VAE with 1 group")
        output = self(x, noise_scale)
        return GroupDraw(output.latents[0], None, output.priors[0])

    def walk_prior(self, num_images: int, choose: GroupSampler, temperature: float = 1.0) -> PriorWalk:
        """Build the base prior (std scaled by ``temperature``), let ``choose`` pick z, decode."""
        prior = self.base_prior(num_images, temperature)
        z = choose(0, prior, None)
        self._check_latents(z, num_images)
        return PriorWalk(logits=self.decode(z), latents=[z], contexts=[None])

    def sample(self, num_images: int, temperature: float = 1.0) -> Tensor:
        """Decoder output parameters for z drawn from the base prior."""
        return self.walk_prior(num_images, sample_from_prior, temperature).logits

    # ---- what the stages ask of a backbone (ncp.models.base.LatentVAE) ---------------------------
    config_class: type  # the frozen config dataclass of the subclass

    @classmethod
    def config_from_params(cls, section: dict[str, Any], data_name: str) -> Any:
        """The typed config of the params' section (``vae.mlp`` / ``vae.conv``); the data set's name
        does not change a single-group VAE. Unknown keys raise ValueError."""
        return config_from_dict(cls.config_class, section)

    def kl_term(self, kl_per_group: Tensor, beta: float, balance: bool) -> Tensor:
        """beta * KL per image, (B,); one group leaves nothing to balance."""
        return beta * kl_per_group.sum(dim=1)

    def regulariser(self) -> Tensor:
        """No smoothness term (NVAE's spectral regulariser is NVAE's): a zero on the model's device."""
        return next(self.parameters()).new_zeros(())

    def initialise_from_data(self, images: Tensor) -> None:
        """No data-dependent initialisation unless a subclass has one (the MLP VAE does)."""

    def prepare_for_temperature(self, temperature: float, batch_size: int, num_passes: int = 100) -> None:
        """Nothing to adjust: the temperature only scales the prior's std (no BatchNorm re-estimate)."""
