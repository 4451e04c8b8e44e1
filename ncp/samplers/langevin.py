"""Langevin dynamics (LD) for one latent group, as a ``GroupSampler`` (paper Sec. 4.3).

The group's NCP factor is an energy-based model with E(z) = -log r_k(z, c) - log p(z_k | z_<k).
Starting from a base-prior sample, LD iterates z_{t+1} = z_t - (step/2) grad_z E(z_t) + sqrt(step) eps_t,
eps_t ~ N(0, I), for a fixed number of steps and without a Metropolis correction, as in the paper.
Hierarchies are sampled ancestrally, one group at a time, as the paper describes for SIR and LD.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from ncp.priors.ncp_prior import NCPPrior


class LangevinSampler:
    """GroupSampler: ``num_steps`` unadjusted Langevin steps on group k's energy from a prior draw."""

    def __init__(self, ncp_prior: NCPPrior, num_steps: int, step_size: float):
        if num_steps < 0 or not step_size > 0:
            raise ValueError(f"need num_steps >= 0 and step_size > 0, got {num_steps} and {step_size}")
        # eval mode: BatchNorm must use its running statistics, not the chains' batch statistics
        self.ncp_prior = ncp_prior.eval()
        self.num_steps = num_steps
        self.step_size = step_size

    def grad_energy(self, k: int, z: Tensor, context: Tensor | None, prior: Distribution) -> Tensor:
        """grad_z E(z), same shape as z; only z gets a gradient (the classifier stays untouched)."""
        with torch.enable_grad():  # walk_prior usually runs under no_grad
            z = z.detach().requires_grad_(True)
            energy = self.ncp_prior.energy(k, z, context, prior)  # (B,)
            # autograd.grad with inputs=[z] never accumulates into parameter .grad fields
            (grad,) = torch.autograd.grad(energy.sum(), [z])
        return grad

    def __call__(self, k: int, prior: Distribution, context: Tensor | None) -> Tensor:
        """z_k (B, *group_shape) after Langevin dynamics started from ``prior.sample()``."""
        z = prior.sample()
        if not self.ncp_prior.has_classifier(k):
            return z  # E = -log p: the prior sample is already exact
        if context is not None:
            context = context.detach()
        noise_scale = math.sqrt(self.step_size)
        for _ in range(self.num_steps):
            grad = self.grad_energy(k, z, context, prior)
            z = z - 0.5 * self.step_size * grad + noise_scale * torch.randn_like(z)
        return z.detach()
