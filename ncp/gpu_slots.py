"""One GPU per job on a shared machine: each GPU job claims free GPUs with OS file locks.

Snakemake's `gpu` resource caps how many GPU jobs run at once (`--resources gpu=N`) but gives a job no
GPU index, and nothing else in the stack does either, so without this every job would land on cuda:0.
At start a job takes an exclusive, non-blocking ``fcntl.flock`` on ``<slot dir>/<gpu>.lock`` for the
first free visible GPU(s), sets ``CUDA_VISIBLE_DEVICES`` to them before CUDA starts, and holds the lock
for its lifetime. The kernel drops the lock when the process ends, however it ends (even ``kill -9``),
so a crashed job never leaves a slot taken. Because the `gpu` resource never lets more jobs run than
there are GPUs, a free slot exists whenever a job starts; a job only waits (polling) when something
outside this workflow holds the slots, e.g. a second Snakemake run on the same machine.

The slot folder is node-local (under the temporary directory, per user) so that jobs of two runs on one
workstation see each other's claims. Under SLURM the scheduler already gives each job its own GPUs in
``CUDA_VISIBLE_DEVICES``; the folder is then per SLURM job, so claims only divide that job's allocation
(one GPU job per allocation claims all of it; an `salloc` shell running Snakemake locally divides it).

Hand-written because no library does this: `gpustat`/`nvidia-ml-py` report use, they do not reserve.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

# Test hook: the number of GPUs the allocator believes it sees (no GPU needed to test the allocation).
FAKE_GPU_COUNT_ENV = "NCP_FAKE_GPU_COUNT"
SLOT_DIR_ENV = "NCP_GPU_SLOT_DIR"  # where the lock files live (default: node-local, see slot_dir)

_held: list[int] = []  # lock file descriptors this process holds; closed only when the process ends
_claimed: list[str] = []  # the GPU ids they lock


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as ``CUDA_VISIBLE_DEVICES`` would name them."""
    fake = os.environ.get(FAKE_GPU_COUNT_ENV)
    if fake is not None:
        count = int(fake)
    else:
        import torch

        count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip():
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()][:count]
    return [str(index) for index in range(count)]


def slot_dir() -> Path:
    """The folder of lock files: per user and node, and per SLURM job inside an allocation."""
    if os.environ.get(SLOT_DIR_ENV):
        return Path(os.environ[SLOT_DIR_ENV])
    scope = f"slurm-{os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else "local"
    return Path(tempfile.gettempdir()) / f"ncp-gpu-slots-{os.getuid()}" / scope


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # non-inheritable: torchrun children do not hold it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
    return fd


def claim_gpus(count: int, poll_seconds: float = 0.5, log=print) -> list[str]:
    """Claim ``count`` GPUs no other job holds, point ``CUDA_VISIBLE_DEVICES`` at them and return their
    ids. Waits while fewer than ``count`` are free; raises if the machine has fewer than ``count``."""
    if _claimed:  # this process already holds its GPUs (a stage asking for its device a second time)
        return list(_claimed)
    gpus = visible_gpus()
    if count > len(gpus):
        raise RuntimeError(
            f"this job needs {count} GPU(s) but {len(gpus)} are visible; lower vae.train.num_processes "
            "or run on a machine with more GPUs"
        )
    folder = slot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        claimed: list[tuple[str, int]] = []
        for gpu in gpus:
            fd = _try_lock(folder / f"{gpu}.lock")
            if fd is not None:
                claimed.append((gpu, fd))
                if len(claimed) == count:
                    break
        if len(claimed) == count:
            _held.extend(fd for _, fd in claimed)
            ids = [gpu for gpu, _ in claimed]
            _claimed.extend(ids)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            log(f"GPU slot: claimed GPU {','.join(ids)} (locks in {folder})")
            return ids
        for _, fd in claimed:  # all or nothing: two multi-GPU jobs never deadlock on half a claim each
            os.close(fd)
        if not waited:
            log(f"GPU slot: waiting for {count} free GPU(s) of {len(gpus)} (locks in {folder})")
            waited = True
        time.sleep(poll_seconds)


def release_all() -> None:
    """Drop every slot this process holds (the process ending does the same)."""
    while _held:
        os.close(_held.pop())
    _claimed.clear()
