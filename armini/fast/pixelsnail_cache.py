"""A cached sampler for PixelSNAIL (armini.models.pixelsnail): each step computes one new pixel.

The naive sampler (armini.models.base) runs the whole model at each of the C*H*W steps: every
convolution on all T = H*W pixels and every attention block over T x T pairs, although only one
pixel's output is read. But every feature PixelSNAIL computes at pixel p = (i, j) depends on the
pixels before p only (that is what makes it autoregressive), so once computed it never changes.
This sampler keeps what it has computed and, at each new pixel, computes that pixel only:

    at the first channel of pixel p:
        pixel p-1 is complete now: write it into the first layer's input maps, and push
        each block's key and value of p-1 into that block's KV cache,
            k, v = W_k [h_b, x, pos](p-1), W_v [h_b, x, pos](p-1)    h_b: the block's attention input
        h = down_shift(in_down) + right_shift(in_right) at p       windows of the raw image before p
            (+ the class vector, for a class-conditional model)
        for each block b:
            h = GatedResnet(h) at p, n_res times                     (2, 2) windows of cached inputs
            h_b(p) = h                                               kept for p's key at the next pixel
            a = softmax(q k^T / sqrt(d_k)) v,  q = W_q [h, pos](p)   over keys 0..p-1 (strict: j < p)
            h = GatedResnet(h, a) at p                               1x1 convolutions: p only
        trunk(p) = h
    at every channel c of p:
        the head on trunk(p) and the current pixel's channels < c    1x1, masked (armini.nn.masked)

The convolutions follow Ramachandran et al. (2017, "Fast Generation for Convolutional
Autoregressive Models"): each spatial convolution keeps its input map, zero-padded as the
convolution pads it; the input at p is written when p is computed and the output at p is the
kernel applied to the window that ends at p (`PixelWindows`). Every value in that window is
final: it belongs to a pixel before p, computed when all the pixels it depends on were known.
Only the raw image is written late, once a pixel's last channel is drawn (pixel p-1, at p).
"Raw image" means the model's input features x: the pixels scaled to [-1, 1] or, for
input="embedding", each value's learned vector (armini.nn.inputs), C_in numbers per pixel.

The attention is lesson 07's KV cache (armini.nn.attention.KVCache), with PixelSNAIL's strict
mask: keys carry the raw pixel, so a pixel's key enters the cache only once that pixel is drawn,
and the query of p reads keys 0..p-1; pixel 0 has nothing to read and gets zeros, as in the
full forward pass.

Cost: a naive step is a full pass, O(T) convolution work and O(T^2) attention; a cached step is a
fixed amount of convolution work and O(p) attention. A whole image: O(T^3) against O(T^2).

Differences from the full forward pass: the same equations, computed as matrix products on one
pixel instead of convolutions on the image, so the numbers agree to rounding (about 1e-6), and
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

from ..nn.attention import KVCache
from ..nn.gated import GatedResnet, concat_elu


def conv_matrix(conv: nn.Conv2d) -> torch.Tensor:
    """The weight a convolution really applies (weight * mask for masked ones), as a matrix (out, in*kh*kw)."""
    if hasattr(conv, "masked_weight"):  # armini.nn.shifted.DownRightShiftedConv2d
        weight = conv.masked_weight()
    elif getattr(conv, "mask", None) is not None:  # armini.nn.masked.MaskedConv2d
        weight = conv.weight * conv.mask
    else:
        weight = conv.weight
    return weight.detach().flatten(1)  # (out, in*kh*kw)


class Pointwise:
    """1x1 convolutions (or linear layers) at one pixel: (n, in) -> (n, out). Several layers that read
    the same input give their outputs side by side from one matrix product; `rows` keeps only some."""

    def __init__(self, *layers: nn.Module, rows: Optional[slice] = None):
        matrices = [conv_matrix(m) if isinstance(m, nn.Conv2d) else m.weight.detach() for m in layers]  # (out, in)
        biases = [m.bias.detach() if m.bias is not None else w.new_zeros(len(w)) for m, w in zip(layers, matrices)]
        rows = slice(None) if rows is None else rows  # only these outputs
        self.matrix, self.bias = torch.cat(matrices)[rows], torch.cat(biases)[rows]  # (out, in), (out,)

    def __call__(self, u: torch.Tensor, i: int = 0, j: int = 0) -> torch.Tensor:
        return F.linear(u, self.matrix, self.bias)  # (n, out); a pixel's 1x1 output needs nothing else


class PixelWindows:
    """One causal convolution evaluated one pixel at a time: (n, in) inputs -> (n, out) outputs.

    `write(u, i, j)` stores the convolution's input at pixel (i, j) in its zero-padded input map;
    `output(i, j)` applies the kernel to the window of the map that ends at (i, j): rows
    i-top..i-top+kh-1, columns j-left..j-left+kw-1 of the image. The caller makes sure every
    pixel in that window was written (for PixelSNAIL's convolutions: all lie before (i, j))."""

    def __init__(self, conv: nn.Conv2d, n: int, H: int, W: int, like: torch.Tensor):
        if tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
            raise ValueError(f"PixelWindows needs a plain stride-1 convolution, got {conv}")
        self.left, right, self.top, bottom = conv.pad  # armini.nn.shifted: (left, right, top, bottom)
        self.kh, self.kw = conv.kernel_size
        self.matrix = conv_matrix(conv)  # (out, in*kh*kw)
        self.bias = None if conv.bias is None else conv.bias.detach()  # (out,)
        self.map = like.new_zeros(n, conv.in_channels, self.top + H + bottom, self.left + W + right)

    def write(self, u: torch.Tensor, i: int, j: int):
        self.map[:, :, self.top + i, self.left + j] = u  # u (n, in): the input at pixel (i, j)

    def output(self, i: int, j: int) -> torch.Tensor:
        window = self.map[:, :, i:i + self.kh, j:j + self.kw]  # (n, in, kh, kw), the padded map's rows i..
        return F.linear(window.reshape(window.shape[0], -1), self.matrix, self.bias)  # (n, out)

    def __call__(self, u: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """The input at (i, j) arrives; the output there: (n, in) -> (n, out)."""
        self.write(u, i, j)
        return self.output(i, j)


class GatedResnetStep:
    """armini.nn.gated.GatedResnet at one pixel: the same equations on (n, F) vectors,

        c1 = conv_in(concat_elu(h)) [+ nin_skip(concat_elu(skip))];  (a, b) = conv_out(concat_elu(c1))
        h + a * sigmoid(b)

    with its spatial convolutions as PixelWindows and its 1x1 ones as Pointwise. (Dropout is off:
    sampling runs in eval mode.)"""

    def __init__(self, block: GatedResnet, n: int, H: int, W: int, like: torch.Tensor):
        def step(conv):
            return Pointwise(conv) if conv.kernel_size == (1, 1) else PixelWindows(conv, n, H, W, like)

        self.conv_in, self.conv_out = step(block.conv_in), step(block.conv_out)
        self.nin_skip = None if block.nin_skip is None else Pointwise(block.nin_skip)

    def __call__(self, h: torch.Tensor, i: int, j: int, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        c1 = self.conv_in(concat_elu(h), i, j)  # (n, F)
        if skip is not None:
            c1 = c1 + self.nin_skip(concat_elu(skip))  # the attention read-out
        c2 = self.conv_out(concat_elu(c1), i, j)  # (n, 2F)
        a, b = c2.chunk(2, dim=1)  # (n, F) each
        return h + a * torch.sigmoid(b)  # gating


class AttentionStep:
    """One strictly causal attention layer (armini.nn.attention.CausalSelfAttention) at one pixel,
    with a KV cache: `push` adds a complete pixel's key and value, `read` is the new pixel's
    query over all of them (pixels j < p)."""

    def __init__(self, attn, positions: int):
        self.attn = attn
        self.query = Pointwise(attn.query)  # W_q
        self.key_value = Pointwise(attn.key, attn.value)  # [W_k, W_v]: both read [h, x, p], one product
        self.key_dim = attn.key.out_features
        self.kv = KVCache(capacity=positions)  # (n, nh, p, d): the keys and values of pixels 0..p-1

    def push(self, kv_in: torch.Tensor):
        """kv_in (n, in) of the pixel just completed -> its key and value into the cache."""
        k, v = self.key_value(kv_in)[:, None].split([self.key_dim, self.attn.proj.out_features], dim=-1)
        self.kv.extend(self.attn.split_heads(k), self.attn.split_heads(v))  # (n, nh, 1, dk), (n, nh, 1, dv)

    def read(self, q_in: torch.Tensor, p: int) -> torch.Tensor:
        """The output at pixel p for its query input q_in (n, in): (n, dim)."""
        if len(self.kv) == 0:  # pixel 0 reads nothing: the layer outputs exactly 0
            return q_in.new_zeros(len(q_in), self.attn.proj.out_features)
        q = self.attn.split_heads(self.query(q_in)[:, None])  # (n, nh, 1, dk)
        return self.attn.attend(q, self.kv.k, self.kv.v, offset=p)[:, 0]  # (n, dim): strict, keys j < p


class PixelSNAILCache:
    """What PixelSNAIL.init_cache returns: the model's layers as per-pixel steps (their input maps
    and KV caches inside), and the trunk features of the pixel being sampled.

    conditional_logprobs(x, index) -> (n, 1, K): log p(x_c,i,j = . | earlier), for index = [d], the flat position d = (c*H + i)*W + j
    in raster order (pixels one after another, the channels of a pixel in order)."""

    def __init__(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        n = x.shape[0]
        (C, H, W), K = model.shape, model.levels
        like = model.pos  # the model's dtype and device
        self.model, self.n, self.H, self.W, self.channels = model, n, H, W, model.config.channels
        self.pos = model.pos[0].flatten(1).t()  # (T, 2): the position channels of each pixel, raster order
        self.ones = like.new_ones(n, 1)  # the channel of ones beside x
        self.class_vector = None if y is None else model.class_emb(y).detach()  # (n, F): added to h after the first layer
        self.in_down = PixelWindows(model.in_down, n, H, W, like)  # on [x, 1]; read at the row above
        self.in_right = PixelWindows(model.in_right, n, H, W, like)  # on [x, 1]; read at the pixel to the left
        self.blocks = [dict(res=[GatedResnetStep(layer, n, H, W, like) for layer in block.res],
                            attention=AttentionStep(block.attention.attn, H * W),
                            mix=GatedResnetStep(block.attention.mix, n, H, W, like),
                            attn_in=None)  # h_b (n, F) at the current pixel, for its key once it is drawn
                       for block in model.blocks]
        self.head_trunk, self.head_pixel = Pointwise(model.head_trunk), Pointwise(model.head_pixel)
        self.head_out = [Pointwise(model.head_out, rows=slice(c * K, (c + 1) * K)) for c in range(C)]  # block c of K
        self.pixel = -1  # raster index of the pixel whose trunk features are computed
        self.trunk = None  # (n, F): trunk(pixel)

    @torch.inference_mode()  # no autograd bookkeeping at all: about 20% faster than no_grad for these tiny steps
    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        if x.device.type != "cpu" or threads == 1:
            return self.step(x, index)
        # a step is a few hundred tiny operations: on a CPU, splitting them over threads only adds
        # synchronisation (measured here: several times slower on a busy 2-core machine), so run it on one thread
        torch.set_num_threads(1)
        try:
            return self.step(x, index)
        finally:
            torch.set_num_threads(threads)

    def step(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """conditional_logprobs on the current thread settings."""
        if index.shape[0] != 1:
            raise ValueError("PixelSNAIL's cached sampler fills one dimension per step (raster order)")
        c, p = divmod(int(index[0]), self.W * self.H)  # flat position -> channel c, pixel p = i*W + j
        i, j = divmod(p, self.W)
        if p == self.pixel + 1:  # a new pixel: everything before it is drawn
            self.trunk = self.advance(x, i, j)  # (n, F)
        elif p != self.pixel:  # (p == self.pixel: a later channel of the same pixel, same trunk)
            raise ValueError(
                f"the cached sampler must visit pixels in raster order: asked for pixel {(i, j)} after pixel "
                f"{divmod(self.pixel, self.W)}; start a new init_cache, or sample with cached=False")
        return self.head(x, c, i, j)  # (n, 1, K)

    def complete(self, x: torch.Tensor, q: int):
        """Pixel q is fully drawn: write it into the first layer's maps and push its keys and values."""
        i, j = divmod(q, self.W)
        xq = self.features(x, i, j)  # (n, C_in)
        x_in = torch.cat([xq, self.ones], dim=1)  # (n, C_in+1): [x, 1]
        self.in_down.write(x_in, i, j)
        self.in_right.write(x_in, i, j)
        pos = self.pos[q].expand(self.n, -1)  # (n, 2)
        for block in self.blocks:
            block["attention"].push(torch.cat([block["attn_in"], xq, pos], dim=1))  # keys/values read [h, x, p]

    def features(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """The model's input features of pixel (i, j), (n, C_in): scaled to [-1, 1], or embedded."""
        return self.model.scaled(x[:, :, i: i + 1, j: j + 1]).flatten(1)  # (n, C_in, 1, 1) -> (n, C_in)

    def first_layer(self, i: int, j: int) -> torch.Tensor:
        """down_shift(in_down(x_in)) + right_shift(in_right(x_in)) at (i, j): (n, F); the shifts
        bring zeros into row 0 and column 0."""
        if i == 0 and j == 0:  # nothing before pixel (0, 0)
            return self.model.pos.new_zeros(self.n, self.channels)  # (n, F)
        above = self.in_down.output(i - 1, j) if i > 0 else 0.0  # (n, F): row i-1, columns j-1..j+1
        left = self.in_right.output(i, j - 1) if j > 0 else 0.0  # (n, F): column j-1, rows i-1..i
        return above + left  # (n, F)

    def advance(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """Trunk features (n, F) of the new pixel p = (i, j), computing p only."""
        p = i * self.W + j
        if p > 0:
            self.complete(x, p - 1)
        h = self.first_layer(i, j)  # (n, F)
        if self.class_vector is not None:
            h = h + self.class_vector  # the class, at every position
        pos = self.pos[p].expand(self.n, -1)  # (n, 2)
        for block in self.blocks:
            for layer in block["res"]:
                h = layer(h, i, j)  # (n, F), (2, 2) windows
            block["attn_in"] = h
            a = block["attention"].read(torch.cat([h, pos], dim=1), p)  # (n, V): queries read [h, p]
            h = block["mix"](h, i, j, skip=a)  # (n, F), 1x1
        self.pixel = p
        return h

    def head(self, x: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
        """log-probabilities (n, 1, K) of channel c at (i, j): the masked 1x1 head on the trunk
        and the current pixel's channels < c (the mask hides channel c and later ones)."""
        xp = self.features(x, i, j)  # (n, C_in)
        z = self.head_trunk(F.elu(self.trunk)) + self.head_pixel(xp)  # (n, G)
        logits = self.head_out[c](F.elu(z))  # (n, K): channel c's block of the C*K outputs
        return torch.log_softmax(logits, dim=-1)[:, None]  # (n, 1, K)
