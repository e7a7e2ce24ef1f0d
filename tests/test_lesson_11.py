"""Lesson 11's build-it exercises (solutions/11_tokenizers.ipynb): the Fréchet distance, nearest-code
quantisation with the straight-through estimator, the VQ loss, the EMA codebook update and FSQ's
bound-and-round. Each check passes the right answer and rejects the usual wrong ones, with the
lesson's own cases and wrappers. And the pretrained switch: ARMINI_PRETRAINED=1 loads checkpoints of exactly
the tokenizers the lesson trains (settings, steps, batch size, learning rate). No notebook runs."""
import ast
import json
from pathlib import Path

import pytest
import torch

from armini import metrics, pretrained
from armini.course import check
from armini.nn import quantize as Q


# ---------------------------------------------------------------------------------------------
# the Fréchet distance

def gaussian_case(F, seed, same=False):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(F, F, generator=g, dtype=torch.float64), torch.randn(F, F, generator=g, dtype=torch.float64)
    mu1, mu2 = torch.randn(F, generator=g, dtype=torch.float64), torch.randn(F, generator=g, dtype=torch.float64)
    sigma1, sigma2 = a @ a.T / F, b @ b.T / F
    return (mu1, sigma1, mu1, sigma1) if same else (mu1, sigma1, mu2, sigma2)


FRECHET_CASES = [gaussian_case(1, 0), gaussian_case(3, 1), gaussian_case(8, 2), gaussian_case(5, 3, same=True)]


def psd_root(m):
    vals, vecs = torch.linalg.eigh(m)
    return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T


def right_frechet(mu1, sigma1, mu2, sigma2):
    root1 = psd_root(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross)


def no_factor_two(mu1, sigma1, mu2, sigma2):
    root1 = psd_root(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - cross)


def elementwise_root(mu1, sigma1, mu2, sigma2):  # sqrt of each entry of sigma1 sigma2, not the matrix root
    cross = (sigma1 @ sigma2).abs().sqrt().trace()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross)


def no_root(mu1, sigma1, mu2, sigma2):  # tr(sigma1 sigma2) without the square root
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * (sigma1 @ sigma2).trace())


def test_frechet_right(capsys):
    assert check("Fréchet distance", right_frechet, metrics.frechet_distance, FRECHET_CASES, atol=1e-6) is right_frechet
    assert capsys.readouterr().out == "✅ Fréchet distance: correct on 4 checks\n"


@pytest.mark.parametrize("wrong", [no_factor_two, elementwise_root, no_root])
def test_frechet_wrong_versions_are_caught(wrong, capsys):
    assert check("Fréchet distance", wrong, metrics.frechet_distance, FRECHET_CASES, atol=1e-6) \
        is metrics.frechet_distance
    out = capsys.readouterr().out
    assert out.startswith("❌ Fréchet distance: case") and "armini's reference version" in out, out


# ---------------------------------------------------------------------------------------------
# nearest code + straight-through (the check runs the lesson's with_gradient wrapper)

def gradient(loss, x):
    # d loss / d x, zeros where no gradient reaches x (a stop-gradient in the way)
    g = torch.autograd.grad(loss, x, retain_graph=True, allow_unused=True)[0] if loss.requires_grad else None
    return torch.zeros_like(x) if g is None else g


def with_gradient(quantize_fn):
    def run(z_e, codebook, weights):
        z_e = z_e.clone().requires_grad_()
        z_q, indices = quantize_fn(z_e, codebook)
        return {"z_q": z_q.detach(), "indices": indices, "gradient at z_e": gradient((z_q * weights).sum(), z_e)}
    return run


def latent_case(B, d, h, w, V, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, d, h, w, generator=g), torch.randn(V, d, generator=g), torch.randn(B, d, h, w, generator=g))


QUANTIZE_CASES = [latent_case(1, 2, 3, 3, 4, 0), latent_case(2, 8, 7, 7, 32, 1), latent_case(3, 4, 2, 5, 2, 2)]


def nearest_and_codes(z_e, codebook):
    B, d, h, w = z_e.shape
    z = z_e.permute(0, 2, 3, 1).reshape(-1, d)
    k = torch.cdist(z.detach(), codebook.detach()).argmin(1)
    return k, codebook[k].view(B, h, w, d).permute(0, 3, 1, 2)


def right_quantize(z_e, codebook):
    k, e = nearest_and_codes(z_e, codebook)
    return z_e + (e - z_e).detach(), k.view(z_e.shape[0], *z_e.shape[2:])


def no_straight_through(z_e, codebook):  # returns the codes themselves: no gradient reaches the encoder
    k, e = nearest_and_codes(z_e, codebook)
    return e, k.view(z_e.shape[0], *z_e.shape[2:])


def farthest_code(z_e, codebook):  # argmax instead of argmin
    B, d, h, w = z_e.shape
    z = z_e.permute(0, 2, 3, 1).reshape(-1, d)
    k = torch.cdist(z.detach(), codebook.detach()).argmax(1)
    e = codebook[k].view(B, h, w, d).permute(0, 3, 1, 2)
    return z_e + (e - z_e).detach(), k.view(B, h, w)


def scrambled_layout(z_e, codebook):  # reads channels as positions: reshape without the permute
    B, d, h, w = z_e.shape
    z = z_e.reshape(-1, d)
    k = torch.cdist(z.detach(), codebook.detach()).argmin(1)
    e = codebook[k].view(B, d, h, w)
    return z_e + (e - z_e).detach(), k.view(B, h, w)


def test_quantize_right(capsys):
    reference = with_gradient(Q.quantize)
    assert check("nearest code + straight-through", with_gradient(right_quantize), reference, QUANTIZE_CASES) \
        is not reference
    assert capsys.readouterr().out == "✅ nearest code + straight-through: correct on 3 checks\n"


@pytest.mark.parametrize("wrong, problem", [(no_straight_through, "gradient at z_e"), (farthest_code, "z_q"),
                                            (scrambled_layout, "z_q")])
def test_quantize_wrong_versions_are_caught(wrong, problem, capsys):
    reference = with_gradient(Q.quantize)
    assert check("nearest code + straight-through", with_gradient(wrong), reference, QUANTIZE_CASES) is reference
    out = capsys.readouterr().out
    assert out.startswith("❌ nearest code + straight-through: case 1 of 3") and problem in out, out


# ---------------------------------------------------------------------------------------------
# the VQ loss

def loss_and_gradients(loss_fn):
    def run(z_e, e, beta):
        z_e, e = z_e.clone().requires_grad_(), e.clone().requires_grad_()
        loss = loss_fn(z_e, e, beta)
        return {"loss": loss.detach(), "gradient at z_e": gradient(loss, z_e), "gradient at e": gradient(loss, e)}
    return run


def loss_case(shape, beta, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g), torch.randn(shape, generator=g), beta)


LOSS_CASES = [loss_case((2, 4, 3, 3), 0.25, 0), loss_case((1, 8, 7, 7), 0.25, 1), loss_case((3, 2, 2, 2), 1.5, 2)]


def right_vq_loss(z_e, e, beta=0.25):
    return (z_e.detach() - e).square().mean() + beta * (z_e - e.detach()).square().mean()


def beta_on_the_codebook(z_e, e, beta=0.25):  # the widely copied legacy form
    return beta * (z_e.detach() - e).square().mean() + (z_e - e.detach()).square().mean()


def no_stop_gradients(z_e, e, beta=0.25):  # same value, both terms move both
    return (z_e - e).square().mean() + beta * (z_e - e).square().mean()


def stop_gradients_swapped(z_e, e, beta=0.25):
    return (z_e - e.detach()).square().mean() + beta * (z_e.detach() - e).square().mean()


def test_vq_loss_right(capsys):
    reference = loss_and_gradients(Q.vq_loss)
    assert check("VQ loss", loss_and_gradients(right_vq_loss), reference, LOSS_CASES) is not reference
    assert capsys.readouterr().out == "✅ VQ loss: correct on 3 checks\n"


@pytest.mark.parametrize("wrong, problem", [(beta_on_the_codebook, "loss"), (no_stop_gradients, "gradient at z_e"),
                                            (stop_gradients_swapped, "gradient at z_e")])
def test_vq_loss_wrong_versions_are_caught(wrong, problem, capsys):
    reference = loss_and_gradients(Q.vq_loss)
    assert check("VQ loss", loss_and_gradients(wrong), reference, LOSS_CASES) is reference
    out = capsys.readouterr().out
    assert out.startswith("❌ VQ loss: case 1 of 3") and problem in out, out


# ---------------------------------------------------------------------------------------------
# the EMA update

def ema_case(V, d, n, decay, seed):
    g = torch.Generator().manual_seed(seed)
    N = torch.rand(V, generator=g) * 3
    N[0] = 0.0
    return (N, torch.randn(V, d, generator=g), torch.randn(n, d, generator=g),
            torch.randint(1, V, (n,), generator=g), decay, 1e-5)


EMA_CASES = [ema_case(4, 2, 10, 0.99, 0), ema_case(16, 8, 100, 0.9, 1), ema_case(3, 1, 5, 0.0, 2)]


def batch_stats(m, z, indices, V):
    n = torch.bincount(indices, minlength=V).float()
    return n, torch.zeros_like(m).index_add_(0, indices, z)


def right_ema(N, m, z, indices, decay=0.99, eps=1e-5):
    V = N.shape[0]
    n, sums = batch_stats(m, z, indices, V)
    N, m = decay * N + (1 - decay) * n, decay * m + (1 - decay) * sums
    smoothed = (N + eps) / (N.sum() + V * eps) * N.sum()
    return N, m, m / smoothed[:, None]


def no_smoothing(N, m, z, indices, decay=0.99, eps=1e-5):
    V = N.shape[0]
    n, sums = batch_stats(m, z, indices, V)
    N, m = decay * N + (1 - decay) * n, decay * m + (1 - decay) * sums
    return N, m, m / N[:, None]


def decay_on_the_batch(N, m, z, indices, decay=0.99, eps=1e-5):  # g and 1 - g swapped
    V = N.shape[0]
    n, sums = batch_stats(m, z, indices, V)
    N, m = (1 - decay) * N + decay * n, (1 - decay) * m + decay * sums
    smoothed = (N + eps) / (N.sum() + V * eps) * N.sum()
    return N, m, m / smoothed[:, None]


def smoothing_without_the_total(N, m, z, indices, decay=0.99, eps=1e-5):  # (N + eps) / (N + V eps): a fraction
    V = N.shape[0]
    n, sums = batch_stats(m, z, indices, V)
    N, m = decay * N + (1 - decay) * n, decay * m + (1 - decay) * sums
    return N, m, m / ((N + eps) / (N.sum() + V * eps))[:, None]


def test_ema_right(capsys):
    assert check("EMA update", right_ema, Q.ema_update, EMA_CASES) is right_ema
    assert capsys.readouterr().out == "✅ EMA update: correct on 3 checks\n"


@pytest.mark.parametrize("wrong", [no_smoothing, decay_on_the_batch, smoothing_without_the_total])
def test_ema_wrong_versions_are_caught(wrong, capsys):
    assert check("EMA update", wrong, Q.ema_update, EMA_CASES) is Q.ema_update
    out = capsys.readouterr().out
    assert out.startswith("❌ EMA update: case 1 of 3") and "armini's reference version" in out, out


# ---------------------------------------------------------------------------------------------
# FSQ's bound-and-round

def fsq_with_gradient(fsq_fn):
    def run(z, levels):
        z = z.clone().requires_grad_()
        codes = fsq_fn(z, levels)
        return {"codes": codes.detach(), "gradient at z": gradient(codes.sum(), z)}
    return run


def fsq_case(B, levels, seed):
    return (3 * torch.randn(B, len(levels), 4, 4, generator=torch.Generator().manual_seed(seed)), levels)


FSQ_CASES = [fsq_case(2, (8, 5, 5, 5), 0), fsq_case(3, (7, 5, 5, 5, 5), 1), fsq_case(1, (8, 6, 5), 2),
             (torch.zeros(1, 3, 1, 1), (8, 6, 5))]


def make_fsq(shift_fn=torch.atanh, straight_through=True, divide=True):
    """The exercise with one rule changed. (The paper's tan for atanh is not among them: the two shifts
    agree to about 1e-5 for these levels, and the codes do not change.)"""
    def fsq(z, levels, eps=1e-3):
        L = torch.tensor(levels, dtype=z.dtype).view(1, -1, 1, 1)
        half = (L - 1) * (1 + eps) / 2
        offset = (L % 2 == 0).to(z.dtype) * 0.5
        bounded = torch.tanh(z + shift_fn(offset / half)) * half - offset
        rounded = bounded + (bounded.round() - bounded).detach() if straight_through else bounded.round()
        return rounded / (L // 2) if divide else rounded
    return fsq


def test_fsq_right(capsys):
    reference = fsq_with_gradient(Q.fsq_quantize)
    assert check("FSQ bound-and-round", fsq_with_gradient(make_fsq()), reference, FSQ_CASES) is not reference
    assert capsys.readouterr().out == "✅ FSQ bound-and-round: correct on 4 checks\n"


@pytest.mark.parametrize("wrong, problem", [
    (make_fsq(straight_through=False), "gradient at z"),  # round() has a zero gradient
    (make_fsq(divide=False), "codes"),  # integers, not codes in [-1, 1]
    (make_fsq(shift_fn=torch.zeros_like), "codes"),  # no shift: even L's codes move by half a step
])
def test_fsq_wrong_versions_are_caught(wrong, problem, capsys):
    reference = fsq_with_gradient(Q.fsq_quantize)
    assert check("FSQ bound-and-round", fsq_with_gradient(wrong), reference, FSQ_CASES) is reference
    out = capsys.readouterr().out
    assert out.startswith("❌ FSQ bound-and-round: case") and problem in out, out


# ---------------------------------------------------------------------------------------------
# the pretrained checkpoints (ARMINI_PRETRAINED=1)

ROOT = Path(__file__).resolve().parent.parent
FOUR = ["tokenizer-vq", "tokenizer-ema", "tokenizer-fsq", "tokenizer-rvq"]  # section 4's table, in its order
DEEP = "tokenizer-rvq4"  # section 6: residual VQ, 4 x 32


def code_cells(folder: str) -> list[str]:
    cells = json.loads((ROOT / folder / "11_tokenizers.ipynb").read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def lesson_configs() -> dict:
    """The lesson's `configs = {...}` (section 4), read from the notebook: name -> VQVAE settings."""
    cell = next(c for c in code_cells("solutions") if "configs = {" in c)
    assign = next(node for node in ast.parse(cell).body if isinstance(node, ast.Assign)
                  and getattr(node.targets[0], "id", "") == "configs")
    return {ast.literal_eval(k): {kw.arg: ast.literal_eval(kw.value) for kw in v.keywords}
            for k, v in zip(assign.value.keys, assign.value.values)}


def lesson_tokenizers() -> dict:
    """Checkpoint name -> the tokenizer as the lesson builds it (the four of the table, then the deep one)."""
    from armini.tokenizers import VQVAE

    image = dict(image_shape=(1, 28, 28), levels=256)  # data.load("fashion-mnist")
    built = {name: VQVAE(**image, latent_size=7, **cfg) for name, cfg in zip(FOUR, lesson_configs().values())}
    built[DEEP] = VQVAE(**image, quantizer="rvq", codebook_size=32, depth=4)
    return built


@pytest.mark.parametrize("folder", ["solutions", "notebooks"])
def test_training_cells_have_the_pretrained_switch(folder):
    cells = code_cells(folder)
    for name in FOUR + [DEEP]:
        found = [c for c in cells if "pretrained.load(" in c and f'"{name}"' in c]
        assert len(found) == 1, f"{folder}: {len(found)} cells load {name}"
        assert "if PRETRAINED:" in found[0] and "else:" in found[0], name
    assert sum('PRETRAINED = armini.env_flag("ARMINI_PRETRAINED")' in c for c in cells) == 1
    table = next(c for c in cells if '"tokenizer-vq"' in c)
    assert "pretrained.usage_log(" in table and "pretrained.history(" in table  # the usage plot and the prints


def test_recipes_are_the_lessons_training_settings():
    assert list(lesson_configs()) == ["VQ", "VQ + EMA + restarts", "FSQ (8,5,5,5)", "residual VQ, 2 x 32"]
    table, deep = pretrained.lesson_cell("tokenizer-vq"), pretrained.lesson_cell(DEEP)
    for setting in ("steps = armini.budget(500,", "batch_size=32, lr=2e-3", "eval_images=armini.budget(500,",
                    "every=armini.budget(25,", "usage_images = test.images[-armini.budget(500,"):
        assert setting in table, setting
    assert "steps=steps, batch_size=32, lr=2e-3" in deep and "armini.seed_everything(0)" in deep
    built = lesson_tokenizers()
    for name in FOUR + [DEEP]:
        r = pretrained.RECIPES[name]
        assert (r.lesson, r.steps, r.batch_size, r.lr, r.seed, r.quality) == ("11_tokenizers", 500, 32, 2e-3, 0, 2000)
        assert (r.usage, r.fit) == (((500, 25), dict(eval_images=500)) if name in FOUR else ((), {})), name
        assert pretrained.settings(pretrained.build(name)) == pretrained.settings(built[name]), name


@pytest.mark.parametrize("name", FOUR + [DEEP])
def test_shipped_checkpoint_is_the_lessons_tokenizer(name):
    if not pretrained.available(name):
        pytest.skip(f"data/pretrained/{name}.pt is not here: python -m armini pretrained train {name}")
    assert pretrained.mismatches(name, lesson_tokenizers()[name]) == []
    record = pretrained.record(name)
    assert (record["steps"], record["batch_size"], record["lr"]) == (500, 32, 2e-3)
    assert {"psnr", "rfid", "rfid_floor"} <= set(record["quality"])
    if name in FOUR:  # what the usage plot reads: a measurement every 25 steps and one after the last
        log = pretrained.usage_log(name)
        assert log.steps == list(range(0, 500, 25)) + [500] and len(log.used) == len(log.perplexity) == 21
