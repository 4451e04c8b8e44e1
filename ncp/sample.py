"""Stage 3 (`ncp sample`): images from the base prior and from the NCP prior (SIR or Langevin dynamics).

Sampling is ancestral over groups: for group k the backbone builds p(z_k | z_<k) and a per-group rule
picks z_k — a plain draw for the base prior, SIR (M proposals reweighted by r_k) or Langevin dynamics on
E_k = -log r_k - log p(z_k | z_<k) for NCP. Each method's images (decoder means, uint8), latents, time
and peak memory (also for drawing 1 and 10 images: Table 8) go to one file, and a PNG grid beside it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ncp.config import SampleConfig
from ncp.data import float_to_uint8
from ncp.model_origin import checkpoint_origin
from ncp.models.base import sample_from_prior
from ncp.models.registry import load_vae_checkpoint
from ncp.priors.checkpoints import load_ncp_prior
from ncp.progress import progress_bar
from ncp.runtime import atomic_save, atomic_save_image, pick_device, seed_everything
from ncp.samplers.langevin import LangevinSampler
from ncp.samplers.sir import SIRSampler
from ncp.variants import apply_variant

METHODS = ("base", "sir", "ld")


def make_group_sampler(method: str, ncp_prior, sample: SampleConfig):
    """The per-group rule of ``method``: plain prior draws, SIR, or Langevin dynamics."""
    if method == "base":
        return sample_from_prior
    if method == "sir":
        return SIRSampler(ncp_prior, num_proposals=sample.sir.num_proposals, chunk_size=sample.sir.chunk_size)
    if method == "ld":
        return LangevinSampler(
            ncp_prior,
            num_steps=sample.ld.num_steps,
            step_size=sample.ld.step_size,
            step_scaling=sample.ld.step_scaling,
        )
    raise ValueError(f"unknown sampling method {method!r}; expected one of {', '.join(METHODS)}")


def draw_samples(
    model, choose, num_samples: int, batch_size: int, temperature: float = 1.0, desc: str | None = None
) -> dict:
    """Ancestral samples in batches: uint8 images (N, C, H, W) and per-group latents (N, ...).

    With ``desc``, a progress bar (images done, rate, time left) goes to stderr, i.e. the job's log. It
    moves a group at a time (a batch of n images over K groups advances it n/K per group): at the paper's
    M = 5,000 one batch through 30 groups takes minutes on a GPU and hours on a CPU, and a bar that moved
    only per batch would show nothing for that long."""
    images, latents = [], [[] for _ in range(model.num_groups)]
    bar = progress_bar(num_samples, desc or "", disable=desc is None)
    batch_start, group_draws = 0, 0  # group_draws: this batch's draws so far (an image counts once a group)

    def choose_and_count(k, prior, context):
        nonlocal group_draws
        z = choose(k, prior, context)
        group_draws += len(z)
        _move_bar(bar, batch_start + group_draws / model.num_groups)
        return z

    for batch_start in range(0, num_samples, batch_size):
        group_draws = 0
        walk = model.walk_prior(min(batch_size, num_samples - batch_start), choose_and_count, temperature)
        with torch.no_grad():
            images.append(float_to_uint8(model.mean_image(walk.logits)).cpu())
        for k, z in enumerate(walk.latents):
            latents[k].append(z.detach().cpu())
        _move_bar(bar, batch_start + len(images[-1]))
    bar.close()
    return {"images": torch.cat(images), "latents": [torch.cat(z) for z in latents]}


def _move_bar(bar, position: float) -> None:
    """Put ``bar`` at ``position`` images; it redraws once its interval has passed.

    Set, not added: K additions of n/K can round past n (n/36 added 36 times gives n + 4e-16), and a bar
    past its total makes tqdm warn "clamping frac to range [0, 1]" in the log."""
    bar.n = position
    bar.update(0)


def qualitative_grid(model, choose, sample: SampleConfig) -> torch.Tensor:
    """Grid images at ``sample.temperature`` (paper Fig. 3): every group's std is scaled down, on a copy
    of the model the backbone has prepared for that temperature (NVAE re-adjusts its BatchNorm statistics).
    Never used for the quantitative numbers."""
    model = copy.deepcopy(model)
    model.prepare_for_temperature(
        sample.temperature, batch_size=min(64, sample.batch_size), num_passes=sample.grid_readjust_passes
    )
    return draw_samples(model, choose, sample.grid_size, sample.batch_size, sample.temperature)["images"]


def _peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA's allocator peak on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource  # Unix; ru_maxrss is KiB on Linux and cannot be reset, so CPU figures are "so far"

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def time_small_batches(model, choose, device: torch.device, sizes=(1, 10), desc: str | None = None) -> dict:
    """Wall time to draw 1 and 10 images (Table 8), after one warm-up draw, and peak memory after them.

    With ``desc``, each draw has its own progress bar in the log (at M = 5,000 they take long too)."""
    label = (lambda what: f"{desc}: {what}") if desc else (lambda what: None)
    draw_samples(model, choose, 1, 1, desc=label("warm-up draw"))  # lazy init and allocator caches
    timings = {}
    for n in sizes:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        draw_samples(model, choose, n, n, desc=label(f"timed batch of {n}"))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[f"time_{n}_s"] = time.perf_counter() - started
    timings[f"peak_memory_{sizes[-1]}_bytes"] = _peak_memory_bytes(device)
    return timings


def run(
    sample: SampleConfig,
    method: str,
    seed: int,
    device: str,
    checkpoint: Path,
    classifier_files: Sequence[Path],
    out: Path,
    grid_out: Path,
    num_samples: int | None = None,
) -> None:
    """Draw ``sample.num_samples`` (or ``num_samples``) images with ``method`` (base, sir, ld, or a Table 8
    setting such as sir_m500) and write them, their timings and a grid."""
    sampler, sample = apply_variant(sample, method)
    sample = replace(sample, **({"num_samples": num_samples} if num_samples else {}))
    torch_device = pick_device(device)
    seed_everything(seed + 7)
    model = load_vae_checkpoint(checkpoint, torch_device)
    num_groups = len(model.group_shapes())
    if sampler != "base" and len(classifier_files) != num_groups:
        raise ValueError(
            f"{len(classifier_files)} classifier files for a VAE with {num_groups} latent groups: pass one per "
            f"group, in order (nce/group_0.pt ... group_{num_groups - 1}.pt)"
        )
    ncp_prior = load_ncp_prior(classifier_files, torch_device, checkpoint) if sampler != "base" else None
    choose = make_group_sampler(sampler, ncp_prior, sample)
    small_batches = time_small_batches(
        model, choose, torch_device, sample.timed_batch_sizes, desc=f"sample {method}"
    )
    seed_everything(seed + 7)  # the timing draws must not change the samples
    choose = make_group_sampler(sampler, ncp_prior, sample)  # fresh diagnostics
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    started = time.perf_counter()
    drawn = draw_samples(model, choose, sample.num_samples, sample.batch_size, desc=f"sample {method}")
    seconds = time.perf_counter() - started
    diagnostics = (
        {str(k): asdict(stats) for k, stats in choose.diagnostics().items()} if sampler == "sir" else {}
    )
    setting = {
        "sir": {"num_proposals": sample.sir.num_proposals},
        "ld": {
            "num_steps": sample.ld.num_steps,
            "step_size": sample.ld.step_size,
            "step_scaling": sample.ld.step_scaling,
        },
    }.get(sampler, {})
    atomic_save(
        {
            "method": method,
            "sampler": sampler,
            "setting": setting,
            **drawn,
            "seconds": seconds,
            "seconds_per_image": seconds / sample.num_samples,
            "batch_size": sample.batch_size,
            "peak_memory_bytes": _peak_memory_bytes(torch_device),
            "memory_kind": "CUDA allocator peak" if torch_device.type == "cuda" else "process peak RSS",
            **small_batches,
            "diagnostics": diagnostics,
            "model_origin": checkpoint_origin(model, checkpoint),  # decoder, and real or stand-in data
        },
        out,
    )
    if sample.temperature == 1.0:
        grid = drawn["images"][: sample.grid_size].float() / 255.0
    else:
        grid = qualitative_grid(model, choose, sample).float() / 255.0
    atomic_save_image(grid, grid_out, nrow=int(max(1, round(len(grid) ** 0.5))), padding=1)
