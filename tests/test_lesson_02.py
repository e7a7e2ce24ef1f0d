"""Lesson 02's build-it exercises: each check passes the right answer and names what is wrong in a wrong one.

The harnesses below are the lesson's own (solutions/02_pixelcnn.ipynb): what each check compares."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from armini import causality
from armini.course import check
from armini.models import ARModel, PixelCNN
from armini.nn.masked import MaskedConv2d

# ---------------------------------------------------------------------------------------------
# MaskedConv2d.forward


def conv_output(layer_class):
    def run(in_channels, out_channels, k, mask_type):
        layer = layer_class(in_channels, out_channels, k, mask_type)
        x = torch.randn(2, in_channels, 6, 6)  # (B, in, H, W)
        return {"output": layer(x).detach(), "self.weight after forward": layer.weight.detach()}
    return run


CONV_CASES = [(1, 4, 3, "A"), (4, 4, 3, "B"), (3, 6, 5, "A"), (6, 6, 1, "B")]


class Right(MaskedConv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class NoMask(MaskedConv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


class MaskedInPlace(MaskedConv2d):  # the shortcut of section 2: the output is right, the weight is spoilt
    def forward(self, x):
        self.weight.data *= self.mask
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


class NoBias(MaskedConv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, padding=self.padding)


class NoPadding(MaskedConv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias)


def test_masked_conv_forward_right(capsys):
    mine = conv_output(Right)
    assert check("MaskedConv2d.forward", mine, conv_output(MaskedConv2d), CONV_CASES) is mine
    assert capsys.readouterr().out == "✅ MaskedConv2d.forward: correct on 4 checks\n"


@pytest.mark.parametrize("layer, hint", [
    (NoMask, "case 1 of 4 (1, 4, 3, 'A'): 288 of 288 values differ at ['output']"),
    (MaskedInPlace, "case 1 of 4 (1, 4, 3, 'A'): 20 of 36 values differ at ['self.weight after forward']"),
    (NoBias, "case 1 of 4 (1, 4, 3, 'A'): 288 of 288 values differ at ['output']"),
    (NoPadding, "expected shape (2, 4, 6, 6) at ['output'], got (2, 4, 4, 4)"),
])
def test_masked_conv_forward_wrong(capsys, layer, hint):
    reference = conv_output(MaskedConv2d)
    assert check("MaskedConv2d.forward", conv_output(layer), reference, CONV_CASES) is reference
    out = capsys.readouterr().out
    assert out.startswith("❌ MaskedConv2d.forward: case") and hint in out, out
    assert "uses armini's reference version" in out


# ---------------------------------------------------------------------------------------------
# the batch loss in bits/dim


def loss_from(loss_fn):
    return lambda model, x: loss_fn(model.conditionals(x), x).detach()


def library_loss(model, x):
    return model.loss(x).detach()


def small_models():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return (PixelCNN(shape=(1, 6, 6), levels=4, channels=12, n_blocks=1, head_channels=12),
                PixelCNN(shape=(3, 4, 4), levels=4, channels=12, n_blocks=1, head_channels=12))


def loss_cases():
    gray, colour = small_models()
    g = torch.Generator().manual_seed(0)
    return [(gray, torch.randint(0, 4, (4, 1, 6, 6), generator=g)),
            (colour, torch.randint(0, 4, (3, 3, 4, 4), generator=g))]


def right_loss(logp, x):
    return -logp.gather(-1, x.unsqueeze(-1)).squeeze(-1).mean() / math.log(2)


@pytest.mark.parametrize("wrong, hint", [
    (lambda logp, x: -logp.gather(-1, x.unsqueeze(-1)).mean(), "case 1 of 2"),  # nats, not bits
    (lambda logp, x: -logp.gather(-1, x.unsqueeze(-1)).sum() / math.log(2), "case 1 of 2"),  # a sum, not a mean
    (lambda logp, x: logp.gather(-1, x.unsqueeze(-1)).mean() / math.log(2), "case 1 of 2"),  # the sign
    (lambda logp, x: -logp.mean() / math.log(2), "case 1 of 2"),  # every value's log-prob, not the true one's
])
def test_bits_per_dim_loss(capsys, wrong, hint):
    cases = loss_cases()
    mine = loss_from(right_loss)
    assert check("bits/dim loss", mine, library_loss, cases) is mine
    assert capsys.readouterr().out == "✅ bits/dim loss: correct on 2 checks\n"
    assert check("bits/dim loss", loss_from(wrong), library_loss, cases) is library_loss
    out = capsys.readouterr().out
    assert out.startswith("❌ bits/dim loss: " + hint) and "expected " in out and ", got " in out, out


# ---------------------------------------------------------------------------------------------
# the naive sampling loop


def images_from(sampler):
    return lambda model, n, seed: sampler(model, n, torch.Generator().manual_seed(seed))


def library_sampler(model, n, generator):
    return model.sample(n, generator=generator, cached=False)


def draw(probs, generator):
    """The lesson's inverse-CDF draw: probs (n, K) float64 -> (n,)."""
    u = torch.rand(probs.shape[0], generator=generator, dtype=torch.float64)  # (n,)
    cdf = probs.cumsum(-1)  # (n, K)
    return (cdf < u[:, None] * cdf[:, -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)


def naive(positions, pick=draw):
    """A naive sampler that visits (i, j, c) in `positions(C, H, W)` and draws each with `pick`."""
    @torch.no_grad()
    def sample(model, n, generator):
        x = torch.zeros((n, *model.shape), dtype=torch.long)  # (n, C, H, W)
        for i, j, c in positions(*model.shape):
            probs = torch.softmax(model.conditionals(x)[:, c, i, j].double(), dim=-1)  # (n, K)
            x[:, c, i, j] = pick(probs, generator)
        return x
    return sample


def raster(C, H, W):
    return [(i, j, c) for i in range(H) for j in range(W) for c in range(C)]


def columns_first(C, H, W):
    return [(i, j, c) for j in range(W) for i in range(H) for c in range(C)]


def channels_outer(C, H, W):  # every R, then every G, then every B: the wrong order for colour
    return [(i, j, c) for c in range(C) for i in range(H) for j in range(W)]


def sampler_cases():
    gray, colour = small_models()
    return [(gray, 3, 0), (gray, 2, 1), (colour, 3, 2)]


def test_naive_sampler_right(capsys):
    mine = images_from(naive(raster))
    assert check("naive sampling loop", mine, images_from(library_sampler), sampler_cases()) is mine
    assert capsys.readouterr().out == "✅ naive sampling loop: correct on 3 checks\n"


@pytest.mark.parametrize("wrong, hint", [
    (naive(columns_first), "case 1 of 3"),
    (naive(channels_outer), "case 3 of 3"),  # right for one channel, wrong for colour
    (naive(raster, lambda probs, g: probs.argmax(-1)), "case 1 of 3"),  # the likeliest value is not a draw
    (naive(raster, lambda probs, g: torch.multinomial(probs, 1, generator=g)[:, 0]), "case 1 of 3"),
])
def test_naive_sampler_wrong(capsys, wrong, hint):
    reference = images_from(library_sampler)
    assert check("naive sampling loop", images_from(wrong), reference, sampler_cases()) is reference
    out = capsys.readouterr().out
    assert out.startswith("❌ naive sampling loop: " + hint) and "values differ" in out, out


def test_the_naive_sampler_matches_the_cached_one():
    """Why the check can ask for identical images: one uniform per dimension, in order, for either sampler."""
    gray, colour = small_models()
    for model in (gray, colour):
        mine = naive(raster)(model, 3, torch.Generator().manual_seed(7))
        assert torch.equal(mine, model.sample(3, generator=torch.Generator().manual_seed(7)))


# ---------------------------------------------------------------------------------------------
# a three-block PixelCNN assembled from the learner's masked convolution


def same_pixelcnn(mine, theirs):
    """The lesson's comparison: shape, causality, normalisation, layers and masks, then armini's weights."""
    x = torch.randint(mine.levels, (4, *mine.shape), generator=torch.Generator().manual_seed(0))
    expected = theirs.conditionals(x)  # (4, C, H, W, K)
    logp = mine.conditionals(x)
    assert logp.shape == expected.shape, (f"conditionals have shape {tuple(logp.shape)}, expected "
                                          f"(B, C, H, W, K) = {tuple(expected.shape)}")
    report = causality.check_causality(mine)
    assert report.ok, f"not causal, {len(report.leaks)} leaks, e.g. {str(report).splitlines()[1].strip()}"
    total = logp.exp().sum(-1)  # (4, C, H, W): each conditional, summed over the K values
    worst = total.flatten()[(total - 1).abs().argmax()].item()
    assert abs(worst - 1) < 1e-4, f"a conditional sums to {worst:.4f} over the K values, not 1 (log-softmax over K?)"
    if mine.levels ** mine.dims <= 4096:  # small enough to list every image
        grid = torch.cartesian_prod(*[torch.arange(mine.levels)] * mine.dims).view(-1, *mine.shape)
        p_all = mine.log_prob(grid).exp().sum().item()
        assert abs(p_all - 1) < 1e-4, f"p(x) over all {len(grid)} images sums to {p_all:.4f}, not 1"
    mine_convs = [m for m in mine.modules() if isinstance(m, nn.Conv2d)]  # in the order they were made
    their_convs = [m for m in theirs.modules() if isinstance(m, nn.Conv2d)]
    assert len(mine_convs) == len(their_convs), (
        f"your model has {len(mine_convs)} convolutions; a PixelCNN with {theirs.config.n_blocks} blocks has "
        f"{len(their_convs)} (1 first layer, 3 per block, 2 in the head)")
    for n, (a, b) in enumerate(zip(mine_convs, their_convs), start=1):
        assert a.weight.shape == b.weight.shape, (f"convolution {n}: weight (out, in, k, k) {tuple(a.weight.shape)}, "
                                                  f"PixelCNN's {tuple(b.weight.shape)}")
        assert torch.equal(getattr(a, "mask", torch.ones(())), b.mask), (
            f"convolution {n} ({b.kernel_size[0]}x{b.kernel_size[0]}): its mask differs from PixelCNN's, "
            f"which is mask {'A' if n == 1 else 'B'}")
        assert (a.bias is None) == (b.bias is None), f"convolution {n}: PixelCNN's layers have a bias"
    with torch.no_grad():
        for a, b in zip(mine_convs, their_convs):  # armini's weights in your layers
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    gap = (mine.conditionals(x) - expected).abs().max().item()
    assert gap < 1e-4, (f"with PixelCNN's weights your log-probabilities differ from PixelCNN's by up to "
                        f"{gap:.3g}: same layers and masks, so look at conditionals (the ReLUs, h + block(h), "
                        f"the scaling to [-1, 1], reading the logits as (C, K))")


PIXELCNN_CASES = [dict(shape=(1, 2, 2), levels=3, channels=8, n_blocks=3, head_channels=8),
                  dict(shape=(1, 6, 6), levels=4, channels=8, n_blocks=3, head_channels=8),
                  dict(shape=(3, 3, 3), levels=4, channels=12, n_blocks=3, head_channels=12)]


def learner_pixelcnn(first_mask="A", later_mask="B", relu=True, residual=True, layout="CK", softmax=True,
                     extra_blocks=0, scale=True):
    """The lesson's MyPixelCNN, right by default; each argument makes one mistake a learner might make."""
    Conv = MaskedConv2d
    act = nn.ReLU if relu else nn.Identity

    class MyPixelCNN(ARModel):
        def __init__(self, shape=(1, 28, 28), levels=256, channels=32, n_blocks=3, head_channels=32):
            super().__init__(shape, levels)
            C, K, F = self.shape[0], self.levels, channels
            self.input_conv = Conv(C, F, 7, first_mask, C)
            self.blocks = nn.ModuleList([
                nn.Sequential(act(), Conv(F, F // 2, 1, later_mask, C), act(), Conv(F // 2, F // 2, 3, later_mask, C),
                              act(), Conv(F // 2, F, 1, later_mask, C))
                for _ in range(n_blocks + extra_blocks)])
            self.head = nn.Sequential(act(), Conv(F, head_channels, 1, later_mask, C),
                                      act(), Conv(head_channels, C * K, 1, later_mask, C))

        def conditionals(self, x, y=None):
            B, C, H, W = x.shape
            K = self.levels
            v = x.to(self.input_conv.weight.dtype)
            h = self.input_conv(v * 2 / (K - 1) - 1 if scale else v)
            for block in self.blocks:
                h = h + block(h) if residual else block(h)
            out = self.head(h)  # (B, C*K, H, W)
            if layout == "CK":
                logits = out.view(B, C, K, H, W).permute(0, 1, 3, 4, 2)
            elif layout == "KC":  # interleaved: channel c's logits drawn from every group
                logits = out.view(B, K, C, H, W).permute(0, 2, 3, 4, 1)
            else:  # "no permute": K read as if it were last already
                logits = out.view(B, C, H, W, K)
            return torch.log_softmax(logits, dim=-1) if softmax else logits

    return MyPixelCNN


def test_pixelcnn_right(capsys):
    mine = learner_pixelcnn()
    assert check("a three-block PixelCNN", mine, PixelCNN, PIXELCNN_CASES, compare=same_pixelcnn) is mine
    assert capsys.readouterr().out == "✅ a three-block PixelCNN: correct on 3 checks\n"


@pytest.mark.parametrize("mistake, hint", [
    (dict(first_mask="B"), "case 1 of 3 ({}): not causal, 4 leaks, e.g. (0, 0, 0) moves when (0, 0, 0) changes: "
                           "the dimension itself"),
    (dict(layout="no permute"), "case 1 of 3 ({}): not causal"),
    (dict(layout="KC"), "case 3 of 3 ({}): not causal"),  # right for grey, a leak in colour
    (dict(softmax=False), "case 1 of 3 ({}): a conditional sums to"),
    (dict(extra_blocks=-1), "your model has 9 convolutions; a PixelCNN with 3 blocks has 12"),
    (dict(later_mask="A"), "convolution 2 (1x1): its mask differs from PixelCNN's, which is mask B"),
    (dict(relu=False), "case 1 of 3 ({}): with PixelCNN's weights your log-probabilities differ"),
    (dict(residual=False), "case 1 of 3 ({}): with PixelCNN's weights your log-probabilities differ"),
    (dict(scale=False), "case 1 of 3 ({}): with PixelCNN's weights your log-probabilities differ"),
])
def test_pixelcnn_wrong(capsys, mistake, hint):
    wrong = learner_pixelcnn(**mistake)
    assert check("a three-block PixelCNN", wrong, PixelCNN, PIXELCNN_CASES, compare=same_pixelcnn) is PixelCNN
    out = capsys.readouterr().out
    assert out.startswith("❌ a three-block PixelCNN: ") and hint.split("({})")[-1] in out, out
    assert hint.split(" ({})")[0] in out, out
    assert "uses armini's reference version" in out
