"""PixelSNAIL: the model contract (normalisation, likelihood API, causality, sampling, input checks),
no blind spot (every earlier pixel moves a conditional), and the attention maps."""
import itertools
import math

import pytest
import torch

from armini.causality import assert_causal, check_causality
from armini.models.pixelsnail import PixelSNAIL
from helpers import train_a_little as train_steps

SHAPES = [(1, 6, 6), (3, 4, 4)]
SMALL = dict(channels=8, n_blocks=2, n_res=1, key_dim=4, value_dim=8, head_channels=12)


def make(shape, levels=4, seed=0, **kw):
    torch.manual_seed(seed)
    return PixelSNAIL(shape=shape, levels=levels, **{**SMALL, **kw})


@pytest.mark.parametrize("shape", SHAPES)
def test_conditionals_normalised(shape):
    m = make(shape)
    x = torch.randint(4, (3,) + shape)
    lp = m.conditionals(x)
    assert lp.shape == (3,) + shape + (4,)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, *shape))


@pytest.mark.parametrize("shape", [(1, 2, 2), (3, 1, 2)])
def test_exhaustive_sum_is_one(shape):
    m = make(shape, levels=3)
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
    assert_causal(train_steps(m))


@pytest.mark.parametrize("shape", SHAPES)
def test_every_earlier_dimension_is_seen(shape):
    """Attention over the raw pixels removes the blind spot of a convolutional stack:
    every earlier dimension moves the conditional of the last pixel and of a middle pixel."""
    C, H, W = shape
    report = check_causality(train_steps(make(shape)), atol=1e-7)
    for target in [(C - 1, H - 1, W - 1), (C - 1, H // 2, W // 2), (0, H // 2, W // 2)]:
        assert report.earlier(target).sum() > 0
        assert not report.unseen(target).any(), f"unseen for {target}:\n{report.context_text(target)}"


@pytest.mark.parametrize("shape", SHAPES)
def test_check_fails_on_non_strict_attention(shape):
    """Keys and values carry the raw pixel: attention with j <= i lets a pixel read itself."""
    m = make(shape)
    for block in m.blocks:
        block.attention.attn.strict = False
    with pytest.raises(AssertionError, match="LEAKS"):
        assert_causal(m)


def test_check_fails_on_unmasked_colour_head():
    """The head's mask A is what hides a sub-pixel (and the later ones) from its own logits."""
    m = make((3, 3, 3))
    m.head_pixel.mask.fill_(1.0)
    report = check_causality(m)
    assert not report.ok
    assert all(d[1:] == j[1:] for d, j in report.leaks)  # only leaks within a pixel


def test_attention_maps():
    m = train_steps(make((1, 4, 5)))
    x = torch.randint(4, (2, 1, 4, 5))
    maps = m.attention_maps(x)
    assert len(maps) == SMALL["n_blocks"]
    for w in maps:
        assert w.shape == (2, 1, 20, 20)
        assert (w.triu() == 0).all()  # strictly causal: the diagonal too is zero
        torch.testing.assert_close(w.sum(-1)[..., 1:], torch.ones(2, 1, 19))
        assert (w[..., 0, :] == 0).all()  # pixel 0 has nothing to read


def test_float64():
    """model.double() computes in float64 end to end (lesson 06's probe relies on it)."""
    m = make((1, 4, 4)).double()
    lp = m.conditionals(torch.randint(4, (2, 1, 4, 4)))
    assert lp.dtype == torch.float64
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 1, 4, 4, dtype=torch.float64))


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
        m.loss(torch.full((2, 1, 6, 6), 4))
    with pytest.raises(ValueError):
        m.attention_maps(torch.zeros(2, 3, 6, 6, dtype=torch.long))


def test_defaults():
    m = PixelSNAIL()
    assert m.shape == (1, 28, 28) and m.levels == 256
    assert m.config.channels == 32 and m.config.n_blocks == 2
    x = torch.randint(256, (1, 1, 28, 28))
    assert m.conditionals(x).shape == (1, 1, 28, 28, 256)


# ------------------------------------------------------------------ cached sampler (armini.fast.pixelsnail_cache)
def run_sampler(m, cached, n=3, seed=7, **kwargs):
    """Images and every step's distribution (steps, n, 1, K) for one generator seed."""
    probs = []
    images = m.sample(n, generator=torch.Generator().manual_seed(seed), cached=cached,
                      callback=lambda step: probs.append(step.probs.clone()), **kwargs)
    return images, torch.stack(probs)


@pytest.mark.parametrize("shape, kw", [(SHAPES[0], {}), (SHAPES[1], {}), ((3, 3, 5), dict(n_heads=2))])
def test_cached_step_equals_conditionals(shape, kw):
    """Step by step through the cache, on a fixed image, gives the full forward pass's conditionals."""
    m = train_steps(make(shape, **kw)).eval()
    x = torch.randint(4, (2,) + shape, generator=torch.Generator().manual_seed(0))
    full = m.conditionals(x)  # (2, C, H, W, K)
    cache = m.init_cache(x)
    for index in m.sampling_steps():
        torch.testing.assert_close(m.conditional_logprobs(x, index, cache=cache)[:, 0], full.flatten(1, -2)[:, index[0]],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="raster order"):
        m.conditional_logprobs(x, m.sampling_steps()[0], cache=cache)  # going back is refused


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_sampling_equals_naive(shape, seed):
    """The same random draws give the very same images, from the same distributions at every step."""
    m = train_steps(make(shape, seed=seed))
    fast, p_fast = run_sampler(m, cached=True, seed=seed)
    slow, p_slow = run_sampler(m, cached=False, seed=seed)
    assert torch.equal(fast, slow)
    torch.testing.assert_close(p_fast, p_slow, atol=1e-5, rtol=1e-4)


def test_cached_sampling_equals_naive_at_28x28():
    """The full size: the bottom rows of a 28x28 image, whose pixels attend to up to 783 earlier
    ones (the top 25 rows are given, so the naive sampler only runs the last 84 steps)."""
    m = make((1, 28, 28), levels=16)
    x = torch.randint(16, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    top = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    top[..., :25, :] = True
    fast = m.sample(2, x=x, observed=top, generator=torch.Generator().manual_seed(1))
    slow = m.sample(2, x=x, observed=top, generator=torch.Generator().manual_seed(1), cached=False)
    assert torch.equal(fast, slow)
    assert not torch.equal(fast[..., 25:, :], x[..., 25:, :])  # the bottom rows were drawn


def test_cached_completion_equals_naive():
    """Completing the top half: observed pixels enter the cache like drawn ones."""
    m = train_steps(make((3, 4, 4)))
    x = torch.randint(4, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    top = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    top[..., :2, :] = True
    outs = [m.sample(2, x=x, observed=top, generator=torch.Generator().manual_seed(1), cached=c) for c in (True, False)]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][..., :2, :], x[..., :2, :])


def test_cached_sampler_in_float64():
    m = make((1, 4, 4)).double()
    x = torch.randint(4, (2, 1, 4, 4))
    cache = m.init_cache(x)
    lp = m.conditional_logprobs(x, m.sampling_steps()[0], cache=cache)
    assert lp.dtype == torch.float64
    assert torch.equal(m.sample(2, generator=torch.Generator().manual_seed(0)),
                       m.sample(2, generator=torch.Generator().manual_seed(0), cached=False))


def test_the_bench_sees_a_fast_sampler():
    from armini.bench import has_fast_sampler

    assert has_fast_sampler(make((1, 4, 4)))


# ------------------------------------------------------------------ inputs by value kind, class labels
VALUE_KINDS = [dict(input="embedding", embed_dim=3), dict(num_classes=3), dict(input="embedding", embed_dim=2, num_classes=3)]
VALUE_KIND_IDS = ["embedding", "classes", "embedding+classes"]


@pytest.mark.parametrize("kw", VALUE_KINDS, ids=VALUE_KIND_IDS)
@pytest.mark.parametrize("shape,K", [((1, 7, 7), 512), ((3, 3, 4), 6)], ids=["tokens7x7-512", "rgb3x4"])
def test_cached_sampling_equals_naive_with_embeddings_and_labels(shape, K, kw):
    """The cache reads embedded inputs (first layer, keys and values, head) and adds the class vector
    as the forward pass does (the old cache and model had neither)."""
    m = train_steps(make(shape, levels=K, **kw))
    y = None if m.num_classes is None else torch.tensor([0, 2, 1])
    fast, p_fast = run_sampler(m, cached=True, y=y)
    slow, p_slow = run_sampler(m, cached=False, y=y)
    assert torch.equal(fast, slow)
    torch.testing.assert_close(p_fast, p_slow, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", VALUE_KINDS, ids=VALUE_KIND_IDS)
def test_embedding_and_class_conditional_models_stay_causal(kw):
    """The class vector is the same at every position; embedded colour channels keep the head's
    channel groups (channel-major), so the sub-pixel masks still hold."""
    assert_causal(train_steps(make((3, 3, 3), levels=5, **kw)))


def test_class_vector_is_the_only_change_and_comes_last():
    """Same seed: the conditional model holds the unconditional one's weights (its class vectors are
    made after them, so the default model draws the same random numbers as before); with the class
    vectors zeroed it computes exactly the unconditional model's conditionals."""
    plain, conditional = make((3, 4, 4)), make((3, 4, 4), num_classes=4)
    assert set(conditional.state_dict()) - set(plain.state_dict()) == {"class_emb.weight"}
    for name, value in plain.state_dict().items():
        assert torch.equal(value, conditional.state_dict()[name]), name
    with torch.no_grad():
        conditional.class_emb.weight.zero_()
    x = torch.randint(4, (3, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(conditional.conditionals(x, torch.tensor([0, 1, 3])), plain.conditionals(x))
    assert len(conditional.attention_maps(x, torch.tensor([0, 1, 3]))) == SMALL["n_blocks"]
    with pytest.raises(ValueError, match="num_classes must be a positive number"):
        make((1, 4, 4), num_classes=0)


def test_huge_image_fails_fast_with_a_clear_message():
    """512x512: the attention scores alone would take ~512 GiB. A clear error before any allocation,
    naming the size and smaller alternatives, instead of the allocator's raw one."""
    from armini.memory import device_memory
    from armini.nn.attention import attention_bytes

    ram = device_memory(torch.device("cpu"))
    if ram is None or attention_bytes(1, 1, 512 * 512, 512 * 512) <= ram:
        pytest.skip("this machine's RAM is unknown, or enough for a 512x512 attention")
    m = make((1, 512, 512))
    with pytest.raises(MemoryError, match=r"T=262144 positions \(a 512x512 image\)") as info:
        m.loss(torch.zeros(1, 1, 512, 512, dtype=torch.long))
    assert "GiB" in str(info.value) and "--size 14" in str(info.value) and "smaller batch" in str(info.value)
