"""PixelSNAIL (Chen, Mishra, Rohaninejad & Abbeel, 2018, "PixelSNAIL: An Improved Autoregressive
Generative Model").

Convolutions see a neighbourhood that grows slowly; attention reads any earlier pixel in one
step. PixelSNAIL interleaves both:

    h = down_shift(conv_(1,3)(x)) + right_shift(conv_(2,1)(x))     first layer: only earlier pixels
    repeat n_blocks times:
        h = GatedResnet(h)  x n_res           down-right shifted (2,2) convolutions
        a = Attention(q = [h, p], k, v = [h, x, p])   over the H*W pixels in raster order, j < i
        h = GatedResnet(h, a)                 1x1, mixes the attention read-out into the stream
    logits = head(h, x)                       K-way softmax per sub-pixel

where p are two position channels (row and column, scaled) and x the image scaled to [-1, 1].
The keys and values carry the raw pixel x_j, so the attention must be STRICTLY causal: pixel i
reads pixels j < i, never itself (pixel 0 reads nothing and gets zeros: armini.nn.attention).
Every feature at pixel i then depends on pixels before i only, and through the attention on
every one of them: no blind spot.

Gated residual block (PixelCNN++, Salimans et al. 2017; armini.nn.gated.GatedResnet),
with concat_elu(u) = ELU([u, -u]):

    u = conv(concat_elu(h)) (+ nin(concat_elu(a)))
    [s, g] = conv(concat_elu(u));   h <- h + s * sigmoid(g)

Colour (C = 3): the trunk only sees earlier *pixels*; the head adds the current pixel's earlier
sub-pixels. Its 1x1 convolutions split their channels into C groups (armini.nn.masked): group c
reads the trunk and, through a mask-A 1x1 convolution, the current pixel's channels < c; the
output keeps the groups (mask B), so the logits of channel c (the c-th block of K) see R..c-1 only.

Inputs and labels: x above is read by value kind (armini.nn.inputs): pixel values scaled to
[-1, 1], or, for codebook indices (a prior over token grids, `input="embedding"`), a learned
vector per value, wherever the model reads x (first layer, keys and values, head). Class
conditioning (`num_classes`): a learned vector per class is added to h after the first layer, at
every position; the same everywhere, it tells every pixel the class and nothing about other pixels.

Sampling: `sample()` computes only the new pixel at each step (armini.fast.pixelsnail_cache: the
convolutions from the cached inputs of earlier pixels, the attention with a KV cache) and draws
the same images as `sample(..., cached=False)`, which reruns the whole model at every step.

Deviations from the paper: a K-way softmax per sub-pixel instead of the discretised logistic
mixture (armini.nn.dmol), so channel ordering lives in the masked head; queries, keys and
values are linear maps of their inputs (the paper puts a 1x1 gated residual block first); one
attention head per block with keys and values of size 32 (the paper: 16 and 128); no dropout;
2 blocks of 2 residual layers, width 32 (the public CIFAR-10 code: 12 blocks of 5, width 256),
so a CPU trains it in minutes.

Legend: B batch, C image channels, H, W height and width, K levels, F feature channels, T = H*W pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.attention import CausalSelfAttention
from ..nn.gated import GatedResnet
from ..nn.heads import categorical_logits
from ..nn.inputs import ValueInput
from ..nn.masked import MaskedConv2d
from ..nn.shifted import DownRightShiftedConv2d, DownShiftedConv2d, down_shift, right_shift
from ..fast.pixelsnail_cache import PixelSNAILCache
from .base import ARModel


def nin(cin: int, cout: int) -> nn.Module:
    return nn.Conv2d(cin, cout, 1)  # "network in network": a 1x1 convolution


class AttentionBlock(nn.Module):
    """Strictly causal attention over the raster sequence of pixels, mixed into the stream by a 1x1 gated residual."""

    def __init__(self, channels: int, image_channels: int, key_dim: int, value_dim: int, n_heads: int):
        super().__init__()
        Fc, C = channels, image_channels
        self.attn = CausalSelfAttention(value_dim, n_heads, strict=True,  # j < i: keys hold the raw pixel
                                        in_dim=Fc + 2, kv_dim=Fc + C + 2, key_dim=key_dim)
        self.mix = GatedResnet(Fc, nin, skip_channels=value_dim)

    def forward(self, h, x, pos, return_weights: bool = False):
        B, Fc, H, W = h.shape
        q_in = torch.cat([h, pos.expand(B, -1, -1, -1)], dim=1)  # (B, F+2, H, W): queries read [h, p]
        kv_in = torch.cat([h, x, pos.expand(B, -1, -1, -1)], dim=1)  # (B, F+C+2, H, W): keys/values [h, x, p]
        a = self.attn(q_in.flatten(2).transpose(1, 2), kv_in.flatten(2).transpose(1, 2),  # (B, T, .) raster order
                      return_weights=return_weights)
        a, weights = a if return_weights else (a, None)  # (B, T, V), (B, nh, T, T)
        a = a.transpose(1, 2).reshape(B, -1, H, W)  # (B, V, H, W)
        return self.mix(h, a), weights  # (B, F, H, W)


class SNAILBlock(nn.Module):
    """n_res gated residual (2,2) down-right shifted convolutions, then one attention block."""

    def __init__(self, channels, image_channels, n_res, key_dim, value_dim, n_heads):
        super().__init__()
        self.res = nn.ModuleList([GatedResnet(channels, DownRightShiftedConv2d) for _ in range(n_res)])  # (2, 2)
        self.attention = AttentionBlock(channels, image_channels, key_dim, value_dim, n_heads)

    def forward(self, h, x, pos, return_weights=False):
        for layer in self.res:
            h = layer(h)  # (B, F, H, W)
        return self.attention(h, x, pos, return_weights)


@dataclass
class PixelSNAILConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    channels: int = 32  # F, width of the convolutional stream
    n_blocks: int = 2  # (residual convolutions + attention) blocks
    n_res: int = 2  # gated residual convolutions per block
    n_heads: int = 1
    # query/key and value sizes over all heads (the paper: 16 and 128); equal sizes let a CPU
    # use PyTorch's fused attention kernel, about twice as fast
    key_dim: int = 32
    value_dim: int = 32
    head_channels: int = 64  # width of the masked 1x1 head (rounded up to a multiple of C)
    input: str = "ordinal"  # how values are read: "ordinal" (pixels) or "embedding" (codebook indices)
    embed_dim: int = 16  # embedding size per channel when input="embedding"
    num_classes: Optional[int] = None  # class-conditional with this many classes (None: unconditional)


class PixelSNAIL(ARModel):
    """Gated residual causal convolutions interleaved with strictly causal attention; K-way softmax head."""

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = PixelSNAILConfig(shape=self.shape, levels=self.levels, **kwargs)
        C, H, W = self.shape
        cfg.head_channels = -(-cfg.head_channels // C) * C
        self.config = cfg
        self.set_classes(cfg.num_classes)
        Fc, G, K = cfg.channels, cfg.head_channels, self.levels
        self.inputs = ValueInput(K, C, cfg.input, cfg.embed_dim)  # (B, C, H, W) -> (B, C_in, H, W)
        C_in = self.inputs.out_channels  # C, or C * embed_dim in channel-major groups (one per image channel)
        # first layer, on [x, 1] (the ones channel tells the zero padding apart from black pixels)
        self.in_down = DownShiftedConv2d(C_in + 1, Fc, (1, 3))  # + down_shift: the row above, columns j-1..j+1
        self.in_right = DownRightShiftedConv2d(C_in + 1, Fc, (2, 1))  # + right_shift: column j-1, rows i-1 and i
        self.blocks = nn.ModuleList([SNAILBlock(Fc, C_in, cfg.n_res, cfg.key_dim, cfg.value_dim, cfg.n_heads)
                                     for _ in range(cfg.n_blocks)])
        # head: group c of G reads the trunk and the current pixel's channels < c (mask A; with C = 1: none)
        self.head_trunk = nin(Fc, G)
        self.head_pixel = MaskedConv2d(C_in, G, 1, "A", C)
        self.head_out = MaskedConv2d(G, C * K, 1, "B", C)  # channel c's logits are block c of K
        if cfg.num_classes is not None:  # made last: the unconditional model draws what it always drew
            self.class_emb = nn.Embedding(cfg.num_classes, Fc)  # a learned vector per class
        # position channels p: row and column, scaled to [-1/2, 1/2)
        i = (torch.arange(H).float() - H / 2) / H
        j = (torch.arange(W).float() - W / 2) / W
        pos = torch.stack([i[:, None].expand(H, W), j[None, :].expand(H, W)])  # (2, H, W)
        self.register_buffer("pos", pos[None], persistent=False)  # (1, 2, H, W)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Integer images (B, C, H, W) -> input features (B, C_in, H, W) by value kind (armini.nn.inputs):
        values in [-1, 1] in the model's dtype (float64 after model.double()), or embeddings."""
        return self.inputs(x, self.pos.dtype)

    def trunk(self, x: torch.Tensor, return_weights: bool = False, y=None):
        """Features (B, F, H, W) of every pixel from the pixels before it (and the labels y (B,) of a
        class-conditional model), for scaled images x (B, C_in, H, W); and each block's attention
        weights (None unless return_weights)."""
        x_in = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (B, C_in+1, H, W)
        h = down_shift(self.in_down(x_in)) + right_shift(self.in_right(x_in))  # (B, F, H, W)
        if y is not None:
            h = h + self.class_emb(y)[:, :, None, None]  # the class, at every position
        maps = []
        for block in self.blocks:
            h, weights = block(h, x, self.pos, return_weights)  # (B, F, H, W)
            maps.append(weights)
        return h, maps

    def logits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """Unnormalised scores (B, C, H, W, K) for integer images x (B, C, H, W) (and labels y (B,))."""
        B, C, H, W = x.shape
        x = self.scaled(x)  # (B, C_in, H, W): in [-1, 1], or embedded
        h, _ = self.trunk(x, y=y)  # (B, F, H, W)
        z = self.head_trunk(F.elu(h)) + self.head_pixel(x)  # (B, G, H, W): group c sees channels < c of pixel i
        out = self.head_out(F.elu(z))  # (B, C*K, H, W), channel-major
        return categorical_logits(out, C, self.levels)  # (B, C, H, W, K)

    def conditionals(self, x, y=None):
        return torch.log_softmax(self.logits(x, y), dim=-1)  # (B, C, H, W, K)

    # ------------------------------------------------------- cached sampling
    def init_cache(self, x, y=None):
        return PixelSNAILCache(self, x, y)  # armini.fast.pixelsnail_cache: one new pixel per step

    def conditional_logprobs(self, x, index, y=None, cache=None):
        """log p(x_d = . | x_<d) for the one dimension d in `index`: through the cache, computing only
        the new pixel; without one, a full forward pass (the naive sampler)."""
        if cache is None:
            return super().conditional_logprobs(x, index, y)
        return cache.conditional_logprobs(x, index)  # (n, 1, K)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, y=None) -> list:
        """Each block's attention weights, a list of (B, n_heads, T, T) with T = H*W in raster order:
        row i is how much pixel i reads each earlier pixel j (row 0 is all zero)."""
        x = self.check_input(x)
        y = self.check_labels(y, x.shape[0])
        return self.trunk(self.scaled(x), return_weights=True, y=y)[1]
