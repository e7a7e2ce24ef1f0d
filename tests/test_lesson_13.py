"""Lesson 13's build-it exercises (solutions/13_vqgan.ipynb): the hinge losses and VQGAN's adaptive weight.
Each check passes the right answer and rejects the usual wrong ones.

The cases below are the lesson's own: what each check compares."""
import torch
import torch.nn.functional as F

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
