"""Langevin dynamics on narrow groups: the per-latent step scaled by the prior's variance stays exact
where the paper's one fixed step in z diverges, and non-finite chains stop with the group's name."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from toy_hierarchy import LinearTiltLogRatio, TwoGroupToyVAE

from ncp.priors import NCPPrior
from ncp.samplers import LangevinSampler

torch.set_num_threads(1)
SIGMA = 0.02  # about NVAE's narrowest prior std (0.017): the unadjusted update needs h < 4 sigma^2 = 0.0016


def narrow_prior(num_chains: int, dim: int = 4) -> Independent:
    """N(0, SIGMA^2 I), batch shape (num_chains,)."""
    return Independent(Normal(torch.zeros(num_chains, dim), SIGMA), 1)


def tilted(beta: float, dim: int = 4) -> NCPPrior:
    """log r = beta <1, z>: on N(0, SIGMA^2 I) the target is N(SIGMA^2 beta, SIGMA^2 I); beta 0 gives r = 1."""
    return NCPPrior([LinearTiltLogRatio(torch.full((dim,), float(beta)))])


def test_the_old_fixed_step_diverges_on_a_narrow_gaussian_and_stops_naming_the_group():
    # h = 0.01 = 25 sigma^2: each step multiplies z by 1 - h / (2 sigma^2) = -11.5, so after 5 steps the
    # chains are ~1e5 times too wide, and after the default 50 they overflow to inf / NaN.
    torch.manual_seed(0)
    few = LangevinSampler(tilted(0.0), num_steps=5, step_size=0.01, step_scaling="fixed")
    assert few(0, narrow_prior(500), None).std().item() > 1000 * SIGMA
    default = LangevinSampler(tilted(0.0), num_steps=50, step_size=0.01, step_scaling="fixed")
    with pytest.raises(
        FloatingPointError, match=r"group 0 has non-finite latents.*step_scaling: prior_variance"
    ):
        default(0, narrow_prior(500), None)


def test_the_prior_scaled_step_keeps_a_narrow_gaussian_exact():
    # the same step_size 0.01 now means h = 0.01 sigma^2: the chains stay on N(0, sigma^2), whose
    # stationary variance under the unadjusted update is sigma^2 / (1 - 0.01 / 4), 0.1% wider.
    torch.manual_seed(1)
    z = LangevinSampler(tilted(0.0), num_steps=50, step_size=0.01)(0, narrow_prior(20000), None)
    assert torch.isfinite(z).all()
    assert z.mean().item() == pytest.approx(0.0, abs=4 * SIGMA / (z.numel() ** 0.5))
    assert z.std().item() == pytest.approx(SIGMA, rel=0.02)


def test_the_prior_scaled_step_reaches_a_tilted_narrow_target():
    # log r = 25 <1, z> moves N(0, sigma^2) to N(sigma^2 25, sigma^2) = N(0.01, 0.02^2): half a prior std.
    # 300 steps of 0.05 in eps-space relax the mean by exp(-7.5); the variance bias is 1 / (1 - 0.05/4).
    torch.manual_seed(2)
    z = LangevinSampler(tilted(25.0), num_steps=300, step_size=0.05)(0, narrow_prior(20000), None)
    standard_error = SIGMA / (z.numel() ** 0.5)
    assert z.mean().item() == pytest.approx(SIGMA**2 * 25, abs=5 * standard_error)
    assert z.std().item() == pytest.approx(SIGMA, rel=0.03)


class NaNOnGroupTwo(nn.Module):
    """A classifier whose log r is NaN: its gradient makes every chain NaN at the first step."""

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return z.sum(-1) * float("nan")


def test_langevin_refuses_nan_latents_with_the_group_named_instead_of_writing_nan_pixels():
    # without the check walk_prior would decode NaN latents into NaN images and `ncp sample` would save them
    vae = TwoGroupToyVAE()
    sampler = LangevinSampler(NCPPrior([None, NaNOnGroupTwo()]), num_steps=3, step_size=0.01)
    with pytest.raises(
        FloatingPointError, match=r"^Langevin dynamics: group 1 has non-finite latents in 8 of 8"
    ):
        vae.walk_prior(8, sampler)


def test_step_sizes_follow_the_prior_variance_per_latent_and_bad_scaling_is_refused():
    prior = Independent(Normal(torch.zeros(2, 3), torch.tensor([0.02, 0.5, 1.0]).expand(2, 3)), 1)
    scaled = LangevinSampler(tilted(0.0, 3), 1, 0.1).step_sizes(prior)
    torch.testing.assert_close(scaled, 0.1 * torch.tensor([0.0004, 0.25, 1.0]).expand(2, 3))
    assert LangevinSampler(tilted(0.0, 3), 1, 0.1, step_scaling="fixed").step_sizes(prior) == 0.1
    with pytest.raises(ValueError, match="step_scaling must be one of prior_variance, fixed"):
        LangevinSampler(tilted(0.0, 3), 1, 0.1, step_scaling="eps")
