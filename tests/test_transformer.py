"""PixelTransformer (ImageGPT-style): the model contract, the KV-cached sampler (identical images,
same probabilities), local attention, the linear-probe features, and the k-means palette."""
import itertools
import math

import pytest
import torch

from armini import orders
from armini.causality import assert_causal, check_causality
from armini.models.transformer import PixelTransformer
from armini.nn.palette import Palette, kmeans
from helpers import train_a_little as train_steps

SHAPES = [(1, 6, 6), (3, 4, 4)]
SMALL = dict(dim=16, n_layers=2, n_heads=2, mlp_ratio=2)


def make(shape, levels=4, seed=0, **kw):
    torch.manual_seed(seed)
    return PixelTransformer(shape=shape, levels=levels, **{**SMALL, **kw})


# ------------------------------------------------------------------ the contract
@pytest.mark.parametrize("shape", SHAPES)
def test_conditionals_normalised(shape):
    m = make(shape)
    lp = m.conditionals(torch.randint(4, (3,) + shape))
    assert lp.shape == (3,) + shape + (4,)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, *shape))


@pytest.mark.parametrize("shape", [(1, 2, 2), (3, 1, 2)])
def test_exhaustive_sum_is_one(shape):
    m = train_steps(make(shape, levels=3))
    D = math.prod(shape)
    x = torch.tensor(list(itertools.product(range(3), repeat=D))).view(-1, *shape)  # every image: 3^D
    total = torch.logsumexp(m.log_prob(x).double(), 0).exp()
    assert abs(total.item() - 1.0) < 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_log_prob_and_loss_consistent(shape):
    m = make(shape)
    x = torch.randint(4, (5,) + shape)
    lpp = m.log_prob_pixels(x)
    torch.testing.assert_close(lpp, m.conditionals(x).gather(-1, x.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(m.log_prob(x), lpp.flatten(1).sum(1))
    torch.testing.assert_close(m.loss(x), -lpp.mean() / math.log(2))


@pytest.mark.parametrize("shape", SHAPES)
def test_causal_at_init_and_after_training(shape):
    m = make(shape)
    assert_causal(m)
    report = assert_causal(train_steps(m))
    C, H, W = shape
    assert not report.unseen((C - 1, H - 1, W - 1)).any()  # full attention: sees every earlier dimension


class NoShift(PixelTransformer):
    """Broken on purpose: position d is fed x_d instead of x_{d-1} (the right shift is gone)."""

    def embed(self, seq, first=0, last=None, order=None, y=None):
        return super().embed(torch.roll(seq, -1, dims=1), first, last, order, y)


@pytest.mark.parametrize("shape", SHAPES)
def test_check_fails_without_right_shift(shape):
    torch.manual_seed(0)
    m = NoShift(shape=shape, levels=4, **SMALL)
    with pytest.raises(AssertionError, match="LEAKS"):
        assert_causal(m)


@pytest.mark.parametrize("shape", SHAPES)
def test_sampling(shape):
    m = make(shape)
    s1 = m.sample(2, generator=torch.Generator().manual_seed(3))
    s2 = m.sample(2, generator=torch.Generator().manual_seed(3))
    assert s1.shape == (2,) + shape and s1.dtype == torch.long
    assert s1.min() >= 0 and s1.max() < 4
    assert torch.equal(s1, s2)


def test_bad_input_raises():
    m = make((1, 6, 6))
    with pytest.raises(TypeError):
        m.loss(torch.rand(2, 1, 6, 6))
    with pytest.raises(ValueError):
        m.loss(torch.zeros(2, 1, 5, 6, dtype=torch.long))
    with pytest.raises(ValueError):
        m.features(torch.full((2, 1, 6, 6), 4))
    with pytest.raises(ValueError):
        m.features(torch.zeros(2, 1, 6, 6, dtype=torch.long), layer=3)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        PixelTransformer(shape=(1, 4, 4), levels=4, dim=10, n_heads=4)


# ------------------------------------------------------------------ KV cache
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", [None, 5])
def test_cached_sampling_equals_full_recompute(shape, window):
    m = train_steps(make(shape, window=window))
    runs = {}
    for cached in (True, False):
        probs = []
        images = m.sample(3, generator=torch.Generator().manual_seed(7), cached=cached,
                          callback=lambda step: probs.append(step.probs.clone()))
        runs[cached] = (images, torch.stack(probs))  # (D, n, 1, K)
    assert torch.equal(runs[True][0], runs[False][0])  # the very same images
    torch.testing.assert_close(runs[True][1], runs[False][1], atol=1e-5, rtol=1e-4)  # at every step


@pytest.mark.parametrize("shape", SHAPES)
def test_cached_step_equals_conditionals(shape):
    """Feeding a fixed image token by token through the cache gives the full forward's conditionals."""
    m = train_steps(make(shape))
    x = torch.randint(4, (2,) + shape)
    full = m.conditionals(x)  # (2, C, H, W, K)
    cache = m.init_cache(x)
    for index in m.sampling_steps():
        torch.testing.assert_close(m.conditional_logprobs(x, index, cache=cache)[:, 0], full.flatten(1, -2)[:, index[0]],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="already fed"):
        m.conditional_logprobs(x, m.sampling_steps()[0], cache=cache)  # going back is refused


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("classes", [None, 3])
def test_one_position_step_gives_the_general_paths_numbers_exactly(shape, classes):
    """The cached sampler's one-position step (Block.step, CausalSelfAttention.step: (n, E) rows, q, k and v
    in one matrix product) computes what feeding that position through the blocks' forward with the cache
    computes (bit for bit with MKL here, so the images it draws are the ones the general path drew; another
    BLAS may round the stacked matrix product differently), and leaves the same keys and values."""
    m = make(shape, num_classes=classes)
    x = torch.randint(4, (2,) + shape)
    y = None if classes is None else torch.tensor([0, 2])
    fast, slow = m.init_cache(x, y), m.init_cache(x, y)
    seq = m.sequence(x)
    with torch.no_grad():
        for d, index in enumerate(m.sampling_steps()):
            h = m.embed(seq, d, d + 1, y=y)  # (2, 1, E): the general path, one position
            for block, kv in zip(m.blocks, slow.layers):
                h = block(h, kv)
            expected = torch.log_softmax(m.head(m.ln_f(h)), dim=-1)  # (2, 1, K)
            torch.testing.assert_close(m.conditional_logprobs(x, index, y, cache=fast), expected, atol=1e-6, rtol=1e-6)
    for a, b in zip(fast.layers, slow.layers):
        torch.testing.assert_close((a.k, a.v), (b.k, b.v), atol=1e-7, rtol=1e-6)


def test_the_cached_step_runs_on_one_thread_without_onednn_and_restores_both(monkeypatch):
    """A one-position step runs on one CPU thread with oneDNN off (GELU through torch's own kernel: oneDNN's
    set-up costs more than a row's arithmetic; sampling_cache.StepMode), the weights read once per sampler,
    and leaves torch's thread count and oneDNN setting as they were; its conditionals stay the full forward's."""
    m = train_steps(make((1, 4, 4)))
    x = torch.randint(4, (2, 1, 4, 4))
    full = m.conditionals(x).flatten(1, -2)  # (2, D, K)
    seen = []
    gelu = torch.nn.functional.gelu
    monkeypatch.setattr(torch.nn.functional, "gelu", lambda *a, **k: (seen.append(
        (torch.backends.mkldnn.enabled, torch.get_num_threads())), gelu(*a, **k))[1])
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(2)
    try:
        cache = m.init_cache(x)
        for index in m.sampling_steps():
            torch.testing.assert_close(m.conditional_logprobs(x, index, cache=cache)[:, 0], full[:, index[0]],
                                       atol=1e-5, rtol=1e-5)
            assert torch.get_num_threads() == 2 and torch.backends.mkldnn.enabled == onednn
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 16 * m.config.n_layers and set(seen) == {(False, 1)}  # every block of every step
    assert all(w.fc[0] is b.mlp.fc.weight for w, b in zip(cache.weights, m.blocks))  # the weights themselves


@pytest.mark.parametrize("shape", SHAPES)
def test_the_naive_sampler_recomputes_only_the_positions_so_far(shape):
    """cached=False recomputes, at sequence position d, the positions 0..d (the later ones cannot change
    p(x_d | x_<d), attention being causal), not the whole sequence, so that naive vs cached measures caching;
    and its probabilities are the full forward's."""
    m = train_steps(make(shape))
    fed, probs = [], []
    m.blocks[0].register_forward_hook(lambda module, args, out: fed.append(args[0].shape[1]))
    x = m.sample(2, generator=torch.Generator().manual_seed(3), cached=False,
                 callback=lambda step: probs.append(step.probs[:, 0]))
    D = math.prod(shape)
    assert fed == list(range(1, D + 1))  # positions 0..d at step d
    full = m.conditionals(x).exp().flatten(1, -2)  # (2, D, K): the full forward's, on the drawn images
    torch.testing.assert_close(torch.stack(probs, 1), full[:, m.generation_order()], atol=1e-5, rtol=1e-5)


def test_the_cache_refuses_an_order_changed_during_sampling():
    """The first step fixes the sequence order; a later step may pass the same order (the same tensor, or an equal
    one), never another."""
    m = make((1, 3, 3))
    x = torch.randint(4, (1, 1, 3, 3))
    order = orders.spiral(3, 3)
    cache = m.init_cache(x)
    m.conditional_logprobs(x, order[:1], cache=cache, order=order)
    m.conditional_logprobs(x, order[1:2], cache=cache, order=order.clone())  # equal: fine
    with pytest.raises(ValueError, match="order changed"):
        m.conditional_logprobs(x, order[2:3], cache=cache, order=orders.raster(3, 3))


def test_cache_holds_every_position_from_the_start():
    """Each layer's KV cache is allocated once for all D positions: sampling never reallocates it."""
    m = make((3, 4, 4))
    x = torch.randint(4, (2, 3, 4, 4))
    cache = m.init_cache(x)
    buffers = None
    for index in m.sampling_steps():
        m.conditional_logprobs(x, index, cache=cache)
        now = [kv.k.data_ptr() for kv in cache.layers]
        assert buffers is None or now == buffers
        buffers = now
    assert all(len(kv) == 48 for kv in cache.layers)


def test_huge_image_fails_fast_with_a_clear_message():
    """512x512: attention scores of 262144 x 262144 positions would take about a TB. A clear
    error before any allocation (not the allocator's), naming the size and smaller alternatives."""
    from armini.memory import device_memory
    from armini.nn.attention import attention_bytes

    ram = device_memory(torch.device("cpu"))
    if ram is None or attention_bytes(1, 2, 512 * 512, 512 * 512) <= ram:
        pytest.skip("this machine's RAM is unknown, or enough for a 512x512 attention")
    m = make((1, 512, 512))
    with pytest.raises(MemoryError, match=r"T=262144 positions \(a 512x512 image\)") as info:
        m.loss(torch.zeros(1, 1, 512, 512, dtype=torch.long))
    assert "GiB" in str(info.value) and "--size 14" in str(info.value) and "smaller batch" in str(info.value)


def test_observed_completion_with_cache():
    m = make((1, 4, 4))
    x = torch.randint(4, (2, 1, 4, 4))
    top = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    top[..., :2, :] = True
    outs = [m.sample(2, x=x, observed=top, generator=torch.Generator().manual_seed(1), cached=c) for c in (True, False)]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][..., :2, :], x[..., :2, :])


# ------------------------------------------------------------------ local attention, features
def test_window_limits_the_context():
    """One layer with window w: token d reads input positions d-w+1..d, which hold x_{d-w}..x_{d-1}."""
    w = 3
    m = train_steps(make((1, 4, 4), n_layers=1, window=w))
    report = check_causality(m, atol=1e-7)
    assert report.ok
    D = 16
    seen = report.seen  # (D, D): [d, j]
    for d in range(D):
        assert seen[d].nonzero().flatten().tolist() == list(range(max(d - w, 0), d))


def test_features_for_a_linear_probe():
    m = make((1, 6, 6))
    x = torch.randint(4, (5, 1, 6, 6))
    f = m.features(x)
    assert f.shape == (5, SMALL["dim"])
    torch.testing.assert_close(m.features(x, layer=1), m.hidden(x, 1).mean(1))
    assert not torch.allclose(m.features(x, layer=1), m.features(x, layer=2))
    every = m.features(x, layer="all")  # (5, n_layers, E) from one pass
    assert every.shape == (5, SMALL["n_layers"], SMALL["dim"])
    for layer in (1, 2):
        torch.testing.assert_close(every[:, layer - 1], m.features(x, layer=layer))
    with pytest.raises(ValueError, match="'all'"):
        m.features(x, layer="middle")


def test_defaults():
    m = PixelTransformer()
    assert m.shape == (1, 28, 28) and m.levels == 256
    assert (m.config.dim, m.config.n_layers, m.config.n_heads) == (64, 4, 4)
    assert m.conditionals(torch.randint(256, (1, 1, 28, 28))).shape == (1, 1, 28, 28, 256)


# ------------------------------------------------------------------ palette
def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[-0.8, -0.8, -0.8], [0.8, 0.0, -0.5], [0.0, 0.7, 0.7]])
    u = true.repeat_interleave(200, 0) + 0.02 * torch.randn(600, 3, generator=g)
    mu = kmeans(u, 3, iters=5)
    err = torch.cdist(true, mu).min(1).values
    assert (err < 0.05).all()


def test_palette_encode_decode():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(256, (4, 3, 5, 6), generator=g)
    p1 = Palette.fit(rgb, n_colors=8, seed=0)
    p2 = Palette.fit(rgb, n_colors=8, seed=0)
    assert torch.equal(p1.centres, p2.centres)  # seeded: the same palette every run
    codes = p1.encode(rgb)
    assert codes.shape == (4, 1, 5, 6) and codes.dtype == torch.long and codes.max() < 8
    # nearest centre, written out
    u = rgb.float() * 2 / 255 - 1  # (B, 3, H, W)
    d2 = (u.permute(0, 2, 3, 1)[..., None, :] - p1.centres).square().sum(-1)  # (B, H, W, P)
    torch.testing.assert_close(d2.gather(-1, codes[:, 0, ..., None]), d2.min(-1, keepdim=True).values)
    back = p1.decode(codes)
    assert back.shape == rgb.shape and back.min() >= 0 and back.max() < 256
    assert torch.equal(p1.encode(back), codes)  # a decoded colour encodes to its own code
    with pytest.raises(ValueError):
        p1.encode(torch.randint(256, (4, 1, 5, 6)))


def test_transformer_on_palette_codes():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(256, (6, 3, 4, 4), generator=g)
    palette = Palette.fit(rgb, n_colors=5)
    m = make((1, 4, 4), levels=palette.n_colors)
    codes = palette.encode(rgb)
    assert torch.isfinite(m.loss(codes))
    images = palette.decode(m.sample(2, generator=torch.Generator().manual_seed(0)))
    assert images.shape == (2, 3, 4, 4)


class Snake(PixelTransformer):
    """A transformer that generates in S-curve order (rows alternate direction), by overriding its order."""

    def generation_order(self):
        C, H, W = self.shape
        return orders.dims_order(orders.s_curve(H, W), C)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_non_raster_subclass_is_causal_normalised_and_samples_from_its_cache(shape):
    m = train_steps(Snake(shape=shape, levels=3, **SMALL))
    assert_causal(m)  # in its own (S-curve) order
    C, H, W = shape
    x = torch.randint(3, (2,) + shape)
    assert torch.allclose(m.conditionals(x).exp().sum(-1), torch.ones(2, *shape), atol=1e-5)
    naive = m.sample(2, generator=torch.Generator().manual_seed(0), cached=False)
    cached = m.sample(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(naive, cached)
    steps = []
    m.sample(1, callback=lambda s: steps.append(int(s.index)))
    assert steps == m.generation_order().tolist()


@pytest.mark.parametrize("name", ["s-curve", "hilbert"])
def test_the_transformer_follows_an_order_given_as_an_argument(name):
    shape = (1, 4, 4)
    m = train_steps(make(shape))
    order = orders.named(name, 4, 4)
    report = check_causality(m, order=order)
    assert report.ok, str(report)
    x = torch.randint(4, (2,) + shape)
    torch.testing.assert_close(m.log_prob(x, order=order),
                               m.conditionals(x, order=order).gather(-1, x.unsqueeze(-1)).flatten(1).sum(1))
    assert not torch.allclose(m.log_prob(x, order=order), m.log_prob(x))  # another factorisation
    naive = m.sample(2, order=order, generator=torch.Generator().manual_seed(1), cached=False)
    cached = m.sample(2, order=order, generator=torch.Generator().manual_seed(1))
    assert torch.equal(naive, cached)


def test_class_conditional_transformer_uses_a_start_token_per_class():
    torch.manual_seed(0)
    m = PixelTransformer(shape=(1, 7, 7), levels=512, num_classes=10, **SMALL)
    x = torch.randint(512, (4, 1, 7, 7))
    y = torch.tensor([0, 1, 2, 3])
    lp = m.conditionals(x, y)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(4, 1, 7, 7), atol=1e-5)
    assert not torch.allclose(m.conditionals(x[:1], torch.tensor([0])), m.conditionals(x[:1], torch.tensor([1])))
    assert_causal(m, y=torch.tensor([3]))
    with pytest.raises(ValueError, match="class-conditional"):
        m.loss(x)
    a = m.sample(2, y=y[:2], generator=torch.Generator().manual_seed(0))
    b = m.sample(2, y=y[:2], generator=torch.Generator().manual_seed(0), cached=False)
    assert torch.equal(a, b)
