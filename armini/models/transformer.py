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
the positions it has already seen), so a step costs O(D) instead of a whole forward pass O(D^2):
`sample(..., cached=False)` recomputes everything and draws the very same images.

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

Deviations from ImageGPT: tiny sizes; the position embedding is factorised, row + column +
channel embeddings (ImageGPT learns one vector per position); no dropout; colour is either three
sub-pixel tokens of K levels or a small palette (ImageGPT: 512 colours); a training step over
784 tokens is slow on a CPU (attention is O(D^2)): expect seconds per step at batch 32.

Legend: B batch, C, H, W image, K levels, D = C*H*W tokens, E embedding size (dim).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..nn.attention import CausalSelfAttention, KVCache
from .base import ARModel


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, dim)

    def forward(self, h):
        return self.proj(self.act(self.fc(h)))  # W_2 GELU(W_1 h)


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


class TransformerCache:
    """What the cached sampler keeps: one KVCache per block (room for all D positions, allocated
    once) and how many positions were fed."""

    def __init__(self, n_layers: int, positions: Optional[int] = None):
        self.layers = [KVCache(capacity=positions) for _ in range(n_layers)]
        self.fed = 0


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


class PixelTransformer(ARModel):
    """Decoder-only transformer over sub-pixel tokens in raster order, K-way softmax output."""

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = PixelTransformerConfig(shape=self.shape, levels=self.levels, **kwargs)
        if cfg.dim % cfg.n_heads:
            raise ValueError(f"dim={cfg.dim} must be a multiple of n_heads={cfg.n_heads}")
        if cfg.n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {cfg.n_layers}")
        self.config = cfg
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
        # (row, column, channel) of every sequence position d: raster order, channels within a pixel
        i, j, c = torch.meshgrid(torch.arange(H), torch.arange(W), torch.arange(C), indexing="ij")
        self.register_buffer("pos", torch.stack([i.flatten(), j.flatten(), c.flatten()]), persistent=False)  # (3, D)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)  # GPT-2's initialisation
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Integer images (B, C, H, W) -> token sequences (B, D) in raster order, channels within a pixel."""
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (B, H, W, C) -> (B, D)

    def embed(self, seq: torch.Tensor, first: int = 0, last: Optional[int] = None) -> torch.Tensor:
        """Inputs of positions first..last-1: (B, last-first, E). Position d holds x_{d-1} (position 0
        the start token), plus the embedding of where x_d lies."""
        B, D = seq.shape
        last = D if last is None else last
        h = self.token_emb(seq[:, max(first - 1, 0):last - 1])  # x_{d-1}: the right shift
        if first == 0:
            h = torch.cat([self.start.expand(B, 1, -1), h], dim=1)  # (B, last-first, E)
        i, j, c = self.pos[:, first:last]
        return h + self.row_emb(i) + self.col_emb(j) + self.channel_emb(c)  # (B, last-first, E)

    def hidden(self, x: torch.Tensor, layers: Optional[int] = None) -> torch.Tensor:
        """Hidden states (B, D, E) after the first `layers` blocks (default: all of them)."""
        h = self.embed(self.sequence(x))  # (B, D, E)
        for block in self.blocks[:layers]:
            h = block(h)  # (B, D, E)
        return h

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores (B, C, H, W, K) for integer images x (B, C, H, W)."""
        B, C, H, W = x.shape
        out = self.head(self.ln_f(self.hidden(x)))  # (B, D, K)
        return out.view(B, H, W, C, self.levels).permute(0, 3, 1, 2, 4)  # (B, C, H, W, K)

    def conditionals(self, x, y=None):
        return torch.log_softmax(self.logits(x), dim=-1)  # (B, C, H, W, K)

    def features(self, x: torch.Tensor, layer=None) -> torch.Tensor:
        """ImageGPT's representation: hidden states after block `layer` (1..n_layers; default
        config.probe_layer or the middle one), averaged over positions: (B, E).
        layer="all": the same after every block, from one forward pass: (B, n_layers, E)."""
        x = self.check_input(x)
        n = self.config.n_layers
        if isinstance(layer, str):
            if layer != "all":
                raise ValueError(f"layer must be a block number 1..{n}, None or 'all', got {layer!r}")
            h, pooled = self.embed(self.sequence(x)), []  # (B, D, E)
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

    def conditional_logprobs(self, x, index, y=None, cache=None):
        """log p(x_d = . | x_<d) for the one token d in `index`, feeding only the tokens the cache lacks."""
        if cache is None:
            return super().conditional_logprobs(x, index, y)  # the naive sampler: a full forward pass
        C, H, W = self.shape
        if index.shape[0] != 1:
            raise ValueError("the cached sampler generates one token per step (raster order)")
        c, p = divmod(int(index[0]), H * W)  # flat position -> channel c, pixel p = i*W + j
        d = p * C + c  # position in the sequence
        if d < cache.fed:
            raise ValueError(f"the cached sampler goes in raster order: position {d} was already fed")
        with torch.inference_mode():  # no autograd bookkeeping at all: faster than no_grad for small steps
            h = self.embed(self.sequence(x), cache.fed, d + 1)  # (n, d+1-fed, E): only the new positions
            for block, kv in zip(self.blocks, cache.layers):
                h = block(h, kv)  # (n, d+1-fed, E), keys/values of the past come from kv
            cache.fed = d + 1
            return torch.log_softmax(self.head(self.ln_f(h[:, -1:])), dim=-1)  # (n, 1, K)
