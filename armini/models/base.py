"""The contract every pixel-space autoregressive model in armini follows.

An image x with C channels, H rows and W columns is a sequence of D = C*H*W
integer dimensions, each in {0, ..., K-1}. An autoregressive model factorises

    p(x) = prod_d p(x_d | x_<d)                                   (chain rule)

in a fixed order: raster order over pixels (row by row, left to right) and,
within a pixel, channels in order (R, then G, then B). Every model exposes:

    log_prob_pixels(x)  -> (B, C, H, W)  log p(x_d | x_<d) in nats, for every d
    log_prob(x)         -> (B,)          log p(x) = sum_d log p(x_d | x_<d)
    loss(x)             -> scalar        mean negative log-likelihood in bits per dimension
    sample(n, ...)      -> (n, C, H, W)  integers, one dimension at a time

A model only has to say how it computes its conditionals; the rest is here.
Most models implement `conditionals(x)`: log-probabilities over all K values of
every dimension, (B, C, H, W, K), where entry d may only depend on x_<d.
Models whose likelihood has a cheaper closed form (PixelCNN++'s discretised
logistic mixture) also override `log_prob_pixels`.

Later paradigms extend this contract instead of replacing it: a model with
another generation order overrides `generation_order()`; a model that fills
several dimensions per step (scale-wise, parallel decoding) overrides
`sampling_steps()`; a model with a cache for fast sampling overrides
`conditional_logprobs(x, step, cache)` and `init_cache(x)`. The `y` keyword
carries class labels for class-conditional models (unconditional models refuse them).

Inputs are checked once, where a call enters the model. `conditionals`, `log_prob_pixels`,
`log_prob` and `loss` are wrapped (by `__init_subclass__`, for every subclass) so that the first
of them a call reaches checks x (integers of shape (B, C, H, W) in [0, K), B >= 1), the labels y
and the memory the batch needs; the calls it makes in turn trust what was checked, and so does
`conditional_logprobs`, the sampling loop's call on the canvas `sample` checked once. A
subclass writes its methods as plain functions of valid inputs. An empty batch (B = 0) is an
error, not an empty result: its mean loss would be 0/0.

Memory: a model whose activations grow fast with the image size overrides
`activation_bytes(batch)`; a batch (or a `sample(n)`) that would need more memory than the
device has is then refused before the forward pass, with a message that names the size and a
smaller batch or image that fits (armini.memory.NotEnoughMemory, a ValueError and a MemoryError).

Legend for shape comments: B batch, C channels, H height, W width, K levels, D = C*H*W.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from .. import memory
from ..memory import NotEnoughMemory, require_memory  # noqa: F401  (NotEnoughMemory: part of the contract)

LN2 = math.log(2.0)
def smaller_size(side: int) -> Optional[int]:
    """A smaller image side the data can give (a divisor of 28, `--size`), or None below 2."""
    return next((s for s in (28, 14, 7, 4, 2) if s < side), None)


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
    index:  LongTensor (S, 3) of the (c, i, j) dimensions filled at this step (S = 1 in raster order).
    x:      the (n, C, H, W) image so far; dimensions not yet generated hold 0.
            The loop keeps writing into it: clone it if you keep it.
    probs:  (n, S, K) the predictive distribution each filled dimension was drawn from.
    filled: (n, C, H, W) bool, True where x already holds a generated or observed value.
    """

    step: int
    total: int
    index: torch.Tensor
    x: torch.Tensor
    probs: torch.Tensor
    filled: torch.Tensor


class ARModel(nn.Module):
    """Base class of every pixel-space AR model: shape/levels bookkeeping, input checks,
    the likelihood API and one sampling loop shared by every model."""

    #: number of classes for class-conditional models (None: unconditional)
    num_classes: Optional[int] = None
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
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape!r}")
        if int(levels) < 2:
            raise ValueError(f"levels must be at least 2 (2 = binarised images), got {levels!r}")
        self.shape = shape
        self.levels = int(levels)

    # ------------------------------------------------------------------ helpers
    @property
    def dims(self) -> int:
        """D = C * H * W, the number of dimensions of one image."""
        C, H, W = self.shape
        return C * H * W

    @property
    def model_device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point weights (float32 unless converted, e.g. by .double())."""
        p = next((p for p in self.parameters() if p.is_floating_point()), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    @contextlib.contextmanager
    def inputs_checked(self):
        """Inside this block the model trusts its inputs: check_input and check_labels return them as they are."""
        outer, self._inputs_checked = self._inputs_checked, True
        try:
            yield
        finally:
            self._inputs_checked = outer

    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Raise a clear error unless x is an integer tensor (B, C, H, W), B >= 1, with values in [0, K)."""
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
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, self.shape))}) for this model "
                f"(shape={self.shape}), got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(
                f"{name} holds no images (batch of 0): pass at least one image, a tensor of shape "
                f"(B, {', '.join(map(str, self.shape))}) with B >= 1"
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
        size = smaller_size(self.shape[1])
        smaller = f"smaller images (CLI: --size {size})" if size else "a smaller model"
        if fits >= 1:
            fix = f"Use at most {fits} images at a time (training CLI: --batch-size {fits}) or {smaller}."
        else:
            fix = f"Not even one image fits: use {smaller}."
        what = f"{type(self).__name__}'s activations for a batch of {batch} images of shape {self.shape}"
        require_memory(need, self.model_device, what, fix)

    # --------------------------------------------------------------- likelihood
    @checks_inputs
    def conditionals(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x_d = k | x_<d) for every dimension d and every value k: (B, C, H, W, K), in nats.

        Entry d must depend on x_<d only (never on x_d or later): that is what the
        causality tests check. Subclasses implement this (or log_prob_pixels)."""
        raise NotImplementedError(f"{type(self).__name__} must implement conditionals(x)")

    @checks_inputs
    def log_prob_pixels(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x_d | x_<d) in nats for every dimension: (B, C, H, W)."""
        lp = self.conditionals(x, y)  # (B, C, H, W, K)
        return lp.gather(-1, x.unsqueeze(-1)).squeeze(-1)  # (B, C, H, W)

    @checks_inputs
    def log_prob(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x) = sum_d log p(x_d | x_<d), in nats: (B,)."""
        return self.log_prob_pixels(x, y).flatten(1).sum(1)

    @checks_inputs
    def loss(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """The training objective: mean negative log-likelihood in bits per dimension,
        -(1/D) sum_d log2 p(x_d | x_<d), averaged over the batch."""
        return -self.log_prob_pixels(x, y).mean() / LN2

    # ----------------------------------------------------------------- sampling
    def generation_order(self) -> torch.Tensor:
        """The order dimensions are generated in: LongTensor (D, 3) of (c, i, j).

        Raster order: rows top to bottom, columns left to right, channels in order within a pixel."""
        C, H, W = self.shape
        i, j, c = torch.meshgrid(torch.arange(H), torch.arange(W), torch.arange(C), indexing="ij")
        return torch.stack([c.flatten(), i.flatten(), j.flatten()], dim=1)  # (D, 3)

    def sampling_steps(self) -> list:
        """Groups of dimensions generated together, in order: a list of LongTensors (S, 3).

        One dimension per step for raster models; models that fill several at once override this."""
        return list(self.generation_order().split(1))

    def init_cache(self, x: torch.Tensor, y=None):
        """State a fast sampler keeps between steps (None: recompute everything each step)."""
        return None

    @trusts_inputs
    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor, y=None, cache=None) -> torch.Tensor:
        """log-probabilities (n, S, K) of the dimensions `index` (S, 3) given the image so far.

        The default runs the whole model on the whole image (the naive sampler):
        simple and always right. Fast samplers override it and use `cache`."""
        lp = self.conditionals(x, y)  # (n, C, H, W, K)
        c, i, j = index.unbind(1)
        return lp[:, c, i, j, :]  # (n, S, K)

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
    ) -> torch.Tensor:
        """Draw n images, one step at a time: (n, C, H, W) integers in [0, K).

        x, observed: complete a partially observed image. x is (n, C, H, W) integers and
            observed a bool mask broadcastable to it: observed dimensions are kept, the
            rest are generated (a raster model only sees the observed ones that come
            earlier in its order, e.g. the top half of an image).
        y: class labels (n,) or one label for class-conditional models.
        generator: a torch.Generator; the same seed gives the same images.
        temperature: divides the log-probabilities before sampling (1 = the model itself; a finite
            positive number: below 1 sharper, above 1 flatter).
        callback: called with a SampleStep after every step (lessons animate sampling with it).
        cached: use the model's fast sampler if it has one (False forces full recomputation;
            steps whose dimensions are all observed are then skipped, unless a callback watches).
        """
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of images, got {n!r}")
        check_temperature(temperature)
        self.check_memory(int(n))
        was_training = self.training
        self.eval()
        dev = self.model_device
        n = int(n)
        shape = (n,) + self.shape
        if x is None:
            if observed is not None:
                raise ValueError("observed was given without x: pass the partial image x too")
            x = torch.zeros(shape, dtype=torch.long, device=dev)
            filled = torch.zeros(shape, dtype=torch.bool, device=dev)
        else:
            if observed is None:
                raise ValueError("x was given without observed: pass observed, a bool mask of the known dimensions")
            x = self.check_input(x).to(dev).clone()
            if x.shape[0] != n:
                raise ValueError(f"x holds {x.shape[0]} images but n={n}")
            filled = torch.as_tensor(observed, dtype=torch.bool, device=dev).expand(shape).clone()
            x = torch.where(filled, x, torch.zeros_like(x))
        y = self.check_labels(y, n)
        gdev = generator.device if generator is not None else torch.device("cpu")
        steps = self.sampling_steps()
        iterator = steps
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(steps, desc="sampling", leave=False)
        with self.inputs_checked():  # x and y are checked: the cache may trust them
            cache = self.init_cache(x, y) if cached else None
        try:
            for t, index in enumerate(iterator):
                index = index.to(dev)
                c, i, j = index.unbind(1)
                keep = filled[:, c, i, j]  # (n, S): dimensions already given
                if cache is None and callback is None and bool(keep.all()):
                    # nothing to draw and no cache to update: skip the network, but use up this step's
                    # uniforms so that the later steps draw what the cached sampler draws
                    torch.rand(keep.shape, generator=generator, device=gdev, dtype=torch.float64)
                    continue
                logp = self.conditional_logprobs(x, index, y, cache)  # (n, S, K)
                probs = torch.softmax(logp.double() / temperature, dim=-1)  # (n, S, K)
                # inverse-CDF sampling with uniforms drawn from `generator`: the same draws
                # give the same images for any sampler (naive or cached) that computes the same probs
                u = torch.rand(probs.shape[:-1], generator=generator, device=gdev, dtype=torch.float64).to(dev)
                cdf = probs.cumsum(-1)
                new = (cdf < u.unsqueeze(-1) * cdf[..., -1:]).sum(-1).clamp_(max=self.levels - 1)  # (n, S)
                x[:, c, i, j] = torch.where(keep, x[:, c, i, j], new)
                filled[:, c, i, j] = True
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
