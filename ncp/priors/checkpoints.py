"""Load the per-group classifiers written by `ncp train-nce` back into an NCP prior."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ncp.priors.classifiers import build_classifier
from ncp.priors.ncp_prior import NCPPrior
from ncp.runtime import load_state_dict_strictly, load_torch


def load_ncp_prior(classifier_files: Sequence[str | Path], device: torch.device | str = "cpu") -> NCPPrior:
    """An NCPPrior whose group k uses the classifier in ``classifier_files[k]`` (frozen, eval mode)."""
    classifiers = []
    for k, path in enumerate(classifier_files):
        saved = load_torch(path)
        if not isinstance(saved, dict) or not {"group", "build_args", "state_dict"} <= set(saved):
            raise ValueError(f"{path} is not a classifier file of `ncp train-nce`; rerun that stage")
        if int(saved["group"]) != k:
            raise ValueError(
                f"{path} holds the classifier of group {saved['group']}, expected group {k}: "
                "pass the classifiers in group order"
            )
        classifier = build_classifier(**saved["build_args"])
        load_state_dict_strictly(classifier, saved["state_dict"], path)
        classifier.to(device).eval()
        for parameter in classifier.parameters():
            parameter.requires_grad_(False)
        classifiers.append(classifier)
    return NCPPrior(classifiers)
