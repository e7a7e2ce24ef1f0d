"""Parallel multiscale autoregressive density estimation (Reed, van den Oord, Kalchbrenner,
Gómez Colmenarejo, Wang, Chen, Belov & de Freitas, 2017, "Parallel Multiscale Autoregressive
Density Estimation"): generate coarse to fine, a whole group of pixels per step, with an exact
likelihood.

Nested subsampling. With L doublings, the image x (C, H, W) holds a pyramid of smaller images,
each every other row and column of the next:

    x_L = x,   x_(l-1) = x_l[..., ::2, ::2]       28x28 -> 14x14 -> 7x7 (L = 2), x_0 the base

Each 2x2 block of x_l holds one pixel of x_(l-1) (offset (0, 0), the paper's group 1) and three new
ones, at offsets (0, 1), (1, 0), (1, 1) (the paper's groups 2, 3, 4). The factorisation:

    p(x) = p(x_0) * prod_l prod_g p(G_lg | x_(l-1), G_l1, ..., G_l(g-1))                   (eq. 1)
    p(G_lg | ...) = prod over the pixels d of G_lg of p(x_d | x_(l-1), G_l1, ..., G_l(g-1))

x_0 is modelled by any raster model of Part I (`base`, a MODELS name: one pixel per step); every
group G_lg is ONE sampling step: its pixels are independent given the coarser image and the
earlier groups, so a small conv net predicts all of them at once (`GroupNet`). Sampling takes

    (pixels of x_0) + L * (groups per doubling) steps       7*7 + 2*3 = 55 for 28x28, not 784

and the number of group steps grows with log N, not N. The price is the independence within a
group: a raster model would let each pixel of G_lg see its neighbours in G_lg too.

How a group net reads the image. The groups of x_l all live on the grid of x_(l-1) (h x w, every
other row and column of x_l), one value per 2x2 block. The net for group g stacks the known ones as
channels ("space to depth"): x_(l-1) (offset (0, 0)) and the groups before g, (B, C * known, h, w),
and outputs K logits for each of the group's pixels, (B, C * S, h, w, K) with S its offsets.
It cannot see anything else, so causality holds by construction (tests/test_pmard.py checks it
with the causality inspector in the group order).

The contract (armini/models/base.py): `conditionals(x)` -> (B, C, H, W, K), the base model's
conditionals at x_0's pixels, each group net's at its group's; `sampling_steps()` = x_0's pixels one
by one (as flat positions into the full image) then one step per group, so the shared sampling
loop, the causality inspector and the scrubber work unchanged. The cached sampler (`init_cache`)
runs the base model's own cached sampler on x_0 and, at a group step, that group's net alone;
`cached=False` recomputes the whole model at every step.

Deviations from the paper: unconditional only (the paper also conditions on classes, text and
actions); each (doubling, group) has its own small net of gated residual blocks (armini.nn.gated) on
the coarse grid, far smaller than the paper's networks; the colour channels of a pixel are predicted
in the same step, independent given the earlier groups; `groups=1` puts the three new pixels of a block
in one step (to measure what more independence costs); the doublings stop where H or W turns odd.

Legend: B batch, C channels, H, W image, h, w the coarse grid of a doubling, K levels, D = C*H*W,
S offsets in a group, F feature channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from ..nn.gated import GatedResnet, concat_elu
from ..nn.inputs import to_unit_range
from .base import LN2, ARModel

# The offsets (a, b) within a 2x2 block of each group of one doubling, in order; (0, 0) is the coarser image.
GROUPS = {
    3: [[(0, 1)], [(1, 0)], [(1, 1)]],  # the paper: right, below, diagonal, one step each
    1: [[(0, 1), (1, 0), (1, 1)]],  # all three new pixels of a block at once
}


# ------------------------------------------------------------------------------ the pyramid
def max_doublings(H: int, W: int) -> int:
    """How many times H and W can both be halved exactly: 2 for 28x28 (-> 14 -> 7), 0 for an odd side."""
    d = 0
    while H % 2 == 0 and W % 2 == 0 and H > 1 and W > 1:
        H, W, d = H // 2, W // 2, d + 1
    return d


def block_grid(x: torch.Tensor, level: int, doublings: int, offset=(0, 0)) -> torch.Tensor:
    """The pixels at `offset` (a, b) of every 2x2 block of x_level, on x_(level-1)'s grid: a view (B, C, h, w).

    x_level is every r-th row and column of x, r = 2 ** (doublings - level); its blocks are 2r apart,
    so offset (a, b) sits at rows a*r, a*r + 2r, ... and columns b*r, b*r + 2r, ... of x.
    Offset (0, 0) gives x_(level-1) itself."""
    r = 2 ** (doublings - level)
    a, b = offset
    return x[..., a * r::2 * r, b * r::2 * r]


def base_image(x: torch.Tensor, doublings: int) -> torch.Tensor:
    """x_0, the base: every 2^L-th row and column of x, (B, C, H / 2^L, W / 2^L)."""
    s = 2 ** doublings
    return x[..., ::s, ::s]


def scale_steps(shape, doublings: int, group_offsets, base_order: torch.Tensor) -> list:
    """PMARD's sampling steps as flat positions into x.flatten(1): a list of (S,) LongTensors.

    First x_0's pixels one per step, in base_order ((C*h0*w0,) flat positions into x_0, the base model's
    order), each as its position in the full image; then, for each doubling l = 1..L, one step per group
    (group_offsets: a list of groups, each a list of offsets (a, b)), holding every channel of every
    block's pixel at those offsets: 7*7 + 2*3 = 55 steps for 28x28."""
    where = torch.arange(math.prod(shape)).view(shape)  # (C, H, W) the flat position of each dimension
    base_flat = base_image(where, doublings).flatten()  # (C*h0*w0,) position in x_0 -> position in x
    steps = list(base_flat[base_order].split(1))  # x_0: one pixel per step
    for level in range(1, doublings + 1):
        for offsets in group_offsets:
            steps.append(torch.cat([block_grid(where, level, doublings, o).flatten() for o in offsets]))  # (S,)
    return steps


# ------------------------------------------------------------------------------ a group's net
class GroupNet(nn.Module):
    """p(G_lg | x_(l-1), earlier groups): the known pixels stacked as channels on the coarse grid,
    (B, C * known, h, w) -> log-probabilities of the group's S offsets, (B, S, C, h, w, K)."""

    def __init__(self, C: int, known: int, S: int, K: int, channels: int, n_blocks: int, kernel: int):
        super().__init__()
        self.C, self.S, self.K = C, S, K

        def conv(c_in, c_out):  # an ordinary convolution: every known pixel may be seen
            return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)

        self.inp = conv(C * known, channels)
        self.blocks = nn.ModuleList(GatedResnet(channels, conv) for _ in range(n_blocks))
        self.out = nn.Conv2d(2 * channels, S * C * K, 1)

    def forward(self, known: torch.Tensor) -> torch.Tensor:
        B, _, h, w = known.shape
        u = self.inp(known)  # (B, F, h, w)
        for block in self.blocks:
            u = block(u)  # (B, F, h, w)
        logits = self.out(concat_elu(u))  # (B, S*C*K, h, w)
        logits = logits.view(B, self.S, self.C, self.K, h, w).permute(0, 1, 2, 4, 5, 3)  # (B, S, C, h, w, K)
        return torch.log_softmax(logits, dim=-1)


# ------------------------------------------------------------------------------ the model
@dataclass
class PMARDConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    base: str = "gated-pixelcnn"  # the MODELS name of x_0's model (any per-dimension raster model of Part I)
    base_kwargs: dict = field(default_factory=dict)  # its options (e.g. {"channels": 32, "n_layers": 5})
    doublings: Optional[int] = None  # L; None: as many as H and W allow (28 -> 14 -> 7: 2)
    groups: int = 3  # groups per doubling: 3 (the paper: (0,1), (1,0), (1,1)) or 1 (all three at once)
    channels: int = 32  # F, the width of each group net
    n_blocks: int = 2  # gated residual blocks per group net
    kernel: int = 3  # their convolutions' size on the coarse grid (odd)


class PMARD(ARModel):
    """A base raster model on x_0, then for each doubling one net per group, each group in one step."""

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = PMARDConfig(shape=self.shape, levels=self.levels, **kwargs)
        C, H, W = self.shape
        L = self.check_config(cfg, H, W)
        cfg.doublings, cfg.base_kwargs = L, dict(cfg.base_kwargs)
        self.config = cfg
        self.base = self.make_base(cfg, (C, H >> L, W >> L))
        self.group_offsets = GROUPS[cfg.groups]  # list (per group) of lists of (a, b)
        self.nets = nn.ModuleList()  # one per (doubling, group), in sampling order
        for _ in range(L):
            for g, offsets in enumerate(self.group_offsets):
                known = len(self.known_offsets(g))  # x_(l-1) and the groups before g
                self.nets.append(GroupNet(C, known, len(offsets), self.levels, cfg.channels, cfg.n_blocks, cfg.kernel))
        self._steps = None  # sampling_steps(), built once

    @staticmethod
    def check_config(cfg: PMARDConfig, H: int, W: int) -> int:
        """Clear errors for a config that cannot work; returns the number of doublings L."""
        most = max_doublings(H, W)
        L = most if cfg.doublings is None else cfg.doublings
        if isinstance(L, bool) or int(L) != L or L < 0:
            raise ValueError(f"doublings must be a whole number >= 0 (or None: as many as the size allows), got {L!r}")
        L = int(L)
        if H % 2 ** L or W % 2 ** L:
            raise ValueError(f"doublings={L} needs H and W divisible by {2 ** L}; shape {(H, W)} allows at most {most} "
                             f"(doublings=None picks it)")
        if cfg.groups not in GROUPS:
            raise ValueError(f"groups must be one of {sorted(GROUPS)} (3: the paper's (0,1), (1,0), (1,1) one step each; "
                             f"1: all three new pixels of a block in one step), got {cfg.groups!r}")
        for name in ("channels", "n_blocks"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)!r}")
        if cfg.kernel < 1 or cfg.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd and positive, got {cfg.kernel!r}")
        return L

    @staticmethod
    def make_base(cfg: PMARDConfig, base_shape: tuple) -> ARModel:
        """x_0's model: MODELS[cfg.base] at the base size, with a clear error for a name that cannot serve."""
        from . import MODELS  # the registry imports this module: look it up when a model is built

        if cfg.base not in MODELS:
            raise ValueError(f"base must be the MODELS name of a Part I model, one of {sorted(MODELS)}; got {cfg.base!r}")
        kind = MODELS[cfg.base]
        if kind.two_stage or kind.any_order or kind is PMARD:
            raise ValueError(f"base={cfg.base!r} cannot model x_0: it needs a fixed-order model with per-pixel "
                             f"conditionals, e.g. 'gated-pixelcnn' or 'pixelcnn'")
        base = kind(shape=base_shape, levels=cfg.levels, **cfg.base_kwargs)
        if base.num_classes is not None:
            raise ValueError("PMARD is unconditional: leave num_classes out of base_kwargs")
        return base

    # --------------------------------------------------------------------- the group order
    @property
    def doublings(self) -> int:
        return self.config.doublings

    def group_list(self) -> list:
        """(level, offsets) for every group step, in order: level 1..L, the groups of each doubling."""
        return [(l, offsets) for l in range(1, self.doublings + 1) for offsets in self.group_offsets]

    def sampling_steps(self, order: Optional[torch.Tensor] = None) -> list:
        """x_0's pixels one per step in the base model's order, then one (S,) step per group: flat positions.

        7*7 + 2*3 = 55 steps for 28x28 (L = 2, 3 groups per doubling)."""
        if order is not None:
            self.resolve_order(order)  # only its own order
        if self._steps is None:
            self._steps = scale_steps(self.shape, self.doublings, self.group_offsets, self.base.generation_order())
        return list(self._steps)

    def generation_order(self) -> torch.Tensor:
        """The sampling steps one after the other: (D,) flat positions (pixels of a group share a step)."""
        return torch.cat(self.sampling_steps())

    # --------------------------------------------------------------------- likelihood
    def known_offsets(self, g: int) -> list:
        """What group g of a doubling may read: the coarser image (offset (0, 0)) and the groups before g."""
        return [(0, 0)] + [o for earlier in self.group_offsets[:g] for o in earlier]

    def group_logprobs(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Group step k's (0-based over group_list()) log-probabilities from its net: (B, S, C, h, w, K)."""
        level, _ = self.group_list()[k]
        known = self.known_offsets(k % len(self.group_offsets))
        v = torch.cat([block_grid(x, level, self.doublings, o) for o in known], dim=1)  # (B, C * known, h, w)
        return self.nets[k](to_unit_range(v.to(self.model_dtype), self.levels))  # (B, S, C, h, w, K)

    def conditionals(self, x, y=None):
        """log p(x_d = k | the earlier groups) for every dimension: (B, C, H, W, K).

        x_0's pixels from the base model (raster within x_0), every other pixel from its group's net."""
        B, (C, H, W), K = x.shape[0], self.shape, self.levels
        out = torch.empty(B, K, C, H, W, dtype=self.model_dtype, device=x.device)  # K second: pixels stay last
        with self.base.inputs_checked():  # x was checked on entry: so is x_0
            lp0 = self.base.conditionals(base_image(x, self.doublings).contiguous())  # (B, C, h0, w0, K)
        base_image(out, self.doublings)[:] = lp0.movedim(-1, 1)  # (B, K, C, h0, w0)
        for k, (level, offsets) in enumerate(self.group_list()):
            lp = self.group_logprobs(x, k)  # (B, S, C, h, w, K)
            for s, o in enumerate(offsets):
                block_grid(out, level, self.doublings, o)[:] = lp[:, s].movedim(-1, 1)  # (B, K, C, h, w)
        return out.movedim(1, -1).contiguous()  # (B, C, H, W, K)

    def log_prob_pixels(self, x, y=None):
        """log p(x_d | the earlier groups) of the values x holds: (B, C, H, W). What training and evaluation
        read: the same numbers as gathering conditionals(x), without building its (B, C, H, W, K) tensor."""
        out = torch.empty(x.shape, dtype=self.model_dtype, device=x.device)  # (B, C, H, W)
        with self.base.inputs_checked():
            base_image(out, self.doublings)[:] = self.base.log_prob_pixels(base_image(x, self.doublings).contiguous())
        for k, (level, offsets) in enumerate(self.group_list()):
            lp = self.group_logprobs(x, k)  # (B, S, C, h, w, K)
            for s, o in enumerate(offsets):
                value = block_grid(x, level, self.doublings, o).unsqueeze(-1)  # (B, C, h, w, 1)
                block_grid(out, level, self.doublings, o)[:] = lp[:, s].gather(-1, value).squeeze(-1)  # (B, C, h, w)
        return out

    @torch.no_grad()
    def group_bits(self, x: torch.Tensor, batch_size: int = 256) -> dict:
        """-log2 p of each part of the factorisation in bits per dimension of that part, averaged over the
        images x: {"base": ..., "level 1 group (0, 1)": ..., ...}. Where the bits go, group by group."""
        x = self.check_input(x)
        steps = self.sampling_steps()
        n_base = len(steps) - len(self.group_list())
        part = torch.zeros(self.dims, dtype=torch.long)  # (D,) 0: base, k + 1: group step k
        for k, index in enumerate(steps[n_base:]):
            part[index] = k + 1
        bits = torch.zeros(len(self.group_list()) + 1, dtype=torch.float64)  # summed over images and dimensions
        for s in range(0, len(x), batch_size):
            nll = -self.log_prob_pixels(x[s:s + batch_size]).flatten(1).double().cpu() / LN2  # (b, D) bits
            bits.index_add_(0, part, nll.sum(0))
        per_dim = bits / (len(x) * torch.bincount(part).double())  # bits per dimension of each part
        names = ["base"] + [f"level {l} group {', '.join(map(str, o))}" for l, o in self.group_list()]
        return dict(zip(names, per_dim.tolist()))

    # --------------------------------------------------------------------- cached sampling
    def init_cache(self, x, y=None):
        """The cached sampler: x_0's own canvas for the base model's cache (its fast sampler, if it has
        one), and the step of each position, so a group step runs its group's net only."""
        x0 = base_image(x, self.doublings).clone(memory_format=torch.contiguous_format)  # (n, C, h0, w0): the base model's own canvas (a copy, also with no doubling, where the base is x itself)
        steps = self.sampling_steps()
        step_of = torch.empty(self.dims, dtype=torch.long)
        for t, index in enumerate(steps):
            step_of[index] = t
        base_index = torch.empty(self.dims, dtype=torch.long)  # full flat position -> flat position in x_0
        base_index[base_image(torch.arange(self.dims).view(self.shape), self.doublings).flatten()] = torch.arange(x0[0].numel())
        with self.base.inputs_checked():
            base_cache = self.base.init_cache(x0, y)
        return {"x0": x0, "base": base_cache, "step_of": step_of, "base_index": base_index,
                "n_base": len(steps) - len(self.group_list())}

    def conditional_logprobs(self, x, index, y=None, cache=None):
        """(n, S, K) for the step filling `index`: a base pixel from the base model (cached), a group from its net."""
        if cache is None:
            return super().conditional_logprobs(x, index, y)  # the naive sampler: the whole model
        t = int(cache["step_of"][int(index[0])])
        if t < cache["n_base"]:  # a pixel of x_0: bring x_0 up to date (one write), then the base model's step
            x0 = cache["x0"]
            x0.copy_(base_image(x, self.doublings))
            return self.base.conditional_logprobs(x0, cache["base_index"][index.cpu()].to(x.device), y, cache["base"])
        k = t - cache["n_base"]
        lp = self.group_logprobs(x, k)  # (n, S, C, h, w, K)
        return lp.flatten(1, -2)  # (n, S*C*h*w, K): the order sampling_steps() lists the group's positions in

    def extra_repr(self) -> str:
        steps = len(self.sampling_steps())
        return super().extra_repr() + f", base={self.config.base}, doublings={self.doublings}, steps={steps}"
