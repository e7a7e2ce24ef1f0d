"""VQGAN (Esser et al. 2021, "Taming Transformers"): a VQ-VAE trained to look right, not only to score well.

A VQ-VAE at a strong compression (49 tokens from a codebook of 16 for a 784-pixel image) cannot
store every edge and texture. Trained on a per-pixel loss it hedges: where the tokens leave a detail
open, the best per-pixel answer is an average of the possibilities, and an average of sharp images
is a blurred one. VQGAN keeps the tokenizer and changes what it is trained on:

    L_G = L_rec + lambda * f(step) * L_adv + L_vq                 (the autoencoder: "generator")
    L_rec = L1(x, x_hat) + perceptual(x, x_hat)                    (VQGAN: L1 + LPIPS)
    L_adv = -mean D(x_hat)                                         (hinge, armini.nn.discriminator)
    L_D   = f(step) * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))   (the patch discriminator D)
    lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_adv|| + 1e-4)       (eq. 7, clamped to [0, 1e4])
    f(step) = 0 before `disc_start` steps, 1 after                (the warm-up)

How this meets the course's VQ-VAE (armini.tokenizers.vqvae), whose decoder outputs a K-way
categorical over every pixel value rather than an image:

    * x_hat is the decoder's *expected image*, x_hat = sum_k p(x = k | z) k / (K - 1), a float image
      in [0, 1] that is differentiable in the logits (a draw or an argmax would not be). It is also
      what `decode` returns (rounded), so the image the discriminator and the perceptual loss judged
      is the image a user sees.
    * The categorical's own loss, -log2 p(x | z) in bits/dim, stays in L_rec (weight `nll_weight`):
      it keeps `decode_logprobs` a calibrated distribution, so the pixel-space bits/dim bound of
      lesson 12 still holds for a VQGAN tokenizer. L1 and the perceptual loss act on x_hat. To fool D,
      x_hat must look like a real image; the mean of an unsure categorical is blurred, so the
      adversarial term pushes the decoder to be sure (peaked) where a real image is sharp.
    * The perceptual loss (armini.nn.perceptual) compares features of the course's Fashion-MNIST
      classifier (armini.metrics.load_classifier()), since LPIPS's VGG weights cannot be downloaded.

Training is one call of armini.train.fit with two groups of parameters, each with its own AdamW,
moved only by its own loss (train.group_steps), all from one forward pass:

    vqgan = VQGAN(latent_size=7, codebook_size=16, disc_start=300)
    hist = fit_vqgan(vqgan, train, steps=1000)
    # = train.fit(vqgan, train, steps=1000, loss_fn=vqgan_losses, param_groups=VQGAN.param_groups)
    tokens = vqgan.encode(images)        # the tokenizer protocol, as the VQVAE inside it

The warm-up counts training calls of the loss (a buffer `step`, saved in checkpoints, so a resumed
run continues the schedule); evaluation does not advance it.

Deviations from the paper: the perceptual loss is one layer of a small classifier, not LPIPS (see
armini.nn.perceptual); the NLL term above; a smaller discriminator (armini.nn.discriminator); the
codebook may be EMA or FSQ (any quantiser of the VQVAE); the adaptive weight is not computed before
the warm-up ends (its factor is 0 then) nor without gradients (evaluation reuses the last value).

Legend: B batch, C image channels, H, W image size, K pixel levels, h, w the discriminator's grid.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.discriminator import PatchDiscriminator, adaptive_weight, adversarial_factor, d_hinge_loss, g_hinge_loss
from ..nn.perceptual import perceptual_loss
from .vqvae import VQVAE

__all__ = ["VQGAN", "VQGANConfig", "vqgan_losses", "fit_vqgan", "expected_image"]

LN2 = math.log(2)


def expected_image(logits: torch.Tensor) -> torch.Tensor:
    """The mean of each pixel's categorical, scaled to [0, 1]: logits (B, C, K, H, W) -> (B, C, H, W).

    x_hat = sum_k softmax(logits)_k * k / (K - 1): differentiable, unlike a draw or an argmax."""
    K = logits.shape[2]
    values = torch.linspace(0, 1, K, device=logits.device, dtype=logits.dtype)  # k / (K - 1)
    return torch.einsum("bckhw,k->bchw", logits.softmax(2), values)  # (B, C, H, W)


def _classifier_size(x: torch.Tensor) -> torch.Tensor:
    """Float images (B, 1, H, W), H in {28, 14, 7} -> (B, 1, 28, 28) by repeating pixels, as
    armini.metrics.to_classifier_input does for integer images."""
    f = 28 // x.shape[-1]
    return x if f == 1 else x.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)


@dataclass
class VQGANConfig:
    tokenizer: dict = field(default_factory=dict)  # the VQVAE's settings (armini.tokenizers.vqvae.VQVAEConfig)
    disc_width: int = 32  # channels of the patch discriminator's first layer
    disc_start: int = 500  # warm-up: steps of plain reconstruction before the adversarial terms start
    nll_weight: float = 1.0  # -log2 p(x | z) in bits/dim, the categorical decoder's own loss
    l1_weight: float = 1.0  # |x - x_hat| on [0, 1] images
    perceptual_weight: float = 1.0  # perceptual distance (0: no classifier needed)
    adversarial_weight: float = 1.0  # taming's discriminator_weight: multiplies the adaptive lambda


class VQGAN(nn.Module):
    """A VQVAE (`autoencoder`) and a patch discriminator (`critic`), trained with `vqgan_losses`.

    VQGAN(image_shape=(1, 28, 28), levels=256, disc_start=500, ..., **VQVAE settings)
    (latent_size, quantizer, codebook_size, dim, ... as armini.tokenizers.vqvae.VQVAE).
    perceptual_net: a module with features(x) -> (B, F) on (B, 1, 28, 28) images in [0, 1]
    (default: armini.metrics.load_classifier(), loaded when first needed); it is not part of
    this model's weights and is never trained here."""

    num_classes = None  # unconditional: fit passes no labels

    def __init__(self, image_shape=(1, 28, 28), levels: int = 256, *, disc_width: int = 32, disc_start: int = 500,
                 nll_weight: float = 1.0, l1_weight: float = 1.0, perceptual_weight: float = 1.0,
                 adversarial_weight: float = 1.0, perceptual_net=None, tokenizer: dict | None = None, **vqvae):
        super().__init__()
        self.autoencoder = VQVAE(image_shape=image_shape, levels=levels, **{**(tokenizer or {}), **vqvae})
        self.critic = PatchDiscriminator(self.autoencoder.shape[0], disc_width)
        for name, value in (("disc_start", disc_start), ("nll_weight", nll_weight), ("l1_weight", l1_weight),
                            ("perceptual_weight", perceptual_weight), ("adversarial_weight", adversarial_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if perceptual_weight > 0 and self.autoencoder.shape[0] != 1:
            raise ValueError("the perceptual loss reads grayscale images (its classifier is Fashion-MNIST's); "
                             f"got {self.autoencoder.shape[0]} channels: pass perceptual_weight=0")
        self.config = VQGANConfig(asdict(self.autoencoder.config), int(disc_width), int(disc_start),
                                  float(nll_weight), float(l1_weight), float(perceptual_weight),
                                  float(adversarial_weight))
        self._perceptual = (perceptual_net,)  # in a tuple: not a submodule, so not in state_dict or parameters()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training steps so far (the warm-up clock)
        self.register_buffer("last_lambda", torch.zeros(()))  # the latest adversarial_weight * lambda (for logging)

    # ------------------------------------------------------------------ what fit and the protocol read
    shape = property(lambda self: self.autoencoder.shape)
    levels = property(lambda self: self.autoencoder.levels)
    codebook_size = property(lambda self: self.autoencoder.codebook_size)
    dims = property(lambda self: self.autoencoder.dims)
    unit = property(lambda self: self.autoencoder.unit)
    nll_is_bound = property(lambda self: self.autoencoder.nll_is_bound)
    model_device = property(lambda self: self.autoencoder.model_device)
    last_decoder_layer = property(lambda self: self.autoencoder.last_decoder_layer)

    def check_input(self, x, name: str = "x") -> torch.Tensor:
        return self.autoencoder.check_input(x, name)

    def token_shape(self, image_shape=None) -> tuple:
        return self.autoencoder.token_shape(image_shape)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(images)

    def decode(self, tokens: torch.Tensor, point: str = "mean") -> torch.Tensor:
        """Integer images of tokens: the rounded expected image (what the losses judged) by default."""
        return self.autoencoder.decode(tokens, point=point)

    def decode_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode_logprobs(tokens)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.embed(tokens)

    def reconstruct(self, x: torch.Tensor, point: str = "mean") -> torch.Tensor:
        return self.autoencoder.reconstruct(x, point=point)

    def nll_bits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """-log2 p(x | z(x)) per image (B,), what fit's evaluation reports per dimension."""
        return self.autoencoder.nll_bits(x)

    def num_params(self) -> int:
        """Parameters of the tokenizer (the discriminator is only needed for training)."""
        return self.autoencoder.num_params()

    def param_groups(self) -> dict:
        """fit's param_groups: the autoencoder (encoder, codebook, decoder) and the discriminator."""
        return {"generator": self.autoencoder, "discriminator": self.critic}

    @property
    def perceptual_net(self):
        """The frozen feature network of the perceptual loss, on the model's device (loaded on first use)."""
        net = self._perceptual[0]
        if net is None:
            from ..metrics import load_classifier

            net = load_classifier(device=self.model_device)  # eval mode, requires_grad False, cached
        return net.to(self.model_device)

    # ------------------------------------------------------------------ the losses
    def loss_terms(self, x: torch.Tensor) -> dict:
        """Every term on a batch of integer images x (B, C, H, W), as scalars: the two losses fit trains
        ("generator", "discriminator") and their parts (nll_bpd, l1, perceptual, g_adv, lambda (times
        adversarial_weight), factor, d_hinge, vq). A call in training mode advances the warm-up clock by one step."""
        cfg, ae = self.config, self.autoencoder
        x = self.check_input(x)
        logits, q = ae(x)  # (B, C, K, H, W), the quantiser's output (its loss: codebook + beta commitment)
        B, C, K, H, W = logits.shape
        nll = F.cross_entropy(logits.view(B * C, K, H, W), x.view(B * C, H, W)) / LN2  # bits per dimension
        real = x.float() / (K - 1)  # (B, C, H, W) in [0, 1]
        fake = expected_image(logits)  # (B, C, H, W) in [0, 1], differentiable
        l1 = (fake - real).abs().mean()
        perceptual = (perceptual_loss(_classifier_size(real), _classifier_size(fake), self.perceptual_net)
                      if cfg.perceptual_weight > 0 else torch.zeros((), device=x.device))
        rec = cfg.nll_weight * nll + cfg.l1_weight * l1 + cfg.perceptual_weight * perceptual  # L_rec

        factor = adversarial_factor(int(self.step), cfg.disc_start)  # 0 during the warm-up, then 1
        g_adv = g_hinge_loss(self.critic(fake * 2 - 1))  # -mean D(x_hat); D reads [-1, 1]
        if factor > 0 and torch.is_grad_enabled() and cfg.adversarial_weight > 0:
            lam = cfg.adversarial_weight * adaptive_weight(rec, g_adv, ae.last_decoder_layer)  # VQGAN eq. 7
            self.last_lambda.fill_(lam)
        else:
            lam = self.last_lambda if factor > 0 else torch.zeros((), device=x.device)
        generator = rec + factor * lam * g_adv + q.loss  # L_G

        d_loss = d_hinge_loss(self.critic(real * 2 - 1), self.critic(fake.detach() * 2 - 1))
        discriminator = factor * d_loss  # the discriminator also waits for the warm-up
        if self.training and torch.is_grad_enabled():
            self.step += 1
        return {"generator": generator, "discriminator": discriminator, "nll_bpd": nll, "l1": l1,
                "perceptual": perceptual, "g_adv": g_adv, "lambda": lam, "factor": torch.tensor(factor),
                "d_hinge": d_loss, "vq": q.loss}

    def extra_repr(self) -> str:
        c = self.config
        return f"disc_start={c.disc_start}, l1_weight={c.l1_weight}, perceptual_weight={c.perceptual_weight}"


def vqgan_losses(model: VQGAN, x: torch.Tensor, y=None) -> dict:
    """fit's loss_fn for a VQGAN: {"generator": L_G, "discriminator": L_D} on a batch."""
    terms = model.loss_terms(x)
    return {"generator": terms["generator"], "discriminator": terms["discriminator"]}


def fit_vqgan(model: VQGAN, train, test=None, **fit_kwargs):
    """armini.train.fit with VQGAN's two losses and two optimizers; fit_kwargs as fit's (steps=, lr=, ...)."""
    from .. import train as _train

    return _train.fit(model, train, test, loss_fn=vqgan_losses, param_groups=VQGAN.param_groups, **fit_kwargs)
