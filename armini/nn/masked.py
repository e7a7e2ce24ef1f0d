"""Masked layers: how a network is made autoregressive by hiding part of its input.

PixelCNN (van den Oord et al., 2016, "Pixel Recurrent Neural Networks", section 3.4)
zeroes the taps of a convolution that would look at the current pixel or later
ones in raster order. For a 5x5 kernel:

    mask A (first layer)      mask B (every later layer)
    1 1 1 1 1                 1 1 1 1 1
    1 1 1 1 1                 1 1 1 1 1
    1 1 0 0 0                 1 1 1 0 0
    0 0 0 0 0                 0 0 0 0 0
    0 0 0 0 0                 0 0 0 0 0

Mask A hides the centre (the pixel being predicted must not see itself); mask B
keeps it, because after the first layer the centre feature only carries what the
pixel's context said, never the pixel itself.

With C > 1 image channels (R, G, B) the centre tap also carries a mask over
channel *groups*: feature channels are split into C contiguous groups, group g
"belongs to" image channel g, and at the centre group g may read input group h
only if h < g (mask A) or h <= g (mask B). The output head must use the same
contiguous layout (logits of channel c are the c-th block of K outputs), or a
sub-pixel would see a later one.

Masks are applied inside `forward` (weight * mask). Editing `weight.data` once
does not work: the optimiser writes non-zero values back at the next step.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def channel_groups(n_channels: int, groups: int) -> torch.Tensor:
    """Group index of each of n_channels feature channels split into `groups` contiguous blocks: (n,)."""
    if n_channels % groups != 0:
        raise ValueError(
            f"{n_channels} channels cannot be split into {groups} equal channel groups "
            f"(one per image channel): use a multiple of {groups}"
        )
    return torch.arange(n_channels) // (n_channels // groups)


def current_tap_mask(mask_type: str, in_channels: int, out_channels: int, groups: int) -> torch.Tensor:
    """Which (out, in) channel pairs may connect through the current-position tap: (out, in) float.

    Channels are split into `groups` contiguous groups (channel_groups);
    out group g may read in group h iff h < g ("A") or h <= g ("B")."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    g_out = channel_groups(out_channels, groups)[:, None]  # (out, 1)
    g_in = channel_groups(in_channels, groups)[None, :]  # (1, in)
    return ((g_in < g_out) if mask_type == "A" else (g_in <= g_out)).float()  # (out, in)


def causal_mask(
    kernel_size: int,
    mask_type: str = "B",
    in_channels: int = 1,
    out_channels: int = 1,
    groups: int = 1,
) -> torch.Tensor:
    """The PixelCNN mask (out_channels, in_channels, k, k) for a k x k convolution.

    Spatial part: taps above the centre row and left of the centre are visible.
    Centre tap: visible from channel group h to group g iff h < g (type A) or h <= g (type B);
    with groups=1 that is "hidden" for A and "visible" for B.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd so the kernel has a centre, got {kernel_size}")
    k, c = kernel_size, kernel_size // 2
    mask = torch.zeros(out_channels, in_channels, k, k)
    mask[:, :, :c, :] = 1  # every row above the centre
    mask[:, :, c, :c] = 1  # left of the centre in the centre row
    mask[:, :, c, c] = current_tap_mask(mask_type, in_channels, out_channels, groups)  # (out, in)
    return mask


class MaskedConv2d(nn.Conv2d):
    """A same-padded k x k convolution whose weight is multiplied by a fixed mask in forward."""

    def __init__(self, in_channels, out_channels, kernel_size, mask_type="B", groups_of_channels=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(kernel_size, mask_type, in_channels, out_channels, groups_of_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)  # (B, out, H, W)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_type={self.mask_type}"


class MaskedRowConv(nn.Conv2d):
    """A same-padded 1 x k convolution along the row whose taps are the centre row of a k x k
    causal mask: the pixel's left neighbours, and the pixel itself through the channel-group
    mask (mask B: groups <= g; mask A: groups < g). The Row LSTM's input-to-state K^is.

        mask B, k = 3, one group:   1 1 0        (left neighbour, the pixel, not the right one)
    """

    def __init__(self, in_channels: int, out_channels: int, k: int, groups_of_channels: int = 1, mask_type: str = "B"):
        super().__init__(in_channels, out_channels, (1, k), padding=(0, k // 2))
        self.mask_type = mask_type
        row = causal_mask(k, mask_type, in_channels, out_channels, groups_of_channels)[:, :, k // 2 : k // 2 + 1]
        self.register_buffer("mask", row)  # (out, in, 1, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)  # (B, out, H, W)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_type={self.mask_type}"


def sequence_mask(length: int, strict: bool = True) -> torch.Tensor:
    """The autoregressive mask of a sequence: M[d, j] = 1 iff j < d (strict) or j <= d.

    Row d lists what the prediction for position d may read. Strict for a model
    whose inputs are the values themselves (FVSBN, NADE); non-strict once the
    inputs are shifted right by one (a transformer with a start token)."""
    d = torch.arange(length)
    return (d[None, :] < d[:, None]).float() if strict else (d[None, :] <= d[:, None]).float()  # (T, T)


class MaskedLinear(nn.Linear):
    """A linear layer y = (W * M) x + b with a fixed 0/1 mask M (out_features, in_features).

    Used by the fully visible sigmoid belief net: output d may read input j only if j comes before d."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask must have shape ({out_features}, {in_features}), got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)
