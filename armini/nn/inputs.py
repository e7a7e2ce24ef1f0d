"""How a network reads integer inputs: by value kind.

Every AR model in armini reads integers in {0, ..., K-1}. What those integers *mean* decides
how to feed them to a network:

- **ordinal** values (pixel intensities): value 200 is close to 201, so the network reads the
  number itself, scaled to [-1, 1]:

      v = x * 2 / (K - 1) - 1                                       (one input channel per channel)

- **categorical** values (codebook indices of a VQ tokenizer, palette entries): index 200 has
  nothing to do with 201, so each value gets a learned vector (an embedding, as in a language
  model): v = E[x], E a (K, d) table, d input channels per image channel.

`ValueInput(levels, channels, kind)` does either and says how many channels it produces, so a
model written for pixels becomes a prior over token grids by changing one setting:

    PixelCNN(shape=(1, 7, 7), levels=512, input="embedding")     # a prior over 7x7 codebook indices

The embedding's output keeps each image channel's features together (channel-major: the d
features of channel 0, then those of channel 1, ...), the contiguous channel groups that the
masked convolutions' colour masks expect (armini.nn.masked).

Legend: B batch, C image channels, H, W height and width, K levels, d embedding size.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ValueInput", "to_unit_range", "KINDS"]

KINDS = ("ordinal", "embedding")


def to_unit_range(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels {0, ..., K-1} -> evenly spaced values in [-1, 1] (keeps x's floating dtype)."""
    return x * (2.0 / (levels - 1)) - 1.0


class ValueInput(nn.Module):
    """Integer images (B, C, H, W) -> input features (B, C_in, H, W) for the first layer.

    kind="ordinal":   C_in = C, values scaled to [-1, 1] (no parameters)
    kind="embedding": C_in = C * dim, a learned dim-vector per value (one table per image channel)
    """

    def __init__(self, levels: int, channels: int, kind: str = "ordinal", dim: int = 16):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"input must be one of {KINDS} ('ordinal' for pixel values, 'embedding' for "
                             f"codebook indices), got {kind!r}")
        if kind == "embedding" and int(dim) < 1:
            raise ValueError(f"the embedding size must be at least 1, got {dim!r}")
        self.levels, self.channels, self.kind = int(levels), int(channels), kind
        self.out_channels = self.channels if kind == "ordinal" else self.channels * int(dim)
        if kind == "embedding":
            self.table = nn.Embedding(self.channels * self.levels, int(dim))  # one K-row table per channel
            nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x (B, C, H, W) integers -> (B, C_in, H, W); `dtype` is used by the ordinal kind (the
        dtype of the layer that reads it, so model.double() works); an embedding has its own."""
        if self.kind == "ordinal":
            return to_unit_range(x.to(dtype), self.levels)  # (B, C, H, W)
        B, C, H, W = x.shape
        rows = x + self.levels * torch.arange(C, device=x.device).view(1, C, 1, 1)  # channel c's table
        e = self.table(rows)  # (B, C, H, W, d)
        return e.permute(0, 1, 4, 2, 3).reshape(B, -1, H, W)  # (B, C*d, H, W), channel-major

    def extra_repr(self) -> str:
        return f"levels={self.levels}, channels={self.channels}, kind={self.kind!r}, out_channels={self.out_channels}"
