"""Table 9's q sample: z ~ q(z | x) of the held-out images it is given (tests/test_workflow.py's micro run checks
that `evaluate mmd` takes them from the test split), re-encoded with fresh noise where more
latents than images are asked for, one tensor per group."""

from __future__ import annotations

import torch
from test_nvae_contexts import TINY_ARGS

from ncp.data.datasets import ImageSet
from ncp.metrics.mmd import encode_latents
from ncp.models.nvae import NVAE

torch.set_num_threads(1)


@torch.no_grad()
def test_encoded_latents_are_posterior_draws_of_the_given_images():
    torch.manual_seed(0)
    model = NVAE.from_args(TINY_ARGS).eval()
    images = (torch.rand(5, 1, 32, 32) * 255).to(torch.uint8)
    held_out = ImageSet(images, None, "toy", "test", binary=False)
    latents = encode_latents(model, held_out, 12, batch_size=4, generator=torch.Generator().manual_seed(1))
    assert [tuple(z.shape) for z in latents] == [(12, *s) for s in model.group_shapes()]
    # 3 passes over 5 images, 12 of the 15 draws kept: every row is a draw for one of the 5 images, and
    # draws of the same image differ (fresh noise), so no two rows are equal
    rows = latents[0].flatten(1)
    assert torch.cdist(rows, rows).add(torch.eye(12) * 1e9).min() > 0
