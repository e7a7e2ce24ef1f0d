"""The adversarial half of VQGAN (Esser et al. 2021): a patch discriminator, the hinge loss, the
adaptive weight and the warm-up switch.

A tokenizer trained on a per-pixel loss (squared error, or a per-pixel likelihood) at a strong
compression hedges: where the tokens do not say which texture or edge was there, the best
per-pixel guess is an average, and averages look blurred. VQGAN adds a critic D that looks at
patches of an image and says "real" (large logit) or "reconstructed" (small logit), and trains the
decoder to fool it: a blurred patch is easy to spot, so the decoder is pushed to commit to sharp,
plausible detail.

    patch discriminator (PatchGAN, Isola et al. 2017): a small strided conv net whose output is a
        grid of logits, one per overlapping patch (here 7x7 logits on a 28x28 image, each seeing
        an 18x18 patch), so D judges texture and local structure, not the global layout
    hinge loss (Lim & Ye 2017; Miyato et al. 2018), as in VQGAN:
        L_D = mean relu(1 - D(x)) + mean relu(1 + D(x_hat))       (discriminator)
        L_G = -mean D(x_hat)                                        (generator: the decoder)
    adaptive weight (VQGAN, eq. 7), at the decoder's last layer G_L:
        lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + delta),  delta = 1e-4,
        clamped to [0, 1e4] and not differentiated through (a number, not a loss term)
    warm-up: the adversarial terms are switched off (factor 0) for the first `start` steps, so the
        autoencoder first learns to reconstruct; then both the discriminator and the decoder's
        adversarial term start (factor 1), as taming-transformers' `adopt_weight` does.

Deviations from taming-transformers' NLayerDiscriminator: two stride-2 layers instead of three
(a 28x28 image) and no normalisation layer (taming: BatchNorm, whose statistics over the whole
batch let every logit depend on every image, not only on its patch; a small net trains without
it); the discriminator's hinge loss is not halved (taming multiplies it by 0.5, which
only rescales D's learning rate under Adam).

Legend: B batch, C image channels, H, W height and width, h, w the grid of patch logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PatchDiscriminator", "d_hinge_loss", "g_hinge_loss", "adaptive_weight", "adversarial_factor"]


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: float images (B, C, H, W), about [-1, 1] -> patch logits (B, 1, H/4, W/4).

    Two 4x4 stride-2 convolutions (H -> H/2 -> H/4) with LeakyReLU(0.2), then a 3x3 convolution to
    one logit per position. Each logit sees an 18x18 patch (receptive field 1 + 2*4 + 3*2 + 3*1).
    """

    def __init__(self, channels: int = 1, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1),  # (B, width, H/2, W/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),  # (B, 2 width, H/4, W/4)
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1),  # (B, 1, H/4, W/4): one logit per patch
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def d_hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: mean relu(1 - D(x)) + mean relu(1 + D(x_hat)).

    Real patches are pushed above +1, reconstructed ones below -1; beyond the margin they cost
    nothing, so D stops pushing patches it already gets right."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def g_hinge_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's (decoder's) hinge loss: -mean D(x_hat), larger logits = more 'real'."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer, delta: float = 1e-4,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + delta), clamped to [0, max_weight].

    last_layer: the decoder's last layer (an nn.Module with a `weight`) or its weight tensor G_L.
    The gradients are taken with retain_graph (the losses are backpropagated again afterwards);
    the result is detached: lambda balances the two terms, it is not itself trained.
    So that lambda * L_G moves G_L as strongly as L_rec does, whatever their scales."""
    weight = last_layer.weight if isinstance(last_layer, nn.Module) else last_layer
    rec_grad, = torch.autograd.grad(rec_loss, weight, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, weight, retain_graph=True)
    lam = rec_grad.norm() / (g_grad.norm() + delta)  # VQGAN eq. 7
    return lam.clamp(0.0, max_weight).detach()


def adversarial_factor(step: int, start: int) -> float:
    """The warm-up switch: 0 before step `start` (no adversarial training yet), 1 from then on."""
    return 0.0 if step < start else 1.0
