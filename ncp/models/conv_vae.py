"""The convolutional single-group VAE of the paper's Table 1 (RAE's CelebA-64 VAE).

Architecture as in RAE's public code (ParthaEth/Regularized_autoencoders-RAE-,
models/rae/rae_celeba.py and models/std_vae/*; Ghosh et al., ICLR 2020), read for facts only:
- encoder: 4 convs with 128, 256, 512, 1024 filters, stride 2, "same" padding, each followed by
  batch norm and ReLU (64 -> 4 pixels), flatten, then a linear layer to the 64-d posterior mean and
  another to log sigma = 5 * tanh(.) (the VAE head in models/std_vae/get_vae_given_enc_dec.py);
- decoder: linear to 8x8x1024, 3 transposed convs with 512, 256, 128 filters, stride 2, batch norm
  and ReLU (8 -> 64 pixels), then a stride-1 (transposed) conv to 3 channels with a sigmoid.
- kernels: the code uses 5x5 for CelebA (the brief's 4x4 matches RAE's MNIST / CIFAR models), so
  ``kernel_size`` defaults to 5 and is configurable.
- likelihood: RAE trains its CelebA VAE (configurations/config.py, entry 17) on Keras "mse" (mean
  over channels, summed over pixels) + 0.09024 * KL. Divided by 0.09024, that is the -ELBO of a
  Gaussian p(x|z) with fixed std sqrt(3 * 0.09024 / 2) = 0.3679 around the sigmoid output (up to a
  constant): our default.
All widths, the latent size, the image size and the likelihood are config fields, so a tiny version
runs on CPU on 32x32 1-channel data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from ncp.models.single_group import (
    BasePriorKind,
    SingleGroupVAE,
    check_base_prior_fields,
    config_from_dict,
)

# sqrt(C * beta / 2) with C = 3 channels and RAE's CelebA VAE KL weight beta = 0.09024.
RAE_CELEBA_NORMAL_STD = math.sqrt(3 * 0.09024 / 2)


@dataclass(frozen=True)
class ConvVAEConfig:
    """Architecture of the conv VAE (defaults: RAE's CelebA-64 VAE)."""

    image_size: int = 64  # side of the square input images
    in_channels: int = 3
    latent_dim: int = 64
    channels: tuple[int, ...] = (128, 256, 512, 1024)  # encoder conv widths; decoder mirrors them
    kernel_size: int = 5
    batch_norm: bool = True
    max_log_scale: float = 5.0  # posterior log sigma = max_log_scale * tanh(.), as in RAE's VAE
    likelihood: Literal["normal", "bernoulli"] = "normal"
    normal_std: float = RAE_CELEBA_NORMAL_STD  # std of a "normal" p(x|z) (initial value if learned)
    learn_normal_std: bool = False  # learn one global std of p(x|z) instead of fixing it
    base_prior: BasePriorKind = "gaussian"
    gmm_components: int = 10  # used when base_prior == "gmm"
    gmm_covariance: Literal["full", "diag"] = "full"

    def __post_init__(self):
        """Reject settings that cannot build a model."""
        for name in ("image_size", "in_channels", "latent_dim", "kernel_size"):
            if getattr(self, name) < 1:
                value = getattr(self, name)
                raise ValueError(f"ConvVAEConfig.{name} must be positive; got {value}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"ConvVAEConfig.channels must be positive widths; got {self.channels}")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**len(channels) = "
                f"{2 ** len(self.channels)}"
            )
        if self.likelihood not in ("normal", "bernoulli"):
            raise ValueError(f"likelihood must be 'normal' or 'bernoulli'; got {self.likelihood!r}")
        if self.normal_std <= 0 or self.max_log_scale <= 0:
            raise ValueError("ConvVAEConfig.normal_std and max_log_scale must be positive")
        check_base_prior_fields(self.base_prior, self.gmm_components, self.gmm_covariance)


def conv_block(n_in: int, n_out: int, kernel_size: int, batch_norm: bool, transposed: bool) -> nn.Sequential:
    """A stride-2 conv (halves H, W) or transposed conv (doubles them), then batch norm and ReLU."""
    padding = (kernel_size - 1) // 2
    if transposed:
        # out = 2 * in - 2 - 2 * padding + kernel_size + output_padding: pick it to get 2 * in.
        output_padding = 2 + 2 * padding - kernel_size
        conv: nn.Module = nn.ConvTranspose2d(
            n_in,
            n_out,
            kernel_size,
            stride=2,
            padding=padding,
            output_padding=output_padding,
            bias=not batch_norm,
        )
    else:
        conv = nn.Conv2d(n_in, n_out, kernel_size, stride=2, padding=padding, bias=not batch_norm)
    layers = [conv] + ([nn.BatchNorm2d(n_out)] if batch_norm else []) + [nn.ReLU()]
    return nn.Sequential(*layers)


class ConvVAE(SingleGroupVAE):
    """RAE's conv VAE: Gaussian q(z|x) from a strided conv encoder, decoder output logits
    (B, C, H, W) read as Bernoulli logits or as the pre-sigmoid mean of a Gaussian."""

    def __init__(self, config: ConvVAEConfig = ConvVAEConfig()):
        """Build encoder, decoder and base prior from ``config``."""
        super().__init__()
        self.config = config
        widths, k, bn = config.channels, config.kernel_size, config.batch_norm
        self.encoder_convs = nn.Sequential(
            *[
                conv_block(n_in, n_out, k, bn, transposed=False)
                for n_in, n_out in zip((config.in_channels,) + widths[:-1], widths)
            ]
        )
        encoded_side = config.image_size // 2 ** len(widths)
        features = widths[-1] * encoded_side**2
        self.to_loc = nn.Linear(features, config.latent_dim)
        self.to_log_scale = nn.Linear(features, config.latent_dim)

        # The decoder starts one halving above the encoder's output (8x8 for 64x64 images).
        self.decoded_side = config.image_size // 2 ** (len(widths) - 1)
        self.from_latent = nn.Linear(config.latent_dim, widths[-1] * self.decoded_side**2)
        reversed_widths = widths[::-1]  # e.g. (1024, 512, 256, 128)
        self.decoder_convs = nn.Sequential(
            *[
                conv_block(n_in, n_out, k, bn, transposed=True)
                for n_in, n_out in zip(reversed_widths[:-1], reversed_widths[1:])
            ]
        )
        # "Same" padding spelled out: PyTorch warns about padding="same" with even kernels.
        self.to_pixels = nn.Sequential(
            nn.ZeroPad2d(((k - 1) // 2, k // 2, (k - 1) // 2, k // 2)),
            nn.Conv2d(widths[0], config.in_channels, k, stride=1),
        )

        log_std = torch.tensor(math.log(config.normal_std))
        if config.learn_normal_std:
            self.log_normal_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_normal_std", log_std)
        self._build_base_prior()

    config_class = ConvVAEConfig

    def scored_dims(self) -> int:
        """Every channel and pixel: log p(x|z) scores the whole image."""
        return self.config.in_channels * self.config.image_size**2

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ConvVAE:
        """Build from ``dataclasses.asdict(model.config)`` (lists are read back as tuples); a
        ``data_mean`` entry, accepted for symmetry with ``MLPVAE.from_config``, must be None."""
        values = dict(config)
        if values.pop("data_mean", None) is not None:
            raise ValueError("ConvVAE uses no data mean; pass data_mean=None or leave it out")
        return cls(config_from_dict(ConvVAEConfig, values))

    def _check_images(self, x: Tensor) -> None:
        """Raise ValueError unless x is (B, in_channels, image_size, image_size)."""
        c, s = self.config.in_channels, self.config.image_size
        if x.dim() != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"ConvVAE expects images of shape (B, {c}, {s}, {s}); got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Independent:
        """q(z|x) = N(loc, diag(sigma^2)), log sigma = max_log_scale * tanh(linear(features))."""
        self._check_images(x)
        features = self.encoder_convs(x).flatten(start_dim=1)  # (B, C_last * side^2)
        loc = self.to_loc(features)  # (B, D)
        log_scale = self.config.max_log_scale * torch.tanh(self.to_log_scale(features))  # (B, D)
        return Independent(Normal(loc, log_scale.exp()), 1)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output logits (B, in_channels, image_size, image_size) for z (B, latent_dim)."""
        self._check_latents(z, z.shape[0])
        side = self.decoded_side
        width = self.config.channels[-1]
        h = self.from_latent(z).reshape(z.shape[0], width, side, side)  # (B, C_last, s, s)
        return self.to_pixels(self.decoder_convs(h))  # (B, C_in, H, W)

    def log_px(self, logits: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) summed over channels and pixels, (B,): Bernoulli on logits, or Gaussian with
        mean sigmoid(logits) and std exp(log_normal_std)."""
        self._check_images(x)
        if logits.shape != x.shape:
            raise ValueError(f"logits shape {tuple(logits.shape)} does not match x {tuple(x.shape)}")
        if self.config.likelihood == "bernoulli":
            per_pixel = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            std = self.log_normal_std.exp().expand_as(logits)
            per_pixel = Normal(torch.sigmoid(logits), std).log_prob(x)
        return per_pixel.flatten(start_dim=1).sum(dim=1)

    def mean_image(self, logits: Tensor) -> Tensor:
        """E[x|z] = sigmoid(logits) for both likelihoods, (B, C, H, W) in [0, 1]."""
        return torch.sigmoid(logits)
