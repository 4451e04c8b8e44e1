"""Noise contrastive estimation of one group's density ratio r_k = q(z_k|z_<k) / p(z_k|z_<k).

The loss is the paper's Eq. (4): -E_q[log D] - E_p[log(1 - D)], q samples labelled 1, p samples 0,
each p sample paired with the context of the q sample drawn with the same z_<k. Its minimum L*
relates to the Jensen-Shannon divergence by JSD(p || q) = log 2 - L*/2 (Goodfellow et al., 2014),
so L* = 2 log 2 ~ 1.386 means p = q.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits

from ncp.priors.classifiers import NormKind, build_classifier
from ncp.priors.latent_cache import Batch, PairSource, TensorPairs, split_images
from ncp.runtime import atomic_save, load_torch

RESUME_FILE = "resume.pt"  # in the job's work folder; removed by the caller once the outputs exist
MAX_ROLLBACKS = 3  # non-finite losses survived (each halves the learning rate) before giving up
LR_BACKOFF = 0.5


@dataclass
class NCEHistory:
    """Per-epoch losses of one classifier's training (Eq. 4, a sum of two means)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1  # epoch (0-based) whose weights were kept
    best_val_loss: float = math.inf  # its loss on the val images that chose it (train loss if none held out)
    test: dict | None = None  # the kept weights' NCEDiagnostics on the test images, which chose nothing
    rollbacks: int = 0  # non-finite losses rolled back


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


def _logits(classifier: nn.Module, z_q: Tensor, z_p: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """Logits on q and p rows from one pass, so BatchNorm (if used) sees both classes together."""
    z = torch.cat([z_q, z_p])  # (2B, ...)
    c = None if context is None else torch.cat([context, context])  # (2B, ...)
    logits = classifier(z, c)
    return logits[: len(z_q)], logits[len(z_q) :]


def _to(batch: Batch, device: torch.device) -> Batch:
    """A batch on ``device`` as float32 (caches may be float16)."""
    return tuple(  # type: ignore[return-value]
        None if t is None else t.to(device=device, dtype=torch.float32, non_blocking=True) for t in batch
    )


def _mask(num_images: int, images: Tensor) -> Tensor:
    wanted = torch.zeros(num_images, dtype=torch.bool)
    wanted[images] = True
    return wanted


@torch.no_grad()
def evaluate_pairs(
    classifier: nn.Module,
    source: PairSource,
    images: Tensor | None = None,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> NCEDiagnostics:
    """Loss, JSD estimate, mean log r on q and p samples, and accuracy on the pairs of ``images`` (all if None)."""
    device = torch.device(device)
    classifier.eval()
    wanted = (
        torch.ones(source.num_images, dtype=torch.bool)
        if images is None
        else _mask(source.num_images, images)
    )
    sums = torch.zeros(5, dtype=torch.float64)  # bce_q, bce_p, log_r_q, log_r_p, correct
    n = 0
    for _, _, batch in source.batches(wanted, batch_size, seed=0, epoch=0, shuffle=False):
        logits_q, logits_p = _logits(classifier, *_to(batch, device))
        ones, zeros = torch.ones_like(logits_q), torch.zeros_like(logits_p)
        terms = [
            binary_cross_entropy_with_logits(logits_q, ones, reduction="sum"),
            binary_cross_entropy_with_logits(logits_p, zeros, reduction="sum"),
            logits_q.sum(),
            logits_p.sum(),
            (logits_q > 0).sum() + (logits_p <= 0).sum(),
        ]
        sums += torch.stack(terms).double().cpu()
        n += len(logits_q)
    if n == 0:
        raise ValueError("no sample pairs to evaluate the classifier on")
    bce_q, bce_p, log_r_q, log_r_p, correct = (sums / n).tolist()
    loss = bce_q + bce_p
    return NCEDiagnostics(loss, jensen_shannon_estimate(loss), log_r_q, log_r_p, correct / 2.0)


def evaluate_classifier(
    classifier: nn.Module,
    z_q: Tensor,
    z_p: Tensor,
    context: Tensor | None = None,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> NCEDiagnostics:
    """``evaluate_pairs`` on pairs held in memory."""
    return evaluate_pairs(classifier, TensorPairs(z_q, z_p, context), batch_size=batch_size, device=device)


class NCEDivergedError(RuntimeError):
    """The NCE loss stayed non-finite after the allowed rollbacks."""


class _NonFiniteLoss(Exception):
    def __init__(self, step: int, loss: float):
        super().__init__(step, loss)
        self.step, self.loss = step, loss


def _clone(state: dict) -> dict:
    return copy.deepcopy(state)


def train_on_pairs(
    source: PairSource,
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
    test_fraction: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    group: int = 0,
    work_dir: Path | None = None,
    checkpoint_every: int = 200,
) -> tuple[nn.Module, NCEHistory]:
    """Train D_k by Eq. (4) with AdamW on the pairs of ``source``; resumable, with NaN rollback.

    The images (not the pairs) are split by ``split_images``: the kept weights are those of the epoch
    with the lowest loss on the ``val`` images, and ``history.test`` is their loss on the ``test``
    images, which chose nothing. With ``work_dir``, the full training state (weights, optimiser, step,
    epoch, data position, RNG) is written there every ``checkpoint_every`` steps and at each epoch's
    end, and a call with the same arguments resumes from it; on the CPU the result equals an
    uninterrupted run bit for bit, since the data order is a function of (seed, epoch) alone. A NaN or
    inf loss rolls back to the last saved state with half the learning rate, at most ``MAX_ROLLBACKS``
    times, then raises ``NCEDivergedError`` naming the group and step.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; expected 'cosine' or 'constant'")
    device = torch.device(device)
    train_images, val_images, test_images = split_images(source.num_images, val_fraction, test_fraction, seed)
    train_mask = _mask(source.num_images, train_images)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        classifier = build_classifier(
            source.group_shape,
            source.context_shape,
            hidden=hidden,
            num_blocks=num_blocks,
            use_se=use_se,
            norm=norm,
            num_downsamples=num_downsamples,
        ).to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    # the schedule's length: pairs per image times training images (exact for a cache of whole passes)
    pairs_per_image = source.num_pairs / source.num_images
    total_steps = epochs * max(1, math.ceil(len(train_images) * pairs_per_image / batch_size))
    run_key = json.dumps(
        [classifier.build_args, epochs, batch_size, lr, weight_decay, lr_schedule, val_fraction,
         test_fraction, seed, group, source.num_pairs, source.fingerprint],
        default=str,
    )  # fmt: skip

    def snapshot() -> dict:
        return {
            "run_key": run_key, "classifier": classifier.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "epoch": epoch, "position": position, "epoch_sums": epoch_sums,
            "history": asdict(history), "best_state": best_state, "lr_scale": lr_scale,
            "rollbacks": rollbacks, "torch_rng": torch.get_rng_state(),
        }  # fmt: skip

    def restore(state: dict) -> None:
        nonlocal step, epoch, position, epoch_sums, history, best_state, lr_scale, rollbacks
        classifier.load_state_dict(state["classifier"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position = state["step"], state["epoch"], tuple(state["position"])
        epoch_sums, history = list(state["epoch_sums"]), NCEHistory(**state["history"])
        best_state, lr_scale, rollbacks = state["best_state"], state["lr_scale"], state["rollbacks"]
        torch.set_rng_state(state["torch_rng"])

    def checkpoint() -> None:
        nonlocal last_good
        last_good = _clone(snapshot())
        if work_dir is not None:
            atomic_save(last_good, Path(work_dir) / RESUME_FILE)

    step, epoch, position, epoch_sums = 0, 0, (0, 0), [0.0, 0]
    history, best_state, lr_scale, rollbacks = NCEHistory(), _clone(classifier.state_dict()), 1.0, 0
    last_good: dict = {}
    resume_path = None if work_dir is None else Path(work_dir) / RESUME_FILE
    if resume_path is not None and resume_path.is_file():
        saved = load_torch(resume_path)
        if saved.get("run_key") == run_key:
            restore(saved)
            print(
                f"train-nce group {group}: resuming at epoch {epoch}, step {step} from {resume_path}",
                flush=True,
            )
        else:
            print(f"train-nce group {group}: ignoring {resume_path} (other params or data)", flush=True)
    checkpoint()

    def run_epochs() -> None:
        nonlocal step, epoch, position, epoch_sums, best_state
        while epoch < epochs:
            classifier.train()
            for w, b, batch in source.batches(
                train_mask, batch_size, seed=seed + 1, epoch=epoch, start=position
            ):
                factor = (
                    0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0)))
                    if lr_schedule == "cosine"
                    else 1.0
                )
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr * lr_scale * factor
                loss = nce_loss(*_logits(classifier, *_to(batch, device)))
                value = loss.item()
                if not math.isfinite(value):
                    raise _NonFiniteLoss(step, value)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step, position = step + 1, (w, b + 1)
                epoch_sums = [epoch_sums[0] + value * len(batch[0]), epoch_sums[1] + len(batch[0])]
                if step % checkpoint_every == 0:
                    checkpoint()
            history.train_loss.append(epoch_sums[0] / max(epoch_sums[1], 1))
            if len(val_images):
                selection = evaluate_pairs(
                    classifier, source, val_images, batch_size=max(batch_size, 1024), device=device
                ).loss
                history.val_loss.append(selection)
            # without held-out images the last epoch is kept (the train loss is not a fair selector)
            if not len(val_images) or selection < history.best_val_loss:
                history.best_val_loss = selection if len(val_images) else history.train_loss[-1]
                history.best_epoch = epoch
                best_state = _clone(classifier.state_dict())
            epoch, position, epoch_sums = epoch + 1, (0, 0), [0.0, 0]
            checkpoint()

    while True:
        try:
            run_epochs()
            break
        except _NonFiniteLoss as fault:
            if rollbacks >= MAX_ROLLBACKS:
                raise NCEDivergedError(
                    f"train-nce group {group}: the NCE loss is {fault.loss} at step {fault.step} after "
                    f"{rollbacks} rollbacks with the learning rate halved each time; lower nce.lr or check "
                    f"group {group}'s cached latents for NaN/inf"
                ) from None
            restore(_clone(last_good))  # a copy: optimiser state tensors are updated in place
            rollbacks, lr_scale = rollbacks + 1, lr_scale * LR_BACKOFF
            print(
                f"train-nce group {group}: non-finite loss {fault.loss} at step {fault.step}; rolled back to "
                f"step {step}, learning rate x{lr_scale:g}",
                flush=True,
            )
            checkpoint()
    history.rollbacks = rollbacks
    classifier.load_state_dict(best_state)
    classifier.eval()
    if len(test_images):
        on_test = evaluate_pairs(
            classifier, source, test_images, batch_size=max(batch_size, 1024), device=device
        )
        history.test = asdict(on_test)
    return classifier, history


def train_classifier(
    z_q: Tensor, z_p: Tensor, context: Tensor | None = None, *, image: Tensor | None = None, **kwargs
) -> tuple[nn.Module, NCEHistory]:
    """``train_on_pairs`` on pairs z_q[i], z_p[i] (both with context[i]) held in memory.

    ``z_q`` ~ q(z_k|z_<k), ``z_p`` ~ p(z_k|z_<k), each (N, *group_shape); ``context`` (N,
    *context_shape) or None; ``image`` (N,) the image of each pair (default: each pair its own image).
    """
    return train_on_pairs(TensorPairs(z_q, z_p, context, image), **kwargs)
