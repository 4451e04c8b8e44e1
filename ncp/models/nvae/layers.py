"""NVAE's basic layers: weight-normalised convolutions, BatchNorm(+Swish) and squeeze-and-excitation.

Module and parameter names follow NVAE's neural_operations.py so that official checkpoints load with
``strict=True``; where NVAE's names come from an implementation detail (a SyncBatchNorm wrapper, a
parameter alias) the class below says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.05  # NVAE's running-statistics momentum in every BatchNorm


def weight_normalize(weight: Tensor, log_weight_norm: Tensor) -> Tensor:
    """w = exp(log_g) * v / (||v|| + 1e-5), the norm taken per output channel (NVAE's normalize_weight_jit)."""
    norm = torch.sqrt(torch.sum(weight * weight, dim=[1, 2, 3])).view(-1, 1, 1, 1)  # (C_out, 1, 1, 1)
    return torch.exp(log_weight_norm) * weight / (norm + 1e-5)


def initial_log_weight_norm(weight: Tensor) -> Tensor:
    """log(||v|| + 0.01) per output channel, (C_out, 1, 1, 1): NVAE's initial log g."""
    weight = weight.detach()
    return torch.log(torch.sqrt(torch.sum(weight * weight, dim=[1, 2, 3])).view(-1, 1, 1, 1) + 1e-2)


class WeightNormConv2d(nn.Conv2d):
    """NVAE's Conv2D with weight normalisation: trainable ``log_weight_norm`` = log g per output channel,
    initialised to log(||v|| + 0.01) so the initial kernel is (almost) the default-initialised one."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.log_weight_norm = nn.Parameter(initial_log_weight_norm(self.weight))

    def normalized_weight(self) -> Tensor:
        """The kernel the convolution applies (also the matrix whose spectral norm NVAE regularises)."""
        return weight_normalize(self.weight, self.log_weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve with the weight-normalised kernel."""
        return F.conv2d(
            x, self.normalized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class PlainConv2d(nn.Conv2d):
    """NVAE's Conv2D with ``weight_norm=False`` (inside inverted residuals).

    NVAE stores the raw kernel a second time under ``<name>.weight_normalized`` (an accidental parameter
    alias), so official state dicts carry that key. We write it on save and drop it on load, so state dicts
    match NVAE's in both directions while the module holds only ``weight``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.register_state_dict_post_hook(_add_weight_alias)
        self.register_load_state_dict_pre_hook(_drop_weight_alias)

    def normalized_weight(self) -> Tensor:
        """The kernel (no normalisation); listed for the spectral regulariser as NVAE does."""
        return self.weight

    def forward(self, x: Tensor) -> Tensor:
        """Convolve; depthwise kernels on the CPU take ``depthwise_conv2d``'s faster weight gradient."""
        if self.groups == self.in_channels == self.out_channels and x.device.type == "cpu" and x.dim() == 4:
            return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return super().forward(x)


# Wide layers on small maps take their depthwise weight gradient tap by tap on the CPU (measured below).
SMALL_MAP_PIXELS = 64
WIDE_LAYER_CHANNELS = 512


def _weight_grad_by_taps(x: Tensor, grad_out: Tensor, kernel: tuple[int, int], padding) -> Tensor:
    """grad_w[c, 0, i, j] = sum over (n, h, w) of x_padded[n, c, h + i, w + j] * grad_out[n, c, h, w]
    (stride 1, dilation 1): one multiply and one channel-wise sum per kernel tap.

    Why by hand: oneDNN's depthwise weight gradient is slow on wide layers with small maps whatever the
    layout. Inside a training step of NVAE's paper MNIST model (5x5 layers, batch 16, this 2-core CPU):
    1536 x 4 x 4 took 15.8 ms in oneDNN against 2.0 ms tap by tap, 1536 x 8 x 8 25.9 against 10.4 ms,
    768 x 8 x 8 5.3 against 4.5 ms; but 192 x 8 x 8 0.9 against 1.6 ms, and 384 x 16 x 16 9.9 against
    14 ms (alone), hence ``WIDE_LAYER_CHANNELS`` and ``SMALL_MAP_PIXELS``. Both tensors are taken in
    channels-last so that every tap reads contiguous rows of channels.
    """
    channels, (out_h, out_w) = x.shape[1], grad_out.shape[2:]
    pad_h, pad_w = padding
    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h)).contiguous(memory_format=torch.channels_last)
    padded = padded.permute(0, 2, 3, 1)  # N H W C, contiguous
    grad = grad_out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    product = torch.empty(grad.shape, dtype=x.dtype, device=x.device)
    grad_w = torch.empty(kernel[0], kernel[1], channels, dtype=x.dtype, device=x.device)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            torch.mul(padded[:, i : i + out_h, j : j + out_w], grad, out=product)
            torch.sum(product.view(-1, channels), 0, out=grad_w[i, j])
    return grad_w.permute(2, 0, 1).unsqueeze(1).contiguous()


class _DepthwiseConv2d(torch.autograd.Function):
    """A depthwise convolution whose weight gradient is computed on channels-last copies, or tap by tap
    on small maps (``_weight_grad_by_taps``).

    On the CPU, oneDNN's weight gradient of a depthwise convolution in NCHW layout runs at about
    0.2 GFLOP/s: measured on NVAE's 5x5 depthwise layers (batch 16) it took 90-130 ms per layer, half
    of a whole training step, against 25-55 ms on the same tensors in channels-last layout (and 1-2 ms
    for the forward pass). Forward and input gradient stay in NCHW, where they are fast; the results
    are the same convolution, to float32 rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conv
        groups = weight.shape[0]
        args = (list(stride), list(padding), list(dilation), False, [0, 0], groups)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, *args, [True, False, False]
            )[0]
        by_taps = (  # see _weight_grad_by_taps
            x.device.type == "cpu"
            and stride == dilation == (1, 1)
            and grad_out.shape[2] * grad_out.shape[3] <= SMALL_MAP_PIXELS
            and x.shape[1] >= WIDE_LAYER_CHANNELS
        )
        if ctx.needs_input_grad[1] and by_taps:
            grad_w = _weight_grad_by_taps(x, grad_out, tuple(weight.shape[2:]), padding)
        elif ctx.needs_input_grad[1]:
            channels_last = torch.channels_last
            grad_w = torch.ops.aten.convolution_backward(
                grad_out.contiguous(memory_format=channels_last),
                x.contiguous(memory_format=channels_last),
                weight,
                None,
                *args,
                [False, True, False],
            )[1].contiguous()
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def depthwise_conv2d(x: Tensor, weight: Tensor, bias, stride, padding, dilation) -> Tensor:
    """F.conv2d with groups = channels, with a faster weight gradient on the CPU (see _DepthwiseConv2d)."""
    return _DepthwiseConv2d.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation))


def _add_weight_alias(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    state_dict[prefix + "weight_normalized"] = state_dict[prefix + "weight"]


def _drop_weight_alias(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    # NVAE's forward overwrites the alias with `weight` before use, so the stored copy carries no information.
    state_dict.pop(prefix + "weight_normalized", None)


class BatchNormSwish(nn.BatchNorm2d):
    """BatchNorm followed by Swish (NVAE's fused SyncBatchNormSwish, which on one process is exactly this)."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise, then x * sigmoid(x)."""
        return F.silu(super().forward(x))


class WrappedBatchNorm(nn.Module):
    """A BatchNorm2d held as child ``bn``: NVAE wraps its SyncBatchNorm this way, which puts an extra
    ``.bn`` in the parameter names (e.g. ``_ops.0.conv.0.bn.weight``)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        """Batch-normalise x."""
        return self.bn(x)


class SqueezeExcitation(nn.Module):
    """Channel gating: global average pool -> Linear(C, max(C/16, 4)) -> ReLU -> Linear -> sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 16, 4)
        self.se = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of x by a gate computed from its spatial mean."""
        gate = self.se(torch.mean(x, dim=[2, 3]))  # (B, C)
        return x * gate.view(gate.size(0), -1, 1, 1)  # (B, C, H, W)
