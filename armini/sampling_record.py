"""A sampling record: what one run of `model.sample` did, step by step, with nothing drawn.

The sampling loop calls back after every step with the dimensions it filled and the
distributions it drew them from (armini.models.base.SampleStep). A record keeps exactly that,
per step, as flat positions into x.flatten(1), so it serves any order (raster, Hilbert,
random), several dimensions per step (order-agnostic and scale-wise models) and any shape:

    rec = SamplingRecord.run(model, n=4, generator=torch.Generator().manual_seed(0))
    rec.steps                 # how many steps the sampler took
    rec.positions[t]          # (S,) flat indices filled at step t
    rec.probs[t]              # (n, S, K) the distributions they were drawn from
    rec.partial(t)            # (n, *shape) the images after step t, as the sampler held them

The partial image at step t is not stored: it is replayed from the values each step wrote
(`values[t]`, (n, S)), starting from the observed dimensions (step_of = -1, known from the
start) and zeros elsewhere (what the sampler holds there). `step_of` is the step at which each
dimension was first filled. Most samplers fill a dimension once, so the replay is the final
image with every dimension filled after step t set to 0; a model that fills a dimension twice
(depth upscaling: a coarse value first, the exact one later) shows each value while it held.
`armini.viz.SamplingScrubber` draws a record; tests and lessons can read one directly.

Legend: n images, D dimensions of one image, S dimensions filled in one step, K levels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SamplingRecord", "flat_positions"]


def flat_positions(index: torch.Tensor, shape) -> torch.Tensor:
    """The dimensions a step filled as flat indices into x.flatten(1): (S,) long.

    index: (S,) flat indices already, or (S, len(shape)) coordinates such as (c, i, j) rows."""
    index = index.detach().cpu().long()
    if index.dim() == 1:
        return index
    strides = torch.tensor([int(torch.tensor(shape[k + 1:]).prod()) for k in range(len(shape))])
    return (index * strides).sum(1)  # (S,) e.g. (c*H + i)*W + j for (C, H, W)


@dataclass
class SamplingRecord:
    """The steps of one sampling run (see the module docstring)."""

    shape: tuple  # of one image, e.g. (C, H, W)
    final: torch.Tensor  # (n, *shape) the sampled images
    step_of: torch.Tensor  # (n, D) the step that first filled each dimension, -1 if observed
    positions: list = field(default_factory=list)  # per step: (S,) flat indices
    probs: list = field(default_factory=list)  # per step: (n, S, K) float32
    values: list = field(default_factory=list)  # per step: (n, S) the values written there

    @classmethod
    def run(cls, model, n: int = 1, *, callback=None, **sample_kwargs) -> "SamplingRecord":
        """Sample n images with `model.sample(n, **sample_kwargs)` and record every step.

        callback, if given, is also called with every SampleStep (e.g. to check or log it)."""
        shape, n = tuple(model.shape), int(n)
        D = int(torch.tensor(shape).prod())
        positions, probs, values = [], [], []
        step_of = torch.full((n, D), -1, dtype=torch.long)

        def record(step):
            where = flat_positions(step.index, shape)  # (S,)
            positions.append(where)
            probs.append(step.probs.detach().float().cpu().clone())  # (n, S, K)
            values.append(step.x.detach().reshape(n, D)[:, where.to(step.x.device)].cpu().clone())  # (n, S)
            first = step_of[:, where] < 0  # (n, S) not filled before (a model may fill a dimension twice)
            step_of[:, where] = torch.where(first, step.step, step_of[:, where])
            if callback is not None:
                callback(step)

        final = model.sample(n, callback=record, **sample_kwargs).cpu()  # (n, *shape)
        observed = sample_kwargs.get("observed")
        if sample_kwargs.get("context") is not None:  # a video's given first frames (VideoARModel.sample)
            observed = model.context_mask(model.check_context(sample_kwargs["context"], n).shape[1])
        if observed is not None:  # observed dimensions were known from the start
            given = torch.as_tensor(observed, dtype=torch.bool).cpu().expand(final.shape).reshape(n, D)
            step_of[given] = -1
        return cls(shape, final, step_of, positions, probs, values)

    @property
    def steps(self) -> int:
        """Number of sampling steps recorded."""
        return len(self.positions)

    def check_step(self, t: int) -> int:
        if not 0 <= t < self.steps:
            raise IndexError(f"step {t} is outside 0..{self.steps - 1}")
        return t

    def filled_by(self, t: int) -> torch.Tensor:
        """(n, *shape) bool: True where a dimension holds its value after step t (observed ones included)."""
        return (self.step_of <= t).view(self.final.shape)

    def partial(self, t: int) -> torch.Tensor:
        """The images after step t, (n, *shape): dimensions filled later hold 0, as in the sampler."""
        self.check_step(t)
        if not self.values:  # a record built by hand, without the values each step wrote
            return torch.where(self.filled_by(t), self.final, torch.zeros_like(self.final))
        observed = (self.step_of < 0).view(self.final.shape)
        canvas = torch.where(observed, self.final, torch.zeros_like(self.final)).flatten(1)  # (n, D)
        for s in range(t + 1):  # replay the writes: a dimension filled twice shows its latest value
            canvas[:, self.positions[s]] = self.values[s].to(canvas.dtype)
        return canvas.view(self.final.shape)

    def coords(self, t: int) -> list:
        """The dimensions filled at step t as coordinate tuples, e.g. [(c, i, j), ...]."""
        where = torch.unravel_index(self.positions[self.check_step(t)], self.shape)
        return [tuple(int(v) for v in point) for point in zip(*where)]

    def value(self, t: int, image: int = 0, k: int = 0) -> int:
        """The value given to the k-th dimension filled at step t in image `image`."""
        t = self.check_step(t)
        if not self.values:
            return int(self.final[image].flatten()[self.positions[t][k]])
        return int(self.values[t][image, k])

    def observed(self, t: int, image: int = 0, k: int = 0) -> bool:
        """Whether that dimension was given (observed) rather than sampled."""
        return bool(self.step_of[image, self.positions[self.check_step(t)][k]] < 0)
