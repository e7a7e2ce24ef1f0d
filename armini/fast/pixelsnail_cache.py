"""A cached sampler for PixelSNAIL (armini.models.pixelsnail): each step computes one new pixel.

The naive sampler (armini.models.base) runs the whole model at each of the C*H*W steps: every
convolution on all T = H*W pixels and every attention block over T x T pairs, although only one
pixel's output is read. But every feature PixelSNAIL computes at pixel p = (i, j) depends on the
pixels before p only (that is what makes it autoregressive), so once computed it never changes.
This sampler keeps what it has computed and, at each new pixel, computes that pixel only:

    at the first channel of pixel p:
        pixel p-1 is complete now: write it into the first layer's input row, and complete
        each block's key and value of p-1 in that block's KV cache with its x part,
            k, v = W_k [h_b, x, pos](p-1), W_v [h_b, x, pos](p-1)    h_b: the block's attention input
        h = down_shift(in_down) + right_shift(in_right) at p       windows of the raw image before p
            (+ the class vector, for a class-conditional model)
        for each block b:
            h = GatedResnet(h) at p, n_res times                     (2, 2) windows of cached inputs
            h_b(p) = h                                               its h and pos part of p's key and value now
            a = softmax(q k^T / sqrt(d_k)) v,  q = W_q [h, pos](p)   over keys 0..p-1 (strict: j < p)
            h = GatedResnet(h, a) at p                               1x1 convolutions: p only
        trunk(p) = h
    at every channel c of p:
        the head on trunk(p) and the current pixel's channels < c    1x1, masked (armini.nn.masked)

The convolutions follow Ramachandran et al. (2017, "Fast Generation for Convolutional
Autoregressive Models"): each spatial convolution is an armini.sampling_cache.RowConv. Its taps
on the rows above i are final when row i starts, so their part of the whole row is one conv2d
then; the taps on row i (columns <= j) are one addmm per pixel, of a window that is a fixed view
of the input's current row, where each input is written at its own pixel's step. Every value in
a window is final: it belongs to a pixel before p, computed when all the pixels it depends on
were known. Only the raw image is written late, once a pixel's last channel is drawn (pixel
p-1, at p).
"Raw image" means the model's input features x: the pixels scaled to [-1, 1] or, for
input="embedding", each value's learned vector (armini.nn.inputs), C_in numbers per pixel.

The attention is lesson 07's KV cache, in one buffer of every pixel's key and value, with
PixelSNAIL's strict mask: keys carry the raw pixel, so a pixel's key is complete only once that
pixel is drawn (its h and position part is computed at p, its x part added at p+1), and the
query of p reads keys 0..p-1; pixel 0 has nothing to read and gets zeros, as in the full
forward pass.

Fewer operations per step (a step at n=1 costs what its number of operations costs, not its
arithmetic): the position channels' share of every query, key and value is one table (T, .)
made once; outputs are written into preallocated buffers (`out=`); the attention read-out sits
beside h, so the mix layer's two 1x1 convolutions are one product; the head's part that reads
the trunk is computed once per pixel, not per channel.

Cost: a naive step is a full pass, O(T) convolution work and O(T^2) attention; a cached step is a
fixed amount of convolution work and O(p) attention. A whole image: O(T^3) against O(T^2).

Differences from the full forward pass: the same equations, computed as matrix products on one
pixel (and sums grouped differently) instead of convolutions on the image, so the numbers agree to rounding (about 1e-6), and
the sampler, fed the same random draws, draws the same images (tests/test_pixelsnail.py).

Assumptions: raster order, one dimension per step (the cache refuses any other order), no dropout
(sampling runs in eval mode). A step is a few hundred tiny operations, so it runs on one CPU thread
and in inference mode (threads and autograd bookkeeping would cost more than the arithmetic).

Legend: n images sampled, C image channels, F feature channels, G head channels, K levels,
H, W height and width, T = H*W pixels, p a pixel's raster index i*W + j, nh heads, d key/value size.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.gated import GatedResnet
from ..sampling_cache import LevelTable, RasterCursor, RowConv, StepMode, conv_padding, conv_weight


def matrix(layer: nn.Module) -> torch.Tensor:
    """A 1x1 convolution's or a linear layer's weight as (in, out), for u @ W (masks applied)."""
    w = conv_weight(layer).detach() if isinstance(layer, nn.Conv2d) else layer.weight.detach()
    return w.flatten(1).t()  # (in, out)


def bias(layer: nn.Module) -> torch.Tensor:
    return layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(layer.weight.shape[0])


def concat_elu_into(u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (n, 2F) = concat_elu(u) = elu([u, -u]) (armini.nn.gated), written in place."""
    return F.elu(torch.cat([u, -u], dim=1, out=out), inplace=True)


def row_conv(conv: nn.Conv2d, n: int, W: int, shift=(0, 0), buf=None) -> RowConv:
    """A shifted convolution (armini.nn.shifted), moved down / right by `shift` after it, as a RowConv."""
    left, _, top, _ = conv_padding(conv)
    dy, dx = shift
    return RowConv(conv_weight(conv).detach(), conv.bias, top=top + dy, left=left + dx, n=n, W=W, shift=shift, buf=buf)


class ResStep:
    """armini.nn.gated.GatedResnet with (2, 2) down-right shifted convolutions at one pixel, h updated in place:

        c1 = conv_in(concat_elu(h));  (a, b) = conv_out(concat_elu(c1));  h = h + a * sigmoid(b)

    Each convolution is a RowConv: its input at (i, j), concat_elu of h or c1, is written into its row
    buffer, and its output is the rows above (once per row) + one addmm of the row's window."""

    def __init__(self, block: GatedResnet, n: int, W: int):
        self.conv_in, self.conv_out = row_conv(block.conv_in, n, W), row_conv(block.conv_out, n, W)
        F_ = block.conv_in.out_channels
        like = self.conv_in.buf
        self.c1, self.c2, self.s = like.new_zeros(n, F_), like.new_zeros(n, 2 * F_), like.new_zeros(n, F_)
        self.a, self.b = self.c2[:, :F_], self.c2[:, F_:]  # the gate's halves

    def start_row(self, i: int):
        self.conv_in.start_row(i)
        self.conv_out.start_row(i)

    def __call__(self, h: torch.Tensor, j: int):
        concat_elu_into(h, self.conv_in.here[j])
        self.conv_in.at(j, out=self.c1)  # (n, F)
        concat_elu_into(self.c1, self.conv_out.here[j])
        self.conv_out.at(j, out=self.c2)  # (n, 2F)
        torch.addcmul(h, self.a, torch.sigmoid(self.b, out=self.s), out=h)  # h + a * sigmoid(b): the gate


class AttentionStep:
    """One block's strictly causal attention (armini.nn.attention.CausalSelfAttention) at pixel p and its
    1x1 gated residual `mix`, with the keys and values of pixels 0..p-1 kept in one buffer (a KV cache,
    lesson 07). Keys and values read [h, x, pos]: the h and pos part of pixel p is computed at p, the x
    part is added once p is drawn (`complete`); the query of p reads keys 0..p-1 (strict).

    The stream lives in `hx` = [h, a] (n, F + V): the block's input h, and the attention's read-out a
    beside it, so that mix's first layer, conv_in(concat_elu(h)) + nin_skip(concat_elu(a)), is one product
    of concat_elu([h, a]) = elu([h, a, -h, -a]) with the two weights stacked to match."""

    def __init__(self, block, x_dim: int, pos: torch.Tensor, n: int):
        attn, mix = block.attn, block.mix
        F_, T = mix.conv_in.out_channels, pos.shape[0]
        self.F, self.nh, self.scale = F_, attn.n_heads, attn.scale
        dk, dv = attn.key.out_features, attn.value.out_features
        self.dk = dk
        W_q, W_kv = matrix(attn.query), torch.cat([matrix(attn.key), matrix(attn.value)], 1)  # (F+2, dk), (F+x+2, dk+dv)
        self.W_q, self.W_kv_h, self.W_kv_x = W_q[:F_], W_kv[:F_], W_kv[F_:F_ + x_dim]
        self.q_bias = pos @ W_q[F_:] + bias(attn.query)  # (T, dk): the position's part of each query, + bias
        self.kv_bias = pos @ W_kv[F_ + x_dim:] + torch.cat([bias(attn.key), bias(attn.value)])  # (T, dk+dv)
        self.W_proj, self.b_proj = matrix(attn.proj), bias(attn.proj)
        like = self.W_q
        self.kv = like.new_zeros(n, T, dk + dv)  # keys and values of every pixel so far
        self.k = self.kv[..., :dk].view(n, T, self.nh, -1).transpose(1, 2)  # (n, nh, T, dk/nh) views
        self.v = self.kv[..., dk:].view(n, T, self.nh, -1).transpose(1, 2)  # (n, nh, T, dv/nh)
        self.q = like.new_zeros(n, dk)
        self.hx = like.new_zeros(n, F_ + dv)  # [h, a]
        self.h, self.a = self.hx[:, :F_], self.hx[:, F_:]
        # mix: conv_in (2F -> F) on concat_elu(h), nin_skip (2V -> F) on concat_elu(a); rows ordered [h, a, -h, -a]
        w_in, w_skip = matrix(mix.conv_in), matrix(mix.nin_skip)  # (2F, F), (2V, F)
        self.W_c1 = torch.cat([w_in[:F_], w_skip[:dv], w_in[F_:], w_skip[dv:]]).contiguous()  # (2F + 2V, F)
        self.b_c1 = bias(mix.conv_in) + bias(mix.nin_skip)
        self.W_c2, self.b_c2 = matrix(mix.conv_out).contiguous(), bias(mix.conv_out)  # (2F, 2F)
        self.ce_hx, self.c1, self.ce_c1 = like.new_zeros(n, 2 * (F_ + dv)), like.new_zeros(n, F_), like.new_zeros(n, 2 * F_)
        self.c2, self.s = like.new_zeros(n, 2 * F_), like.new_zeros(n, F_)

    def complete(self, x_feats: torch.Tensor, p: int):
        """Pixel p is drawn: its features x (n, x_dim) join its key and value."""
        kv = self.kv[:, p]
        torch.addmm(kv, x_feats, self.W_kv_x, out=kv)

    def __call__(self, p: int, out: torch.Tensor):
        """The attention at pixel p on self.h (its input, already written), then mix: out (n, F)."""
        torch.addmm(self.kv_bias[p], self.h, self.W_kv_h, out=self.kv[:, p])  # h and pos part of p's key/value
        if p == 0:  # nothing before pixel 0: the read-out is exactly 0, as in the full pass
            self.a.zero_()
        else:
            torch.addmm(self.q_bias[p], self.h, self.W_q, out=self.q)  # (n, dk)
            q = self.q.view(len(self.q), self.nh, 1, -1)  # (n, nh, 1, dk/nh)
            y = F.scaled_dot_product_attention(q, self.k[:, :, :p], self.v[:, :, :p], scale=self.scale)  # keys j < p
            torch.addmm(self.b_proj, y.reshape(len(y), -1), self.W_proj, out=self.a)  # (n, V): heads mixed
        concat_elu_into(self.hx, self.ce_hx)
        torch.addmm(self.b_c1, self.ce_hx, self.W_c1, out=self.c1)  # (n, F)
        concat_elu_into(self.c1, self.ce_c1)
        torch.addmm(self.b_c2, self.ce_c1, self.W_c2, out=self.c2)  # (n, 2F)
        F_ = self.F
        torch.addcmul(self.h, self.c2[:, :F_], torch.sigmoid(self.c2[:, F_:], out=self.s), out=out)  # the gate


class PixelSNAILCache:
    """What PixelSNAIL.init_cache returns: the model's layers as per-pixel steps (their row buffers and
    the KV caches inside), and the head's part that depends on the trunk only.

    conditional_logprobs(x, index) -> (n, 1, K): log p(x_c,i,j = . | earlier), for index = [d], the flat
    position d = (c*H + i)*W + j in raster order (pixels one after another, the channels of a pixel in order)."""

    def __init__(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        n = x.shape[0]
        (C, H, W), K = model.shape, model.levels
        self.model, self.C, self.W = model, C, W
        self.cursor = RasterCursor(x, W)
        self.mode = StepMode(x.device)  # one thread, inference mode
        self.row = -1
        with torch.inference_mode():
            dtype, dev = model.pos.dtype, model.pos.device
            self.level_table = LevelTable(model.inputs, C, K, dtype, dev)
            C_in = model.inputs.out_channels
            # the first layer, on [x, 1]: both convolutions read one row buffer of the input
            self.in_right = row_conv(model.in_right, n, W, shift=(0, 1))  # right_shift: column j-1, rows i-1..i
            self.in_down = row_conv(model.in_down, n, W, shift=(1, 0), buf=self.in_right.buf)  # down_shift: row i-1
            self.in_right.buf[:, 1:, C_in] = 1.0  # the channel of ones (zero in the padding)
            self.x_at = [here[:, :C_in] for here in self.in_right.here]  # (n, C_in): the input features at (i, j)
            self.class_vector = None if y is None else model.class_emb(y).detach()  # (n, F)
            pos = model.pos[0].flatten(1).t()  # (T, 2): the position channels of each pixel, raster order
            self.blocks = [([ResStep(layer, n, W) for layer in block.res], AttentionStep(block.attention, C_in, pos, n))
                           for block in model.blocks]
            self.trunk = self.blocks[0][1].h.new_zeros(n, model.config.channels)
            # head: z = head_trunk(elu(trunk)) + head_pixel(x) (mask A: channels < c of this pixel); logits of c
            self.W_trunk, self.b_trunk = matrix(model.head_trunk), bias(model.head_trunk) + bias(model.head_pixel)
            self.W_pixel = matrix(model.head_pixel)  # (C_in, G); all zero when C = 1 (mask A)
            self.reads_pixel = bool((self.W_pixel != 0).any())
            w_out = matrix(model.head_out)  # (G, C*K), block c: channel c's logits
            self.W_out = [w_out[:, c * K:(c + 1) * K].contiguous() for c in range(C)]
            self.b_out = [bias(model.head_out)[c * K:(c + 1) * K] for c in range(C)]
            self.z_trunk, self.z = self.trunk.new_zeros(n, len(self.b_trunk)), self.trunk.new_zeros(n, len(self.b_trunk))
            self.logits = self.trunk.new_zeros(n, 1, K)

    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        with self.mode:
            c, i, j, moved = self.cursor.advance(x, index)
            if moved:  # a new pixel: everything before it is drawn
                self.advance(x, i, j)
            if self.reads_pixel:  # the channels < c of this pixel (mask A)
                self.level_table.write(x, i, j, out=self.x_at[j])
            return self.head(c, j)  # (n, 1, K)

    def advance(self, x: torch.Tensor, i: int, j: int):
        """The trunk features of the new pixel p = (i, j) (and the head's part that reads them only)."""
        p = i * self.W + j
        if p > 0:  # pixel p-1 is drawn: into the first layer's input and every block's key and value
            qi, qj = divmod(p - 1, self.W)
            self.level_table.write(x, qi, qj, out=self.x_at[qj])
            for _, attention in self.blocks:
                attention.complete(self.x_at[qj], p - 1)
        if i != self.row:
            self.start_row(i)
        self.in_right.at(j, out=self.blocks[0][1].h)  # the first layer: down_shift(in_down) + right_shift(in_right)
        for b, (res, attention) in enumerate(self.blocks):
            for layer in res:
                layer(attention.h, j)  # (n, F), in place
            out = self.blocks[b + 1][1].h if b + 1 < len(self.blocks) else self.trunk
            attention(p, out)  # the next block's input (n, F)
        torch.addmm(self.b_trunk, F.elu(self.trunk), self.W_trunk, out=self.z_trunk)  # (n, G)

    def start_row(self, i: int):
        """Row i starts (every pixel above it drawn): each convolution's part that reads the rows above."""
        self.in_right.start_row(i)
        self.in_down.start_row(i)
        self.in_right.above += self.in_down.above  # the two first-layer convolutions, summed once per row
        if self.class_vector is not None:
            self.in_right.above += self.class_vector[:, None]  # the class, at every position
        for res, _ in self.blocks:
            for layer in res:
                layer.start_row(i)
        self.row = i

    def head(self, c: int, j: int) -> torch.Tensor:
        """log-probabilities (n, 1, K) of channel c at (i, j): the masked 1x1 head on the trunk and the
        current pixel's channels < c (the mask hides channel c and later ones)."""
        z = self.z_trunk
        if self.reads_pixel:
            z = torch.addmm(self.z_trunk, self.x_at[j], self.W_pixel, out=self.z)  # (n, G)
        torch.addmm(self.b_out[c], F.elu(z), self.W_out[c], out=self.logits[:, 0])  # (n, K): channel c's block
        return torch.log_softmax(self.logits, dim=-1)  # (n, 1, K)
