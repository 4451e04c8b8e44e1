"""Datasets in memory (uint8 ImageSets), dynamic binarisation and batching."""

from ncp.data.datasets import (
    DATASET_NAMES,
    ImageSet,
    binarize,
    evaluation_split,
    float_to_uint8,
    iterate_batches,
    limit_image_set,
    load_dataset,
    load_image_set,
    prepare_batch,
    save_image_set,
    to_float,
)

__all__ = [
    "DATASET_NAMES",
    "ImageSet",
    "binarize",
    "evaluation_split",
    "float_to_uint8",
    "iterate_batches",
    "limit_image_set",
    "load_dataset",
    "load_image_set",
    "prepare_batch",
    "save_image_set",
    "to_float",
]
