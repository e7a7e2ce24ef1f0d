"""LMConv and its locally masked convolution (armini/nn/locally_masked.py, armini/models/lmconv.py).

The layer equals PixelCNN's masked convolution in raster order; a mask that shows a tap one step
too early is caught; the model is causal and normalised in every order it is asked for; the order
ensemble is the image-level mixture (and averaging per-pixel probabilities is not a distribution);
completion conditions on every observed pixel through an observed-first order.
"""
import itertools
import math

import pytest
import torch

from armini import orders
from armini.causality import check_causality
from armini.models import LMConv
from armini.models.lmconv import ensemble_log_likelihood, late_observed
from armini.nn import locally_masked
from armini.nn.locally_masked import LocallyMaskedConv2d, cached_local_mask, local_mask
from armini.nn.masked import MaskedConv2d
from armini.train import model_kwargs
from helpers import all_images


@pytest.fixture(autouse=True)
def fresh_mask_cache():
    """Every test builds its masks afresh (a monkeypatched mask must not hide behind a cached one)."""
    locally_masked._MASKS.clear()
    yield
    locally_masked._MASKS.clear()


def small(shape=(1, 5, 5), levels=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"nr_filters": 8, "nr_resnet": 1, "n_stages": 2, "nr_mix": 2, **kwargs}
    return LMConv(shape=shape, levels=levels, **kwargs)


def images(model, n=8, seed=1):
    return torch.randint(model.levels, (n,) + model.shape, generator=torch.Generator().manual_seed(seed))


def train_steps(model, steps=4, lr=5e-3):
    """A few Adam steps, each on an order drawn by loss() from the training orders."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = images(model, 16, seed=2)
    for _ in range(steps):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()



def one_step_too_early(order, H, W, kernel_size=3, dilation=1, mask_type="B"):
    """A wrong mask: each location also sees the pixel generated right after it, if it is a neighbour."""
    k, half = kernel_size, kernel_size // 2
    rank = orders.rank(order)
    i, j = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)
    offset = (torch.arange(k) - half) * dilation
    qi, qj = i + offset.repeat_interleave(k)[:, None], j + offset.repeat(k)[:, None]
    inside = (qi >= 0) & (qi < H) & (qj >= 0) & (qj < W)
    rank_q = rank[qi.clamp(0, H - 1) * W + qj.clamp(0, W - 1)]
    mask = inside & (rank_q <= rank + 1)  # BUG: the next pixel is visible too
    mask[k * k // 2] = mask_type == "B"
    return mask.float()


ORDERS = {  # (H, W) -> a few orders of a 5 x 5 image
    "raster": orders.raster(5, 5),
    "s-curve": orders.s_curve(5, 5),
    "hilbert": orders.hilbert(5, 5),
    "hilbert-transpose+flip-lr": orders.named("hilbert", 5, 5, "transpose+flip-lr"),
    "random": orders.random_order(5, 5, torch.Generator().manual_seed(3)),
}


# ------------------------------------------------------------------------------ the layer
@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("k", [3, 5])
def test_raster_order_equals_masked_conv2d(mask_type, k):
    torch.manual_seed(0)
    plain = MaskedConv2d(4, 6, k, mask_type)
    local = LocallyMaskedConv2d(4, 6, k, mask_type=mask_type)
    local.load_state_dict(plain.state_dict(), strict=False)  # same weight and bias; the mask buffer is not needed
    x = torch.randn(3, 4, 5, 7)  # not square: rows and columns must not be swapped
    torch.testing.assert_close(local(x, orders.raster(5, 7)), plain(x), atol=1e-5, rtol=1e-5)
    assert len(locally_masked.cached_mask_groups(orders.raster(5, 7), 5, 7, k, 1, mask_type).patterns) == 1  # one conv
    torch.testing.assert_close(local.unfold_forward(x, orders.raster(5, 7)), plain(x), atol=1e-5, rtol=1e-5)


def grouping_orders(H, W):
    """Orders whose masks the grouped path must reproduce: named ones, an observed-first completion order, random."""
    centre = torch.ones(H, W, dtype=torch.bool)
    centre[1:H - 1, 2:W - 2] = False
    found = {f"s-curve-{name}": orders.named("s-curve", H, W, name) for name in orders.SYMMETRIES}
    found.update({"raster": orders.raster(H, W), "spiral": orders.spiral(H, W), "hilbert": orders.hilbert(H, W),
                  "centre-observed-first": orders.observed_first(centre.flatten(), orders.s_curve(H, W)),
                  "random": orders.random_order(H, W, torch.Generator().manual_seed(4))})
    return found


@pytest.mark.parametrize("name", list(grouping_orders(6, 7)))
def test_grouped_path_equals_the_unfold_path_with_gradients(name, monkeypatch):
    """One conv2d per mask pattern, each kept at its own locations, gives the unfold path's outputs and gradients
    (float64), for mask A and B, dilations 1 and 2, kernels 3 and 5: with up to 64 patterns allowed, every named
    order takes the grouped path."""
    monkeypatch.setattr(locally_masked, "MAX_GROUPS", 64)
    H, W = 6, 7  # not square
    order = grouping_orders(H, W)[name]
    torch.manual_seed(0)
    for mask_type, k, d in [("A", 3, 1), ("B", 3, 1), ("A", 3, 2), ("B", 3, 2), ("A", 5, 1), ("B", 5, 2)]:
        conv = LocallyMaskedConv2d(3, 4, k, dilation=d, mask_type=mask_type).double()
        x = torch.randn(2, 3, H, W, dtype=torch.float64, requires_grad=True)
        groups = locally_masked.cached_mask_groups(order, H, W, k, d, mask_type)
        assert groups is not None or name == "random", (name, k, d)  # (a random order may be grouped or not)
        out, reference = conv(x, order), conv.unfold_forward(x, order)
        with locally_masked.unfold_only():
            torch.testing.assert_close(conv(x, order), reference, atol=0, rtol=0)  # the switch takes the unfold path
        torch.testing.assert_close(out, reference, atol=1e-12, rtol=1e-12)
        g = torch.randn_like(out)
        grads = torch.autograd.grad((out * g).sum(), [x, conv.weight, conv.bias])
        expected = torch.autograd.grad((reference * g).sum(), [x, conv.weight, conv.bias])
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_mask_patterns_of_real_orders_are_few_and_reproduce_the_mask():
    """Raster has one pattern, every S-curve two (its rows run either way), once the padding taps are free; a
    random order has too many and takes the unfold path. Each location's pattern equals its mask on every tap
    inside the image."""
    H, W = 9, 8
    found = grouping_orders(H, W)
    for name, order in found.items():
        for mask_type, d in [("A", 1), ("B", 2)]:
            mask = local_mask(order, H, W, 3, d, mask_type)  # (9, L)
            inside = locally_masked.tap_neighbours(H, W, 3, d)[1]  # (9, L)
            groups = locally_masked.mask_groups(mask, inside, max_groups=H * W)
            r0, r1, c0, c1 = groups.box
            full = torch.zeros(len(groups.patterns), 3, 3)
            full[:, r0:r1 + 1, c0:c1 + 1] = groups.patterns
            rebuilt = full.view(-1, 9)[groups.group].T  # (9, L): each location's pattern
            assert torch.equal(rebuilt * inside, mask * inside), (name, mask_type, d)
            expected = 1 if name == "raster" else 2 if name.startswith("s-curve") else None
            if expected is not None:
                assert len(groups.patterns) == expected, (name, mask_type, d)
                assert (r1 - r0 + 1) * (c1 - c0 + 1) == 6  # the row (or column) after p is never read: 2 x 3
        assert locally_masked.mask_groups(local_mask(found["random"], H, W, 3, 1, "B"), inside) is None


def test_a_mask_one_step_too_early_is_caught(monkeypatch):
    """The same comparison fails for a mask that shows the next pixel; so does the causality inspector."""
    torch.manual_seed(0)
    plain = MaskedConv2d(2, 3, 3, "B")
    local = LocallyMaskedConv2d(2, 3, 3)
    local.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 2, 5, 5)
    monkeypatch.setattr(locally_masked, "local_mask", one_step_too_early)
    assert not torch.allclose(local(x, orders.raster(5, 5)), plain(x), atol=1e-4)
    model = small()
    for name in ("raster", "hilbert"):
        report = check_causality(model, order=ORDERS[name])
        assert not report.ok, name
        rank = orders.rank(ORDERS[name])
        assert all(rank[d[1] * 5 + d[2]] <= rank[j[1] * 5 + j[2]] for d, j in report.leaks)  # itself or later


@pytest.mark.parametrize("name", ["s-curve", "hilbert", "random"])
def test_local_mask_shows_exactly_the_earlier_neighbours(name):
    order, H, W = ORDERS[name], 5, 5
    rank = orders.rank(order).view(H, W)
    for mask_type, dilation in [("A", 1), ("B", 1), ("B", 2)]:
        mask = local_mask(order, H, W, 3, dilation, mask_type).view(3, 3, H, W)  # (tap row, tap col, i, j)
        for i, j in [(0, 0), (2, 2), (4, 1), (3, 4)]:
            for a, b in itertools.product(range(3), repeat=2):
                qi, qj = i + (a - 1) * dilation, j + (b - 1) * dilation
                if (a, b) == (1, 1):
                    expected = mask_type == "B"
                else:
                    expected = 0 <= qi < H and 0 <= qj < W and bool(rank[qi, qj] < rank[i, j])
                assert bool(mask[a, b, i, j]) == expected, (name, mask_type, dilation, i, j, a, b)


def test_masks_are_built_once_per_order():
    order, other = ORDERS["s-curve"], ORDERS["hilbert"]
    first = cached_local_mask(order, 5, 5, 3, 1, "A")
    assert torch.equal(first, local_mask(order, 5, 5, 3, 1, "A"))
    assert cached_local_mask(order.clone(), 5, 5, 3, 1, "A") is first  # same order: the same tensor, not rebuilt
    assert not torch.equal(cached_local_mask(other, 5, 5, 3, 1, "A"), first)
    assert not torch.equal(cached_local_mask(order, 5, 5, 3, 1, "B"), first)
    model = small()
    x = images(model, 2)
    with torch.no_grad():
        model.log_prob(x, order=order)
        built = len(locally_masked._MASKS)
        model.log_prob(x, order=order)
    assert len(locally_masked._MASKS) == built  # a second pass builds nothing


def test_bad_layer_settings_are_refused():
    with pytest.raises(ValueError, match="mask_type"):
        LocallyMaskedConv2d(1, 1, 3, mask_type="C")
    with pytest.raises(ValueError, match="odd"):
        LocallyMaskedConv2d(1, 1, 4)


# ------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("head", ["dmol", "softmax"])
def test_causal_in_every_order_at_init_and_after_training(head):
    model = small(head=head)
    for trained in (False, True):
        for name, order in ORDERS.items():
            report = check_causality(model, order=order)
            assert report.ok, f"{name} (trained={trained}): {report}"
        train_steps(model)


@pytest.mark.parametrize("head", ["dmol", "softmax"])
def test_normalised_over_every_image_in_a_non_raster_order(head):
    """sum over all K^D images of p(x) = 1 in the order given: true only if causal and normalised."""
    model = small(shape=(1, 2, 2), levels=3, head=head)
    x = all_images((1, 2, 2), 3)  # (81, 1, 2, 2)
    for trained in (False, True):
        for order in (torch.tensor([3, 0, 2, 1]), orders.named("s-curve", 2, 2, "rot180")):
            with torch.no_grad():
                total = torch.logsumexp(model.log_prob(x, order=order).double(), 0).exp()
            assert total.item() == pytest.approx(1.0, abs=1e-4), (trained, order)
        train_steps(model)


def test_orders_change_the_likelihood_and_default_to_the_s_curve():
    model = small()
    train_steps(model)
    x = images(model, 4)
    assert torch.equal(model.generation_order(), orders.s_curve(5, 5))
    assert model.train_orders.shape == (8, 25) and len({tuple(o.tolist()) for o in model.train_orders}) == 8
    with torch.no_grad():
        assert torch.equal(model.log_prob(x), model.log_prob(x, order=orders.s_curve(5, 5)))
        assert not torch.allclose(model.log_prob(x), model.log_prob(x, order=orders.hilbert(5, 5)))


def test_loss_draws_a_training_order_with_the_global_rng():
    """loss(x) is the bits/dim under one training order, drawn with torch's global RNG (so a resumed
    run, which restores that RNG, draws the same orders)."""
    model = small()
    x = images(model, 4)
    with torch.no_grad():
        per_order = [model.loss(x, order=o).item() for o in model.train_orders]
        torch.manual_seed(5)
        drawn = [model.loss(x).item() for _ in range(40)]
        torch.manual_seed(5)
        again = [model.loss(x).item() for _ in range(40)]
    assert drawn == again
    assert all(any(abs(d - v) < 1e-6 for v in per_order) for d in drawn)  # each is one training order's loss
    assert len({round(d, 6) for d in drawn}) > 4  # several orders were drawn


def trained_on_flat_2x2():
    """A 2x2 LMConv with 3 levels (81 images: small enough to list), trained a little on flat images so
    that its pixels depend on each other."""
    model = small(shape=(1, 2, 2), levels=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    flat = torch.arange(3).repeat(6).view(18, 1, 1, 1).expand(18, 1, 2, 2)  # (18, 1, 2, 2) images of one colour
    for _ in range(30):
        opt.zero_grad()
        model.loss(flat).backward()
        opt.step()
    return model


def test_ensemble_is_the_image_level_mixture_not_averaged_pixels():
    model = trained_on_flat_2x2()
    x = all_images((1, 2, 2), 3)  # every image, so normalisation can be summed
    chosen = [orders.named("s-curve", 2, 2, k) for k in (0, 3, 5)]
    with torch.no_grad():
        per_order = torch.stack([model.log_prob(x, order=o) for o in chosen]).double()  # (3, 81)
        ensemble = model.ensemble_log_prob(x, chosen).double()  # (81,)
        # the definition: log of the mean of the orders' probabilities
        torch.testing.assert_close(ensemble, per_order.exp().mean(0).log(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ensemble_log_likelihood(per_order), ensemble)
        assert torch.logsumexp(ensemble, 0).exp().item() == pytest.approx(1.0, abs=1e-4)  # a distribution
        # averaging per-pixel probabilities over orders, then multiplying: not the mixture, not normalised
        pixels = torch.stack([model.log_prob_pixels(x, order=o) for o in chosen]).double().exp()  # (3, 81, 1, 2, 2)
        averaged = pixels.mean(0).flatten(1).log().sum(1)  # (81,)
    assert not torch.allclose(averaged, ensemble, atol=1e-3)
    assert abs(torch.logsumexp(averaged, 0).exp().item() - 1.0) > 1e-3
    assert bool((ensemble >= per_order.min(0).values - 1e-6).all())  # never worse than the worst order


def test_completion_follows_an_observed_first_order():
    model = small()
    train_steps(model)
    x = images(model, 3)
    observed = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    observed[..., :2] = True  # the left two columns are given
    with pytest.raises(ValueError, match="observed_first"):
        model.nll_bits(x, observed=observed)  # the S-curve visits missing pixels of row 0 before row 1's given ones
    order = orders.observed_first(observed[0, 0], model.generation_order())
    with torch.no_grad():
        nll = model.nll_bits(x, observed=observed, order=order)
        lp = model.log_prob_pixels(x, order=order)
    torch.testing.assert_close(nll, -(lp * ~observed).flatten(1).sum(1) / math.log(2))
    torch.testing.assert_close(nll + (-(lp * observed).flatten(1).sum(1) / math.log(2)), model.nll_bits(x, order=order))
    out = model.sample(3, x=x, observed=observed, order=order, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[observed.expand_as(out)], x[observed.expand_as(x)])
    # every missing pixel saw every observed one: the first missing pixel's conditional moves with the last given one
    report = check_causality(model, order=order)
    assert report.ok


def test_sampling_follows_the_order_given():
    model = small()
    order = orders.hilbert(5, 5)
    steps = []
    model.sample(2, order=order, generator=torch.Generator().manual_seed(0), callback=lambda s: steps.append(s.index.clone()))
    assert torch.equal(torch.cat(steps), order)


def test_rgb_and_bad_settings_are_refused_clearly():
    with pytest.raises(ValueError, match="grayscale"):
        LMConv(shape=(3, 4, 4), levels=4)
    with pytest.raises(ValueError, match="head must be"):
        small(head="logistic")
    with pytest.raises(ValueError, match="n_orders"):
        small(n_orders=9)
    with pytest.raises(ValueError, match="unknown order"):
        small(orders="zigzag")


def test_class_conditional_and_rebuilt_from_its_config():
    model = small(num_classes=3, orders="hilbert", n_orders=2)
    x, y = images(model, 4), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        assert not torch.allclose(model.log_prob(x, y), model.log_prob(x, torch.zeros(4, dtype=torch.long)))
    assert check_causality(model, y=1, order=orders.random_order(5, 5, torch.Generator().manual_seed(0))).ok
    twin = LMConv(**model_kwargs(model))
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.train_orders, model.train_orders)
    with torch.no_grad():
        torch.testing.assert_close(twin.log_prob(x, y), model.log_prob(x, y))


def test_ensemble_from_per_dimension_terms_sums_them_first():
    """ensemble_log_likelihood takes (N, B) image log-likelihoods or (N, B, D) per-dimension terms."""
    g = torch.Generator().manual_seed(0)
    terms = -torch.rand(3, 4, 6, generator=g) * 3  # (N, B, D) log p_k(x_d | earlier)
    per_image = terms.sum(-1)  # (N, B)
    expected = per_image.exp().mean(0).log()
    torch.testing.assert_close(ensemble_log_likelihood(terms), expected)
    torch.testing.assert_close(ensemble_log_likelihood(per_image), expected)
    assert not torch.allclose(terms.exp().mean(0).log().sum(-1), expected)  # averaged pixels: another number


def test_completion_ensemble_mixes_the_observed_first_training_orders():
    """Completing a given left column of a 2x2 image: both column-by-column S-curves visit it first, and
    the mixture of their conditionals is again a distribution over the missing pixels, for every
    observed value: log of the mean of the orders' p_k(missing | observed)."""
    model = trained_on_flat_2x2()
    left = torch.tensor([[True, False], [True, False]])
    ready = model.completion_orders(left)  # (2, 4)
    expected = [orders.named("s-curve", 2, 2, k) for k in ("transpose", "transpose+flip-ud")]
    assert len(ready) == 2 and all(any(torch.equal(r, e) for r in ready) for e in expected)
    assert torch.equal(ready[0], model.completion_order(left))
    x = all_images((1, 2, 2), 3)  # every image: 9 observed left columns x 9 completions
    with torch.no_grad():
        mixed = model.ensemble_log_prob(x, ready, observed=left).double()  # (81,)
        per_order = torch.stack([model.log_prob(x, order=o, observed=left) for o in ready]).double()  # (2, 81)
    torch.testing.assert_close(mixed, per_order.exp().mean(0).log(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(per_order[0], per_order[1], atol=1e-3)  # two different conditionals
    given = x[:, 0, 0, 0] * 3 + x[:, 0, 1, 0]  # (81,) which observed left column
    for value in range(9):  # each observed left column: the completions' probabilities sum to one
        assert mixed[given == value].exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="observed_first"):  # the plain S-curve visits pixel (0, 1) before (1, 0)
        model.ensemble_log_prob(x, [orders.named("s-curve", 2, 2, 0)], observed=left)
    centre = torch.ones(4, 4, dtype=torch.bool)
    centre[1:3, 1:3] = False
    big = small(shape=(1, 4, 4))
    assert torch.equal(big.completion_orders(centre), big.completion_order(centre)[None])  # no S-curve fits: one order


def test_completion_order_prefers_a_training_order():
    """A given left half: the transposed S-curve (column by column) is a training order that already
    visits it first; a given border around a missing centre: no S-curve does, so observed_first of
    the S-curve that needs the fewest pixels moved; trained on spirals too, a spiral does."""
    model = small(shape=(1, 6, 6))
    left = torch.zeros(6, 6, dtype=torch.bool)
    left[:, :3] = True
    order = model.completion_order(left)
    assert torch.equal(order, orders.named("s-curve", 6, 6, "transpose"))
    assert bool(left.flatten()[order[:18]].all())  # the 18 observed pixels come first
    border = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    border[..., 2:4, 2:4] = False
    order = model.completion_order(border)
    late = [late_observed(border.flatten(), o) for o in model.train_orders]
    assert min(late) > 0  # no S-curve visits the border first
    assert torch.equal(order, orders.observed_first(border[0, 0], model.train_orders[late.index(min(late))]))
    assert not any(torch.equal(order, o) for o in model.train_orders)
    with pytest.raises(ValueError, match="36 pixels"):
        model.completion_order(torch.ones(5, 5, dtype=torch.bool))
    assert model.bench_fields() == {"orders": 1, "train_orders": 8, "order_set": "s-curve"}
    spirals = small(shape=(1, 6, 6), orders="s-curve+spiral")
    order = spirals.completion_order(border)
    assert any(torch.equal(order, o) for o in spirals.train_orders[8:])  # a spiral, as trained
    assert bool(border.flatten()[order[:32]].all())
    assert torch.equal(spirals.completion_order(left), orders.named("s-curve", 6, 6, "transpose"))


def test_late_observed_counts_the_pixels_observed_first_moves():
    observed = torch.tensor([True, False, True, True, False, True])
    assert late_observed(observed, torch.arange(6)) == 3  # pixels 2, 3, 5 come after pixel 1
    assert late_observed(observed, torch.tensor([0, 2, 3, 5, 1, 4])) == 0
    assert late_observed(torch.ones(6, dtype=torch.bool), torch.arange(6)) == 0  # nothing missing
    for order in [torch.arange(6), torch.tensor([4, 3, 1, 0, 5, 2])]:
        moved = orders.observed_first(observed, order)
        assert late_observed(observed, moved) == 0


def test_several_named_orders_train_together():
    """orders="s-curve+spiral": the first n_orders symmetries of each, S-curves first; a bad name is refused."""
    model = small(orders="s-curve+spiral", n_orders=2)
    expected = [orders.named(name, 5, 5, k) for name in ("s-curve", "spiral") for k in range(2)]
    assert len(model.train_orders) == 4
    assert all(torch.equal(a, b) for a, b in zip(model.train_orders, expected))
    assert model.bench_fields()["train_orders"] == 4
    assert check_causality(model, order=model.train_orders[3]).ok
    with pytest.raises(ValueError, match="unknown order 'zigzag' in orders='s-curve\\+zigzag'"):
        small(orders="s-curve+zigzag")


@pytest.mark.parametrize("head", ["dmol", "softmax"])
def test_sampling_step_computes_the_head_at_its_pixels_only_with_the_same_numbers(head):
    """conditional_logprobs gives the whole-image conditionals at the step's pixels, so the draws are the
    sampler's that computes every pixel's (ARModel's default), image for image."""
    from armini.models.base import ARModel

    model = small(head=head)
    train_steps(model)
    model.eval()
    x, order = images(model, 3), orders.hilbert(5, 5)
    index = torch.tensor([7, 0, 24])
    with torch.no_grad():
        fast = model.conditional_logprobs(x, index, order=order)
        whole = ARModel.conditional_logprobs(model, x, index, order=order)
    assert fast.shape == (3, 3, model.levels)
    torch.testing.assert_close(fast, whole, rtol=0, atol=1e-6)

    class WholeHead(LMConv):  # the sampler as it was: the head at every pixel, every step
        conditional_logprobs = ARModel.conditional_logprobs

    twin = WholeHead(**model_kwargs(model))
    twin.load_state_dict(model.state_dict())
    observed = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    observed[..., :2] = True
    for kwargs in [{"order": order}, {"x": x, "observed": observed, "order": model.completion_order(observed)}]:
        drawn = [m.sample(3, generator=torch.Generator().manual_seed(0), **kwargs) for m in (model, twin)]
        assert torch.equal(drawn[0], drawn[1]), kwargs

