"""Monte Carlo estimate of the NCP's normalising constant Z = E_{z~p(z)}[prod_k r_k(z_k, c(z_<k))].

z is drawn ancestrally from the base prior through the whole hierarchy, so the weights are
w = exp(sum_k log r_k). Then log Z_hat = logsumexp(log w) - log N, accumulated in float64 batch by
batch. Its standard error comes from the delta method: se(log Z_hat) ~ se(Z_hat) / Z_hat with
se(Z_hat) = sd(w) / sqrt(N), which in terms of the weights' effective sample size
ESS = (sum w)^2 / sum w^2 is sqrt((N / ESS - 1) / (N - 1)). log Z_hat is biased low by about
se^2 / 2 (Jensen), so an NLL using it is slightly optimistic; a small ESS / N warns of that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ncp.models.base import LatentVAE, sample_from_prior
from ncp.priors.ncp_prior import NCPPrior


@dataclass
class LogZEstimate:
    """log Z_hat with its delta-method standard error and the weights' effective sample size."""

    log_z: float
    std_error: float
    ess: float
    num_samples: int


class LogMeanExpAccumulator:
    """Streams log-weights into running logsumexps of log w and 2 log w (float64)."""

    def __init__(self):
        self.log_sum_w = -math.inf
        self.log_sum_w2 = -math.inf
        self.count = 0

    def add(self, log_w: Tensor) -> None:
        """Add a batch of log-weights (any shape; flattened)."""
        log_w = log_w.detach().double().flatten().cpu()
        if torch.isnan(log_w).any():
            raise ValueError("log-weights contain NaN")
        batch_w = torch.logsumexp(log_w, 0).item()
        batch_w2 = torch.logsumexp(2.0 * log_w, 0).item()
        self.log_sum_w = float(np.logaddexp(self.log_sum_w, batch_w))
        self.log_sum_w2 = float(np.logaddexp(self.log_sum_w2, batch_w2))
        self.count += log_w.numel()

    def estimate(self) -> LogZEstimate:
        """log of the mean weight, its delta-method standard error, and the ESS."""
        if self.count < 2:
            raise ValueError(f"need at least 2 weights to estimate log Z, got {self.count}")
        if not math.isfinite(self.log_sum_w):
            raise ValueError("all weights are zero or a weight is infinite")
        n = self.count
        ess = math.exp(2.0 * self.log_sum_w - self.log_sum_w2)
        # Var(w) / Z_hat^2 = n/(n-1) * (n/ESS - 1), so se(log Z_hat) = sqrt((n/ESS - 1) / (n - 1))
        relative_var = max(n / ess - 1.0, 0.0) / (n - 1)
        return LogZEstimate(
            log_z=self.log_sum_w - math.log(n),
            std_error=math.sqrt(relative_var),
            ess=ess,
            num_samples=n,
        )


def log_z_from_log_weights(log_w: Tensor) -> LogZEstimate:
    """log Z estimate from log-weights log r(z_m), z_m ~ p, already in hand."""
    accumulator = LogMeanExpAccumulator()
    accumulator.add(log_w)
    return accumulator.estimate()


@torch.no_grad()
def estimate_log_z(
    vae: LatentVAE, ncp_prior: NCPPrior, num_samples: int, batch_size: int = 1000
) -> LogZEstimate:
    """log Z of ``ncp_prior`` on ``vae``'s base prior from ``num_samples`` ancestral prior samples."""
    if num_samples < 2 or batch_size < 1:
        raise ValueError(f"need num_samples >= 2 and batch_size >= 1, got {num_samples}, {batch_size}")
    if ncp_prior.num_groups != vae.num_groups:
        raise ValueError(f"NCP prior has {ncp_prior.num_groups} groups but the VAE has {vae.num_groups}")
    ncp_prior.eval()  # BatchNorm classifiers must use their running statistics
    accumulator = LogMeanExpAccumulator()
    for start in range(0, num_samples, batch_size):
        walk = vae.walk_prior(min(batch_size, num_samples - start), sample_from_prior)
        accumulator.add(ncp_prior.sum_log_r(walk.latents, walk.contexts))
    return accumulator.estimate()
