"""NVAE's training-time terms: spectral and BatchNorm regularisation, and KL balancing.

NVAE's loss per batch (train.py) is mean_B[-log p(x|z) + beta * sum_k gamma_k KL_k] +
lambda * (spectral + batchnorm), with gamma_k the balancing coefficients while beta < 1 and 1 after.
The model applies them (``NVAE.kl_term``, ``NVAE.regulariser``); the warm-up schedule of beta is the
training stage's (``ncp.train_vae.kl_weight``), shared by every backbone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SpectralNormEstimator:
    """Sum of the largest singular values of many kernels, by batched power iteration (NVAE's
    spectral_norm_parallel). Kernels (C_out, C_in, k, k) are viewed as C_out x (C_in k k) matrices and
    grouped by that shape; the singular-vector estimates u, v persist between calls, so a few iterations
    per training step suffice (ten times as many on the first call for a shape)."""

    def __init__(self, num_power_iter: int = 4) -> None:
        self.num_power_iter = num_power_iter
        self.left: dict[tuple[int, ...], Tensor] = {}  # shape -> u, (num_matrices, rows)
        self.right: dict[tuple[int, ...], Tensor] = {}  # shape -> v, (num_matrices, cols)

    def __call__(self, kernels: Iterable[Tensor]) -> Tensor:
        """sum_i u_i^T W_i v_i over all kernels (differentiable in W; u, v are constants)."""
        by_shape: dict[tuple[int, ...], list[Tensor]] = {}
        for kernel in kernels:
            matrix = kernel.reshape(kernel.size(0), -1)  # (C_out, C_in * k * k)
            by_shape.setdefault(tuple(matrix.shape), []).append(matrix)
        loss: Tensor | None = None
        for shape, matrices in by_shape.items():
            weights = torch.stack(matrices, dim=0)  # (N, rows, cols)
            u, v = self._power_iteration(shape, weights.detach())
            sigma = torch.matmul(u.unsqueeze(1), torch.matmul(weights, v.unsqueeze(2)))  # (N, 1, 1)
            loss = sigma.sum() if loss is None else loss + sigma.sum()
        if loss is None:
            raise ValueError("no kernels to regularise")
        return loss

    @torch.no_grad()
    def _power_iteration(self, shape: tuple[int, ...], weights: Tensor) -> tuple[Tensor, Tensor]:
        num_iter = self.num_power_iter
        stale = shape in self.left and self.left[shape].size(0) != weights.size(0)
        if shape not in self.left or stale:
            count, rows, cols = weights.shape
            self.left[shape] = F.normalize(
                torch.randn(count, rows, device=weights.device, dtype=weights.dtype), dim=1, eps=1e-3
            )
            self.right[shape] = F.normalize(
                torch.randn(count, cols, device=weights.device, dtype=weights.dtype), dim=1, eps=1e-3
            )
            num_iter = 10 * self.num_power_iter
        u = self.left[shape].to(device=weights.device, dtype=weights.dtype)
        v = self.right[shape].to(device=weights.device, dtype=weights.dtype)
        for _ in range(num_iter):
            v = F.normalize(torch.matmul(u.unsqueeze(1), weights).squeeze(1), dim=1, eps=1e-3)  # (N, cols)
            u = F.normalize(torch.matmul(weights, v.unsqueeze(2)).squeeze(2), dim=1, eps=1e-3)  # (N, rows)
        self.left[shape], self.right[shape] = u, v
        return u, v


def batchnorm_loss(model: nn.Module) -> Tensor:
    """Sum over affine BatchNorm layers of max |gamma| (NVAE's batchnorm_loss)."""
    terms = [
        m.weight.abs().max()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
    ]
    if not terms:
        raise ValueError("the model has no affine BatchNorm layers")
    return torch.stack(terms).sum()


def kl_balance_alpha(groups_per_decoder_scale: Sequence[int], scheme: str = "square") -> Tensor:
    """Per-group prior weights alpha_k of NVAE's KL balancing (utils.kl_balancer_coeff), coarsest scale
    first; 'square' gives 4^i / (groups in scale i) for decoder scale i, all schemes scaled to min 1."""
    factors = {
        "equal": lambda i: 1.0,
        "linear": lambda i: 2.0**i,
        "sqrt": lambda i: math.sqrt(2.0**i),
        "square": lambda i: 4.0**i,
    }
    if scheme not in factors:
        raise ValueError(f"unknown KL balancing scheme {scheme!r}; expected one of {sorted(factors)}")
    values = []
    for scale, count in enumerate(groups_per_decoder_scale):
        per_group = factors[scheme](scale) / (count if scheme == "square" else 1)
        values += [per_group] * count
    alpha = torch.tensor(values)
    return alpha / alpha.min()


def kl_balance_coefficients(kl_per_group: Tensor, alpha: Tensor) -> Tensor:
    """NVAE's KL balancing weights gamma_k (K,), detached: proportional to (batch mean |KL_k| + 0.01) / alpha_k,
    normalised to mean 1, so groups that carry more KL are pushed harder (prevents posterior collapse)."""
    if kl_per_group.dim() != 2 or kl_per_group.size(1) != alpha.numel():
        raise ValueError(f"kl_per_group must be (B, {alpha.numel()}), got {tuple(kl_per_group.shape)}")
    average = kl_per_group.detach().abs().mean(dim=0) + 0.01  # (K,)
    gamma = average / alpha.to(average)
    return gamma / gamma.mean()


def balanced_kl(kl_per_group: Tensor, alpha: Tensor, beta: float) -> Tensor:
    """Per-image KL term before the beta weight, (B,): sum_k gamma_k KL_k while beta < 1 (warm-up),
    the plain sum afterwards, as NVAE's kl_balancer."""
    if beta < 1.0:
        return (kl_per_group * kl_balance_coefficients(kl_per_group, alpha)).sum(dim=1)
    return kl_per_group.sum(dim=1)
