"""What every `ncp benchmark` figure shares: the sizes measured, the timer (median, min, max after a
warm-up), the matmul peak, peak memory, and the default experiment's models with random weights."""

from __future__ import annotations

import dataclasses
import multiprocessing
import re
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ncp.config import ExperimentConfig
from ncp.params import resolve_params

MATMUL_SIZE = 1024  # square fp32 matmul behind the peak rate: large enough to be compute-bound


@dataclass(frozen=True)
class Sizes:
    """What one benchmark run measures; ``quick`` shrinks everything for the smoke test."""

    sir_proposals: tuple[int, ...] = (5, 50, 500, 5000)
    batches: tuple[int, ...] = (1, 10)
    ld_iterations: tuple[int, ...] = (5, 50, 500)
    repeats: int = 3
    nce_pairs: int = 2048
    nce_jobs_pairs: int = 4096
    cache_images: int = 256
    paper_stage1: bool = True

    @classmethod
    def quick(cls) -> Sizes:
        return cls((5, 20), (1, 2), (2, 4), 2, 256, 256, 32, False)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> dict:
    """Median, min and max seconds of ``fn()`` over ``repeats`` runs after one warm-up run, and
    ``all_runs_s``, the wall time of every run including the warm-up."""
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    seconds = []
    warm_up = time.perf_counter() - started
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - started)
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "all_runs_s": warm_up + sum(seconds),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, repeats: int = 5) -> float:
    """Best FLOP/s of a square float32 matmul (the hardware's practical matmul peak right now)."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    stats = timed(lambda: a @ b, repeats, device)
    return 2 * MATMUL_SIZE**3 / stats["min_s"]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def default_models(device: torch.device, seed: int = 0):
    """The default experiment's NVAE and one random classifier per group (log r not identically 0)."""
    from ncp.models.registry import build_vae
    from ncp.priors import NCPPrior, build_classifier

    cfg = ExperimentConfig.from_params(resolve_params(default_params()))
    torch.manual_seed(seed)
    model = build_vae("nvae", dataclasses.asdict(cfg.vae.backbone)).to(device).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32, device=device).round(), noise_scale=1.0)
    classifiers = []
    for z, c in zip(out.latents, out.contexts):
        classifier = build_classifier(
            tuple(z.shape[1:]),
            None if c is None else tuple(c.shape[1:]),
            hidden=cfg.nce.hidden,
            num_blocks=cfg.nce.num_blocks,
        )
        torch.nn.init.normal_(classifier.head.weight, std=0.1)
        classifiers.append(classifier)
    return cfg, model, NCPPrior(classifiers).to(device).freeze(), out


def default_params() -> dict:
    import yaml

    path = Path(__file__).resolve().parents[2] / "params" / "default.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a spawned process: its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def device_label(device: torch.device) -> str:
    """'cpu', or the GPU's name as a file name (e.g. 'nvidia-h200')."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
