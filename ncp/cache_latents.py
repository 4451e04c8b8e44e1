"""Stage 2a (`ncp cache-latents`): the training data of the per-group NCE classifiers.

One pass (or ``passes``) over the training images with the frozen VAE stores, for every group k:
  z_q ~ q(z_k | z_<k, x)          (the aggregate posterior's sample, label 1),
  z_p ~ p(z_k | z_<k)             (the prior's sample with the same z_<k, label 0),
  c   = c(z_<k)                   (the decoder state that parameterises p(z_k | z_<k); absent for k = 0),
and the index of the image each row came from (so NCE can hold out whole images). Each group goes to
its own folder of fixed-size shards (`ncp.priors.latent_cache`), written as the batches come: memory
holds one shard per group whatever the number of pairs, and the K classifier jobs each read only their
own folder. With ``cache.mode: stream`` each folder holds only its index (group, image count, VAE
fingerprint): each NCE job then draws its pairs from the VAE itself (`ncp.priors.latent_stream`), from
the first ``num_images`` training images the index names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from ncp.config import CacheConfig
from ncp.data import iterate_batches, load_image_set
from ncp.models.registry import load_vae_checkpoint
from ncp.priors.checkpoints import vae_fingerprint
from ncp.priors.latent_cache import GroupCacheWriter
from ncp.runtime import pick_device, seed_everything


@torch.no_grad()
def write_group_caches(model, batches, writers: list[GroupCacheWriter]) -> None:
    """Run the frozen VAE over ``batches`` of (images, image indices); append each group's rows."""
    for x, image in batches:
        output = model(x, noise_scale=1.0)
        for k, writer in enumerate(writers):
            writer.append(output.latents[k], output.priors[k].sample(), output.contexts[k], image)


def run(
    cache: CacheConfig, seed: int, device: str, checkpoint: Path, train_data: Path, out_dirs: list[Path]
) -> None:
    """Encode the training images and write one shard folder per group (``out_dirs[k]``)."""
    torch_device = pick_device(device)
    generator = seed_everything(seed + 1)
    model = load_vae_checkpoint(checkpoint, torch_device)
    if len(out_dirs) != model.num_groups:
        raise ValueError(
            f"the VAE has {model.num_groups} latent groups but {len(out_dirs)} output folders were asked for"
        )
    train_set = load_image_set(train_data)
    if cache.num_images is not None:  # the first images; in stream mode the NCE jobs draw from these only
        train_set = train_set.subset(cache.num_images)
    num_images = len(train_set.images)

    def batches():
        for _ in range(cache.passes):
            start = 0
            for x in iterate_batches(train_set, cache.batch_size, shuffle=False, generator=generator):
                yield x.to(torch_device), torch.arange(start, start + len(x))
                start += len(x)

    fingerprint = vae_fingerprint(checkpoint)
    dtype = getattr(torch, cache.dtype)
    writers = [
        GroupCacheWriter(path, k, cache.shard_mb, dtype, fingerprint, cache.mode)
        for k, path in enumerate(out_dirs)
    ]
    if cache.mode == "shards":
        total = cache.passes * -(-num_images // cache.batch_size)
        write_group_caches(model, tqdm(batches(), total=total, desc="cache-latents"), writers)
    for writer in writers:
        writer.close(num_images)
