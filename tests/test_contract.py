"""The model contract (armini.models.base): flat positions, orders as arguments, partial
observations, units, and shapes other than images."""
import math

import pytest
import torch

from armini import causality, orders, train
from armini.models import PixelCNN
from armini.models.base import LN2, ARModel


def pixelcnn(shape=(1, 4, 4), levels=4):
    torch.manual_seed(0)
    return PixelCNN(shape=shape, levels=levels, channels=12, n_blocks=1, head_channels=12, first_kernel=3)


class AnyOrder(ARModel):
    """A tiny order-agnostic model: p(x_d | earlier) = softmax(b_d + w * (mean of the dimensions generated
    before d in the order)). `peek` makes it read d itself too (a leak, for the inspector)."""

    any_order = True
    shape_axes = None  # any shape

    def __init__(self, shape=(1, 3, 3), levels=3, peek=False):
        super().__init__(shape, levels)
        g = torch.Generator().manual_seed(0)
        self.b = torch.nn.Parameter(torch.randn(self.dims, levels, generator=g))
        self.w = torch.nn.Parameter(torch.randn(levels, generator=g))
        self.peek, self.seen = peek, []

    def conditionals(self, x, y=None, *, order=None, filled=None):
        self.seen.append((order, None if filled is None else filled.clone()))  # the loop keeps writing it
        rank = orders.rank(self.generation_order() if order is None else order).to(x.device)  # (D,)
        before = (rank[None, :] <= rank[:, None]) if self.peek else (rank[None, :] < rank[:, None])  # [d, j]
        mean = x.flatten(1).to(self.b.dtype) @ before.T.to(self.b.dtype) / self.dims  # (B, D)
        lp = torch.log_softmax(self.b + mean[..., None] * self.w, dim=-1)  # (B, D, K)
        return lp.view(x.shape + (self.levels,))


# ------------------------------------------------------------------ flat positions
def test_generation_order_and_sampling_steps_are_flat_positions():
    m = pixelcnn(shape=(3, 2, 2))
    order = m.generation_order()
    assert order.shape == (12,) and order[:4].tolist() == [0, 4, 8, 1]  # R, G, B of pixel (0, 0), then R of (0, 1)
    assert torch.equal(order, orders.dims_order(orders.raster(2, 2), 3))
    steps = []
    m.sample(1, callback=lambda s: steps.append((s.index.clone(), s.coords().clone())))
    assert [int(i) for i, _ in steps] == order.tolist()
    assert steps[3][1].tolist() == [[0, 0, 1]]  # (c, i, j) of the fourth step


# ------------------------------------------------------------------ orders
def test_a_fixed_order_model_refuses_another_order_but_accepts_its_own():
    m = pixelcnn()
    x = torch.randint(4, (2, 1, 4, 4))
    snake = orders.s_curve(4, 4)
    for call in (lambda: m.loss(x, order=snake), lambda: m.sample(1, order=snake),
                 lambda: causality.check_causality(m, order=snake)):
        with pytest.raises(ValueError, match="fixed order"):
            call()
    assert torch.allclose(m.log_prob(x, order=orders.raster(4, 4)), m.log_prob(x))
    with pytest.raises(ValueError, match="permutation"):
        m.log_prob(x, order=torch.zeros(16, dtype=torch.long))


@pytest.mark.parametrize("name", ["raster", "s-curve", "hilbert"])
def test_an_any_order_model_follows_the_order_it_is_given(name):
    m = AnyOrder((1, 4, 4), levels=3)
    order = orders.named(name, 4, 4, 3)
    assert causality.check_causality(m, order=order).ok
    assert not causality.check_causality(AnyOrder((1, 4, 4), 3, peek=True), order=order).ok
    steps = []
    m.sample(2, order=order, generator=torch.Generator().manual_seed(0), callback=lambda s: steps.append(int(s.index)))
    assert steps == order.tolist()  # the loop fills the dimensions in that order
    seen_order, filled = m.seen[-1]
    assert torch.equal(seen_order, order) and filled.shape == (2, 1, 4, 4) and int(filled.sum()) == 2 * 15
    # log p(x) in that order, computed from its definition
    x = torch.randint(3, (2, 1, 4, 4))
    lp = m.conditionals(x, order=order).gather(-1, x.unsqueeze(-1)).flatten(1).sum(1)
    torch.testing.assert_close(m.log_prob(x, order=order), lp)


def test_completion_with_observed_first_sees_every_observed_dimension():
    m = AnyOrder((1, 4, 4), levels=3)
    x = torch.randint(3, (1, 1, 4, 4))
    observed = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    observed[..., 2:, :] = True  # the bottom half is given: in raster order it would come last
    order = orders.observed_first(observed[0, 0], orders.raster(4, 4))
    out = m.sample(1, x=x, observed=observed, order=order, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[..., 2:, :], x[..., 2:, :])
    # the conditional NLL of the missing top half given the bottom half, in that order
    given = m.log_prob(x, order=order, observed=observed)
    every = m.conditionals(x, order=order).gather(-1, x.unsqueeze(-1)).squeeze(-1)  # (1, 1, 4, 4)
    torch.testing.assert_close(given, every[..., :2, :].sum((1, 2, 3)))
    with pytest.raises(ValueError, match="observed_first"):
        m.log_prob(x, observed=observed)  # raster order: observed dimensions come after missing ones


# ------------------------------------------------------------------ partial observations and units
def test_observed_gives_the_conditional_nll_of_the_missing_dimensions():
    m = pixelcnn()
    x = torch.randint(4, (3, 1, 4, 4))
    top = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    top[..., :2, :] = True
    per_dim = m.log_prob_pixels(x)  # (3, 1, 4, 4)
    missing = per_dim[..., 2:, :].flatten(1).sum(1)  # log p(bottom | top), by the chain rule
    torch.testing.assert_close(m.log_prob(x, observed=top), missing)
    torch.testing.assert_close(m.nll_bits(x, observed=top), -missing / LN2)
    torch.testing.assert_close(m.loss(x, observed=top), -per_dim[..., 2:, :].mean() / LN2)
    torch.testing.assert_close(m.nll_bits(x), -m.log_prob(x) / LN2)
    with pytest.raises(ValueError, match="come after missing ones"):
        m.log_prob(x, observed=~top)
    with pytest.raises(ValueError, match="broadcastable"):
        m.log_prob(x, observed=torch.ones(2, 2, dtype=torch.bool))


def test_evaluate_and_history_report_the_models_unit():
    m = pixelcnn()
    x = torch.randint(4, (8, 1, 4, 4))
    bpd = train.evaluate(m, x)
    with torch.no_grad():
        assert math.isclose(bpd, float(m.nll_bits(x).sum()) / (8 * 16), rel_tol=1e-6)
    hist = train.fit(m, x, x, steps=2, batch_size=4, progress=False)
    assert hist.unit == "bits/dim"

    class Prior(AnyOrder):
        unit, nll_is_bound = "bits/token", True

    assert train.unit_label(Prior()) == "bits/token (bound)"


def test_shapes_other_than_images():
    seq = AnyOrder((6,), levels=3)  # a flat sequence of 6 tokens
    assert seq.dims == 6 and seq.generation_order().tolist() == list(range(6))
    out = seq.sample(2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 6)
    assert causality.check_causality(seq).ok
    assert seq.log_prob(out).shape == (2,)
    with pytest.raises(ValueError, match=r"needs shape \(C, H, W\)"):
        PixelCNN(shape=(6,), levels=3)


# ------------------------------------------------------------------ videos: the contract one dimension up
from armini.models import MODELS  # noqa: E402
from armini.models.base import SampleStep, VideoARModel, nats_per_frame  # noqa: E402
from helpers import all_images, train_a_little  # noqa: E402


class PreviousFrame(VideoARModel):
    """A tiny video model whose conditionals we know: p(x_t[d] = k | past) = softmax_k(b[t, d, k]
    + w[k] x_{t-1}[d] + v[k] x_t[d-1]): the same position one frame back and the previous position of
    the frame in raster order (C = 1). `peek` makes frame t read frame t+1 at the same position (a leak)."""

    def __init__(self, shape=(3, 1, 2, 2), levels=3, peek=False):
        super().__init__(shape, levels)
        g = torch.Generator().manual_seed(0)
        self.b = torch.nn.Parameter(torch.randn(*shape, levels, generator=g))
        self.w = torch.nn.Parameter(torch.randn(levels, generator=g) + 1)
        self.v = torch.nn.Parameter(torch.randn(levels, generator=g) + 1)
        self.peek = peek

    def conditionals(self, x, y=None):
        B, T = x.shape[:2]
        f = x.flatten(2).to(self.w.dtype)  # (B, T, HW) each frame in raster order
        prev_frame = torch.cat([torch.zeros_like(f[:, :1]), f[:, :-1]], 1)  # x_{t-1}[d] (0 before frame 0)
        if self.peek:
            prev_frame = torch.cat([f[:, 1:], torch.zeros_like(f[:, :1])], 1)  # x_{t+1}[d]: the future
        prev_pos = torch.cat([torch.zeros_like(f[..., :1]), f[..., :-1]], 2)  # x_t[d-1] (0 for d = 0)
        logits = self.b[:T].flatten(1, 3) + prev_frame[..., None] * self.w + prev_pos[..., None] * self.v  # (B, T, HW, K)
        return torch.log_softmax(logits, -1).view(B, T, *self.shape[1:], self.levels)


VIDEO_SHAPE = (2, 1, 2, 2)  # 2 frames of 2x2: 2^8 = 256 videos with 2 levels


def video_model(name, shape=VIDEO_SHAPE, levels=2):
    torch.manual_seed(0)
    if name == "previous-frame":
        return PreviousFrame(shape, levels)
    return MODELS[name](shape=shape, levels=levels)


# per-pixel video models (a two-stage model such as VideoGPT gives a bound and needs token-sized shapes: tests/test_videogpt.py)
VIDEO_MODELS = ["previous-frame"] + sorted(n for n in MODELS if MODELS[n].shape_axes == 4 and not MODELS[n].two_stage)


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_a_video_model_sums_to_one_over_every_video(name):
    m = video_model(name)
    x = all_images(VIDEO_SHAPE, 2)  # (256, 2, 1, 2, 2): every video
    for trained in (False, True):
        with torch.no_grad():
            total = torch.logsumexp(m.log_prob(x).double(), 0).exp()
        assert total.item() == pytest.approx(1.0, abs=1e-4), f"trained={trained}"
        train_a_little(m, steps=3)


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_video_likelihood_shapes_units_and_nats_per_frame(name):
    m = video_model(name, (3, 1, 2, 3), 4)
    x = torch.randint(4, (5, 3, 1, 2, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lpp = m.log_prob_pixels(x)
    assert lpp.shape == (5, 3, 1, 2, 3)  # (B, T, C, H, W)
    torch.testing.assert_close(m.log_prob(x), lpp.flatten(1).sum(1))
    assert m.loss(x).item() == pytest.approx(float(-lpp.mean() / LN2), rel=1e-5)  # bits per dimension
    with torch.no_grad():
        torch.testing.assert_close(m.nats_per_frame(x), -lpp.flatten(1).sum(1) / 3)
        assert nats_per_frame(m.loss(x).item(), m.shape) == pytest.approx(float(m.nats_per_frame(x).mean()), rel=1e-5)
        # the later frames given the first one: observed = the first frame, a prefix of the order
        later = lpp[:, 1:].flatten(1).sum(1)
        torch.testing.assert_close(m.log_prob(x, observed=m.context_mask(1)), later)
        torch.testing.assert_close(m.nats_per_frame(x, context=1), -later / 2)
    assert m.unit == "bits/dim" and m.frames == 3 and m.frame_dims == 6


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_video_order_is_frame_by_frame_and_raster_within_a_frame(name):
    m = video_model(name, (2, 1, 2, 2), 2)
    assert m.generation_order().tolist() == list(range(8))  # C = 1: flat positions in order
    steps = []
    m.sample(2, generator=torch.Generator().manual_seed(0), callback=lambda s: steps.append(s))
    frames = torch.cat([s.frames() for s in steps])
    assert frames.tolist() == sorted(frames.tolist()) and set(frames.tolist()) == {0, 1}
    assert steps[-1].coords()[-1].tolist() == [1, 0, 1, 1]  # (t, c, i, j) of the last dimension


def test_colour_video_order_takes_each_pixels_channels_in_turn():
    class Colour(VideoARModel):
        def conditionals(self, x, y=None):
            return torch.zeros(x.shape + (self.levels,)).log_softmax(-1)

    m = Colour((2, 3, 1, 2), 2)
    # frame 0: pixel (0, 0) R, G, B (flat 0, 2, 4), pixel (0, 1) (1, 3, 5); then frame 1 (+6)
    assert m.generation_order().tolist() == [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]
    assert torch.equal(causality.step_rank(m), causality.raster_rank((2, 3, 1, 2)))


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_no_frame_sees_a_later_frame(name):
    m = video_model(name, (3, 1, 2, 2), 3)
    for _ in range(2):
        report = causality.assert_causal(m)
        assert report.frame_leaks == [] and not torch.triu(report.frame_matrix(), 1).any()
        assert torch.diagonal(report.frame_matrix(), -1).all()  # every frame sees the one before it
        train_a_little(m, steps=3)
    leaky = causality.check_causality(PreviousFrame((3, 1, 2, 2), 3, peek=True))
    assert (0, 1) in leaky.frame_leaks and "a later frame (frame 1; the target is in frame 0)" in str(leaky)


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_sampling_follows_the_likelihood_and_continues_given_frames(name):
    m = video_model(name, (3, 1, 2, 2), 3).eval()
    first = torch.randint(3, (2, 1, 1, 2, 2), generator=torch.Generator().manual_seed(4))  # frame 0 of 2 videos
    for cached in (True, False):
        steps = []
        out = m.sample(2, context=first, cached=cached, generator=torch.Generator().manual_seed(0),
                       callback=lambda s: steps.append((s.index.clone(), s.x.clone(), s.probs.clone())))
        assert torch.equal(out[:, :1], first)  # the given frame is kept
        before = steps[0][1].clone()
        for index, after, probs in steps:  # each step's distribution = the conditionals of the video so far
            if int(index.min()) >= m.frame_dims:  # generated frames (the given one is only replayed)
                with torch.no_grad():
                    expected = m.conditionals(before).flatten(1, -2)[:, index].exp()  # (n, S, K)
                torch.testing.assert_close(probs, expected.float(), atol=1e-5, rtol=1e-4)
            before = after
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a = m.sample(3, context=first[0], generator=g())  # (k, C, H, W): the same first frame for all
    assert torch.equal(a[:, 0], first[0, 0].expand(3, 1, 2, 2))
    assert torch.equal(a, m.sample(3, context=first[0], generator=g(), cached=False))  # cached = naive
    x = torch.zeros(3, 3, 1, 2, 2, dtype=torch.long)
    x[:, 0] = first[0, 0]
    assert torch.equal(a, m.sample(3, x=x, observed=m.context_mask(1), generator=g()))  # = x= / observed=


def test_video_errors_name_the_video_shape():
    m = PreviousFrame((3, 1, 2, 2), 3)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\) = \(B, 3, 1, 2, 2\)"):
        m.log_prob(torch.zeros(2, 1, 2, 2, dtype=torch.long))  # an image batch, not videos
    with pytest.raises(ValueError, match="no videos"):
        m.loss(torch.zeros(0, 3, 1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"needs shape \(T, C, H, W\)"):
        PreviousFrame((1, 2, 2), 3)
    first = torch.zeros(1, 1, 2, 2, dtype=torch.long)  # one frame (k, C, H, W)
    with pytest.raises(ValueError, match=r"context must hold the first frames of 2 videos"):
        m.sample(2, context=torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="give 1 to 2 frames"):
        m.sample(2, context=torch.zeros(3, 1, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="context must hold integer"):
        m.sample(2, context=first.float())
    with pytest.raises(ValueError, match="context values must lie in"):
        m.sample(2, context=first + 3)
    with pytest.raises(ValueError, match="not both"):
        m.sample(2, context=first, x=torch.zeros(2, 3, 1, 2, 2, dtype=torch.long), observed=m.context_mask(1))
    with pytest.raises(ValueError, match="frames must lie in 0..3"):
        m.context_mask(4)
    with pytest.raises(ValueError, match="for videos"):
        SampleStep(0, 1, torch.tensor([0]), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2, 2)).frames()
