"""Lesson 02's build-it exercises: each check passes the right answer and names what is wrong in a wrong one.

The harnesses below are the lesson's own (solutions/02_pixelcnn.ipynb): what each check compares."""
import math

import pytest
import torch
import torch.nn.functional as F

from armini.course import check
from armini.models import PixelCNN
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
