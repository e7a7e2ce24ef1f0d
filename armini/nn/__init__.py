"""Shared layers: masked and shifted convolutions, the gated resnet, the softmax head, causal
attention, the colour palette and (as the module armini.nn.dmol) the discretised logistic mixture.

Modules imported by name (one idea each): armini.nn.locally_masked (LMConv's per-location masks),
armini.nn.unet (ARDM's U-Net), armini.nn.quantize (VQ, EMA, FSQ, residual VQ: the quantisers of
Parts III-V), armini.nn.discriminator (VQGAN's patch discriminator, hinge losses, adaptive weight),
armini.nn.perceptual (a perceptual loss on the course classifier's features)."""
from . import dmol
from .attention import CausalSelfAttention, KVCache
from .gated import GatedResnet, concat_elu
from .heads import categorical_logits, softmax_head
from .masked import (MaskedConv2d, MaskedLinear, MaskedRowConv, causal_mask, channel_groups, current_tap_mask,
                     sequence_mask)
from .palette import Palette
from .shifted import (DownRightShiftedConv2d, DownRightShiftedConvTranspose2d, DownShiftedConv2d,
                      DownShiftedConvTranspose2d, down_shift, right_shift)

__all__ = [
    # masked.py
    "MaskedConv2d", "MaskedLinear", "MaskedRowConv", "causal_mask", "channel_groups", "current_tap_mask",
    "sequence_mask",
    # shifted.py
    "DownShiftedConv2d", "DownRightShiftedConv2d", "DownShiftedConvTranspose2d", "DownRightShiftedConvTranspose2d",
    "down_shift", "right_shift",
    # gated.py
    "GatedResnet", "concat_elu",
    # heads.py
    "softmax_head", "categorical_logits",
    # attention.py
    "CausalSelfAttention", "KVCache",
    # palette.py
    "Palette",
    # dmol.py, as a module
    "dmol",
]
