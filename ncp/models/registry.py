"""Build any backbone by name, and save / load it in this project's checkpoint format.

A checkpoint is a plain dict (loadable with ``weights_only=True``): the format tag, the backbone's
name and constructor arguments, its weights, and the base prior it ended training with. That is all
a later stage needs to rebuild the model, in the spirit of nanoGPT's ``model_args``.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from ncp.runtime import atomic_save, load_state_dict_strictly, load_torch

CHECKPOINT_FORMAT = "ncp-vae/1"
# vae.arch -> where the backbone class lives (imported on use: a run pays only for the backbone it builds)
_CLASSES = {
    "nvae": ("ncp.models.nvae.model", "NVAE"),
    "mlp": ("ncp.models.mlp_vae", "MLPVAE"),
    "conv": ("ncp.models.conv_vae", "ConvVAE"),
}
ARCHES = tuple(_CLASSES)


def backbone_class(arch: str) -> type:
    """The class of backbone ``arch`` ('nvae', 'mlp' or 'conv')."""
    if arch not in _CLASSES:
        raise ValueError(f"unknown VAE arch {arch!r}; expected one of {', '.join(ARCHES)}")
    module, name = _CLASSES[arch]
    return getattr(import_module(module), name)


def backbone_config(arch: str, section: dict, data_name: str) -> Any:
    """The typed config of backbone ``arch`` from its params section and the data set's name."""
    return backbone_class(arch).config_from_params(section, data_name)


def build_vae(arch: str, arch_args: dict) -> torch.nn.Module:
    """A fresh backbone of kind ``arch`` from its constructor arguments: ``dataclasses.asdict`` of its
    typed config, as a checkpoint stores them."""
    return backbone_class(arch).from_config(arch_args)


def save_vae_checkpoint(
    model: torch.nn.Module, arch: str, arch_args: dict, path: str | Path, **extra: Any
) -> None:
    """Write the backbone's weights and how to rebuild it; ``extra`` holds e.g. training stats."""
    atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "arch": arch,
            "arch_args": arch_args,
            "state_dict": model.state_dict(),
            "base_prior": getattr(model, "base_prior_spec", lambda: {"kind": "gaussian"})(),
            **extra,
        },
        path,
    )


def load_vae_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild a backbone from a checkpoint, load its weights strictly, freeze it, eval mode."""
    checkpoint = load_torch(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an ncp-vae checkpoint (an official NVAE file? convert it with `ncp import-nvae`)"
        )
    try:
        model = build_vae(checkpoint["arch"], checkpoint["arch_args"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: cannot rebuild its model ({type(error).__name__}: {error}); the file is damaged"
        ) from None
    prior_spec = checkpoint.get("base_prior", {"kind": "gaussian"})
    if prior_spec.get("kind", "gaussian") != "gaussian":
        model.install_base_prior(prior_spec)
    load_state_dict_strictly(model, checkpoint.get("state_dict"), path)
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
