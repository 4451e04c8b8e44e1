"""Stage-2 priors: per-group NCE classifiers and the noise contrastive prior built from them."""

from ncp.priors.checkpoints import load_classifier, load_ncp_prior, save_classifier
from ncp.priors.classifiers import build_classifier
from ncp.priors.latent_cache import ShardedPairs, TensorPairs, split_images
from ncp.priors.nce import (
    NCEDiagnostics,
    NCEDivergedError,
    NCEHistory,
    evaluate_classifier,
    evaluate_pairs,
    jensen_shannon_estimate,
    nce_loss,
    train_classifier,
    train_on_pairs,
)
from ncp.priors.ncp_prior import NCPPrior

__all__ = [
    "NCEDiagnostics",
    "NCEDivergedError",
    "NCEHistory",
    "NCPPrior",
    "ShardedPairs",
    "TensorPairs",
    "build_classifier",
    "evaluate_classifier",
    "evaluate_pairs",
    "jensen_shannon_estimate",
    "load_classifier",
    "load_ncp_prior",
    "nce_loss",
    "save_classifier",
    "split_images",
    "train_classifier",
    "train_on_pairs",
]
