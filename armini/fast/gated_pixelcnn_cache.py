"""Cached sampling for Gated PixelCNN (Ramachandran et al., 2017, "Fast Generation for Convolutional
Autoregressive Models"), spelled out layer by layer so that a step is a few matrix products.

Gated PixelCNN's two stacks need different care (armini.models.gated_pixelcnn):

- the vertical stack at row i reads rows < i only, so the whole row is computed once, when the row
  starts (the "vertical stream updates once per row" of the paper): per layer, its convolution on the
  kh rows it reads (kept per layer, zero-padded left and right: one output row), the 1x1 link to the
  horizontal stack as one matrix product straight into the row's links (gate order, the h convolution's
  bias added), and the gate (the model's own `gate`) giving the next layer's input row;
- the horizontal stack at (i, j) reads its own row, positions j-r..j of every layer's input
  (a 1 x (r+1) convolution). Per pixel and per layer l, with F feature channels:

      window  = the layer's input at (i, j-r..j)                       (n, (r+1) F_in), a view
      pre     = link_l(i, j) + window @ W_h                            (n, 2F)  one addmm
      g_l     = tanh(pre[:, :F]) * sigmoid(pre[:, F:])                 (n, F)   the gate (eq. 2)
      next input at (i, j) = h + [g_l, 1] @ [W_out; b_out]             (n, F)   one addmm (no h in
                                                                                the first layer)
  then, once for all layers, the summed skip connections as one product of every layer's gate:

      skip = sum_l (g_l @ W_skip_l + b_skip_l) = [g_1, 1, g_2, 1, ...] @ [W_skip_1; b_skip_1; ...]

  and relu -> 1x1 -> relu -> the K logits of the one channel being drawn -> log-softmax.
  (A column of ones beside an input carries the bias inside the matrix product: one operation
  instead of two, and a step is bound by the number of operations, not by arithmetic.)

How it differs from the generic cache (armini.sampling_cache.CachedConvSampling), which runs the
model's own forward code on a strip: the same arithmetic, without the per-step Python around it
(module calls, window bookkeeping, new tensors). What is worked out once per sampling run:

- each layer's input for the current row lives in a buffer (n, r + W, F_in), position-major, with
  r zero columns on the left (the convolution's padding): the window of (i, j) is a *view*
  buf[:, j:j+r+1] flattened, and W_h is the masked weight reordered to match (tap-major);
- the gate's halves are made contiguous by reordering the output channels of W_h, the links and
  W_o once (with C colour groups, `halves` interleaves them: [f_0 g_0 | f_1 g_1 | ...]);
- the h convolution's bias is added to the row's links once per row;
- the gates of all layers live side by side in one buffer [g_1, 1, g_2, 1, ...], written in place;
- the input at a pixel is a row of a table of each level's input features (looked up, not recomputed);
- only the logits of the channel being drawn are computed (rows c K .. c K + K-1 of the last layer).

Only the raw image is ever stale: the previous pixel's last channel was drawn after that pixel was
computed, so its input column is written from x when the sampler moves past it (every later layer's
feature at a pixel ignores that pixel's last value, mask A); with several channels the current pixel's
input is written at every step too (its channels < c are read). A step runs on one CPU thread in inference mode.

Legend: n images sampled, C image channels, F feature channels, r = k//2 of a horizontal kernel,
W width, K levels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sampling_cache import LevelTable, PixelByPixel, RasterCursor, StepMode, conv_weight


def gate_order(channels2: int, groups: int) -> torch.Tensor:
    """The channel order that makes `halves` a plain split: (2F,) indices, first every group's f
    channels (group by group), then every group's g channels (armini.models.gated_pixelcnn.halves)."""
    per = channels2 // (2 * groups)  # channels of one half of one group
    first = torch.arange(groups)[:, None] * 2 * per + torch.arange(per)[None, :]  # (groups, per)
    return torch.cat([first.flatten(), (first + per).flatten()])  # (2F,)


def with_bias_row(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[W; b]: (F_in + 1, out), for [x, 1] @ [W; b] = x @ W + b in one product."""
    return torch.cat([W, b[None]]).contiguous()


class _Layer:
    """One gated layer's weights, reordered once: the horizontal stack's for per-pixel matrix products,
    the vertical stack's for one output row per row."""

    def __init__(self, layer, order: torch.Tensor):
        w = conv_weight(layer.h_conv).detach()[order]  # (2F, F_in, 1, r+1), masked, gate halves contiguous
        self.r, self.F = w.shape[-1] - 1, w.shape[0] // 2
        self.W_h = w[:, :, 0].permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous()  # ((r+1) F_in, 2F), tap-major
        self.b_h = layer.h_conv.bias.detach()[order]  # (2F,)
        self.order = order
        W_o = conv_weight(layer.h_out).detach()[order, :, 0, 0].t()  # (F, 2F): [out | skip]
        b_o = layer.h_out.bias.detach()[order]
        self.W_out1 = with_bias_row(W_o[:, :self.F], b_o[:self.F])  # (F + 1, F): [W_out; b_out]
        self.W_skip1 = with_bias_row(W_o[:, self.F:], b_o[self.F:])  # (F + 1, F): [W_skip; b_skip]
        self.first = layer.first
        # the vertical stack: v_pre = v_conv(the kh rows it reads); link = v_pre @ W_link + b_link (gate order)
        self.v_left, self.v_right = layer.v_conv.pad[:2]  # zero columns left and right
        self.W_v, self.b_v = conv_weight(layer.v_conv).detach(), layer.v_conv.bias.detach()  # (2F, F_in, kh, kw)
        self.W_link = conv_weight(layer.v_to_h).detach()[order, :, 0, 0].t().contiguous()  # (2F, 2F): v_pre -> link
        self.b_link = layer.v_to_h.bias.detach()[order] + self.b_h  # (2F,): + the h convolution's bias, once per row
        self.groups = layer.groups


class GatedPixelCNNCache(PixelByPixel):
    """What GatedPixelCNN.init_cache returns: the per-row buffers, the row's links and the weights.

    conditional_logprobs(x, index) -> (n, 1, K) for the next dimension (index: its flat position, (1,));
    the step's bookkeeping is PixelByPixel's (armini.sampling_cache)."""

    def __init__(self, model, x: torch.Tensor, y=None):
        C, H, W = model.shape
        self.model, self.y, self.C, self.W = model, y, C, W
        self.cursor = RasterCursor(x, W)
        self.mode = StepMode(x.device)  # one thread, inference mode
        n, dev, dtype = x.shape[0], x.device, model.head[-1].weight.dtype
        new = lambda *size: torch.zeros(n, *size, dtype=dtype, device=dev)  # noqa: E731
        with torch.inference_mode():
            self.level_table = LevelTable(model.inputs, C, model.levels, dtype, dev)  # every level's input features
            self.layers = [_Layer(layer, gate_order(2 * layer.h_out.in_channels, C)) for layer in model.layers]
            widths = [model.inputs.out_channels] + [L.F for L in self.layers[:-1]]  # each layer's input channels
            # every buffer is made once; a step only writes into them (views worked out here too)
            self.inputs = [new(L.r + W, f) for L, f in zip(self.layers, widths)]  # (n, r + W, F_in), zero padded
            self.links = [new(W, 2 * L.F) for L in self.layers]  # (n, W, 2F): the current row's links
            # the rows each vertical convolution reads, the last being row i: (n, F_in, kh, left + W + right)
            self.v_rows = [new(layer.v_conv.in_channels, layer.v_conv.kernel_size[0], L.v_left + W + L.v_right)
                           for layer, L in zip(model.layers, self.layers)]
            for L, rows, layer in zip(self.layers, self.v_rows, model.layers):
                L.v_new = rows[:, :, -1, L.v_left:L.v_left + W]  # (n, F_in, W): where row i goes
                # the class terms (eq. 4), fixed for this cache: V_v y before the vertical gate, V_h y in the links
                L.v_class = None if y is None else layer.V_v(y).detach()[:, :, None, None]  # (n, 2F, 1, 1)
                L.link_bias = L.b_link if y is None else L.b_link + layer.V_h(y).detach()[:, L.order][:, None]  # (n, 1, 2F)
            from ..models.gated_pixelcnn import gate  # the model's gated activation (imported here: no import cycle)
            self.gate = gate
            self.gates = torch.ones(n, sum(L.F + 1 for L in self.layers), dtype=dtype, device=dev)  # [g_1, 1, g_2, 1, ...]
            start = 0
            for L, inp, link in zip(self.layers, self.inputs, self.links):
                L.windows = [inp[:, j:j + L.r + 1].reshape(n, -1) for j in range(W)]  # (n, (r+1) F_in) views
                L.here = [inp[:, L.r + j] for j in range(W)]  # (n, F_in): the input at (i, j)
                L.link = [link[:, j] for j in range(W)]  # (n, 2F)
                L.pre, L.s = new(2 * L.F), new(L.F)
                L.pre_f, L.pre_g = L.pre[:, :L.F], L.pre[:, L.F:]  # the gate's halves
                L.g1 = self.gates[:, start:start + L.F + 1]  # (n, F + 1): [g_l, 1]
                L.g = L.g1[:, :L.F]
                start += L.F + 1
            self.first_input = self.layers[0].here  # (n, C_in) per column: the image's features at (i, j)
            for L, nxt in zip(self.layers, self.layers[1:]):
                L.next = nxt.here  # where this layer's output goes: the next layer's input at (i, j)
            self.W_skip = torch.cat([L.W_skip1 for L in self.layers])  # (sum (F+1), F)
            self.skip = new(self.layers[0].F)  # (n, F): the summed skip connections
            hidden, last = model.head[1], model.head[3]  # relu, 1x1, relu, 1x1 to C*K
            self.W_1 = conv_weight(hidden).detach()[:, :, 0, 0].t().contiguous()  # (F, hidden)
            self.b_1 = hidden.bias.detach()
            self.hidden = new(self.W_1.shape[1])  # (n, hidden)
            K = model.levels
            w_2 = conv_weight(last).detach()[:, :, 0, 0]  # (C*K, hidden), block c: channel c's logits
            self.W_2 = [w_2[c * K:(c + 1) * K].t().contiguous() for c in range(C)]  # (hidden, K) per channel
            self.b_2 = [last.bias.detach()[c * K:(c + 1) * K] for c in range(C)]
            self.logits = new(1, K)  # (n, 1, K)
            self.logits_c = self.logits[:, 0]  # (n, K): where the channel's logits are written

    def start_row(self, x: torch.Tensor, i: int):
        """The vertical stack over the whole row i (it reads rows < i, all drawn), kept as each
        layer's link to the horizontal stack, with the h convolution's bias added: (n, W, 2F).

        Each layer keeps the kh rows its vertical convolution reads for row i (kh: its kernel's height;
        rows above the image are zeros, the convolution's top padding), so the convolution of those
        rows alone, zero-padded left and right, is row i: (n, 2F, 1, W)."""
        new = self.model.scale(x[:, :, i - 1:i])[:, :, 0] if i > 0 else None  # (n, C_in, W): row i of down_shift(x)
        for L, rows, keep in zip(self.layers, self.v_rows, self.links):
            rows[:, :, :-1] = rows[:, :, 1:].clone()  # every row up one ...
            if new is None:
                L.v_new.zero_()  # (the image moved down one row: zeros at i = 0)
            else:
                L.v_new.copy_(new)  # ... and the input's row i last
            v_pre = F.conv2d(rows, L.W_v, L.b_v)  # (n, 2F, 1, W): the vertical convolution at row i
            torch.matmul(v_pre[:, :, 0].transpose(1, 2), L.W_link, out=keep)  # (n, W, 2F): the link, gate order
            keep += L.link_bias  # + its bias and the h convolution's (+ V_h y)
            if L.v_class is not None:
                v_pre = v_pre + L.v_class  # + V_v y (eq. 4)
            new = self.gate(v_pre, L.groups)[:, :, 0]  # (n, F, W): the next layer's input at row i

    def pixel(self, c: int, j: int) -> torch.Tensor:
        """log p(x_c | everything before) at (i, j) of the current row, its inputs written: (n, 1, K)."""
        for L in self.layers:
            torch.addmm(L.link[j], L.windows[j], L.W_h, out=L.pre)  # (n, 2F): link + window @ W_h
            torch.tanh(L.pre_f, out=L.g).mul_(torch.sigmoid(L.pre_g, out=L.s))  # g_l (n, F), eq. 2
            if L is not self.layers[-1]:  # the next layer's input at (i, j): [g, 1] @ [W_out; b_out] (+ h)
                if L.first:
                    torch.mm(L.g1, L.W_out1, out=L.next[j])
                else:
                    torch.addmm(L.here[j], L.g1, L.W_out1, out=L.next[j])  # residual
        torch.mm(self.gates, self.W_skip, out=self.skip).relu_()  # (n, F): every layer's skip, summed
        torch.addmm(self.b_1, self.skip, self.W_1, out=self.hidden).relu_()  # (n, hidden)
        torch.addmm(self.b_2[c], self.hidden, self.W_2[c], out=self.logits_c)  # (n, K)
        return torch.log_softmax(self.logits, dim=-1)  # (n, 1, K)
