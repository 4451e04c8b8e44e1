"""Latent MMD: the unbiased Gaussian-kernel MMD^2 against a scipy reference, bandwidth, PCA helper."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

from ncp.metrics.mmd import flatten_latents, latent_mmd, median_bandwidth, mmd2_unbiased

torch.set_num_threads(1)


def reference_mmd2(x, y, sigma):
    """Gretton et al. (2012) eq. 3, written independently with scipy distances."""
    kxx = np.exp(-cdist(x, x, "sqeuclidean") / (2 * sigma**2))
    kyy = np.exp(-cdist(y, y, "sqeuclidean") / (2 * sigma**2))
    kxy = np.exp(-cdist(x, y, "sqeuclidean") / (2 * sigma**2))
    m, n = len(x), len(y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def test_mmd2_matches_scipy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    y = rng.normal(loc=0.3, scale=1.2, size=(55, 5))
    for sigma in (0.5, 1.7, 4.0):
        assert mmd2_unbiased(x, y, sigma) == pytest.approx(reference_mmd2(x, y, sigma), abs=1e-6)


def test_mmd2_uses_row_blocks_correctly(monkeypatch):
    import ncp.metrics.mmd as mmd

    monkeypatch.setattr(mmd, "ROW_BLOCK", 7)  # force several blocks, including a ragged last one
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(23, 3)) + 1
    assert mmd.mmd2_unbiased(x, y, 1.3) == pytest.approx(reference_mmd2(x, y, 1.3), abs=1e-6)


def test_median_bandwidth_matches_scipy():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(21, 4)) * 2
    assert median_bandwidth(x, y, max_points=1000) == pytest.approx(np.median(pdist(np.vstack([x, y]))), rel=1e-9)
    # Subsampled: deterministic for a seed, and close to the full median.
    big = rng.normal(size=(3000, 4))
    assert median_bandwidth(big, big, 500, seed=0) == median_bandwidth(big, big, 500, seed=0)
    assert median_bandwidth(big, big, 500, seed=0) == pytest.approx(np.median(pdist(big[:1500])), rel=0.05)


def test_same_distribution_near_zero_and_shift_large():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=generator)
    y = torch.randn(400, 8, generator=generator)
    shifted = torch.randn(400, 8, generator=generator) + 1.0
    sigma = median_bandwidth(x, y)
    same, different = mmd2_unbiased(x, y, sigma), mmd2_unbiased(x, shifted, sigma)
    assert abs(same) < 0.01  # unbiased: centred on 0, may be slightly negative
    assert different > 0.1 and different > 20 * abs(same)


def test_latent_mmd_shares_one_bandwidth_and_uses_pca():
    generator = torch.Generator().manual_seed(0)
    q = [torch.randn(300, 4, 3, 3, generator=generator), torch.randn(300, 6, generator=generator)]  # 42 dims
    p = [torch.randn(300, 4, 3, 3, generator=generator) * 1.5, torch.randn(300, 6, generator=generator)]
    ncp = [torch.randn(300, 4, 3, 3, generator=generator), torch.randn(300, 6, generator=generator)]
    result = latent_mmd(q, p, ncp, pca_dim=500)
    assert result.latent_dim == 42 and result.compared_dim == 42 and result.pca_fitted_on is None
    flat_q, flat_p, flat_ncp = flatten_latents(q), flatten_latents(p), flatten_latents(ncp)
    assert flat_q.shape == (300, 42)
    assert result.bandwidth == pytest.approx(median_bandwidth(flat_q, flat_p))
    assert result.mmd2_q_p == pytest.approx(reference_mmd2(flat_q.numpy(), flat_p.numpy(), result.bandwidth), abs=1e-6)
    assert result.mmd2_q_ncp == pytest.approx(
        reference_mmd2(flat_q.numpy(), flat_ncp.numpy(), result.bandwidth), abs=1e-6
    )
    assert result.mmd2_q_ncp < result.mmd2_q_p  # p_NCP here is drawn from q's own distribution

    reduced = latent_mmd(q, p, ncp, pca_dim=10)
    assert reduced.compared_dim == 10 and reduced.pca_fitted_on == "q"
    from sklearn.decomposition import PCA

    pca = PCA(n_components=10, random_state=0).fit(flat_q.numpy())
    pq, pp = pca.transform(flat_q.numpy()), pca.transform(flat_p.numpy())
    sigma = np.median(pdist(np.vstack([pq, pp])))
    assert reduced.bandwidth == pytest.approx(sigma, rel=1e-9)
    assert reduced.mmd2_q_p == pytest.approx(reference_mmd2(pq, pp, sigma), abs=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2_unbiased(np.zeros((3, 2)), np.ones((3, 2)), 0.0)
    with pytest.raises(ValueError, match="same flattened dimension"):
        latent_mmd(torch.zeros(5, 3), torch.zeros(5, 4))
