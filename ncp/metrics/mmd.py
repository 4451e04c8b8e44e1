"""Unbiased MMD^2 with a Gaussian kernel between latent populations (q(z), p(z), p_NCP(z)).

k(x, y) = exp(-||x - y||^2 / (2 sigma^2)); sigma comes from the median heuristic (median pairwise
Euclidean distance of the pooled q and p samples, Gretton et al. 2012) and is computed ONCE and
shared by MMD(q, p) and MMD(q, p_NCP), so the two numbers differ only through the samples. The
unbiased U-statistic drops the diagonals of the within-sample kernel matrices and can therefore be
slightly negative when the two distributions agree; it is reported as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

ROW_BLOCK = 1024  # kernel rows per block: 1024 x 5000 float64 = 40 MB at a time


def flatten_latents(latents: Tensor | Sequence[Tensor]) -> Tensor:
    """One row per sample: a tensor (N, *shape) or per-group tensors [(N, *shape_k)] -> (N, D) float64."""
    if isinstance(latents, Tensor):
        latents = [latents]
    rows = [z.detach().reshape(len(z), -1).to(torch.float64).cpu() for z in latents]  # (N, D_k) each
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"latent groups hold different numbers of samples: {[len(r) for r in rows]}")
    return torch.cat(rows, dim=1)  # (N, D)


def _as_float64(x) -> Tensor:
    """A (N, D) float64 CPU tensor from a tensor or array."""
    x = torch.as_tensor(x).detach().to(torch.float64).cpu()
    if x.dim() != 2:
        raise ValueError(f"expected samples of shape (N, D), got {tuple(x.shape)}")
    return x


def median_bandwidth(x, y, max_points: int = 2000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance within the pooled sample (x and y, at most ``max_points``
    rows drawn with a fixed seed), excluding each point's distance to itself."""
    pooled = torch.cat([_as_float64(x), _as_float64(y)])
    if len(pooled) > max_points:
        generator = torch.Generator().manual_seed(seed)
        pooled = pooled[torch.randperm(len(pooled), generator=generator)[:max_points]]
    distances = torch.cdist(pooled, pooled)  # (M, M)
    upper = torch.triu_indices(len(pooled), len(pooled), offset=1)
    bandwidth = float(np.median(distances[upper[0], upper[1]].numpy()))  # averages the middle pair
    if bandwidth <= 0:
        raise ValueError("median pairwise distance is 0: the samples are (nearly) all identical")
    return bandwidth


def _kernel_sum(a: Tensor, b: Tensor, bandwidth: float, drop_diagonal: bool) -> float:
    """Sum of k(a_i, b_j) over all pairs (without i == j when a is b), in row blocks."""
    total = 0.0
    for start in range(0, len(a), ROW_BLOCK):
        block = a[start : start + ROW_BLOCK]
        # ||u - v||^2 written out (not cdist) so that identical points give exactly 0.
        sq = (block**2).sum(1, keepdim=True) + (b**2).sum(1) - 2 * block @ b.T  # (rows, N_b)
        total += float(torch.exp(-sq.clamp(min=0) / (2 * bandwidth**2)).sum())
    if drop_diagonal:
        total -= len(a)  # k(x, x) = 1 for the Gaussian kernel
    return total


def mmd2_unbiased(x, y, bandwidth: float) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between samples x (M, D) and y (N, D)."""
    x, y = _as_float64(x), _as_float64(y)
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"need (M >= 2, D) and (N >= 2, D) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    m, n = len(x), len(y)
    within_x = _kernel_sum(x, x, bandwidth, drop_diagonal=True) / (m * (m - 1))
    within_y = _kernel_sum(y, y, bandwidth, drop_diagonal=True) / (n * (n - 1))
    across = _kernel_sum(x, y, bandwidth, drop_diagonal=False) / (m * n)
    return within_x + within_y - 2 * across


@dataclass
class LatentMMDResult:
    """MMD^2 of the aggregate posterior q against the base prior p and the NCP prior, one bandwidth."""

    mmd2_q_p: float
    mmd2_q_ncp: Optional[float]
    bandwidth: float  # the shared Gaussian kernel sigma, in the (PCA-reduced) space
    latent_dim: int  # flattened latent dimension before PCA
    compared_dim: int  # dimension the MMD was computed in
    pca_fitted_on: Optional[str]  # "q" where PCA was applied, None otherwise
    num_q: int
    num_p: int
    num_ncp: int

    def to_dict(self) -> dict:
        """Plain dict for JSON / tables."""
        return asdict(self)


def latent_mmd(
    q_latents,
    p_latents,
    ncp_latents=None,
    pca_dim: int = 500,
    max_bandwidth_points: int = 2000,
    seed: int = 0,
) -> LatentMMDResult:
    """MMD^2(q, p) and MMD^2(q, p_NCP) of latent samples (tensors or per-group lists) with one bandwidth.

    Where the flattened dimension exceeds ``pca_dim``, a PCA fitted on the q samples only (the
    reference population; fitting on a pool would let the prior samples choose the axes) projects
    all three populations. The bandwidth is the median heuristic on the pooled q and p samples.
    """
    q, p = flatten_latents(q_latents), flatten_latents(p_latents)
    ncp = flatten_latents(ncp_latents) if ncp_latents is not None else None
    latent_dim = q.shape[1]
    if p.shape[1] != latent_dim or (ncp is not None and ncp.shape[1] != latent_dim):
        raise ValueError("q, p and p_NCP latents must have the same flattened dimension")
    pca_fitted_on = None
    if latent_dim > pca_dim:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=min(pca_dim, len(q)), random_state=seed).fit(q.numpy())
        project = lambda z: torch.from_numpy(pca.transform(z.numpy()))  # (N, pca_dim)
        q, p = project(q), project(p)
        ncp = project(ncp) if ncp is not None else None
        pca_fitted_on = "q"
    bandwidth = median_bandwidth(q, p, max_bandwidth_points, seed)
    return LatentMMDResult(
        mmd2_q_p=mmd2_unbiased(q, p, bandwidth),
        mmd2_q_ncp=mmd2_unbiased(q, ncp, bandwidth) if ncp is not None else None,
        bandwidth=bandwidth,
        latent_dim=latent_dim,
        compared_dim=q.shape[1],
        pca_fitted_on=pca_fitted_on,
        num_q=len(q),
        num_p=len(p),
        num_ncp=len(ncp) if ncp is not None else 0,
    )
