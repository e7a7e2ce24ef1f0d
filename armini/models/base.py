"""The contract every autoregressive model in armini follows.

An input x of shape `model.shape` (an image (C, H, W); later parts: a token grid, a video) is a
sequence of D integer dimensions, each in {0, ..., K-1}. A position is a flat index d into
x.flatten(1) (for an image, d = (c*H + i)*W + j; armini.orders.unravel turns it back into
(c, i, j)). An autoregressive model factorises

    p(x) = prod_t p(x_sigma(t) | x_sigma(<t))                          (chain rule)

in an order sigma, `generation_order()`, (D,) flat indices: raster order by default (rows top to
bottom, columns left to right, within a pixel the channels in order: R, then G, then B). Every
model exposes:

    log_prob_pixels(x)  -> (B, *shape)   log p(x_d | x_<d) in nats, for every d
    log_prob(x)         -> (B,)          log p(x) = sum_d log p(x_d | x_<d)
    nll_bits(x)         -> (B,)          -log2 p(x): bits per image
    loss(x)             -> scalar        the training objective: mean bits per dimension (`unit`)
    sample(n, ...)      -> (n, *shape)   integers, one step at a time

A model only has to say how it computes its conditionals; the rest is here.
Most models implement `conditionals(x)`: log-probabilities over all K values of
every dimension, (B, *shape, K), where entry d may only depend on the dimensions before d.
Models whose likelihood has a cheaper closed form (PixelCNN++'s discretised
logistic mixture) also override `log_prob_pixels`.

Orders. Most models are built for one order (their masks encode it): `any_order = False`, and
asking them for another order (`order=` in log_prob, loss, sample) is a clear error. A model
that can follow any order (order-agnostic models, Part II) sets `any_order = True` and takes
`order=` (a (D,) permutation of flat indices, see armini.orders) and `filled=` (bool (B, *shape),
the dimensions given so far) in `conditionals`; the sampling loop passes both.

Partial observations. `log_prob`, `nll_bits` and `loss` take `observed=`, a bool mask
broadcastable to x of the dimensions given: they then score only the missing dimensions, the
conditional NLL -log p(x_missing | x_observed). That is exact only when every observed dimension
comes before every missing one in the order (the top half of an image in raster order;
armini.orders.observed_first gives such an order to a model that can follow any): otherwise it
is an error. `sample(x=..., observed=...)` completes an image the same way.

Units. `unit` says what the numbers mean ("bits/dim" for pixels, "bits/token" for a prior over
codebook indices) and `nll_is_bound` whether they are exact (False) or an upper bound (a
two-stage model's, or a stochastic loss such as an order-agnostic model's random-order
estimate); `evaluate`, the training history and the bench report them with every number.

Later paradigms extend this contract instead of replacing it: a model that fills
several dimensions per step (scale-wise, parallel decoding) overrides
`sampling_steps()` (a list of (S,) flat index groups); a model with a cache for fast
sampling overrides `conditional_logprobs(x, index, y, cache)` and `init_cache(x, y)` (a cache with
a `given_step(index)` method is told of steps whose dimensions are all given instead of computing them). The `y`
keyword carries class labels for class-conditional models (unconditional models refuse them).
A raster-order model whose row i reads rows <= i only sets `rows_so_far = True`: its naive sampler
then runs on the rows generated so far instead of the whole image (the same conditionals, less work).

Inputs are checked once, where a call enters the model. `conditionals`, `log_prob_pixels`,
`log_prob` and `loss` are wrapped (by `__init_subclass__`, for every subclass) so that the first
of them a call reaches checks x (integers of shape (B, *shape) in [0, K), B >= 1), the labels y
and the memory the batch needs; the calls it makes in turn trust what was checked, and so does
`conditional_logprobs`, the sampling loop's call on the canvas `sample` checked once. A
subclass writes its methods as plain functions of valid inputs. An empty batch (B = 0) is an
error, not an empty result: its mean loss would be 0/0.

Video. A video model follows the same contract one dimension up: `shape = (T, C, H, W)` (T frames of
C x H x W; `shape_axes = 4`, subclass `VideoARModel`), a flat position d = ((t*C + c)*H + i)*W + j
(frame-major, so the first k frames are a prefix of x.flatten(1)), and the order frame by frame,
raster within a frame with each pixel's channels in turn. log_prob_pixels(x) is (B, T, C, H, W),
loss is still bits per dimension (`nats_per_frame` converts), `sample(n, context=first_frames)`
continues given frames (the x=/observed= machinery with the first frames observed), and a
SampleStep's `frames()` says which frame each step fills. A video model whose frame t reads frames
<= t only sets `frames_so_far = True`: its naive sampler then runs on the frames so far.

Memory: a model whose activations grow fast with the image size overrides
`activation_bytes(batch)`; a batch (or a `sample(n)`) that would need more memory than the
device has is then refused before the forward pass, with a message that names the size and a
smaller batch or image that fits (armini.memory.NotEnoughMemory, a ValueError and a MemoryError).

Legend for shape comments: B batch, T frames, C channels, H height, W width, K levels, D dimensions
of one input (C*H*W for an image, T*C*H*W for a video), S dimensions filled in one sampling step.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from .. import memory, orders
from ..memory import NotEnoughMemory, require_memory  # noqa: F401  (NotEnoughMemory: part of the contract)

LN2 = math.log(2.0)


def nats_per_frame(bits_per_dim, shape) -> float:
    """Bits per dimension of a video model -> nats per frame (the unit of the video papers):
    bits/dim * ln 2 * (C*H*W dimensions of one frame). shape: the model's (T, C, H, W)."""
    T, C, H, W = shape
    return float(bits_per_dim) * LN2 * C * H * W


def smaller_size(side: int) -> Optional[int]:
    """A smaller image side the data can give (a divisor of 28, `--size`), or None below 2."""
    return next((s for s in (28, 14, 7, 4, 2) if s < side), None)


def probability_dtype(device) -> torch.dtype:
    """The dtype samplers draw in on `device`: float64 (a value's chance exact to about 1e-16), but float32
    on Apple MPS, which has no float64 (its tensors cannot hold one)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def check_temperature(temperature) -> float:
    """A sampling temperature must be a finite positive number (nan or inf would give all-zero images)."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__} {temperature!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(
            f"temperature must be a finite positive number (1 = the model itself, below 1 sharper, "
            f"above 1 flatter), got {temperature!r}"
        )
    return t


def check_top_k(top_k, levels: int):
    """top_k= in sample(): None (every value) or a whole number of values to keep, 1 <= k <= K."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or int(top_k) != top_k:
        raise TypeError(f"top_k must be a whole number of values to keep (or None: all of them), got {top_k!r}")
    if not 1 <= top_k <= levels:
        raise ValueError(f"top_k must lie in 1..{levels} (levels={levels}; 1 = always the most likely value, "
                         f"None = sample from all of them), got {top_k!r}")
    return int(top_k)


def keep_top_k(logp: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k sampling (Fan et al., 2018): keep the k most likely values of each distribution (..., K),
    give the others log-probability -inf (probability 0); the softmax that follows renormalises."""
    best = logp.topk(k, dim=-1).indices  # (..., k)
    kept = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, best, True)  # (..., K): exactly k per row
    return logp.masked_fill(~kept, -math.inf)


def checks_inputs(method):
    """Wrap a likelihood method (conditionals, log_prob_pixels, log_prob, loss) so that x and y are
    checked once, where a call enters the model.

    The outermost wrapped call checks x, y and the memory the batch needs, then runs with
    `model._inputs_checked` set: the wrapped methods it calls in turn (loss -> log_prob_pixels ->
    conditionals) and a subclass's own check_input/check_labels calls skip their checks. So a call
    checks once and waits for the device at most once (to read x's smallest and largest value)."""
    if getattr(method, "checks_inputs", False):
        return method  # already wrapped (a subclass that does not override it)

    @functools.wraps(method)
    def checked(self, x, y=None, *args, **kwargs):
        if self._inputs_checked:  # called from inside the model: the entry point checked x and y
            return method(self, x, y, *args, **kwargs)
        x = self.check_input(x)
        y = self.check_labels(y, x.shape[0])
        self.check_memory(x.shape[0])
        with self.inputs_checked():
            return method(self, x, y, *args, **kwargs)

    checked.checks_inputs = True
    return checked


class _Trusting:
    """What `model.inputs_checked()` returns: inside `with` the model trusts its inputs. A class, not a
    generator function: it is entered at every sampling step, so it must cost little."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.outer = self.model._inputs_checked
        self.model.__dict__["_inputs_checked"] = True  # a plain flag: skip nn.Module.__setattr__

    def __exit__(self, *exc):
        self.model.__dict__["_inputs_checked"] = self.outer


def trusts_inputs(method):
    """Wrap a sampling-step method (conditional_logprobs): it runs on the sampler's own canvas, which
    `sample` checked once, so the model calls it makes skip the input checks (a fast sampler may
    run `conditionals` on a strip of the image, which is not a whole image)."""
    if getattr(method, "checks_inputs", False):
        return method

    @functools.wraps(method)
    def trusted(self, *args, **kwargs):
        with self.inputs_checked():
            return method(self, *args, **kwargs)

    trusted.checks_inputs = True
    return trusted


@dataclass
class SampleStep:
    """What the sampling loop tells a callback after each step (used by lesson widgets).

    step:   0-based index of this step; total: number of steps.
    index:  LongTensor (S,) flat positions (into x.flatten(1)) filled at this step (S = 1 in raster
            order); `coords()` gives them as coordinates, e.g. (c, i, j) rows.
    x:      the (n, *shape) image so far; dimensions not yet generated hold 0.
            The loop keeps writing into it: clone it if you keep it.
    probs:  (n, S, K) the predictive distribution each filled dimension was drawn from.
    filled: (n, *shape) bool, True where x already holds a generated or observed value.
    """

    step: int
    total: int
    index: torch.Tensor
    x: torch.Tensor
    probs: torch.Tensor
    filled: torch.Tensor

    def coords(self) -> torch.Tensor:
        """The positions filled at this step as coordinates: (S, len(shape)), e.g. (c, i, j) rows."""
        return torch.stack(orders.unravel(self.index, self.x.shape[1:]), dim=1)

    def frames(self) -> torch.Tensor:
        """For a video (n, T, C, H, W): the frame of each position filled at this step, (S,)."""
        if self.x.dim() != 5:
            raise ValueError(f"frames() is for videos (n, T, C, H, W); this step's x has shape {tuple(self.x.shape)}")
        return self.index // self.x[0, 0].numel()  # (S,) flat position // (C*H*W)


class ARModel(nn.Module):
    """Base class of every pixel-space AR model: shape/levels bookkeeping, input checks,
    the likelihood API and one sampling loop shared by every model."""

    #: number of classes for class-conditional models (None: unconditional)
    num_classes: Optional[int] = None
    #: can the model follow any generation order given as order= (order-agnostic models)? False: its
    #: order is fixed (generation_order()), and asking for another one is an error
    any_order: bool = False
    #: do the conditionals of row i read rows <= i only, and does the model take an image cropped to its
    #: top rows, (B, C, h, W) with h <= H, in `conditionals` and `conditional_logprobs`? (causal
    #: convolution stacks in raster order: PixelCNN, Gated PixelCNN, PixelCNN++). Then the naive sampler
    #: feeds only the rows generated so far (rows 0..i for a pixel in row i), not the whole image.
    #: False (the default, and any model that follows any order): the whole image at every step
    rows_so_far: bool = False
    #: a video model whose frame t reads frames <= t only and that takes a video cut to its first frames,
    #: (B, t, C, H, W), in `conditionals`: the naive sampler then feeds the frames generated so far
    frames_so_far: bool = False
    #: generated in stages (a tokenizer then a prior over its tokens; every pixel's coarse value, then the
    #: rest): there is then no conditional p(x_d | x_<d) per dimension, `conditionals` is an error and
    #: log_prob / loss / sample are the model's own (the per-dimension contract tests skip such a model)
    two_stage: bool = False
    #: what loss() and evaluate() measure, and whether that is exact or an upper bound on the NLL
    unit: str = "bits/dim"
    nll_is_bound: bool = False
    #: how many axes `shape` has: 3 for images (C, H, W), 4 for videos (T, C, H, W, see VideoARModel);
    #: None: any shape (a sequence of tokens)
    shape_axes: Optional[int] = 3
    #: what one input is called in messages ("image"; "video" for video models)
    item: str = "image"
    #: True while a call that entered the model through a checked method runs (see checks_inputs)
    _inputs_checked: bool = False

    def __init_subclass__(cls, **kwargs):
        """Every subclass's likelihood methods check their inputs once, on entry (see checks_inputs)."""
        super().__init_subclass__(**kwargs)
        for name in ("conditionals", "log_prob_pixels", "log_prob", "loss"):
            setattr(cls, name, checks_inputs(getattr(cls, name)))
        cls.conditional_logprobs = trusts_inputs(cls.conditional_logprobs)

    def __init__(self, shape=(1, 28, 28), levels: int = 256):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) == 0 or min(shape) < 1 or (self.shape_axes is not None and len(shape) != self.shape_axes):
            need = {3: "(C, H, W)", 4: "(T, C, H, W) (frames, channels, height, width)"}.get(
                self.shape_axes, f"{self.shape_axes or 'one or more'} sizes")
            raise ValueError(f"{type(self).__name__} needs shape {need} with positive sizes, got {shape!r}")
        if int(levels) < 2:
            raise ValueError(f"levels must be at least 2 (2 = binarised images), got {levels!r}")
        self.shape = shape
        self.levels = int(levels)

    # ------------------------------------------------------------------ helpers
    def set_classes(self, num_classes) -> Optional[int]:
        """Make the model class-conditional with `num_classes` classes (None: unconditional), with a clear
        error unless it is a positive whole number; returns it. Every conditional model calls this."""
        if num_classes is not None:
            if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
                raise ValueError(f"num_classes must be a positive number of classes or None, got {num_classes!r}")
            num_classes = int(num_classes)
        self.num_classes = num_classes
        return num_classes

    @property
    def dims(self) -> int:
        """D, the number of dimensions of one input: C * H * W for an image."""
        return math.prod(self.shape)

    @property
    def model_device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point weights (float32 unless converted, e.g. by .double())."""
        p = next((p for p in self.parameters() if p.is_floating_point()), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    def inputs_checked(self):
        """Inside this block the model trusts its inputs: check_input and check_labels return them as they are."""
        return _Trusting(self)

    def batch_shape_text(self) -> str:
        """The shape of a batch as error messages write it: "(B, 1, 28, 28)"."""
        return f"(B, {', '.join(map(str, self.shape))})"

    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Raise a clear error unless x is an integer tensor (B, *shape), B >= 1, with values in [0, K)."""
        if self._inputs_checked:
            return x  # checked where this call entered the model (see checks_inputs)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of integers, got {type(x).__name__}")
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.dtype.is_complex:
            raise TypeError(
                f"{name} must hold integer pixel values in [0, {self.levels}) (dtype torch.long), got dtype "
                f"{x.dtype}; if your images are floats in [0, 1], use armini.data.quantize or "
                f"(x * {self.levels - 1}).round().long()"
            )
        if x.dim() != 1 + len(self.shape) or tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"{name} must have shape {self.batch_shape_text()} for this model "
                f"(shape={self.shape}), got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(
                f"{name} holds no {self.item}s (batch of 0): pass at least one {self.item}, a tensor of shape "
                f"{self.batch_shape_text()} with B >= 1"
            )
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one wait for the device, not one per number
        if lo < 0 or hi >= self.levels:
            raise ValueError(
                f"{name} values must lie in [0, {self.levels}) for levels={self.levels}, found range "
                f"[{lo}, {hi}]; quantise the data to {self.levels} levels first"
            )
        return x.long()

    def check_labels(self, y, batch: int):
        """Validate class labels for conditional models; unconditional models must get None."""
        if self._inputs_checked:
            return y  # checked where this call entered the model (see checks_inputs)
        if self.num_classes is None:
            if y is not None:
                raise ValueError(f"{type(self).__name__} is unconditional: pass y=None (got labels)")
            return None
        if y is None:
            raise ValueError(f"{type(self).__name__} is class-conditional: pass y, a LongTensor of {batch} labels")
        y = torch.as_tensor(y, device=self.model_device)
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,) or y.dtype.is_floating_point:
            raise ValueError(f"y must be an integer tensor of shape ({batch},), got {tuple(y.shape)} {y.dtype}")
        lo, hi = torch.stack(torch.aminmax(y)).tolist()  # one wait for the device
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"y must lie in [0, {self.num_classes}), got range [{lo}, {hi}]")
        return y.long()

    def activation_bytes(self, batch: int) -> Optional[int]:
        """Roughly the most memory (bytes) one forward pass over `batch` images holds at once, or None
        (no estimate: nothing is checked). Models whose memory grows fast with the image size
        override it (NADE: its (B, D, K) logits; attention: its (B, heads, D, D) weights), so that a
        size that cannot fit is refused with a clear message instead of an allocator error."""
        return None

    def check_memory(self, batch: int) -> None:
        """Raise NotEnoughMemory, naming a batch or image size that fits, if `batch` images cannot fit."""
        need, have = self.activation_bytes(batch), memory.device_memory(self.model_device)
        if need is None or have is None or need <= have:
            return
        fits = have // max(self.activation_bytes(1), 1)  # the estimate grows about linearly with the batch
        size = smaller_size(self.shape[1]) if len(self.shape) == 3 else None
        smaller = f"smaller images (CLI: --size {size})" if size else "a smaller model"
        if fits >= 1:
            fix = f"Use at most {fits} {self.item}s at a time (training CLI: --batch-size {fits}) or {smaller}."
        else:
            fix = f"Not even one {self.item} fits: use {smaller}."
        what = f"{type(self).__name__}'s activations for a batch of {batch} {self.item}s of shape {self.shape}"
        require_memory(need, self.model_device, what, fix)

    # ------------------------------------------------------------------- orders
    def generation_order(self) -> torch.Tensor:
        """The order dimensions are generated in: (D,) flat positions into x.flatten(1).

        Raster order for images: rows top to bottom, columns left to right, channels in order
        within a pixel (armini.orders.dims_order); 0, 1, ..., D-1 for any other shape."""
        if len(self.shape) == 3:
            C, H, W = self.shape
            return orders.dims_order(orders.raster(H, W), C)  # (D,)
        return torch.arange(self.dims)

    def sampling_steps(self, order: Optional[torch.Tensor] = None) -> list:
        """Groups of dimensions generated together, in order: a list of (S,) flat positions.

        One dimension per step, in `order` (default generation_order()); models that fill
        several at once (scale-wise, parallel decoding) override this."""
        return list((self.generation_order() if order is None else order).split(1))

    def resolve_order(self, order) -> Optional[torch.Tensor]:
        """Check an order= argument: None, or a (D,) permutation of flat positions (for an image an
        (H*W,) pixel order is accepted too, each pixel's channels in turn). Returns None when the
        model should use its own order, else the order as (D,) LongTensor. A fixed-order model
        accepts only its own order and says so otherwise."""
        if order is None:
            return None
        order = torch.as_tensor(order).cpu()
        if len(self.shape) == 3 and self.shape[0] > 1 and order.dim() == 1 and len(order) == self.dims // self.shape[0]:
            order = orders.dims_order(order.long(), self.shape[0])  # a pixel order -> every channel in turn
        order = orders.check_order(order, self.dims, "order")
        if self.any_order:
            return order
        if torch.equal(order, self.generation_order().cpu()):
            return None  # its own order: nothing to change
        raise ValueError(
            f"{type(self).__name__} generates in one fixed order (its generation_order(), which its masks are "
            "built for), so it cannot follow another order=. Leave order out, or use a model that can follow "
            "any order (any_order=True, e.g. the order-agnostic models of Part II)"
        )

    def _order_kwargs(self, order, filled=None) -> dict:
        """What an any-order model's conditionals also receive: the order and the filled mask."""
        return {"order": order, "filled": filled} if self.any_order else {}

    # --------------------------------------------------------------- likelihood
    @checks_inputs
    def conditionals(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x_d = k | x_<d) for every dimension d and every value k: (B, *shape, K), in nats.

        Entry d must depend on the dimensions before d only (never on x_d or later): that is
        what the causality tests check. Subclasses implement this (or log_prob_pixels). A model
        with any_order = True takes conditionals(x, y, *, order=None, filled=None)."""
        raise NotImplementedError(f"{type(self).__name__} must implement conditionals(x)")

    @checks_inputs
    def log_prob_pixels(self, x: torch.Tensor, y=None, **order_kwargs) -> torch.Tensor:
        """log p(x_d | x_<d) in nats for every dimension: (B, *shape)."""
        lp = self.conditionals(x, y, **order_kwargs)  # (B, *shape, K)
        return lp.gather(-1, x.unsqueeze(-1)).squeeze(-1)  # (B, *shape)

    def _scored(self, x, y, order, observed):
        """(log p(x_d | earlier) for every dimension (B, D), which dimensions count (B, D) or None)."""
        order = self.resolve_order(order)
        lp = self.log_prob_pixels(x, y, **({"order": order} if self.any_order and order is not None else {}))
        lp = lp.flatten(1)  # (B, D)
        if observed is None:
            return lp, None
        missing = ~self._check_observed(observed, x.shape[0], order)  # (B, D)
        return lp, missing

    def _check_observed(self, observed, batch: int, order) -> torch.Tensor:
        """observed as a (B, D) bool mask, checked to come before every missing dimension in the order."""
        given = torch.as_tensor(observed, dtype=torch.bool, device=self.model_device)
        try:
            given = given.expand((batch,) + self.shape).reshape(batch, self.dims)  # (B, D)
        except RuntimeError:
            raise ValueError(f"observed must be a bool mask broadcastable to (B, *shape) = {(batch,) + self.shape}, "
                             f"got shape {tuple(given.shape)}") from None
        rank = orders.rank(self.generation_order() if order is None else order).to(given.device)  # (D,)
        last_given = torch.where(given, rank, -1).amax(1)  # (B,) the step of the last observed dimension
        first_missing = torch.where(given, self.dims, rank).amin(1)  # (B,)
        if bool((last_given > first_missing).any()):
            raise ValueError(
                "some observed dimensions come after missing ones in this model's order, so log p(missing | "
                "observed) is not what the chain rule gives here. Observe a prefix of the order (e.g. the top "
                "rows in raster order), or, with a model that can follow any order, pass "
                "order=armini.orders.observed_first(observed, order)"
            )
        return given

    @checks_inputs
    def log_prob(self, x: torch.Tensor, y=None, *, order=None, observed=None) -> torch.Tensor:
        """log p(x) = sum_d log p(x_d | x_<d), in nats: (B,). With observed= (a bool mask of the given
        dimensions), log p(x_missing | x_observed): the sum over the missing dimensions only."""
        lp, missing = self._scored(x, y, order, observed)  # (B, D)
        return lp.sum(1) if missing is None else (lp * missing).sum(1)

    @checks_inputs
    def nll_bits(self, x: torch.Tensor, y=None, *, order=None, observed=None) -> torch.Tensor:
        """-log2 p(x) (or -log2 p(x_missing | x_observed)): bits per image, (B,)."""
        return -self.log_prob(x, y, order=order, observed=observed) / LN2

    @checks_inputs
    def loss(self, x: torch.Tensor, y=None, *, order=None, observed=None) -> torch.Tensor:
        """The training objective: mean negative log-likelihood in bits per dimension,
        -(1/D) sum_d log2 p(x_d | x_<d), averaged over the batch (with observed=: per missing
        dimension). A model may override it with a stochastic estimate (nll_is_bound = True)."""
        if order is None and observed is None:
            return -self.log_prob_pixels(x, y).mean() / LN2  # the plain case, as cheap as it gets
        lp, missing = self._scored(x, y, order, observed)  # (B, D)
        if missing is None:
            return -lp.mean() / LN2
        return -(lp * missing).sum() / missing.sum().clamp(min=1) / LN2

    # ----------------------------------------------------------------- sampling
    def init_cache(self, x: torch.Tensor, y=None):
        """State a fast sampler keeps between steps (None: recompute everything each step)."""
        return None

    @trusts_inputs
    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor, y=None, cache=None,
                             **order_kwargs) -> torch.Tensor:
        """log-probabilities (n, S, K) of the dimensions at flat positions `index` (S,) given the image so far.

        The default runs the whole model on the whole image (the naive sampler): simple and always
        right. For a `rows_so_far` model the naive sampler hands it only the rows generated so far,
        x (n, C, h, W), and `index` into them. Fast samplers override it and use `cache`. An any-order
        model also gets order= and filled= (which dimensions the canvas holds)."""
        lp = self.conditionals(x, y, **order_kwargs)  # (n, *shape, K)
        return lp.flatten(1, -2)[:, index]  # (n, S, K)

    def _top_rows(self, x: torch.Tensor, index: torch.Tensor):
        """What a naive step of a `rows_so_far` model needs: the canvas cut to the rows up to the last
        one `index` (S,) reaches, a view (n, C, h, W), and index as flat positions into that view (S,)."""
        c, i, j = orders.unravel(index, self.shape)  # (S,) each
        h = int(i.max()) + 1  # rows 0..h-1
        W = self.shape[2]
        return x[:, :, :h], (c * h + i) * W + j  # (n, C, h, W), (S,)

    def _canvas(self, n: int, x, observed):
        """The canvas to sample into, (n, *shape) long, and which of its dimensions are given, (n, *shape) bool."""
        dev, shape = self.model_device, (n,) + self.shape
        if x is None:
            if observed is not None:
                raise ValueError("observed was given without x: pass the partial image x too")
            return torch.zeros(shape, dtype=torch.long, device=dev), torch.zeros(shape, dtype=torch.bool, device=dev)
        if observed is None:
            raise ValueError("x was given without observed: pass observed, a bool mask of the known dimensions")
        x = self.check_input(x).to(dev).clone()
        if x.shape[0] != n:
            raise ValueError(f"x holds {x.shape[0]} {self.item}s but n={n}")
        filled = torch.as_tensor(observed, dtype=torch.bool, device=dev).expand(shape).clone()
        return torch.where(filled, x, torch.zeros_like(x)), filled

    def _draw(self, probs: torch.Tensor, generator, gdev) -> torch.Tensor:
        """One value per distribution (n, S, K) -> (n, S), by inverse-CDF sampling with uniforms from
        `generator`: the same draws give the same images for any sampler (naive or cached) that
        computes the same probabilities."""
        u = torch.rand(probs.shape[:-1], generator=generator, device=gdev, dtype=probability_dtype(gdev))
        u = u.to(probs.device, probs.dtype)  # (n, S), in the loop's probability dtype
        return self._inverse_cdf(probs, u.unsqueeze(-1))  # (n, S)

    def _inverse_cdf(self, probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The value k (n, S) each distribution probs (n, S, K) gives the uniform u (n, S, 1) in [0, 1)."""
        cdf = probs.cumsum(-1)  # (n, S, K), non-decreasing
        # the first k with cdf[k] >= u * total, i.e. the number of k with cdf[k] < u * total
        total = cdf.narrow(-1, self.levels - 1, 1)  # (n, S, 1)
        return torch.searchsorted(cdf, u * total).squeeze(-1).clamp_(max=self.levels - 1)  # (n, S)

    def _uniforms(self, steps: list, n: int, generator, device):
        """The uniforms of every step, each (n, S, 1), drawn in one call and moved to `device` once;
        or None, when the loop must draw them step by step.

        A CPU generator gives the same numbers in the same order whether they are drawn in one call
        or in one call per step (each step reads its n*S numbers in turn), so the images are the same
        and a step saves a call. Only for an explicit CPU generator: torch's global one may also be
        used between steps, and a CUDA generator numbers its draws differently per call."""
        if generator is None or generator.device.type != "cpu":
            return None
        sizes = [n * len(positions) for positions in steps]
        flat = torch.rand(sum(sizes), generator=generator, dtype=torch.float64)  # every step's, in order
        flat = flat.to(device, probability_dtype(device))
        return [u.view(n, -1, 1) for u in flat.split(sizes)]  # (n, S, 1) per step

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        x: Optional[torch.Tensor] = None,
        observed: Optional[torch.Tensor] = None,
        y=None,
        generator: Optional[torch.Generator] = None,
        temperature: float = 1.0,
        callback: Optional[Callable[[SampleStep], None]] = None,
        cached: bool = True,
        progress: bool = False,
        order=None,
        top_k: Optional[int] = None,
    ) -> torch.Tensor:
        """Draw n images, one step at a time: (n, *shape) integers in [0, K).

        x, observed: complete a partially observed image. x is (n, *shape) integers and
            observed a bool mask broadcastable to it: observed dimensions are kept, the
            rest are generated (a fixed-order model only sees the observed ones that come
            earlier in its order, e.g. the top half of an image in raster order; a model that can
            follow any order sees all of them with order=armini.orders.observed_first(...)).
        y: class labels (n,) or one label for class-conditional models.
        generator: a torch.Generator; the same seed gives the same images.
        temperature: divides the log-probabilities before sampling (1 = the model itself; a finite
            positive number: below 1 sharper, above 1 flatter).
        callback: called with a SampleStep after every step (lessons animate sampling with it).
        cached: use the model's fast sampler if it has one (False forces full recomputation).
            Steps whose dimensions are all observed are skipped, unless a callback watches or the
            cache cannot skip (a cache with a `given_step(index)` method is only told of them).
        order: the generation order, (D,) flat positions (models with any_order = True; a
            fixed-order model accepts only its own).
        top_k: draw each value from the k most likely ones only, renormalised (None: from all K;
            1: always the most likely value, greedy decoding).
        """
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of images, got {n!r}")
        n = int(n)
        check_temperature(temperature)
        top_k = check_top_k(top_k, self.levels)
        self.check_memory(n)
        order = self.resolve_order(order)
        x, filled = self._canvas(n, x, observed)  # (n, *shape) each
        y = self.check_labels(y, n)
        steps = self.sampling_steps() if order is None else self.sampling_steps(order)
        gdev = generator.device if generator is not None else torch.device("cpu")
        flat_x, flat_filled = x.view(n, -1), filled.view(n, -1)  # (n, D) views of the canvas
        was_training = self.training
        self.eval()
        with self.inputs_checked():  # x and y are checked: the cache may trust them
            cache = self.init_cache(x, y) if cached else None
        iterator = steps
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(steps, desc="sampling", leave=False)
        top_rows = cache is None and self.rows_so_far and order is None and len(self.shape) == 3
        top_frames = cache is None and self.frames_so_far and order is None and len(self.shape) == 4
        given = observed is not None  # are some dimensions given (kept as they are)?
        track = given or callback is not None or self.any_order  # does anything read `filled` during the loop?
        skips = cache is None or callable(getattr(cache, "given_step", None))  # a cache that can be told of given steps
        uniforms = self._uniforms(steps, n, generator, x.device)  # (n, S, 1) per step, or None: drawn per step
        pdtype = probability_dtype(x.device)  # float64, float32 on MPS
        try:
            for t, positions in enumerate(iterator):
                index = positions.to(x.device)  # (S,) flat positions
                keep = flat_filled[:, index] if given else None  # (n, S): dimensions already given
                if given and skips and callback is None and bool(keep.all()):
                    # nothing to draw: skip the network, but use up this step's uniforms so that the
                    # later steps draw what the sampler that computes every step draws
                    if cache is not None:
                        cache.given_step(index)  # the cache catches up later if it needs these positions
                    if uniforms is None:
                        torch.rand(keep.shape, generator=generator, device=gdev, dtype=probability_dtype(gdev))
                    continue
                if top_rows:  # the naive step of a rows_so_far model: only the rows generated so far
                    top, at = self._top_rows(x, positions)  # (n, C, h, W), (S,)
                    logp = self.conditional_logprobs(top, at.to(x.device), y, None)  # (n, S, K)
                elif top_frames:  # the naive step of a frames_so_far video model: only the frames so far
                    t_last = int(positions.max()) // math.prod(self.shape[1:])  # the last frame this step fills
                    logp = self.conditional_logprobs(x[:, :t_last + 1], index, y, None)  # (n, S, K): same flat positions
                else:
                    logp = self.conditional_logprobs(x, index, y, cache, **self._order_kwargs(order, filled))  # (n, S, K)
                if temperature == 1 and top_k is None:  # the model's own distribution, in float64 (MPS: float32)
                    probs = torch.softmax(logp, dim=-1, dtype=pdtype)  # (n, S, K), = softmax(logp.double())
                else:
                    logp = logp.to(pdtype) if temperature == 1 else logp.to(pdtype) / temperature  # (x / 1 is x)
                    if top_k is not None:
                        logp = keep_top_k(logp, top_k)  # (n, S, K): all but the k most likely at -inf
                    probs = torch.softmax(logp, dim=-1)  # (n, S, K)
                if uniforms is None:
                    new = self._draw(probs, generator, gdev)  # (n, S)
                else:
                    new = self._inverse_cdf(probs, uniforms[t])  # (n, S): the same uniforms, drawn up front
                flat_x.index_copy_(1, index, new if keep is None else torch.where(keep, flat_x[:, index], new))  # one write
                if track:
                    flat_filled.index_fill_(1, index, True)
                if callback is not None:
                    callback(SampleStep(t, len(steps), index, x, probs.float(), filled))
        finally:
            self.train(was_training)
        return x

    # ----------------------------------------------------------------- summary
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"shape={self.shape}, levels={self.levels}"


class VideoARModel(ARModel):
    """Base class of video models: the contract one dimension up (see the module docstring).

    shape (T, C, H, W); generation order frame by frame, raster within a frame, each pixel's channels in
    turn; `sample(n, context=first_frames)` continues given frames; `nats_per_frame` the video papers' unit."""

    shape_axes = 4
    item = "video"

    @property
    def frames(self) -> int:
        """T, the number of frames of one video."""
        return self.shape[0]

    @property
    def frame_dims(self) -> int:
        """C * H * W, the dimensions of one frame."""
        return math.prod(self.shape[1:])

    def batch_shape_text(self) -> str:
        T, C, H, W = self.shape
        return f"(B, T, C, H, W) = (B, {T}, {C}, {H}, {W}) (B videos of {T} frames of {C} x {H} x {W})"

    def generation_order(self) -> torch.Tensor:
        """Frame by frame; within a frame raster order, each pixel's channels in turn: (D,) flat positions."""
        T, C, H, W = self.shape
        frame = orders.dims_order(orders.raster(H, W), C)  # (C*H*W,) within one frame
        return (torch.arange(T)[:, None] * self.frame_dims + frame[None, :]).flatten()  # (D,)

    def context_mask(self, frames: int) -> torch.Tensor:
        """(T, C, H, W) bool, True in the first `frames` frames: observed= for log_prob / loss scores
        the rest given them, -log p(frames >= k | frames < k)."""
        frames = int(frames)
        if not 0 <= frames <= self.frames:
            raise ValueError(f"frames must lie in 0..{self.frames} (the model's T), got {frames}")
        mask = torch.zeros(self.shape, dtype=torch.bool)
        mask[:frames] = True
        return mask

    def check_context(self, context, n: int) -> torch.Tensor:
        """The first frames to continue, (k, C, H, W) or (n, k, C, H, W) integers with 1 <= k < T -> (n, k, C, H, W)."""
        T, C, H, W = self.shape
        if not isinstance(context, torch.Tensor):
            raise TypeError(f"context must be a torch.Tensor of integer frames, got {type(context).__name__}")
        if context.dtype.is_floating_point or context.dtype == torch.bool or context.dtype.is_complex:
            raise TypeError(f"context must hold integer pixel values in [0, {self.levels}) (dtype torch.long), "
                            f"got dtype {context.dtype}")
        if context.dim() == 4:
            context = context.unsqueeze(0).expand(n, *context.shape)  # the same first frames for every video
        if context.dim() != 5 or tuple(context.shape[2:]) != (C, H, W) or context.shape[0] != n:
            raise ValueError(
                f"context must hold the first frames of {n} videos, shape (n, k, C, H, W) = ({n}, k, {C}, {H}, {W}) "
                f"(or (k, {C}, {H}, {W}) for the same frames in every video), got {tuple(context.shape)}"
            )
        if not 1 <= context.shape[1] < T:
            raise ValueError(f"context holds {context.shape[1]} frames, but this model generates T={T}: "
                             f"give 1 to {T - 1} frames (the rest are generated)")
        return context

    @torch.no_grad()
    def sample(self, n: int, *, context: Optional[torch.Tensor] = None, x=None, observed=None, **kwargs) -> torch.Tensor:
        """Draw n videos (n, T, C, H, W), frame by frame. context: the first k frames, (n, k, C, H, W) or
        (k, C, H, W) for all n: they are kept and the later frames generated (the same as x= with the
        first k frames observed). Every other argument as in ARModel.sample."""
        if context is not None:
            if x is not None or observed is not None:
                raise ValueError("pass either context= (the first frames) or x= and observed=, not both")
            if int(n) < 1:
                raise ValueError(f"n must be a positive number of videos, got {n!r}")
            context = self.check_context(context, int(n))
            k = context.shape[1]
            x = torch.zeros((int(n),) + self.shape, dtype=context.dtype, device=context.device)
            x[:, :k] = context  # the given frames; the rest is generated
            x = self.check_input(x, "context")  # values in [0, K)
            observed = self.context_mask(k)
        return super().sample(n, x=x, observed=observed, **kwargs)

    def nats_per_frame(self, x: torch.Tensor, y=None, *, context: int = 0) -> torch.Tensor:
        """-log p(x) / T in nats per frame, (B,); with context=k, -log p(frames >= k | frames < k) / (T - k)."""
        if not 0 <= int(context) < self.frames:
            raise ValueError(f"context must lie in 0..{self.frames - 1} frames, got {context!r}")
        observed = self.context_mask(context) if context else None
        return -self.log_prob(x, y, observed=observed) / (self.frames - int(context))
