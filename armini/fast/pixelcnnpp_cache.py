"""Cached sampling for PixelCNN++ (Ramachandran et al., 2017, "Fast Generation for Convolutional
Autoregressive Models"): each position of each layer is computed once per image, once its value is
final (the pixels it depends on are drawn) and before it is first read.

The naive sampler runs the whole U-net on the whole image for every pixel: H*W full passes per
image, although only one pixel changed and only one pixel's output is read. Here every feature map
of the network (each stream after each layer, at its resolution) is kept whole between steps.

When is a value final? Give every position of every map a *ready step*: 1 + the raster index of
the last pixel it depends on (0 if it depends on none). Once that many pixels are drawn the value
can be computed, and it never changes again. Ready steps follow from the layers' shapes alone,
worked out once before sampling (PixelCNNppCache.__init__):

    the input at pixel (i, j)             i*W + j + 1   (the padding to a multiple of 2^(S-1): 0)
    a convolution's output (any stride)   the max over the input positions its kernel reads
    down_shift / right_shift of it        moved one row / column; the shifted-in zeros: never computed
    a transposed convolution's output     the max over the coarse positions that write it
    a sum, a gate, a residual             the max over its inputs

Before the conditionals of pixel t (pixels 0..t-1 drawn) the sampler computes, layer by layer in
the order of the forward pass, the positions planned for step t (a strip of a row per layer, usually
one position, nothing at most steps for the coarse layers). A position is planned at its ready step,
except that one first needed in a later row waits for the start of that row: then a layer that runs
ahead (the u stream, which sees only the rows above) is computed a whole row in one strip, the
"vertical stream updates once per row" of Ramachandran et al. Each position of each layer is
computed once per image; all it reads was computed at an earlier step or earlier in this one. The
output at pixel t (ready by step t: the network is causal, and the plan checks it) is then one 1x1
convolution, and its mixture gives all of the pixel's channels (G and B reuse R's parameters).

The input map holds what the first layers read: the pixels scaled to [-1, 1] or, for
input="embedding", each value's learned vector (armini.nn.inputs), written when the pixel is drawn.
A class-conditional model's class vectors (one per stream) are one more term of the first two
layers (ClassTerm): the same at every position and depending on no pixel, so ready at step 0.

Which coarse positions are computed when, in the default U-net (nr_resnet 0, three stages) on an
8 x 8 image: each position of the 4 x 4 map shows the pixel (i, j) at whose step it is computed
(`python -m armini.fast.pixelcnnpp_cache` prints every layer):

    first stride-2 layer of ul: coarse (p, q)     first stride-2 layer of u: coarse (p, q)
    reads fine ul rows 2p-1..2p, cols 2q-1..2q    reads fine u rows 2p-1..2p, cols 2q-1..2q+1
        0,0  0,2  0,4  0,6                            0,0  0,0  0,0  0,0
        2,0  2,2  2,4  2,6                            2,0  2,0  2,0  2,0
        4,0  4,2  4,4  4,6                            4,0  4,0  4,0  4,0
        6,0  6,2  6,4  6,6                            6,0  6,0  6,0  6,0

ul at (2p, 2q) has seen every pixel before (2p, 2q), so coarse (p, q) is final, and computed, just
before that pixel is drawn: every other pixel of every other row. u at row 2p has seen the rows
above only, so the whole coarse row p is final during fine row 2p-1 and is computed in one strip
when row 2p starts. The next stride-2 layer (2 x 2) does the same every fourth row, and the
transposed convolutions of the down pass bring each coarse value back to the fine positions it
writes when they are needed.

Deviations from the paper: no queues of rows; every map is kept whole (simpler, and as fast on a
CPU); a position on its own is computed as a matrix product (addmm) of its unfolded window, a strip
of several with F.conv2d; the maps are stored channels last, so that one position's features lie
together (for n images at once, copying a window otherwise gathers values H*W apart); the network
is evaluated as in eval mode (no dropout); a step runs on one CPU thread in torch.inference_mode
(its operations are tiny: threads and autograd bookkeeping would cost more than the arithmetic).

Legend: n images sampled, C image channels, F feature channels, H, W height and width (h, w of a
map at its own resolution), P positions in one strip, K levels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.shifted import DownRightShiftedConvTranspose2d, DownShiftedConvTranspose2d
from ..sampling_cache import LevelTable, RasterCursor, StepMode, conv_padding, conv_weight


NEVER = 2**62  # a step after every step: a position nothing needs


class FeatureMap:
    """One feature map of the network, kept whole while sampling.

    ready  (h, w) ints: the step at which each position becomes final; -1: always zero, never computed
    raw    (n, F, top + h + bottom, left + w + right): the values, stored channels last (position by
           position); the zero margins are the readers' padding
    ce     the same for concat_elu(values) (2F channels), kept if a gated resnet reads it"""

    def __init__(self, channels: int, ready: torch.Tensor):
        self.F, self.ready = channels, ready
        self.h, self.w = ready.shape
        self.margin = (0, 0, 0, 0)  # (left, right, top, bottom), grown by the readers before allocation
        self.kinds = set()  # what readers read: "raw", "ce"
        self.raw = self.ce = None
        self.need = torch.full((self.h, self.w), NEVER)  # the first step at which a reader computes from each position

    def read_by(self, kind: str, margin=(0, 0, 0, 0)):
        self.kinds.add(kind)
        self.margin = tuple(max(a, b) for a, b in zip(self.margin, margin))

    def allocate(self, n: int, dtype: torch.dtype, device):
        left, right, top, bottom = self.margin
        size = (top + self.h + bottom, left + self.w + right)
        # stored position by position (channels last: (n, rows, cols, F), read as (n, F, rows, cols)): one
        # position's features are then contiguous, so a matrix product reads them where they lie
        if "raw" in self.kinds:
            self.raw = torch.zeros(n, *size, self.F, dtype=dtype, device=device).permute(0, 3, 1, 2)
        if "ce" in self.kinds:
            self.ce = torch.zeros(n, *size, 2 * self.F, dtype=dtype, device=device).permute(0, 3, 1, 2)
        # the same values with the positions flattened, (n, F or 2F, rows * cols): one position is then
        # one indexing operation (a step is a few dozen tiny operations, each costing microseconds)
        self.stride = size[1]
        self.flat = {kind: buf.flatten(2) for kind, buf in (("raw", self.raw), ("ce", self.ce)) if buf is not None}
        if self.ce is not None:  # the ce map as its two halves, elu(v) and elu(-v): (n, 2, F, rows * cols)
            self.flat["ce2"] = self.flat["ce"].unflatten(1, (2, self.F))
            signs = torch.tensor([1.0, -1.0], dtype=dtype, device=device)  # v, -v
            self.signs = {1: signs.view(2, 1), 2: signs.view(2, 1, 1)}  # for one position (n, F), a strip (n, F, P)

    def window(self, kind: str, row: int, rows: int, col: int, cols: int) -> torch.Tensor:
        """Values at rows row..row+rows-1, columns col..col+cols-1 (a map's coordinates; the margins
        hold zeros): (n, F or 2F, rows, cols)."""
        left, _, top, _ = self.margin
        buf = self.raw if kind == "raw" else self.ce
        n, channels = buf.shape[:2]  # a fresh buffer: storage offset 0
        start = (top + row) * buf.stride(2) + (left + col) * buf.stride(3)  # where the window's top left corner is stored
        return buf.as_strided((n, channels, rows, cols), buf.stride(), start)  # one operation, where slicing is two

    def at(self, kind: str, a: int, j0: int, j1: int) -> torch.Tensor:
        """The values at row a, columns j0..j1-1: (n, F or 2F, P), or (n, F or 2F) for one position
        (kind "ce2": (n, 2, F, P) or (n, 2, F), the ce values as their two halves)."""
        left, _, top, _ = self.margin
        start = (top + a) * self.stride + left + j0  # the flat position of (a, j0)
        buf = self.flat[kind]
        return buf[..., start] if j1 == j0 + 1 else buf[..., start: start + j1 - j0]

    def store(self, v: torch.Tensor, a: int, j0: int, j1: int, raw_written: bool = False):
        """Keep v (n, F, P) (or (n, F) for one position), the values at row a, columns j0..j1-1
        (raw_written: v is already the raw map's view there)."""
        if self.raw is not None and not raw_written:
            self.at("raw", a, j0, j1).copy_(v)
        if self.ce is not None:  # concat_elu(v) = elu([v, -v]): v times (1, -1) written in place, then elu
            halves = torch.mul(v.unsqueeze(1), self.signs[v.dim() - 1], out=self.at("ce2", a, j0, j1))
            F.elu(halves, inplace=True)  # (n, 2, F, P) or (n, 2, F)


class ConvTerm:
    """A convolution of a map (any stride, PixelCNN++'s one-sided padding), optionally shifted down
    or right after it: out(a, b) = conv(source)(a - dy, b - dx), zero where a < dy or b < dx."""

    def __init__(self, conv: nn.Conv2d, source: FeatureMap, kind="raw", shift=(0, 0), weight=None, bias=None):
        if conv.stride[0] != conv.stride[1] or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError(f"the PixelCNN++ cache needs equal strides, no dilation, no groups: got {conv}")
        self.source, self.kind, self.shift = source, kind, shift
        if weight is None:  # the convolution's own weight and bias (else a part of them, see PixelCNNppCache._build)
            weight, bias = conv_weight(conv), conv.bias
        self.weight = weight.detach().contiguous()  # (out, in, kh, kw)
        # (kh*kw*in, out): x @ W^T for one position's window read position by position, as the maps store it
        self.matrix_t = self.weight.permute(0, 2, 3, 1).flatten(1).t().contiguous()
        self.bias = None if bias is None else bias.detach()  # (out,)
        self.stride, self.kernel, self.pad = conv.stride[0], tuple(conv.kernel_size), conv_padding(conv)
        left, right, top, bottom = self.pad
        (kh, kw), s = self.kernel, self.stride
        self.size = ((source.h + top + bottom - kh) // s + 1, (source.w + left + right - kw) // s + 1)  # (h, w) out
        # columns (rows) read past the right (bottom) edge by the last output
        beyond = (max(0, (self.size[1] - 1) * s - left + kw - source.w), max(0, (self.size[0] - 1) * s - top + kh - source.h))
        source.read_by(kind, (left, beyond[0], top, beyond[1]))
        self.cols = self.cols_4d = None  # one position's unfolded window, (n, in*kh*kw) (allocate)

    def allocate(self, n: int, dtype: torch.dtype, device):
        """The buffer one position's window is copied into, (n, kh*kw*in), and its (n, in, kh, kw) view:
        one copy into memory kept for the whole image, where reshaping the window would allocate every step."""
        if self.kernel != (1, 1):
            c_in, kh, kw = self.weight.shape[1:]
            self.cols = torch.zeros(n, kh * kw * c_in, dtype=dtype, device=device)
            self.cols_4d = self.cols.view(n, kh, kw, c_in).permute(0, 3, 1, 2)  # stored as the maps are

    def reads(self):
        """Every (output position, input position it reads) pair as flat indices (out, inp); reads of
        the padding are left out. zero: (h, w) bool, the shifted-in outputs (always zero)."""
        (ho, wo), (kh, kw), s = self.size, self.kernel, self.stride
        left, _, top, _ = self.pad
        dy, dx = self.shift
        a, b, r, c = torch.meshgrid(*(torch.arange(k) for k in (ho, wo, kh, kw)), indexing="ij")  # (ho, wo, kh, kw)
        row, col = (a - dy) * s - top + r, (b - dx) * s - left + c  # the input position tap (r, c) reads
        shifted_in = (a < dy) | (b < dx)
        ok = ~shifted_in & (row >= 0) & (row < self.source.h) & (col >= 0) & (col < self.source.w)
        zero = shifted_in[:, :, 0, 0]  # (ho, wo)
        return (a * wo + b)[ok], (row * self.source.w + col)[ok], zero

    def __call__(self, a: int, j0: int, j1: int, total=None):
        """total + the term at row a, columns j0..j1-1: (n, out, P), or (n, out) for one position.
        total None: the term alone, or None where it is all zero."""
        dy, dx = self.shift
        lead = max(0, dx - j0)  # shifted-in columns at the start of the strip: zero
        P = j1 - j0 - lead
        if a < dy or P <= 0:
            return total
        (kh, kw), s = self.kernel, self.stride
        left, _, top, _ = self.pad
        row, col = (a - dy) * s - top, (j0 + lead - dx) * s - left  # the window's top left corner
        if P > 1 or lead:  # a strip: F.conv2d on its window (n, in, kh, (P-1)*s + kw)
            out = F.conv2d(self.source.window(self.kind, row, kh, col, (P - 1) * s + kw), self.weight, self.bias,
                           stride=(1, s))[:, :, 0]  # (n, out, P - lead)
            out = F.pad(out, (lead, 0)) if lead else out  # (n, out, P)
            return out if total is None else total + out
        # one position: a matrix product of its unfolded window, (n, in*kh*kw) -> (n, out)
        if self.kernel == (1, 1):
            cols = self.source.at(self.kind, row, col, col + 1)  # (n, in)
        else:
            cols = self.cols
            self.cols_4d.copy_(self.source.window(self.kind, row, kh, col, kw))  # (n, in, kh, kw) -> (n, kh*kw*in)
        if total is None:
            return cols @ self.matrix_t if self.bias is None else torch.addmm(self.bias, cols, self.matrix_t)
        return torch.addmm(total if self.bias is None else total + self.bias, cols, self.matrix_t)


class ClassTerm:
    """Each image's class vector (n, F), added at every position of a map (PixelCNNpp's class_u and
    class_ul): it reads no map, so it never delays a position and makes none of them always zero."""

    def __init__(self, vectors: torch.Tensor, like: ConvTerm):
        self.vectors = vectors.detach()  # (n, F)
        self.source, self.size = like.source, like.size  # the map beside it in the same layer (read: nothing)

    def reads(self):
        """As ConvTerm.reads: no (output, input) pairs, and no position is always zero."""
        none = torch.zeros(0, dtype=torch.long)
        return none, none, torch.zeros(self.size, dtype=torch.bool)

    def __call__(self, a: int, j0: int, j1: int, total=None) -> torch.Tensor:
        """total + the class vectors at row a, columns j0..j1-1: (n, F, P), or (n, F) for one position."""
        v = self.vectors if j1 == j0 + 1 else self.vectors[:, :, None].expand(-1, -1, j1 - j0)
        return v if total is None else total + v


class UpsizeTerm:
    """A stride-2 transposed convolution of armini.nn.shifted (kernel height 2): fine (a, b) is
    bias + the sum over coarse (p, q) with p = a // 2 (kernel row r = a % 2) and 2q + c = b + crop
    for the kernel columns c, where crop is the columns the layer cuts on the left."""

    def __init__(self, convt: nn.ConvTranspose2d, source: FeatureMap):
        kh, kw = convt.kernel_size
        if tuple(convt.stride) != (2, 2) or kh != 2 or tuple(convt.padding) != (0, 0):
            raise ValueError(f"the PixelCNN++ cache needs stride-2 transposed convolutions of height 2, got {convt}")
        if isinstance(convt, DownShiftedConvTranspose2d):
            self.crop = (kw - 1) // 2
        elif isinstance(convt, DownRightShiftedConvTranspose2d):
            self.crop = 0
        else:
            raise ValueError(f"the PixelCNN++ cache knows the shifted transposed convolutions only, got {convt}")
        self.source, self.kw = source, kw
        weight = convt.weight.detach()  # (in, out, 2, kw)
        self.rows = [weight[:, :, r: r + 1].contiguous() for r in range(kh)]  # (in, out, 1, kw) each
        self.bias = None if convt.bias is None else convt.bias.detach()
        self.size = (2 * source.h, 2 * source.w)
        first, last = self._coarse_columns(0, self.size[1])
        source.read_by("raw", (max(0, -first), max(0, last - (source.w - 1)), 0, 0))

    def _coarse_columns(self, j0: int, j1: int):
        """First and last coarse column that write fine columns j0..j1-1."""
        return -((self.kw - 1 - self.crop - j0) // 2), (j1 - 1 + self.crop) // 2  # ceil((j0+crop-kw+1)/2), floor

    def reads(self):
        """As ConvTerm.reads: fine (a, b) reads coarse (a // 2, q) for every kernel column c with 2q + c = b + crop."""
        (h, w), (ho, wo) = (self.source.h, self.source.w), self.size
        a, b, c = torch.meshgrid(torch.arange(ho), torch.arange(wo), torch.arange(self.kw), indexing="ij")
        q2 = b + self.crop - c  # 2q
        ok = (q2 % 2 == 0) & (q2 >= 0) & (q2 < 2 * w)
        return (a * wo + b)[ok], ((a // 2) * w + q2 // 2)[ok], torch.zeros(ho, wo, dtype=torch.bool)

    def __call__(self, a: int, j0: int, j1: int, total=None) -> torch.Tensor:
        """total + the term at row a, columns j0..j1-1 (as ConvTerm)."""
        p, r = divmod(a, 2)
        q0, q1 = self._coarse_columns(j0, j1)
        window = self.source.window("raw", p, 1, q0, q1 - q0 + 1)  # (n, in, 1, q1-q0+1)
        out = F.conv_transpose2d(window, self.rows[r], self.bias, stride=(1, 2))  # (n, out, 1, ...): columns 2*q0..
        start = j0 + self.crop - 2 * q0
        out = out[:, :, 0, start] if j1 == j0 + 1 else out[:, :, 0, start: start + j1 - j0]  # (n, out, P) or (n, out)
        return out if total is None else total + out


class Layer:
    """A map computed from others: the sum of its terms, or for the second half of a gated resnet
    (Salimans et al. 2017, sec. 2.5) h + a * sigmoid(b) with (a, b) = the sum split in two."""

    def __init__(self, terms: list, channels: int, residual: FeatureMap = None):
        self.terms, self.residual = terms, residual
        self.reads = [t.reads() for t in terms]  # (out, inp, zero) of each term
        h, w = terms[0].size
        ready, zero = torch.zeros(h * w, dtype=torch.long), torch.ones(h, w, dtype=torch.bool)
        for term, (out, inp, z) in zip(terms, self.reads):  # ready = the max over every input read
            ready.scatter_reduce_(0, out, term.source.ready.clamp(min=0).flatten()[inp], "amax")
            zero &= z
        ready = ready.view(h, w)
        if residual is not None:
            residual.read_by("raw")
            ready, zero = torch.maximum(ready, residual.ready.clamp(min=0)), torch.zeros_like(zero)  # h + gate
        self.out = FeatureMap(channels, ready.masked_fill(zero, -1))  # -1: zero in every term, never computed
        self.steps = None  # (h, w): the step at which each position is computed (set by schedule)

    def schedule(self, W: int):
        """When to compute each position: as soon as it is final (its ready step), but a position
        needed only in a later row waits for that row's start, so that a whole row of a layer that
        runs ahead (the u stream: rows above only) is computed as one strip (Ramachandran et al.'s
        "vertical stream updates once per row"). Then tell the sources when they are needed."""
        ready, need = self.out.ready, self.out.need
        never = (ready < 0) | (need == NEVER)
        steps = torch.maximum(ready, need // W * W).masked_fill(never, NEVER)  # (h, w)
        for term, (out, inp, _) in zip(self.terms, self.reads):
            term.source.need.view(-1).scatter_reduce_(0, inp, steps.flatten()[out], "amin")
        if self.residual is not None:
            torch.minimum(self.residual.need, steps, out=self.residual.need)
        self.steps = steps

    def compute(self, a: int, j0: int, j1: int):
        """Compute and keep the positions (a, j0..j1-1)."""
        v = None
        for term in self.terms:
            v = term(a, j0, j1, v)  # (n, out, P), or (n, out) for one position
        raw = None  # where the values are kept, if the last operation writes them there itself
        if self.residual is not None:
            g, b = v.chunk(2, dim=1)  # (n, F, P) each
            raw = None if self.out.raw is None else self.out.at("raw", a, j0, j1)
            h = self.residual.at("raw", a, j0, j1)
            v = torch.addcmul(h, g, torch.sigmoid(b), out=raw)  # h + a * sigmoid(b): the gate, written in place
        self.out.store(v, a, j0, j1, raw_written=raw is not None)


def _runs(row: list):
    """(j0, j1, value) for each run of equal values in a list."""
    j0 = 0
    for j in range(1, len(row) + 1):
        if j == len(row) or row[j] != row[j0]:
            yield j0, j, row[j0]
            j0 = j


class PixelCNNppCache:
    """What PixelCNNpp.init_cache returns: the network's maps, the plan of which positions each step
    computes, and the sampler's place. conditional_logprobs(x, index) -> (n, 1, K) for index = [d], the flat position d = (c*H + i)*W + j."""

    def __init__(self, model, x: torch.Tensor, y=None):
        C, H, W = model.shape
        self.model, self.C, self.H, self.W = model, C, H, W
        self.C_in = model.inputs.out_channels  # input channels the first layers read (C, or C * embedding size)
        self.layers = []
        self._build(model, y)
        top = self.top.ready[:H, :W]
        late = top > torch.arange(H * W).view(H, W)
        if late.any():
            i, j = late.nonzero()[0].tolist()
            raise ValueError(f"the network's output at pixel {(i, j)} depends on that pixel or a later one: "
                             "the model is not causal, so it cannot be sampled pixel by pixel")
        n, dtype, dev = x.shape[0], model.nin_out.weight.dtype, x.device
        with torch.inference_mode():  # the maps are only read and written in inference mode
            for m in [self.image] + [L.out for L in self.layers]:
                m.allocate(n, dtype, dev)
            for term in (t for L in self.layers for t in L.terms if isinstance(t, ConvTerm)):
                term.allocate(n, dtype, dev)
            self.image.window("raw", 0, H, 0, W)[:, self.C_in] = 1.0  # the channel of ones (zero in the padding)
            self.level_table = LevelTable(model.inputs, C, model.levels, dtype, dev)  # every level's input features
        # when each position is computed, from the output (read at pixel t at step t) back to the input
        self.top.need[:H, :W] = torch.arange(H * W).view(H, W)
        for L in reversed(self.layers):
            L.schedule(W)
        self.plan = [[] for _ in range(H * W)]  # step t -> [(layer, row, j0, j1)], in the order of the forward pass
        for L in self.layers:
            for a, row in enumerate(L.steps.tolist()):
                for j0, j1, t in _runs(row):
                    if t != NEVER:  # never: always zero, or nothing the output reads
                        self.plan[t].append((L, a, j0, j1))
        self.out_weight, self.out_bias = model.nin_out.weight.detach().flatten(1), model.nin_out.bias.detach()
        self.cursor = RasterCursor(x, W)
        self.mode = StepMode(x.device)  # one thread, inference mode
        self.params = None  # (n, P) mixture parameters of the current pixel

    # ----------------------------------------------------------------- the plan
    def _build(self, model, y=None):
        """The maps of PixelCNNpp.dmol_params, in the same order, with their ready steps (y: the labels
        of a class-conditional model)."""
        C, H, W = model.shape
        Fn, S = model.config.nr_filters, model.config.n_stages
        step = 2 ** (S - 1)
        Hp, Wp = H + (-H % step), W + (-W % step)  # padded to a multiple of 2^(S-1), as the forward pass does
        ready = torch.zeros(Hp, Wp, dtype=torch.long)
        ready[:H, :W] = torch.arange(1, H * W + 1).view(H, W)  # pixel t is known from step t + 1
        self.image = FeatureMap(self.C_in + 1, ready)  # the scaled (or embedded) pixels and a channel of ones

        def layer(terms, channels=Fn, residual=None):
            self.layers.append(Layer(terms, channels, residual))
            return self.layers[-1].out

        def resnet(block, h, skips=()):
            """GatedResnet (armini.nn.gated): c1 = conv_in(ce(h)) + nin(ce(cat(skips))), kept as ce(c1);
            out = h + a * sigmoid(b), (a, b) = conv_out(ce(c1))."""
            terms = [ConvTerm(block.conv_in, h, "ce")]
            if skips:  # ce(cat(s1, s2)) = elu(s1, s2, -s1, -s2): one nin term per skip, on its own ce (s, -s)
                w, total, start = block.nin_skip.weight.detach(), sum(s.F for s in skips), 0  # w (F, 2 total, 1, 1)
                for k, s in enumerate(skips):
                    ws = torch.cat([w[:, start: start + s.F], w[:, total + start: total + start + s.F]], 1)
                    bias = block.nin_skip.bias if k == 0 else None
                    terms.append(ConvTerm(block.nin_skip, s, "ce", weight=ws, bias=bias))
                    start += s.F
            c1 = layer(terms)
            return layer([ConvTerm(block.conv_out, c1, "ce")], residual=h)

        # up pass (down_shift / right_shift of the first layers are shifts of their outputs)
        u_terms = [ConvTerm(model.u_init, self.image, shift=(1, 0))]
        ul_terms = [ConvTerm(model.ul_init_up, self.image, shift=(1, 0)),
                    ConvTerm(model.ul_init_left, self.image, shift=(0, 1))]
        if y is not None:  # the class, at every position of both streams
            u_terms.append(ClassTerm(model.class_u(y), u_terms[0]))
            ul_terms.append(ClassTerm(model.class_ul(y), ul_terms[0]))
        u_list, ul_list = [layer(u_terms)], [layer(ul_terms)]
        for s in range(S):
            for res_u, res_ul in zip(model.up_u[s], model.up_ul[s]):
                u_list.append(resnet(res_u, u_list[-1]))
                ul_list.append(resnet(res_ul, ul_list[-1], [u_list[-1]]))
            if s < S - 1:
                u_list.append(layer([ConvTerm(model.downsize_u[s], u_list[-1])]))  # (h/2, w/2)
                ul_list.append(layer([ConvTerm(model.downsize_ul[s], ul_list[-1])]))
        # down pass
        u, ul = u_list.pop(), ul_list.pop()
        for s in range(S):
            if s > 0:
                u = layer([UpsizeTerm(model.upsize_u[s - 1], u)])  # (2h, 2w)
                ul = layer([UpsizeTerm(model.upsize_ul[s - 1], ul)])
            for res_u, res_ul in zip(model.down_u[s], model.down_ul[s]):
                u = resnet(res_u, u, [u_list.pop()])
                ul = resnet(res_ul, ul, [u, ul_list.pop()])
        assert not u_list and not ul_list
        ul.read_by("raw")
        self.top = ul  # the output reads it at each pixel

    # ----------------------------------------------------------------- a step
    def conditional_logprobs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # inference mode: no autograd bookkeeping at all, which is much of the cost of such small operations
        with self.mode:
            c, i, j, moved = self.cursor.advance(x, index)
            if moved:  # a new pixel: bring every map up to date, then its mixture parameters
                self._advance_to(x, i * self.W + j)
                v = self.top.at("raw", i, j, j + 1)  # (n, F)
                self.params = F.linear(F.elu(v), self.out_weight, self.out_bias)  # nin_out(elu(ul)): (n, P)
            # G and B reuse R's parameters, with R (and G) as drawn
            return self.model.pixel_conditionals(self.params, x[:, :, i, j] if c > 0 else None, c)  # (n, 1, K)

    def _advance_to(self, x: torch.Tensor, t: int):
        """Step t: the pixel t-1 just drawn enters the input, then every position planned for t is computed."""
        if t > 0:
            i, j = divmod(t - 1, self.W)
            pixel = self.image.at("raw", i, j, j + 1)[:, :self.C_in]  # (n, C_in): scaled to [-1, 1], or embedded
            self.level_table.write(x, i, j, out=pixel)
        for layer, a, j0, j1 in self.plan[t]:
            layer.compute(a, j0, j1)


def when_computed(cache: PixelCNNppCache, layer: int) -> str:
    """A drawing of map `layer` at its own resolution: each position shows the pixel (i, j) at whose
    step it is computed ('-': never, it is always zero or nothing the output reads needs it)."""
    W = cache.W
    return "\n".join(" ".join("  -  " if t == NEVER else "{},{:<2}".format(*divmod(t, W)) for t in row)
                     for row in cache.layers[layer].steps.tolist())


if __name__ == "__main__":  # python -m armini.fast.pixelcnnpp_cache: the plan of the default U-net on 8 x 8
    from ..models.pixelcnnpp import PixelCNNpp

    model = PixelCNNpp(shape=(1, 8, 8), nr_filters=4).eval()
    cache = PixelCNNppCache(model, torch.zeros(1, 1, 8, 8, dtype=torch.long))
    for k, L in enumerate(cache.layers):
        kinds = "+".join(type(t).__name__ for t in L.terms)
        print(f"layer {k} ({kinds}{' + gate' if L.residual is not None else ''}), {L.out.h} x {L.out.w}:")
        print(when_computed(cache, k), end="\n\n")
