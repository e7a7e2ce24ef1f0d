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

The fast path, exact: a real order has few DISTINCT columns of M. An S-curve has two (the rows
run left to right or right to left), raster one, a spiral 14 to 16 (its sides, corners and turns
between rings). A tap outside the image reads zero padding, so its bit may be set to anything:
`mask_groups` sets it to match a pattern already found, which merges the border locations into
the interior ones. With G patterns m_g (k*k,) and each location's pattern g(p), the layer is G
ordinary convolutions, each kept at its own locations:

    out[:, :, p] = conv2d(x, W * m_g)[:, :, p]    for g = g(p)         (the same sums as above)

done as ONE conv2d with G*Cout output channels (the G masked copies of W stacked) and a gather.
It costs G convolutions' arithmetic on an optimised kernel, no k*k copy of the input: faster than
the unfold when G is small (the kernel is also cut to the rows and columns some pattern uses: an
S-curve never reads the row below, 2 x k). A random order has nearly one pattern per location:
above MAX_GROUPS patterns the layer takes the unfold path (inside `with unfold_only():` always, to
time the two against each other).

Deviations from the reference code: an autograd implementation (the reference recomputes the
unfold in its backward pass to save memory); grayscale (one image channel) orders only: an RGB
pixel would also need the channel-group mask of MaskedConv2d at the centre tap.

Legend: B batch, C input channels, H, W height and width, L = H*W locations, k kernel size.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import NamedTuple

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
    k = kernel_size
    rank = orders.rank(order)  # (L,) the step at which each pixel is generated
    q, inside = tap_neighbours(H, W, k, dilation)  # (k*k, L) the neighbour q each tap reads, and whether it exists
    mask = inside & (rank[q] < rank)  # visible iff q is generated strictly before p (padding reads nothing)
    mask[k * k // 2] = mask_type == "B"  # the centre tap: 0 in mask A, 1 in mask B
    return mask.float()  # (k*k, L)


def tap_neighbours(H: int, W: int, kernel_size: int = 3, dilation: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """For every tap t and location p: the flat index q of the pixel the tap reads (clamped into the image) and
    whether that pixel is inside the image (False: the tap reads zero padding). Two (k*k, L) tensors."""
    k, half = kernel_size, kernel_size // 2
    i, j = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)  # (L,) row, column of p
    offset = (torch.arange(k) - half) * dilation  # (k,) dilation-scaled offsets of the taps
    di, dj = offset.repeat_interleave(k), offset.repeat(k)  # (k*k,) tap offsets, row-major
    qi, qj = i + di[:, None], j + dj[:, None]  # (k*k, L)
    inside = (qi >= 0) & (qi < H) & (qj >= 0) & (qj < W)
    return qi.clamp(0, H - 1) * W + qj.clamp(0, W - 1), inside  # (k*k, L) long, (k*k, L) bool


#: built masks, most recently used last: (order bytes, H, W, k, dilation, type, device) -> ((k*k, L) mask,
#: its MaskGroups or None)
_MASKS: "OrderedDict[tuple, tuple]" = OrderedDict()
MAX_CACHED_MASKS = 256


def _cached(order: torch.Tensor, H: int, W: int, kernel_size: int, dilation: int, mask_type: str, device=None):
    """(local_mask(...), its mask_groups(...)) on `device`, built once per order and layer kind and kept."""
    order = order.detach().cpu()
    key = (order.numpy().tobytes(), H, W, kernel_size, dilation, mask_type, str(torch.device(device or "cpu")))
    if key in _MASKS:
        _MASKS.move_to_end(key)
        return _MASKS[key]
    mask = local_mask(order, H, W, kernel_size, dilation, mask_type)  # (k*k, L)
    _MASKS[key] = (mask.to(device), mask_groups(mask, tap_neighbours(H, W, kernel_size, dilation)[1], device=device))
    if len(_MASKS) > MAX_CACHED_MASKS:
        _MASKS.popitem(last=False)  # forget the least recently used
    return _MASKS[key]


def cached_local_mask(order: torch.Tensor, H: int, W: int, kernel_size: int, dilation: int, mask_type: str,
                      device=None) -> torch.Tensor:
    """local_mask(...) on `device`, built once per order and layer kind and kept (the masks of the
    MAX_CACHED_MASKS most recently used ones). Do not modify the tensor it returns: it is shared."""
    return _cached(order, H, W, kernel_size, dilation, mask_type, device)[0]


def cached_mask_groups(order: torch.Tensor, H: int, W: int, kernel_size: int, dilation: int, mask_type: str,
                       device=None) -> "MaskGroups | None":
    """mask_groups(...) of the layer's mask in `order`, built once (with cached_local_mask's) and kept."""
    return _cached(order, H, W, kernel_size, dilation, mask_type, device)[1]


#: above this many distinct mask patterns a layer takes the unfold path (a random order has ~one per location;
#: a spiral has 14 to 16 at 14x14, where G stacked convolutions cost more than the unfold)
MAX_GROUPS = 4


_UNFOLD_ONLY = False


@contextlib.contextmanager
def unfold_only():
    """Inside this block every LocallyMaskedConv2d takes the unfold path (the same numbers, to time the two)."""
    global _UNFOLD_ONLY
    before, _UNFOLD_ONLY = _UNFOLD_ONLY, True
    try:
        yield
    finally:
        _UNFOLD_ONLY = before


class MaskGroups(NamedTuple):
    """A per-location mask as G patterns: location p uses patterns[group[p]]."""
    patterns: torch.Tensor  # (G, kh, kw) float: each pattern, cut to `box`
    group: torch.Tensor  # (L,) long: the pattern of each location
    box: tuple  # (r0, r1, c0, c1): the rows and columns of the k x k kernel some pattern uses (and the centre)


def mask_groups(mask: torch.Tensor, inside: torch.Tensor, max_groups: int | None = None, device=None):
    """The distinct columns of a per-location mask, the bits of taps outside the image free: a MaskGroups, or
    None when there are more than max_groups (default MAX_GROUPS) patterns.

    mask, inside: (k*k, L) (local_mask's mask; tap_neighbours' inside). patterns[group[p]] equals mask[:, p]
    on every tap of p inside the image (the taps outside read zero padding, so their bits change nothing).
    Greedy: the locations with most taps inside go first, so the interior's patterns are found first and the
    border's join them. The patterns are cut to the rows and columns some pattern uses: an S-curve never
    reads the row below, so its kernel shrinks to 2 x k."""
    max_groups = MAX_GROUPS if max_groups is None else max_groups
    mask, inside = mask.bool().cpu(), inside.cpu()
    k = math.isqrt(mask.shape[0])
    patterns, group = [], torch.empty(mask.shape[1], dtype=torch.long)
    for p in inside.sum(0).argsort(descending=True, stable=True).tolist():  # interior first
        match = [g for g, m in enumerate(patterns) if torch.equal(m[inside[:, p]], mask[inside[:, p], p])]
        if not match:
            if len(patterns) == max_groups:
                return None
            patterns.append(mask[:, p] & inside[:, p])  # a new pattern, its padding taps 0
            match = [len(patterns) - 1]
        group[p] = match[0]
    patterns = torch.stack(patterns).view(-1, k, k)  # (G, k, k)
    used = patterns.any(0)  # (k, k)
    used[k // 2, k // 2] = True  # keep the centre, so the box's padding is never negative
    rows, cols = used.any(1).nonzero()[:, 0].tolist(), used.any(0).nonzero()[:, 0].tolist()
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    return MaskGroups(patterns[:, r0:r1 + 1, c0:c1 + 1].float().to(device), group.to(device), (r0, r1, c0, c1))


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
        groups = cached_mask_groups(order, H, W, k, d, self.mask_type, x.device)
        if groups is not None and not _UNFOLD_ONLY:
            return self.grouped_forward(x, groups)
        return self.unfold_forward(x, order)

    def grouped_forward(self, x: torch.Tensor, groups: MaskGroups) -> torch.Tensor:
        """The layer as G masked convolutions in one conv2d, each kept at its own locations. (B, Cout, H, W)"""
        B, _, H, W = x.shape
        G, kh, kw = groups.patterns.shape
        Cout, half, d = self.out_channels, self.kernel_size[0] // 2, self.dilation[0]
        r0, r1, c0, c1 = groups.box  # the kernel's rows r0..r1 and columns c0..c1 (the others are hidden everywhere)
        weight = self.weight[:, :, r0:r1 + 1, c0:c1 + 1]  # (Cout, C, kh, kw)
        weight = weight[None] * groups.patterns.to(x.dtype)[:, None, None]  # (G, Cout, C, kh, kw): W * m_g
        bias = self.bias.repeat(G) if self.bias is not None else None  # (G*Cout,)
        x = F.pad(x, (d * (half - c0), d * (c1 - half), d * (half - r0), d * (r1 - half)))  # zero padding, the box's
        out = F.conv2d(x, weight.flatten(0, 1), bias, dilation=d)  # (B, G*Cout, H, W): every pattern everywhere
        if G == 1:
            return out
        index = groups.group.view(1, 1, 1, H * W).expand(B, 1, Cout, H * W)  # (B, 1, Cout, L): g(p) at each p
        return out.view(B, G, Cout, H * W).gather(1, index).view(B, Cout, H, W)  # pattern g(p)'s output at p

    def unfold_forward(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """The layer as written in the module docstring: unfold, mask, one matrix product. (B, Cout, H, W)"""
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
