"""NVAE (NVlabs/NVAE) re-implemented as a LatentVAE, with NVAE's parameter names and shapes so that
official checkpoints load strictly. See model.py for the architecture walk-through."""

from ncp.models.nvae.checkpoint import load_nvae_checkpoint
from ncp.models.nvae.config import NVAEConfig
from ncp.models.nvae.model import NVAE, readjust_batchnorm
from ncp.models.nvae.regularizers import (
    balanced_kl,
    kl_balance_alpha,
    kl_balance_coefficients,
    kl_warmup_coefficient,
    regularization_weight,
)

__all__ = [
    "NVAE",
    "NVAEConfig",
    "balanced_kl",
    "kl_balance_alpha",
    "kl_balance_coefficients",
    "kl_warmup_coefficient",
    "load_nvae_checkpoint",
    "readjust_batchnorm",
    "regularization_weight",
]
