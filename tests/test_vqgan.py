"""VQGAN's pieces (armini.nn.discriminator, armini.nn.perceptual, armini.tokenizers.vqgan): each test can fail."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from armini import data
from armini.nn.discriminator import (PatchDiscriminator, adaptive_weight, adversarial_factor, d_hinge_loss,
                                     g_hinge_loss)
from armini.nn.perceptual import perceptual_loss

# ---------------------------------------------------------------------------------------------
# hinge losses


def test_hinge_losses_equal_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4, 1, 7, 7, generator=g) * 2, torch.randn(4, 1, 7, 7, generator=g) * 2
    by_hand = sum(max(0.0, 1 - r) for r in real.flatten().tolist()) / real.numel() + \
        sum(max(0.0, 1 + f) for f in fake.flatten().tolist()) / fake.numel()
    assert d_hinge_loss(real, fake).item() == pytest.approx(by_hand, rel=1e-6)
    assert g_hinge_loss(fake).item() == pytest.approx(-sum(fake.flatten().tolist()) / fake.numel(), rel=1e-6)


def test_hinge_loss_is_zero_beyond_the_margin():
    confident_real, confident_fake = torch.full((2, 1, 7, 7), 3.0), torch.full((2, 1, 7, 7), -3.0)
    assert d_hinge_loss(confident_real, confident_fake).item() == 0.0
    assert d_hinge_loss(confident_fake, confident_real).item() == pytest.approx(8.0)  # 4 + 4: both wrong


# ---------------------------------------------------------------------------------------------
# the patch discriminator


def test_patch_discriminator_gives_a_grid_of_patch_logits():
    D = PatchDiscriminator()
    logits = D(torch.rand(3, 1, 28, 28) * 2 - 1)
    assert logits.shape == (3, 1, 7, 7)


def test_each_patch_logit_sees_an_18x18_patch_only():
    torch.manual_seed(0)
    D = PatchDiscriminator()
    x = (torch.rand(1, 1, 28, 28) * 2 - 1).requires_grad_()
    D(x)[0, 0, 3, 3].backward()  # the middle logit: its patch lies inside the image
    seen = (x.grad[0, 0] != 0).nonzero()
    rows, cols = seen[:, 0], seen[:, 1]
    assert int(rows.max() - rows.min()) + 1 == 18 and int(cols.max() - cols.min()) + 1 == 18


# ---------------------------------------------------------------------------------------------
# the adaptive weight


def _last_layer_and_losses(seed=0, adversarial_scale=1.0):
    """A tiny 'decoder' whose last layer is a Linear, a reconstruction loss and an adversarial loss."""
    g = torch.Generator().manual_seed(seed)
    last = nn.Linear(5, 3, bias=False)
    with torch.no_grad():
        last.weight.copy_(torch.randn(3, 5, generator=g))
    h = torch.randn(8, 5, generator=g)
    target = torch.randn(8, 3, generator=g)
    out = last(torch.tanh(h))
    rec = (out - target).abs().mean()
    adv = -adversarial_scale * out.square().mean()
    return last, rec, adv


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    last, rec, adv = _last_layer_and_losses()
    lam = adaptive_weight(rec, adv, last)
    assert not lam.requires_grad  # a number, not a loss term
    # the same losses rebuilt on a fresh copy: gradients by plain backward
    l2, r2, _ = _last_layer_and_losses()
    r2.backward()
    rec_norm = l2.weight.grad.norm().item()
    l3, _, a3 = _last_layer_and_losses()
    a3.backward()
    adv_norm = l3.weight.grad.norm().item()
    assert lam.item() == pytest.approx(rec_norm / (adv_norm + 1e-4), rel=1e-5)
    # the weight tensor itself works as well as the module; the losses can still be backpropagated
    assert adaptive_weight(rec, adv, last.weight).item() == pytest.approx(lam.item())
    (rec + lam * adv).backward()


def test_adaptive_weight_is_clamped_to_0_and_1e4():
    last, rec, _ = _last_layer_and_losses()
    no_adversarial_gradient = 0 * last.weight.sum()
    assert adaptive_weight(100 * rec, no_adversarial_gradient, last).item() == 1e4  # ||g_rec|| / 1e-4 > 1e5
    last, rec, adv = _last_layer_and_losses(adversarial_scale=1e-9)
    assert adaptive_weight(100 * rec, adv, last).item() == 1e4
    last, _, adv = _last_layer_and_losses()
    assert adaptive_weight(0 * last.weight.sum(), adv, last).item() == 0.0


def test_adaptive_weight_balances_the_scales():
    """Scaling the adversarial loss by 10 divides lambda by 10 (well away from delta and the clamp)."""
    last, rec, adv = _last_layer_and_losses()
    lam = adaptive_weight(rec, adv, last).item()
    last, rec, adv = _last_layer_and_losses(adversarial_scale=10.0)
    assert adaptive_weight(rec, adv, last).item() == pytest.approx(lam / 10, rel=1e-3)


def test_the_warm_up_switch():
    assert [adversarial_factor(step, 3) for step in range(6)] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert adversarial_factor(0, 0) == 1.0


# ---------------------------------------------------------------------------------------------
# the perceptual loss


class TinyFeatures(nn.Module):
    """A random conv net with a `features` method, standing in for the course's classifier."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def features(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1)  # (B, 16 * 14 * 14)


def blur(x, sigma):
    """Gaussian blur of float images (B, 1, H, W), kernel 9x9, reflect padding."""
    t = torch.arange(9, dtype=x.dtype) - 4
    k = torch.exp(-t.square() / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (4, 4, 4, 4), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 9))
    return F.conv2d(x, k.view(1, 1, 9, 1))


@pytest.fixture(scope="module")
def images():
    ds = data.load("fashion-mnist", "test", limit=32)
    return ds.images.float() / (ds.levels - 1)  # (32, 1, 28, 28) in [0, 1]


def test_perceptual_loss_is_zero_for_identical_images_and_grows_with_blur(images):
    net = TinyFeatures()
    assert perceptual_loss(images, images.clone(), net).item() == pytest.approx(0.0, abs=1e-10)
    losses = [perceptual_loss(images, blur(images, sigma), net).item() for sigma in (0.5, 1.0, 1.5, 2.5)]
    assert losses[0] > 0 and all(a < b for a, b in zip(losses, losses[1:])), losses


def test_perceptual_loss_sends_gradients_to_the_reconstruction_only(images):
    net = TinyFeatures()
    x_hat = blur(images, 1.0).requires_grad_()
    perceptual_loss(images, x_hat, net).backward(inputs=[x_hat])
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
