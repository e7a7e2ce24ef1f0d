"""Lesson 13's build-it exercises (solutions/13_vqgan.ipynb): the hinge losses and VQGAN's adaptive weight.
Each check passes the right answer and rejects the usual wrong ones.

The cases below are the lesson's own: what each check compares. And the pretrained switch: ARMINI_PRETRAINED=1
loads checkpoints of exactly the two tokenizers and the two priors the lesson trains. No notebook runs."""
import ast
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from armini import pretrained
from armini.course import check
from armini.nn.discriminator import adaptive_weight, d_hinge_loss, g_hinge_loss

# ---------------------------------------------------------------------------------------------
# the hinge losses


def logits_case(seed, shape=(4, 1, 7, 7), shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(shape, generator=g) + shift, 2 * torch.randn(shape, generator=g) - shift)


D_CASES = [logits_case(0), logits_case(1, (2, 1, 3, 3), shift=1.5), logits_case(2, (8, 1, 7, 7), shift=-1.0)]
G_CASES = [case[1:] for case in D_CASES]


def right_d(logits_real, logits_fake):
    return torch.clamp(1 - logits_real, min=0).mean() + torch.clamp(1 + logits_fake, min=0).mean()


def signs_swapped(logits_real, logits_fake):  # pushes real patches down and fakes up
    return F.relu(1 + logits_real).mean() + F.relu(1 - logits_fake).mean()


def no_margin(logits_real, logits_fake):  # the "critic" loss of a WGAN, not the hinge
    return -logits_real.mean() + logits_fake.mean()


def relu_outside_the_mean(logits_real, logits_fake):  # the hinge of the mean logit, not the mean hinge
    return F.relu(1 - logits_real.mean()) + F.relu(1 + logits_fake.mean())


def test_d_hinge_right(capsys):
    assert check("discriminator hinge loss", right_d, d_hinge_loss, D_CASES) is right_d
    assert capsys.readouterr().out == "✅ discriminator hinge loss: correct on 3 checks\n"


def test_d_hinge_wrong_versions_are_caught(capsys):
    for wrong in (signs_swapped, no_margin, relu_outside_the_mean):
        assert check("discriminator hinge loss", wrong, d_hinge_loss, D_CASES) is d_hinge_loss, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ discriminator hinge loss: case") and "armini's reference version" in out, out


def test_g_hinge_right_and_wrong(capsys):
    right = lambda logits_fake: -logits_fake.mean()  # noqa: E731
    assert check("generator hinge loss", right, g_hinge_loss, G_CASES) is right
    assert capsys.readouterr().out == "✅ generator hinge loss: correct on 3 checks\n"
    wrongs = (lambda logits_fake: logits_fake.mean(),  # the sign: makes fakes look fake
              lambda logits_fake: F.relu(1 - logits_fake).mean(),  # D's real-side hinge: stops pushing at +1
              lambda logits_fake: -logits_fake.sum())  # a sum, scaled by the number of patches
    for wrong in wrongs:
        assert check("generator hinge loss", wrong, g_hinge_loss, G_CASES) is g_hinge_loss
        assert capsys.readouterr().out.startswith("❌ generator hinge loss: case 1 of 3")


# ---------------------------------------------------------------------------------------------
# the adaptive weight


def lambda_case(seed, rec_scale=1.0, adv_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 5, generator=g).requires_grad_()
    out = torch.tanh(torch.randn(8, 5, generator=g)) @ weight.T  # (8, 3)
    rec = rec_scale * (out - torch.randn(8, 3, generator=g)).abs().mean()
    return (rec, -adv_scale * out.square().mean(), weight)


def lambda_cases():
    """Fresh graphs for every check (a wrong version may free a graph it did not retain)."""
    return [lambda_case(0), lambda_case(1, adv_scale=10.0), lambda_case(2, rec_scale=100.0, adv_scale=0.0),
            lambda_case(3, rec_scale=0.0)]


def grads(rec, g, w):
    return (torch.autograd.grad(rec, w, retain_graph=True)[0], torch.autograd.grad(g, w, retain_graph=True)[0])


def right_lambda(rec_loss, g_loss, w):
    a, b = grads(rec_loss, g_loss, w)
    return torch.clamp(a.norm() / (b.norm() + 1e-4), 0.0, 1e4).detach()


def no_clamp(rec_loss, g_loss, w):
    a, b = grads(rec_loss, g_loss, w)
    return (a.norm() / (b.norm() + 1e-4)).detach()


def no_delta(rec_loss, g_loss, w):
    a, b = grads(rec_loss, g_loss, w)
    return (a.norm() / b.norm()).clamp(0, 1e4).detach()


def upside_down(rec_loss, g_loss, w):
    a, b = grads(rec_loss, g_loss, w)
    return (b.norm() / (a.norm() + 1e-4)).clamp(0, 1e4).detach()


def squared_norms(rec_loss, g_loss, w):
    a, b = grads(rec_loss, g_loss, w)
    return (a.square().sum() / (b.square().sum() + 1e-4)).clamp(0, 1e4).detach()


def ratio_of_losses(rec_loss, g_loss, w):  # the losses' sizes, not their gradients'
    return (rec_loss.abs() / (g_loss.abs() + 1e-4)).clamp(0, 1e4).detach()


def graph_not_retained(rec_loss, g_loss, w):
    a = torch.autograd.grad(rec_loss, w)[0]  # frees the graph that g_loss shares
    b = torch.autograd.grad(g_loss, w)[0]
    return (a.norm() / (b.norm() + 1e-4)).clamp(0, 1e4)


def test_adaptive_weight_right(capsys):
    assert check("adaptive weight", right_lambda, adaptive_weight, lambda_cases()) is right_lambda
    assert capsys.readouterr().out == "✅ adaptive weight: correct on 4 checks\n"


def test_adaptive_weight_wrong_versions_are_caught(capsys):
    expected_case = {no_clamp: 3, no_delta: 1, upside_down: 1, squared_norms: 1, ratio_of_losses: 1}
    for wrong, case in expected_case.items():
        assert check("adaptive weight", wrong, adaptive_weight, lambda_cases()) is adaptive_weight, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith(f"❌ adaptive weight: case {case} of 4") and "armini's reference version" in out, (
            wrong.__name__, out)


def test_adaptive_weight_without_retain_graph_says_why(capsys):
    assert check("adaptive weight", graph_not_retained, adaptive_weight, lambda_cases()) is adaptive_weight
    out = capsys.readouterr().out
    assert out.startswith("❌ adaptive weight: case 1 of 4") and "raised RuntimeError" in out
    assert "second time" in out  # torch's message: backward through the graph a second time (retain_graph)


def test_the_reference_leaves_the_graph_for_the_update():
    rec, g, w = lambda_case(0)
    lam = adaptive_weight(rec, g, w)
    assert not lam.requires_grad
    (rec + lam * g).backward()  # the real update still works
    assert w.grad is not None


# ---------------------------------------------------------------------------------------------
# the pretrained checkpoints (ARMINI_PRETRAINED=1)

ROOT = Path(__file__).resolve().parent.parent
TOKENIZERS = ["vqgan-baseline", "vqgan"]  # the VQ-VAE trained on, the VQGAN: one warm-up, two runs
PRIORS = {"vqgan-baseline-prior": "vqgan-baseline", "vqgan-prior": "vqgan"}  # prior -> the tokenizer it models


def code_cells(folder: str) -> list[str]:
    cells = json.loads((ROOT / folder / "13_vqgan.ipynb").read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def lesson_settings() -> dict:
    """The lesson's `tok_settings = dict(...)` with K and its default budgets, read from the notebook."""
    code = "\n".join(code_cells("solutions"))
    call = next(node.value for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Assign)
                and getattr(node.targets[0], "id", "") == "tok_settings")
    tok = {kw.arg: ast.literal_eval(kw.value) if kw.arg != "levels" else kw.value.id for kw in call.keywords}
    number = lambda name: int(re.search(rf"^{name} = (?:armini\.budget\()?(\d+)", code, re.M).group(1))  # noqa: E731
    assert tok.pop("levels") == "K"
    return dict(tok=tok, K=number("K"), N_WARM=number("N_WARM"), N_MORE=number("N_MORE"), BATCH=number("BATCH"),
                P_STEPS=number("P_STEPS"))


def lesson_models() -> dict:
    """Checkpoint name -> the model as the lesson builds it."""
    from armini.models.token_ar import TwoStage
    from armini.tokenizers import VQVAE
    from armini.tokenizers.vqgan import VQGAN

    s = lesson_settings()
    tok = dict(levels=s["K"], **s["tok"])
    built = {"vqgan-baseline": VQVAE(**tok), "vqgan": VQGAN(**tok, disc_start=s["N_WARM"], adversarial_weight=0.1)}
    for prior, tokenizer in PRIORS.items():
        tokenizer = getattr(built[tokenizer], "autoencoder", built[tokenizer])
        built[prior] = TwoStage(shape=(1, 28, 28), levels=s["K"], tokenizer=tokenizer,
                                prior_kwargs=dict(dim=64, n_layers=4, n_heads=4)).prior
    return built


@pytest.mark.parametrize("folder", ["solutions", "notebooks"])
def test_training_cells_have_the_pretrained_switch(folder):
    cells = code_cells(folder)
    assert sum('PRETRAINED = armini.env_flag("ARMINI_PRETRAINED")' in c for c in cells) == 1
    warm = next(c for c in cells if "warm = fit(" in c)
    assert 'pretrained.history("vqgan-baseline").stages["warm-up"]' in warm and "if PRETRAINED:" in warm
    runs = next(c for c in cells if "fit_vqgan(vqgan" in c)
    for line in ('pretrained.load("vqgan-baseline"', 'pretrained.load("vqgan"', 'pretrained.history("vqgan")'):
        assert line in runs and "if PRETRAINED:" in runs, line
    priors = next(c for c in cells if "fit(two.prior" in c)
    assert "if PRETRAINED:" in priors and "pretrained.load(PRIORS[name]" in priors
    assert all(f'"{name}"' in priors for name in PRIORS)


def test_recipes_are_the_lessons_training_settings():
    s = lesson_settings()
    assert s["tok"] == dict(latent_size=7, quantizer="ema", codebook_size=16) and s["K"] == 16
    assert "disc_start=N_WARM, adversarial_weight=0.1" in pretrained.lesson_cell("vqgan")
    built = lesson_models()
    for name in TOKENIZERS + list(PRIORS):
        r = pretrained.RECIPES[name]
        steps = s["P_STEPS"] if name in PRIORS else (s["N_WARM"], s["N_MORE"])
        assert (r.lesson, r.steps, r.batch_size, r.lr, r.data["levels"]) == ("13_vqgan", steps, s["BATCH"], 1e-3, 16)
        assert pretrained.settings(pretrained.build(name)) == pretrained.settings(built[name]), name
    assert {name: pretrained.RECIPES[name].after for name in PRIORS} == PRIORS
    assert [pretrained.RECIPES[name].seed for name in PRIORS] == [2, 2]  # armini.seed_everything(2) before each


@pytest.mark.parametrize("name", TOKENIZERS + list(PRIORS))
def test_shipped_checkpoint_is_the_lessons_model(name):
    if not pretrained.available(name):
        pytest.skip(f"data/pretrained/{name}.pt is not here: python -m armini pretrained train {name}")
    assert pretrained.mismatches(name, lesson_models()[name]) == []
    record = pretrained.record(name)
    if name in PRIORS:  # sampled from with FID-FMNIST as the lesson does; trained on the shipped tokenizer
        assert record["fid_samples"] == 1000 and record["tokenizer"]["name"] == PRIORS[name]
    else:  # the lesson's table: PSNR against rFID
        assert {"psnr", "rfid", "rfid_floor"} <= set(record["quality"])
        assert list(pretrained.history(name).stages) == ["warm-up", "more" if name == "vqgan-baseline" else "vqgan"]
