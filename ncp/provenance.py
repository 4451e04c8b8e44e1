"""Provenance of a metrics file or table: which code, params, seed, software and machine made it.

Every writer of a number (`ncp evaluate ...`, `ncp tables`, `ncp paper-table`) puts one
``provenance`` block beside its results, built by :func:`provenance`:

- ``git_commit`` / ``git_dirty``: the commit of the checkout the ``ncp`` package was imported from, and
  whether tracked files differ from it (None for both where the code is not a git checkout or git is
  missing: an installed wheel, a copied tree);
- ``params_sha256``: a hash of the typed params the job ran with (the slice of the params that the
  stage reads, so two jobs agree on it exactly when they were given the same settings);
- ``seed``, ``job`` (e.g. ``evaluate nll``), the versions of torch, torchvision, snakemake, dvc and
  ncp-vae, the device's name, and the job's wall time and peak memory so far.

All of it sits under one key, so a comparison of two runs can drop it (``strip_provenance``). It is
cheap: git runs once per process (two short commands, cached), the rest reads metadata in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import resource
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PROVENANCE_KEY = "provenance"
PACKAGES = ("torch", "torchvision", "snakemake", "dvc", "ncp-vae")
_IMPORTED_AT = time.time()  # fallback start of the job where the process start time is unknown


def _process_start_time() -> float:
    """When this process started (psutil where installed; else when this module was imported)."""
    try:
        import psutil  # optional: not a dependency of ncp-vae

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - any failure falls back to the import time
        return _IMPORTED_AT


@functools.lru_cache(maxsize=1)
def git_state(source_dir: str | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding ``source_dir`` (default: the ncp package); (None, None)
    where it is not a checkout or git is not installed. Untracked files do not make a tree dirty."""
    directory = source_dir or str(Path(__file__).resolve().parent)
    git = shutil.which("git")
    if git is None:
        return None, None
    try:
        commit = subprocess.run(
            [git, "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            [git, "-C", directory, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return commit.stdout.strip(), dirty


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a number depends on (None where one is not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def params_hash(params: Any) -> str:
    """sha256 (first 16 hex digits) of params: a dataclass (e.g. ExperimentConfig) or a JSON-able dict."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    text = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def device_name(device: torch.device | str | None = None) -> str:
    """The GPU's name for a CUDA device, else the CPU's (``platform.processor()`` or the machine type)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def peak_memory(device: torch.device | str | None = None) -> dict[str, int]:
    """Peak resident memory of this process in bytes, and CUDA's allocator peak on a GPU."""
    memory = {
        "peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    }  # KiB on Linux
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        memory["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return memory


def provenance(job: str, params: Any, seed: int, device: torch.device | str | None = None) -> dict:
    """The provenance block of one job's output (see the module docstring)."""
    commit, dirty = git_state()
    return {
        "job": job,
        "git_commit": commit,
        "git_dirty": dirty,
        "params_sha256": params_hash(params),
        "seed": int(seed),
        "versions": dict(package_versions()),
        "device": device_name(device),
        "wall_time_s": round(time.time() - _process_start_time(), 3),
        **peak_memory(device),
    }


def with_provenance(record: dict, job: str, params: Any, seed: int, device=None) -> dict:
    """``record`` with its provenance under the one ``provenance`` key."""
    return {**record, PROVENANCE_KEY: provenance(job, params, seed, device)}


def strip_provenance(record: Any) -> Any:
    """A copy of a JSON-like record without any ``provenance`` key, at any depth (to compare runs)."""
    if isinstance(record, dict):
        return {k: strip_provenance(v) for k, v in record.items() if k != PROVENANCE_KEY}
    if isinstance(record, list):
        return [strip_provenance(v) for v in record]
    return record


def describe(block: dict | None) -> str:
    """One line naming a provenance block's job, commit, params hash and seed (for table protocols)."""
    if not block:
        return "no provenance recorded"
    commit = block.get("git_commit")
    commit_text = (
        "not a git checkout"
        if commit is None
        else commit[:12] + (" (dirty)" if block.get("git_dirty") else "")
    )
    return (
        f"`{block.get('job')}`: commit {commit_text}, params {block.get('params_sha256')}, "
        f"seed {block.get('seed')}, {block.get('device')}, {block.get('wall_time_s', float('nan')):.0f} s"
    )
