"""GPU placement without GPUs: jobs claim simulated GPUs (NCP_FAKE_GPU_COUNT) through ncp.gpu_slots.

Each "job" is a separate Python process, as Snakemake's jobs are; the locks are the same OS file locks a
real run uses, only the device count is faked.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from workflow_copy import REPO, copy_workflow

# A job: claim `count` GPUs, report (gpu ids, claim time, CUDA_VISIBLE_DEVICES) on stdout, hold them for
# `hold` seconds (or until killed), exit.
JOB = textwrap.dedent(
    """
    import json, os, sys, time
    from ncp import gpu_slots
    count, hold = int(sys.argv[1]), float(sys.argv[2])
    started = time.time()
    ids = gpu_slots.claim_gpus(count, poll_seconds=0.05, log=lambda message: None)
    print(json.dumps({"ids": ids, "claimed_at": time.time(), "waited": time.time() - started,
                      "visible": os.environ["CUDA_VISIBLE_DEVICES"]}), flush=True)
    time.sleep(hold)
    print(json.dumps({"released_at": time.time()}), flush=True)
    """
)


def _env(tmp_path: Path, gpus: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(NCP_FAKE_GPU_COUNT=str(gpus), NCP_GPU_SLOT_DIR=str(tmp_path / "slots"), PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def _start(env: dict, count: int = 1, hold: float = 2.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(count), str(hold)], env=env, stdout=subprocess.PIPE, text=True
    )


def _claim(job: subprocess.Popen) -> dict:
    return json.loads(job.stdout.readline())


def test_jobs_started_together_get_distinct_gpus_and_none_waits_while_one_is_free(tmp_path):
    env = _env(tmp_path, gpus=3)
    jobs = [_start(env, hold=hold) for hold in (2.0, 4.0, 4.0)]  # the first job ends first
    claims = [_claim(job) for job in jobs]
    # Fails if two jobs share a GPU (the bug this replaces: every job on cuda:0) ...
    assert sorted(c["ids"][0] for c in claims) == ["0", "1", "2"]
    assert all(c["visible"] == c["ids"][0] for c in claims)  # torch then sees only its own GPU as cuda:0
    # ... or if a job waited although a GPU was free (each got one at once; 1 s leaves room for a loaded machine)
    assert max(c["waited"] for c in claims) < 1.0
    # A fourth job, started while all three are held, waits for the first release and takes that GPU.
    fourth = _start(env, hold=0.1)
    first_release = json.loads(jobs[0].stdout.readline())["released_at"]
    claim = _claim(fourth)
    assert claim["ids"] == claims[0]["ids"] and claim["claimed_at"] >= first_release
    assert claim["claimed_at"] - first_release < 1.0  # it did not wait once the GPU was free
    for job in jobs + [fourth]:
        job.wait(timeout=30)


def test_a_killed_job_frees_its_gpu(tmp_path):
    env = _env(tmp_path, gpus=1)
    holder = _start(env, hold=60)
    assert _claim(holder)["ids"] == ["0"]
    holder.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
    holder.wait(timeout=10)
    successor = _start(env, hold=0)
    claim = _claim(successor)
    assert claim["ids"] == ["0"] and claim["waited"] < 1.0
    successor.wait(timeout=10)


def test_multi_gpu_job_claims_distinct_gpus_and_respects_cuda_visible_devices(tmp_path):
    # The machine (or SLURM allocation) shows physical GPUs 4, 6 and 7; one job holds the first.
    env = _env(tmp_path, gpus=3, CUDA_VISIBLE_DEVICES="4,6,7")
    single = _start(env, hold=3.0)
    assert _claim(single)["ids"] == ["4"]
    ddp = _start(env, count=2, hold=0)
    claim = _claim(ddp)
    assert claim["ids"] == ["6", "7"] and claim["visible"] == "6,7"  # torchrun's processes see exactly these
    for job in (single, ddp):
        job.wait(timeout=30)


def test_a_job_asking_for_more_gpus_than_the_machine_has_is_a_clear_error(tmp_path, monkeypatch):
    from ncp import gpu_slots

    monkeypatch.setenv("NCP_FAKE_GPU_COUNT", "2")
    monkeypatch.setenv("NCP_GPU_SLOT_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(RuntimeError, match="needs 4 GPU.*2 are visible.*num_processes"):
        gpu_slots.claim_gpus(4)


def test_slurm_jobs_divide_only_their_own_allocation(monkeypatch, tmp_path):
    from ncp import gpu_slots

    monkeypatch.delenv("NCP_GPU_SLOT_DIR", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    in_job = gpu_slots.slot_dir()
    monkeypatch.setenv("SLURM_JOB_ID", "124")
    # two SLURM jobs on one node both see their GPU as index 0: their locks must not meet
    assert in_job != gpu_slots.slot_dir() and in_job.name == "slurm-123"


def test_each_experiment_asks_for_gpus_by_its_own_device(tmp_path):
    # With 2 (simulated) GPUs, the default study's jobs ask for one GPU each, except those of the
    # Table 2 sub-experiment, whose params/table2_cpu.yaml says run.device: cpu; CPU-only rules ask none.
    copy_workflow(tmp_path)
    result = subprocess.run(
        ["snakemake", "-n", "--cores", "2"],
        cwd=tmp_path,
        env=_env(tmp_path, gpus=2),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    requests = {}
    for block in result.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        wildcards = next((line for line in block.splitlines() if "wildcards:" in line), "")
        resources = next((line for line in block.splitlines() if "resources:" in line), "")
        gpu = next((part.split("=")[1] for part in resources.split(", ") if part.startswith("gpu=")), "none")
        requests.setdefault((rule, "table2_cpu" in wildcards), set()).add(gpu)
    assert requests[("train_vae", False)] == {"1"} and requests[("train_nce", False)] == {"1"}
    assert requests[("train_vae", True)] == {"0"} and requests[("evaluate_nll", True)] == {"0"}
    assert requests[("nearest_neighbours", False)] == {"none"}  # a KD-tree on the CPU


def test_snakemake_runs_gpu_jobs_side_by_side_each_on_its_own_gpu(tmp_path):
    # Snakemake's `gpu` resource caps the GPU jobs at the GPUs there are; each job claims one. Four
    # jobs on 2 simulated GPUs: never more than 2 at once, never two on one GPU, and the later two start
    # as soon as the first two end.
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            f"""
            rule all:
                input: expand("job_{{i}}.json", i=range(4))

            rule job:
                output: "job_{{i}}.json"
                resources: gpu=1
                shell: "{sys.executable} job.py 1 1.5 > {{output}}"
            """
        )
    )
    result = subprocess.run(
        ["snakemake", "--cores", "4", "--resources", "gpu=2"],
        cwd=tmp_path,
        env=_env(tmp_path, gpus=2),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    spans = []
    for i in range(4):
        claim, release = (json.loads(line) for line in (tmp_path / f"job_{i}.json").read_text().splitlines())
        spans.append((claim["claimed_at"], release["released_at"], claim["ids"][0]))
        assert claim["waited"] < 1.0  # Snakemake never starts a GPU job without a free GPU
    for a in spans:
        overlapping = [b for b in spans if b is not a and b[0] < a[1] and a[0] < b[1]]
        assert len(overlapping) <= 1 and all(b[2] != a[2] for b in overlapping)
