"""A colour palette by k-means: ImageGPT's trick to make colour images one token per pixel.

ImageGPT (Chen et al., 2020) clusters RGB pixel values, scaled to [-1, 1], into P = 512 centres
with k-means and replaces every pixel by the index of its nearest centre. A colour image
(3, H, W) with K levels per channel becomes a code image (1, H, W) with P levels, so a sequence
model sees H*W tokens instead of 3*H*W, at the price of a small colour error.

k-means (Lloyd's algorithm), on a random sample of pixels u_n in [-1, 1]^3:

    assign:  z_n = argmin_p ||u_n - mu_p||^2
    update:  mu_p = mean of the u_n with z_n = p     (an empty cluster restarts at a random pixel)

How a lesson uses it (colour Fashion-MNIST):

    rgb = armini.data.load("fashion-mnist", "train", color=True)       # (N, 3, 28, 28), 256 levels
    palette = Palette.fit(rgb.images, n_colors=16, levels=rgb.levels)   # seeded: same palette every run
    codes = palette.encode(rgb.images)                                   # (N, 1, 28, 28) in [0, 16)
    model = PixelTransformer(shape=(1, 28, 28), levels=palette.n_colors) # train on codes
    images = palette.decode(model.sample(8))                             # (8, 3, 28, 28) in [0, 256)

A Palette is the course's first tokenizer (armini.tokenizers): one token per pixel, and
`codebook_size` = n_colors tokens.

Deviations from ImageGPT: a few Lloyd iterations on a pixel sample, initialised by k-means++
seeding, and small palettes (ImageGPT: 512 colours).

Legend: N images or pixels, P palette colours, H, W height and width, K levels per channel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .inputs import to_unit_range


def nearest(u: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre, argmin_p ||u_n - mu_p||, of every point: (N,) for u (N, 3), mu (P, 3)."""
    return torch.cdist(u, mu, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)  # exact distances


def _kmeans_pp_init(u: torch.Tensor, P: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre is a pixel drawn with probability ~ squared distance
    to the nearest centre so far: (P, 3)."""
    centres = [u[torch.randint(len(u), (1,), generator=g)]]  # (1, 3)
    d2 = (u - centres[0]).square().sum(1)  # (N,) distance to the nearest centre
    for _ in range(P - 1):
        if d2.sum() <= 0:  # fewer distinct colours than P: repeat one (it stays an empty cluster)
            nxt = centres[0]
        else:
            cdf = d2.cumsum(0)  # inverse-CDF draw of one pixel index with probability d2 / sum(d2)
            n = torch.searchsorted(cdf, torch.rand(1, generator=g, dtype=cdf.dtype) * cdf[-1]).clamp(max=len(u) - 1)
            nxt = u[n]  # (1, 3)
        centres.append(nxt)
        d2 = torch.minimum(d2, (u - nxt).square().sum(1))
    return torch.cat(centres)  # (P, 3)


def kmeans(u: torch.Tensor, P: int, iters: int = 10, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """P centres (P, 3) of the points u (N, 3) by k-means++ seeding and `iters` Lloyd iterations."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    mu = _kmeans_pp_init(u, P, g)  # (P, 3)
    for _ in range(iters):
        z = nearest(u, mu)  # (N,) assign
        counts = torch.bincount(z, minlength=P).float()  # (P,)
        sums = torch.zeros_like(mu).index_add_(0, z, u)  # (P, 3)
        restart = u[torch.randint(len(u), (P,), generator=g)]  # (P, 3) random pixels for empty clusters
        mu = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], restart)  # update: means
    return mu


class Palette(nn.Module):
    """P colour centres in [-1, 1]^3; encode (B, 3, H, W) -> codes (B, 1, H, W), decode back."""

    def __init__(self, centres: torch.Tensor, levels: int = 256):
        super().__init__()
        if centres.dim() != 2 or centres.shape[1] != 3:
            raise ValueError(f"centres must be (P, 3) RGB colours in [-1, 1], got shape {tuple(centres.shape)}")
        self.levels = int(levels)
        self.register_buffer("centres", centres.float())  # (P, 3)

    @property
    def n_colors(self) -> int:
        return self.centres.shape[0]

    @property
    def codebook_size(self) -> int:
        """V, the number of tokens (armini.tokenizers): one per colour."""
        return self.n_colors

    def token_shape(self, image_shape) -> tuple:
        """One code per pixel: (3, H, W) images -> (1, H, W) tokens."""
        C, H, W = image_shape
        if C != 3:
            raise ValueError(f"a palette encodes RGB images (3, H, W), got shape {tuple(image_shape)}")
        return (1, H, W)

    @classmethod
    def fit(cls, images: torch.Tensor, n_colors: int = 16, levels: int = 256, iters: int = 10,
            max_pixels: int = 100_000, seed: int = 0) -> "Palette":
        """k-means on (at most max_pixels randomly chosen) pixels of integer RGB images (N, 3, H, W)."""
        if n_colors < 2:
            raise ValueError(f"n_colors must be at least 2, got {n_colors}")
        g = torch.Generator().manual_seed(seed)
        u = cls._scale(cls._check(images, levels), levels).permute(0, 2, 3, 1).reshape(-1, 3)  # (N*H*W, 3)
        if len(u) > max_pixels:
            u = u[torch.randperm(len(u), generator=g)[:max_pixels]]
        return cls(kmeans(u, n_colors, iters, g), levels)

    @staticmethod
    def _check(images: torch.Tensor, levels: int) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.dtype.is_floating_point:
            raise ValueError(f"expected integer RGB images (N, 3, H, W), got {tuple(images.shape)} {images.dtype}")
        if images.numel() and (int(images.min()) < 0 or int(images.max()) >= levels):
            raise ValueError(f"image values must lie in [0, {levels})")
        return images

    @staticmethod
    def _scale(images: torch.Tensor, levels: int) -> torch.Tensor:
        return to_unit_range(images.float(), levels)  # {0..K-1} -> [-1, 1]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Nearest centre of every pixel: integer RGB (B, 3, H, W) -> codes (B, 1, H, W) in [0, P)."""
        B, _, H, W = self._check(images, self.levels).shape
        u = self._scale(images.to(self.centres.device), self.levels).permute(0, 2, 3, 1).reshape(-1, 3)  # (B*H*W, 3)
        # z = argmin_p ||u - mu_p||, a million pixels at a time to bound the (pixels, P) distance matrix
        z = torch.cat([nearest(part, self.centres) for part in u.split(1 << 20)])  # (B*H*W,)
        return z.view(B, 1, H, W)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, 1, H, W) -> integer RGB (B, 3, H, W): each centre rounded to the nearest level."""
        if codes.dim() != 4 or codes.shape[1] != 1:
            raise ValueError(f"codes must be (B, 1, H, W), got {tuple(codes.shape)}")
        rgb = self.centres[codes[:, 0].long()]  # (B, H, W, 3) in [-1, 1]
        rgb = ((rgb + 1) * (self.levels - 1) / 2).round().clamp(0, self.levels - 1).long()
        return rgb.permute(0, 3, 1, 2)  # (B, 3, H, W)

    def extra_repr(self) -> str:
        return f"n_colors={self.n_colors}, levels={self.levels}"
