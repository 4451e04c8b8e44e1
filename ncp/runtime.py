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
from collections.abc import Iterator
from contextlib import contextmanager
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


# glibc's mallopt parameters (malloc.h): why ``keep_freed_memory`` exists is in its docstring.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed on 64-bit systems
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MiB for reuse instead of handing them back to the kernel.

    Why: a stage frees and allocates the same large tensors thousands of times (SIR's proposal chunks,
    NCE batches). By default glibc maps each block over its dynamic threshold fresh from the kernel and
    unmaps it when freed, so every reuse faults in new zeroed pages: measured on the default run's SIR
    job (300 images, 2 threads), 12.3 s of system time beside 17.8 s of user time. With this call the
    same job took 9.0 s system and 13% less wall time, one NCE epoch 3.2 s system instead of 8 s; peak
    resident memory rose by up to 10% (freed blocks stay mapped). No torch or environment setting does
    this for a process already started. Returns whether it applied (False off glibc, e.g. macOS).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: other C libraries have other knobs
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


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
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write text through a temporary file and a rename."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        raise ValueError(f"{path} {unreadable_torch_file_reason(error)}") from None


# ----------------------------------------------------------------------------------------------
# Atomic outputs. Every file a stage writes goes through atomic_output: it is written under a hidden
# temporary name in the same folder and renamed into place only once complete, so a job killed at any
# moment (kill -9, walltime, a full disk) leaves either the old file or none, never a truncated one
# that looks finished. os.replace is atomic on one file system, hence the same folder.


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that infer the format from it
    work); it becomes ``path`` when the block ends normally and is removed if the block fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        publish_file(tmp, path)  # mkstemp's 0600 becomes the umask's mode; refused if the job was abandoned
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_savefig(figure, path: str | Path, **savefig_kwargs: Any) -> None:
    """matplotlib ``figure.savefig`` through atomic_output (the format comes from ``path``'s suffix)."""
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip(".") or None, **savefig_kwargs)


def atomic_save_image(images: torch.Tensor, path: str | Path, **save_image_kwargs: Any) -> None:
    """torchvision ``save_image`` (a grid of float images in [0, 1]) through atomic_output."""
    from torchvision.utils import save_image

    with atomic_output(path) as tmp:
        save_image(images, tmp, format=Path(path).suffix.lstrip(".") or None, **save_image_kwargs)


def atomic_savez(path: str | Path, **arrays: Any) -> None:
    """``numpy.savez`` through atomic_output (``path`` should end in .npz, or numpy appends it)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object: numpy appends no suffix
            np.savez(handle, **arrays)


def unreadable_torch_file_reason(error: Exception) -> str:
    """One line for a failed ``torch.load(..., weights_only=True)``: torch's own message runs to several
    paragraphs. A refused global means the file asks to run code: it is never unpickled."""
    text = str(error)
    for line in text.splitlines():
        if "GLOBAL" in line or "Unsupported global" in line:
            return f"asks to run code when loaded and was refused ({line.strip()[:160]}); use only files this project wrote"
    if (
        isinstance(error, (EOFError, RuntimeError))
        or "zip" in text
        or "truncat" in text
        or "central directory" in text
    ):
        return (
            f"is truncated or damaged ({type(error).__name__}: {text.splitlines()[0].split('. ')[0][:100] if text else ''}); "
            "delete it and rerun the stage that writes it"
        )
    return f"is not a file this project wrote ({type(error).__name__}); delete it and rerun the stage that writes it"


def load_state_dict_strictly(module: torch.nn.Module, state_dict: Any, source: str | Path) -> None:
    """``module.load_state_dict(state_dict)`` with every key and shape checked first; ValueError with one
    line naming the first differences (torch's own message lists every key, one per line)."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{source}: its weights are not a mapping of names to tensors; the file is damaged")
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    extra = [key for key in state_dict if key not in expected]
    resized = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    problems = [
        f"{label} {len(keys)} ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})"
        for label, keys in (("missing", missing), ("unexpected", extra), ("shape differs for", resized))
        if keys
    ]
    if problems:
        raise ValueError(
            f"{source}: weights do not fit the model it describes: {'; '.join(problems)}; it was written for "
            "another architecture or version, or is damaged: rerun the stage that writes it"
        )
    module.load_state_dict(state_dict, strict=True)


def rng_states() -> dict:
    """Every global random state a training step draws from (Python, NumPy, torch CPU and CUDA), as
    plain values and tensors, so a resume file with them loads with ``weights_only=True``."""
    algorithm, keys, position, has_gauss, cached_gauss = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": [algorithm, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    """Put back the random states :func:`rng_states` recorded."""
    *python_internal, version, gauss_next = states["python"]
    random.setstate((version, tuple(python_internal), gauss_next))
    algorithm, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((algorithm, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
