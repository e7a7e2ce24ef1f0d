"""A 3D VQ-VAE: a video tokenizer (VideoGPT's first stage, Yan et al. 2021) with a pixel-space likelihood.

Lesson 11's VQ-VAE one dimension up. 3D convolutions read a video and shrink it in time and space,

    x (B, T, C, H, W) integers --encoder--> z_e (B, d, T', h, w) --quantiser--> tokens (B, T', h, w), z_q
    z_q --decoder--> logits (B, C, K, T, H, W): a K-way categorical over every pixel value of every frame

with T' = T / time_down and h = H / space_down (defaults 2 and 4: an 8 x 16 x 16 Moving MNIST video
-> 4 x 4 x 4 = 64 tokens, one per 2 frames x 4 x 4 pixels). Each downsampling stage is a stride-2
convolution (kernel 4) that halves H and W, and T too in the first log2(time_down) stages; the
decoder mirrors it with transposed convolutions.

The quantiser is the one lesson 11 built (armini.nn.quantize.VectorQuantizer): every latent vector is
replaced by its nearest code, whatever grid it sits in, so the (T', h, w) grid is handed to it as a
(T' * h, w) one and the tokens are reshaped back. "ema" (the default, as VideoGPT) learns the codebook
by running means, restarts dead codes and starts from the first batch; "vq" learns it by its loss term.

The losses, the likelihood and the point estimates are VQVAE's (this class inherits them): loss =
reconstruction bits/dim + codebook term + beta * commitment; -log2 p(x | z(x)) is a number of bits, so

    -log2 p(x) <= -log2 p(x | z(x)) - log2 p(z(x))              (any prior p(z); the encoder is deterministic)

is a bound in pixel-space bits/dim (VideoGPT, armini.models.videogpt, adds a GPT prior's bits).

    vq = VQVAE3D(video_shape=(8, 1, 16, 16), levels=256)
    hist = armini.train.fit(vq, videos, steps=300)        # videos (N, 8, 1, 16, 16) or a VideoData
    tokens = vq.encode(videos[:4])                         # (4, 4, 4, 4) in [0, 256)
    clips = vq.decode(tokens)                              # (4, 8, 1, 16, 16) integers

The encoder is causal in time: its convolutions pad time on the past side only (kernel 4, stride 2,
two frames of padding in front: token slice t' reads frames 2t'-2 .. 2t'+1) and its normalisation
(GroupNorm) runs on each time slice apart, so the tokens of slice t' depend on frames < (t'+1) * time_down
only. A clip of the first k frames (k a multiple of time_down) is then encoded exactly as the start of
any video that begins with it: encode(x[:, :k]) == encode(x)[:, :k // time_down], tokens (B, k / time_down,
h, w), what a video model's context frames become. (Measured before this was so: with VideoGPT's
two-sided convolutions and one GroupNorm over the whole clip, 10-13% of a 2-, 4- or 6-frame context's tokens
matched the whole video's after 120 training steps: a continuation would have started from tokens the
prior never saw.) The decoder reads every token: it need not be causal.

Deviations from VideoGPT: a time-causal encoder (above; VideoGPT's convolutions are two-sided), no
axial-attention residual blocks (plain 3D residual blocks), data scaled to [-1, 1] (the paper: [-0.5, 0.5]),
a categorical decoder over K values (the paper: a mean squared error), so a likelihood bound exists; much
smaller (32 channels, one residual block per side).

Legend: B batch, T frames, C channels, H, W frame size, K pixel levels, d latent channels, T', h, w the
token grid (T' = T / time_down, h = H / space_down, w = W / space_down), V codebook size.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.inputs import to_unit_range
from ..nn.quantize import Quantized, VectorQuantizer
from .vqvae import LN2, VQVAE

__all__ = ["VQVAE3D", "VQVAE3DConfig", "VIDEO_QUANTIZERS", "ResBlock3D", "CausalConv3d", "SliceNorm"]

VIDEO_QUANTIZERS = ("vq", "ema")


@dataclass
class VQVAE3DConfig:
    video_shape: tuple = (8, 1, 16, 16)  # (T, C, H, W) of one video
    levels: int = 256  # K, pixel levels
    time_down: int = 2  # T / T': 1, 2, 4, ... (a power of 2, at most space_down)
    space_down: int = 4  # H / h = W / w: 2, 4, 8, ...
    quantizer: str = "ema"  # one of VIDEO_QUANTIZERS
    codebook_size: int = 256  # V
    dim: int = 16  # d, the code size
    beta: float = 0.25  # commitment weight, on the encoder term
    channels: int = 32  # width of the 3D convolutional encoder and decoder
    res_blocks: int = 1  # residual blocks at the latent resolution, per side


def halvings(factor, name: str) -> int:
    """n with factor = 2^n (1 -> 0, 4 -> 2), or a ValueError naming `name`."""
    if isinstance(factor, bool) or int(factor) != factor or factor < 1 or int(factor) & (int(factor) - 1):
        raise ValueError(f"{name} must be a power of 2 (1, 2, 4, 8, ...), got {factor!r}")
    return int(factor).bit_length() - 1


class CausalConv3d(nn.Conv3d):
    """A 3D convolution whose output at time t reads inputs at times <= t * stride + stride - 1 only: time is padded
    on the past side (kernel - stride frames), height and width on both sides (`padding` each).

    kernel 3, stride 1: frames t-2..t.   kernel 4, stride 2: frames 2t-2..2t+1 (slice t's own two and the two before).
    """

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding: int = 1):
        super().__init__(c_in, c_out, kernel, stride=stride, padding=0)
        kt, st = self.kernel_size[0], self.stride[0]
        self.pads = (padding, padding, padding, padding, kt - st, 0)  # F.pad order: (W, W, H, H, T front, T back)

    def forward(self, x):
        return super().forward(F.pad(x, self.pads))  # (B, C_in, T, H, W) -> (B, C_out, T / stride, ...)


class SliceNorm(nn.GroupNorm):
    """GroupNorm(1, c) on each time slice apart: (B, c, T, h, w) normalised over (c, h, w) for every t, so the
    statistics of one slice never mix in later frames (a GroupNorm over the whole clip would)."""

    def __init__(self, c: int):
        super().__init__(1, c)

    def forward(self, x):
        B, c, T, h, w = x.shape
        frames = x.transpose(1, 2).reshape(B * T, c, h, w)  # (B*T, c, h, w): one sample per slice
        return super().forward(frames).view(B, T, c, h, w).transpose(1, 2)  # (B, c, T, h, w)


class ResBlock3D(nn.Module):
    """x + conv1x1x1(relu(conv3x3x3(relu(x)))): VQVAE's residual block in 3D; causal=True pads time on the past
    side only (CausalConv3d), for the encoder."""

    def __init__(self, c: int, causal: bool = False):
        super().__init__()
        self.conv1 = CausalConv3d(c, c, 3) if causal else nn.Conv3d(c, c, 3, padding=1)
        self.conv2 = nn.Conv3d(c, c, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def down_stage(c: int, halve_time: bool) -> nn.Conv3d:
    """A stride-2 causal convolution that halves H and W (and T when halve_time): kernel 4, padding 1 in space,
    the past side only in time."""
    if halve_time:
        return CausalConv3d(c, c, 4, stride=2)
    return CausalConv3d(c, c, (3, 4, 4), stride=(1, 2, 2))  # T kept


def up_stage(c: int, double_time: bool) -> nn.ConvTranspose3d:
    """The transposed convolution that undoes down_stage: doubles H and W (and T when double_time)."""
    if double_time:
        return nn.ConvTranspose3d(c, c, 4, stride=2, padding=1)
    return nn.ConvTranspose3d(c, c, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1))


class VQVAE3D(VQVAE):
    """3D encoder, VQ (EMA) codebook, categorical decoder over every pixel of every frame: a video tokenizer
    (the protocol of armini.tokenizers one dimension up), trainable with armini.train.fit."""

    def __init__(self, video_shape=(8, 1, 16, 16), levels: int = 256, time_down: int = 2, space_down: int = 4,
                 quantizer: str = "ema", codebook_size: int = 256, dim: int = 16, beta: float = 0.25,
                 channels: int = 32, res_blocks: int = 1):
        nn.Module.__init__(self)  # VQVAE's methods, not its 2D layers: the layers are built here
        try:
            T, C, H, W = (int(s) for s in video_shape)
        except (TypeError, ValueError):
            raise ValueError(f"video_shape must be (T, C, H, W) (frames, channels, height, width), got "
                             f"{video_shape!r}") from None
        n_t, n_s = halvings(time_down, "time_down"), halvings(space_down, "space_down")
        if n_s < 1 or n_t > n_s:
            raise ValueError(f"space_down must be at least 2 and time_down at most space_down (each stage halves the "
                             f"frame, the first ones the time too), got time_down={time_down}, space_down={space_down}")
        if min(T, C, H, W) < 1 or T % time_down or H % space_down or W % space_down:
            raise ValueError(f"a video of shape (T, C, H, W) = {(T, C, H, W)} cannot be cut into tokens of "
                             f"{time_down} frames x {space_down} x {space_down} pixels: T must be a multiple of "
                             f"time_down and H, W multiples of space_down (e.g. (8, 1, 16, 16) with 2 and 4)")
        if quantizer not in VIDEO_QUANTIZERS:
            raise ValueError(f"quantizer must be one of {VIDEO_QUANTIZERS}, got {quantizer!r}")
        if int(levels) < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        self.config = VQVAE3DConfig((T, C, H, W), int(levels), int(time_down), int(space_down), quantizer,
                                    int(codebook_size), int(dim), float(beta), int(channels), int(res_blocks))
        self.shape, self.levels = (T, C, H, W), int(levels)
        c, K = int(channels), int(levels)
        # encoder, causal in time: (B, C, T, H, W) in [-1, 1] -> (B, d, T', h, w), slice t' from frames < (t'+1) T/T'
        enc = [CausalConv3d(C, c, 3)]
        for stage in range(n_s):
            enc += [nn.ReLU(), down_stage(c, halve_time=stage < n_t)]  # halves H, W (and T in the first n_t)
        enc += [ResBlock3D(c, causal=True) for _ in range(res_blocks)]
        enc += [SliceNorm(c), nn.ReLU(), nn.Conv3d(c, dim, 1)]  # normalised features (per slice) -> d channels
        self.encoder = nn.Sequential(*enc)
        ema = quantizer == "ema"
        self.quantizer = VectorQuantizer(codebook_size, dim, beta=beta, ema=ema, restart_dead=ema, data_init=ema)
        self.codebook_size = self.quantizer.codebook_size
        # decoder: (B, d, T', h, w) -> logits (B, C*K, T, H, W)
        dec = [nn.Conv3d(dim, c, 3, padding=1)] + [ResBlock3D(c) for _ in range(res_blocks)]
        for stage in reversed(range(n_s)):
            dec += [nn.ReLU(), up_stage(c, double_time=stage < n_t)]  # doubles H, W (and T in the last n_t)
        dec += [nn.ReLU(), nn.Conv3d(c, C * K, 1)]
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def time_down(self) -> int:
        return self.config.time_down

    @property
    def space_down(self) -> int:
        return self.config.space_down

    def check_input(self, x, name: str = "x", clip: bool = False) -> torch.Tensor:
        """x if it is an integer tensor (B, T, C, H, W), B >= 1, in [0, K); else a clear error. clip=True also
        takes a shorter clip (B, k, C, H, W) with k a positive multiple of time_down."""
        if self._inputs_checked:
            return x
        T, C, H, W = self.shape
        if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of pixel values in [0, {self.levels}), got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        k = x.shape[1] if x.dim() == 5 else -1
        length_ok = k == T or (clip and 0 < k <= T and k % self.time_down == 0)
        if x.dim() != 5 or tuple(x.shape[2:]) != (C, H, W) or not length_ok or len(x) == 0:
            clips = f" (or a clip of k frames, k a multiple of time_down={self.time_down})" if clip else ""
            raise ValueError(f"{name} must be videos of shape (B, T, C, H, W) = (B, {T}, {C}, {H}, {W}) with B >= 1"
                             f"{clips}, got {tuple(x.shape)}")
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one wait for the device
        if lo < 0 or hi >= self.levels:
            raise ValueError(f"{name} values must lie in [0, {self.levels}), found [{lo}, {hi}]")
        return x.long()

    def token_shape(self, video_shape=None) -> tuple:
        """(T', h, w) of one video's tokens: (4, 4, 4) for (8, 1, 16, 16) with time_down 2, space_down 4."""
        T, C, H, W = self.shape if video_shape is None else tuple(video_shape)
        if (C, H, W) != self.shape[1:] or T < 1 or T % self.time_down:
            raise ValueError(f"this VQVAE3D reads videos of shape {self.shape} (or clips of a multiple of "
                             f"{self.time_down} frames), got {tuple(video_shape)}")
        return (T // self.time_down, H // self.space_down, W // self.space_down)

    # ------------------------------------------------------------------ the three pieces
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """z_e (B, d, T', h, w) of integer videos (B, T, C, H, W)."""
        v = to_unit_range(x.float(), self.levels).transpose(1, 2)  # (B, C, T, H, W): Conv3d's layout
        return self.encoder(v)  # (B, d, T', h, w)

    def quantize(self, z_e: torch.Tensor) -> Quantized:
        """The quantiser on a 3D latent: (B, d, T', h, w) -> Quantized with z_q (B, d, T', h, w), indices
        (B, T', h, w). The quantiser treats each vector alone, so the grid is handed over as (B, d, T'*h, w)."""
        B, d, t, h, w = z_e.shape
        q = self.quantizer(z_e.reshape(B, d, t * h, w))  # tokens (B, T'*h, w)
        return dataclasses.replace(q, z_q=q.z_q.view(B, d, t, h, w), indices=q.indices.view(B, t, h, w))

    def decode_logits(self, z_q: torch.Tensor) -> torch.Tensor:
        """Logits of every pixel value (B, C, K, T, H, W) from the quantised latent (B, d, T', h, w)."""
        out = self.decoder(z_q)  # (B, C*K, T, H, W)
        B, _, T, H, W = out.shape
        return out.view(B, self.shape[1], self.levels, T, H, W)  # (B, C, K, T, H, W)

    def forward(self, x: torch.Tensor):
        """(logits (B, C, K, T, H, W), Quantized) of integer videos x (B, T, C, H, W)."""
        q = self.quantize(self.encode_latents(x))
        return self.decode_logits(q.z_q), q

    # ------------------------------------------------------------------ losses
    def loss_terms(self, x: torch.Tensor) -> dict:
        """As VQVAE.loss_terms: recon_bpd (-log2 p(x|z) per dimension), codebook, commitment (without beta),
        loss = recon_bpd + codebook + beta * commitment."""
        x = self.check_input(x)
        logits, q = self(x)
        B, C, K, T, H, W = logits.shape
        target = x.transpose(1, 2).reshape(B * C, T, H, W)  # (B*C, T, H, W), the logits' layout
        recon = F.cross_entropy(logits.view(B * C, K, T, H, W), target) / LN2  # bits per dimension
        return {"recon_bpd": recon, "codebook": q.codebook_loss, "commitment": q.commitment_loss,
                "loss": recon + q.loss}

    # ------------------------------------------------------------------ the tokenizer protocol
    @torch.no_grad()
    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T', h, w) long of integer videos (B, T, C, H, W) (or of a clip of k frames, k a multiple of
        time_down: (B, k / time_down, h, w)). Never moves the codebook."""
        z_e = self.encode_latents(self.check_input(videos, "videos", clip=True))  # (B, d, T', h, w)
        B, d, t, h, w = z_e.shape
        return self.quantizer.nearest(z_e.reshape(B, d, t * h, w)).view(B, t, h, w)  # (B, T', h, w)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The quantised latent (B, d, T', h, w) the decoder reads, of tokens (B, T', h, w)."""
        _, h, w = self.token_shape()
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != (h, w):
            raise ValueError(f"tokens must be (B, T', h, w) = (B, T', {h}, {w}), got shape {tuple(tokens.shape)}")
        B, t = tokens.shape[:2]
        z_q = self.quantizer.embed(tokens.long().reshape(B, t * h, w))  # (B, d, T'*h, w): one code per token
        return z_q.view(B, -1, t, h, w)  # (B, d, T', h, w)

    def latent_logprobs(self, z_q: torch.Tensor) -> torch.Tensor:
        """log p(pixel value | latent), in nats: (B, d, T', h, w) -> (B, T, C, H, W, K)."""
        return F.log_softmax(self.decode_logits(z_q), 2).permute(0, 3, 1, 4, 5, 2)  # (B, T, C, H, W, K)

    def decode_scales(self, tokens, point: str = "mean"):
        raise ValueError("decode_scales is for multi-scale image tokens (VQVAE(quantizer='msvq')); a VQVAE3D has "
                         "one token grid per video")

    def extra_repr(self) -> str:
        c = self.config
        return (f"quantizer={c.quantizer!r}, codebook_size={self.codebook_size}, tokens={self.token_shape()}, "
                f"levels={c.levels}, time_down={c.time_down}, space_down={c.space_down}")

    def num_tokens(self) -> int:
        """T' * h * w, the tokens of one video."""
        return math.prod(self.token_shape())
