"""FID and KID between image sets, from the features of a feature network (see feature_nets.py).

Features are computed batch by batch from uint8 images; grey images become RGB and are resized the
clean-fid way inside the Inception wrapper. KID is clean-fid's ``kernel_distance`` (cubic polynomial
kernel, unbiased MMD^2 averaged over random subsets). The Frechet distance is computed here without
``scipy.linalg.sqrtm``: clean-fid's version takes ~10 s per 2048-d call on a CPU, loses ~1e-3 on
rank-deficient covariances and breaks with SciPy >= 1.18; ours is the same formula, checked against
clean-fid's in the tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ncp.progress import progress_bar
from ncp.runtime import atomic_savez


@dataclass
class FIDResult:
    """An FID (and optionally KID) with what it was computed from."""

    fid: float
    feature_net: str  # e.g. "inception_v3" or "lenet_domain": FIDs are comparable only within one
    num_images: int  # images on the evaluated side
    num_reference: int  # images behind the reference statistics
    kid: float | None = None
    fid_bootstrap_std: float | None = (
        None  # std of FID over resamples of the evaluated and reference features
    )
    num_bootstrap: int = 0
    bootstrap_sides: str = (
        ""  # "both" (evaluated and reference resampled) or "evaluated" (no reference feats)
    )
    kid_std: float | None = None  # std of KID over clean-fid's random subsets (as torch-fidelity reports it)
    kid_subsets: int = 0

    def to_dict(self) -> dict:
        """Plain dict for JSON / tables."""
        return asdict(self)


@dataclass
class ReferenceFeatures:
    """Features (optional) and Gaussian statistics of a reference image set."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    feature_net: str
    num_images: int
    feats: np.ndarray | None = None  # (N, D), kept for KID
    dataset: str | None = None  # the params' data.name the reference images came from (None: not recorded)


def compute_features(
    images: Tensor, feature_net, batch_size: int = 50, desc: str | None = None
) -> np.ndarray:
    """Features (N, D) float32 of uint8 images (N, C, H, W) under ``feature_net``; with ``desc``, a
    progress bar goes to stderr (the job's log)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"compute_features expects uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    chunks = []
    bar = progress_bar(len(images), desc or "", disable=desc is None)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = feature_net.preprocess(images[start : start + batch_size])
            chunks.append(feature_net(x).float().cpu().numpy())
            bar.update(len(x))
    bar.close()
    return np.concatenate(chunks)


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64 (np.cov, as clean-fid)."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a covariance (tiny negative eigenvalues from rounding set to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    S1 S2 is similar to the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), so tr (S1 S2)^(1/2) is the sum
    of the square roots of that matrix's eigenvalues: real arithmetic and symmetric solvers only.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in dimension: {mu1.shape} vs {mu2.shape}")
    # torch's LAPACK (MKL) runs these 2048-d symmetric solvers several times faster than numpy's.
    s1, s2 = (
        torch.from_numpy(np.asarray(sigma1, np.float64)),
        torch.from_numpy(np.asarray(sigma2, np.float64)),
    )
    root1 = _psd_sqrt(s1)
    product = root1 @ s2 @ root1
    eigenvalues = torch.linalg.eigvalsh((product + product.T) / 2)  # symmetrise away rounding
    trace_sqrt = float(eigenvalues.clamp(min=0).sqrt().sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature sets (N1, D) and (N2, D).

    With fewer images than dimensions the covariances are rank-deficient; then tr (S1 S2)^(1/2) is
    taken exactly as the nuclear norm of A B^T / sqrt((N1-1)(N2-1)) (A, B the centred features).
    """
    a, b = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (N >= 2, D) of equal D, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) > a.shape[1]:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    a_centred, b_centred = a - a.mean(0), b - b.mean(0)
    scale = np.sqrt((len(a) - 1) * (len(b) - 1))
    trace_sqrt = float(torch.linalg.svdvals(torch.from_numpy(a_centred @ b_centred.T)).sum()) / scale
    diff = a.mean(0) - b.mean(0)
    trace1 = (a_centred**2).sum() / (len(a) - 1)
    trace2 = (b_centred**2).sum() / (len(b) - 1)
    return float(diff @ diff + trace1 + trace2 - 2 * trace_sqrt)


def kid_subset_values(
    feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> np.ndarray:
    """KID of each of clean-fid's random subsets, (num_subsets,): their mean is clean-fid's
    ``kernel_distance``, their std the KID's spread. Each value is one call of ``kernel_distance`` with one
    subset; numpy's global RNG is seeded once, so the subsets are those of a single call, then restored."""
    from cleanfid.fid import kernel_distance

    feats1, feats2 = np.asarray(feats1), np.asarray(feats2)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return np.array([kernel_distance(feats1, feats2, 1, max_subset_size) for _ in range(num_subsets)])
    finally:
        np.random.set_state(state)


def kid_from_features(
    feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """KID (clean-fid's kernel_distance, the mean over ``num_subsets`` random subsets), seeded."""
    return float(kid_subset_values(feats1, feats2, num_subsets, max_subset_size, seed).mean())


def bootstrap_fid_std(
    feats: np.ndarray, reference: ReferenceFeatures, num_bootstrap: int, seed: int = 0
) -> float:
    """Standard deviation of FID over ``num_bootstrap`` resamples (with replacement) of ``feats`` and, where
    the reference kept its features, of the reference too (both sides carry sampling noise)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_bootstrap):
        resampled = feats[rng.integers(0, len(feats), len(feats))]
        if reference.feats is not None:
            reference_resampled = reference.feats[rng.integers(0, len(reference.feats), len(reference.feats))]
            reference_stats = feature_statistics(reference_resampled)
        else:
            reference_stats = (reference.mu, reference.sigma)
        values.append(frechet_distance(*feature_statistics(resampled), *reference_stats))
    return float(np.std(values, ddof=1))


def reference_from_features(
    feats: np.ndarray, feature_net: str, keep_feats: bool = True
) -> ReferenceFeatures:
    """Reference statistics (and optionally the features themselves, for KID) of a feature set."""
    mu, sigma = feature_statistics(feats)
    return ReferenceFeatures(mu, sigma, feature_net, len(feats), np.asarray(feats) if keep_feats else None)


def fid_against_reference(
    feats: np.ndarray,
    reference: ReferenceFeatures,
    feature_net: str,
    with_kid: bool = True,
    num_bootstrap: int = 0,
    seed: int = 0,
    kid_subsets: int = 100,
) -> FIDResult:
    """FID (and KID where the reference kept its features) of features against a reference.

    KID costs ``kid_subsets`` x 3 products of (1000, D) matrices: about 30 s for 2048-d float32
    Inception features on two CPU cores at the default 100 subsets. The bootstrap costs two covariances
    and one Frechet distance per resample.
    """
    if reference.feature_net != feature_net:
        raise ValueError(f"reference statistics come from {reference.feature_net!r}, not {feature_net!r}")
    if reference.feats is not None:
        fid = fid_from_features(feats, reference.feats)
    else:
        fid = frechet_distance(*feature_statistics(feats), reference.mu, reference.sigma)
    kid = kid_std = None
    if with_kid and reference.feats is not None:
        subsets = kid_subset_values(feats, reference.feats, num_subsets=kid_subsets, seed=seed)
        kid, kid_std = float(subsets.mean()), float(subsets.std(ddof=1)) if kid_subsets > 1 else None
    spread = bootstrap_fid_std(feats, reference, num_bootstrap, seed) if num_bootstrap > 1 else None
    return FIDResult(
        fid,
        feature_net,
        len(feats),
        reference.num_images,
        kid,
        spread,
        num_bootstrap if spread is not None else 0,
        ("both" if reference.feats is not None else "evaluated") if spread is not None else "",
        kid_std,
        kid_subsets if kid is not None else 0,
    )


def save_reference_features(path: str | Path, reference: ReferenceFeatures) -> None:
    """Write reference statistics (mu, sigma, optional feats) and the feature net's name to .npz."""
    arrays = dict(mu=reference.mu, sigma=reference.sigma, feature_net=np.array(reference.feature_net))
    arrays["num_images"] = np.array(reference.num_images)
    if reference.dataset is not None:
        arrays["dataset"] = np.array(reference.dataset)
    if reference.feats is not None:
        arrays["feats"] = reference.feats
    atomic_savez(path, **arrays)


def load_reference_features(path: str | Path) -> ReferenceFeatures:
    """Read reference statistics written by :func:`save_reference_features`."""
    with np.load(Path(path), allow_pickle=False) as stored:
        feats = stored["feats"] if "feats" in stored.files else None
        dataset = str(stored["dataset"]) if "dataset" in stored.files else None
        return ReferenceFeatures(
            stored["mu"],
            stored["sigma"],
            str(stored["feature_net"]),
            int(stored["num_images"]),
            feats,
            dataset,
        )
