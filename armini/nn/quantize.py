"""Quantisers: turn continuous latent vectors into codebook indices (tokens) and back.

A tokenizer's encoder maps an image to a grid of vectors z_e (B, d, h, w); a quantiser replaces
every vector by one of V codes and remembers which: the index is the token a prior models.

VQ (van den Oord et al. 2017, "Neural Discrete Representation Learning"): a codebook of V
learned vectors e_1..e_V, and the nearest one,

    k = argmin_j ||z_e - e_j||^2,        z_q = e_k                                  (eq. 1-2)

argmin has no gradient, so the decoder's gradient is copied to the encoder unchanged, the
*straight-through estimator*: z_q = z_e + sg[e_k - z_e] (sg = stop-gradient, .detach()): the
forward value is e_k, the backward is the identity. The codebook and the encoder then meet halfway:

    L_vq = ||sg[z_e] - e||^2  +  beta ||z_e - sg[e]||^2                            (eq. 3)
           codebook term          commitment term, beta = 0.25, on the ENCODER

The codebook term moves codes toward the encoder outputs; the commitment term keeps the encoder
near its code. (A widely copied codebase puts beta on the codebook term instead: wrong way round.)

EMA codebook (paper's appendix; Razavi et al. 2019): no codebook loss; after every training
batch each code becomes the running mean of the vectors assigned to it,

    N_i <- g N_i + (1 - g) n_i,    m_i <- g m_i + (1 - g) sum_{z assigned to i} z,    e_i = m_i / N_i

with g = 0.99 and Laplace smoothing of the counts, N_i <- (N_i + eps) / (N + V eps) * N, so no
N_i is zero. With g = 0 that is exactly k-means' update step (the mean of each cluster).
Dead codes (running count below a threshold, about 1) are restarted at random current encoder
outputs, with their running sum and count reset too (else e_i = m_i / N_i would put them back).

FSQ (Mentzer et al. 2023, "Finite Scalar Quantization"): no codebook at all. Each of a few
channels is bounded with tanh and rounded to L_c levels; the implicit codebook is the grid of
prod_c L_c points, e.g. levels (8, 5, 5, 5) = 1000 codes; straight-through on the rounding. No
codebook loss, and nothing can collapse.

Residual VQ (Lee et al. 2022, RQ-VAE): quantise z_e, then quantise what is left (the residual),
D times, with one shared codebook; the code is the sum of the D codes, the token a (D,) stack.

Multi-scale residual VQ (Tian et al. 2024, VAR): residual quantisation over *scales* instead of
depths. The residual is area-downsampled to s_k x s_k (1 x 1 first, the latent size last), quantised
with one shared codebook, the codes bicubic-upsampled back and refined by phi (0.5 h + 0.5 conv3x3 h);
the tokens of all scales form one coarse-to-fine sequence of L = sum_k s_k^2 tokens, the sequence a
next-scale prior models (MultiScaleQuantizer).

Deviations from the papers, stated: the VQ losses are mean squared errors (means over elements,
not sums); residual VQ averages its D codebook and commitment terms over depths (RQ-VAE sums the
commitment terms and learns the codebook by EMA; here the EMA option is available too); the multi-scale
quantiser can also learn its codebook by EMA (VAR learns it by the gradient of its f_hat term), fed with
the downsampled residuals of every scale, and starts it from the first batch's latent vectors.

Legend: B batch, d latent channels (code size), h, w latent grid, N vectors, V codebook size,
D residual depth, K scales, s_k a scale's side, L = sum_k s_k^2 tokens of a multi-scale sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Quantized", "nearest_code", "straight_through", "quantize", "vq_loss", "ema_update",
           "laplace_smoothed", "fsq_bound", "round_ste", "fsq_quantize", "VectorQuantizer", "FSQ",
           "ResidualVQ", "codebook_usage", "scale_slices", "check_scales", "default_scales", "area_down",
           "bicubic_up", "upsampled_code", "multiscale_quantize", "Phi", "phi_index", "MultiScaleQuantizer"]


@dataclass
class Quantized:
    """What a quantiser returns.

    z_q:             (B, d, h, w) the quantised latent, straight-through (its gradient goes to z_e)
    indices:         (B, h, w) long token grid ((B, D, h, w) for residual VQ, (B, L) for multi-scale VQ)
    codebook_loss:   ||sg[z_e] - e||^2 (mean), 0 with an EMA codebook or FSQ
    commitment_loss: ||z_e - sg[e]||^2 (mean), WITHOUT beta
    loss:            codebook_loss + beta * commitment_loss, what the tokenizer adds to its loss
    """

    z_q: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    loss: torch.Tensor


# ----------------------------------------------------------------------------- VQ, as functions


def _flat(z: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) -> (B*h*w, d): one row per latent vector."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """k = argmin_j ||z_n - e_j||^2 for every row: z (N, d), codebook (V, d) -> (N,) long.

    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 (the matrix form; ||z||^2 does not change the argmin)."""
    with torch.no_grad():  # argmin has no gradient anyway: no graph to keep
        d2 = codebook.square().sum(1)[None, :] - 2 * z @ codebook.t()  # (N, V) up to ||z||^2
        return d2.argmin(1)


def straight_through(z_e: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """z_e + sg[e - z_e]: forward value e, gradient passed to z_e unchanged (none reaches e)."""
    return z_e + (e - z_e).detach()


def quantize(z_e: torch.Tensor, codebook: torch.Tensor):
    """Nearest-code quantisation with the straight-through estimator.

    z_e (B, d, h, w), codebook (V, d) -> (z_q (B, d, h, w), indices (B, h, w))."""
    B, d, h, w = z_e.shape
    k = nearest_code(_flat(z_e), codebook)  # (B*h*w,)
    e = codebook[k].view(B, h, w, d).permute(0, 3, 1, 2)  # (B, d, h, w) the chosen codes
    return straight_through(z_e, e), k.view(B, h, w)


def vq_loss(z_e: torch.Tensor, e: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """The VQ loss (eq. 3): ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2, each a mean over elements.

    z_e: encoder outputs, e: the codes chosen for them (same shape). The first term's gradient
    reaches only the codebook, the second (beta, commitment) only the encoder."""
    return F.mse_loss(e, z_e.detach()) + beta * F.mse_loss(z_e, e.detach())


def laplace_smoothed(N: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(N_i + eps) / (n + V eps) * n with n = sum_i N_i: the counts, none zero, same total."""
    n = N.sum()
    return (N + eps) / (n + N.numel() * eps) * n


def ema_update(N: torch.Tensor, m: torch.Tensor, z: torch.Tensor, indices: torch.Tensor,
               decay: float = 0.99, eps: float = 1e-5):
    """One EMA codebook step: returns (N, m, codebook) updated (new tensors).

    N (V,) running counts, m (V, d) running sums, z (N, d) the batch's encoder outputs, indices (N,)
    their codes.  N_i <- g N_i + (1-g) n_i,  m_i <- g m_i + (1-g) sum_{k_n = i} z_n,
    e_i = m_i / N_i with Laplace-smoothed counts. With decay 0 and every code used: k-means' means."""
    V = N.shape[0]
    n = torch.bincount(indices, minlength=V).to(N.dtype)  # (V,) how many vectors chose each code
    sums = torch.zeros_like(m).index_add_(0, indices, z.to(m.dtype))  # (V, d) their sum
    N = decay * N + (1 - decay) * n
    m = decay * m + (1 - decay) * sums
    return N, m, m / laplace_smoothed(N, eps)[:, None]


# ----------------------------------------------------------------------------- FSQ, as functions


def fsq_bound(z: torch.Tensor, levels, eps: float = 1e-3) -> torch.Tensor:
    """Bound channel c of z (B, C, ...) to L_c levels' range: tanh(z + shift) * half - offset.

    half = (L - 1)(1 + eps) / 2, offset = 0.5 for even L (so the range is not symmetric: -4..3 for
    L = 8), shift = atanh(offset / half) so that z = 0 maps to 0 (the paper's appendix writes tan)."""
    L = torch.tensor(levels, dtype=z.dtype, device=z.device).view(1, -1, *[1] * (z.dim() - 2))  # (1, C, 1, ..)
    half = (L - 1) * (1 + eps) / 2
    offset = torch.where(L % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half)
    return torch.tanh(z + shift) * half - offset


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """round(z) forward, identity backward (straight-through)."""
    return z + (z.round() - z).detach()


def fsq_quantize(z: torch.Tensor, levels, eps: float = 1e-3) -> torch.Tensor:
    """FSQ's bound-and-round: z (B, C, ...) -> codes in [-1, 1], round(bound(z)) / (L // 2) per channel."""
    L = torch.tensor(levels, device=z.device).view(1, -1, *[1] * (z.dim() - 2))
    return round_ste(fsq_bound(z, levels, eps)) / (L // 2)


# ----------------------------------------------------------------------------- modules


def _zero(z: torch.Tensor) -> torch.Tensor:
    return z.new_zeros(())


class VectorQuantizer(nn.Module):
    """A codebook of V vectors of size d: forward(z_e (B, d, h, w)) -> Quantized.

    ema=False: the codebook is a parameter learned by the codebook term of the loss.
    ema=True:  the codebook follows running means (buffers N, m) after every training forward;
               no codebook loss, the commitment term is kept.
    restart_dead (EMA only): codes whose running count N_i < dead_threshold restart at random
               encoder outputs of the current batch (their N_i and m_i reset with them).
    data_init: the codebook starts as random encoder outputs of the first training batch (else
               uniform in [-1/V, 1/V], the original code's choice, which leaves most codes far from
               every encoder output: the classic way a codebook collapses).
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, ema: bool = False, decay: float = 0.99,
                 eps: float = 1e-5, restart_dead: bool = False, dead_threshold: float = 1.0, data_init: bool = False):
        super().__init__()
        if int(codebook_size) < 2 or int(dim) < 1:
            raise ValueError(f"a codebook needs at least 2 codes of size >= 1, got codebook_size={codebook_size}, "
                             f"dim={dim}")
        if restart_dead and not ema:
            raise ValueError("restart_dead needs ema=True: dead codes are found from the running counts of the EMA "
                             "codebook")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.codebook_size, self.dim, self.beta = int(codebook_size), int(dim), float(beta)
        self.ema, self.decay, self.eps = bool(ema), float(decay), float(eps)
        self.restart_dead, self.dead_threshold, self.data_init = bool(restart_dead), float(dead_threshold), data_init
        V, d = self.codebook_size, self.dim
        init = torch.empty(V, d).uniform_(-1 / V, 1 / V)
        if self.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("N", torch.ones(V))  # running counts (1: e_i = m_i / N_i starts at the codebook)
            self.register_buffer("m", init.clone())  # running sums
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("initialised", torch.tensor(not data_init))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # codes restarted so far

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Token grid (B, h, w) of the nearest codes of z_e (B, d, h, w)."""
        B, _, h, w = z_e.shape
        return nearest_code(_flat(z_e), self.codebook).view(B, h, w)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of a token grid: (B, h, w) -> (B, d, h, w)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    @torch.no_grad()
    def init_from(self, z: torch.Tensor):
        """Codebook <- random rows of z (N, d) (with repetition when N < V); running sums to match."""
        pick = torch.randint(len(z), (self.codebook_size,), device=z.device)
        self.codebook.copy_(z[pick])
        if self.ema:
            self.N.fill_(1.0)
            self.m.copy_(self.codebook)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, z: torch.Tensor, indices: torch.Tensor):
        """After a training batch (EMA only): the running means, then dead-code restarts. z (N, d), indices (N,)."""
        N, m, codebook = ema_update(self.N, self.m, z, indices, self.decay, self.eps)
        self.N.copy_(N)
        self.m.copy_(m)
        self.codebook.copy_(codebook)
        if self.restart_dead:
            self.restart(z)

    @torch.no_grad()
    def restart(self, z: torch.Tensor) -> torch.Tensor:
        """Codes with N_i < dead_threshold jump to random rows of z (N, d); N_i = 1, m_i = e_i. Returns them."""
        dead = (self.N < self.dead_threshold).nonzero().flatten()  # (n_dead,)
        if len(dead):
            fresh = z[torch.randint(len(z), (len(dead),), device=z.device)]  # (n_dead, d)
            self.codebook[dead] = fresh
            self.N[dead] = 1.0  # reset the running count and sum, so e_i = m_i / N_i is the new code
            self.m[dead] = fresh
            self.restarts += len(dead)
        return dead

    def forward(self, z_e: torch.Tensor) -> Quantized:
        B, d, h, w = z_e.shape
        if d != self.dim:
            raise ValueError(f"expected latents with {self.dim} channels (B, {self.dim}, h, w), got {tuple(z_e.shape)}")
        z = _flat(z_e)  # (N, d)
        if self.training and not bool(self.initialised):
            self.init_from(z.detach())
        k = nearest_code(z, self.codebook)  # (N,)
        e = self.codebook[k].view(B, h, w, d).permute(0, 3, 1, 2)  # (B, d, h, w)
        commitment = F.mse_loss(z_e, e.detach())  # reaches the encoder only
        codebook = _zero(z_e) if self.ema else F.mse_loss(e, z_e.detach())  # reaches the codebook only
        if self.training and self.ema:
            self.update(z.detach(), k)  # after the loss: this batch was scored with the codes it chose
        return Quantized(straight_through(z_e, e), k.view(B, h, w), codebook, commitment,
                         codebook + self.beta * commitment)

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, ema={self.ema}, "
                f"restart_dead={self.restart_dead}, data_init={self.data_init}")


class FSQ(nn.Module):
    """Finite scalar quantisation: forward(z (B, C, h, w)) -> Quantized with C = len(levels), zero losses.

    The token of a position is its grid point's index: sum_c digit_c * basis_c with digit_c in
    [0, L_c) and basis = cumulative product of [1] + levels[:-1]."""

    def __init__(self, levels=(8, 5, 5, 5), eps: float = 1e-3):
        super().__init__()
        levels = tuple(int(L) for L in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be whole numbers >= 2 (3 or more is better), got {levels}")
        self.levels, self.eps, self.dim = levels, float(eps), len(levels)
        self.codebook_size = math.prod(levels)
        self.register_buffer("_L", torch.tensor(levels), persistent=False)
        self.register_buffer("basis", torch.tensor([math.prod(levels[:c]) for c in range(len(levels))]),
                             persistent=False)

    def _view(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, *[1] * (like.dim() - 2))  # (1, C, 1, 1) to broadcast over (B, C, h, w)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, C, h, w) on the grid (values digit / (L // 2) - 1..) -> indices (B, h, w)."""
        half = self._view(self._L // 2, codes)
        digits = (codes * half).round().long() + half  # (B, C, h, w) in [0, L_c)
        return (digits * self._view(self.basis, codes)).sum(1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) -> codes (B, C, h, w) in [-1, 1]."""
        like = indices.unsqueeze(1)  # (B, 1, h, w)
        digits = (like // self._view(self.basis, like)) % self._view(self._L, like)  # (B, C, h, w)
        half = self._view(self._L // 2, like)
        return (digits - half).float() / half

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of a token grid: (B, h, w) -> (B, C, h, w)."""
        return self.indices_to_codes(indices)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Token grid (B, h, w) of z (B, C, h, w)."""
        return self.codes_to_indices(fsq_quantize(z, self.levels, self.eps))

    def forward(self, z: torch.Tensor) -> Quantized:
        if z.shape[1] != self.dim:
            raise ValueError(f"FSQ with levels {self.levels} expects {self.dim} channels, got {tuple(z.shape)}")
        codes = fsq_quantize(z, self.levels, self.eps)  # (B, C, h, w), straight-through
        zero = _zero(z)
        return Quantized(codes, self.codes_to_indices(codes.detach()), zero, zero, zero)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, codebook_size={self.codebook_size}"


class ResidualVQ(nn.Module):
    """Depth-D residual quantisation: forward(z_e (B, d, h, w)) -> Quantized with indices (B, D, h, w).

        r_0 = z_e;   k_t = nearest(r_{t-1}),  zhat_t = zhat_{t-1} + e_{k_t},  r_t = z_e - zhat_t

    shared=True: one codebook for every depth (RQ-VAE); False: one per depth. Loss per depth t,
    averaged over depths: codebook term ||sg[r_{t-1}] - e_{k_t}||^2 (0 with EMA) + beta times the
    commitment on the cumulative code, ||z_e - sg[zhat_t]||^2. Straight-through on the final sum.
    Other keyword arguments go to each VectorQuantizer; with EMA, one update per training batch
    with the vectors of every depth (a shared codebook serves all of them)."""

    def __init__(self, depth: int, codebook_size: int, dim: int, shared: bool = True, **vq_kwargs):
        super().__init__()
        if int(depth) < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth, self.shared = int(depth), bool(shared)
        self.codebook_size, self.dim = int(codebook_size), int(dim)
        n = 1 if self.shared else self.depth
        self.quantizers = nn.ModuleList(VectorQuantizer(codebook_size, dim, **vq_kwargs) for _ in range(n))
        self.beta = self.quantizers[0].beta

    def vq(self, t: int) -> VectorQuantizer:
        """The quantiser of depth t."""
        return self.quantizers[0 if self.shared else t]

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """The sum of the codes of the first D' <= D depths: (B, D', h, w) -> (B, d, h, w)."""
        return sum(self.vq(t).embed(indices[:, t]) for t in range(indices.shape[1]))

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Token stacks (B, D, h, w) of z_e (B, d, h, w)."""
        r, out = z_e, []
        for t in range(self.depth):
            k = self.vq(t).nearest(r)  # (B, h, w)
            out.append(k)
            r = r - self.vq(t).embed(k)
        return torch.stack(out, 1)

    def forward(self, z_e: torch.Tensor) -> Quantized:
        B, d, h, w = z_e.shape
        r, zhat = z_e, torch.zeros_like(z_e)
        indices, codebook_terms, commitment_terms, seen = [], [], [], [[] for _ in self.quantizers]
        for t in range(self.depth):
            vq = self.vq(t)
            if self.training and not bool(vq.initialised):
                vq.init_from(_flat(r).detach())  # each depth's codebook from its first residuals
            k = nearest_code(_flat(r), vq.codebook)  # (N,)
            e = vq.codebook[k].view(B, h, w, d).permute(0, 3, 1, 2)  # (B, d, h, w)
            if not vq.ema:
                codebook_terms.append(F.mse_loss(e, r.detach()))
            seen[0 if self.shared else t].append((_flat(r).detach(), k))
            zhat = zhat + e
            commitment_terms.append(F.mse_loss(z_e, zhat.detach()))  # on the cumulative code
            indices.append(k.view(B, h, w))
            r = z_e - zhat
        if self.training:
            for vq, pairs in zip(self.quantizers, seen):
                if vq.ema and pairs:
                    vq.update(torch.cat([z for z, _ in pairs]), torch.cat([k for _, k in pairs]))
        codebook = torch.stack(codebook_terms).mean() if codebook_terms else _zero(z_e)
        commitment = torch.stack(commitment_terms).mean()
        return Quantized(straight_through(z_e, zhat), torch.stack(indices, 1), codebook, commitment,
                         codebook + self.beta * commitment)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, codebook_size={self.codebook_size}, dim={self.dim}, shared={self.shared}"


@torch.no_grad()
def codebook_usage(indices: torch.Tensor, codebook_size: int):
    """(fraction of codes used, perplexity) of a whole set of tokens (any shape, every depth pooled).

    perplexity = exp(H), H the entropy of the codes' frequencies: V if all are equally used, 1 if one
    code takes everything. Measure it over a whole set (an epoch, a test set): a batch's perplexity
    is capped by its size."""
    counts = torch.bincount(indices.flatten().long(), minlength=codebook_size).cpu().double()  # (MPS has no float64)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).double().mean()), float(entropy.exp())


# ----------------------------------------------------------------------------- multi-scale residual VQ (VAR)


def scale_slices(scales) -> list:
    """Where each scale's tokens sit in the flat sequence: scales (1, 2, 3) -> [0:1, 1:5, 5:14].

    A multi-scale token set is ONE sequence of L = sum_k s_k^2 tokens, scale by scale, each scale's
    s_k x s_k grid in raster order."""
    out, start = [], 0
    for s in scales:
        out.append(slice(start, start + s * s))
        start += s * s
    return out


def check_scales(scales, latent_size=None) -> tuple:
    """scales as a tuple of ints if they are whole numbers >= 1, strictly increasing, the last equal to
    latent_size (when given); else a ValueError saying what is wrong and how to fix it."""
    try:
        out = tuple(int(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of whole numbers such as (1, 2, 4, 7), got {scales!r}") from None
    if not out or any(s != t for s, t in zip(out, scales)):
        raise ValueError(f"scales must be a non-empty sequence of whole numbers such as (1, 2, 4, 7), got "
                         f"{scales!r}")
    if out[0] < 1:
        raise ValueError(f"every scale must be at least 1 (a 1 x 1 grid), got {out}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"scales must increase strictly, coarse to fine (e.g. (1, 2, 4, 7)), got {out}")
    if latent_size is not None and out[-1] != int(latent_size):
        raise ValueError(f"the last scale must equal the latent size {latent_size} (the finest scale codes what the "
                         f"coarser ones left at full resolution), got scales {out}: end them with {latent_size}")
    return out


def default_scales(latent_size: int) -> tuple:
    """1, then doubling per step, the last the latent size: 7 -> (1, 2, 4, 7) (70 tokens, 4 steps),
    14 -> (1, 2, 4, 8, 14), 4 -> (1, 2, 4), 3 -> (1, 2, 3). Each step at most doubles the side, so it adds
    a modest amount of detail (VAR's 16 x 16 schedule 1, 2, 3, 4, 5, 6, 8, 10, 13, 16 grows more slowly,
    at 10 steps for 256 tokens); fewer scales mean fewer tokens and fewer sampling steps. Lesson 15
    measured (1, 2, 4, 7) against (1, 2, 3, 4, 5, 7) (104 tokens, 6 steps) at equal training CPU time: a
    better tokenizer and prior (FID) and a cheaper sampler."""
    h = int(latent_size)
    out = [1]
    while 2 * out[-1] < h:
        out.append(2 * out[-1])
    return tuple(out) + ((h,) if h > out[-1] else ())


def area_down(f: torch.Tensor, s: int) -> torch.Tensor:
    """(B, d, h, w) -> (B, d, s, s), each cell the mean of the latent vectors it covers ("area")."""
    return f if f.shape[-1] == s and f.shape[-2] == s else F.interpolate(f, size=(s, s), mode="area")


def bicubic_up(e: torch.Tensor, size: int) -> torch.Tensor:
    """(B, d, s, s) -> (B, d, size, size) by bicubic interpolation (the identity when s == size)."""
    return e if e.shape[-1] == size else F.interpolate(e, size=(size, size), mode="bicubic")


def upsampled_code(grid: torch.Tensor, codebook: torch.Tensor, size: int) -> torch.Tensor:
    """The codes of a token grid, bicubic-upsampled to the latent size: (B, s, s) -> (B, d, size, size)."""
    e = F.embedding(grid, codebook).permute(0, 3, 1, 2)  # (B, d, s, s)
    return bicubic_up(e, size)


def multiscale_quantize(f: torch.Tensor, codebook: torch.Tensor, scales, phi):
    """VAR's multi-scale residual quantisation of latents f (B, d, h, w) with one codebook (V, d).

    scales: s_1 < ... < s_K = h.  phi(h, k): scale k's refinement of an upsampled code map (B, d, h, w).
    Returns (tokens (B, L) long, scale by scale, raster within a scale; the K cumulative f_hat (B, d, h, w)).

        f_rest = f,  f_hat = 0
        for k:  r_k = area_down(f_rest, s_k);  tokens_k = nearest(r_k)
                h_k = phi(bicubic_up(e[tokens_k]), k);  f_hat += h_k;  f_rest -= h_k
    """
    B, d, h, w = f.shape
    f_rest, f_hat = f, torch.zeros_like(f)
    tokens, cumulative = [], []
    for k, s in enumerate(scales):
        r = area_down(f_rest, s)  # (B, d, s, s) what is left, at scale s
        grid = nearest_code(_flat(r), codebook).view(B, s, s)  # (B, s, s)
        h_k = phi(upsampled_code(grid, codebook, h), k)  # (B, d, h, w) this scale's contribution
        f_hat = f_hat + h_k
        f_rest = f_rest - h_k.detach()  # only ever read by the argmin: no gradient needed
        tokens.append(grid.flatten(1))  # (B, s*s)
        cumulative.append(f_hat)
    return torch.cat(tokens, 1), cumulative


class Phi(nn.Module):
    """VAR's refinement of an upsampled code map: phi(h) = 0.5 h + 0.5 conv3x3(h), (B, d, h, w) -> same."""

    def __init__(self, dim: int, ratio: float = 0.5):
        super().__init__()
        self.conv, self.ratio = nn.Conv2d(dim, dim, 3, padding=1), float(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (1 - self.ratio) * h + self.ratio * self.conv(h)


def phi_index(k: int, n_scales: int, n_phi: int) -> int:
    """Which of n_phi convolutions refines scale k (0-based) of n_scales: the one whose tick in
    linspace(1/(3 n), 1 - 1/(3 n), n) is nearest to the scale's position k / (K - 1) (VAR's rule for
    its 4 partially shared convs). n_phi = 1: all share one; n_phi = K: one per scale."""
    if n_phi == 1:
        return 0
    position = k / max(n_scales - 1, 1)
    ticks = torch.linspace(1 / (3 * n_phi), 1 - 1 / (3 * n_phi), n_phi)
    return int((ticks - position).abs().argmin())


class MultiScaleQuantizer(nn.Module):
    """VAR's multi-scale residual quantiser (Tian et al. 2024): forward(z_e (B, d, h, w)) -> Quantized with
    indices (B, L), L = sum_k s_k^2, one shared codebook for every scale.

        f_rest = f = sg[z_e],  f_hat = 0
        for k = 1..K:   r_k = area_down(f_rest, s_k)                    (B, d, s_k, s_k)
                        tokens_k = nearest(r_k)                          (B, s_k, s_k)
                        h_k = phi_k(bicubic_up(e[tokens_k], h))          (B, d, h, w)
                        f_hat += h_k,   f_rest -= h_k

    The last scale is the latent size (no downsampling there, so the finest residual is coded at full
    resolution). Loss per scale on the cumulative f_hat_k, averaged over scales (VAR's models/quant.py):

        codebook_loss   = mean_k ||f_hat_k - sg[f]||^2    (reaches the codebook and phi)
        commitment_loss = mean_k ||sg[f_hat_k] - f||^2    (reaches the encoder)
        loss = codebook_loss + beta * commitment_loss,   z_q = f + sg[f_hat_K - f]  (straight-through)

    phi: "shared" (one conv for all scales), "per-scale" (one each), or a number n of convs picked by
    the scale's position (phi_index; VAR uses 4). The codebook is a VectorQuantizer (its nearest and
    embed, and with ema=True its running means and dead-code restarts, fed with the residuals of every
    scale, once per training batch). With EMA the codebook term still trains phi.

    The pieces a next-scale prior reads:
        cumulative(indices)        -> K tensors (B, d, h, w): f_hat after scales 1..k
        next_scale_inputs(indices) -> (B, L - s_1^2, d): for k > 1, f_hat after scales < k, area-downsampled
                                      to s_k x s_k, flattened; scales concatenated (teacher forcing)
        slices                     -> scale_slices(scales): each scale's place in the sequence
    """

    def __init__(self, codebook_size: int, dim: int, scales=(1, 2, 4, 7), beta: float = 0.25, phi="shared",
                 **vq_kwargs):
        super().__init__()
        self.scales = check_scales(scales)
        self.latent_size, self.n_scales = self.scales[-1], len(self.scales)
        self.slices = scale_slices(self.scales)
        self.length = sum(s * s for s in self.scales)  # L
        self.vq = VectorQuantizer(codebook_size, dim, beta=beta, **vq_kwargs)  # THE codebook, shared by all scales
        self.codebook_size, self.dim, self.beta = self.vq.codebook_size, self.vq.dim, self.vq.beta
        K = self.n_scales
        n_phi = {"shared": 1, "per-scale": K}.get(phi, phi)
        if isinstance(n_phi, bool) or not isinstance(n_phi, int) or n_phi < 1:
            raise ValueError(f"phi must be 'shared', 'per-scale' or a number of convolutions >= 1, got {phi!r}")
        self.phi_mode, n_phi = phi, min(n_phi, K)
        self.phis = nn.ModuleList(Phi(self.dim) for _ in range(n_phi))
        self.phi_of_scale = [phi_index(k, K, n_phi) for k in range(K)]

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.codebook

    # ------------------------------------------------------------------ tokens <-> grids
    def check_indices(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.dim() != 2 or indices.shape[1] != self.length:
            raise ValueError(f"multi-scale tokens must be (B, L) with L = {self.length} (scales {self.scales}), got "
                             f"shape {tuple(indices.shape)}")
        return indices.long()

    def split(self, indices: torch.Tensor) -> list:
        """(B, L) -> the K token grids (B, s_k, s_k)."""
        B = len(indices)
        return [indices[:, sl].reshape(B, s, s) for sl, s in zip(self.slices, self.scales)]

    def join(self, grids) -> torch.Tensor:
        """The K token grids (B, s_k, s_k) -> (B, L), scale by scale, raster within a scale."""
        return torch.cat([g.flatten(1) for g in grids], 1)

    # ------------------------------------------------------------------ one scale
    def refine(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """phi_k(h): scale k's phi convolution on an upsampled code map (B, d, h, w)."""
        return self.phis[self.phi_of_scale[k]](h)

    def scale_code(self, grid: torch.Tensor, k: int) -> torch.Tensor:
        """h_k = phi_k(bicubic_up(e[grid])): what scale k adds to f_hat. grid (B, s_k, s_k) -> (B, d, h, w)."""
        return self.refine(upsampled_code(grid, self.codebook, self.latent_size), k)

    def add_scale(self, f_hat: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
        """f_hat (B, d, h, w) after scales < k, plus scale k's tokens (B, s_k, s_k): f_hat after scale k
        (a sampler's step, without recomputing the coarser scales)."""
        return f_hat + self.scale_code(grid, k)

    def scale_input(self, f_hat: torch.Tensor, k: int) -> torch.Tensor:
        """The input of scale k (0-based, k >= 1) from f_hat after scales < k: (B, d, h, w) -> (B, s_k^2, d)."""
        return area_down(f_hat, self.scales[k]).flatten(2).transpose(1, 2)  # (B, s_k * s_k, d)

    # ------------------------------------------------------------------ what a prior reads
    def cumulative(self, indices: torch.Tensor) -> list:
        """f_hat after each scale: K tensors (B, d, h, w), the k-th the sum of scales 1..k's codes."""
        f_hat, out = 0, []
        for k, grid in enumerate(self.split(self.check_indices(indices))):
            f_hat = f_hat + self.scale_code(grid, k)
            out.append(f_hat)
        return out

    def next_scale_inputs(self, indices: torch.Tensor) -> torch.Tensor:
        """VAR's teacher-forcing input: (B, L) -> (B, L - s_1^2, d). The rows of scale k > 1 are the
        cumulative f_hat of scales < k (never the raw tokens of scale k - 1) area-downsampled to s_k x s_k,
        raster order; the tokens of scale k and finer do not enter them."""
        cums = self.cumulative(indices)
        return torch.cat([self.scale_input(cums[k - 1], k) for k in range(1, self.n_scales)], 1)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """The quantised latent f_hat (B, d, h, w) of tokens (B, L): the decoder's input."""
        return self.cumulative(indices)[-1]

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) of z_e (B, d, h, w); never moves the codebook."""
        with torch.no_grad():
            return self._quantize(z_e)[0]

    def _quantize(self, z_e: torch.Tensor):
        """The residual loop: (indices (B, L), [f_hat_k], [(residual rows, codes)] for the EMA update)."""
        B, d, h, w = z_e.shape
        if d != self.dim or h != self.latent_size or w != self.latent_size:
            raise ValueError(f"expected latents (B, {self.dim}, {self.latent_size}, {self.latent_size}) (the last scale "
                             f"is the latent size), got {tuple(z_e.shape)}")
        f = z_e.detach()  # the quantiser's loop reads the latent; its own gradients come from its losses
        tokens, cums = multiscale_quantize(f, self.codebook, self.scales, self.refine)
        before = [torch.zeros_like(f)] + [c.detach() for c in cums[:-1]]  # f_hat before each scale
        seen = [(_flat(area_down(f - b, s)), grid.flatten())  # the residual rows each scale quantised, their codes
                for b, s, grid in zip(before, self.scales, self.split(tokens))]
        return tokens, cums, seen

    def forward(self, z_e: torch.Tensor) -> Quantized:
        if self.training and not bool(self.vq.initialised):
            self.vq.init_from(_flat(z_e).detach())  # the codebook from the first batch's latent vectors
        indices, cums, seen = self._quantize(z_e)
        f = z_e.detach()
        codebook = torch.stack([F.mse_loss(f_hat, f) for f_hat in cums]).mean()  # codebook and phi
        commitment = torch.stack([F.mse_loss(z_e, f_hat.detach()) for f_hat in cums]).mean()  # the encoder
        if self.training and self.vq.ema:
            self.vq.update(torch.cat([r for r, _ in seen]), torch.cat([c for _, c in seen]))
        return Quantized(straight_through(z_e, cums[-1]), indices, codebook, commitment,
                         codebook + self.beta * commitment)

    @torch.no_grad()
    def scale_errors(self, z_e: torch.Tensor) -> list:
        """||f_hat_k - z_e||^2 (mean over elements) after each scale k: K floats, falling as scales are added
        (in a trained quantiser)."""
        _, cums, _ = self._quantize(z_e)
        return [float(F.mse_loss(f_hat, z_e)) for f_hat in cums]

    @torch.no_grad()
    def usage_per_scale(self, indices: torch.Tensor) -> list:
        """codebook_usage (fraction used, perplexity) of each scale's tokens of a whole set (B, L): small
        scales collapse first (few vectors per image), so watch them."""
        indices = self.check_indices(indices)
        return [codebook_usage(indices[:, sl], self.codebook_size) for sl in self.slices]

    def extra_repr(self) -> str:
        return (f"scales={self.scales}, tokens={self.length}, codebook_size={self.codebook_size}, dim={self.dim}, "
                f"phi={self.phi_mode!r} ({len(self.phis)} conv)")
