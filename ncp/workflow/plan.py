"""`ncp plan`: what a params file will cost before it runs: wall time per stage on this device, peak memory,
disk, and the device-hours of the paper's 50,000-image FID with SIR at the file's M.

Three parts. ncp/workflow/plan_jobs.py (pure Python, tested against known step counts) turns params into
work: optimiser steps, encoder batches, images per sampler. ncp/workflow/plan_timing.py times a few steps
of the real models at the real sizes (random weights: a step costs the same trained or not), each stage
in a fresh process so its peak memory is its own. This module prices the work and adds the bytes written. Estimate = job start-up + units x seconds per
unit, summed over the jobs of every experiment of the study (sub-experiments and the Table 8 sweep
included) as if they ran one after another. What it leaves out: FID feature extraction and MMD (minutes
on a GPU), data preparation (reading the files once), and queueing on a cluster.
"""

from __future__ import annotations

import math

from ncp.params import with_run_settings
from ncp.variants import parse_variant
from ncp.workflow.plan_jobs import Job, image_shape, split_sizes, study_jobs
from ncp.workflow.study import study_experiments

PAPER_FID_SAMPLES = 50_000  # the paper's FIDs use 50,000 samples
READ_IMAGE_SECONDS = (
    0.002  # decoding and resizing one JPEG/PNG (prepare_data is untimed: files may be absent)
)


def estimate_seconds(job: Job, t: dict) -> float:
    """Wall seconds of one job: start-up plus its units at the timed price ``t`` of its experiment (the keys
    ncp/workflow/plan_timing.py measures)."""
    if job.stage == "prepare_data":
        return t["startup_s"] + job.units * READ_IMAGE_SECONDS
    if job.stage == "train_vae":
        if not job.units:
            return t["startup_s"]
        return t["startup_s"] + t["build_s"] + t["vae_first_step_s"] + (job.units - 1) * t["vae_step_s"]
    if job.stage == "cache_latents":
        return t["startup_s"] + t["build_s"] + t["load_s"] + job.units * t["encode_image_s"]
    if job.stage == "train_nce":
        # cache.mode stream: the job also loads the VAE and runs it over its images, down to its group
        streamed, drawing = job.detail.get("stream_images", 0), 0.0
        if streamed:
            drawing = t["build_s"] + t["load_s"] + streamed * t["stream_image_s"][job.detail["group"]]
        return t["startup_s"] + job.units * t["nce_step_s"][job.detail["group"]] + drawing
    if job.stage == "sample":
        method = job.detail["method"]
        sampler, overrides = parse_variant(method)
        seconds = sample_seconds_per_image(
            t, sampler, overrides.get("num_proposals"), overrides.get("num_steps")
        )
        extra = t["bn_readjust_s"] if t["readjusts_batchnorm"] else 0.0
        return t["startup_s"] + t["build_s"] + t["load_s"] + job.units * seconds + extra
    if job.stage == "evaluate_nll":
        return (
            t["startup_s"]
            + t["build_s"]
            + t["load_s"]
            + job.units * t["encode_image_s"]
            + job.detail["log_z"] * t["base_image_s"]
            # each log Z prior walk and each NCP importance sample (half the passes) also runs every
            # group's classifier once: one SIR proposal's price
            + (job.detail["log_z"] + job.units / 2) * t["sir_proposal_s"]
        )
    raise ValueError(f"no estimate for stage {job.stage!r}")


def sample_seconds_per_image(
    t: dict, sampler: str, proposals: int | None = None, steps: int | None = None
) -> float:
    """Per image: a base prior walk, plus SIR's proposals or LD's steps (linear in M and T)."""
    if sampler == "base":
        return t["base_image_s"]
    if sampler == "sir":
        return t["base_image_s"] + (proposals or t["sir_num_proposals"]) * t["sir_proposal_s"]
    return t["base_image_s"] + (steps or t["ld_num_steps"]) * t["ld_step_s"]


def paper_fid_hours(t: dict) -> float:
    """Device-hours to draw the paper's 50,000 FID images with SIR at the file's M, on the timed device."""
    return PAPER_FID_SAMPLES * sample_seconds_per_image(t, "sir") / 3600


def disk_bytes(job: Job, params: dict, t: dict) -> float:
    """Bytes a job writes: data splits, checkpoints, the latent cache, classifiers, sample files."""
    if job.stage == "prepare_data":
        return job.disk_bytes
    if job.stage == "train_vae":
        return 4.0 * t["num_parameters"] if job.units else 0.0  # float32 weights (an import is copied)
    if job.stage == "cache_latents":  # cache.mode stream: an index only (its units are 0)
        per_pair = sum(
            2 * math.prod(g) + (math.prod(c) if c else 0)
            for g, c in zip(t["group_shapes"], t["context_shapes"])
        )
        return job.units * per_pair * (2 if params["cache"]["dtype"] == "float16" else 4)
    if job.stage == "train_nce":
        return 4.0 * t["classifier_parameters"][job.detail["group"]]
    if job.stage == "sample":
        count = job.units - 1 - sum(params["sample"]["timed_batch_sizes"])
        latents = sum(math.prod(g) for g in t["group_shapes"])
        return count * (math.prod(image_shape(params["data"])) + 4 * latents)  # uint8 images, float32 latents
    return 0.0


def peak_bytes(job: Job, params: dict, t: dict) -> float:
    """Peak memory of a job: the timed process's peak plus the image split and buffers it holds in memory."""
    num_train, num_test = split_sizes(params["data"])
    image_bytes = math.prod(image_shape(params["data"]))
    if job.stage == "train_vae":
        return t["vae_peak_bytes"] + num_train * image_bytes if job.units else 0.0
    shard_bytes = params["cache"]["shard_mb"] * 2**20
    if job.stage == "cache_latents":
        # the VAE (as loaded for sampling), the training images, and one shard buffer per group being filled;
        # in stream mode only the index is written
        if job.detail.get("stream"):
            return t["sample_peak_bytes"]
        groups = len(t["group_shapes"])
        return t["sample_peak_bytes"] + num_train * image_bytes + groups * shard_bytes
    if job.stage == "train_nce":
        if job.detail.get("stream_images"):
            # the timing process's peak already holds the VAE beside the classifiers, as this job does;
            # add the images it draws from
            return t["peak_bytes"] + num_train * image_bytes
        return t["peak_bytes"] + params["nce"]["buffer_shards"] * shard_bytes  # the shuffle buffer
    if job.stage == "evaluate_nll":
        return t["peak_bytes"] + num_test * image_bytes
    if job.stage == "prepare_data":
        return t["baseline_bytes"] + (num_train + num_test) * image_bytes
    return t["sample_peak_bytes"] if job.stage == "sample" else t["peak_bytes"]


def _timing_key(params: dict) -> str:
    import json

    priced = {k: params[k] for k in ("data", "vae", "nce", "sample", "cache")}
    return json.dumps({**priced, "threads": params["run"]["threads"]}, sort_keys=True)


def make_plan(params: dict, device: str, timing_batch: int | None = 4) -> tuple[list[dict], dict]:
    """Per job: stage, experiment, units, estimated seconds, peak and disk bytes; and each experiment's timing."""
    from ncp.workflow.plan_timing import time_experiment

    study = {e.name: e.params for e in study_experiments(params)}
    experiments = {name: with_run_settings(p) for name, p in study.items()}
    timing, by_key = {}, {}
    for name, p in experiments.items():
        key = _timing_key(p)
        if key not in by_key:  # sub-experiments that change only evaluation share their parent's timing
            # The timing processes build configs from the params as a stage gets them: the run settings
            # stay in `run` (ExperimentConfig.from_params refuses them in the science sections).
            t = time_experiment(study[name], device, timing_batch)
            t.update(
                sir_num_proposals=p["sample"]["sir"]["num_proposals"],
                ld_num_steps=p["sample"]["ld"]["num_steps"],
            )
            t["readjusts_batchnorm"] = p["vae"]["arch"] == "nvae" and p["sample"]["temperature"] != 1.0
            grid_batch = min(64, p["sample"]["batch_size"])
            t["bn_readjust_s"] = p["run"]["grid_readjust_passes"] * grid_batch * t["base_image_s"]
            by_key[key] = t
        timing[name] = by_key[key]
    rows = []
    for job in study_jobs(params):
        p, t = experiments[job.experiment], timing[job.experiment]
        rows.append(
            {
                "stage": job.stage,
                "experiment": job.experiment,
                "units": job.units,
                "unit": job.unit,
                "seconds": estimate_seconds(job, t),
                "peak_bytes": peak_bytes(job, p, t),
                "disk_bytes": disk_bytes(job, p, t),
                **job.detail,
            }
        )
    return rows, timing


def stage_table(rows: list[dict]):
    """Per stage: jobs, units, estimated hours (one after another), largest peak memory and total disk (GB)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    table = frame.groupby("stage", sort=False).agg(
        jobs=("seconds", "size"),
        units=("units", "sum"),
        hours=("seconds", lambda s: s.sum() / 3600),
        peak_gb=("peak_bytes", lambda b: b.max() / 1e9),
        disk_gb=("disk_bytes", lambda b: b.sum() / 1e9),
    )
    total = pd.DataFrame(
        [
            [
                len(frame),
                float("nan"),
                frame.seconds.sum() / 3600,
                frame.peak_bytes.max() / 1e9,
                frame.disk_bytes.sum() / 1e9,
            ]
        ],
        columns=table.columns,
        index=["total"],
    )
    return pd.concat([table, total])


def compare_with_benchmarks(rows: list[dict], results_root: str) -> list[dict]:
    """Estimated against measured seconds, per job that has a Snakemake `benchmark:` file (its `s` column)."""
    import csv
    from pathlib import Path

    compared = []
    for row in rows:
        name = {"train_nce": f"train_nce_{row.get('group')}", "sample": f"sample_{row.get('method')}"}.get(
            row["stage"], row["stage"]
        )
        path = Path(results_root) / row["experiment"] / "benchmarks" / f"{name}.tsv"
        if not path.is_file():
            continue
        with open(path) as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        measured, cpu = float(record["s"]), float(record["cpu_time"])
        # max_rss is Snakemake's sampled peak (MB) of the job's process tree; "-" where it sampled nothing
        measured_gb = float(record["max_rss"]) / 1e3 if record.get("max_rss", "-") not in ("-", "") else None
        compared.append(
            {
                "job": f"{row['experiment']}: {name}",
                "estimated_s": row["seconds"],
                "measured_s": measured,
                "ratio": row["seconds"] / measured,
                "measured_cpu_s": cpu,  # far below the wall where other work shares the CPU
                "estimated_gb": row["peak_bytes"] / 1e9,
                "measured_gb": measured_gb,
                "memory_ratio": row["peak_bytes"] / 1e9 / measured_gb if measured_gb else None,
            }
        )
    return compared


def within_factor(compared: list[dict], factor: float = 2.0) -> str:
    """One line: how many jobs' time and memory estimates lie within ``factor`` of the measured figures."""

    def count(key: str) -> str:
        ratios = [c[key] for c in compared if c[key]]
        inside = sum(1 / factor <= r <= factor for r in ratios)
        spread = f" (ratios {min(ratios):.2f}-{max(ratios):.2f})" if ratios else ""
        return f"{inside} of {len(ratios)} jobs{spread}"

    return f"within {factor:g}x of measured: time {count('ratio')}; peak memory {count('memory_ratio')}"


def run(params: dict, device: str, timing_batch: int | None, compare: str | None = None) -> str:
    """The plan as text: the per-stage table, the paper's FID cost, and (optionally) the comparison."""
    from ncp.runtime import pick_device

    torch_device = str(pick_device(device if device != "auto" else params["run"]["device"]))
    rows, timing = make_plan(params, torch_device, timing_batch)
    main = timing[params["experiment"]]
    lines = [
        f"ncp plan: experiment `{params['experiment']}` on {torch_device}; {len(rows)} jobs timed from "
        f"{TIMED_STEPS_NOTE} (stage 1 at batch {main.get('vae_timed_batch', '-')}, scaled to "
        f"{params['vae']['train']['batch_size']}) at {main['threads']} thread(s) per job, as its jobs run",
        "",
        stage_table(rows).to_markdown(floatfmt=".3g"),
        "",
        "hours: all jobs one after another on this device; peak: the largest job's memory (GPU jobs: CUDA "
        "allocator peak; CPU: resident set), with its image split in memory; disk: every output",
        f"the paper's FID (50,000 images, SIR with M = {main['sir_num_proposals']}): "
        f"{paper_fid_hours(main):.3g} {torch_device}-hours "
        f"({sample_seconds_per_image(main, 'sir'):.3g} s per image)",
    ]
    if compare:
        import pandas as pd

        compared = compare_with_benchmarks(rows, compare)
        lines += ["", f"estimated vs measured (Snakemake benchmark files under {compare}):", ""]
        if compared:
            estimated, measured = (sum(c[k] for c in compared) for k in ("estimated_s", "measured_s"))
            lines.append(
                f"sum over these jobs: estimated {estimated:.0f} s, measured {measured:.0f} s (Snakemake runs "
                "jobs side by side with --cores N, so the measured sum exceeds the run's wall time)"
            )
            lines.append(within_factor(compared))
        lines.append(
            pd.DataFrame(compared).to_markdown(index=False, floatfmt=".3g")
            if compared
            else "(no benchmark files found)"
        )
    return "\n".join(lines)


TIMED_STEPS_NOTE = "a few timed steps of the real models at the real sizes (random weights)"


def main_plan(argv: list[str]) -> int:
    """`ncp plan --configfile params/paper/<file>.yaml [overlays ...]`: print the cost plan."""
    import argparse
    from pathlib import Path

    from ncp.params import ConfigError, load_params_files

    parser = argparse.ArgumentParser(prog="ncp plan", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        help="params overlays on params/default.yaml, as snakemake takes them",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (the params' device)")
    parser.add_argument(
        "--timing-batch",
        type=int,
        default=4,
        help="CPU only: time stage 1 at this batch and scale to the real one",
    )
    parser.add_argument(
        "--compare",
        metavar="RESULTS",
        help="also compare with the benchmark files of a run under RESULTS (e.g. results)",
    )
    args = parser.parse_args(argv)
    try:
        params = load_params_files([Path("params/default.yaml"), *args.configfile])
        print(run(params, args.device, args.timing_batch, args.compare))
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"ncp plan: error: {error}")
        return 2
    return 0
