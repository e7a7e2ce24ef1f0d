"""Lesson 12's build-it exercises (solutions/12_token_priors.ipynb): the guidance mix and the two-stage
sampler. Each check passes the right answer and rejects the usual wrong ones. Section 5's completion
comparison (LMConv, the pixel model, the token model) is scored by its definition."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
import torch

import armini
from armini import pretrained
from armini.course import check
from armini.models import MODELS
from armini.models.lmconv import LMConv
from armini.models.token_ar import TwoStage, guided_logprobs, two_stage_sample
from test_token_ar import SMALL, ToyTokenizer, train_steps

ROOT = Path(__file__).resolve().parent.parent

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


# ----------------------------------------------------------------------------- section 5: completion compared


def lesson_cell(marker: str) -> str:
    """The code cell of solutions/12_token_priors.ipynb that contains `marker`."""
    cells = json.loads((ROOT / "solutions" / "12_token_priors.ipynb").read_text())["cells"]
    found = ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"])]
    assert len(found) == 1, f"{len(found)} cells hold {marker!r}"
    return found[0]


def completion_namespace():
    """What section 5's cells read from the cells before, with tiny untrained models (and a tiny LMConv where the
    lesson loads lesson 09's checkpoint), test images and the course's judge."""
    from armini import data, metrics, viz

    torch.manual_seed(0)
    test = data.load("fashion-mnist", "test", limit=104)  # the cell completes images 100 on
    tiny_lmconv = LMConv(shape=(1, 14, 14), levels=256, nr_filters=4, n_stages=1, nr_mix=1)
    pixel = MODELS["pixelcnn"](shape=(1, 28, 28), levels=256, channels=8, n_blocks=1, head_channels=8)
    model = TwoStage(shape=(1, 28, 28), levels=256, tokenizer=dict(quantizer="ema", codebook_size=8, dim=4, channels=4),
                     prior="pixel-transformer", prior_kwargs=SMALL["pixel-transformer"])
    return dict(armini=armini, torch=torch, plt=plt, data=data, metrics=metrics, viz=viz, device=torch.device("cpu"),
                pretrained=SimpleNamespace(load=lambda name, device=None: {"lmconv": tiny_lmconv}[name],
                                           record=lambda name: {"steps": 1, "train_cpu_s": 0.0, "test_bpd": 8.0}),
                train=SimpleNamespace(levels=256), test=test, C=1, H=28, W=28, best={"model": "pixelcnn"},
                pixel=pixel.eval(), model=model.eval(), judge=metrics.load_classifier())


def test_completion_comparison_scores_are_the_definition(monkeypatch):
    """Section 5 completes the same test images under three masks with LMConv (14x14), the pixel model and the token
    model (28x28), and scores them at 14x14 on the missing pixels: each PSNR and judge figure recomputed here from
    its definition (2x2 block means rounded half up, 10 log10(255^2 / MSE) over the missing pixels only, the
    classifier's class against the label)."""
    monkeypatch.setenv("ARMINI_QUICK", "1")
    monkeypatch.setattr(plt, "show", lambda: None)
    ns = completion_namespace()
    exec(lesson_cell("fills = {}"), ns)
    exec(lesson_cell("def missing_psnr"), ns)
    plt.close("all")
    masks, fills, scores, x_part, n = ns["masks"], ns["fills"], ns["scores"], ns["x_part"], ns["n_fill"]
    assert list(masks) == ["top half given", "hole in the middle", "left half missing"] and n == 2
    assert [int((~m).sum()) for m in masks.values()] == [392, 144, 392]  # missing pixels at 28x28

    def block_mean(x):  # (N, 1, 28, 28) -> (N, 1, 14, 14): the mean of each 2x2 block, rounded half up
        return torch.div(x.reshape(-1, 1, 14, 2, 14, 2).sum((3, 5)) + 2, 4, rounding_mode="floor")

    x14 = block_mean(x_part)
    judge, lmconv = ns["judge"], ns["lmconv"]

    def judge_agrees(x14):  # how often the judge, reading 14x14 images enlarged, sees the label
        with torch.no_grad():
            seen = judge(x14.double().div(255).repeat_interleave(2, 2).repeat_interleave(2, 3).float()).argmax(1)
        return (seen == ns["y_part"]).double().mean().item()

    assert ns["original_agrees"] == pytest.approx(judge_agrees(x14))
    for name, observed in masks.items():
        missing14 = ~observed[0, 0, ::2, ::2]  # every 2x2 block here is wholly observed or wholly missing
        assert set(fills[name]) == {"LMConv (14x14)", "pixelcnn (28x28)", "VQ + transformer (28x28)"}
        lm = fills[name]["LMConv (14x14)"]
        assert lm.shape == (n, 1, 14, 14) and torch.equal(lm[:, :, ~missing14], x14[:, :, ~missing14])  # kept
        observed_first = lmconv.completion_order(~missing14)  # lesson 09's completion: every observed pixel first
        assert torch.equal(lm, lmconv.sample(n, x=x14, observed=~missing14[None, None], order=observed_first,
                                             generator=torch.Generator().manual_seed(0))), name
        kept = observed.expand_as(x_part)
        assert torch.equal(fills[name]["pixelcnn (28x28)"][kept], x_part[kept])  # the pixel model keeps the given pixels
        assert set(scores[name]) == {"missing part grey", *fills[name]}
        for who, (psnr, agrees) in scores[name].items():
            if who == "missing part grey":
                x = torch.where(missing14, torch.full_like(x14, 128), x14)
            else:
                x = fills[name][who] if who.startswith("LMConv") else block_mean(fills[name][who])
            mse = ((x - x14).double()[:, 0, missing14] ** 2).mean()
            assert psnr == pytest.approx(10 * math.log10(255 ** 2 / mse.item()), abs=1e-9), (name, who)
            assert agrees == pytest.approx(judge_agrees(x)), (name, who)
