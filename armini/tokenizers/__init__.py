"""The tokenizer protocol: what every image tokenizer of the course provides.

Parts III-V stop modelling pixels and model tokens: a tokenizer turns an image into a small
grid of integers (codebook indices), an AR prior (any model in armini.models.MODELS, with
`levels` = the codebook size and input="embedding") models those, and the tokenizer turns
sampled tokens back into pixels. Two-stage generation, as in VQ-VAE + PixelCNN, VQGAN + GPT:

    tokens = tok.encode(images)                      # (B, *tok.token_shape(image_shape)) in [0, V)
    prior = MODELS["pixelcnn"](shape=tokens.shape[1:], levels=tok.codebook_size, input="embedding")
    ... train prior on tokens ...
    images = tok.decode(prior.sample(16))            # (16, *image_shape) integer pixels

A tokenizer is any object with these members (structural typing: no base class to inherit):

    codebook_size: int                  V, the number of distinct tokens
    levels: int                         K, pixel levels of the images it reads and writes
    token_shape(image_shape) -> tuple   the token grid of one image, e.g. (1, 7, 7) for (1, 28, 28)
    encode(images) -> tokens            integer images (B, C, H, W) -> LongTensor (B, *token_shape)
    decode(tokens) -> images            tokens -> integer images (B, C, H, W)

and, optionally,

    decode_logprobs(tokens) -> (B, C, H, W, K)   log p(pixel value | tokens) in nats: a distribution
                                                 over pixel values, for a likelihood bound in pixel
                                                 space, -log2 p(x) <= -log2 p(x | z) - log2 p(z) (bits
                                                 of the image under the decoder plus bits of the
                                                 tokens under the prior; the encoder is deterministic)
    embed(tokens) -> (B, e, h, w)                the quantised latent the decoder reads (the vectors
                                                 a prior may read instead of indices)

Token grids are (D, h, w): D = 1 for one token per position (VQ, FSQ), D = depth for residual VQ
(a stack of tokens per position). The same protocol fits the tokenizers of later parts: the
multi-scale residual quantiser (VAR, lesson 15: VQVAE(quantizer="msvq")) returns one flat sequence
of all its scales' tokens, token_shape (L,) with L = sum_k s_k^2 (70 for scales 1, 2, 4, 7),
a video tokenizer (VQVAE3D) a (T', h, w) grid. `check_tokenizer` runs the protocol once and says what is
missing or wrong.

The tokenizers of the course: lesson 07's colour palette (armini.nn.palette.Palette, one token
per pixel, V colours) and lesson 11's VQ-VAE (armini.tokenizers.vqvae.VQVAE: VQ, EMA VQ, FSQ,
residual VQ, and lesson 15's multi-scale VQ; 7 x 7 or 14 x 14 tokens of a 28 x 28 image).

Legend: B batch, C channels, H, W height and width, K pixel levels, V codebook size, D tokens per
position, e latent channels.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Tokenizer", "check_tokenizer", "rate_bits", "reconstruction_quality", "psnr_by_depth", "VQVAE", "UsageLog", "VQVAE3D"]


@runtime_checkable
class Tokenizer(Protocol):
    codebook_size: int
    levels: int

    def token_shape(self, image_shape) -> tuple: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...


def check_tokenizer(tok, images: torch.Tensor) -> torch.Tensor:
    """Run encode and decode once on integer images (B, C, H, W) and check shapes, dtypes and ranges.

    Returns the tokens. Raises a ValueError (TypeError for a missing member) naming what is wrong."""
    missing = [m for m in ("codebook_size", "levels", "token_shape", "encode", "decode") if not hasattr(tok, m)]
    if missing:
        raise TypeError(f"{type(tok).__name__} is not a tokenizer: it lacks {', '.join(missing)} "
                        "(see armini.tokenizers)")
    B, shape = images.shape[0], tuple(images.shape[1:])
    expected = tuple(tok.token_shape(shape))
    tokens = tok.encode(images)
    if tokens.dtype.is_floating_point or tuple(tokens.shape) != (B,) + expected:
        raise ValueError(f"{type(tok).__name__}.encode must return integer tokens of shape {(B,) + expected} "
                         f"(token_shape says {expected}), got {tuple(tokens.shape)} {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= tok.codebook_size):
        raise ValueError(f"tokens must lie in [0, codebook_size={tok.codebook_size}), found "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    decoded = tok.decode(tokens)
    if decoded.dtype.is_floating_point or tuple(decoded.shape) != tuple(images.shape):
        raise ValueError(f"{type(tok).__name__}.decode must return integer images of shape "
                         f"{tuple(images.shape)}, got {tuple(decoded.shape)} {decoded.dtype}")
    if decoded.numel() and (int(decoded.min()) < 0 or int(decoded.max()) >= tok.levels):
        raise ValueError(f"decoded pixels must lie in [0, levels={tok.levels})")
    return tokens


def rate_bits(tok, image_shape) -> float:
    """Bits per image of the tokens with a uniform prior: tokens x log2 V (the rate of a fixed-length code)."""
    return math.prod(tok.token_shape(tuple(image_shape))) * math.log2(tok.codebook_size)


@torch.no_grad()
def reconstruction_quality(tok, images: torch.Tensor, batch_size: int = 500, classifier=None) -> dict:
    """How well a tokenizer reconstructs a set of integer images (N, C, H, W), as a dict:

    psnr, ssim:        of decode(encode(x)) against x, scaled to [0, 1] (torchmetrics; PSNR averaged
                       over images, SSIM with its default 11 x 11 Gaussian window)
    rfid, rkid, precision, recall: armini.metrics.sample_quality of the reconstructions against x
                       (grayscale images only; compare with the real-vs-real floor at the same N)
    used, perplexity:  codebook_usage of the tokens of the whole set
    rate_bits:         tokens x log2 V, bits per image with a uniform prior
    recon_bpd:         -log2 p(x | z(x)) per dimension (tokenizers with decode_logprobs; else None)
    bound_bpd:         (recon bits + rate bits) / dimensions: an upper bound on -log2 p(x) per dimension
                       with a uniform prior over tokens (a learned prior lowers the rate part)
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from ..nn.quantize import codebook_usage

    images = images.cpu()
    dev = next(tok.parameters()).device if hasattr(tok, "parameters") else torch.device("cpu")
    tokens, recon, bits = [], [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(dev)
        z = tok.encode(x)
        tokens.append(z.cpu())
        if hasattr(tok, "decode_logprobs"):
            logp = tok.decode_logprobs(z)  # (B, C, H, W, K)
            bits.append(-logp.gather(-1, x.long().unsqueeze(-1)).flatten(1).sum(1).cpu() / math.log(2))
        recon.append(tok.decode(z).cpu())
    tokens, recon = torch.cat(tokens), torch.cat(recon)
    K = tok.levels
    x01, r01 = images.float() / (K - 1), recon.float() / (K - 1)
    psnr = peak_signal_noise_ratio(r01, x01, data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(r01, x01, data_range=1.0)
    used, ppl = codebook_usage(tokens, tok.codebook_size)
    dims = math.prod(images.shape[1:])
    rate = rate_bits(tok, images.shape[1:])
    out = dict(psnr=float(psnr), ssim=float(ssim), used=used, perplexity=ppl, rate_bits=rate,
               recon_bpd=float(torch.cat(bits).mean()) / dims if bits else None)
    out["bound_bpd"] = None if out["recon_bpd"] is None else out["recon_bpd"] + rate / dims
    if images.shape[1] == 1:
        from ..metrics import sample_quality

        q = sample_quality(images, recon, K, classifier=classifier)
        out.update(rfid=q["fid"], rkid=q["kid"], precision=q["precision"], recall=q["recall"])
    return out



@torch.no_grad()
def psnr_by_depth(tok, images: torch.Tensor, batch_size: int = 500) -> list:
    """PSNR (dB, the mean over images, pixels scaled to [0, 1]) of a depth-D tokenizer's reconstructions from
    only its first t token stacks, t = 1..D (residual VQ: each stack quantises what the earlier ones left):
    a list of D numbers, the rate-distortion curve of lesson 11. images: (N, C, H, W) integers."""
    dev = next(tok.parameters()).device
    tokens = torch.cat([tok.encode(part.to(dev)) for part in images.split(batch_size)])  # (N, D, h, w)
    curve = []
    for t in range(1, tokens.shape[1] + 1):
        recon = torch.cat([tok.decode(part[:, :t]) for part in tokens.split(batch_size)]).cpu()  # (N, C, H, W)
        mse = ((recon.float() - images.float()) / (tok.levels - 1)).square().flatten(1).mean(1)  # per image
        curve.append(float((10 * torch.log10(1 / mse)).mean()))
    return curve

from .vqvae import VQVAE, UsageLog  # noqa: E402  (after the protocol they implement)
from .video import VQVAE3D  # noqa: E402  (lesson 18: the protocol one dimension up, token grid (T', h, w))
