"""Small run-time helpers every stage uses: device choice, seeding, atomic writes, result paths."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncp import gpu_slots


def pick_device(requested: str = "auto", num_gpus: int = 1) -> torch.device:
    """The torch device for this job: 'auto' takes a GPU if one is visible, else the CPU.

    'auto' and 'cuda' claim ``num_gpus`` GPUs no other job of this machine holds (`ncp.gpu_slots`) and
    return the first; 'cuda:K' is taken as given. Processes started by torchrun (LOCAL_RANK set) claim
    nothing: their launcher claimed the GPUs and set CUDA_VISIBLE_DEVICES for them.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested not in ("auto", "cuda"):
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available")
        return device
    if os.environ.get("LOCAL_RANK") is None and gpu_slots.visible_gpus():
        gpu_slots.claim_gpus(num_gpus)
    if torch.cuda.is_available():
        return torch.device("cuda:0")  # the first claimed GPU: CUDA_VISIBLE_DEVICES lists only ours
    if requested == "cuda":
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    return torch.device("cpu")


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (intra- and inter-op) and in libraries started later.

    Snakemake runs jobs side by side and counts each as its rule's `threads:`; a torch left at its
    default takes every core of the machine, so two jobs would each run as many threads as there are
    cores (measured on 2 cores: two NVAE trainings side by side ran 2.6x slower than with 1 thread each).
    """
    threads = max(1, int(threads))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)  # processes this job starts (torchrun workers) inherit it
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or inter-op work already started (only once per process)
        pass


WORKFLOW_PID_ENV = "NCP_WORKFLOW_PID"  # the Snakemake process that started this job (set by the Snakefile)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_workflow: tuple[int, str | None] | None = None


def workflow_alive() -> bool:
    """False once the Snakemake process that started this job has ended (its job is abandoned)."""
    if _workflow is None:
        return True
    pid, started = _workflow
    return started is None or _start_time(pid) == started  # a reused pid has another start time


def exit_with_workflow(poll_seconds: float = 1.0) -> None:
    """End this process soon after the Snakemake process that started it ends.

    Snakemake starts jobs with `Popen(shell=True)` in its own process group and does not stop them when
    it is killed, so an orphaned `ncp train-vae` would go on and write checkpoints into a results folder a
    new run already owns. A daemon thread checks the Snakemake process every ``poll_seconds`` and kills
    this process when it is gone; ``atomic_save`` checks once more before each rename.
    """
    global _workflow
    value = os.environ.get(WORKFLOW_PID_ENV)
    if not value or _workflow is not None:
        return
    pid = int(value)
    _workflow = (pid, _start_time(pid))
    if _workflow[1] is None:  # no such process (it already ended), or no /proc to watch it by
        if Path("/proc/self").exists():
            print(
                f"ncp: the Snakemake process {pid} has ended; not starting an abandoned job", file=sys.stderr
            )
            os._exit(3)
        _workflow = None
        return

    def watch() -> None:
        while workflow_alive():
            time.sleep(poll_seconds)
        print(f"ncp: the Snakemake process {pid} ended; stopping this abandoned job", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-workflow", daemon=True).start()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_file(tmp: str, path: Path) -> None:
    """Give the temporary file the mode a plain ``open`` would (0666 less the umask; mkstemp makes it
    0600, unreadable to a group sharing a cluster folder), then rename it into place, unless the job
    was abandoned meanwhile (see ``exit_with_workflow``)."""
    if not workflow_alive():
        raise RuntimeError(f"the Snakemake process that started this job has ended; not writing {path}")
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a killed job leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        publish_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write text through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        publish_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(obj: Any, path: str | Path) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    with open(path) as handle:
        return json.load(handle)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (Path,)):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def load_torch(path: str | Path) -> Any:
    """Load a file this project wrote (plain tensors, dicts, numbers, strings only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing input: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
