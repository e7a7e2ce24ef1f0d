"""armini.nn.attention: causal masks (strict, local), the zero first row, KV cache = full forward."""
import math

import pytest
import torch

from armini.nn import attention
from armini.nn.attention import (CausalSelfAttention, KVCache, attention_bytes, attention_mask, block_causal_mask,
                                 block_local_mask, local_2d_mask)

B, T, DIM = 2, 9, 8


def naive_attention(layer, x, context=None, allowed=None):
    """softmax(q_i . k_j / sqrt(d_k) over allowed j) weighted sum of v_j, one query at a time."""
    c = x if context is None else context
    nh = layer.n_heads
    q, k, v = layer.query(x), layer.key(c), layer.value(c)  # (B, T, nh*d)
    dk, dv = q.shape[-1] // nh, v.shape[-1] // nh
    out = torch.zeros(x.shape[0], x.shape[1], v.shape[-1])
    for b in range(x.shape[0]):
        for h in range(nh):
            for i in range(x.shape[1]):
                js = [j for j in range(x.shape[1]) if allowed[i, j]]
                if not js:
                    continue  # no key: the head outputs 0
                qi = q[b, i, h * dk:(h + 1) * dk]
                scores = torch.stack([qi @ k[b, j, h * dk:(h + 1) * dk] for j in js]) / math.sqrt(dk)
                p = torch.softmax(scores, 0)
                out[b, i, h * dv:(h + 1) * dv] = sum(p[n] * v[b, j, h * dv:(h + 1) * dv] for n, j in enumerate(js))
    y = layer.proj(out)
    empty = ~allowed.any(1)
    y[:, empty] = 0.0
    return y


@pytest.mark.parametrize("n_heads", [1, 2])
@pytest.mark.parametrize("strict", [False, True])
def test_matches_naive_reference(n_heads, strict):
    torch.manual_seed(0)
    layer = CausalSelfAttention(DIM, n_heads, strict=strict)
    x = torch.randn(B, T, DIM)
    allowed = torch.tensor([[(j < i) if strict else (j <= i) for j in range(T)] for i in range(T)])
    ref = naive_attention(layer, x, allowed=allowed)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)  # the fused is_causal path
    masked = CausalSelfAttention(DIM, n_heads, strict=strict, mask=torch.ones(T, T, dtype=torch.bool))
    masked.load_state_dict(layer.state_dict())
    torch.testing.assert_close(masked(x), ref, atol=1e-5, rtol=1e-5)  # the boolean-mask path
    y, w = layer(x, return_weights=True)  # the written-out path
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert w.shape == (B, n_heads, T, T)
    assert (w[..., ~allowed] == 0).all()
    sums = w.sum(-1)  # each row sums to 1, except a row with no key
    torch.testing.assert_close(sums[..., 1:], torch.ones_like(sums[..., 1:]))
    torch.testing.assert_close(sums[..., 0], torch.full_like(sums[..., 0], 0.0 if strict else 1.0))


def test_attention_mask_definition():
    m = attention_mask(4, 4)
    assert torch.equal(m, torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.equal(attention_mask(4, 4, strict=True), torch.ones(4, 4, dtype=torch.bool).tril(-1))
    w = attention_mask(5, 5, window=2)  # i-2 < j <= i
    assert w.sum(1).tolist() == [1, 2, 2, 2, 2] and w[4, 3] and w[4, 4] and not w[4, 2]
    ws = attention_mask(5, 5, window=2, strict=True)  # i-2 <= j < i
    assert ws.sum(1).tolist() == [0, 1, 2, 2, 2] and ws[4, 2] and ws[4, 3] and not ws[4, 4]
    # rows of a later chunk (offset) are the matching rows of the full mask
    assert torch.equal(attention_mask(2, 5, offset=3, window=2), w[3:5])


@pytest.mark.parametrize("with_context", [False, True])
def test_strict_first_row_is_zero_without_nan(with_context):
    torch.manual_seed(0)
    kv = DIM + 3
    layer = CausalSelfAttention(DIM, 2, strict=True, kv_dim=kv if with_context else None)
    x = torch.randn(B, T, DIM, requires_grad=True)
    c = torch.randn(B, T, kv, requires_grad=True) if with_context else None
    y = layer(x, c)
    assert torch.isfinite(y).all()
    assert (y[:, 0] == 0).all()  # exactly zero, not NaN, not the output bias
    y.square().sum().backward()
    grads = [x.grad] + ([c.grad] if with_context else []) + [p.grad for p in layer.parameters()]
    assert all(torch.isfinite(g).all() for g in grads)
    _, w = layer(x, c, return_weights=True)
    assert torch.isfinite(w).all() and (w[:, :, 0] == 0).all()


def _moved_rows(layer, x, c, j, which):
    """Rows of the output that change when position j of `which` ('x' or 'c') changes."""
    with torch.no_grad():
        y0 = layer(x, c)
        x2, c2 = x.clone(), (None if c is None else c.clone())
        (x2 if which == "x" else c2)[:, j] += 1.0
        return ((layer(x2, c2) - y0).abs().amax((0, 2)) > 0).nonzero().flatten().tolist()


@pytest.mark.parametrize("strict", [False, True])
def test_causality_by_perturbation(strict):
    torch.manual_seed(0)
    layer = CausalSelfAttention(DIM, 2, strict=strict, kv_dim=5)
    x, c = torch.randn(B, T, DIM), torch.randn(B, T, 5)
    for j in range(T):
        first = j + 1 if strict else j
        assert _moved_rows(layer, x, c, j, "c") == list(range(first, T))  # keys/values: later queries only
        n_keys = j if strict else j + 1  # with a single key, softmax gives it weight 1 whatever the query
        assert _moved_rows(layer, x, c, j, "x") == ([j] if n_keys > 1 else [])  # a query only moves its own row


def test_window_is_local():
    torch.manual_seed(0)
    layer = CausalSelfAttention(DIM, 2, window=3)
    x = torch.randn(B, T, DIM)
    for j in range(T):
        assert _moved_rows(layer, x, None, j, "x") == list(range(j, min(j + 3, T)))
    allowed = attention_mask(T, T, window=3)
    torch.testing.assert_close(layer(x), naive_attention(layer, x, allowed=allowed), atol=1e-5, rtol=1e-5)


def test_local_2d_mask():
    m = local_2d_mask(4, 5, rows=1, cols=1).view(4, 5, 4, 5)  # [query i, j, key i', j']
    assert m[2, 2, 1, 1] and m[2, 2, 1, 3] and m[2, 2, 2, 1] and m[2, 2, 2, 3]  # (2,3) later: causal mask hides it
    assert not m[2, 2, 0, 2] and not m[2, 2, 1, 4] and not m[2, 2, 3, 2]
    mc = local_2d_mask(2, 2, rows=0, cols=0, C=3)  # only the own pixel's 3 sub-pixel tokens
    assert torch.equal(mc, torch.block_diag(*[torch.ones(3, 3)] * 4).bool())
    torch.manual_seed(0)
    layer = CausalSelfAttention(DIM, 1, mask=local_2d_mask(3, 3, rows=1, cols=0))
    x = torch.randn(1, 9, DIM)
    allowed = local_2d_mask(3, 3, rows=1, cols=0) & attention_mask(9, 9)
    torch.testing.assert_close(layer(x), naive_attention(layer, x, allowed=allowed), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(strict=True), dict(window=3), dict(strict=True, window=2),
                                     dict(mask=local_2d_mask(3, 3, rows=1, cols=1))])
def test_kv_cache_equals_full_forward(options):
    torch.manual_seed(0)
    layer = CausalSelfAttention(DIM, 2, kv_dim=6, key_dim=4, **options)
    x, c = torch.randn(B, T, DIM), torch.randn(B, T, 6)
    full = layer(x, c)
    for chunks in ([1] * T, [4, 1, 3, 1]):  # one position per call, and uneven chunks
        cache, outs, t = KVCache(), [], 0
        for n in chunks:
            outs.append(layer(x[:, t:t + n], c[:, t:t + n], cache=cache))
            t += n
        assert len(cache) == T
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(key_dim=4), dict(bias=False), dict(strict=True), dict(window=3),
                                     dict(mask=local_2d_mask(3, 3, rows=1, cols=1))])
def test_step_is_forward_at_one_position(options):
    """step(x, cache) (one new position, (B, in_dim) rows, q, k and v from one matrix product) gives what
    forward(x[:, None], cache=cache) gives (bit for bit with MKL here; the stacked matrix product may round
    differently on another BLAS), and leaves the same keys and values in the cache."""
    torch.manual_seed(0)
    layer = CausalSelfAttention(DIM, 2, **options)
    x = torch.randn(B, T, DIM)
    fast, slow, outs = KVCache(capacity=T), KVCache(capacity=T), []
    with torch.no_grad():
        for t in range(T):
            outs.append(layer.step(x[:, t], fast))  # (B, DIM)
            torch.testing.assert_close(outs[-1], layer(x[:, t:t + 1], cache=slow)[:, 0], atol=1e-7, rtol=1e-6)
        full = layer(x)  # (B, T, DIM)
    assert len(fast) == T
    torch.testing.assert_close((fast.k, fast.v), (slow.k, slow.v), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(torch.stack(outs, 1), full, atol=1e-6, rtol=1e-5)


def test_stacked_qkv_is_the_three_projections():
    torch.manual_seed(0)
    layer = CausalSelfAttention(DIM, 2, key_dim=4)
    weight, bias = layer.stacked_qkv()
    x = torch.randn(5, DIM)
    qkv = torch.nn.functional.linear(x, weight, bias)  # (5, 4 + 4 + DIM)
    torch.testing.assert_close(qkv, torch.cat([layer.query(x), layer.key(x), layer.value(x)], -1), atol=1e-6, rtol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="multiples of n_heads"):
        CausalSelfAttention(10, 4)
    with pytest.raises(ValueError, match="window"):
        CausalSelfAttention(8, 2, window=0)


def test_kv_cache_is_preallocated():
    """With a capacity, extend writes into one buffer allocated once (O(new positions) per call, not
    a copy of the whole past) and returns views of it; the keys and values are all the ones fed."""
    g = torch.Generator().manual_seed(0)
    ks, vs = torch.randn(2, 3, 20, 4, generator=g), torch.randn(2, 3, 20, 5, generator=g)
    cache = KVCache(capacity=20)
    k, v = cache.extend(ks[:, :, :1], vs[:, :, :1])
    buffers = k.data_ptr(), v.data_ptr()
    for t in range(1, 20):
        k, v = cache.extend(ks[:, :, t:t + 1], vs[:, :, t:t + 1])
        assert (k.data_ptr(), v.data_ptr()) == buffers  # the same memory: nothing was reallocated or copied
        assert len(cache) == t + 1 and torch.equal(k, ks[:, :, :t + 1]) and torch.equal(v, vs[:, :, :t + 1])
    assert torch.equal(cache.k, ks) and torch.equal(cache.v, vs)


def test_append_is_extend_at_one_position():
    """append (one position, no position axis: a sampler's step) writes into the same preallocated buffers as
    extend and returns the same views; without room, or for another batch size, it falls back to extend
    (which allocates, grows, or refuses)."""
    g = torch.Generator().manual_seed(0)
    ks, vs = torch.randn(2, 3, 6, 4, generator=g), torch.randn(2, 3, 6, 5, generator=g)
    cache, other = KVCache(capacity=4), KVCache(capacity=4)
    for t in range(6):  # past the capacity of 4: the buffers grow once
        k, v = cache.append(ks[:, :, t], vs[:, :, t])
        assert torch.equal(k, ks[:, :, :t + 1]) and torch.equal(v, vs[:, :, :t + 1])
        assert k.data_ptr() == cache.k.data_ptr() and len(cache) == t + 1
        other.extend(ks[:, :, t:t + 1], vs[:, :, t:t + 1])
    assert torch.equal(cache.k, other.k) and torch.equal(cache.v, other.v)
    with pytest.raises(ValueError, match="one KVCache per batch"):
        cache.append(torch.randn(1, 3, 4), torch.randn(1, 3, 5))


def test_step_reads_the_layers_weights_once_per_cache():
    """The step's weights (StepWeights) are read from the modules by the first step and kept in the cache:
    q, k and v stacked, W_o the layer's own tensor."""
    layer = CausalSelfAttention(DIM, 2, key_dim=4)
    cache = KVCache(capacity=3)
    with torch.no_grad():
        layer.step(torch.randn(B, DIM), cache)
        weights = cache.weights
        layer.step(torch.randn(B, DIM), cache)
    assert cache.weights is weights and weights.out_weight is layer.proj.weight
    assert weights.sizes == (4, 4, DIM) and weights.qkv_weight.shape == (4 + 4 + DIM, DIM)


def test_kv_cache_without_capacity_doubles():
    """Without a capacity the buffers double: 100 single positions, a handful of allocations."""
    cache, buffers = KVCache(), set()
    keys = torch.randn(1, 2, 100, 4)
    for t in range(100):
        k, v = cache.extend(keys[:, :, t:t + 1], keys[:, :, t:t + 1])
        buffers.add(k.data_ptr())
    assert len(buffers) <= 8
    assert torch.equal(cache.k, keys) and torch.equal(cache.v, keys)


def test_kv_cache_can_start_from_given_keys():
    """Assigning cache.k and cache.v (lesson 07's reference step) starts from that past."""
    past_k, past_v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cache = KVCache()
    cache.k, cache.v = past_k, past_v
    assert len(cache) == 3
    new_k, new_v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    k, v = cache.extend(new_k, new_v)
    assert torch.equal(k, torch.cat([past_k, new_k], 2)) and torch.equal(v, torch.cat([past_v, new_v], 2))
    with pytest.raises(ValueError, match="one KVCache per batch"):
        cache.extend(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))


def test_attention_memory_is_checked_before_allocating(monkeypatch):
    """Above the limit, a clear error naming T, the GiB needed and smaller alternatives, raised
    before any (T, S) tensor exists; under it, nothing changes."""
    assert attention_bytes(2, 4, 784, 784) == 2 * 2 * 4 * 784 * 784 * 4  # scores + softmax, float32
    assert attention_bytes(1, 1, 10, 10, torch.float64) == 2 * 100 * 8
    layer = CausalSelfAttention(DIM, 2)
    x = torch.randn(1, 64, DIM)
    monkeypatch.setattr(attention, "MAX_ATTENTION_BYTES", attention_bytes(1, 2, 64, 64) - 1)
    for kwargs in (dict(), dict(return_weights=True)):
        with pytest.raises(MemoryError, match=r"T=64 positions \(a 8x8 image\)") as info:
            layer(x, **kwargs)
        assert "GiB" in str(info.value) and "--size 14" in str(info.value) and "smaller batch" in str(info.value)
    monkeypatch.setattr(attention, "MAX_ATTENTION_BYTES", attention_bytes(1, 2, 64, 64))
    assert layer(x).shape == (1, 64, DIM)


# ----------------------------------------------------------------- block-causal attention (VAR)
def test_block_causal_mask_definition():
    m = block_causal_mask([1, 4, 9])  # scales 1x1, 2x2, 3x3: L = 14
    assert m.shape == (14, 14) and m.dtype == torch.bool
    block = torch.tensor([0] + [1] * 4 + [2] * 9)
    for i in range(14):
        for j in range(14):
            assert bool(m[i, j]) == (block[j] <= block[i])  # own block and every earlier one
    assert m[1, 4] and not m[4, 5]  # within a block it reads forwards; never into a later block
    with pytest.raises(ValueError, match="block sizes"):
        block_causal_mask([2, 0])
    with pytest.raises(ValueError, match="block sizes"):
        block_causal_mask([])


def test_non_causal_layer_with_a_block_mask_matches_the_reference_and_its_cache():
    torch.manual_seed(0)
    sizes = [1, 2, 4, 2]  # T = 9 positions
    mask = block_causal_mask(sizes)
    layer = CausalSelfAttention(DIM, 2, mask=mask, causal=False)
    x = torch.randn(B, T, DIM)
    full = layer(x)
    torch.testing.assert_close(full, naive_attention(layer, x, allowed=mask), atol=1e-5, rtol=1e-5)
    for j in range(T):  # a position moves the rows of its own block and of every later one, no earlier row
        first = next(b for b in range(T) if mask[b, j])
        assert _moved_rows(layer, x, None, j, "x") == list(range(first, T))
    cache, outs, t = KVCache(capacity=T), [], 0
    for n in sizes:  # one block per call, as VAR's sampler feeds one scale per step
        outs.append(layer(x[:, t:t + n], cache=cache))
        t += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-6, rtol=1e-5)


def test_causal_false_needs_a_mask():
    with pytest.raises(ValueError, match="causal=False needs a mask"):
        CausalSelfAttention(8, 2, causal=False)
    with pytest.raises(ValueError, match="causal=False needs a mask"):
        CausalSelfAttention(8, 2, causal=False, mask=block_causal_mask([2, 2]), window=2)


# ----------------------------------------------------------------- block-local 3D attention (Video Transformer)
def test_block_local_mask_definition():
    grid, block = (2, 3, 4), (1, 2, 2)  # blocks cut short at the last row: 2 x 2 x 2 = 8 blocks
    m = block_local_mask(grid, block)
    assert m.shape == (24, 24) and m.dtype == torch.bool
    t, i, j = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(4), indexing="ij")
    where = torch.stack([t.flatten(), i.flatten(), j.flatten()], 1)  # (24, 3): raster order (t, i, j)
    for p in range(24):
        for q in range(24):
            same = all(int(where[p, a]) // block[a] == int(where[q, a]) // block[a] for a in range(3))
            assert bool(m[p, q]) == same
    assert m.equal(m.T) and m.diagonal().all()
    assert block_local_mask(grid, grid).all() and block_local_mask(grid, (9, 9, 9)).all()  # the whole grid
    assert torch.equal(block_local_mask(grid, (1, 1, 1)), torch.eye(24, dtype=torch.bool))
    for bad in [(1, 2), (0, 2, 2), (1.5, 2, 2), (True, 2, 2)]:
        with pytest.raises(ValueError, match="block must be 3 positive whole sizes"):
            block_local_mask(grid, bad)
    with pytest.raises(ValueError, match=r"grid must be the \(T, H, W\)"):
        block_local_mask((4, 4), (1, 2, 2))


def test_block_local_attention_is_causal_and_reads_only_its_block():
    torch.manual_seed(0)
    grid = (2, 2, 4)  # 16 positions
    mask = block_local_mask(grid, (2, 2, 2))
    layer = CausalSelfAttention(DIM, 2, mask=mask)
    x = torch.randn(B, 16, DIM)
    allowed = mask & attention_mask(16, 16)  # its block, up to itself
    y, w = layer(x, return_weights=True)
    assert (w[..., ~allowed] == 0).all() and (w[..., allowed] > 0).all()
    torch.testing.assert_close(layer(x), naive_attention(layer, x, allowed=allowed), atol=1e-5, rtol=1e-5)
    for q in range(16):  # a position moves only the later-or-equal rows of its block
        assert _moved_rows(layer, x, None, q, "x") == [p for p in range(16) if allowed[p, q]]
    cache, outs = KVCache(capacity=16), []
    for p in range(16):  # the cached sampler's one position per call
        outs.append(layer(x[:, p:p + 1], cache=cache))
    torch.testing.assert_close(torch.cat(outs, 1), layer(x), atol=1e-6, rtol=1e-5)


def test_block_local_attention_with_the_whole_grid_as_its_block_is_full_attention():
    torch.manual_seed(0)
    full = CausalSelfAttention(DIM, 2)
    whole = CausalSelfAttention(DIM, 2, mask=block_local_mask((2, 2, 4), (2, 2, 4)))
    whole.load_state_dict(full.state_dict())
    x = torch.randn(B, 16, DIM)
    torch.testing.assert_close(whole(x), full(x), atol=1e-6, rtol=1e-5)
