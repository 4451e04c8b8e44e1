"""The MLP VAE of the paper's Table 2 (single latent group).

The LARS / SNIS (EIM) MNIST model (see shared notes evaluation.md section 3.3): a 50-d
diagonal-Gaussian posterior from a 784-300-300 tanh MLP, a 50-300-300-784 tanh MLP decoder with
Bernoulli logits, Glorot-uniform init, the encoder fed x - mean and the decoder's output bias set to
logit(mean) (the IWAE-paper init). Our MNIST comes padded to 32x32 like NVAE's, so the model crops
the central 28x28 itself and pads its mean images back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from ncp.models.single_group import BasePriorKind, SingleGroupVAE, check_base_prior_fields, config_from_dict


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


def mean_pixel(images: Tensor) -> Tensor:
    """Mean image (C, H, W) of uint8 ``images`` / 255, summed in chunks (no float copy of the whole set)."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for start in range(0, len(images), 10_000):
        total += images[start : start + 10_000].to(torch.float64).sum(dim=0)
    return (total / (255.0 * len(images))).float()


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

    def __init__(self, config: MLPVAEConfig = MLPVAEConfig(), data_mean: Tensor | None = None):
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
        # Without a data mean: no centring, and the output bias stays at logit(0.5) = 0.
        self.register_buffer("data_mean", torch.zeros(pixels))
        if data_mean is not None:
            self._set_data_mean(data_mean)
        self._build_base_prior()

    config_class = MLPVAEConfig

    def _set_data_mean(self, data_mean: Tensor) -> None:
        """Centre the encoder input on ``data_mean`` and start the output bias at logit(mean)."""
        mean = self._mean_to_crop(data_mean).to(self.data_mean)  # (crop^2,)
        self.data_mean.copy_(mean)
        with torch.no_grad():
            self.decoder[-1].bias.copy_(torch.logit(mean.clamp(1e-4, 1 - 1e-4)))

    def initialise_from_data(self, images: Tensor) -> None:
        """The IWAE-paper init from uint8 training images (N, 1, H, W): their mean pixel / 255, for binary
        data the mean of the Bernoulli probabilities dynamic binarisation draws from."""
        self._set_data_mean(mean_pixel(images))

    def scored_dims(self) -> int:
        """The crop_size^2 central pixels log p(x|z) scores (784 for MNIST)."""
        return self.config.crop_size**2

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MLPVAE:
        """Build from ``dataclasses.asdict(model.config)``, optionally with a ``data_mean`` entry
        (pixels in [0, 1], or None); a checkpoint's data mean comes back with its state dict."""
        values = dict(config)
        data_mean = values.pop("data_mean", None)
        if data_mean is not None:
            data_mean = torch.as_tensor(data_mean, dtype=torch.float32)
        return cls(config_from_dict(MLPVAEConfig, values), data_mean=data_mean)

    def _mean_to_crop(self, data_mean: Tensor) -> Tensor:
        """The mean image as a flat (crop_size^2,) vector, cropping it if it is image_size^2."""
        size, crop = self.config.image_size, self.config.crop_size
        mean = torch.as_tensor(data_mean, dtype=torch.float32).flatten()
        if mean.numel() == size * size:
            return self._crop(mean.reshape(1, 1, size, size)).flatten()
        if mean.numel() == crop * crop:
            return mean
        raise ValueError(f"data_mean must have {size}x{size} or {crop}x{crop} pixels; got {mean.numel()}")

    def _crop(self, x: Tensor) -> Tensor:
        """Central crop_size x crop_size window of (B, 1, image_size, image_size) images."""
        crop = self.config.crop_size
        offset = (self.config.image_size - crop) // 2
        return x[:, :, offset : offset + crop, offset : offset + crop]

    def _flat_pixels(self, x: Tensor) -> Tensor:
        """Check that x is (B, 1, image_size, image_size) and return its crop as (B, crop^2)."""
        size = self.config.image_size
        if x.dim() != 4 or x.shape[1:] != (1, size, size):
            raise ValueError(f"MLPVAE expects images of shape (B, 1, {size}, {size}); got {tuple(x.shape)}")
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
