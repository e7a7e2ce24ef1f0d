"""armini.tokenizers.vqvae.VQVAE: the tokenizer protocol for every quantiser, shapes, a likelihood that
is a distribution, training through armini.train.fit, and reconstructions that improve with it."""
import math

import pytest
import torch

from armini import data, train
from armini.tokenizers import Tokenizer, VQVAE, check_tokenizer
from armini.tokenizers.vqvae import QUANTIZERS


def images(n=8, seed=0, levels=256):
    return torch.randint(levels, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def small(quantizer, **kw):
    torch.manual_seed(0)
    return VQVAE(quantizer=quantizer, channels=8, codebook_size=kw.pop("codebook_size", 32), **kw)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_every_quantizer_is_a_tokenizer(quantizer):
    vq = small(quantizer)
    assert isinstance(vq, Tokenizer)
    x = images()
    tokens = check_tokenizer(vq, x)
    depth = 2 if quantizer == "rvq" else 1
    expected = (8, 70) if quantizer == "msvq" else (8, depth, 7, 7)  # msvq: scales 1, 2, 4, 7 in one sequence
    assert tokens.shape == expected == (8,) + vq.token_shape((1, 28, 28))
    assert vq.codebook_size == (1000 if quantizer == "fsq" else 32)
    logp = vq.decode_logprobs(tokens)
    assert logp.shape == (8, 1, 28, 28, 256)
    assert torch.allclose(logp.logsumexp(-1), torch.zeros(8, 1, 28, 28), atol=1e-4)  # a distribution per pixel
    z = vq.embed(tokens)
    assert z.shape == (8, vq.config.dim, 7, 7)
    assert torch.equal(vq.decode(tokens), vq.reconstruct(x))
    mode = vq.decode(tokens, point="mode")
    assert torch.equal(mode, logp.argmax(-1))
    mean = (logp.exp() * torch.arange(256.0)).sum(-1)  # (B, C, H, W) each pixel's mean value
    assert ((vq.decode(tokens) - mean).abs() <= 0.5 + 1e-3).all()  # decode: the rounded mean


def test_fourteen_by_fourteen_tokens_and_clear_errors():
    vq = VQVAE(quantizer="fsq", latent_size=14, channels=8, fsq_levels=(5, 5, 5))
    assert vq.token_shape((1, 28, 28)) == (1, 14, 14) and vq.codebook_size == 125
    assert vq.encode(images(2)).shape == (2, 1, 14, 14)
    with pytest.raises(ValueError, match="latent_size must be the image side 28 divided by 2, 4, 8"):
        VQVAE(latent_size=5)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        VQVAE(quantizer="kmeans")
    with pytest.raises(TypeError, match="integer tensor"):
        vq.encode(images(2).float())
    with pytest.raises(ValueError, match=r"values must lie in \[0, 256\)"):
        vq.encode(images(2) + 256)


def test_the_loss_is_its_terms_and_every_piece_of_the_bound_is_finite():
    vq = small("vq")
    x = images(4)
    terms = vq.loss_terms(x)
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.allclose(terms["loss"], terms["recon_bpd"] + terms["codebook"] + 0.25 * terms["commitment"])
    bits = vq.nll_bits(x)  # -log2 p(x | z(x)) per image
    assert bits.shape == (4,) and torch.isfinite(bits).all() and (bits > 0).all()
    with torch.no_grad():  # recon_bpd is the mean of the same bits per dimension
        assert math.isclose(terms["recon_bpd"].item(), bits.mean().item() / 784, rel_tol=1e-4)
    manual = -vq.decode_logprobs(vq.encode(x)).gather(-1, x.unsqueeze(-1)).sum((1, 2, 3, 4)) / math.log(2)
    assert torch.allclose(bits, manual, rtol=1e-5)


def test_encode_never_moves_an_ema_codebook():
    vq = small("ema")
    vq.train()
    vq.loss(images(4))  # the first training batch initialises the codebook
    before = vq.quantizer.codebook.clone()
    vq.encode(images(4, seed=1))
    vq.decode(vq.encode(images(4, seed=2)))
    assert torch.equal(vq.quantizer.codebook, before)


@pytest.mark.parametrize("quantizer", ["ema", "fsq"])
def test_fit_trains_it_and_reconstructions_improve(quantizer, tmp_path):
    x = data.load("fashion-mnist", "train", limit=64).images
    vq = small(quantizer, codebook_size=64)
    before = (vq.reconstruct(x).float() - x.float()).square().mean()
    bits_before = vq.nll_bits(x).mean()
    hist = train.fit(vq, x, x[:16], steps=60, batch_size=16, lr=5e-3, progress=False, checkpoint_every=None,
                     checkpoint=tmp_path / "vq.pt")
    after = (vq.reconstruct(x).float() - x.float()).square().mean()
    assert after < 0.7 * before, (after, before)
    assert vq.nll_bits(x).mean() < bits_before
    assert hist.unit == "bits/dim of p(x|z)" and math.isfinite(hist.final_test_bpd)
    assert (tmp_path / "vq.pt").exists()


class Binary:
    """A tokenizer by hand: one token per pixel, dark (0) or bright (1); decodes to 0 or 255."""
    codebook_size, levels = 2, 256

    def token_shape(self, image_shape):
        return tuple(image_shape)

    def encode(self, images):
        return (images >= 128).long()

    def decode(self, tokens):
        return tokens * 255


def test_reconstruction_quality_of_a_tokenizer_by_hand():
    from armini.tokenizers import rate_bits, reconstruction_quality

    x = data.load("fashion-mnist", "test", limit=40).images
    q = reconstruction_quality(Binary(), x)
    r = (x >= 128).long() * 255
    mse = ((r.float() - x.float()) / 255).square().flatten(1).mean(1)  # per image
    assert math.isclose(q["psnr"], float((10 * torch.log10(1 / mse)).mean()), rel_tol=1e-4)
    assert 0 < q["ssim"] < 1 and q["used"] == 1.0 and 1 < q["perplexity"] <= 2
    assert q["rate_bits"] == rate_bits(Binary(), (1, 28, 28)) == 784.0
    assert q["recon_bpd"] is None and q["bound_bpd"] is None  # no decoder distribution
    assert math.isfinite(q["rfid"]) and q["rfid"] > 0


def test_usage_log_measures_a_held_out_set_every_few_training_steps():
    from armini.tokenizers import UsageLog

    vq = small("ema")
    held_out = images(6, seed=3)
    log = UsageLog(held_out, every=2)
    train.fit(vq, images(16), steps=5, batch_size=4, progress=False, loss_fn=log)
    assert log.steps == [0, 2, 4] and log.calls == 5
    assert all(0 < u <= 1 for u in log.used) and all(p >= 1 for p in log.perplexity)
    from armini.nn.quantize import codebook_usage

    vq.eval()
    log.measure(vq)
    assert (log.used[-1], log.perplexity[-1]) == codebook_usage(vq.encode(held_out), vq.codebook_size)


def test_decode_reads_logits_the_mean_and_mode_of_the_same_distribution():
    """decode works on the decoder's logits (no log-softmax, the last 1x1 convolution on chunks of pixels): the
    rounded mean and the mode of the same categorical as decode_logprobs; a pixel may differ by one level only where its mean sits at .5 within
    float rounding."""
    vq = small("ema")
    tokens = vq.encode(images(6))
    logp = vq.decode_logprobs(tokens).double()  # (6, 1, 28, 28, K)
    mean = logp.exp() @ torch.arange(256.0, dtype=torch.float64)  # (6, 1, 28, 28)
    fast = vq.decode(tokens)
    off = fast != mean.round().long()
    assert (fast - mean.round().long()).abs().max() <= 1
    assert ((mean[off] - mean[off].floor() - 0.5).abs() < 1e-3).all()  # only float ties at .5 may round the other way
    assert torch.equal(vq.decode(tokens, point="mode"), vq.decode_logits(vq.embed(tokens)).argmax(2))
    assert torch.equal(vq.point_estimate(logp.float()), vq.point_estimate(logp.float() + 3.0))  # a softmax: shifts cancel


def test_a_subclass_with_its_own_pixel_layout_decodes_in_that_layout():
    """A subclass that lays pixels out its own way in latent_logprobs (as VQVAE3D does) is decoded from its
    latent_logprobs, not from VQVAE's layout of the logits."""

    class Transposed(VQVAE):
        def latent_logprobs(self, z_q):
            return super().latent_logprobs(z_q).transpose(2, 3)  # (B, C, W, H, K)

    torch.manual_seed(0)
    vq = Transposed(quantizer="ema", channels=8, codebook_size=32)
    tokens = vq.encode(images(2))
    plain = vq.decode_logits(vq.embed(tokens)).argmax(2)  # (2, 1, 28, 28): VQVAE's layout
    assert torch.equal(vq.decode(tokens, point="mode"), vq.decode_logprobs(tokens).argmax(-1))
    assert torch.equal(vq.decode(tokens, point="mode"), plain.transpose(2, 3))


@pytest.mark.parametrize("rows", [1, 37, 100_000])
def test_decoding_in_chunks_of_pixels_keeps_every_pixel_and_channel_in_place(rows):
    """latent_point runs the decoder's last layer on `rows` pixels at a time: any chunk size (one pixel, a size
    that does not divide B*H*W, all at once) gives the images of the whole logits tensor, RGB channels included."""
    torch.manual_seed(0)
    vq = VQVAE(image_shape=(3, 8, 8), levels=16, latent_size=2, channels=8, codebook_size=16)
    x = torch.randint(16, (5, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    z_q = vq.embed(vq.encode(x))
    with torch.no_grad():
        logp = vq.latent_logprobs(z_q)  # (5, 3, 8, 8, 16)
        assert torch.equal(vq.latent_point(z_q, "mode", rows=rows), logp.argmax(-1))
        mean = logp.double().exp() @ torch.arange(16.0, dtype=torch.float64)  # (5, 3, 8, 8)
        assert torch.equal(vq.latent_point(z_q, "mean", rows=rows), mean.round().long())
