"""Two-stage generation: a tokenizer and an autoregressive prior over its tokens (lesson 12).

VQ-VAE + PixelCNN (van den Oord et al., 2017), VQGAN + GPT (Esser et al., 2021), Parti, LlamaGen:
stop predicting 784 pixels, predict 49 tokens. A tokenizer (armini.tokenizers) turns an image into a
small grid of codebook indices z = enc(x) and back, dec(z); a prior, any model of armini.models.MODELS
read with input="embedding", models the grid p(z) = prod_t p(z_t | z_<t). Sampling draws tokens, one
per step, then decodes them:

    z ~ p(z)          (49 steps for a 7x7 grid, instead of 784 for the pixels)
    x = dec(z)

Likelihood. The encoder is deterministic, so p(x) = sum_z p(z) p(x | z) >= p(enc(x)) p(x | enc(x)),
and with a decoder that outputs a distribution over pixel values (decode_logprobs) a two-stage model
has an upper bound on its negative log-likelihood in pixel space (the VQ-VAE paper's 4.67 bits/dim on
CIFAR-10), in the same table as Part I's exact likelihoods:

    -log p(x) <= -log p(z) - log p(x | z),   z = enc(x)                  (nll_is_bound = True)

`log_prob` is that bound; `loss` is what the prior trains on: its bits per token on the tokens of x,
the tokenizer frozen (trained first, by `fit_stages`).

Class conditioning and classifier-free guidance (Ho & Salimans, 2022). The prior gets one class more
than the data, a null class: during training a label is replaced by the null class with probability
`label_dropout` (about 10%), so one network learns both p(z | y) and p(z) = p(z | null). At sampling
time guidance with scale w sharpens towards the class:

    log p_w(z_t | z_<t, y) = (1 + w) log p(z_t | z_<t, y) - w log p(z_t | z_<t, null),  renormalised

(w = 0: the conditional model itself). `Guided` wraps a prior so that the shared sampling loop
(armini.models.base, with its KV cache) runs both halves as one batch of 2n.

Inpainting and outpainting on tokens: keep the tokens of the observed region, generate the rest,
decode. A token is kept when every pixel of its patch is observed (`observed_tokens`). A raster-order
prior reads only the kept tokens before each generated one (the top half, for outpainting downwards);
the decoder sees all of them.

Deviations: the prior's sampler draws the tokens; the decoder's mode (tokenizer.decode) turns them into
pixels, not a draw from p(x | z) (papers do the same). The bound's share of each pixel
(`log_prob_pixels`) is log p(x_d | z) + log p(z) / D: they sum to the bound but are not
autoregressive conditionals, so a two-stage model has no `conditionals`.

Legend: B batch, C, H, W image, K pixel levels, V codebook size, D token channels (1 for VQ/FSQ),
h, w token grid, T = D*h*w tokens per image.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LN2, ARModel

__all__ = ["TwoStage", "TwoStageConfig", "Guided", "guided_logprobs", "drop_labels", "token_prior",
           "observed_tokens", "two_stage_sample"]


# ----------------------------------------------------------------------------- guidance


def guided_logprobs(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on log-probabilities (..., V): (1 + w) log p(.|y) - w log p(.|null),
    renormalised (a log-softmax). w = 0 gives the conditional distribution back."""
    return torch.log_softmax((1 + scale) * cond - scale * uncond, dim=-1)


def drop_labels(y: torch.Tensor, null: int, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Label dropout for classifier-free guidance: each label becomes the null class with probability p.
    Draws from torch's global RNG unless a generator is given (train.fit's checkpoints keep the global one)."""
    if p <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device if generator is None else "cpu") < p  # (B,)
    return torch.where(drop.to(y.device), torch.full_like(y, null), y)


class Guided(ARModel):
    """A class-conditional prior with a null class, sampled with classifier-free guidance of scale w.

    Its classes are the prior's real ones, 0..null-1; every step runs the prior once on a batch of 2n
    (the n canvases with their labels, then the same canvases with the null class) and mixes the two
    halves with `guided_logprobs`. The prior's cache (KV cache, conv cache) serves the 2n batch, so
    guided sampling keeps the fast sampler. A transient wrapper: `TwoStage.sample` builds one per call."""

    shape_axes = None  # any shape: the prior's

    def __init__(self, prior: ARModel, scale: float, null: int):
        super().__init__(prior.shape, prior.levels)
        if prior.num_classes is None or null != prior.num_classes - 1:
            raise ValueError(f"guidance needs a class-conditional prior whose last class ({null}) is the null class, "
                             f"got num_classes={prior.num_classes}")
        if not math.isfinite(float(scale)):
            raise ValueError(f"the guidance scale must be a finite number (0 = no guidance), got {scale!r}")
        self.prior, self.scale, self.null = prior, float(scale), int(null)
        self.set_classes(self.null)  # the labels a caller may pass: the real classes only
        self.rows_so_far = prior.rows_so_far
        self.any_order = prior.any_order

    def generation_order(self):
        return self.prior.generation_order()

    def sampling_steps(self, order=None):
        return self.prior.sampling_steps(order)

    def activation_bytes(self, batch):
        return self.prior.activation_bytes(2 * batch)

    def _twice(self, x, y):
        """The canvases twice (2n, ...) and their labels: y for the first n, the null class for the rest."""
        return torch.cat([x, x]), torch.cat([y, torch.full_like(y, self.null)])

    def _mix(self, lp, scale: float):
        cond, uncond = lp.chunk(2)  # (n, ..., V) each
        return guided_logprobs(cond, uncond, scale)

    def step_scale(self, index: torch.Tensor) -> float:
        """The guidance scale of the sampling step that draws the positions `index`: w at every step
        (a subclass may vary it over the steps, e.g. VAR's ramp over the scales, var.RampGuided)."""
        return self.scale

    def conditionals(self, x, y=None, **order_kwargs):
        return self._mix(self.prior.conditionals(*self._twice(x, y), **order_kwargs), self.scale)  # (n, *shape, V)

    def init_cache(self, x, y=None):
        """A 2n canvas of its own (a fast sampler's cache follows one tensor) and the prior's cache on it."""
        canvas, labels = self._twice(x, y)
        prior_cache = self.prior.init_cache(canvas, labels)
        return None if prior_cache is None else GuidedCache(canvas, labels, prior_cache)

    def conditional_logprobs(self, x, index, y=None, cache=None, **order_kwargs):
        if order_kwargs.get("filled") is not None:
            order_kwargs["filled"] = torch.cat([order_kwargs["filled"]] * 2)
        if cache is None:  # the naive sampler
            x2, y2 = self._twice(x, y)  # (2n, ...), (2n,)
            return self._mix(self.prior.conditional_logprobs(x2, index, y2, None, **order_kwargs),
                             self.step_scale(index))  # (n, S, V)
        cache.canvas.view((2,) + x.shape).copy_(x.expand((2,) + x.shape))  # both halves = x: one write
        return self._mix(self.prior.conditional_logprobs(cache.canvas, index, cache.labels, cache.prior,
                                                         **order_kwargs), self.step_scale(index))  # (n, S, V)


class GuidedCache:
    """What guided sampling keeps between steps: the 2n canvas, its labels and the prior's cache."""

    def __init__(self, canvas: torch.Tensor, labels: torch.Tensor, prior_cache):
        self.canvas, self.labels, self.prior = canvas, labels, prior_cache


# ----------------------------------------------------------------------------- the prior


def token_prior(name: str, shape, codebook_size: int, num_classes: Optional[int] = None, **kwargs) -> ARModel:
    """MODELS[name] as a prior over token grids of `shape` (D, h, w) with V = codebook_size values, reading
    each token through a learned embedding (input="embedding"; the transformer always embeds its tokens)."""
    from . import MODELS

    if name not in MODELS:
        raise ValueError(f"unknown prior {name!r}: pick one of {', '.join(sorted(MODELS))}")
    cls, shape = MODELS[name], tuple(shape)
    try:
        return cls(shape=shape, levels=codebook_size, num_classes=num_classes, **{"input": "embedding", **kwargs})
    except TypeError as e:
        if "input" not in str(e):
            raise
        # a model without an input= setting reads its values through an embedding already (the transformer)
        return cls(shape=shape, levels=codebook_size, num_classes=num_classes, **kwargs)


def observed_tokens(observed: torch.Tensor, image_shape, token_shape) -> torch.Tensor:
    """Which tokens a partial image fixes: a bool mask over pixels, broadcastable to (B, C, H, W), -> a bool
    mask (B, D, h, w) that keeps a token only when every pixel of its patch (H/h x W/w, every channel) is
    observed. A mask that already has the token grid's shape (B, D, h, w) is returned as it is."""
    observed = torch.as_tensor(observed, dtype=torch.bool)
    if observed.dim() == len(token_shape) + 1 and tuple(observed.shape[1:]) == tuple(token_shape):
        return observed
    D, h, w = token_shape
    missing = missing_pixels(observed, image_shape, f"(B, {D}, {h}, {w})")  # (B, 1, H, W)
    missing = F.adaptive_max_pool2d(missing, (h, w))  # (B, 1, h, w): some pixel of the patch is missing
    return (missing == 0).expand(-1, D, h, w)  # (B, D, h, w)


def missing_pixels(observed: torch.Tensor, image_shape, tokens: str) -> torch.Tensor:
    """A bool mask of observed pixels, broadcastable to (B, C, H, W) -> (B, 1, H, W) float, 1 where a pixel of
    some channel is missing (token masks pool it over each token's patch). `tokens` names the token mask's
    shape for the error message."""
    C, H, W = image_shape
    try:
        observed = observed.expand(observed.shape[:-3] + (C, H, W) if observed.dim() >= 3 else (1, C, H, W))
    except RuntimeError:
        raise ValueError(f"observed must be a bool mask broadcastable to (B, {C}, {H}, {W}) (pixels) or of shape "
                         f"{tokens} (tokens), got {tuple(observed.shape)}") from None
    return (~observed.reshape(-1, C, H, W)).any(1, keepdim=True).float()  # (B, 1, H, W)


# ----------------------------------------------------------------------------- the two-stage model


@dataclass
class TwoStageConfig:
    tokenizer: dict = field(default_factory=dict)  # VQVAE settings (armini.tokenizers.vqvae), or those of the
    # tokenizer object given (its `config`)
    prior: str = "pixel-transformer"  # any MODELS name
    prior_kwargs: dict = field(default_factory=lambda: dict(dim=64, n_layers=4, n_heads=4))
    num_classes: Optional[int] = None  # class-conditional: the prior gets num_classes + 1 classes (the null one)
    label_dropout: float = 0.1  # training: P(label -> null class), for classifier-free guidance
    tokenizer_share: float = 0.4  # fit_stages: the tokenizer's share of the steps and of the time budget
    tokenizer_lr: Optional[float] = None  # fit_stages: the tokenizer's learning rate (None: the prior's)


def _config_of(tokenizer) -> dict:
    """The settings that rebuild a tokenizer object (its `config`, a dataclass or a dict), for checkpoints."""
    from ..train import _plain

    config = getattr(tokenizer, "config", None)
    if config is None:
        return {}
    plain = dict(_plain(config))
    for key in ("image_shape", "levels"):  # TwoStage passes these itself
        plain.pop(key, None)
    return plain


def build_tokenizer(tokenizer, shape, levels):
    """A tokenizer object as given, or a VQVAE built from a dict of its settings (None: its defaults)."""
    if tokenizer is None or isinstance(tokenizer, dict):
        from ..tokenizers.vqvae import VQVAE

        return VQVAE(image_shape=tuple(shape), levels=levels, **(tokenizer or {}))
    missing = [m for m in ("codebook_size", "levels", "token_shape", "encode", "decode") if not hasattr(tokenizer, m)]
    if missing:
        raise TypeError(f"tokenizer must be a tokenizer (armini.tokenizers) or a dict of VQVAE settings; "
                        f"{type(tokenizer).__name__} lacks {', '.join(missing)}")
    if int(tokenizer.levels) != levels:
        raise ValueError(f"the tokenizer reads images with {tokenizer.levels} levels but this model has levels={levels}")
    return tokenizer


class TwoStage(ARModel):
    """A tokenizer and a prior over its tokens: log_prob is the pixel-space bound, loss the prior's bits per
    token, sample draws tokens then decodes them."""

    unit = "bits/dim"
    nll_is_bound = True
    #: a tokenizer and a prior: no per-pixel conditionals (the per-pixel contract tests skip such models)
    two_stage = True

    def __init__(self, shape=(1, 28, 28), levels=256, tokenizer=None, **kwargs):
        super().__init__(shape, levels)
        self.tokenizer = build_tokenizer(tokenizer, self.shape, self.levels)
        stored = _config_of(self.tokenizer) if not (tokenizer is None or isinstance(tokenizer, dict)) else tokenizer
        self.config = cfg = TwoStageConfig(tokenizer=dict(stored or {}), **kwargs)
        if not 0 <= cfg.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {cfg.label_dropout!r}")
        if not 0 < cfg.tokenizer_share < 1:
            raise ValueError(f"tokenizer_share must lie strictly between 0 and 1, got {cfg.tokenizer_share!r}")
        self.set_classes(cfg.num_classes)
        self.token_shape = tuple(int(s) for s in self.tokenizer.token_shape(self.shape))  # (D, h, w)
        self.null = cfg.num_classes  # the null class's label (None: unconditional)
        prior_classes = None if cfg.num_classes is None else cfg.num_classes + 1
        self.prior = self.build_prior(prior_classes)
        self.prior.unit = "bits/token"  # its dimensions are tokens

    def build_prior(self, num_classes: Optional[int]) -> ARModel:
        """The prior over the tokenizer's tokens: MODELS[config.prior] on the token grid (a subclass with a
        prior of its own, VAR, overrides this). num_classes counts the null class."""
        cfg = self.config
        return token_prior(cfg.prior, self.token_shape, self.tokenizer.codebook_size, num_classes, **cfg.prior_kwargs)

    # ------------------------------------------------------------------ tokens
    @contextlib.contextmanager
    def frozen_tokenizer(self):
        """The tokenizer in eval mode without gradients (no EMA codebook update, no dead-code restart)."""
        was_training = getattr(self.tokenizer, "training", False)
        if isinstance(self.tokenizer, nn.Module):
            self.tokenizer.eval()
        try:
            with torch.no_grad():
                yield self.tokenizer
        finally:
            if isinstance(self.tokenizer, nn.Module):
                self.tokenizer.train(was_training)

    def encode(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Integer images (B, C, H, W) -> tokens (B, D, h, w), the tokenizer frozen, `batch_size` images at a time."""
        dev = self.model_device
        with self.frozen_tokenizer() as tok, self.trusted(tok):
            return torch.cat([tok.encode(part.to(dev)) for part in x.split(batch_size)])  # (B, D, h, w)

    def trusted(self, part):
        """Inside a call that checked its images (see armini.models.base.checks_inputs), the tokenizer and the
        prior trust what they get (images checked once, tokens valid by construction): one wait for the device
        per call, not three. Elsewhere they check as usual."""
        if self._inputs_checked and callable(getattr(part, "inputs_checked", None)):
            return part.inputs_checked()
        return contextlib.nullcontext()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, D, h, w) -> integer images (B, C, H, W)."""
        with self.frozen_tokenizer() as tok:
            return tok.decode(tokens)

    def check_labels(self, y, batch: int):
        """As for any model, except that a class-conditional two-stage model also takes y=None: the null class
        (the unconditional model p(z) that label dropout trained)."""
        if y is None and self.num_classes is not None:
            return None
        return super().check_labels(y, batch)

    def prior_labels(self, y, n: int):
        """The labels the prior reads: y, the null class where y is None, None for an unconditional model."""
        if self.num_classes is None:
            return None
        if y is None:
            return torch.full((n,), self.null, dtype=torch.long, device=self.model_device)
        return y

    # -------------------------------------------------------------- likelihood
    def conditionals(self, x, y=None):
        raise NotImplementedError(
            "a two-stage model has no per-pixel conditionals: its prior's are over tokens, "
            "model.prior.conditionals(model.encode(x)); log_prob(x) gives the pixel-space bound")

    def decoder_log_prob_pixels(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log p(x_d | z) of every pixel under the decoder, in nats: (B, C, H, W)."""
        if not callable(getattr(self.tokenizer, "decode_logprobs", None)):
            raise TypeError(f"{type(self.tokenizer).__name__} has no decode_logprobs (a distribution over pixel "
                            "values), so this two-stage model has no likelihood bound; sampling still works")
        with self.frozen_tokenizer() as tok:
            lp = tok.decode_logprobs(tokens)  # (B, C, H, W, K)
        return lp.gather(-1, x.unsqueeze(-1)).squeeze(-1)  # (B, C, H, W)

    def log_prob_pixels(self, x, y=None):
        """Each pixel's share of the bound, in nats: log p(x_d | z) + log p(z) / D, z = enc(x): (B, C, H, W).
        They sum to the bound log_prob(x); they are not conditionals p(x_d | x_<d)."""
        z = self.encode(x)  # (B, D, h, w)
        with self.trusted(self.prior):
            prior = self.prior.log_prob(z, self.prior_labels(y, len(x)))  # (B,) log p(z)
        return self.decoder_log_prob_pixels(x, z) + (prior / self.dims).view(-1, 1, 1, 1)  # (B, C, H, W)

    def log_prob(self, x, y=None, *, order=None, observed=None):
        """The pixel-space bound log p(z) + log p(x | z) <= log p(x), z = enc(x), in nats: (B,)."""
        if order is not None or observed is not None:
            raise ValueError("a two-stage model scores whole images only (no order= or observed=): for a partial "
                             "image, score its tokens with model.prior.log_prob(model.encode(x), observed=...)")
        z = self.encode(x)  # (B, D, h, w)
        with self.trusted(self.prior):
            prior = self.prior.log_prob(z, self.prior_labels(y, len(x)))  # (B,)
        return prior + self.decoder_log_prob_pixels(x, z).flatten(1).sum(1)  # (B,)

    def loss(self, x, y=None, *, order=None, observed=None):
        """The prior's training objective on the tokens of x: mean bits per token, the tokenizer frozen.
        While training, class labels drop to the null class with probability label_dropout."""
        if order is not None or observed is not None:
            raise ValueError("a two-stage model trains on whole images (no order= or observed=)")
        y = self.prior_labels(y, len(x))
        if self.training and y is not None:
            y = drop_labels(y, self.null, self.config.label_dropout)
        z = self.encode(x)  # (B, D, h, w)
        with self.trusted(self.prior):
            return self.prior.loss(z, y)

    # ---------------------------------------------------------------- sampling
    def observed_tokens(self, observed) -> torch.Tensor:
        """The tokens a partial image fixes (a pixel mask -> a token mask; see `observed_tokens`)."""
        return observed_tokens(observed, self.shape, self.token_shape)

    def sampling_steps(self, order=None):
        """The prior's steps: one per token (49 for a 7x7 grid), not one per pixel."""
        if order is not None:
            raise ValueError("a two-stage model samples its tokens in its prior's order (no order=)")
        return self.prior.sampling_steps()

    def init_cache(self, x, y=None):
        """The prior's cache (None if it has no fast sampler): what TwoStage.sample(cached=True) uses."""
        z = torch.zeros((len(x),) + self.token_shape, dtype=torch.long, device=self.model_device)
        return self.prior.init_cache(z, self.prior_labels(y, len(x)))

    def activation_bytes(self, batch):
        return self.prior.activation_bytes(batch)

    def sampler(self, guidance: float = 0.0) -> ARModel:
        """The model the token sampling loop runs: the prior, or the prior with classifier-free guidance."""
        if not guidance:
            return self.prior
        if self.num_classes is None:
            raise ValueError("guidance needs a class-conditional model (num_classes=...), trained with label dropout")
        return Guided(self.prior, guidance, self.null)

    @torch.no_grad()
    def sample_tokens(self, n: int, *, tokens=None, observed=None, y=None, guidance: float = 0.0, generator=None,
                      temperature: float = 1.0, top_k: Optional[int] = None, callback=None, cached: bool = True,
                      progress: bool = False) -> torch.Tensor:
        """Draw n token grids (n, D, h, w) from the prior, one token per step.

        tokens, observed: keep these tokens where the bool mask (n, D, h, w) is True, generate the rest.
        y: class labels (n,) or one label; None on a class-conditional model: the null class (unconditional).
        guidance: classifier-free guidance scale w (0: none; needs y)."""
        if guidance and y is None:
            raise ValueError("guidance sharpens p(z | y) against p(z | null): pass class labels y")
        sampler = self.sampler(guidance)
        y = self.check_labels(y, n)
        if not guidance:
            y = self.prior_labels(y, n)
        return sampler.sample(n, x=tokens, observed=observed, y=y, generator=generator, temperature=temperature,
                              top_k=top_k, callback=callback, cached=cached, progress=progress)

    @torch.no_grad()
    def sample(self, n: int, *, x=None, observed=None, y=None, guidance: float = 0.0, generator=None,
               temperature: float = 1.0, top_k: Optional[int] = None, callback=None, cached: bool = True,
               progress: bool = False, order=None) -> torch.Tensor:
        """Draw n images (n, C, H, W): tokens from the prior (callback sees each token step), then decode.

        x, observed: inpaint/outpaint on tokens: x (n, C, H, W) integer images and observed a bool mask over
            pixels (kept tokens: those whose whole patch is observed, `observed_tokens`) or over tokens
            (n, D, h, w); the kept tokens are those of enc(x).
        y, guidance, temperature, top_k, generator, cached: as in sample_tokens and ARModel.sample."""
        if order is not None:
            raise ValueError("a two-stage model samples its tokens in its prior's order (no order=)")
        tokens = kept = None
        if x is not None or observed is not None:
            if x is None or observed is None:
                raise ValueError("inpainting needs both x (the partial images) and observed (which pixels are known)")
            x = self.check_input(x)
            tokens = self.encode(x)  # (n, D, h, w)
            kept = self.observed_tokens(observed).to(tokens.device).expand_as(tokens)
        z = self.sample_tokens(n, tokens=tokens, observed=kept, y=y, guidance=guidance, generator=generator,
                               temperature=temperature, top_k=top_k, callback=callback, cached=cached,
                               progress=progress)
        return self.decode(z)  # (n, C, H, W)

    # ---------------------------------------------------------------- training
    def fit_stages(self, train, test=None, *, steps, time_limit: Optional[float] = None, batch_size: int = 64,
                   lr: float = 1e-3, device=None, seed: int = 0, progress: bool = True,
                   clock: Callable[[], float] = time.perf_counter, eval_images: Optional[int] = None):
        """Train the tokenizer, then the prior on the tokens of `train` (tokenizer frozen), with armini.train.fit.

        steps, time_limit: shared by the stages, tokenizer_share to the tokenizer (time the tokenizer leaves
            unused goes to the prior; encoding the data counts too); steps may also be a pair (tokenizer steps,
            prior steps), and (0, prior steps) trains the prior only, on a tokenizer trained already (the whole
            time_limit then goes to the encoding and the prior). The prior sees at most prior steps x
            batch_size images, so only that many training images (a seeded random subset) are encoded, in at
            most a quarter of the time left after the tokenizer when there is a time_limit.
        Returns a History: train_s, the CPU (clock) seconds of both stages' steps and of the encoding; its
        test value the pixel-space bound on `test` (bits/dim); `stages` each stage's History (the
        tokenizer's losses; the prior's bits per token)."""
        from .. import train as training

        t0 = clock()
        cfg = self.config
        images, labels = training.as_images_labels(train)
        images = self.check_input(images, "train images")
        if isinstance(steps, (tuple, list)):  # (tokenizer steps, prior steps)
            tok_steps, prior_steps = (int(s) for s in steps)
            if tok_steps < 0 or prior_steps < 1:
                raise ValueError(f"steps=(tokenizer steps, prior steps) needs tokenizer steps >= 0 (0: the tokenizer is "
                                 f"trained already) and prior steps >= 1, got {tuple(steps)}")
        else:
            tok_steps = max(1, round(cfg.tokenizer_share * steps))
            prior_steps = max(1, steps - tok_steps)
        tok_limit = None if time_limit is None else cfg.tokenizer_share * time_limit
        if tok_steps:
            tok_hist = training.fit(self.tokenizer, images, None, steps=tok_steps, time_limit=tok_limit,
                                    batch_size=batch_size, lr=cfg.tokenizer_lr or lr, device=device, seed=seed,
                                    progress=progress, clock=clock)
        else:  # a tokenizer trained already: the prior's stage only
            tok_hist = training.History(unit=training.unit_label(self.tokenizer))
            if device is not None:
                self.tokenizer.to(device)
        self.to(self.tokenizer_device())
        if self.num_classes is not None:
            labels = training._check_labels(self, labels, len(images), "train")
        # the prior sees at most prior_steps * batch_size images: encode those (a seeded random subset), once,
        # spending at most a quarter of the time left on it (then the prior sees fewer images, more often)
        start = clock()
        seen = min(len(images), prior_steps * batch_size)
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:seen]
        most = None if time_limit is None else 0.25 * max(time_limit - (start - t0), 0.0)
        chunks = []
        for part in pick.split(1000):
            chunks.append(self.encode(images[part]).cpu())  # (<= 1000, D, h, w)
            if most is not None and clock() - start > most:
                break
        tokens = torch.cat(chunks)  # (N', D, h, w)
        labels = None if labels is None else labels[pick[:len(tokens)]]
        encode_s = clock() - start
        test_tokens = None
        if test is not None:
            test_images, test_labels = training.as_images_labels(test)
            test_images = test_images[:eval_images] if eval_images else test_images
            test_tokens = self.encode(self.check_input(test_images, "test images")).cpu()
            if self.num_classes is not None:
                test_tokens = (test_tokens, test_labels[:len(test_tokens)])
        left = None if time_limit is None else max(time_limit - (clock() - t0), 1e-9)

        def prior_loss(prior, z, y):  # bits per token, labels dropped to the null class for guidance
            return prior.loss(z, None if y is None else drop_labels(y, self.null, cfg.label_dropout))

        prior_hist = training.fit(self.prior, tokens if labels is None else (tokens, labels), test_tokens,
                                  steps=prior_steps, time_limit=left, batch_size=batch_size, lr=lr, device=device,
                                  seed=seed, progress=progress, clock=clock, loss_fn=prior_loss)
        hist = training.History(unit=training.unit_label(self), time_limit=time_limit)
        hist.steps = tok_hist.steps + prior_hist.steps
        hist.images_seen = tok_hist.images_seen + prior_hist.images_seen
        hist.train_s = tok_hist.train_s + encode_s + prior_hist.train_s  # the cost of training: both stages
        hist.images_per_s = hist.images_seen / max(hist.train_s, 1e-9)
        hist.stopped_early = tok_hist.stopped_early or prior_hist.stopped_early
        if test is not None:
            hist.final_test_bpd = training.evaluate(self, test, limit=eval_images)
            hist.test = [(hist.steps, hist.final_test_bpd)]
        hist.elapsed_s = clock() - t0
        hist.stages = {"tokenizer": tok_hist, "prior": prior_hist}
        hist.encoded_images = len(tokens)  # the training images the prior trained on
        return hist

    def tokenizer_device(self) -> torch.device:
        p = next(self.tokenizer.parameters(), None) if isinstance(self.tokenizer, nn.Module) else None
        return p.device if p is not None else self.model_device

    def bench_fields(self) -> dict:
        return {"token_shape": list(self.token_shape), "codebook_size": int(self.tokenizer.codebook_size),
                "prior": self.config.prior}

    def extra_repr(self) -> str:
        return f"shape={self.shape}, levels={self.levels}, token_shape={self.token_shape}"


def two_stage_sample(model: TwoStage, n: int, y=None, guidance: float = 0.0) -> torch.Tensor:
    """model.sample(n, y=y, guidance=guidance) drawing from torch's global generator, as a plain function:
    n tokens grids from the prior (with classifier-free guidance of scale w), decoded. Lesson 12's
    exercise writes this loop and is checked against it."""
    return model.sample(n, y=y, guidance=guidance)

