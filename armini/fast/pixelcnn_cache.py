"""Cached sampling for PixelCNN (Ramachandran et al., 2017, "Fast Generation for Convolutional
Autoregressive Models"), spelled out layer by layer so that a step is a few matrix products.

PixelCNN (armini.models.pixelcnn) is a k0 x k0 mask-A convolution, residual blocks
(relu, 1x1, relu, 3x3, relu, 1x1, all mask B) and a 1x1 head. At pixel (i, j) a masked k x k
convolution (p = k//2) reads rows i-p..i of its input: all of columns j-p..j+p in the rows above,
columns j-p..j in row i (the taps right of j are masked). Split it in two:

    conv(i, j) = above(i, j)          rows i-p..i-1: all drawn when row i starts, so computed for
                                      the whole row at once (one F.conv2d per layer per row)
               + row_window(i, j) @ W_row     row i, columns j-p..j: the new part, per pixel

Each spatial layer is an armini.sampling_cache.RowConv: it keeps its input's current row as a
buffer (n, p + W, F_in) (position-major, p zero columns on the left), so the window of (i, j) is a
fixed *view* buf[:, j:j+p+1] flattened, made once; layer outputs are written straight into the
next buffer (`out=`), never copied. At n=1 a step costs what its number of operations costs, not
its arithmetic, so it is written with as few as it takes (about 30). A step:

    h = above_0(i, j) + window_0 @ W_0                               (n, F)   the mask-A layer
    for each block:  t = relu(relu(h) @ W_a + b_a)   (into the 3x3's row buffer at j)   (n, F/2)
                     u = relu(above(i, j) + window @ W_row)                              (n, F/2)
                     h = h + [u, 1] @ [W_c; b_c]      (a column of ones carries the bias) (n, F)
    logits of the channel being drawn = relu(relu(h) @ W_1 + b_1) @ W_2[c] + b_2[c]

Every value a window reads is final: earlier pixels were computed at their own steps, once all they
depend on was drawn. The raw image is the one exception: a pixel's last channel is drawn after the
pixel was computed, so each pixel's input is (re)written from x when the sampler moves past it (and,
with several channels, at every step: the channels < c of the current pixel are read under mask A).
The input at a pixel is a row of a table of each level's input features (armini.nn.inputs:
ordinal values scaled to [-1, 1], or embeddings), looked up, not recomputed.

The same arithmetic as the model's forward on the whole image, grouped differently (sums of the same
products, so equal to rounding). A subclass with its own forward (`logits`) keeps the generic cache
(armini.sampling_cache), which runs that forward. A step runs on one CPU thread in inference mode.

Legend: n images sampled, C image channels, C_in input features per pixel, F feature channels,
H, W height and width, K levels.
"""
from __future__ import annotations

import torch

from ..sampling_cache import LevelTable, PixelByPixel, RasterCursor, RowConv, StepMode, conv_weight


def row_conv(conv, n: int, W: int) -> RowConv:
    """A masked k x k convolution as a RowConv: rows i-p..i, columns j-p..j+p (p = k//2), the taps
    below row i and right of j in row i masked (zero)."""
    w = conv_weight(conv).detach()  # (out, F_in, k, k), masked
    p = w.shape[-1] // 2
    if (w[:, :, p + 1:] != 0).any():
        raise ValueError(f"{conv} reads a row below the pixel: the cache needs a causal (masked) convolution")
    return RowConv(w[:, :, :p + 1], conv.bias, top=p, left=p, n=n, W=W)


def pointwise(conv) -> torch.Tensor:
    """A masked 1x1 convolution's weight as (F_in, out) for x @ W."""
    return conv_weight(conv).detach()[:, :, 0, 0].t().contiguous()


class PixelCNNCache(PixelByPixel):
    """What PixelCNN.init_cache returns: the row buffers of every spatial convolution and the weights
    as matrices. conditional_logprobs(x, index) -> (n, 1, K) for the next dimension (index: its flat
    position, (1,)); the step's bookkeeping is PixelByPixel's (armini.sampling_cache)."""

    def __init__(self, model, x: torch.Tensor, y=None):
        C, H, W = model.shape
        self.model, self.C, self.K = model, C, model.levels
        self.cursor = RasterCursor(x, W)
        self.mode = StepMode(x.device)  # one thread, inference mode
        n, dtype = x.shape[0], model.input_conv.weight.dtype
        like = model.input_conv.weight.new_zeros(0, dtype=dtype)
        with torch.inference_mode():
            self.level_table = LevelTable(model.inputs, C, model.levels, dtype, x.device)  # every level's input features
            self.first = row_conv(model.input_conv, n, W)
            self.first_input = self.first.here  # (n, C_in) per column: the image's features at (i, j)
            self.class_vector = None if y is None else model.class_emb(y).detach()  # (n, F)
            F_ = model.input_conv.out_channels
            self.h, self.relu_h = like.new_zeros(n, F_), like.new_zeros(n, F_)
            self.blocks = []
            for block in model.blocks:
                a, b, c = block.net[1], block.net[3], block.net[5]  # 1x1, 3x3, 1x1
                L = row_conv(b, n, W)
                L.W_a, L.b_a = pointwise(a), a.bias.detach()
                L.u1 = like.new_ones(n, b.out_channels + 1)  # [u, 1]: the ones column carries c's bias
                L.u = L.u1[:, :-1]
                L.W_c1 = torch.cat([pointwise(c), c.bias.detach()[None]])  # (F/2 + 1, F): [W_c; b_c]
                self.blocks.append(L)
            hidden, last = model.head[1], model.head[3]  # relu, 1x1, relu, 1x1 to C*K
            self.W_1, self.b_1 = pointwise(hidden), hidden.bias.detach()
            self.hidden = like.new_zeros(n, self.W_1.shape[1])
            K = self.K
            w_2 = pointwise(last)  # (hidden, C*K), block c: channel c's logits
            self.W_2 = [w_2[:, c * K:(c + 1) * K].contiguous() for c in range(C)]  # (hidden, K) per channel
            self.b_2 = [last.bias.detach()[c * K:(c + 1) * K] for c in range(C)]
            self.logits = like.new_zeros(n, 1, K)
            self.logits_c = self.logits[:, 0]  # (n, K): where the channel's logits are written

    def start_row(self, x: torch.Tensor, i: int):
        """Row i starts (every pixel above it drawn): each layer's part that reads the rows above."""
        self.first.start_row(i, self.class_vector)
        for L in self.blocks:
            L.start_row(i)

    def pixel(self, c: int, j: int) -> torch.Tensor:
        """log p(x_c | everything before) at (i, j) of the current row, its input written: (n, 1, K)."""
        h, relu_h = self.h, self.relu_h
        self.first.at(j, out=h)  # (n, F): the mask-A layer
        for L in self.blocks:
            torch.clamp_min(h, 0, out=relu_h)
            torch.addmm(L.b_a, relu_h, L.W_a, out=L.here[j]).relu_()  # t: the 3x3's input at (i, j), (n, F/2)
            L.at(j, out=L.u).relu_()  # u: the 3x3, (n, F/2)
            torch.addmm(h, L.u1, L.W_c1, out=h)  # h + net(h), (n, F)
        torch.clamp_min(h, 0, out=relu_h)
        torch.addmm(self.b_1, relu_h, self.W_1, out=self.hidden).relu_()  # (n, hidden)
        torch.addmm(self.b_2[c], self.hidden, self.W_2[c], out=self.logits_c)  # (n, K)
        return torch.log_softmax(self.logits, dim=-1)  # (n, 1, K)
