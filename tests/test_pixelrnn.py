"""Tests of armini/models/pixelrnn.py: Row LSTM and Diagonal BiLSTM.

Besides the contract every model must meet (normalisation, likelihood API, causality
at init and after training, sampling, input checks), the two receptive fields:
the Row LSTM's triangle leaves earlier pixels unseen, the Diagonal BiLSTM sees all.
Exact receptive fields come from gradients in float64 (no path = exactly zero);
"moves the conditional" from the perturbation inspector, armini.causality.
"""
import functools
import itertools
import math

import pytest
import torch

from armini.causality import assert_causal, check_causality
from armini.models import pixelrnn
from armini.models.pixelrnn import DiagonalBiLSTM, RowLSTM, lstm_cell, skew, unskew
from armini.nn.masked import causal_mask
from helpers import train_a_little as _train

train_a_little = functools.partial(_train, steps=5)  # five Adam steps before each check

MODELS = {"row-lstm": RowLSTM, "diagonal-bilstm": DiagonalBiLSTM}
SMALL = dict(hidden=6, n_layers=2, head_channels=12)  # tiny widths: tests run in seconds
SHAPES = [(1, 4, 5), (3, 3, 4)]


def make(name, shape, levels=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    return MODELS[name](shape=shape, levels=levels, **{**SMALL, **kwargs}).double()


def input_gradient(model, x, target):
    """|d (w . log p(x_target = .)) / d x| for one image x (C, H, W) and random w: (C, H, W).

    The model runs in float64 on real-valued pixels; exactly 0 where no path exists."""
    c, i, j = target
    xf = x[None].to(torch.float64).requires_grad_()
    lp = torch.log_softmax(model.logits(xf), dim=-1)[0, c, i, j]  # (K,)
    w = torch.randn(model.levels, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (lp * w).sum().backward()
    return xf.grad[0].abs()


def earlier(shape, target):
    """(C, H, W) bool: the dimensions before target in raster order, channels within a pixel."""
    C, H, W = shape
    c, i, j = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W), indexing="ij")
    rank = (i * W + j) * C + c
    return rank < rank[target]


# ------------------------------------------------------------------------------- pieces
def test_lstm_cell_matches_torch_lstm_cell():
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(5, 4).double()
    x, h, c = torch.randn(3, 5).double(), torch.randn(3, 4).double(), torch.randn(3, 4).double()
    gates = x @ ref.weight_ih.T + ref.bias_ih + h @ ref.weight_hh.T + ref.bias_hh  # torch order i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)
    ours = torch.cat([o, f, i, g], dim=1)  # the paper's order [o, f, i, g]
    h_new, c_new = lstm_cell(ours.unsqueeze(-1), c.unsqueeze(-1), groups=1)
    h_ref, c_ref = ref(x, (h, c))
    torch.testing.assert_close(h_new[..., 0], h_ref)
    torch.testing.assert_close(c_new[..., 0], c_ref)


def test_skew_puts_diagonals_in_columns():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    s = skew(x)
    assert s.shape == (1, 1, 3, 6)
    for i, j in itertools.product(range(3), range(4)):
        assert s[0, 0, i, i + j] == x[0, 0, i, j]  # pixel (i, j) sits in column i + j
    assert int((s != 0).sum()) == 11  # everything else is zero (x[0, 0, 0, 0] is 0 too)
    torch.testing.assert_close(unskew(s, 4), x)


def test_config_stored_and_rounded_for_colour():
    m = RowLSTM(shape=(3, 4, 4), levels=8, hidden=7, head_channels=10, k=5)
    assert (m.config.hidden, m.config.head_channels, m.config.k) == (9, 12, 5)
    assert m.config.shape == (3, 4, 4) and m.config.levels == 8
    d = DiagonalBiLSTM(shape=(1, 4, 4), levels=8)
    assert d.config.hidden == 16 and d.config.n_layers == 2


# ----------------------------------------------------------------------- likelihood API
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_conditionals_are_normalised(name, shape):
    m = make(name, shape)
    x = torch.randint(4, (3,) + shape)
    lp = m.conditionals(x)
    assert lp.shape == (3,) + shape + (4,)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, *shape, dtype=torch.float64))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 2, 2), (3, 1, 1)])
def test_probabilities_of_all_images_sum_to_one(name, shape):
    m = train_a_little(make(name, shape, levels=3))
    D = math.prod(shape)
    images = torch.tensor(list(itertools.product(range(3), repeat=D))).view(-1, *shape)  # all 3^D images
    with torch.no_grad():
        total = m.log_prob(images).exp().sum()
    assert abs(float(total) - 1.0) < 1e-9


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_log_prob_and_loss_agree_with_conditionals(name, shape):
    m = make(name, shape)
    x = torch.randint(4, (2,) + shape)
    lpp = m.log_prob_pixels(x)
    expected = m.conditionals(x).gather(-1, x.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lpp, expected)
    torch.testing.assert_close(m.log_prob(x), lpp.flatten(1).sum(1))
    torch.testing.assert_close(m.loss(x), -lpp.mean() / math.log(2))


# ---------------------------------------------------------------------------- causality
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 3, 4)])
def test_causal_at_init_and_after_training(name, shape):
    m = make(name, shape)
    assert_causal(m)
    assert_causal(train_a_little(m))


def _broken_first_layer(m):
    C, F = m.shape[0], m.input_conv.out_channels
    m.input_conv.mask.copy_(causal_mask(m.config.first_kernel, "B", C, F, C))  # sees its own pixel


def _broken_row_conv(m):
    m.layers[0].input_to_state.mask.fill_(1.0)  # sees the right neighbour


def _broken_head(m):
    m.head[-1].mask.fill_(1.0)  # no channel groups: R's logits read G's and B's features


@pytest.mark.parametrize(
    "name, shape, breaker",
    [
        ("row-lstm", (1, 4, 4), _broken_first_layer),
        ("diagonal-bilstm", (1, 4, 4), _broken_first_layer),
        ("row-lstm", (1, 4, 4), _broken_row_conv),
        ("row-lstm", (3, 3, 3), _broken_head),
        ("diagonal-bilstm", (3, 3, 3), _broken_head),
    ],
)
def test_causality_check_catches_broken_variants(name, shape, breaker):
    m = make(name, shape)
    breaker(m)
    report = check_causality(train_a_little(m))
    assert not report.ok


def test_diagonal_bilstm_without_shift_leaks(monkeypatch):
    # the right-to-left pass sees the rest of its row: without the shift down, that is the future
    monkeypatch.setattr(pixelrnn, "down_shift", lambda h: h)
    report = check_causality(make("diagonal-bilstm", (1, 4, 4)))
    assert not report.ok
    assert any(t[1] == s[1] and s[2] > t[2] for t, s in report.leaks)  # a later pixel on the same row


# ------------------------------------------------------------------------ receptive fields
def test_row_lstm_has_a_triangular_blind_spot():
    shape, target = (1, 5, 12), (0, 4, 4)  # a middle pixel of the bottom row
    m = train_a_little(make("row-lstm", shape))
    grad = input_gradient(m, torch.randint(4, shape), target)
    blind = earlier(shape, target) & (grad == 0)
    assert blind.any(), "the Row LSTM should not see the far right of the rows above"
    assert blind[0, 3, 11] and blind[0, 2, 11]  # far right, rows above
    assert not blind[0, 3, :8].any() and not blind[0, 0, :4].any()  # inside the triangle
    assert (grad[~earlier(shape, target)] == 0).all()  # and nothing later
    report = check_causality(m)  # the inspector finds the same hole
    assert report.ok and report.unseen(target)[0, 3, 11]


@pytest.mark.parametrize("shape", [(1, 5, 10), (3, 4, 6)])
def test_diagonal_bilstm_sees_every_earlier_dimension(shape):
    C, H, W = shape
    m = train_a_little(make("diagonal-bilstm", shape))
    x = torch.randint(4, shape)
    for target in [(C - 1, H - 1, W - 1), (C - 1, H // 2, W // 2), (0, H - 1, 1), (C - 1, H - 1, 1)]:
        grad = input_gradient(m, x, target)
        before = earlier(shape, target)
        assert (grad[before] > 0).all(), f"blind spot for {target}: {(before & (grad == 0)).nonzero().tolist()}"
        assert (grad[~before] == 0).all()


def test_diagonal_bilstm_no_blind_spot_after_training():
    # the perturbation inspector agrees: every earlier dimension moves the conditional
    for shape in [(1, 5, 5), (3, 3, 4)]:
        C, H, W = shape
        report = assert_causal(train_a_little(make("diagonal-bilstm", shape)), trials=2)
        for target in [(C - 1, H - 1, W - 1), (C - 1, H // 2, W // 2)]:
            assert not report.unseen(target).any(), report.context_text(target)


def test_paper_right_to_left_input_would_miss_last_pixel_of_previous_row():
    # Why the right-to-left pass reads the pixels: restricted to the masked stream (mask B, no
    # pixels), nothing on row i-1 carries pixel (i-1, W-1), so (i, 1) cannot see it.
    shape, target = (1, 4, 9), (0, 3, 1)
    m = make("diagonal-bilstm", shape)
    with torch.no_grad():
        for layer in m.layers:
            conv = layer.right_to_left.input_to_state
            F = conv.in_channels - 1
            conv.weight[:, F:] = 0  # no pixels
            conv.weight[:, :F] *= causal_mask(1, "B", F, conv.out_channels, 1)  # mask B on the stream
    grad = input_gradient(m, torch.randint(4, shape), target)
    assert grad[0, 2, 8] == 0 and (grad[0, 2, :8] > 0).all()
    grad = input_gradient(make("diagonal-bilstm", shape), torch.randint(4, shape), target)
    assert grad[0, 2, 8] > 0  # the model as built sees it


@pytest.mark.parametrize("name", MODELS)
def test_colour_channels_see_earlier_channels_of_their_pixel(name):
    shape = (3, 3, 4)
    m = train_a_little(make(name, shape))
    x = torch.randint(4, shape)
    i, j = 1, 2
    R, G, B = (input_gradient(m, x, (c, i, j))[:, i, j] for c in range(3))  # each (3,): own pixel's channels
    assert R[0] == 0 and R[1] == 0 and R[2] == 0  # R: none of its own pixel
    assert G[0] > 0 and G[1] == 0 and G[2] == 0  # G: R only
    assert B[0] > 0 and B[1] > 0 and B[2] == 0  # B: R and G
    report = assert_causal(m)
    assert report.context((1, i, j))[0, i, j] and report.context((2, i, j))[:2, i, j].all()


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_sampler_reproduces_full_forward(name, shape):
    m = train_a_little(make(name, shape, levels=5)).eval()
    x = torch.randint(5, (2,) + shape)
    with torch.no_grad():
        full = m.conditionals(x)  # (2, C, H, W, K)
        cache = m.init_cache(x)
        for index in m.sampling_steps():
            torch.testing.assert_close(m.conditional_logprobs(x, index, None, cache)[:, 0], full.flatten(1, -2)[:, index[0]])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_sampling_shape_range_and_seed(name, shape):
    m = make(name, shape).float()
    a = m.sample(3, generator=torch.Generator().manual_seed(7))
    b = m.sample(3, generator=torch.Generator().manual_seed(7))
    slow = m.sample(3, generator=torch.Generator().manual_seed(7), cached=False)
    assert a.shape == (3,) + shape and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 4
    assert torch.equal(a, b) and torch.equal(a, slow)
    assert m.training  # sample restores the mode


@pytest.mark.parametrize("name", MODELS)
def test_sampling_keeps_observed_top_half(name):
    shape = (1, 4, 4)
    m = make(name, shape).float()
    x = torch.randint(4, (2,) + shape)
    observed = torch.zeros(shape, dtype=torch.bool)
    observed[:, :2] = True
    out = m.sample(2, x=x, observed=observed, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :2], x[:, :, :2])


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", MODELS)
def test_bad_inputs_raise(name):
    m = make(name, (1, 3, 3))
    with pytest.raises(TypeError):
        m.log_prob(torch.rand(2, 1, 3, 3))  # floats
    with pytest.raises(ValueError):
        m.log_prob(torch.zeros(2, 1, 3, 4, dtype=torch.long))  # wrong shape
    with pytest.raises(ValueError):
        m.log_prob(torch.full((2, 1, 3, 3), 4))  # out of range for levels=4
    with pytest.raises(ValueError):
        m.log_prob(torch.zeros(2, 1, 3, 3, dtype=torch.long), y=torch.zeros(2, dtype=torch.long))  # unconditional
    with pytest.raises(ValueError):
        m.sample(0)
    with pytest.raises(ValueError):
        MODELS[name](shape=(1, 3, 3), levels=4, hidden=0)
    with pytest.raises(ValueError):
        MODELS[name](shape=(1, 3), levels=4)
    with pytest.raises(TypeError):
        MODELS[name](shape=(1, 3, 3), levels=4, no_such_option=1)


def test_row_lstm_even_kernel_raises():
    with pytest.raises(ValueError):
        RowLSTM(shape=(1, 3, 3), levels=4, k=2)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_class_conditional_pixelrnn(name, shape):
    """num_classes: normalised for every class, causal, the label matters, cached == naive sampling."""
    m = make(name, shape, levels=3, num_classes=4)
    x = torch.randint(3, (2,) + shape)
    y = torch.tensor([1, 3])
    with torch.no_grad():
        m.class_emb.weight.mul_(5.0)  # make the classes differ clearly
        lp = m.conditionals(x, y)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, *shape, dtype=lp.dtype), atol=1e-5)
    assert not torch.allclose(m.conditionals(x, torch.tensor([0, 0])), m.conditionals(x, torch.tensor([1, 1])))
    assert_causal(m, y=torch.tensor([2]))
    a = m.sample(2, y=y, generator=torch.Generator().manual_seed(0))
    b = m.sample(2, y=y, generator=torch.Generator().manual_seed(0), cached=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="class-conditional"):
        m.loss(x)
