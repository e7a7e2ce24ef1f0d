"""Frame prediction with a complementary mask, and scheduled sampling against exposure bias (lesson 17).

A next-frame predictor models a video frame by frame, each frame from the frames before it, with
the pixels of a frame independent given the past:

    p(x) = prod_t prod_{c, i, j} p(x_t[c, i, j] | x_<t)

so it is an exact likelihood model (bits/dim as every model in armini) that fills a whole frame in
one step. The network, per frame t (shapes for one frame; `step`):

    e    = enc(x_{t-1})                          (B, F, H, W) and, stride 2, (B, F, H/2, W/2)
    (s, c) = ConvLSTM(e at H/2, (s, c))            (B, F_s, H/2, W/2): the memory of every frame < t
    d    = dec(upsample(s), e)                     (B, F, H, W)
    a, logits = heads(d)                           mask logit (B, C, H, W), logits (B, C, H, W, K)

The **complementary mask** (the seed survey: a static/variable-pixel mask). Most pixels of a
Moving MNIST frame do not change from one frame to the next. The model predicts, per pixel, the
probability m = sigmoid(a) that the pixel is static, a copy of the previous frame's pixel, and a
distribution p_gen over the K values for a pixel that changes; the two are blended by the mask:

    p(x_t[c, i, j] = v) = m [v = x_{t-1}[c, i, j]] + (1 - m) p_gen(v)                 (a mixture)

so the mean prediction is the familiar blend  m * x_{t-1} + (1 - m) * E_gen[v]. With m = 1 the
model copies the previous pixel; with m = 0 it generates a new one. Frame 0 has no previous frame:
its "previous frame" is a black one (all zeros), as for the ConvLSTM input (a blank frame).

**Teacher forcing** trains every p(x_t | x_<t) on the true previous frames: the likelihood itself
(model.loss). At test time the model must continue from its own predictions, frames it never saw
in training, and its errors compound (**exposure bias**). **Scheduled sampling** (Bengio, Vinyals,
Jaitly & Shazeer, 2015) flips a coin for every frame fed during training: with probability eps_i
the true previous frame, otherwise the model's own prediction of it; eps_i falls during training
(`teacher_forcing_prob`, the paper's three decays), so training moves from teacher forcing towards
the conditions of a rollout. As in PredRNN's reference, one coin per (video, frame), and the
first `context` frames are always the true ones (they are given at test time too).

The model's own prediction of a frame (`predict`) is its **rounded mean** per pixel (the PSNR-
optimal point estimate among the K levels, and deterministic); `how="sample"` draws every pixel
from its distribution instead (independent per pixel: speckled frames). As in Bengio et al. no
gradient flows through the prediction that is fed back (it is a choice of input, `.detach()`).

Deviations: the predictor is small (one stride-2 encoder level, one ConvLSTM layer; PredRNN stacks
four spatiotemporal LSTMs); its output is a K-way categorical per pixel (a likelihood, not the MSE
of most frame predictors), and the copy branch of the mask is part of that likelihood.

Legend: B batch, T frames, C image channels, H, W height and width, K levels, F features, F_s LSTM
channels, S predicted (future) frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.convlstm import ConvLSTMCell
from ..nn.inputs import ValueInput
from .base import VideoARModel

# ------------------------------------------------------------------------------ the schedule
SCHEDULES = ("linear", "exponential", "inverse_sigmoid")


def teacher_forcing_prob(i, kind: str = "linear", k: float = 1.0, c: float = 1e-3, epsilon: float = 0.0) -> float:
    """eps_i, the probability of feeding the true previous frame at training step i (Bengio et al.
    2015, section 2.4; the probability of feeding the model's own prediction is 1 - eps_i):

        linear:           eps_i = max(epsilon, k - c i)      (k = 1: start with pure teacher forcing)
        exponential:      eps_i = k^i                        (k < 1)
        inverse_sigmoid:  eps_i = k / (k + exp(i / k))       (k >= 1)

    c and epsilon are used by the linear decay only."""
    if kind == "linear":
        return max(epsilon, k - c * i)
    if kind == "exponential":
        return k ** i
    if kind == "inverse_sigmoid":
        return k / (k + math.exp(i / k))
    raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")


def schedule_params(kind: str, steps: int) -> dict:
    """Settings of teacher_forcing_prob(i, kind, **settings) that make eps_i fall from about 1 to 0.5
    at step steps / 2 (half the fed frames are the model's own by the middle of training):

        linear:           k = 1, c = 1 / steps, epsilon = 0   (0 at the last step)
        exponential:      k = 0.5^(2 / steps)                 (0.25 at the last step)
        inverse_sigmoid:  k with k ln k = steps / 2           (k >= 1; k / (k + 1) at step 0)"""
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be a whole number of training steps >= 2, got {steps!r}")
    if kind == "linear":
        return {"k": 1.0, "c": 1.0 / steps, "epsilon": 0.0}
    if kind == "exponential":
        return {"k": 0.5 ** (2.0 / steps)}
    if kind == "inverse_sigmoid":
        lo, hi = 1.0, float(steps)  # k ln k is increasing for k >= 1: bisection
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mid * math.log(mid) < steps / 2 else (lo, mid)
        return {"k": (lo + hi) / 2}
    raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")


# ------------------------------------------------------------------------------ the complementary mask
def complementary_blend(mask_logit: torch.Tensor, gen_logp: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """log p(x_t = v) = log[ m [v = previous] + (1 - m) p_gen(v) ],  m = sigmoid(mask_logit).

    mask_logit (B, C, H, W); gen_logp (B, C, H, W, K) log-probabilities of a new value; previous
    (B, C, H, W) the previous frame's integers -> (B, C, H, W, K) log-probabilities (mask 1 -> copy)."""
    K = gen_logp.shape[-1]
    is_previous = F.one_hot(previous, K).bool()  # (B, C, H, W, K): [v = previous]
    copy_logp = torch.zeros_like(gen_logp).masked_fill(~is_previous, float("-inf"))  # log [v = previous]
    log_m, log_not_m = F.logsigmoid(mask_logit)[..., None], F.logsigmoid(-mask_logit)[..., None]  # log m, log(1 - m)
    return torch.logaddexp(log_m + copy_logp, log_not_m + gen_logp)  # a mixture, in log space


def mean_value(logp: torch.Tensor) -> torch.Tensor:
    """E[v] under log-probabilities (..., K) -> (...) floats in [0, K-1]."""
    values = torch.arange(logp.shape[-1], device=logp.device, dtype=logp.dtype)
    return (logp.exp() * values).sum(-1)


def predict(logp: torch.Tensor, how: str = "mean", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The model's own frame from its distribution (B, C, H, W, K) -> integers (B, C, H, W), no gradient.

    how="mean": the rounded mean per pixel (deterministic); "sample": each pixel drawn from its distribution."""
    logp = logp.detach()
    if how == "mean":
        return mean_value(logp).round().long().clamp(0, logp.shape[-1] - 1)
    if how == "sample":
        flat = logp.exp().flatten(0, -2)  # (B*C*H*W, K)
        return torch.multinomial(flat, 1, generator=generator).view(logp.shape[:-1])
    raise ValueError(f"how must be 'mean' (the rounded mean) or 'sample' (a draw per pixel), got {how!r}")


# ------------------------------------------------------------------------------ the model
@dataclass
class FramePredictorConfig:
    shape: tuple = (16, 1, 32, 32)  # (T, C, H, W)
    levels: int = 16
    channels: int = 32  # F, encoder/decoder features
    lstm_channels: int = 32  # F_s, the ConvLSTM's state map (at H/2 x W/2)
    kernel: int = 3  # of the ConvLSTM
    mask: bool = True  # the complementary mask; False: every pixel from p_gen alone (m = 0)


class FramePredictor(VideoARModel):
    """Next-frame predictor: a conv encoder, a ConvLSTM over time at half resolution, a conv decoder
    with a skip from the encoder, and the complementary mask blending a copy of the previous frame with
    a K-way distribution per pixel. `step` predicts one frame; `conditionals` is teacher forcing."""

    frames_so_far = True  # frame t reads frames < t: the naive sampler may feed the frames so far

    def __init__(self, shape=(16, 1, 32, 32), levels: int = 16, **kwargs):
        super().__init__(shape, levels)
        cfg = FramePredictorConfig(shape=self.shape, levels=self.levels, **kwargs)
        for name in ("channels", "lstm_channels"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)!r}")
        cfg.mask = bool(cfg.mask)
        self.config = cfg
        T, C, H, W = self.shape
        F_, F_s = cfg.channels, cfg.lstm_channels
        self.inputs = ValueInput(self.levels, C)  # integers -> [-1, 1]
        self.enc_full = nn.Conv2d(C, F_, 3, padding=1)  # (B, F, H, W)
        self.enc_half = nn.Conv2d(F_, F_, 3, stride=2, padding=1)  # (B, F, ceil(H/2), ceil(W/2))
        self.lstm = ConvLSTMCell(F_, F_s, cfg.kernel)
        self.dec = nn.Conv2d(F_s + F_, F_, 3, padding=1)  # upsampled state + the encoder's skip
        self.head = nn.Conv2d(F_, C * (self.levels + 1), 1)  # per channel: K logits and one mask logit

    def blank_frame(self, n: int) -> torch.Tensor:
        """The "previous frame" of frame 0: a black frame, (n, C, H, W) zeros."""
        return torch.zeros((n,) + tuple(self.shape[1:]), dtype=torch.long, device=self.model_device)

    def step(self, previous: torch.Tensor, state=None):
        """One frame: the previous frame fed (B, C, H, W) integers and the ConvLSTM state (None at the
        start) -> (log p(x_t) (B, C, H, W, K), the new state). Reads nothing but `previous` and `state`."""
        B, C, H, W = previous.shape
        K = self.levels
        e_full = F.relu(self.enc_full(self.inputs(previous, self.enc_full.weight.dtype)))  # (B, F, H, W)
        e_half = F.relu(self.enc_half(e_full))  # (B, F, H/2, W/2)
        state = self.lstm(e_half, state)  # (s_t, c_t), each (B, F_s, H/2, W/2)
        s = F.interpolate(state[0], size=(H, W), mode="nearest")  # (B, F_s, H, W)
        d = F.relu(self.dec(torch.cat([s, e_full], dim=1)))  # (B, F, H, W)
        out = self.head(d).view(B, C, K + 1, H, W).permute(0, 1, 3, 4, 2)  # (B, C, H, W, K+1)
        gen_logp = torch.log_softmax(out[..., :K], dim=-1)  # (B, C, H, W, K): p_gen
        if not self.config.mask:
            return gen_logp, state
        return complementary_blend(out[..., K], gen_logp, previous), state  # (B, C, H, W, K)

    def conditionals(self, x, y=None):
        """Teacher forcing: every frame from the true frames before it, (B, T', C, H, W, K)."""
        B, T = x.shape[:2]
        return scheduled_pass(self, x, torch.ones(B, max(T - 1, 0), dtype=torch.bool, device=x.device))

    def sampling_steps(self, order=None) -> list:
        """One step per frame (its pixels are independent given the past frames)."""
        if order is not None:
            return super().sampling_steps(order)
        return list(self.generation_order().split(self.frame_dims))  # T groups of C*H*W


# ------------------------------------------------------------------------------ training passes
def scheduled_pass(model: FramePredictor, x: torch.Tensor, use_truth: torch.Tensor) -> torch.Tensor:
    """Run the model through the videos x (B, T, C, H, W), frame by frame, feeding after frame t the
    true frame x_t where use_truth[:, t] (B, T-1) is True and the model's own prediction of it
    (`predict`, the rounded mean) where False -> log p of every frame (B, T, C, H, W, K).

    All True: teacher forcing (the model's likelihood). Frame t reads the fed frames < t only."""
    B, T = x.shape[:2]
    previous, state, logps = model.blank_frame(B), None, []  # frame -1 is black
    for t in range(T):
        logp, state = model.step(previous, state)  # p(x_t | the frames fed so far), (B, C, H, W, K)
        logps.append(logp)
        if t < T - 1:  # the frame fed next: the truth or the model's own guess (a coin per video)
            previous = torch.where(use_truth[:, t, None, None, None], x[:, t], predict(logp))
    return torch.stack(logps, dim=1)  # (B, T, C, H, W, K)


def coin_flips(batch: int, frames: int, p_truth: float, context: int = 1, generator=None,
               device=None) -> torch.Tensor:
    """use_truth (B, T-1) for scheduled_pass: True (feed the true frame) with probability p_truth, one
    coin per (video, frame) as in PredRNN's reference; always True for the first `context` frames."""
    u = torch.rand(batch, max(frames - 1, 0), generator=generator, device=device)  # (B, T-1) uniform [0, 1)
    use_truth = u < p_truth  # p_truth = 1: always (rand < 1); p_truth = 0: never
    use_truth[:, :context] = True  # the given frames are always the true ones
    return use_truth


def frame_bits(logp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean -log2 p(x) per dimension from log-probabilities (B, T, C, H, W, K) and integers (B, T, C, H, W)."""
    return -logp.gather(-1, x[..., None]).mean() / math.log(2)


def scheduled_sampling_loss(model: FramePredictor, x: torch.Tensor, p_truth: float, context: int = 1,
                            generator=None) -> torch.Tensor:
    """Bits/dim of the true frames x (B, T, C, H, W) when each fed frame after the context is the truth with
    probability p_truth, else the model's own prediction. p_truth = 1 is teacher forcing (= model.loss(x))."""
    use_truth = coin_flips(x.shape[0], x.shape[1], p_truth, context, generator, x.device)  # (B, T-1)
    return frame_bits(scheduled_pass(model, x, use_truth), x)


class ScheduledSampling:
    """A loss_fn for armini.train.fit: scheduled_sampling_loss with p_truth = teacher_forcing_prob(i, ...)
    at training step i. It counts its calls (fit calls it once per step; `start` for a resumed run) and
    keeps the probabilities used (`history`: (step, p_truth)). Coins come from torch's global RNG, which
    fit's checkpoints hold.

        loss_fn = ScheduledSampling("inverse_sigmoid", steps=600, context=5)
        fit(model, train, steps=600, loss_fn=loss_fn)"""

    def __init__(self, kind: str = "linear", steps: int = 1000, context: int = 1, start: int = 0, **params):
        self.kind, self.context, self.step = kind, int(context), int(start)
        self.params = {**schedule_params(kind, steps), **params}
        self.history = []

    def __call__(self, model, x, y=None):
        p_truth = teacher_forcing_prob(self.step, self.kind, **self.params)
        self.history.append((self.step, p_truth))
        self.step += 1
        return scheduled_sampling_loss(model, x, p_truth, self.context)

    def __repr__(self) -> str:
        return f"ScheduledSampling({self.kind!r}, {self.params}, context={self.context}, step={self.step})"


# ------------------------------------------------------------------------------ rollouts and their errors
@torch.no_grad()
def rollout(model: FramePredictor, context: torch.Tensor, steps: int, how: str = "mean",
            generator=None) -> torch.Tensor:
    """Continue the given frames context (B, k, C, H, W) by `steps` frames, each fed back as the next
    input: (B, S, C, H, W) integers. Reads the context and its own predictions only (any length S)."""
    B, k = context.shape[:2]
    if k < 1 or steps < 1:
        raise ValueError(f"a rollout needs at least one given frame and one step, got {k} frames and {steps} steps")
    previous, state = model.blank_frame(B), None
    for t in range(k):  # read the given frames: the state after frame k-1
        logp, state = model.step(previous, state)
        previous = context[:, t]
    frames = []
    for _ in range(steps):
        logp, state = model.step(previous, state)  # p(next frame | given and predicted frames)
        previous = predict(logp, how, generator)  # (B, C, H, W): fed back
        frames.append(previous)
    return torch.stack(frames, dim=1)  # (B, S, C, H, W)


def frame_quality(predicted: torch.Tensor, truth: torch.Tensor, levels: int) -> dict:
    """PSNR (dB) and SSIM of every predicted frame against the truth, both (N, S, C, H, W) integers in
    [0, K): {"psnr": (N, S), "ssim": (N, S)}, images scaled to [0, 1] (torchmetrics; SSIM with its default
    11 x 11 Gaussian window; a perfect frame's PSNR is capped at 100 dB)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if predicted.shape != truth.shape:
        raise ValueError(f"predicted and true frames must have the same shape, got {tuple(predicted.shape)} "
                         f"and {tuple(truth.shape)}")
    N, S = predicted.shape[:2]
    p01 = predicted.flatten(0, 1).float() / (levels - 1)  # (N*S, C, H, W) in [0, 1]
    t01 = truth.flatten(0, 1).float() / (levels - 1)
    psnr = peak_signal_noise_ratio(p01, t01, data_range=1.0, reduction="none", dim=(1, 2, 3))
    psnr = torch.nan_to_num(psnr, posinf=100.0).clamp(max=100.0)
    ssim = structural_similarity_index_measure(p01, t01, data_range=1.0, reduction="none")
    return {"psnr": psnr.view(N, S), "ssim": ssim.view(N, S)}
