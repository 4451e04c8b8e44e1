"""`ncp benchmark`: stage-1 optimiser steps, NCE pairs per second and its jobs' parallel efficiency
through Snakemake, and latent caching."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from ncp.benchmark.common import Sizes, default_models, default_params, timed
from ncp.config import ExperimentConfig
from ncp.params import resolve_params
from ncp.runtime import atomic_write_text


def stage1_records(sizes: Sizes, device: torch.device) -> list[dict]:
    """Stage-1 optimiser steps of the default NVAE and of NVAE's paper MNIST configuration."""
    from ncp.models.nvae import NVAE
    from ncp.models.registry import build_vae
    from ncp.train_vae import build_optimizer, train_step, training_memory_format

    cfg = ExperimentConfig.from_params(resolve_params(default_params()))
    train = cfg.vae.train
    models = [("default", build_vae("nvae", dataclasses.asdict(cfg.vae.backbone)), train.batch_size)]
    if sizes.paper_stage1:
        models.append(("paper MNIST", NVAE.from_args(paper_mnist_args()), 16))
    records = []
    for name, model, batch in models:
        torch.manual_seed(0)
        memory_format = training_memory_format("nvae", device)
        model = model.to(device, memory_format=memory_format).train()
        optimizer = build_optimizer(model, train)
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
    threads: {threads_per_job}
    shell: "{stamp} > times/{{wildcards.g}}.start && OMP_NUM_THREADS={{threads}} {python} -m ncp.cli train-nce \
--params {params} --threads {{threads}} --latents {{input}} --out {{output.c}} --metrics-out {{output.m}} \
> /dev/null 2>&1 && {stamp} > times/{{wildcards.g}}.end"
"""
# a clock any platform has (GNU date's %N is not on macOS); one Python start, ~30 ms per stamp
STAMP = "{python} -c 'import time; print(repr(time.time()))'"


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
        params = default_params()
        params.setdefault("nce", {})["epochs"] = 1
        params.setdefault("run", {})["device"] = "cpu"
        atomic_write_text(yaml.safe_dump(params), root / "params.yaml")
        snakefile = NCE_SNAKEFILE.format(
            groups=list(range(len(out.latents))),
            threads_per_job=threads_per_job,
            python=sys.executable,
            params=root / "params.yaml",
            stamp=STAMP.format(python=sys.executable),
        )
        atomic_write_text(snakefile, root / "Snakefile")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        walls, spans = {}, {}
        for cores in (1, 2):
            shutil.rmtree(root / "times", ignore_errors=True)
            (root / "times").mkdir()
            started = time.perf_counter()
            subprocess.run(
                ["snakemake", "-s", "Snakefile", "--cores", str(cores), "--forceall", "--quiet", "all"],
                cwd=root,
                env=env,
                check=True,
                capture_output=True,
            )
            walls[cores] = time.perf_counter() - started
            spans[cores] = jobs_span(root / "times")
    return {
        "groups": len(out.latents),
        "pairs_per_group": sizes.nce_jobs_pairs,
        "epochs": 1,
        "threads_per_job": threads_per_job,
        "wall_cores_1_s": walls[1],
        "wall_cores_2_s": walls[2],
        "jobs_span_cores_1_s": spans[1],
        "jobs_span_cores_2_s": spans[2],
    }


def jobs_span(times: Path) -> float:
    """Seconds from the first job's start to the last job's end (each job's shell wrote both stamps):
    the jobs' wall time without Snakemake's own start-up and DAG building, which no core count changes."""
    starts = [float(f.read_text()) for f in times.glob("*.start")]
    ends = [float(f.read_text()) for f in times.glob("*.end")]
    return max(ends) - min(starts)


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
