"""NVAEConfig: NVAE's architecture flags as one frozen dataclass, with the values derived from them.

NVAE (Vahdat & Kautz 2020, NVlabs/NVAE) passes its argparse Namespace into every constructor. Here the
flags are read once (``NVAEConfig.from_args``), with NVAE's own defaults for keys that are left out, and
everything the model needs (groups per scale, shapes, likelihood) is a property of the config. Unknown
keys are errors: an official checkpoint's training flags (batch size, learning rate, ...) are split off
explicitly by ``split_training_flags`` where such a checkpoint is read (``ncp import-nvae``).

This module imports no torch, so the workflow (Snakemake) can count latent groups without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

CHANNEL_MULT = 2  # NVAE doubles channels at every downsampling and halves them at every upsampling
Likelihood = Literal["bernoulli", "dmol", "normal"]
LIKELIHOODS: tuple[Likelihood, ...] = ("bernoulli", "dmol", "normal")

# NVAE's argparse defaults (train.py) for the architecture flags; evaluate.py back-fills ada_groups,
# min_groups_per_scale and num_mixture_dec the same way for checkpoints saved before they existed.
NVAE_DEFAULT_ARGS: dict[str, Any] = {
    "dataset": "mnist",
    "arch_instance": "res_mbconv",
    "num_nf": 0,
    "num_x_bits": 8,
    "num_latent_scales": 1,
    "num_groups_per_scale": 10,
    "num_latent_per_group": 20,
    "ada_groups": False,
    "min_groups_per_scale": 1,
    "num_channels_enc": 32,
    "num_preprocess_blocks": 2,
    "num_preprocess_cells": 3,
    "num_cell_per_cond_enc": 1,
    "num_channels_dec": 32,
    "num_postprocess_blocks": 2,
    "num_postprocess_cells": 3,
    "num_cell_per_cond_dec": 1,
    "num_mixture_dec": 10,
    "use_se": False,
    "res_dist": False,
}
# Our own keys beside NVAE's: NVAE derives them from the dataset name; giving them explicitly lets a
# dataset NVAE does not know be modelled (see NVAEConfig.from_args).
DERIVED_KEYS = ("input_size", "input_channels", "likelihood", "likelihood_crop")
ARCHITECTURE_KEYS = frozenset(NVAE_DEFAULT_ARGS) | frozenset(DERIVED_KEYS)

# NVAE's name for each of our datasets (params `data.name`); `idx` files are MNIST-like digits.
NVAE_DATASET_NAMES = {
    "mnist5k": "mnist",
    "mnist": "mnist",
    "idx": "mnist",
    "cifar10": "cifar10",
    "celeba64": "celeba_64",
    "celebahq256": "celeba_256",
}

# Grey-scale datasets NVAE models with a Bernoulli decoder; MNIST-like data are 28x28 padded to 32,
# and NVAE scores only the central 28x28 (utils.reconstruction_loss, crop=True).
_BINARY_DATASETS = {"mnist", "omniglot"}
_CROPPED_DATASETS = {"mnist", "omniglot", "stacked_mnist"}
_FIXED_SIZES = {"mnist": 32, "omniglot": 32, "stacked_mnist": 32, "cifar10": 32, "ffhq": 256}
_SIZE_SUFFIX = re.compile(r"^(celeba|imagenet|lsun_[a-z]+)_(\d+)$")  # e.g. celeba_64, lsun_church_128


def _arch(enc: list[str], dec: list[str], pre: list[str], post: list[str]) -> dict[str, list[str]]:
    return {
        "normal_enc": enc,
        "down_enc": enc,
        "normal_dec": dec,
        "up_dec": dec,
        "normal_pre": pre,
        "down_pre": pre,
        "normal_post": post,
        "up_post": post,
    }


_BNSWISH2, _MB6, _MB3 = ["res_bnswish", "res_bnswish"], ["mconv_e6k5g0"], ["mconv_e3k5g0"]
# The operations of each cell type, per NVAE arch_instance (utils.get_arch_cells).
ARCH_CELLS: dict[str, dict[str, list[str]]] = {
    "res_elu": _arch(["res_elu"] * 2, ["res_elu"] * 2, ["res_elu"] * 2, ["res_elu"] * 2),
    "res_bnelu": _arch(["res_bnelu"] * 2, ["res_bnelu"] * 2, ["res_bnelu"] * 2, ["res_bnelu"] * 2),
    "res_bnswish": _arch(_BNSWISH2, _BNSWISH2, _BNSWISH2, _BNSWISH2),
    "mbconv_sep": _arch(_MB6, _MB6, _MB3, _MB3),
    "mbconv_sep11": _arch(["mconv_e6k11g0"], ["mconv_e6k11g0"], _MB3, _MB3),
    "res_mbconv": _arch(_BNSWISH2, _MB6, _BNSWISH2, _MB3),
    "res53_mbconv": _arch(["res_bnswish5", "res_bnswish"], _MB6, ["res_bnswish5", "res_bnswish"], _MB3),
    "res35_mbconv": _arch(["res_bnswish", "res_bnswish5"], _MB6, ["res_bnswish", "res_bnswish5"], _MB3),
    "res55_mbconv": _arch(["res_bnswish5"] * 2, _MB6, ["res_bnswish5"] * 2, _MB3),
    "res_mbconv9": _arch(_BNSWISH2, ["mconv_e6k9g0"], _BNSWISH2, ["mconv_e3k9g0"]),
    "mbconv_res": _arch(_MB6, _BNSWISH2, _MB3, _BNSWISH2),
    "mbconv_den": _arch(_MB6, _MB6, ["mconv_e3k5g8"], ["mconv_e3k5g8"]),
}


def _dataset_size(dataset: str) -> int | None:
    """NVAE's input side for a dataset name (utils.get_input_size), or None if NVAE does not know it."""
    if dataset in _FIXED_SIZES:
        return _FIXED_SIZES[dataset]
    match = _SIZE_SUFFIX.match(dataset)
    return int(match.group(2)) if match else None


def groups_per_scale(
    num_latent_scales: int, num_groups_per_scale: int, ada_groups: bool, min_groups_per_scale: int
) -> tuple[int, ...]:
    """Groups per latent scale, listed from the HIGHEST resolution down (NVAE's utils.groups_per_scale):
    with ada_groups every coarser scale gets half as many, but at least min_groups_per_scale."""
    groups, n = [], num_groups_per_scale
    for _ in range(num_latent_scales):
        groups.append(n)
        if ada_groups:
            n = max(min_groups_per_scale, n // 2)
    return tuple(groups)


def num_groups_of_args(args: Mapping[str, Any]) -> int:
    """Latent groups of the NVAE that ``args`` (NVAE's flags; missing ones at NVAE's defaults) describe."""
    full = {**NVAE_DEFAULT_ARGS, **args}
    counts = groups_per_scale(
        int(full["num_latent_scales"]),
        int(full["num_groups_per_scale"]),
        bool(full["ada_groups"]),
        int(full["min_groups_per_scale"]),
    )
    return sum(counts)


def split_training_flags(args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(architecture flags, everything else) of an official checkpoint's args: NVAE saves its whole
    argparse Namespace (batch size, learning rate, paths, ...), of which only the architecture builds
    the model. Only the official-checkpoint readers call this; everywhere else an unknown key is an error."""
    architecture = {key: value for key, value in args.items() if key in ARCHITECTURE_KEYS}
    others = {key: value for key, value in args.items() if key not in ARCHITECTURE_KEYS}
    return architecture, others


@dataclass(frozen=True)
class NVAEConfig:
    """Architecture of one NVAE: the argparse flags NVAE reads, plus input and likelihood settings."""

    dataset: str
    input_channels: int  # 1 for MNIST-like data, 3 for colour images
    input_size: int  # images are input_size x input_size
    likelihood: Likelihood  # 'dmol' = discretised mixture of logistics
    likelihood_crop: int  # pixels dropped at each border when scoring log p(x|z) (2 for MNIST: 32 -> 28)
    num_x_bits: int
    num_mixture_dec: int
    arch_instance: str
    num_channels_enc: int
    num_channels_dec: int
    num_latent_scales: int
    num_groups_per_scale: int
    num_latent_per_group: int
    ada_groups: bool
    min_groups_per_scale: int
    num_preprocess_blocks: int
    num_preprocess_cells: int
    num_postprocess_blocks: int
    num_postprocess_cells: int
    num_cell_per_cond_enc: int
    num_cell_per_cond_dec: int
    num_nf: int
    use_se: bool
    res_dist: bool

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> NVAEConfig:
        """Read NVAE's argparse values (missing keys get NVAE's defaults); the dataset name picks
        the input shape and likelihood as NVAE does unless ``input_size``, ``input_channels``,
        ``likelihood`` or ``likelihood_crop`` are given explicitly."""
        if not isinstance(args, Mapping):
            raise ValueError(f"NVAE args must be a dict (use vars(namespace)), got {type(args).__name__}")  # noqa: TRY004
        unknown = sorted(set(args) - ARCHITECTURE_KEYS)
        if unknown:
            raise ValueError(
                f"unknown NVAE argument(s) {', '.join(unknown)}; known: {', '.join(sorted(ARCHITECTURE_KEYS))}"
            )
        # None stands for "left out" (what a JSON round trip of an unset derived key gives)
        full = {**NVAE_DEFAULT_ARGS, **{key: value for key, value in args.items() if value is not None}}
        dataset = str(full["dataset"])
        known_size = _dataset_size(dataset)
        input_size = full.get("input_size", known_size)
        if input_size is None:
            raise ValueError(
                f"unknown NVAE dataset {dataset!r}: give input_size and input_channels explicitly"
            )
        input_channels = full.get("input_channels", 1 if dataset in _BINARY_DATASETS else 3)
        if "likelihood" in full:
            likelihood = str(full["likelihood"])
        elif dataset in _BINARY_DATASETS:
            likelihood = "bernoulli"
        else:
            likelihood = "normal" if int(full["num_mixture_dec"]) == 1 else "dmol"
        crop = full.get("likelihood_crop", 2 if dataset in _CROPPED_DATASETS else 0)
        # cast to the type of NVAE's default (JSON and argparse both give plain ints / bools / strings)
        fields = {
            name: type(default)(full[name])
            for name, default in NVAE_DEFAULT_ARGS.items()
            if name != "dataset"
        }
        config = cls(
            dataset=dataset,
            input_channels=int(input_channels),
            input_size=int(input_size),
            likelihood=likelihood,
            likelihood_crop=int(crop),
            **fields,
        )
        config.validate()
        return config

    @classmethod
    def from_params(cls, section: Mapping[str, Any], data_name: str) -> NVAEConfig:
        """From the params' ``vae.nvae`` section; NVAE's ``dataset`` name comes from ``data.name`` (the
        map NVAE_DATASET_NAMES) unless the section gives it."""
        args = dict(section)
        if "dataset" not in args and data_name == "folder":
            # NVAE knows no such dataset: name it, and the shape its name cannot carry must be given
            if "input_size" not in args or "input_channels" not in args:
                raise ValueError(
                    "data.name folder with an NVAE needs vae.nvae.input_size and vae.nvae.input_channels "
                    "(data.image_size, and 1 for grayscale or 3)"
                )
            args["dataset"] = "folder"
        if "dataset" not in args:
            if data_name not in NVAE_DATASET_NAMES:
                raise ValueError(
                    f"set vae.nvae.dataset: NVAE has no dataset name for data.name {data_name!r}"
                )
            args["dataset"] = NVAE_DATASET_NAMES[data_name]
        return cls.from_args(args)

    def validate(self) -> None:
        """Raise a one-line ValueError for settings NVAE cannot build."""
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.likelihood == "dmol" and self.input_channels != 3:
            raise ValueError(
                f"the mixture-of-logistics decoder needs 3 input channels, got {self.input_channels}"
            )
        if self.arch_instance not in ARCH_CELLS:
            raise ValueError(f"unknown arch_instance {self.arch_instance!r}; known: {sorted(ARCH_CELLS)}")
        positive = (
            "input_channels",
            "input_size",
            "num_channels_enc",
            "num_channels_dec",
            "num_latent_scales",
            "num_groups_per_scale",
            "num_latent_per_group",
            "min_groups_per_scale",
            "num_x_bits",
            "num_mixture_dec",
            "num_preprocess_cells",
            "num_cell_per_cond_enc",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"NVAE flag {name} must be >= 1, got {getattr(self, name)}")
        non_negative = (
            "num_preprocess_blocks",
            "num_postprocess_blocks",
            "num_postprocess_cells",
            "num_cell_per_cond_dec",
            "num_nf",
            "likelihood_crop",
        )
        for name in non_negative:
            if int(getattr(self, name)) < 0:
                raise ValueError(f"NVAE flag {name} must be >= 0, got {getattr(self, name)}")
        if self.num_postprocess_blocks != self.num_preprocess_blocks:
            raise ValueError(
                f"num_postprocess_blocks ({self.num_postprocess_blocks}) must equal num_preprocess_blocks "
                f"({self.num_preprocess_blocks}), or the output is not the input's size"
            )
        if self.input_size % self.spatial_scaling != 0:
            raise ValueError(
                f"input_size {self.input_size} is not divisible by 2^(preprocess blocks + "
                f"latent scales - 1) = {self.spatial_scaling}"
            )
        if 2 * self.likelihood_crop >= self.input_size:
            raise ValueError(
                f"likelihood_crop {self.likelihood_crop} leaves no pixels of a {self.input_size} image"
            )

    # ---- derived values -------------------------------------------------------------------------
    @property
    def groups_per_scale(self) -> tuple[int, ...]:
        """Groups per latent scale, listed from the HIGHEST resolution down (see ``groups_per_scale``)."""
        return groups_per_scale(
            self.num_latent_scales, self.num_groups_per_scale, self.ada_groups, self.min_groups_per_scale
        )

    @property
    def groups_per_decoder_scale(self) -> tuple[int, ...]:
        """Groups per latent scale in top-down (decoder) order: coarsest scale first."""
        return tuple(reversed(self.groups_per_scale))

    @property
    def num_groups(self) -> int:
        """Total number of latent groups."""
        return sum(self.groups_per_scale)

    @property
    def is_vanilla(self) -> bool:
        """One scale with one group: NVAE then drops both towers and decodes z with a 1x1 conv."""
        return self.num_latent_scales == 1 and self.num_groups_per_scale == 1

    @property
    def spatial_scaling(self) -> int:
        """Downsampling factor from the input to the coarsest latent scale."""
        return 2 ** (self.num_preprocess_blocks + self.num_latent_scales - 1)

    @property
    def top_channel_mult(self) -> int:
        """Channel multiplier (over num_channels_*) at the coarsest latent scale."""
        return CHANNEL_MULT ** (self.num_preprocess_blocks + self.num_latent_scales - 1)

    def decoder_scale_side(self, scale: int) -> int:
        """Spatial side of decoder scale ``scale`` (0 = coarsest)."""
        return self.input_size // self.spatial_scaling * 2**scale

    def decoder_scale_channels(self, scale: int) -> int:
        """Width of the decoder state at decoder scale ``scale`` (0 = coarsest)."""
        return int(self.num_channels_dec * self.top_channel_mult / CHANNEL_MULT**scale)

    def group_scales(self) -> list[int]:
        """Decoder scale index of each latent group, in ancestral (decoder) order."""
        return [scale for scale, count in enumerate(self.groups_per_decoder_scale) for _ in range(count)]

    @property
    def output_channels(self) -> int:
        """Channels of the decoder output (the likelihood's parameters)."""
        if self.likelihood == "bernoulli":
            return self.input_channels
        if self.likelihood == "normal":
            return 2 * self.input_channels
        return 10 * self.num_mixture_dec  # per mixture: logit, and 3 x (mean, log-scale, RGB coupling)
