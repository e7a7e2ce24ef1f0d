"""Shared layers: masked convolutions, (later) causal attention and quantisers."""
from .masked import MaskedConv2d, MaskedLinear, causal_mask, channel_groups

__all__ = ["MaskedConv2d", "MaskedLinear", "causal_mask", "channel_groups"]
