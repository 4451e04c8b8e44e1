"""The noise contrastive prior p_NCP(z) = (1/Z) prod_k r_k(z_k, c(z_<k)) p(z_k | z_<k).

It holds one trained classifier per latent group (logit = log r_k) and leaves the base prior to the
frozen VAE: every method takes the group's prior p(z_k|z_<k) or context as an argument, so the same
object serves SIR, Langevin dynamics and the log Z estimate. Its classifiers are saved and loaded, one file
per group, by `ncp.priors.checkpoints` (the only classifier file format).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.distributions import Distribution


class NCPPrior(nn.Module):
    """Per-group density ratios r_k; a group whose classifier is None keeps its base prior (r = 1)."""

    def __init__(self, classifiers: Sequence[nn.Module | None]):
        super().__init__()
        self.num_groups = len(classifiers)
        # ModuleDict keyed by group index: nn.ModuleList cannot hold the None of groups left alone
        self.classifiers = nn.ModuleDict({str(k): c for k, c in enumerate(classifiers) if c is not None})

    def has_classifier(self, k: int) -> bool:
        """Whether group k is reweighted (False: r_k = 1)."""
        return str(k) in self.classifiers

    def classifier(self, k: int) -> nn.Module | None:
        """The classifier of group k, or None."""
        self._check_group(k)
        return self.classifiers[str(k)] if self.has_classifier(k) else None

    def _check_group(self, k: int) -> None:
        if not 0 <= k < self.num_groups:
            raise ValueError(f"group index {k} out of range for {self.num_groups} groups")

    def freeze(self) -> NCPPrior:
        """Eval mode and no parameter gradients: the prior is fixed once stage 2 is trained."""
        self.eval()
        self.requires_grad_(False)
        return self

    def log_r(self, k: int, z: Tensor, context: Tensor | None = None) -> Tensor:
        """log r_k(z_k, c(z_<k)), (N,), for z (N, *group_shape).

        ``context`` has N rows, or B rows with N = M * B and z laid out proposal-major (M, B, ...):
        then each context row serves its M proposals (broadcast where the classifier supports it).
        """
        self._check_group(k)
        if not self.has_classifier(k):
            return z.new_zeros(z.shape[0])
        classifier = self.classifiers[str(k)]
        if context is not None and context.shape[0] != z.shape[0]:
            n, b = z.shape[0], context.shape[0]
            if n % b != 0:
                raise ValueError(f"context batch {b} does not divide the latent batch {n}")
            if not getattr(classifier, "broadcasts_context", False):
                context = context.expand(n // b, *context.shape).reshape(n, *context.shape[1:])
        return classifier(z, context)

    def sum_log_r(self, latents: Sequence[Tensor], contexts: Sequence[Tensor | None]) -> Tensor:
        """sum_k log r_k over all groups, (B,): log of p_NCP(z) * Z / p(z)."""
        if len(latents) != self.num_groups or len(contexts) != self.num_groups:
            raise ValueError(
                f"expected {self.num_groups} latent groups and contexts, "
                f"got {len(latents)} and {len(contexts)}"
            )
        total = latents[0].new_zeros(latents[0].shape[0])
        for k, (z, c) in enumerate(zip(latents, contexts)):
            total = total + self.log_r(k, z, c)
        return total

    def energy(self, k: int, z: Tensor, context: Tensor | None, prior: Distribution) -> Tensor:
        """E_k(z) = -log r_k(z, c) - log p(z_k | z_<k), (B,): group k's unnormalised -log density."""
        return -self.log_r(k, z, context) - prior.log_prob(z)
