"""`ncp benchmark`: throughput and memory of the project's hot paths on whatever device is present.

Writes ``<out-dir>/<device>.json`` and ``<out-dir>/<device>.md``. Every figure is the median over
``repeats`` timed runs after a warm-up, with their min and max. The models are the default
experiment's (params/default.yaml) with random weights, plus NVAE's paper MNIST configuration for
stage 1; nothing is read from results/, so the command runs in a fresh clone.

- SIR and Langevin dynamics: whole ancestral draws of 1 and 10 images; SIR for M in 5 ... 5,000. Each
  SIR setting runs in a fresh process so its peak memory (RSS on the CPU, the CUDA allocator's peak on
  a GPU) is its own. The classifier FLOPs (matmuls and convolutions, counted by torch's
  FlopCounterMode) over the time spent inside the classifiers give the achieved FLOP rate, as a
  fraction of the best large-matmul rate measured in the same process just before.
- Stage 1: one optimiser step (forward, backward, Adamax) on random images.
- NCE: training pairs per second per group, and all groups' train-nce jobs through Snakemake with
  --cores 1 and --cores 2 (the ratio of their wall times is ``nce_parallel_efficiency``).
- Latent caching: images per second through the frozen VAE.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ncp.benchmark_table import markdown_table, table8_beside_paper
from ncp.config import ExperimentConfig, resolve_params
from ncp.runtime import atomic_write_text, pick_device, write_json

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
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    seconds = []
    warm_up = time.perf_counter() - started
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "all_runs_s": warm_up + sum(seconds),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, repeats: int = 5) -> float:
    """Best FLOP/s of a square float32 matmul (the hardware's practical matmul peak right now)."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    stats = timed(lambda: a @ b, repeats, device)
    return 2 * MATMUL_SIZE**3 / stats["min_s"]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def default_models(device: torch.device, seed: int = 0):
    """The default experiment's NVAE and one random classifier per group (log r not identically 0)."""
    from ncp.models.registry import build_vae
    from ncp.priors import NCPPrior, build_classifier

    cfg = ExperimentConfig.from_params(resolve_params(_default_params()))
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


def _default_params() -> dict:
    import yaml

    path = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


class ClassifierClock:
    """Wall time spent inside the classifiers' forward passes (forward pre/post hooks)."""

    def __init__(self, ncp_prior, device: torch.device):
        self.seconds, self._started, self.device = 0.0, 0.0, device
        self.handles = []
        for classifier in ncp_prior.classifiers.values():
            self.handles.append(classifier.register_forward_pre_hook(self._start))
            self.handles.append(classifier.register_forward_hook(self._stop))

    def _start(self, *_):
        _sync(self.device)
        self._started = time.perf_counter()

    def _stop(self, *_):
        _sync(self.device)
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
        "peak_mem_mb": _peak_memory_mb(device),
        "classifier_gflop": flops / 1e9,
        "classifier_time_share": classifier_share,
        "flop_fraction": flops * (repeats + 1) / clock.seconds / peak,
        "matmul_peak_gflops": peak / 1e9,
    }


def _in_fresh_process(fn, *args):
    """``fn(*args)`` in a spawned process: its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


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


def stage1_records(sizes: Sizes, device: torch.device) -> list[dict]:
    """Stage-1 optimiser steps of the default NVAE and of NVAE's paper MNIST configuration."""
    from ncp.models.nvae import NVAE
    from ncp.models.registry import build_vae
    from ncp.train_vae import _optimizer, train_step, training_memory_format

    cfg = ExperimentConfig.from_params(resolve_params(_default_params()))
    train = cfg.vae.train
    models = [("default", build_vae("nvae", dataclasses.asdict(cfg.vae.backbone)), train.batch_size)]
    if sizes.paper_stage1:
        models.append(("paper MNIST", NVAE.from_args(paper_mnist_args()), 16))
    records = []
    for name, model, batch in models:
        torch.manual_seed(0)
        memory_format = training_memory_format("nvae", device)
        model = model.to(device, memory_format=memory_format).train()
        optimizer = _optimizer(model, train)
        x = torch.rand(batch, 1, 32, 32, device=device).round().contiguous(memory_format=memory_format)
        step = partial(train_step, model, optimizer, x, 1.0, train)
        stats = timed(step, sizes.repeats, device)
        params = sum(p.numel() for p in model.parameters())
        records.append(
            {
                "model": name,
                "parameters": params,
                "batch": batch,
                **stats,
                "images_per_s": batch / stats["median_s"],
            }
        )
    return records


def paper_mnist_args() -> dict:
    """NVAE's README MNIST arguments (the paper's MNIST model), from the reference fixture notes."""
    return dict(
        dataset="mnist",
        num_latent_scales=2,
        num_groups_per_scale=10,
        num_latent_per_group=20,
        num_channels_enc=32,
        num_channels_dec=32,
        num_preprocess_blocks=2,
        num_preprocess_cells=3,
        num_postprocess_blocks=2,
        num_postprocess_cells=3,
        num_cell_per_cond_enc=2,
        num_cell_per_cond_dec=2,
        use_se=True,
        res_dist=True,
        ada_groups=True,
        min_groups_per_scale=1,
        num_nf=0,
    )


def random_group_latents(out, num_pairs: int) -> list[dict]:
    """Per group, ``num_pairs`` random (z_q, z_p, context) rows of the default model's shapes."""
    groups = []
    for k, (z, c) in enumerate(zip(out.latents, out.contexts)):
        group = {"group": k, "z_q": torch.randn(num_pairs, *z.shape[1:]) + 0.3}
        group["z_p"] = torch.randn(num_pairs, *z.shape[1:])
        if c is not None:
            group["context"] = torch.randn(num_pairs, *c.shape[1:])
        groups.append(group)
    return groups


def nce_records(sizes: Sizes, device: torch.device) -> list[dict]:
    """Training pairs per second of each group's classifier (one epoch of the real NCE loop)."""
    from ncp.priors.nce import train_classifier

    cfg, _, _, out = default_models(torch.device("cpu"))
    records = []
    for group in random_group_latents(out, sizes.nce_pairs):
        train = partial(
            train_classifier,
            group["z_q"],
            group["z_p"],
            group.get("context"),
            hidden=cfg.nce.hidden,
            num_blocks=cfg.nce.num_blocks,
            epochs=1,
            batch_size=cfg.nce.batch_size,
            val_fraction=cfg.nce.val_fraction,  # as the stage: the kept epoch is chosen on held-out images
            device=device,
        )
        stats = timed(train, sizes.repeats, device)
        records.append({"group": group["group"], **stats, "pairs_per_s": sizes.nce_pairs / stats["median_s"]})
    return records


NCE_SNAKEFILE = """\
GROUPS = {groups}

rule all:
    input: expand("nce/group_{{g}}.pt", g=GROUPS)

rule nce:
    input: "latents/group_{{g}}"
    output: c="nce/group_{{g}}.pt", m="metrics/group_{{g}}.json"
    threads: 1
    shell: "OMP_NUM_THREADS={threads_per_job} {python} -m ncp.cli train-nce --params {params} \
--latents {{input}} --out {{output.c}} --metrics-out {{output.m}} > /dev/null 2>&1"
"""


def write_group_cache(group: dict, folder: Path) -> None:
    """One group's random pairs as the shard folder `ncp cache-latents` writes (one image per pair)."""
    from ncp.priors.latent_cache import GroupCacheWriter

    writer = GroupCacheWriter(
        folder, group["group"], shard_mb=64, dtype=torch.float32, fingerprint="benchmark"
    )
    num_pairs = len(group["z_q"])
    writer.append(group["z_q"], group["z_p"], group.get("context"), torch.arange(num_pairs))
    writer.close(num_pairs)


def nce_parallel(sizes: Sizes, threads_per_job: int = 1) -> dict:
    """Wall time of all groups' train-nce jobs through Snakemake with --cores 1 and --cores 2."""
    import yaml

    _, _, _, out = default_models(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="ncp-bench-nce-") as tmp:
        root = Path(tmp)
        for group in random_group_latents(out, sizes.nce_jobs_pairs):
            write_group_cache(group, root / "latents" / f"group_{group['group']}")
        params = _default_params()
        params.setdefault("nce", {})["epochs"] = 1
        params.setdefault("run", {})["device"] = "cpu"
        atomic_write_text(yaml.safe_dump(params), root / "params.yaml")
        snakefile = NCE_SNAKEFILE.format(
            groups=list(range(len(out.latents))),
            threads_per_job=threads_per_job,
            python=sys.executable,
            params=root / "params.yaml",
        )
        atomic_write_text(snakefile, root / "Snakefile")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        walls = {}
        for cores in (1, 2):
            started = time.perf_counter()
            subprocess.run(
                ["snakemake", "-s", "Snakefile", "--cores", str(cores), "--forceall", "--quiet", "all"],
                cwd=root,
                env=env,
                check=True,
                capture_output=True,
            )
            walls[cores] = time.perf_counter() - started
    return {
        "groups": len(out.latents),
        "pairs_per_group": sizes.nce_jobs_pairs,
        "epochs": 1,
        "threads_per_job": threads_per_job,
        "wall_cores_1_s": walls[1],
        "wall_cores_2_s": walls[2],
    }


def cache_record(sizes: Sizes, device: torch.device) -> dict:
    """Images per second through the frozen VAE as stage 2a caches latents."""
    from ncp.cache_latents import write_group_caches
    from ncp.priors.latent_cache import GroupCacheWriter

    cfg, model, _, _ = default_models(device)
    batch = cfg.cache.batch_size
    images = torch.rand(sizes.cache_images, 1, 32, 32, device=device).round()
    index = torch.arange(sizes.cache_images)

    def cache_once() -> None:  # the stage's own loop, writing real shard folders to a scratch directory
        with tempfile.TemporaryDirectory(prefix="ncp-bench-cache-") as tmp:
            writers = [
                GroupCacheWriter(Path(tmp) / f"group_{k}", k, cfg.cache.shard_mb, torch.float32, "benchmark")
                for k in range(len(model.group_shapes()))
            ]
            batches = ((images[i : i + batch], index[i : i + batch]) for i in range(0, len(images), batch))
            write_group_caches(model, batches, writers)
            for writer in writers:
                writer.close(sizes.cache_images)

    stats = timed(cache_once, sizes.repeats, device)
    return {
        "images": sizes.cache_images,
        "batch": batch,
        **stats,
        "images_per_s": sizes.cache_images / stats["median_s"],
    }


def device_label(device: torch.device) -> str:
    """'cpu', or the GPU's name as a file name (e.g. 'nvidia-h200')."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def run(out_dir: Path, device: str = "auto", quick: bool = False, repeats: int | None = None) -> dict:
    """Measure everything, write ``<out_dir>/<device>.json`` and ``.md``; return the record."""
    sizes = Sizes.quick() if quick else Sizes()
    if repeats is not None:
        sizes = Sizes(**{**sizes.__dict__, "repeats": repeats})
    torch_device = pick_device(device)
    started = time.perf_counter()
    record = {
        "device": device_label(torch_device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": sizes.repeats,
        "load_average_start": os.getloadavg()[0],
        "matmul_peak_gflops": matmul_peak_flops(torch_device) / 1e9,
    }
    print(f"benchmark on {record['device']} ({record['threads']} threads)", flush=True)
    sir = []
    for num_proposals in sizes.sir_proposals:
        for batch in sizes.batches:
            sir.append(_in_fresh_process(sir_record, num_proposals, batch, sizes.repeats, str(torch_device)))
            print(f"SIR M={num_proposals} batch={batch}: {sir[-1]['images_per_s']:.3g} img/s", flush=True)
    record["sir"] = sir
    record["ld"] = ld_records(sizes, torch_device)
    print("LD done", flush=True)
    record["stage1"] = stage1_records(sizes, torch_device)
    print("stage 1 done", flush=True)
    record["nce"] = nce_records(sizes, torch_device)
    record["nce_jobs"] = nce_parallel(sizes)
    record["nce_parallel_efficiency"] = (
        record["nce_jobs"]["wall_cores_2_s"] / record["nce_jobs"]["wall_cores_1_s"]
    )
    print("NCE done", flush=True)
    record["cache"] = cache_record(sizes, torch_device)
    record["load_average_end"] = os.getloadavg()[0]
    record["total_s"] = time.perf_counter() - started
    out_dir = Path(out_dir)
    write_json(record, out_dir / f"{record['device']}.json")
    from ncp.paper_results import paper_results

    beside = table8_beside_paper(record, paper_results()["tables"]["table8"])
    atomic_write_text(markdown_table(record) + "\n" + beside, out_dir / f"{record['device']}.md")
    return record


def main(argv: list[str] | None = None) -> int:
    """`ncp benchmark [--out-dir DIR] [--device D] [--quick] [--repeats N]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="ncp benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    record = run(args.out_dir, args.device, args.quick, args.repeats)
    print(json.dumps({"written": str(Path(args.out_dir) / f"{record['device']}.json")}))
    return 0
