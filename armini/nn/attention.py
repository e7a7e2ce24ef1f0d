"""Causal self-attention: every position of a sequence reads the positions before it.

A transformer layer (Vaswani et al., 2017) mixes a sequence (B, T, dim) with

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V,    Q = x W_q,  K = c W_k,  V = c W_v

per head, where c is the sequence the keys and values come from (c = x: self-attention)
and M is 0 where query i may read key j and -inf elsewhere. An autoregressive model needs M causal:

    non-strict (GPT, ImageGPT):   j <= i   inputs are shifted right, position i holds x_{i-1}
    strict     (PixelSNAIL):      j <  i   keys/values carry the raw value x_j, so i must not read itself

With strict=True position 0 has no key at all and softmax over an empty set is 0/0 = NaN.
Such rows get a harmless stand-in (every key) and their output is then set to exactly 0,
so neither the forward nor the backward pass ever sees a NaN.

Local attention (Image Transformer, Parmar et al., 2018) shrinks M further: `window=w` keeps only
the w most recent keys (i-w < j <= i, or i-w <= j < i when strict), and `mask=` takes any fixed
(T, T) boolean pattern, e.g. `local_2d_mask` (the rows above and columns around a pixel).

Block-causal attention (VAR, Tian et al., 2024: next-scale prediction): the sequence is a list of
blocks (the token maps of scales 1x1, 2x2, 3x3, ...) and a position reads every position of its own
block and of all earlier blocks, never a later one. Within a block it reads forwards too, so the
layer is built with `causal=False` and `mask=block_causal_mask(sizes)`:

    sizes (1, 4, 9):   scale  1 2222 333333333
                       1      x . .
                       2      x x .            (each letter a block: x = may read, . = hidden)
                       3      x x x

Block-local attention over a 3D grid (Video Transformer, Weissenborn et al., 2020): the sequence is
a video's T x H x W grid in raster order (t, i, j) and the grid is cut into blocks of bt x bh x bw
positions; a position reads only positions of its own block, and the causal rule on top of that
(`mask=block_local_mask(grid, block)`, causal=True). A grid (2, 2, 4) in blocks (1, 2, 2), raster order:

    block:  t=0: 0 0 1 1    t=1: 2 2 3 3        position 5 (t=0, i=1, j=1) reads positions 0, 1, 4, 5
                 0 0 1 1         2 2 3 3        (its block 0, up to itself); never 2, 3 (block 1)

Here the layer masks the full (T, S) score matrix, so it costs what full attention costs; the paper
computes each block's attention apart (O(L * block) instead of O(L^2)). Several layers with different
block shapes let information travel between blocks (the paper alternates them, as armini's VideoGPT can).

KV cache for incremental decoding: pass `cache=KVCache(capacity=T)` and feed the sequence a few
positions at a time; the layer keeps the keys and values of every position it has seen, so each
call only computes the new positions and gives the same result as one call on the whole sequence.
`step(x, cache)` is that call for exactly one new position, x (B, in_dim), as a sampler makes it D times:
the same numbers in fewer operations (one matrix product for q, k and v, no mask, no (B, T, .) shapes, the
weights read once per sampler into `StepWeights` instead of through the modules at every step), since at
one position the cost of a step is the number of operations, not arithmetic.
(`attend` is the mechanism alone, for callers that keep their own keys and values: PixelSNAIL's
cached sampler in armini.fast.pixelsnail_cache.)

Memory: written out, attention holds a (B, nh, T, S) score matrix and its softmax, which grow with
T*S (a 512x512 image: T = S = 262144, about 512 GiB per head). Before allocating anything, `attend`
compares that estimate with the memory of the device and raises a MemoryError naming T, the GiB
needed and smaller alternatives (`check_attention_memory`, with armini.memory's NotEnoughMemory).

Legend: B batch, T positions (queries), S positions (keys), nh heads, dk / dv key / value size per head.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..memory import GIB, NotEnoughMemory, device_memory


def attention_mask(T: int, S: int, *, offset: int = 0, strict: bool = False, window: Optional[int] = None,
                   device=None) -> torch.Tensor:
    """allowed[t, s] = query at position offset+t may read key s: (T, S) bool.

    Causal: s <= i (s < i if strict). Local: only the `window` most recent of those keys."""
    i = torch.arange(offset, offset + T, device=device)[:, None]  # (T, 1) query positions
    s = torch.arange(S, device=device)[None, :]  # (1, S) key positions
    lag = i - s  # how far back key s lies
    first = 1 if strict else 0  # the most recent key a query may read
    allowed = lag >= first
    if window is not None:
        allowed = allowed & (lag < first + window)
    return allowed  # (T, S)


def block_causal_mask(sizes, device=None) -> torch.Tensor:
    """allowed[i, j] = position i may read position j, for a sequence made of blocks of `sizes`
    positions (block k: positions sum(sizes[:k]) .. sum(sizes[:k+1]) - 1): every position of its own
    block and of the blocks before it. (L, L) bool with L = sum(sizes). Use it with causal=False."""
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be a non-empty list of positive block sizes, got {sizes!r}")
    block = torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                    torch.tensor(sizes, device=device))  # (L,) the block of every position
    return block[None, :] <= block[:, None]  # (L, L): j's block is i's or an earlier one


def block_local_mask(grid, block, device=None) -> torch.Tensor:
    """allowed[p, q] = positions p and q of a 3D grid (T, H, W), listed in raster order (t, i, j), lie in the
    same block of `block` = (bt, bh, bw) positions: (L, L) bool with L = T*H*W. Block k along an axis covers
    k*b .. k*b + b - 1 (the last block of an axis is cut short when b does not divide it); a block as large as
    the grid is the whole grid (full attention). Use it with causal=True: the layer adds j <= i on top."""
    grid, block = tuple(int(s) for s in grid), tuple(block)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be the (T, H, W) sizes of a 3D grid, positive, got {grid!r}")
    if len(block) != 3 or any(isinstance(b, bool) or int(b) != b or b < 1 for b in block):
        raise ValueError(f"block must be 3 positive whole sizes (frames, rows, columns), e.g. (2, 2, 2), got {block!r}")
    t, i, j = torch.meshgrid(*(torch.arange(n, device=device) for n in grid), indexing="ij")  # (T, H, W) each
    nb = [-(-n // int(b)) for n, b in zip(grid, block)]  # blocks along each axis
    block_id = ((t // int(block[0])) * nb[1] + i // int(block[1])) * nb[2] + j // int(block[2])  # (T, H, W)
    block_id = block_id.flatten()  # (L,) the block of every position, raster order
    return block_id[:, None] == block_id[None, :]  # (L, L): same block


def local_2d_mask(H: int, W: int, rows: int, cols: int, C: int = 1) -> torch.Tensor:
    """A 2D neighbourhood over a raster sequence of H*W pixels with C sub-pixel tokens each: (T, T) bool.

    Token (i, j, c) may read tokens of pixels in rows i-rows..i and columns j-cols..j+cols
    (Image Transformer's 2D local attention, as a neighbourhood rather than fixed blocks).
    The causal mask is applied on top of it by the layer."""
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    i = i.flatten().repeat_interleave(C)  # (T,) row of every token
    j = j.flatten().repeat_interleave(C)  # (T,) column of every token
    near_row = (i[:, None] - i[None, :] >= 0) & (i[:, None] - i[None, :] <= rows)
    near_col = (j[:, None] - j[None, :]).abs() <= cols
    return near_row & near_col  # (T, T)


#: the most bytes attention may ask for (None: all the memory of the device, armini.memory.device_memory)
MAX_ATTENTION_BYTES: Optional[int] = None


def attention_bytes(B: int, n_heads: int, T: int, S: int, dtype=torch.float32) -> int:
    """Bytes of the (B, nh, T, S) score matrix Q K^T and of its softmax: what attention written out
    allocates. It grows with T * S: an H x W image has T = S = H*W positions, so doubling the side
    multiplies it by 16."""
    return 2 * B * n_heads * T * S * dtype.itemsize


def check_attention_memory(B: int, n_heads: int, T: int, S: int, dtype, device) -> None:
    """Raise NotEnoughMemory (armini.memory: a MemoryError), before anything is allocated, when the
    (B, nh, T, S) scores would not fit, instead of the allocator's raw error (a 512x512 image asks
    for hundreds of GB).

    The limit is MAX_ATTENTION_BYTES if set, else all the memory the device has: the fused kernels
    may need less than the written-out estimate, so only what could not fit even on an empty
    machine is refused (and MAX_ATTENTION_BYTES lets a user who knows better go further)."""
    need = attention_bytes(B, n_heads, T, S, dtype)
    device = torch.device(device)
    limit = MAX_ATTENTION_BYTES if MAX_ATTENTION_BYTES is not None else device_memory(device)
    if limit is None or need <= limit:  # None: a device whose memory is unknown
        return
    side = math.isqrt(T)
    image = f" (a {side}x{side} image)" if side * side == T else ""
    memory = "GPU memory" if device.type == "cuda" else "RAM"
    raise NotEnoughMemory(
        f"attention over T={T} positions{image} and S={S} keys, batch {B}, {n_heads} head(s), needs about "
        f"{need / GIB:,.1f} GiB for its (B, heads, T, S) scores and their softmax, more than the "
        f"{limit / GIB:,.1f} GiB of {memory} here. Attention memory grows with T*S: use fewer positions, "
        f"e.g. a smaller image (--size 14, or shape=(1, 14, 14): 4x fewer positions, 16x less memory), "
        f"or a smaller batch. (A local window does not help: this layer masks the full score matrix. "
        f"The fused kernels may need less: armini.nn.attention.MAX_ATTENTION_BYTES sets the limit.)"
    )


class KVCache:
    """Keys and values of every position one attention layer has seen so far, (B, nh, S, d) each.

    The buffers are allocated once, for `capacity` positions (the sequence length, when the model
    knows it), and each `extend` writes the new positions in place: adding a position copies that
    position only. (Appending with torch.cat would copy all the past at every step, O(D^2) copying
    for a sequence of D positions.) Past the capacity, or without one, the buffers double.

    `cache.k` and `cache.v` are the keys and values so far, (B, nh, S, d); assigning them starts the
    cache from given past keys and values. `cache.weights` holds the layer's StepWeights (its three input
    projections stacked into one, and the output projection), read by the layer's first `step` (the weights
    do not change while a sampler runs)."""

    def __init__(self, capacity: Optional[int] = None):
        self.capacity = capacity
        self._k = self._v = None  # buffers (B, nh, room, dk) and (B, nh, room, dv); positions < len(self) hold data
        self._length = 0
        self.weights = None  # StepWeights of the layer: CausalSelfAttention.step

    def __len__(self) -> int:
        return self._length

    @property
    def k(self) -> Optional[torch.Tensor]:
        return None if self._k is None else self._k[:, :, :self._length]  # (B, nh, S, dk), a view

    @k.setter
    def k(self, keys: Optional[torch.Tensor]):
        self._k, self._length = keys, (0 if keys is None else keys.shape[2])

    @property
    def v(self) -> Optional[torch.Tensor]:
        return None if self._v is None else self._v[:, :, :self._length]  # (B, nh, S, dv), a view

    @v.setter
    def v(self, values: Optional[torch.Tensor]):
        self._v = values

    def _grow(self, k: torch.Tensor, v: torch.Tensor, needed: int):
        """New buffers with room for at least `needed` positions (the capacity, or twice the old room),
        the past copied in."""
        room = 0 if self._k is None else self._k.shape[2]
        room = max(needed, self.capacity or 0, 2 * room)
        B, nh = k.shape[:2]
        new_k = k.new_empty(B, nh, room, k.shape[3])  # (B, nh, room, dk)
        new_v = v.new_empty(B, nh, room, v.shape[3])  # (B, nh, room, dv)
        S = self._length
        if S:
            new_k[:, :, :S] = self._k[:, :, :S]
            new_v[:, :, :S] = self._v[:, :, :S]
        self._k, self._v = new_k, new_v

    def extend(self, k: torch.Tensor, v: torch.Tensor):
        """Append the new positions' keys (B, nh, T, dk) and values (B, nh, T, dv); return all of them,
        (B, nh, S, dk) and (B, nh, S, dv) with S = len(self) (views of the buffers: no copy)."""
        first, S = self._length, self._length + k.shape[2]
        if self._k is not None and self._k.shape[:2] != k.shape[:2]:
            raise ValueError(f"this cache holds keys of (batch, heads) {tuple(self._k.shape[:2])}, got new keys "
                             f"of {tuple(k.shape[:2])}: use one KVCache per batch (start a new one)")
        if self._k is None or S > self._k.shape[2]:
            self._grow(k, v, S)
        self._k[:, :, first:S] = k
        self._v[:, :, first:S] = v
        self._length = S
        return self.k, self.v

    def append(self, k: torch.Tensor, v: torch.Tensor):
        """extend for exactly one new position, its keys (B, nh, dk) and values (B, nh, dv) (no position axis):
        the same buffers and views, with only the checks a sampler's step needs."""
        S = self._length
        if self._k is None or S == self._k.shape[2] or self._k.shape[0] != k.shape[0]:
            return self.extend(k[:, :, None], v[:, :, None])  # allocate, grow, or refuse another batch size
        self._k.select(2, S).copy_(k)  # (B, nh, dk) written in place: no copy of the past
        self._v.select(2, S).copy_(v)
        self._length = S + 1
        return self._k.narrow(2, 0, S + 1), self._v.narrow(2, 0, S + 1)  # (B, nh, S+1, dk), (B, nh, S+1, dv)


class StepWeights(NamedTuple):
    """What CausalSelfAttention.step reads, taken out of the modules once per sampler (a parameter read
    through a module, self.query.weight, costs about a microsecond of Python; a step reads several per layer)."""
    qkv_weight: torch.Tensor  # (2*key_dim + dim, in_dim): W_q, W_k, W_v stacked
    qkv_bias: Optional[torch.Tensor]  # (2*key_dim + dim,) or None
    out_weight: torch.Tensor  # (dim, dim): W_o
    out_bias: Optional[torch.Tensor]  # (dim,) or None
    n_heads: int
    sizes: tuple  # (key_dim, key_dim, dim): the widths of q, k and v in the stacked projection
    scale: float  # 1 / sqrt(d_k)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention: (B, T, in_dim) queries' input and (B, T, kv_dim) keys'/values'
    input at the same positions -> (B, T, dim).

    dim: value size (all heads) and output size; key_dim: query/key size (all heads, default dim);
    in_dim / kv_dim: input sizes (default dim / in_dim); strict: j < i instead of j <= i;
    window: local attention over the `window` most recent keys; mask: an extra fixed (T, T) bool pattern;
    causal: False drops the j <= i rule, so only `mask` decides (block_causal_mask: a block reads itself whole).
    """

    def __init__(self, dim: int, n_heads: int = 1, *, strict: bool = False, window: Optional[int] = None,
                 mask: Optional[torch.Tensor] = None, in_dim: Optional[int] = None,
                 kv_dim: Optional[int] = None, key_dim: Optional[int] = None, bias: bool = True,
                 causal: bool = True):
        super().__init__()
        in_dim = dim if in_dim is None else in_dim
        kv_dim = in_dim if kv_dim is None else kv_dim
        key_dim = dim if key_dim is None else key_dim
        if dim % n_heads or key_dim % n_heads:
            raise ValueError(f"dim={dim} and key_dim={key_dim} must be multiples of n_heads={n_heads}")
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of positions, got {window!r}")
        if not causal and (mask is None or strict or window is not None):
            raise ValueError("causal=False needs a mask= (e.g. block_causal_mask) and neither strict nor window: "
                             "without the j <= i rule nothing else would keep a position from reading the future")
        self.n_heads, self.strict, self.window, self.causal = n_heads, strict, window, causal
        self.scale = 1.0 / math.sqrt(key_dim // n_heads)  # 1 / sqrt(d_k)
        self.query = nn.Linear(in_dim, key_dim, bias=bias)  # W_q
        self.key = nn.Linear(kv_dim, key_dim, bias=bias)  # W_k
        self.value = nn.Linear(kv_dim, dim, bias=bias)  # W_v
        self.proj = nn.Linear(dim, dim, bias=bias)  # W_o, mixes the heads
        self.register_buffer("mask", None if mask is None else mask.bool(), persistent=False)

    def allowed(self, T: int, S: int, offset: int, device) -> torch.Tensor:
        """(T, S) bool: which keys each of the T new queries (positions offset..offset+T-1) may read."""
        if not self.causal:  # the mask alone decides (checked in __init__: there is one)
            return self.mask[offset:offset + T, :S].to(device)
        allowed = attention_mask(T, S, offset=offset, strict=self.strict, window=self.window, device=device)
        if self.mask is not None:
            allowed = allowed & self.mask[offset:offset + T, :S]
        return allowed

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, nh*d) -> (B, nh, T, d): each head's slice of the features."""
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, -1).transpose(1, 2)  # (B, nh, T, d)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *,
                cache: Optional[KVCache] = None, return_weights: bool = False):
        c = x if context is None else context  # keys and values come from c
        q = self.split_heads(self.query(x))  # (B, nh, T, dk)
        k = self.split_heads(self.key(c))  # (B, nh, T, dk)
        v = self.split_heads(self.value(c))  # (B, nh, T, dv)
        offset = 0
        if cache is not None:  # the past positions' keys and values are already there
            offset = len(cache)
            k, v = cache.extend(k, v)  # (B, nh, S, dk), (B, nh, S, dv) with S = offset + T
        return self.attend(q, k, v, offset, return_weights)

    def stacked_qkv(self):
        """W_q, W_k and W_v stacked into one (key_dim + key_dim + dim, in_dim) weight and its bias (None
        without biases): x W^T gives [q | k | v] in one matrix product, the same numbers as the three."""
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (2*key_dim + dim, in_dim)
        bias = None if self.query.bias is None else torch.cat([self.query.bias, self.key.bias, self.value.bias])
        return weight, bias

    def step_weights(self) -> StepWeights:
        """The weights `step` reads, fetched from the modules once (q, k and v stacked: stacked_qkv)."""
        sizes = (self.query.out_features, self.key.out_features, self.value.out_features)
        return StepWeights(*self.stacked_qkv(), self.proj.weight, self.proj.bias, self.n_heads, sizes, self.scale)

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new position, x (B, in_dim) -> (B, dim): forward(x[:, None], cache=cache)[:, 0], the step of a
        cached sampler. Its key and value join the cache and its query reads every key so far, so no mask
        is needed (a layer with a window, a mask or strict=True takes the general path)."""
        if self.window is not None or self.mask is not None or self.strict or not self.causal:
            return self(x[:, None], cache=cache)[:, 0]  # (B, dim)
        if cache.weights is None:
            cache.weights = self.step_weights()
        w = cache.weights
        B, nh = x.shape[0], w.n_heads
        q, k, v = F.linear(x, w.qkv_weight, w.qkv_bias).split_with_sizes(w.sizes, 1)  # (B, key_dim) twice, (B, dim)
        k, v = cache.append(k.view(B, nh, -1), v.view(B, nh, -1))  # (B, nh, S, dk), (B, nh, S, dv): every
        # position so far, this one last
        y = F.scaled_dot_product_attention(q.view(B, nh, 1, -1), k, v, scale=w.scale)  # (B, nh, 1, dv): the
        # (B, nh, 1, S) scores are tiny
        return F.linear(y.reshape(B, -1), w.out_weight, w.out_bias)  # (B, dim), heads side by side, W_o

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int = 0,
               return_weights: bool = False):
        """The queries q (B, nh, T, dk) of positions offset..offset+T-1 read the keys k (B, nh, S, dk) and
        values v (B, nh, S, dv) of positions 0..S-1, as the mask allows: output (B, T, dim), and the
        weights (B, nh, T, S) if return_weights. A query with no key to read outputs exactly 0."""
        B, nh, T, _ = q.shape
        S = k.shape[2]
        check_attention_memory(B, nh, T, S, q.dtype, q.device)  # before any (T, S) tensor exists
        if (not return_weights and self.window is None and self.mask is None and offset == 0 and S == T
                and T > self.strict):
            # the plain causal mask: is_causal=True lets the fused kernel skip the hidden half. Strict
            # (j < i) is the non-strict mask between query i+1 and keys 0..i: shift the queries by one
            s = int(self.strict)
            y = F.scaled_dot_product_attention(q[:, :, s:], k[:, :, :T - s], v[:, :, :T - s],
                                               is_causal=True, scale=self.scale)  # (B, nh, T-s, dv)
            y = F.pad(y, (0, 0, s, 0))  # (B, nh, T, dv), strict: row 0 is zero
            empty = (torch.arange(T, device=q.device) < s)[:, None]  # (T, 1) strict: position 0 has no key
        elif (not return_weights and self.window is None and self.mask is None and T == 1
              and 0 < S <= offset + 1 - self.strict):
            # one new query that may read every key so far (a step of a cached sampler): no mask to build
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, nh, 1, dv)
            empty = None  # it has keys to read
        else:
            allowed = self.allowed(T, S, offset, q.device)  # (T, S)
            empty = ~allowed.any(-1, keepdim=True)  # (T, 1) queries with no key (strict: position 0)
            allowed = allowed | empty  # a stand-in so softmax stays finite; those outputs are zeroed below
            if return_weights:
                # the definition, written out: softmax(Q K^T / sqrt(d_k) + M) V
                att = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, S)
                att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
                att = att.masked_fill(empty, 0.0)  # (B, nh, T, S), rows with no key are all zero
                y = att @ v  # (B, nh, T, dv)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)  # (B, nh, T, dv)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, dim), heads side by side
        y = self.proj(y)  # (B, T, dim)
        if empty is not None:
            y = y.masked_fill(empty, 0.0)  # a position with nothing to read outputs exactly 0
        return (y, att) if return_weights else y
