"""VQ-VAE (van den Oord et al. 2017): an image tokenizer with a pixel-space likelihood.

    x (B, C, H, W) integers --encoder--> z_e (B, d, h, w) --quantiser--> tokens (B, D, h, w), z_q
    z_q --decoder--> logits (B, C, H, W, K): a K-way categorical over every pixel value

The encoder halves the image n times with stride-2 convolutions (28 -> 14 -> 7 for latent_size 7);
the quantiser (armini.nn.quantize) is one of

    "vq"   plain VQ: a learned codebook, loss ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2
    "ema"  VQ with an EMA codebook, dead-code restarts and a codebook taken from the first batch
    "fsq"  finite scalar quantisation, levels `fsq_levels` (d = len(fsq_levels), V = prod(levels))
    "rvq"  residual VQ of depth `depth`, one shared EMA codebook (tokens (B, depth, h, w))
    "msvq" VAR's multi-scale residual VQ over `scales` (1, 2, 4, 7), one shared EMA codebook:
           tokens (B, L), L = sum_k s_k^2 = 70, coarse to fine (armini.nn.quantize.MultiScaleQuantizer)

The decoder ends in a categorical over the K pixel values (a softmax per pixel, like Part I's
models), not a mean: -log p(x | z) is a number of bits, and since the encoder is deterministic,

    -log2 p(x) <= -log2 p(x | z(x)) - log2 p(z(x))                (for any prior p(z))

a bound in pixel-space bits/dim that sits in the same table as Part I's exact likelihoods. With a
uniform prior, -log2 p(z) is the rate, tokens x log2 V bits; a learned prior (lesson 12) lowers it.

    vq = VQVAE(quantizer="ema", codebook_size=512)
    hist = armini.train.fit(vq, train, test, steps=500)   # loss: reconstruction bits/dim + VQ terms
    tokens = vq.encode(images)                            # (B, 1, 7, 7) in [0, 512)
    images = vq.decode(tokens)                            # (B, 1, 28, 28) integers
    msvq = VQVAE(quantizer="msvq", codebook_size=26)      # encode -> (B, 70): scales 1, 2, 4, 7

`decode` returns the rounded mean of each pixel's distribution: the estimate with the least squared
error (so the best PSNR a point estimate can get from the decoder), smooth where the decoder is
unsure. `decode(tokens, point="mode")` gives the most likely value instead: crisper, but where a
pixel's distribution has two bumps (an edge: dark or bright) it picks one and makes blotches.

The encoder normalises its features (GroupNorm with one group) before its last layer. FSQ needs it:
it has no commitment term to hold the scale of the encoder's output, and without the normalisation
Adam grew the outputs into tanh's flat tails within 50 steps, where every position rounds to the same
corner code and the gradient vanishes (measured: one code in use for hundreds of steps). All four
quantisers use the same encoder, so that they are compared on one architecture.

Deviations from the paper: a smaller network (one residual block per side by default, ReLU), a
categorical decoder over K values instead of the paper's discretised logistic for CIFAR-10, losses
as means over elements, and training through armini.train.fit (AdamW, cosine schedule).

Legend: B batch, C image channels, H, W image size, K pixel levels, d latent channels, h, w latent
grid, D tokens per position (residual depth), V codebook size, L tokens of a multi-scale sequence.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.inputs import to_unit_range
from ..nn.quantize import FSQ, MultiScaleQuantizer, ResidualVQ, VectorQuantizer, check_scales, codebook_usage, \
    default_scales

__all__ = ["VQVAE", "VQVAEConfig", "QUANTIZERS", "UsageLog"]

LN2 = math.log(2)
QUANTIZERS = ("vq", "ema", "fsq", "rvq", "msvq")


@dataclass
class VQVAEConfig:
    image_shape: tuple = (1, 28, 28)
    levels: int = 256  # K, pixel levels
    latent_size: Optional[int] = None  # h = w of the token grid (the image side divided by a power of 2);
    # None: default_latent_size (7 for 28 x 28 images)
    quantizer: str = "ema"  # one of QUANTIZERS
    codebook_size: int = 512  # V for "vq", "ema", "rvq" (FSQ: prod(fsq_levels))
    dim: int = 16  # d, the code size (FSQ: len(fsq_levels))
    depth: int = 2  # residual depth for "rvq"
    fsq_levels: tuple = (8, 5, 5, 5)
    beta: float = 0.25  # commitment weight, on the encoder term
    channels: int = 32  # width of the convolutional encoder and decoder
    res_blocks: int = 1  # residual blocks at the latent resolution, per side
    scales: Optional[tuple] = None  # "msvq": the token grids' sides, coarse to fine, the last = latent_size;
    # None: default_scales(latent_size), (1, 2, 4, 7) for 7
    phi: object = "shared"  # "msvq": phi convolutions, "shared", "per-scale" or a number (VAR: 4)


def default_latent_size(side: int) -> int:
    """The token grid's side when none is given: the image side / 4 (28 -> 7), or / 2 where 4 does not divide it
    (14 -> 7, 6 -> 3)."""
    if side % 4 == 0:
        return side // 4
    if side % 2 == 0:
        return side // 2
    raise ValueError(f"a {side} x {side} image has no latent size of side / 2^n: pass latent_size= yourself, or use "
                     "an even image side (e.g. 28 or 14)")


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the paper's residual block."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class VQVAE(nn.Module):
    """Encoder, quantiser, categorical decoder; a tokenizer (armini.tokenizers) trainable with fit."""

    num_classes = None  # unconditional: fit passes no labels
    unit = "bits/dim of p(x|z)"  # what loss() starts with and evaluate() measures: -log2 p(x | z(x)) / (C H W)
    nll_is_bound = False  # it is exactly -log2 p(x | z(x)), not a bound (the bound needs p(z) too)
    _inputs_checked = False  # True inside inputs_checked(): the caller checked the images

    def __init__(self, image_shape=(1, 28, 28), levels: int = 256, latent_size: Optional[int] = None, quantizer: str = "ema",
                 codebook_size: int = 512, dim: int = 16, depth: int = 2, fsq_levels=(8, 5, 5, 5),
                 beta: float = 0.25, channels: int = 32, res_blocks: int = 1, scales=None, phi="shared"):
        super().__init__()
        C, H, W = (int(s) for s in image_shape)
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        latent_size = default_latent_size(H) if latent_size is None else int(latent_size)
        downs = math.log2(H / latent_size) if latent_size > 0 and H % latent_size == 0 else -1
        if H != W or downs < 1 or downs != int(downs):
            raise ValueError(f"latent_size must be the image side {H} divided by 2, 4, 8, ... (e.g. 7 or 14 for 28 x "
                             f"28 images) and images square, got latent_size={latent_size} for shape {tuple(image_shape)}")
        if int(levels) < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        if quantizer == "fsq":
            dim = len(fsq_levels)  # FSQ quantises each channel: the latent has one channel per level count
        if quantizer == "msvq":
            scales = default_scales(latent_size) if scales is None else check_scales(scales, latent_size)
        elif scales is not None:
            raise ValueError(f"scales are for quantizer='msvq' (multi-scale tokens), not {quantizer!r}")
        self.config = VQVAEConfig((C, H, W), int(levels), int(latent_size), quantizer, int(codebook_size), int(dim),
                                  int(depth), tuple(int(L) for L in fsq_levels), float(beta), int(channels),
                                  int(res_blocks), scales, phi)
        self.shape, self.levels = (C, H, W), int(levels)
        c, K, n = int(channels), int(levels), int(downs)
        # encoder: (B, C, H, W) in [-1, 1] -> (B, d, h, w)
        enc = [nn.Conv2d(C, c, 3, padding=1)]
        for _ in range(n):
            enc += [nn.ReLU(), nn.Conv2d(c, c, 4, stride=2, padding=1)]  # halves H and W
        enc += [ResBlock(c) for _ in range(res_blocks)]
        enc += [nn.GroupNorm(1, c), nn.ReLU(), nn.Conv2d(c, dim, 1)]  # normalised features -> d channels
        self.encoder = nn.Sequential(*enc)
        # quantiser
        if quantizer == "vq":
            self.quantizer = VectorQuantizer(codebook_size, dim, beta=beta)
        elif quantizer == "ema":
            self.quantizer = VectorQuantizer(codebook_size, dim, beta=beta, ema=True, restart_dead=True,
                                             data_init=True)
        elif quantizer == "fsq":
            self.quantizer = FSQ(fsq_levels)
        elif quantizer == "rvq":
            self.quantizer = ResidualVQ(depth, codebook_size, dim, beta=beta, ema=True, restart_dead=True,
                                        data_init=True)
        else:
            self.quantizer = MultiScaleQuantizer(codebook_size, dim, scales, beta=beta, phi=phi, ema=True,
                                                 restart_dead=True, data_init=True)
        self.codebook_size = self.quantizer.codebook_size
        # decoder: (B, d, h, w) -> logits (B, C*K, H, W)
        dec = [nn.Conv2d(dim, c, 3, padding=1)] + [ResBlock(c) for _ in range(res_blocks)]
        for _ in range(n):
            dec += [nn.ReLU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)]  # doubles H and W
        dec += [nn.ReLU(), nn.Conv2d(c, C * K, 1)]
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ bookkeeping (what fit reads)
    @property
    def dims(self) -> int:
        """C * H * W, the dimensions of one image."""
        return math.prod(self.shape)

    @property
    def model_device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def last_decoder_layer(self) -> nn.Conv2d:
        """The decoder's output layer (VQGAN's adaptive weight compares gradients there)."""
        return self.decoder[-1]

    @property
    def depth(self) -> int:
        """D, tokens per latent position: the residual depth for "rvq", else 1."""
        return self.config.depth if self.config.quantizer == "rvq" else 1

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_input(self, x, name: str = "x") -> torch.Tensor:
        """x if it is an integer tensor (B, C, H, W), B >= 1, in [0, K); else a clear error."""
        if self._inputs_checked:
            return x
        if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of pixel values in [0, {self.levels}), got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape or len(x) == 0:
            raise ValueError(f"{name} must have shape (B, {', '.join(map(str, self.shape))}) with B >= 1, got "
                             f"{tuple(x.shape)}")
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one wait for the device
        if lo < 0 or hi >= self.levels:
            raise ValueError(f"{name} values must lie in [0, {self.levels}), found [{lo}, {hi}]")
        return x.long()

    @contextlib.contextmanager
    def inputs_checked(self):
        """Inside this block check_input trusts its images: a caller that checked them (a two-stage model)
        does not pay for a second check (a second wait for the device), as in armini.models.base."""
        outer = self._inputs_checked
        self.__dict__["_inputs_checked"] = True
        try:
            yield
        finally:
            self.__dict__["_inputs_checked"] = outer

    @property
    def multiscale(self) -> bool:
        """True for "msvq": tokens (B, L), a flat sequence of scales, not a (B, D, h, w) grid."""
        return self.config.quantizer == "msvq"

    def token_shape(self, image_shape=None) -> tuple:
        """(D, h, w) of one image's tokens: (1, 7, 7) for (1, 28, 28) at latent_size 7 ((depth, 7, 7) for rvq);
        (L,) for msvq, L = sum_k s_k^2 (70 for scales (1, 2, 4, 7))."""
        C, H, W = self.shape if image_shape is None else tuple(image_shape)
        if (C, H, W) != self.shape:
            raise ValueError(f"this VQVAE reads images of shape {self.shape}, got {tuple(image_shape)}")
        if self.multiscale:
            return (self.quantizer.length,)
        return (self.depth, self.config.latent_size, self.config.latent_size)

    # ------------------------------------------------------------------ the three pieces
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """z_e (B, d, h, w) of integer images (B, C, H, W)."""
        return self.encoder(to_unit_range(x.float(), self.levels))

    def decode_logits(self, z_q: torch.Tensor) -> torch.Tensor:
        """Logits of every pixel value (B, C, K, H, W) from the quantised latent (B, d, h, w).

        K before H, W: the layout the decoder's last convolution writes and cross_entropy reads
        (no copy); decode_logprobs returns the protocol's (B, C, H, W, K)."""
        out = self.decoder(z_q)  # (B, C*K, H, W)
        B, _, H, W = out.shape
        return out.view(B, self.shape[0], self.levels, H, W)  # (B, C, K, H, W)

    def forward(self, x: torch.Tensor):
        """(logits (B, C, K, H, W), Quantized) of integer images x (B, C, H, W)."""
        q = self.quantizer(self.encode_latents(x))
        return self.decode_logits(q.z_q), q

    # ------------------------------------------------------------------ losses
    def loss_terms(self, x: torch.Tensor) -> dict:
        """Every term of the loss on a batch, scalars: recon_bpd (-log2 p(x|z) per dimension), codebook,
        commitment (without beta), loss = recon_bpd + codebook + beta * commitment."""
        x = self.check_input(x)
        logits, q = self(x)
        B, C, K, H, W = logits.shape
        recon = F.cross_entropy(logits.view(B * C, K, H, W), x.view(B * C, H, W)) / LN2  # bits per dimension
        return {"recon_bpd": recon, "codebook": q.codebook_loss, "commitment": q.commitment_loss,
                "loss": recon + q.loss}

    def loss(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """The training objective: reconstruction bits/dim + codebook term + beta * commitment."""
        return self.loss_terms(x)["loss"]

    def log_prob_given_tokens(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log p(x | tokens) in nats, (B,): the decoder's likelihood of the images x given tokens."""
        logp = self.decode_logprobs(tokens)  # (B, C, H, W, K)
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)

    @torch.no_grad()
    def nll_bits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """-log2 p(x | z(x)): bits per image (B,), what evaluate() reports per dimension."""
        x = self.check_input(x)
        return -self.log_prob_given_tokens(x, self.encode(x)) / LN2

    # ------------------------------------------------------------------ the tokenizer protocol
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens (B, D, h, w) long of integer images (B, C, H, W) ((B, L) for msvq). Never moves the codebook."""
        k = self.quantizer.nearest(self.encode_latents(self.check_input(images, "images")))
        return k if k.dim() in (2, 4) else k.unsqueeze(1)  # (B, D, h, w), or (B, L) for msvq

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The quantised latent (B, d, h, w) the decoder reads, of tokens (B, D, h, w) (rvq: D <= depth,
        the first D depths: a lower rate; msvq: tokens (B, L))."""
        if self.multiscale:
            return self.quantizer.embed(tokens)  # checks (B, L)
        if tokens.dim() != 4:
            raise ValueError(f"tokens must be (B, D, h, w), got shape {tuple(tokens.shape)}")
        tokens = tokens.long()
        return self.quantizer.embed(tokens) if self.config.quantizer == "rvq" else self.quantizer.embed(tokens[:, 0])

    def latent_logprobs(self, z_q: torch.Tensor) -> torch.Tensor:
        """log p(pixel value | latent), in nats: (B, d, h, w) -> (B, C, H, W, K)."""
        return F.log_softmax(self.decode_logits(z_q), 2).permute(0, 1, 3, 4, 2)  # (B, C, H, W, K)

    @torch.no_grad()
    def decode_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """log p(pixel value | tokens), in nats: (B, C, H, W, K)."""
        return self.latent_logprobs(self.embed(tokens))

    def point_estimate(self, scores: torch.Tensor, point: str = "mean") -> torch.Tensor:
        """Integer images (B, C, H, W) of per-pixel scores (B, C, H, W, K), log-probabilities or unnormalised
        logits (the same softmax): the rounded mean of each pixel's categorical (point="mean", least squared
        error), or its most likely value (point="mode")."""
        if point == "mode":
            return scores.argmax(-1)
        if point != "mean":
            raise ValueError(f"point must be 'mean' or 'mode', got {point!r}")
        # scores may be a view with K strided (decode_logits writes K before H, W): a softmax over a contiguous
        # last axis is several times faster than over a strided one, and the copy costs less
        p = torch.softmax(scores.contiguous(), dim=-1)  # (B, C, H, W, K) p(value | z)
        values = torch.arange(self.levels, device=p.device, dtype=p.dtype)
        return (p @ values).round().long().clamp(0, self.levels - 1)  # E[value], rounded: (B, C, H, W)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, point: str = "mean") -> torch.Tensor:
        """Integer images (B, C, H, W) of tokens (B, D, h, w) ((B, L) for msvq): point_estimate of the decoder's
        distribution, its rounded mean (point="mean", least squared error) or its mode (point="mode")."""
        return self.latent_point(self.embed(tokens), point)

    def latent_point(self, z_q: torch.Tensor, point: str = "mean", rows: int = 1024) -> torch.Tensor:
        """point_estimate of the decoder's distribution given a quantised latent (B, d, h, w): integer images
        (B, C, H, W).

        The decoder ends in a 1x1 convolution: the same linear map from every pixel's c features to its C*K
        logits. On a CPU it runs here on `rows` pixels at a time, and each chunk's softmax and mean are taken
        while its logits are in the cache: all the logits at once (80 MB at batch 100: 78,400 pixels x 256)
        would be written and read back three times, which costs more than the arithmetic (measured 2x).
        A subclass that lays its pixels out its own way (VQVAE3D) gets point_estimate(latent_logprobs(z_q))."""
        cls, last = type(self), self.last_decoder_layer
        if (cls.decode_logits is not VQVAE.decode_logits or cls.latent_logprobs is not VQVAE.latent_logprobs
                or not (isinstance(last, nn.Conv2d) and last.kernel_size == (1, 1))):
            return self.point_estimate(self.latent_logprobs(z_q), point)
        h = self.decoder[:-1](z_q)  # (B, c, H, W): every pixel's features
        B, c, H, W = h.shape
        C, K = self.shape[0], self.levels
        h = h.permute(0, 2, 3, 1).reshape(B * H * W, c)  # (N, c), N = B*H*W pixels
        rows = rows if h.device.type == "cpu" else len(h)  # a GPU takes them all at once
        weight = last.weight.view(C * K, c)  # the 1x1 convolution as a linear layer
        out = torch.empty(B * H * W, C, dtype=torch.long, device=h.device)  # (N, C)
        for part, o in zip(h.split(rows), out.split(rows)):
            logits = F.linear(part, weight, last.bias).view(-1, C, K)  # (n, C, K) the pixels' logits
            o.copy_(self.point_estimate(logits, point))  # (n, C)
        return out.view(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W)

    @torch.no_grad()
    def decode_scales(self, tokens: torch.Tensor, point: str = "mean") -> list:
        """msvq: the images after each scale, K integer tensors (B, C, H, W): the decoder reads the cumulative
        f_hat of scales 1..k (coarse to fine; the last is decode(tokens))."""
        if not self.multiscale:
            raise ValueError(f"decode_scales needs quantizer='msvq' (multi-scale tokens), this VQVAE has "
                             f"{self.config.quantizer!r}")
        return [self.latent_point(f_hat, point)
                for f_hat in self.quantizer.cumulative(tokens.long())]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, point: str = "mean") -> torch.Tensor:
        """decode(encode(x)): integer images (B, C, H, W)."""
        return self.decode(self.encode(x), point=point)

    def extra_repr(self) -> str:
        c = self.config
        return (f"quantizer={c.quantizer!r}, codebook_size={self.codebook_size}, tokens={self.token_shape()}, "
                f"levels={c.levels}")

    def config_dict(self) -> dict:
        return asdict(self.config)


class UsageLog:
    """A loss_fn for armini.train.fit that also records codebook usage during training.

        log = UsageLog(test.images[:500], every=50)
        fit(vq, train, steps=1000, loss_fn=log)
        log.steps, log.used, log.perplexity        # lists, one entry per measurement

    Every `every` training steps (and before the first) it encodes the same held-out `images` and
    records codebook_usage of their tokens: usage over a whole set, not a batch (a batch of 32
    images has only 32 * 49 tokens: its perplexity is capped by its size). Only calls in training
    mode count as steps (fit's finiteness check runs the loss in eval mode)."""

    def __init__(self, images: torch.Tensor, every: int = 50):
        self.images, self.every = images, int(every)
        self.steps, self.used, self.perplexity = [], [], []
        self.calls = 0

    def measure(self, model):
        was_training = model.training
        model.eval()
        try:
            tokens = torch.cat([model.encode(self.images[i:i + 500].to(model.model_device)).cpu()
                                for i in range(0, len(self.images), 500)])
        finally:
            model.train(was_training)
        used, ppl = codebook_usage(tokens, model.codebook_size)
        self.steps.append(self.calls)
        self.used.append(used)
        self.perplexity.append(ppl)

    def __call__(self, model, x, y=None):
        if model.training:
            if self.calls % self.every == 0:
                self.measure(model)  # before step `calls` (0: the untrained codebook... after its first-batch init)
            self.calls += 1
        return model.loss(x, y)
