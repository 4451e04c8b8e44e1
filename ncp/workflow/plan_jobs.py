"""The work a study will do, from its params alone (pure Python, no torch): every job of every experiment
(sub-experiments and the Table 8 sweep included) with its optimiser steps, encoder batches, images per
sampler and the sizes those depend on. `ncp plan` (ncp/workflow/plan.py) prices these jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ncp.params import num_latent_groups, with_run_settings
from ncp.variants import parse_variant
from ncp.workflow.study import study_experiments, sweep_variants, written_tables

# (train images, evaluation images) of each dataset's full split, and the image shape (C, H, W)
DATASET_SIZES = {
    "mnist5k": (4_500, 500),
    "mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
    "celeba64": (162_770, 19_867),
    "celebahq256": (27_000, 3_000),
}
IMAGE_SHAPES = {
    "mnist5k": (1, 32, 32),
    "mnist": (1, 32, 32),
    "idx": (1, 32, 32),
    "cifar10": (3, 32, 32),
    "celeba64": (3, 64, 64),
    "celebahq256": (3, 256, 256),
}


def split_sizes(data: dict) -> tuple[int, int]:
    """Train and test images the run will use (data.train_limit / test_limit applied)."""
    if data["name"] not in DATASET_SIZES:
        if data["train_limit"] and data["test_limit"]:
            return data["train_limit"], data["test_limit"]
        raise ValueError(
            f"ncp plan: the size of dataset {data['name']!r} is unknown; set data.train_limit and test_limit"
        )
    train, test = DATASET_SIZES[data["name"]]
    return min(train, data["train_limit"] or train), min(test, data["test_limit"] or test)


def image_shape(data: dict) -> tuple[int, int, int]:
    """(C, H, W) of the model input."""
    if data["name"] == "folder":
        if data["image_size"] is None:
            raise ValueError("ncp plan: data.name folder needs data.image_size")
        return (1 if data["grayscale"] else 3, data["image_size"], data["image_size"])
    return IMAGE_SHAPES[data["name"]]


def stage1_steps(num_train: int, train: dict, init_checkpoint: str | None) -> int:
    """Optimiser steps of stage 1, as ncp.train_vae counts them (0 when a checkpoint is imported)."""
    if init_checkpoint:
        return 0
    per_epoch = math.ceil(num_train / (train["batch_size"] * train["num_processes"]))
    steps = train["epochs"] * per_epoch
    return min(steps, train["max_steps"]) if train["max_steps"] else steps


def cache_pairs(num_train: int, cache: dict) -> int:
    """(q, p) pairs per group the latent cache holds: one per image and encoder pass."""
    return min(num_train, cache["num_images"] or num_train) * cache["passes"]


def nce_steps(pairs: int, nce: dict) -> int:
    """Optimiser steps of one classifier (ncp.priors.nce: held-out pairs first, then ceil per epoch)."""
    held_out = nce["val_fraction"] + nce.get("test_fraction", 0.0)  # split by image: val and test
    train_pairs = pairs - round(held_out * pairs)
    return nce["epochs"] * math.ceil(train_pairs / nce["batch_size"])


def sample_images(sample: dict, count: int, grid: bool) -> int:
    """Images one sampling job draws: a warm-up, the timed batches, the samples and (maybe) a grid."""
    drawn = 1 + sum(sample["timed_batch_sizes"]) + count
    if grid and sample["temperature"] != 1.0:  # at t = 1 the grid reuses the samples
        drawn += sample["grid_size"]
    return drawn


@dataclass
class Job:
    """One Snakemake job of the plan: its stage, experiment, units of work and the bytes it writes."""

    stage: str
    experiment: str
    units: float  # optimiser steps, images or batches: what `seconds_per_unit` prices
    unit: str
    disk_bytes: float = 0.0
    detail: dict = field(default_factory=dict)


def study_jobs(params: dict) -> list[Job]:
    """The jobs of the whole study (main run, sub-experiments, Table 8 sweep) and their work."""
    jobs = []
    for experiment in study_experiments(params):
        p = with_run_settings(experiment.params)  # the grid's size and temperature live in `run`
        name = experiment.name
        num_train, num_test = split_sizes(p["data"])
        channels, height, width = image_shape(p["data"])
        image_bytes = channels * height * width
        if name == experiment.name.split("/")[0]:  # the study's data split: written once
            jobs.append(
                Job(
                    "prepare_data", name, num_train + num_test, "images", (num_train + num_test) * image_bytes
                )
            )
        train = p["vae"]["train"]
        jobs.append(
            Job("train_vae", name, stage1_steps(num_train, train, p["vae"]["init_checkpoint"]), "steps")
        )
        if p["cache"]["mode"] == "stream":
            # the cache job writes an index only; each NCE job draws one pair per image and epoch from the
            # VAE (ncp.priors.latent_stream), one forward pass per image, over the first cache.num_images
            pairs = min(num_train, p["cache"]["num_images"] or num_train)
            jobs.append(Job("cache_latents", name, 0, "images", detail={"pairs": 0, "stream": True}))
            nce_detail = {"stream_images": p["nce"]["epochs"] * pairs}
        else:
            pairs = cache_pairs(num_train, p["cache"])
            jobs.append(Job("cache_latents", name, pairs, "images", detail={"pairs": pairs}))
            nce_detail = {}
        groups = num_latent_groups(p["vae"])
        for k in range(groups):
            steps = nce_steps(pairs, p["nce"])
            jobs.append(Job("train_nce", name, steps, "steps", detail={"group": k, **nce_detail}))
        sample = p["sample"]
        # Table 2's and Table 6's rows are NLLs: their sub-experiments draw no samples; every other run does
        methods = [] if experiment.table in ("table2", "table6") else ["base", *sample["methods"]]
        for method in methods:
            jobs.append(
                Job(
                    "sample",
                    name,
                    sample_images(sample, sample["num_samples"], True),
                    "images",
                    detail={"method": method},
                )
            )
        if experiment.table is None and "table8" in written_tables(p):
            sweep_count = p["paper"]["table8"]["num_samples"] or sample["num_samples"]
            for variant in sweep_variants(p):
                if variant in sample["methods"]:
                    continue  # the run's own setting is sampled once
                _, overrides = parse_variant(variant)
                jobs.append(
                    Job(
                        "sample",
                        name,
                        sample_images(sample, sweep_count, False),
                        "images",
                        detail={"method": variant, **overrides},
                    )
                )
        nll = p["evaluate"]["nll"]
        nll_images = min(num_test, nll["num_images"] or num_test)
        jobs.append(
            Job(
                "evaluate_nll",
                name,
                nll_images * nll["iw_samples"] * 2,
                "passes",
                detail={"log_z": nll["log_z_samples"] * nll["log_z_seeds"]},  # prior walks of log Z
            )
        )
    return jobs
