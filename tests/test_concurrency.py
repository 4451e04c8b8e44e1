"""Two `snakemake` runs in one folder, and a crashed one: Snakemake's lock keeps outputs whole."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from workflow_copy import copy_workflow

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = "results/micro/vae/checkpoint.pt"


def _command(*args: str) -> list[str]:
    # micro, 3 epochs: 24 stage-1 steps, the state saved every 4, so run A is still training while run B
    # starts and fails.
    return [
        "snakemake",
        "--cores",
        "1",
        CHECKPOINT,
        "--configfile",
        "params/test/micro.yaml",
        "longer.yaml",
        *args,
    ]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_a_second_run_is_locked_out_and_a_crashed_run_recovers_after_unlock(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "longer.yaml").write_text("vae:\n  train:\n    epochs: 3\n")
    # Run A: its own session, so killing the group is what a crash of the machine or allocation does.
    first = subprocess.Popen(_command(), cwd=tmp_path, env=_env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    resume = tmp_path / "results/micro/work/vae/resume.pt"
    deadline = time.time() + 300
    while not resume.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert resume.exists(), "run A never reached stage-1 training"
    # Freeze A mid-training, so that it cannot finish while B starts up (on a loaded CI machine B's start
    # took longer than A's remaining 20 steps; A's checkpoint then existed at the kill and Snakemake reported
    # it incomplete before ever looking at the lock). The lock is files, so a stopped A still holds it.
    os.killpg(first.pid, signal.SIGSTOP)
    assert not (tmp_path / CHECKPOINT).exists(), "run A finished stage 1 before it could be stopped"

    # Run B, meanwhile, on the same outputs: refused at once, and it touches nothing.
    second = subprocess.run(_command(), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode != 0
    assert (
        "LockException" in second.stdout + second.stderr
        or "cannot be locked" in second.stdout + second.stderr
    )
    assert first.poll() is None  # A is still alive, only stopped

    os.killpg(first.pid, signal.SIGKILL)  # A crashes mid-training: its lock stays behind
    first.wait()
    locked = subprocess.run(_command(), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr

    unlock = subprocess.run(_command("--unlock"), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = subprocess.run(_command(), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (tmp_path / "results/micro/logs/train_vae.log").read_text()
    assert "resuming stage-1 training at step" in log  # the rerun continued A's training
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert checkpoint["training"]["steps"] == 24  # 256 images, batches of 32, 3 epochs


def test_a_second_dvc_repro_is_refused_while_the_first_runs(tmp_path):
    # DVC's read-write lock (.dvc/tmp/rwlock) refuses a second pipeline run in the repository; the first
    # finishes with its output whole.
    if subprocess.run(["dvc", "--version"], capture_output=True).returncode != 0:
        pytest.skip("dvc is not installed")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    # The first run's stage says when it has begun and then waits for the test's word (files), not for fixed
    # times: however long the second run takes to start on a loaded machine, the first holds the lock.
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: touch started && until [ -e release ]; do sleep 0.1; done"
        " && echo whole > out.txt\n    outs:\n      - out.txt\n"
    )
    first = subprocess.Popen(
        ["dvc", "repro", "-q"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 120
        while not (tmp_path / "started").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert (tmp_path / "started").exists(), first.stdout.read()
        second = subprocess.run(["dvc", "repro", "-f"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        assert first.poll() is None  # the first was running all through the second
    finally:
        (tmp_path / "release").touch()
    assert first.wait(timeout=120) == 0, first.stdout.read()
    assert second.returncode != 0
    assert "rwlock" in second.stdout + second.stderr
    assert (tmp_path / "out.txt").read_text() == "whole\n"
