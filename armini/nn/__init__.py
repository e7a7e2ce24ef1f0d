"""Shared layers: masked convolutions, (later) causal attention and quantisers."""
from .masked import MaskedConv2d, MaskedLinear, causal_mask, channel_groups, sequence_mask

__all__ = ["MaskedConv2d", "MaskedLinear", "causal_mask", "channel_groups", "sequence_mask"]
