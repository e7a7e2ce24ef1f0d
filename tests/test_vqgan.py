"""VQGAN's pieces (armini.nn.discriminator, armini.nn.perceptual, armini.tokenizers.vqgan): each test can fail."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from armini import data
from armini.metrics import load_classifier
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


@pytest.mark.parametrize("make_net", [TinyFeatures, load_classifier], ids=["tiny-net", "course-classifier"])
def test_perceptual_loss_is_zero_for_identical_images_and_grows_with_blur(images, make_net):
    net = make_net()
    assert perceptual_loss(images, images.clone(), net).item() == pytest.approx(0.0, abs=1e-10)
    losses = [perceptual_loss(images, blur(images, sigma), net).item() for sigma in (0.5, 1.0, 1.5, 2.5)]
    assert losses[0] > 0 and all(a < b for a, b in zip(losses, losses[1:])), losses


def test_perceptual_loss_sends_gradients_to_the_reconstruction_only(images):
    net = TinyFeatures()
    x_hat = blur(images, 1.0).requires_grad_()
    perceptual_loss(images, x_hat, net).backward(inputs=[x_hat])
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


# ---------------------------------------------------------------------------------------------
# VQGAN: the VQVAE, its discriminator and fit

from armini import train  # noqa: E402
from armini.tokenizers import check_tokenizer  # noqa: E402
from armini.tokenizers.vqgan import VQGAN, expected_image, fit_vqgan, vqgan_losses  # noqa: E402

SMALL = dict(levels=16, latent_size=7, quantizer="vq", codebook_size=8, dim=4, channels=8, disc_width=8)


def small_vqgan(seed=0, **kwargs):
    net = TinyFeatures()  # seeds torch with 0: first
    torch.manual_seed(seed)
    return VQGAN(**{**SMALL, "perceptual_net": net, **kwargs})


@pytest.fixture(scope="module")
def batch():
    return data.load("fashion-mnist", "train", levels=16, limit=16).images  # (16, 1, 28, 28) in [0, 16)


def test_vqgan_is_a_tokenizer(batch):
    vqgan = small_vqgan()
    tokens = check_tokenizer(vqgan, batch)
    assert tokens.shape == (16, 1, 7, 7) and vqgan.codebook_size == 8 and vqgan.levels == 16
    assert torch.equal(vqgan.decode(tokens), vqgan.autoencoder.decode(tokens))
    assert vqgan.decode_logprobs(tokens).shape == (16, 1, 28, 28, 16)
    assert vqgan.embed(tokens).shape == (16, 4, 7, 7)


def test_expected_image_is_the_mean_of_each_pixel_categorical():
    K = 5
    probs = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4])  # mean value 0*.1 + 1*.2 + 2*.3 + 4*.4 = 2.4
    logits = probs.clamp(min=1e-12).log().view(1, 1, K, 1, 1).expand(2, 1, K, 3, 3)
    torch.testing.assert_close(expected_image(logits), torch.full((2, 1, 3, 3), 2.4 / (K - 1)))


def _generator_grads(vqgan, x, step):
    """Gradients of L_G in the autoencoder's parameters at training step `step`."""
    vqgan.zero_grad()
    vqgan.step.fill_(step)
    vqgan.loss_terms(x)["generator"].backward()
    return [p.grad.clone() for p in vqgan.autoencoder.parameters()]


def test_before_the_warm_up_the_discriminator_does_not_move_the_generator(batch):
    a, b = small_vqgan(seed=0, disc_start=3), small_vqgan(seed=1, disc_start=3)
    b.autoencoder.load_state_dict(a.autoencoder.state_dict())  # same autoencoder, different critics
    for step in (0, 2):  # during the warm-up
        a.step.fill_(step)
        terms = a.loss_terms(batch)
        assert terms["factor"] == 0 and terms["lambda"] == 0 and terms["discriminator"] == 0
        for ga, gb in zip(_generator_grads(a, batch, step), _generator_grads(b, batch, step)):
            torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    a.step.fill_(3)  # the warm-up is over: each critic now pulls the decoder its own way
    terms = a.loss_terms(batch)
    assert terms["factor"] == 1 and terms["lambda"] > 0 and terms["discriminator"] > 0
    differ = [not torch.allclose(ga, gb) for ga, gb in zip(_generator_grads(a, batch, 3), _generator_grads(b, batch, 3))]
    assert any(differ)


def test_the_warm_up_clock_counts_training_steps_only(batch):
    vqgan = small_vqgan()
    vqgan.loss_terms(batch)
    vqgan.eval()
    with torch.no_grad():
        vqgan.loss_terms(batch)
    assert int(vqgan.step) == 1


def test_the_adaptive_weight_in_the_loss_is_the_papers(batch):
    vqgan = small_vqgan(disc_start=0, adversarial_weight=0.5)
    terms = vqgan.loss_terms(batch)
    rec = terms["nll_bpd"] + terms["l1"] + terms["perceptual"]
    w = vqgan.last_decoder_layer.weight
    by_hand = 0.5 * (torch.autograd.grad(rec, w, retain_graph=True)[0].norm() /
                     (torch.autograd.grad(terms["g_adv"], w, retain_graph=True)[0].norm() + 1e-4))
    torch.testing.assert_close(terms["lambda"], by_hand)


def _fit_one_step(vqgan, batch, keep):
    """One fit step with VQGAN's param_groups, only the loss named `keep` kept (the other times 0)."""
    def loss_fn(model, x, y=None):
        losses = vqgan_losses(model, x, y)
        return {name: loss if name == keep else 0 * loss for name, loss in losses.items()}
    before = {name: p.detach().clone() for name, p in vqgan.named_parameters()}
    train.fit(vqgan, batch, steps=1, batch_size=len(batch), loss_fn=loss_fn, param_groups=VQGAN.param_groups,
              progress=False, device="cpu")
    return {name: not torch.equal(before[name], p) for name, p in vqgan.named_parameters()}


def test_each_loss_moves_only_its_own_group_when_trained_with_fit(batch):
    moved = _fit_one_step(small_vqgan(disc_start=0), batch, keep="discriminator")
    assert not any(m for name, m in moved.items() if name.startswith("autoencoder."))
    assert all(m for name, m in moved.items() if name.startswith("critic.") and name.endswith("weight"))
    moved = _fit_one_step(small_vqgan(disc_start=0), batch, keep="generator")
    assert not any(m for name, m in moved.items() if name.startswith("critic."))  # though L_G goes through D
    assert any(m for name, m in moved.items() if name.startswith("autoencoder.decoder"))


def test_fit_vqgan_trains_both_groups_after_the_warm_up(batch):
    vqgan = small_vqgan(disc_start=2)
    hist = fit_vqgan(vqgan, batch, batch, steps=4, batch_size=8, progress=False, device="cpu")
    assert int(vqgan.step) == 4 and len(hist.train_losses) == 4
    d_losses = [losses["discriminator"] for _, losses in hist.train_losses]
    assert d_losses[:2] == [0.0, 0.0] and all(d > 0 for d in d_losses[2:])
    assert vqgan.last_lambda > 0 and hist.final_test_bpd > 0


def test_vqgan_uses_the_course_classifier_by_default(batch):
    from armini.metrics import load_classifier

    vqgan = VQGAN(**SMALL)
    assert vqgan.perceptual_net is load_classifier()
    assert not any(name.startswith("_perceptual") for name in vqgan.state_dict())  # not part of the weights
    assert vqgan.loss_terms(batch)["perceptual"] > 0
