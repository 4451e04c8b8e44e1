"""The one save/load pair for NCE classifiers, and the NCP prior built from the per-group files.

A classifier file holds a format tag and version, the group it was trained for, the fingerprint of the
VAE checkpoint whose latents it saw, its build arguments and weights. Loading checks all of them, so a
classifier of another group, another VAE or an older format is a one-line error, never a silent mix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ncp.priors.classifiers import build_classifier
from ncp.priors.ncp_prior import NCPPrior
from ncp.runtime import atomic_save, load_state_dict_strictly, load_torch

CLASSIFIER_FORMAT = "ncp-nce-classifier"
CLASSIFIER_FORMAT_VERSION = 2  # 1: the untagged {group, build_args, state_dict, history} of earlier versions


def vae_fingerprint(checkpoint: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a VAE checkpoint file (its architecture and weights)."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def save_classifier(
    classifier: nn.Module,
    path: str | Path,
    *,
    group: int,
    vae_fingerprint: str | None,
    extra: dict | None = None,
) -> None:
    """Write one group's classifier (atomically); ``extra`` holds plain data such as the history."""
    if not hasattr(classifier, "build_args"):
        raise ValueError(f"classifier of group {group} was not made by build_classifier")
    atomic_save(
        {
            "format": CLASSIFIER_FORMAT,
            "format_version": CLASSIFIER_FORMAT_VERSION,
            "group": int(group),
            "vae_fingerprint": vae_fingerprint,
            "build_args": classifier.build_args,
            "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
            **(extra or {}),
        },
        path,
    )


def load_classifier(
    path: str | Path,
    *,
    group: int,
    vae_fingerprint: str | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The classifier of ``group`` from ``path`` (frozen, eval mode); refuses another group, VAE or format."""
    saved: dict[str, Any] = load_torch(path)
    if not isinstance(saved, dict) or (saved.get("format"), saved.get("format_version")) != (
        CLASSIFIER_FORMAT,
        CLASSIFIER_FORMAT_VERSION,
    ):
        raise ValueError(
            f"{path} is not an NCE classifier file of format {CLASSIFIER_FORMAT!r} v{CLASSIFIER_FORMAT_VERSION} "
            f"(found {saved.get('format')!r} v{saved.get('format_version', 1)}): rerun `ncp train-nce`"
        )
    if int(saved["group"]) != group:
        raise ValueError(
            f"{path} holds the classifier of group {saved['group']}, expected group {group}: "
            "pass the classifiers in group order"
        )
    if vae_fingerprint is not None and saved["vae_fingerprint"] != vae_fingerprint:
        raise ValueError(
            f"{path} was trained on the latents of VAE {saved['vae_fingerprint']}, not of this VAE "
            f"({vae_fingerprint}): retrain the classifiers on this VAE's latents"
        )
    classifier = build_classifier(**saved["build_args"])
    load_state_dict_strictly(classifier, saved["state_dict"], path)
    classifier.to(device).eval()
    classifier.requires_grad_(False)
    return classifier


def load_ncp_prior(
    classifier_files: Sequence[str | Path],
    device: torch.device | str = "cpu",
    vae_checkpoint: str | Path | None = None,
) -> NCPPrior:
    """An NCPPrior whose group k uses the classifier in ``classifier_files[k]`` (frozen, eval mode).

    With ``vae_checkpoint``, every classifier must have been trained on that VAE's latents.
    """
    fingerprint = None if vae_checkpoint is None else vae_fingerprint(vae_checkpoint)
    classifiers = [
        load_classifier(path, group=k, vae_fingerprint=fingerprint, device=device)
        for k, path in enumerate(classifier_files)
    ]
    return NCPPrior(classifiers).freeze()
