"""`ncp benchmark`: SIR and Langevin dynamics (whole ancestral draws), with the classifiers' achieved
FLOP rate as a fraction of the matmul peak."""

from __future__ import annotations

import time
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from ncp.benchmark.common import Sizes, default_models, matmul_peak_flops, peak_memory_mb, sync, timed


class ClassifierClock:
    """Wall time spent inside the classifiers' forward passes (forward pre/post hooks)."""

    def __init__(self, ncp_prior, device: torch.device):
        self.seconds, self._started, self.device = 0.0, 0.0, device
        self.handles = []
        for classifier in ncp_prior.classifiers.values():
            self.handles.append(classifier.register_forward_pre_hook(self._start))
            self.handles.append(classifier.register_forward_hook(self._stop))

    def _start(self, *_):
        sync(self.device)
        self._started = time.perf_counter()

    def _stop(self, *_):
        sync(self.device)
        self.seconds += time.perf_counter() - self._started


def classifier_flops_per_proposal(ncp_prior, out) -> float:
    """Matmul/conv FLOPs to score one proposal of every group (context work per image excluded)."""
    total = 0.0
    for k, (z, c) in enumerate(zip(out.latents, out.contexts)):
        counts = []
        for m in (1, 2):  # m proposals of each image: the difference is one proposal's cost
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                ncp_prior.log_r(k, z.repeat(m, *[1] * (z.dim() - 1)), c)
            counts.append(counter.get_total_flops())
        total += (counts[1] - counts[0]) / z.shape[0]
    return total


def sir_record(num_proposals: int, batch: int, repeats: int, device_name: str) -> dict:
    """One SIR setting (run in a fresh process): images/s, proposals/s, peak memory, FLOP fraction."""
    from ncp.sample import draw_samples
    from ncp.samplers import SIRSampler

    device = torch.device(device_name)
    cfg, model, ncp_prior, out = default_models(device)
    peak = matmul_peak_flops(device)
    flops = classifier_flops_per_proposal(ncp_prior, out) * num_proposals * batch
    chunk = cfg.sample.sir.chunk_size

    def draw():
        return draw_samples(model, SIRSampler(ncp_prior, num_proposals, chunk), batch, batch)

    draw_samples(model, SIRSampler(ncp_prior, min(num_proposals, 50), chunk), batch, batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = ClassifierClock(ncp_prior, device)
    stats = timed(draw, repeats, device)
    # the clock ran through timed()'s warm-up and its repeats: compare it with all of those runs' time
    classifier_share = clock.seconds / stats["all_runs_s"]
    return {
        "M": num_proposals,
        "batch": batch,
        **stats,
        "images_per_s": batch / stats["median_s"],
        "proposals_per_s": num_proposals * batch / stats["median_s"],
        "peak_mem_mb": peak_memory_mb(device),
        "classifier_gflop": flops / 1e9,
        "classifier_time_share": classifier_share,
        "flop_fraction": flops * (repeats + 1) / clock.seconds / peak,
        "matmul_peak_gflops": peak / 1e9,
    }


def ld_records(sizes: Sizes, device: torch.device) -> list[dict]:
    """Langevin dynamics: whole draws of ``batch`` images with T iterations per group."""
    from ncp.sample import draw_samples
    from ncp.samplers import LangevinSampler

    cfg, model, ncp_prior, _ = default_models(device)
    records = []
    for iterations in sizes.ld_iterations:
        for batch in sizes.batches:
            sampler = LangevinSampler(ncp_prior, iterations, cfg.sample.ld.step_size)
            draw = partial(draw_samples, model, sampler, batch, batch)
            stats = timed(draw, sizes.repeats, device)
            records.append(
                {
                    "iterations": iterations,
                    "batch": batch,
                    **stats,
                    "iterations_per_s": iterations / stats["median_s"],
                    "images_per_s": batch / stats["median_s"],
                }
            )
    return records
