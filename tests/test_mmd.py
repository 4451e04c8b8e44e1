"""Latent MMD: the unbiased Gaussian-kernel MMD^2 against a scipy reference and a closed form, its standard
errors against the spread over repeats, bandwidth scales, PCA, and the Table 9 metric file."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

from ncp.config import ExperimentConfig
from ncp.evaluate import mmd_populations, write_mmd
from ncp.metrics.mmd import flatten_latents, latent_mmd, median_bandwidth, mmd2_unbiased, relative_mmd
from ncp.runtime import read_json

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
    assert median_bandwidth(x, y, max_points=1000) == pytest.approx(
        np.median(pdist(np.vstack([x, y]))), rel=1e-9
    )
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
    result = latent_mmd(q, p, ncp, pca_dim=500, bandwidth_scales=(1.0, 0.5))
    assert result.latent_dim == 42 and result.compared_dim == 42 and result.pca_fitted_on is None
    flat_q, flat_p, flat_ncp = flatten_latents(q), flatten_latents(p), flatten_latents(ncp)
    assert flat_q.shape == (300, 42)
    assert result.median_bandwidth == pytest.approx(median_bandwidth(flat_q, flat_p))
    assert [s["scale"] for s in result.scales] == [1.0, 0.5] and result.headline is result.scales[0]
    for entry in result.scales:  # both comparisons at the same bandwidth, scale x the median
        sigma = entry["scale"] * result.median_bandwidth
        assert entry["bandwidth"] == pytest.approx(sigma)
        assert entry["mmd2_q_p"] == pytest.approx(
            reference_mmd2(flat_q.numpy(), flat_p.numpy(), sigma), abs=1e-6
        )
        assert entry["mmd2_q_ncp"] == pytest.approx(
            reference_mmd2(flat_q.numpy(), flat_ncp.numpy(), sigma), abs=1e-6
        )
    headline = result.headline
    assert headline["mmd2_q_ncp"] < headline["mmd2_q_p"]  # p_NCP here is drawn from q's own distribution
    assert headline["z_score"] > 2  # and p is 1.5x wider in 36 of 42 dimensions: resolvable at 300 samples

    reduced = latent_mmd(q, p, ncp, pca_dim=10)
    assert reduced.compared_dim == 10 and reduced.pca_fitted_on == "q"
    from sklearn.decomposition import PCA

    pca = PCA(n_components=10, random_state=0).fit(flat_q.numpy())
    pq, pp = pca.transform(flat_q.numpy()), pca.transform(flat_p.numpy())
    sigma = np.median(pdist(np.vstack([pq, pp])))
    assert reduced.median_bandwidth == pytest.approx(sigma, rel=1e-9)
    assert reduced.headline["mmd2_q_p"] == pytest.approx(reference_mmd2(pq, pp, sigma), abs=1e-6)


def gaussian_kernel_mean(mean_gap: float, var_a: float, var_b: float, dim: int, sigma: float) -> float:
    """E k(x, y) for x ~ N(a, var_a I), y ~ N(b, var_b I), |a - b| = mean_gap, Gaussian kernel of width sigma:
    (s^2 / (s^2 + var_a + var_b))^(d/2) exp(-|a - b|^2 / (2 (s^2 + var_a + var_b)))."""
    spread = sigma**2 + var_a + var_b
    return (sigma**2 / spread) ** (dim / 2) * np.exp(-(mean_gap**2) / (2 * spread))


def test_relative_mmd_matches_the_closed_form_for_gaussians():
    dim, sigma, gap_p, gap_ncp = 3, 1.5, 0.8, 0.3
    generator = torch.Generator().manual_seed(3)
    direction = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    q = torch.randn(3000, dim, generator=generator, dtype=torch.float64)
    p = torch.randn(2500, dim, generator=generator, dtype=torch.float64) * 1.2 + gap_p * direction
    ncp = torch.randn(2500, dim, generator=generator, dtype=torch.float64) + gap_ncp * direction
    truth_p = (
        gaussian_kernel_mean(0, 1, 1, dim, sigma)
        + gaussian_kernel_mean(0, 1.44, 1.44, dim, sigma)
        - 2 * gaussian_kernel_mean(gap_p, 1, 1.44, dim, sigma)
    )
    truth_ncp = 2 * gaussian_kernel_mean(0, 1, 1, dim, sigma) - 2 * gaussian_kernel_mean(
        gap_ncp, 1, 1, dim, sigma
    )
    result = relative_mmd(q, p, ncp, sigma)
    assert result.mmd2_q_p == pytest.approx(mmd2_unbiased(q, p, sigma), abs=1e-12)
    assert result.mmd2_q_ncp == pytest.approx(mmd2_unbiased(q, ncp, sigma), abs=1e-12)
    assert abs(result.mmd2_q_p - truth_p) < 4 * result.mmd2_q_p_se and result.mmd2_q_p_se < truth_p / 5
    assert (
        abs(result.mmd2_q_ncp - truth_ncp) < 4 * result.mmd2_q_ncp_se and result.mmd2_q_ncp_se < truth_ncp / 3
    )
    assert abs(result.difference - (truth_p - truth_ncp)) < 4 * result.difference_se
    assert result.z_score > 4  # p_NCP (gap 0.3) is closer to q than p (gap 0.8, wider) is


@pytest.mark.parametrize(
    "gap_p, gap_ncp, low, high",
    [
        (0.6, 0.3, 0.8, 1.25),  # all three populations differ: the first-order error is the spread
        (
            0.0,
            0.0,
            0.9,
            2.0,
        ),  # all the same distribution: second order; the plug-in error stays on the safe side
    ],
)
def test_standard_errors_match_the_spread_over_repeats(gap_p, gap_ncp, low, high):
    generator = torch.Generator().manual_seed(4)
    estimates, errors = [], []
    for _ in range(200):
        q = torch.randn(300, 4, generator=generator)
        p = torch.randn(200, 4, generator=generator) + gap_p
        ncp = torch.randn(150, 4, generator=generator) + gap_ncp
        result = relative_mmd(q, p, ncp, 2.0)
        estimates.append([result.mmd2_q_p, result.mmd2_q_ncp, result.difference])
        errors.append([result.mmd2_q_p_se, result.mmd2_q_ncp_se, result.difference_se])
    ratio = np.mean(errors, axis=0) / np.std(estimates, axis=0)  # reported error / actual spread
    assert np.all(ratio > low) and np.all(ratio < high), ratio


def _write_latents_and_samples(tmp_path, num_samples: int):
    """Two groups: q = N(0, I); base prior samples N(0, 1.3^2 I); NCP samples N(0, I)."""
    generator = torch.Generator().manual_seed(5)
    latents, shapes = [], [(2, 2, 2), (5,)]
    for k, shape in enumerate(shapes):
        path = tmp_path / f"group_{k}.pt"
        torch.save({"group": k, "z_q": torch.randn(900, *shape, generator=generator)}, path)
        latents.append(path)
    samples = []
    for method, scale in (("base", 1.3), ("sir", 1.0)):
        path = tmp_path / f"{method}.pt"
        torch.save(
            {
                "method": method,
                "latents": [torch.randn(num_samples, *s, generator=generator) * scale for s in shapes],
            },
            path,
        )
        samples.append(path)
    return latents, samples


def test_evaluate_mmd_writes_errors_and_the_per_scale_tally(tmp_path):
    latents, samples = _write_latents_and_samples(tmp_path, 400)
    cfg = ExperimentConfig.from_params(
        {"evaluate": {"mmd": {"num_samples": 300, "num_q": 600, "bandwidth_scales": [1.0, 0.5]}}}
    )
    q_latents = [torch.load(path)["z_q"][:600] for path in latents]  # `evaluate mmd` encodes test images
    write_mmd(cfg, q_latents, {"q_source": "given"}, mmd_populations(cfg, samples), tmp_path / "mmd.json")
    report = read_json(tmp_path / "mmd.json")
    assert report["num_samples"] == 300 and report["num_q"] == 600 and report["ncp_method"] == "sir"
    assert report["q_source"] == "given" and report["provenance"]["job"] == "evaluate mmd"
    for group in report["per_group"]:
        assert group["num_q"] == 600 and group["num_p"] == group["num_ncp"] == 300
        headline = group["scales"][0]
        assert headline["scale"] == 1.0 and group["q_p"] == headline["mmd2_q_p"] and group["q_p_se"] > 0
        assert group["z_score"] == pytest.approx(headline["difference"] / headline["difference_se"])
    # The base prior is 1.3x too wide in every dimension: p_NCP (= q's law) is closer in both groups.
    assert report["ncp_closer"] == {
        "1": {"groups": 2, "lower": 2, "closer": 2, "farther": 0},
        "0.5": {"groups": 2, "lower": 2, "closer": 2, "farther": 0},
    }


def test_evaluate_mmd_refuses_fewer_samples_than_asked(tmp_path):
    _, samples = _write_latents_and_samples(tmp_path, 100)
    cfg = ExperimentConfig.from_params({"evaluate": {"mmd": {"num_samples": 300}}})
    with pytest.raises(
        ValueError, match="evaluate.mmd.num_samples is 300 but the sample files hold 100 images"
    ):
        mmd_populations(cfg, samples)  # `evaluate mmd` calls it before it encodes or writes anything


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2_unbiased(np.zeros((3, 2)), np.ones((3, 2)), 0.0)
    with pytest.raises(ValueError, match="same flattened dimension"):
        latent_mmd(torch.zeros(5, 3), torch.zeros(5, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="bandwidth scales must be positive"):
        latent_mmd(torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3), bandwidth_scales=(1.0, 0.0))
