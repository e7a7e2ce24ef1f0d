"""PixelRNN: Row LSTM and Diagonal BiLSTM (van den Oord, Kalchbrenner & Kavukcuoglu, 2016,
"Pixel Recurrent Neural Networks", sections 3.1-3.4 and Table 1).

Both models read the image through one 7x7 mask-A convolution, then a stack of
LSTM layers with residual connections, then two 1x1 mask-B convolutions to a
K-way softmax per sub-pixel (the same head as PixelCNN). Each LSTM layer splits
its work in two, as the paper does:

- input-to-state K^is * x, a masked convolution computed for the whole map at once;
- state-to-state K^ss * h, an unmasked convolution of the previous step's hidden
  state, computed one step at a time (the recurrence, hence slow: H steps per
  forward pass for the Row LSTM, W + H - 1 for the Diagonal BiLSTM).

    [o, f, i, g] = sigma(K^ss * h_prev + K^is * x)   (sigmoid for o, f, i; tanh for g)
    c = f * c_prev + i * g
    h = o * tanh(c)

Row LSTM (section 3.1): one step is one image row, top to bottom. K^is is a
1 x k mask-B convolution along the current row (the pixel and its left
neighbours); K^ss a width-k convolution of the previous row's states. The
states of row i, column j read row i-1 at columns j-1..j+1, which read row i-2
at j-2..j+2, ...: a triangle above the pixel (widened by the 7x7 convolution's
reach) that misses the far right of the rows above and, in a wide image, the
far left of the current row.

Diagonal BiLSTM (section 3.2): the map is skewed (row i shifted right by i) so
every diagonal i + j = t becomes column t; an LSTM runs over the columns left to
right with a 1x1 mask-B K^is and a 2 x 1 column convolution K^ss, so pixel (i, j)
reads the states of its left neighbour (i, j-1) and of the pixel above (i-1, j).
A second LSTM does the same on the mirrored image; it sees the right of the
current row, the future, so its output is shifted down by one row before the
two are added. Every earlier pixel is in the context: no blind spot.

Colour (section 3.4): every feature map, the LSTM's hidden units and their four
gates included, is split into C contiguous channel groups; the masked
convolutions carry the channel-group mask, so group g sees image channels < g
of its own pixel. The state-to-state convolutions read earlier pixels only (the
previous row, the left neighbour, the pixel above), so they need no mask.

Fast sampling (not in the paper): both models keep their LSTM states between
sampling steps and update only what the new value changes: a row per step for
the Row LSTM, a pixel per step (and the right-to-left pass once per row) for
the Diagonal BiLSTM.

Deviations from the paper: inputs are values scaled to [-1, 1]; widths and depth
are small (the paper's models are much deeper and wider) so a CPU trains them
in minutes; residual connections as in section 3.3 (a 1x1 mask-B convolution
maps the h hidden units back to the 2h channels of the residual stream), but
no skip connections to the output. The Diagonal BiLSTM's right-to-left pass
reads the residual stream and the pixel values without a mask: after the shift
its whole row is in the past, and with the masked stream only (the paper's
description), the last pixel of each row, which enters the stream only through
the 7x7 convolution's reach, would be a blind spot for every pixel of the next
row more than 3 columns from the right edge.

Legend: B batch, C image channels, H, W height and width, K levels, F = 2h residual
channels, h LSTM hidden units, S sequential steps, N cells updated per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fast.pixelrnn_cache import DiagonalBiLSTMCache, RowLSTMCache
from ..nn.heads import categorical_logits, softmax_head
from ..nn.inputs import to_unit_range
from ..nn.masked import MaskedConv2d, MaskedRowConv
from ..nn.shifted import down_shift
from .base import ARModel


# ----------------------------------------------------------------- the LSTM core, shared
def lstm_cell(gates: torch.Tensor, c: torch.Tensor, groups: int):
    """One LSTM update of N cells at once: gates (B, 4h, N), previous cell state c (B, h, N).

    The 4h gate channels are laid out group-major, (groups, 4, h/groups): the four gates
    of a hidden unit sit in the same contiguous channel group as the unit, so a masked
    input-to-state convolution with `groups` channel groups gives each gate its unit's colour."""
    B, N = gates.shape[0], gates.shape[-1]
    gates = gates.view(B, groups, 4, -1, N).transpose(1, 2).reshape(B, 4, -1, N)  # (B, 4, h, N)
    o, f, i, g = gates.unbind(1)  # each (B, h, N), unit n in channel group n // (h / groups)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # c = f * c_prev + i * g
    h = torch.sigmoid(o) * torch.tanh(c)  # h = o * tanh(c)
    return h, c


def lstm_scan(x_is: torch.Tensor, state_to_state, groups: int) -> torch.Tensor:
    """Run an LSTM along axis 2 of precomputed input-to-state maps x_is (B, 4h, S, N);
    step s updates the N cells of slice s (a row, or a skewed column) at once:

        [o, f, i, g]_s = sigma(K^ss * h_{s-1} + K^is * x_s)      (paper, section 3.1)

    state_to_state computes K^ss * h_{s-1}: (B, h, N) -> (B, 4h, N). Returns h (B, h, S, N)."""
    B, four_h, S, N = x_is.shape
    h = x_is.new_zeros(B, four_h // 4, N)  # h_{-1} = 0
    c = torch.zeros_like(h)  # c_{-1} = 0
    hs = []
    for x_s in x_is.permute(2, 0, 1, 3).contiguous().unbind(0):  # S sequential steps: why it is slow
        h, c = lstm_cell(x_s + state_to_state(h), c, groups)  # (B, h, N)
        hs.append(h)
    return torch.stack(hs, dim=2)  # (B, h, S, N)


# ------------------------------------------------------------------------------ Row LSTM
class RowLSTMLayer(nn.Module):
    """x + 1x1(Row LSTM(x)): an LSTM over the rows, top to bottom (paper section 3.1, Figure 4)."""

    def __init__(self, channels: int, hidden: int, groups: int, k: int = 3):
        super().__init__()
        self.groups = groups
        self.input_to_state = MaskedRowConv(channels, 4 * hidden, k, groups)  # K^is: 1 x k, mask B
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, k, padding=k // 2, bias=False)  # K^ss over row i-1
        self.out = MaskedConv2d(hidden, channels, 1, "B", groups)  # h -> 2h channels (section 3.3)

    def forward(self, x: torch.Tensor, image: torch.Tensor = None) -> torch.Tensor:
        """x: the residual stream (B, F, H, W); image: unused (only the Diagonal BiLSTM reads it)."""
        x_is = self.input_to_state(x)  # (B, 4h, H, W): every row at once
        h = lstm_scan(x_is, self.state_to_state, self.groups)  # (B, h, H, W): one row per step
        return x + self.out(h)  # residual connection, (B, F, H, W)

    def step(self, x_row: torch.Tensor, state=None):
        """The layer on one row x_row (B, F, 1, W), given state = (h, c) of the row above
        (None above row 0): the output row (B, F, 1, W) and this row's (h, c), each (B, h, W)."""
        x_is = self.input_to_state(x_row)[:, :, 0]  # (B, 4h, W)
        if state is None:
            zero = x_is.new_zeros(x_is.shape[0], x_is.shape[1] // 4, x_is.shape[2])  # (B, h, W)
            state = (zero, zero)  # h_{-1} = c_{-1} = 0
        h, c = lstm_cell(x_is + self.state_to_state(state[0]), state[1], self.groups)  # (B, h, W)
        return x_row + self.out(h.unsqueeze(2)), (h, c)


# ----------------------------------------------------------------------- Diagonal BiLSTM
def skew(x: torch.Tensor) -> torch.Tensor:
    """Shift row i right by i: (B, F, H, W) -> (B, F, H, W + H - 1), zeros elsewhere.

    Skewed cell (i, t) holds pixel (i, t - i), so column t holds the diagonal i + j = t.
    For pixel (i, j) at (i, t), the previous column holds its left neighbour (i, j-1)
    at (i, t-1) and the pixel above it, (i-1, j), at (i-1, t-1)."""
    H = x.shape[2]
    rows = [F.pad(row, (i, H - 1 - i)) for i, row in enumerate(x.unbind(2))]  # H of (B, F, W+H-1)
    return torch.stack(rows, dim=2)  # (B, F, H, W+H-1)


def unskew(s: torch.Tensor, W: int) -> torch.Tensor:
    """Undo `skew`: (B, F, H, W + H - 1) -> (B, F, H, W), dropping the offset positions."""
    return torch.stack([row[..., i : i + W] for i, row in enumerate(s.unbind(2))], dim=2)  # (B, F, H, W)


class DiagonalLSTM(nn.Module):
    """One direction of the Diagonal BiLSTM: an LSTM over the diagonals, from the top-left corner.

    input_to_state is K^is, a 1x1 convolution to the 4h gates: mask B for the
    left-to-right pass, unmasked for the right-to-left pass (whose output is shifted down)."""

    def __init__(self, input_to_state: nn.Module, hidden: int, groups: int):
        super().__init__()
        self.groups = groups
        self.input_to_state = input_to_state  # K^is: 1x1, (B, *, H, W) -> (B, 4h, H, W)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2, bias=False)  # K^ss: 2 x 1 down a skewed column

    def column_step(self, h: torch.Tensor) -> torch.Tensor:
        """K^ss * h for the previous skewed column h (B, h, H): cell i reads cells i-1 and i. (B, 4h, H)."""
        return self.state_to_state(F.pad(h, (1, 0)))  # a zero state above row 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W = x.shape[3]
        x_is = skew(self.input_to_state(x))  # (B, 4h, H, W+H-1)
        h = lstm_scan(x_is.transpose(2, 3), self.column_step, self.groups)  # (B, h, W+H-1, H): a column per step
        return unskew(h.transpose(2, 3), W)  # (B, h, H, W)

    def cell(self, x_is: torch.Tensor, above, before):
        """One pixel's update, for the fast sampler: x_is (B, 4h) its K^is * x; above and before
        the (h, c) of the pixel above and of the previous pixel on its row, each (B, h)."""
        gates = x_is + self.state_to_state(torch.stack([above[0], before[0]], -1))[..., 0]  # (B, 4h)
        h, c = lstm_cell(gates.unsqueeze(-1), before[1].unsqueeze(-1), self.groups)  # (B, h, 1)
        return h[..., 0], c[..., 0]


class DiagonalBiLSTMLayer(nn.Module):
    """x + 1x1(left-to-right + shifted-down right-to-left Diagonal LSTM) (paper section 3.2, Figure 4)."""

    def __init__(self, channels: int, hidden: int, groups: int):
        super().__init__()
        self.left_to_right = DiagonalLSTM(MaskedConv2d(channels, 4 * hidden, 1, "B", groups), hidden, groups)
        # shifted down a row, the right-to-left pass may read all of its row: the stream and the pixels, unmasked
        self.right_to_left = DiagonalLSTM(nn.Conv2d(channels + groups, 4 * hidden, 1), hidden, groups)
        self.out = MaskedConv2d(hidden, channels, 1, "B", groups)  # h -> 2h channels (section 3.3)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """x: the residual stream (B, F, H, W); image: the pixel values (B, C, H, W) in [-1, 1]."""
        h_lr = self.left_to_right(x)  # (B, h, H, W): sees its row's left and everything above-left
        h_rl = self.right_to_left(torch.cat([x, image], 1).flip(3)).flip(3)  # (B, h, H, W): sees its whole row
        h = h_lr + down_shift(h_rl)  # row i takes the right-to-left states of row i-1: all in the past
        return x + self.out(h)  # residual connection, (B, F, H, W)


# ---------------------------------------------------------------------------------- models
@dataclass
class PixelRNNConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    hidden: int = 16  # h, LSTM units per layer (rounded up to a multiple of C); the residual stream has 2h
    n_layers: int = 2  # LSTM layers after the 7x7 mask-A convolution
    first_kernel: int = 7
    head_channels: int = 64  # width of the 1x1 output layers (rounded up to a multiple of C)
    num_classes: Optional[int] = None  # class-conditional: a learned vector per class added to the first features


@dataclass
class RowLSTMConfig(PixelRNNConfig):
    k: int = 3  # width of the input-to-state and state-to-state kernels (odd; k >= 3 in the paper)


class PixelRNN(ARModel):
    """What both PixelRNNs share: a 7x7 mask-A convolution, a stack of LSTM layers with
    residual connections, two 1x1 mask-B convolutions to a K-way softmax per sub-pixel.
    Subclasses choose the layer (`make_layer`) and its config."""

    Config = PixelRNNConfig

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = self.Config(shape=self.shape, levels=self.levels, **kwargs)
        if cfg.hidden < 1 or cfg.n_layers < 1 or cfg.head_channels < 1:
            raise ValueError(
                f"hidden, n_layers and head_channels must be positive, got {cfg.hidden}, "
                f"{cfg.n_layers}, {cfg.head_channels}"
            )
        C = self.shape[0]
        cfg.hidden = -(-cfg.hidden // C) * C  # every feature map is split into C channel groups
        cfg.head_channels = -(-cfg.head_channels // C) * C
        self.config = cfg
        K, h = self.levels, cfg.hidden
        self.input_conv = MaskedConv2d(C, 2 * h, cfg.first_kernel, "A", C)  # strictly earlier sub-pixels
        self.layers = nn.ModuleList([self.make_layer(2 * h, h, C) for _ in range(cfg.n_layers)])
        self.head = softmax_head(2 * h, cfg.head_channels, C, K)  # relu, 1x1, relu, 1x1 to C*K, all mask B
        if self.set_classes(cfg.num_classes) is not None:
            self.class_emb = nn.Embedding(cfg.num_classes, 2 * h)  # the class, added at every position

    def make_layer(self, channels: int, hidden: int, groups: int) -> nn.Module:
        """One LSTM layer on a residual stream of `channels` (each subclass builds its own)."""
        raise NotImplementedError(f"{type(self).__name__} must say which LSTM layer it stacks")

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Integer pixels (B, C, H, W) -> values in [-1, 1], in the weights' dtype (armini.nn.inputs)."""
        return to_unit_range(x.to(self.input_conv.weight.dtype), self.levels)

    def class_term(self, h: torch.Tensor, y=None) -> torch.Tensor:
        """h (B, F, ...) plus the class vector of each image at every position (h itself without labels)."""
        if y is None:
            return h
        return h + self.class_emb(y).view(y.shape[0], -1, *([1] * (h.dim() - 2)))

    def first_features(self, x: torch.Tensor, i: int, y=None) -> torch.Tensor:
        """Row i of the 7x7 mask-A convolution, from the rows it reads (plus the class): (B, F, 1, W)."""
        r = self.input_conv.kernel_size[0] // 2
        h = self.input_conv(self.scale(x[:, :, max(0, i - r) : i + 1]))[:, :, -1:]  # (B, F, 1, W)
        return self.class_term(h, y)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Residual stream (B, F, H, W) -> logits (B, C, H, W, K)."""
        out = self.head(h)  # (B, C*K, H, W), block c holds channel c's K logits
        return categorical_logits(out, self.shape[0], self.levels)  # (B, C, H, W, K)

    def logits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """Unnormalised scores (B, C, H, W, K) for integer images x (B, C, H, W) (and labels y (B,))."""
        image = self.scale(x)  # (B, C, H, W)
        h = self.class_term(self.input_conv(image), y)  # (B, F, H, W)
        for layer in self.layers:
            h = layer(h, image)  # (B, F, H, W)
        return self.readout(h)  # (B, C, H, W, K)

    def conditionals(self, x, y=None):
        logits = self.logits(x) if y is None else self.logits(x, y)  # a subclass may define logits(x)
        return torch.log_softmax(logits, dim=-1)  # (B, C, H, W, K)


class RowLSTM(PixelRNN):
    """PixelRNN with Row LSTM layers: triangular context, H sequential steps per forward pass."""

    Config = RowLSTMConfig

    def make_layer(self, channels, hidden, groups):
        return RowLSTMLayer(channels, hidden, groups, self.config.k)

    # Fast sampling (armini.fast.pixelrnn_cache): row i's conditionals need only row i and the
    # LSTM states of row i-1, so the sampler keeps those states and recomputes one row per step.
    def init_cache(self, x, y=None):
        return RowLSTMCache(self, y)

    def conditional_logprobs(self, x, index, y=None, cache=None):
        if cache is None:
            return super().conditional_logprobs(x, index, y)  # the naive sampler
        return cache.conditional_logprobs(x, index)  # (n, S, K)


class DiagonalBiLSTM(PixelRNN):
    """PixelRNN with Diagonal BiLSTM layers: the whole past as context, W + H - 1 sequential steps."""

    Config = PixelRNNConfig

    def make_layer(self, channels, hidden, groups):
        return DiagonalBiLSTMLayer(channels, hidden, groups)

    # Fast sampling (armini.fast.pixelrnn_cache): the left-to-right state of pixel (i, j) needs only
    # the states of (i, j-1) and (i-1, j), and the right-to-left pass over a row runs once it is
    # finished, so the sampler updates one pixel per step.
    def init_cache(self, x, y=None):
        return DiagonalBiLSTMCache(self, x, y)

    def conditional_logprobs(self, x, index, y=None, cache=None):
        if cache is None:
            return super().conditional_logprobs(x, index, y)  # the naive sampler
        return cache.conditional_logprobs(x, index)  # (n, 1, K)
