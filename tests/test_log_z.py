"""Known-answer tests for the log Z estimator, flat and through a two-group hierarchy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from toy_hierarchy import (
    LinearTiltLogRatio,
    MixtureLogRatio,
    SingleGroupToyVAE,
    TwoGroupToyVAE,
    make_mixture,
)

from ncp.metrics.log_z import estimate_log_z, log_z_from_log_weights
from ncp.priors import NCPPrior

torch.set_num_threads(1)


def test_log_z_of_small_weight_sets_by_hand():
    # w = (1, 3): Z_hat = 2, ESS = 4^2 / 10 = 1.6, se = sd(w) / sqrt(2) / Z_hat = sqrt(2)/sqrt(2)/2
    found = log_z_from_log_weights(torch.tensor([0.0, math.log(3.0)]))
    assert found.log_z == pytest.approx(math.log(2.0))
    assert found.ess == pytest.approx(1.6)
    assert found.std_error == pytest.approx(0.5)
    assert found.num_samples == 2
    equal = log_z_from_log_weights(torch.full((4,), 1000.0))  # exp(1000) overflows float64
    assert equal.log_z == pytest.approx(1000.0) and equal.ess == pytest.approx(4.0)
    assert equal.std_error == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        log_z_from_log_weights(torch.tensor([0.0, float("nan")]))


@pytest.mark.parametrize("dim", [2, 20])
def test_true_ratio_gives_log_z_zero_and_offset_shifts_it(dim):
    torch.manual_seed(0)
    q = make_mixture(dim)
    vae = SingleGroupToyVAE(q)
    found = estimate_log_z(vae, NCPPrior([MixtureLogRatio(q)]), num_samples=50_000, batch_size=7000)
    assert found.num_samples == 50_000 and found.ess < 50_000
    assert 0.0 < found.std_error < 0.03
    assert abs(found.log_z) < 4 * found.std_error, found
    shifted = estimate_log_z(vae, NCPPrior([MixtureLogRatio(q, offset=1.5)]), 50_000, 7000)
    assert abs(shifted.log_z - 1.5) < 4 * shifted.std_error, shifted


def test_log_z_through_hierarchy_with_tilted_second_group():
    """True ratios normalise each conditional (log Z = 0); tilting group 2 by exp(<beta, z_2>) gives
    Z = E_{z_1 ~ N(0, I)} exp(a <beta, z_1> + s^2 |beta|^2 / 2) = exp((a^2 + s^2) |beta|^2 / 2)."""
    torch.manual_seed(0)
    vae = TwoGroupToyVAE()
    exact = estimate_log_z(vae, NCPPrior(vae.true_ratios()), 40_000, 10_000)
    assert abs(exact.log_z) < 4 * exact.std_error and exact.std_error < 0.03, exact
    beta = torch.tensor([0.6, -0.4])
    tilted = estimate_log_z(vae, NCPPrior([None, LinearTiltLogRatio(beta)]), 40_000, 10_000)
    expected = (vae.a**2 + vae.s**2) * beta.pow(2).sum().item() / 2
    assert abs(tilted.log_z - expected) < 4 * tilted.std_error, (tilted, expected)
    assert expected > 20 * tilted.std_error  # the test can tell log Z from 0


def test_std_error_matches_spread_over_repeats():
    """Lognormal weights, log r = <beta, z>, z ~ N(0, I): log Z = |beta|^2 / 2; 300 repeats of N=500."""
    torch.manual_seed(0)
    beta = torch.tensor([0.5, -0.3, 0.4])
    log_w = torch.randn(300, 500, 3) @ beta  # (repeats, N)
    estimates = [log_z_from_log_weights(row) for row in log_w]
    log_z = torch.tensor([e.log_z for e in estimates], dtype=torch.float64)
    mean_se = sum(e.std_error for e in estimates) / len(estimates)
    assert 0.8 < log_z.std().item() / mean_se < 1.25, (log_z.std().item(), mean_se)
    exact = beta.pow(2).sum().item() / 2
    assert abs(log_z.mean().item() - exact) < 4 * mean_se / math.sqrt(300)


def test_bad_arguments_raise():
    vae = SingleGroupToyVAE(make_mixture(2))
    with pytest.raises(ValueError, match="groups"):
        estimate_log_z(vae, NCPPrior([None, None]), 100, 10)
    with pytest.raises(ValueError, match="num_samples"):
        estimate_log_z(vae, NCPPrior([nn.Identity()]), 1, 10)
