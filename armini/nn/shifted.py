"""Shifted convolutions: causal convolutions built from padding instead of big masks.

PixelCNN++ (Salimans et al., 2017) and Gated PixelCNN (van den Oord et al., 2016,
"Conditional Image Generation with PixelCNN Decoders") keep a pixel's context
causal by *where the kernel sits*: the input is padded only above (and left),
so an output never reads rows below it (or columns right of it).

    down_shift(x)   row i of the result is row i-1 of x (row 0 is zeros)
    right_shift(x)  column j of the result is column j-1 of x (column 0 is zeros)

DownShiftedConv2d, kernel (k_h, k_w) with k_w odd, pads k_h-1 rows on top and
(k_w-1)/2 columns left and right. Output (i, j) reads rows i-k_h+1..i and
columns j-(k_w-1)/2..j+(k_w-1)/2. For the default (2, 3), `o` the output:

    row i-1:  #  #  #
    row i  :  #  o  #        (reads the current row, *including the pixel to the right*)

On its own that is not causal. It is used on a stack that never sees the
current row: a down-shifted input (`DownShiftedConv2d(...)(down_shift(x))`,
or `down_shift` of its output), so the "vertical stack" at row i only depends
on rows < i. Every later layer keeps that property (it reads rows <= i of a
stack that depends on rows < i).

DownRightShiftedConv2d, kernel (k_h, k_w), pads k_h-1 rows on top and k_w-1
columns on the left. Output (i, j) reads rows i-k_h+1..i and columns j-k_w+1..j.
For the default (2, 2) and for Gated PixelCNN's horizontal (1, 3):

    (2, 2):  row i-1:  #  #          (1, 3):  row i:  #  #  o
             row i  :  #  o

`o` (the current position) is read too. `mask_type` hides it:
    None  plain convolution: o is visible (use on a right-shifted input, or
          on features that already depend only on earlier pixels)
    "A"   o is hidden (the first layer on the image: a pixel must not see itself);
          with groups_of_channels=C > 1, feature group g sees image channels
          c < g at o (R -> G -> B within a pixel), as in armini.nn.masked
    "B"   o is visible, but group g only reads groups <= g there (later layers)
With one group, "A" equals a right-shifted input and "B" equals None.

DownShiftedConvTranspose2d and DownRightShiftedConvTranspose2d up-sample by 2 (PixelCNN++'s
down pass): a coarse position (i, j) writes only fine positions at or after (2i, 2j) in the
same sense as the matching convolution, so the streams stay causal across resolutions.

Every convolution here (the transposed ones aside) stores its padding as `self.pad = (left, right, top, bottom)`
(the order of F.pad), so the fast sampler (armini.sampling_cache) can evaluate it
at a few positions without recomputing the whole image.

Legend: B batch, F feature channels, H, W height and width.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .masked import current_tap_mask


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift every column down by one row, zeros entering at the top: (B, F, H, W) -> (B, F, H, W)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift every row right by one column, zeros entering on the left: (B, F, H, W) -> (B, F, H, W)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def _pair(kernel_size) -> tuple:
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    kernel_size = tuple(int(k) for k in kernel_size)
    if len(kernel_size) != 2 or min(kernel_size) < 1:
        raise ValueError(f"kernel_size must be (k_h, k_w) with positive sizes, got {kernel_size!r}")
    return kernel_size


class DownShiftedConv2d(nn.Conv2d):
    """Convolution whose output (i, j) reads rows i-k_h+1..i, columns j-(k_w-1)/2..j+(k_w-1)/2 (see module doc).

    Output size equals input size (for stride 1)."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 3), stride=1, bias=True):
        kh, kw = _pair(kernel_size)
        if kw % 2 != 1:
            raise ValueError(f"DownShiftedConv2d needs an odd kernel width to centre it, got {(kh, kw)}")
        super().__init__(in_channels, out_channels, (kh, kw), stride=stride, padding=0, bias=bias)
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)  # (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))  # (B, out, H, W)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pad(l,r,t,b)={self.pad}"


class DownRightShiftedConv2d(nn.Conv2d):
    """Convolution whose output (i, j) reads rows i-k_h+1..i, columns j-k_w+1..j (see module doc).

    mask_type None / "A" / "B" decides what the current position (i, j) contributes;
    groups_of_channels = C splits the channels into C groups for R -> G -> B ordering."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 2), mask_type=None, groups_of_channels=1,
                 stride=1, bias=True):
        kh, kw = _pair(kernel_size)
        if mask_type not in (None, "A", "B"):
            raise ValueError(f"mask_type must be 'A', 'B' or None, got {mask_type!r}")
        super().__init__(in_channels, out_channels, (kh, kw), stride=stride, padding=0, bias=bias)
        self.pad = (kw - 1, 0, kh - 1, 0)  # (left, right, top, bottom)
        self.mask_type = mask_type
        if mask_type is None:
            self.mask = None
        else:
            mask = torch.ones(out_channels, in_channels, kh, kw)
            mask[:, :, -1, -1] = current_tap_mask(mask_type, in_channels, out_channels, groups_of_channels)
            self.register_buffer("mask", mask)

    def masked_weight(self) -> torch.Tensor:
        """The weight actually used: weight * mask, applied in every forward (never edited in place)."""
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pad), self.masked_weight(), self.bias)  # (B, out, H, W)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pad(l,r,t,b)={self.pad}, mask_type={self.mask_type}"


class DownShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 up-sampling that keeps DownShiftedConv2d's causality (PixelCNN++'s u stream):
    coarse (i, j) writes fine rows 2i, 2i+1 (never above) and columns 2j-1..2j+1:
    (B, F, h, w) -> (B, F, 2h, 2w)."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 3)):
        super().__init__(in_channels, out_channels, kernel_size, stride=2)

    def forward(self, x):
        h, w = x.shape[-2:]
        left = (self.kernel_size[1] - 1) // 2
        return super().forward(x)[:, :, : 2 * h, left : left + 2 * w]  # (B, F, 2h, 2w)


class DownRightShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 up-sampling that keeps DownRightShiftedConv2d's causality (PixelCNN++'s ul stream):
    coarse (i, j) writes fine (2i..2i+1, 2j..2j+1), all at or after (2i, 2j) in raster order:
    (B, F, h, w) -> (B, F, 2h, 2w)."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 2)):
        super().__init__(in_channels, out_channels, kernel_size, stride=2)

    def forward(self, x):
        h, w = x.shape[-2:]
        return super().forward(x)[:, :, : 2 * h, : 2 * w]  # (B, F, 2h, 2w)
