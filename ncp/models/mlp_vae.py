"""Single-latent-group VAEs: the shared machinery, and the MLP VAE of the paper's Table 2.

The MLP VAE is the LARS / SNIS (EIM) MNIST model (see shared notes evaluation.md section 3.3): a
50-d diagonal-Gaussian posterior from a 784-300-300 tanh MLP, a 50-300-300-784 tanh MLP decoder with
Bernoulli logits, Glorot-uniform init, the encoder fed x - mean and the decoder's output bias set to
logit(mean) (the IWAE-paper init). Our MNIST comes padded to 32x32 like NVAE's, so the model crops
the central 28x28 itself and pads its mean images back.

``SingleGroupVAE`` holds what both single-group models (this one and ``conv_vae.ConvVAE``) share:
the ``LatentVAE`` contract for one latent group with no context, and a swappable base prior
(``StandardNormalPrior`` or a fitted ``GMMPrior``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from ncp.models.base import GroupSampler, PriorWalk, VAEOutput, sample_from_prior
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
    unknown keys raise ValueError, and lists become tuples where the field default is a tuple."""
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys: {unknown}")
    converted = {
        name: tuple(value) if isinstance(value, list) else value for name, value in values.items()
    }
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
                raise ValueError(
                    f"prior has latent_dim {prior.latent_dim}, the VAE has {self.latent_dim}"
                )
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

    def context_shapes(self) -> list[Optional[tuple[int, ...]]]:
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

    def walk_prior(
        self, num_images: int, choose: GroupSampler, temperature: float = 1.0
    ) -> PriorWalk:
        """Build the base prior (std scaled by ``temperature``), let ``choose`` pick z, decode."""
        prior = self.base_prior(num_images, temperature)
        z = choose(0, prior, None)
        self._check_latents(z, num_images)
        return PriorWalk(logits=self.decode(z), latents=[z], contexts=[None])

    def sample(self, num_images: int, temperature: float = 1.0) -> Tensor:
        """Decoder output parameters for z drawn from the base prior."""
        return self.walk_prior(num_images, sample_from_prior, temperature).logits


@dataclass(frozen=True)
class MLPVAEConfig:
    """Architecture of the MLP VAE (defaults: LARS / SNIS dynamic-MNIST setup)."""

    image_size: int = 32  # side of the 1-channel input images (MNIST padded to 32 like NVAE's)
    crop_size: int = 28  # central crop the model reads and writes (MNIST's own 28x28)
    latent_dim: int = 50
    hidden: int = 300  # units per hidden layer, encoder and decoder
    num_hidden_layers: int = 2
    min_scale: float = 1e-5  # floor on the posterior std (EIM: max(1e-5, softplus(raw)))
    base_prior: BasePriorKind = "gaussian"
    gmm_components: int = 10  # used when base_prior == "gmm"
    gmm_covariance: Literal["full", "diag"] = "full"

    def __post_init__(self):
        """Reject sizes that cannot build a model."""
        for name in ("image_size", "crop_size", "latent_dim", "hidden", "num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"MLPVAEConfig.{name} must be positive; got {getattr(self, name)}")
        if self.crop_size > self.image_size or (self.image_size - self.crop_size) % 2:
            raise ValueError(
                f"crop_size {self.crop_size} must fit centrally in image_size {self.image_size} "
                "(an even difference)"
            )
        if self.min_scale <= 0:
            raise ValueError(f"MLPVAEConfig.min_scale must be positive; got {self.min_scale}")
        check_base_prior_fields(self.base_prior, self.gmm_components, self.gmm_covariance)


def tanh_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers through ``sizes`` with tanh between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MLPVAE(SingleGroupVAE):
    """The Table 2 VAE: Gaussian q(z|x) and Bernoulli p(x|z) from tanh MLPs, on 28x28 crops."""

    def __init__(self, config: MLPVAEConfig = MLPVAEConfig(), data_mean: Optional[Tensor] = None):
        """``data_mean``: the mean training image in [0, 1] (image_size^2 or crop_size^2 pixels, any
        shape), used to centre the encoder input and to initialise the decoder's output bias."""
        super().__init__()
        self.config = config
        pixels = config.crop_size**2
        hidden = [config.hidden] * config.num_hidden_layers
        self.encoder = tanh_mlp([pixels] + hidden + [2 * config.latent_dim])  # -> (loc, raw scale)
        self.decoder = tanh_mlp([config.latent_dim] + hidden + [pixels])  # -> Bernoulli logits
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)  # Glorot-uniform, as EIM's Keras layers
                nn.init.zeros_(module.bias)
        if data_mean is None:
            # No centring; the output bias stays at logit(0.5) = 0.
            self.register_buffer("data_mean", torch.zeros(pixels))
        else:
            mean = self._mean_to_crop(data_mean)  # (crop^2,)
            self.register_buffer("data_mean", mean)
            with torch.no_grad():
                self.decoder[-1].bias.copy_(torch.logit(mean.clamp(1e-4, 1 - 1e-4)))
        self._build_base_prior()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MLPVAE:
        """Rebuild from ``dataclasses.asdict(model.config)``; the data mean comes back with the
        state dict (it is a buffer)."""
        return cls(config_from_dict(MLPVAEConfig, config))

    def _mean_to_crop(self, data_mean: Tensor) -> Tensor:
        """The mean image as a flat (crop_size^2,) vector, cropping it if it is image_size^2."""
        size, crop = self.config.image_size, self.config.crop_size
        mean = torch.as_tensor(data_mean, dtype=torch.float32).flatten()
        if mean.numel() == size * size:
            return self._crop(mean.reshape(1, 1, size, size)).flatten()
        if mean.numel() == crop * crop:
            return mean
        raise ValueError(
            f"data_mean must have {size}x{size} or {crop}x{crop} pixels; got {mean.numel()}"
        )

    def _crop(self, x: Tensor) -> Tensor:
        """Central crop_size x crop_size window of (B, 1, image_size, image_size) images."""
        crop = self.config.crop_size
        offset = (self.config.image_size - crop) // 2
        return x[:, :, offset : offset + crop, offset : offset + crop]

    def _flat_pixels(self, x: Tensor) -> Tensor:
        """Check that x is (B, 1, image_size, image_size) and return its crop as (B, crop^2)."""
        size = self.config.image_size
        if x.dim() != 4 or x.shape[1:] != (1, size, size):
            raise ValueError(
                f"MLPVAE expects images of shape (B, 1, {size}, {size}); got {tuple(x.shape)}"
            )
        return self._crop(x).reshape(x.shape[0], -1)  # (B, crop^2)

    def encode(self, x: Tensor) -> Independent:
        """q(z|x) = N(loc, diag(scale^2)), scale = max(softplus(raw), min_scale)."""
        hidden = self.encoder(self._flat_pixels(x) - self.data_mean)  # (B, 2D)
        loc, raw_scale = hidden.chunk(2, dim=-1)  # (B, D) each
        scale = F.softplus(raw_scale).clamp_min(self.config.min_scale)
        return Independent(Normal(loc, scale), 1)

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli logits (B, crop_size^2) for latents z (B, latent_dim)."""
        self._check_latents(z, z.shape[0])
        return self.decoder(z)

    def log_px(self, logits: Tensor, x: Tensor) -> Tensor:
        """Bernoulli log p(x|z) summed over the crop_size^2 central pixels, (B,)."""
        target = self._flat_pixels(x)  # (B, crop^2)
        if logits.shape != target.shape:
            raise ValueError(
                f"logits shape {tuple(logits.shape)} does not match pixels {tuple(target.shape)}"
            )
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=-1)

    def mean_image(self, logits: Tensor) -> Tensor:
        """Bernoulli means, zero-padded back to (B, 1, image_size, image_size) like the data."""
        crop = self.config.crop_size
        pad = (self.config.image_size - crop) // 2
        probs = torch.sigmoid(logits).reshape(logits.shape[0], 1, crop, crop)  # (B, 1, crop, crop)
        return F.pad(probs, (pad, pad, pad, pad))  # (B, 1, image_size, image_size)


def negative_elbo(model: SingleGroupVAE, x: Tensor) -> Tensor:
    """Per-image -ELBO = KL(q||p) - log p(x|z) with one z ~ q(z|x), (B,)."""
    output = model(x)
    return output.kl.sum(dim=1) - model.log_px(output.logits, x)

