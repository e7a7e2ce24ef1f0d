"""The convolutional LSTM cell (Shi, Chen, Wang, Yeung, Wong & Woo, 2015, "Convolutional LSTM
Network: A Machine Learning Approach for Precipitation Nowcasting", eq. 3).

An LSTM whose input X_t, hidden state H_t and cell C_t are feature maps (F, H, W) instead of
vectors, and whose matrix products are convolutions (*), so the state keeps the frame's layout
and each position's memory is updated from its neighbourhood. With o the Hadamard product:

    i_t = sigmoid(W_xi * X_t + W_hi * H_{t-1} + W_ci o C_{t-1} + b_i)      input gate
    f_t = sigmoid(W_xf * X_t + W_hf * H_{t-1} + W_cf o C_{t-1} + b_f)      forget gate
    C_t = f_t o C_{t-1} + i_t o tanh(W_xc * X_t + W_hc * H_{t-1} + b_c)    new cell
    o_t = sigmoid(W_xo * X_t + W_ho * H_{t-1} + W_co o C_t + b_o)          output gate
    H_t = o_t o tanh(C_t)

The eight convolutions W_x. * X + W_h. * H are one convolution of [X, H] (channels stacked) with
4F outputs, split into the four gates: the same sums, one call.

Deviations from the paper: the peephole weights W_c. are one number per channel, broadcast over
positions (the paper's are (F, H, W) tensors tied to one frame size): the cell then works for any
frame size; `peephole=False` drops them (most later ConvLSTMs do). The forget gate's bias starts
at 1 (Gers et al., 2000), so the cell starts by remembering.

Legend: B batch, F_in input channels, F hidden channels, H, W height and width.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def conv_lstm_step(x, h, c, conv, w_ci=None, w_cf=None, w_co=None):
    """Eq. 3 of Shi et al. for one step: X_t (B, F_in, H, W), H_{t-1} and C_{t-1} (B, F, H, W) -> (H_t, C_t).

    conv: the convolution of [X_t, H_{t-1}] (channels stacked) to 4F channels, the pre-activations of the
    gates i, f, g (the candidate cell), o in that order; w_ci, w_cf, w_co: the peephole weights (F, 1, 1),
    or None for a cell without peepholes."""
    i, f, g, o = conv(torch.cat([x, h], dim=1)).chunk(4, dim=1)  # W_x. * X_t + W_h. * H_{t-1} + b, (B, F, H, W) each
    if w_ci is not None:
        i = i + w_ci * c  # + W_ci o C_{t-1}
        f = f + w_cf * c  # + W_cf o C_{t-1}
    i, f = torch.sigmoid(i), torch.sigmoid(f)  # i_t, f_t
    c = f * c + i * torch.tanh(g)  # C_t = f_t o C_{t-1} + i_t o tanh(W_xc * X_t + W_hc * H_{t-1} + b_c)
    if w_co is not None:
        o = o + w_co * c  # + W_co o C_t (the new cell)
    h = torch.sigmoid(o) * torch.tanh(c)  # H_t = o_t o tanh(C_t)
    return h, c


def compare_step(got, expected, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """For lesson 16's check of a learner's step: raise AssertionError naming which of (H_t, C_t) is wrong
    and the slips that make it so (C_t first: a wrong cell makes H_t wrong too)."""
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise AssertionError(f"expected a pair (H_t, C_t), got {type(got).__name__}")
    for name, a, b in (("C_t", got[1], expected[1]), ("H_t", got[0], expected[0])):
        if not isinstance(a, torch.Tensor) or a.shape != b.shape:
            raise AssertionError(f"{name} should be a tensor of shape {tuple(b.shape)}, got "
                                 f"{tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__}")
    if not torch.allclose(got[1], expected[1], atol=atol, rtol=rtol):
        raise AssertionError("C_t differs: check i_t and f_t (sigmoids, their peepholes read the old cell "
                             "C_{t-1}), tanh on the candidate g, and C_t = f_t o C_{t-1} + i_t o tanh(g)")
    if not torch.allclose(got[0], expected[0], atol=atol, rtol=rtol):
        raise AssertionError("C_t is right but H_t differs: check the output gate (its peephole reads the "
                             "new cell C_t) and H_t = o_t o tanh(C_t)")


class ConvLSTMCell(nn.Module):
    """One step of a ConvLSTM: (X_t (B, F_in, H, W), (H_{t-1}, C_{t-1}) each (B, F, H, W)) -> (H_t, C_t).

    kernel: odd size k of the k x k convolutions (same padding: the state keeps the frame size)."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel: int = 3, peephole: bool = True):
        super().__init__()
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"kernel must be odd and positive (same padding keeps the frame size), got {kernel}")
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(f"in_channels and hidden_channels must be positive, got {in_channels}, {hidden_channels}")
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        F = hidden_channels
        # W_x. * X + W_h. * H for the four gates i, f, g (the candidate cell), o: one convolution of [X, H]
        self.conv = nn.Conv2d(in_channels + F, 4 * F, kernel, padding=kernel // 2)
        with torch.no_grad():
            self.conv.bias[F:2 * F].fill_(1.0)  # b_f = 1: remember at the start
        if peephole:  # W_ci, W_cf, W_co: one weight per channel (see the module docstring)
            self.w_ci = nn.Parameter(torch.zeros(F, 1, 1))
            self.w_cf = nn.Parameter(torch.zeros(F, 1, 1))
            self.w_co = nn.Parameter(torch.zeros(F, 1, 1))
        self.peephole = peephole

    def initial_state(self, x: torch.Tensor):
        """H_0 = C_0 = 0, shaped like the hidden state for the input x (B, F_in, H, W): two (B, F, H, W)."""
        B, _, H, W = x.shape
        zeros = x.new_zeros(B, self.hidden_channels, H, W)
        return zeros, zeros

    def forward(self, x: torch.Tensor, state: Optional[tuple] = None):
        """x: X_t (B, F_in, H, W); state: (H_{t-1}, C_{t-1}) or None (zeros) -> (H_t, C_t), each (B, F, H, W)."""
        h, c = self.initial_state(x) if state is None else state
        if not self.peephole:
            return conv_lstm_step(x, h, c, self.conv)
        return conv_lstm_step(x, h, c, self.conv, self.w_ci, self.w_cf, self.w_co)

    def extra_repr(self) -> str:
        return f"peephole={self.peephole}"
