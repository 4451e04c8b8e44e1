"""Langevin dynamics (LD) for one latent group, as a ``GroupSampler`` (paper Sec. 4.3).

The group's NCP factor is an energy-based model with E(z) = -log r_k(z, c) - log p(z_k | z_<k).
Starting from a base-prior sample, LD iterates, without a Metropolis correction as in the paper,

    z_{t+1} = z_t - (h/2) grad_z E(z_t) + sqrt(h) eps_t,   eps_t ~ N(0, I),

for a fixed number of steps. Hierarchies are sampled ancestrally, one group at a time, as the paper
describes for SIR and LD.

The step h. On a Gaussian prior of standard deviation sigma the unadjusted update is stable only for
h < 4 sigma^2 and its stationary variance is sigma^2 / (1 - h / (4 sigma^2)); NVAE's prior standard
deviations reach about 0.017, so one step in z for every group (the paper's form) either diverges on
the narrow groups or barely moves the wide ones. ``step_scaling="prior_variance"`` (the default)
therefore takes h = step_size * sigma^2 per latent, sigma the std of p(z_k | z_<k) at that latent:
the same as running the paper's update with step ``step_size`` in NVAE's eps-space
(z = mu + sigma eps, as VAEBM does), where every group has unit scale. ``step_scaling="fixed"``
keeps the paper's single step h = step_size in z.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from ncp.priors.ncp_prior import NCPPrior

STEP_SCALINGS = ("prior_variance", "fixed")


class LangevinSampler:
    """GroupSampler: ``num_steps`` unadjusted Langevin steps on group k's energy from a prior draw."""

    def __init__(
        self, ncp_prior: NCPPrior, num_steps: int, step_size: float, step_scaling: str = "prior_variance"
    ):
        if num_steps < 0 or not step_size > 0:
            raise ValueError(f"need num_steps >= 0 and step_size > 0, got {num_steps} and {step_size}")
        if step_scaling not in STEP_SCALINGS:
            raise ValueError(f"step_scaling must be one of {', '.join(STEP_SCALINGS)}, got {step_scaling!r}")
        # eval mode: BatchNorm must use its running statistics, not the chains' batch statistics
        self.ncp_prior = ncp_prior.eval()
        self.num_steps = num_steps
        self.step_size = step_size
        self.step_scaling = step_scaling

    def grad_energy(self, k: int, z: Tensor, context: Tensor | None, prior: Distribution) -> Tensor:
        """grad_z E(z), same shape as z; only z gets a gradient (the classifier stays untouched)."""
        with torch.enable_grad():  # walk_prior usually runs under no_grad
            z = z.detach().requires_grad_(True)
            energy = self.ncp_prior.energy(k, z, context, prior)  # (B,)
            # autograd.grad with inputs=[z] never accumulates into parameter .grad fields
            (grad,) = torch.autograd.grad(energy.sum(), [z])
        return grad

    def step_sizes(self, prior: Distribution) -> Tensor | float:
        """h per latent: step_size * Var p(z_k | z_<k) (shape of z), or the one fixed step_size."""
        if self.step_scaling == "fixed":
            return self.step_size
        return self.step_size * prior.stddev.detach() ** 2

    def __call__(self, k: int, prior: Distribution, context: Tensor | None) -> Tensor:
        """z_k (B, *group_shape) after Langevin dynamics started from ``prior.sample()``."""
        z = prior.sample()
        if not self.ncp_prior.has_classifier(k):
            return z  # E = -log p: the prior sample is already exact
        if context is not None:
            context = context.detach()
        step = self.step_sizes(prior)
        noise_scale = step.sqrt() if isinstance(step, Tensor) else math.sqrt(step)
        for step_index in range(1, self.num_steps + 1):
            grad = self.grad_energy(k, z, context, prior)
            z = z - 0.5 * step * grad + noise_scale * torch.randn_like(z)
            # checked every step: a diverged chain never recovers, and the next gradient would fail
            # inside the prior's log_prob (or write NaN pixels where arguments are not validated)
            if not torch.isfinite(z).all():
                self._refuse(k, z, step_index)
        return z.detach()

    def _refuse(self, k: int, z: Tensor, step_index: int) -> None:
        """Raise the one-line error for non-finite chains of group k."""
        bad = int((~torch.isfinite(z)).flatten(1).any(1).sum())
        hint = " or set sample.ld.step_scaling: prior_variance" if self.step_scaling == "fixed" else ""
        raise FloatingPointError(
            f"Langevin dynamics: group {k} has non-finite latents in {bad} of {len(z)} chains at step "
            f"{step_index} of {self.num_steps} (step_size {self.step_size}, {self.step_scaling}); "
            f"lower sample.ld.step_size{hint}"
        )
