"""Sampling-importance-resampling (SIR) for one latent group, as a ``GroupSampler``.

For each image, M proposals are drawn from the base prior p(z_k | z_<k) and one is kept with
probability w_m / sum_m' w_m', w = r_k(z, c(z_<k)) (paper Sec. 4.3). All images of a batch are
handled together: a chunk of m proposals per image is one (m, B, ...) draw scored by one classifier
call of m * B rows, so there is no Python loop over proposals or images. The chunk is sized to a
memory budget (``memory_budget_mb``; ``chunk_size`` caps m), so memory does not grow with M: the
resampling is streamed with the Gumbel-max trick, argmax_m (log w_m + G_m) with G_m ~ Gumbel(0, 1)
i.i.d. is distributed exactly as Categorical(w / sum w), and the argmax over all M is the best of the
per-chunk argmaxes. The effective sample size ESS = (sum w)^2 / sum w^2 (paper footnote 5) is
streamed the same way, from running log-sum-exps of log w and 2 log w.

On CUDA the classifier runs under bf16 autocast when, on the first chunk of each group, its log w
agree with float32 ones within ``autocast_tolerance`` nats; otherwise (and on the CPU) in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ncp.priors.ncp_prior import NCPPrior

# live activations at once, in units of the classifier's largest layer output (its input, its output,
# a residual branch and an SE or norm temporary): the factor behind the memory-budget chunk size
LIVE_ACTIVATIONS = 4


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


def largest_output_bytes(module: nn.Module, *inputs) -> tuple[Tensor, int]:
    """``module(*inputs)`` and the bytes of the largest tensor any of its submodules returned."""
    largest = 0

    def record(_module, _inputs, output) -> None:
        nonlocal largest
        if isinstance(output, Tensor):
            largest = max(largest, output.numel() * output.element_size())

    handles = [m.register_forward_hook(record) for m in module.modules()]
    try:
        output = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return output, max(largest, output.numel() * output.element_size())


def log_r_agrees_under_autocast(
    log_r_float32: Tensor, score, device_type: str, dtype: torch.dtype, tolerance: float
) -> bool:
    """Whether ``score()`` under autocast to ``dtype`` stays within ``tolerance`` nats of float32."""
    with torch.autocast(device_type, dtype=dtype):
        low = score().float()
    return bool((low - log_r_float32.float()).abs().max() <= tolerance)


class SIRSampler:
    """GroupSampler: keep one of ``num_proposals`` base-prior proposals per image, drawn by r_k."""

    def __init__(
        self,
        ncp_prior: NCPPrior,
        num_proposals: int,
        chunk_size: int = 256,
        memory_budget_mb: float = 512.0,
        autocast_tolerance: float = 0.02,
    ):
        if num_proposals < 1 or chunk_size < 1 or not memory_budget_mb > 0:
            raise ValueError(
                "need num_proposals >= 1, chunk_size >= 1 and memory_budget_mb > 0, got "
                f"{num_proposals}, {chunk_size} and {memory_budget_mb}"
            )
        # eval mode: BatchNorm must use its running statistics, not the proposals' batch statistics
        self.ncp_prior = ncp_prior.eval()
        self.num_proposals = num_proposals
        self.chunk_size = chunk_size
        self.memory_budget_bytes = memory_budget_mb * 2**20
        self.autocast_tolerance = autocast_tolerance
        # group -> bytes one scored proposal row takes at the classifier's widest layer
        self._row_bytes: dict[int, int] = {}
        # group -> whether its classifier runs under bf16 autocast (CUDA only, decided on first use)
        self._use_bf16: dict[int, bool] = {}
        # group -> [number of images, sum of ESS, sum of log mean r, sum of its square]
        self._totals: dict[int, list[float]] = {}

    def proposals_per_chunk(self, k: int, batch: int) -> int:
        """m, the proposals per image scored at once: the memory budget's rows over B, in [1, chunk_size]."""
        rows = int(self.memory_budget_bytes // (LIVE_ACTIVATIONS * self._row_bytes[k]))
        return max(1, min(self.chunk_size, rows // batch))

    def _score(self, k: int, flat: Tensor, context: Tensor | None) -> Tensor:
        """log w of proposal rows (m*B, *group_shape), in the precision chosen for group k."""
        if k not in self._row_bytes:  # first chunk: measure the widest layer's bytes per row
            log_w, largest = largest_output_bytes(_LogRatio(self.ncp_prior, k, context), flat)
            self._row_bytes[k] = max(1, math.ceil(largest / flat.shape[0])) + flat[0].numel() * 8
            if flat.device.type == "cuda" and k not in self._use_bf16:
                self._use_bf16[k] = log_r_agrees_under_autocast(
                    log_w,
                    lambda: self.ncp_prior.log_r(k, flat, context),
                    "cuda",
                    torch.bfloat16,
                    self.autocast_tolerance,
                )
            return log_w
        if self._use_bf16.get(k, False):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.ncp_prior.log_r(k, flat, context).float()
        return self.ncp_prior.log_r(k, flat, context)

    def __call__(self, k: int, prior: Distribution, context: Tensor | None) -> Tensor:
        """z_k (B, *group_shape) resampled from M proposals of ``prior`` (batch shape (B,))."""
        if not self.ncp_prior.has_classifier(k):
            return prior.sample()  # r_k = 1: every proposal is equally good
        with torch.inference_mode():
            best_z = self._resample(k, prior, context)
        return best_z.clone()  # a normal tensor: callers may use it outside inference mode

    def _resample(self, k: int, prior: Distribution, context: Tensor | None) -> Tensor:
        best_score = best_z = None
        log_sum_w = log_sum_w2 = None  # running logsumexp over proposals, (B,)
        all_finite = None  # one flag for all chunks: no device sync per chunk
        start = 0
        while start < self.num_proposals:
            # the first chunk has one proposal per image: it measures the classifier's memory per row
            m = 1 if k not in self._row_bytes else self.proposals_per_chunk(k, prior.batch_shape[0])
            m = min(m, self.num_proposals - start)
            start += m
            proposals = prior.sample((m,))  # (m, B, *group_shape)
            batch = proposals.shape[1]
            flat = proposals.reshape(m * batch, *proposals.shape[2:])  # (m*B, *group_shape)
            finite = torch.isfinite(proposals).all()
            # the context keeps its B rows; log_r broadcasts it over the m proposals
            log_w = self._score(k, flat, context).view(m, batch).double()  # (m, B)
            finite_w = torch.isfinite(log_w).all()
            all_finite = (
                torch.stack([finite, finite_w])
                if all_finite is None
                else (all_finite & torch.stack([finite, finite_w]))
            )
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
        latents_finite, weights_finite = all_finite.tolist()
        if not latents_finite:
            raise ValueError(
                f"SIR group {k}: the base prior gave non-finite proposals (NaN or inf); "
                "check the VAE checkpoint and the context of this group"
            )
        if not weights_finite or not torch.isfinite(log_sum_w).all():
            raise ValueError(
                f"SIR group {k}: the classifier gave non-finite log-weights (NaN or inf); "
                f"check the NCE classifier of group {k} (its training loss and weights)"
            )
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


class _LogRatio(nn.Module):
    """log r_k(., context) of one group as a module, so forward hooks see the classifier's layers."""

    def __init__(self, ncp_prior: NCPPrior, k: int, context: Tensor | None):
        super().__init__()
        self.ncp_prior, self.k, self.context = ncp_prior, k, context

    def forward(self, z: Tensor) -> Tensor:
        return self.ncp_prior.log_r(self.k, z, self.context)
