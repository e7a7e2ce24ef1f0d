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

KV cache for incremental decoding: pass `cache=KVCache()` and feed the sequence a few positions
at a time; the layer keeps the keys and values of every position it has seen, so each call only
computes the new positions and gives the same result as one call on the whole sequence.

Legend: B batch, T positions (queries), S positions (keys), nh heads, dk / dv key / value size per head.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class KVCache:
    """Keys and values of every position one attention layer has seen so far, (B, nh, S, d) each."""

    def __init__(self):
        self.k = self.v = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor):
        """Append the new positions' keys and values; return all of them."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)  # (B, nh, S, dk)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)  # (B, nh, S, dv)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention: (B, T, in_dim) queries' input and (B, T, kv_dim) keys'/values'
    input at the same positions -> (B, T, dim).

    dim: value size (all heads) and output size; key_dim: query/key size (all heads, default dim);
    in_dim / kv_dim: input sizes (default dim / in_dim); strict: j < i instead of j <= i;
    window: local attention over the `window` most recent keys; mask: an extra fixed (T, T) bool pattern.
    """

    def __init__(self, dim: int, n_heads: int = 1, *, strict: bool = False, window: Optional[int] = None,
                 mask: Optional[torch.Tensor] = None, in_dim: Optional[int] = None,
                 kv_dim: Optional[int] = None, key_dim: Optional[int] = None, bias: bool = True):
        super().__init__()
        in_dim = dim if in_dim is None else in_dim
        kv_dim = in_dim if kv_dim is None else kv_dim
        key_dim = dim if key_dim is None else key_dim
        if dim % n_heads or key_dim % n_heads:
            raise ValueError(f"dim={dim} and key_dim={key_dim} must be multiples of n_heads={n_heads}")
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of positions, got {window!r}")
        self.n_heads, self.strict, self.window = n_heads, strict, window
        self.scale = 1.0 / math.sqrt(key_dim // n_heads)  # 1 / sqrt(d_k)
        self.query = nn.Linear(in_dim, key_dim, bias=bias)  # W_q
        self.key = nn.Linear(kv_dim, key_dim, bias=bias)  # W_k
        self.value = nn.Linear(kv_dim, dim, bias=bias)  # W_v
        self.proj = nn.Linear(dim, dim, bias=bias)  # W_o, mixes the heads
        self.register_buffer("mask", None if mask is None else mask.bool(), persistent=False)

    def allowed(self, T: int, S: int, offset: int, device) -> torch.Tensor:
        """(T, S) bool: which keys each of the T new queries (positions offset..offset+T-1) may read."""
        allowed = attention_mask(T, S, offset=offset, strict=self.strict, window=self.window, device=device)
        if self.mask is not None:
            allowed = allowed & self.mask[offset:offset + T, :S]
        return allowed

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *,
                cache: Optional[KVCache] = None, return_weights: bool = False):
        B, T, _ = x.shape
        c = x if context is None else context  # keys and values come from c
        nh = self.n_heads
        q = self.query(x).view(B, T, nh, -1).transpose(1, 2)  # (B, nh, T, dk)
        k = self.key(c).view(B, T, nh, -1).transpose(1, 2)  # (B, nh, T, dk)
        v = self.value(c).view(B, T, nh, -1).transpose(1, 2)  # (B, nh, T, dv)
        offset = 0
        if cache is not None:  # the past positions' keys and values are already there
            offset = len(cache)
            k, v = cache.extend(k, v)  # (B, nh, S, dk), (B, nh, S, dv) with S = offset + T
        allowed = self.allowed(T, k.shape[2], offset, x.device)  # (T, S)
        empty = ~allowed.any(-1, keepdim=True)  # (T, 1) queries with no key (strict: position 0)
        allowed = allowed | empty  # a stand-in so softmax stays finite; those outputs are zeroed below
        if return_weights:
            # the definition, written out: softmax(Q K^T / sqrt(d_k) + M) V
            att = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, S)
            att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            att = att.masked_fill(empty, 0.0)  # (B, nh, T, S), rows with no key are all zero
            y = att @ v  # (B, nh, T, dv)
        elif self.window is None and self.mask is None and offset == 0 and T > self.strict:
            # the plain causal mask: is_causal=True lets the fused kernel skip the hidden half. Strict
            # (j < i) is the non-strict mask between query i+1 and keys 0..i: shift the queries by one
            s = int(self.strict)
            y = F.scaled_dot_product_attention(q[:, :, s:], k[:, :, :T - s], v[:, :, :T - s],
                                               is_causal=True, scale=self.scale)  # (B, nh, T-s, dv)
            y = F.pad(y, (0, 0, s, 0))  # (B, nh, T, dv), strict: row 0 is zero
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)  # (B, nh, T, dv)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, dim), heads side by side
        y = self.proj(y).masked_fill(empty, 0.0)  # a position with nothing to read outputs exactly 0
        return (y, att) if return_weights else y
