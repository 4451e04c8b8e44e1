"""Stage 2a (`ncp cache-latents`): the training data of the per-group NCE classifiers.

One pass (or ``passes``) over the training images with the frozen VAE stores, for every group k:
  z_q ~ q(z_k | z_<k, x)          (the aggregate posterior's sample, label 1),
  z_p ~ p(z_k | z_<k)             (the prior's sample with the same z_<k, label 0),
  c   = c(z_<k)                   (the decoder state that parameterises p(z_k | z_<k); absent for k = 0).
Each group is written to its own file so the K classifier jobs depend only on their own data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from ncp.config import CacheConfig
from ncp.data import iterate_batches, load_image_set
from ncp.models.registry import load_vae_checkpoint
from ncp.runtime import atomic_save, pick_device, seed_everything


@torch.no_grad()
def collect_group_samples(model, batches, dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    """Run the frozen VAE over ``batches``; return per group {'z_q', 'z_p', 'context'?} on the CPU."""
    per_group: list[dict[str, list[torch.Tensor]]] = [
        dict(z_q=[], z_p=[], context=[]) for _ in range(model.num_groups)
    ]
    for x in batches:
        output = model(x, noise_scale=1.0)
        for k in range(model.num_groups):
            per_group[k]["z_q"].append(output.latents[k].to("cpu", dtype))
            per_group[k]["z_p"].append(output.priors[k].sample().to("cpu", dtype))
            if output.contexts[k] is not None:
                per_group[k]["context"].append(output.contexts[k].to("cpu", dtype))
    return [{name: torch.cat(parts) for name, parts in group.items() if parts} for group in per_group]


def run(
    cache: CacheConfig, seed: int, device: str, checkpoint: Path, train_data: Path, out_files: list[Path]
) -> None:
    """Encode the training images and write one latent file per group (``out_files[k]``)."""
    torch_device = pick_device(device)
    generator = seed_everything(seed + 1)
    model = load_vae_checkpoint(checkpoint, torch_device)
    if len(out_files) != model.num_groups:
        raise ValueError(
            f"the VAE has {model.num_groups} latent groups but {len(out_files)} output files were asked for"
        )
    train_set = load_image_set(train_data)
    if cache.num_images is not None:
        train_set = train_set.subset(cache.num_images)

    def batches():
        for _ in range(cache.passes):
            for x in iterate_batches(train_set, cache.batch_size, shuffle=False, generator=generator):
                yield x.to(torch_device)

    total = cache.passes * -(-len(train_set.images) // cache.batch_size)
    groups = collect_group_samples(
        model, tqdm(batches(), total=total, desc="cache-latents"), getattr(torch, cache.dtype)
    )
    for k, (group, path) in enumerate(zip(groups, out_files)):
        atomic_save({"group": k, **group}, path)
