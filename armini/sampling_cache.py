"""Fast sampling for convolutional AR models: compute each new pixel, not the whole image.

The base sampling loop (armini.models.base) calls the model once per dimension.
Run naively, a convolutional model recomputes every layer on all H*W positions
at every one of the C*H*W steps, although only one position's output is read
and only one input pixel changed. Ramachandran et al. (2017, "Fast Generation
for Convolutional Autoregressive Models") keep, per layer, a cache of the
features that layer has already computed, and compute only what is new.

The idea here, in its simplest form. In a causal convolution stack (masked
convolutions as in PixelCNN, down-right-shifted ones as in Gated PixelCNN's
horizontal stack) the feature of every layer at position (a, b) is a function
of the pixels before (a, b) in raster order. So at step (i, j):

    for each layer, in order:
        write the layer's input at (i, j) into that layer's cache   # (n, F) numbers
        output at (i, j) = the convolution of the cached window      # one k x k window
    read the logits at (i, j)

and every value in a window is already final: positions before (i, j) were
computed at their own step, when everything they depend on was known.
Positions after (i, j) sit only under zeroed (masked) taps. One exception:
the raw image at the previous pixel was cached *before* that pixel was drawn.
By default the previous pixel is recomputed together with the new one (one
pass of two positions when they are neighbours); a model that knows which
layers read the raw image rewrites only those caches (`refresh_cache`).

Layers whose window reaches to the right within the current row (Gated
PixelCNN's vertical stack, which only depends on earlier *rows*) are
evaluated a whole row at a time, when the row starts (the "vertical stream
updates once per row" of Ramachandran et al.).

Pieces:
    ConvCache          per-convolution zero-padded input maps; `cache.at(module, i, j0)`
                       makes every spatial convolution of `module` read/write them
    RasterCursor       which pixel a raster-order cached sampler is at, with O(1) guards that
                       x changes only as the sampling loop changes it (shared by every cached
                       sampler, e.g. PixelCNN++'s in armini.fast.pixelcnnpp_cache)
    StepMode           how a cached step runs: one CPU thread, inference mode (entered per step)
    PixelByPixel       the step of PixelCNN's and Gated PixelCNN's caches: cursor, stale input, row, pixel
    LevelTable         every level's input features, looked up per pixel (not recomputed)
    RowConv            one causal convolution, pixel by pixel along a row: the rows above once per
                       row (one conv2d), row i's taps per pixel (one addmm of a fixed window view);
                       the pieces of the model-specific caches in armini.fast
    RasterConvSampler  the state a model's init_cache returns: which pixel comes next,
                       what is stale, and the call that computes a strip of positions
    CachedConvSampling mixin giving any ARModel whose spatial layers are all causal
                       convolutions (the rest pointwise: 1x1 convs, ReLU, residual adds)
                       a cached sampler: class PixelCNN(CachedConvSampling, ARModel)
                       (PixelCNN and Gated PixelCNN use faster, spelled-out caches of their
                       own, armini.fast; this one runs any such model's own forward code)

Assumptions (checked where cheap): raster order, one dimension per step, every
module other than the spatial convolutions acts per position, convolutions have
stride 1. Deviations from the paper: no per-layer queues of rows, the caches are
full-size feature maps (simpler, and as fast on a CPU); convolutions on a few
positions run as matrix products (F.linear), and one step runs on one CPU
thread: its operations are so small that threads only add synchronisation.

Legend: n images sampled, C image channels, F feature channels, H, W height and width,
P positions in one strip, K levels.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_padding(conv: nn.Conv2d) -> tuple:
    """(left, right, top, bottom) zero padding a convolution applies to its input."""
    if hasattr(conv, "pad"):  # armini.nn.shifted: explicit, possibly one-sided padding
        return tuple(conv.pad)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        eh, ew = dh * (kh - 1), dw * (kw - 1)
        return (ew // 2, ew - ew // 2, eh // 2, eh - eh // 2)  # padding="same"
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight a convolution really uses: weight * mask for masked convolutions."""
    if hasattr(conv, "masked_weight"):
        return conv.masked_weight()
    mask = getattr(conv, "mask", None)
    return conv.weight if mask is None else conv.weight * mask


class _Plan:
    """What the cache needs to know about one convolution, worked out once per sampling run
    (the weights do not change while sampling)."""

    def __init__(self, conv: nn.Conv2d):
        if tuple(conv.stride) != (1, 1):
            raise ValueError(f"the cached sampler needs stride-1 convolutions, got {conv}")
        self.pad = conv_padding(conv)  # (left, right, top, bottom)
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        self.kernel, self.dilation, self.groups = (kh, kw), (dh, dw), conv.groups
        self.extent = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)  # rows and columns one output reads
        self.spatial = self.extent != (1, 1) or any(self.pad)
        self.weight = conv_weight(conv).detach()  # (out, F/groups, kh, kw)
        self.matrix = self.weight.flatten(1)  # (out, F*kh*kw)
        self.bias = None if conv.bias is None else conv.bias.detach()  # (out,)
        self.checked = set()  # whole_row values whose taps were checked


def apply_conv(plan: _Plan, window: torch.Tensor) -> torch.Tensor:
    """A convolution without padding on a window one output row high:
    (n, F, ext_h, P + ext_w - 1) -> (n, out, 1, P).

    As a matrix product of the unfolded window (im2col): on a few positions that is much
    faster on a CPU than F.conv2d, whose per-call set-up dominates for tiny inputs."""
    if plan.groups != 1:
        out = F.conv2d(window, plan.weight, None, dilation=plan.dilation, groups=plan.groups)  # (n, out, 1, P)
        return out if plan.bias is None else out + plan.bias[:, None, None]
    if window.shape[-2:] == plan.extent:  # one position
        return F.linear(window.flatten(1), plan.matrix, plan.bias)[:, :, None, None]  # (n, out, 1, 1)
    if plan.extent == (1, 1):
        cols = window[:, :, 0].transpose(1, 2)  # pointwise on a strip: (n, P, F)
    else:
        cols = F.unfold(window, plan.kernel, dilation=plan.dilation).transpose(1, 2)  # (n, P, F*kh*kw)
    return F.linear(cols, plan.matrix, plan.bias).transpose(1, 2).unsqueeze(2)  # (n, out, 1, P)


class ConvCache:
    """Zero-padded input maps, one per spatial convolution, filled a strip of positions at a time.

    conv(c, h, i, j0): h (n, F, 1, P) is c's input at row i, columns j0..j0+P-1; store it and
    return c's output at the same positions, (n, out, 1, P)."""

    def __init__(self, height: int, width: int):
        self.H, self.W = height, width
        self.maps = {}  # conv -> (n, F, top + H + bottom, left + W + right)
        self.plans = {}  # conv -> _Plan
        self.convs = {}  # module -> its Conv2d submodules
        self.state = {}  # free room for a model's own bookkeeping (e.g. Gated PixelCNN's current row)

    def plan(self, conv: nn.Conv2d) -> _Plan:
        if conv not in self.plans:
            self.plans[conv] = _Plan(conv)
        return self.plans[conv]

    def _check_taps(self, conv, plan: _Plan, whole_row: bool):
        """Refuse a convolution that would read a position not computed yet.

        Tap (r, s) reads row i - top + r*d_h, column j - left + s*d_w. Rows below i are never
        computed; columns right of j in row i only when the whole row is done in one pass."""
        left, right, top, bottom = plan.pad
        (kh, kw), (dh, dw) = plan.kernel, plan.dilation
        r = torch.arange(kh)[:, None] * dh - top  # (kh, 1) row offset of each tap
        s = torch.arange(kw)[None, :] * dw - left  # (1, kw) column offset
        future = (r > 0) | ((r == 0) & (s > 0)) if not whole_row else (r > 0).expand(kh, kw)
        used = plan.weight.abs().sum((0, 1)) > 0  # (kh, kw)
        if (future & used.cpu()).any():
            where = "a row below" if whole_row else "a later position (below, or right in the same row)"
            raise ValueError(
                f"{conv} reads {where} with a non-zero weight, so it cannot be evaluated "
                f"{'row by row' if whole_row else 'pixel by pixel'}: mask or shift it, or evaluate it "
                "a whole row at a time (cache.at(module, i, 0) on a strip of width W)"
            )
        plan.checked.add(whole_row)

    def write(self, conv: nn.Conv2d, h: torch.Tensor, i: int, j0: int) -> torch.Tensor:
        """Store h (n, F, 1, P), conv's input at (i, j0..j0+P-1), in conv's padded map; return the map."""
        plan = self.plan(conv)
        n, Fin, _, P = h.shape
        left, right, top, bottom = plan.pad
        buf = self.maps.get(conv)
        if buf is None or buf.shape[:2] != (n, Fin):
            buf = h.new_zeros(n, Fin, top + self.H + bottom, left + self.W + right)
            self.maps[conv] = buf
        buf.select(2, top + i).narrow(2, left + j0, P).copy_(h.select(2, 0))  # buf[:, :, top+i, left+j0:+P] = h
        return buf

    def conv(self, conv: nn.Conv2d, h: torch.Tensor, i: int, j0: int) -> torch.Tensor:
        plan = self.plan(conv)
        P = h.shape[-1]
        whole_row = j0 == 0 and P == self.W
        if whole_row not in plan.checked:
            self._check_taps(conv, plan, whole_row)
        buf = self.write(conv, h, i, j0)  # store the new input
        eh, ew = plan.extent
        window = buf[:, :, i:i + eh, j0:j0 + P + ew - 1]  # (n, F, ext_h, P + ext_w - 1)
        return apply_conv(plan, window)  # (n, out, 1, P)

    @contextmanager
    def at(self, module: nn.Module, i: int, j0: int):
        """Inside the block, every spatial Conv2d of `module`, called on a strip (n, F, 1, P),
        is evaluated at positions (i, j0..j0+P-1) through this cache; 1x1 convolutions run as
        matrix products and the other (pointwise) layers unchanged on the strip.

        How, in plain words: the model's own forward code runs unchanged, on a strip of the
        image instead of the whole image. When Python calls `conv(h)`, it looks for `forward`
        on the object before its class, so for the duration of the block we give each
        convolution object its own `forward` (an entry in its __dict__) that reads the cached
        window instead of convolving the strip alone; on leaving the block we delete those
        entries and every convolution is an ordinary nn.Conv2d again. So one forward function
        serves training (whole images) and fast sampling (strips), and cannot drift apart.
        The model-specific caches in armini.fast spell their layers out step by step instead."""
        if module not in self.convs:
            self.convs[module] = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        convs = self.convs[module]
        try:
            for m in convs:  # an instance attribute `forward` shadows the class's method
                plan = self.plan(m)
                if plan.spatial:
                    m.__dict__["forward"] = (lambda h, m=m: self.conv(m, h, i, j0))
                else:  # 1x1: the same product, without a cache
                    m.__dict__["forward"] = (lambda h, plan=plan: apply_conv(plan, h))
            yield self
        finally:
            for m in convs:
                m.__dict__.pop("forward", None)


def strip_conditionals(model, cache: ConvCache, x: torch.Tensor, y, i: int, j0: int, j1: int) -> torch.Tensor:
    """Log-probabilities (n, C, 1, P, K) of positions (i, j0..j1-1), running `model.conditionals`
    on that strip of x with every spatial convolution served by `cache` (the generic case)."""
    with cache.at(model, i, j0):
        return model.conditionals(x[:, :, i:i + 1, j0:j1], y)  # (n, C, 1, P, K)


class StepMode:
    """`with mode:` how a cached step runs: on a CPU on one thread, and (inference=True) in inference mode.
    The operations of one cached step are tiny: on a CPU, splitting them over threads only costs
    synchronisation (several times slower on a busy machine), and autograd's bookkeeping is much of the
    cost of each. Made once per cache and entered at every step (a class, not a generator: it must
    cost little); not re-entrant (one step at a time).

    onednn=False: on a CPU, torch's own kernels instead of oneDNN's for the step (torch.backends.mkldnn,
    restored on exit). oneDNN sets up every call, which costs more than a tiny step's arithmetic: GELU on
    a (1, 256) row about 7-17 us through oneDNN, 1.2 us through torch's kernel (one thread, measured here).
    The two kernels round differently (GELU: up to about 1e-6), so a step is then equal to the full forward
    to rounding, as it already is through its matrix products of one row (see armini.models.transformer)."""

    def __init__(self, device: torch.device, inference: bool = True, onednn: bool = True):
        self.cpu = torch.device(device).type == "cpu"
        self.inference = torch.inference_mode() if inference else None
        self.native = self.cpu and not onednn  # switch oneDNN off during the step

    def __enter__(self):
        self.threads = torch.get_num_threads() if self.cpu else 1  # 1: nothing to do
        if self.threads != 1:
            torch.set_num_threads(1)
        if self.native:
            self.onednn = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        if self.inference is not None:
            self.inference.__enter__()

    def __exit__(self, *exc):
        if self.inference is not None:
            self.inference.__exit__(*exc)
        if self.native:
            torch.backends.mkldnn.enabled = self.onednn
        if self.threads != 1:
            torch.set_num_threads(self.threads)


class LevelTable:
    """Every level's input features, looked up per pixel instead of recomputed: row c*K + v of `table`
    (C*K, d) holds what a model's first layer reads for value v in image channel c (armini.nn.inputs:
    ordinal values scaled to [-1, 1], or embeddings; d = C_in / C features per channel), made once by
    the model's own `inputs` module. write(x, i, j, out) puts pixel (i, j)'s features into out (n, C_in)."""

    def __init__(self, inputs, channels: int, levels: int, dtype, device):
        C, K = channels, levels
        values = torch.arange(K, device=device).repeat(C, 1)[None, :, :, None]  # (1, C, K, 1): every level, every channel
        feats = inputs(values, dtype)  # (1, C_in, K, 1), channel-major groups of d
        self.table = feats[0, :, :, 0].reshape(C, -1, K).transpose(1, 2).reshape(C * K, -1).contiguous()  # (C*K, d)
        self.offsets = (torch.arange(C, device=device) * K)[None]  # (1, C): channel c's first row
        self.C = C

    def write(self, x: torch.Tensor, i: int, j: int, out: torch.Tensor) -> torch.Tensor:
        """out (n, C_in) = the input features of pixel (i, j) of x (n, C, H, W)."""
        if self.C == 1:  # x.flatten(1)[:, d] with d = i*W + j: two tensor operations, where x[:, 0, i, j] is three
            return torch.index_select(self.table, 0, x.flatten(1)[:, i * x.shape[-1] + j], out=out)  # (n, d)
        out.view(len(out), self.C, -1).copy_(F.embedding(x[:, :, i, j] + self.offsets, self.table))  # (n, C, d)
        return out


class RowConv:
    """A causal convolution evaluated pixel by pixel along the rows, for the model-specific caches
    (armini.fast): out(i, j) = bias + sum over taps (r, s) of w[:, :, r, s] . in(i - top + r, j - left + s),
    zero outside the image, where every tap reads a row above i, or row i at a column <= j.

    The taps on the rows above are final when row i starts: `start_row(i)` computes their part of the
    whole row with one F.conv2d (the "rows above" of every output of the row, + the bias); a step then
    adds the taps on row i, `at(j, out)`: one addmm of the row's window, a fixed view of the row buffer.

        buf     (n, left + W, F_in)  the input's current row, position-major, `left` zero columns first;
                                     here[j] is the input at (i, j), written by the caller at its step
        window  buf[:, j : j + k_row] flattened: row i's taps, columns j-left .. j-left+k_row-1 (<= j)
        rows    (n, F_in, top, ...)  the input's `top` rows above, zero-padded: what start_row convolves

    buf: another RowConv's row buffer, when two convolutions read the same input (written once).
    shift (dy, dx): the output is moved down / right after the convolution (PixelCNN++'s and PixelSNAIL's
    down_shift / right_shift): rows i < dy and columns j < dx are exactly zero (no bias there).
    Give top and left including the shift. Legend: n images, W width, F_in input channels."""

    def __init__(self, weight: torch.Tensor, bias, top: int, left: int, n: int, W: int, shift=(0, 0), buf=None):
        out, F_in, kh, kw = weight.shape
        current = kh - 1 == top  # does the kernel's last row read row i?
        if kh - 1 > top or (current and bool((weight[:, :, -1, left + 1:] != 0).any())):
            raise ValueError(f"RowConv: a {kh} x {kw} kernel with top={top}, left={left} reads a later position "
                             "(a row below, or a column right of the pixel in its row): it is not causal")
        self.top, self.left, self.W, self.shift = top, left, W, shift
        self.k_row = min(kw, left + 1) if current else 0  # taps on row i
        above = kh - 1 if current else kh  # kernel rows on the rows above
        self.W_above = weight[:, :, :above].detach().contiguous()  # (out, F_in, above, kw)
        w_row = weight[:, :, -1, :self.k_row].detach()  # (out, F_in, k_row)
        self.W_row = w_row.permute(2, 1, 0).reshape(-1, out).contiguous()  # (k_row F_in, out), column-major
        self.bias = None if bias is None else bias.detach()
        like = weight.detach()
        self.buf = like.new_zeros(n, left + W, F_in) if buf is None else buf
        if self.buf.shape != (n, left + W, F_in):
            raise ValueError(f"RowConv: a shared row buffer must be {(n, left + W, F_in)}, got {tuple(self.buf.shape)}")
        self.here = [self.buf[:, left + j] for j in range(W)]  # (n, F_in) views
        self.windows = [self.buf[:, j:j + self.k_row].reshape(n, -1) for j in range(W)]  # (n, k_row F_in) views
        self.rows = like.new_zeros(n, F_in, top, left + W + max(0, kw - 1 - left))
        self.above = like.new_zeros(n, W, out)
        self.above_at = [self.above[:, j] for j in range(W)]  # (n, out) views

    def start_row(self, i: int, extra=None):
        """Row i starts: the row just finished (in buf) joins the rows above, and the part of every output
        of row i that reads them is computed at once, + the bias (+ extra (n, out), e.g. a class vector)."""
        if i > 0 and self.top:
            self.rows[:, :, :-1] = self.rows[:, :, 1:].clone()  # every row up one ...
            self.rows[:, :, -1, :self.buf.shape[1]] = self.buf.transpose(1, 2)  # ... and the finished row last
        if self.W_above.shape[2]:
            above = F.conv2d(self.rows[:, :, :self.W_above.shape[2]], self.W_above)  # (n, out, 1, >= W)
            self.above.copy_(above[:, :, 0, :self.W].transpose(1, 2))
        else:
            self.above.zero_()
        if self.bias is not None:
            self.above += self.bias
        if extra is not None:
            self.above += extra[:, None]
        dy, dx = self.shift
        if i < dy:
            self.above.zero_()  # shifted-in zeros
        elif dx:
            self.above[:, :dx] = 0

    def at(self, j: int, out: torch.Tensor) -> torch.Tensor:
        """out (n, out) = the output at (i, j) of the current row; the input at (i, j) must be written if read."""
        if self.k_row:
            return torch.addmm(self.above_at[j], self.windows[j], self.W_row, out=out)
        return out.copy_(self.above_at[j])


def _writes(x: torch.Tensor):
    """How many in-place writes x has had (torch's version counter), None where torch keeps no count
    (tensors made under torch.inference_mode)."""
    try:
        return x._version
    except RuntimeError:
        return None


class RasterCursor:
    """Which pixel a raster-order cached sampler is at, and cheap guards that the image x it is
    handed changes only as the sampling loop changes it. Shared by every cached sampler.

    advance(x, index) -> (c, i, j, moved): the dimension asked for (index: its flat position, (1,)),
    and whether it starts a new pixel.

    Guards, each O(1) per step with no wait for the device:
      - one dimension per step, pixels in raster order (a pixel's channels repeat the same pixel);
      - x is the tensor the cache started with (a new image needs a new init_cache);
      - at most one in-place write to x between two steps: the sampling loop writes the dimension it
        just drew. Edits on top of that (a pixel the cache has already read changed) are refused.
    Not caught: a single write elsewhere *instead of* the drawn dimension. Seeing that would mean
    comparing the whole image at every step: O(D) per step, O(D^2) per image and a device sync per
    step, which costs as much as the cache saves on a small model."""

    def __init__(self, x: torch.Tensor, width: int):
        self.W, self.HW = width, x[0, 0].numel()  # W, and H*W: a flat position d = c*H*W + i*W + j
        self.last = -1  # raster index i*W + j of the last pixel asked for
        self.storage, self.shape = x.data_ptr(), x.shape
        self.writes = _writes(x)

    def advance(self, x: torch.Tensor, index: torch.Tensor):
        if index.shape[0] != 1:
            raise ValueError("the cached sampler fills one dimension per step (raster order)")
        if x.data_ptr() != self.storage or x.shape != self.shape:
            raise ValueError("x is not the image this cache was started on: start a new init_cache for a new image")
        writes = _writes(x)
        if writes is not None and self.writes is not None and writes - self.writes > 1:
            raise ValueError(
                f"x was written {writes - self.writes} times since the last step, but the cached sampler allows one "
                "write between steps (the dimension just drawn): a pixel it already read may have changed, so the "
                "cache is stale (start a new init_cache, or sample with cached=False)"
            )
        self.writes = writes
        c, p = divmod(index.item(), self.HW)  # flat position -> channel c, pixel p = i*W + j
        i, j = divmod(p, self.W)
        if p not in (self.last, self.last + 1):
            raise ValueError(
                f"the cached sampler must visit pixels in raster order: asked for pixel {(i, j)} after "
                f"pixel {divmod(self.last, self.W)}; sample with cached=False for other orders"
            )
        moved, self.last = p != self.last, p
        return c, i, j, moved


class PixelByPixel:
    """The step the layer-by-layer raster caches of PixelCNN and Gated PixelCNN share (armini.fast): where
    the sampler is, the first layer's input written from x where it may be stale, each layer's part that
    reads the rows above once per row, then the new pixel through every layer.

    The raw image is the only input that can be stale: a pixel's last channel is drawn after the pixel was
    computed, so its input is written from x when the sampler moves past it (every later layer's feature at
    a pixel ignores that pixel's value, mask A); with several channels the current pixel's input is written
    at every step too (its channels < c are read).

    A subclass sets in its __init__: cursor (RasterCursor), mode (StepMode), level_table (LevelTable),
    first_input (W views (n, C_in): the first layer's input at (i, j) of the current row) and C; and defines
    start_row(x, i) and pixel(c, j) -> (n, 1, K)."""

    row = -1  # the row whose part from the rows above is computed

    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """log p(x_d | everything before) (n, 1, K) for the next dimension d, index = [d] (its flat position)."""
        with self.mode:
            last = self.cursor.last  # the previous pixel: its last channel was drawn after it was computed
            c, i, j, moved = self.cursor.advance(x, index)
            if moved and last >= 0:
                self.write_input(x, *divmod(last, self.cursor.W))
            if i != self.row:
                self.start_row(x, i)
                self.row = i
            if self.C > 1:  # the channels < c of this pixel are read (mask A)
                self.write_input(x, i, j)
            return self.pixel(c, j)  # (n, 1, K)

    def write_input(self, x: torch.Tensor, i: int, j: int):
        """The first layer's input at (i, j): each channel's value looked up in the level table."""
        self.level_table.write(x, i, j, out=self.first_input[j])  # (n, C_in)


class RasterConvSampler:
    """What init_cache returns: the caches plus which pixel the sampler is at.

    conditional_logprobs(x, index) -> (n, 1, K) for the next dimension, index = [d] (its flat position (c*H + i)*W + j).
    strip(cache, x, y, i, j0, j1) -> (n, C, 1, P, K) computes positions (i, j0..j1-1) (default:
    strip_conditionals). refresh(cache, x, y, i, j0, j1), optional, brings the caches up to date
    after pixels (i, j0..j1-1) were filled, without computing their conditionals; by default they
    are recomputed, which is always right. A model may do less: only layers that read the raw
    image can hold a stale value, since every other feature at a pixel ignores that pixel's
    (last-filled) value."""

    def __init__(self, model, x: torch.Tensor, y=None, strip=None, refresh=None):
        C, H, W = model.shape
        self.model, self.y, self.W = model, y, W
        self.strip = strip if strip is not None else (lambda *a: strip_conditionals(model, *a))
        self.refresh = refresh
        self.cache = ConvCache(H, W)
        self.cursor = RasterCursor(x, W)
        self.mode = StepMode(x.device, inference=False)  # one thread (the model's own forward runs in no_grad)
        self.seen = None  # (n, C): the last pixel as it was when it was computed

    def _run(self, x, i, j0, j1):
        lp = self.strip(self.cache, x, self.y, i, j0, j1)  # (n, C, 1, P, K)
        self.seen = x[:, :, i, j1 - 1].clone()
        return lp

    @torch.no_grad()
    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        with self.mode:
            return self._step(x, index)

    def _step(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        last = self.cursor.last
        c, i, j, moved = self.cursor.advance(x, index)
        p = i * self.W + j
        # did the last pixel q change since it was computed (it was just sampled)? O(n C), one pixel
        stale = last >= 0 and not torch.equal(x[:, :, last // self.W, last % self.W], self.seen)
        j0 = j  # the strip to compute: this pixel, and the one before if it is recomputed with it
        if stale and moved:  # (the same pixel again, for its next channel, is recomputed below anyway)
            qi, qj = divmod(last, self.W)
            if self.refresh is not None:
                self.refresh(self.cache, x, self.y, qi, qj, qj + 1)
            elif qi == i:  # recompute the left neighbour in the same strip
                j0 = qj
            else:
                self._run(x, qi, qj, qj + 1)
        lp = self._run(x, i, j0, j + 1)
        return lp[:, c, 0, -1, :].unsqueeze(1)  # (n, 1, K)


class CachedConvSampling:
    """Mixin for ARModel subclasses built from causal convolutions: a cached sampler.

        class PixelCNN(CachedConvSampling, ARModel): ...

    `model.sample(n)` then uses the cache; `model.sample(n, cached=False)` the naive loop.
    A model whose layers are not all "causal spatial convolutions + pointwise layers"
    overrides `strip_conditionals`; a model may override `refresh_cache` to update only its
    raw-image caches after a pixel is drawn (faster). PixelCNN and Gated PixelCNN have faster
    caches of their own, spelled out layer by layer (armini.fast); this one serves any stack of
    causal convolutions, e.g. a PixelCNN subclass with a forward of its own."""

    refresh_cache = None  # or a method (cache, x, y, i, j0, j1) -> None, see RasterConvSampler

    def strip_conditionals(self, cache, x, y, i, j0, j1):
        return strip_conditionals(self, cache, x, y, i, j0, j1)  # (n, C, 1, P, K)

    def init_cache(self, x, y=None):
        return RasterConvSampler(self, x, y, self.strip_conditionals, self.refresh_cache)

    def conditional_logprobs(self, x, index, y=None, cache=None):
        if cache is None:
            return super().conditional_logprobs(x, index, y)  # the naive sampler
        return cache.conditional_logprobs(x, index)  # (n, 1, K)
