"""Stage 1 survives kill -9 and non-finite losses: it resumes exactly, or rolls back, or stops clearly."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from kill_points import wait_for_saved_step

from ncp import train_vae
from ncp.config import ExperimentConfig
from ncp.params import load_params_files
from ncp.prepare_data import run as prepare_data
from ncp.training_state import NonFiniteLoss, fault_location

REPO = Path(__file__).resolve().parents[1]
MICRO = [REPO / "params/default.yaml", REPO / "params/test/micro.yaml"]

# 256 images, batches of 64, 3 epochs: 12 NVAE steps, the resume state written after every step.
RESUME_OVERLAY = "vae:\n  train:\n    epochs: 3\n    batch_size: 64\nrun:\n  checkpoint_every: 1\n"
# Each run is killed a random fraction of a step after its state for this step is written, so at least
# three steps remain at every kill, however fast or slow the machine: the kills are placed by the run's own
# progress, not by a clock (a fixed delay of up to 2.5 s once outlasted the whole run on a CI machine).
KILL_AFTER_STEPS = (2, 5, 8)


def _env() -> dict:
    # One thread: float sums in another order would make two runs differ by rounding, not by resume.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train_command(params: list[Path], train: Path, out: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "ncp.cli", "train-vae", "--params", *map(str, params),
            "--train-data", str(train), "--out", str(out), "--work-dir", str(work)]  # fmt: skip


def _weights_and_history(path: Path) -> tuple[dict, list]:
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["state_dict"], checkpoint["training"]["history"]


@pytest.mark.slow
def test_train_vae_killed_at_random_moments_ends_with_the_uninterrupted_weights(tmp_path):
    overlay = tmp_path / "resume.yaml"
    overlay.write_text(RESUME_OVERLAY)
    params = [*MICRO, overlay]
    cfg = ExperimentConfig.from_params(load_params_files(params))
    train, test = tmp_path / "train.pt", tmp_path / "test.pt"
    prepare_data(cfg.data, cfg.seed, train, test)
    reference = tmp_path / "reference.pt"
    subprocess.run(_train_command(params, train, reference, tmp_path / "work_ref"), env=_env(), check=True,
                   capture_output=True, timeout=600)  # fmt: skip

    out, work = tmp_path / "vae.pt", tmp_path / "work"
    chooser = random.Random(14)  # seeded, so a failure can be replayed
    resumed_at = []
    for kill, step in enumerate(KILL_AFTER_STEPS):
        job = subprocess.Popen(_train_command(params, train, out, work), env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
        saved_step, step_seconds = wait_for_saved_step(work / train_vae.RESUME_FILE, step, job)
        assert saved_step == step, f"kill {kill}: waited for the state of step {step}, saw {saved_step}"
        # A random fraction of a step more: kills land inside steps and inside state writes.
        time.sleep(chooser.uniform(0.0, 1.0) * step_seconds)
        assert job.poll() is None, f"the run ended before kill {kill}: {job.communicate()[0][-2000:]}"
        job.send_signal(signal.SIGKILL)
        output = job.communicate()[0]
        resumed_at += [line for line in output.splitlines() if line.startswith("resuming")]
        assert not out.exists()  # a killed run leaves no final checkpoint that looks finished
    final = subprocess.run(_train_command(params, train, out, work), env=_env(), capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    assert "resuming stage-1 training at step" in final.stdout
    # Runs 2 and 3 each resumed what the one before saved: the state of its kill step, or of the step after
    # when the kill landed after that step's write.
    resumed_steps = [int(line.split("step ")[1].split("/")[0]) for line in resumed_at]
    assert [step in (after, after + 1) for step, after in zip(resumed_steps, KILL_AFTER_STEPS)] == [
        True,
        True,
    ]
    assert len(resumed_steps) == 2, resumed_at

    weights, history = _weights_and_history(out)
    reference_weights, reference_history = _weights_and_history(reference)
    assert weights.keys() == reference_weights.keys()
    different = [key for key in weights if not torch.equal(weights[key], reference_weights[key])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
    assert history == reference_history
    assert not (work / train_vae.RESUME_FILE).exists()


def _mlp_params(tmp_path: Path, epochs: int = 2) -> list[Path]:
    """A small single-group MLP VAE: 256 images, batches of 64, so 4 steps an epoch; state every 2."""
    overlay = tmp_path / "mlp.yaml"
    overlay.write_text(
        "vae:\n  arch: mlp\n  mlp: {image_size: 32, crop_size: 28, latent_dim: 4, hidden: 16,"
        " num_hidden_layers: 1}\n"
        f"  train: {{epochs: {epochs}, batch_size: 64, optimizer: adam, lr: 0.001,"
        " kl_anneal_portion: 0.0}\n"
        "run: {checkpoint_every: 2}\n"
    )
    return [*MICRO, overlay]


def _train_in_process(tmp_path: Path, params: list[Path], poisoned_calls: set[int], monkeypatch):
    """Train in this process, with the loss made NaN (through a NaN image) on the given calls."""
    cfg = ExperimentConfig.from_params(load_params_files(params))
    train, test = tmp_path / "train.pt", tmp_path / "test.pt"
    if not train.exists():
        prepare_data(cfg.data, cfg.seed, train, test)
    real_loss, calls = train_vae.vae_loss, []

    def loss_with_faults(model, x, *args, **kwargs):
        calls.append(len(calls))
        if len(calls) - 1 in poisoned_calls:
            x = x * float("nan")
        return real_loss(model, x, *args, **kwargs)

    monkeypatch.setattr(train_vae, "vae_loss", loss_with_faults)
    out = tmp_path / "vae.pt"
    train_vae.run(cfg.data, cfg.vae, cfg.seed, "cpu", train, out, tmp_path / "work")
    return out, calls


def test_a_transient_nan_loss_rolls_back_with_a_lower_learning_rate_and_training_finishes(
    tmp_path, monkeypatch, capsys
):
    # Calls 0-4 are steps 0-4; the state saved after 4 steps is the last good one. Call 5 (step 5) is
    # NaN: back to step 4 at half the LR; the retry (call 6) is NaN too: back again, a quarter of the LR.
    out, calls = _train_in_process(tmp_path, _mlp_params(tmp_path), {5, 6}, monkeypatch)
    printed = capsys.readouterr().out
    assert "non-finite stage-1 loss at step 5 in the forward pass" in printed
    assert "rolled back to step 4 with the learning rate x0.5 (roll-back 1 of 3)" in printed
    training = torch.load(out, weights_only=True)["training"]
    assert training["steps"] == 8 and training["rollbacks"] == 2 and training["lr_scale"] == 0.25
    assert len(calls) == 8 + 2 + 1  # every step once, the two that failed, and step 4 again
    weights = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.isfinite(tensor).all() for tensor in weights.values() if tensor.is_floating_point())


def test_a_persistent_nan_loss_stops_after_bounded_roll_backs_naming_the_step(tmp_path, monkeypatch):
    # From call 3 (step 3) on every loss is NaN: back to step 2 three times, then a one-line stop.
    with pytest.raises(RuntimeError) as stopped:
        _train_in_process(tmp_path, _mlp_params(tmp_path), set(range(3, 100)), monkeypatch)
    message = str(stopped.value)
    assert "\n" not in message
    assert (
        "not finite at step 2 in the forward pass (a distribution got NaN parameters) after 3 roll-backs"
        in message
    )
    assert "lower vae.train.lr" in message
    assert not (tmp_path / "vae.pt").exists()  # no checkpoint from a failed run


def test_a_non_finite_kl_names_its_latent_group():
    recon = torch.zeros(4)
    kl = torch.zeros(4, 3)
    kl[1, 2] = float("inf")
    assert fault_location(recon, kl, None) == "in the KL term of latent group 2"
    assert fault_location(torch.tensor([0.0, float("nan")]), torch.zeros(2, 3), None) == (
        "in the reconstruction term"
    )
    assert issubclass(NonFiniteLoss, FloatingPointError)


class _KLBlowsUp(torch.nn.Module):
    """A stand-in backbone whose KL of latent group 1 is infinite (what a diverging NVAE group gives)."""

    def forward(self, x, noise_scale=1.0):
        kl = torch.ones(len(x), 3)
        kl[:, 1] = float("inf")
        return SimpleNamespace(logits=torch.zeros_like(x), kl=kl)

    def log_px(self, logits, x):
        return torch.zeros(len(x))

    def kl_term(self, kl_per_group, beta, balance):  # the contract's KL term (ncp.models.base)
        return beta * kl_per_group.sum(dim=1)

    def regulariser(self):
        return torch.zeros(())


def test_a_non_finite_loss_is_caught_before_the_optimiser_step_naming_the_group():
    cfg = ExperimentConfig.from_params(load_params_files(MICRO))
    model = _KLBlowsUp()
    with pytest.raises(NonFiniteLoss, match="in the KL term of latent group 1"):
        train_vae.vae_loss(model, torch.zeros(2, 1, 4, 4), 1.0, cfg.vae.train)
