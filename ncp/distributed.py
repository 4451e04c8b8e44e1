"""Multi-process stage-1 training: process-group set-up, batch sharding and the torchrun re-launch.

`ncp train-vae` with ``vae.train.num_processes`` N > 1 re-runs itself under torchrun (one process per
GPU, or N CPU processes with gloo). Inside torchrun every process reads RANK / LOCAL_RANK / WORLD_SIZE
from the environment; outside it the helpers below answer as a single process (rank 0 of 1).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ncp.runtime import pick_device

# Rank 0 alone fits a GMM prior and writes the checkpoint while the others wait at a barrier:
# allow that more than the default collective timeout.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    """True once this process has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def setup_process_group(requested_device: str = "auto") -> torch.device:
    """Join torchrun's process group and return this process's device.

    On GPUs each process gets cuda:LOCAL_RANK (not the one device ``pick_device`` would give every
    process) and NCCL; on the CPU, gloo.
    """
    if not launched_by_torchrun():
        raise ValueError("setup_process_group needs torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK)")
    device = pick_device(requested_device)  # validates the request; its GPU index is replaced below
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} visible "
                "(lower vae.train.num_processes)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not is_distributed():
        if device.type == "cuda":  # device_id binds NCCL's communicator (and barriers) to this GPU
            dist.init_process_group(
                "nccl", init_method="env://", timeout=COLLECTIVE_TIMEOUT, device_id=device
            )
        else:
            dist.init_process_group("gloo", init_method="env://", timeout=COLLECTIVE_TIMEOUT)
    return device


def teardown_process_group() -> None:
    """Leave the process group (a no-op when not distributed)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def split_batch_order(order: Tensor, batch_size: int, num_processes: int) -> Tensor:
    """Cut one epoch's shuffled order (N,) into global batches (steps, num_processes, batch_size).

    Slot [s, r] is what process r trains on at step s; the tail that does not fill a whole global
    batch is dropped, so every process takes the same number of steps (as drop_last does on one).
    """
    if batch_size < 1 or num_processes < 1:
        raise ValueError(
            f"batch_size and num_processes must be positive; got {batch_size} and {num_processes}"
        )
    global_batch = batch_size * num_processes
    num_steps = len(order) // global_batch
    return order[: num_steps * global_batch].reshape(num_steps, num_processes, batch_size)


def shard_batch_order(order: Tensor, batch_size: int, process_rank: int, num_processes: int) -> Tensor:
    """Process ``process_rank``'s share of an epoch's order: its batch indices (steps, batch_size).

    All processes shuffle with the same seed, so the shards are disjoint and together cover the order
    (less a tail shorter than one global batch).
    """
    if not 0 <= process_rank < num_processes:
        raise ValueError(f"rank {process_rank} is outside 0..{num_processes - 1}")
    return split_batch_order(order, batch_size, num_processes)[:, process_rank]


class SyncBatchNormSwish(nn.SyncBatchNorm):
    """Cross-process BatchNorm followed by Swish: the synchronised twin of nvae's BatchNormSwish."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise with statistics over all processes, then x * sigmoid(x)."""
        return F.silu(super().forward(x))


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by a SyncBatchNorm with the same weights and statistics.

    torch's own converter would turn nvae's BatchNormSwish into a plain SyncBatchNorm and lose the
    Swish, so this keeps it. Parameter names are unchanged, so checkpoints load into the plain model.
    """
    from ncp.models.nvae.layers import BatchNormSwish

    plain_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm) or not isinstance(child, nn.modules.batchnorm._BatchNorm):
            convert_sync_batchnorm(child)
            continue
        if isinstance(child, BatchNormSwish):
            sync_type = SyncBatchNormSwish
        elif type(child) in plain_types:
            sync_type = nn.SyncBatchNorm
        else:
            raise ValueError(f"cannot synchronise BatchNorm subclass {type(child).__name__} (at {name!r})")
        replacement = sync_type(
            child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
        )
        replacement.load_state_dict(child.state_dict())
        replacement.train(child.training)
        setattr(module, name, replacement)
    return module


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (already on ``device``), or ``model`` itself when not distributed."""
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars over all processes (every process must call this at the same step)."""
    if not is_distributed() or not values:
        return values
    names = sorted(values)
    stacked = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)  # (V,)
    dist.all_reduce(stacked)
    return {name: value / world_size() for name, value in zip(names, stacked.tolist())}


def relaunch_under_torchrun(num_processes: int, cli_args: list[str]) -> None:
    """Run ``python -m ncp.cli <cli_args>`` as ``num_processes`` torchrun processes on this machine and wait.

    Raises RuntimeError with one line if any process fails (torchrun prints the failing process's error).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be positive; got {num_processes}")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(num_processes),
        "-m",
        "ncp.cli",
        *cli_args,
    ]
    # The processes must import this same ncp package, whatever their working directory.
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"ncp {cli_args[0] if cli_args else ''} under torchrun with {num_processes} processes failed "
            f"(exit code {completed.returncode}); the failing process's error is printed above"
        )
