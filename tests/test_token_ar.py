"""armini.models.token_ar (two-stage generation) and the sampling additions it needs in armini.models.base
(top_k=, classifier-free guidance through the Guided wrapper).

Most tests use a toy tokenizer small enough to enumerate: one token per pixel, token = pixel // 2, and a
decoder that is a learned (V, K) table of pixel-value logits per token."""
import math

import pytest
import torch
import torch.nn as nn

from armini import causality
from armini.models import MODELS
from armini.models.base import check_top_k, keep_top_k
from armini.models.token_ar import (Guided, TwoStage, drop_labels, guided_logprobs, observed_tokens,
                                    token_prior)
from helpers import all_images


class ToyTokenizer(nn.Module):
    """One token per pixel: z = x // (K // V); p(x | z) a learned table of K logits per token value."""

    def __init__(self, levels=4, codebook_size=2):
        super().__init__()
        self.levels, self.codebook_size = levels, codebook_size
        self.table = nn.Parameter(torch.randn(codebook_size, levels, generator=torch.Generator().manual_seed(7)))

    def token_shape(self, image_shape):
        return (1,) + tuple(image_shape[1:])

    def encode(self, images):
        return images // (self.levels // self.codebook_size)  # (B, 1, H, W)

    def decode_logprobs(self, tokens):
        return torch.log_softmax(self.table[tokens], dim=-1)  # (B, 1, H, W, K)

    def decode(self, tokens):
        return self.decode_logprobs(tokens).argmax(-1)  # (B, 1, H, W)


SMALL = {  # tiny priors for 2x2 .. 4x4 token grids
    "pixelcnn": dict(channels=8, n_blocks=1, head_channels=8, first_kernel=3),
    "gated-pixelcnn": dict(channels=8, n_layers=2, head_channels=8, first_kernel=3),
    "pixel-transformer": dict(dim=16, n_layers=2, n_heads=2, mlp_ratio=2),
}


def two_stage(shape=(1, 3, 3), levels=6, codebook=3, prior="pixel-transformer", num_classes=None, seed=0, **kw):
    torch.manual_seed(seed)
    return TwoStage(shape=shape, levels=levels, tokenizer=ToyTokenizer(levels, codebook), prior=prior,
                    prior_kwargs=SMALL[prior], num_classes=num_classes, **kw)


def images(model, n=16, seed=1):
    return torch.randint(model.levels, (n,) + model.shape, generator=torch.Generator().manual_seed(seed))


def train_steps(model, steps=6, lr=1e-2, seed=1):
    """A few Adam steps of the prior (model.loss: bits per token) on random images; the losses."""
    opt = torch.optim.Adam(model.prior.parameters(), lr=lr)
    x = images(model, 16, seed)
    y = None if model.num_classes is None else torch.arange(16) % model.num_classes
    losses = []
    for _ in range(steps):
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("bad, error, match", [(0, ValueError, r"1\.\.6"), (7, ValueError, r"1\.\.6"),
                                               (1.5, TypeError, "whole number"), ("2", TypeError, "whole number"),
                                               (True, TypeError, "whole number")])
def test_top_k_rejects_bad_values_with_a_clear_message(bad, error, match):
    model = MODELS["pixelcnn"](shape=(1, 2, 2), levels=6, **SMALL["pixelcnn"])
    with pytest.raises(error, match=match):
        model.sample(1, top_k=bad)
    assert check_top_k(None, 6) is None and check_top_k(6, 6) == 6 and check_top_k(2.0, 6) == 2


def test_keep_top_k_keeps_exactly_the_k_most_likely_values():
    logp = torch.log_softmax(torch.tensor([[0.1, 2.0, -1.0, 1.5, 0.0]]), -1)
    kept = keep_top_k(logp, 2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True, False]]
    assert torch.equal(kept[0, [1, 3]], logp[0, [1, 3]])
    assert torch.softmax(kept, -1).sum().item() == pytest.approx(1.0)  # renormalised by the softmax


@pytest.mark.parametrize("cached", [True, False])
def test_top_k_draws_only_among_the_k_most_likely(cached):
    model = MODELS["pixelcnn"](shape=(1, 3, 3), levels=6, **SMALL["pixelcnn"])
    steps = []
    x = model.sample(4, top_k=2, generator=gen(0), cached=cached, callback=lambda s: steps.append(s.probs.clone()))
    for probs in steps:
        assert ((probs > 0).sum(-1) == 2).all()  # two values left per distribution, summing to one
        assert torch.allclose(probs.sum(-1), torch.ones(()))
    drawn = torch.stack([p.gather(-1, v.view(4, 1, 1)) for p, v in zip(steps, x.flatten(1).T)])
    assert (drawn > 0).all()  # every drawn value was one of the kept ones


def test_top_k_of_all_levels_draws_what_plain_sampling_draws():
    model = MODELS["pixelcnn"](shape=(1, 3, 3), levels=6, **SMALL["pixelcnn"])
    assert torch.equal(model.sample(3, generator=gen(2)), model.sample(3, generator=gen(2), top_k=6))


@pytest.mark.parametrize("cached", [True, False])
def test_top_k_1_is_greedy_decoding(cached):
    model = two_stage(prior="pixel-transformer")
    train_steps(model)
    prior = model.prior.eval()
    got = prior.sample(2, top_k=1, generator=gen(0), cached=cached)
    greedy = torch.zeros_like(got)
    with torch.no_grad():
        for d in prior.generation_order():  # x_d = argmax_k p(x_d = k | x_<d), one dimension at a time
            greedy.view(2, -1)[:, d] = prior.conditionals(greedy).flatten(1, -2)[:, d].argmax(-1)
    assert torch.equal(got, greedy)
    assert torch.equal(got, prior.sample(2, top_k=1, generator=gen(99), cached=cached))  # no randomness left


# ----------------------------------------------------------------------------- priors over token grids


@pytest.mark.parametrize("name", list(SMALL))
def test_priors_train_on_token_grids_and_stay_normalised_and_causal(name):
    model = two_stage(prior=name)
    assert model.prior.shape == (1, 3, 3) and model.prior.levels == 3 and model.prior.unit == "bits/token"
    losses = train_steps(model)
    assert losses[-1] < losses[0]  # the same batch: the prior learns it
    grids = all_images((1, 3, 3), 3)  # every token grid: 3^9
    with torch.no_grad():
        total = torch.logsumexp(model.prior.log_prob(grids).double(), 0).exp()
    assert total.item() == pytest.approx(1.0, abs=1e-4)
    causality.assert_causal(model.prior)


def test_token_prior_reads_tokens_through_an_embedding():
    prior = token_prior("pixelcnn", (1, 7, 7), 512, **SMALL["pixelcnn"])
    assert prior.inputs.kind == "embedding" and prior.levels == 512
    assert token_prior("pixel-transformer", (1, 7, 7), 512, **SMALL["pixel-transformer"]).token_emb.num_embeddings == 512
    with pytest.raises(ValueError, match="unknown prior 'gpt'"):
        token_prior("gpt", (1, 7, 7), 512)


# ----------------------------------------------------------------------------- the pixel-space bound


def test_the_bound_is_at_least_the_exact_nll_on_a_toy_small_enough_to_enumerate():
    """-log p(x) <= -log p(z) - log p(x | z), z = enc(x), where p(x) = sum_z p(z) p(x | z) over every z."""
    model = two_stage(shape=(1, 2, 2), levels=4, codebook=2, prior="pixelcnn")
    train_steps(model)
    model.eval()
    x = all_images((1, 2, 2), 4)  # all 256 images
    z = all_images((1, 2, 2), 2)  # all 16 token grids
    with torch.no_grad():
        log_pz = model.prior.log_prob(z).double()  # (16,)
        dec = model.tokenizer.decode_logprobs(z).double()  # (16, 1, 2, 2, K)
        log_px_given_z = dec[:, None].expand(-1, len(x), -1, -1, -1, -1).gather(
            -1, x[None, ..., None].expand(len(z), -1, -1, -1, -1, -1)).squeeze(-1).flatten(2).sum(2)  # (16, 256)
        exact = torch.logsumexp(log_pz[:, None] + log_px_given_z, 0)  # (256,) log p(x)
        bound = model.log_prob(x).double()
    assert torch.logsumexp(exact, 0).exp().item() == pytest.approx(1.0, abs=1e-6)  # p(x) is a distribution
    assert (bound <= exact + 1e-5).all()
    assert (bound < exact - 1e-3).any()  # a real bound: the decoder puts mass on images of other token grids
    assert model.nll_bits(x).mean().item() == pytest.approx(-bound.mean().item() / math.log(2), rel=1e-5)


def test_log_prob_pixels_are_shares_of_the_bound_and_conditionals_are_refused():
    model = two_stage()
    x = images(model, 4)
    assert torch.allclose(model.log_prob_pixels(x).flatten(1).sum(1), model.log_prob(x), atol=1e-5)
    with pytest.raises(NotImplementedError, match="no per-pixel conditionals"):
        model.conditionals(x)
    with pytest.raises(ValueError, match="whole images only"):
        model.log_prob(x, observed=torch.ones_like(x, dtype=torch.bool))
    assert model.unit == "bits/dim" and model.nll_is_bound


def test_loss_is_the_priors_bits_per_token_with_the_tokenizer_frozen():
    model = two_stage()
    x = images(model, 8)
    expected = model.prior.loss(model.tokenizer.encode(x))
    assert model.loss(x).item() == pytest.approx(expected.item(), rel=1e-6)
    model.loss(x).backward()
    assert model.tokenizer.table.grad is None  # no gradient reaches the tokenizer
    assert model.prior.head.weight.grad is not None


# ----------------------------------------------------------------------------- classes and guidance


def test_label_dropout_sends_about_p_of_the_labels_to_the_null_class():
    y = torch.arange(20000) % 10
    dropped = drop_labels(y, 10, 0.1, gen(0))
    assert ((dropped == 10).float().mean().item()) == pytest.approx(0.1, abs=0.01)
    assert torch.equal(dropped[dropped != 10], y[dropped != 10])
    assert torch.equal(drop_labels(y, 10, 0.0), y)


def test_a_conditional_model_has_a_null_class_and_drops_labels_only_while_training():
    model = two_stage(num_classes=3)
    assert model.num_classes == 3 and model.prior.num_classes == 4 and model.null == 3
    x, y = images(model, 8), torch.arange(8) % 3
    z = model.tokenizer.encode(x)
    model.eval()
    assert model.loss(x, y).item() == pytest.approx(model.prior.loss(z, y).item(), rel=1e-6)
    model.train()
    torch.manual_seed(0)
    expected = model.prior.loss(z, drop_labels(y, 3, 0.1))
    torch.manual_seed(0)
    assert model.loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)
    # y=None: the null class, the unconditional model label dropout trained
    null = torch.full((8,), 3)
    assert torch.allclose(model.log_prob(x), model.prior.log_prob(z, null) + model.log_prob(x, y) - model.prior.log_prob(z, y))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\)"):
        model.log_prob(x, torch.full((8,), 3))  # the null class is not a label a caller passes


def test_guidance_mixes_conditional_and_unconditional_log_probs():
    cond = torch.log_softmax(torch.randn(2, 5, generator=gen(0)), -1)
    uncond = torch.log_softmax(torch.randn(2, 5, generator=gen(1)), -1)
    assert torch.allclose(guided_logprobs(cond, uncond, 0.0), cond, atol=1e-6)
    w = 2.0
    expected = torch.softmax((1 + w) * cond - w * uncond, -1)
    assert torch.allclose(guided_logprobs(cond, uncond, w).exp(), expected, atol=1e-6)


@pytest.mark.parametrize("prior", ["pixel-transformer", "pixelcnn"])
def test_guidance_zero_equals_the_conditional_model(prior):
    model = two_stage(prior=prior, num_classes=3)
    train_steps(model)
    model.eval()
    y = torch.tensor([0, 1, 2])
    guided = Guided(model.prior, 0.0, model.null)
    z = model.tokenizer.encode(images(model, 3))
    with torch.no_grad():
        assert torch.allclose(guided.conditionals(z, y), model.prior.conditionals(z, y), atol=1e-5)
        for cached in (True, False):
            a = guided.sample(3, y=y, generator=gen(0), cached=cached)
            assert torch.equal(a, model.prior.sample(3, y=y, generator=gen(0), cached=cached))
    assert torch.equal(model.sample_tokens(3, y=y, generator=gen(0)), model.prior.sample(3, y=y, generator=gen(0)))


@pytest.mark.parametrize("prior", ["pixel-transformer", "pixelcnn"])
def test_guided_sampling_follows_the_mixed_distribution_with_the_cache(prior):
    model = two_stage(prior=prior, num_classes=3)
    train_steps(model)
    model.eval()
    y, w = torch.tensor([0, 2]), 3.0
    steps = []
    cached = model.sample_tokens(2, y=y, guidance=w, generator=gen(4), callback=lambda s: steps.append(
        (s.index.clone(), s.x.clone(), s.probs.clone())))
    naive = model.sample_tokens(2, y=y, guidance=w, generator=gen(4), cached=False)
    assert torch.equal(cached, naive)  # the cache serves the 2n batch
    before = torch.zeros_like(cached)
    with torch.no_grad():
        for index, after, probs in steps:
            c = model.prior.conditionals(before, y).flatten(1, -2)[:, index]  # (2, 1, V)
            u = model.prior.conditionals(before, torch.full_like(y, model.null)).flatten(1, -2)[:, index]
            assert torch.allclose(probs, guided_logprobs(c, u, w).exp().float(), atol=1e-5)
            before = after
    with pytest.raises(ValueError, match="pass class labels y"):
        model.sample_tokens(2, guidance=w)
    with pytest.raises(ValueError, match="class-conditional"):
        two_stage().sample(2, y=torch.tensor([0, 1]), guidance=1.0)


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_with_a_generator_and_decodes_tokens():
    model = two_stage(num_classes=3)
    y = torch.tensor([0, 1, 2, 0])
    a = model.sample(4, y=y, generator=gen(0), temperature=0.8, top_k=2)
    assert a.shape == (4,) + model.shape and a.dtype == torch.long
    assert torch.equal(a, model.sample(4, y=y, generator=gen(0), temperature=0.8, top_k=2))
    assert torch.equal(a, model.sample(4, y=y, generator=gen(0), temperature=0.8, top_k=2, cached=False))
    z = model.sample_tokens(4, y=y, generator=gen(0), temperature=0.8, top_k=2)
    assert torch.equal(a, model.tokenizer.decode(z))  # tokens first, then the decoder
    assert not torch.equal(z, model.sample_tokens(4, y=y, generator=gen(1), temperature=0.8, top_k=2))
    assert len(model.sampling_steps()) == 9  # one step per token
    steps = []
    model.sample(1, callback=steps.append)  # y=None: the null class
    assert len(steps) == 9 and steps[-1].x.shape == (1, 1, 3, 3)  # the callback sees token steps


def test_observed_tokens_keeps_a_token_only_when_its_whole_patch_is_observed():
    observed = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    observed[..., :2, :] = True  # the top half
    observed[..., 2, 3] = True  # one pixel of the bottom-right patch
    kept = observed_tokens(observed, (1, 4, 4), (1, 2, 2))
    assert kept.tolist() == [[[[True, True], [False, False]]]]
    assert observed_tokens(observed[0, 0], (1, 4, 4), (1, 2, 2)).shape == (1, 1, 2, 2)  # (H, W) broadcasts
    tokens_mask = torch.tensor([[[[True, False], [False, True]]]])
    assert torch.equal(observed_tokens(tokens_mask, (1, 4, 4), (1, 2, 2)), tokens_mask)  # a token mask as it is
    with pytest.raises(ValueError, match="broadcastable"):
        observed_tokens(torch.ones(1, 1, 3, 3, dtype=torch.bool), (1, 4, 4), (1, 2, 2))


def test_inpainting_keeps_the_observed_tokens_and_generates_the_rest():
    model = two_stage(shape=(1, 4, 4), num_classes=3)
    x = images(model, 3)
    observed = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    observed[..., :2, :] = True
    observed[..., 3, 0] = True  # a kept token after generated ones (inpainting, not only outpainting)
    z = model.tokenizer.encode(x)
    out = model.sample_tokens(3, tokens=z, observed=observed.expand(3, -1, -1, -1), y=torch.tensor([0, 1, 2]),
                              guidance=1.0, generator=gen(0))
    assert torch.equal(out[observed.expand(3, -1, -1, -1)], z[observed.expand(3, -1, -1, -1)])
    draws = torch.stack([model.sample_tokens(3, tokens=z, observed=observed.expand(3, -1, -1, -1),
                                             generator=gen(s)) for s in range(4)])
    assert not (draws[:, :, ~observed[0]] == draws[:1, :, ~observed[0]]).all()  # the rest is generated
    pixels = model.sample(3, x=x, observed=observed, generator=gen(0))  # a pixel mask: tokens of enc(x) kept
    assert pixels.shape == x.shape
    assert torch.equal(pixels, model.tokenizer.decode(model.sample_tokens(
        3, tokens=z, observed=observed.expand(3, -1, -1, -1), generator=gen(0))))
    with pytest.raises(ValueError, match="both x"):
        model.sample(3, observed=observed)


def test_a_tokenizer_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="levels=8"):
        TwoStage(shape=(1, 3, 3), levels=8, tokenizer=ToyTokenizer(6, 3), prior_kwargs=SMALL["pixel-transformer"])
    with pytest.raises(TypeError, match="lacks"):
        TwoStage(shape=(1, 3, 3), levels=6, tokenizer=object(), prior_kwargs=SMALL["pixel-transformer"])
    with pytest.raises(ValueError, match="label_dropout"):
        two_stage(num_classes=3, label_dropout=1.5)


# ----------------------------------------------------------------------------- with the course's VQ-VAE


def tiny_vq_model(num_classes=None):
    torch.manual_seed(0)
    tokenizer = dict(latent_size=4, codebook_size=8, dim=4, channels=8, quantizer="ema")
    return TwoStage(shape=(1, 8, 8), levels=4, tokenizer=tokenizer, prior="pixel-transformer",
                    prior_kwargs=SMALL["pixel-transformer"], num_classes=num_classes)


def test_fit_stages_trains_the_tokenizer_then_the_prior_and_reports_the_bound():
    model = tiny_vq_model(num_classes=3)
    g = gen(0)
    x, y = torch.randint(4, (64, 1, 8, 8), generator=g), torch.randint(3, (64,), generator=g)
    tok_before = [p.detach().clone() for p in model.tokenizer.parameters()]
    prior_before = [p.detach().clone() for p in model.prior.parameters()]
    hist = model.fit_stages((x, y), (x[:16], y[:16]), steps=10, batch_size=16, lr=3e-3, device="cpu", progress=False)
    assert set(hist.stages) == {"tokenizer", "prior"}
    assert hist.stages["tokenizer"].steps == 4 and hist.stages["prior"].steps == 6 and hist.steps == 10
    assert any(not torch.equal(a, b) for a, b in zip(tok_before, model.tokenizer.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(prior_before, model.prior.parameters()))
    assert hist.unit == "bits/dim (bound)" and hist.stages["prior"].unit == "bits/token"
    from armini.train import evaluate
    assert hist.final_test_bpd == pytest.approx(evaluate(model, (x[:16], y[:16])), rel=1e-6)
    z = model.sample_tokens(2, y=torch.tensor([0, 1]), guidance=2.0, generator=gen(0))
    assert z.shape == (2, 1, 4, 4) and int(z.max()) < 8
    again = model.fit_stages((x, y), None, steps=(2, 3), batch_size=16, device="cpu", progress=False)
    assert (again.stages["tokenizer"].steps, again.stages["prior"].steps) == (2, 3) and again.final_test_bpd is None

    # steps far beyond a time limit (the bench's probe): encoding stops after a quarter of the time left
    now = [0]

    def clock():  # one "second" per look at the clock, and 500 per 1000 images encoded
        now[0] += 1
        return now[0]

    encode = model.encode
    model.encode = lambda images: (now.__setitem__(0, now[0] + 500), encode(images))[1]
    quick = model.fit_stages((x.repeat(40, 1, 1, 1), y.repeat(40)), None, steps=(2, 10**9), time_limit=540,
                             batch_size=16, device="cpu", progress=False, clock=clock)
    assert quick.encoded_images == 1000 < 2560  # one chunk of the 2560 images the prior could have seen
    assert quick.stages["prior"].steps >= 1
    assert model.sample(2, y=torch.tensor([0, 1]), generator=gen(0)).shape == (2, 1, 8, 8)


def test_a_two_stage_model_is_rebuilt_from_its_settings():
    from armini.train import model_kwargs
    model = tiny_vq_model()
    kwargs = model_kwargs(model)
    assert kwargs["tokenizer"]["codebook_size"] == 8 and kwargs["prior"] == "pixel-transformer"
    again = TwoStage(**kwargs)
    again.load_state_dict(model.state_dict())
    x = torch.randint(4, (3, 1, 8, 8), generator=gen(1))
    assert torch.equal(again.log_prob(x), model.log_prob(x))
    assert TwoStage(**kwargs).config == model.config
