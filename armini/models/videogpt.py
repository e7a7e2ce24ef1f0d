"""VideoGPT (Yan, Zhang, Abbeel & Srinivas, 2021): a 3D VQ-VAE and a GPT over its video tokens (lesson 18).

Lesson 12's two-stage recipe one dimension up. A video tokenizer (armini.tokenizers.video.VQVAE3D) turns
a video (T, C, H, W) into a small grid of tokens (T', h, w) (an 8 x 16 x 16 Moving MNIST video -> 4 x 4 x 4
= 64 tokens instead of 2048 pixels), and a GPT models the grid in raster order (t, i, j):

    p(z) = prod_p p(z_p | z_<p),   p = (t * h + i) * w + j                 (64 steps, not 2048)
    x = dec(z)

The prior (`VideoTokenPrior`) is a decoder-only transformer (armini.models.transformer's pre-LN blocks,
causal attention, GPT-2 initialisation): its input at position p is the token before it (a learned start
token at p = 0: the right shift) plus the position of the token it predicts, as a sum of three learned
tables, one per axis (VideoGPT's factorised position embedding):

    h_p = E_token[z_{p-1}] + E_time[t] + E_row[i] + E_col[j]

so with a causal (j <= p) mask the logits of z_p read z_<p only. Sampling feeds one token per step through
a KV cache (armini.nn.attention.KVCache); `sample(cached=False)` recomputes everything and draws the very
same videos.

Attention, `attention=`:
    "full"         every position reads every earlier one (GPT)
    "block-local"  the Video Transformer's block-local attention (Weissenborn et al. 2020): a position reads
                   only the earlier positions of its own 3D block (armini.nn.attention.block_local_mask).
                   `block` is one block shape (t, h, w) for every layer, or a list of shapes the layers take
                   in turn; the default alternates a spatial tube through all time slices, (T', h/2, w/2), and
                   a whole time slice, (1, h, w), so that information travels between blocks (the paper, too,
                   changes the block shape from layer to layer). Masked, it costs what full attention costs.

Likelihood (as every two-stage model, armini.models.token_ar.TwoStage): the encoder is deterministic, so

    -log2 p(x) <= -log2 p(z) - log2 p(x | z),   z = enc(x)               (nll_is_bound = True)

in pixel-space bits/dim; `loss` is the prior's bits per token on the tokens of the frozen tokenizer, and
`fit_stages` trains the tokenizer, then the prior.

Continuing a video, `sample(n, context=first_frames)`: the first k frames (k a multiple of the tokenizer's
time_down, 2 by default) are encoded as a clip, their k / time_down token slices are kept and the prior
draws the rest; the decoded video keeps the given frames exactly. The tokenizer's encoder is causal in time,
so the context's tokens are exactly those of any training video that starts with these frames.

Class conditioning (num_classes, as TwoStage): the start token is a learned vector per class, with a null
class and label dropout for classifier-free guidance (sample(y=..., guidance=w)). Moving MNIST's labels
are the classes of two digits per video (VideoData.labels, (N, 2)): pick one label per video yourself.

    model = VideoGPT(shape=(8, 1, 16, 16), levels=256)
    hist = model.fit_stages(videos, test, steps=(300, 300), clock=time.process_time)
    more = model.sample(4, context=test.videos[:4, :2])    # continue the first 2 frames: (4, 8, 1, 16, 16)

Deviations from VideoGPT: tiny sizes; the prior embeds token indices with a table of its own (the paper
reads the codebook vectors through a linear layer), its position tables are summed (the paper concatenates
three of a third of the width each), its output layer is initialised as GPT-2's (the paper: zeros), no
dropout; the tokenizer's encoder is causal in time and has no axial attention (armini.tokenizers.video);
2x time, 4x space downsampling (the paper's Moving MNIST setting downsamples 4x in both).

Legend: B batch, T frames, C channels, H, W frame size, K pixel levels, T', h, w the token grid,
L = T' * h * w tokens, V codebook size, E the transformer's width, n videos drawn.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.attention import CausalSelfAttention, block_local_mask
from ..tokenizers.video import VQVAE3D
from .base import ARModel, VideoARModel
from .token_ar import TwoStage, build_tokenizer, missing_pixels
from .transformer import Block, TransformerCache, gpt2_init

__all__ = ["VideoGPT", "VideoTokenPrior", "VideoTokenPriorConfig", "ATTENTIONS", "default_blocks", "layer_blocks",
           "video_observed_tokens"]

ATTENTIONS = ("full", "block-local")


def default_blocks(grid) -> tuple:
    """The block shapes block-local attention takes in turn by default, for a token grid (T', h, w): a tube of
    (h/2) x (w/2) positions through every time slice, then a whole time slice (rounded up)."""
    t, h, w = grid
    return ((t, -(-h // 2), -(-w // 2)), (1, h, w))


def layer_blocks(grid, block, n_layers: int) -> list:
    """The block shape of each of n_layers layers: `block` is one shape (t, h, w) for all, a list of shapes
    taken in turn, or None (default_blocks)."""
    block = default_blocks(grid) if block is None else block
    try:
        shapes = [tuple(block)] if all(isinstance(b, (int, float)) for b in block) else [tuple(b) for b in block]
    except TypeError:
        raise ValueError(f"block must be a shape (t, h, w) or a list of such shapes, got {block!r}") from None
    if not shapes or any(len(s) != 3 for s in shapes):
        raise ValueError(f"block must be a shape (t, h, w) or a list of such shapes, got {block!r}")
    return [tuple(int(b) for b in shapes[layer % len(shapes)]) for layer in range(n_layers)]


class LocalBlock(Block):
    """A pre-LN transformer block (armini.models.transformer.Block) whose causal attention also stays inside a
    3D block of the token grid (block_local_mask on top of j <= i)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int, grid, block):
        super().__init__(dim, n_heads, mlp_ratio, window=None)
        self.block = tuple(block)
        self.attn = CausalSelfAttention(dim, n_heads, mask=block_local_mask(grid, block))


@dataclass
class VideoTokenPriorConfig:
    dim: int = 64  # E, the width of every position's hidden state
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4  # the MLP's hidden layer is mlp_ratio * dim wide
    attention: str = "full"  # one of ATTENTIONS
    block: Optional[tuple] = None  # "block-local": a block shape (t, h, w) or a list of them (None: default_blocks)
    num_classes: Optional[int] = None  # class-conditional: one learned start token per class


class VideoTokenPrior(ARModel):
    """A GPT over a (T', h, w) token grid in raster order (t, i, j), factorised position embeddings, KV cache."""

    unit = "bits/token"

    def __init__(self, shape=(4, 4, 4), levels: int = 256, **kwargs):
        super().__init__(shape, levels)
        cfg = VideoTokenPriorConfig(**kwargs)
        if cfg.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {cfg.attention!r}")
        if cfg.dim % cfg.n_heads:
            raise ValueError(f"dim={cfg.dim} must be a multiple of n_heads={cfg.n_heads}")
        if cfg.n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {cfg.n_layers}")
        if cfg.attention == "full" and cfg.block is not None:
            raise ValueError("block= is for attention='block-local'; full attention has no blocks")
        self.config = cfg
        self.set_classes(cfg.num_classes)
        t, h, w = self.shape
        E = cfg.dim
        self.token_emb = nn.Embedding(self.levels, E)  # the token a position holds (the one before it)
        self.start = nn.Parameter(torch.zeros(E))  # the learned start token, input of position 0
        if cfg.num_classes is not None:
            self.class_start = nn.Embedding(cfg.num_classes, E)  # the start token of each class
        self.time_emb = nn.Embedding(t, E)  # where the predicted token lies: time slice t,
        self.row_emb = nn.Embedding(h, E)  # row i,
        self.col_emb = nn.Embedding(w, E)  # column j
        where = torch.arange(self.dims)
        pos = torch.stack([where // (h * w), where // w % h, where % w])  # (3, L): (t, i, j) of every position
        self.register_buffer("pos", pos, persistent=False)
        if cfg.attention == "full":
            self.blocks = nn.ModuleList(Block(E, cfg.n_heads, cfg.mlp_ratio, window=None) for _ in range(cfg.n_layers))
        else:
            blocks = layer_blocks(self.shape, cfg.block, cfg.n_layers)
            self.blocks = nn.ModuleList(LocalBlock(E, cfg.n_heads, cfg.mlp_ratio, self.shape, b) for b in blocks)
        self.ln_f = nn.LayerNorm(E)
        self.head = nn.Linear(E, self.levels)
        self.apply(gpt2_init)

    def generation_order(self) -> torch.Tensor:
        """Raster order over the token grid, (t, i, j): flat positions 0, 1, ..., L-1."""
        return torch.arange(self.dims)

    def embed(self, seq: torch.Tensor, first: int = 0, last: Optional[int] = None, y=None) -> torch.Tensor:
        """Inputs of positions first..last-1: (B, last-first, E). Position p holds token p-1 (position 0 the start
        token, the class's for a class-conditional prior) plus E_time[t] + E_row[i] + E_col[j] of token p."""
        B, L = seq.shape
        last = L if last is None else last
        h = self.token_emb(seq[:, max(first - 1, 0):last - 1])  # z_{p-1}: the right shift
        if first == 0:
            start = self.start.expand(B, 1, -1) if y is None else self.class_start(y)[:, None]  # (B, 1, E)
            h = torch.cat([start, h], dim=1)  # (B, last-first, E)
        t, i, j = self.pos[:, first:last]  # (last-first,) each
        return h + self.time_emb(t) + self.row_emb(i) + self.col_emb(j)  # (B, last-first, E)

    def conditionals(self, x, y=None):
        """log p(z_p = v | z_<p) for every token, in one pass: (B, T', h, w, V)."""
        h = self.embed(x.flatten(1), y=y)  # (B, L, E)
        for block in self.blocks:
            h = block(h)  # (B, L, E)
        return torch.log_softmax(self.head(self.ln_f(h)), dim=-1).view(x.shape + (self.levels,))  # (B, T', h, w, V)

    # ------------------------------------------------------- cached sampling
    def init_cache(self, x, y=None):
        return TransformerCache(len(self.blocks), positions=self.dims)  # one KVCache per block

    def conditional_logprobs(self, x, index, y=None, cache=None):
        """log p(z_p = . | z_<p) of the one token p in `index`, feeding the positions the cache lacks: (n, 1, V)."""
        if cache is None:  # the naive sampler: a full forward pass
            return super().conditional_logprobs(x, index, y)
        p = int(index[0])
        if index.shape[0] != 1 or p < cache.fed:
            raise ValueError("the cached sampler generates one token per step, in raster order: start a new "
                             "init_cache")
        with torch.inference_mode():
            h = self.embed(x.flatten(1), cache.fed, p + 1, y)  # (n, p+1-fed, E): only the new positions
            for block, kv in zip(self.blocks, cache.layers):
                h = block(h, kv)  # keys/values of the past come from kv
            cache.fed = p + 1
            return torch.log_softmax(self.head(self.ln_f(h[:, -1:])), dim=-1)  # (n, 1, V)

    def extra_repr(self) -> str:
        blocks = "" if self.config.attention == "full" else f", blocks={[b.block for b in self.blocks]}"
        return f"grid={self.shape}, levels={self.levels}, attention={self.config.attention!r}{blocks}"


def video_observed_tokens(observed, video_shape, token_shape) -> torch.Tensor:
    """Which tokens a partial video fixes: a bool mask over pixels broadcastable to (B, T, C, H, W) -> (B, T', h, w),
    True for a token whose whole patch (T/T' frames x H/h x W/w pixels, every channel) is observed. A mask that
    already has the token grid's shape (B, T', h, w) is returned as it is."""
    observed = torch.as_tensor(observed, dtype=torch.bool)
    if observed.dim() == 4 and tuple(observed.shape[1:]) == tuple(token_shape):
        return observed
    T, C, H, W = video_shape
    try:
        observed = observed.expand(observed.shape[:-4] + (T, C, H, W) if observed.dim() >= 4 else (1, T, C, H, W))
    except RuntimeError:
        grid = ", ".join(map(str, token_shape))
        raise ValueError(f"observed must be a bool mask broadcastable to (B, {T}, {C}, {H}, {W}) (pixels) or of "
                         f"shape (B, {grid}) (tokens), got {tuple(observed.shape)}") from None
    missing = missing_pixels(observed.reshape(-1, C, H, W), (C, H, W), "(B, T', h, w)")  # (B*T, 1, H, W)
    missing = missing.view(-1, 1, T, H, W)  # (B, 1, T, H, W): 1 where some channel is missing
    return F.adaptive_max_pool3d(missing, tuple(token_shape))[:, 0] == 0  # (B, T', h, w)


class VideoGPT(TwoStage, VideoARModel):
    """A 3D VQ-VAE and a GPT over its (T', h, w) tokens: log_prob is the pixel-space bound, loss the prior's bits
    per token, sample(n, context=first_frames) draws tokens in raster order then decodes them."""

    def __init__(self, shape=(8, 1, 16, 16), levels=256, tokenizer=None, attention: Optional[str] = None,
                 block=None, **kwargs):
        kwargs.setdefault("prior", "video-gpt")
        if kwargs["prior"] != "video-gpt":
            raise ValueError(f"VideoGPT's prior is its video GPT (prior='video-gpt'), got {kwargs['prior']!r}")
        prior_kwargs = dict(kwargs.pop("prior_kwargs", None) or dict(dim=64, n_layers=4, n_heads=4))
        if attention is not None:  # shortcuts: VideoGPT(attention="block-local"), -o attention=block-local
            prior_kwargs["attention"] = attention
        if block is not None:
            prior_kwargs["block"] = block
        kwargs["prior_kwargs"] = prior_kwargs
        if tokenizer is None or isinstance(tokenizer, dict):
            settings = {k: v for k, v in (tokenizer or {}).items() if k not in ("video_shape", "levels")}
            tokenizer = VQVAE3D(video_shape=tuple(shape), levels=levels, **settings)
        elif tuple(getattr(tokenizer, "shape", ())) != tuple(int(s) for s in shape):
            build_tokenizer(tokenizer, shape, int(levels))  # a clear error if it is no tokenizer at all
            raise ValueError(f"the tokenizer reads videos of shape {tuple(getattr(tokenizer, 'shape', ()))}, this "
                             f"model's shape is {tuple(shape)}")
        super().__init__(shape, levels, tokenizer=tokenizer, **kwargs)
        config = getattr(self.tokenizer, "config", None)
        if config is not None:  # the settings that rebuild the tokenizer (its shape and levels are the model's)
            self.config.tokenizer = {k: v for k, v in asdict(config).items() if k not in ("video_shape", "levels")}

    def build_prior(self, num_classes: Optional[int]) -> ARModel:
        return VideoTokenPrior(self.token_shape, self.tokenizer.codebook_size, num_classes=num_classes,
                               **self.config.prior_kwargs)

    @property
    def time_down(self) -> int:
        """Frames per token slice (T / T')."""
        return self.frames // self.token_shape[0]

    # -------------------------------------------------------------- likelihood
    def log_prob_pixels(self, x, y=None):
        """Each pixel's share of the bound, in nats: log p(x_d | z) + log p(z) / D, z = enc(x): (B, T, C, H, W).
        They sum to the bound log_prob(x); they are not conditionals p(x_d | x_<d)."""
        z = self.encode(x)  # (B, T', h, w)
        with self.trusted(self.prior):
            prior = self.prior.log_prob(z, self.prior_labels(y, len(x)))  # (B,) log p(z)
        return self.decoder_log_prob_pixels(x, z) + (prior / self.dims).view(-1, 1, 1, 1, 1)  # (B, T, C, H, W)

    # ---------------------------------------------------------------- sampling
    def observed_tokens(self, observed) -> torch.Tensor:
        """The tokens a partial video fixes (a pixel mask -> a token mask; see `video_observed_tokens`)."""
        return video_observed_tokens(observed, self.shape, self.token_shape)

    def context_tokens(self, context: torch.Tensor) -> torch.Tensor:
        """Tokens of the first k frames (n, k, C, H, W), k a multiple of time_down: (n, k / time_down, h, w)."""
        k = context.shape[1]
        if k % self.time_down:
            fewer, more = k - k % self.time_down, k - k % self.time_down + self.time_down
            hint = f"{fewer} or {more}" if fewer else f"{more}"
            raise ValueError(f"context holds {k} frames, but VideoGPT's tokens cover {self.time_down} frames each "
                             f"(time_down): give a multiple of {self.time_down} frames, e.g. {hint}")
        if k >= self.frames:
            raise ValueError(f"context holds {k} frames, but this model generates T={self.frames}: give fewer")
        context = self.tokenizer.check_input(context.to(self.model_device), "context", clip=True)  # values in [0, K)
        return self.encode(context)  # (n, k / time_down, h, w): the clip alone

    @torch.no_grad()
    def sample(self, n: int, *, context: Optional[torch.Tensor] = None, x=None, observed=None, y=None,
               guidance: float = 0.0, generator=None, temperature: float = 1.0, top_k: Optional[int] = None,
               callback=None, cached: bool = True, progress: bool = False, order=None) -> torch.Tensor:
        """Draw n videos (n, T, C, H, W): tokens from the prior in raster order (callback sees each token step),
        then decoded.

        context: the first k frames, (n, k, C, H, W) or (k, C, H, W) for all n, k a multiple of time_down: their
            tokens are kept, the rest drawn, and the given frames come back unchanged.
        x, observed: any partial videos (tokens whose whole patch is observed are kept; observed pixels are
            kept in the output). y, guidance, temperature, top_k, generator, cached: as TwoStage.sample."""
        if order is not None:
            raise ValueError("VideoGPT samples its tokens in raster order (t, i, j) (no order=)")
        if context is None:
            out = super().sample(n, x=x, observed=observed, y=y, guidance=guidance, generator=generator,
                                 temperature=temperature, top_k=top_k, callback=callback, cached=cached,
                                 progress=progress)  # (n, T, C, H, W)
            if x is not None:  # the observed pixels as given
                out = torch.where(torch.as_tensor(observed, device=out.device).expand_as(out), x.to(out.device), out)
            return out
        if x is not None or observed is not None:
            raise ValueError("pass either context= (the first frames) or x= and observed=, not both")
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of videos, got {n!r}")
        n = int(n)
        context = self.check_context(context, n).to(self.model_device)  # (n, k, C, H, W)
        given = self.context_tokens(context)  # (n, k', h, w)
        tokens = torch.zeros((n,) + self.token_shape, dtype=torch.long, device=given.device)  # (n, T', h, w)
        tokens[:, :given.shape[1]] = given
        kept = torch.zeros_like(tokens, dtype=torch.bool)
        kept[:, :given.shape[1]] = True
        z = self.sample_tokens(n, tokens=tokens, observed=kept, y=y, guidance=guidance, generator=generator,
                               temperature=temperature, top_k=top_k, callback=callback, cached=cached,
                               progress=progress)  # (n, T', h, w)
        out = self.decode(z)  # (n, T, C, H, W)
        out[:, :context.shape[1]] = context  # the given frames, exactly
        return out

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, levels={self.levels}, token_shape={self.token_shape}, "
                f"attention={self.prior.config.attention!r}")
