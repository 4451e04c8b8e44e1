"""The contract between stage-1 VAEs and stage-2 NCP code.

Every backbone (NVAE, the single-group MLP and conv VAEs) exposes its latent hierarchy the same way,
so that latent caching, the NCE classifiers, SIR / Langevin sampling and the NLL estimator are written
once. A latent *group* k has a prior ``p(z_k | z_<k)`` that the backbone hands out as a
``torch.distributions.Distribution`` whose ``log_prob`` returns one number per image (batch shape
``(B,)``, event shape = the group's latent shape), and a *context* ``c(z_<k)``: the decoder state that
parameterises that prior (``None`` where the prior has no input, e.g. group 0 or a single-group VAE).

The stages never ask which backbone they hold: what differs between backbones in training and evaluation
(the typed config and NVAE's dataset names, data-dependent initialisation, the KL term with NVAE's
balancing, NVAE's spectral regulariser, the scored dimensions of bits/dim, BatchNorm re-adjustment for
low-temperature samples) is a method here. tests/test_backbone_contract.py checks each on every backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor
from torch.distributions import Distribution

# A rule that picks z_k for one group during ancestral sampling: (group index, prior p(z_k|z_<k) with
# batch shape (B,), context c(z_<k) or None) -> z_k of shape (B, *group_shape). Plain sampling is
# ``lambda k, prior, context: prior.sample()``; SIR and Langevin dynamics are other such rules.
GroupSampler = Callable[[int, Distribution, Tensor | None], Tensor]


@dataclass
class VAEOutput:
    """What one encoder + decoder pass returns, per image and per latent group."""

    logits: Tensor | None  # decoder output parameters, (B, C_out, H, W) or (B, D); None: a walk stopped early
    log_q: Tensor  # (B,) log q(z | x), summed over groups (post-flow where flows are used)
    log_p: Tensor  # (B,) log p(z), summed over groups
    kl: Tensor  # (B, K) KL(q || p) per group (single-sample estimate where flows are used)
    latents: list[Tensor]  # z_k ~ q(z_k | z_<k, x), each (B, *group_shape)
    contexts: list[Tensor | None]  # c(z_<k) for each group, computed from the z_<k above
    priors: list[Distribution]  # p(z_k | z_<k) for each group, batch shape (B,)


@dataclass
class GroupDraw:
    """One group of a posterior pass: what a stage-2 classifier of that group learns from."""

    latent: Tensor  # z_k ~ q(z_k | z_<k, x), (B, *group_shape)
    context: Tensor | None  # c(z_<k), computed from z_<k drawn from q
    prior: Distribution  # p(z_k | z_<k), batch shape (B,)


@dataclass
class PriorWalk:
    """The result of ancestral sampling through the prior hierarchy."""

    logits: Tensor  # decoder output parameters for the sampled z
    latents: list[Tensor]  # the chosen z_k, each (B, *group_shape)
    contexts: list[Tensor | None]  # c(z_<k) each group was sampled with


class LatentVAE(Protocol):
    """A VAE whose latent hierarchy stage 2 can reweight (see the module docstring)."""

    num_groups: int
    config_class: type  # the frozen dataclass of its architecture (NVAEConfig, MLPVAEConfig, ...)

    def group_shapes(self) -> list[tuple[int, ...]]:
        """Shape of z_k (without the batch dimension) for each group, in ancestral order."""

    def context_shapes(self) -> list[tuple[int, ...] | None]:
        """Shape of c(z_<k) for each group, or None where the group has no context."""

    def forward(self, x: Tensor, noise_scale: float = 1.0) -> VAEOutput:
        """Encode x, sample every group from q (noise scaled by ``noise_scale``), decode."""

    def posterior_group(self, x: Tensor, group: int, noise_scale: float = 1.0) -> GroupDraw:
        """forward's z_group, context and prior, equal to forward's under the same seed; a backbone may
        stop its decoder after that group (NVAE does: a stream-mode NCE job needs nothing below it)."""

    def log_px(self, logits: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) per image, (B,), for decoder output ``logits``."""

    def walk_prior(self, num_images: int, choose: GroupSampler, temperature: float = 1.0) -> PriorWalk:
        """Ancestral sampling: for each group, build p(z_k|z_<k) (std scaled by temperature),
        let ``choose`` pick z_k, feed it to the decoder; decode at the end."""

    def sample(self, num_images: int, temperature: float = 1.0) -> Tensor:
        """Decoder output parameters for images drawn from the base prior."""

    def mean_image(self, logits: Tensor) -> Tensor:
        """The image the decoder output stands for (its mean), (B, C, H, W) in [0, 1]."""

    # ---- what the stages ask of a backbone instead of checking which one it is ------------------
    @classmethod
    def config_from_params(cls, section: dict[str, Any], data_name: str) -> Any:
        """The backbone's typed config from its params section (``vae.<arch>``) and ``data.name``
        (NVAE names its datasets itself; single-group VAEs ignore the name). Unknown keys: ValueError."""

    def initialise_from_data(self, images: Tensor) -> None:
        """Data-dependent initialisation from uint8 training images (N, C, H, W) before stage 1
        (the MLP VAE's input centring and output bias); a no-op elsewhere."""

    def kl_term(self, kl_per_group: Tensor, beta: float, balance: bool) -> Tensor:
        """The KL part of the training loss per image, (B,): ``beta`` times the (balanced) sum over
        groups of ``kl_per_group`` (B, K); ``balance`` asks for NVAE's KL balancing where it applies."""

    def regulariser(self) -> Tensor:
        """The backbone's own smoothness term, a scalar weighted by vae.train.weight_decay_norm
        (NVAE: spectral + BatchNorm; zero for the others)."""

    def scored_dims(self) -> int:
        """Values per image that log p(x|z) scores: the D of bits/dim."""

    def prepare_for_temperature(self, temperature: float, batch_size: int, num_passes: int = 100) -> None:
        """Get ready to sample at a reduced ``temperature`` for qualitative figures (NVAE re-adjusts its
        BatchNorm statistics over ``num_passes`` prior batches, in place: call it on a copy); a no-op where
        nothing depends on it."""


def sample_from_prior(k: int, prior: Distribution, context: Tensor | None) -> Tensor:
    """The base prior's GroupSampler: draw z_k from p(z_k | z_<k)."""
    return prior.sample()
