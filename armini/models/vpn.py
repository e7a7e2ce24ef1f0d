"""Video Pixel Network at small scale (Kalchbrenner, van den Oord, Simonyan, Danihelka, Vinyals,
Graves & Kavukcuoglu, 2016, "Video Pixel Networks").

A video x (T, C, H, W) is modelled pixel by pixel across time and space (eq. 1 of the paper):

    p(x) = prod_t prod_{i, j} prod_c p(x_t[c, i, j] | x_<t, x_t[pixels before (i, j)], x_t[channels < c, i, j])

frame by frame, raster order within a frame (armini.models.base.VideoARModel). Three parts:

1. A resolution-preserving encoder reads each frame (B, C, H, W) -> (B, F_e, H, W): dilated 3x3
   convolutions, no pooling, so every pixel keeps its own features (the paper: residual
   multiplicative blocks with dilations 1, 2, 4, 8).
2. A convolutional LSTM (armini.nn.convlstm, Shi et al. 2015) runs over time. Its step t reads the
   previous frame's encoding, so its state map s_t depends on frames < t only:

       (s_t, c_t) = ConvLSTM(enc(x_{t-1}), (s_{t-1}, c_{t-1})),   enc(x_{-1}) = 0, s_{-1} = c_{-1} = 0

3. A decoder per frame: a Gated PixelCNN (armini.models.gated_pixelcnn's layers) over x_t whose
   gates also read s_t through 1x1 convolutions, the location-dependent conditioning of van den
   Oord et al. (2016, eq. 5):

       h = tanh(W_f * x + V_f * s_t) . sigmoid(W_g * x + V_g * s_t)

   so a pixel of frame t sees frames < t through s_t (fully, within the encoder's and the LSTM's
   reach) and its own frame's earlier pixels through the masked stacks.

`spatial=False` is the paper's baseline without spatial (and colour) dependencies: the decoder does
not read x_t at all, only s_t (a residual stack of gated 3x3 convolutions of the same width and
depth, unmasked: s_t holds the past only). The pixels of a frame are then independent given the
past frames, and a whole frame is drawn in one sampling step (sampling_steps: one group per frame).

Sampling. The naive sampler runs the model on the frames so far at every step (frames_so_far).
The cached one (init_cache, `VPNCache`) carries the ConvLSTM state from frame to frame (one encoder
pass and one LSTM step per frame) and, within a frame, runs the decoder on cached rows
(armini.sampling_cache: the vertical stack once per row, the horizontal stack once per pixel).

Units: loss in bits/dim like every model; the paper reports nats per frame
(armini.models.base.nats_per_frame converts; VideoARModel.nats_per_frame computes it from x).

Deviations from the paper: much smaller (a few layers of 32 channels, not 8 blocks of 256); plain
dilated residual convolutions in the encoder and Gated PixelCNN layers in the decoder instead of
residual multiplicative blocks; a K-way softmax over quantised pixels (levels) instead of the
paper's 256-way softmax (or its sigmoid on Moving MNIST's grayscale values), so our nats per frame
are a discrete likelihood of our own quantisation, not comparable with the paper's 87.6; the
first frame is modelled by the decoder alone (its s_0 comes from a zero input).

Legend: B batch, T frames, C image channels, H, W height and width, K levels, F decoder channels,
F_e encoder channels, F_s LSTM channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.convlstm import ConvLSTMCell
from ..nn.heads import categorical_logits, softmax_head
from ..nn.inputs import ValueInput
from ..nn.shifted import down_shift
from ..sampling_cache import RasterConvSampler
from .base import VideoARModel
from .gated_pixelcnn import GatedLayer, gate


# ------------------------------------------------------------------------------ encoder
class FrameEncoder(nn.Module):
    """Resolution-preserving CNN of one frame: input features (B, C_in, H, W) -> (B, F_e, H, W).

    A 3x3 convolution, then residual dilated 3x3 convolutions (dilations 1, 2, 4, ...): the
    receptive field grows without pooling, so every position keeps its own features."""

    def __init__(self, in_channels: int, channels: int, n_layers: int):
        super().__init__()
        self.first = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=2 ** l, dilation=2 ** l) for l in range(n_layers - 1)
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.first(v))  # (B, F_e, H, W)
        for conv in self.blocks:
            h = h + F.relu(conv(h))  # (B, F_e, H, W): same size, wider view
        return h


# ------------------------------------------------------------------------------ decoders
class ConditionedGatedLayer(GatedLayer):
    """A Gated PixelCNN layer (armini.models.gated_pixelcnn.GatedLayer) whose gates also read a
    conditioning map s (B, F_s, H, W) through 1x1 convolutions, V * s (van den Oord et al. 2016, eq. 5).

    `condition(s)` computes both terms once per frame; `vertical(v, cond)` takes them (cut to v's rows)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool, groups: int, cond_channels: int):
        super().__init__(in_channels, channels, kernel, first, groups, num_classes=None)
        self.V_v = nn.Conv2d(cond_channels, 2 * channels, 1)  # V_v * s for the vertical gates
        self.V_h = nn.Conv2d(cond_channels, 2 * channels, 1)  # V_h * s for the horizontal ones

    def condition(self, s: torch.Tensor):
        """s (B, F_s, H, W) -> (V_v * s, V_h * s), each (B, 2F, H, W)."""
        return self.V_v(s), self.V_h(s)

    def vertical(self, v: torch.Tensor, cond):
        """As GatedLayer.vertical, with the map's terms in place of the class embedding:
        v (B, F_in, h, W), cond (V_v * s, V_h * s) on the same rows -> (next v (B, F, h, W), link (B, 2F, h, W))."""
        cv, ch = cond
        v_pre = self.v_conv(v)  # (B, 2F, h, W)
        link = self.v_to_h(v_pre) + ch  # vertical -> horizontal, + V_h * s
        return gate(v_pre + cv, self.groups), link  # tanh(W_f * v + V_f * s) . sigmoid(W_g * v + V_g * s)


class FrameDecoder(nn.Module):
    """Gated PixelCNN of one frame conditioned on a map: (v = the frame's input features (B, C_in, H, W),
    conds from `conditions(s)`) -> log-probabilities (B, C, H, W, K)."""

    def __init__(self, frame_shape, levels: int, in_channels: int, cfg: "VPNConfig"):
        super().__init__()
        self.shape, self.levels = tuple(frame_shape), levels  # (C, H, W): what the raster cache reads
        C, F_ = self.shape[0], cfg.channels
        self.layers = nn.ModuleList(
            ConditionedGatedLayer(F_ if l else in_channels, F_, cfg.kernel if l else cfg.first_kernel, l == 0, C,
                                  cfg.lstm_channels)
            for l in range(cfg.n_layers)
        )
        self.head = softmax_head(F_, cfg.head_channels, C, levels)  # relu, 1x1, relu, 1x1 to C*K

    def conditions(self, s: torch.Tensor) -> list:
        """Each layer's (V_v * s, V_h * s) for the map s (B, F_s, H, W): a list of pairs of (B, 2F, H, W)."""
        return [layer.condition(s) for layer in self.layers]

    def logprobs(self, skip: torch.Tensor) -> torch.Tensor:
        """Summed skip connections (B, F, h, w) -> (B, C, h, w, K)."""
        return torch.log_softmax(categorical_logits(self.head(skip), self.shape[0], self.levels), dim=-1)

    def forward(self, v: torch.Tensor, conds: list) -> torch.Tensor:
        vv, h, skip = down_shift(v), v, None  # the vertical stack starts from the frame moved down one row
        for layer, cond in zip(self.layers, conds):
            vv, link = layer.vertical(vv, cond)  # (B, F, H, W), (B, 2F, H, W)
            h, sk = layer.horizontal(h, link)  # (B, F, H, W) twice
            skip = sk if skip is None else skip + sk
        return self.logprobs(skip)  # (B, C, H, W, K)


class IndependentDecoder(nn.Module):
    """The baseline's decoder: each pixel's distribution from the map s alone (no pixel of its own frame):
    s (B, F_s, H, W) -> (B, C, H, W, K). A residual stack of gated 3x3 convolutions, unmasked."""

    def __init__(self, frame_shape, levels: int, cfg: "VPNConfig"):
        super().__init__()
        self.shape, self.levels = tuple(frame_shape), levels
        F_ = cfg.channels
        self.first = nn.Conv2d(cfg.lstm_channels, F_, 1)
        self.convs = nn.ModuleList(nn.Conv2d(F_, 2 * F_, 3, padding=1) for _ in range(cfg.n_layers))
        self.head = softmax_head(F_, cfg.head_channels, self.shape[0], levels)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = self.first(s)  # (B, F, H, W)
        for conv in self.convs:
            h = h + gate(conv(h))  # (B, F, H, W): h + tanh(W_f * h) . sigmoid(W_g * h)
        return torch.log_softmax(categorical_logits(self.head(h), self.shape[0], self.levels), dim=-1)  # (B, C, H, W, K)


# ------------------------------------------------------------------------------ the model
def context_inputs(enc: torch.Tensor) -> torch.Tensor:
    """The ConvLSTM's inputs over time from the encodings of every frame, enc (B, T, F_e, H, W):
    [0, enc(x_0), ..., enc(x_{T-2})], (B, T, F_e, H, W). The step of frame t reads frame t-1, so s_t
    depends on frames < t only: the one-frame shift (the video analogue of a transformer's right shift).
    VPN.context_maps computes the same without encoding the last frame (no frame reads it)."""
    return torch.cat([torch.zeros_like(enc[:, :1]), enc[:, :-1]], dim=1)  # (B, T, F_e, H, W)


@dataclass
class VPNConfig:
    shape: tuple = (10, 1, 32, 32)  # (T, C, H, W)
    levels: int = 256
    spatial: bool = True  # False: pixels of a frame independent given the past (the paper's baseline)
    channels: int = 32  # F, the decoder's feature channels (rounded up to a multiple of C)
    n_layers: int = 4  # decoder layers (gated; the first reads the frame)
    kernel: int = 3  # k of the decoder's later layers
    first_kernel: int = 5  # k of its first layer
    head_channels: int = 64  # width of the 1x1 output layer (rounded up to a multiple of C)
    encoder_channels: int = 32  # F_e
    encoder_layers: int = 3  # dilations 1, 2, ... after a first 3x3 convolution
    lstm_channels: int = 32  # F_s, the ConvLSTM's state map
    lstm_kernel: int = 3
    input: str = "ordinal"  # how values are read: "ordinal" (pixels) or "embedding" (codebook indices)
    embed_dim: int = 8  # embedding size per channel when input="embedding"


class VPN(VideoARModel):
    """Video Pixel Network: frame encoder, ConvLSTM over time, Gated PixelCNN decoder per frame."""

    frames_so_far = True  # frame t reads frames <= t: the naive sampler feeds the frames so far

    def __init__(self, shape=(10, 1, 32, 32), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = VPNConfig(shape=self.shape, levels=self.levels, **kwargs)
        T, C, H, W = self.shape
        for name in ("kernel", "first_kernel", "lstm_kernel"):
            k = getattr(cfg, name)
            if k < 3 or k % 2 != 1:
                raise ValueError(f"{name} must be odd and at least 3, got {k}")
        for name in ("n_layers", "encoder_layers", "channels", "head_channels", "encoder_channels", "lstm_channels"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)!r}")
        cfg.spatial = bool(cfg.spatial)
        cfg.channels = -(-cfg.channels // C) * C  # C channel groups (the decoder's colour masks)
        cfg.head_channels = -(-cfg.head_channels // C) * C
        self.config = cfg
        self.inputs = ValueInput(self.levels, C, cfg.input, cfg.embed_dim)  # (B, C, H, W) -> (B, C_in, H, W)
        self.encoder = FrameEncoder(self.inputs.out_channels, cfg.encoder_channels, cfg.encoder_layers)
        self.lstm = ConvLSTMCell(cfg.encoder_channels, cfg.lstm_channels, cfg.lstm_kernel)
        if cfg.spatial:
            self.decoder = FrameDecoder((C, H, W), self.levels, self.inputs.out_channels, cfg)
        else:
            self.decoder = IndependentDecoder((C, H, W), self.levels, cfg)

    def scale(self, frames: torch.Tensor) -> torch.Tensor:
        """Integer frames (N, C, H, W) -> input features (N, C_in, H, W) (armini.nn.inputs)."""
        return self.inputs(frames, self.encoder.first.weight.dtype)

    def lstm_step(self, previous, state, n: int):
        """One step of the ConvLSTM over time: the previous frames (n, C, H, W), or None before the first
        frame (a zero input), and the state (s, c) or None -> the new state (s_t, c_t), each (n, F_s, H, W)."""
        if previous is None:
            w = self.encoder.first.weight
            u = w.new_zeros(n, self.config.encoder_channels, *self.shape[2:])  # enc(x_{-1}) = 0
            return self.lstm(u, None)
        return self.lstm(self.encoder(self.scale(previous)), state)

    def context_maps(self, x: torch.Tensor) -> torch.Tensor:
        """s_t for every frame t of x (B, T', C, H, W): (B, T', F_s, H, W), s_t read from frames < t only."""
        B, T = x.shape[:2]
        H, W = x.shape[-2:]
        enc = None
        if T > 1:  # every frame but the last is some later frame's previous frame: encode them at once
            enc = self.encoder(self.scale(x[:, :-1].flatten(0, 1))).view(B, T - 1, -1, H, W)  # (B, T'-1, F_e, H, W)
        u = x.new_zeros((B, self.config.encoder_channels, H, W), dtype=self.encoder.first.weight.dtype)
        state, maps = None, []
        for t in range(T):
            state = self.lstm(u if t == 0 else enc[:, t - 1], state)  # (s_t, c_t) from enc(x_{t-1})
            maps.append(state[0])
        return torch.stack(maps, dim=1)  # (B, T', F_s, H, W)

    def frame_logprobs(self, frames: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The decoder: frames (N, C, H, W) with their maps s (N, F_s, H, W) -> (N, C, H, W, K)."""
        if not self.config.spatial:
            return self.decoder(s)  # the frame itself is never read
        return self.decoder(self.scale(frames), self.decoder.conditions(s))

    def conditionals(self, x, y=None):
        B, T = x.shape[:2]  # T' <= T frames (the naive sampler hands over the frames so far)
        s = self.context_maps(x)  # (B, T', F_s, H, W)
        lp = self.frame_logprobs(x.flatten(0, 1), s.flatten(0, 1))  # (B*T', C, H, W, K)
        return lp.view(B, T, *lp.shape[1:])  # (B, T', C, H, W, K)

    def sampling_steps(self, order=None) -> list:
        """Raster order frame by frame; without spatial dependencies one step per frame (its pixels are
        independent given the past, so they are drawn together)."""
        if self.config.spatial or order is not None:
            return super().sampling_steps(order)
        return list(self.generation_order().split(self.frame_dims))  # T groups of C*H*W

    # ------------------------------------------------------------ fast sampling
    def init_cache(self, x, y=None):
        return VPNCache(self, x)

    def conditional_logprobs(self, x, index, y=None, cache=None):
        if cache is None:
            return super().conditional_logprobs(x, index, y)  # the naive sampler
        return cache.conditional_logprobs(x, index)  # (n, S, K)

    def frame_strip(self, cache, frame, conds, i, j0, j1):
        """The decoder's log-probabilities (n, C, 1, P, K) at positions (i, j0..j1-1) of one frame (n, C, H, W)
        from the sampling cache (armini.sampling_cache.ConvCache), conds = decoder.conditions(s_t).

        When row i starts, the vertical stack of the whole row is computed (it reads rows < i, all known)
        and its links to the horizontal stack are kept; then each pixel runs the horizontal stack and the
        head on cached windows of row i (as Gated PixelCNN's cached sampler does)."""
        dec = self.decoder
        if cache.state.get("row") != i:
            v = self.scale(frame[:, :, max(i - 1, 0):max(i, 1), :])  # row i of down_shift(frame): row i-1,
            if i == 0:
                v = torch.zeros_like(v)  # or zeros for the first row
            links = []
            with cache.at(dec, i, 0):
                for layer, (cv, ch) in zip(dec.layers, conds):
                    v, link = layer.vertical(v, (cv[:, :, i:i + 1], ch[:, :, i:i + 1]))  # (n, F, 1, W), (n, 2F, 1, W)
                    links.append(link)
            cache.state.update(row=i, links=links)
        h, skip = self.scale(frame[:, :, i:i + 1, j0:j1]), None  # (n, C_in, 1, P)
        with cache.at(dec, i, j0):
            for layer, link in zip(dec.layers, cache.state["links"]):
                h, sk = layer.horizontal(h, link[..., j0:j1])  # (n, F, 1, P)
                skip = sk if skip is None else skip + sk
            return dec.logprobs(skip)  # (n, C, 1, P, K)

    def refresh_frame(self, cache, frame, conds, i, j0, j1):
        """After pixels (i, j0..j1-1) were drawn only the first horizontal convolution's cache, which holds
        the raw frame, is out of date (every feature at a pixel ignores its last-drawn value, mask A)."""
        cache.write(self.decoder.layers[0].h_conv, self.scale(frame[:, :, i:i + 1, j0:j1]), i, j0)


class VPNCache:
    """The cached sampler of a VPN: conditional_logprobs(x, index) for the next step of the base loop.

    Frame by frame: when frame t starts, the ConvLSTM takes one step from its kept state on the previous
    frame (complete by then; the naive sampler reruns it over every frame) and the decoder's
    conditioning terms V * s_t are computed once. Within the frame, a RasterConvSampler runs the decoder
    pixel by pixel on cached rows; without spatial dependencies the whole frame is one step.

    Given frames (sample(context=...)) cost one encoder pass and one LSTM step each: the loop only tells
    the cache of their steps (`given_step`), and the decoder catches up on skipped positions only if a later
    position of the same frame is drawn (a frame given in part)."""

    def __init__(self, model: VPN, x: torch.Tensor):
        self.model = model
        self.state, self.lstm_frame = None, -1  # (s_t, c_t) and the frame t it was computed for
        self.decoded = -1  # the frame whose decoder is set up (pixels or logp)
        self.pixels, self.logp = None, None
        self.visited, self.skipped = -1, []  # the frame of the last step, and its given positions not computed

    def _visit(self, index: torch.Tensor) -> int:
        """The frame of this step; the sampler must go frame by frame (steps of one frame, then the next)."""
        t = int(index[0]) // self.model.frame_dims
        if t not in (self.visited, self.visited + 1):
            raise ValueError(f"the cached sampler goes frame by frame: asked for frame {t} after frame "
                             f"{self.visited}; sample with cached=False for other orders")
        if t != self.visited:
            self.visited, self.skipped = t, []
        return t

    def given_step(self, index: torch.Tensor):
        """A step whose dimensions are all given: nothing to compute now (see the class docstring)."""
        self._visit(index)
        self.skipped.append(index)

    def start_frame(self, x: torch.Tensor, t: int):
        """s_t (the LSTM catches up over the frames before t) and the decoder of frame t."""
        m = self.model
        while self.lstm_frame < t:  # one step per frame; frames given whole were skipped, read them now
            u = self.lstm_frame + 1
            previous = None if u == 0 else x[:, u - 1]  # (n, C, H, W), complete now
            self.state = m.lstm_step(previous, self.state, x.shape[0])  # (s_u, c_u)
            self.lstm_frame = u
        s = self.state[0]  # (n, F_s, H, W)
        if m.config.spatial:
            conds = m.decoder.conditions(s)
            self.pixels = RasterConvSampler(m.decoder, x[:, t], conds, m.frame_strip, m.refresh_frame)
        else:
            self.logp = m.decoder(s).flatten(1, -2)  # (n, C*H*W, K): the whole frame, one step
        self.decoded = t

    def _logprobs(self, x: torch.Tensor, index: torch.Tensor, t: int) -> torch.Tensor:
        local = index - t * self.model.frame_dims  # (S,) positions within frame t
        if not self.model.config.spatial:
            return self.logp[:, local]  # (n, S, K)
        return self.pixels.conditional_logprobs(x[:, t], local)  # (n, 1, K)

    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t = self._visit(index)
        if t != self.decoded:
            self.start_frame(x, t)
            for given in self.skipped:  # positions of this frame given before this step: catch up
                self._logprobs(x, given, t)
        self.skipped = []
        return self._logprobs(x, index, t)
