"""Resumable training state: everything a training loop needs to continue exactly where it stopped.

A killed job (kill -9, a cluster's walltime) restarts from the last state written to its work folder.
For the rerun to end with the same weights as an uninterrupted run, the state holds more than the
weights: the optimiser's moments, the data generator (shuffle order and binarisation draws), the
global random states the model's noise comes from, the epoch's order and position in it, and the
learning-rate scale that non-finite-loss roll-backs lowered. Stage 1 uses it (``ncp/train_vae.py``);
it is written for any loop of the same shape.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ncp.models.nvae.regularizers import SpectralNormEstimator
from ncp.runtime import load_torch, restore_rng_states, rng_states

STATE_FORMAT = "ncp-training-state/1"


@dataclass
class TrainingState:
    """The live objects of a training loop plus its counters; ``snapshot`` / ``restore`` copy them."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # data order and binarisation
    step: int = 0
    history: list = field(default_factory=list)
    epoch_order: torch.Tensor | None = None  # this epoch's shuffled image indices (N,), None between epochs
    epoch_position: int = 0  # steps of this epoch already taken
    lr_scale: float = 1.0  # lowered by each roll-back after a non-finite loss
    rollbacks: int = 0

    def snapshot(self) -> dict:
        """A deep copy of the whole state as plain values and tensors (loadable with weights_only)."""
        return copy.deepcopy(
            {
                "format": STATE_FORMAT,
                "model": self.model.state_dict(),
                "power_iteration": _power_iteration_vectors(self.model),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "rng": rng_states(),
                "step": self.step,
                "history": self.history,
                "epoch_order": self.epoch_order,
                "epoch_position": self.epoch_position,
                "lr_scale": self.lr_scale,
                "rollbacks": self.rollbacks,
            }
        )

    def restore(self, saved: dict, restore_global_rng: bool = True) -> None:
        """Put back a snapshot (the model and optimiser in place, so wrappers such as DDP stay valid)."""
        saved = copy.deepcopy(saved)
        self.model.load_state_dict(saved["model"])
        _set_power_iteration_vectors(self.model, saved["power_iteration"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        if restore_global_rng:
            restore_rng_states(saved["rng"])
        self.step, self.history = saved["step"], saved["history"]
        self.epoch_order, self.epoch_position = saved["epoch_order"], saved["epoch_position"]
        self.lr_scale, self.rollbacks = saved["lr_scale"], saved["rollbacks"]


def _spectral_estimators(model: torch.nn.Module) -> dict[str, SpectralNormEstimator]:
    """NVAE's spectral regulariser keeps its power-iteration vectors u, v between steps, outside the
    state dict (as NVAE does); a resume without them restarts the iteration and drifts from the run."""
    return {
        f"{module_name}.{attribute}": value
        for module_name, module in model.named_modules()
        for attribute, value in vars(module).items()
        if isinstance(value, SpectralNormEstimator)
    }


def _power_iteration_vectors(model: torch.nn.Module) -> dict:
    return {
        name: {"left": list(estimator.left.items()), "right": list(estimator.right.items())}
        for name, estimator in _spectral_estimators(model).items()
    }


def _set_power_iteration_vectors(model: torch.nn.Module, saved: dict) -> None:
    for name, estimator in _spectral_estimators(model).items():
        estimator.left = dict(saved[name]["left"]) if name in saved else {}
        estimator.right = dict(saved[name]["right"]) if name in saved else {}


def read_resume_file(path: Path, settings: dict) -> dict | None:
    """The state in ``path`` if it was written by a run with the same ``settings``, else None (with the
    reason printed: a damaged file or other settings mean training starts over, never a wrong resume)."""
    try:
        saved = load_torch(path)
    except ValueError as error:
        print(f"not resuming: {error}")
        return None
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        print(f"not resuming: {path} is from another version of ncp-vae")
        return None
    if saved.get("settings") != settings:
        print(f"not resuming: {path} was written with other settings")
        return None
    return saved
