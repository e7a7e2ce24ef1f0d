"""Gated PixelCNN (van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu, 2016,
"Conditional Image Generation with PixelCNN Decoders").

Two changes to PixelCNN (lesson 02):

1. No blind spot. Two stacks of convolutions run side by side. The *vertical*
   stack sees every pixel in the rows above (a k x k kernel whose rows below
   the centre are cut off; the first layer also hides the centre row). The
   *horizontal* stack sees the pixels to the left in the current row (a 1 x k
   kernel cut off right of the centre; the first layer also hides the centre).
   Each layer adds the vertical stack's features to the horizontal stack
   through a 1x1 convolution; never the other way round, or the vertical stack
   would see the current row and leak the future. For k = 3, `o` the output:

       vertical, first layer     vertical, later layers      horizontal   (first: o hidden)
         # # #   (row i-1)         # # #   (row i-1)           # o        (row i)
         . o .   (row i)           # o #   (row i, features
                                            that only know rows < i)

   Together they cover every earlier pixel within the receptive field.

2. Gated activations instead of ReLUs, with a class label y added to the gates:

       h = tanh(W_f * x + V_f y) . sigmoid(W_g * x + V_g y)        (eq. 2 and 4)

Per layer, F feature channels, the paper's Figure 2:

    v_pre  = W_v * v                                  (B, 2F, H, W)  vertical stack
    v_next = gate(v_pre + V_v y)                      (B, F, H, W)
    h_pre  = W_h * h + 1x1(v_pre) + V_h y             (B, 2F, H, W)  vertical -> horizontal link
    g      = gate(h_pre)                              (B, F, H, W)
    skip  += 1x1_s(g)                                 skip connections to the output
    h_next = h + 1x1_h(g)     (no residual in the first layer: h is the image, the residual would leak it)

then relu -> 1x1 -> relu -> 1x1 to C*K logits, a K-way softmax per sub-pixel.

Colour (C = 3): feature channels are split into C contiguous groups, group g
belonging to image channel g (R, G, B). At the current position the
horizontal convolutions and every 1x1 convolution of the horizontal stack are
channel-masked as in armini.nn.masked: group g reads image channels < g in
the first layer and groups <= g afterwards, so x_{i,j,G} sees x_{i,j,R} but
not itself. The vertical stack never sees the current row and needs no mask.
The gate pairs channels within a group (each group of 2F/C channels is [f | g]),
so gating never mixes groups.

Deviations from the paper: the vertical stack's first layer is written as a
(k//2) x k convolution of the down-shifted image (armini.nn.shifted), which is
the paper's "k x k with the centre row and everything below masked"; the
horizontal convolution is the paper's 1 x (k//2 + 1); pixel values are scaled to
[-1, 1] rather than one-hot (codebook indices: input="embedding", armini.nn.inputs); the network is small (CPU); the class embedding
V y is a learned vector per class (one-hot y times a matrix).

Fast sampling (Ramachandran et al., 2017; armini.fast.gated_pixelcnn_cache): the
vertical stack is computed once per row, when the row starts (it only reads
earlier rows); the horizontal stack and the head once per pixel, from cached windows.

Legend: B batch, C image channels, H, W height and width, K levels, F feature channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.heads import categorical_logits, softmax_head
from ..nn.inputs import ValueInput
from ..nn.masked import MaskedConv2d
from ..nn.shifted import DownRightShiftedConv2d, DownShiftedConv2d, down_shift
from ..fast.gated_pixelcnn_cache import GatedPixelCNNCache
from ..sampling_cache import conv_weight
from .base import ARModel


def halves(a: torch.Tensor, groups: int = 1):
    """Split (B, 2F, H, W), laid out as `groups` contiguous channel groups each holding [first | second],
    into two (B, F, H, W) tensors whose channel groups still line up with the input's."""
    if groups == 1:
        return a.chunk(2, dim=1)  # (B, F, H, W) twice
    B, F2, H, W = a.shape
    a = a.view(B, groups, 2, F2 // (2 * groups), H, W)  # (B, groups, 2, F/groups, H, W)
    return a[:, :, 0].reshape(B, F2 // 2, H, W), a[:, :, 1].reshape(B, F2 // 2, H, W)


def gate(a: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The gated activation tanh(f) * sigmoid(g): (B, 2F, H, W) laid out as for `halves` -> (B, F, H, W)."""
    f, g = halves(a, groups)
    return torch.tanh(f) * torch.sigmoid(g)  # eq. 2


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a 1x1 convolution, written as one batched matrix product: (B, in, H, W) -> (B, out, H, W).

    The same numbers as conv(x), masked or not (the weight it really uses: conv_weight). On CPU it
    skips oneDNN's conversions of x and of the output to its blocked layout and back, slow when the
    channels are not a multiple of 16: measured (one thread, batch 32, 28x28, forward + backward)
    49.5 vs 76.2 ms for 152 -> 152 channels, 28.4 vs 35.6 ms for 76 -> 152; a whole training step of
    the 837k-parameter model about 3% faster on one thread (per-round medians 0.964, 0.967, 0.987),
    no measurable change on two (1.016)."""
    B, _, H, W = x.shape
    w = conv_weight(conv)  # (out, in, 1, 1), weight * mask for a masked convolution
    w = w.view(1, w.shape[0], w.shape[1]).expand(B, -1, -1)  # (B, out, in), the same matrix for every image
    return torch.baddbmm(conv.bias.view(1, -1, 1), w, x.flatten(2)).view(B, -1, H, W)  # bias + W x, (B, out, H*W)


class GatedLayer(nn.Module):
    """One layer of both stacks (the paper's Figure 2). `first`: the layer that reads the image."""

    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool, groups: int,
                 num_classes: Optional[int]):
        super().__init__()
        F2, r = 2 * channels, kernel // 2
        self.first, self.groups = first, groups
        # vertical: (r+1) x k over a stack that knows rows < i; the first layer reads r rows of the image above
        self.v_conv = DownShiftedConv2d(in_channels, F2, (r if first else r + 1, kernel))
        # horizontal: 1 x (r+1) ending at the current pixel, which is hidden (A) or visible (B) per channel group
        self.h_conv = DownRightShiftedConv2d(in_channels, F2, (1, r + 1), "A" if first else "B", groups)
        self.v_to_h = nn.Conv2d(F2, F2, 1)  # no mask: the vertical stack never sees row i
        # the horizontal stack's output and its skip connection, one 1x1 convolution for both (halves)
        self.h_out = MaskedConv2d(channels, F2, 1, "B", groups)
        if num_classes is not None:
            self.V_v = nn.Embedding(num_classes, F2)  # V y for the vertical gates (eq. 4)
            self.V_h = nn.Embedding(num_classes, F2)  # and for the horizontal ones

    def vertical(self, v: torch.Tensor, y=None):
        """v (B, F_in, H, W) -> (next v (B, F, H, W), what the horizontal stack adds (B, 2F, H, W)).

        The second output is 1x1(v_pre) + V_h y: the link and the horizontal gates' class term,
        summed here so that the fast sampler computes both once per row."""
        v_pre = self.v_conv(v)  # (B, 2F, H, W)
        link = conv1x1(self.v_to_h, v_pre)  # (B, 2F, H, W), = self.v_to_h(v_pre)
        if y is not None:
            v_pre = v_pre + self.V_v(y)[:, :, None, None]  # + V_v y, (B, 2F, 1, 1) broadcast (eq. 4)
            link = link + self.V_h(y)[:, :, None, None]  # + V_h y
        return gate(v_pre, self.groups), link

    def horizontal(self, h: torch.Tensor, link: torch.Tensor):
        """h (B, F_in, H, W), link (B, 2F, H, W) from `vertical` -> (next h (B, F, H, W), skip (B, F, H, W))."""
        g = gate(self.h_conv(h) + link, self.groups)  # (B, F, H, W)
        out, skip = halves(conv1x1(self.h_out, g), self.groups)  # (B, F, H, W) twice, = self.h_out(g)
        return (out if self.first else h + out), skip  # residual except in the first layer


@dataclass
class GatedPixelCNNConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    channels: int = 32  # F, feature channels of both stacks (rounded up to a multiple of C)
    n_layers: int = 6  # gated layers, the first reading the image
    kernel: int = 3  # k of the later layers: vertical (k//2+1) x k, horizontal 1 x (k//2+1)
    first_kernel: int = 7  # k of the first layer: vertical (k//2) x k, horizontal 1 x (k//2+1)
    head_channels: int = 96  # width of the 1x1 output layer (rounded up to a multiple of C)
    num_classes: Optional[int] = None  # class-conditional with this many classes (None: unconditional)
    input: str = "ordinal"  # how values are read: "ordinal" (pixels) or "embedding" (codebook indices)
    embed_dim: int = 16  # embedding size per channel when input="embedding"


class GatedPixelCNN(ARModel):
    """Gated PixelCNN with vertical and horizontal stacks, optional class conditioning, K-way softmax."""

    rows_so_far = True  # row i reads rows <= i: the naive sampler feeds the rows so far (armini.models.base)

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = GatedPixelCNNConfig(shape=self.shape, levels=self.levels, **kwargs)
        C = self.shape[0]
        for name in ("kernel", "first_kernel"):
            k = getattr(cfg, name)
            if k < 3 or k % 2 != 1:
                raise ValueError(f"{name} must be odd and at least 3, got {k}")
        if cfg.n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {cfg.n_layers}")
        cfg.channels = -(-cfg.channels // C) * C  # C channel groups
        cfg.head_channels = -(-cfg.head_channels // C) * C
        self.config = cfg
        self.set_classes(cfg.num_classes)
        K, F = self.levels, cfg.channels
        self.inputs = ValueInput(K, C, cfg.input, cfg.embed_dim)  # (B, C, H, W) -> (B, C_in, H, W)
        self.layers = nn.ModuleList(
            GatedLayer(F if l else self.inputs.out_channels, F, cfg.kernel if l else cfg.first_kernel, l == 0, C, cfg.num_classes)
            for l in range(cfg.n_layers)
        )
        self.head = softmax_head(F, cfg.head_channels, C, K)  # relu, 1x1, relu, 1x1 to C*K, all mask B

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Integer values (B, C, H, W) -> input features (B, C_in, H, W) (armini.nn.inputs)."""
        return self.inputs(x, self.head[-1].weight.dtype)  # float32, or float64 after model.double()

    def head_logprobs(self, skip: torch.Tensor) -> torch.Tensor:
        """Summed skip connections (B, F, H, W) -> log-probabilities (B, C, H, W, K)."""
        out = self.head(skip)  # (B, C*K, H, W), block c holds channel c's K logits
        return torch.log_softmax(categorical_logits(out, self.shape[0], self.levels), dim=-1)  # (B, C, H, W, K)

    def skip_sum(self, x, y=None) -> torch.Tensor:
        """Both stacks over the image x (B, C, H, W): the summed skip connections (B, F, H, W) the head reads."""
        s = self.scale(x)  # (B, C, H, W)
        v, h, skip = down_shift(s), s, None  # the vertical stack starts from the image moved down one row
        for layer in self.layers:
            v, link = layer.vertical(v, y)  # (B, F, H, W), (B, 2F, H, W)
            h, sk = layer.horizontal(h, link)  # (B, F, H, W) twice
            skip = sk if skip is None else skip + sk
        return skip

    def conditionals(self, x, y=None):
        return self.head_logprobs(self.skip_sum(x, y))  # (B, C, H, W, K)

    def log_prob_pixels(self, x, y=None):
        """log p(x_d | x_<d) of the true values only, (B, C, H, W): what training needs.

        The same numbers as conditionals(x).gather(x), as a cross-entropy on the head's output in
        its own layout: (B, C*K, H, W) is (B*C, K, H, W), K at dim 1, without the (B, C, H, W, K)
        view whose strided log-softmax costs two copies of the logits (forward and backward)."""
        B, C, H, W = x.shape
        out = self.head(self.skip_sum(x, y))  # (B, C*K, H, W), block c holds channel c's K logits
        nll = F.cross_entropy(out.view(B * C, self.levels, H, W), x.reshape(B * C, H, W).long(), reduction="none")
        return -nll.view(B, C, H, W)  # log softmax(logits)[x]

    # ------------------------------------------------------------ fast sampling
    def init_cache(self, x, y=None):
        """The cached sampler (armini.fast.gated_pixelcnn_cache): the vertical stack once per row, the
        horizontal stack and the head once per pixel, as a few matrix products."""
        return GatedPixelCNNCache(self, x, y)

    def conditional_logprobs(self, x, index, y=None, cache=None):
        if cache is None:
            return super().conditional_logprobs(x, index, y)  # the naive sampler
        return cache.conditional_logprobs(x, index)  # (n, 1, K)
