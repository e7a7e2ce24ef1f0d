"""Generation orders: in which order an autoregressive model visits the pixels of an image.

The chain rule holds for every order sigma of the D dimensions,

    p(x) = prod_t p(x_sigma(t) | x_sigma(<t)),

so "raster order" is a choice, not a law. An order here is a permutation of the H x W pixel
grid, a LongTensor of flat pixel indices p = i * W + j in the order they are generated:
`order[t]` is the pixel generated at step t. Channels stay in order within a pixel
(`dims_order` turns a pixel order into an order of all C*H*W dimensions, as flat indices into
x.flatten(1) of an image (C, H, W)).

    raster(H, W)       row by row, left to right                     0 1 2
                                                                     3 4 5
    s_curve(H, W)      rows alternate direction (boustrophedon)      0 1 2
                                                                     5 4 3
    spiral(H, W)       outside in, ring by ring, clockwise from the     0 1 2
                       top-left corner: the middle comes last           7 8 3
                       (completion of a hole around the middle)         6 5 4
    hilbert(H, W)      a generalised Hilbert curve: a space-filling curve for ANY H x W
                       (28 x 28 included), not only powers of two: neighbours in the order
                       are neighbours in the image
    symmetry(order, H, W, k)   the 8 symmetries of the square (k = 0..7): flips and transposes
    random_order(H, W, generator)     a uniformly random permutation (order-agnostic models)
    observed_first(observed, order)   the observed pixels first, then the rest (completion)
    rank(order)        the inverse permutation: rank[p] = the step at which pixel p is generated

Legend: H, W image height and width, C channels, D = C * H * W.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

__all__ = ["raster", "s_curve", "spiral", "hilbert", "symmetry", "SYMMETRIES", "NAMED", "named", "random_order",
           "observed_first", "rank", "dims_order", "unravel", "check_order"]


# ----------------------------------------------------------------------------- named orders


def raster(H: int, W: int) -> torch.Tensor:
    """Row by row, left to right: (H*W,) = 0, 1, ..., H*W - 1."""
    return torch.arange(H * W)


def s_curve(H: int, W: int) -> torch.Tensor:
    """Boustrophedon: even rows left to right, odd rows right to left. (H*W,)"""
    grid = torch.arange(H * W).view(H, W).clone()  # (H, W) flat index of each pixel
    grid[1::2] = grid[1::2].flip(1)  # odd rows reversed
    return grid.flatten()


def spiral(H: int, W: int) -> torch.Tensor:
    """Outside in: ring after ring, each clockwise from its top-left corner, so the pixels around the
    middle come last (the order for completing a hole around the middle). (H*W,)"""
    path = []
    top, bottom, left, right = 0, H - 1, 0, W - 1  # the ring still to visit
    while top <= bottom and left <= right:
        path += [(top, j) for j in range(left, right + 1)]  # top side, left to right
        path += [(i, right) for i in range(top + 1, bottom + 1)]  # right side, down
        if top < bottom:
            path += [(bottom, j) for j in range(right - 1, left - 1, -1)]  # bottom side, right to left
        if left < right:
            path += [(i, left) for i in range(bottom - 1, top, -1)]  # left side, up
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return torch.tensor([i * W + j for i, j in path], dtype=torch.long)


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> Iterator[tuple[int, int]]:
    """Generalised Hilbert curve over the rectangle spanned from corner (x, y) by the vectors
    a = (ax, ay) (the direction the curve travels, "major") and b = (bx, by) (the other side).

    The classic Hilbert curve splits a 2^n square into 4 quadrants. For any rectangle we split
    instead into 2 halves along a (when the rectangle is long: 2|a| > 3|b|) or into 3 pieces
    (a strip along b, the far block, a strip back), choosing the split so each piece's side
    along the direction of travel is even where possible: then every piece starts next to where
    the previous one ended. With an odd side somewhere, at most one step can be diagonal.
    (Cerveny's "gilbert" construction; the coordinates are x = column, y = row.)"""
    w, h = abs(ax + ay), abs(bx + by)  # side lengths along a and along b
    da, db = (_sign(ax), _sign(ay)), (_sign(bx), _sign(by))  # unit steps along a and b
    if h == 1:  # a single line along a
        for k in range(w):
            yield x + k * da[0], y + k * da[1]
        return
    if w == 1:  # a single line along b
        for k in range(h):
            yield x + k * db[0], y + k * db[1]
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2  # half vectors
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:  # long rectangle: two halves along a
        if w2 % 2 and w > 2:  # make the first half's length even
            ax2, ay2 = ax2 + da[0], ay2 + da[1]
        yield from _gilbert(x, y, ax2, ay2, bx, by)
        yield from _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
    else:  # three pieces: up along b, across the far side, back down
        if h2 % 2 and h > 2:  # make the first piece's height even
            bx2, by2 = bx2 + db[0], by2 + db[1]
        yield from _gilbert(x, y, bx2, by2, ax2, ay2)
        yield from _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
        yield from _gilbert(x + (ax - da[0]) + (bx2 - db[0]), y + (ay - da[1]) + (by2 - db[1]),
                            -bx2, -by2, -(ax - ax2), -(ay - ay2))


def hilbert(H: int, W: int) -> torch.Tensor:
    """A generalised Hilbert curve over H x W pixels, starting at the top-left pixel. (H*W,)"""
    if W >= H:  # travel along the longer side first
        points = _gilbert(0, 0, W, 0, 0, H)
    else:
        points = _gilbert(0, 0, 0, H, W, 0)
    return torch.tensor([row * W + col for col, row in points], dtype=torch.long)


#: the 8 symmetries of the square, as (transpose?, flip rows?, flip columns?)
SYMMETRIES = {
    "identity": (False, False, False),
    "flip-lr": (False, False, True),
    "flip-ud": (False, True, False),
    "rot180": (False, True, True),
    "transpose": (True, False, False),
    "transpose+flip-lr": (True, False, True),  # the flips act after the transpose
    "transpose+flip-ud": (True, True, False),
    "transpose+rot180": (True, True, True),  # the anti-diagonal reflection
}


def symmetry(base, H: int, W: int, k: int | str) -> torch.Tensor:
    """The order `base` seen through symmetry k of the square (0..7 or a name in SYMMETRIES). (H*W,)

    base: a function (H, W) -> order, e.g. armini.orders.hilbert. A transposed variant builds the
    base order on the W x H grid and swaps rows and columns, so it works for non-square images too."""
    name = list(SYMMETRIES)[k] if isinstance(k, int) and 0 <= k < len(SYMMETRIES) else k
    if not isinstance(name, str) or name not in SYMMETRIES:
        raise ValueError(f"symmetry must be 0..7 or one of {', '.join(SYMMETRIES)}; got {k!r}")
    transpose, flip_rows, flip_cols = SYMMETRIES[name]
    if transpose:
        p = base(W, H)  # pixels of a W x H grid: p = r * H + c
        i, j = p % H, p // H  # row i = its column c, column j = its row r
    else:
        p = base(H, W)
        i, j = p // W, p % W
    if flip_rows:
        i = H - 1 - i
    if flip_cols:
        j = W - 1 - j
    return i * W + j


NAMED = {"raster": raster, "s-curve": s_curve, "hilbert": hilbert, "spiral": spiral}


def named(name: str, H: int, W: int, k: int | str = 0) -> torch.Tensor:
    """A named order ("raster", "s-curve", "hilbert", "spiral") under symmetry k (default: as drawn above)."""
    if name not in NAMED:
        raise ValueError(f"unknown order {name!r}; named orders: {', '.join(NAMED)} (or pass a permutation)")
    return symmetry(NAMED[name], H, W, k)


def random_order(H: int, W: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A uniformly random permutation of the H*W pixels (order-agnostic training draws one per batch)."""
    return torch.randperm(H * W, generator=generator)


def observed_first(observed: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The order that visits the observed pixels first, then the missing ones, each group in `order`.

    observed: (H, W) or (H*W,) bool, True where the pixel is given (e.g. the top half to complete).
    A model that follows it conditions every missing pixel on all observed ones."""
    observed = observed.flatten().bool()
    if observed.numel() != order.numel():
        raise ValueError(f"observed has {observed.numel()} pixels but the order has {order.numel()}")
    given = observed[order]  # (H*W,) is the pixel at step t observed?
    return torch.cat([order[given], order[~given]])


# ----------------------------------------------------------------------------- helpers


def check_order(order: torch.Tensor, n: int, what: str = "order") -> torch.Tensor:
    """Raise a clear error unless `order` is a permutation of 0..n-1; return it as a LongTensor."""
    order = torch.as_tensor(order)
    if order.dtype.is_floating_point or order.dim() != 1 or order.numel() != n:
        raise ValueError(f"{what} must be a 1-D integer tensor holding a permutation of 0..{n - 1}; "
                         f"got shape {tuple(order.shape)} dtype {order.dtype}")
    order = order.long()
    if not torch.equal(order.sort().values, torch.arange(n, device=order.device)):
        raise ValueError(f"{what} is not a permutation of 0..{n - 1}: some positions repeat or are missing")
    return order


def rank(order: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: rank[p] = t where order[t] = p (the step that generates position p)."""
    r = torch.empty_like(order)
    r[order] = torch.arange(len(order), device=order.device)
    return r


def dims_order(pixel_order: torch.Tensor, C: int) -> torch.Tensor:
    """An order of the C*H*W dimensions, as flat indices into x.flatten(1) of an image (C, H, W),
    from an order of the H*W pixels: each pixel's channels in turn (R, then G, then B). (C*H*W,)"""
    HW = len(pixel_order)
    return (pixel_order[:, None] + HW * torch.arange(C, device=pixel_order.device)[None, :]).flatten()


def unravel(index: torch.Tensor, shape) -> tuple[torch.Tensor, ...]:
    """Flat indices into x.flatten(1) back to coordinates: for shape (C, H, W), the tuple (c, i, j)."""
    return torch.unravel_index(torch.as_tensor(index), tuple(shape))
