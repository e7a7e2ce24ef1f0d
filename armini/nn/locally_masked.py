"""Locally masked convolution (Jain, Abbeel & Pathak, 2020, "Locally Masked Convolution for
Autoregressive Models", sec. 3).

A PixelCNN's masked convolution uses ONE mask everywhere, so it can only follow the order that
mask encodes (raster). To follow any order sigma, every output location needs its own mask: a
tap of the k x k kernel at location p may read the neighbour q it covers iff q is generated
before p in the order,

    M[tap, p] = 1  iff  q = p + dilation * offset(tap) lies inside the image and rank[q] < rank[p]

and the centre tap (q = p) is 0 in the first layer (mask A: a pixel never sees itself) and 1 in
every later layer (mask B: after the first layer the centre's features only carry what came
before p). Taps that fall outside the image are 0 (the zero padding carries nothing; the model
feeds an all-ones input channel so the first layer can tell padding from a black pixel).

How, with one matrix product (im2col):

    cols = unfold(x)                         (B, C*k*k, L)   L = H*W locations, channel-major
    cols = cols * M                          M (k*k, L), the same for every channel and image
    out  = W @ cols + b                      W (Cout, C*k*k) -> (B, Cout, L) -> (B, Cout, H, W)

In raster order M is the same at every location (the PixelCNN mask, cut at the image border,
where the padding is zero anyway), so the layer equals `armini.nn.masked.MaskedConv2d`.

Masks depend only on the order (and the layer's kernel, dilation, mask type and the image size),
so they are built once per order and kept (`cached_local_mask`): training on 8 orders builds 8
masks per kind of layer, not one per batch.

Deviations from the reference code: an autograd implementation (the reference recomputes the
unfold in its backward pass to save memory); grayscale (one image channel) orders only: an RGB
pixel would also need the channel-group mask of MaskedConv2d at the centre tap.

Legend: B batch, C input channels, H, W height and width, L = H*W locations, k kernel size.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import orders


def local_mask(order: torch.Tensor, H: int, W: int, kernel_size: int = 3, dilation: int = 1,
               mask_type: str = "B") -> torch.Tensor:
    """The per-location mask of a k x k convolution that follows `order`: (k*k, H*W) float.

    order: (H*W,) flat pixel indices in the order they are generated (armini.orders).
    Column p is location p's mask (row-major, p = i*W + j); row t is tap t of the kernel, row-major
    over the k x k window, the layout F.unfold uses."""
    k, half = kernel_size, kernel_size // 2
    rank = orders.rank(order)  # (L,) the step at which each pixel is generated
    i, j = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)  # (L,) row, column of p
    offset = (torch.arange(k) - half) * dilation  # (k,) dilation-scaled offsets of the taps
    di, dj = offset.repeat_interleave(k), offset.repeat(k)  # (k*k,) tap offsets, row-major
    qi, qj = i + di[:, None], j + dj[:, None]  # (k*k, L) the neighbour q each tap reads
    inside = (qi >= 0) & (qi < H) & (qj >= 0) & (qj < W)  # taps on the padding read nothing
    rank_q = rank[qi.clamp(0, H - 1) * W + qj.clamp(0, W - 1)]  # (k*k, L)
    mask = inside & (rank_q < rank)  # visible iff q is generated strictly before p
    mask[k * k // 2] = mask_type == "B"  # the centre tap: 0 in mask A, 1 in mask B
    return mask.float()  # (k*k, L)


#: built masks, most recently used last: (order bytes, H, W, k, dilation, type, device) -> (k*k, L)
_MASKS: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
MAX_CACHED_MASKS = 256


def cached_local_mask(order: torch.Tensor, H: int, W: int, kernel_size: int, dilation: int, mask_type: str,
                      device=None) -> torch.Tensor:
    """local_mask(...) on `device`, built once per order and layer kind and kept (the masks of the
    MAX_CACHED_MASKS most recently used ones). Do not modify the tensor it returns: it is shared."""
    order = order.detach().cpu()
    key = (order.numpy().tobytes(), H, W, kernel_size, dilation, mask_type, str(torch.device(device or "cpu")))
    if key in _MASKS:
        _MASKS.move_to_end(key)
        return _MASKS[key]
    mask = local_mask(order, H, W, kernel_size, dilation, mask_type).to(device)
    _MASKS[key] = mask
    if len(_MASKS) > MAX_CACHED_MASKS:
        _MASKS.popitem(last=False)  # forget the least recently used
    return mask


class LocallyMaskedConv2d(nn.Conv2d):
    """A same-padded k x k convolution whose mask differs at every location, built from the
    generation order passed to forward: `conv(x, order)`. Weights and bias as nn.Conv2d's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 mask_type: str = "B", bias: bool = True):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' (first layer) or 'B' (later layers), got {mask_type!r}")
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd so the kernel has a centre, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"dilation must be at least 1, got {dilation}")
        super().__init__(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                         dilation=dilation, bias=bias)
        self.mask_type = mask_type

    def forward(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        k, d = self.kernel_size[0], self.dilation[0]
        mask = cached_local_mask(order, H, W, k, d, self.mask_type, x.device)  # (k*k, L)
        cols = F.unfold(x, k, dilation=d, padding=self.padding[0])  # (B, C*k*k, L)
        cols = (cols.view(B, C, k * k, H * W) * mask.to(x.dtype)).view(B, C * k * k, H * W)  # same mask per channel
        weight = self.weight.view(1, self.out_channels, C * k * k).expand(B, -1, -1)  # (B, Cout, C*k*k), no copy
        out = torch.bmm(weight, cols)  # (B, Cout, L); a batched product is faster than `@` broadcasting here
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.view(B, self.out_channels, H, W)  # (B, Cout, H, W)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_type={self.mask_type}"
