"""Sampling-importance-resampling (SIR) for one latent group, as a ``GroupSampler``.

For each image, M proposals are drawn from the base prior p(z_k | z_<k) and one is kept with
probability w_m / sum_m' w_m', w = r_k(z, c(z_<k)) (paper Sec. 4.3). Proposals are generated and
scored ``chunk_size`` at a time, so memory does not grow with M: the resampling is streamed with the
Gumbel-max trick, argmax_m (log w_m + G_m) with G_m ~ Gumbel(0, 1) i.i.d. is distributed exactly as
Categorical(w / sum w), and the argmax over all M is the best of the per-chunk argmaxes. The effective
sample size ESS = (sum w)^2 / sum w^2 (paper footnote 5) is streamed the same way, from running
log-sum-exps of log w and 2 log w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution

from ncp.priors.ncp_prior import NCPPrior


@dataclass
class SIRGroupStats:
    """ESS of SIR's importance weights for one group, averaged over every image sampled so far."""

    num_images: int
    num_proposals: int
    mean_ess: float  # mean over images of 1 / sum_m w_hat_m^2, in [1, M]
    mean_log_mean_r: float  # mean over images of log((1/M) sum_m r_m), a per-context log Z_k
    # std over images of that per-context log Z_k (Monte Carlo noise included): 0 only where Z_k does not
    # depend on z_<k, i.e. where the sampled (locally normalised) and scored (one global Z) priors agree
    std_log_mean_r: float = 0.0


class SIRSampler:
    """GroupSampler: keep one of ``num_proposals`` base-prior proposals per image, drawn by r_k."""

    def __init__(self, ncp_prior: NCPPrior, num_proposals: int, chunk_size: int = 256):
        if num_proposals < 1 or chunk_size < 1:
            raise ValueError(
                f"need num_proposals >= 1 and chunk_size >= 1, got {num_proposals} and {chunk_size}"
            )
        # eval mode: BatchNorm must use its running statistics, not the proposals' batch statistics
        self.ncp_prior = ncp_prior.eval()
        self.num_proposals = num_proposals
        self.chunk_size = chunk_size
        # group -> [number of images, sum of ESS, sum of log mean r, sum of its square]
        self._totals: dict[int, list[float]] = {}

    @torch.no_grad()
    def __call__(self, k: int, prior: Distribution, context: Tensor | None) -> Tensor:
        """z_k (B, *group_shape) resampled from M proposals of ``prior`` (batch shape (B,))."""
        if not self.ncp_prior.has_classifier(k):
            return prior.sample()  # r_k = 1: every proposal is equally good
        best_score = best_z = None
        log_sum_w = log_sum_w2 = None  # running logsumexp over proposals, (B,)
        for start in range(0, self.num_proposals, self.chunk_size):
            m = min(self.chunk_size, self.num_proposals - start)
            proposals = prior.sample((m,))  # (m, B, *group_shape)
            batch = proposals.shape[1]
            flat = proposals.reshape(m * batch, *proposals.shape[2:])  # (m*B, *group_shape)
            # the context keeps its B rows; log_r broadcasts it over the m proposals
            log_w = self.ncp_prior.log_r(k, flat, context).view(m, batch).double()  # (m, B)
            gumbel = -torch.empty_like(log_w).exponential_().log()  # -log Exp(1) ~ Gumbel(0, 1)
            chunk_score, chunk_index = (log_w + gumbel).max(dim=0)  # (B,)
            chunk_z = proposals[chunk_index, torch.arange(batch, device=proposals.device)]
            chunk_sum_w = torch.logsumexp(log_w, dim=0)
            chunk_sum_w2 = torch.logsumexp(2.0 * log_w, dim=0)
            if best_score is None:
                best_score, best_z = chunk_score, chunk_z
                log_sum_w, log_sum_w2 = chunk_sum_w, chunk_sum_w2
            else:
                better = chunk_score > best_score
                best_score = torch.where(better, chunk_score, best_score)
                best_z = torch.where(better.view(-1, *[1] * (best_z.dim() - 1)), chunk_z, best_z)
                log_sum_w = torch.logaddexp(log_sum_w, chunk_sum_w)
                log_sum_w2 = torch.logaddexp(log_sum_w2, chunk_sum_w2)
        if not torch.isfinite(log_sum_w).all():
            raise ValueError(f"group {k}: classifier gave non-finite or all-zero weights")
        self._record(k, log_sum_w, log_sum_w2)
        return best_z

    def _record(self, k: int, log_sum_w: Tensor, log_sum_w2: Tensor) -> None:
        """Add this call's per-image ESS and log mean weight to group k's running totals."""
        ess = torch.exp(2.0 * log_sum_w - log_sum_w2)  # (sum w)^2 / sum w^2, (B,)
        log_mean_r = log_sum_w - math.log(self.num_proposals)
        totals = self._totals.setdefault(k, [0, 0.0, 0.0, 0.0])
        totals[0] += ess.numel()
        totals[1] += ess.sum().item()
        totals[2] += log_mean_r.sum().item()
        totals[3] += log_mean_r.square().sum().item()

    def diagnostics(self) -> dict[int, SIRGroupStats]:
        """Per-group ESS statistics over all calls since construction."""
        return {
            k: SIRGroupStats(
                num_images=int(n),
                num_proposals=self.num_proposals,
                mean_ess=ess_sum / n,
                mean_log_mean_r=log_r_sum / n,
                std_log_mean_r=math.sqrt(max(square_sum / n - (log_r_sum / n) ** 2, 0.0) * n / max(n - 1, 1)),
            )
            for k, (n, ess_sum, log_r_sum, square_sum) in sorted(self._totals.items())
        }
