"""Video Pixel Network (armini.models.vpn) and the ConvLSTM cell (armini.nn.convlstm).

The shared video contract (normalisation, frame causality, context continuation, cached = naive)
runs on every video model in tests/test_contract.py; here: what is particular to the VPN."""
import pytest
import torch
import torch.nn.functional as F

from armini import causality
from armini.models.vpn import VPN
from armini.nn.convlstm import ConvLSTMCell
from helpers import all_images, train_a_little

SMALL = dict(channels=8, head_channels=8, encoder_channels=8, lstm_channels=8, n_layers=2)


def vpn(shape=(3, 1, 3, 3), levels=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    return VPN(shape=shape, levels=levels, **{**SMALL, **kwargs})


def videos(model, n=4, seed=1):
    return torch.randint(model.levels, (n,) + model.shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ ConvLSTM
def test_convlstm_step_follows_the_equations():
    torch.manual_seed(0)
    cell = ConvLSTMCell(2, 3, kernel=3)
    with torch.no_grad():
        for w in (cell.w_ci, cell.w_cf, cell.w_co):
            w.normal_()  # peepholes start at 0: make them matter
    x, h0, c0 = torch.randn(2, 2, 4, 5), torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    h, c = cell(x, (h0, c0))
    # eq. 3 of Shi et al. 2015, with W_x. * X + W_h. * H as two separate convolutions
    Wx, Wh = cell.conv.weight[:, :2], cell.conv.weight[:, 2:]
    pre = F.conv2d(x, Wx, padding=1) + F.conv2d(h0, Wh, padding=1) + cell.conv.bias[:, None, None]
    a_i, a_f, a_g, a_o = pre.chunk(4, 1)
    i = torch.sigmoid(a_i + cell.w_ci * c0)
    f = torch.sigmoid(a_f + cell.w_cf * c0)
    c_new = f * c0 + i * torch.tanh(a_g)
    o = torch.sigmoid(a_o + cell.w_co * c_new)
    torch.testing.assert_close(c, c_new)
    torch.testing.assert_close(h, o * torch.tanh(c_new))
    assert h.shape == (2, 3, 4, 5)  # the state keeps the frame size
    torch.testing.assert_close(cell.conv.bias[3:6], torch.ones(3))  # forget bias 1: remember at the start


def test_convlstm_carries_its_state_and_checks_its_settings():
    torch.manual_seed(0)
    cell = ConvLSTMCell(1, 4, kernel=3, peephole=False)
    x = torch.randn(1, 1, 3, 3)
    first = cell(x)  # zero state
    assert torch.equal(first[0], cell(x, cell.initial_state(x))[0])
    assert not torch.allclose(cell(x, first)[0], first[0])  # the same input after a step: the memory moved it
    with pytest.raises(ValueError, match="odd"):
        ConvLSTMCell(1, 4, kernel=2)
    with pytest.raises(ValueError, match="positive"):
        ConvLSTMCell(1, 0)


# ------------------------------------------------------------------------------ likelihood
@pytest.mark.parametrize("spatial", [True, False])
@pytest.mark.parametrize("shape", [(2, 1, 2, 2), (2, 3, 1, 1)], ids=["gray-2x2", "rgb-1x1"])
def test_every_video_sums_to_one(spatial, shape):
    """sum over all 2^8 (or 2^6) videos of p(x) = 1, before and after training: normalised AND causal."""
    model = vpn(shape, 2, spatial=spatial)
    x = all_images(shape, 2)
    for trained in (False, True):
        with torch.no_grad():
            total = torch.logsumexp(model.log_prob(x).double(), 0).exp()
        assert total.item() == pytest.approx(1.0, abs=1e-4), f"trained={trained}"
        train_a_little(model, steps=3)


def test_the_frames_so_far_give_the_same_conditionals():
    """What the naive sampler relies on (frames_so_far): frame t's conditionals read frames <= t only."""
    model = vpn()
    x = videos(model)
    with torch.no_grad():
        full = model.conditionals(x)
        for t in range(1, 4):
            with model.inputs_checked():  # the first t frames are not a whole video: trusted, as in the sampler
                torch.testing.assert_close(model.conditionals(x[:, :t]), full[:, :t])


# ------------------------------------------------------------------------------ causality
def test_a_pixel_sees_the_earlier_frames_and_its_own_frames_earlier_pixels():
    model = vpn((3, 1, 3, 3), 3)
    train_a_little(model, steps=3)
    report = causality.assert_causal(model)
    assert torch.equal(report.frame_matrix(), torch.ones(3, 3).tril().bool())
    target = (2, 0, 1, 1)  # the centre of the last frame
    seen = report.context(target)
    assert seen[:2].all()  # every pixel of frames 0 and 1
    assert seen[2, 0].flatten().tolist() == [True] * 4 + [False] * 5  # raster order within its own frame


def test_a_colour_sub_pixel_sees_the_earlier_frame_and_its_earlier_channels():
    """The architecture's context (positive-weight probe on a white video) of G at pixel (0, 1) of frame 1:
    all of frame 0, every channel of pixel (0, 0), R of its own pixel, nothing later."""
    model = vpn((2, 3, 2, 2), 3)
    white = torch.full((1,) + model.shape, 2)
    report = causality.check_causality(causality.positive_copy(model, 0.3), white, trials=1, rtol=0, atol=0)
    assert report.ok
    seen = report.context((1, 1, 0, 1))  # (T, C, H, W)
    assert seen[0].all()
    assert seen[1, :, 0, 0].all() and seen[1, :, 0, 1].tolist() == [True, False, False]
    assert not seen[1, :, 1].any()


def test_without_spatial_dependencies_no_pixel_sees_its_own_frame():
    model = vpn((3, 1, 3, 3), 3, spatial=False)
    train_a_little(model, steps=3)
    steps = model.sampling_steps()
    assert len(steps) == 3 and all(len(s) == 9 for s in steps)  # one step per frame
    report = causality.assert_causal(model)  # a frame's pixels share a step: none may see another
    assert not torch.diagonal(report.frame_matrix()).any()
    assert report.frame_matrix()[2, :2].all()
    assert "frame 2 sees frames 0, 1 and none of its own pixels" in str(report)
    lp = model.conditionals(videos(model))
    x2 = videos(model)
    x2[:, :2] = videos(model)[:, :2]  # same past, another last frame
    x2[:, 2] = (x2[:, 2] + 1) % 3
    torch.testing.assert_close(model.conditionals(x2)[:, 2], lp[:, 2])  # frame 2 never reads frame 2


@pytest.mark.parametrize("ahead", [1, 2])
def test_a_conditioning_map_from_the_future_is_caught(ahead):
    class Peeking(VPN):
        def context_maps(self, x):  # frame t gets s_{t+ahead}, which has read frames < t + ahead
            s = super().context_maps(x)
            return torch.cat([s[:, ahead:], s[:, -1:].expand(-1, ahead, -1, -1, -1)], 1)

    torch.manual_seed(0)
    report = causality.check_causality(Peeking(shape=(3, 1, 2, 2), levels=3, **SMALL))
    assert not report.ok
    if ahead == 1:  # its own frame, all of it: the later pixels leak
        assert report.frame_leaks == [] and "a later dimension of the same frame (frame 0)" in str(report)
    else:
        assert (0, 1) in report.frame_leaks and "a later frame (frame 1; the target is in frame 0)" in str(report)


# ------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("spatial", [True, False])
def test_cached_sampling_equals_naive_sampling(spatial):
    model = vpn((3, 1, 4, 4), 4, spatial=spatial)
    train_a_little(model, steps=3)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    cached = model.sample(3, generator=g())
    assert torch.equal(cached, model.sample(3, generator=g(), cached=False))
    first = videos(model, 3)[:, :1]
    cont = model.sample(3, context=first, generator=g())
    assert torch.equal(cont[:, :1], first)
    assert torch.equal(cont, model.sample(3, context=first, generator=g(), cached=False))
    model.frames_so_far = False  # the naive sampler on whole videos: the same draws
    assert torch.equal(cached, model.sample(3, generator=g(), cached=False))


def test_the_cached_sampler_gives_the_conditionals_of_the_video_so_far():
    model = vpn((2, 3, 3, 3), 3).eval()  # colour: channel groups in the decoder
    cache_probs, x_seen = [], []
    model.sample(2, generator=torch.Generator().manual_seed(0),
                 callback=lambda s: (cache_probs.append((s.index.clone(), s.probs.clone())), x_seen.append(s.x.clone())))
    before = torch.zeros_like(x_seen[0])
    for (index, probs), after in zip(cache_probs, x_seen):
        with torch.no_grad():
            expected = model.conditionals(before).flatten(1, -2)[:, index].exp()
        torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
        before = after


def test_given_frames_cost_no_decoder_steps_and_a_frame_given_in_part_is_caught_up():
    model = vpn((3, 1, 3, 3), 3)
    train_a_little(model, steps=2)
    calls = []
    strip = model.frame_strip
    model.frame_strip = lambda cache, frame, conds, i, j0, j1: calls.append(i) or strip(cache, frame, conds, i, j0, j1)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    x = videos(model, 2)
    out = model.sample(2, context=x[:, :2], generator=g())
    assert len(calls) == model.frame_dims  # only frame 2's pixels ran the decoder (the sampling loop skipped the rest)
    assert torch.equal(out, model.sample(2, context=x[:, :2], generator=g(), cached=False))
    observed = model.context_mask(1)
    observed[1, :, 0] = True  # frame 0 and the top row of frame 1
    part = model.sample(2, x=x, observed=observed, generator=g())
    assert torch.equal(part[:, 1, :, 0], x[:, 1, :, 0]) and torch.equal(part[:, 0], x[:, 0])
    assert torch.equal(part, model.sample(2, x=x, observed=observed, generator=g(), cached=False))


def test_the_cached_sampler_goes_frame_by_frame():
    model = vpn()
    x = torch.zeros((1,) + model.shape, dtype=torch.long)
    cache = model.init_cache(x)
    with pytest.raises(ValueError, match="frame by frame"):
        model.conditional_logprobs(x, torch.tensor([model.frame_dims]), None, cache)  # frame 1 before frame 0


# ------------------------------------------------------------------------------ settings
def test_bad_settings_are_refused_clearly():
    with pytest.raises(ValueError, match=r"needs shape \(T, C, H, W\)"):
        VPN(shape=(1, 8, 8), levels=4)
    with pytest.raises(ValueError, match="kernel must be odd"):
        vpn(kernel=4)
    with pytest.raises(ValueError, match="lstm_kernel must be odd"):
        vpn(lstm_kernel=1)
    with pytest.raises(ValueError, match="n_layers must be at least 1"):
        vpn(n_layers=0)
    model = vpn()
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\) = \(B, 3, 1, 3, 3\)"):
        model.loss(torch.zeros(2, 1, 3, 3, dtype=torch.long))


def test_the_config_rebuilds_the_model_and_nats_per_frame_converts():
    from armini.models.base import nats_per_frame
    from armini.train import model_kwargs

    model = vpn(spatial=False)
    again = VPN(**model_kwargs(model))
    assert again.config == model.config and not again.config.spatial
    x = videos(model)
    with torch.no_grad():
        bpd = model.loss(x).item()
        assert nats_per_frame(bpd, model.shape) == pytest.approx(float(model.nats_per_frame(x).mean()), rel=1e-5)


def test_trains_on_moving_mnist_and_continues_its_frames():
    """End to end on helper D's generator: fit and evaluate read videos, training lowers the test bits/dim,
    and a continuation keeps the given digits' frames."""
    from armini.data import moving_mnist
    from armini.train import evaluate, fit

    train = moving_mnist(32, frames=3, size=8, digits=1, digit_size=7, levels=4, seed=0)
    test = moving_mnist(8, frames=3, size=8, digits=1, digit_size=7, levels=4, seed=0, split="test")
    model = vpn((3, 1, 8, 8), 4)
    before = evaluate(model, test)
    fit(model, train, steps=15, batch_size=8, lr=5e-3, progress=False)
    after = evaluate(model, test)
    assert after < before - 0.1, (before, after)
    x = test.videos[:2].long()
    out = model.sample(2, context=x[:, :2], generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :2], x[:, :2]) and out.shape == (2, 3, 1, 8, 8)


def test_context_maps_run_the_lstm_over_the_shifted_encodings():
    """VPN.context_maps (which skips encoding the last frame) = the ConvLSTM over context_inputs(enc of all frames)."""
    from armini.models.vpn import context_inputs
    model = vpn(shape=(4, 1, 5, 5), levels=4)
    x = videos(model, n=2)  # (2, 4, 1, 5, 5)
    B, T = x.shape[:2]
    with torch.no_grad():
        enc = model.encoder(model.scale(x.flatten(0, 1))).view(B, T, -1, 5, 5)  # every frame
        u = context_inputs(enc)  # (B, T, F_e, H, W)
        assert torch.equal(u[:, 0], torch.zeros_like(u[:, 0])) and torch.equal(u[:, 1:], enc[:, :-1])
        state, maps = None, []
        for t in range(T):
            state = model.lstm(u[:, t], state)
            maps.append(state[0])
        torch.testing.assert_close(model.context_maps(x), torch.stack(maps, 1))


def test_conv_lstm_step_is_the_cells_step_with_and_without_peepholes():
    from armini.nn.convlstm import conv_lstm_step
    for peephole in (True, False):
        torch.manual_seed(0)
        cell = ConvLSTMCell(2, 3, 3, peephole=peephole)
        if peephole:
            for w in (cell.w_ci, cell.w_cf, cell.w_co):
                torch.nn.init.normal_(w)
        x, h, c = torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        peeps = (cell.w_ci, cell.w_cf, cell.w_co) if peephole else ()
        got = conv_lstm_step(x, h, c, cell.conv, *peeps)
        want = cell(x, (h, c))
        assert all(torch.equal(a, b) for a, b in zip(got, want))
