"""PixelCNN++ (armini.models.pixelcnnpp): the contract's tests (normalisation, consistency,
causality at init and after training, a broken variant caught, sampling, bad input), plus
no blind spot and the colour dependencies that the mixture's coupling creates."""
import itertools
import math

import pytest
import torch

import armini.models.pixelcnnpp as pp
from armini.causality import check_causality
from armini.models.pixelcnnpp import PixelCNNpp




TINY = dict(nr_filters=8, nr_mix=2, nr_resnet=1)
# (shape, levels, extra config): grayscale, colour, sides that need padding, fewer stages, binary
CASES = [
    ((1, 4, 4), 4, {}),
    ((3, 4, 4), 4, {}),
    ((1, 5, 6), 5, {}),
    ((3, 3, 5), 3, dict(n_stages=2)),
    ((1, 4, 4), 2, dict(n_stages=1)),
]
IDS = ["gray4x4", "rgb4x4", "gray5x6-padded", "rgb3x5-2stages", "binary-1stage"]


def make(shape, levels, seed=0, **kw):
    torch.manual_seed(seed)
    return PixelCNNpp(shape=shape, levels=levels, **{**TINY, **kw})


def random_images(n, shape, levels, seed=1):
    return torch.randint(levels, (n,) + tuple(shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape,K,kw", CASES, ids=IDS)
def test_conditionals_normalise_and_agree_with_log_prob(shape, K, kw):
    model = make(shape, K, **kw).eval()
    x = random_images(3, shape, K)
    lp = model.conditionals(x)
    assert lp.shape == (3,) + shape + (K,)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(3, *shape), atol=1e-5, rtol=0)
    lpp = model.log_prob_pixels(x)
    torch.testing.assert_close(lpp, lp.gather(-1, x.unsqueeze(-1)).squeeze(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.log_prob(x), lpp.flatten(1).sum(1))
    torch.testing.assert_close(model.loss(x), -lpp.mean() / math.log(2))


@pytest.mark.parametrize("shape,K", [((1, 2, 2), 3), ((3, 1, 2), 3)], ids=["gray2x2", "rgb1x2"])
def test_exhaustive_sum_over_all_images_is_one(shape, K):
    model = make(shape, K).double().eval()
    D = math.prod(shape)
    every = torch.tensor(list(itertools.product(range(K), repeat=D))).view(-1, *shape)  # (K^D, C, H, W)
    total = model.log_prob(every).logsumexp(0)
    torch.testing.assert_close(total, torch.tensor(0.0, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape,K,kw", CASES[:4], ids=IDS[:4])
def test_causal_at_init_and_after_training(shape, K, kw):
    model = make(shape, K, dropout=0.1, **kw)
    report = check_causality(model)
    assert report.ok, str(report)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = random_images(8, shape, K, seed=2)
    for _ in range(3):
        loss = model.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = check_causality(model, generator=torch.Generator().manual_seed(3))
    assert report.ok, str(report)


@pytest.mark.parametrize("shape,kw", [((1, 6, 6), {}), ((3, 4, 4), {}), ((1, 5, 7), {}), ((1, 5, 5), dict(n_stages=2))],
                         ids=["gray6x6", "rgb4x4", "gray5x7-padded", "gray5x5-2stages"])
def test_no_blind_spot(shape, kw):
    """The mixture parameters of pixel (i, j) depend on every earlier pixel (all channels) and on
    nothing else. Gradients give exact zeros, so weak but real dependencies count too (random
    perturbations can miss those at init)."""
    model = make(shape, 4, **kw).double().eval()
    C, H, W = shape
    # one copy of a random image per target pixel; copy n backpropagates from pixel n only
    x = random_images(1, shape, 4).double().expand(H * W, C, H, W).clone().requires_grad_()
    params = model.dmol_params(x)  # (H*W, P, H, W): the model accepts real values here
    n = torch.arange(H * W)
    params[n, :, n // W, n % W].abs().sum().backward()
    seen = x.grad.abs() > 0  # (H*W, C, H, W): seen[n] = inputs that move pixel n's parameters
    earlier = (n[None, :] < n[:, None]).view(H * W, 1, H, W).expand(-1, C, -1, -1)  # raster order
    assert torch.equal(seen, earlier), (seen ^ earlier).nonzero()[:5].tolist()


def test_colour_sub_pixel_dependencies():
    """R does not see its own pixel; G sees R; B sees R and G (through the mixture's coupling and
    the posterior over components), in every pixel."""
    shape = (3, 3, 3)
    model = make(shape, 6).eval()
    report = check_causality(model, random_images(2, shape, 6, seed=4))
    assert report.ok, str(report)
    for i, j in itertools.product(range(3), range(3)):
        assert not report.context((0, i, j))[:, i, j].any()
        assert report.context((1, i, j))[:, i, j].tolist() == [True, False, False]
        assert report.context((2, i, j))[:, i, j].tolist() == [True, True, False]


@pytest.mark.parametrize("broken", ["down_shift", "right_shift"])
@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4)], ids=["gray", "rgb"])
def test_check_catches_a_missing_shift(monkeypatch, broken, shape):
    """Without the first layer's down-shift (u sees its own row) or right-shift (ul sees its own
    pixel), the network reads the pixel it predicts: the causality check must say so."""
    monkeypatch.setattr(pp, broken, lambda h: h)
    model = make(shape, 4)
    report = check_causality(model)
    assert not report.ok
    assert any(d == j for d, j in report.leaks)  # a conditional that reads its own value


@pytest.mark.parametrize("shape,K", [((1, 4, 4), 256), ((3, 3, 3), 4)], ids=["gray256", "rgb4"])
def test_sampling(shape, K):
    model = make(shape, K, dropout=0.2)
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3,) + shape and samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < K
    assert model.training  # sample() switches dropout off and back on
    again = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)
    # the cached sampler (armini.fast.pixelcnnpp_cache) draws exactly what full recomputation draws
    slow = model.sample(3, generator=torch.Generator().manual_seed(0), cached=False)
    assert torch.equal(samples, slow)
    assert not torch.equal(samples, model.sample(3, generator=torch.Generator().manual_seed(1)))


def test_completion_keeps_observed_pixels():
    shape, K = (1, 4, 4), 8
    model = make(shape, K)
    x = random_images(2, shape, K)
    observed = torch.zeros(shape, dtype=torch.bool)
    observed[:, :2] = True  # top half given
    out = model.sample(2, x=x, observed=observed, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :2], x[:, :, :2])


def test_bad_input_and_config_raise():
    model = make((1, 4, 4), 4)
    x = random_images(2, (1, 4, 4), 4)
    with pytest.raises(TypeError):
        model.log_prob(x.float())
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(x[:, :, :3])
    with pytest.raises(ValueError, match="values must lie"):
        model.conditionals(x + 4)
    with pytest.raises(ValueError, match="unconditional"):
        model.loss(x, y=torch.zeros(2, dtype=torch.long))
    for bad in [dict(n_stages=0), dict(nr_mix=0), dict(nr_filters=0), dict(dropout=1.0)]:
        with pytest.raises(ValueError):
            PixelCNNpp(shape=(1, 4, 4), levels=4, **bad)
    with pytest.raises(TypeError):
        PixelCNNpp(shape=(1, 4, 4), levels=4, no_such_option=1)


def test_defaults_and_config():
    model = PixelCNNpp()
    assert model.shape == (1, 28, 28) and model.levels == 256
    cfg = model.config
    assert (cfg.nr_filters, cfg.nr_resnet, cfg.n_stages, cfg.nr_mix) == (32, 0, 3, 5)
    assert model.nin_out.out_channels == 5 * 3  # M * (1 logit + 1 mean + 1 log-scale) for grayscale
    assert PixelCNNpp(shape=(3, 8, 8), nr_mix=10).nin_out.out_channels == 10 * 10  # + 3 couplings, C=3
    x = random_images(2, (1, 28, 28), 256)
    assert torch.isfinite(model.loss(x))


# ------------------------------------------------------------------ the cached sampler
# (shape, levels, config): sides that are not multiples of 2^(S-1), colour, 256 levels and few, 1-3 stages
CACHE_CASES = [
    ((1, 7, 7), 256, dict(nr_resnet=0, n_stages=3)),
    ((3, 7, 7), 5, dict(nr_resnet=1, n_stages=3)),
    ((1, 14, 14), 4, dict(nr_resnet=1, n_stages=3)),
    ((3, 6, 5), 256, dict(nr_resnet=0, n_stages=2)),
    ((1, 5, 6), 3, dict(nr_resnet=1, n_stages=1)),
    ((3, 4, 4), 4, dict(nr_resnet=0, n_stages=1)),
]
CACHE_IDS = ["gray7x7-256", "rgb7x7-K5-res1", "gray14x14-res1", "rgb6x5-256-2stages", "gray5x6-1stage-res1",
             "rgb4x4-1stage"]


def make_sharp(shape, levels, seed=0, **kw):
    """A model with larger weights than at init, so the conditionals are far from uniform."""
    model = make(shape, levels, seed=seed, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


@pytest.mark.parametrize("shape,K,kw", CACHE_CASES, ids=CACHE_IDS)
def test_cached_conditionals_match_the_full_forward_pass(shape, K, kw):
    """Pixel by pixel through the cache, on a fixed image, every step's conditionals equal conditionals(x)."""
    model = make_sharp(shape, K, **kw)
    x = random_images(2, shape, K)
    full = model.conditionals(x)  # (B, C, H, W, K)
    cache = model.init_cache(x)
    stepped = torch.empty_like(full)
    for index in model.generation_order():  # flat positions into x.flatten(1)
        stepped.flatten(1, -2)[:, index] = model.conditional_logprobs(x, index[None], None, cache)[:, 0]
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("C,K", [(1, 256), (3, 256), (1, 4), (3, 5)])
def test_sampling_head_gives_the_mixtures_probabilities_to_float64_accuracy(C, K):
    """pixel_conditionals (the sampling step's head: differences of logistic CDFs in float64) against the
    mixture's probabilities from armini.nn.dmol in float64, on sharp and flat logistics alike, for every
    channel given the earlier ones; it returns float32 for float32 parameters."""
    from armini.nn.dmol import dmol_conditionals, dmol_num_params
    model = PixelCNNpp(shape=(C, 4, 4), levels=K, nr_filters=4, nr_mix=3, nr_resnet=0)
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(64, dmol_num_params(C, 3), generator=gen, dtype=torch.float64) * 3  # log-scales down to about -9
    x = torch.randint(K, (64, C), generator=gen)
    exact = dmol_conditionals(params[:, :, None, None], x[:, :, None, None], K)[:, :, 0, 0].exp()  # (64, C, K)
    for c in range(C):
        head = model.pixel_conditionals(params, x, c)  # (64, 1, K)
        assert head.dtype == torch.float64
        torch.testing.assert_close(head.exp()[:, 0], exact[:, c], rtol=0, atol=1e-13)
        assert model.pixel_conditionals(params.float(), x, c).dtype == torch.float32
    # the check fails on a wrong head: every inner bin edge a tenth of a bin off
    edges = model._bin_edges(torch.float64, torch.device("cpu"))
    model._edges[(torch.float64, torch.device("cpu"))] = edges + 0.1 * 2 / (K - 1)
    assert not torch.allclose(model.pixel_conditionals(params, x, 0).exp()[:, 0], exact[:, 0], rtol=0, atol=1e-6)


def run_sampler(model, cached, n=2, seed=0, **kwargs):
    probs = []
    out = model.sample(n, generator=torch.Generator().manual_seed(seed), cached=cached,
                       callback=lambda s: probs.append(s.probs.clone()), **kwargs)
    return out, torch.stack(probs)


@pytest.mark.parametrize("shape,K,kw", CACHE_CASES, ids=CACHE_IDS)
def test_cached_and_naive_sampling_agree(shape, K, kw):
    """Same generator seed -> identical images and the same distribution at every step, for several seeds."""
    model = make_sharp(shape, K, **kw)
    for seed in range(3 if math.prod(shape) <= 60 else 1):  # the naive sampler is slow on the larger ones
        fast, p_fast = run_sampler(model, cached=True, seed=seed)
        slow, p_slow = run_sampler(model, cached=False, seed=seed)
        assert torch.equal(fast, slow), seed
        torch.testing.assert_close(p_fast, p_slow, rtol=1e-5, atol=1e-6)


def test_cached_sampling_agrees_at_28x28():
    """The default three stages at the data's size (28 x 28 -> 14 x 14 -> 7 x 7). The naive sampler's
    distribution at step t is conditionals(x) at t for any x that holds the same earlier pixels, so one
    full pass on the finished image gives every step's naive distribution (784 naive passes are slow)."""
    model = make_sharp((1, 28, 28), 256, nr_resnet=0, nr_filters=4, nr_mix=2)
    fast, p_fast = run_sampler(model, cached=True, n=1, seed=5)  # p_fast (D, n, 1, K)
    naive = torch.softmax(model.conditionals(fast).double(), -1)  # (n, C, H, W, K)
    torch.testing.assert_close(p_fast[:, :, 0].transpose(0, 1).reshape(naive.shape).float(), naive.float(),
                               rtol=1e-5, atol=1e-6)


def test_cached_completion_agrees():
    """Completing a partly observed image (top half given, a stray observed pixel lower down)."""
    shape, K = (3, 6, 6), 6
    model = make_sharp(shape, K)
    x = random_images(2, shape, K)
    observed = torch.zeros(shape, dtype=torch.bool)
    observed[:, :3] = True
    observed[0, 4, 1] = True
    fast, p_fast = run_sampler(model, True, x=x, observed=observed)
    slow, p_slow = run_sampler(model, False, x=x, observed=observed)
    assert torch.equal(fast, slow) and torch.equal(fast[:, observed], x[:, observed])
    torch.testing.assert_close(p_fast, p_slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,kw", [((1, 28, 28), {}), ((3, 14, 14), dict(nr_resnet=1)), ((1, 7, 7), dict(n_stages=2))],
                         ids=["default28", "rgb14-res1", "gray7-2stages"])
def test_cache_computes_each_position_at_most_once(shape, kw):
    """The plan: every position of every layer is computed at most once per image, never before the
    pixels it depends on are drawn, and the output at pixel t needs nothing computed after step t.
    (The old "cache" reused a pixel's network pass for its colour channels only: H*W full passes.)"""
    from armini.fast.pixelcnnpp_cache import NEVER, PixelCNNppCache

    model = PixelCNNpp(shape=shape, levels=256, nr_filters=4, nr_mix=2, **kw).eval()
    cache = model.init_cache(torch.zeros((1,) + shape, dtype=torch.long))
    assert isinstance(cache, PixelCNNppCache)
    for layer in cache.layers:
        count = torch.zeros(layer.out.h, layer.out.w, dtype=torch.long)
        for t, strips in enumerate(cache.plan):
            for L, a, j0, j1 in strips:
                if L is layer:
                    count[a, j0:j1] += 1
                    assert (layer.out.ready[a, j0:j1] <= t).all()  # computed once final
        assert count.max() <= 1
        assert torch.equal(count == 1, layer.steps != NEVER)
    C, H, W = shape
    assert cache.top is cache.layers[-1].out
    assert (cache.layers[-1].steps[:H, :W] <= torch.arange(H * W).view(H, W)).all()


def test_bench_sees_a_fast_sampler():
    from armini.bench import has_fast_sampler

    assert has_fast_sampler(make((1, 4, 4), 4))


def test_cache_refuses_misuse():
    model = make_sharp((1, 4, 4), 4)
    x = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    cache = model.init_cache(x)
    C, H, W = model.shape

    def at(c, i, j):  # the flat position of dimension (c, i, j), as the sampling loop passes it
        return torch.tensor([(c * H + i) * W + j])

    model.conditional_logprobs(x, at(0, 0, 0), None, cache)
    with pytest.raises(ValueError, match="raster order"):
        model.conditional_logprobs(x, at(0, 2, 2), None, cache)
    x[0, 0, 0, 0] = 1  # the pixel just drawn: fine
    model.conditional_logprobs(x, at(0, 0, 1), None, cache)
    x[0, 0, 0, 1] = 2  # the pixel just drawn, and an older one changed behind the cache's back
    x[0, 0, 0, 0] = 3
    with pytest.raises(ValueError, match="stale"):
        model.conditional_logprobs(x, at(0, 0, 2), None, cache)


# ------------------------------------------------------------------ inputs by value kind, class labels
VALUE_KINDS = [dict(input="embedding", embed_dim=3), dict(num_classes=3), dict(input="embedding", embed_dim=2, num_classes=3)]
VALUE_KIND_IDS = ["embedding", "classes", "embedding+classes"]


def labels_for(model, n=2):
    return None if model.num_classes is None else torch.arange(n) % model.num_classes


@pytest.mark.parametrize("kw", VALUE_KINDS, ids=VALUE_KIND_IDS)
@pytest.mark.parametrize("shape,K", [((1, 7, 7), 512), ((3, 5, 6), 6)], ids=["tokens7x7-512", "rgb5x6-padded"])
def test_cached_and_naive_sampling_agree_with_embeddings_and_labels(shape, K, kw):
    """The cache reads embedded inputs and adds the class vectors as the forward pass does (the old
    cache refused labels; the old model had neither setting)."""
    model = make_sharp(shape, K, **kw)
    y = labels_for(model)
    fast, p_fast = run_sampler(model, cached=True, y=y)
    slow, p_slow = run_sampler(model, cached=False, y=y)
    assert torch.equal(fast, slow)
    # rounding only (float64: equal to the last digit); the sharpened embeddings and class vectors are large
    torch.testing.assert_close(p_fast, p_slow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", VALUE_KINDS, ids=VALUE_KIND_IDS)
def test_embedding_and_class_conditional_models_stay_causal(kw):
    """The class vector is the same at every position, so no pixel learns anything about another."""
    from helpers import train_a_little

    model = train_a_little(make((3, 4, 4), 5, **kw))
    assert check_causality(model).ok


def test_class_vectors_are_the_only_change_and_come_last():
    """Same seed: the conditional model holds the unconditional one's weights (its class vectors are made
    after them, so the default model draws the same random numbers as before), and with the class
    vectors zeroed it computes exactly the unconditional model's conditionals."""
    plain, conditional = make((3, 4, 4), 5), make((3, 4, 4), 5, num_classes=4)
    extra = set(conditional.state_dict()) - set(plain.state_dict())
    assert extra == {"class_u.weight", "class_ul.weight"}
    for name, value in plain.state_dict().items():
        assert torch.equal(value, conditional.state_dict()[name]), name
    with torch.no_grad():
        conditional.class_u.weight.zero_()
        conditional.class_ul.weight.zero_()
    x = random_images(3, (3, 4, 4), 5)
    assert torch.equal(conditional.conditionals(x, torch.tensor([0, 1, 3])), plain.conditionals(x))
    with pytest.raises(ValueError, match="num_classes must be a positive number"):
        make((1, 4, 4), 4, num_classes=0)
