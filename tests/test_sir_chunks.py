"""SIR's performance paths: chunks sized to a memory budget, bf16 autocast gated by agreement with
float32, and a one-line refusal of non-finite proposals or weights that names the group."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from ncp.priors import NCPPrior, build_classifier
from ncp.samplers import SIRSampler
from ncp.samplers.sir import LIVE_ACTIVATIONS, log_r_agrees_under_autocast

torch.set_num_threads(1)


def spatial_prior(num_images: int, shape=(4, 8, 8), loc: float = 0.0) -> Independent:
    """N(loc, I) over (C, H, W) latents with batch shape (num_images,)."""
    return Independent(Normal(torch.full((num_images, *shape), loc), torch.ones(num_images, *shape)), 3)


class RowRecorder(nn.Module):
    """Wraps a classifier; records the rows of every call."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.rows = inner, []

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self.rows.append(z.shape[0])
        return self.inner(z, context)


def random_conv_classifier(hidden: int = 16) -> nn.Module:
    torch.manual_seed(0)
    classifier = build_classifier((4, 8, 8), None, hidden=hidden, num_blocks=1)
    nn.init.normal_(classifier.head.weight, std=0.5)  # the zero-initialised head would give log r = 0
    return classifier.eval()


@pytest.mark.parametrize("budget_mb", [0.5, 2.0])
def test_sir_chunks_follow_the_memory_budget_and_score_every_proposal_once(budget_mb):
    num_images, num_proposals, hidden = 5, 400, 16
    recorder = RowRecorder(random_conv_classifier(hidden))
    sampler = SIRSampler(NCPPrior([recorder]), num_proposals, chunk_size=10_000, memory_budget_mb=budget_mb)
    z = sampler(0, spatial_prior(num_images), None)
    assert z.shape == (num_images, 4, 8, 8)
    # the widest layer holds hidden x 8 x 8 float32 per row; the budget allows LIVE_ACTIVATIONS of them
    # (+ the proposal's own bytes); a sampler that ignored the budget would score all 400 x 5 rows at once
    row_bytes = hidden * 8 * 8 * 4 + 4 * 8 * 8 * 8
    budget_rows = budget_mb * 2**20 // (LIVE_ACTIVATIONS * row_bytes)
    assert recorder.rows[0] == num_images  # the first chunk (one proposal per image) measures a row
    assert max(recorder.rows) <= max(budget_rows, num_images)
    assert max(recorder.rows) >= budget_rows - num_images  # and it uses the budget, not tiny chunks
    assert sum(recorder.rows) == num_proposals * num_images


def test_sir_refuses_non_finite_weights_naming_the_group():
    class NaNAfterFirst(nn.Module):
        def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
            log_r = z.flatten(1).sum(1)
            log_r[-1] = float("nan")  # one bad proposal among many must still be caught
            return log_r

    sampler = SIRSampler(NCPPrior([None, NaNAfterFirst()]), 50, chunk_size=7)
    with pytest.raises(ValueError, match=r"^SIR group 1: the classifier gave non-finite log-weights"):
        sampler(1, spatial_prior(3), None)


def test_sir_refuses_non_finite_proposals_naming_the_group():
    sampler = SIRSampler(NCPPrior([random_conv_classifier()]), 20, chunk_size=7)
    with pytest.raises(ValueError, match=r"^SIR group 0: the base prior gave non-finite proposals"):
        sampler(0, spatial_prior(3, loc=float("inf")), None)


def test_bf16_autocast_gate_accepts_close_log_r_and_rejects_a_tight_tolerance():
    # the CPU stands in for CUDA here: the gate that decides bf16 on CUDA is the same function
    classifier = random_conv_classifier(hidden=32)
    z = torch.randn(64, 4, 8, 8)
    with torch.inference_mode():
        log_r = classifier(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = classifier(z).float()
        error = (low - log_r).abs().max().item()
        assert 0 < error < 0.05, f"bf16 log r off by {error:.4f} nats"  # bf16 really ran, and stayed close
        assert log_r_agrees_under_autocast(log_r, lambda: classifier(z), "cpu", torch.bfloat16, 0.05)
        assert not log_r_agrees_under_autocast(log_r, lambda: classifier(z), "cpu", torch.bfloat16, 1e-7)
