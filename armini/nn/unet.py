"""A small U-Net that knows the diffusion step: the non-causal network of an ARDM (lesson 10).

Nothing in it is masked: every output position may read every input position. What keeps an
order-agnostic ARDM a valid model is its *input*: the dimensions that are not given yet are
replaced by a mask value before the network sees them (armini.models.ardm).

    h = conv_in(x)                                             (B, F, H, W)
    down:  [ResBlock(t) -> stride-2 conv] per level            (B, F*m, H/2^l, W/2^l)
    middle: ResBlock(t)
    up:    upsample -> concat the skip -> ResBlock(t)          back to (B, F, H, W)
    out = conv_out(h)                                          (B, out_channels, H, W)

ResBlock(t) (as in Ho et al. 2020's DDPM U-Net): GroupNorm -> SiLU -> 3x3 conv, plus a
projection of the step embedding added to every position, GroupNorm -> SiLU -> 3x3 conv, plus a
1x1 shortcut. The step t (how many dimensions are given) is embedded with sines and cosines
(Vaswani et al. 2017), then a small MLP.

No BatchNorm: it would mix the images of a batch, and one image's prediction must never depend
on another's (the causality inspector would see it). Any H x W works, odd sizes and 1 x 1
included (downsampling rounds up, upsampling goes back to the skip's exact size).

Legend: B batch, F base feature channels, H, W height and width, E step-embedding size.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def step_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer steps t (B,) -> (B, dim): sin and cos of t at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)  # (dim/2,)
    angles = t.float()[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, dim)


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide the channels (per image: never mixes the batch)."""
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """h -> h' with the step embedding added in the middle; a 1x1 shortcut when the width changes."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h, emb):
        out = self.conv1(F.silu(self.norm1(h)))  # (B, c_out, H, W)
        out = out + self.emb(emb)[:, :, None, None]  # the step, added at every position
        out = self.conv2(F.silu(self.norm2(out)))  # (B, c_out, H, W)
        return self.skip(h) + out


class UNet(nn.Module):
    """in_channels -> out_channels at the same H x W, conditioned on an integer step t (B,).

    channels: F, the width at full resolution; mults: the width of each lower level as a multiple
    of F (len(mults) - 1 downsamplings); emb_dim: E, the step embedding's size."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 32, mults=(1, 2, 2), emb_dim: int = 64):
        super().__init__()
        self.emb_dim = emb_dim
        self.step_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        widths = [channels * m for m in mults]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for k, w in enumerate(widths):
            self.down_blocks.append(ResBlock(widths[max(k - 1, 0)], w, emb_dim))
            if k < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))  # H -> ceil(H/2)
        self.middle = ResBlock(widths[-1], widths[-1], emb_dim)
        self.up_blocks = nn.ModuleList()
        for k in reversed(range(len(widths))):
            c_below = widths[k + 1] if k + 1 < len(widths) else widths[-1]  # what comes up from below
            self.up_blocks.append(ResBlock(c_below + widths[k], widths[k], emb_dim))
        self.norm_out = norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) float, t (B,) integers -> (B, out_channels, H, W)."""
        emb = self.step_mlp(step_embedding(t, self.emb_dim).to(x.dtype))  # (B, E)
        h = self.conv_in(x)  # (B, F, H, W)
        skips = []
        for k, block in enumerate(self.down_blocks):
            h = block(h, emb)
            skips.append(h)  # kept for the way up, at this resolution
            if k < len(self.downsample):
                h = self.downsample[k](h)  # (B, w, ceil(H/2), ceil(W/2))
        h = self.middle(h, emb)
        for block in self.up_blocks:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")  # back to the skip's size
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)
