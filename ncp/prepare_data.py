"""Stage 0 (`ncp prepare-data`): load a dataset by name and write its train and test splits.

The splits are stored as uint8 tensors (N, C, H, W), padded as NVAE pads (MNIST to 32x32); binary
datasets are binarised afresh each time a batch is drawn (dynamic binarisation), never here.
"""

from __future__ import annotations

from pathlib import Path

from ncp.config import DataConfig
from ncp.data import evaluation_split, load_dataset, save_image_set


def run(data: DataConfig, seed: int, train_out: Path, test_out: Path) -> None:
    """Write ``train_out`` and ``test_out`` for the configured dataset."""
    # The "test" output is the split the paper evaluates on (CelebA-64: NVAE's validation split).
    test_split = evaluation_split(data.name)
    # Both splits are read before either is written: a bad test file leaves no train file behind.
    image_sets = [
        (
            load_dataset(
                data.name,
                root=data.root,
                split=split,
                limit=limit,
                seed=seed,
                download=data.download,
                folder_options=data.folder_options(),
                synthetic_if_missing=data.synthetic_if_missing,
            ),
            out,
        )
        for split, limit, out in (
            ("train", data.train_limit, train_out),
            (test_split, data.test_limit, test_out),
        )
    ]
    for image_set, out in image_sets:
        save_image_set(image_set, out)
        print(
            f"{data.name}/{image_set.split}: {len(image_set.images)} images of shape "
            f"{tuple(image_set.images.shape[1:])} -> {out}"
        )
