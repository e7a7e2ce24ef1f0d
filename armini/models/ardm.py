"""Autoregressive Diffusion Models (Hoogeboom, Gritsenko, Bastings, Poole, van den Berg & Salimans,
2022, "Autoregressive Diffusion Models"): one network for every generation order at once.

An order-agnostic AR model averages the chain rule over all D! orders sigma,

    log p(x) >= E_sigma [ sum_t log p(x_sigma(t) | x_sigma(<t)) ]                   (Jensen)

and trains ONE network for every conditional that appears in it. The network is not causal at
all: it reads the image with the dimensions that are not given yet replaced by a mask value
(the "absorbing state": the middle of [-1, 1], plus a mask channel so that a real middle grey
and a masked dimension differ) and the number t of given dimensions, and predicts all D
dimensions in one pass (a small U-Net, armini.nn.unet). What makes it an AR model is the input:
masked dimensions are never seen.

Training (the paper's eq. 5, with t counted from 0): per image draw an order sigma (a random
permutation) and a step t uniform in {0, ..., D-1}; the dimensions with sigma < t are given
and the loss scores every other one at once,

    L(x) = D / (D - t) * sum_{d: sigma(d) >= t} -log p(x_d | x_given, t)                  (ardm_nll)

The D - t scored dimensions all sit at step t of some order, so their average is an unbiased
estimate of step t's term, and D * E_t[...] = sum over t: E_{t, sigma} L(x) is exactly the
order-averaged NLL above (tests/test_ardm.py checks this by enumeration). The weight is
D / (D - t) for t in {0..D-1}; counted from 1 (t in {1..D}) the same weight reads D / (D - t + 1).
Mixing the two conventions divides by zero or biases the bound.

Likelihoods:
    loss(x)                    the stochastic estimate above, bits/dim (nll_is_bound = True)
    elbo_bits(x, draws=...)    the test-set ELBO in bits/dim and its standard error
    nll_bits(x)                the same estimate per image (one draw, a fixed seed): what evaluate reads
    log_prob(x, order=sigma)   the exact log-likelihood of the chain rule in ONE order: one network
                               pass per step (D passes), conditionals(x, order=sigma) likewise
    log_prob(x)                the same in generation_order() (raster), as every model of the course

Parallel generation under a budget (the paper's section 4): predicting S dimensions from the same
context costs S times that step's loss. From the per-step losses L_t measured on held-out data
(`measure_step_losses`), a dynamic program (`plan_steps`) splits the D dimensions into S steps of
minimal total loss; `set_budget(S)` makes `sampling_steps()` return those groups and `sample`
draw one random order per call (shared by the batch), and `budget_bits(S)` is the bits/dim bound
of that S-step policy. With no budget the model follows the contract's default: generation_order()
one dimension per step, which the generic tests (causality, normalisation, sampling) use.

Deviations from the paper: a small U-Net (the paper: a 32-block U-Net); no auxiliary unweighted
loss term (the reference adds 0.001 x the plain masked cross-entropy; the paper reports it hardly
matters); no class conditioning; every dimension is its own step (channels of a pixel too);
per-step losses are sorted in descending order before the dynamic program, as the reference does
(more context never hurts: sorting removes the measurement noise).

Depth upscaling (the paper's Upscale ARDM): `UpscaleARDM` generates the coarse value of every
dimension first (its top bits, x // K2) with one ARDM, then the rest (x mod K2) with a second one
that reads the whole coarse image (`RefineARDM`); -log p(x) = -log p(c) - log p(x | c) exactly, so
the two stages' bounds add up. Its own docstring says more.

Legend: B batch, C, H, W image, K levels, D = C*H*W dimensions, S steps of a budget, F features.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..nn.inputs import to_unit_range
from ..nn.unet import UNet
from .base import LN2, ARModel, SampleStep


# ----------------------------------------------------------------------------- the objective
def ardm_weight(t: torch.Tensor, D: int) -> torch.Tensor:
    """D / (D - t) for t in {0, ..., D-1} given dimensions: the reweighting of eq. 5 (0-indexed t)."""
    return D / (D - t)


def ardm_nll(logp: torch.Tensor, given: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The ARDM estimate of -log p(x) in nats, per image: (B,).

    logp:  (B, D) log p(x_d | x_given) of the true value of every dimension, in nats
    given: (B, D) bool, the t dimensions given (sigma < t)
    t:     (B,) how many are given, in {0, ..., D-1}

        D / (D - t) * sum over the dimensions NOT given of -log p(x_d | x_given)
    """
    D = logp.shape[1]
    missing = -(logp * ~given).sum(1)  # (B,) nats over the D - t dimensions to predict
    return ardm_weight(t, D) * missing  # (B,)


def random_ranks(batch: int, D: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """One uniformly random order per image, as ranks: rank[b, d] = the step of dimension d. (B, D)

    The argsort of D uniform numbers is a uniformly random permutation (of ranks, as well as of
    positions). Drawn on `generator`'s device (the CPU without one), moved to `device`."""
    gdev = generator.device if generator is not None else device
    return torch.rand(batch, D, generator=generator, device=gdev).argsort(1).to(device)


# ---------------------------------------------------------------------------- step budgets
def plan_steps(step_losses, steps: int) -> list:
    """The paper's budget allocation: how many dimensions to generate at each of `steps` steps. list of S ints.

    step_losses: (D,) L_t, the loss of one dimension predicted when t dimensions are given,
    t = 0..D-1. Generating the dimensions t..u-1 in one step, all from the same t given ones,
    costs (u - t) * L_t. cost[k, u] is the least cost of reaching u given dimensions in k steps:

        cost[0, 0] = 0,  cost[k, u] = min over t < u of  cost[k-1, t] + (u - t) * L_t

    then back from cost[S, D] to 0 along the best choices. Every step fills at least one dimension."""
    L = torch.as_tensor(step_losses, dtype=torch.float64).flatten()  # (D,)
    D = len(L)
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= D:
        raise ValueError(f"steps must be a whole number from 1 to D = {D} (the dimensions to generate), got {steps!r}")
    t = torch.arange(D)[:, None]  # (D, 1) dimensions given before the step
    u = torch.arange(D + 1)[None, :]  # (1, D+1) given after it
    jump = torch.where(u > t, (u - t) * L[:, None], math.inf)  # (D, D+1) cost of the step t -> u
    cost = torch.full((D + 1,), math.inf, dtype=torch.float64)
    cost[0] = 0.0
    best_from = []  # per step k: for every u, the t it best came from
    for _ in range(int(steps)):
        cost, came_from = (cost[:D, None] + jump).min(0)  # (D+1,) each
        best_from.append(came_from)
    sizes, u_now = [], D
    for came_from in reversed(best_from):  # backtrack from D given dimensions
        t_before = int(came_from[u_now])
        sizes.append(u_now - t_before)
        u_now = t_before
    return sizes[::-1]


def policy_bits(step_losses, sizes) -> float:
    """Total loss of generating sizes[0], sizes[1], ... dimensions per step, per dimension:

        (1/D) sum_k sizes[k] * L_{t_k},   t_k = sizes[0] + ... + sizes[k-1]

    (in the unit of step_losses: bits/dim when L_t is in bits). With one dimension per step it is
    the mean of L_t: the full D-step ELBO."""
    L = torch.as_tensor(step_losses, dtype=torch.float64).flatten()  # (D,)
    sizes = torch.as_tensor(list(sizes), dtype=torch.long)
    if int(sizes.sum()) != len(L) or bool((sizes < 1).any()):
        raise ValueError(f"sizes must be positive and add up to D = {len(L)}, got {sizes.tolist()}")
    starts = torch.cumsum(sizes, 0) - sizes  # (S,) t_k: dimensions given before step k
    return float((sizes * L[starts]).sum() / len(L))


# ------------------------------------------------------------------------------ the model
@dataclass
class ARDMConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    channels: int = 32  # F, the U-Net's width at full resolution
    mults: tuple = (1, 2, 2)  # the width of each lower level, in multiples of F
    emb_dim: int = 64  # the size of the step embedding
    max_rows: int = 512  # images per network pass when one call needs many (D passes for log_prob)


class ARDM(ARModel):
    """Order-agnostic, absorbing-state ARDM: a U-Net reads the masked image, the mask and t."""

    any_order = True
    nll_is_bound = True  # loss() and nll_bits(x) are the random-order estimate, a bound in expectation
    inputs_per_channel = 2  # network input channels per image channel: the value and its mask

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = ARDMConfig(shape=self.shape, levels=self.levels, **kwargs)
        cfg.mults = tuple(cfg.mults)
        if cfg.channels < 1 or not cfg.mults or min(cfg.mults) < 1 or cfg.max_rows < 1:
            raise ValueError(f"channels, mults and max_rows must be positive, got {cfg.channels}, {cfg.mults}, "
                             f"{cfg.max_rows}")
        self.config = cfg
        C = self.shape[0]
        # input: C values in [-1, 1] (masked ones at 0) + C mask channels (+ what a subclass conditions on);
        # output: K logits per dimension
        self.net = UNet(self.inputs_per_channel * C, C * self.levels, cfg.channels, cfg.mults, cfg.emb_dim)
        self.step_losses: Optional[torch.Tensor] = None  # (D,) L_t in bits, from measure_step_losses
        self.step_sizes: Optional[list] = None  # the budget: dimensions per sampling step (None: one each)

    # --------------------------------------------------------------- one network pass
    def network_input(self, x: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) integers and the given mask -> (B, 2C, H, W): values scaled to [-1, 1], with the
        dimensions not given set to 0 (the middle value: the absorbing state), then the mask itself."""
        v = to_unit_range(x.to(self.model_dtype), self.levels)  # (B, C, H, W) in [-1, 1]
        v = torch.where(given, v, torch.zeros_like(v))  # masked: the middle value, whatever x held
        return torch.cat([v, given.to(v.dtype)], dim=1)  # (B, 2C, H, W)

    def add_condition(self, inp: torch.Tensor, y) -> torch.Tensor:
        """The network input plus what the model is conditioned on: nothing for the unconditional ARDM
        (y is None); UpscaleARDM's refinement stage appends the coarse image (RefineARDM)."""
        return inp

    def predict(self, x: torch.Tensor, given: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x_d = k | x_given) for every dimension d and value k, from one pass: (B, C, H, W, K).

        given: bool (B, C, H, W); t, the number given, is fed to the network as its step."""
        B, C, H, W = x.shape
        t = given.flatten(1).sum(1)  # (B,)
        inp = self.add_condition(self.network_input(x, given), y)  # (B, inputs_per_channel * C, H, W)
        logits = self.net(inp, t)  # (B, C*K, H, W)
        logits = logits.view(B, C, self.levels, H, W).permute(0, 1, 3, 4, 2)  # (B, C, H, W, K)
        return torch.log_softmax(logits, dim=-1)

    # ---------------------------------------------------------------- the contract
    def sampling_steps(self, order: Optional[torch.Tensor] = None) -> list:
        """Groups of dimensions generated together: `order` (default generation_order()) split into the
        budget's step sizes (set_budget), or one dimension per step without a budget. list of (S,)"""
        order = self.generation_order() if order is None else order
        return list(order.split(self.step_sizes or 1))

    def step_of(self, order: torch.Tensor) -> torch.Tensor:
        """(D,) the sampling step that fills each flat position, in `order` under the current budget."""
        sizes = torch.tensor([len(g) for g in self.sampling_steps(order)])  # (G,)
        step = torch.empty(self.dims, dtype=torch.long)
        step[order.cpu()] = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        return step

    @staticmethod
    def given_at(step: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
        """(g, D) bool: what step k (each of ks (g,)) is given: the dimensions of every EARLIER step."""
        return step[None, :] < ks[:, None]  # strictly: a step never sees itself (<= would leak)

    def conditionals(self, x, y=None, *, order=None, filled=None):
        """(B, C, H, W, K) log-probabilities.

        filled given (the sampling loop): every dimension given the filled ones, one pass.
        Otherwise the chain rule in `order` (default generation_order()): the dimensions of step k
        (one per step, or the budget's groups) given those of earlier steps, one pass per step."""
        if filled is not None:
            return self.predict(x, filled.expand_as(x), y)
        order = self.generation_order() if order is None else self.resolve_order(order)
        B, D, K = x.shape[0], self.dims, self.levels
        step = self.step_of(order).to(x.device)  # (D,)
        G = len(self.sampling_steps(order))
        out = torch.empty(B, D, K, dtype=self.model_dtype, device=x.device)
        per_pass = max(1, self.config.max_rows // B)  # steps computed together: B * per_pass images a pass
        for k0 in range(0, G, per_pass):
            ks = torch.arange(k0, min(k0 + per_pass, G), device=x.device)  # (g,) steps in this pass
            given = self.given_at(step, ks)  # (g, D)
            xs = x[:, None].expand(B, len(ks), *self.shape).reshape(-1, *self.shape)  # (B*g, C, H, W)
            ys = None if y is None else y[:, None].expand(B, len(ks), *y.shape[1:]).reshape(-1, *y.shape[1:])
            lp = self.predict(xs, given[None].expand(B, -1, -1).reshape(-1, *self.shape), ys)  # (B*g, C, H, W, K)
            lp = lp.view(B, len(ks), D, K)
            dims = ((step >= k0) & (step < k0 + len(ks))).nonzero().squeeze(1)  # dimensions of these steps
            out[:, dims] = lp[:, step[dims] - k0, dims]  # each from the pass of its own step
        return out.view(B, *self.shape, K)

    # ------------------------------------------------------------------ training
    def weighted_nll(self, x: torch.Tensor, rank: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        """ardm_nll for given orders (rank (B, D): the step of each dimension) and steps t (B,): (B,) nats."""
        given = rank < t[:, None]  # (B, D): sigma < t
        lp = self.predict(x, given.view(x.shape), y)  # (B, C, H, W, K)
        lp = lp.gather(-1, x.unsqueeze(-1)).flatten(1)  # (B, D) log p of the true values
        return ardm_nll(lp, given, t)

    def loss(self, x, y=None, *, order=None, observed=None):
        """The training objective in bits/dim: the ARDM estimate with one random order and step per image,
        drawn from torch's global RNG (fit's checkpoints hold it, so a resume draws the same ones).
        With order= or observed=: the exact chain rule in that order, as every model (D passes)."""
        if order is not None or observed is not None:
            return super().loss(x, y, order=order, observed=observed)
        B, D = x.shape[0], self.dims
        t = torch.randint(0, D, (B,), device=x.device)  # uniform in {0, ..., D-1}
        rank = random_ranks(B, D, device=x.device)  # (B, D) a random order per image
        return self.weighted_nll(x, rank, t, y).mean() / (D * LN2)  # nats per image -> bits per dimension

    # ------------------------------------------------------------- test likelihood
    def elbo_draws(self, x, y=None, *, draws: int = 1, generator: Optional[torch.Generator] = None,
                   batch_size: int = 256) -> torch.Tensor:
        """The ARDM estimate of -log2 p(x) for `draws` random (t, sigma) per image: (draws, B) bits per image.

        Draws come from `generator` (default: a new one seeded 0, so the same call gives the same
        numbers and torch's global RNG is left alone)."""
        x = self.check_input(x)
        y = self.check_labels(y, x.shape[0])
        if isinstance(draws, bool) or int(draws) != draws or draws < 1:
            raise ValueError(f"draws must be a positive number of (t, sigma) draws per image, got {draws!r}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        B, D = x.shape[0], self.dims
        out = torch.empty(int(draws), B, dtype=torch.float64)
        with torch.no_grad(), self.inputs_checked():
            for r in range(int(draws)):
                for s in range(0, B, batch_size):
                    xb, yb = x[s:s + batch_size], None if y is None else y[s:s + batch_size]
                    t = torch.randint(0, D, (len(xb),), generator=g, device=g.device).to(x.device)
                    rank = random_ranks(len(xb), D, g, x.device)
                    out[r, s:s + batch_size] = (self.weighted_nll(xb, rank, t, yb) / LN2).double().cpu()
        return out

    def elbo_bits(self, x, y=None, *, draws: int = 8, generator: Optional[torch.Generator] = None,
                  batch_size: int = 256) -> tuple:
        """(mean, standard error) of the ELBO in bits/dim over the images x (at least 2).

        Each image's bound is averaged over `draws` random (t, sigma); the standard error is that of the
        mean over images (std / sqrt(N)), so it covers both the random draws and the choice of images."""
        per_image = self.elbo_draws(x, y, draws=draws, generator=generator, batch_size=batch_size).mean(0)  # (B,)
        if len(per_image) < 2:
            raise ValueError("elbo_bits needs at least 2 images to give a standard error")
        per_image = per_image / self.dims  # bits per dimension
        return float(per_image.mean()), float(per_image.std() / math.sqrt(len(per_image)))

    def nll_bits(self, x, y=None, *, order=None, observed=None):
        """-log2 p(x) per image, (B,). Without order= and observed=: the ARDM estimate (one (t, sigma) per
        image, seed 0), an upper bound in expectation, what train.evaluate reports as "(bound)"; with
        order= (or observed=): the exact chain rule in that order (D network passes)."""
        if order is None and observed is None:
            return self.elbo_draws(x, y, draws=1)[0].to(dtype=self.model_dtype, device=self.model_device)
        return super().nll_bits(x, y, order=order, observed=observed)

    # ------------------------------------------------------------- step budgets
    @torch.no_grad()
    def measure_step_losses(self, x, y=None, *, stride: int = 1, generator: Optional[torch.Generator] = None,
                            batch_size: int = 256) -> torch.Tensor:
        """L_t for t = 0..D-1 on held-out images x: the mean -log2 p of a dimension still to predict when t
        are given (one random order per image and t), bits. Stored as `step_losses` and returned: (D,)

        stride > 1 measures every stride-th t (and the last) and interpolates linearly between them."""
        x = self.check_input(x)
        y = self.check_labels(y, x.shape[0])
        if isinstance(stride, bool) or int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive whole number, got {stride!r}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        N, D = x.shape[0], self.dims
        ts = torch.unique(torch.cat([torch.arange(0, D, int(stride)), torch.tensor([D - 1])]))  # (T,) measured t
        pairs = torch.cartesian_prod(ts, torch.arange(N))  # (T*N, 2): (t, image)
        per_pair = torch.empty(len(pairs), dtype=torch.float64)
        was_training = self.training
        self.eval()
        try:
            with self.inputs_checked():
                for s in range(0, len(pairs), batch_size):
                    t, idx = pairs[s:s + batch_size].T.to(x.device)  # (b,) each
                    xb, yb = x[idx], None if y is None else y[idx]
                    given = random_ranks(len(xb), D, g, x.device) < t[:, None]  # (b, D)
                    lp = self.predict(xb, given.view(xb.shape), yb).gather(-1, xb.unsqueeze(-1)).flatten(1)  # (b, D)
                    mean_missing = -(lp * ~given).sum(1) / (D - t)  # (b,) nats per dimension still to predict
                    per_pair[s:s + batch_size] = (mean_missing / LN2).double().cpu()
        finally:
            self.train(was_training)
        measured = per_pair.view(len(ts), N).mean(1)  # (T,) bits
        losses = torch.from_numpy(np.interp(np.arange(D), ts.numpy(), measured.numpy()))  # (D,)
        self.step_losses = losses
        return losses

    def _sorted_losses(self) -> torch.Tensor:
        if self.step_losses is None:
            raise ValueError("no per-step losses yet: measure them first on held-out images, "
                             "model.measure_step_losses(test_images), then set a budget")
        if self.step_losses.shape != (self.dims,):
            raise ValueError(f"step_losses must hold one loss per step t = 0..D-1, shape ({self.dims},); "
                             f"got shape {tuple(self.step_losses.shape)}")
        return self.step_losses.sort(descending=True).values  # more context never hurts (as the reference)

    def set_budget(self, steps: Optional[int]) -> Optional[list]:
        """Sample in `steps` steps (None: back to one dimension per step in generation_order()): the step
        sizes of the dynamic program over the measured step losses. Returns the sizes (or None)."""
        if steps is None:
            self.step_sizes = None
            return None
        self.step_sizes = plan_steps(self._sorted_losses(), steps)
        return self.step_sizes

    @property
    def budget(self) -> Optional[int]:
        """The number of sampling steps set by set_budget (None: no budget, D steps in generation_order())."""
        return None if self.step_sizes is None else len(self.step_sizes)

    def budget_bits(self, steps: int) -> float:
        """The bits/dim bound of the best `steps`-step policy, from the measured step losses."""
        L = self._sorted_losses()
        return policy_bits(L, plan_steps(L, steps))

    @torch.no_grad()
    def sample(self, n, *, order=None, generator=None, **kwargs):
        """ARModel.sample; with a budget set and no order=, one random order per call (shared by the batch),
        drawn from `generator`, split into the budget's steps."""
        if order is None and self.step_sizes is not None:
            order = random_ranks(1, self.dims, generator)[0]  # a random permutation of the D positions
        return super().sample(n, order=order, generator=generator, **kwargs)

    def bench_fields(self) -> dict:
        """What armini.bench adds to this model's record: its test bits/dim are a one-draw ELBO over random
        orders (an upper bound), and the sampling budget (None: one dimension per step)."""
        return {"order_set": "random", "budget": self.budget}

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", budget={self.budget} steps" if self.step_sizes else "")


# --------------------------------------------------------------------- depth upscaling
def split_levels(levels: int, coarse_levels: Optional[int] = None) -> tuple:
    """(K1, K2): K = K1 * K2 levels as a coarse value in [0, K1) and a fine one in [0, K2), both at least 2.

    Default K1: the square root of K, for a square K (256 -> 16 x 16: the top 4 bits, then the low 4)."""
    K = int(levels)
    K1 = math.isqrt(K) if coarse_levels is None else coarse_levels
    if isinstance(K1, bool) or int(K1) != K1 or not 1 < K1 < K or K % K1 or (coarse_levels is None and K1 * K1 != K):
        divisors = [k for k in range(2, K) if K % k == 0]
        bits = "levels=256 (coarse_levels=16: the top 4 bits, then the low 4)"
        fix = f"Pass coarse_levels= one of {divisors}" if divisors else f"{K} is prime: quantise to other levels"
        fix += "" if K == 256 else f", or use {bits}"
        got = ("coarse_levels=None (the square root of levels: levels must be a square)" if coarse_levels is None
               else f"coarse_levels={coarse_levels!r}")
        raise ValueError(
            f"UpscaleARDM generates a coarse value x // K2 in [0, coarse_levels) first, then the rest x % K2, so "
            f"levels must be coarse_levels x K2 with both at least 2; levels={K} and {got} do not split. {fix}")
    K1 = int(K1)
    return K1, K // K1


class RefineARDM(ARDM):
    """The Upscale ARDM's second stage: an ARDM over the fine values f = x mod K2 that also reads the
    whole coarse image c = x // K2, given as y (B, C, H, W) integers in [0, K1), as C more input channels."""

    inputs_per_channel = 3  # the fine value, its mask, the coarse value

    def __init__(self, shape=(1, 28, 28), levels=16, coarse_levels=16, **kwargs):
        super().__init__(shape, levels, **kwargs)
        self.coarse_levels = int(coarse_levels)

    def add_condition(self, inp, y):
        c = to_unit_range(y.to(inp.dtype), self.coarse_levels)  # (B, C, H, W) in [-1, 1]: every coarse value known
        return torch.cat([inp, c], dim=1)  # (B, 3C, H, W)

    def check_labels(self, y, batch: int):
        """y is not a class label here but the coarse image: (batch, C, H, W) integers in [0, K1)."""
        if self._inputs_checked:
            return y
        shape = ", ".join(map(str, (batch,) + self.shape))
        what = f"the coarse image, integers of shape ({shape}) in [0, {self.coarse_levels})"
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"{type(self).__name__} is conditioned on the coarse image: pass y, {what}; "
                             f"got {type(y).__name__}")
        if tuple(y.shape) != (batch,) + self.shape:
            raise ValueError(f"y must be {what}; got shape {tuple(y.shape)}")
        lo, hi = torch.stack(torch.aminmax(y)).tolist()
        if lo < 0 or hi >= self.coarse_levels:
            raise ValueError(f"y must be {what}; found range [{lo}, {hi}]")
        return y.long().to(self.model_device)


@dataclass
class UpscaleARDMConfig(ARDMConfig):
    coarse_levels: Optional[int] = None  # K1 (default: the square root of levels); K2 = levels / K1


class UpscaleARDM(ARModel):
    """Depth upscaling (the paper's Upscale ARDM): every pixel's top bits first, then the rest.

    Split each value x in [0, K) into c = x // K2 (the coarse value: K1 levels, the top bits when
    K2 is a power of two) and f = x mod K2 (K2 levels), K = K1 * K2. Stage 1 (`coarse`, an ARDM with
    K1 levels) generates the whole coarse image c in a random order; stage 2 (`fine`, a RefineARDM
    with K2 levels) then generates f in another random order, reading all of c as extra input
    channels. x = c * K2 + f. Because c is a function of x, p(x) = p(x, c) = p(c) p(x | c) exactly:

        -log p(x) = -log p1(c) - log p2(f | c)

    and each stage's order-agnostic ELBO bounds its own term, so their sum bounds -log p(x), and the
    bits/dim bound is the sum of the two stages' bits/dim (both divided by the same D). Exact
    likelihoods add the same way: log_prob(x, order=sigma) = log p1(c; sigma) + log p2(f | c; sigma),
    both stages in sigma (one network pass per step, 2D passes).

    There is no conditional p(x_d | x_<d) per dimension (each dimension is generated twice, and
    the refinement of d reads the coarse values of every dimension), so `conditionals` is an error;
    log_prob_pixels gives each dimension's two terms, log p1(c_d | ...) + log p2(f_d | c, ...), which add
    up to log p(x) in the order given. Sampling runs the base sampling loop once per stage
    (each stage's own random order under a step budget); a callback sees both stages, with step
    numbers that go on from stage 1 into stage 2, the decoded image so far (a coarse value shown at
    the centre of its bin, c * K2 + K2 // 2) and each step's distribution over the K values.

    Choices here: two stages of K1 x K2 levels (the paper's best, Upscale-4 with four stages of a
    branching factor of 4, reaches 2.64 bits/dim on CIFAR-10); one U-Net per stage, of the same
    width, each predicting only its own K1 or K2 values (given c, the K2 values of x in c's bin).
    """

    any_order = True
    nll_is_bound = True
    #: generated in two stages: no per-dimension conditional p(x_d | x_<d) (see armini.models.base)
    two_stage = True

    def __init__(self, shape=(1, 28, 28), levels=256, coarse_levels: Optional[int] = None, **kwargs):
        super().__init__(shape, levels)
        K1, K2 = split_levels(self.levels, coarse_levels)
        self.config = UpscaleARDMConfig(shape=self.shape, levels=self.levels, coarse_levels=K1, **kwargs)
        self.coarse_levels, self.fine_levels = K1, K2
        self.coarse = ARDM(self.shape, K1, **kwargs)  # stage 1: p1(c)
        self.fine = RefineARDM(self.shape, K2, coarse_levels=K1, **kwargs)  # stage 2: p2(f | c)

    @property
    def stages(self) -> tuple:
        return (self.coarse, self.fine)

    def split(self, x: torch.Tensor) -> tuple:
        """x (B, C, H, W) in [0, K) -> (c, f): its coarse values in [0, K1) and fine values in [0, K2)."""
        return x // self.fine_levels, x % self.fine_levels

    def join(self, c: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The inverse of split: x = c * K2 + f."""
        return c * self.fine_levels + f

    def bin_centre(self, c: torch.Tensor) -> torch.Tensor:
        """Coarse values shown as pixel values: the middle of their bin of K2 values, c * K2 + K2 // 2."""
        return c * self.fine_levels + self.fine_levels // 2

    @contextlib.contextmanager
    def _stages_trusted(self):
        """The stages trust the inputs this model checked once (see base.checks_inputs)."""
        with self.coarse.inputs_checked(), self.fine.inputs_checked():
            yield

    # ---------------------------------------------------------------- likelihood
    def conditionals(self, x, y=None, *, order=None, filled=None):
        raise NotImplementedError(
            "UpscaleARDM has no conditionals p(x_d | x_<d): it generates every dimension twice (its coarse value, "
            "then the rest given the whole coarse image). Use log_prob / log_prob_pixels (each dimension's two "
            "terms), or a stage's own: model.coarse.conditionals(c) and model.fine.conditionals(f, c), where "
            "(c, f) = model.split(x)")

    def log_prob_pixels(self, x, y=None, *, order=None):
        """Each dimension's two terms, log p1(c_d | earlier c) + log p2(f_d | c, earlier f), in nats: (B, C, H, W).

        Both stages follow `order` (default generation_order()); the sum over d is log p(x), exactly."""
        c, f = self.split(x)
        kwargs = {} if order is None else {"order": order}
        with self._stages_trusted():
            return self.coarse.log_prob_pixels(c, **kwargs) + self.fine.log_prob_pixels(f, c, **kwargs)

    def loss(self, x, y=None, *, order=None, observed=None):
        """The two stages' ARDM estimates added up, in bits/dim: one random order and step per image and per
        stage, from torch's global RNG. With order= or observed=: the exact likelihood in that order."""
        if order is not None or observed is not None:
            return super().loss(x, y, order=order, observed=observed)
        c, f = self.split(x)
        B, D = x.shape[0], self.dims
        total = 0.0
        for stage, target, cond in ((self.coarse, c, None), (self.fine, f, c)):
            t = torch.randint(0, D, (B,), device=x.device)  # uniform in {0, ..., D-1}
            rank = random_ranks(B, D, device=x.device)  # (B, D) this stage's random order per image
            total = total + stage.weighted_nll(target, rank, t, cond)  # (B,) nats
        return total.mean() / (D * LN2)  # -log p1(c) - log p2(f | c), per dimension

    def stage_elbo_draws(self, x, y=None, *, draws: int = 1, generator: Optional[torch.Generator] = None,
                         batch_size: int = 256) -> torch.Tensor:
        """Each stage's ARDM estimate (ARDM.elbo_draws) for `draws` random (t, sigma) per image and stage:
        (2, draws, B) bits per image, stage 1 (-log2 p1(c)) then stage 2 (-log2 p2(f | c)).

        Draws come from `generator` (default: a new one seeded 0), stage 1's first."""
        x = self.check_input(x)
        self.check_labels(y, x.shape[0])
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        c, f = self.split(x)
        kw = dict(draws=draws, generator=g, batch_size=batch_size)
        with self._stages_trusted():
            return torch.stack([self.coarse.elbo_draws(c, **kw), self.fine.elbo_draws(f, c, **kw)])

    def elbo_draws(self, x, y=None, **kwargs) -> torch.Tensor:
        """The bound on -log2 p(x): the two stages' estimates added, (draws, B) bits per image."""
        return self.stage_elbo_draws(x, y, **kwargs).sum(0)

    def stage_elbo_bits(self, x, y=None, *, draws: int = 8, generator: Optional[torch.Generator] = None,
                        batch_size: int = 256) -> list:
        """[(mean, standard error) of stage 1, of stage 2, of their sum] in bits/dim over the images x (at least
        2), from the same draws: the first two means add up to the third (up to rounding)."""
        bits = self.stage_elbo_draws(x, y, draws=draws, generator=generator, batch_size=batch_size)  # (2, draws, B)
        per_image = bits.mean(1)  # (2, B) bits per image, each stage
        if per_image.shape[1] < 2:
            raise ValueError("elbo_bits needs at least 2 images to give a standard error")
        per_image = torch.cat([per_image, per_image.sum(0, keepdim=True)]) / self.dims  # (3, B) bits/dim
        n = per_image.shape[1]
        return [(float(p.mean()), float(p.std() / math.sqrt(n))) for p in per_image]

    def elbo_bits(self, x, y=None, *, draws: int = 8, generator: Optional[torch.Generator] = None,
                  batch_size: int = 256) -> tuple:
        """(mean, standard error) of the two-stage ELBO in bits/dim over the images x, as ARDM.elbo_bits."""
        return self.stage_elbo_bits(x, y, draws=draws, generator=generator, batch_size=batch_size)[2]

    def nll_bits(self, x, y=None, *, order=None, observed=None):
        """-log2 p(x) per image, (B,): without order= and observed=, the two-stage estimate (one (t, sigma) per
        image and stage, seed 0), what train.evaluate reports as "(bound)"; with them, exact in that order."""
        if order is None and observed is None:
            return self.elbo_draws(x, y, draws=1)[0].to(dtype=self.model_dtype, device=self.model_device)
        return super().nll_bits(x, y, order=order, observed=observed)

    # ------------------------------------------------------------- step budgets
    def measure_step_losses(self, x, *, stride: int = 1, generator: Optional[torch.Generator] = None,
                            batch_size: int = 256) -> tuple:
        """Each stage's L_t on held-out images x (ARDM.measure_step_losses): ((D,), (D,)) bits, stored in the stages."""
        x = self.check_input(x)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        c, f = self.split(x)
        kw = dict(stride=stride, generator=g, batch_size=batch_size)
        with self._stages_trusted():
            return self.coarse.measure_step_losses(c, **kw), self.fine.measure_step_losses(f, c, **kw)

    def set_budget(self, steps) -> Optional[list]:
        """Sample each stage in `steps` steps (an int for both, or a pair (S1, S2); None: one dimension per
        step), planned by each stage's dynamic program over its own step losses. Returns both plans."""
        if steps is None:
            return [stage.set_budget(None) for stage in self.stages]
        pair = (steps, steps) if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) else tuple(steps)
        if len(pair) != 2:
            raise ValueError(f"steps must be one number of steps per stage or a pair (S1, S2), got {steps!r}")
        return [stage.set_budget(S) for stage, S in zip(self.stages, pair)]

    @property
    def budget(self) -> Optional[tuple]:
        """(S1, S2), the steps of each stage set by set_budget (None: no budget, D steps each)."""
        budgets = tuple(stage.budget for stage in self.stages)
        return None if budgets == (None, None) else budgets

    def budget_bits(self, steps) -> float:
        """The bits/dim bound of the best policy with `steps` steps per stage (or a pair): the two stages' sum."""
        pair = (steps, steps) if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) else tuple(steps)
        return sum(stage.budget_bits(S) for stage, S in zip(self.stages, pair))

    # -------------------------------------------------------------------- sampling
    def sampling_steps(self, order: Optional[torch.Tensor] = None) -> list:
        """Stage 1's groups of dimensions, then stage 2's: every dimension appears twice."""
        return self.coarse.sampling_steps(order) + self.fine.sampling_steps(order)

    def _stage_callback(self, callback, stage: int, offset: int, total: int, coarse):
        """A callback for one stage's sampling loop that passes the user's callback a SampleStep of the whole
        model: step numbers going on from stage 1 into stage 2, the decoded image so far, (n, S, K) probs."""
        K1, K2 = self.coarse_levels, self.fine_levels

        def relay(s):
            if stage == 1:  # coarse values so far, at the centre of their bin; p(c) spread over its K2 values
                shown = torch.where(s.filled, self.bin_centre(s.x), torch.zeros_like(s.x))
                probs = s.probs.repeat_interleave(K2, dim=-1) / K2  # (n, S, K)
            else:  # every coarse value known; the fine ones so far, the rest at the centre of their bin
                shown = torch.where(s.filled, self.join(coarse, s.x), self.bin_centre(coarse))
                c_here = coarse.flatten(1)[:, s.index]  # (n, S) the coarse value of each dimension filled
                spread = torch.nn.functional.one_hot(c_here, K1).to(s.probs.dtype)  # (n, S, K1)
                probs = (spread[..., None] * s.probs[..., None, :]).flatten(-2)  # (n, S, K1*K2): p(f) in c's bin
            callback(SampleStep(offset + s.step, total, s.index, shown, probs, s.filled))

        return relay

    @torch.no_grad()
    def sample(self, n, *, x=None, observed=None, y=None, generator=None, temperature: float = 1.0,
               callback=None, cached: bool = True, progress: bool = False, order=None):
        """Draw n images in two stages: (n, C, H, W) integers in [0, K). Arguments as ARModel.sample.

        Stage 1 samples the coarse image, stage 2 the fine values given it, each with the base sampling
        loop (each stage's own random order, drawn from `generator`, under a step budget; `order`, if
        given, for both). x, observed: the observed dimensions keep both their coarse and fine values."""
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of images, got {n!r}")
        self.check_labels(y, int(n))
        order = self.resolve_order(order)
        c_obs = f_obs = None
        if x is not None:
            c_obs, f_obs = self.split(self.check_input(x))
        kw = dict(observed=observed, generator=generator, temperature=temperature, cached=cached,
                  progress=progress, order=order)
        steps = [len(stage.sampling_steps(order)) for stage in self.stages]
        total = sum(steps)
        relay1 = None if callback is None else self._stage_callback(callback, 1, 0, total, None)
        c = self.coarse.sample(n, x=c_obs, callback=relay1, **kw)  # (n, C, H, W) in [0, K1)
        relay2 = None if callback is None else self._stage_callback(callback, 2, steps[0], total, c)
        f = self.fine.sample(n, x=f_obs, y=c, callback=relay2, **kw)  # (n, C, H, W) in [0, K2)
        return self.join(c, f)

    def bench_fields(self) -> dict:
        """armini.bench's extra fields: random orders, the per-stage budget and the levels of each stage."""
        return {"order_set": "random", "budget": None if self.budget is None else list(self.budget),
                "stage_levels": [self.coarse_levels, self.fine_levels]}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", stages={self.coarse_levels}x{self.fine_levels}"
