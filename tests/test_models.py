"""Correctness of every model in armini.models.MODELS: the contract of armini/models/base.py.

Every model must: give normalised conditionals (each K-vector, and the whole distribution over
all images of a tiny shape), agree between conditionals / log_prob_pixels / log_prob / loss,
be causal in its own generation order (at initialisation and after training steps), sample
reproducibly, agree with its own likelihood while sampling, and reject bad input with a clear
message. PixelCNN gets extra tests: its RGB channel masks, masks applied in forward, broken
masks caught by the causality inspector, and its blind spot.
"""
import math

import pytest
import torch

from armini.causality import assert_causal, check_causality
from armini.models import MODELS, PixelCNN
from armini.nn.masked import causal_mask
from helpers import all_images

NAMES = sorted(n for n in MODELS if MODELS[n].shape_axes != 4)  # image models (video ones: test_contract, test_vpn)
# Models generated in stages (a tokenizer then a prior; coarse values then the rest) have no conditional
# p(x_d | x_<d) per dimension for the contract tests below: tests/test_token_ar.py and tests/test_ardm.py
# test them stage by stage.
PER_DIMENSION = [name for name in NAMES if not MODELS[name].two_stage]
SHAPES = [((1, 6, 6), 4), ((3, 4, 4), 3)]  # (shape, levels): grayscale, RGB


def build(name, shape, levels, seed=0, **kwargs):
    """MODELS[name] for this shape, or skip if the model refuses it (grayscale must always work)."""
    torch.manual_seed(seed)
    try:
        return MODELS[name](shape=shape, levels=levels, **kwargs)
    except ValueError as e:
        if shape[0] == 1:
            raise
        pytest.skip(f"{name} does not support shape={shape}, levels={levels}: {e}")


def labels(model, n):
    """Class labels for class-conditional models (all 0), else None."""
    return None if model.num_classes is None else torch.zeros(n, dtype=torch.long)


def data(model, n=8, seed=1):
    return torch.randint(model.levels, (n,) + model.shape, generator=torch.Generator().manual_seed(seed))


def train_steps(model, steps=5, lr=5e-3):
    """A few Adam steps on random images, so that tests do not only see initial weights."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = data(model, 16, seed=2)
    losses = []
    for _ in range(steps):
        loss = model.loss(x, labels(model, len(x)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses



@pytest.fixture(params=[(n, s, k) for n in PER_DIMENSION for s, k in SHAPES], ids=lambda p: f"{p[0]}-{p[1][0]}ch")
def model(request):
    name, shape, levels = request.param
    return build(name, shape, levels)


# ------------------------------------------------------------------------- likelihood
def test_conditionals_are_normalised(model):
    x = data(model)
    lp = model.conditionals(x, labels(model, len(x)))
    assert lp.shape == (len(x),) + model.shape + (model.levels,)
    assert not lp.isnan().any()
    assert torch.allclose(lp.exp().sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("name", PER_DIMENSION)
@pytest.mark.parametrize("shape", [(1, 2, 2), (3, 1, 1)], ids=["gray-2x2", "rgb-1x1"])
def test_probabilities_of_all_images_sum_to_one(name, shape):
    """sum over all K^D images of p(x) = 1: only true if the model is normalised AND causal."""
    model = build(name, shape, 3)
    x = all_images(shape, 3)  # (81, ...) or (27, ...)
    for trained in (False, True):
        with torch.no_grad():
            total = torch.logsumexp(model.log_prob(x, labels(model, len(x))).double(), 0).exp()
        assert total.item() == pytest.approx(1.0, abs=1e-4), f"trained={trained}"
        train_steps(model)


def test_log_prob_pixels_gathers_the_conditionals(model):
    x = data(model)
    y = labels(model, len(x))
    lp = model.conditionals(x, y)  # (B, C, H, W, K)
    expected = lp.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    lpp = model.log_prob_pixels(x, y)
    assert lpp.shape == x.shape
    assert torch.allclose(lpp, expected, atol=1e-5)
    assert torch.allclose(model.log_prob(x, y), expected.flatten(1).sum(1), atol=1e-4)


def test_loss_is_bits_per_dimension(model):
    x = data(model)
    y = labels(model, len(x))
    lpp = model.log_prob_pixels(x, y)
    expected = -lpp.mean() / math.log(2)  # nats -> bits, averaged over dimensions and images
    kwargs = {"order": model.generation_order()} if model.any_order else {}  # any-order models draw an order otherwise
    assert model.loss(x, y, **kwargs).item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.loss(x, y).dim() == 0


# -------------------------------------------------------------------------- causality
def test_causal_at_init_and_after_training(model):
    assert_causal(model)
    before = [p.detach().clone() for p in model.parameters()]
    losses = train_steps(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "training changed nothing"
    assert all(math.isfinite(v) for v in losses), losses
    assert_causal(model)
    assert_causal(model, data(model, 2, seed=5))  # other base images


# --------------------------------------------------------------------------- sampling
def test_sample_shape_dtype_range_and_reproducible(model):
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    y = labels(model, 3)
    a = model.sample(3, generator=g(0), y=y)
    assert a.shape == (3,) + model.shape and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < model.levels
    assert torch.equal(a, model.sample(3, generator=g(0), y=y))
    assert torch.equal(a, model.sample(3, generator=g(0), y=y, cached=False))  # fast sampler = naive one
    assert not torch.equal(a, model.sample(3, generator=g(1), y=y))


def test_partial_completion_keeps_observed_dimensions(model):
    C, H, W = model.shape
    x = data(model, 2)
    observed = torch.zeros(1, C, H, W, dtype=torch.bool)
    observed[:, :, : H // 2] = True  # the top half is given
    out = model.sample(2, x=x, observed=observed, y=labels(model, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, : H // 2], x[:, :, : H // 2])
    assert int(out.min()) >= 0 and int(out.max()) < model.levels


def test_sampling_agrees_with_the_likelihood(model):
    """Each step's distribution equals exp(conditionals) of the image so far (also for cached samplers)."""
    steps = []
    model.sample(2, y=labels(model, 2), generator=torch.Generator().manual_seed(0),
                 callback=lambda s: steps.append((s.index.clone(), s.x.clone(), s.probs.clone(), s.total)))
    assert len(steps) == steps[0][3] and sum(len(s[0]) for s in steps) == model.dims
    model.eval()
    before = torch.zeros_like(steps[0][1])  # the image before step t
    for index, after, probs, _ in steps:
        with torch.no_grad():  # index: flat positions into x.flatten(1)
            expected = model.conditionals(before, labels(model, 2)).flatten(1, -2)[:, index].exp()  # (n, S, K)
        assert torch.allclose(probs, expected.float(), atol=1e-4)
        before = after


# ------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_rejected_with_a_clear_message(name):
    model = build(name, (1, 6, 6), 4)
    x = data(model, 2)
    with pytest.raises(TypeError, match="dtype"):
        model.log_prob(x.float() / 3)
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(x[:, :, :5])
    with pytest.raises(ValueError, match="shape"):
        model.loss(x[0])  # no batch axis
    with pytest.raises(ValueError, match="levels"):
        model.log_prob(x + 4)  # value 4 with levels=4
    with pytest.raises(ValueError, match="levels"):
        model.log_prob(x - 1)
    with pytest.raises(ValueError, match="levels"):
        MODELS[name](shape=(1, 6, 6), levels=1)
    with pytest.raises(ValueError, match="shape"):
        MODELS[name](shape=(6, 6), levels=4)
    with pytest.raises(ValueError, match="observed"):
        model.sample(2, x=x)
    with pytest.raises(ValueError, match="n must"):
        model.sample(0)


# ---------------------------------------------------------------------------- PixelCNN
def pixelcnn(shape=(3, 5, 5), levels=4, **kwargs):
    torch.manual_seed(0)
    return PixelCNN(shape=shape, levels=levels, channels=24, n_blocks=2, head_channels=24, **kwargs)


def test_pixelcnn_rgb_sub_pixels_see_exactly_the_earlier_channels():
    """R sees neither G nor B of its pixel, G sees R, B sees R and G: the output head's layout
    (channel c's logits are block c of K) agrees with the masks' channel groups."""
    model = pixelcnn()
    train_steps(model)
    report = check_causality(model)
    assert report.ok, str(report)
    for i, j in [(2, 2), (0, 0), (4, 4)]:
        seen = [report.context((c, i, j))[:, i, j].tolist() for c in range(3)]  # own pixel's channels
        assert seen == [[False, False, False], [True, False, False], [True, True, False]], (i, j, seen)


def test_pixelcnn_masks_are_applied_in_forward():
    """Masked weights may hold anything (the optimiser is free to write there): the output ignores them."""
    model = pixelcnn()
    train_steps(model)
    convs = [m for m in model.modules() if hasattr(m, "mask")]
    hidden = sum(float((m.weight.detach() * (1 - m.mask)).abs().sum()) for m in convs)
    assert hidden > 0  # masked positions hold non-zero weights ...
    x = data(model, 4)
    with torch.no_grad():
        before = model.conditionals(x)
        for m in convs:
            m.weight.add_(1e3 * torch.randn_like(m.weight) * (1 - m.mask))  # garbage where masked
        after = model.conditionals(x)
    assert torch.equal(before, after)  # ... and they change nothing
    assert_causal(model)


def test_pixelcnn_first_layer_with_mask_b_is_flagged():
    model = pixelcnn(shape=(1, 5, 5))
    conv = model.input_conv
    conv.mask.copy_(causal_mask(conv.kernel_size[0], "B", conv.in_channels, conv.out_channels, 1))
    train_steps(model)
    report = check_causality(model)
    assert not report.ok
    assert ((0, 2, 2), (0, 2, 2)) in report.leaks  # a pixel sees itself
    with pytest.raises(AssertionError, match="LEAKS"):
        assert_causal(model)


def test_pixelcnn_head_with_the_wrong_channel_layout_is_flagged():
    class WrongHead(PixelCNN):
        def logits(self, x, y=None):
            B, C, H, W = x.shape
            h = self.head(self.blocks(self.input_conv(x.float() * (2.0 / (self.levels - 1)) - 1.0)))
            return h.view(B, self.levels, C, H, W).permute(0, 2, 3, 4, 1)  # (B, K, C, ...): wrong blocks

    torch.manual_seed(0)
    model = WrongHead(shape=(3, 4, 4), levels=4, channels=24, n_blocks=1, head_channels=24)
    report = check_causality(model)
    assert not report.ok
    assert any(d[1:] == j[1:] and j[0] > d[0] for d, j in report.leaks)  # a channel sees a later one
    assert "later channel of the same pixel" in str(report)


def test_pixelcnn_unmasked_later_layer_is_flagged():
    model = pixelcnn(shape=(1, 5, 5))
    model.blocks[0].net[3].mask.fill_(1)  # the first block's 3x3 convolution loses its mask
    report = check_causality(model)
    assert not report.ok
    assert any(j > d for d, j in report.leaks)  # later pixels leak in


def test_pixelcnn_has_a_blind_spot():
    """With 3x3 kernels, pixel (i, j) never sees (i - 1, j + 2): the hole above-right."""
    torch.manual_seed(0)
    model = PixelCNN(shape=(1, 8, 8), levels=4, channels=16, n_blocks=4, first_kernel=3, head_channels=16)
    report = check_causality(model)
    assert report.ok
    target = (0, 4, 3)
    unseen = report.unseen(target)  # earlier but not seen: blind spot or out of reach
    assert report.blind_spot(target).any() and report.blind_spot(target)[0, 3, 5]  # the wedge above-right
    assert unseen[0, 3, 5] and unseen[0, 2, 6]  # above-right, missed by the stacked 3x3 masks
    assert report.context(target)[0, 3, 4] and report.context(target)[0, 4, 2]  # above-right neighbour, left


# ---------------------------------------------------------------------- FVSBN and NADE
@pytest.mark.parametrize("name", ["fvsbn", "nade"])
def test_sequence_models_follow_the_weights_dtype(name):
    """Old code: to_sequence called .float(), so FVSBN(...).double() failed and NADE rounded its inputs."""
    model = build(name, (1, 4, 4), 256).double()
    x = data(model, 3)
    s = model.to_sequence(x)
    assert s.dtype == torch.float64 and torch.equal(s, x.flatten(1).double() / 255)  # raster order
    lp = model.conditionals(x)
    assert lp.dtype == torch.float64
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 1, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("name", ["fvsbn", "nade"])
def test_sequence_models_read_their_order_after_init(name):
    """Old code: generation_order() was called in __init__, before a subclass had set up its own order."""

    class Reversed(MODELS[name]):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.reverse = True  # set after super().__init__(), as a subclass naturally would

        def generation_order(self):
            order = super().generation_order()
            return order.flip(0) if self.reverse else order

    torch.manual_seed(0)
    model = Reversed(shape=(1, 2, 2), levels=3)
    train_steps(model)
    assert_causal(model)  # causal in its own (reversed) order
    x = all_images((1, 2, 2), 3)
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob(x).double(), 0).exp()
    assert total.item() == pytest.approx(1.0, abs=1e-4)
    assert model.to_sequence(x[-1:])[0, 0] == x[-1, 0, 1, 1] / 2  # the first step is the last pixel


# ------------------------------------------------------------------ class-conditional baselines
BASELINES = ["independent", "fvsbn", "nade"]


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_are_class_conditional_on_request(name):
    """Each class's distribution sums to 1 over every image, the labels change it, labels are
    required (and refused by the unconditional model), and it stays causal."""
    model = build(name, (1, 2, 2), 3, num_classes=3)
    assert model.num_classes == 3
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):  # each class sees different images, so the classes' parameters part ways
        y = torch.arange(12) % 3
        x = torch.randint(3, (12, 1, 2, 2), generator=g)
        x[y == 0] = 0
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    x = all_images((1, 2, 2), 3)  # (81, 1, 2, 2)
    with torch.no_grad():
        lp = [model.log_prob(x, torch.full((81,), k)).double() for k in range(3)]
    for k in range(3):
        assert torch.logsumexp(lp[k], 0).exp().item() == pytest.approx(1.0, abs=1e-4)
    assert not torch.allclose(lp[0], lp[1])  # the label changes the distribution
    assert_causal(model)
    with pytest.raises(ValueError, match="class-conditional"):
        model.loss(x)
    with pytest.raises(ValueError, match="unconditional"):
        build(name, (1, 2, 2), 3).loss(x, torch.zeros(81, dtype=torch.long))
    s = model.sample(4, y=torch.tensor([0, 0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 1, 2, 2)
    with pytest.raises(ValueError, match="num_classes must be a positive number"):
        build(name, (1, 2, 2), 3, num_classes=0)


@pytest.mark.parametrize("name", BASELINES)
def test_conditional_baselines_start_as_the_unconditional_model(name):
    """Same seed: the class parameters start at zero and are made after the others, so the default
    model is built from the same random numbers as before and a new conditional model computes
    exactly what the unconditional one does, for every label."""
    plain, conditional = build(name, (1, 3, 3), 4), build(name, (1, 3, 3), 4, num_classes=5)
    for key, value in plain.state_dict().items():
        if key != "logits":  # IndependentPixels: one (all-zero) table per class
            assert torch.equal(value, conditional.state_dict()[key]), key
    x = torch.randint(4, (5, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(conditional.conditionals(x, torch.arange(5)), plain.conditionals(x))
    assert model_kwargs_of(conditional)["num_classes"] == 5 and "num_classes" not in model_kwargs_of(plain)


def model_kwargs_of(model):
    from armini.train import model_kwargs

    return model_kwargs(model)


def test_independent_from_counts_per_class():
    """The closed-form fit with labels: class k's table is the unconditional fit to class k's images."""
    from armini.models import IndependentPixels

    g = torch.Generator().manual_seed(0)
    images, y = torch.randint(4, (30, 1, 3, 3), generator=g), torch.arange(30) % 3
    model = IndependentPixels.from_counts(images, 4, alpha=0.5, y=y, num_classes=3)
    for k in range(3):
        alone = IndependentPixels.from_counts(images[y == k], 4, alpha=0.5)
        torch.testing.assert_close(model.conditionals(images[:1], torch.tensor([k])), alone.conditionals(images[:1]))
    with pytest.raises(ValueError, match="pass num_classes"):
        IndependentPixels.from_counts(images, 4, y=y)


def test_the_inverse_cdf_draw_is_its_definition():
    """_draw picks, for uniforms u, the number of levels whose cumulative probability is below u * total
    (the first level whose CDF reaches it): checked against that count directly, zero-probability levels
    (top-k) included, so a faster draw can never change which images a seed gives."""
    model = PixelCNN(shape=(1, 4, 4), levels=16, channels=8, n_blocks=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        probs = torch.softmax(4 * torch.randn(3, 5, 16, generator=g, dtype=torch.float64), -1)
        probs[..., torch.randperm(16, generator=g)[:6]] = 0.0  # some levels cut, as top-k does
        state = g.get_state()
        drawn = model._draw(probs, g, torch.device("cpu"))  # (3, 5)
        g.set_state(state)
        u = torch.rand(3, 5, generator=g, dtype=torch.float64)
        cdf = probs.cumsum(-1)
        expected = (cdf < u.unsqueeze(-1) * cdf[..., -1:]).sum(-1).clamp(max=15)
        assert torch.equal(drawn, expected)
        assert bool((probs.gather(-1, drawn.unsqueeze(-1)) > 0).all())  # never a level of probability 0
