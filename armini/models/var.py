"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., 2024) (lesson 15).

A raster token prior (lesson 12) draws a 7x7 token grid in 49 steps, one token each. VAR draws it
coarse to fine: a multi-scale residual tokenizer (armini.nn.quantize.MultiScaleQuantizer) writes an
image as K token maps r_1, ..., r_K of growing sides s_1 < ... < s_K (1, 2, 4, 7 on a 7x7
latent), each map quantising what the coarser ones left unexplained, and the prior predicts a whole
map per step,

    p(r_1, ..., r_K) = prod_k p(r_k | r_1, ..., r_{k-1})        (K = 4 steps instead of 49)

with the s_k^2 tokens of r_k independent given the coarser maps. The tokens form ONE flat sequence
of L = sum_k s_k^2 tokens (70 for the scales above), scale by scale, each map in raster order: the
prior's shape is (L,), its sampling_steps() one group per scale.

What the transformer reads (teacher forcing on f_hat). Position t of scale k predicts token r_k[t]
from an input vector. For scale 1 that is a start token (the class's embedding; a null class for
classifier-free guidance). For scale k > 1 it is the tokenizer's cumulative reconstruction after
scales 1..k-1, area-downsampled to s_k x s_k (the tokenizer's `next_scale_inputs`):

    f_hat_{k-1} = sum_{j<k} phi(upsample(e[r_j]))          (B, d, h, w): what the coarse maps explain
    input_k     = W_in area_downsample(f_hat_{k-1}, s_k)    (B, s_k^2, E)

The cumulative sum, never the raw tokens of scale k-1: r_{k-1} is a residual, the correction to
everything before it, meaningless alone (the classic bug). Then the scale's embedding and a learned
position embedding are added, and the blocks are pre-LN transformer blocks (armini.models.transformer)
whose attention is block-causal (armini.nn.attention.block_causal_mask): a token reads every token of
its own scale and of the coarser ones, nothing finer. Since input_k depends on r_<k only, the logits of
scale k depend on r_<k only: the model is autoregressive over scales, which the causality inspector
(armini.causality, reading sampling_steps) checks.

Sampling (the shared loop of armini.models.base, one step per scale) with a KV cache: each step feeds
only the new scale's s_k^2 positions through the blocks, which read the keys and values the coarser
scales left in the cache, and adds only the scale just drawn to the cached f_hat (the quantiser's
add_scale); `sample(cached=False)` recomputes everything and draws the same tokens. A step reads the weights
taken out of the modules once per sampler and runs each block as functional ops (scale_step: no mask, since a
new scale reads every key in the cache) on one CPU thread with oneDNN off (sampling_cache.StepMode), as the
pixel transformer's cached step does: at lesson 15's sizes 1.3-1.4x cheaper per image one at a time, the
same tokens. Top-k and temperature
come from the shared machinery (base.sample); classifier-free guidance too (token_ar.Guided), with the
reference sampler's ramp over the scales (RampGuided: w_k = w k / (K - 1), the 1x1 scale unguided).

`VAR` is a TwoStage model (armini.models.token_ar) with this prior: log_prob is the pixel-space bound
-log p(x) <= -log p(r(x)) - log p(x | r(x)), fit_stages trains the tokenizer, then the prior.

Deviations from the paper: tiny sizes; the class enters as the start token only (the paper also feeds
it to adaptive layer norm in every block); the scale and position embeddings are learned vectors initialised
as GPT-2 initialises its weights.

Legend: B batch, K scales, s_k the side of scale k, L = sum_k s_k^2 tokens, V codebook size, d the
tokenizer's latent channels, E the transformer's width, n images drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.attention import CausalSelfAttention, KVCache, block_causal_mask
from ..sampling_cache import StepMode
from .base import ARModel
from .token_ar import Guided, TwoStage, missing_pixels
from .transformer import Block, BlockWeights, gpt2_init, layer_norm, layer_norm_args, linear_args

__all__ = ["NextScalePrior", "NextScalePriorConfig", "VAR", "RampGuided", "scale_sizes", "scale_of_position",
           "next_scale_sample"]


def scale_sizes(scales) -> list:
    """Tokens per scale, s_k^2: [1, 4, 16, 49] for scales (1, 2, 4, 7)."""
    return [int(s) ** 2 for s in scales]


def scale_of_position(scales) -> torch.Tensor:
    """The scale (0-based) each of the L positions belongs to: (L,) long."""
    sizes = scale_sizes(scales)
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))  # (L,)


class ScaleBlock(Block):
    """A pre-LN transformer block (armini.models.transformer.Block) whose attention is block-causal over
    the scales: a position reads its own scale whole and every coarser scale."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int, scales):
        super().__init__(dim, n_heads, mlp_ratio, window=None)
        self.attn = CausalSelfAttention(dim, n_heads, mask=block_causal_mask(scale_sizes(scales)), causal=False)


def scale_step(h: torch.Tensor, cache: KVCache, w: BlockWeights) -> torch.Tensor:
    """One whole new scale through a ScaleBlock, h (n, T, E) -> (n, T, E): block(h, cache) in fewer operations
    (the functional ops its modules call, on weights read once by the sampler). The new scale reads itself
    whole and every coarser scale, i.e. every key in the cache: no mask to build."""
    attn = w.attention
    if cache.weights is None:
        cache.weights = attn.step_weights()  # W_q, W_k, W_v stacked, W_o, the heads, 1/sqrt(d_k)
    a = cache.weights
    n, T, _ = h.shape
    q, k, v = F.linear(layer_norm(h, *w.ln_1), a.qkv_weight, a.qkv_bias).split_with_sizes(a.sizes, -1)  # (n, T, .)
    q, k, v = (t.view(n, T, a.n_heads, -1).transpose(1, 2) for t in (q, k, v))  # (n, nh, T, d) each
    k, v = cache.extend(k, v)  # (n, nh, S, d): the coarser scales' keys/values, then this scale's (written in place)
    y = F.scaled_dot_product_attention(q, k, v, scale=a.scale)  # (n, nh, T, d): softmax(q k^T / sqrt(d_k)) v
    h = h + F.linear(y.transpose(1, 2).reshape(n, T, -1), a.out_weight, a.out_bias)  # (n, T, E): h + W_o y
    u = F.gelu(F.linear(layer_norm(h, *w.ln_2), *w.fc), approximate=w.gelu)  # (n, T, 4E): GELU(W_1 LN(h))
    return h + F.linear(u, *w.proj)  # (n, T, E): h + W_2 u


class ScaleCache:
    """What the cached sampler keeps: one KVCache per block (room for all L positions), how many
    positions (whole scales) were fed, and f_hat (n, d, h, w), the sum of the code maps fed so far; and,
    set by the first step (NextScalePrior.start_cache), what every step reads and which does not change
    while it samples: the weights, each scale's embedding rows, how a step runs."""

    def __init__(self, n_layers: int, positions: int, f_hat: torch.Tensor):
        self.layers = [KVCache(capacity=positions) for _ in range(n_layers)]
        self.fed = 0
        self.f_hat = f_hat
        self.mode = None  # StepMode: one CPU thread, inference mode, torch's own kernels
        self.weights = None  # Block.step_weights() of every block
        self.where = None  # per scale k: (scale_emb row (E,), pos_emb rows (s_k^2, E))
        self.start = None  # the start tokens: the unconditional one (E,) and the class table (classes, E) or None
        self.input_proj = None  # F.linear's arguments of W_in
        self.head = None  # F.layer_norm's arguments of ln_f, F.linear's of head


@dataclass
class NextScalePriorConfig:
    dim: int = 64  # E, the width of every position's hidden state
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    num_classes: Optional[int] = None  # class-conditional: one start token per class


class NextScalePrior(ARModel):
    """A transformer over all scales' tokens at once, block-causal across scales; one sampling step per scale.

    quantizer: the tokenizer's multi-scale quantiser (armini.nn.quantize.MultiScaleQuantizer, a VQVAE's
    `quantizer` with quantizer="msvq"): its `scales`, its code size `dim`, and the teacher-forcing input
    `next_scale_inputs(tokens (B, L)) -> (B, L - s_1^2, d)` (for every position of scales 2..K the
    cumulative f_hat of the coarser scales, area-downsampled to that scale); the cached sampler uses its
    `add_scale` and `scale_input` (one scale at a time). The tokenizer is frozen while the prior trains:
    the prior keeps a reference to the quantiser, not its parameters."""

    shape_axes = None  # a flat sequence (L,)
    unit = "bits/token"

    def __init__(self, shape=None, levels: int = 512, *, quantizer, **kwargs):
        cfg = NextScalePriorConfig(**kwargs)
        missing = [m for m in ("scales", "dim", "next_scale_inputs", "scale_input", "add_scale")
                   if not hasattr(quantizer, m)]
        if missing:
            raise TypeError(f"quantizer must be a multi-scale quantiser (armini.nn.quantize.MultiScaleQuantizer: the "
                            f"teacher-forcing input next_scale_inputs); {type(quantizer).__name__} lacks "
                            f"{', '.join(missing)}")
        scales = tuple(int(s) for s in quantizer.scales)
        if not scales or min(scales) < 1 or any(b <= a for a, b in zip(scales, scales[1:])):
            raise ValueError(f"scales must be growing positive sides s_1 < s_2 < ..., got {quantizer.scales!r}")
        L = sum(scale_sizes(scales))
        shape = (L,) if shape is None else tuple(shape)
        if shape != (L,):
            raise ValueError(f"a next-scale prior over scales {scales} reads sequences of L = {L} tokens: "
                             f"shape must be ({L},), got {shape}")
        super().__init__(shape, levels)
        if cfg.dim % cfg.n_heads:
            raise ValueError(f"dim={cfg.dim} must be a multiple of n_heads={cfg.n_heads}")
        if cfg.n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {cfg.n_layers}")
        self.config = cfg
        self.set_classes(cfg.num_classes)
        self.scales = scales
        object.__setattr__(self, "quantizer", quantizer)  # not a submodule: its parameters are not the prior's
        sizes = scale_sizes(scales)
        self.first = sizes[0]  # positions of scale 1: they read the start token
        self.bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]  # scale k: positions bounds[k]..bounds[k+1]-1
        E = cfg.dim
        self.start = nn.Parameter(torch.zeros(E))  # the start token of an unconditional prior
        if cfg.num_classes is not None:
            self.class_start = nn.Embedding(cfg.num_classes, E)  # the start token of each class (incl. the null one)
        self.input_proj = nn.Linear(int(quantizer.dim), E)  # W_in: f_hat features -> the transformer's width
        self.scale_emb = nn.Embedding(len(scales), E)  # which scale a position belongs to
        self.pos_emb = nn.Embedding(L, E)  # where in the sequence it lies
        self.register_buffer("scale_id", scale_of_position(scales), persistent=False)  # (L,)
        self.blocks = nn.ModuleList([ScaleBlock(E, cfg.n_heads, cfg.mlp_ratio, scales) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(E)
        self.head = nn.Linear(E, self.levels)
        self.apply(gpt2_init)

    # ------------------------------------------------------------------ inputs
    def sampling_steps(self, order=None) -> list:
        """One group per scale: the s_k^2 positions of scale k, k = 1..K."""
        if order is not None:
            raise ValueError("a next-scale prior generates scale by scale (no order=)")
        return [torch.arange(a, b) for a, b in zip(self.bounds, self.bounds[1:])]

    def embed(self, tokens: torch.Tensor, y=None, first: int = 0, last: Optional[int] = None,
              f: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inputs of the positions of scales first..last-1 (0-based): (B, T, E), T their number of positions.

        Scale 1's positions hold the start token (the class's), scale k > 1's the projected cumulative
        f_hat of scales < k (teacher forcing; f: those features (B, T', d) if the caller has them); then
        the scale and position embeddings are added."""
        last = len(self.scales) if last is None else last
        a, b = self.bounds[first], self.bounds[last]  # the positions a..b-1
        B = tokens.shape[0]
        parts = []
        if first == 0:
            start = self.start.expand(B, -1) if y is None else self.class_start(y)  # (B, E)
            parts.append(start[:, None].expand(B, self.first, -1))  # (B, s_1^2, E)
        if last > 1:
            if f is None:
                with torch.no_grad():  # the tokenizer is frozen
                    f = self.quantizer.next_scale_inputs(tokens)  # (B, L - s_1^2, d): coarser f_hat, downsampled
                f = f[:, max(a, self.first) - self.first:b - self.first]  # (B, T', d): these scales' rows
            parts.append(self.input_proj(f.to(self.input_proj.weight.dtype)))  # (B, T', E)
        h = torch.cat(parts, dim=1)  # (B, T, E)
        return h + self.scale_emb(self.scale_id[a:b]) + self.pos_emb.weight[a:b]  # (B, T, E)

    # -------------------------------------------------------------- likelihood
    def conditionals(self, x, y=None):
        """log p(r_k[t] = v | r_<k) for every position, teacher forced in one pass: (B, L, V)."""
        h = self.embed(x, y)  # (B, L, E)
        for block in self.blocks:
            h = block(h)  # (B, L, E): block-causal attention across scales
        return torch.log_softmax(self.head(self.ln_f(h)), dim=-1)  # (B, L, V)

    # ------------------------------------------------------- cached sampling
    def init_cache(self, x, y=None):
        q = self.quantizer
        f_hat = torch.zeros(len(x), int(q.dim), int(q.latent_size), int(q.latent_size), device=x.device)
        return ScaleCache(len(self.blocks), self.dims, f_hat)  # f_hat (n, d, h, w): nothing explained yet

    def conditional_logprobs(self, x, index, y=None, cache=None):
        """log p(r_k = . | r_<k) for the positions `index` (S,), which must be one whole scale (a sampling
        step). With a cache, only that scale's positions go through the blocks: (n, s_k^2, V)."""
        if cache is None:  # the naive sampler: a full forward pass
            return super().conditional_logprobs(x, index, y)
        k = self.bounds.index(cache.fed) if cache.fed in self.bounds[:-1] else None
        if k is None or len(index) != self.bounds[k + 1] - self.bounds[k]:
            raise ValueError("the cached sampler generates whole scales in order: start a new init_cache")
        if cache.mode is None:
            self.start_cache(cache, x.device)
        with cache.mode:  # one CPU thread, inference mode: a step's operations are small
            h = self.embed_scale(x, y, k, cache)  # (n, s_k^2, E): only the new scale
            for kv, w in zip(cache.layers, cache.weights):
                h = scale_step(h, kv, w)  # (n, s_k^2, E), keys/values of the coarser scales come from kv
            cache.fed = self.bounds[k + 1]
            logits = F.linear(layer_norm(h, *cache.head[0]), *cache.head[1])  # (n, s_k^2, V): head(ln_f(h))
            return torch.log_softmax(logits, dim=-1)  # (n, s_k^2, V)

    def start_cache(self, cache: ScaleCache, device) -> None:
        """The first step's bookkeeping: the weights every step reads, taken out of the modules once, and
        how a step runs (StepMode: one CPU thread, inference mode, torch's kernels instead of oneDNN's)."""
        cache.mode = StepMode(device, onednn=False)
        cache.weights = [block.step_weights() for block in self.blocks]
        cache.where = [(self.scale_emb.weight[k], self.pos_emb.weight[a:b])  # (E,), (s_k^2, E)
                       for k, (a, b) in enumerate(zip(self.bounds, self.bounds[1:]))]
        cache.start = self.start, (None if self.num_classes is None else self.class_start.weight)  # (E,), (classes, E)
        cache.input_proj = linear_args(self.input_proj)
        cache.head = layer_norm_args(self.ln_f), linear_args(self.head)

    def embed_scale(self, x: torch.Tensor, y, k: int, cache: ScaleCache) -> torch.Tensor:
        """embed(x, y, k, k + 1) from the cache: scale k's inputs (n, s_k^2, E). For k > 0 the scale drawn at
        the last step first joins the cached f_hat (the quantiser's add_scale), whose area-downsampled map
        W_in projects; scale 0 reads the start token."""
        n = x.shape[0]
        if k == 0:
            start = cache.start[0].expand(n, -1) if y is None else cache.start[1].index_select(0, y)  # (n, E)
            h = start[:, None].expand(n, self.first, -1)  # (n, s_1^2, E)
        else:  # f_hat after scales < k: the scale drawn at the last step joins the cached sum
            s = self.scales[k - 1]
            grid = x[:, self.bounds[k - 1]:self.bounds[k]].reshape(-1, s, s)  # (n, s_{k-1}, s_{k-1})
            cache.f_hat = self.quantizer.add_scale(cache.f_hat, grid, k - 1)  # (n, d, h, w)
            f = self.quantizer.scale_input(cache.f_hat, k)  # (n, s_k^2, d): area-downsampled to s_k
            h = F.linear(f.to(cache.input_proj[0].dtype), *cache.input_proj)  # (n, s_k^2, E): W_in f
        scale, pos = cache.where[k]
        return h + scale + pos  # (n, s_k^2, E): + the scale's embedding + the positions'

    def extra_repr(self) -> str:
        return f"scales={self.scales}, L={self.dims}, levels={self.levels}"


@torch.no_grad()
def next_scale_sample(prior: NextScalePrior, n: int, y=None) -> torch.Tensor:
    """n token sequences (n, L) drawn scale by scale from the prior (full recomputation, torch's global
    generator): for each scale, the distribution of all its tokens given the coarser ones, one draw per
    token. Lesson 15's exercise writes this loop and is checked against it."""
    tokens = torch.zeros(n, prior.dims, dtype=torch.long, device=prior.model_device)  # (n, L)
    for index in prior.sampling_steps():  # scale by scale
        logp = prior.conditionals(tokens, y)[:, index]  # (n, s_k^2, V): depends on the coarser scales only
        tokens[:, index] = torch.multinomial(logp.exp().flatten(0, 1), 1).view(n, -1)  # (n, s_k^2)
    return tokens


# ----------------------------------------------------------------------------- guidance over the scales


class RampGuided(Guided):
    """Classifier-free guidance that grows with the scale, as VAR samples (Tian et al. 2024; the reference
    sampler's t = cfg * k / (K - 1)): scale k (0-based) of K is guided with

        w_k = w * k / (K - 1)        no guidance on the 1x1 scale, the full w on the finest

    so the coarse scales (the layout) keep their diversity and the fine ones (the details) are sharpened
    towards the class. One step is one whole scale, so its positions name the scale."""

    def step_scale(self, index: torch.Tensor) -> float:
        k = int(self.prior.scale_id[int(index[0])])  # the scale this step draws, 0-based
        return self.scale * k / max(1, len(self.prior.scales) - 1)  # w_k


# ----------------------------------------------------------------------------- the two-stage model


class VAR(TwoStage):
    """A multi-scale residual tokenizer and a next-scale prior: log_prob is the pixel-space bound, loss the
    prior's bits per token, sample draws one scale per step (K steps) then decodes.

        model = VAR(shape=(1, 28, 28), levels=256)                  # scales (1, 2, 4, 7) on 7x7
        hist = model.fit_stages(train, test, steps=2000, time_limit=300, clock=time.process_time)
        images = model.sample(16, y=torch.arange(16) % 10, guidance=3.0, top_k=5)  # lesson 15's guided sampler
    """

    guidance_ramp = True  # sample(guidance=w): w_k = w k / (K - 1) over the scales (RampGuided); False: w everywhere

    def __init__(self, shape=(1, 28, 28), levels=256, tokenizer=None, **kwargs):
        kwargs.setdefault("prior", "next-scale")
        if kwargs["prior"] != "next-scale":
            raise ValueError(f"VAR's prior is its next-scale transformer (prior='next-scale'), got {kwargs['prior']!r}; "
                             "for a raster prior over a tokenizer's tokens use MODELS['vq-transformer']")
        kwargs.setdefault("prior_kwargs", dict(dim=64, n_layers=4, n_heads=4))
        if tokenizer is None or isinstance(tokenizer, dict):
            tokenizer = {**default_tokenizer(), **(tokenizer or {})}
        super().__init__(shape, levels, tokenizer=tokenizer, **kwargs)

    def sampler(self, guidance: float = 0.0):
        """The prior, or the prior with classifier-free guidance growing over the scales (RampGuided)."""
        plain = super().sampler(guidance)
        if not guidance or not self.guidance_ramp:
            return plain
        return RampGuided(self.prior, guidance, self.null)

    def build_prior(self, num_classes):
        tok = self.tokenizer
        if not callable(getattr(getattr(tok, "quantizer", None), "next_scale_inputs", None)):
            raise TypeError(f"VAR needs a multi-scale tokenizer (next_scale_inputs: the teacher-forcing input); "
                            f"{type(tok).__name__} has none: use quantizer='msvq'")
        return NextScalePrior(self.token_shape, tok.codebook_size, quantizer=tok.quantizer, num_classes=num_classes,
                              **self.config.prior_kwargs)

    def observed_tokens(self, observed) -> torch.Tensor:
        """Which tokens a partial image fixes: a token of scale k is kept when every pixel of its patch (the
        image split into s_k x s_k cells, as adaptive pooling does) is observed. observed: a bool mask over
        pixels broadcastable to (B, C, H, W), or over tokens (B, L). -> (B, L) bool."""
        return scale_observed(observed, self.shape, self.prior.scales)


def scale_observed(observed, image_shape, scales) -> torch.Tensor:
    """A bool pixel mask broadcastable to (B, C, H, W) -> the tokens of every scale whose whole patch is
    observed, (B, L); a (B, L) token mask is returned as it is."""
    observed = torch.as_tensor(observed, dtype=torch.bool)
    L = sum(scale_sizes(scales))
    if observed.dim() == 2 and observed.shape[1] == L:
        return observed
    missing = missing_pixels(observed, image_shape, f"(B, {L})")  # (B, 1, H, W)
    kept = [F.adaptive_max_pool2d(missing, s).flatten(1) == 0 for s in scales]  # (B, s_k^2) each
    return torch.cat(kept, dim=1)  # (B, L)


def default_tokenizer() -> dict:
    """The tokenizer settings VAR starts from (armini.tokenizers): the multi-scale residual quantiser."""
    return dict(quantizer="msvq")
