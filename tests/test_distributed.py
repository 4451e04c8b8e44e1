"""Multi-process stage 1 (DistributedDataParallel) on the CPU with gloo: sharding, one step against one
process with the whole batch, and `ncp train-vae` under torchrun end to end."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ncp import distributed
from ncp.config import ExperimentConfig
from ncp.data import ImageSet, iterate_batches, save_image_set
from ncp.models.nvae.layers import BatchNormSwish, WrappedBatchNorm
from ncp.models.registry import build_vae, load_vae_checkpoint
from ncp.train_vae import build_optimizer, epoch_batches, train_step

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _tiny_params(checkpoint_every: int = 200, **train) -> dict:
    """Params of a tiny MLP VAE (no BatchNorm) trained on the CPU."""
    return {
        "seed": 3,
        "run": {"device": "cpu", "checkpoint_every": checkpoint_every},
        "data": {"name": "mnist5k"},
        "vae": {"arch": "mlp", "mlp": {"hidden": 16, "latent_dim": 4}, "train": {"lr": 1e-2, **train}},
    }


def _tiny_image_set(count: int) -> ImageSet:
    """Binary (dynamically binarised) 1x32x32 images with grey levels, so binarisation is random."""
    images = torch.randint(
        0, 256, (count, 1, 32, 32), generator=torch.Generator().manual_seed(5), dtype=torch.uint8
    )
    return ImageSet(images, None, "mnist5k", "train", binary=True)


def _one_step(process_rank: int, num_processes: int) -> tuple[dict, dict]:
    """One noise-free training step of the tiny MLP VAE on this process's slot of the first global batch;
    returns its parameters and (averaged, under DDP) gradients."""
    cfg = ExperimentConfig.from_params(_tiny_params(batch_size=GLOBAL_BATCH // num_processes))
    train_set = _tiny_image_set(32)
    torch.manual_seed(cfg.seed)
    model = build_vae("mlp", dataclasses.asdict(cfg.vae.mlp))
    model.initialise_from_data(train_set.images)
    optimizer = build_optimizer(model, cfg.vae.train)
    network = distributed.wrap_model(model, torch.device("cpu"))
    generator = torch.Generator().manual_seed(cfg.seed)
    x = next(epoch_batches(train_set, cfg.vae.train.batch_size, generator, process_rank, num_processes))
    train_step(network, optimizer, x, 0.5, cfg.vae.train, noise_scale=0.0)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return params, grads


def _step_worker(process_rank: int, num_processes: int, port: int, out_dir: str) -> None:
    """What each spawned process runs: join a gloo group as torchrun would set it up, take one step."""
    torch.set_num_threads(1)
    os.environ.update(
        WORLD_SIZE=str(num_processes),
        RANK=str(process_rank),
        LOCAL_RANK=str(process_rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    device = distributed.setup_process_group("cpu")
    assert device.type == "cpu" and distributed.world_size() == num_processes
    try:
        torch.save(_one_step(process_rank, num_processes), Path(out_dir) / f"rank{process_rank}.pt")
    finally:
        distributed.teardown_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env_without_torchrun() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(
        OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    )
    return env


@pytest.mark.parametrize("count", [48, 53])
def test_shards_are_disjoint_and_cover_the_order(count):
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    batch_size = 2
    for num_processes in range(1, 5):
        shards = [
            distributed.shard_batch_order(order, batch_size, r, num_processes) for r in range(num_processes)
        ]
        steps = count // (batch_size * num_processes)
        assert all(shard.shape == (steps, batch_size) for shard in shards)  # same step count everywhere
        union = torch.cat([shard.flatten() for shard in shards])
        assert len(set(union.tolist())) == len(union)  # disjoint
        covered = steps * batch_size * num_processes
        assert sorted(union.tolist()) == sorted(order[:covered].tolist())  # 48: the whole order
        assert count - covered < batch_size * num_processes  # only a partial global batch is dropped
        # Step s of process r is slot r of global batch s.
        assert torch.equal(
            shards[-1][0], order[(num_processes - 1) * batch_size : num_processes * batch_size]
        )
    with pytest.raises(ValueError, match="rank 2"):
        distributed.shard_batch_order(order, batch_size, 2, 2)


def test_two_processes_see_the_batches_of_one_process_with_twice_the_batch():
    train_set = _tiny_image_set(20)
    single = list(epoch_batches(train_set, 4, torch.Generator().manual_seed(1)))
    # One process: exactly iterate_batches (shuffle, binarisation, drop_last), so num_processes 1 is unchanged.
    reference = list(
        iterate_batches(
            train_set, 4, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=True
        )
    )
    assert len(single) == 5 and all(torch.equal(a, b) for a, b in zip(single, reference))
    # Two processes with batch 2 each: their slots, side by side, are the single-process batches of 4.
    halves = [list(epoch_batches(train_set, 2, torch.Generator().manual_seed(1), r, 2)) for r in range(2)]
    assert len(halves[0]) == len(halves[1]) == 5
    for step, batch in enumerate(single):
        assert torch.equal(torch.cat([halves[0][step], halves[1][step]]), batch)


def test_two_process_step_matches_one_process_on_the_whole_batch(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_step_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    (params0, grads0), (params1, _) = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    full_params, full_grads = _one_step(0, 1)  # one process over all GLOBAL_BATCH images
    half_params, _ = _one_step(0, 2)  # one process over rank 0's half only, without DDP
    for name, value in full_params.items():
        assert torch.equal(params0[name], params1[name])  # replicas stay identical
        torch.testing.assert_close(grads0[name], full_grads[name], atol=1e-6, rtol=1e-5)  # mean over 8 images
        torch.testing.assert_close(params0[name], value, atol=1e-5, rtol=0)
    # The comparison can fail: half the batch alone moves the weights elsewhere.
    assert max((half_params[n] - full_params[n]).abs().max().item() for n in full_params) > 1e-4


def test_train_vae_cli_with_two_processes_writes_one_loadable_checkpoint(tmp_path):
    save_image_set(_tiny_image_set(24), tmp_path / "train.pt")
    params = _tiny_params(epochs=2, batch_size=4, num_processes=2, checkpoint_every=2)
    out, work_dir = tmp_path / "vae" / "checkpoint.pt", tmp_path / "work"
    command = [
        sys.executable,
        "-m",
        "ncp.cli",
        "train-vae",
        "--params-json",
        json.dumps(params),
        "--train-data",
        str(tmp_path / "train.pt"),
        "--out",
        str(out),
        "--work-dir",
        str(work_dir),
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        env=_env_without_torchrun(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = load_vae_checkpoint(out)
    assert model.latent_dim == 4
    training = torch.load(out, weights_only=True)["training"]
    # 24 images, 4 per process x 2 processes: 3 steps an epoch, 2 epochs.
    assert training["num_processes"] == 2 and training["steps"] == 6
    assert [p.name for p in out.parent.iterdir()] == ["checkpoint.pt"]  # one file, no stray temporaries
    assert not (work_dir / "resume.pt").exists()  # rank 0 removed its resume state at the end


def test_failed_torchrun_raises_one_line_error(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(RuntimeError, match=r"2 processes failed \(exit code [1-9]") as error:
        distributed.relaunch_under_torchrun(2, ["train-vae", "--no-such-option"])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="torchrun"):
        distributed.setup_process_group("cpu")


def test_sync_batchnorm_conversion_keeps_swish_and_weights():
    torch.manual_seed(0)
    model = nn.Sequential(BatchNormSwish(3), WrappedBatchNorm(3), nn.Conv2d(3, 3, 1))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight)
            module.running_mean.normal_()
    expected_keys = model.state_dict().keys()
    x = torch.randn(2, 3, 4, 4)
    model.eval()
    expected = model(x)
    converted = distributed.convert_sync_batchnorm(model)
    assert type(converted[0]) is distributed.SyncBatchNormSwish and type(converted[1].bn) is nn.SyncBatchNorm
    assert converted.state_dict().keys() == expected_keys  # checkpoints still load into the plain model
    assert not converted[0].training
    # In eval mode SyncBatchNorm uses the running statistics, so the outputs (Swish included) agree.
    torch.testing.assert_close(converted(x), expected)
