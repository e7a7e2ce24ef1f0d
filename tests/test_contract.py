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
