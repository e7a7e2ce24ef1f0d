"""armini.models.videogpt: a 3D VQ-VAE + a GPT over its (T', h, w) tokens. The video contract where it applies to a
two-stage model (shapes, units, the bound adds up from its two stages), the prior's token-level causality (full and
block-local attention), KV-cached sampling = naive sampling, continuing given frames, class conditioning, two-stage
training and rebuilding from the stored settings."""
import math

import pytest
import torch

from armini import causality, data, train
from armini.models.base import LN2, VideoARModel
from armini.models.videogpt import VideoGPT, VideoTokenPrior, default_blocks, layer_blocks, video_observed_tokens
from armini.nn.attention import block_local_mask
from armini.tokenizers.video import VQVAE3D
from helpers import train_a_little

SHAPE, LEVELS = (4, 1, 8, 8), 8  # tokens (2, 4, 4): 32 per video
TOKENIZER = dict(space_down=2, time_down=2, channels=8, codebook_size=12, dim=4)
PRIOR = dict(dim=16, n_layers=2, n_heads=2)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return VideoGPT(shape=SHAPE, levels=LEVELS, tokenizer=dict(TOKENIZER), prior_kwargs=dict(PRIOR), **kw)


def videos(n=3, seed=0):
    return torch.randint(LEVELS, (n,) + SHAPE, generator=torch.Generator().manual_seed(seed))


def test_defaults_fit_moving_mnist_8x16x16():
    m = VideoGPT()  # shape (8, 1, 16, 16), 256 levels: what `python -m armini train videogpt` builds
    assert isinstance(m, VideoARModel) and m.shape_axes == 4 and m.item == "video"
    assert m.token_shape == (4, 4, 4) and m.prior.shape == (4, 4, 4) and m.time_down == 2
    assert isinstance(m.tokenizer, VQVAE3D) and m.tokenizer.quantizer.ema
    assert m.unit == "bits/dim" and m.nll_is_bound and m.two_stage
    assert m.prior.unit == "bits/token" and m.prior.config.attention == "full"
    assert len(m.sampling_steps()) == 64  # one step per token, not per pixel


def test_the_bound_is_the_decoders_bits_plus_the_priors_and_the_units_are_the_contracts():
    m = tiny().eval()
    x = videos()
    with torch.no_grad():
        lpp = m.log_prob_pixels(x)
        assert lpp.shape == (3,) + SHAPE  # (B, T, C, H, W)
        torch.testing.assert_close(m.log_prob(x), lpp.flatten(1).sum(1))
        z = m.encode(x)  # (B, T', h, w)
        assert z.shape == (3, 2, 4, 4)
        decoder = m.tokenizer.decode_logprobs(z).gather(-1, x.unsqueeze(-1)).flatten(1).sum(1)  # log p(x | z)
        prior = m.prior.log_prob(z)  # log p(z)
        torch.testing.assert_close(m.log_prob(x), decoder + prior)
        torch.testing.assert_close(m.nll_bits(x), -(decoder + prior) / LN2)
        torch.testing.assert_close(m.nats_per_frame(x), -(decoder + prior) / 4)
        torch.testing.assert_close(m.loss(x), m.prior.loss(z))  # what the prior trains on: bits per token
        assert m.loss(x).item() == pytest.approx(-float(prior.mean()) / 32 / LN2, rel=1e-5)
    with pytest.raises(ValueError, match="whole images only"):
        m.log_prob(x, observed=m.context_mask(2))  # a two-stage bound scores whole videos
    with pytest.raises(NotImplementedError, match="no per-pixel conditionals"):
        m.conditionals(x)


def test_position_embeddings_are_three_tables_summed():
    p = tiny().prior
    t, i, j = p.pos  # (L,) each: raster order (t, i, j)
    assert p.pos.shape == (3, 32) and (t * 16 + i * 4 + j).tolist() == list(range(32))
    seq = torch.randint(12, (2, 32))
    expected = p.token_emb(seq[:, :-1]) + p.time_emb(t[1:]) + p.row_emb(i[1:]) + p.col_emb(j[1:])
    torch.testing.assert_close(p.embed(seq)[:, 1:], expected)  # position p holds token p-1 + where token p lies
    torch.testing.assert_close(p.embed(seq)[:, 0], (p.start + p.time_emb.weight[0] + p.row_emb.weight[0]
                                                    + p.col_emb.weight[0]).expand(2, -1))
    torch.testing.assert_close(p.embed(seq, 5, 9), p.embed(seq)[:, 5:9])  # the cached sampler's slices


@pytest.mark.parametrize("attention", ["full", "block-local"])
def test_the_prior_is_causal_over_tokens_at_init_and_after_training(attention):
    m = tiny(attention=attention)
    p = m.prior
    for _ in range(2):
        report = causality.assert_causal(p)  # no token's conditional moves with itself or a later token
        if attention == "full":  # and the last token reads every earlier one
            assert report.seen[-1, :-1].all()
        train_a_little(p, steps=3)


def test_block_local_tokens_read_only_their_block():
    """With the right shift, position q holds token q-1: the conditional of token p reads the tokens q-1 of the
    positions q <= p of its block (one layer), and never any other."""
    grid, block = (2, 4, 4), (1, 2, 2)
    torch.manual_seed(0)
    p = VideoTokenPrior(grid, 12, dim=16, n_layers=1, n_heads=2, attention="block-local", block=block)
    train_a_little(p, steps=3)
    seen = causality.check_causality(p).seen  # (L, L): [p, j] token p's conditional moves with token j
    same = block_local_mask(grid, block)
    L = same.shape[0]
    readable = torch.zeros(L, L, dtype=torch.bool)
    for a in range(L):
        for q in range(1, a + 1):
            readable[a, q - 1] = bool(same[a, q])
    assert not (seen & ~readable).any()  # nothing outside the block
    assert seen[5, 4] and seen[5, 0] and not seen[5, 2]  # (0, 1, 1) reads tokens 4 and 0 (positions 5 and 1)
    assert seen[16].nonzero().flatten().tolist() == [15]  # a block's first position: only the token it holds


def test_block_local_with_the_whole_grid_as_its_block_is_full_attention():
    full = tiny()
    whole = tiny(attention="block-local", block=(2, 4, 4))
    whole.load_state_dict(full.state_dict())
    x = videos()
    with torch.no_grad():
        torch.testing.assert_close(whole.log_prob(x), full.log_prob(x))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(whole.sample(2, generator=g()), full.sample(2, generator=g()))


def test_block_shapes_per_layer():
    assert default_blocks((4, 4, 4)) == ((4, 2, 2), (1, 4, 4))
    assert layer_blocks((4, 4, 4), None, 3) == [(4, 2, 2), (1, 4, 4), (4, 2, 2)]
    assert layer_blocks((4, 4, 4), (2, 2, 2), 2) == [(2, 2, 2), (2, 2, 2)]
    m = tiny(attention="block-local", block=[(1, 4, 4), (2, 2, 2)])
    assert [b.block for b in m.prior.blocks] == [(1, 4, 4), (2, 2, 2)]
    assert m.config.prior_kwargs["attention"] == "block-local"
    with pytest.raises(ValueError, match="attention must be one of"):
        tiny(attention="axial")
    with pytest.raises(ValueError, match="block= is for attention='block-local'"):
        tiny(block=(1, 2, 2))
    with pytest.raises(ValueError, match="block must be"):
        tiny(attention="block-local", block=(1, 2))


@pytest.mark.parametrize("attention", ["full", "block-local"])
def test_cached_sampling_draws_what_naive_sampling_draws(attention):
    m = tiny(attention=attention)
    train_a_little(m.prior, steps=3)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = m.sample(3, generator=g())
    assert a.shape == (3,) + SHAPE and a.dtype == torch.long and 0 <= int(a.min()) and int(a.max()) < LEVELS
    assert torch.equal(a, m.sample(3, generator=g(), cached=False))
    first = videos(3, seed=1)[:, :2]
    cached = m.sample(3, context=first, generator=g())
    assert torch.equal(cached, m.sample(3, context=first, generator=g(), cached=False))


def test_each_token_step_draws_from_the_priors_conditionals():
    m = tiny()
    train_a_little(m.prior, steps=3)
    steps = []
    m.sample(2, generator=torch.Generator().manual_seed(0),
             callback=lambda s: steps.append((s.index.clone(), s.x.clone(), s.probs.clone())))
    assert len(steps) == 32 and [int(i) for i, _, _ in steps] == list(range(32))  # raster order (t, i, j)
    before = torch.zeros_like(steps[0][1])
    for index, after, probs in steps:
        with torch.no_grad():
            expected = m.prior.conditionals(before).flatten(1, -2)[:, index].exp()  # (n, 1, V)
        torch.testing.assert_close(probs, expected.float(), atol=1e-5, rtol=1e-4)
        before = after


def test_sampling_continues_the_given_frames():
    m = tiny()
    train_a_little(m.prior, steps=3)
    x = videos(2, seed=2)
    steps = []
    out = m.sample(2, context=x[:, :2], generator=torch.Generator().manual_seed(0), callback=lambda s: steps.append(s))
    assert torch.equal(out[:, :2], x[:, :2])  # the given frames, exactly
    z = steps[-1].x  # the token grid drawn
    assert torch.equal(z[:, 0], m.tokenizer.encode(x[:, :2])[:, 0])  # the context's token slice kept,
    assert torch.equal(z[:, 0], m.encode(x)[:, 0])  # the same as the whole video's (the encoder is causal in time)
    assert torch.equal(out[:, 2:], m.decode(z)[:, 2:])  # the later frames: the decoder's
    same = m.sample(2, context=x[0, :2], generator=torch.Generator().manual_seed(0))  # (k, C, H, W): for all videos
    assert torch.equal(same[:, :2], x[:1, :2].expand(2, -1, -1, -1, -1))
    # x= and observed= with the first 2 frames observed keeps them too
    kept = m.sample(2, x=x, observed=m.context_mask(2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(kept[:, :2], x[:, :2])


def test_a_token_is_kept_when_its_whole_patch_is_observed():
    first_two = torch.zeros(SHAPE, dtype=torch.bool)
    first_two[:2] = True  # frames 0 and 1: token slice 0
    kept = video_observed_tokens(first_two, SHAPE, (2, 4, 4))
    assert kept.shape == (1, 2, 4, 4) and kept[:, 0].all() and not kept[:, 1].any()
    one_hole = torch.ones((3,) + SHAPE, dtype=torch.bool)
    one_hole[1, 3, 0, 5, 2] = False  # video 1, frame 3, pixel (5, 2): token (1, 2, 1) of video 1
    kept = video_observed_tokens(one_hole, SHAPE, (2, 4, 4))
    assert kept.shape == (3, 2, 4, 4) and (~kept).nonzero().tolist() == [[1, 1, 2, 1]]
    tokens = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    assert video_observed_tokens(tokens, SHAPE, (2, 4, 4)) is tokens  # a token mask as it is
    with pytest.raises(ValueError, match=r"broadcastable to \(B, 4, 1, 8, 8\)"):
        video_observed_tokens(torch.ones(3, 3, 1, 8, 8, dtype=torch.bool), SHAPE, (2, 4, 4))


def test_context_errors_are_clear():
    m = tiny()
    x = videos(2)
    with pytest.raises(ValueError, match="multiple of 2 frames, e.g. 2"):
        m.sample(2, context=x[:, :1])
    with pytest.raises(ValueError, match="multiple of 2 frames, e.g. 2 or 4"):
        m.sample(2, context=x[:, :3])
    with pytest.raises(ValueError, match="give 1 to 3 frames"):
        m.sample(2, context=x)
    with pytest.raises(ValueError, match="not both"):
        m.sample(2, context=x[:, :2], x=x, observed=m.context_mask(2))
    with pytest.raises(ValueError, match="context values must lie in"):
        m.sample(2, context=x[:, :2] + LEVELS)
    with pytest.raises(TypeError, match="context must hold integer"):
        m.sample(2, context=x[:, :2].float())
    with pytest.raises(ValueError, match="raster order"):
        m.sample(2, order=torch.arange(32))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\) = \(B, 4, 1, 8, 8\)"):
        m.log_prob(x[:, 0])


def test_class_conditional_with_guidance():
    m = tiny(num_classes=3)
    assert m.prior.num_classes == 4  # the null class for classifier-free guidance
    x, y = videos(4), torch.tensor([0, 1, 2, 0])
    assert torch.isfinite(m.loss(x, y)) and m.log_prob(x, y).shape == (4,)
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    a = m.sample(2, y=torch.tensor([1, 2]), guidance=1.5, generator=g())
    assert a.shape == (2,) + SHAPE
    assert torch.equal(a, m.sample(2, y=torch.tensor([1, 2]), guidance=1.5, generator=g(), cached=False))
    assert m.sample(2, context=x[:2, :2], y=1, generator=g()).shape == (2,) + SHAPE


def test_fit_stages_trains_the_tokenizer_then_the_prior_and_the_settings_rebuild_it():
    train_set = data.moving_mnist(32, frames=4, size=8, digit_size=4, levels=LEVELS)
    test_set = data.moving_mnist(8, frames=4, size=8, digit_size=4, levels=LEVELS, split="test")
    m = tiny()
    hist = m.fit_stages(train_set, test_set, steps=(4, 4), batch_size=8, progress=False)
    assert hist.stages["tokenizer"].steps == 4 and hist.stages["prior"].steps == 4
    assert hist.unit.startswith("bits/dim") and math.isfinite(hist.final_test_bpd)
    assert bool(m.tokenizer.quantizer.initialised)  # the EMA codebook was set from the data
    kwargs = train.model_kwargs(m)
    assert "video_shape" not in kwargs["tokenizer"] and kwargs["tokenizer"]["space_down"] == 2
    again = VideoGPT(**kwargs)
    again.load_state_dict(m.state_dict())
    x = test_set.videos[:3]
    with torch.no_grad():
        torch.testing.assert_close(again.log_prob(x), m.log_prob(x))


def test_a_tokenizer_object_of_another_shape_is_refused():
    tok = VQVAE3D(video_shape=(8, 1, 16, 16), levels=LEVELS)
    with pytest.raises(ValueError, match=r"reads videos of shape \(8, 1, 16, 16\)"):
        VideoGPT(shape=SHAPE, levels=LEVELS, tokenizer=tok)
    with pytest.raises(ValueError, match="prior='video-gpt'"):
        VideoGPT(prior="pixelcnn")


def test_registered_as_videogpt_when_the_registry_has_it():
    from armini.models import MODELS

    if "videogpt" not in MODELS:
        pytest.skip("MODELS['videogpt'] is added by the coordinator")
    assert MODELS["videogpt"] is VideoGPT
