"""Lesson 12's build-it exercises (solutions/12_token_priors.ipynb): the guidance mix and the two-stage
sampler. Each check passes the right answer and rejects the usual wrong ones."""
import pytest
import torch

from armini import pretrained
from armini.course import check
from armini.models.token_ar import TwoStage, guided_logprobs, two_stage_sample
from test_token_ar import SMALL, ToyTokenizer, train_steps

# ---------------------------------------------------------------------------------------------
# the guidance mix


def logprobs(seed, n=3, V=6):
    return torch.log_softmax(3 * torch.randn(n, V, generator=torch.Generator().manual_seed(seed)), -1)


MIX_CASES = [(logprobs(0), logprobs(1), 0.0), (logprobs(2), logprobs(3), 1.0), (logprobs(4), logprobs(5), 3.0)]


def right_mix(cond, uncond, w):
    return torch.log_softmax((1 + w) * cond - w * uncond, dim=-1)


def not_renormalised(cond, uncond, w):
    return (1 + w) * cond - w * uncond


def swapped(cond, uncond, w):  # guides away from the class
    return torch.log_softmax((1 + w) * uncond - w * cond, dim=-1)


def mixes_probabilities(cond, uncond, w):  # the mix is on log-probabilities, not probabilities
    return torch.log(((1 + w) * cond.exp() - w * uncond.exp()).clamp(min=1e-12))


def test_guidance_mix_right(capsys):
    assert check("guidance mix", right_mix, guided_logprobs, MIX_CASES) is right_mix
    assert capsys.readouterr().out == "✅ guidance mix: correct on 3 checks\n"


def test_guidance_mix_wrong_versions_are_caught(capsys):
    for wrong, case in ((not_renormalised, 2), (swapped, 1), (mixes_probabilities, 2)):  # w = 0 in case 1
        assert check("guidance mix", wrong, guided_logprobs, MIX_CASES) is guided_logprobs, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith(f"❌ guidance mix: case {case} of 3") and "armini's reference version" in out, (wrong.__name__, out)


# ---------------------------------------------------------------------------------------------
# the two-stage sampler


def toy_model():
    torch.manual_seed(0)
    model = TwoStage(shape=(1, 3, 3), levels=6, tokenizer=ToyTokenizer(6, 3), prior="pixel-transformer",
                     prior_kwargs=SMALL["pixel-transformer"], num_classes=3)
    train_steps(model, steps=10)
    return model.eval()


def sampler_cases():
    model = toy_model()
    return [(model, 4, torch.tensor([0, 1, 2, 0]), 0.0), (model, 3, torch.tensor([2, 2, 1]), 2.0)]


def right_sampler(model, n, y, guidance, *, mix=right_mix):
    prior = model.prior
    z = torch.zeros((n,) + model.token_shape, dtype=torch.long)  # (n, D, h, w)
    null = torch.full_like(y, model.null)
    with torch.no_grad():
        for d in range(z[0].numel()):
            logp = prior.conditionals(z, y).flatten(1, -2)[:, d]  # (n, V)
            if guidance:
                logp = mix(logp, prior.conditionals(z, null).flatten(1, -2)[:, d], guidance)
            cdf = torch.softmax(logp.double(), -1).cumsum(-1)  # (n, V)
            u = torch.rand(n, dtype=torch.float64)
            z.view(n, -1)[:, d] = (cdf < u[:, None]).sum(-1).clamp(max=prior.levels - 1)
    return model.decode(z)


def no_guidance(model, n, y, guidance):
    return right_sampler(model, n, y, 0.0)


def greedy(model, n, y, guidance):  # the most likely token at every step: no sampling
    prior = model.prior
    z = torch.zeros((n,) + model.token_shape, dtype=torch.long)
    with torch.no_grad():
        for d in range(z[0].numel()):
            z.view(n, -1)[:, d] = prior.conditionals(z, y).flatten(1, -2)[:, d].argmax(-1)
    return model.decode(z)


def returns_tokens(model, n, y, guidance):  # forgets the second stage
    prior = model.prior
    z = torch.zeros((n,) + model.token_shape, dtype=torch.long)
    with torch.no_grad():
        for d in range(z[0].numel()):
            cdf = torch.softmax(prior.conditionals(z, y).flatten(1, -2)[:, d].double(), -1).cumsum(-1)
            z.view(n, -1)[:, d] = (cdf < torch.rand(n, dtype=torch.float64)[:, None]).sum(-1)
    return z


def test_two_stage_sampler_right(capsys):
    assert check("two-stage sampler", right_sampler, two_stage_sample, sampler_cases()) is right_sampler
    assert capsys.readouterr().out == "✅ two-stage sampler: correct on 2 checks\n"


def test_two_stage_sampler_wrong_versions_are_caught(capsys):
    cases = sampler_cases()
    for wrong, case in ((greedy, 1), (returns_tokens, 1), (no_guidance, 2)):
        assert check("two-stage sampler", wrong, two_stage_sample, cases) is two_stage_sample, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith(f"❌ two-stage sampler: case {case} of 2") and "reference version" in out, (wrong.__name__, out)


# ----------------------------------------------------------------------------- the pretrained checkpoint


@pytest.mark.skipif(not pretrained.available("vq-transformer"), reason="data/pretrained/vq-transformer.pt is not "
                    "here: python -m armini pretrained train vq-transformer")
def test_pretrained_checkpoint_is_the_lessons_model():
    """ARMINI_PRETRAINED=1 loads what the training cell trains: the same model, shape, levels and settings
    (the default budget's), and the cell's budget is the recipe's."""
    lesson_model = TwoStage(shape=(1, 28, 28), levels=256, tokenizer=dict(quantizer="ema", codebook_size=128, dim=16,
                            channels=32), prior="pixel-transformer", prior_kwargs=dict(dim=64, n_layers=4, n_heads=4),
                            num_classes=10, tokenizer_share=0.5)  # TOKENIZER and PRIOR as the lesson sets them
    assert pretrained.mismatches("vq-transformer", lesson_model) == []
    cell = pretrained.lesson_cell("vq-transformer")
    for setting in ['armini.budget(220, 20)', 'batch = 32', 'lr=2e-3']:
        assert setting in cell, setting
