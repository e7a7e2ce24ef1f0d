"""Gated PixelCNN and the shifted convolutions: the contract, causality, no blind spot, colour, classes."""
import itertools
import math

import pytest
import torch

from armini.causality import assert_causal, check_causality
from armini.models.gated_pixelcnn import GatedPixelCNN, conv1x1, gate, halves
from armini.nn.shifted import DownRightShiftedConv2d, DownShiftedConv2d, down_shift, right_shift
from helpers import class_labels as labels
from helpers import train_a_little

SMALL = dict(channels=12, n_layers=3, head_channels=12)
CASES = {
    "gray": dict(shape=(1, 6, 6), levels=4, **SMALL),
    "colour": dict(shape=(3, 4, 4), levels=4, **SMALL),
    "classes": dict(shape=(1, 5, 5), levels=4, num_classes=3, **SMALL),
}


def make(case, seed=0):
    torch.manual_seed(seed)
    return GatedPixelCNN(**CASES[case])


# ------------------------------------------------------------------------ shifted convolutions
def receptive(conv, in_channels=1, size=5, out_channel=0):
    """Which input positions move output (out_channel, 2, 2): (size, size) bool, by gradient."""
    torch.manual_seed(0)
    with torch.no_grad():
        conv.weight.uniform_(0.5, 1.5)  # every tap non-zero
    x = torch.zeros(1, in_channels, size, size, requires_grad=True)
    conv(x)[0, out_channel, 2, 2].backward()
    return x.grad[0].abs().sum(0) > 0


def test_shifts():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert down_shift(x)[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [3, 4, 5]]
    assert right_shift(x)[0, 0].tolist() == [[0, 0, 1], [0, 3, 4], [0, 6, 7]]


def test_shifted_conv_receptive_fields():
    seen = receptive(DownShiftedConv2d(1, 1, (2, 3)))
    assert seen.nonzero().tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    seen = receptive(DownRightShiftedConv2d(1, 1, (2, 2)))
    assert seen.nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    seen = receptive(DownRightShiftedConv2d(1, 1, (1, 3), mask_type="A"))  # the current pixel hidden
    assert seen.nonzero().tolist() == [[2, 0], [2, 1]]
    for conv in (DownShiftedConv2d(2, 4, (2, 3)), DownRightShiftedConv2d(2, 4, (2, 2), "B", 2)):
        assert conv(torch.randn(3, 2, 5, 7)).shape == (3, 4, 5, 7)  # same size out


def test_shifted_conv_channel_groups():
    """At the current pixel, group g reads image channels < g (A) or groups <= g (B); elsewhere everything."""
    conv = DownRightShiftedConv2d(3, 6, (1, 2), "A", groups_of_channels=3)
    centre = conv.mask[:, :, 0, -1]  # (out, in) at the current position
    assert centre.tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert (conv.mask[:, :, 0, 0] == 1).all()
    conv = DownRightShiftedConv2d(6, 3, (1, 2), "B", groups_of_channels=3)
    assert conv.mask[:, :, 0, -1].tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    with pytest.raises(ValueError):
        DownRightShiftedConv2d(4, 6, (1, 2), "A", groups_of_channels=3)
    with pytest.raises(ValueError):
        DownShiftedConv2d(1, 1, (2, 2))  # no centre column


def test_mask_is_applied_in_forward():
    """Adam must not be able to switch on a masked tap (masks multiply the weight in forward)."""
    conv = DownRightShiftedConv2d(1, 2, (1, 3), "A")
    opt = torch.optim.Adam(conv.parameters(), lr=0.1)
    for _ in range(3):
        loss = conv(torch.randn(4, 1, 3, 5)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not receptive(conv)[2, 2]


def test_gate_keeps_channel_groups():
    a = torch.randn(2, 12, 3, 3)
    f, g = halves(a, 3)  # groups of 4 channels, each [f f | g g]
    torch.testing.assert_close(f[:, 2:4], a[:, 4:6])
    torch.testing.assert_close(g[:, 2:4], a[:, 6:8])
    torch.testing.assert_close(gate(a, 1), torch.tanh(a[:, :6]) * torch.sigmoid(a[:, 6:]))


# ------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("case", CASES)
def test_shapes_and_normalisation(case):
    model = make(case)
    x = torch.randint(model.levels, (3,) + model.shape)
    lp = model.conditionals(x, labels(model, 3))
    assert lp.shape == (3,) + model.shape + (model.levels,)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, *model.shape))


@pytest.mark.parametrize("shape,num_classes", [((1, 2, 2), None), ((3, 1, 2), None), ((1, 2, 2), 2)])
def test_exhaustive_sum_is_one(shape, num_classes):
    """sum over all K^D images of p(x) = 1 (81 grey 2x2 images, 729 colour 1x2 ones)."""
    torch.manual_seed(0)
    model = GatedPixelCNN(shape=shape, levels=3, num_classes=num_classes, **SMALL).double()
    D = math.prod(shape)
    x = torch.tensor(list(itertools.product(range(3), repeat=D))).view(-1, *shape)
    y = None if num_classes is None else torch.ones(len(x), dtype=torch.long)
    total = model.log_prob(x, y).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("case", CASES)
def test_log_prob_and_loss_agree_with_conditionals(case):
    model = make(case)
    x = torch.randint(model.levels, (2,) + model.shape)
    y = labels(model, 2)
    lp = model.conditionals(x, y)
    pixels = model.log_prob_pixels(x, y)
    torch.testing.assert_close(pixels, lp.gather(-1, x.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(model.log_prob(x, y), pixels.flatten(1).sum(1))
    torch.testing.assert_close(model.loss(x, y), -pixels.mean() / math.log(2))


@pytest.mark.parametrize("case", CASES)
def test_training_loss_has_the_gradient_of_the_gathered_conditionals(case):
    """log_prob_pixels takes a shortcut (a cross-entropy on the head's (B*C, K, H, W) layout); its loss and
    gradient are those of -conditionals(x).gather(x) in the documented (B, C, H, W, K) layout, channel by channel."""
    model = make(case).double()
    x = torch.randint(model.levels, (3,) + model.shape)
    y = labels(model, 3)
    grads = []
    for loss_of in (lambda: model.loss(x, y),
                    lambda: -model.conditionals(x, y).gather(-1, x.unsqueeze(-1)).mean() / math.log(2)):
        model.zero_grad()
        loss_of().backward()
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_conv1x1_is_the_1x1_convolution_with_its_gradients():
    """conv1x1 (a batched matrix product, for speed) gives the convolution's output and gradients, also
    with a masked weight (the horizontal stack's 1x1, channel groups of a colour model)."""
    from armini.nn.masked import MaskedConv2d
    torch.manual_seed(0)
    for conv in (torch.nn.Conv2d(6, 9, 1), MaskedConv2d(6, 12, 1, "B", 3)):
        conv = conv.double()
        x = torch.randn(3, 6, 4, 5, dtype=torch.float64, requires_grad=True)
        grads = []
        for f in (lambda: conv(x), lambda: conv1x1(conv, x)):
            x.grad = None
            conv.zero_grad()
            out = f()
            (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
            grads.append([out.detach(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b)


# -------------------------------------------------------------------------------- causality
@pytest.mark.parametrize("case", CASES)
def test_causal_at_init_and_after_training(case):
    model = make(case)
    assert_causal(model, trials=2)
    assert_causal(train_a_little(model), trials=2)


def test_no_blind_spot():
    """Every earlier pixel moves the conditional of the last pixel and of a middle one (7x7, 4 layers).

    The farthest pixels move it by ~1e-7 only (a long path through 4 gated layers): float64, tiny atol."""
    torch.manual_seed(0)
    model = GatedPixelCNN(shape=(1, 7, 7), levels=4, channels=16, n_layers=4, head_channels=16).double()
    report = check_causality(train_a_little(model), trials=2, rtol=0.0, atol=1e-12)
    assert report.ok, report
    for target in [(0, 6, 6), (0, 3, 3), (0, 6, 0), (0, 1, 6)]:
        assert not report.blind_spot(target).any(), report.context_text(target)


def test_colour_sees_earlier_channels_of_its_own_pixel():
    model = train_a_little(make("colour"))
    report = check_causality(model, trials=3)
    assert report.ok, report
    context = report.context((2, 2, 2))  # blue of pixel (2, 2)
    assert context[0, 2, 2] and context[1, 2, 2]  # sees red and green of its own pixel
    assert not report.blind_spot((2, 2, 2)).any(), report.context_text((2, 2, 2))


def broken_first_layer_sees_itself(model):
    model.layers[0].h_conv.mask.fill_(1)  # mask A -> nothing hidden: the pixel sees its own value


def broken_vertical_not_shifted(model):
    def conditionals(x, y=None):  # like GatedPixelCNN.conditionals, without down_shift
        s = model.scale(model.check_input(x))
        v, h, skip = s, s, 0  # the vertical stack now reads the current row (and the pixel to the right)
        for layer in model.layers:
            v, link = layer.vertical(v, None)
            h, sk = layer.horizontal(h, link)
            skip = skip + sk
        return model.head_logprobs(skip)

    model.conditionals = conditionals  # an instance attribute shadows the method


def broken_channel_groups(model):
    model.layers[1].h_conv.mask.fill_(1)  # group g reads every group of the current pixel: R sees G and B


@pytest.mark.parametrize("case,breakage", [
    ("gray", broken_first_layer_sees_itself),
    ("gray", broken_vertical_not_shifted),
    ("colour", broken_channel_groups),
])
def test_check_fails_on_broken_variants(case, breakage):
    model = make(case)
    breakage(model)
    with pytest.raises(AssertionError, match="LEAKS"):
        assert_causal(model, trials=2)


# --------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("case", CASES)
def test_sampling_shape_range_and_seed(case):
    model = make(case)
    y = labels(model, 2)
    a = model.sample(2, y=y, generator=torch.Generator().manual_seed(3))
    b = model.sample(2, y=y, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2,) + model.shape and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < model.levels
    assert torch.equal(a, b)


def test_class_conditioning():
    model = train_a_little(make("classes"))
    x = torch.randint(model.levels, (1,) + model.shape).expand(3, -1, -1, -1)
    lp = model.conditionals(x, torch.tensor([0, 1, 2]))
    assert not torch.allclose(lp[0], lp[1]) and not torch.allclose(lp[1], lp[2])
    assert model.num_classes == 3 and GatedPixelCNN(**CASES["gray"]).num_classes is None


def test_bad_input_raises():
    model = make("gray")
    x = torch.randint(4, (2, 1, 6, 6))
    with pytest.raises(TypeError):
        model.conditionals(x.float())
    with pytest.raises(ValueError):
        model.conditionals(torch.randint(4, (2, 1, 5, 6)))
    with pytest.raises(ValueError):
        model.log_prob(x + 4)
    with pytest.raises(ValueError):
        model.conditionals(x, torch.zeros(2, dtype=torch.long))  # unconditional model given labels
    cond = make("classes")
    with pytest.raises(ValueError):
        cond.conditionals(torch.randint(4, (2, 1, 5, 5)))  # labels missing
    with pytest.raises(ValueError):
        cond.conditionals(torch.randint(4, (2, 1, 5, 5)), torch.tensor([0, 3]))  # label out of range
    for bad in (dict(kernel=4), dict(first_kernel=1), dict(n_layers=0), dict(num_classes=0)):
        with pytest.raises(ValueError):
            GatedPixelCNN(shape=(1, 6, 6), levels=4, **bad)
    with pytest.raises(TypeError):
        GatedPixelCNN(not_an_option=1)


def test_defaults():
    model = GatedPixelCNN()
    assert model.shape == (1, 28, 28) and model.levels == 256 and model.config.n_layers >= 5
    assert GatedPixelCNN(shape=(3, 8, 8), levels=4).config.channels % 3 == 0  # rounded to C channel groups
