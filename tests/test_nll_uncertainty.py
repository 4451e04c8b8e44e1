"""The NCP NLL's full uncertainty: the paired base - NCP difference with log Z's error in quadrature, log Z
under several seeds with the paper's criterion, and a hierarchy where the NLL must pass each group's
context to the classifiers."""

from __future__ import annotations

import math

import pytest
import torch
from toy_hierarchy import LinearTiltLogRatio, TwoGroupToyVAE

from ncp.metrics.log_z import (
    PAPER_LOG_Z_STD,
    estimate_log_z,
    estimate_log_z_over_seeds,
    log_z_from_log_weights,
)
from ncp.metrics.nll import NLLResult, importance_weighted_nll, paired_difference
from ncp.priors import NCPPrior

torch.set_num_threads(1)


def result(per_image: list[float]) -> NLLResult:
    values = torch.tensor(per_image, dtype=torch.float64)
    return NLLResult(float(values.mean()), 0.0, 0.0, len(values), 1, per_image=values)


def test_paired_difference_by_hand_adds_log_z_error_in_quadrature():
    # differences (1, 2, 3): mean 2, sd 1, se 1/sqrt(3); log Z's se 0.5 adds in quadrature
    base, ncp = result([10.0, 12.0, 14.0]), result([9.0, 10.0, 11.0])
    found = paired_difference(base, ncp, log_z_std_error=0.5)
    assert found.nats == pytest.approx(2.0) and found.num_images == 3
    assert found.std_error_images == pytest.approx(1 / math.sqrt(3))
    assert found.std_error == pytest.approx(math.sqrt(1 / 3 + 0.25))
    # the images' NLLs vary by 2 nats, yet their paired differences by 1: pairing is what cuts the error
    assert found.std_error_images < base.per_image.std().item() / math.sqrt(3)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(base, result([1.0, 2.0]), 0.1)


class ZeroLikelihood(TwoGroupToyVAE):
    """The toy hierarchy with log p(x|z) = 0, so each log importance weight is log p r - log q alone."""

    def log_px(self, logits, x):
        return torch.zeros(len(x))


def test_hierarchical_nll_passes_each_groups_context_to_the_ratio():
    # With the true ratios, p(z_1) r_1 p(z_2|z_1) r_2(z_2, z_1) = q(z_1, z_2) exactly (Z = 1), so every
    # importance weight is 1 and the NLL is 0 to rounding. r_2 needs z_1 as its context: an NLL that drops
    # the contexts (or hands the wrong one) raises or leaves weights != 1, and this test fails.
    torch.manual_seed(0)
    vae = ZeroLikelihood()
    ncp_prior = NCPPrior(vae.true_ratios())
    x = torch.zeros(6, 4)
    found = importance_weighted_nll(vae, x, num_iw_samples=5, batch_size=10, log_r_fn=ncp_prior.sum_log_r)
    assert found.nats == pytest.approx(0.0, abs=1e-4)
    assert found.per_image.abs().max().item() < 1e-4
    base = importance_weighted_nll(vae, x, num_iw_samples=5, batch_size=10)
    assert base.nats > 0.05  # without the ratio the weights p / q are not 1: the test can see r


def test_log_z_over_seeds_pools_the_weights_and_reports_their_spread():
    # r_2 = exp(<beta, z_2>) through the hierarchy: log Z = (a^2 + s^2) |beta|^2 / 2 (see test_log_z.py)
    vae = TwoGroupToyVAE()
    beta = torch.tensor([0.6, -0.4])
    ncp_prior = NCPPrior([None, LinearTiltLogRatio(beta)])
    seeds = [11, 12, 13, 14, 15]
    found = estimate_log_z_over_seeds(vae, ncp_prior, 4000, seeds, batch_size=1500)
    # each seed's estimate is the plain estimator under that seed
    torch.manual_seed(13)
    assert found.per_seed[2].log_z == pytest.approx(
        estimate_log_z(vae, ncp_prior, 4000, 1500).log_z, abs=1e-12
    )
    assert found.pooled.num_samples == 20_000 and found.seeds == seeds
    # the pooled log Z is the log-mean of all 20,000 weights, i.e. log of the mean of the per-seed Z's
    mean_z = sum(math.exp(e.log_z) for e in found.per_seed) / len(seeds)
    assert found.pooled.log_z == pytest.approx(math.log(mean_z), abs=1e-9)
    spread = torch.tensor([e.log_z for e in found.per_seed], dtype=torch.float64).std().item()
    assert found.seed_std == pytest.approx(spread)
    assert found.std_error == max(found.pooled.std_error, spread / math.sqrt(5))
    expected = (vae.a**2 + vae.s**2) * beta.pow(2).sum().item() / 2
    assert abs(found.pooled.log_z - expected) < 4 * found.std_error
    assert found.warnings() == [] and found.to_dict()["indicative_only"] is False
    with pytest.raises(ValueError, match="2 distinct seeds"):
        estimate_log_z_over_seeds(vae, ncp_prior, 100, [3, 3])


def test_heavy_tailed_weights_are_flagged_indicative_only():
    # log w ~ N(0, 3^2): the ESS of 10,000 such weights is a few, and per-seed log Z scatters far more than
    # the paper's 0.23; both criteria fire and the NLL must then be called indicative only.
    from ncp.metrics.log_z import LogZOverSeeds

    torch.manual_seed(0)
    estimates = [log_z_from_log_weights(3.0 * torch.randn(10_000)) for _ in range(5)]
    pooled = log_z_from_log_weights(torch.cat([3.0 * torch.randn(10_000) for _ in range(5)]))
    spread = torch.tensor([e.log_z for e in estimates]).std().item()
    heavy = LogZOverSeeds(pooled, estimates, [1, 2, 3, 4, 5], spread)
    assert spread > PAPER_LOG_Z_STD and heavy.ess_fraction < 0.01
    messages = heavy.warnings()
    assert len(messages) == 2 and "< 1%" in messages[0] and "> the paper's 0.23" in messages[1]
    assert heavy.to_dict()["indicative_only"] is True
