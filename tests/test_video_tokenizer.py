"""armini.tokenizers.video.VQVAE3D: the tokenizer protocol one dimension up (token grid (T', h, w)), shapes, a
per-pixel distribution, the latent round trip, the EMA codebook's update, training that improves reconstructions,
and clear errors on bad input."""
import math

import pytest
import torch

from armini import data, train
from armini.nn.quantize import ema_update
from armini.tokenizers import Tokenizer, check_tokenizer
from armini.tokenizers.video import VQVAE3D

SHAPE = (4, 1, 8, 8)  # T, C, H, W


def videos(n=4, seed=0, levels=16, shape=SHAPE):
    return torch.randint(levels, (n,) + shape, generator=torch.Generator().manual_seed(seed))


def small(**kw):
    torch.manual_seed(0)
    kw = {**dict(video_shape=SHAPE, levels=16, time_down=2, space_down=2, channels=8, codebook_size=16, dim=4), **kw}
    return VQVAE3D(**kw)


def test_default_tokens_of_a_moving_mnist_video():
    vq = VQVAE3D()  # (8, 1, 16, 16), 2x in time, 4x in space
    assert vq.token_shape((8, 1, 16, 16)) == (4, 4, 4) and vq.num_tokens() == 64
    x = videos(2, levels=256, shape=(8, 1, 16, 16))
    tokens = check_tokenizer(vq, x)
    assert tokens.shape == (2, 4, 4, 4) and vq.decode(tokens).shape == (2, 8, 1, 16, 16)


@pytest.mark.parametrize("quantizer", ["ema", "vq"])
def test_it_is_a_tokenizer_with_a_distribution_over_every_pixel(quantizer):
    vq = small(quantizer=quantizer)
    assert isinstance(vq, Tokenizer)
    x = videos()
    tokens = check_tokenizer(vq, x)
    assert tokens.shape == (4, 2, 4, 4) == (4,) + vq.token_shape(SHAPE)
    logp = vq.decode_logprobs(tokens)
    assert logp.shape == (4, 4, 1, 8, 8, 16)  # (B, T, C, H, W, K)
    torch.testing.assert_close(logp.logsumexp(-1), torch.zeros(4, 4, 1, 8, 8), atol=1e-4, rtol=0)
    assert vq.embed(tokens).shape == (4, 4, 2, 4, 4)  # (B, d, T', h, w)
    assert torch.equal(vq.decode(tokens), vq.reconstruct(x))
    assert torch.equal(vq.decode(tokens, point="mode"), logp.argmax(-1))


def test_each_frame_pair_is_one_token_slice_and_the_logits_layout_is_the_videos():
    """decode_logprobs[b, t, c, i, j] is pixel (t, c, i, j): the cross-entropy of loss_terms and the per-pixel
    likelihood agree, so the layouts (B, C, K, T, H, W) and (B, T, C, H, W, K) match."""
    vq = small()
    vq.eval()
    x = videos(3)
    terms = vq.loss_terms(x)
    bits = vq.nll_bits(x)  # -log2 p(x | z(x)) per video
    assert math.isclose(terms["recon_bpd"].item(), bits.mean().item() / math.prod(SHAPE), rel_tol=1e-4)
    manual = -vq.decode_logprobs(vq.encode(x)).gather(-1, x.unsqueeze(-1)).flatten(1).sum(1) / math.log(2)
    torch.testing.assert_close(bits, manual, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(terms["loss"], terms["recon_bpd"] + 0.25 * terms["commitment"])  # EMA: no codebook term


def test_latent_round_trip_tokens_to_codes_to_tokens():
    vq = small(codebook_size=8)
    vq.train()
    vq.loss(videos(8))  # the first training batch sets the codebook
    vq.eval()
    codes = vq.quantizer.codebook
    assert torch.cdist(codes, codes).add(torch.eye(8) * 1e9).min() > 0  # distinct codes
    tokens = torch.randint(8, (3, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    z = vq.embed(tokens)  # (3, d, 2, 4, 4)
    B, d, t, h, w = z.shape
    again = vq.quantizer.nearest(z.reshape(B, d, t * h, w)).view(B, t, h, w)
    assert torch.equal(again, tokens)  # every code is its own nearest code
    x = videos(3)
    assert torch.equal(vq.encode(x), vq.quantize(vq.encode_latents(x)).indices)  # encode = the quantiser's choice


def test_a_clip_of_the_first_frames_is_encoded_as_the_start_of_the_whole_video():
    vq = small()
    train_a_little(vq)
    x = videos(2)
    clip = vq.encode(x[:, :2])  # 2 frames = one token slice
    assert clip.shape == (2, 1, 4, 4)
    with torch.no_grad():
        whole = vq.encode_latents(x)  # (B, d, 2, 4, 4)
        torch.testing.assert_close(vq.encode_latents(x[:, :2]), whole[:, :, :1], atol=1e-5, rtol=1e-5)
    assert torch.equal(clip, vq.encode(x)[:, :1])
    with pytest.raises(ValueError, match="multiple of time_down=2"):
        vq.encode(x[:, :3])
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\) = \(B, 4, 1, 8, 8\)"):
        vq.loss(x[:, :2])  # training reads whole videos only


def test_the_encoder_is_causal_in_time():
    """Token slice t' (frames 2t', 2t'+1) reads frames < 2(t'+1) only: the gradient of its latent with respect to
    every later frame is exactly zero, and non-zero for its own frames and the ones before."""
    vq = small(video_shape=(6, 1, 8, 8))
    train_a_little(vq)
    x = videos(2, shape=(6, 1, 8, 8)).float().requires_grad_()
    v = (x * (2.0 / 15) - 1).transpose(1, 2)  # what encode_latents feeds the encoder: (B, C, T, H, W) in [-1, 1]
    z_e = vq.encoder(v)  # (B, d, 3, 4, 4)
    for t in range(3):
        grad, = torch.autograd.grad(z_e[:, :, t].square().sum(), x, retain_graph=True)
        reads = grad.abs().flatten(2).sum(2).sum(0) > 0  # (T,) frames that move slice t
        assert reads.tolist() == [f < 2 * (t + 1) for f in range(6)], (t, reads)


def train_a_little(vq, steps=3):
    """A few Adam steps on random videos (so zero gradients are not an artefact of initialisation)."""
    opt = torch.optim.Adam(vq.parameters(), lr=1e-2)
    for s in range(steps):
        opt.zero_grad()
        vq.loss(videos(4, seed=10 + s, shape=vq.shape)).backward()
        opt.step()
    vq.eval()
    return vq


def test_the_ema_codebook_follows_the_running_means_in_training_only():
    vq = small(codebook_size=8)
    vq.train()
    vq.loss(videos(4))  # initialise from the first batch, first update
    q = vq.quantizer
    N, m = q.N.clone(), q.m.clone()
    x = videos(4, seed=3)
    with torch.no_grad():
        z_e = vq.encode_latents(x)  # (B, d, T', h, w)
    z = z_e.permute(0, 2, 3, 4, 1).reshape(-1, z_e.shape[1])  # (N, d) one row per token, raster order
    k = vq.encode(x).flatten()  # (N,) their codes
    N2, _, expected = ema_update(N, m, z, k, q.decay, q.eps)
    before = q.codebook.clone()
    vq.eval()
    vq.encode(x), vq.loss(x)  # eval mode: nothing moves
    assert torch.equal(q.codebook, before)
    vq.train()
    vq.loss(x)  # one training forward: one EMA step (and dead-code restarts)
    alive = N2 >= q.dead_threshold  # codes that were not restarted
    assert alive.any()
    torch.testing.assert_close(q.codebook[alive], expected[alive], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.N[alive], N2[alive])


def test_fit_trains_it_and_reconstructions_improve(tmp_path):
    x = data.moving_mnist(48, frames=4, size=8, digit_size=4, levels=16).videos
    vq = small(codebook_size=32)
    before = (vq.reconstruct(x).float() - x.float()).square().mean()
    bits_before = vq.nll_bits(x).mean()
    hist = train.fit(vq, x, x[:8], steps=40, batch_size=16, lr=5e-3, progress=False, checkpoint_every=None,
                     checkpoint=tmp_path / "vq3d.pt")
    after = (vq.reconstruct(x).float() - x.float()).square().mean()
    assert after < 0.7 * before, (after, before)
    assert vq.nll_bits(x).mean() < bits_before
    assert hist.unit == "bits/dim of p(x|z)" and math.isfinite(hist.final_test_bpd)
    assert (tmp_path / "vq3d.pt").exists()


def test_bad_input_gets_a_clear_error():
    vq = small()
    x = videos(2)
    with pytest.raises(TypeError, match="integer tensor"):
        vq.encode(x.float())
    with pytest.raises(ValueError, match=r"values must lie in \[0, 16\)"):
        vq.encode(x + 16)
    with pytest.raises(ValueError, match=r"videos must be videos of shape \(B, T, C, H, W\)"):
        vq.encode(x[:, 0])  # a batch of frames, not videos
    with pytest.raises(ValueError, match="B >= 1"):
        vq.loss(x[:0])
    with pytest.raises(ValueError, match="T must be a multiple of time_down"):
        VQVAE3D(video_shape=(5, 1, 16, 16))
    with pytest.raises(ValueError, match="power of 2"):
        VQVAE3D(space_down=3)
    with pytest.raises(ValueError, match="time_down at most space_down"):
        VQVAE3D(time_down=8, space_down=4, video_shape=(8, 1, 16, 16))
    with pytest.raises(ValueError, match="quantizer must be one of"):
        VQVAE3D(quantizer="fsq")
    with pytest.raises(ValueError, match=r"video_shape must be \(T, C, H, W\)"):
        VQVAE3D(video_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="tokens must be"):
        vq.decode(torch.zeros(2, 2, 3, 3, dtype=torch.long))
