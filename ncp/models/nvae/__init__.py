"""NVAE (NVlabs/NVAE) re-implemented as a LatentVAE, with NVAE's parameter names and shapes so that
official checkpoints load strictly. See model.py for the architecture walk-through.

The names below are imported on first use (PEP 562): ``ncp.models.nvae.config`` imports no torch, and
the workflow (Snakemake) reads it to count latent groups without paying torch's import time.
"""

from importlib import import_module

_HOMES = {
    "NVAE": "model",
    "readjust_batchnorm": "model",
    "NVAEConfig": "config",
    "load_nvae_checkpoint": "checkpoint",
    "balanced_kl": "regularizers",
    "kl_balance_alpha": "regularizers",
    "kl_balance_coefficients": "regularizers",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
