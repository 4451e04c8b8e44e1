"""Stage-2 priors: per-group NCE classifiers and the noise contrastive prior built from them."""

from ncp.priors.classifiers import build_classifier
from ncp.priors.nce import (
    NCEDiagnostics,
    NCEHistory,
    evaluate_classifier,
    jensen_shannon_estimate,
    nce_loss,
    split_pairs,
    train_classifier,
)
from ncp.priors.ncp_prior import NCPPrior

__all__ = [
    "NCEDiagnostics",
    "NCEHistory",
    "NCPPrior",
    "build_classifier",
    "evaluate_classifier",
    "jensen_shannon_estimate",
    "nce_loss",
    "split_pairs",
    "train_classifier",
]
