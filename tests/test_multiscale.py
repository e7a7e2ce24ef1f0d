"""VAR's multi-scale residual quantiser (armini.nn.quantize.MultiScaleQuantizer) and the msvq tokenizer:
one sequence of scales, one codebook, the cumulative f_hat and the teacher-forcing input built from it,
reconstructions that improve scale by scale, usage per scale, clear errors for bad scales."""
import pytest
import torch
import torch.nn.functional as F

from armini import data, train
from armini.nn import quantize as Q
from armini.nn.quantize import (MultiScaleQuantizer, area_down, check_scales, default_scales, phi_index,
                                scale_slices)
from armini.tokenizers import VQVAE, check_tokenizer


def images(n=8, seed=0, levels=256, side=28):
    return torch.randint(levels, (n, 1, side, side), generator=torch.Generator().manual_seed(seed))


def small_msvq(**kw):
    torch.manual_seed(0)
    return VQVAE(quantizer="msvq", channels=8, codebook_size=kw.pop("codebook_size", 32), **kw)


def quantizer_with_codes(scales=(1, 2, 3), dim=4, V=8, seed=0):
    """A MultiScaleQuantizer with a random codebook (no data init) and random tokens (B=3, L)."""
    torch.manual_seed(seed)
    q = MultiScaleQuantizer(V, dim, scales, phi="per-scale")
    with torch.no_grad():
        q.vq.codebook.normal_()
    tokens = torch.randint(V, (3, q.length), generator=torch.Generator().manual_seed(seed))
    return q, tokens


# ------------------------------------------------------------------ the sequence of scales


def test_scale_slices_and_the_default_schedules():
    assert scale_slices((1, 2, 3)) == [slice(0, 1), slice(1, 5), slice(5, 14)]
    assert default_scales(7) == (1, 2, 4, 7)  # lesson 15's: 4 steps
    assert default_scales(14) == (1, 2, 4, 8, 14)
    assert default_scales(4) == (1, 2, 4) and default_scales(1) == (1,) and default_scales(2) == (1, 2)
    assert default_scales(3) == (1, 2, 3) and default_scales(8) == (1, 2, 4, 8)
    assert default_scales(28) == (1, 2, 4, 8, 16, 28)
    for h in range(1, 40):  # every latent size: strictly increasing, ending at h, at most doubling per step
        scales = check_scales(default_scales(h), h)
        assert all(b <= 2 * a for a, b in zip(scales, scales[1:]))
    assert sum(s * s for s in default_scales(7)) == 70


def test_the_tokenizer_round_trip_shapes():
    tok = small_msvq()
    x = images(5)
    tokens = check_tokenizer(tok, x)  # encode (B, L) long in [0, V), decode (B, C, H, W) integers
    assert tok.token_shape((1, 28, 28)) == (70,) and tokens.shape == (5, 70) and tokens.dtype == torch.long
    q = tok.quantizer
    grids = q.split(tokens)
    assert [g.shape for g in grids] == [(5, s, s) for s in (1, 2, 4, 7)]
    assert torch.equal(q.join(grids), tokens)
    assert tok.embed(tokens).shape == (5, 16, 7, 7)
    logp = tok.decode_logprobs(tokens)
    assert logp.shape == (5, 1, 28, 28, 256)
    assert torch.allclose(logp.logsumexp(-1), torch.zeros(5, 1, 28, 28), atol=1e-4)
    steps = tok.decode_scales(tokens)  # the image after each scale
    assert len(steps) == 4 and all(s.shape == x.shape for s in steps)
    assert torch.equal(steps[-1], tok.decode(tokens))
    assert q.next_scale_inputs(tokens).shape == (5, 70 - 1, 16)


def test_one_codebook_serves_every_scale():
    tok = small_msvq()
    names = [n for n, _ in list(tok.named_parameters()) + list(tok.named_buffers()) if n.endswith("codebook")]
    assert names == ["quantizer.vq.codebook"]
    assert tok.codebook_size == 32
    for phi, n in (("shared", 1), ("per-scale", 6), (4, 4)):  # phi convolutions, VAR's rule for 4
        q = MultiScaleQuantizer(8, 4, (1, 2, 3, 4, 5, 7), phi=phi)
        assert len(q.phis) == n and sorted(set(q.phi_of_scale)) == list(range(n))
    assert [phi_index(k, 6, 4) for k in range(6)] == [0, 0, 1, 2, 3, 3]


def test_bad_scales_get_clear_errors():
    with pytest.raises(ValueError, match="last scale must equal the latent size 7"):
        VQVAE(quantizer="msvq", scales=(1, 2, 4))
    with pytest.raises(ValueError, match="increase strictly"):
        VQVAE(quantizer="msvq", scales=(1, 3, 2, 7))
    with pytest.raises(ValueError, match="increase strictly"):
        check_scales((1, 2, 2, 7))
    with pytest.raises(ValueError, match="at least 1"):
        check_scales((0, 7))
    with pytest.raises(ValueError, match="whole numbers"):
        check_scales((1, 2.5, 7))
    with pytest.raises(ValueError, match="non-empty"):
        check_scales(())
    with pytest.raises(ValueError, match="scales are for quantizer='msvq'"):
        VQVAE(quantizer="ema", scales=(1, 7))
    with pytest.raises(ValueError, match="phi must be"):
        MultiScaleQuantizer(8, 4, (1, 2), phi="every")
    q = MultiScaleQuantizer(8, 4, (1, 2, 3))
    with pytest.raises(ValueError, match=r"expected latents \(B, 4, 3, 3\)"):
        q(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\(B, L\) with L = 14"):
        q.cumulative(torch.zeros(2, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="decode_scales needs quantizer='msvq'"):
        VQVAE(quantizer="ema", channels=8).decode_scales(torch.zeros(1, 1, 7, 7, dtype=torch.long))


# ------------------------------------------------------------------ cumulative f_hat and teacher forcing


def test_cumulative_is_the_running_sum_of_each_scales_refined_code():
    q, tokens = quantizer_with_codes()
    cums = q.cumulative(tokens)
    f_hat = torch.zeros(3, 4, 3, 3)
    for k, (grid, s) in enumerate(zip(q.split(tokens), q.scales)):
        e = q.codebook[grid].permute(0, 3, 1, 2)  # (B, d, s, s)
        up = F.interpolate(e, size=(3, 3), mode="bicubic") if s != 3 else e
        f_hat = f_hat + 0.5 * up + 0.5 * q.phis[k].conv(up)  # phi(h) = 0.5 h + 0.5 conv3x3(h)
        torch.testing.assert_close(cums[k], f_hat)
    torch.testing.assert_close(q.embed(tokens), cums[-1])


def check_teacher_forcing(next_scale_inputs, q, tokens):
    """Assert that next_scale_inputs(tokens) is VAR's teacher-forcing input for quantiser q: for scale k > 1
    the f_hat of ALL coarser scales area-downsampled to s_k x s_k; no token of scale k or finer enters it."""
    got = next_scale_inputs(tokens)
    L, first = q.length, q.scales[0] ** 2
    assert got.shape == (len(tokens), L - first, q.dim), got.shape
    rows = [sl for sl in q.slices[1:]]  # where scale k's inputs sit, shifted by the first scale
    for k in range(1, q.n_scales):
        sl = slice(rows[k - 1].start - first, rows[k - 1].stop - first)
        for j in range(q.n_scales):  # change the tokens of scale j only
            changed = tokens.clone()
            changed[:, q.slices[j]] = (changed[:, q.slices[j]] + 1) % q.codebook_size
            moved = not torch.allclose(next_scale_inputs(changed)[:, sl], got[:, sl])
            assert moved == (j < k), (f"the input of scale {k} {'ignores' if j < k else 'reads'} the tokens of "
                                      f"scale {j}")
    expected = torch.cat([area_down(f_hat, s).flatten(2).transpose(1, 2)
                          for f_hat, s in zip(q.cumulative(tokens), q.scales[1:])], 1)
    torch.testing.assert_close(got, expected)


def per_scale_residual_inputs(q, tokens):
    """The classic bug: scale k reads only scale k-1's own code (its refined residual), not the sum so far."""
    grids = q.split(tokens)
    return torch.cat([area_down(q.scale_code(grids[k - 1], k - 1), s).flatten(2).transpose(1, 2)
                      for k, s in enumerate(q.scales) if k > 0], 1)


def raw_token_inputs(q, tokens):
    """Another bug: scale k reads the code vectors of scale k-1's tokens, nearest-resized."""
    grids = q.split(tokens)
    return torch.cat([F.interpolate(q.vq.embed(grids[k - 1]), size=(s, s)).flatten(2).transpose(1, 2)
                      for k, s in enumerate(q.scales) if k > 0], 1)


def test_next_scale_inputs_are_the_cumulative_f_hat_and_the_buggy_versions_fail():
    q, tokens = quantizer_with_codes(scales=(1, 2, 3, 5))
    check_teacher_forcing(q.next_scale_inputs, q, tokens)
    for wrong in (per_scale_residual_inputs, raw_token_inputs):
        with pytest.raises(AssertionError):
            check_teacher_forcing(lambda t: wrong(q, t), q, tokens)


def test_a_sampler_can_build_f_hat_one_scale_at_a_time():
    q, tokens = quantizer_with_codes(scales=(1, 2, 4))
    grids, f_hat, inputs = q.split(tokens), torch.zeros(3, 4, 4, 4), []
    for k in range(q.n_scales):
        if k > 0:
            inputs.append(q.scale_input(f_hat, k))  # (B, s_k^2, d) from the scales drawn so far
        f_hat = q.add_scale(f_hat, grids[k], k)
    torch.testing.assert_close(torch.cat(inputs, 1), q.next_scale_inputs(tokens))
    torch.testing.assert_close(f_hat, q.embed(tokens))


# ------------------------------------------------------------------ losses, training, usage


def test_losses_and_the_straight_through_estimator():
    q, _ = quantizer_with_codes(scales=(1, 2, 3))
    q.train()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z_e)
    cums = q.cumulative(out.indices)
    torch.testing.assert_close(out.z_q, cums[-1])  # the forward value is f_hat after every scale
    codebook = torch.stack([F.mse_loss(c, z_e.detach()) for c in cums]).mean()
    torch.testing.assert_close(out.codebook_loss, codebook)
    torch.testing.assert_close(out.commitment_loss, codebook)  # the same number; different gradients
    torch.testing.assert_close(out.loss, out.codebook_loss + 0.25 * out.commitment_loss)
    (g,) = torch.autograd.grad(out.z_q.sum(), z_e)
    torch.testing.assert_close(g, torch.ones_like(g))  # straight-through: the identity to the encoder
    grads = torch.autograd.grad(out.codebook_loss, [q.vq.codebook, q.phis[0].conv.weight])
    assert all(gr.abs().sum() > 0 for gr in grads)  # the f_hat term trains the codebook and phi


@pytest.fixture(scope="module")
def trained():
    """A tiny msvq tokenizer trained briefly on 8 x 8 digits (latent 4 x 4, scales 1, 2, 3, 4)."""
    torch.manual_seed(0)
    x = data.load("digits", "train").images
    tok = VQVAE(image_shape=(1, 8, 8), levels=17, latent_size=4, quantizer="msvq", codebook_size=32, dim=8,
                channels=16, scales=(1, 2, 3, 4))  # named: default_scales(4) is (1, 2, 4)
    train.fit(tok, x, steps=150, batch_size=32, lr=3e-3, progress=False, checkpoint_every=None)
    tok.eval()
    return tok, data.load("digits", "test").images


def test_reconstruction_improves_as_scales_are_added(trained):
    tok, x = trained
    z_e = tok.encode_latents(x)
    errors = tok.quantizer.scale_errors(z_e)  # ||f_hat_k - f||^2 after each scale
    assert len(errors) == 4
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    pixels = [(r.float() - x.float()).square().mean().item() for r in tok.decode_scales(tok.encode(x))]
    assert pixels[-1] < pixels[0], pixels


def test_usage_per_scale_is_reported(trained):
    tok, x = trained
    usage = tok.quantizer.usage_per_scale(tok.encode(x))
    assert len(usage) == 4
    assert all(0 < used <= 1 and 1 <= ppl <= 32 for used, ppl in usage)
    assert usage[-1][0] > usage[0][0]  # the 1 x 1 scale has far fewer vectors to spread over the codebook


# ------------------------------------------------------------------ lesson 15's exercise: the residual loop
# The check of /work/issues/l15_tokenizer_cells.json (lesson 15): the learner's multiscale_quantize against
# armini.nn.quantize.multiscale_quantize on the lesson's cases; the usual wrong loops must be caught.


def lesson_cases():
    """The lesson's check cases: (f, codebook, scales, phi), phi a quantiser's refine (its phi convolutions)."""
    g = torch.Generator().manual_seed(15)
    cases = []
    for scales, d, V in (((1, 2, 3), 4, 8), ((1, 2, 4), 3, 16), ((1, 2, 3, 4, 5, 7), 8, 26)):
        with torch.random.fork_rng():
            torch.manual_seed(len(cases))
            q = MultiScaleQuantizer(V, d, scales, phi="per-scale")
        h = scales[-1]
        cases.append((torch.randn(2, d, h, h, generator=g), torch.randn(V, d, generator=g), scales, q.refine))
    return cases


def right_loop(f, codebook, scales, phi):
    B, d, h, w = f.shape
    f_rest, f_hat, tokens, cumulative = f, torch.zeros_like(f), [], []
    for k, s in enumerate(scales):
        r = F.interpolate(f_rest, size=(s, s), mode="area")  # (B, d, s, s)
        grid = Q.nearest_code(r.permute(0, 2, 3, 1).reshape(-1, d), codebook).view(B, s, s)
        e = codebook[grid].permute(0, 3, 1, 2)  # (B, d, s, s)
        h_k = phi(F.interpolate(e, size=(h, w), mode="bicubic"), k)
        f_hat = f_hat + h_k
        f_rest = f_rest - h_k
        tokens.append(grid.flatten(1))
        cumulative.append(f_hat)
    return torch.cat(tokens, 1), cumulative


def wrong_loop(f, codebook, scales, phi, *, residual=True, subtract_phi=True, cumulative_out=True, mode="bicubic"):
    B, d, h, w = f.shape
    f_rest, f_hat, tokens, out = f, torch.zeros_like(f), [], []
    for k, s in enumerate(scales):
        r = F.interpolate(f_rest if residual else f, size=(s, s), mode="area")
        grid = Q.nearest_code(r.permute(0, 2, 3, 1).reshape(-1, d), codebook).view(B, s, s)
        up = F.interpolate(codebook[grid].permute(0, 3, 1, 2), size=(h, w), mode=mode)
        h_k = phi(up, k)
        f_hat = f_hat + h_k
        f_rest = f_rest - (h_k if subtract_phi else up)
        tokens.append(grid.flatten(1))
        out.append(f_hat if cumulative_out else h_k)
    return torch.cat(tokens, 1), out


WRONG_LOOPS = {
    "quantises f at every scale, not the residual": lambda *a: wrong_loop(*a, residual=False),
    "subtracts the code before phi from the residual": lambda *a: wrong_loop(*a, subtract_phi=False),
    "returns each scale's own code, not the cumulative f_hat": lambda *a: wrong_loop(*a, cumulative_out=False),
    "upsamples by nearest neighbour": lambda *a: wrong_loop(*a, mode="nearest"),
}


def test_the_lesson_check_passes_the_right_loop(capsys):
    from armini.course import check

    assert check("multi-scale residual quantiser", right_loop, Q.multiscale_quantize, lesson_cases()) is right_loop
    assert capsys.readouterr().out == "✅ multi-scale residual quantiser: correct on 3 checks\n"


@pytest.mark.parametrize("bug", list(WRONG_LOOPS))
def test_the_lesson_check_catches_wrong_loops(bug, capsys):
    from armini.course import check

    assert check("multi-scale residual quantiser", WRONG_LOOPS[bug], Q.multiscale_quantize,
                 lesson_cases()) is Q.multiscale_quantize
    out = capsys.readouterr().out
    assert out.startswith("❌ multi-scale residual quantiser: case") and "armini's reference version" in out, out


def test_the_library_quantiser_runs_the_lessons_loop():
    q, _ = quantizer_with_codes(scales=(1, 2, 3, 5))
    z_e = torch.randn(4, 4, 5, 5)
    tokens, cums = right_loop(z_e, q.codebook, q.scales, q.refine)
    assert torch.equal(q.nearest(z_e), tokens)
    torch.testing.assert_close(q.cumulative(tokens), cums)


def test_a_checkpointed_config_rebuilds_the_same_tokenizer():
    from armini.models.token_ar import _config_of
    from armini.train import _plain

    tok = small_msvq(phi=4)
    stored = _plain(_config_of(tok))  # what a two-stage model's checkpoint keeps (plain lists, numbers, strings)
    assert stored["quantizer"] == "msvq" and list(stored["scales"]) == [1, 2, 4, 7] and stored["phi"] == 4
    again = VQVAE(image_shape=(1, 28, 28), levels=256, **stored)
    again.load_state_dict(tok.state_dict())
    x = images(3)
    assert torch.equal(again.encode(x), tok.encode(x)) and again.token_shape() == (70,)
