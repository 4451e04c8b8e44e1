"""Readers for the raw image files behind each dataset (MNIST idx, CIFAR-10 pickles, CelebA JPEGs).

Every reader returns ``uint8`` numpy images ``(N, C, H, W)`` and integer labels (or ``None``); the
dataset registry in :mod:`ncp.data.datasets` turns them into an :class:`~ncp.data.datasets.ImageSet`.
The files are parsed here rather than through torchvision's dataset classes because those verify
md5 sums of whole archives and need every side file, while a reproduction often has only a folder
of images; torchvision is still used to *download* when that is allowed.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np

IDX_IMAGES_MAGIC = 2051  # the idx3-ubyte header of an image file: 0x00000803
IDX_LABELS_MAGIC = 2049  # the idx1-ubyte header of a label file: 0x00000801
IDX_PREFIX = {"train": "train", "test": "t10k"}

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

CELEBA_FOLDER = "celeba"
CELEBA_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}  # column 2 of list_eval_partition.txt
CELEBA64_CROP_BOX = (15, 40, 178 - 15, 218 - 30)  # NVAE's CropCelebA64: (left, top, right, bottom)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one MNIST idx file (``.gz`` or raw): images -> uint8 (N, H, W), labels -> int64 (N,)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 8:
        raise ValueError(f"{path} is too short to be an idx file")
    magic, count = np.frombuffer(data[:8], dtype=">i4")
    if magic == IDX_IMAGES_MAGIC:
        rows, cols = np.frombuffer(data[8:16], dtype=">i4")
        shape, offset = (int(count), int(rows), int(cols)), 16
    elif magic == IDX_LABELS_MAGIC:
        shape, offset = (int(count),), 8
    else:
        raise ValueError(
            f"{path}: magic number {magic} is neither {IDX_IMAGES_MAGIC} (images) "
            f"nor {IDX_LABELS_MAGIC} (labels): not an MNIST-format idx file; replace it with one"
        )
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(
            f"{path}: header says {expected} bytes of data, file holds {len(data) - offset}: the file is "
            "truncated or damaged; copy or download it again"
        )
    values = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)
    return values.copy() if magic == IDX_IMAGES_MAGIC else values.astype(np.int64)


def find_file_or_gz(root: Path, stem: str) -> Path | None:
    """``root/stem`` or ``root/stem.gz``, whichever exists (raw first)."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (N, 1, H, W) and labels (or None) of an MNIST-format split found in folder ``root``."""
    if split not in IDX_PREFIX:
        raise ValueError(f"idx split must be one of {sorted(IDX_PREFIX)}, got {split!r}")
    root = Path(root)
    prefix = IDX_PREFIX[split]
    if not root.is_dir():
        raise FileNotFoundError(
            f"data folder {root} does not exist: set data.root to the folder of the idx files "
            f"({prefix}-images-idx3-ubyte[.gz], ...)"
        )
    images_path = find_file_or_gz(root, f"{prefix}-images-idx3-ubyte")
    if images_path is None:
        raise FileNotFoundError(
            f"no {prefix}-images-idx3-ubyte[.gz] in {root}: put the MNIST-format idx files "
            f"({prefix}-images-idx3-ubyte[.gz], optionally {prefix}-labels-idx1-ubyte[.gz]) there"
        )
    images = read_idx(images_path)[:, None]  # (N, 1, H, W)
    labels_path = find_file_or_gz(root, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path) if labels_path is not None else None
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{labels_path} has {len(labels)} labels for {len(images)} images")
    return images, labels


def _md5(path: Path) -> str:
    """Hex md5 of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds only NumPy arrays and plain containers: the official CIFAR-10 batches
    need no more, and a planted file cannot call anything (pickle.load would run any callable)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to unpickle {module}.{name}: a CIFAR-10 batch holds only arrays"
            )
        return super().find_class(module, name)


def read_cifar10(root: str | Path, split: str, verify_md5: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images (N, 3, 32, 32) and labels from ``root/cifar-10-batches-py`` (python pickles)."""
    if split not in CIFAR10_FILES:
        raise ValueError(f"cifar10 split must be one of {sorted(CIFAR10_FILES)}, got {split!r}")
    folder = Path(root) / CIFAR10_FOLDER
    names = CIFAR10_FILES[split]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: put {', '.join(names)} (from cifar-10-python.tar.gz) in {folder}"
        )
    from torchvision.datasets import CIFAR10

    official_md5 = dict(CIFAR10.train_list + CIFAR10.test_list)  # torchvision's record of the files
    images, labels = [], []
    for name in names:
        if verify_md5 and _md5(folder / name) != official_md5[name]:
            raise ValueError(
                f"{folder / name} does not match the official CIFAR-10 md5 (pass verify_md5=False "
                "to read it anyway)"
            )
        with open(folder / name, "rb") as handle:
            try:
                batch = _ArraysOnlyUnpickler(handle, encoding="latin1").load()  # python-2 pickles
            except (pickle.UnpicklingError, EOFError, ValueError) as error:
                raise ValueError(
                    f"{folder / name} is not a CIFAR-10 batch ({error}); download it again"
                ) from None
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # (n, 3, 32, 32)
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def read_celeba64(root: str | Path, split: str) -> np.ndarray:
    """CelebA aligned images of one split, cropped and resized to 64x64 as NVAE does: (N, 3, 64, 64)."""
    from PIL import Image

    if split not in CELEBA_SPLIT_CODES:
        raise ValueError(f"celeba64 split must be one of {sorted(CELEBA_SPLIT_CODES)}, got {split!r}")
    folder = Path(root) / CELEBA_FOLDER
    partition_file, image_folder = folder / "list_eval_partition.txt", folder / "img_align_celeba"
    if not partition_file.is_file() or not image_folder.is_dir():
        raise FileNotFoundError(
            f"CelebA not found: put list_eval_partition.txt and the img_align_celeba/ folder "
            f"(178x218 aligned JPEGs) in {folder}"
        )
    code = CELEBA_SPLIT_CODES[split]
    names = []
    for line in partition_file.read_text().split("\n"):
        fields = line.split()
        if len(fields) == 2 and int(fields[1]) == code:
            names.append(fields[0])
    images = np.empty((len(names), 3, 64, 64), dtype=np.uint8)
    for i, name in enumerate(names):
        with Image.open(image_folder / name) as picture:
            picture = picture.convert("RGB").crop(CELEBA64_CROP_BOX)
            # NVAE uses torchvision Resize(64), i.e. PIL bilinear with antialiasing.
            picture = picture.resize((64, 64), resample=Image.BILINEAR)
            images[i] = np.asarray(picture).transpose(2, 0, 1)  # (3, 64, 64)
    return images
