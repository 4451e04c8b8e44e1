"""Image folders: any directory of PNG/JPEG files (``folder``) and CelebA-HQ at 256x256 (``celebahq256``).

Every image is decoded in full (so a truncated file fails here, not in training), converted to RGB or
grayscale, centre-cropped to a square and resized to ``image_size`` (bilinear, antialiased, as
torchvision's Resize); without ``image_size`` all images must already share one size. Any problem is a
one-line ValueError naming the file.

CelebA-HQ-256 follows NVAE's split: NVAE converts GLOW's ``celeba-tfr`` tfrecords, whose ``train`` and
``validation`` parts hold 27,000 and 3,000 images (NVAE's scripts/convert_tfrecord_to_lmdb.py), and
evaluates on ``validation``. Exported as images they go in ``<root>/celebahq256/train/`` and
``<root>/celebahq256/validation/``. A flat folder of the 30,000 images instead (CelebAMask-HQ's
``CelebA-HQ-img/0.jpg`` ... ``29999.jpg``) is split by file number, 0-26,999 train and 27,000-29,999
validation: the same sizes, but not GLOW's assignment of images, which is public only inside the tfrecords.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CELEBAHQ_FOLDER = "celebahq256"
CELEBAHQ_SIZE = 256
CELEBAHQ_NUM_TRAIN = 27_000  # GLOW's / NVAE's train part; the other 3,000 are "validation"
CELEBAHQ_SPLITS = ("train", "validation")
FOLDER_SPLITS = ("train", "test")


def list_images(folder: Path) -> list[Path]:
    """Every PNG/JPEG file under ``folder`` (recursively), in sorted path order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ValueError(f"image folder {folder} holds no .png/.jpg/.jpeg files")
    return found


def read_image(path: Path, image_size: int | None, grayscale: bool) -> np.ndarray:
    """One image as uint8 (C, H, W): decoded in full, centre-cropped to a square and resized if asked."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            picture.load()  # decode now: a truncated file raises here
            picture = picture.convert("L" if grayscale else "RGB")
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for unreadable / truncated files
        raise ValueError(f"{path}: unreadable or truncated image ({error})") from None
    if image_size is not None:
        width, height = picture.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
        if side != image_size:
            picture = picture.resize((image_size, image_size), resample=Image.BILINEAR, reducing_gap=None)
    pixels = np.asarray(picture, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)


def read_images(paths: list[Path], image_size: int | None, grayscale: bool) -> np.ndarray:
    """Images at ``paths`` as one uint8 array (N, C, H, W); mixed sizes without a resize name the file."""
    images = []
    for path in paths:
        pixels = read_image(path, image_size, grayscale)
        if images and pixels.shape != images[0].shape:
            raise ValueError(
                f"{path} is {pixels.shape[2]}x{pixels.shape[1]} but {paths[0]} is "
                f"{images[0].shape[2]}x{images[0].shape[1]}: set data.image_size to resize them all"
            )
        images.append(pixels)
    return np.stack(images)


def folder_split(num_images: int, split: str, test_fraction: float, split_seed: int) -> np.ndarray:
    """Indices of ``split`` in a seeded permutation: the last round(test_fraction * N) images are test."""
    if split not in FOLDER_SPLITS:
        raise ValueError(f"folder split must be one of {FOLDER_SPLITS}, got {split!r}")
    order = np.random.default_rng(split_seed).permutation(num_images)
    num_test = int(round(test_fraction * num_images))
    if num_test < 1 or num_test >= num_images:
        raise ValueError(
            f"data.test_fraction {test_fraction} of {num_images} images leaves an empty train or test split"
        )
    return np.sort(order[num_images - num_test :] if split == "test" else order[: num_images - num_test])


def read_folder(
    root: Path, split: str, image_size: int | None, grayscale: bool, test_fraction: float, split_seed: int
) -> np.ndarray:
    """The ``split`` of every image under ``root``, uint8 (N, C, H, W)."""
    paths = list_images(root)
    chosen = folder_split(len(paths), split, test_fraction, split_seed)
    return read_images([paths[i] for i in chosen], image_size, grayscale)


def _file_number(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    if not digits:
        raise ValueError(f"{path}: a flat CelebA-HQ folder needs numbered files (0.jpg ... 29999.jpg)")
    return int(digits[-1])


def read_celebahq256(root: Path, split: str) -> np.ndarray:
    """CelebA-HQ at 256x256 (3, 256, 256), NVAE's split (see the module docstring for the layouts)."""
    if split not in CELEBAHQ_SPLITS:
        raise ValueError(f"celebahq256 split must be one of {CELEBAHQ_SPLITS}, got {split!r}")
    folder = Path(root) / CELEBAHQ_FOLDER
    if (folder / split).is_dir():
        return read_images(list_images(folder / split), CELEBAHQ_SIZE, grayscale=False)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"CelebA-HQ-256 not found: put NVAE's split in {folder}/train and {folder}/validation "
            f"(27,000 / 3,000 images), or the 30,000 numbered images directly in {folder}"
        )
    paths = sorted(list_images(folder), key=_file_number)
    chosen = paths[:CELEBAHQ_NUM_TRAIN] if split == "train" else paths[CELEBAHQ_NUM_TRAIN:]
    if not chosen:
        raise ValueError(f"{folder} holds {len(paths)} images: the validation split needs more than 27,000")
    return read_images(chosen, CELEBAHQ_SIZE, grayscale=False)
