"""The stage-2 data path: one group's (z_q, z_p, context) pairs, written and read in bounded memory.

On disk a group is a folder ``group_<k>/`` of fixed-size shards (``shard_<i>.pt``: ``z_q``, ``z_p``,
``context`` if the group has one, and ``image``, the training-image index each row came from) and an
``index.json`` that lists them, written last, so a folder with an index is complete. The writer holds
one shard per group; the reader holds a window of ``buffer_shards`` shards, shuffles rows inside it and
visits windows in a seeded random order, so memory is fixed by the shard and buffer sizes, never by the
number of pairs (the same idea as WebDataset's shard shuffling; written here because the reader must
also resume at a saved position and select rows by image, which a generic loader does not do).

Both sources below (``ShardedPairs`` on disk, ``TensorPairs`` in memory) yield the same batches for the
same seed, epoch and rows: ``batches`` is a pure function of them, which is what resuming relies on.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from ncp.runtime import atomic_save, atomic_write_text, load_torch

CACHE_FORMAT = "ncp-latent-cache"
CACHE_FORMAT_VERSION = 1
INDEX_FILE = "index.json"

Batch = tuple[Tensor, Tensor, Tensor | None]  # z_q, z_p, context (stored dtype, CPU)


class PairSource(Protocol):
    """What NCE training reads: pair batches by image, in an order fixed by (seed, epoch)."""

    num_images: int
    num_pairs: int
    group_shape: tuple[int, ...]
    context_shape: tuple[int, ...] | None
    fingerprint: str | None

    def batches(
        self, wanted: Tensor, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, start=(0, 0)
    ) -> Iterator[tuple[int, int, Batch]]: ...


def _epoch_generator(seed: int, epoch: int, window: int = -1) -> torch.Generator:
    """A generator that depends only on (seed, epoch, window): the data order needs no saved RNG."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + window + 1) % 2**63)


def split_images(
    num_images: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(train, val, test) image indices: a seeded split of the images, not of the pairs.

    Every pair of an image (one per cache pass) falls in the image's split, so the held-out losses
    measure generalisation to unseen images. ``val`` picks the kept epoch; ``test`` reports its loss.
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0):
        raise ValueError(
            f"val_fraction and test_fraction must be in [0, 1), got {val_fraction}, {test_fraction}"
        )
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    num_val, num_test = round(val_fraction * num_images), round(test_fraction * num_images)
    if num_val + num_test >= num_images:
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} leave no training images "
            f"out of {num_images}"
        )
    return order[num_val + num_test :], order[:num_val], order[num_val : num_val + num_test]


def _rows_of(images: Tensor, wanted: Tensor) -> Tensor:
    """Row indices whose image is in ``wanted`` (a boolean mask over image indices)."""
    return torch.nonzero(wanted[images], as_tuple=True)[0]


class TensorPairs:
    """Pairs held in memory (tests, small experiments); ``image[i]`` is the image of row i."""

    def __init__(self, z_q: Tensor, z_p: Tensor, context: Tensor | None, image: Tensor | None = None):
        if z_q.shape != z_p.shape:
            raise ValueError(f"z_q {tuple(z_q.shape)} and z_p {tuple(z_p.shape)} must have one shape")
        if context is not None and context.shape[0] != z_q.shape[0]:
            raise ValueError(f"context has {context.shape[0]} rows but the latents have {z_q.shape[0]}")
        if z_q.shape[0] < 1:
            raise ValueError("need at least one sample pair, got none")
        self.z_q, self.z_p, self.context = z_q, z_p, context
        self.image = torch.arange(len(z_q)) if image is None else image.long()
        self.num_images = int(self.image.max()) + 1
        self.num_pairs = len(z_q)
        self.group_shape = tuple(z_q.shape[1:])
        self.context_shape = None if context is None else tuple(context.shape[1:])
        self.fingerprint: str | None = None

    def batches(
        self, wanted: Tensor, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, start=(0, 0)
    ) -> Iterator[tuple[int, int, Batch]]:
        """(window, batch, (z_q, z_p, context)) of the rows whose image ``wanted`` marks, from ``start``."""
        rows = _rows_of(self.image, wanted)
        if shuffle:
            rows = rows[torch.randperm(len(rows), generator=_epoch_generator(seed, epoch, 0))]
        for b in range(start[1] if start[0] == 0 else 0, math.ceil(len(rows) / batch_size)):
            index = rows[b * batch_size : (b + 1) * batch_size]
            yield (
                0,
                b,
                (self.z_q[index], self.z_p[index], None if self.context is None else self.context[index]),
            )


class GroupCacheWriter:
    """Appends one group's pairs and writes a float shard every ``shard_rows`` rows (bounded memory)."""

    def __init__(
        self,
        folder: Path,
        group: int,
        shard_mb: float,
        dtype: torch.dtype,
        fingerprint: str,
        mode: str = "shards",
    ):
        """``mode`` "stream" writes only the index: the NCE jobs draw their pairs from the VAE."""
        self.folder, self.group, self.dtype, self.fingerprint = Path(folder), group, dtype, fingerprint
        self.mode = mode
        self.partial = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self.shard_mb = shard_mb
        self.shard_rows: int | None = None  # fixed by the first rows' size
        self.buffer: dict[str, list[Tensor]] = {"z_q": [], "z_p": [], "context": [], "image": []}
        self.buffered = 0
        self.max_buffered = 0  # the most rows ever held at once (a test checks it stays below a shard)
        self.shards: list[dict] = []
        self.shapes: dict[str, list[int] | None] = {}

    def append(self, z_q: Tensor, z_p: Tensor, context: Tensor | None, image: Tensor) -> None:
        """Add rows (any device); full shards go to disk at once."""
        if self.shard_rows is None:
            row_bytes = (
                z_q[0].numel() * (1 if z_p is None else 2) + (0 if context is None else context[0].numel())
            ) * (torch.finfo(self.dtype).bits // 8)
            self.shard_rows = max(1, int(self.shard_mb * 2**20 // row_bytes))
            self.shapes = {
                "group_shape": list(z_q.shape[1:]),
                "context_shape": None if context is None else list(context.shape[1:]),
            }
        for name, value in (("z_q", z_q), ("z_p", z_p), ("context", context)):
            if value is not None:
                self.buffer[name].append(value.detach().to("cpu", self.dtype))
        self.buffer["image"].append(image.to("cpu", torch.int64))
        self.buffered += len(z_q)
        self.max_buffered = max(self.max_buffered, self.buffered)
        while self.buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, rows: int) -> None:
        joined = {name: torch.cat(parts) for name, parts in self.buffer.items() if parts}
        shard = {name: value[:rows].clone() for name, value in joined.items()}
        self.buffer = {name: ([value[rows:]] if name in joined else []) for name, value in joined.items()}
        self.buffer.setdefault("context", [])
        self.buffered -= rows
        name = f"shard_{len(self.shards):05d}.pt"
        atomic_save(shard, self.partial / name)  # and the folder is renamed into place only when complete
        self.shards.append({"file": name, "rows": rows})

    def close(self, num_images: int) -> None:
        """Write the last shard and the index, then move the folder into place."""
        if self.buffered:
            self._flush(self.buffered)
        index = {
            "format": CACHE_FORMAT,
            "version": CACHE_FORMAT_VERSION,
            "mode": self.mode,
            "group": self.group,
            "num_images": num_images,
            "num_pairs": sum(s["rows"] for s in self.shards),
            "dtype": str(self.dtype).removeprefix("torch."),
            "shard_rows": self.shard_rows,
            "vae_fingerprint": self.fingerprint,
            **self.shapes,
            "shards": self.shards,
        }
        atomic_write_text(json.dumps(index, indent=1) + "\n", self.partial / INDEX_FILE)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.partial.rename(self.folder)


def read_index(folder: str | Path) -> dict:
    """A group folder's index, with a one-line error for a missing, partial or foreign folder."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a finished latent cache (no {INDEX_FILE}): rerun `ncp cache-latents`"
        )
    index = json.loads(path.read_text())
    if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_FORMAT_VERSION:
        raise ValueError(
            f"{path} is format {index.get('format')!r} v{index.get('version')}, not {CACHE_FORMAT!r} "
            f"v{CACHE_FORMAT_VERSION}: rerun `ncp cache-latents`"
        )
    return index


class ShardedPairs:
    """A group's cached pairs read a window of ``buffer_shards`` shards at a time.

    ``max_rows_held`` records the most rows this reader ever held at once, so a test can check that the
    buffer, not the cache, bounds its memory.
    """

    def __init__(self, folder: str | Path, buffer_shards: int = 4):
        if buffer_shards < 1:
            raise ValueError(f"buffer_shards must be at least 1, got {buffer_shards}")
        self.folder = Path(folder)
        self.index = read_index(folder)
        if self.index["mode"] != "shards":
            raise ValueError(
                f"{folder} is a cache.mode {self.index['mode']!r} index without pairs; its pairs are drawn "
                "by the VAE (`ncp train-nce --checkpoint ... --train-data ...`)"
            )
        self.group = int(self.index["group"])
        self.num_images = int(self.index["num_images"])
        self.num_pairs = int(self.index["num_pairs"])
        self.group_shape = tuple(self.index["group_shape"])
        ctx = self.index["context_shape"]
        self.context_shape = None if ctx is None else tuple(ctx)
        self.fingerprint = self.index["vae_fingerprint"]
        self.buffer_shards = buffer_shards
        self.max_rows_held = 0

    def windows(self) -> int:
        return math.ceil(len(self.index["shards"]) / self.buffer_shards)

    def _load_window(self, shard_ids: list[int], wanted: Tensor) -> dict[str, Tensor]:
        parts: dict[str, list[Tensor]] = {}
        held = 0
        for i in shard_ids:
            # mmap: only the pages of the rows kept below are read into memory
            shard = load_torch_mmap(self.folder / self.index["shards"][i]["file"])
            rows = _rows_of(shard["image"], wanted)
            for name, value in shard.items():
                parts.setdefault(name, []).append(value[rows])
            held += len(rows)
            self.max_rows_held = max(self.max_rows_held, held)
        return {name: torch.cat(values) for name, values in parts.items()}

    def batches(
        self, wanted: Tensor, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, start=(0, 0)
    ) -> Iterator[tuple[int, int, Batch]]:
        """(window, batch, (z_q, z_p, context)) of the rows whose image ``wanted`` marks, from ``start``.

        Shuffled: shards in a seeded random order, rows shuffled within each window; batches do not
        cross windows. Unshuffled: shards and rows in stored order (evaluation).
        """
        num_shards = len(self.index["shards"])
        order = torch.randperm(num_shards, generator=_epoch_generator(seed, epoch)) if shuffle else None
        shard_order = list(range(num_shards)) if order is None else order.tolist()
        for w in range(start[0], self.windows()):
            ids = shard_order[w * self.buffer_shards : (w + 1) * self.buffer_shards]
            window = self._load_window(ids, wanted)
            n = len(window["image"])
            rows = (
                torch.randperm(n, generator=_epoch_generator(seed, epoch, w)) if shuffle else torch.arange(n)
            )
            for b in range(start[1] if w == start[0] else 0, math.ceil(n / batch_size)):
                index = rows[b * batch_size : (b + 1) * batch_size]
                context = window["context"][index] if "context" in window else None
                yield w, b, (window["z_q"][index], window["z_p"][index], context)
            del window


def load_torch_mmap(path: Path) -> dict[str, Tensor]:
    """A shard memory-mapped (weights only): reading a few rows does not read the whole file."""
    if not path.is_file():
        return load_torch(path)  # its one-line missing-input error
    return torch.load(path, mmap=True, weights_only=True)
