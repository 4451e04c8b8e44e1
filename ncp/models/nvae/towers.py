"""NVAE's towers, built from its config in NVAE's registration order (so that state_dict() lists every entry
where NVAE's does): pre-process cells, the encoder tower with its combiner slots, the per-group posterior
and prior heads and flows, the decoder tower, and the post-process cells. See model.py for how they run."""

from __future__ import annotations

from torch import nn

from ncp.models.nvae.cells import Cell, DecCombinerCell, EncCombinerCell
from ncp.models.nvae.config import CHANNEL_MULT, NVAEConfig
from ncp.models.nvae.flows import PairedARCell
from ncp.models.nvae.layers import WeightNormConv2d


def _cell(c: NVAEConfig, arch: dict, cell_type: str, c_in: float, c_out: float) -> Cell:
    return Cell(int(c_in), int(c_out), cell_type, arch[cell_type], c.use_se)


def build_pre_process(c: NVAEConfig, arch: dict, mult: float) -> tuple[nn.ModuleList, float]:
    """Blocks of (cells - 1) normal cells and one down cell, channels x2 per block."""
    cells = nn.ModuleList()
    for _ in range(c.num_preprocess_blocks):
        for i in range(c.num_preprocess_cells):
            width = c.num_channels_enc * mult
            if i == c.num_preprocess_cells - 1:
                cells.append(_cell(c, arch, "down_pre", width, CHANNEL_MULT * int(width)))
                mult *= CHANNEL_MULT
            else:
                cells.append(_cell(c, arch, "normal_pre", width, width))
    return cells, mult


def build_encoder_tower(c: NVAEConfig, arch: dict, mult: float) -> nn.ModuleList:
    """High resolution first: per group, normal cells then a combiner slot (none after the last group)."""
    cells = nn.ModuleList()
    for scale, num_groups in enumerate(c.groups_per_scale):
        for group in range(num_groups):
            for _ in range(c.num_cell_per_cond_enc):
                cells.append(
                    _cell(c, arch, "normal_enc", c.num_channels_enc * mult, c.num_channels_enc * mult)
                )
            if not (scale == c.num_latent_scales - 1 and group == num_groups - 1):
                cells.append(EncCombinerCell(int(c.num_channels_enc * mult), int(c.num_channels_dec * mult)))
        if scale < c.num_latent_scales - 1:
            width = int(c.num_channels_enc * mult)
            cells.append(_cell(c, arch, "down_enc", width, CHANNEL_MULT * width))
            mult *= CHANNEL_MULT
    return cells


def build_samplers(c: NVAEConfig) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList]:
    """Per group (decoder order): posterior head (3x3 conv), flows, and prior head (all but group 0)."""
    mult = float(c.top_channel_mult)
    enc_sampler, dec_sampler, nf_cells = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
    for scale, num_groups in enumerate(c.groups_per_decoder_scale):
        for group in range(num_groups):
            enc_sampler.append(
                WeightNormConv2d(
                    int(c.num_channels_enc * mult), 2 * c.num_latent_per_group, 3, padding=1, bias=True
                )
            )
            for _ in range(c.num_nf):
                nf_cells.append(PairedARCell(c.num_latent_per_group))
            if not (scale == 0 and group == 0):  # group 0's prior is a fixed Normal
                dec_sampler.append(
                    nn.Sequential(
                        nn.ELU(),
                        WeightNormConv2d(
                            int(c.num_channels_dec * mult), 2 * c.num_latent_per_group, 1, bias=True
                        ),
                    )
                )
        mult /= CHANNEL_MULT
    return enc_sampler, dec_sampler, nf_cells


def build_decoder_tower(c: NVAEConfig, arch: dict) -> nn.ModuleList:
    """Coarse first: per group, normal cells (not before group 0) then a combiner; up cells between scales."""
    cells, mult = nn.ModuleList(), float(c.top_channel_mult)
    for scale, num_groups in enumerate(c.groups_per_decoder_scale):
        width = int(c.num_channels_dec * mult)
        for group in range(num_groups):
            if not (scale == 0 and group == 0):
                for _ in range(c.num_cell_per_cond_dec):
                    cells.append(_cell(c, arch, "normal_dec", width, width))
            cells.append(DecCombinerCell(width, c.num_latent_per_group))
        if scale < c.num_latent_scales - 1:
            cells.append(_cell(c, arch, "up_dec", width, width / CHANNEL_MULT))
            mult /= CHANNEL_MULT
    return cells


def build_post_process(c: NVAEConfig, arch: dict, mult: float) -> tuple[nn.ModuleList, float]:
    """Blocks of one up cell (channels /2) and (cells - 1) normal cells."""
    cells = nn.ModuleList()
    for _ in range(c.num_postprocess_blocks):
        for i in range(c.num_postprocess_cells):
            width = int(c.num_channels_dec * mult)
            if i == 0:
                cells.append(_cell(c, arch, "up_post", width, width / CHANNEL_MULT))
                mult /= CHANNEL_MULT
            else:
                cells.append(_cell(c, arch, "normal_post", width, width))
    return cells, mult
