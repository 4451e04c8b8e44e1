"""Resumable training state: everything a training loop needs to continue exactly where it stopped.

A killed job (kill -9, a cluster's walltime) restarts from the last state written to its work folder.
For the rerun to end with the same weights as an uninterrupted run, the state holds more than the
weights: the optimiser's moments, the data generator (shuffle order and binarisation draws), the
global random states the model's noise comes from, the epoch's order and position in it, and the
learning-rate scale that non-finite-loss roll-backs lowered. Stage 1 uses it (``ncp/train_vae.py``);
it is written for any loop of the same shape.

A non-finite loss is met here too: ``fault_location`` names the term (and latent group) that went first,
and ``roll_back_after_fault`` returns to the last good state with a lower learning rate, or stops.
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


# A non-finite loss rolls training back to the last good state with the learning rate times
# ROLLBACK_LR_FACTOR, at most MAX_ROLLBACKS times in a run; then the job stops with the step named.
MAX_ROLLBACKS = 3
ROLLBACK_LR_FACTOR = 0.5


class NonFiniteLoss(FloatingPointError):
    """A NaN or infinite stage-1 loss; the message says which term (and latent group) went first."""


def fault_location(recon: torch.Tensor, kl_per_group: torch.Tensor, regulariser) -> str:
    """Which term of the loss is not finite: the KL of named groups, the reconstruction, the regulariser."""
    bad_groups = (~torch.isfinite(kl_per_group)).any(dim=0).nonzero().flatten().tolist()  # (K,) -> ids
    if bad_groups:
        return f"in the KL term of latent group {', '.join(map(str, bad_groups))}"
    if not torch.isfinite(recon).all():
        return "in the reconstruction term"
    return "in the spectral/BatchNorm regulariser" if regulariser is not None else "in the loss"


def roll_back_after_fault(state: TrainingState, last_good: dict, fault: NonFiniteLoss, step: int) -> None:
    """After a non-finite loss at ``step``: back to the last good state with a lower learning rate, or,
    after MAX_ROLLBACKS roll-backs, stop with one line naming the step and the term (and group)."""
    tries = state.rollbacks + 1
    if tries > MAX_ROLLBACKS:
        raise RuntimeError(
            f"stage-1 loss is not finite at step {step} {fault} after {MAX_ROLLBACKS} roll-backs with the "
            f"learning rate down to x{state.lr_scale:g}: lower vae.train.lr, set vae.train.grad_clip or "
            "raise vae.train.weight_decay_norm"
        )
    lr_scale = state.lr_scale * ROLLBACK_LR_FACTOR
    state.restore(last_good)
    state.rollbacks, state.lr_scale = tries, lr_scale
    print(
        f"non-finite stage-1 loss at step {step} {fault}: rolled back to step {state.step} with the "
        f"learning rate x{lr_scale:g} (roll-back {tries} of {MAX_ROLLBACKS})"
    )
