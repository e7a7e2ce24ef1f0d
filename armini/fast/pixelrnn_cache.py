"""Cached samplers for the two PixelRNNs (armini.models.pixelrnn): keep the LSTM states between
sampling steps and update only what the new value changes.

A naive sampler runs the whole network, H (Row LSTM) or W + H - 1 (Diagonal BiLSTM) sequential
LSTM steps, for every one of the C*H*W values it draws. But the recurrences only ever look back:

- Row LSTM: row i's states need row i and the states of row i-1. Keep every layer's states of the
  last finished row; each sampling step recomputes one row (not H rows).
- Diagonal BiLSTM: the left-to-right state of pixel (i, j) needs only the states of (i, j-1) and
  (i-1, j); the right-to-left states of row i are read from row i+1 on (the pass is shifted down
  a row). Keep every layer's state maps and inputs, update one pixel per step, and run the
  right-to-left pass over a row once the row is finished.

Both draw exactly what the naive sampler draws (tests/test_pixelrnn.py). They follow raster
order only; `sample(..., cached=False)` serves any other use.

Legend: n images, C channels, H, W height and width, K levels, F residual channels, h LSTM units.
"""
from __future__ import annotations

import torch


def _pixel(index: torch.Tensor, shape) -> tuple:
    """A flat position (1,) into x.flatten(1) -> (c, i, j) as Python ints."""
    C, H, W = shape
    c, p = divmod(int(index[0]), H * W)
    return (c,) + divmod(p, W)


class RowLSTMCache:
    """Every layer's (h, c) states of the last finished row; conditional_logprobs(x, index) -> (n, S, K)."""

    def __init__(self, model, y=None):
        self.model, self.y, self.row = model, y, -1
        self.states = [None] * len(model.layers)  # per layer: (h, c) of row `self.row`, None before row 0

    def row_logits(self, x: torch.Tensor, i: int, states: list):
        """Row i of the network, given every layer's (h, c) of row i-1 (None for row 0):
        logits (n, C, 1, W, K) and every layer's (h, c) of row i."""
        h = self.model.first_features(x, i, self.y)  # (n, F, 1, W)
        new_states = []
        for layer, state in zip(self.model.layers, states):
            h, state = layer.step(h, state)  # (n, F, 1, W)
            new_states.append(state)
        return self.model.readout(h), new_states

    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        C, H, W = self.model.shape
        c, i, j = (torch.div(index, v, rounding_mode="floor") % m for v, m in ((H * W, C), (W, H), (1, W)))  # (S,)
        if bool((i != i[0]).any()):
            raise ValueError("the Row LSTM cache fills dimensions of one row per step; sample with cached=False")
        row = int(i[0])
        if self.row >= row:  # a new pass over the image: start again from the top
            self.row, self.states = -1, [None] * len(self.states)
        while self.row < row - 1:  # finish the rows above, now that their values are final
            _, self.states = self.row_logits(x, self.row + 1, self.states)
            self.row += 1
        logits, _ = self.row_logits(x, row, self.states)  # (n, C, 1, W, K)
        lp = torch.log_softmax(logits[:, :, 0], dim=-1)  # (n, C, W, K)
        return lp[:, c, j]  # (n, S, K)


def _state(maps, i: int, j: int):
    """(h, c) of pixel (i, j) from state maps (h, c), each (n, h, H, W); zeros outside the image."""
    h, c = maps
    if 0 <= i < h.shape[2] and 0 <= j < h.shape[3]:
        return h[:, :, i, j], c[:, :, i, j]  # (n, h) each
    zero = h.new_zeros(h.shape[:2])  # the LSTM's initial state
    return zero, zero


class DiagonalBiLSTMCache:
    """Every layer's inputs and state maps, and the first pixel whose states are not final yet."""

    def __init__(self, model, x: torch.Tensor, y=None):
        (n, _, H, W), h = x.shape, model.config.hidden
        self.model, self.y, self.next = model, y, (0, 0)

        def new(channels):  # (n, channels, H, W) zeros
            return torch.zeros(n, channels, H, W, dtype=model.input_conv.weight.dtype, device=x.device)

        L = len(model.layers)
        self.input = [new(2 * h) for _ in range(L)]  # (n, F, H, W) each layer's input
        self.lr = [(new(h), new(h)) for _ in range(L)]  # (h, c) maps of the left-to-right pass
        self.rl = [(new(h), new(h)) for _ in range(L)]  # (h, c) maps of the right-to-left pass

    def pixel_logits(self, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """Every layer at pixel (i, j), states written into the cache: logits (n, C, K)."""
        h = self.model.first_features(x, i, self.y)[:, :, 0, j]  # (n, F)
        for layer, inp, lr, rl in zip(self.model.layers, self.input, self.lr, self.rl):
            inp[:, :, i, j] = h
            net = layer.left_to_right
            x_is = net.input_to_state(h[:, :, None, None])[:, :, 0, 0]  # (n, 4h)
            h_lr, c_lr = net.cell(x_is, above=_state(lr, i - 1, j), before=_state(lr, i, j - 1))  # (n, h)
            lr[0][:, :, i, j], lr[1][:, :, i, j] = h_lr, c_lr
            h_rl = _state(rl, i - 1, j)[0]  # the right-to-left pass, shifted down: (n, h)
            h = h + layer.out((h_lr + h_rl)[:, :, None, None])[:, :, 0, 0]  # (n, F)
        return self.model.readout(h[:, :, None, None])[:, :, 0, 0]  # (n, C, K)

    def finish_row(self, x: torch.Tensor, i: int) -> None:
        """The right-to-left pass over row i (every layer), once row i is final."""
        image = self.model.scale(x[:, :, i : i + 1])  # (n, C, 1, W)
        for layer, inp, rl in zip(self.model.layers, self.input, self.rl):
            net = layer.right_to_left
            x_is = net.input_to_state(torch.cat([inp[:, :, i : i + 1], image], 1))[:, :, 0]  # (n, 4h, W)
            for j in reversed(range(x.shape[3])):  # right to left: "before" is the right neighbour
                h, c = net.cell(x_is[:, :, j], above=_state(rl, i - 1, j), before=_state(rl, i, j + 1))
                rl[0][:, :, i, j], rl[1][:, :, i, j] = h, c

    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if len(index) != 1:
            raise ValueError("the Diagonal BiLSTM cache fills one dimension per step; sample with cached=False")
        c, i, j = _pixel(index, self.model.shape)
        W = self.model.shape[2]
        if self.next > (i, j):  # a new pass over the image: start again from the top
            self.__init__(self.model, x, self.y)
        while self.next < (i, j):  # finish the pixels before (i, j), now that their values are final
            pi, pj = self.next
            self.pixel_logits(x, pi, pj)
            if pj == W - 1:
                self.finish_row(x, pi)
            self.next = (pi, pj + 1) if pj < W - 1 else (pi + 1, 0)
        logits = self.pixel_logits(x, i, j)  # (n, C, K), recomputed once (i, j) is final
        return torch.log_softmax(logits[:, c : c + 1], dim=-1)  # (n, 1, K)
