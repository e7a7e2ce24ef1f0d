"""LMConv (Jain, Abbeel & Pathak, 2020, "Locally Masked Convolution for Autoregressive Models").

A PixelCNN++-style network whose causal convolutions are locally masked
(armini.nn.locally_masked): every location has its own mask, built from the generation order
given to forward, so ONE network follows any order of the pixels:

    p_sigma(x) = prod_t p(x_sigma(t) | x_sigma(<t))              (chain rule, in order sigma)

Training draws one order per batch from a set (default: the 8 symmetries of the S-curve, as in
the paper), so the same weights learn all of them. Two things follow:

1. Order ensembles. K orders give K exact likelihoods of the same image; their mixture
   (an equal-weight mixture of K models, at the image level) is again a likelihood:

       log p(x) = logsumexp_k log p_k(x) - log K                      (sec. 4.2)

   It is never worse than the worst order and usually better than the best one. Averaging
   per-pixel probabilities across orders instead is NOT a likelihood (the product of averaged
   conditionals does not sum to one over images).

2. Completion with every observed pixel as context. Given an observed region, an order that
   visits every observed pixel first (armini.orders.observed_first) makes every missing pixel's
   conditional depend on all of them: log p(x_missing | x_observed) exactly, through the base
   contract (log_prob(x, observed=..., order=...), sample(x=..., observed=..., order=...)).

Network (the reference code's OurPixelCNN): one stream at full resolution, a U-net of gated
resnets (armini.nn.gated's block, with locally masked convolutions) whose down- and up-sampling
are replaced by dilated locally masked convolutions (a strided convolution would mix pixels of
different steps); shortcuts from the up pass to the down pass; the input gets an all-ones
channel so the first layer sees where the padding is; a 1x1 output layer to a discretised
logistic mixture (armini.nn.dmol, the default) or to a K-way softmax (head="softmax").

    first layer      mask A, k x k                        (a pixel never sees itself)
    up pass          n_stages x [nr_resnet gated resnets], a dilated conv between stages
    down pass        stages of nr_resnet (then nr_resnet + 1) gated resnets, each reading a
                     shortcut, a dilated conv between stages
    output           1x1 on elu(u): P mixture parameters or K logits per pixel

Why it stays causal in every order: after the first layer, the features at p depend only on
pixels generated before p; every later layer at p reads features at p (mask B) and at
neighbours generated before p, which depend on even earlier pixels; 1x1 layers read p only.

`filled` (the sampling loop's mask of given pixels) is not needed: the order alone decides what
a pixel sees, and a completion order puts the observed pixels first.

Deviations from the paper: no weight normalisation; small defaults (nr_filters 32, nr_resnet 1,
2 stages, kernel 3, dilation 2, instead of 80 filters, 5 resnets, 3 stages, kernel 3 or 5) so a
CPU trains it on 14x14 images in minutes (lesson 09, which trains head="softmax" on
orders="s-curve+spiral"; a locally masked layer runs as two masked 2x3 convolutions in an
S-curve and as the slower unfold in a spiral: 0.29 and 0.61 CPU s a training step there, against
PixelCNN's 0.105); the class (num_classes) enters once, added to the first layer's features;
grayscale images only (one channel: RGB would need channel masks at the centre tap as well).

Legend: B batch, C image channels (1), H, W height and width, L = H*W, K levels, F filters,
P mixture parameters per pixel, N number of orders.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import orders as orders_lib
from ..nn.dmol import dmol_conditionals, dmol_log_prob_pixels, dmol_num_params
from ..nn.gated import concat_elu
from ..nn.heads import categorical_logits
from ..nn.inputs import ValueInput
from ..nn.locally_masked import LocallyMaskedConv2d
from .base import ARModel

HEADS = ("dmol", "softmax")


def ensemble_log_likelihood(log_probs: torch.Tensor) -> torch.Tensor:
    """The order ensemble's log-likelihood from each order's, in nats: (N, B) -> (B,).

    log_probs: (N, B) log p_k(x) of each image under each of N orders, or (N, B, *dims) the
    per-dimension terms log p_k(x_d | earlier in order k), summed over the dimensions first.
    An equal-weight mixture of N models at the image level: p(x) = (1/N) sum_k p_k(x), so
    log p(x) = logsumexp_k log p_k(x) - log N (logsumexp: no underflow of exp(-1000))."""
    per_image = log_probs.flatten(2).sum(-1) if log_probs.dim() > 2 else log_probs  # (N, B) log p_k(x)
    return torch.logsumexp(per_image, dim=0) - math.log(per_image.shape[0])  # (B,)


def late_observed(observed: torch.Tensor, order: torch.Tensor) -> int:
    """How many observed pixels `order` visits after the first missing one: the pixels
    orders.observed_first(observed, order) has to move forward. 0: the order is observed-first already.

    observed: (L,) bool, True where the pixel is given; order: (L,) pixel order."""
    given = observed[order]  # (L,) is the pixel at step t observed?
    first_missing = int((~given).nonzero()[0]) if (~given).any() else len(order)
    return int(given[first_missing:].sum())


class LMGatedResnet(nn.Module):
    """armini.nn.gated.GatedResnet with locally masked convolutions: the order goes to both.

    c1 = conv(concat_elu(h), order) [+ nin(concat_elu(skip))];  c2 = conv(dropout(concat_elu(c1)), order)
    h  = h + a * sigmoid(b),   (a, b) = split(c2)"""

    def __init__(self, filters: int, kernel_size: int, skip_channels: int = 0, dropout: float = 0.0):
        super().__init__()
        self.conv_in = LocallyMaskedConv2d(2 * filters, filters, kernel_size)
        self.nin_skip = nn.Conv2d(2 * skip_channels, filters, 1) if skip_channels else None  # 1x1: reads p only
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = LocallyMaskedConv2d(2 * filters, 2 * filters, kernel_size)

    def forward(self, h, order, skip=None):
        c1 = self.conv_in(concat_elu(h), order)  # (B, F, H, W)
        if skip is not None:
            c1 = c1 + self.nin_skip(concat_elu(skip))  # the shortcut from the up pass
        c2 = self.conv_out(self.dropout(concat_elu(c1)), order)  # (B, 2F, H, W)
        a, b = c2.chunk(2, dim=1)  # (B, F, H, W) each
        return h + a * torch.sigmoid(b)  # gating


@dataclass
class LMConvConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    nr_filters: int = 32  # F
    nr_resnet: int = 1  # gated resnets per stage of the up pass
    n_stages: int = 2  # stages of the U-net, a dilated convolution between two (3: the paper's)
    kernel_size: int = 3  # k of every locally masked convolution
    dilation: int = 2  # of the convolutions between stages (the reference's max_dilation)
    head: str = "dmol"  # "dmol" (discretised logistic mixture) or "softmax" (K-way)
    nr_mix: int = 5  # M, logistics in the mixture (head="dmol")
    dropout: float = 0.0
    orders: str = "s-curve"  # training orders: the symmetries of this named order (armini.orders.named);
    #                          several joined by "+" ("s-curve+spiral": the S-curves, then the spirals)
    n_orders: int = 8  # how many of each named order's 8 symmetries (the first n)
    input: str = "ordinal"  # how values are read: "ordinal" (pixels) or "embedding" (codebook indices)
    embed_dim: int = 16
    num_classes: Optional[int] = None  # class-conditional with this many classes (None: unconditional)


class LMConv(ARModel):
    """A PixelCNN++-style U-net of locally masked convolutions that follows any pixel order."""

    any_order = True

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = LMConvConfig(shape=self.shape, levels=self.levels, **kwargs)
        C, H, W = self.shape
        if C != 1:
            raise ValueError(f"LMConv models grayscale images (shape (1, H, W)), got shape {self.shape}: its orders "
                             "are orders of pixels, and an RGB pixel would also need channel masks at the centre tap")
        if cfg.nr_filters < 1 or cfg.nr_resnet < 0 or cfg.n_stages < 1 or cfg.nr_mix < 1 or cfg.dilation < 1:
            raise ValueError(f"need nr_filters, n_stages, nr_mix, dilation >= 1 and nr_resnet >= 0; got {cfg}")
        if cfg.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {cfg.head!r}")
        unknown = [name for name in cfg.orders.split("+") if name not in orders_lib.NAMED]
        if unknown:
            raise ValueError(f"unknown order {unknown[0]!r} in orders={cfg.orders!r}: name orders of armini.orders "
                             f"({', '.join(orders_lib.NAMED)}), several joined by '+' (e.g. 's-curve+spiral')")
        if not 1 <= cfg.n_orders <= len(orders_lib.SYMMETRIES):
            raise ValueError(f"n_orders must be 1..{len(orders_lib.SYMMETRIES)} (symmetries of the square), "
                             f"got {cfg.n_orders!r}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {cfg.dropout!r}")
        self.config = cfg
        self.set_classes(cfg.num_classes)
        #: the training orders, (N, L) pixel orders (the first n_orders symmetries of each named order): one is
        #: drawn per batch by loss()
        self.train_orders = torch.stack([orders_lib.named(name, H, W, k) for name in cfg.orders.split("+")
                                         for k in range(cfg.n_orders)])
        Fn, R, S, k = cfg.nr_filters, cfg.nr_resnet, cfg.n_stages, cfg.kernel_size
        self.inputs = ValueInput(self.levels, C, cfg.input, cfg.embed_dim)  # (B, C, H, W) -> (B, C_in, H, W)
        # first layer, on the inputs plus a channel of ones (so the first layer sees where the padding is)
        self.init = LocallyMaskedConv2d(self.inputs.out_channels + 1, Fn, k, mask_type="A")
        self.up = nn.ModuleList([nn.ModuleList([LMGatedResnet(Fn, k, 0, cfg.dropout) for _ in range(R)])
                                 for _ in range(S)])
        self.up_dilated = nn.ModuleList([LocallyMaskedConv2d(Fn, Fn, k, cfg.dilation) for _ in range(S - 1)])
        n_down = [R] + [R + 1] * (S - 1)  # the reference's down pass reads every shortcut
        self.down = nn.ModuleList([nn.ModuleList([LMGatedResnet(Fn, k, Fn, cfg.dropout) for _ in range(n)])
                                   for n in n_down])
        self.down_dilated = nn.ModuleList([LocallyMaskedConv2d(Fn, Fn, k, cfg.dilation) for _ in range(S - 1)])
        out = dmol_num_params(C, cfg.nr_mix) if cfg.head == "dmol" else C * self.levels
        self.nin_out = nn.Conv2d(Fn, out, 1)
        if cfg.num_classes is not None:  # made last: the unconditional model draws what it always drew
            self.class_emb = nn.Embedding(cfg.num_classes, Fn)

    # ------------------------------------------------------------------ orders
    def generation_order(self) -> torch.Tensor:
        """The default order: the first training order (the S-curve by default). (D,)"""
        return self.train_orders[0].clone()

    def pixel_order(self, order=None) -> torch.Tensor:
        """order= as a checked (L,) pixel order on the CPU (None: generation_order())."""
        order = self.resolve_order(order)
        return self.generation_order() if order is None else order

    def draw_order(self) -> torch.Tensor:
        """One of the training orders, drawn with the global torch RNG (so a resumed run draws the same). (L,)"""
        return self.train_orders[torch.randint(len(self.train_orders), ())]

    def completion_order(self, observed) -> torch.Tensor:
        """An order that visits every observed pixel first, for completing an image: (L,).

        observed: (H, W) bool (or any shape with H*W entries), True where the pixel is given.
        The training order closest to doing so already, made observed-first:
        armini.orders.observed_first(observed, o) for the training order o that visits the fewest
        observed pixels after its first missing one (late_observed), so the fewest masks change.
        A training order that already visits them first is returned as it is: the transposed
        S-curve (column by column) for a given left half, a spiral (with orders="s-curve+spiral")
        for a missing centre. Without such an order (a missing centre and S-curves only) every
        missing pixel still sees every observed one, but through masks the network never trained on."""
        observed, late = self._late_observed(observed)
        best = self.train_orders[min(range(len(late)), key=late.__getitem__)]
        return orders_lib.observed_first(observed, best)

    def completion_orders(self, observed) -> torch.Tensor:
        """Every training order that already visits all the observed pixels first: (N, L), the
        orders a completion can mix (ensemble_log_prob(x, orders, observed=observed)). If none does,
        the one order completion_order(observed) makes: (1, L).

        A given left half: both column-by-column S-curves (from the top and from the bottom of the
        first column); a missing centre, with orders="s-curve+spiral": two spirals."""
        _, late = self._late_observed(observed)
        ready = [order for order, n in zip(self.train_orders, late) if n == 0]
        return torch.stack(ready) if ready else self.completion_order(observed)[None]  # (N, L)

    def _late_observed(self, observed):
        """observed checked and flattened to (L,) bool, and late_observed of it for every training order."""
        observed = torch.as_tensor(observed, dtype=torch.bool).cpu()
        if observed.numel() != self.dims:
            raise ValueError(f"observed must mark the {self.dims} pixels of one image ({self.shape[1]}x{self.shape[2]}), "
                             f"got shape {tuple(observed.shape)}")
        observed = observed.reshape(-1)  # (L,)
        return observed, [late_observed(observed, order) for order in self.train_orders]  # pixels each must move

    # ----------------------------------------------------------------- network
    def network(self, x: torch.Tensor, y=None, order=None) -> torch.Tensor:
        """The output layer (B, P or K, H, W) for integer images x, in `order` ((L,) pixel order)."""
        order = self.pixel_order(order)
        h = self.inputs(x, self.nin_out.weight.dtype)  # (B, C_in, H, W)
        h = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)  # (B, C_in+1, H, W)
        u = self.init(h, order)  # (B, F, H, W): pixels strictly before each pixel
        if y is not None:
            u = u + self.class_emb(y)[:, :, None, None]  # the class, at every position
        shortcuts = [u]
        S = self.config.n_stages
        for s in range(S):  # up pass: keep every output for the shortcuts
            for block in self.up[s]:
                shortcuts.append(block(shortcuts[-1], order))
            if s < S - 1:
                shortcuts.append(self.up_dilated[s](shortcuts[-1], order))
        u = shortcuts.pop()
        for s in range(S):  # down pass: consume the shortcuts in reverse
            for block in self.down[s]:
                u = block(u, order, shortcuts.pop())
            if s < S - 1:
                u = self.down_dilated[s](u, order)
        assert not shortcuts
        return self.nin_out(F.elu(u))  # (B, P or C*K, H, W)

    # -------------------------------------------------------------- likelihood
    def conditionals(self, x, y=None, *, order=None, filled=None):
        return self.head_logprobs(self.network(x, y, order), x)  # (B, C, H, W, K)

    def head_logprobs(self, out, x):
        """The head: the network's output (B, P or K, h, w) at pixels whose values are x (B, 1, h, w) ->
        log p(x = . | context) (B, 1, h, w, K), by the mixture of logistics or the softmax."""
        if self.config.head == "dmol":
            return dmol_conditionals(out, x, self.levels, check_values=False)  # (B, 1, h, w, K)
        return torch.log_softmax(categorical_logits(out, 1, self.levels), dim=-1)  # (B, 1, h, w, K)

    def log_prob_pixels(self, x, y=None, *, order=None, filled=None):
        if self.config.head == "dmol":
            return dmol_log_prob_pixels(self.network(x, y, order), x, self.levels, check_values=False)  # (B, C, H, W)
        return super().log_prob_pixels(x, y, order=order)

    def conditional_logprobs(self, x, index, y=None, cache=None, *, order=None, filled=None):
        """The sampling step's log-probabilities (n, S, K) of the pixels at `index` (S,) only.

        The network still runs on the whole image (no cache), but the head's K values are computed
        for the S pixels this step draws, not for all H*W: the same numbers as the whole-image
        conditionals at those pixels (so the same draws), at a fraction of the head's cost."""
        out = self.network(x, y, order)  # (n, P or K, H, W)
        n = out.shape[0]
        out = out.flatten(2)[:, :, index].unsqueeze(2)  # (n, P or K, 1, S): the S pixels as a 1 x S image
        at = x.flatten(2)[:, :, index].unsqueeze(2)  # (n, 1, 1, S): their values (one channel: nothing couples)
        return self.head_logprobs(out, at).view(n, len(index), -1)  # (n, S, K)

    def loss(self, x, y=None, *, order=None, observed=None):
        """Mean bits per dimension under one order drawn from the training orders (order=None), or
        under the order given. Each draw is an exact likelihood; training on the draws teaches the
        network every order of the set."""
        if order is None and observed is None:
            order = self.draw_order()
        return super().loss(x, y, order=order, observed=observed)

    def ensemble_log_prob(self, x, orders, y=None, *, observed=None) -> torch.Tensor:
        """log p(x) of the equal-weight mixture of the model in each of `orders`: (B,) nats.

        orders: a list (or (N, L) tensor) of pixel orders, e.g. model.train_orders.
        observed: a bool mask of the given pixels (as for log_prob): then log p(x_missing | x_observed)
        of the mixture, (1/N) sum_k p_k(x_missing | x_observed), a distribution over the missing
        pixels as each p_k is. Every order must visit the observed pixels first
        (completion_orders(observed) gives the trained ones)."""
        per_order = torch.stack([self.log_prob(x, y, order=o, observed=observed) for o in orders])  # (N, B)
        return ensemble_log_likelihood(per_order)  # (B,)

    def bench_fields(self) -> dict:
        """What armini.bench adds to this model's record: its test bits/dim are for one order (orders=1,
        the first training order), and the orders it was trained on."""
        return {"orders": 1, "train_orders": len(self.train_orders), "order_set": self.config.orders}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", orders={self.config.orders!r} x {self.config.n_orders}"
