"""Cached (fast) sampling for convolutional models: same numbers as the naive loop, much faster."""
import pytest
import torch

import armini
import torch.nn as nn

from armini.models.gated_pixelcnn import GatedPixelCNN
from armini.models.pixelcnn import PixelCNN
from armini.models.pixelcnnpp import PixelCNNpp
from armini.sampling_cache import CachedConvSampling, ConvCache, RasterConvSampler

CachedPixelCNN = PixelCNN  # PixelCNN's own cache (armini.fast.pixelcnn_cache)
assert issubclass(PixelCNN, CachedConvSampling)


class GenericPixelCNN(PixelCNN):
    """A subclass with a forward of its own gets the generic cache (armini.sampling_cache), which runs it."""

    def logits(self, x, y=None):
        return super().logits(x, y)


SMALL = dict(channels=12, n_layers=3, head_channels=12)
PCNN = dict(levels=4, channels=12, n_blocks=2, head_channels=12)
CASES = {
    "gated-gray": lambda: GatedPixelCNN(shape=(1, 6, 5), levels=4, **SMALL),
    "gated-colour": lambda: GatedPixelCNN(shape=(3, 4, 4), levels=4, **SMALL),
    "gated-classes": lambda: GatedPixelCNN(shape=(1, 5, 5), levels=4, num_classes=3, **SMALL),
    "gated-embedding": lambda: GatedPixelCNN(shape=(2, 4, 4), levels=5, input="embedding", embed_dim=3, **SMALL),
    "pixelcnn-gray": lambda: CachedPixelCNN(shape=(1, 6, 5), **PCNN),
    "pixelcnn-colour": lambda: CachedPixelCNN(shape=(3, 4, 4), **PCNN),
    "pixelcnn-classes": lambda: CachedPixelCNN(shape=(1, 5, 4), num_classes=3, **PCNN),
    "pixelcnn-embedding": lambda: CachedPixelCNN(shape=(2, 4, 4), input="embedding", embed_dim=3, **PCNN),
    "generic-gray": lambda: GenericPixelCNN(shape=(1, 6, 5), **PCNN),
    "generic-colour": lambda: GenericPixelCNN(shape=(3, 4, 4), **PCNN),
}


def make(case, seed=0):
    torch.manual_seed(seed)
    model = CASES[case]().eval()
    with torch.no_grad():  # larger weights than at init, so the conditionals are far from uniform
        for p in model.parameters():
            p.mul_(3.0)
    return model


labels = armini.class_labels  # 0, 1, 2, ... for conditional models; None otherwise


@pytest.mark.parametrize("case", CASES)
def test_cached_conditionals_match_the_full_forward_pass(case):
    """Pixel by pixel through the cache, on a fixed image, gives conditionals(x)."""
    model = make(case)
    x = torch.randint(model.levels, (2,) + model.shape)
    y = labels(model, 2)
    full = model.conditionals(x, y)  # (B, C, H, W, K)
    cache = model.init_cache(x, y)
    stepped = torch.empty_like(full)
    for index in model.generation_order():  # flat positions into x.flatten(1)
        stepped.flatten(1, -2)[:, index] = model.conditional_logprobs(x, index[None], y, cache)[:, 0]
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


def run_sampler(model, cached, n=3, seed=7, **kwargs):
    probs = []
    out = model.sample(n, generator=torch.Generator().manual_seed(seed), cached=cached,
                       callback=lambda s: probs.append(s.probs.clone()), **kwargs)
    return out, torch.stack(probs)


@pytest.mark.parametrize("case", CASES)
def test_cached_and_naive_sampling_agree(case):
    """Same generator seed -> identical images, and the same distribution at every step."""
    model = make(case)
    y = labels(model, 3)
    fast, p_fast = run_sampler(model, cached=True, y=y)
    slow, p_slow = run_sampler(model, cached=False, y=y)
    assert torch.equal(fast, slow)
    torch.testing.assert_close(p_fast, p_slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["gated-gray", "gated-colour", "pixelcnn-colour"])
def test_cached_completion_agrees(case):
    """Completing a partly observed image (top half given, a stray observed pixel lower down)."""
    model = make(case)
    x = torch.randint(model.levels, (2,) + model.shape)
    observed = torch.zeros(model.shape, dtype=torch.bool)
    observed[:, : model.shape[1] // 2] = True
    observed[0, -1, 1] = True
    fast, p_fast = run_sampler(model, True, n=2, x=x, observed=observed)
    slow, p_slow = run_sampler(model, False, n=2, x=x, observed=observed)
    assert torch.equal(fast, slow) and torch.equal(fast[:, observed], x[:, observed])
    torch.testing.assert_close(p_fast, p_slow, rtol=1e-5, atol=1e-6)


def test_naive_completion_skips_observed_steps_and_still_draws_the_cached_images():
    """Without a callback the naive sampler skips steps where every image is given, using up their
    random draws, so it draws exactly what the cached sampler draws."""
    model = make("gated-gray")
    C, H, W = model.shape
    x = torch.randint(model.levels, (2,) + model.shape)
    observed = torch.zeros(2, *model.shape, dtype=torch.bool)
    observed[:, :, :3] = True  # top 3 rows given in both images
    observed[0, 0, 4, 1] = True  # given in one image only: that step still runs
    calls = []
    original = model.conditional_logprobs
    model.conditional_logprobs = lambda *args: calls.append(1) or original(*args)
    slow = model.sample(2, x=x, observed=observed, cached=False, generator=torch.Generator().manual_seed(3))
    assert len(calls) == C * H * W - C * 3 * W
    del model.conditional_logprobs
    fast = model.sample(2, x=x, observed=observed, cached=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(slow, fast) and torch.equal(slow[observed], x[observed])


def test_cache_refuses_misuse():
    model = make("gated-gray")
    x = torch.zeros((1,) + model.shape, dtype=torch.long)
    cache = model.init_cache(x)
    C, H, W = model.shape

    def at(c, i, j):  # the flat position of dimension (c, i, j), as the sampling loop passes it
        return torch.tensor([(c * H + i) * W + j])

    model.conditional_logprobs(x, at(0, 0, 0), None, cache)
    with pytest.raises(ValueError, match="raster order"):
        model.conditional_logprobs(x, at(0, 2, 2), None, cache)  # skips pixels
    x[0, 0, 0, 0] = 1  # the pixel just sampled: fine
    model.conditional_logprobs(x, at(0, 0, 1), None, cache)
    x[0, 0, 0, 1] = 3  # the pixel just sampled ...
    x[0, 0, 0, 0] = 2  # ... and an older pixel changed behind the cache's back
    with pytest.raises(ValueError, match="stale"):
        model.conditional_logprobs(x, at(0, 0, 2), None, cache)
    with pytest.raises(ValueError, match="new init_cache"):  # another image than the one the cache started on
        model.conditional_logprobs(x.clone(), at(0, 0, 2), None, cache)


def test_cache_checks_only_the_last_pixel_per_step(monkeypatch):
    """The staleness check compares the pixel just drawn, not the whole image: O(n C) numbers per step
    (the old sampler compared all of x at every step, O(D^2) per image). The generic cache (PixelCNN's)
    compares; PixelCNN's and Gated PixelCNN's own rewrite the last pixel's input instead and compare nothing."""
    model = make("generic-colour")
    assert isinstance(model.init_cache(torch.zeros((1,) + model.shape, dtype=torch.long)), RasterConvSampler)
    compared = []
    equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda a, b: compared.append(a.numel()) or equal(a, b))
    n = 2
    model.sample(n, generator=torch.Generator().manual_seed(0))
    C, H, W = model.shape
    assert compared and max(compared) <= n * C, max(compared)


def test_cache_refuses_a_convolution_that_reads_the_future():
    cache = ConvCache(4, 4)
    conv = nn.Conv2d(2, 3, 3, padding=1)  # unmasked: reads the pixel to the right and the row below
    with pytest.raises(ValueError, match="cannot be evaluated"):
        cache.conv(conv, torch.randn(1, 2, 1, 1), 1, 1)


def test_cached_conv_matches_full_conv():
    """ConvCache on a same-padded masked 3x3, fed in raster order, reproduces the full convolution."""
    from armini.nn.masked import MaskedConv2d

    torch.manual_seed(0)
    conv = MaskedConv2d(2, 3, 3, "A")
    h = torch.randn(1, 2, 4, 5)
    cache = ConvCache(4, 5)
    out = torch.stack([torch.stack([cache.conv(conv, h[:, :, i:i + 1, j:j + 1], i, j)[0, :, 0, 0]
                                    for j in range(5)], -1) for i in range(4)], -2)  # (3, 4, 5)
    torch.testing.assert_close(out, conv(h)[0])


def test_cached_steps_leave_the_thread_setting_and_match_the_naive_steps():
    """On the default 28x28 model, the first cached steps give the naive steps' conditionals and leave
    torch's thread setting as it was (the cache runs a step on one thread). Speed: python -m armini.bench speed."""
    torch.manual_seed(0)
    model = GatedPixelCNN().eval()
    x = torch.randint(model.levels, (1, 1, 28, 28))
    threads = torch.get_num_threads()
    cache = model.init_cache(x)
    with torch.no_grad():
        for index in model.generation_order()[:30]:
            fast = model.conditional_logprobs(x, index[None], None, cache)
            torch.testing.assert_close(fast, model.conditional_logprobs(x, index[None]), rtol=1e-5, atol=1e-5)
    assert torch.get_num_threads() == threads


ROWS_CASES = {**CASES,
              "pixelcnnpp-gray": lambda: PixelCNNpp(shape=(1, 5, 6), levels=4, nr_filters=8, nr_resnet=1),
              "pixelcnnpp-colour": lambda: PixelCNNpp(shape=(3, 4, 4), levels=4, nr_filters=8, num_classes=2)}


@pytest.mark.parametrize("case", ROWS_CASES)
def test_naive_sampler_feeds_only_the_rows_so_far_and_draws_the_same_images(case):
    """A rows_so_far model's naive step runs on rows 0..i for a pixel in row i (not the whole image),
    and draws what the whole-image naive sampler draws (same seed, same images, same distributions)."""
    torch.manual_seed(0)
    model = ROWS_CASES[case]().eval()
    assert model.rows_so_far
    C, H, W = model.shape
    y = labels(model, 3)
    heights = []
    original = model.conditional_logprobs
    model.conditional_logprobs = lambda x, *args, **kw: heights.append(x.shape[2]) or original(x, *args, **kw)
    rows, p_rows = run_sampler(model, cached=False, y=y)
    assert heights == [i + 1 for i in range(H) for _ in range(W * C)]  # row i: rows 0..i
    model.rows_so_far = False  # the whole image at every step, as before
    heights.clear()
    whole, p_whole = run_sampler(model, cached=False, y=y)
    assert heights == [H] * (C * H * W)
    assert torch.equal(rows, whole)
    torch.testing.assert_close(p_rows, p_whole, rtol=1e-5, atol=1e-6)
    del model.conditional_logprobs, model.rows_so_far
    assert torch.equal(run_sampler(model, cached=True, y=y)[0], rows)  # and the cached sampler's images


@pytest.mark.parametrize("kind", ["masked-3x3-B", "down-right-2x2", "down-1x3-then-down-shift", "right-2x1-then-right-shift"])
def test_row_conv_matches_the_full_convolution(kind):
    """RowConv (the rows above once per row, row i's taps per pixel) fed in raster order reproduces
    the full (shifted) convolution at every position, zeros of the shift included."""
    from armini.nn.masked import MaskedConv2d
    from armini.nn.shifted import DownRightShiftedConv2d, DownShiftedConv2d, down_shift, right_shift
    from armini.sampling_cache import RowConv, conv_padding, conv_weight

    torch.manual_seed(0)
    n, F_in, H, W = 2, 3, 4, 5
    conv, shift, move = {
        "masked-3x3-B": (MaskedConv2d(F_in, 4, 3, "B"), (0, 0), None),
        "down-right-2x2": (DownRightShiftedConv2d(F_in, 4, (2, 2)), (0, 0), None),
        "down-1x3-then-down-shift": (DownShiftedConv2d(F_in, 4, (1, 3)), (1, 0), down_shift),
        "right-2x1-then-right-shift": (DownRightShiftedConv2d(F_in, 4, (2, 1)), (0, 1), right_shift),
    }[kind]
    h = torch.randn(n, F_in, H, W)
    with torch.no_grad():
        full = conv(h) if move is None else move(conv(h))  # (n, 4, H, W)
        left, _, top, _ = conv_padding(conv)
        w = conv_weight(conv)
        if kind == "masked-3x3-B":
            w = w[:, :, :2]  # the rows below the centre are masked (zero)
        rc = RowConv(w, conv.bias, top=top + shift[0], left=left + shift[1], n=n, W=W, shift=shift)
        out = torch.empty(n, 4)
        for i in range(H):
            rc.start_row(i)
            for j in range(W):
                rc.here[j].copy_(h[:, :, i, j])  # the input at (i, j), written at its step
                torch.testing.assert_close(rc.at(j, out=out), full[:, :, i, j], rtol=1e-5, atol=1e-6)


def test_row_conv_refuses_a_kernel_that_reads_the_future():
    from armini.sampling_cache import RowConv

    with pytest.raises(ValueError, match="not causal"):
        RowConv(torch.randn(4, 3, 2, 3), None, top=1, left=1, n=1, W=5)  # row i, column j+1: a later pixel
    with pytest.raises(ValueError, match="not causal"):
        RowConv(torch.randn(4, 3, 3, 3), None, top=1, left=1, n=1, W=5)  # row i+1


@pytest.mark.parametrize("kind", ["ordinal", "embedding"])
def test_level_table_gives_the_model_inputs(kind):
    """A pixel's input features looked up in the level table equal the model's own inputs module."""
    from armini.nn.inputs import ValueInput
    from armini.sampling_cache import LevelTable

    torch.manual_seed(0)
    C, K = 3, 6
    inputs = ValueInput(K, C, kind, dim=2)
    x = torch.randint(K, (4, C, 2, 3))
    table = LevelTable(inputs, C, K, torch.float32, x.device)
    out = torch.empty(4, 2 * C + 1)[:, :inputs.out_channels]  # a strided view, as in the caches' buffers
    with torch.no_grad():
        full = inputs(x)  # (4, C_in, 2, 3)
        for i in range(2):
            for j in range(3):
                assert torch.equal(table.write(x, i, j, out=out), full[:, :, i, j])
