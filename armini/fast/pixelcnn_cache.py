"""Cached sampling for PixelCNN (Ramachandran et al., 2017, "Fast Generation for Convolutional
Autoregressive Models"), spelled out layer by layer so that a step is a few matrix products.

PixelCNN (armini.models.pixelcnn) is a k0 x k0 mask-A convolution, residual blocks
(relu, 1x1, relu, 3x3, relu, 1x1, all mask B) and a 1x1 head. At pixel (i, j) each masked k x k
convolution reads rows i-p..i (p = k//2) of its input, every column j-p..j+p of the rows above and
columns <= j of row i (the masked taps are zero). All of that is final when (i, j) is computed:
earlier pixels were computed at their own steps. So each spatial convolution keeps its whole input
map, position-major and zero-padded,

    map  (n, p + H, p + W + p, F_in)        the input at (i, j) is map[:, p + i, p + j]
    window of (i, j) = map[:, i:i+p+1, j:j+k]  -> (n, (p+1) k F_in) @ W   (W: the kernel's top p+1 rows)

and a step computes the one new position through every layer:

    h = b_0 [+ class vector] + window_0 @ W_0                        (n, F)   the mask-A layer
    for each block:  t = relu(relu(h) @ W_a + b_a)                    (n, F/2)
                     write t into the 3x3's map; u = relu(window @ W_b + b_b)
                     h = h + u @ W_c + b_c                            (n, F)   residual
    logits of the channel being drawn = relu(relu(h) @ W_1 + b_1) @ W_2[c] + b_2[c]

The same arithmetic as the model's forward on the whole image (masked weights, same order of
layers), without the per-step Python of the generic cache (armini.sampling_cache), which runs the
model's own modules on a strip. Only the raw image is ever stale: the previous pixel's last channel
was drawn after that pixel was computed, so its input is rewritten from x at the next step (every
later feature at a pixel ignores the value drawn last there, mask A). A subclass with its own
forward (`logits`) keeps the generic cache, which runs that forward. A step runs on one CPU thread
in inference mode.

Legend: n images sampled, C image channels, F feature channels, H, W height and width, K levels.
"""
from __future__ import annotations

import torch

from ..sampling_cache import RasterCursor, conv_weight, one_thread_on_cpu


def window_matrix(conv) -> tuple:
    """A masked k x k convolution as a matrix over its causal window: ((p+1) k F_in, out) laid out
    (row, column, channel) to match map[:, i:i+p+1, j:j+k] flattened, and p = k//2."""
    w = conv_weight(conv).detach()  # (out, F_in, k, k), masked
    p = w.shape[-1] // 2
    return w[:, :, :p + 1].permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous(), p  # rows below: all zero


def pointwise(conv) -> torch.Tensor:
    """A masked 1x1 convolution's weight as (F_in, out) for x @ W."""
    return conv_weight(conv).detach()[:, :, 0, 0].t().contiguous()


class PixelCNNCache:
    """What PixelCNN.init_cache returns: every spatial convolution's input map and the weights as matrices.

    conditional_logprobs(x, index) -> (n, 1, K) for the next dimension (index: its flat position, (1,))."""

    def __init__(self, model, x: torch.Tensor, y=None):
        C, H, W = model.shape
        self.model, self.C = model, C
        self.cursor = RasterCursor(x, W)
        n, dev, dtype = x.shape[0], x.device, model.input_conv.weight.dtype
        with torch.inference_mode():
            self.W_0, self.p_0 = window_matrix(model.input_conv)
            b_0 = model.input_conv.bias.detach().expand(n, -1)  # (n, F)
            if y is not None:
                b_0 = b_0 + model.class_emb(y)  # the class vector, at every position
            self.b_0 = b_0.contiguous()
            self.map_0 = self.new_map(n, H, W, self.p_0, model.inputs.out_channels, dtype, dev)
            self.blocks = []
            for block in model.blocks:
                a, b, c = block.net[1], block.net[3], block.net[5]  # 1x1, 3x3, 1x1
                W_b, p = window_matrix(b)
                self.blocks.append((pointwise(a), a.bias.detach(), W_b, b.bias.detach(), p,
                                    self.new_map(n, H, W, p, b.in_channels, dtype, dev), pointwise(c), c.bias.detach()))
            hidden, last = model.head[1], model.head[3]  # relu, 1x1, relu, 1x1 to C*K
            self.W_1, self.b_1 = pointwise(hidden), hidden.bias.detach()
            K = model.levels
            w_2 = pointwise(last)  # (hidden, C*K), block c: channel c's logits
            self.W_2 = [w_2[:, c * K:(c + 1) * K].contiguous() for c in range(C)]  # (hidden, K) per channel
            self.b_2 = [last.bias.detach()[c * K:(c + 1) * K] for c in range(C)]

    @staticmethod
    def new_map(n, H, W, p, channels, dtype, dev) -> torch.Tensor:
        """A convolution's input map, zero-padded p rows on top and p columns each side: (n, p + H, p + W + p, F_in)."""
        return torch.zeros(n, p + H, 2 * p + W, channels, dtype=dtype, device=dev)

    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        with one_thread_on_cpu(x.device), torch.inference_mode():
            last = self.cursor.last  # the previous pixel: its last channel was drawn after it was computed
            c, i, j, _ = self.cursor.advance(x, index)
            qi, qj = divmod(last, self.cursor.W)
            if last >= 0 and qi != i:  # the end of the row above (the 7x7 layer reads it)
                self.write_pixels(x, qi, qj, qj + 1)
            self.write_pixels(x, i, qj if qi == i else j, j + 1)  # this pixel (and the one before it)
            return self._pixel(x, c, i, j).unsqueeze(1)  # (n, 1, K)

    def write_pixels(self, x: torch.Tensor, i: int, j0: int, j1: int):
        """The first layer's input at (i, j0..j1-1) from the image as it is now."""
        p = self.p_0
        pixels = self.model.inputs(x[:, :, i, j0:j1, None], self.map_0.dtype)[..., 0]  # (n, C_in, P)
        self.map_0[:, p + i, p + j0:p + j1] = pixels.transpose(1, 2)

    def _pixel(self, x: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
        """log p(x_c | everything before) at (i, j), its input written: (n, K)."""
        n, p = x.shape[0], self.p_0
        window = self.map_0[:, i:i + p + 1, j:j + 2 * p + 1].reshape(n, -1)  # (n, (p+1) k C_in)
        h = torch.addmm(self.b_0, window, self.W_0)  # (n, F)
        for W_a, b_a, W_b, b_b, q, conv_map, W_c, b_c in self.blocks:
            t = torch.addmm(b_a, torch.relu(h), W_a).relu_()  # (n, F/2)
            conv_map[:, q + i, q + j] = t  # the 3x3's input at (i, j)
            window = conv_map[:, i:i + q + 1, j:j + 2 * q + 1].reshape(n, -1)  # (n, (q+1) 3 F/2)
            u = torch.addmm(b_b, window, W_b).relu_()  # (n, F/2)
            h = torch.addmm(b_c, u, W_c).add_(h)  # (n, F): h + net(h)
        hidden = torch.addmm(self.b_1, h.relu_(), self.W_1).relu_()  # (n, hidden)
        return torch.log_softmax(torch.addmm(self.b_2[c], hidden, self.W_2[c]), dim=-1)  # (n, K)
