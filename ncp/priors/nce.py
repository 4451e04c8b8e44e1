"""Noise contrastive estimation of one group's density ratio r_k = q(z_k|z_<k) / p(z_k|z_<k).

The loss is the paper's Eq. (4): -E_q[log D] - E_p[log(1 - D)], q samples labelled 1, p samples 0,
each p sample paired with the context of the q sample drawn with the same z_<k. Its minimum L*
relates to the Jensen-Shannon divergence by JSD(p || q) = log 2 - L*/2 (Goodfellow et al., 2014),
so L* = 2 log 2 ~ 1.386 means p = q.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits

from ncp.priors.classifiers import NormKind, build_classifier


@dataclass
class NCEHistory:
    """Per-epoch losses of one classifier's training (Eq. 4, a sum of two means)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1  # epoch (0-based) whose weights were kept
    best_val_loss: float = math.inf  # its held-out loss (its train loss when nothing is held out)


@dataclass
class NCEDiagnostics:
    """How well a classifier separates q from p on a set of samples."""

    loss: float  # Eq. (4) on these samples; an estimate of L*
    jsd: float  # log 2 - loss / 2, the Jensen-Shannon estimate
    mean_log_r_q: float  # E_q[log r], estimates KL(q || p) when r is exact
    mean_log_r_p: float  # E_p[log r], estimates -KL(p || q) when r is exact
    accuracy: float  # fraction of q and p samples on the right side of logit 0


def nce_loss(logits_q: Tensor, logits_p: Tensor) -> Tensor:
    """Eq. (4): BCE of q samples against label 1 plus BCE of p samples against label 0."""
    return binary_cross_entropy_with_logits(
        logits_q, torch.ones_like(logits_q)
    ) + binary_cross_entropy_with_logits(logits_p, torch.zeros_like(logits_p))


def jensen_shannon_estimate(loss: float) -> float:
    """JSD(p || q) = log 2 - L*/2 for the optimal Eq. (4) loss L*."""
    return math.log(2.0) - 0.5 * loss


def _check_samples(z_q: Tensor, z_p: Tensor, context: Tensor | None) -> None:
    """Raise a one-line ValueError unless q, p and context rows pair up."""
    if z_q.shape != z_p.shape:
        raise ValueError(f"z_q {tuple(z_q.shape)} and z_p {tuple(z_p.shape)} must have one shape")
    if context is not None and context.shape[0] != z_q.shape[0]:
        raise ValueError(f"context has {context.shape[0]} rows but the latents have {z_q.shape[0]}")
    if z_q.shape[0] < 1:
        raise ValueError("need at least one sample pair, got none")


def _batch(
    tensors: tuple[Tensor, Tensor, Tensor | None], index: Tensor, device: torch.device
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Rows ``index`` of (z_q, z_p, context) on ``device`` as float32 (caches may be float16)."""
    index = index.to(tensors[0].device)
    return tuple(  # type: ignore[return-value]
        None if t is None else t[index].to(device=device, dtype=torch.float32, non_blocking=True)
        for t in tensors
    )


def _logits(classifier: nn.Module, z_q: Tensor, z_p: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """Logits on q and p rows from one pass, so BatchNorm (if used) sees both classes together."""
    z = torch.cat([z_q, z_p])  # (2B, ...)
    c = None if context is None else torch.cat([context, context])  # (2B, ...)
    logits = classifier(z, c)
    return logits[: len(z_q)], logits[len(z_q) :]


@torch.no_grad()
def evaluate_classifier(
    classifier: nn.Module,
    z_q: Tensor,
    z_p: Tensor,
    context: Tensor | None = None,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> NCEDiagnostics:
    """Loss, JSD estimate, mean log r on q and p samples, and accuracy of a trained classifier."""
    _check_samples(z_q, z_p, context)
    device = torch.device(device)
    classifier.eval()
    n = z_q.shape[0]
    sums = torch.zeros(5, dtype=torch.float64)  # bce_q, bce_p, log_r_q, log_r_p, correct
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(start + batch_size, n))
        logits_q, logits_p = _logits(classifier, *_batch((z_q, z_p, context), index, device))
        ones, zeros = torch.ones_like(logits_q), torch.zeros_like(logits_p)
        sums += (
            torch.stack(
                [
                    binary_cross_entropy_with_logits(logits_q, ones, reduction="sum"),
                    binary_cross_entropy_with_logits(logits_p, zeros, reduction="sum"),
                    logits_q.sum(),
                    logits_p.sum(),
                    (logits_q > 0).sum() + (logits_p <= 0).sum(),
                ]
            )
            .double()
            .cpu()
        )
    bce_q, bce_p, log_r_q, log_r_p, correct = (sums / n).tolist()
    loss = bce_q + bce_p
    return NCEDiagnostics(
        loss=loss,
        jsd=jensen_shannon_estimate(loss),
        mean_log_r_q=log_r_q,
        mean_log_r_p=log_r_p,
        accuracy=correct / 2.0,
    )


def split_pairs(num_pairs: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, held-out indices): the random split ``train_classifier`` uses for ``seed``."""
    order = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed))
    num_val = round(val_fraction * num_pairs)
    if num_val >= num_pairs:
        raise ValueError(f"val_fraction {val_fraction} leaves no training pairs out of {num_pairs}")
    return order[num_val:], order[:num_val]


def train_classifier(
    z_q: Tensor,
    z_p: Tensor,
    context: Tensor | None = None,
    *,
    hidden: int = 64,
    num_blocks: int = 2,
    use_se: bool = True,
    norm: NormKind = "batch",
    num_downsamples: int = 0,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    lr_schedule: Literal["cosine", "constant"] = "cosine",
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[nn.Module, NCEHistory]:
    """Train D_k on paired samples z_q[i], z_p[i] (both with context[i]) by Eq. (4) with AdamW.

    ``z_q`` ~ q(z_k|z_<k), ``z_p`` ~ p(z_k|z_<k), each (N, *group_shape); ``context`` (N,
    *context_shape) or None. A random ``val_fraction`` of the pairs (``split_pairs``) is held out and
    the weights with the lowest held-out loss are returned (eval mode, on ``device``) with the history.
    """
    _check_samples(z_q, z_p, context)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; expected 'cosine' or 'constant'")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed + 1)  # epoch shuffles
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        classifier = build_classifier(
            tuple(z_q.shape[1:]),
            None if context is None else tuple(context.shape[1:]),
            hidden=hidden,
            num_blocks=num_blocks,
            use_se=use_se,
            norm=norm,
            num_downsamples=num_downsamples,
        ).to(device)

    n = z_q.shape[0]
    train_index, val_index = split_pairs(n, val_fraction, seed)
    num_val = len(val_index)
    tensors = (z_q, z_p, context)
    val_tensors = tuple(None if t is None else t[val_index.to(t.device)] for t in tensors)

    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_index) / batch_size)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
        if lr_schedule == "cosine"
        else None
    )
    history = NCEHistory()
    best_state = copy.deepcopy(classifier.state_dict())
    epoch_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="NCE", unit="epoch")
    for epoch in epoch_iter:
        classifier.train()
        shuffled = train_index[torch.randperm(len(train_index), generator=generator)]
        total, count = 0.0, 0
        for start in range(0, len(shuffled), batch_size):
            index = shuffled[start : start + batch_size]
            loss = nce_loss(*_logits(classifier, *_batch(tensors, index, device)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(index)
            count += len(index)
        history.train_loss.append(total / count)
        if num_val > 0:
            val = evaluate_classifier(
                classifier, *val_tensors, batch_size=max(batch_size, 1024), device=device
            ).loss
            history.val_loss.append(val)
            selection_loss = val
        else:
            selection_loss = history.train_loss[-1]
        # without a held-out split the last epoch is kept (the train loss is not a fair selector)
        if num_val == 0 or selection_loss < history.best_val_loss:
            history.best_val_loss, history.best_epoch = selection_loss, epoch
            best_state = copy.deepcopy(classifier.state_dict())
        if progress:
            epoch_iter.set_postfix(train=history.train_loss[-1], val=selection_loss)
    classifier.load_state_dict(best_state)
    classifier.eval()
    return classifier, history
