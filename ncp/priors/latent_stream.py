"""`cache.mode: stream`: each NCE job draws its group's (z_q, z_p, context) pairs from the frozen VAE.

For datasets whose cache would not fit on disk (CelebA-64 with 30 groups: ~5.6 MB of float16 contexts
per image, ~0.9 TB for the training set), the pairs of one batch are made on the fly: the training
images of the batch go through the VAE and only group k's rows are kept. Every epoch is then a fresh
pass over the training images (new binarisation and posterior noise), memory is one batch, and the
price is one VAE pass per NCE step in each of the K jobs. That pass stops after group k (the contract's
``posterior_group``): the decoder cells and posterior cells below it are not needed to know z_<=k, and
on NVAE they are most of the work for most groups (the finer scales carry more groups and cost more).
The batch of (seed, epoch, b) uses its own seeded RNG, so the order and the draws are reproducible and a
resumed job sees the same pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from ncp.data import load_image_set, prepare_batch
from ncp.models.registry import load_vae_checkpoint
from ncp.priors.latent_cache import Batch, _epoch_generator


class StreamedPairs:
    """Group ``group``'s pairs drawn by the VAE of ``checkpoint`` from the images of ``train_data`` (the
    first ``num_images`` of them, when given)."""

    def __init__(
        self,
        checkpoint: str | Path,
        train_data: str | Path,
        group: int,
        fingerprint: str,
        device: torch.device,
        num_images: int | None = None,
    ):
        self.device = torch.device(device)
        self.model = load_vae_checkpoint(checkpoint, self.device)
        if not 0 <= group < self.model.num_groups:
            raise ValueError(f"group {group} out of range for a VAE with {self.model.num_groups} groups")
        self.train_set = load_image_set(train_data)
        if num_images is not None:  # the cache index's count: `cache.num_images` of the params
            self.train_set = self.train_set.subset(num_images)
        self.group, self.fingerprint = group, fingerprint
        self.num_images = self.num_pairs = len(self.train_set.images)  # one pair per image per epoch
        self.group_shape = tuple(self.model.group_shapes()[group])  # the model contract, not a test draw
        context_shape = self.model.context_shapes()[group]
        self.context_shape = None if context_shape is None else tuple(context_shape)

    @torch.no_grad()
    def _draw(self, images: Tensor, generator: torch.Generator) -> Batch:
        x = prepare_batch(self.train_set.images[images], self.train_set.binary, generator).to(self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the VAE's sampling, seeded per batch
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            draw = self.model.posterior_group(x, self.group, noise_scale=1.0)  # stops below the group
            z_p = draw.prior.sample()
        return draw.latent, z_p, draw.context

    def batches(
        self, wanted: Tensor, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, start=(0, 0)
    ) -> Iterator[tuple[int, int, Batch]]:
        """(0, batch, (z_q, z_p, context)) for the images ``wanted`` marks, drawn afresh each epoch."""
        images = torch.nonzero(wanted, as_tuple=True)[0]
        if shuffle:
            images = images[torch.randperm(len(images), generator=_epoch_generator(seed, epoch))]
        for b in range(start[1], math.ceil(len(images) / batch_size)):
            generator = _epoch_generator(seed, epoch, b)
            yield 0, b, self._draw(images[b * batch_size : (b + 1) * batch_size], generator)
