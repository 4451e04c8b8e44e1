"""Monte Carlo estimate of the NCP's normalising constant Z = E_{z~p(z)}[prod_k r_k(z_k, c(z_<k))].

z is drawn ancestrally from the base prior through the whole hierarchy, so the weights are
w = exp(sum_k log r_k). Then log Z_hat = logsumexp(log w) - log N, accumulated in float64 batch by
batch. Its standard error comes from the delta method: se(log Z_hat) ~ se(Z_hat) / Z_hat with
se(Z_hat) = sd(w) / sqrt(N), which in terms of the weights' effective sample size
ESS = (sum w)^2 / sum w^2 is sqrt((N / ESS - 1) / (N - 1)). log Z_hat is biased low by about
se^2 / 2 (Jensen), so an NLL using it is slightly optimistic; a small ESS / N warns of that.

With weights as heavy-tailed as NVAE's (ESS 74 of 10,000 on the default) log Z_hat and its delta-method
error both tend to come out low, so :func:`estimate_log_z_over_seeds` repeats the estimate under
independent seeds: log Z is then taken from all the weights together, and the spread of the per-seed
estimates is reported beside the delta-method error. The NCP NLL is flagged as indicative only when the
ESS is below 1% of the samples or the per-seed std exceeds the paper's criterion (std of log Z <= 0.23,
NCP-VAE Sec. 5.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from ncp.models.base import LatentVAE, sample_from_prior
from ncp.priors.ncp_prior import NCPPrior
from ncp.progress import progress_bar


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
    vae: LatentVAE, ncp_prior: NCPPrior, num_samples: int, batch_size: int = 1000, desc: str | None = None
) -> LogZEstimate:
    """log Z of ``ncp_prior`` on ``vae``'s base prior from ``num_samples`` ancestral prior samples
    (with ``desc``, a progress bar of samples done goes to stderr)."""
    if num_samples < 2 or batch_size < 1:
        raise ValueError(f"need num_samples >= 2 and batch_size >= 1, got {num_samples}, {batch_size}")
    if ncp_prior.num_groups != vae.num_groups:
        raise ValueError(f"NCP prior has {ncp_prior.num_groups} groups but the VAE has {vae.num_groups}")
    ncp_prior.eval()  # BatchNorm classifiers must use their running statistics
    accumulator = LogMeanExpAccumulator()
    bar = progress_bar(num_samples, desc or "", unit="sample", disable=desc is None)
    for start in range(0, num_samples, batch_size):
        walk = vae.walk_prior(min(batch_size, num_samples - start), sample_from_prior)
        accumulator.add(ncp_prior.sum_log_r(walk.latents, walk.contexts))
        bar.update(walk.latents[0].shape[0])
    bar.close()
    return accumulator.estimate()


PAPER_LOG_Z_STD = 0.23  # NCP-VAE Sec. 5.2: "std. of log Z estimation <= 0.23" for a trusted NLL
MIN_ESS_FRACTION = 0.01  # below 1% of the samples the delta-method error itself is unreliable


@dataclass
class LogZOverSeeds:
    """log Z from several independent seeds: the pooled estimate, the per-seed ones and their spread."""

    pooled: LogZEstimate  # all seeds' weights together: the log Z an NLL subtracts
    per_seed: list[LogZEstimate]
    seeds: list[int]
    seed_std: float  # std (ddof 1) of the per-seed log Z estimates: compare with PAPER_LOG_Z_STD

    @property
    def std_error(self) -> float:
        """se of the pooled log Z: the larger of the delta-method error and seed_std / sqrt(seeds)."""
        return max(self.pooled.std_error, self.seed_std / math.sqrt(len(self.per_seed)))

    @property
    def ess_fraction(self) -> float:
        """Pooled ESS / pooled samples."""
        return self.pooled.ess / self.pooled.num_samples

    def warnings(self) -> list[str]:
        """Why an NLL using this log Z is indicative only (empty when neither criterion is broken)."""
        found = []
        if self.ess_fraction < MIN_ESS_FRACTION:
            found.append(
                f"ESS of log Z is {100 * self.ess_fraction:.2g}% of its samples (< {100 * MIN_ESS_FRACTION:g}%)"
            )
        if self.seed_std > PAPER_LOG_Z_STD:
            found.append(f"std of log Z over seeds is {self.seed_std:.3f} (> the paper's {PAPER_LOG_Z_STD})")
        return found

    def to_dict(self) -> dict:
        """Plain dict for JSON: pooled estimate, error, spread, ESS fraction, per-seed values, warnings."""
        return {
            "log_z": self.pooled.log_z,
            "std_error": self.std_error,
            "delta_method_se": self.pooled.std_error,
            "seed_std": self.seed_std,
            "ess": self.pooled.ess,
            "ess_fraction": self.ess_fraction,
            "num_samples": self.pooled.num_samples,
            "seeds": list(self.seeds),
            "per_seed": [asdict(estimate) for estimate in self.per_seed],
            "indicative_only": bool(self.warnings()),
            "warnings": self.warnings(),
        }


@torch.no_grad()
def estimate_log_z_over_seeds(
    vae: LatentVAE, ncp_prior: NCPPrior, num_samples: int, seeds: Sequence[int], batch_size: int = 1000
) -> LogZOverSeeds:
    """log Z with ``num_samples`` prior samples under each seed (torch's global RNG seeded with it)."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"need at least 2 distinct seeds for a spread of log Z, got {list(seeds)}")
    if num_samples < 2 or batch_size < 1:
        raise ValueError(f"need num_samples >= 2 and batch_size >= 1, got {num_samples}, {batch_size}")
    if ncp_prior.num_groups != vae.num_groups:
        raise ValueError(f"NCP prior has {ncp_prior.num_groups} groups but the VAE has {vae.num_groups}")
    ncp_prior.eval()
    pooled, per_seed = LogMeanExpAccumulator(), []
    for seed in seeds:
        torch.manual_seed(seed)  # walk_prior draws from the global RNG (on every device)
        accumulator = LogMeanExpAccumulator()
        for start in range(0, num_samples, batch_size):
            walk = vae.walk_prior(min(batch_size, num_samples - start), sample_from_prior)
            log_w = ncp_prior.sum_log_r(walk.latents, walk.contexts)
            accumulator.add(log_w)
            pooled.add(log_w)
        per_seed.append(accumulator.estimate())
    seed_std = float(np.std([estimate.log_z for estimate in per_seed], ddof=1))
    return LogZOverSeeds(pooled.estimate(), per_seed, list(seeds), seed_std)
