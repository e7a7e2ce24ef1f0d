"""The causality inspector: which input dimensions move the conditional of dimension d?

An autoregressive model is only a valid model of p(x) if every conditional
p(x_d | x_<d) depends on earlier dimensions only. A bug that lets dimension d
peek at itself or at a later dimension still trains (the loss even drops
quickly: the model copies the answer) but the "likelihood" no longer sums to
one and sampling produces garbage. The inspector finds such leaks by experiment:

    M[d, j] = max over trials and values k of | log p(x_d = k | x') - log p(x_d = k | x) |,

where x' is x with input dimension j replaced by a different random value.
M[d, j] > 0 means "d's conditional moves when j changes": j is in d's context.
A model is causal iff M[d, j] = 0 whenever j does not come strictly before d.

"Before" is the model's own order: the step at which `model.sampling_steps()`
fills each dimension (for raster models that is `model.generation_order()`,
one dimension per step). Dimensions filled in the same step must not see each
other either, since they are drawn at the same time.

The test is generic: it only calls `model.conditionals(x)` on integer images,
so it works for every model in the course, whatever its inside looks like.
A gradient-based variant would need models to accept real-valued (relaxed
one-hot) inputs, which the contract does not promise, so there is none.

Each perturbed image is compared with the unperturbed one computed in the same
row of a batch of the same size: the same arithmetic in the same order, so on
a CPU an input that does not matter changes nothing, bit for bit. "Moves" means
"not torch.isclose": |change| > atol + rtol * |log p|. The tolerance absorbs
rounding-level effects (NADE's exclusive cumulative sum, non-deterministic GPU
kernels) and hides dependencies weaker than rounding (the faint outer edge of
a deep network's receptive field). Perturbation can also miss a dependency (a
random change may happen not to move the output, e.g. behind a dead ReLU),
hence `trials` and the random base image.

    report = check_causality(model)      # D forward passes, batched
    print(report)                        # OK / the leaking (target, input) pairs
    report.blind_spot((0, 3, 3))         # earlier dimensions inside the context's reach, NOT seen
    report.out_of_reach((0, 3, 3))       # earlier dimensions beyond the receptive field
    context_map(positive_copy(model), white, trials=1)  # all the architecture could see
    assert_causal(model)                 # for tests

Every dimension falls in one category relative to a target (`context_categories`):
TARGET; SEEN (moves the target's conditional); FUTURE (not earlier); and an earlier dimension
that does not move it is either

    BLIND (blind spot):  inside the reach of the target's context, yet not seen,
    OUT_OF_REACH:        beyond the receptive field.

The reach of a context is the part of the past it spans (`reach`): the bounding box of the
target and the earlier pixels it sees (the rows and columns between its extreme seen pixels, any
channel), from the earliest dimension it sees on. PixelCNN's wedge up-right of the target lies
inside that box (the rows higher up reach further right than the rows near the target): a blind
spot, which no depth removes. The far parts of the image a shallow network does not reach yet
lie outside it: out of reach, which more layers (or attention) would cover. (The second
condition matters for a raster-order attention window, which sees the last w dimensions: the
start of the oldest row it touches is out of reach, not a blind spot.) Gated PixelCNN has no blind spot,
only a finite reach; PixelSNAIL and the transformer have neither.

Video. For a video model (shape (T, C, H, W), armini.models.base.VideoARModel) coordinates are
(t, c, i, j): frame, channel, row, column. The report then says in which frame each dependency lies:
a leak names the later frame it comes from, `frame_matrix()` says which frames each frame's
conditionals see, `frame_leaks` lists the (frame, later frame) pairs that must not occur, and the
printed report lists, frame by frame, the frames each one sees. The reach of a context is then a
box in (frame, row, column).

Coordinates are (c, i, j): channel, row, column. Legend: T frames, C, H, W image, D = C*H*W (T*C*H*W
for a video), K levels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

# categories of `context_categories`, also the colour indices of viz.plot_context
FUTURE, BLIND, SEEN, TARGET, OUT_OF_REACH = 0, 1, 2, 3, 4


# ------------------------------------------------------------------------------ orders
def raster_rank(shape) -> torch.Tensor:
    """Step of each dimension in raster order, channels within a pixel: (C, H, W) long.
    For a video (T, C, H, W): frame by frame, raster order within a frame: (T, C, H, W) long."""
    if len(shape) == 4:
        T = shape[0]
        frame = raster_rank(shape[1:])  # (C, H, W)
        return torch.arange(T)[:, None, None, None] * frame.numel() + frame[None]  # (T, C, H, W)
    C, H, W = shape
    c, i, j = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W), indexing="ij")
    return (i * W + j) * C + c  # (C, H, W)


def step_rank(model, order=None) -> torch.Tensor:
    """The step at which `model` generates each dimension: (*shape) long, e.g. (C, H, W).

    Read from `model.sampling_steps()` (a list of (S,) flat position groups in order), or
    `model.sampling_steps(order)` for a model that follows the order given, so dimensions
    generated together share a step."""
    order = model.resolve_order(order)
    rank = torch.full((model.dims,), -1, dtype=torch.long)  # (D,) by flat position
    steps = model.sampling_steps() if order is None else model.sampling_steps(order)
    for t, index in enumerate(steps):
        index = index.cpu().long()
        if (rank[index] >= 0).any():
            raise ValueError(f"{type(model).__name__}.sampling_steps() fills a dimension twice (step {t})")
        rank[index] = t
    if (rank < 0).any():
        missing = _coord(int((rank < 0).nonzero()[0]), model.shape)
        raise ValueError(f"{type(model).__name__}.sampling_steps() never fills dimension {missing}")
    return rank.view(model.shape)


def _coord(flat: int, shape) -> tuple:
    """Flat index into x.flatten(1) -> coordinates, (c, i, j) for an image."""
    return tuple(int(v) for v in torch.unravel_index(torch.tensor(int(flat)), tuple(shape)))


def _flat(target, shape) -> int:
    """(c, i, j), or (i, j) meaning the last channel, -> flat index into x.flatten(1).
    For a video: (t, c, i, j), or (t, i, j) meaning the last channel."""
    if len(shape) == 4:
        T, C, H, W = shape
        target = tuple(int(t) for t in target)
        if len(target) == 3:
            target = (target[0], C - 1) + target[1:]
        t, c, i, j = target
        if not (0 <= t < T and 0 <= c < C and 0 <= i < H and 0 <= j < W):
            raise ValueError(f"target {target} is outside the video of shape (T, C, H, W) = {tuple(shape)}")
        return ((t * C + c) * H + i) * W + j
    C, H, W = shape
    target = tuple(int(t) for t in target)
    if len(target) == 2:
        target = (C - 1,) + target
    c, i, j = target
    if not (0 <= c < C and 0 <= i < H and 0 <= j < W):
        raise ValueError(f"target {target} is outside the image of shape (C, H, W) = {tuple(shape)}")
    return (c * H + i) * W + j


def as_coord(target, shape) -> tuple:
    """A target as (c, i, j); None means default_target(shape), (i, j) the pixel's last channel.
    For a video (t, c, i, j), with (t, i, j) for the pixel's last channel."""
    return _coord(_flat(default_target(shape) if target is None else target, shape), shape)


def default_target(shape) -> tuple:
    """The centre pixel's last channel: it has context on all sides, and sees its own earlier channels.
    For a video, that pixel of the last frame (which sees every earlier frame)."""
    if len(shape) == 4:
        return (shape[0] - 1,) + default_target(shape[1:])
    C, H, W = shape
    return (C - 1, H // 2, W // 2)


# ------------------------------------------------------------------------ perturbation
def _base_images(model, x, generator) -> torch.Tensor:
    """The images to perturb, (N, *shape) long: x, or one random image drawn with `generator`."""
    if x is None:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        x = torch.randint(model.levels, (1,) + tuple(model.shape), generator=g)
    x = torch.as_tensor(x)
    if x.dim() == len(model.shape):  # one image
        x = x.unsqueeze(0)
    return model.check_input(x, "x")


def _perturbed(x0: torch.Tensor, levels: int, trials: int, generator) -> torch.Tensor:
    """trials*D copies of one image x0 (C, H, W); copy (t, j) has dimension j set to a different value.

    Returns (trials*D, C, H, W), ordered trial-major: row t*D + j changes dimension j."""
    D = x0.numel()
    flat = x0.reshape(1, D).repeat(trials * D, 1)  # (T*D, D)
    j = torch.arange(D).repeat(trials)  # (T*D,) which dimension each copy changes
    shift = torch.randint(1, levels, (trials * D,), generator=generator)  # never 0: the value really changes
    rows = torch.arange(trials * D)
    flat[rows, j] = (flat[rows, j] + shift.to(flat.device)) % levels
    return flat.view(trials * D, *x0.shape)


def _change(lp: torch.Tensor, lp0: torch.Tensor, rtol: float, atol: float):
    """Compare log-probabilities lp with lp0 over the last axis (the K values).

    Returns (max_k |lp - lp0|, moved), moved = some k is not close in torch.isclose's sense:
    |lp - lp0| > atol + rtol * |lp0|. The rtol part absorbs float32 rounding, which grows with
    |log p| (a kernel may sum in another order for another row of a batch)."""
    diff = (lp - lp0).abs()
    diff = torch.where(lp == lp0, torch.zeros_like(diff), diff)  # -inf == -inf is no change
    moved = (diff > atol + rtol * lp0.abs()).any(-1)
    return diff.amax(-1), moved


def _labels(model, y, n):
    """Class labels for a batch of n images (None for unconditional models; label 0 if y is None)."""
    if getattr(model, "num_classes", None) is None:
        return None
    y = torch.zeros((), dtype=torch.long) if y is None else torch.as_tensor(y).reshape(-1)[:1].squeeze()
    return y.expand(n).to(model.model_device)


@torch.no_grad()
def _sweep(model, x, trials, generator, y, batch_size, pick, rtol=1e-5, atol=1e-6, order=None):
    """Perturb every input dimension of every base image, `trials` times, and return (change, moved):

        change[j, ...] = max over images and trials of max_k |pick(conditionals(x'))_k - pick(conditionals(x))_k|
        moved[j, ...]  = some image and trial moved it beyond the tolerance (see _change)

    where pick selects the part of the (B, C, H, W, K) conditionals we care about; an order-agnostic
    model computes its conditionals in `order` (None: its own)."""
    extra = model._order_kwargs(model.resolve_order(order)) if order is not None else {}
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()  # dropout off: the output must be a function of the input
    dev = model.model_device
    D = model.dims
    changes, moves = [], []  # one (D, ...) result per base image
    try:
        for x0 in _base_images(model, x, g):
            xs = _perturbed(x0, model.levels, trials, g)  # (T*D, C, H, W)
            base = {}  # batch size -> conditionals of that many copies of x0
            parts = []
            for chunk in xs.split(batch_size):
                b = len(chunk)
                if b not in base:
                    base[b] = pick(model.conditionals(x0.repeat(b, *[1] * x0.dim()).to(dev), _labels(model, y, b), **extra))
                lp = pick(model.conditionals(chunk.to(dev), _labels(model, y, b), **extra))  # (b, ...)
                # row r is compared with x0 computed in the same row of a batch of the same size: the same
                # arithmetic in the same order, so an input that does not matter changes nothing, exactly
                parts.append([t.cpu() for t in _change(lp, base[b], rtol, atol)])
            ch, mv = (torch.cat(p).view(trials, D, *p[0].shape[1:]) for p in zip(*parts))  # (T, D, ...)
            changes.append(ch.float().amax(0))  # (D, ...): max over trials
            moves.append(mv.any(0))
    finally:
        model.train(was_training)
    return torch.stack(changes).amax(0), torch.stack(moves).any(0)  # over base images


def dependency_map(model, x=None, *, target=None, trials: int = 2, generator=None, y=None,
                   batch_size: int = 64) -> torch.Tensor:
    """How much each input dimension moves the conditional of one target dimension: (C, H, W) float
    ((T, C, H, W) for a video, target (t, c, i, j) or (t, i, j)).

    map[c, i, j] = max over trials of max_k |change of log p(x_target = k | ...)| when x[c, i, j]
    is replaced by a random different value. target: (c, i, j), or (i, j) for the last channel;
    default: `default_target` (the centre pixel's last channel). x: (C, H, W) or (N, C, H, W)
    integer images to perturb (default: one random image from `generator`, seed 0 if None).
    y: one class label for class-conditional models (default 0).
    Costs trials*D forward passes of the whole model (batched): seconds for 28x28 images.
    Tiny values (~1e-7) may be rounding rather than dependence: `context_map` applies a tolerance."""
    at = (slice(None),) + as_coord(target, model.shape)  # [:, c, i, j] (or [:, t, c, i, j])
    change, _ = _sweep(model, x, trials, generator, y, batch_size, lambda lp: lp[at])  # (D,)
    return change.view(model.shape)


def context_map(model, x=None, *, target=None, trials: int = 2, generator=None, y=None,
                rtol: float = 1e-5, atol: float = 1e-6, batch_size: int = 64) -> torch.Tensor:
    """(C, H, W) bool: the input dimensions that move the target's conditional (beyond rounding).

    Same experiment as dependency_map; "moves" means some log p(x_target = k) is not
    torch.isclose to its old value: |change| > atol + rtol * |log p|."""
    at = (slice(None),) + as_coord(target, model.shape)  # [:, c, i, j] (or [:, t, c, i, j])
    _, moved = _sweep(model, x, trials, generator, y, batch_size, lambda lp: lp[at], rtol, atol)
    return moved.view(model.shape)


def positive_copy(model, scale: float = 1.0, dtype=torch.float64):
    """A CPU copy of `model` with every weight and bias replaced by |w| * scale, in `dtype`.

    The architecture probe of lessons 02-06: with positive weights no ReLU is ever off and no two
    paths cancel, so on an all-white image `context_map(positive_copy(model), white, trials=1)`
    shows everything the architecture *could* see, not what one set of weights happens to use.
    Gated and recurrent models saturate (tanh, sigmoid at 1) under large positive weights, and a
    long chain of small ones falls below rounding: a `scale` < 1 and float64 keep both visible.
    `model` itself is left untouched."""
    probe = copy.deepcopy(model).cpu().to(dtype)
    with torch.no_grad():
        for p in probe.parameters():
            p.abs_().mul_(scale)
    return probe


def dependency_matrix(model, x=None, *, trials: int = 2, generator=None, y=None,
                      batch_size: int = 64) -> torch.Tensor:
    """M[d, j]: how much the conditional of dimension d moves when input dimension j changes: (D, D).

    d and j index x.flatten(1), i.e. (c, i, j) -> (c*H + i)*W + j. trials*D forward passes, batched:
    meant for small images."""
    return _matrices(model, x, trials, generator, y, batch_size)[0]


def _matrices(model, x, trials, generator, y, batch_size, rtol=1e-5, atol=1e-6, order=None):
    """(change, moved), both (D targets, D inputs): see dependency_matrix and context_map."""
    D, K = model.dims, model.levels
    change, moved = _sweep(model, x, trials, generator, y, batch_size,
                           lambda lp: lp.reshape(lp.shape[0], D, K), rtol, atol, order)  # (D inputs, D targets)
    return change.T.contiguous(), moved.T.contiguous()


# ----------------------------------------------------------------------------- report
def _span(hit: torch.Tensor) -> torch.Tensor:
    """(N, L) bool -> (N, L) bool: True from the first to the last True of each row (inclusive)."""
    return (hit.cumsum(-1) > 0) & (hit.flip(-1).cumsum(-1).flip(-1) > 0)


def reach(seen: torch.Tensor, rank: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reach of each target's context: (N, C, H, W) bool, True for the dimensions it spans.

    seen: (N, C, H, W) bool, what N targets see; rank: (C, H, W) step of each dimension;
    targets: (N, 3) long (c, i, j). A dimension is within reach when it lies
      - inside the bounding box of the context: the rows and columns spanned by the target and the
        earlier pixels it sees (a pixel counts if any of its channels is seen), and
      - not before the earliest dimension seen (so a raster-order window, which sees the last w
        dimensions, reaches nothing before them, although its box spans whole rows).
    With nothing seen, nothing earlier is within reach. For a video, seen (N, T, C, H, W), rank
    (T, C, H, W), targets (N, 4) (t, c, i, j): the box spans frames, rows and columns."""
    N, ch = len(targets), rank.dim() - 3  # ch: the channel axis of `shape` (0 for an image, 1 for a video)
    t_rank = rank[tuple(targets.T)]  # (N,)
    each = (N,) + (1,) * rank.dim()  # a per-target value broadcast over (N, *shape)
    earlier_seen = seen.bool() & (rank[None] < t_rank.view(each))  # (N, *shape)
    pixels = earlier_seen.any(1 + ch)  # (N, H, W) earlier pixels seen ((N, T, H, W) for a video)
    at = [targets[:, a] for a in range(targets.shape[1]) if a != ch]  # the target's pixel
    pixels[(torch.arange(N), *at)] = True  # the target itself
    box = torch.ones_like(pixels)
    for a in range(1, pixels.dim()):  # rows and columns (and frames): the span of the pixels seen
        others = tuple(b for b in range(1, pixels.dim()) if b != a)
        along = [1] * pixels.dim()
        along[0], along[a] = N, pixels.shape[a]
        box = box & _span(pixels.any(others)).view(along)  # (N, H, W) (or (N, T, H, W))
    first = torch.where(earlier_seen, rank[None], t_rank.view(each)).flatten(1).amin(1)  # (N,)
    return box.unsqueeze(1 + ch) & (rank[None] >= first.view(each))  # (N, *shape)


def _categories(seen: torch.Tensor, rank: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """context_categories for N targets at once: seen (N, C, H, W) bool, targets (N, 3) -> (N, C, H, W) long
    (for a video (N, T, C, H, W) and (N, 4))."""
    N = len(targets)
    n = torch.arange(N)
    t_rank = rank[tuple(targets.T)]  # (N,)
    earlier = rank[None] < t_rank.view((N,) + (1,) * rank.dim())  # (N, *shape)
    inside = reach(seen, rank, targets)  # (N, *shape)
    cat = torch.full(seen.shape, FUTURE, dtype=torch.long)
    cat[earlier & ~inside] = OUT_OF_REACH
    cat[earlier & inside] = BLIND
    cat[seen.bool()] = SEEN
    cat[(n, *targets.T)] = TARGET
    return cat


def context_categories(seen: torch.Tensor, rank: torch.Tensor, target) -> torch.Tensor:
    """Label every dimension relative to `target`: (C, H, W) long with values

    TARGET        the target itself
    SEEN          moves the target's conditional
    BLIND         earlier, within the reach of the context (inside its bounding box and not before
                  the earliest dimension it sees, see `reach`), but does not move it: a blind spot
    OUT_OF_REACH  earlier, outside that box: beyond the receptive field
    FUTURE        not earlier: must not move it (a leak if it does, shown as SEEN)."""
    shape = tuple(rank.shape)
    t = torch.tensor([as_coord(target, shape)])  # (1, 3)
    return _categories(torch.as_tensor(seen).bool()[None], rank, t)[0]


def context_counts(seen: torch.Tensor, target, rank=None) -> dict:
    """Count the target's earlier dimensions by kind: {"earlier", "seen", "blind spot", "out of reach"}.

    seen: (C, H, W) bool, e.g. from context_map; rank: the model's step_rank (None: raster order).
    Every lesson counts this way, so "blind spot" means the same everywhere (see context_categories)."""
    seen = torch.as_tensor(seen).bool()
    rank = raster_rank(seen.shape) if rank is None else rank
    cat = context_categories(seen, rank, target)
    earlier = rank < rank[as_coord(target, tuple(rank.shape))]
    return {"earlier": int(earlier.sum()), "seen": int((seen & earlier).sum()),
            "blind spot": int((cat == BLIND).sum()), "out of reach": int((cat == OUT_OF_REACH).sum())}


@dataclass
class CausalityReport:
    """What `check_causality` found.

    matrix: (D, D) float, matrix[d, j] = change of d's conditional when input j changes (dependency_matrix);
            d and j index x.flatten(1)
    seen:   (D, D) bool, seen[d, j] = that change is beyond rounding (see context_map)
    rank:   (C, H, W) long, the step at which the model generates each dimension
    leaks:  list of (target, input) coordinate pairs ((c, i, j), (c, i, j)) where the target's conditional
            moves although the input is not strictly earlier. Must be empty.
    For a video model, shape (T, C, H, W), coordinates (t, c, i, j), rank (T, C, H, W); see
    frame_matrix() and frame_leaks.
    """

    name: str
    shape: tuple
    matrix: torch.Tensor
    seen: torch.Tensor
    rank: torch.Tensor
    trials: int
    leaks: list

    @property
    def ok(self) -> bool:
        """True when no leak was found."""
        return not self.leaks

    def _row(self, target) -> int:
        return _flat(as_coord(target, self.shape), self.shape)

    def context(self, target=None) -> torch.Tensor:
        """(C, H, W) bool: the dimensions that move the target's conditional (default target: the centre)."""
        return self.seen[self._row(target)].view(self.shape)

    def earlier(self, target=None) -> torch.Tensor:
        """(C, H, W) bool: the dimensions generated strictly before the target."""
        return self.rank < self.rank.flatten()[self._row(target)]

    def unseen(self, target=None) -> torch.Tensor:
        """(C, H, W) bool: earlier dimensions that do NOT move the target: blind spot or out of reach."""
        return self.earlier(target) & ~self.context(target)

    def blind_spot(self, target=None) -> torch.Tensor:
        """(C, H, W) bool: earlier dimensions inside the context's reach that do NOT move the target
        (PixelCNN's wedge above-right; see context_categories)."""
        return self.categories(target) == BLIND

    def out_of_reach(self, target=None) -> torch.Tensor:
        """(C, H, W) bool: earlier dimensions beyond the context's reach (a finite receptive field)."""
        return self.categories(target) == OUT_OF_REACH

    def categories(self, target=None) -> torch.Tensor:
        """(C, H, W) long: TARGET / SEEN / BLIND / OUT_OF_REACH / FUTURE for every dimension
        (see context_categories)."""
        return context_categories(self.context(target), self.rank, as_coord(target, self.shape))

    def counts(self, target=None) -> dict:
        """The target's earlier dimensions by kind: {"earlier", "seen", "blind spot", "out of reach"}."""
        return context_counts(self.context(target), as_coord(target, self.shape), self.rank)

    def context_text(self, target=None) -> str:
        """The target's context as text, one block per channel (per frame and channel for a video):
        X target, # seen, o blind spot, - out of reach, . future."""
        symbols = {TARGET: "X", SEEN: "#", BLIND: "o", OUT_OF_REACH: "-", FUTURE: "."}
        cats = self.categories(target)
        blocks = []
        for where in (torch.cartesian_prod(*map(torch.arange, cats.shape[:-2])).view(-1, cats.dim() - 2).tolist()):
            rows = [" ".join(symbols[int(v)] for v in row) for row in cats[tuple(where)]]
            name = f"channel {where[-1]}" if len(where) == 1 else f"frame {where[0]}, channel {where[1]}"
            blocks.append(f"{name}:\n" + "\n".join(rows))
        return "\n".join(blocks)

    # ---------------------------------------------------------------- frames (video models)
    @property
    def is_video(self) -> bool:
        return len(self.shape) == 4

    def frame_matrix(self) -> torch.Tensor:
        """(T, T) bool for a video model: [t, s] = some conditional of frame t moves when a dimension of
        frame s changes. A causal video model has nothing above the diagonal (no frame sees a later one)."""
        if not self.is_video:
            raise ValueError(f"frame_matrix() is for video models (shape (T, C, H, W)); this shape is {self.shape}")
        T = self.shape[0]
        return self.seen.view(T, self.seen.shape[0] // T, T, -1).any(3).any(1)  # (T, T)

    @property
    def frame_leaks(self) -> list:
        """(frame, later frame) pairs where a conditional of the frame moves when the later frame changes."""
        if not self.is_video:
            return []
        return [tuple(p) for p in torch.triu(self.frame_matrix(), diagonal=1).nonzero().tolist()]

    def frame_summary(self) -> str:
        """One line per frame: which frames its conditionals see (a video model)."""
        F, T = self.frame_matrix(), self.shape[0]
        lines = []
        for t in range(T):
            earlier = [s for s in range(t) if F[t, s]]
            later = [s for s in range(t + 1, T) if F[t, s]]
            own = "its own earlier pixels" if F[t, t] else "none of its own pixels"
            seen = f"frames {', '.join(map(str, earlier))} and {own}" if earlier else own
            if len(earlier) == 1:
                seen = f"frame {earlier[0]} and {own}"
            leak = f"; LEAK: later frames {', '.join(map(str, later))}" if later else ""
            lines.append(f"  frame {t} sees {seen}{leak}")
        return "\n".join(lines)

    def _kind(self, d, j) -> str:
        """Why input j may not be in d's context, in words."""
        if d == j:
            return "the dimension itself"
        if self.rank[d] == self.rank[j]:
            return "generated in the same step"
        if self.is_video:
            if j[0] > d[0]:
                return f"a later frame (frame {j[0]}; the target is in frame {d[0]})"
            if d[2:] == j[2:]:
                return f"a later channel of the same pixel (frame {d[0]})"
            return f"a later dimension of the same frame (frame {d[0]})"
        if d[1:] == j[1:]:
            return "a later channel of the same pixel"
        return "a later dimension"

    def __str__(self) -> str:
        D = self.seen.shape[0]
        head = f"Causality check of {self.name} (shape {self.shape}, {D} dimensions, {self.trials} trials): "
        frames = ("\n" + self.frame_summary()) if self.is_video else ""
        if not self.ok:
            lines = [f"  {d} moves when {j} changes: {self._kind(d, j)}" for d, j in self.leaks[:10]]
            more = f"\n  ... and {len(self.leaks) - 10} more" if len(self.leaks) > 10 else ""
            return head + f"LEAKS in {len(self.leaks)} (target, input) pairs\n" + "\n".join(lines) + more + frames
        r = self.rank.flatten()
        earlier = r[None, :] < r[:, None]  # (D, D): [d, j] = j is generated before d
        n_seen = (self.seen & earlier).sum(1).float()  # (D,)
        targets = torch.stack(torch.unravel_index(torch.arange(D), self.shape), 1)  # (D, 3) every target
        cat = _categories(self.seen.view(D, *self.shape), self.rank, targets)  # (D, *shape)
        n_blind, n_out = int((cat == BLIND).sum()), int((cat == OUT_OF_REACH).sum())
        return head + (f"OK, no leaks.\n  a conditional sees {n_seen.mean():.1f} earlier dimensions on average "
                       f"(min {int(n_seen.min())}, max {int(n_seen.max())}); of the (dimension, earlier "
                       f"dimension) pairs not seen, {n_blind} are blind spots (inside the context's reach) "
                       f"and {n_out} out of reach (beyond the receptive field)") + frames

    __repr__ = __str__


def check_causality(model, x=None, *, trials: int = 2, generator=None, y=None, rtol: float = 1e-5,
                    atol: float = 1e-6, batch_size: int = 64, order=None) -> CausalityReport:
    """Measure the full dependency matrix and list every leak: an input that is not strictly
    earlier in the model's order (itself, a later dimension, or one filled in the same step)
    but moves the conditional beyond rounding (|change| > atol + rtol * |log p|).
    See the module docstring for the method and its limits; x, trials, generator, y as in dependency_map.
    order: for a model that can follow any order (any_order = True), check it in this order
    ((D,) flat positions, see armini.orders; None: the model's own)."""
    M, seen = _matrices(model, x, trials, generator, y, batch_size, rtol, atol, order)  # (D, D) each
    rank = step_rank(model, order)  # (C, H, W)
    r = rank.flatten()
    not_before = r[None, :] >= r[:, None]  # (D, D): [d, j] = j is not strictly before d
    pairs = (seen & not_before).nonzero().tolist()
    pairs.sort(key=lambda p: (int(r[p[0]]), int(r[p[1]])))  # first leaks in generation order first
    leaks = [(_coord(d, model.shape), _coord(j, model.shape)) for d, j in pairs]
    return CausalityReport(type(model).__name__, tuple(model.shape), M, seen, rank, trials, leaks)


def assert_causal(model, x=None, **kwargs) -> CausalityReport:
    """Raise AssertionError naming the first leaking (target, input) pairs; return the report if causal."""
    report = check_causality(model, x, **kwargs)
    if not report.ok:
        raise AssertionError(str(report))
    return report
