"""Known-answer tests for SIR and Langevin dynamics: with the true ratio q/p they must sample q."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from scipy.stats import chi2
from torch import Tensor, nn
from torch.distributions import Distribution
from toy_hierarchy import (
    LinearTiltLogRatio,
    MixtureLogRatio,
    SingleGroupToyVAE,
    TwoGroupToyVAE,
    make_mixture,
    standard_normal,
)

from ncp.priors import NCPPrior, build_classifier
from ncp.samplers import LangevinSampler, SIRSampler

torch.set_num_threads(1)


def assert_moments_match(z: Tensor, mean: Tensor, cov: Tensor, limit: float = 5.0) -> None:
    """Sample mean and covariance of z (N, D) within ``limit`` standard errors of the truth.

    Standard errors are the Gaussian ones: sqrt(S_ii / N) for means and sqrt((S_ii S_jj + S_ij^2) / N)
    for covariances. Samples of N(0, I) instead of q sit 20+ standard errors away in these tests.
    """
    n = z.shape[0]
    var = cov.diagonal()
    mean_z = ((z.mean(0) - mean) / (var / n).sqrt()).abs().max().item()
    cov_se = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    cov_z = ((torch.cov(z.T) - cov) / cov_se).abs().max().item()
    assert mean_z < limit and cov_z < limit, f"mean off by {mean_z:.1f} se, covariance by {cov_z:.1f} se"


@pytest.mark.parametrize("dim, num_proposals", [(2, 100), (20, 200)])
def test_sir_with_true_ratio_reproduces_mixture_moments(dim, num_proposals):
    torch.manual_seed(0)
    q = make_mixture(dim)
    sampler = SIRSampler(NCPPrior([MixtureLogRatio(q)]), num_proposals, chunk_size=64)
    z = SingleGroupToyVAE(q).walk_prior(4000, sampler).latents[0]
    assert_moments_match(z, q.mean(), q.covariance())
    stats = sampler.diagnostics()[0]
    assert stats.num_images == 4000 and 1.0 <= stats.mean_ess <= num_proposals
    # (1/M) sum r estimates each image's Z = 1 (log-mean biased low by about 1 / (2 ESS))
    assert abs(stats.mean_log_mean_r) < 0.05


@pytest.mark.parametrize("dim", [2, 20])
def test_langevin_on_known_energy_reproduces_mixture_moments(dim):
    torch.manual_seed(0)
    q = make_mixture(dim)
    # with the true ratio, E = -log r - log p = -log q
    sampler = LangevinSampler(NCPPrior([MixtureLogRatio(q)]), num_steps=400, step_size=0.05)
    z = SingleGroupToyVAE(q).walk_prior(4000, sampler).latents[0]
    assert_moments_match(z, q.mean(), q.covariance())


def test_langevin_gradient_is_the_energy_gradient():
    """p = N(0, I), log r = <beta, z>: E = |z|^2 / 2 - <beta, z> + const, grad E = z - beta."""
    beta = torch.tensor([0.7, -1.3, 0.2])
    sampler = LangevinSampler(NCPPrior([LinearTiltLogRatio(beta)]), num_steps=1, step_size=0.1)
    z = torch.randn(5, 3)
    with torch.no_grad():  # as inside walk_prior
        grad = sampler.grad_energy(0, z, None, standard_normal(5, 3))
    assert torch.allclose(grad, z - beta, atol=1e-6)


@pytest.mark.parametrize("sampler_kind", ["sir", "langevin"])
def test_sampling_through_toy_hierarchy_matches_q_joint_moments(sampler_kind):
    torch.manual_seed(0)
    vae = TwoGroupToyVAE()
    ncp_prior = NCPPrior(vae.true_ratios())
    if sampler_kind == "sir":
        sampler = SIRSampler(ncp_prior, num_proposals=300, chunk_size=100)
    else:
        sampler = LangevinSampler(ncp_prior, num_steps=400, step_size=0.05)
    walk = vae.walk_prior(4000, sampler)
    z = torch.cat(walk.latents, 1)  # (N, 4): (z_1, z_2)
    assert torch.equal(walk.contexts[1], walk.latents[0])
    assert_moments_match(z, *vae.q_joint_moments())


class RowCountingLogRatio(nn.Module):
    """Wraps a log-ratio module and records the largest batch it was ever called with."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.max_rows, self.total_rows = inner, 0, 0

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self.max_rows = max(self.max_rows, z.shape[0])
        self.total_rows += z.shape[0]
        return self.inner(z, context)


def test_sir_memory_is_flat_in_num_proposals():
    torch.manual_seed(0)
    num_images, num_proposals, chunk_size = 8, 5000, 128
    counter = RowCountingLogRatio(MixtureLogRatio(make_mixture(2)))
    prior = standard_normal(num_images, 2)
    draws = []
    plain_sample = prior.sample

    def counting_sample(shape: tuple[int, ...] = ()) -> Tensor:
        draws.append(tuple(shape))
        return plain_sample(torch.Size(shape))

    prior.sample = counting_sample
    sampler = SIRSampler(NCPPrior([counter]), num_proposals, chunk_size)
    z = sampler(0, prior, None)
    assert z.shape == (num_images, 2) and torch.isfinite(z).all()
    assert counter.max_rows <= chunk_size * num_images
    assert counter.total_rows == num_proposals * num_images  # every proposal scored once
    assert max(shape[0] for shape in draws) <= chunk_size and sum(s[0] for s in draws) == num_proposals
    assert 1.0 <= sampler.diagnostics()[0].mean_ess <= num_proposals


class FixedProposals(Distribution):
    """A stand-in prior whose successive ``sample((m,))`` calls hand out fixed points in order."""

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, points: Tensor, num_images: int):
        super().__init__(torch.Size([num_images]), points.shape[1:], validate_args=False)
        self.points, self.cursor = points, 0  # points (M, D)

    def sample(self, sample_shape: tuple[int, ...] = (1,)) -> Tensor:
        m = sample_shape[0]
        chunk = self.points[self.cursor : self.cursor + m]  # (m, D)
        self.cursor += m
        return chunk[:, None].expand(m, *self.batch_shape, *self.event_shape).clone()  # (m, B, D)


class TableLogRatio(nn.Module):
    """log r(z, c) = table[z] * c for integer-valued scalar z and a scalar context c (or 1)."""

    def __init__(self, table: Tensor, broadcasts_context: bool):
        super().__init__()
        self.table, self.broadcasts_context = table, broadcasts_context

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        log_r = self.table[z[:, 0].long()]  # (N,)
        if context is None:
            return log_r
        if self.broadcasts_context and context.shape[0] != z.shape[0]:
            context = context.repeat(z.shape[0] // context.shape[0], 1)  # proposal-major
        return log_r * context[:, 0]


def chi_square_statistic(picked: Tensor, log_weights: Tensor) -> float:
    """Pearson's statistic of the picked indices against Categorical(softmax(log_weights))."""
    observed = torch.bincount(picked, minlength=len(log_weights)).double()
    expected = len(picked) * torch.softmax(log_weights.double(), 0)
    return ((observed - expected) ** 2 / expected).sum().item()


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
def test_chunked_gumbel_max_resampling_matches_multinomial(chunk_size):
    torch.manual_seed(0)
    log_w = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5, -2.0, 1.5])  # M = 7 proposals
    points = torch.arange(7.0)[:, None]  # proposal m is the point m
    num_trials = 20_000  # one trial per image, all in one batch
    sampler = SIRSampler(NCPPrior([TableLogRatio(log_w, True)]), 7, chunk_size)
    picked = sampler(0, FixedProposals(points, num_trials), None)[:, 0].long()
    # p = 1e-4 upper quantile: a correct sampler fails 1 seed in 10,000; uniform picks give ~10^4
    assert chi_square_statistic(picked, log_w) < chi2.ppf(1 - 1e-4, df=6)
    w = log_w.double().exp()
    exact_ess = (w.sum() ** 2 / (w**2).sum()).item()
    assert sampler.diagnostics()[0].mean_ess == pytest.approx(exact_ess, rel=1e-9)


@pytest.mark.parametrize("broadcasts_context", [True, False])
def test_sir_keeps_each_context_with_its_own_image(broadcasts_context):
    """log r = table[z] * c with c = +1 or -1 per image: the two halves prefer opposite points."""
    torch.manual_seed(0)
    table = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    num_images = 12_000
    context = torch.tensor([1.0, -1.0]).repeat(num_images // 2)[:, None]  # (B, 1), alternating
    sampler = SIRSampler(NCPPrior([TableLogRatio(table, broadcasts_context)]), 4, chunk_size=3)
    picked = sampler(0, FixedProposals(torch.arange(4.0)[:, None], num_images), context)
    picked = picked[:, 0].long()
    limit = chi2.ppf(1 - 1e-4, df=3)
    assert chi_square_statistic(picked[0::2], table) < limit
    assert chi_square_statistic(picked[1::2], -table) < limit


def test_langevin_freezes_classifier_and_runs_under_no_grad():
    torch.manual_seed(0)
    classifier = build_classifier((2,), None, hidden=8)
    for p in classifier.parameters():
        nn.init.normal_(p, std=0.3)
    before = [p.detach().clone() for p in classifier.parameters()]
    vae = SingleGroupToyVAE(make_mixture(2))
    walk = vae.walk_prior(16, LangevinSampler(NCPPrior([classifier]), num_steps=5, step_size=0.01))
    assert walk.latents[0].shape == (16, 2) and not walk.latents[0].requires_grad
    assert all(p.grad is None for p in classifier.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, classifier.parameters()))


def test_groups_without_classifier_sample_the_base_prior_and_bad_settings_raise():
    ncp_prior = NCPPrior([None])
    prior = standard_normal(3, 2)
    assert SIRSampler(ncp_prior, 10)(0, prior, None).shape == (3, 2)
    assert LangevinSampler(ncp_prior, 10, 0.1)(0, prior, None).shape == (3, 2)
    with pytest.raises(ValueError, match="num_proposals"):
        SIRSampler(ncp_prior, 0)
    with pytest.raises(ValueError, match="step_size"):
        LangevinSampler(ncp_prior, 10, 0.0)
    with pytest.raises(ValueError, match="out of range"):
        ncp_prior.log_r(1, torch.zeros(3, 2))
