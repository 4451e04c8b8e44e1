"""The tiny NVAE the model tests share: 2 scales x 2 groups of 4 channels (8x8 and 16x16 on 1x32x32
images), 8 channels, one cell everywhere; the shape of the shared `mnist_tiny` reference fixture."""

TINY_NVAE_ARGS = {
    "num_latent_scales": 2,
    "num_groups_per_scale": 2,
    "num_latent_per_group": 4,
    "num_channels_enc": 8,
    "num_channels_dec": 8,
    "num_preprocess_blocks": 1,
    "num_preprocess_cells": 1,
    "num_postprocess_blocks": 1,
    "num_postprocess_cells": 1,
    "num_cell_per_cond_enc": 1,
    "num_cell_per_cond_dec": 1,
    "use_se": True,
    "res_dist": True,
    "num_nf": 0,
}
