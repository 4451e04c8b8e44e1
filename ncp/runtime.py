"""Small run-time helpers every stage uses: device choice, seeding, atomic writes, result paths."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def pick_device(requested: str = "auto") -> torch.device:
    """The torch device for this job: 'auto' takes the first visible GPU, else the CPU.

    Snakemake does not set CUDA_VISIBLE_DEVICES per job; the workstation profile limits concurrent GPU
    jobs with a `gpu` resource and `NCP_GPU_SLOT` (set by the profile's wrapper) can pin one.
    """
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available")
        return device
    if torch.cuda.is_available():
        slot = int(os.environ.get("NCP_GPU_SLOT", "0")) % torch.cuda.device_count()
        return torch.device(f"cuda:{slot}")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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
    umask = os.umask(0)  # mkstemp makes the file private (0600); outputs get the usual permissions
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
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
