"""The K-way softmax output of the convolutional models: C*K channels -> one distribution per sub-pixel.

PixelCNN, PixelRNN, Gated PixelCNN and PixelSNAIL end in a convolution with C*K output
channels at every pixel. Its channels are laid out *channel-major*: block c (channels
c*K .. c*K + K-1) holds the K logits of image channel c,

    (B, C*K, H, W) -> view (B, C, K, H, W) -> permute (B, C, H, W, K)

This layout is not a free choice: the masked convolutions split their output channels into C
contiguous groups (armini.nn.masked.channel_groups), group c seeing the current pixel's channels
< c only. With C*K outputs, group c is exactly block c, so channel c's logits see R..c-1 and
never c itself. Read them as (B, H, W, K, C), say, and a sub-pixel's logits would be drawn from
several groups, some of which see it: the model would cheat.

Legend: B batch, C image channels, H, W height and width, K levels, F feature channels.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .masked import MaskedConv2d


def softmax_head(in_channels: int, hidden: int, C: int, K: int) -> nn.Sequential:
    """relu -> 1x1 mask B -> relu -> 1x1 mask B to C*K logits (PixelCNN, sec. 3.4), in C channel groups:
    (B, F, H, W) -> (B, C*K, H, W), block c holding channel c's K logits (see categorical_logits)."""
    return nn.Sequential(
        nn.ReLU(),
        MaskedConv2d(in_channels, hidden, 1, "B", C),
        nn.ReLU(),
        MaskedConv2d(hidden, C * K, 1, "B", C),  # channel c's logits are block c of K
    )


def categorical_logits(out: torch.Tensor, C: int, K: int) -> torch.Tensor:
    """Channel-major head output (B, C*K, H, W) -> logits (B, C, H, W, K), one K-way row per sub-pixel."""
    B, _, H, W = out.shape
    return out.view(B, C, K, H, W).permute(0, 1, 3, 4, 2)  # (B, C, K, H, W) -> (B, C, H, W, K)
