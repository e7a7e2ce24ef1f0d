"""A pixel transformer: ImageGPT (Chen et al., 2020, "Generative Pretraining from Pixels"),
with the local attention of the Image Transformer (Parmar et al., 2018) as an option.

The image is a sequence of D = C*H*W tokens in raster order (channels within a pixel, as
separate sub-pixel tokens), each an integer in {0, ..., K-1}. A decoder-only GPT reads the
sequence shifted right by one, a learned start token in front,

    input:   [start, x_0, x_1, ..., x_{D-2}]
    output:  p(x_0), p(x_1 | x_0), ..., p(x_{D-1} | x_<D-1)

so with a causal (j <= i) attention mask, output d only ever saw x_<d. Each block is pre-LN:

    h = h + Attention(LN(h))      (armini.nn.attention.CausalSelfAttention)
    h = h + MLP(LN(h))            MLP(u) = W_2 GELU(W_1 u)

Sampling feeds one token per step through a KV cache (every layer keeps the keys and values of
the positions it has already seen), so a step costs O(D) instead of a forward pass over the
sequence so far, O(d^2) at position d: `sample(..., cached=False)` recomputes that prefix at
every step (positions 0..d, never the ones after it) and draws the very same images. At one
position a step's cost is the number of operations, not arithmetic: `Block.step` and
`CausalSelfAttention.step` run one position as (B, E) rows, q, k and v in one matrix product,
with the functional ops the modules call (F.layer_norm, F.linear, F.gelu) on weights read out of the
modules once per sampler (`BlockWeights`, `StepWeights`), on one CPU thread with oneDNN off
(armini.sampling_cache.StepMode: oneDNN's GELU costs more to set up than a row's arithmetic).
A step equals the full forward to rounding, not bit for bit (a matrix product of one row rounds
differently from one of d+1 rows, and torch's GELU from oneDNN's), so a draw could differ only when
its uniform falls within that rounding of a boundary of the cumulative distribution: on lesson 07's
trained 14x14 model, at most about 1e-3 draws per image (9.6e-4; 9.0e-4 with oneDNN's GELU).

Representation (ImageGPT's linear probe): `features(x, layer)` average-pools the hidden states
after a middle block into one vector per image (`layer="all"`: after every block, in one pass); a
logistic regression on them classifies images (armini.probe).

Colour, as ImageGPT does it: cluster RGB colours into P centres (armini.nn.palette.Palette),
replace each pixel by the index of its nearest centre and train this model on the codes, a
(1, H, W) image with levels=P: one token per pixel instead of three.

    palette = Palette.fit(rgb_train.images, n_colors=16)            # k-means, seeded
    codes = palette.encode(rgb_train.images)                         # (N, 1, H, W) in [0, 16)
    model = PixelTransformer(shape=(1, 28, 28), levels=16)           # train on codes as usual
    rgb = palette.decode(model.sample(8))                            # (8, 3, H, W) images
(bits per dimension of a palette model count one code per pixel: not comparable to RGB models.)

Any order. Nothing in a transformer is tied to raster order: the sequence can list the D
dimensions in any order sigma (a (D,) permutation of flat positions, armini.orders), as long as
each position is told *where* its token lies. Position t holds the value of sigma(t-1) and the
embedding of where sigma(t) lies (its row, column and channel), so the model knows which
dimension it predicts. `any_order = True`: log_prob(x, order=...), sample(n, order=...) and
the causality inspector follow the order given (default: generation_order(), raster; a subclass
may override it). Trained in one order, the model has learned that order only: to be good in
every order it must be trained on many (Part II's order-agnostic training).

Class conditioning (num_classes, as in ImageGPT's conditional variant and VQGAN's transformer):
the start token is a learned vector per class instead of one shared vector.

Deviations from ImageGPT: tiny sizes; the position embedding is factorised, row + column +
channel embeddings (ImageGPT learns one vector per position); no dropout; colour is either three
sub-pixel tokens of K levels or a small palette (ImageGPT: 512 colours); a training step over
784 tokens is slow on a CPU (attention is O(D^2)): expect seconds per step at batch 32.

Legend: B batch, C, H, W image, K levels, D = C*H*W tokens, E embedding size (dim).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.attention import CausalSelfAttention, KVCache
from ..sampling_cache import StepMode
from .. import orders
from .base import ARModel


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, dim)

    def forward(self, h):
        return self.proj(self.act(self.fc(h)))  # W_2 GELU(W_1 h)


def gpt2_init(module: nn.Module) -> None:
    """GPT-2's initialisation, for model.apply: weights of linear layers and embeddings N(0, 0.02^2), biases 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class BlockWeights(NamedTuple):
    """What Block.step reads besides its attention's weights (KVCache.weights), taken out of the modules once
    per sampler: a parameter read through a module (self.ln_1.weight) costs about a microsecond of Python,
    and the modules' own calls as much again, at every one of the D steps."""
    attention: CausalSelfAttention  # the block's attention layer (its step keeps its weights in the KVCache)
    ln_1: tuple  # F.layer_norm's arguments after the input: (normalized_shape, weight, bias, eps)
    ln_2: tuple
    fc: tuple  # F.linear's arguments after the input: (W_1, b_1)
    proj: tuple  # (W_2, b_2)
    gelu: str  # nn.GELU's `approximate` ("none": the exact GELU)


layer_norm = torch.layer_norm  # what F.layer_norm calls (the same kernel), without its Python wrapper


def layer_norm_args(ln: nn.LayerNorm) -> tuple:
    """What nn.LayerNorm passes to F.layer_norm after the input."""
    return ln.normalized_shape, ln.weight, ln.bias, ln.eps


def linear_args(linear: nn.Linear) -> tuple:
    """What nn.Linear passes to F.linear after the input."""
    return linear.weight, linear.bias


class Block(nn.Module):
    """Pre-LN transformer block: h + Attention(LN(h)), then h + MLP(LN(h))."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int, window: Optional[int]):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, window=window)  # j <= i: inputs are shifted right
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, h, cache: Optional[KVCache] = None):
        h = h + self.attn(self.ln_1(h), cache=cache)  # (B, T, E)
        return h + self.mlp(self.ln_2(h))  # (B, T, E)

    def step_weights(self) -> BlockWeights:
        """The tensors `step` reads, fetched from the modules once (the attention's: its own step_weights)."""
        return BlockWeights(self.attn, layer_norm_args(self.ln_1), layer_norm_args(self.ln_2),
                            linear_args(self.mlp.fc), linear_args(self.mlp.proj), self.mlp.act.approximate)

    def step(self, h: torch.Tensor, cache: KVCache, weights: Optional[BlockWeights] = None) -> torch.Tensor:
        """One new position, h (B, E) -> (B, E): forward(h[:, None], cache)[:, 0] in fewer operations (the
        functional ops forward's modules call, on `weights` = step_weights(), read once by the sampler)."""
        w = self.step_weights() if weights is None else weights
        h = h + w.attention.step(layer_norm(h, *w.ln_1), cache)  # (B, E)
        u = F.gelu(F.linear(layer_norm(h, *w.ln_2), *w.fc), approximate=w.gelu)  # (B, mlp_ratio*E): GELU(W_1 LN(h))
        return h + F.linear(u, *w.proj)  # (B, E): h + W_2 u


class TransformerCache:
    """What the cached sampler keeps: one KVCache per block (room for all D positions, allocated
    once), how many positions were fed, and (set by the first step) the sequence order and the
    position embeddings of every sequence position in that order."""

    def __init__(self, n_layers: int, positions: Optional[int] = None):
        self.layers = [KVCache(capacity=positions) for _ in range(n_layers)]
        self.fed = 0
        self.order, self.rank = None, None  # the sequence order, set by the first step
        self.given = None  # the order= tensor the first step was given (later steps pass the same one)
        self.previous = None  # previous[d]: the flat position of the token before sequence position d
        self.where = None  # (row, column, channel) embeddings of every sequence position, (D, E) each
        self.mode = None  # StepMode: how a one-position step runs
        self.weights = None  # Block.step_weights() of every block, read by the first step
        self.token_weight = None  # the token embedding table (K, E)
        self.head = None  # F.layer_norm's arguments of ln_f and F.linear's of the head


@dataclass
class PixelTransformerConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    dim: int = 64  # E, the width of every token's hidden state
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4  # the MLP's hidden layer is mlp_ratio * dim wide
    window: Optional[int] = None  # local attention: each token reads only the `window` most recent
    # tokens (sub-pixels when C = 3); e.g. 2*W*C reaches about two rows back
    probe_layer: Optional[int] = None  # the block `features` reads by default (None: n_layers // 2)
    num_classes: Optional[int] = None  # class-conditional: one learned start token per class


class PixelTransformer(ARModel):
    """Decoder-only transformer over sub-pixel tokens in any order (raster by default), K-way softmax output."""

    any_order = True

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = PixelTransformerConfig(shape=self.shape, levels=self.levels, **kwargs)
        if cfg.dim % cfg.n_heads:
            raise ValueError(f"dim={cfg.dim} must be a multiple of n_heads={cfg.n_heads}")
        if cfg.n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {cfg.n_layers}")
        self.config = cfg
        self.set_classes(cfg.num_classes)
        C, H, W = self.shape
        E, K = cfg.dim, self.levels
        self.token_emb = nn.Embedding(K, E)  # the value a token holds
        self.start = nn.Parameter(torch.zeros(E))  # the learned start token, input of position 0
        self.row_emb = nn.Embedding(H, E)  # where the predicted token lies: row i,
        self.col_emb = nn.Embedding(W, E)  # column j
        self.channel_emb = nn.Embedding(C, E)  # and channel c
        self.blocks = nn.ModuleList([Block(E, cfg.n_heads, cfg.mlp_ratio, cfg.window) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(E)
        self.head = nn.Linear(E, K)
        if cfg.num_classes is not None:
            self.class_start = nn.Embedding(cfg.num_classes, E)  # the start token of each class
        self.apply(gpt2_init)

    def order_or_default(self, order=None) -> torch.Tensor:
        """The order to read the dimensions in: `order`, or generation_order(), on the model's device. (D,)"""
        return (self.generation_order() if order is None else order).to(self.model_device)

    @property
    def pos(self) -> torch.Tensor:
        """(row, column, channel) of the token each sequence position predicts, in the default order: (3, D)."""
        C, H, W = self.shape
        where = self.order_or_default()
        return torch.stack([where % (H * W) // W, where % W, where // (H * W)])  # (3, D)

    def sequence(self, x: torch.Tensor, order=None) -> torch.Tensor:
        """Integer images (B, C, H, W) -> token sequences (B, D), the dimensions listed in `order`
        (default: raster, channels within a pixel)."""
        return x.flatten(1)[:, self.order_or_default(order)]  # (B, D)

    def where_embeddings(self, where: torch.Tensor):
        """(row, column, channel) embeddings of the dimensions at flat positions `where` (T,): (T, E) each."""
        C, H, W = self.shape
        return self.row_emb(where % (H * W) // W), self.col_emb(where % W), self.channel_emb(where // (H * W))

    def start_token(self, n: int, y=None) -> torch.Tensor:
        """The input of sequence position 0, (n, E): the learned start token, or the class's for a class-conditional model."""
        return self.start.expand(n, -1) if y is None else self.class_start(y)  # (n, E)

    def embed(self, seq: torch.Tensor, first: int = 0, last: Optional[int] = None, order=None, y=None) -> torch.Tensor:
        """Inputs of positions first..last-1: (B, last-first, E). Position t holds the token before it
        (position 0 the start token: the class's, for a class-conditional model), plus the embedding
        of where the token it predicts lies (its row, column and channel)."""
        B, D = seq.shape
        last = D if last is None else last
        h = self.token_emb(seq[:, max(first - 1, 0):last - 1])  # x_{t-1}: the right shift
        if first == 0:
            h = torch.cat([self.start_token(B, y)[:, None], h], dim=1)  # (B, last-first, E)
        row, col, channel = self.where_embeddings(self.order_or_default(order)[first:last])  # of the predicted tokens
        return h + row + col + channel  # (B, last-first, E)

    def hidden(self, x: torch.Tensor, layers: Optional[int] = None, order=None, y=None) -> torch.Tensor:
        """Hidden states (B, D, E), in sequence order, after the first `layers` blocks (default: all)."""
        h = self.embed(self.sequence(x, order), order=order, y=y)  # (B, D, E)
        for block in self.blocks[:layers]:
            h = block(h)  # (B, D, E)
        return h

    def logits(self, x: torch.Tensor, y=None, order=None) -> torch.Tensor:
        """Unnormalised scores (B, C, H, W, K) for integer images x (B, C, H, W)."""
        out = self.head(self.ln_f(self.hidden(x, order=order, y=y)))  # (B, D, K), in sequence order
        flat = torch.empty_like(out)
        flat[:, self.order_or_default(order)] = out  # back to flat positions
        return flat.view(x.shape + (self.levels,))  # (B, C, H, W, K)

    def conditionals(self, x, y=None, *, order=None, filled=None):
        return torch.log_softmax(self.logits(x, y, order), dim=-1)  # (B, C, H, W, K)

    def features(self, x: torch.Tensor, layer=None) -> torch.Tensor:
        """ImageGPT's representation: hidden states after block `layer` (1..n_layers; default
        config.probe_layer or the middle one), averaged over positions: (B, E).
        layer="all": the same after every block, from one forward pass: (B, n_layers, E)."""
        x = self.check_input(x)
        n = self.config.n_layers
        if isinstance(layer, str):
            if layer != "all":
                raise ValueError(f"layer must be a block number 1..{n}, None or 'all', got {layer!r}")
            h, pooled = self.embed(self.sequence(x), y=None), []  # (B, D, E)
            for block in self.blocks:
                h = block(h)  # (B, D, E)
                pooled.append(h.mean(dim=1))  # (B, E)
            return torch.stack(pooled, dim=1)  # (B, n_layers, E)
        layer = (self.config.probe_layer or max(n // 2, 1)) if layer is None else int(layer)
        if not 1 <= layer <= n:
            raise ValueError(f"layer must lie in 1..{n} (the blocks), got {layer}")
        return self.hidden(x, layer).mean(dim=1)  # (B, D, E) -> (B, E)

    # ------------------------------------------------------- cached sampling
    def init_cache(self, x, y=None):
        return TransformerCache(len(self.blocks), positions=self.dims)

    def conditional_logprobs(self, x, index, y=None, cache=None, order=None, filled=None):
        """log p(x_d = . | earlier) for the dimensions in `index` (flat positions), (n, S, K); the sequence
        follows `order` (default: generation_order()). With a cache (one dimension per step): feeding only
        the tokens the cache lacks. Without (the naive sampler): the sequence up to the last of them,
        recomputed from scratch (the positions after it cannot matter: attention is causal)."""
        if cache is None:
            return self.prefix_logprobs(x, index, y, order)
        if index.shape[0] != 1:
            raise ValueError("the cached sampler generates one token per step")
        if cache.order is None:
            self.start_cache(cache, order)
        elif order is not None and order is not cache.given and not torch.equal(order.to(cache.order.device),
                                                                                 cache.order):
            raise ValueError("the order changed during sampling: start a new init_cache for a new order")
        d = cache.rank[index.item()]  # its place in the sequence
        if d < cache.fed:
            raise ValueError(f"the cached sampler follows its order: sequence position {d} was already fed")
        if d == cache.fed:  # one new position (every step, unless given dimensions were skipped)
            with cache.mode:  # one CPU thread, inference mode: a step's operations are tiny
                h = self.embed_step(x, d, cache, y)  # (n, E)
                for block, kv, w in zip(self.blocks, cache.layers, cache.weights):
                    h = block.step(h, kv, w)  # (n, E), keys/values of the past come from kv
                logits = F.linear(layer_norm(h, *cache.head[0]), *cache.head[1])  # (n, K): head(ln_f(h))
        else:  # the positions fed..d at once
            with torch.inference_mode():  # no autograd bookkeeping at all
                seq = self.sequence(x, cache.order)  # (n, D)
                h = self.embed(seq, cache.fed, d + 1, cache.order, y)  # (n, d+1-fed, E): only the new positions
                for block, kv in zip(self.blocks, cache.layers):
                    h = block(h, kv)  # (n, d+1-fed, E)
                logits = self.head(self.ln_f(h[:, -1]))  # (n, K)
        cache.fed = d + 1
        return torch.log_softmax(logits, dim=-1)[:, None]  # (n, 1, K)

    def start_cache(self, cache: TransformerCache, order=None) -> None:
        """The first step's bookkeeping: the sequence order and its inverse, the token before each
        position, the position embeddings in that order, and the weights every step reads."""
        cache.order, cache.given = self.order_or_default(order), order
        cache.rank = orders.rank(cache.order).tolist()  # flat position -> place in the sequence
        cache.previous = [None] + cache.order[:-1].tolist()
        with torch.inference_mode():
            cache.where = self.where_embeddings(cache.order)  # (D, E) each, in sequence order
        cache.mode = StepMode(cache.order.device, onednn=False)  # how a step runs: one CPU thread, inference
        # mode, GELU through torch's own kernel (oneDNN's costs more to set up than a (n, 4E) row's arithmetic)
        cache.weights = [block.step_weights() for block in self.blocks]
        cache.token_weight = self.token_emb.weight  # (K, E)
        cache.head = layer_norm_args(self.ln_f), linear_args(self.head)

    def embed_step(self, x: torch.Tensor, d: int, cache: TransformerCache, y=None) -> torch.Tensor:
        """embed(seq, d, d + 1)[:, 0] from the canvas x: the token before sequence position d (the start
        token at d = 0) plus where the token at d lies. (n, E)"""
        if d == 0:
            h = self.start_token(x.shape[0], y)  # (n, E)
        else:
            h = cache.token_weight.index_select(0, x.flatten(1)[:, cache.previous[d]])  # (n, E): x_{d-1}, the right
            # shift (what token_emb's lookup gives)
        row, col, channel = cache.where
        return h + row[d] + col[d] + channel[d]  # (n, E)

    def prefix_logprobs(self, x, index, y=None, order=None) -> torch.Tensor:
        """The naive sampler's step: log p(x_d = . | earlier) for the dimensions in `index` (flat positions),
        (n, S, K), from one forward pass over the sequence positions 0..d_last only (the last position
        `index` needs; the later ones cannot change these outputs, attention being causal)."""
        order = self.order_or_default(order)
        places = orders.rank(order)[index.to(order.device)]  # (S,) places in the sequence
        last = int(places.max()) + 1
        h = self.embed(self.sequence(x, order), 0, last, order, y)  # (n, last, E)
        for block in self.blocks:
            h = block(h)  # (n, last, E)
        return torch.log_softmax(self.head(self.ln_f(h[:, places])), dim=-1)  # (n, S, K)
