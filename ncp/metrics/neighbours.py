"""Nearest training images of generated samples (paper Sec. 5.3, Figs. 4-7).

As in the paper, a pair of images is compared by the Euclidean distance of their pixels after
downsampling to 64x64 and centre-cropping to 40x40; a KD-tree over the training set finds the nearest.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import KDTree
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

from ncp.data import load_image_set
from ncp.runtime import load_torch, publish_file


def _check_images(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        dtype = getattr(images, "dtype", None)
        raise ValueError(f"{what} must be a uint8 (N, C, H, W) tensor, got {dtype} {shape}")


def neighbour_features(images: torch.Tensor, resize: int = 64, crop: int = 40) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (N, C * crop * crop) in [0, 1]: bilinear antialiased resize to
    resize x resize (torchvision v2 ``resize``), then the centre crop x crop."""
    _check_images(images, "images")
    if not 0 < crop <= resize:
        raise ValueError(f"crop ({crop}) must be in 1..resize ({resize})")
    pixels = images.float() / 255.0  # resize in float so rounding to uint8 does not blur small distances
    pixels = TF.resize(pixels, [resize, resize], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    pixels = TF.center_crop(pixels, [crop, crop])  # (N, C, crop, crop)
    # Bilinear overshoot is tiny but possible; clamp so features stay in [0, 1].
    return pixels.clamp(0, 1).reshape(len(images), -1).numpy().astype(np.float32)  # (N, C * crop * crop)


def nearest_neighbours(
    query_features: np.ndarray, train_features: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest training rows of each query row (Euclidean, one KD-tree over all training rows):
    indices (Q, k) int64 and distances (Q, k) float64, nearest first."""
    query_features, train_features = np.asarray(query_features), np.asarray(train_features)
    if query_features.ndim != 2 or train_features.ndim != 2:
        raise ValueError(
            f"features must be 2-D (N, D), got query {query_features.shape} and train {train_features.shape}"
        )
    if query_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"query features have {query_features.shape[1]} dims but train features {train_features.shape[1]}"
        )
    if not 1 <= k <= len(train_features):
        raise ValueError(f"k={k} neighbours asked for, but there are {len(train_features)} training images")
    tree = KDTree(train_features, metric="euclidean")
    distances, indices = tree.query(query_features, k=k, return_distance=True, sort_results=True)
    return indices.astype(np.int64), distances.astype(np.float64)


def neighbour_grid(queries: torch.Tensor, train_images: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """Float images in [0, 1], (Q * (1 + k), C, H, W): per row the query, then its k neighbours,
    all at full resolution (not cropped); save with ``save_image(grid, path, nrow=1 + k)``."""
    _check_images(queries, "queries")
    _check_images(train_images, "train_images")
    if queries.shape[1:] != train_images.shape[1:]:
        raise ValueError(
            f"queries are {tuple(queries.shape[1:])} but training images {tuple(train_images.shape[1:])}"
        )
    indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    if indices.dim() != 2 or len(indices) != len(queries):
        raise ValueError(f"indices must be ({len(queries)}, k), got {tuple(indices.shape)}")
    neighbours = train_images[indices]  # (Q, k, C, H, W)
    rows = torch.cat([queries.unsqueeze(1), neighbours], dim=1)  # (Q, 1 + k, C, H, W)
    return rows.flatten(0, 1).float() / 255.0  # (Q * (1 + k), C, H, W)


def write_neighbour_figure(
    samples_path: Path,
    train_path: Path,
    out_png: Path,
    num_queries: int,
    num_neighbours: int,
    resize: int,
    crop: int,
    seed: int,
) -> dict:
    """Write the figure for the first ``num_queries`` samples of a `ncp sample` file against an ImageSet
    file, and return a summary to log. ``seed`` is recorded only: the queries are taken in order."""
    samples = load_torch(samples_path)
    if not isinstance(samples, dict) or "images" not in samples:
        raise ValueError(f"{samples_path}: expected a dict with key 'images'")
    sample_images = samples["images"]
    _check_images(sample_images, f"{samples_path} images")
    if not 1 <= num_queries <= len(sample_images):
        raise ValueError(f"num_queries={num_queries}, but {samples_path} has {len(sample_images)} images")
    train_images = load_image_set(train_path).images
    queries = sample_images[:num_queries]
    indices, distances = nearest_neighbours(
        neighbour_features(queries, resize, crop),
        neighbour_features(train_images, resize, crop),
        num_neighbours,
    )
    grid = neighbour_grid(queries, train_images, indices)

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_png.parent, prefix=f".{out_png.name}.", suffix=".png")
    os.close(fd)
    try:
        save_image(grid, tmp, nrow=1 + num_neighbours, format="png")
        publish_file(tmp, out_png)  # a killed job leaves no half-written PNG; mode follows the umask
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {
        "num_queries": num_queries,
        "num_neighbours": num_neighbours,
        "mean_nearest_distance": float(distances[:, 0].mean()),
        "resize": resize,
        "crop": crop,
        "seed": seed,
        "nearest_train_indices": indices[:, 0].tolist(),
    }
