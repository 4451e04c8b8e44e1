"""NVAE's normalising flows on the posterior (model.py CellAR / PairedCellAR, neural_ar_operations.py).

Each flow cell is a shift-only inverse autoregressive flow, z <- z - mu(z), where mu(z) at a pixel and
channel depends only on earlier pixels (raster order) and earlier channels, through masked convolutions.
A shift has unit Jacobian, so log q(z) is unchanged by the flow. ``--num_nf n`` adds n pairs per latent
group; the second cell of a pair mirrors the spatial order. The conditioning feature NVAE passes to the
cells is ignored by them, so it is not an argument here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncp.models.nvae.layers import WeightNormConv2d, initial_log_weight_norm, weight_normalize


def channel_mask(c_in: int, c_out: int, groups: int, zero_diag: bool) -> Tensor:
    """Which input channels each output channel may see at the centre pixel, (c_out, c_in // groups).

    Channels are ordered; with c_out = r * c_in, outputs r*i .. r*i + r - 1 belong to input channel i
    (with c_in = r * c_out, output i owns inputs r*i .. r*i + r - 1). An output sees the channels before
    its own, and its own only when ``zero_diag`` is False. Depthwise convs (groups = c_in) see their own
    channel unless ``zero_diag``.
    """
    if groups == c_in and groups > 1:
        return torch.zeros(c_out, 1) if zero_diag else torch.ones(c_out, 1)
    if groups != 1:
        raise ValueError(f"masked conv needs groups 1 or {c_in}, got {groups}")
    mask = torch.ones(c_out, c_in)
    if c_out >= c_in:
        ratio = c_out // c_in
        for i in range(c_in):
            first_hidden = i if zero_diag else i + 1
            mask[i * ratio : (i + 1) * ratio, first_hidden:] = 0
    else:
        ratio = c_in // c_out
        for i in range(c_out):
            first_hidden = i * ratio if zero_diag else (i + 1) * ratio
            mask[i, first_hidden:] = 0
    return mask


def autoregressive_mask(
    kernel_size: int, c_in: int, c_out: int, groups: int, zero_diag: bool, mirror: bool
) -> Tensor:
    """Kernel mask (c_out, c_in // groups, k, k): rows above the centre and pixels left of it are visible,
    the centre pixel follows ``channel_mask``; ``mirror`` flips it to the reversed raster order."""
    centre = (kernel_size - 1) // 2
    mask = torch.ones(c_out, c_in // groups, kernel_size, kernel_size)
    mask[:, :, centre:, :] = 0
    mask[:, :, centre, :centre] = 1
    mask[:, :, centre, centre] = channel_mask(c_in, c_out, groups, zero_diag)
    return torch.flip(mask, dims=[2, 3]) if mirror else mask


class MaskedConv2d(WeightNormConv2d):
    """NVAE's ARConv2d: a weight-normalised conv whose kernel is multiplied by an autoregressive mask
    (a fixed, non-persistent buffer: NVAE does not save it) before normalisation."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
        zero_diag: bool = False,
        mirror: bool = False,
    ) -> None:
        super().__init__(c_in, c_out, kernel_size, padding=padding, groups=groups, bias=bias)
        mask = autoregressive_mask(kernel_size, c_in, c_out, groups, zero_diag, mirror)
        self.register_buffer("mask", mask.to(self.weight.device), persistent=False)
        with torch.no_grad():  # NVAE initialises g from the norm of the masked kernel
            self.log_weight_norm.copy_(initial_log_weight_norm(self.weight * self.mask))

    def normalized_weight(self) -> Tensor:
        """Masked, then weight-normalised kernel."""
        return weight_normalize(self.weight * self.mask, self.log_weight_norm)


class ARInvertedResidual(nn.Module):
    """Masked 3x3 conv expanding C_z -> 6 C_z (strictly causal), ELU, masked depthwise 5x5, ELU."""

    def __init__(
        self, latent_channels: int, expansion: int = 6, kernel_size: int = 5, mirror: bool = False
    ) -> None:
        super().__init__()
        self.hidden_dim = latent_channels * expansion
        self.convz = nn.Sequential(
            MaskedConv2d(latent_channels, self.hidden_dim, 3, padding=1, zero_diag=True, mirror=mirror),
            nn.ELU(inplace=True),
            MaskedConv2d(
                self.hidden_dim,
                self.hidden_dim,
                kernel_size,
                padding=(kernel_size - 1) // 2,
                groups=self.hidden_dim,
                zero_diag=False,
                mirror=mirror,
            ),
            nn.ELU(inplace=True),
        )

    def forward(self, z: Tensor) -> Tensor:
        """(B, C_z, H, W) -> (B, 6 C_z, H, W) features that depend on earlier positions of z only."""
        return self.convz(z)


class MaskedELUConv(nn.Module):
    """ELU then a masked 1x1 conv (NVAE's AR ELUConv), its weight norm initialised 10x smaller so the
    flow starts near the identity."""

    def __init__(self, c_in: int, c_out: int, mirror: bool, weight_init_coeff: float = 0.1) -> None:
        super().__init__()
        self.conv_0 = MaskedConv2d(c_in, c_out, 1, bias=True, zero_diag=False, mirror=mirror)
        with torch.no_grad():
            self.conv_0.log_weight_norm.add_(math.log(weight_init_coeff))

    def forward(self, x: Tensor) -> Tensor:
        """conv(elu(x))."""
        return self.conv_0(F.elu(x))


class ARShiftCell(nn.Module):
    """One shift-only IAF step: z <- z - mu(z) with an autoregressive mu."""

    def __init__(self, latent_channels: int, mirror: bool) -> None:
        super().__init__()
        self.conv = ARInvertedResidual(latent_channels, mirror=mirror)
        self.mu = MaskedELUConv(self.conv.hidden_dim, latent_channels, mirror=mirror)

    def forward(self, z: Tensor) -> Tensor:
        """Shift z by its autoregressive mean; volume preserving (log|det| = 0)."""
        return z - self.mu(self.conv(z))


class PairedARCell(nn.Module):
    """Two shift cells, the second in mirrored (reversed raster) order (NVAE's PairedCellAR)."""

    def __init__(self, latent_channels: int) -> None:
        super().__init__()
        self.cell1 = ARShiftCell(latent_channels, mirror=False)
        self.cell2 = ARShiftCell(latent_channels, mirror=True)

    def forward(self, z: Tensor) -> Tensor:
        """(B, C_z, H, W) -> (B, C_z, H, W); log|det| = 0."""
        return self.cell2(self.cell1(z))
