"""The noise contrastive prior p_NCP(z) = (1/Z) prod_k r_k(z_k, c(z_<k)) p(z_k | z_<k).

It holds one trained classifier per latent group (logit = log r_k) and leaves the base prior to the
frozen VAE: every method takes the group's prior p(z_k|z_<k) or context as an argument, so the same
object serves SIR, Langevin dynamics and the log Z estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.distributions import Distribution

from ncp.priors.classifiers import build_classifier

CHECKPOINT_FORMAT_VERSION = 1


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

    def to_checkpoint(self) -> dict[str, Any]:
        """Classifier build arguments and weights, enough to rebuild with ``from_checkpoint``."""
        build_args = []
        for k in range(self.num_groups):
            classifier = self.classifier(k)
            if classifier is not None and not hasattr(classifier, "build_args"):
                raise ValueError(f"classifier of group {k} was not made by build_classifier")
            build_args.append(None if classifier is None else classifier.build_args)
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "build_args": build_args,
            "state_dict": self.state_dict(),
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> NCPPrior:
        """Rebuild the prior saved by ``to_checkpoint`` (loaded strictly, frozen)."""
        version = checkpoint.get("format_version")
        if version != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"NCP checkpoint format {version} is not the supported {CHECKPOINT_FORMAT_VERSION}"
            )
        classifiers = [
            None if args is None else build_classifier(**args) for args in checkpoint["build_args"]
        ]
        prior = cls(classifiers)
        prior.load_state_dict(checkpoint["state_dict"], strict=True)
        return prior.freeze()
