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
    return torch.load(path, map_location="cpu", weights_only=True)


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
