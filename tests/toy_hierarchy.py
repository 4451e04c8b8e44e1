"""Toy latent models whose aggregate posterior and density ratios are known in closed form.

Used by the stage-2 tests: ``SingleGroupToyVAE`` has a N(0, I) base prior and a Gaussian-mixture
'aggregate posterior'; ``TwoGroupToyVAE`` has a linear-Gaussian two-group hierarchy,
p: z_1 ~ N(0, I), z_2 | z_1 ~ N(a z_1, s^2 I), and q: z_1 ~ mixture, z_2 | z_1 ~ N(b z_1 + c0, t^2 I),
with context c(z_<2) = z_1. Both implement the ``LatentVAE`` contract; the "decoder" is the identity
(logits = the concatenated latents), and q(z | x) ignores x (it is the aggregate posterior itself).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from ncp.models.base import GroupSampler, PriorWalk, VAEOutput

LOG_2PI = math.log(2.0 * math.pi)


def isotropic_normal_log_prob(z: Tensor, mean: Tensor | float, std: float) -> Tensor:
    """log N(z; mean, std^2 I) summed over the last dimension, (N,)."""
    d = z.shape[-1]
    return -0.5 * (((z - mean) / std) ** 2).sum(-1) - d * math.log(std) - 0.5 * d * LOG_2PI


class GaussianMixture:
    """Isotropic Gaussian mixture sum_j pi_j N(mu_j, sigma^2 I) with closed-form moments."""

    def __init__(self, weights: Tensor, means: Tensor, std: float):
        self.weights = weights / weights.sum()  # (K,)
        self.means = means  # (K, D)
        self.std = std

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z), (N,) for z (N, D)."""
        per_component = isotropic_normal_log_prob(z[:, None, :], self.means, self.std)  # (N, K)
        return torch.logsumexp(per_component + self.weights.log(), dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws, (n, D)."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator)
        return self.means[component] + self.std * noise

    def mean(self) -> Tensor:
        """E[z], (D,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[z] = sigma^2 I + sum_j pi_j mu_j mu_j^T - E[z] E[z]^T, (D, D)."""
        m = self.mean()
        second = (self.weights[:, None, None] * self.means[:, :, None] * self.means[:, None, :]).sum(0)
        return self.std**2 * torch.eye(self.dim) + second - torch.outer(m, m)


def make_mixture(dim: int, seed: int = 0) -> GaussianMixture:
    """A 3-component mixture close enough to N(0, I) for NCE/SIR/LD to work well, far enough to see."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(3, dim, generator=g)
    means = 1.2 * directions / directions.norm(dim=1, keepdim=True)  # |mu_j| = 1.2
    means = means + torch.tensor([0.4] + [0.0] * (dim - 1))  # shift the mean off the origin
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, std=0.8 if dim > 2 else 0.6)


class MixtureLogRatio(nn.Module):
    """The true log r(z) = log q(z) - log N(z; 0, I) for a mixture q (no context)."""

    def __init__(self, mixture: GaussianMixture, offset: float = 0.0):
        super().__init__()
        self.mixture = mixture
        self.offset = offset  # added to log r: scales Z by exp(offset)

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.mixture.log_prob(z) - isotropic_normal_log_prob(z, 0.0, 1.0) + self.offset


class LinearTiltLogRatio(nn.Module):
    """log r(z) = <beta, z>: on a N(m, s^2 I) base, Z = exp(<beta, m> + s^2 |beta|^2 / 2)."""

    def __init__(self, beta: Tensor):
        super().__init__()
        self.beta = beta

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return z @ self.beta


def standard_normal(num_images: int, dim: int, temperature: float = 1.0) -> Distribution:
    """N(0, t^2 I) with batch shape (num_images,)."""
    return Independent(Normal(torch.zeros(num_images, dim), temperature), 1)


class SingleGroupToyVAE:
    """One latent group of shape (dim,), base prior N(0, I), aggregate posterior ``mixture``."""

    num_groups = 1

    def __init__(self, mixture: GaussianMixture):
        self.mixture = mixture
        self.dim = mixture.dim

    def group_shapes(self) -> list[tuple[int, ...]]:
        return [(self.dim,)]

    def context_shapes(self) -> list[tuple[int, ...] | None]:
        return [None]

    def forward(self, x: Tensor, noise_scale: float = 1.0) -> VAEOutput:
        z = self.mixture.sample(x.shape[0])
        prior = standard_normal(x.shape[0], self.dim)
        log_q, log_p = self.mixture.log_prob(z), prior.log_prob(z)
        return VAEOutput(z, log_q, log_p, (log_q - log_p)[:, None], [z], [None], [prior])

    def log_px(self, logits: Tensor, x: Tensor) -> Tensor:
        return isotropic_normal_log_prob(x.flatten(1), logits.flatten(1), 1.0)

    @torch.no_grad()
    def walk_prior(self, num_images: int, choose: GroupSampler, temperature: float = 1.0) -> PriorWalk:
        z = choose(0, standard_normal(num_images, self.dim, temperature), None)
        return PriorWalk(logits=z, latents=[z], contexts=[None])

    def sample(self, num_images: int, temperature: float = 1.0) -> Tensor:
        return temperature * torch.randn(num_images, self.dim)

    def mean_image(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)[:, None, None, :]  # (B, 1, 1, D)


class ConditionalLogRatio(nn.Module):
    """True log r_2(z_2, z_1) = log N(z_2; b z_1 + c0, t^2) - log N(z_2; a z_1, s^2); context = z_1.

    It does not broadcast contexts itself, so NCPPrior has to expand them (that path is tested too).
    """

    broadcasts_context = False

    def __init__(self, a: float, s: float, b: float, c0: Tensor, t: float):
        super().__init__()
        self.a, self.s, self.b, self.c0, self.t = a, s, b, c0, t

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        if context is None or context.shape != z.shape:
            raise ValueError("ConditionalLogRatio needs one context row z_1 per z_2 row")
        log_q = isotropic_normal_log_prob(z, self.b * context + self.c0, self.t)
        log_p = isotropic_normal_log_prob(z, self.a * context, self.s)
        return log_q - log_p


class TwoGroupToyVAE:
    """Two groups of shape (dim,): p(z_1) = N(0, I), p(z_2|z_1) = N(a z_1, s^2 I); q as above."""

    num_groups = 2

    def __init__(
        self,
        dim: int = 2,
        a: float = 0.5,
        s: float = 0.8,
        b: float = 0.9,
        t: float = 0.6,
        seed: int = 1,
    ):
        self.dim, self.a, self.s, self.b, self.t = dim, a, s, b, t
        self.q1 = make_mixture(dim, seed)
        self.c0 = torch.linspace(0.5, -0.3, dim)  # q's offset for z_2

    def true_ratios(self) -> list[nn.Module]:
        """The exact log r_1, log r_2 modules for this hierarchy."""
        return [
            MixtureLogRatio(self.q1),
            ConditionalLogRatio(self.a, self.s, self.b, self.c0, self.t),
        ]

    def group_shapes(self) -> list[tuple[int, ...]]:
        return [(self.dim,), (self.dim,)]

    def context_shapes(self) -> list[tuple[int, ...] | None]:
        return [None, (self.dim,)]

    def prior_2(self, z1: Tensor, temperature: float = 1.0) -> Distribution:
        """p(z_2 | z_1) with batch shape (B,)."""
        return Independent(Normal(self.a * z1, self.s * temperature), 1)

    def sample_q(self, n: int) -> tuple[Tensor, Tensor]:
        """(z_1, z_2) from the aggregate posterior, each (n, dim)."""
        z1 = self.q1.sample(n)
        return z1, self.b * z1 + self.c0 + self.t * torch.randn(n, self.dim)

    def q_joint_moments(self) -> tuple[Tensor, Tensor]:
        """Mean (2D,) and covariance (2D, 2D) of (z_1, z_2) under q."""
        m1, c1 = self.q1.mean(), self.q1.covariance()
        mean = torch.cat([m1, self.b * m1 + self.c0])
        c22 = self.b**2 * c1 + self.t**2 * torch.eye(self.dim)
        cov = torch.cat([torch.cat([c1, self.b * c1], 1), torch.cat([self.b * c1, c22], 1)], 0)
        return mean, cov

    def forward(self, x: Tensor, noise_scale: float = 1.0) -> VAEOutput:
        n = x.shape[0]
        z1, z2 = self.sample_q(n)
        priors = [standard_normal(n, self.dim), self.prior_2(z1)]
        log_q = self.q1.log_prob(z1) + isotropic_normal_log_prob(z2, self.b * z1 + self.c0, self.t)
        log_p_groups = torch.stack([priors[0].log_prob(z1), priors[1].log_prob(z2)], 1)  # (B, 2)
        log_q_groups = torch.stack([self.q1.log_prob(z1), log_q - self.q1.log_prob(z1)], 1)
        return VAEOutput(
            logits=torch.cat([z1, z2], 1),
            log_q=log_q,
            log_p=log_p_groups.sum(1),
            kl=log_q_groups - log_p_groups,
            latents=[z1, z2],
            contexts=[None, z1],
            priors=priors,
        )

    def log_px(self, logits: Tensor, x: Tensor) -> Tensor:
        return isotropic_normal_log_prob(x.flatten(1), logits.flatten(1), 1.0)

    @torch.no_grad()
    def walk_prior(self, num_images: int, choose: GroupSampler, temperature: float = 1.0) -> PriorWalk:
        z1 = choose(0, standard_normal(num_images, self.dim, temperature), None)
        z2 = choose(1, self.prior_2(z1, temperature), z1)
        return PriorWalk(logits=torch.cat([z1, z2], 1), latents=[z1, z2], contexts=[None, z1])

    def sample(self, num_images: int, temperature: float = 1.0) -> Tensor:
        return self.walk_prior(num_images, lambda k, prior, c: prior.sample(), temperature).logits

    def mean_image(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)[:, None, None, :]  # (B, 1, 1, 2D)
