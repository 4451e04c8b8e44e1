"""NVAE's residual cells and the operations inside them (neural_operations.py, utils.get_arch_cells).

A cell is ``skip(x) + 0.1 * SE(ops(x))``. Its type decides the stride: 'normal_*' and combiners keep the
resolution, 'down_*' halve it (channels x2), 'up_*' double it (channels /2). ``arch_instance`` picks
which operations each cell type runs; NVAE's default 'res_mbconv' uses two BN-Swish-Conv3x3 ops in the
encoder and one inverted residual (expand x6, depthwise 5x5) in the decoder.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncp.models.nvae.config import CHANNEL_MULT
from ncp.models.nvae.layers import (
    BatchNormSwish,
    PlainConv2d,
    SqueezeExcitation,
    WeightNormConv2d,
    WrappedBatchNorm,
)

UPSAMPLE = -1  # NVAE encodes "upsample x2" as stride -1


def stride_of(cell_type: str) -> int:
    """1 for normal cells, 2 for down cells, UPSAMPLE for up cells."""
    if cell_type.startswith("normal"):
        return 1
    if cell_type.startswith("down"):
        return 2
    if cell_type.startswith("up"):
        return UPSAMPLE
    raise ValueError(f"unknown NVAE cell type {cell_type!r}")


# ---- operations -----------------------------------------------------------------------------------
class ActConv(nn.Module):
    """Normalise/activate, optionally upsample (nearest), then a weight-normalised conv (NVAE's
    BNSwishConv 'res_bnswish', BNELUConv 'res_bnelu' and ELUConv 'res_elu')."""

    def __init__(self, kind: str, c_in: int, c_out: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.kind = kind
        self.upsample = stride == UPSAMPLE
        if kind == "bnswish":
            self.bn_act = BatchNormSwish(c_in)
        elif kind == "bnelu":
            self.bn = WrappedBatchNorm(c_in)
        # NVAE's 'res_elu' also re-initialises the conv from the first batch (data-dependent init);
        # that only changes the starting point of training and is not reproduced here.
        self.conv_0 = WeightNormConv2d(
            c_in, c_out, 3, stride=abs(stride), padding=dilation, dilation=dilation, bias=True
        )

    def forward(self, x: Tensor) -> Tensor:
        """act(x) -> [upsample] -> conv."""
        if self.kind == "bnswish":
            out = self.bn_act(x)
        elif self.kind == "bnelu":
            out = F.elu(self.bn(x))
        else:
            out = F.elu(x)
        if self.upsample:
            out = F.interpolate(out, scale_factor=2, mode="nearest")
        return self.conv_0(out)


class ConvBNSwish(nn.Module):
    """Unnormalised conv -> BatchNorm -> Swish (held as ``conv``, a Sequential, like NVAE)."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Sequential(
            PlainConv2d(c_in, c_out, kernel_size, stride, padding, dilation=dilation, groups=groups),
            BatchNormSwish(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        """conv -> BN -> Swish."""
        return self.conv(x)


class InvertedResidual(nn.Module):
    """MobileNetV2-style op ('mconv_e{ex}k{k}g{g}'): [upsample] BN -> 1x1 expand x ex + BN-Swish ->
    k x k grouped (depthwise for g=0) conv + BN-Swish -> 1x1 project -> BN. No residual inside."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, expansion: int, kernel_size: int, groups: int
    ) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = [nn.UpsamplingNearest2d(scale_factor=2)] if stride == UPSAMPLE else []
        layers += [
            WrappedBatchNorm(c_in),
            ConvBNSwish(c_in, hidden, kernel_size=1),
            ConvBNSwish(
                hidden, hidden, kernel_size, stride=abs(stride), groups=hidden if groups == 0 else groups
            ),
            PlainConv2d(hidden, c_out, 1),
            WrappedBatchNorm(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the expand / depthwise / project stack."""
        return self.conv(x)


_MCONV = re.compile(r"^mconv_e(\d+)k(\d+)g(\d+)$")


def build_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """One operation of a cell, by NVAE's name (neural_operations.OPS)."""
    simple: dict[str, Callable[[], nn.Module]] = {
        "res_elu": lambda: ActConv("elu", c_in, c_out, stride),
        "res_bnelu": lambda: ActConv("bnelu", c_in, c_out, stride),
        "res_bnswish": lambda: ActConv("bnswish", c_in, c_out, stride),
        "res_bnswish5": lambda: ActConv("bnswish", c_in, c_out, stride, dilation=2),  # 3x3, dilation 2
    }
    if name in simple:
        return simple[name]()
    match = _MCONV.match(name)
    if match:
        expansion, kernel_size, groups = (int(v) for v in match.groups())
        return InvertedResidual(c_in, c_out, stride, expansion, kernel_size, groups)
    raise ValueError(f"unknown NVAE operation {name!r}")


# ---- skip connections -----------------------------------------------------------------------------
class FactorizedReduce(nn.Module):
    """Stride-2 skip: Swish, then four stride-2 1x1 convs on the input shifted by (0|1, 0|1) pixels,
    concatenated along channels (c_out/4 each, the last one taking the remainder)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        quarter = c_out // 4
        self.conv_1 = WeightNormConv2d(c_in, quarter, 1, stride=2, bias=True)
        self.conv_2 = WeightNormConv2d(c_in, quarter, 1, stride=2, bias=True)
        self.conv_3 = WeightNormConv2d(c_in, quarter, 1, stride=2, bias=True)
        self.conv_4 = WeightNormConv2d(c_in, c_out - 3 * quarter, 1, stride=2, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, c_out, H/2, W/2)."""
        out = F.silu(x)
        parts = [
            self.conv_1(out),
            self.conv_2(out[:, :, 1:, 1:]),
            self.conv_3(out[:, :, :, 1:]),
            self.conv_4(out[:, :, 1:, :]),
        ]
        return torch.cat(parts, dim=1)


class BilinearUpsample(nn.Module):
    """x2 bilinear upsampling with aligned corners (the first half of NVAE's upsampling skip)."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def build_skip(channels: int, stride: int) -> nn.Module:
    """The skip branch of a cell: identity, FactorizedReduce (x2 channels) or upsample + 1x1 conv (/2)."""
    if stride == 1:
        return nn.Identity()
    if stride == 2:
        return FactorizedReduce(channels, CHANNEL_MULT * channels)
    return nn.Sequential(BilinearUpsample(), WeightNormConv2d(channels, channels // CHANNEL_MULT, 1))


# ---- cells ----------------------------------------------------------------------------------------
class Cell(nn.Module):
    """NVAE's residual cell: skip(x) + 0.1 * SE(op_n(...op_1(x))); the first op carries the stride."""

    def __init__(self, c_in: int, c_out: int, cell_type: str, op_names: list[str], use_se: bool) -> None:
        super().__init__()
        self.cell_type = cell_type
        stride = stride_of(cell_type)
        self.skip = build_skip(c_in, stride)
        self._ops = nn.ModuleList(
            build_op(name, c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
            for i, name in enumerate(op_names)
        )
        if use_se:
            self.se = SqueezeExcitation(c_out)

    def forward(self, x: Tensor) -> Tensor:
        """Residual update; the 0.1 keeps every cell close to its skip path at initialisation."""
        out = x
        for op in self._ops:
            out = op(out)
        if hasattr(self, "se"):
            out = self.se(out)
        return self.skip(x) + 0.1 * out


class EncCombinerCell(nn.Module):
    """Posterior input for a group: encoder feature + 1x1 conv of the decoder state."""

    def __init__(self, enc_channels: int, dec_channels: int) -> None:
        super().__init__()
        self.conv = WeightNormConv2d(dec_channels, enc_channels, 1, bias=True)

    def forward(self, enc_feature: Tensor, dec_state: Tensor) -> Tensor:
        """(B, C_enc, H, W), (B, C_dec, H, W) -> (B, C_enc, H, W)."""
        return enc_feature + self.conv(dec_state)


class DecCombinerCell(nn.Module):
    """Feeds a latent group into the decoder: 1x1 conv of concat[state, z] back to the state's width."""

    def __init__(self, dec_channels: int, latent_channels: int) -> None:
        super().__init__()
        self.conv = WeightNormConv2d(dec_channels + latent_channels, dec_channels, 1, bias=True)

    def forward(self, dec_state: Tensor, z: Tensor) -> Tensor:
        """(B, C_dec, H, W), (B, C_z, H, W) -> (B, C_dec, H, W)."""
        return self.conv(torch.cat([dec_state, z], dim=1))
