"""Read official NVAE checkpoints without running arbitrary pickled code.

NVAE's train.py saves ``{'state_dict', 'args' (an argparse.Namespace), 'epoch', 'optimizer', ...}`` with
torch.save. We unpickle it with ``weights_only=True``, allowing only argparse.Namespace beyond tensors
and plain containers, so a tampered file fails to load instead of executing code.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _short_reason(error: Exception) -> str:
    """One line out of torch.load's multi-paragraph errors: the refused global if there is one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "global" in line:  # torch's weights-only refusal names the blocked callable
            return f"refused to unpickle code ({line})"
    if isinstance(error, (pickle.UnpicklingError, KeyError, EOFError)) or not lines:
        return f"not a torch checkpoint ({type(error).__name__})"
    return lines[0]


def load_nvae_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(args as a plain dict, state_dict) of an NVAE checkpoint; ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"NVAE checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        raise ValueError(f"{path} is not a loadable NVAE checkpoint: {_short_reason(error)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "args" not in checkpoint:
        raise ValueError(f"{path} is not an NVAE checkpoint: expected a dict with 'state_dict' and 'args'")
    args = checkpoint["args"]
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        raise ValueError(f"{path}: 'args' is a {type(args).__name__}, not an argparse.Namespace or dict")  # noqa: TRY004
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    return dict(args), dict(state_dict)
