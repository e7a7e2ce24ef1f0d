"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu, 2016, "Pixel Recurrent Neural Networks", sec. 3.4).

A stack of masked convolutions computes, for every pixel at once, a K-way
softmax over its value given the pixels above and to the left:

    p(x) = prod_{i,j,c} p(x_{i,j,c} | x_{<(i,j)}, x_{i,j,<c})

Layout, as in the paper: one 7x7 mask-A convolution, then residual blocks
(1x1 -> 3x3 -> 1x1, all mask B, ReLU before each), then two 1x1 mask-B
convolutions to C*K logits. The receptive field grows by one pixel per 3x3
layer but never covers the pixels above and to the right of the centre's
upward cone: the "blind spot" that Gated PixelCNN (lesson 04) removes.

Deviations from the paper: pixel values are scaled to [-1, 1] rather than fed as
one-hot (codebook indices get a learned embedding instead: input="embedding", see
armini.nn.inputs); widths and depth are small so a CPU trains it in minutes. Class
conditioning (num_classes) adds a learned vector per class to the first layer's
features, at every position: it tells every pixel the class, and nothing else.

Legend: B batch, C image channels, H, W height and width, K levels, F feature channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..nn.heads import categorical_logits, softmax_head
from ..nn.inputs import ValueInput
from ..nn.masked import MaskedConv2d
from ..fast.pixelcnn_cache import PixelCNNCache
from ..sampling_cache import CachedConvSampling
from .base import ARModel


class ResidualBlock(nn.Module):
    """h + 1x1(relu(3x3(relu(1x1(relu(h)))))), every convolution mask B (the paper's Figure 5)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        half = channels // 2
        self.net = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(channels, half, 1, "B", groups),
            nn.ReLU(),
            MaskedConv2d(half, half, 3, "B", groups),
            nn.ReLU(),
            MaskedConv2d(half, channels, 1, "B", groups),
        )

    def forward(self, h):
        return h + self.net(h)  # (B, F, H, W)


@dataclass
class PixelCNNConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    channels: int = 96  # F, feature channels (rounded up to a multiple of 2*C)
    n_blocks: int = 4  # residual blocks after the 7x7 mask-A layer
    first_kernel: int = 7
    head_channels: int = 64  # width of the 1x1 output layers (rounded up to a multiple of C)
    input: str = "ordinal"  # how values are read: "ordinal" (pixels) or "embedding" (codebook indices)
    embed_dim: int = 16  # embedding size per channel when input="embedding"
    num_classes: Optional[int] = None  # class-conditional with this many classes (None: unconditional)


class PixelCNN(CachedConvSampling, ARModel):
    """Masked-convolution PixelCNN with a K-way softmax per sub-pixel.

    Sampling is cached (armini.fast.pixelcnn_cache): each step computes only the new pixel's
    features from the layers' cached windows; sample(..., cached=False) recomputes everything."""

    rows_so_far = True  # row i reads rows <= i: the naive sampler feeds the rows so far (armini.models.base)

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = PixelCNNConfig(shape=self.shape, levels=self.levels, **kwargs)
        C = self.shape[0]
        # every feature layer is split into C channel groups (and halved inside a block)
        cfg.channels = -(-cfg.channels // (2 * C)) * (2 * C)
        cfg.head_channels = -(-cfg.head_channels // C) * C
        self.config = cfg
        self.set_classes(cfg.num_classes)
        K, F = self.levels, cfg.channels
        self.inputs = ValueInput(K, C, cfg.input, cfg.embed_dim)  # (B, C, H, W) -> (B, C_in, H, W)
        self.input_conv = MaskedConv2d(self.inputs.out_channels, F, cfg.first_kernel, "A", C)  # strictly earlier
        self.blocks = nn.Sequential(*[ResidualBlock(F, C) for _ in range(cfg.n_blocks)])
        self.head = softmax_head(F, cfg.head_channels, C, K)  # relu, 1x1, relu, 1x1 to C*K, all mask B
        if cfg.num_classes is not None:
            self.class_emb = nn.Embedding(cfg.num_classes, F)  # a learned vector per class

    def logits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """Unnormalised scores (B, C, H, W, K) for integer images x (B, C, H, W) (and labels y (B,))."""
        B, C, H, W = x.shape
        h = self.input_conv(self.inputs(x, self.input_conv.weight.dtype))  # (B, F, H, W)
        if y is not None:
            h = h + self.class_emb(y)[:, :, None, None]  # the class, at every position
        h = self.blocks(h)  # (B, F, H, W)
        out = self.head(h)  # (B, C*K, H, W), channel-major: block c holds channel c's K logits
        return categorical_logits(out, C, self.levels)  # (B, C, H, W, K)

    def conditionals(self, x, y=None):
        logits = self.logits(x) if y is None else self.logits(x, y)  # a subclass may define logits(x)
        return torch.log_softmax(logits, dim=-1)  # (B, C, H, W, K)


    def init_cache(self, x, y=None):
        """The cached sampler (armini.fast.pixelcnn_cache): one new position per step through every
        layer, as a few matrix products. A subclass with a forward of its own (`logits`) gets the
        generic cache (armini.sampling_cache), which runs that forward on strips of the image."""
        if type(self).logits is PixelCNN.logits:
            return PixelCNNCache(self, x, y)
        return super().init_cache(x, y)
