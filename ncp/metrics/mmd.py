"""Unbiased MMD^2 with a Gaussian kernel between latent populations (q(z), p(z), p_NCP(z)), with errors.

k(x, y) = exp(-||x - y||^2 / (2 sigma^2)); sigma comes from the median heuristic (median pairwise
Euclidean distance of the pooled q and p samples, Gretton et al. 2012) and is computed ONCE and
shared by MMD(q, p) and MMD(q, p_NCP), so the two numbers differ only through the samples. The
unbiased U-statistic drops the diagonals of the within-sample kernel matrices and can therefore be
slightly negative when the two distributions agree; it is reported as is.

Whether p_NCP is closer to q than p is, is the relative-similarity question of Bounliphone et al.
(ICLR 2016): the difference MMD^2(q, p) - MMD^2(q, p_NCP) comes with its standard error from the
first-order (Hoeffding) expansion of the two U-statistics, which share the q sample. Only kernel row
and column means are needed, so nothing bigger than a block of the kernel matrix is ever held. The
plug-in estimate matches the spread over repeated draws where the populations differ, and overstates
it (about 1.4x) where they are the same distribution and the fluctuation is of second order
(tests/test_mmd.py measures both), so "more than two standard errors" errs on the safe side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

ROW_BLOCK = 1024  # kernel rows per block: 1024 x 10,000 float64 = 80 MB at a time


@torch.no_grad()
def encode_latents(
    model, images, num_latents: int, batch_size: int, generator: torch.Generator
) -> list[Tensor]:
    """Per group, ``num_latents`` draws z_k ~ q(z_k | z_<k, x) (float32, CPU) over an ImageSet's images: each
    image is encoded ceil(num_latents / N) times with fresh noise (and binarisation), num_latents kept at random."""
    from ncp.data import iterate_batches

    device = next(model.parameters()).device
    passes = -(-num_latents // len(images.images))
    per_group: list[list[Tensor]] = [[] for _ in range(model.num_groups)]
    for _ in range(passes):
        for x in iterate_batches(images, batch_size, shuffle=False, generator=generator):
            for k, z in enumerate(model(x.to(device), noise_scale=1.0).latents):
                per_group[k].append(z.to("cpu", torch.float32))
    keep = torch.randperm(passes * len(images.images), generator=generator)[:num_latents]
    return [torch.cat(group)[keep] for group in per_group]


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


def kernel_means(a: Tensor, b: Tensor, bandwidth: float, same: bool = False) -> tuple[Tensor, Tensor]:
    """Row means (len(a),) and column means (len(b),) of the Gaussian kernel matrix K(a, b), built in
    row blocks. ``same=True`` (a is b) leaves out the diagonal, as the unbiased statistic does."""
    row_sums = torch.empty(len(a), dtype=torch.float64)
    col_sums = torch.zeros(len(b), dtype=torch.float64)
    b_sq = (b**2).sum(1)  # (N_b,)
    for start in range(0, len(a), ROW_BLOCK):
        block = a[start : start + ROW_BLOCK]
        # ||u - v||^2 written out (not cdist) so that identical points give exactly 0.
        sq = (block**2).sum(1, keepdim=True) + b_sq - 2 * block @ b.T  # (rows, N_b)
        kernel = torch.exp(-sq.clamp(min=0) / (2 * bandwidth**2))
        row_sums[start : start + len(block)] = kernel.sum(1)
        col_sums += kernel.sum(0)
    if same:  # k(x, x) = 1 for the Gaussian kernel
        return (row_sums - 1) / (len(b) - 1), (col_sums - 1) / (len(a) - 1)
    return row_sums / len(b), col_sums / len(a)


def _check_pair(x: Tensor, y: Tensor, bandwidth: float) -> None:
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(
            f"need (M >= 2, D) and (N >= 2, D) samples, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")


def mmd2_unbiased(x, y, bandwidth: float) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between samples x (M, D) and y (N, D)."""
    x, y = _as_float64(x), _as_float64(y)
    _check_pair(x, y, bandwidth)
    within_x, _ = kernel_means(x, x, bandwidth, same=True)
    within_y, _ = kernel_means(y, y, bandwidth, same=True)
    across_rows, _ = kernel_means(x, y, bandwidth)
    return float(within_x.mean() + within_y.mean() - 2 * across_rows.mean())


@dataclass
class RelativeMMD:
    """MMD^2(q, p) and MMD^2(q, p_NCP) at one bandwidth, and how sure we are which is smaller."""

    bandwidth: float
    mmd2_q_p: float
    mmd2_q_p_se: float
    mmd2_q_ncp: float
    mmd2_q_ncp_se: float
    difference: float  # MMD^2(q, p) - MMD^2(q, p_NCP): positive when p_NCP is closer to q
    difference_se: float

    @property
    def z_score(self) -> float:
        """The difference in standard errors (the relative-similarity test's statistic)."""
        return self.difference / self.difference_se if self.difference_se > 0 else float("nan")


def relative_mmd(q, p, ncp, bandwidth: float) -> RelativeMMD:
    """Both MMD^2 statistics against the shared q sample, with first-order standard errors.

    With h the Hoeffding projection of each sample point, Var(MMD^2_u(X, Y)) ~ 4 Var(h_x)/m +
    4 Var(h_y)/n, h_x(x) = E k(x, x') - E k(x, y), h_y(y) = E k(y, y') - E k(x, y); for the
    difference the q points' projection is E k(x, z) - E k(x, y) (Bounliphone et al. 2016).
    """
    q, p, ncp = _as_float64(q), _as_float64(p), _as_float64(ncp)
    _check_pair(q, p, bandwidth)
    _check_pair(q, ncp, bandwidth)
    m, n, r = len(q), len(p), len(ncp)
    qq, _ = kernel_means(q, q, bandwidth, same=True)  # (m,)
    pp, _ = kernel_means(p, p, bandwidth, same=True)  # (n,)
    nn, _ = kernel_means(ncp, ncp, bandwidth, same=True)  # (r,)
    qp_rows, qp_cols = kernel_means(q, p, bandwidth)  # (m,), (n,)
    qn_rows, qn_cols = kernel_means(q, ncp, bandwidth)  # (m,), (r,)
    var = lambda values: float(values.var()) if len(values) > 1 else 0.0  # noqa: E731
    mmd2_q_p = float(qq.mean() + pp.mean() - 2 * qp_rows.mean())
    mmd2_q_ncp = float(qq.mean() + nn.mean() - 2 * qn_rows.mean())
    var_q_p = 4 * var(qq - qp_rows) / m + 4 * var(pp - qp_cols) / n
    var_q_ncp = 4 * var(qq - qn_rows) / m + 4 * var(nn - qn_cols) / r
    var_difference = 4 * var(qn_rows - qp_rows) / m + 4 * var(pp - qp_cols) / n + 4 * var(nn - qn_cols) / r
    return RelativeMMD(
        bandwidth=bandwidth,
        mmd2_q_p=mmd2_q_p,
        mmd2_q_p_se=var_q_p**0.5,
        mmd2_q_ncp=mmd2_q_ncp,
        mmd2_q_ncp_se=var_q_ncp**0.5,
        difference=mmd2_q_p - mmd2_q_ncp,
        difference_se=var_difference**0.5,
    )


@dataclass
class LatentMMDResult:
    """MMD^2 of the aggregate posterior q against the base prior p and the NCP prior, per bandwidth."""

    scales: list[dict]  # one RelativeMMD (as a dict, plus its scale and z_score) per bandwidth scale
    median_bandwidth: float  # the median heuristic; bandwidth = scale x this, in the (PCA-reduced) space
    latent_dim: int  # flattened latent dimension before PCA
    compared_dim: int  # dimension the MMD was computed in
    pca_fitted_on: str | None  # "q" where PCA was applied, None otherwise
    num_q: int
    num_p: int
    num_ncp: int

    @property
    def headline(self) -> dict:
        """The entry at the median-heuristic bandwidth (scale 1), or the first scale where 1 is absent."""
        return next((s for s in self.scales if s["scale"] == 1.0), self.scales[0])

    def to_dict(self) -> dict:
        """Plain dict for JSON / tables."""
        return asdict(self)


def latent_mmd(
    q_latents,
    p_latents,
    ncp_latents,
    pca_dim: int = 500,
    bandwidth_scales: Sequence[float] = (1.0,),
    max_bandwidth_points: int = 2000,
    seed: int = 0,
) -> LatentMMDResult:
    """MMD^2(q, p) and MMD^2(q, p_NCP) of latent samples (tensors or per-group lists), with errors.

    Where the flattened dimension exceeds ``pca_dim``, a PCA fitted on the q samples only (the
    reference population; fitting on a pool would let the prior samples choose the axes) projects
    all three populations. The bandwidth is the median heuristic on the pooled q and p samples times
    each of ``bandwidth_scales`` (the same for both comparisons).
    """
    q, p, ncp = flatten_latents(q_latents), flatten_latents(p_latents), flatten_latents(ncp_latents)
    latent_dim = q.shape[1]
    if p.shape[1] != latent_dim or ncp.shape[1] != latent_dim:
        raise ValueError("q, p and p_NCP latents must have the same flattened dimension")
    if not bandwidth_scales or min(bandwidth_scales) <= 0:
        raise ValueError(f"bandwidth scales must be positive numbers, got {list(bandwidth_scales)}")
    pca_fitted_on = None
    if latent_dim > pca_dim:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=min(pca_dim, len(q)), random_state=seed).fit(q.numpy())
        project = lambda z: torch.from_numpy(pca.transform(z.numpy()))  # noqa: E731  (N, pca_dim)
        q, p, ncp = project(q), project(p), project(ncp)
        pca_fitted_on = "q"
    median = median_bandwidth(q, p, max_bandwidth_points, seed)
    scales = []
    for scale in bandwidth_scales:
        result = relative_mmd(q, p, ncp, median * scale)
        scales.append({"scale": float(scale), **asdict(result), "z_score": result.z_score})
    return LatentMMDResult(
        scales=scales,
        median_bandwidth=median,
        latent_dim=latent_dim,
        compared_dim=q.shape[1],
        pca_fitted_on=pca_fitted_on,
        num_q=len(q),
        num_p=len(p),
        num_ncp=len(ncp),
    )


def ncp_closer_counts(per_group: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per bandwidth scale, over groups: MMD^2(q, p_NCP) below MMD^2(q, p) at all ("lower"), by more than two
    standard errors ("closer"), and above it by more than two ("farther")."""
    counts: dict[str, dict[str, int]] = {}
    for group in per_group:
        for entry in group["scales"]:
            tally = counts.setdefault(
                f"{entry['scale']:g}", {"groups": 0, "lower": 0, "closer": 0, "farther": 0}
            )
            tally["groups"] += 1
            tally["lower"] += entry["difference"] > 0
            tally["closer"] += entry["z_score"] > 2
            tally["farther"] += entry["z_score"] < -2
    return counts
