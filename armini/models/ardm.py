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
(more context never hurts: sorting removes the measurement noise); Upscale ARDM (depth upscaling)
is not implemented.

Legend: B batch, C, H, W image, K levels, D = C*H*W dimensions, S steps of a budget, F features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..nn.inputs import to_unit_range
from ..nn.unet import UNet
from .base import LN2, ARModel


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

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = ARDMConfig(shape=self.shape, levels=self.levels, **kwargs)
        cfg.mults = tuple(cfg.mults)
        if cfg.channels < 1 or not cfg.mults or min(cfg.mults) < 1 or cfg.max_rows < 1:
            raise ValueError(f"channels, mults and max_rows must be positive, got {cfg.channels}, {cfg.mults}, "
                             f"{cfg.max_rows}")
        self.config = cfg
        C = self.shape[0]
        # input: C values in [-1, 1] (masked ones at 0) + C mask channels; output: K logits per dimension
        self.net = UNet(2 * C, C * self.levels, cfg.channels, cfg.mults, cfg.emb_dim)
        self.step_losses: Optional[torch.Tensor] = None  # (D,) L_t in bits, from measure_step_losses
        self.step_sizes: Optional[list] = None  # the budget: dimensions per sampling step (None: one each)

    # --------------------------------------------------------------- one network pass
    def network_input(self, x: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) integers and the given mask -> (B, 2C, H, W): values scaled to [-1, 1], with the
        dimensions not given set to 0 (the middle value: the absorbing state), then the mask itself."""
        v = to_unit_range(x.to(self.model_dtype), self.levels)  # (B, C, H, W) in [-1, 1]
        v = torch.where(given, v, torch.zeros_like(v))  # masked: the middle value, whatever x held
        return torch.cat([v, given.to(v.dtype)], dim=1)  # (B, 2C, H, W)

    def predict(self, x: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """log p(x_d = k | x_given) for every dimension d and value k, from one pass: (B, C, H, W, K).

        given: bool (B, C, H, W); t, the number given, is fed to the network as its step."""
        B, C, H, W = x.shape
        t = given.flatten(1).sum(1)  # (B,)
        logits = self.net(self.network_input(x, given), t)  # (B, C*K, H, W)
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
            return self.predict(x, filled.expand_as(x))
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
            lp = self.predict(xs, given[None].expand(B, -1, -1).reshape(-1, *self.shape))  # (B*g, C, H, W, K)
            lp = lp.view(B, len(ks), D, K)
            dims = ((step >= k0) & (step < k0 + len(ks))).nonzero().squeeze(1)  # dimensions of these steps
            out[:, dims] = lp[:, step[dims] - k0, dims]  # each from the pass of its own step
        return out.view(B, *self.shape, K)

    # ------------------------------------------------------------------ training
    def weighted_nll(self, x: torch.Tensor, rank: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ardm_nll for given orders (rank (B, D): the step of each dimension) and steps t (B,): (B,) nats."""
        given = rank < t[:, None]  # (B, D): sigma < t
        lp = self.predict(x, given.view(x.shape))  # (B, C, H, W, K)
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
        return self.weighted_nll(x, rank, t).mean() / (D * LN2)  # nats per image -> bits per dimension

    # ------------------------------------------------------------- test likelihood
    def elbo_draws(self, x, y=None, *, draws: int = 1, generator: Optional[torch.Generator] = None,
                   batch_size: int = 256) -> torch.Tensor:
        """The ARDM estimate of -log2 p(x) for `draws` random (t, sigma) per image: (draws, B) bits per image.

        Draws come from `generator` (default: a new one seeded 0, so the same call gives the same
        numbers and torch's global RNG is left alone)."""
        x = self.check_input(x)
        self.check_labels(y, x.shape[0])
        if isinstance(draws, bool) or int(draws) != draws or draws < 1:
            raise ValueError(f"draws must be a positive number of (t, sigma) draws per image, got {draws!r}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        B, D = x.shape[0], self.dims
        out = torch.empty(int(draws), B, dtype=torch.float64)
        with torch.no_grad(), self.inputs_checked():
            for r in range(int(draws)):
                for s in range(0, B, batch_size):
                    xb = x[s:s + batch_size]
                    t = torch.randint(0, D, (len(xb),), generator=g, device=g.device).to(x.device)
                    rank = random_ranks(len(xb), D, g, x.device)
                    out[r, s:s + batch_size] = (self.weighted_nll(xb, rank, t) / LN2).double().cpu()
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
    def measure_step_losses(self, x, *, stride: int = 1, generator: Optional[torch.Generator] = None,
                            batch_size: int = 256) -> torch.Tensor:
        """L_t for t = 0..D-1 on held-out images x: the mean -log2 p of a dimension still to predict when t
        are given (one random order per image and t), bits. Stored as `step_losses` and returned: (D,)

        stride > 1 measures every stride-th t (and the last) and interpolates linearly between them."""
        x = self.check_input(x)
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
                    xb = x[idx]
                    given = random_ranks(len(xb), D, g, x.device) < t[:, None]  # (b, D)
                    lp = self.predict(xb, given.view(xb.shape)).gather(-1, xb.unsqueeze(-1)).flatten(1)  # (b, D)
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
