"""The contexts the real NVAE hands to stage 2: c(z_<k) must be the decoder state its prior p(z_k | z_<k)
is computed from, and must change with z_<k (and only with z_<k). The stage-2 tests use a stand-in
hierarchy, and the reference-fixture tests compare only images and likelihoods, so a context replaced by
zeros (or taken from the wrong place) in `NVAE._top_down` would otherwise pass every test."""

from __future__ import annotations

import pytest
import torch
from tiny_nvae import TINY_NVAE_ARGS

from ncp.models.nvae import NVAE
from ncp.models.nvae.distributions import nvae_normal

torch.set_num_threads(1)
TINY_ARGS = {"dataset": "mnist", **TINY_NVAE_ARGS}  # 8x8 and 16x16 groups, as the mnist_tiny fixture


@pytest.fixture(scope="module")
def model() -> NVAE:
    """A small real NVAE in eval mode, every parameter perturbed by N(0, 0.05^2) as NVAE's reference
    fixtures are, so that no cell starts at an initialisation that hides a wrong input (e.g. zeros)."""
    torch.manual_seed(0)
    nvae = NVAE.from_args(TINY_ARGS)
    with torch.no_grad():
        for parameter in nvae.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return nvae.eval()


def prior_from_context(model: NVAE, k: int, context: torch.Tensor) -> torch.distributions.Normal:
    """p(z_k | z_<k) recomputed from the context alone, with NVAE's own sampler cell for group k."""
    mu, log_sigma = torch.chunk(model.dec_sampler[k - 1](context), 2, dim=1)
    return nvae_normal(mu, log_sigma)


def assert_same_normal(recomputed, used, message: str) -> None:
    torch.testing.assert_close(recomputed.loc, used.loc, msg=lambda m: f"{message} (mean): {m}")
    torch.testing.assert_close(recomputed.scale, used.scale, msg=lambda m: f"{message} (std): {m}")


@torch.no_grad()
def test_forward_contexts_reproduce_the_priors_the_model_scores_with(model):
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((3, 1, 32, 32), 0.3))
    output = model(x)
    assert output.contexts[0] is None and model.num_groups == 4
    for k in range(1, model.num_groups):
        assert_same_normal(
            prior_from_context(model, k, output.contexts[k]), output.priors[k].base_dist, f"group {k}"
        )


@torch.no_grad()
def test_sampling_contexts_are_the_ones_the_prior_was_built_from_and_handed_to_the_sampler(model):
    handed: dict[int, tuple] = {}

    def record(k, prior, context):
        handed[k] = (prior.base_dist, context)
        return prior.sample()

    torch.manual_seed(1)
    walk = model.walk_prior(5, record)
    for k in range(1, model.num_groups):
        prior, context = handed[k]
        assert context is walk.contexts[k]  # SIR / LD see the context the NLL and log Z later see
        assert_same_normal(prior_from_context(model, k, walk.contexts[k]), prior, f"group {k}")


@torch.no_grad()
def test_contexts_change_with_earlier_groups_and_not_with_the_group_itself(model):
    # Two walks agree on every group except group 1: contexts 0-1 (which see z_0 only) must be equal,
    # contexts 2 and 3 (which see z_1) must differ. A constant or zero context fails the second check.
    def choose(shift: float):
        return lambda k, prior, context: prior.mean + (shift if k == 1 else 0.0)

    first, second = model.walk_prior(2, choose(0.0)), model.walk_prior(2, choose(1.0))
    torch.testing.assert_close(first.contexts[1], second.contexts[1], rtol=0, atol=0)
    for k in (2, 3):
        assert (first.contexts[k] - second.contexts[k]).abs().max() > 1e-3, f"context {k} ignores z_1"
    # and different images' z_<k give different contexts within one batch
    torch.manual_seed(2)
    batch = model.walk_prior(4, lambda k, prior, context: prior.sample())
    assert (batch.contexts[1][0] - batch.contexts[1][1]).abs().max() > 1e-3
