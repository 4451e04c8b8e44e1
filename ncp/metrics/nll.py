"""Importance-weighted NLL (IWAE bound) of any LatentVAE, with or without an NCP prior.

log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,  z_k ~ q(z|x),
and for the NCP prior p_NCP(z) = p(z) r(z) / Z each log weight gains log r(z_k), and log Z is
subtracted once (Burda et al. 2016; NCP-VAE Sec. 4). With an estimated log Z the result is no longer
a strict bound (see the evaluation notes). Call ``vae.eval()`` first where the model has batch norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ncp.data.datasets import binarize, to_float
from ncp.models.base import LatentVAE
from ncp.progress import progress_bar

# log r(z) summed over groups for a batch: (latents [(B, *shape_k)], contexts [c_k or None]) -> (B,)
LogRatioFn = Callable[[list, list], Tensor]


@dataclass
class NLLResult:
    """Test negative log-likelihood averaged over images, with its standard error."""

    nats: float  # mean of -log p(x) over images
    bits_per_dim: float  # nats / (ln 2 * num_dims)
    std_error: float  # standard error of the mean of the per-image NLLs (log Z's error not included)
    num_images: int
    iw_samples: int
    log_z: float = 0.0  # the normaliser subtracted for an NCP prior (0 for the base prior)
    num_dims: int = 0  # pixels x channels per image that log p(x|z) scores
    per_image: Tensor | None = field(default=None, repr=False)  # (N,) -log p(x_i), for paired differences

    def to_dict(self) -> dict:
        """Plain dict for JSON / tables (without the per-image values)."""
        record = asdict(self)
        record.pop("per_image")
        return record


@dataclass
class PairedDifference:
    """NLL(base) - NLL(NCP) over the same images and binarisations, with its full standard error.

    The two NLLs of one image share the binarisation and most of their Monte Carlo noise, so the
    per-image differences vary far less than either NLL; log Z shifts every NCP NLL at once, so its
    error adds in quadrature to the images' error of the mean difference, not per image.
    """

    nats: float  # mean over images of NLL_base - NLL_NCP (> 0: NCP is better)
    std_error: float  # sqrt(se_images^2 + se_log_z^2)
    std_error_images: float  # standard error of the mean per-image difference
    std_error_log_z: float  # the log Z error used
    num_images: int

    def to_dict(self) -> dict:
        """Plain dict for JSON / tables."""
        return asdict(self)


def paired_difference(base: NLLResult, ncp: NLLResult, log_z_std_error: float) -> PairedDifference:
    """NLL(base) - NLL(NCP) per image with its standard error, se(log Z) added in quadrature."""
    if base.per_image is None or ncp.per_image is None or base.per_image.shape != ncp.per_image.shape:
        raise ValueError("paired_difference needs both results' per-image NLLs over the same images")
    differences = base.per_image.double() - ncp.per_image.double()  # (N,)
    n = len(differences)
    se_images = float(differences.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return PairedDifference(
        nats=float(differences.mean()),
        std_error=math.hypot(se_images, log_z_std_error),
        std_error_images=se_images,
        std_error_log_z=float(log_z_std_error),
        num_images=n,
    )


def _model_input(images: Tensor, binarize_generator: torch.Generator | None) -> Tensor:
    """Float model input: a fresh binarisation of uint8 images when a generator is given, else pixel/255."""
    if images.dtype == torch.uint8:
        return binarize(images, binarize_generator) if binarize_generator is not None else to_float(images)
    if binarize_generator is not None:
        raise ValueError("binarize_generator needs uint8 images (binarisation draws Bernoulli(pixel / 255))")
    return images


def _model_device(vae) -> torch.device:
    """Device of the VAE's parameters (CPU for a parameter-free model)."""
    parameter = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def log_importance_weights(
    vae: LatentVAE, x: Tensor, num_samples: int, log_r_fn: LogRatioFn | None = None
) -> Tensor:
    """log w (B, K) for float images x (B, ...): K encoder passes with noise 1 on each image."""
    x_repeated = x.repeat_interleave(num_samples, dim=0)  # (B * K, ...), each image K times in a row
    out = vae.forward(x_repeated, noise_scale=1.0)
    log_w = vae.log_px(out.logits, x_repeated) + out.log_p - out.log_q  # (B * K,)
    if log_r_fn is not None:
        log_w = log_w + log_r_fn(out.latents, out.contexts)
    return log_w.to(torch.float64).reshape(len(x), num_samples)  # (B, K)


def importance_weighted_nll(
    vae: LatentVAE,
    images: Tensor,
    num_iw_samples: int,
    batch_size: int,
    log_r_fn: LogRatioFn | None = None,
    log_z: float = 0.0,
    binarize_generator: torch.Generator | None = None,
    num_dims: int | None = None,
    desc: str | None = None,
) -> NLLResult:
    """IW estimate of -log p(x) for images (N, C, H, W) with ``num_iw_samples`` samples per image.

    ``batch_size`` bounds the rows (image x sample) in one forward pass: several images per pass
    when K is small, else one image with its K samples split into chunks. uint8 images are scaled
    to [0, 1], or binarised once per image (shared by its K samples) when ``binarize_generator`` is
    given; float images are used as they are. ``log_r_fn`` and ``log_z`` turn the base prior into
    the NCP prior p(z) r(z) / Z. ``num_dims`` (for bits/dim) defaults to C * H * W; pass the scored
    count where log p(x|z) skips padding (784 for MNIST padded to 32x32). With ``desc``, a progress bar
    goes to stderr (the job's log).
    """
    if num_iw_samples < 1 or batch_size < 1:
        raise ValueError(
            f"num_iw_samples and batch_size must be positive, got {num_iw_samples}, {batch_size}"
        )
    if len(images) == 0:
        raise ValueError("importance_weighted_nll got no images")
    device = _model_device(vae)
    images_per_pass = max(1, batch_size // num_iw_samples)
    samples_per_pass = min(num_iw_samples, batch_size)
    log_px = []
    bar = progress_bar(len(images), desc or "", disable=desc is None)
    for start in range(0, len(images), images_per_pass):
        x = _model_input(images[start : start + images_per_pass], binarize_generator).to(device)
        chunks = []
        for done in range(0, num_iw_samples, samples_per_pass):
            count = min(samples_per_pass, num_iw_samples - done)
            chunks.append(log_importance_weights(vae, x, count, log_r_fn))
        log_w = torch.cat(chunks, dim=1)  # (B, K)
        log_px.append(torch.logsumexp(log_w, dim=1) - math.log(num_iw_samples) - log_z)
        bar.update(len(x))
    bar.close()
    nll = -torch.cat(log_px).cpu()  # (N,)
    dims = int(num_dims) if num_dims is not None else int(torch.Size(images.shape[1:]).numel())
    std_error = float(nll.std(unbiased=True) / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    nats = float(nll.mean())
    return NLLResult(
        nats, nats / (math.log(2) * dims), std_error, len(nll), num_iw_samples, float(log_z), dims, nll
    )
