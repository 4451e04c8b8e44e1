"""Synthetic stand-ins: images of a dataset's exact shape and pixel type, for smoke runs without its files.

A stand-in is never data: it only lets every stage run at the real sizes (``data.synthetic_if_missing``,
which ``params/smoke.yaml`` turns on). Its ImageSet is flagged ``synthetic``; the flag travels through the
VAE checkpoint into every metric file, and every table and ``summary.json`` then says
"synthetic stand-in data" (see ncp/model_origin.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

STAND_IN_WARNING = "SYNTHETIC STAND-IN DATA"
DEFAULT_STAND_IN_IMAGES = {"train": 256, "test": 64}  # when no data.train_limit / test_limit is set

# (channels, height, width, number of label classes or 0) of each dataset's files
STAND_IN_SHAPES = {
    "mnist": (1, 28, 28, 10),
    "idx": (1, 28, 28, 0),
    "cifar10": (3, 32, 32, 10),
    "celeba64": (3, 64, 64, 0),
    "celebahq256": (3, 256, 256, 0),
}


def stand_in_images(
    shape: tuple[int, int, int], num_images: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Smooth random uint8 images (N, C, H, W) (noise at 1/8 resolution, upsampled) and random labels."""
    channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_images, channels, max(1, height // 8), max(1, width // 8), generator=generator)
    images = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    pixels = (images * 255).round().to(torch.uint8).numpy()
    labels = torch.randint(num_classes, (num_images,), generator=generator).numpy() if num_classes else None
    return pixels, labels
