"""NVAE's distributions (distributions.py): the soft-clamped latent Normal and the three image decoders.

Latent Normals: NVAE squashes every mean and log-std with 5 tanh(./5) and adds 0.01 to the std (so even
the "standard" prior of group 0 has std 1.01); a temperature multiplies the std. Decoders map x in [0, 1]
to [-1, 1] first (except the Bernoulli, which scores x directly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Normal


def soft_clamp5(x: Tensor) -> Tensor:
    """Differentiable clamp to (-5, 5): 5 tanh(x / 5)."""
    return 5.0 * torch.tanh(x / 5.0)


def nvae_normal(mu: Tensor, log_sigma: Tensor, temperature: float = 1.0) -> Normal:
    """NVAE's Normal(mu, log_sigma, temp): loc = 5 tanh(mu/5), scale = (exp(5 tanh(log_sigma/5)) + 0.01) * t.

    Argument validation is off because temperature 0 (scale 0, sampling returns the mean) is allowed.
    """
    scale = torch.exp(soft_clamp5(log_sigma)) + 1e-2
    if temperature != 1.0:
        scale = scale * temperature
    return Normal(soft_clamp5(mu), scale, validate_args=False)


def normal_kl(q: Normal, p: Normal) -> Tensor:
    """Elementwise KL(q || p) of two Normals, in NVAE's form:
    0.5 ((mu_q - mu_p) / s_p)^2 + 0.5 (s_q / s_p)^2 - 0.5 - log(s_q / s_p)."""
    mean_term = (q.loc - p.loc) / p.scale
    scale_ratio = q.scale / p.scale
    return 0.5 * (mean_term * mean_term + scale_ratio * scale_ratio) - 0.5 - torch.log(scale_ratio)


def sample_with_noise(dist: Normal, noise_scale: float) -> Tensor:
    """loc + noise_scale * scale * eps (reparameterised); noise_scale 0 gives exactly the mean."""
    if noise_scale == 0.0:
        return dist.loc
    return dist.loc + noise_scale * dist.scale * torch.randn_like(dist.loc)


def quantize_bits(x: Tensor, num_bits: int) -> Tensor:
    """NVAE's utils.pre_process: x in [0, 1] reduced to ``num_bits`` per channel, floor(255 x / 2^(8-b)) /
    (2^b - 1); the identity for 8 bits. Idempotent, so applying it twice is harmless."""
    if num_bits == 8:
        return x
    return torch.floor(x * 255 / 2 ** (8 - num_bits)) / (2**num_bits - 1)


def check_unit_interval(x: Tensor) -> None:
    """Raise a ValueError unless every value of x lies in [0, 1] (NVAE asserts the same)."""
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(
            f"images must lie in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]"
        )


# ---- decoders: per-pixel log-likelihoods, means and samples -------------------------------------------
def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) per element, (B, C, H, W)."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def normal_decoder(params: Tensor) -> Normal:
    """NVAE's NormalDecoder: the first half of the channels are means, the second log-stds (on [-1, 1])."""
    num_channels = params.size(1) // 2
    return nvae_normal(params[:, :num_channels], params[:, num_channels:])


def normal_decoder_log_prob(params: Tensor, x: Tensor) -> Tensor:
    """Continuous Normal density of 2x - 1 per element, (B, C, H, W) (NVAE does not discretise it)."""
    return normal_decoder(params).log_prob(2 * x - 1.0)


class DiscretizedLogisticMixture:
    """NVAE's DiscMixLogistic: per pixel a mixture of M logistics over RGB in [-1, 1], with PixelCNN++'s
    linear coupling (green's mean shifts with red, blue's with red and green), discretised to
    2^num_bits - 1 bins.

    The parameter tensor (B, 10 M, H, W) holds M mixture logits, then for each of R, G, B the M means,
    M log-scales (clamped at -7) and M coupling coefficients (tanh).
    """

    def __init__(self, params: Tensor, num_mix: int, num_bits: int = 8) -> None:
        batch, _, height, width = params.shape
        self.num_mix = num_mix
        self.logit_probs = params[:, :num_mix]  # (B, M, H, W)
        rest = params[:, num_mix:].reshape(batch, 3, 3 * num_mix, height, width)  # (B, 3, 3M, H, W)
        self.means = rest[:, :, :num_mix]  # (B, 3, M, H, W)
        self.log_scales = torch.clamp(rest[:, :, num_mix : 2 * num_mix], min=-7.0)  # (B, 3, M, H, W)
        self.coeffs = torch.tanh(rest[:, :, 2 * num_mix : 3 * num_mix])  # (B, 3, M, H, W)
        self.max_val = 2.0**num_bits - 1

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) per pixel, (B, H, W), for x (B, 3, H, W) in [0, 1]."""
        if x.size(1) != 3:
            raise ValueError(f"the logistic mixture scores RGB images, got {x.size(1)} channels")
        x = (2 * x - 1.0).unsqueeze(2)  # (B, 3, 1, H, W), broadcast over the M components
        red, green = x[:, 0], x[:, 1]  # (B, 1, H, W)
        means = torch.stack(
            [
                self.means[:, 0],
                self.means[:, 1] + self.coeffs[:, 0] * red,
                self.means[:, 2] + self.coeffs[:, 1] * red + self.coeffs[:, 2] * green,
            ],
            dim=1,
        )  # (B, 3, M, H, W)
        centered = x - means
        inv_scale = torch.exp(-self.log_scales)
        plus_in = inv_scale * (centered + 1.0 / self.max_val)
        min_in = inv_scale * (centered - 1.0 / self.max_val)
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log P(x <= bin top), used for the lowest bin
        log_one_minus_cdf_min = -F.softplus(min_in)  # log P(x > bin bottom), used for the highest bin
        mid_in = inv_scale * centered
        log_pdf_mid = mid_in - self.log_scales - 2.0 * F.softplus(mid_in)
        # Where the bin mass underflows, approximate it by density x bin width.
        log_prob_mid = torch.where(
            cdf_delta > 1e-5,
            torch.log(torch.clamp(cdf_delta, min=1e-10)),
            log_pdf_mid - math.log(self.max_val / 2),
        )
        # NVAE's edge thresholds are -0.999 and 0.99; with 8 bits the value 254 (0.992) therefore also
        # gets the upper tail mass. Kept as is, since NVAE's likelihoods were computed this way.
        log_probs = torch.where(
            x < -0.999, log_cdf_plus, torch.where(x > 0.99, log_one_minus_cdf_min, log_prob_mid)
        )  # (B, 3, M, H, W)
        log_probs = log_probs.sum(dim=1) + F.log_softmax(self.logit_probs, dim=1)  # (B, M, H, W)
        return torch.logsumexp(log_probs, dim=1)  # (B, H, W)

    def _couple(self, means: Tensor, coeffs: Tensor) -> Tensor:
        """Apply the RGB coupling to per-pixel (B, 3, H, W) values, clamping to [-1, 1]; map to [0, 1]."""
        red = torch.clamp(means[:, 0], -1, 1)
        green = torch.clamp(means[:, 1] + coeffs[:, 0] * red, -1, 1)
        blue = torch.clamp(means[:, 2] + coeffs[:, 1] * red + coeffs[:, 2] * green, -1, 1)
        return torch.stack([red, green, blue], dim=1) / 2.0 + 0.5  # (B, 3, H, W)

    def mean(self) -> Tensor:
        """NVAE's image mean: mixture-weighted component means and coefficients, then coupling; (B, 3, H, W)."""
        weights = torch.softmax(self.logit_probs, dim=1).unsqueeze(1)  # (B, 1, M, H, W)
        return self._couple((self.means * weights).sum(dim=2), (self.coeffs * weights).sum(dim=2))

    def sample(self, temperature: float = 1.0) -> Tensor:
        """Draw a component (Gumbel-max on logits / t), then a logistic sample with scale / t; (B, 3, H, W)."""
        uniform = torch.empty_like(self.logit_probs).uniform_(1e-5, 1.0 - 1e-5)
        component = torch.argmax(self.logit_probs / temperature - torch.log(-torch.log(uniform)), dim=1)
        one_hot = F.one_hot(component, self.num_mix).permute(0, 3, 1, 2).unsqueeze(1)  # (B, 1, M, H, W)
        one_hot = one_hot.to(self.means.dtype)
        means = (self.means * one_hot).sum(dim=2)  # (B, 3, H, W)
        log_scales = (self.log_scales * one_hot).sum(dim=2)
        coeffs = (self.coeffs * one_hot).sum(dim=2)
        uniform = torch.empty_like(means).uniform_(1e-5, 1.0 - 1e-5)
        values = means + torch.exp(log_scales) / temperature * (torch.log(uniform) - torch.log(1.0 - uniform))
        return self._couple(values, coeffs)
