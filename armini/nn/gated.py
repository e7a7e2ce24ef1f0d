"""The gated residual block of PixelCNN++ (Salimans, Karpathy, Chen & Kingma, 2017, sec. 2.5 and
the reference code), used by PixelCNN++ (lesson 05) and PixelSNAIL (lesson 06).

Both convolutions read the concatenated ELU, concat_elu(u) = ELU([u, -u]), which keeps the
information an ELU alone cuts off for negative inputs (and doubles the channels). The block adds
a gated update to its input; an optional second input `skip` (the other stream, a shortcut from
the up pass, or an attention read-out) enters through a 1x1 "network in network" convolution:

    c1 = conv(concat_elu(h)) [+ nin(concat_elu(skip))]
    c2 = conv(dropout(concat_elu(c1)))                       (B, 2F, H, W)
    h  = h + a * sigmoid(b),   (a, b) = split(c2)            the gate: sigmoid(b) decides how much of a passes

`conv` is the caller's choice of convolution (a factory `conv(in_channels, out_channels)`):
a shifted convolution (armini.nn.shifted) keeps the block causal, since every convolution
then reads only positions the stream may already depend on.

Legend: B batch, F feature channels, H, W height and width.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """elu of x and of -x, side by side, so no sign is cut off (the reference code's nonlinearity): (B, 2F, H, W)."""
    return F.elu(torch.cat([x, -x], dim=1))


class GatedResnet(nn.Module):
    """h + a * sigmoid(b), (a, b) = conv(dropout(concat_elu(conv(concat_elu(h)) + nin(concat_elu(skip)))))."""

    def __init__(self, filters: int, conv, skip_channels: int = 0, dropout: float = 0.0):
        super().__init__()
        self.conv_in = conv(2 * filters, filters)
        self.nin_skip = nn.Conv2d(2 * skip_channels, filters, 1) if skip_channels else None  # "nin": a 1x1 conv
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = conv(2 * filters, 2 * filters)

    def forward(self, h, skip=None):
        c1 = self.conv_in(concat_elu(h))  # (B, F, H, W)
        if skip is not None:
            c1 = c1 + self.nin_skip(concat_elu(skip))  # the other stream, a shortcut, or an attention read-out
        c2 = self.conv_out(self.dropout(concat_elu(c1)))  # (B, 2F, H, W)
        a, b = c2.chunk(2, dim=1)  # (B, F, H, W) each
        return h + a * torch.sigmoid(b)  # gating
