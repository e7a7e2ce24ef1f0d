"""Pictures for the lessons: image grids, training curves, per-pixel likelihood, masks,
a model's context, a widget to scrub through sampling one step at a time, and videos
(a player with a frame slider, GIF/MP4 files).

Matplotlib only (and Pillow, which matplotlib installs, for GIF files). Every drawing function
takes an optional `ax` and returns what it drew on, so lessons can combine them in one figure.
Images are integer tensors (B, C, H, W) with values in [0, K), as everywhere in armini; K = levels;
videos are (N, T, C, H, W).

    viz.show_images(model.sample(16), levels=model.levels)
    viz.plot_context(model, target=(0, 14, 14))      # what does pixel (14, 14) see?
    viz.SamplingScrubber(model, n=4)                 # a slider over sampling steps (in Jupyter)
    viz.CompletionExplorer(model, test.images[:8])   # complete a masked image, then scrub (lesson 09)
    viz.TokenExplorer(tokenizer, test.images[:8])    # an image's tokens; swap one, see the decoding (lesson 11)
    viz.play(videos[:4], levels=256)                 # videos (N, T, C, H, W): play button and frame slider
    viz.save_video(videos[:4], "moving.gif", fps=8)  # an animated GIF (or .mp4 with imageio-ffmpeg)
"""
from __future__ import annotations

import io
import math
import os
import tempfile
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from . import causality
from . import env_flag
from . import orders as orders_lib
from .files import atomic_write
from .models.base import LN2
from .sampling_record import SamplingRecord


# ------------------------------------------------------------------------------ images
def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def make_grid(x, nrow: int = 8, pad: int = 1, pad_value: float = 0.0) -> np.ndarray:
    """Tile images (B, C, H, W) into one array, `nrow` images per row, `pad` pixels between and around.

    Returns (rows*(H+pad)+pad, cols*(W+pad)+pad) for C = 1, with a trailing C axis otherwise
    (what plt.imshow wants); rows = ceil(B / nrow), cols = min(nrow, B)."""
    x = _numpy(x).astype(np.float64)
    if x.ndim != 4:
        raise ValueError(f"make_grid wants images (B, C, H, W), got shape {x.shape}")
    B, C, H, W = x.shape
    cols = max(1, min(nrow, B))
    rows = math.ceil(B / cols)
    grid = np.full((C, rows * (H + pad) + pad, cols * (W + pad) + pad), pad_value, dtype=np.float64)
    for b in range(B):
        top, left = _tile_origin(b, cols, H, W, pad)
        grid[:, top:top + H, left:left + W] = x[b]
    return grid[0] if C == 1 else grid.transpose(1, 2, 0)  # (H', W') or (H', W', C)


def _tile_origin(b: int, cols: int, H: int, W: int, pad: int) -> tuple:
    """Top-left (row, column) of image b in make_grid's layout."""
    return pad + (b // cols) * (H + pad), pad + (b % cols) * (W + pad)


def _as_images(x, levels):
    """Integer images (B, C, H, W), (C, H, W) or (H, W) -> floats (B, C, H, W) in [0, 1]."""
    x = _numpy(x)
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)  # (B, C, H, W)
    if x.shape[1] not in (1, 3):
        x = x.reshape(-1, 1, *x.shape[2:])  # neither gray nor RGB: each channel as a gray image
    if levels is None:
        if np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float64)  # assume floats in [0, 1] already
        levels = max(int(x.max()) + 1, 2)  # a guess: pass levels to be sure
    return x.astype(np.float64) / (levels - 1)


def show_images(x, levels=None, nrow: int = 8, ax=None, title=None):
    """Show integer images (B, C, H, W) with values in [0, levels) as a grid (grayscale or RGB).

    levels=None guesses max+1 for integers (floats are taken as [0, 1]): pass it when you know it.
    Returns the axes."""
    grid = make_grid(_as_images(x, levels), nrow=nrow, pad=1, pad_value=1.0)
    ax = ax or plt.subplots(figsize=(min(12, 1 + grid.shape[1] / 12), min(12, 1 + grid.shape[0] / 12)))[1]
    ax.imshow(grid.clip(0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


# ---------------------------------------------------------------------------- training
def _curve(points):
    """[(step, bpd), ...] or [bpd, ...] -> (steps, values) arrays."""
    points = list(points)
    if points and np.ndim(points[0]) == 0:
        return np.arange(1, len(points) + 1), np.asarray(points, dtype=float)
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def plot_curves(history, ax=None, title=None):
    """Train and test bits/dim against training steps.

    history: an object with `.train` and `.test` lists of (step, bpd) pairs (what armini's training
    loop returns), or a dict with those keys. Plain lists of numbers are plotted against 1, 2, ..."""
    get = history.get if isinstance(history, dict) else (lambda k, d=None: getattr(history, k, d))
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for name, style in (("train", "-"), ("test", "o-")):
        points = get(name, None)
        if points:
            steps, bpd = _curve(points)
            ax.plot(steps, bpd, style, label=f"{name} ({bpd[-1]:.3f} at the end)", markersize=4)
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 2.5 on a short run
    ax.set_ylabel("bits / dimension")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax


@torch.no_grad()
def nll_heatmap(model, x, ax=None, nrow: int = 8, y=None):
    """Per-pixel cost -log2 p(x_ij | earlier) in bits, summed over channels, beside the images.

    x: integer images (B, C, H, W). ax: None or a pair of axes (images, heatmap).
    Returns (axes, nll) with nll a (B, H, W) numpy array of bits per pixel."""
    was_training = model.training
    model.eval()
    try:
        lp = model.log_prob_pixels(x.to(model.model_device), y)  # (B, C, H, W) nats
    finally:
        model.train(was_training)
    nll = (-lp / LN2).sum(1).cpu().numpy()  # (B, H, W) bits: -log2 p = -ln p / ln 2
    if ax is None:
        ax = plt.subplots(1, 2, figsize=(10, 4))[1]
    show_images(x, model.levels, nrow=nrow, ax=ax[0], title="images")
    heat = make_grid(nll[:, None], nrow=nrow, pad=1, pad_value=np.nan)  # padding stays blank
    im = ax[1].imshow(heat, cmap="magma", interpolation="nearest")
    ax[1].set_axis_off()
    ax[1].set_title(f"-log2 p per pixel (mean {nll.mean():.2f} bits)")
    ax[1].figure.colorbar(im, ax=ax[1], label="bits", shrink=0.8)
    return ax, nll


# ------------------------------------------------------------------------ masks, context
def plot_mask(mask, ax=None, title=None):
    """Draw a k x k 0/1 mask as a grid with its numbers (masks A and B of lesson 02).

    A 4-D conv mask (out, in, k, k) shows its [0, 0] slice; the centre tap is outlined."""
    m = _numpy(mask)
    m = m[0, 0] if m.ndim == 4 else m  # (k, k)
    k = m.shape[0]
    ax = ax or plt.subplots(figsize=(0.5 * k + 1, 0.5 * k + 1))[1]
    ax.imshow(m, cmap="Blues", vmin=-0.3, vmax=1.3)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=11)
    ax.set_xticks(np.arange(-0.5, m.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, k), minor=True)
    ax.grid(which="minor", color="k", linewidth=0.5)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.add_patch(Rectangle((k // 2 - 0.5, k // 2 - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    if title:
        ax.set_title(title)
    return ax


CONTEXT_COLOURS = {  # category of causality.context_categories -> (colour, legend label), in legend order
    causality.TARGET: ("#e63946", "target"),
    causality.SEEN: ("#2a6f97", "seen"),
    causality.BLIND: ("#f4a261", "earlier, inside reach, not seen (blind spot)"),
    causality.OUT_OF_REACH: ("#f3e3c3", "earlier, out of reach (receptive field)"),
    causality.FUTURE: ("#d9d9d9", "future (must not be seen)"),
}


def plot_context(model_or_map, target=None, ax=None, *, channel=None, x=None, generator=None, title=None):
    """Draw which pixels move the conditional of `target` (c, i, j): target, seen, blind spot
    (earlier, inside the context's reach, not seen), out of reach (beyond the receptive field), future.
    See causality.context_categories. The legend sits below the image, so panels side by side
    never cover it; remove it from all but one with ax.get_legend().remove().

    model_or_map: an ARModel (measured here with causality.context_map), a causality.CausalityReport,
    or a (C, H, W) dependency map (non-zero = seen; "earlier" then means raster order).
    With C > 1 every pixel is drawn as C vertical stripes (its channels, left to right);
    channel=c draws that channel only."""
    obj = model_or_map
    if isinstance(obj, causality.CausalityReport):
        seen, rank = obj.context(target), obj.rank
    elif isinstance(obj, torch.nn.Module):
        seen = causality.context_map(obj, x, target=target, generator=generator)
        rank = causality.step_rank(obj)
    else:
        seen = torch.as_tensor(obj) != 0
        rank = causality.raster_rank(seen.shape)
    target = causality.as_coord(target, tuple(rank.shape))
    cat = causality.context_categories(seen, rank, target)  # (C, H, W)
    cat = cat[channel:channel + 1] if channel is not None else cat
    C, H, W = cat.shape
    stripes = cat.permute(1, 2, 0).reshape(H, W * C).numpy()  # each pixel: C thin stripes, R G B
    colours = [CONTEXT_COLOURS[k][0] for k in sorted(CONTEXT_COLOURS)]
    ax = ax or plt.subplots(figsize=(4.5, 4))[1]
    ax.imshow(stripes, cmap=matplotlib.colors.ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5,
              interpolation="nearest", aspect=C)  # aspect C keeps pixels square
    ax.set_xticks(np.arange(-0.5, W * C, C), minor=True)
    ax.set_yticks(np.arange(-0.5, H), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.5 if max(H, W) > 12 else 1)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    handles = [Patch(color=c, label=lab) for c, lab in CONTEXT_COLOURS.values()]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), frameon=False, fontsize="small")
    note = f"\n(each pixel: channels 0..{C - 1}, left to right)" if C > 1 else ""
    ax.set_title(title or f"context of {target}{note}")
    return ax


# --------------------------------------------------------------------------- a U-net's path
UNET_COLOURS = {"first layer": "C7", "gated resnet": "C0", "stride-2 conv": "C2", "transposed conv": "C4",
                "gated resnet + shortcut": "C1"}  # the kinds of layer lesson 05 records in PixelCNN++'s u stream


def plot_unet_path(path, ax=None, colours=None, title=None):
    """Draw a U-net's layers in the order they run, one row per resolution, with its shortcuts (lesson 05).

    path: [(kind, side), ...], one entry per layer as forward hooks record them, `kind` a key of
    `colours` (default UNET_COLOURS). Layers of the way down push their output on a stack; the first
    layer of the way up ("transposed conv" or "gated resnet + shortcut") starts from the coarsest
    output, and every "gated resnet + shortcut" pops the latest output left: a grey arrow. Returns ax."""
    colours = colours or UNET_COLOURS
    ax = ax or plt.subplots(figsize=(12, 4))[1]
    sides = sorted({side for _, side in path}, reverse=True)  # e.g. 28, 14, 7: one row each
    row = lambda side: -1.6 * sides.index(side)  # noqa: E731  (the y of a resolution's row)
    stack, top, turned = [], {}, False
    for n, (kind, side) in enumerate(path):
        y, half = row(side), side / 70  # box size grows with the resolution
        ax.add_patch(Rectangle((n - half, y - half), 2 * half, 2 * half, color=colours[kind], alpha=0.8))
        ax.text(n, y - half - 0.15, f"{side}", ha="center", va="top", fontsize=9)
        top[n] = (n, y + half)
        if n:  # the data flow from the previous layer
            ax.plot([n - 1, n], [row(path[n - 1][1]), y], color="k", lw=0.6, zorder=0)
        way_up = kind in ("transposed conv", "gated resnet + shortcut")
        if way_up and not turned:
            stack.pop()  # the coarsest output starts the way up: not a shortcut
            turned = True
        if kind == "gated resnet + shortcut":
            ax.annotate("", xy=top[n], xytext=top[stack.pop()],
                        arrowprops=dict(arrowstyle="->", color="grey", connectionstyle="arc3,rad=-0.3"))
        elif not way_up:
            stack.append(n)
    ax.set_xlim(-1, len(path))
    ax.set_ylim(-1.6 * (len(sides) - 1) - 1, 2.5)
    ax.set_aspect("equal")
    ax.set_axis_off()
    kinds = {kind for kind, _ in path}
    ax.legend(handles=[Patch(color=c, alpha=0.8, label=k) for k, c in colours.items() if k in kinds],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(title or "the u stream, layer by layer (box size: resolution); grey arrows: shortcuts")
    return ax


# --------------------------------------------------------------------------- sampling
NOT_YET = (0.78, 0.86, 0.95)  # colour of the pixels a sampler has not generated yet
STRIP_WIDTH = 2.0  # inches per step in the strip shown below the widget


def static_mode() -> bool:
    """True when widgets cannot be shown: ARMINI_STATIC=1, the Agg backend, or no ipywidgets."""
    if env_flag("ARMINI_STATIC"):
        return True
    if matplotlib.get_backend().lower() == "agg":
        return True
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return True
    return False


def _display(obj) -> bool:
    """Show obj with IPython's display when running under IPython; return whether it was shown."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return False
    if get_ipython() is None:
        return False
    display(obj)
    return True



def show_with_figure(widget, figure) -> None:
    """Display widget() and, below it, the static figure(): the figure alone in static mode (static_mode()).
    Pages that cannot run widgets (GitHub, nbviewer) still show the figure. Outside IPython the figure is
    left open for plt.savefig."""
    if not static_mode():
        _display(widget())
    fig = figure()
    if _display(fig):
        plt.close(fig)  # shown once; the inline backend would show it again


class SamplingScrubber:
    """Sample once, then look at any step: the images so far and the distribution each value came from.

    The recording is an armini.sampling_record.SamplingRecord (`self.record`): the dimensions
    filled at each step and their distributions. This class only draws it: the partial images
    with the pixels filled at step t boxed in red (all of them, when a model fills several per
    step), the distribution of the first, and, for video shapes (T, C, H, W), the frame that
    step is in.

        s = SamplingScrubber(model, n=4, generator=torch.Generator().manual_seed(0))
        s                      # in Jupyter: a play button and a slider over steps 1..T
        s.frame(100)           # (partial images, probs of image 0, (c, i, j), value) at step index 100
        s.show()               # the widget with a static strip of 6 steps below it (the strip alone
                               # where widgets cannot run); a rendered notebook still shows sampling
        SamplingScrubber.from_record(record, levels)   # draw a record made elsewhere

    `callback` is also called at every step with the SampleStep (e.g. to check or log it).

    A prior over tokens (a two-stage model, lessons 11-12) samples token grids (n, D, h, w); with
    `render=` (a function tokens (n, D, h, w) -> images (n, C, H, W), such as a tokenizer's
    `decode`) the scrubber shows the image decoded from the tokens after each step, the image
    patches of tokens still to come shaded and the patch of the token just drawn boxed:

        SamplingScrubber(prior, n=4, render=tokenizer.decode)

    Integer images from `render` are scaled by `render_levels` (default: the `levels` of the object
    `render` is a method of, e.g. the tokenizer's; else 256); float images are taken in [0, 1].
    """

    def __init__(self, model, n: int = 1, generator=None, y=None, x=None, observed=None,
                 temperature: float = 1.0, image: int = 0, callback=None, render=None, render_levels=None):
        record = SamplingRecord.run(model, n, x=x, observed=observed, y=y, generator=generator,
                                    temperature=temperature, callback=callback)
        self._init(record, model.levels, image, render, render_levels)

    @classmethod
    def from_record(cls, record: SamplingRecord, levels: int, image: int = 0, render=None,
                    render_levels=None) -> "SamplingScrubber":
        """A scrubber over a record made elsewhere (SamplingRecord.run, or built by hand)."""
        self = cls.__new__(cls)
        self._init(record, levels, image, render, render_levels)
        return self

    def _init(self, record, levels, image, render=None, render_levels=None):
        self.record, self.levels, self.image, self.current = record, int(levels), int(image), 0
        self.final = record.final  # (n, *shape)
        self._widget = None
        if render is not None and not callable(render):
            raise TypeError(f"render must be a function tokens (n, D, h, w) -> images (n, C, H, W), such as a "
                            f"tokenizer's decode; got {type(render).__name__}")
        if render is not None and self.final.dim() != 4:
            raise ValueError(f"render= draws token grids (n, D, h, w); this record holds shape {tuple(self.final.shape)}")
        self._decode = render
        owner = getattr(render, "__self__", None)  # tok.decode -> tok
        self.render_levels = int(render_levels or getattr(owner, "levels", 256))

    @property
    def steps(self) -> int:
        """Number of sampling steps recorded."""
        return self.record.steps

    @property
    def step_of(self) -> torch.Tensor:
        """(n, *shape) the step that filled each dimension (-1: observed)."""
        return self.record.step_of.view(self.final.shape)

    def partial(self, t: int) -> torch.Tensor:
        """The images after step t (n, *shape): dimensions filled later hold 0, as in the sampler."""
        return self.record.partial(t)

    def frame(self, t: int):
        """Step t (0-based) as (partial images numpy, probs (K,) numpy, coordinates, sampled value).

        probs, coordinates and value are those of image `self.image` and the first dimension
        filled at step t; coordinates are (c, i, j) for images, (t, c, i, j) for video."""
        point = self.record.coords(t)[0]
        probs = self.record.probs[t][self.image, 0].numpy()  # (K,)
        return self.partial(t).numpy(), probs, point, self.record.value(t, self.image)

    # ------------------------------------------------------------------ drawing
    def decoded(self, t: int) -> torch.Tensor:
        """With render=: the images decoded from the tokens after step t, render(partial(t)) (n, C, H, W)."""
        if self._decode is None:
            raise ValueError("this scrubber draws the sampled values themselves: pass render= (e.g. a tokenizer's "
                             "decode) to decode token grids")
        with torch.no_grad():
            return self._decode(self.partial(t)).detach().cpu()

    def _decoded_at(self, t: int):
        """_images_at for token grids drawn through render=: the decoded images, the image patches of
        tokens still to come, and the patch of each token filled at step t."""
        images = self.decoded(t)
        n, C, H, W = images.shape
        h, w = self.final.shape[-2:]
        sy, sx = H // h, W // w  # pixels per token
        scale = 1.0 if images.is_floating_point() else self.render_levels - 1
        rgb = (images.float() / scale).clamp(0, 1).numpy()
        rgb = rgb if C == 3 else rgb[:, :1].repeat(3, axis=1)  # (n, 3, H, W)
        todo = (self.step_of > t).all(1)  # (n, h, w): no token of the position yet (every depth)
        todo = todo.repeat_interleave(sy, 1).repeat_interleave(sx, 2).numpy()  # (n, H, W)
        points = self.record.coords(t)
        cells = sorted({(i, j) for _, i, j in points})
        if len(points) == 1:
            d, i, j = points[0]
            where = f"token ({i}, {j})" + (f", depth {d}" if self.final.shape[1] > 1 else "")
        else:
            where = f"{len(points)} tokens at once"
        return rgb, todo, cells, where, (sy, sx)

    def _images_at(self, t: int):
        """What to draw at step t: (images (n, C, H, W) in [0, 1] as RGB, still-to-come mask (n, H, W),
        the (i, j) cells filled at step t, a caption, the (height, width) of a cell in pixels: (1, 1)
        for pixels, a token's patch with render=). Video shows the frame of step t."""
        if self._decode is not None:
            return self._decoded_at(t)
        images, todo = self.partial(t).float(), (self.step_of > t)
        points = self.record.coords(t)
        where = ""
        if images.dim() == 5:  # video (n, T, C, H, W): the frame the step is in
            f = points[0][0]
            images, todo = images[:, f], todo[:, f]
            points = [p[1:] for p in points if p[0] == f]
            where = f"frame {f}, "
        n, C, H, W = images.shape
        rgb = (images / (self.levels - 1)).numpy()  # (n, C, H, W) in [0, 1]
        rgb = rgb if C == 3 else rgb[:, :1].repeat(3, axis=1)  # (n, 3, H, W): gray as RGB
        pixels = sorted({(i, j) for _, i, j in points})
        if len(points) == 1:
            c, i, j = points[0]
            where += f"pixel ({i}, {j})" + (f", channel {c}" if C > 1 else "")
        else:
            where += f"{len(points)} dimensions at once"
        return rgb, todo.all(1).numpy(), pixels, where, (1, 1)

    def _draw(self, t: int, ax_img, ax_bar, one_image: bool = False):
        """Partial images with the pixels filled at step t boxed in red (left), the distribution (right).
        one_image: draw only image `self.image` (the one whose distribution is shown)."""
        rgb, todo, pixels, where, (sy, sx) = self._images_at(t)
        if one_image:
            rgb, todo = rgb[self.image : self.image + 1], todo[self.image : self.image + 1]
        n, _, H, W = rgb.shape
        rgb.transpose(0, 2, 3, 1)[todo] = NOT_YET  # pixels still to come, in a colour of their own
        cols = min(n, 8)
        ax_img.imshow(make_grid(rgb, nrow=cols, pad=1, pad_value=1.0), interpolation="nearest")
        for b in range(n):
            top, left = _tile_origin(b, cols, H, W, 1)
            for i, j in pixels:
                ax_img.add_patch(Rectangle((left + j * sx - 0.5, top + i * sy - 0.5), sx, sy, fill=False,
                                           edgecolor="red", linewidth=1.5))
        ax_img.set_axis_off()
        ax_img.set_title(f"step {t + 1}/{self.steps}: {where}")
        _, probs, _, value = self.frame(t)
        bars = ax_bar.bar(np.arange(len(probs)), probs, color="#2a6f97", width=1.0)
        bars[value].set_color("#e63946")
        ax_bar.set_xlabel("value" if self._decode is None else "token")
        ax_bar.set_ylabel("probability")
        how = "given" if self.record.observed(t, self.image) else "sampled"  # observed dims are kept
        ax_bar.set_title(f"p(x = . | earlier), {how} {value}")
        ax_bar.set_ylim(0, max(1e-3, float(probs.max())) * 1.1)

    def render(self, t: int):
        """A matplotlib figure of step t (0-based). Returns the figure."""
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [1.2, 1]})
        self._draw(t, a, b)
        fig.tight_layout()
        return fig

    def static(self, frames: int = 6, width: float = 2.6, one_image: bool = False):
        """A strip of `frames` evenly spaced steps, `width` inches each: partial images above, distributions
        below. one_image: only image `self.image` above (for a small strip), else all of them."""
        ts = np.unique(np.linspace(0, self.steps - 1, frames).round().astype(int))
        fig, axes = plt.subplots(2, len(ts), figsize=(width * len(ts), 2 * width), squeeze=False)
        for k, t in enumerate(ts):
            self._draw(int(t), axes[0, k], axes[1, k], one_image=one_image)
            axes[0, k].title.set_fontsize(8)
            axes[1, k].title.set_fontsize(7)
            if k:
                axes[1, k].set_ylabel("")  # one "probability" label for the row
        fig.tight_layout()
        return fig

    # ------------------------------------------------------------------ widget
    def widget(self):
        """The ipywidgets VBox: play button and a slider over steps 1..T above the picture."""
        if self._widget is None:
            import ipywidgets as w

            slider = w.IntSlider(value=1, min=1, max=self.steps, description="step",
                                 continuous_update=False, layout=w.Layout(width="60%"))
            play = w.Play(value=1, min=1, max=self.steps, interval=100, description="play")
            w.jslink((play, "value"), (slider, "value"))  # the browser moves the slider while playing
            slider.observe(self._on_change, names="value")
            self._parts = {"slider": slider, "play": play, "output": w.Output()}
            self._widget = w.VBox([w.HBox([play, slider]), self._parts["output"]])
            self._update(0)
        return self._widget

    @property
    def slider(self):
        """The step slider (built on first use), counting steps from 1 like the titles."""
        self.widget()
        return self._parts["slider"]

    @property
    def output(self):
        """The widget's output area, where the current step is drawn."""
        self.widget()
        return self._parts["output"]

    def _on_change(self, change):
        """Slider callback: move to the new step (the slider counts from 1, steps from 0)."""
        self._update(int(change["new"]) - 1)

    def _update(self, t: int):
        """Make step t current and redraw it into the output area (when a front end shows it)."""
        self.current = t
        from IPython import get_ipython

        if get_ipython() is None:
            return  # no front end (a test, a script): keep the state, skip the picture
        out = self._parts["output"]
        out.clear_output(wait=True)
        with out:
            fig = self.render(t)
            _display(fig)
            plt.close(fig)

    def show(self, frames: int = 6):
        """Display the widget and, below it, a small static strip of `frames` steps; where widgets
        cannot run (static_mode()), the strip alone.

        The strip is for pages that cannot run widgets: a notebook rendered on GitHub or nbviewer
        shows a widget as blank (or as "VBox(...)"), but still shows the strip's picture of sampling.
        Outside IPython the strip's figure is left open for plt.savefig; nothing is returned."""
        show_with_figure(self.widget, lambda: self.static(frames, width=STRIP_WIDTH, one_image=True))

    def _ipython_display_(self):
        self.show()


# --------------------------------------------------------------------------- completion
PRESETS = ("left half", "top half", "centre", "centre given", "random 50%", "drawn")  # "centre": the block missing
MODEL_ORDER = "model's order"  # the order choice that asks the model (completion_order, or its own fixed order)
GRID_MAX = 14  # the click grid has one button per pixel up to 14 x 14, else blocks in a grid of about 7 x 7


def preset_mask(name: str, H: int, W: int, generator=None) -> torch.Tensor:
    """The observed pixels of a mask preset: (H, W) bool, True where the pixel is given.

    "random 50%" draws from `generator` (a torch.Generator, for the same mask every time)."""
    mask = torch.zeros(H, W, dtype=torch.bool)
    if name == "left half":
        mask[:, : W // 2] = True
    elif name == "top half":
        mask[: H // 2] = True
    elif name in ("centre", "centre given"):  # the central block of half the size (rows 4-10 of 14)
        h, w = H // 2, W // 2
        top, left = (H - h + 1) // 2, (W - w + 1) // 2
        mask[top:top + h, left:left + w] = True  # "centre given": only the block is observed
        if name == "centre":  # "centre": everything but the block is observed
            mask = ~mask
    elif name == "random 50%":
        mask = torch.rand(H, W, generator=generator) < 0.5
    else:
        raise ValueError(f"no mask preset {name!r}; presets: {', '.join(PRESETS[:-1])}")
    return mask


def click_grid_shape(H: int, W: int) -> tuple:
    """(rows, cols, block) of the click grid: one button per pixel up to GRID_MAX x GRID_MAX,
    else one per block of block x block pixels, about 7 x 7 buttons."""
    if max(H, W) <= GRID_MAX:
        return H, W, 1
    block = math.ceil(max(H, W) / 7)
    return math.ceil(H / block), math.ceil(W / block), block


class CompletionExplorer:
    """Complete an image from part of it, then scrub through the filling (lesson 09).

    Pick an image, which pixels are observed (a preset, or "drawn": click the pixels on a grid),
    an order, and press "complete": the model samples the missing pixels once with the observed
    ones kept (a SamplingRecord), and a SamplingScrubber below scrubs through the steps.

        ex = viz.CompletionExplorer(model, test.images[:8])
        ex                                               # in Jupyter: the widget (a strip below it)
        ex.observed_mask("centre")                       # (H, W) bool, True where the pixel is given
        rec = ex.complete(image=0, preset="centre", order="hilbert")   # the run, as a SamplingRecord
        ex.note("centre")                                # what the order lets each missing pixel see

    Orders. A model that can follow any order (any_order=True, e.g. LMConv) offers MODEL_ORDER (its
    completion_order(observed)), the named orders of armini.orders, "random" and the `orders` you
    pass ({name: (H*W,) pixel order}); each is made observed-first with orders.observed_first, so
    every missing pixel sees every observed one. A fixed-order model (PixelCNN) offers only its own
    order, in which some observed pixels may come after missing ones: `note` counts them.

    presets: {name: (H, W) bool mask} added to the built-in PRESETS. generator_seed seeds the
    "random 50%" mask, the "random" order and every completion. In static mode (static_mode()) or
    outside IPython, showing it draws a static strip of the default completion: image 0, the first
    preset, the model's order.
    """

    def __init__(self, model, images, presets=None, orders=None, generator_seed=0):
        if len(model.shape) != 3:
            raise ValueError(f"CompletionExplorer completes images (C, H, W); this model's shape is {model.shape}")
        self.model, self.seed = model, int(generator_seed)
        _, self.H, self.W = model.shape
        self.images = self._check_images(images)  # (N, C, H, W) long
        self.masks = self._preset_masks(presets or {})  # {name: (H, W) bool}, "drawn" aside
        self.orders = self._named_orders(orders or {})  # {name: (H*W,)}; empty for a fixed-order model
        self.grid = click_grid_shape(self.H, self.W)  # (rows, cols, block)
        self.drawn = torch.zeros(self.grid[:2], dtype=torch.bool)  # the click grid: True = observed
        self.record, self.scrubber, self._widget = None, None, None

    # ------------------------------------------------------------------ choices
    def _check_images(self, images) -> torch.Tensor:
        images = torch.as_tensor(getattr(images, "images", images))  # a Dataset or a tensor
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(self.model.shape) or len(images) == 0:
            raise ValueError(f"images must be a tensor (N, C, H, W) of images shaped like the model's "
                             f"{tuple(self.model.shape)}, N >= 1; got shape {tuple(images.shape)}")
        return images.long().cpu()

    def _preset_masks(self, extra: dict) -> dict:
        g = torch.Generator().manual_seed(self.seed)
        masks = {name: preset_mask(name, self.H, self.W, g) for name in PRESETS[:-1]}
        for name, mask in extra.items():
            if name == "drawn":
                raise ValueError('"drawn" is the click grid\'s preset: give your mask another name')
            masks[name] = self._pixel_mask(mask, f"preset {name!r}")
        return masks

    def _named_orders(self, extra: dict) -> dict:
        if not self.model.any_order:
            if extra:
                raise ValueError(self._fixed_order_message(next(iter(extra))))
            return {}
        g = torch.Generator().manual_seed(self.seed)
        named = {name: orders_lib.named(name, self.H, self.W) for name in orders_lib.NAMED}
        named["random"] = orders_lib.random_order(self.H, self.W, g)
        for name, order in extra.items():
            named[name] = orders_lib.check_order(order, self.H * self.W, f"order {name!r}")
        return named

    @property
    def preset_names(self) -> list:
        """The mask presets to choose from, "drawn" (the click grid) last."""
        return list(self.masks) + ["drawn"]

    @property
    def order_names(self) -> list:
        """The orders to choose from: MODEL_ORDER, then (any-order models only) the named ones."""
        return [MODEL_ORDER] + list(self.orders)

    # ------------------------------------------------------------------ masks
    def _pixel_mask(self, mask, what: str) -> torch.Tensor:
        mask = torch.as_tensor(mask, dtype=torch.bool).cpu()
        if mask.numel() != self.H * self.W:
            raise ValueError(f"{what} must mark the {self.H}x{self.W} pixels (True: observed), "
                             f"got shape {tuple(mask.shape)}")
        return mask.reshape(self.H, self.W)

    def _drawn_mask(self, drawn) -> torch.Tensor:
        """A drawn mask, (H, W) pixels or the click grid's (rows, cols) blocks, as (H, W) pixels."""
        drawn = torch.as_tensor(drawn, dtype=torch.bool).cpu()
        rows, cols, block = self.grid
        if tuple(drawn.shape) == (rows, cols):  # blocks -> pixels
            return drawn.repeat_interleave(block, 0).repeat_interleave(block, 1)[: self.H, : self.W]
        return self._pixel_mask(drawn, f"drawn (or the {rows}x{cols} click grid)")

    def observed_mask(self, preset: str, drawn=None) -> torch.Tensor:
        """The observed pixels of `preset`, (H, W) bool (True: given). For "drawn": the mask `drawn`
        ((H, W) pixels or the click grid's blocks), or the click grid as it stands."""
        if preset == "drawn":
            return self._drawn_mask(self.drawn if drawn is None else drawn)
        if preset not in self.masks:
            raise ValueError(f"no mask preset {preset!r}; choose one of: {', '.join(self.preset_names)}")
        if drawn is not None:
            raise ValueError(f"drawn= goes with preset='drawn', not with {preset!r}")
        return self.masks[preset].clone()

    # ------------------------------------------------------------------ orders
    def _fixed_order_message(self, order) -> str:
        name = type(self.model).__name__
        return (f"{name} generates in one fixed order (its generation_order(), which its masks are built for), "
                f"so it cannot complete in order {order!r}: its only choice is {MODEL_ORDER!r}. To choose the "
                "order, use a model that can follow any order (any_order=True, e.g. LMConv)")

    def _base_order(self, order) -> torch.Tensor:
        """A named order, or an (H*W,) pixel order checked."""
        if isinstance(order, str):
            if order not in self.orders:
                raise ValueError(f"no order {order!r}; choose one of: {', '.join(self.order_names)}")
            return self.orders[order]
        return orders_lib.check_order(order, self.H * self.W, "order")

    def _model_choice(self, observed) -> torch.Tensor:
        """The model's own completion order, or observed_first of its generation order's pixels."""
        if hasattr(self.model, "completion_order"):
            return self.model.completion_order(observed)
        dims = self.model.generation_order().cpu()  # (D,) each pixel's channel 0 is its pixel index
        return orders_lib.observed_first(observed, dims[dims < self.H * self.W])

    def completion_order(self, observed, order=None):
        """The (H*W,) pixel order to complete in, every observed pixel first; None for a fixed-order
        model (it follows its own order). order: None or MODEL_ORDER, a name of order_names, or a pixel order."""
        if not self.model.any_order:
            if order is None or order == MODEL_ORDER:
                return None
            if isinstance(order, str):
                raise ValueError(self._fixed_order_message(order))
            return self.model.resolve_order(order)  # its own order: None; another: the model's clear error
        if order is None or order == MODEL_ORDER:
            return self._model_choice(observed)
        return orders_lib.observed_first(observed, self._base_order(order))

    def late_observed(self, observed) -> int:
        """How many observed pixels come after the first missing one in the model's own order
        (the missing pixels before them cannot see them)."""
        C = self.model.shape[0]
        given = observed.expand(C, self.H, self.W).reshape(-1)  # (D,)
        if bool(given.all()):
            return 0
        rank = orders_lib.rank(self.model.generation_order().cpu())  # (D,) step of each dimension
        late = given & (rank > rank[~given].min())  # (D,)
        return int(late.view(C, self.H, self.W).any(0).sum())

    def note(self, preset: str, order=None, drawn=None) -> str:
        """One sentence on what the missing pixels see in this completion."""
        observed = self.observed_mask(preset, drawn)
        name, given = type(self.model).__name__, int(observed.sum())
        if given == 0:
            return f"Nothing is observed: {name} samples a whole new image (click pixels on the grid to keep them)."
        if self.completion_order(observed, order) is not None:
            return (f"{name} visits the {given} observed pixels first (copied, not sampled), then generates the "
                    f"{observed.numel() - given} missing ones: each missing pixel sees every observed one.")
        late = self.late_observed(observed)
        if late == 0:
            return f"{name} follows its own order, in which all {given} observed pixels come first."
        return (f"{name} follows its own fixed order, in which {late} of the {given} observed pixels come after "
                "missing ones: they are kept, but the missing pixels before them cannot see them. A model that "
                "follows any order (LMConv) visits every observed pixel first.")

    # ------------------------------------------------------------------ completing
    def complete(self, image: int = 0, preset: str = PRESETS[0], order=None, drawn=None) -> SamplingRecord:
        """Complete image `image` from the pixels of `preset` (see observed_mask) in `order` (see
        completion_order): one sampling run with the observed pixels kept, recorded step by step."""
        if not 0 <= int(image) < len(self.images):
            raise IndexError(f"image must be 0..{len(self.images) - 1}, got {image}")
        observed = self.observed_mask(preset, drawn)  # (H, W)
        pixel_order = self.completion_order(observed, order)  # (H*W,) or None
        dev = self.model.model_device
        x = self.images[int(image)][None].to(dev)  # (1, C, H, W)
        return SamplingRecord.run(self.model, 1, x=x, observed=observed[None, None].to(dev), order=pixel_order,
                                  generator=torch.Generator(dev).manual_seed(self.seed))

    def static(self, frames: int = 6):
        """A strip of `frames` steps of the default completion (image 0, the first preset, the model's order)."""
        preset = self.preset_names[0]
        record = self.complete(0, preset)
        fig = SamplingScrubber.from_record(record, self.model.levels).static(frames, STRIP_WIDTH, one_image=True)
        width = int(14 * fig.get_size_inches()[0])  # characters in a line: about 14 an inch at font size 9
        title = textwrap.fill(f"{preset} observed: {self.note(preset)}", width)
        fig.suptitle(title, y=1.0, va="bottom", fontsize=9)
        return fig

    # ------------------------------------------------------------------ widget
    def widget(self):
        """The ipywidgets VBox: image, mask preset, order and "complete" above the click grid (shown
        for "drawn"), a note on the order, and the scrubber of the latest completion."""
        if self._widget is None:
            import ipywidgets as w

            self._parts = self._controls(w)
            p = self._parts
            for key in ("preset", "order"):
                p[key].observe(self._on_choice, names="value")
            p["complete"].on_click(self._on_complete)
            self._widget = w.VBox([w.HBox([p["image"], p["preset"], p["order"], p["complete"]]),
                                   p["grid"], p["note"], p["output"]])
            self._on_choice()
        return self._widget

    def _controls(self, w) -> dict:
        return {"image": w.IntSlider(value=0, min=0, max=len(self.images) - 1, description="image"),
                "preset": w.Dropdown(options=self.preset_names, description="observed"),
                "order": w.Dropdown(options=self.order_names, description="order"),
                "complete": w.Button(description="complete", button_style="primary"),
                "grid": self._click_grid(w), "note": w.HTML(), "output": w.Output()}

    def _click_grid(self, w):
        """One ToggleButton per pixel (or block): pressed = observed."""
        rows, cols, _ = self.grid
        self.buttons = [w.ToggleButton(value=bool(v), layout=w.Layout(width="22px", height="22px", padding="0"))
                        for v in self.drawn.flatten()]
        for k, button in enumerate(self.buttons):
            button.observe(lambda change, k=k: self._on_click(k, change["new"]), names="value")
        return w.GridBox(self.buttons, layout=w.Layout(grid_template_columns=f"repeat({cols}, 23px)"))

    def _on_click(self, k: int, pressed: bool):
        self.drawn.view(-1)[k] = bool(pressed)
        self._on_choice()

    def _on_choice(self, change=None):
        """Show the click grid for "drawn" only, and say what the chosen order lets the missing pixels see."""
        p = self._parts
        p["grid"].layout.display = None if p["preset"].value == "drawn" else "none"
        p["note"].value = self.note(p["preset"].value, p["order"].value)

    def _on_complete(self, button=None):
        """The "complete" button: sample once, then show a scrubber over the steps."""
        p = self._parts
        self.record = self.complete(p["image"].value, p["preset"].value, p["order"].value)
        self.scrubber = SamplingScrubber.from_record(self.record, self.model.levels)
        scrubber_box = self.scrubber.widget()
        from IPython import get_ipython

        if get_ipython() is None:
            return  # no front end (a test, a script): keep the record and the scrubber
        p["output"].clear_output(wait=True)
        with p["output"]:
            _display(scrubber_box)

    def show(self, frames: int = 6):
        """Display the widget with a static strip of the default completion below it (for rendered pages);
        in static mode (static_mode()) the strip alone. Outside IPython the strip is left open for plt.savefig."""
        show_with_figure(self.widget, lambda: self.static(frames))

    def _ipython_display_(self):
        self.show()


# --------------------------------------------------------------------------- tokens
def token_colours(V: int) -> np.ndarray:
    """(V, 3) RGB colours, one per token, shuffled so that neighbouring indices look unlike (indices are
    names, not quantities); the same colours every time."""
    hues = np.random.default_rng(0).permutation(V) / max(V, 1)
    return matplotlib.colors.hsv_to_rgb(np.stack([hues, np.full(V, 0.55), np.full(V, 0.9)], 1))  # (V, 3)


class TokenExplorer:
    """Look at an image's tokens, swap one, and see what the decoder makes of it (lesson 11).

        e = TokenExplorer(tokenizer, test.images[:8])
        e                                   # in Jupyter: image, row, column (depth), new token, "swap"
        e.tokens(0)                         # (D, h, w) the tokens of image 0
        before, after, tokens = e.swap(0, 3, 3, value=17)   # decoded images before and after
        e.static()                          # the figure without widgets (a centre token swapped, per image)

    The tokens are drawn as a coloured grid (one colour per token index, the index written in each
    cell); a swap replaces the token at (row, column) (and depth, for residual VQ) and decodes again:
    the change is not confined to the token's own patch, since the decoder's convolutions mix
    neighbouring latents. `tokenizer`: anything with encode, decode, codebook_size and levels.
    """

    def __init__(self, tokenizer, images):
        for member in ("encode", "decode", "codebook_size", "levels"):
            if not hasattr(tokenizer, member):
                raise TypeError(f"TokenExplorer needs a tokenizer (armini.tokenizers): {type(tokenizer).__name__} "
                                f"lacks {member}")
        images = torch.as_tensor(images)
        if images.dim() != 4 or images.dtype.is_floating_point or len(images) == 0:
            raise ValueError(f"images must be integer images (N, C, H, W) with N >= 1, got {tuple(images.shape)} "
                             f"{images.dtype}")
        self.tokenizer, self.images = tokenizer, images
        self.V, self.levels = int(tokenizer.codebook_size), int(tokenizer.levels)
        with torch.no_grad():
            self.all_tokens = tokenizer.encode(images).cpu()  # (N, D, h, w)
        self.colours = token_colours(self.V)
        self._widget = None

    def tokens(self, image: int) -> torch.Tensor:
        """The tokens (D, h, w) of image `image`."""
        if not 0 <= int(image) < len(self.images):
            raise IndexError(f"image must be 0..{len(self.images) - 1}, got {image}")
        return self.all_tokens[int(image)]

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.tokenizer.decode(tokens[None].to(self.images.device))[0].cpu()  # (C, H, W)

    def swap(self, image: int, row: int, col: int, value: int, depth: int = 0):
        """(decoded before (C, H, W), decoded after (C, H, W), swapped tokens (D, h, w)) for the token at
        (depth, row, col) of image `image` replaced by `value`."""
        tokens = self.tokens(image)
        D, h, w = tokens.shape
        if not (0 <= row < h and 0 <= col < w and 0 <= depth < D):
            raise IndexError(f"(depth, row, column) must lie in a ({D}, {h}, {w}) token grid, got ({depth}, {row}, {col})")
        if not 0 <= int(value) < self.V:
            raise ValueError(f"a token is in [0, {self.V}), got {value}")
        swapped = tokens.clone()
        swapped[depth, row, col] = int(value)
        return self._decode(tokens), self._decode(swapped), swapped

    def default_swap(self, image: int):
        """(row, column, value) of a swap worth seeing: the centre token replaced by the grid's most common
        token (for clothes on a blank background: a background token, a hole in the garment)."""
        tokens = self.tokens(image)
        h, w = tokens.shape[1:]
        row, col = h // 2, w // 2
        ranked = torch.bincount(tokens[0].flatten(), minlength=self.V).argsort(descending=True)
        value = next(int(v) for v in ranked if int(v) != int(tokens[0, row, col]))
        return row, col, value

    # ------------------------------------------------------------------ drawing
    def _gray(self, x: torch.Tensor) -> np.ndarray:
        x = x.float() / (self.levels - 1)
        return x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x[0].numpy()

    def draw_tokens(self, tokens: torch.Tensor, ax, depth: int = 0, box=None):
        """The token grid of one depth as coloured cells with their indices; box=(row, col) outlines one."""
        grid = tokens[depth].numpy()  # (h, w)
        h, w = grid.shape
        ax.imshow(self.colours[grid], interpolation="nearest")
        if h * w <= 14 * 14:
            size = 7 if h <= 7 else 4.5
            for i in range(h):
                for j in range(w):
                    ax.text(j, i, str(grid[i, j]), ha="center", va="center", fontsize=size)
        if box is not None:
            ax.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def draw(self, image: int, row: int, col: int, value: int, depth: int = 0, axes=None):
        """Five panels: the image, its tokens, decoded, decoded after the swap (its patch boxed), |change|."""
        if axes is None:
            _, axes = plt.subplots(1, 5, figsize=(11, 2.6))
        before, after, swapped = self.swap(image, row, col, value, depth)
        tokens = self.tokens(image)
        H, W = before.shape[1:]
        h, w = tokens.shape[1:]
        sy, sx = H // h, W // w
        change = (after.float() - before.float()).abs().amax(0) / (self.levels - 1)  # (H, W) in [0, 1]
        outside = change.clone()
        outside[row * sy:(row + 1) * sy, col * sx:(col + 1) * sx] = 0
        share = float(outside.sum() / change.sum().clamp(min=1e-12))
        axes[0].imshow(self._gray(self.images[image]), cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"image {image}", fontsize=9)
        self.draw_tokens(tokens, axes[1], depth, box=(row, col))
        axes[1].set_title(f"tokens{f' (depth {depth})' if tokens.shape[0] > 1 else ''}", fontsize=9)
        axes[2].imshow(self._gray(before), cmap="gray", vmin=0, vmax=1)
        axes[2].set_title("decoded", fontsize=9)
        axes[3].imshow(self._gray(after), cmap="gray", vmin=0, vmax=1)
        axes[3].add_patch(Rectangle((col * sx - 0.5, row * sy - 0.5), sx, sy, fill=False, edgecolor="red"))
        axes[3].set_title(f"token ({row}, {col}): {int(tokens[depth, row, col])} -> {value}", fontsize=9)
        axes[4].imshow(change.numpy(), cmap="magma", vmin=0, vmax=max(float(change.max()), 1e-6))
        axes[4].set_title(f"|change|: {100 * share:.0f}% outside the patch", fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        return axes

    def static(self, images: int = 3):
        """The figure without widgets: for each of the first `images` images, its default swap."""
        n = min(int(images), len(self.images))
        fig, axes = plt.subplots(n, 5, figsize=(11, 2.4 * n), squeeze=False)
        for b in range(n):
            self.draw(b, *self.default_swap(b), axes=axes[b])
        fig.tight_layout()
        return fig

    # ------------------------------------------------------------------ widget
    def widget(self):
        """The ipywidgets VBox: image, row, column, (depth,) new token and "swap" above the picture."""
        if self._widget is None:
            import ipywidgets as w

            D, h, w_ = self.all_tokens.shape[1:]
            row, col, value = self.default_swap(0)
            p = self._parts = {
                "image": w.IntSlider(value=0, min=0, max=len(self.images) - 1, description="image"),
                "row": w.IntSlider(value=row, min=0, max=h - 1, description="row"),
                "col": w.IntSlider(value=col, min=0, max=w_ - 1, description="column"),
                "depth": w.IntSlider(value=0, min=0, max=D - 1, description="depth"),
                "value": w.BoundedIntText(value=value, min=0, max=self.V - 1, description="new token"),
                "swap": w.Button(description="swap", button_style="primary"),
                "output": w.Output()}
            p["depth"].layout.display = None if D > 1 else "none"
            p["swap"].on_click(lambda button: self._update())
            p["image"].observe(self._on_image, names="value")
            self._widget = w.VBox([w.HBox([p["image"], p["row"], p["col"]]),
                                   w.HBox([p["depth"], p["value"], p["swap"]]), p["output"]])
            self._update()
        return self._widget

    def _on_image(self, change):
        """A new image: propose its default swap."""
        row, col, value = self.default_swap(int(change["new"]))
        p = self._parts
        p["row"].value, p["col"].value, p["value"].value = row, col, value
        self._update()

    def current(self) -> tuple:
        """(image, row, column, value, depth) the widget shows."""
        p = self._parts
        return p["image"].value, p["row"].value, p["col"].value, p["value"].value, p["depth"].value

    def _update(self):
        from IPython import get_ipython

        if get_ipython() is None:
            return  # no front end: keep the state, skip the picture
        out = self._parts["output"]
        out.clear_output(wait=True)
        with out:
            fig, axes = plt.subplots(1, 5, figsize=(11, 2.6))
            self.draw(*self.current(), axes=axes)
            _display(fig)
            plt.close(fig)

    def show(self, images: int = 2):
        """The widget, and below it the static figure of `images` default swaps (the figure alone where
        widgets cannot run, so a rendered notebook still shows what a swap does)."""
        show_with_figure(self.widget, lambda: self.static(images))

    def _ipython_display_(self):
        self.show()


# --------------------------------------------------------------------------------- video
# Videos are integer tensors (N, T, C, H, W) with values in [0, K) (armini.data.moving_mnist), or one
# video (T, C, H, W). Several videos play side by side, frame t of each in one picture.

def video_frames(videos, levels=None, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """Tile videos side by side, frame by frame: floats (T, H', W') in [0, 1] for gray, (T, H', W', 3) for RGB.

    videos: (N, T, C, H, W) or one video (T, C, H, W), integers in [0, levels) (floats: taken in [0, 1]);
    or a list of such with the same frame size, e.g. [truth, prediction], one after the other. A video
    shorter than the longest holds its last frame. `nrow` videos per row, `pad` white pixels between."""
    parts = videos if isinstance(videos, (list, tuple)) else [videos]
    if not parts:
        raise ValueError("no videos given: pass (N, T, C, H, W), (T, C, H, W) or a list of them")
    arrays = []
    for x in parts:
        x = _numpy(x)
        x = x[None] if x.ndim == 4 else x
        if x.ndim != 5:
            raise ValueError(f"videos must be (N, T, C, H, W) or (T, C, H, W), got shape {x.shape}")
        arrays.append(x)
    if len({a.shape[2:] for a in arrays}) > 1:
        raise ValueError(f"videos shown together need one frame shape (C, H, W), got {[a.shape[2:] for a in arrays]}")
    T = max(a.shape[1] for a in arrays)
    held = [np.concatenate([a, a[:, -1:].repeat(T - a.shape[1], axis=1)], axis=1) for a in arrays]  # (N_i, T, ...)
    x = np.concatenate(held)                                         # (N, T, C, H, W)
    N, _, C, H, W = x.shape
    flat = _as_images(x.reshape(N * T, C, H, W), levels).reshape(N, T, C, H, W)  # floats in [0, 1]
    return np.stack([make_grid(flat[:, t], nrow=nrow, pad=pad, pad_value=1.0) for t in range(T)]).clip(0, 1)


def _video_rgb8(frames: np.ndarray, scale: int) -> np.ndarray:
    """Frames (T, H, W) or (T, H, W, 3) in [0, 1] -> uint8 (T, H*scale, W*scale[, 3]): each pixel a scale x scale
    block."""
    out = (frames * 255).round().astype(np.uint8)
    return out.repeat(scale, axis=1).repeat(scale, axis=2)


def save_video(videos, path, fps: float = 5, levels=None, scale: int = 4, nrow: int = 8) -> Path:
    """Write videos as an animated GIF or, with imageio-ffmpeg installed, an MP4; return the path.

    videos: as video_frames takes them ((N, T, C, H, W) side by side, (T, C, H, W), or a list);
    path: ends in .gif or .mp4; fps: frames per second; scale: each pixel becomes scale x scale
    (Moving MNIST's 32x32 is small on a screen). GIF frames keep the exact gray values; the GIF is
    encoded by Pillow (which matplotlib installs, and which matplotlib.animation.PillowWriter uses), the
    MP4 by ffmpeg through imageio-ffmpeg. The file is written through armini.files.atomic_write: an
    interrupted write leaves the old file, or none."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".gif", ".mp4"):
        raise ValueError(f"save_video writes .gif or .mp4 files, got {path.name!r}")
    if not fps > 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a whole number >= 1 (pixels per video pixel), got {scale!r}")
    frames = _video_rgb8(video_frames(videos, levels, nrow=nrow), scale)  # (T, H', W'[, 3]) uint8
    if kind == ".gif":
        _write_gif(frames, path, fps)
    else:
        _write_mp4(frames, path, fps)
    return path


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]  # mode "L" (gray) or "RGB"
    buffer = io.BytesIO()
    # duration: milliseconds per frame; loop=0: repeat forever. Pillow merges identical neighbouring
    # frames into one longer frame (the timing is kept).
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError("writing .mp4 needs the package imageio-ffmpeg (pip install imageio-ffmpeg, which "
                          "brings its own ffmpeg); or save a .gif, which needs nothing more") from e
    if frames.ndim == 3:
        frames = frames[..., None].repeat(3, axis=-1)                # (T, H, W, 3): gray as RGB
    T, H, W, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, -H % 16), (0, -W % 16), (0, 0)))  # H.264 wants multiples of 16
    with tempfile.TemporaryDirectory() as scratch:  # ffmpeg writes a file by name: a private one first
        encoded = os.path.join(scratch, "video.mp4")
        writer = imageio_ffmpeg.write_frames(encoded, (frames.shape[2], frames.shape[1]), fps=fps,
                                             quality=8, macro_block_size=16, ffmpeg_log_level="error")
        writer.send(None)                                            # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(encoded, "rb") as src, atomic_write(path, "wb") as f:
            f.write(src.read())


class VideoPlayer:
    """Play videos frame by frame: a play button and a slider over frames, several videos side by side.

        p = VideoPlayer(train.videos[:4], levels=train.levels)        # in Jupyter: press play
        VideoPlayer([truth, rollout], titles=["truth", "rollout"])    # compare videos frame by frame
        p.frame(3)        # frame 3 of every video, tiled: (H', W') floats in [0, 1]
        p.static()        # the figure without widgets: rows = videos, columns = evenly spaced frames
        p.show()          # the widget, and the static strip below it (the strip alone without widgets)

    videos: (N, T, C, H, W), one video (T, C, H, W), or a list of them (see video_frames); titles:
    one name per video (after the list is joined), shown above each row of the strip; fps: the
    play button's speed. Without ipywidgets (or with ARMINI_STATIC=1, or the Agg backend) show()
    draws the static strip only, so a notebook rendered on GitHub still shows the motion.
    """

    def __init__(self, videos, levels=None, titles=None, fps: float = 5, nrow: int = 8, scale: int = 4):
        parts = videos if isinstance(videos, (list, tuple)) else [videos]
        self.videos = [torch.as_tensor(_numpy(v)) for v in parts]
        self.videos = [v[None] if v.dim() == 4 else v for v in self.videos]  # each (N_i, T_i, C, H, W)
        self.levels, self.nrow, self.scale, self.fps = levels, nrow, scale, fps
        self.frames = video_frames(self.videos, levels, nrow=nrow)  # (T, H', W'[, 3]) checks the shapes
        self.n = sum(len(v) for v in self.videos)
        self.titles = list(titles) if titles is not None else [f"video {i}" for i in range(self.n)]
        if len(self.titles) != self.n:
            raise ValueError(f"titles: one per video, got {len(self.titles)} for {self.n} videos")
        self.current, self._widget = 0, None

    @property
    def steps(self) -> int:
        """T, the number of frames (of the longest video)."""
        return len(self.frames)

    def frame(self, t: int) -> np.ndarray:
        """Frame t (0-based) of every video, tiled: (H', W') or (H', W', 3) floats in [0, 1]."""
        if not 0 <= t < self.steps:
            raise IndexError(f"frame must be 0..{self.steps - 1}, got {t}")
        return self.frames[t]

    def png(self, t: int) -> bytes:
        """Frame t as PNG bytes, each pixel scale x scale (what the widget shows)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(_video_rgb8(self.frame(t)[None], self.scale)[0]).save(buffer, format="PNG")
        return buffer.getvalue()

    def static(self, frames: int = 8, width: float = 1.1):
        """A strip: one row per video, `frames` evenly spaced frames as columns, `width` inches each."""
        ts = np.unique(np.linspace(0, self.steps - 1, frames).round().astype(int))
        rows = [video_frames(v[i:i + 1], self.levels, pad=0) for v in self.videos for i in range(len(v))]
        T = self.steps
        rows = [np.concatenate([r, r[-1:].repeat(T - len(r), axis=0)]) for r in rows]  # hold the last frame
        fig, axes = plt.subplots(len(rows), len(ts), figsize=(width * len(ts), width * len(rows) + 0.3),
                                 squeeze=False)
        for k, (r, title) in enumerate(zip(rows, self.titles)):
            for j, t in enumerate(ts):
                ax = axes[k, j]
                ax.imshow(r[t], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if k == 0:
                    ax.set_title(f"t = {t}", fontsize=8)
            axes[k, 0].set_ylabel(title, fontsize=8)
        fig.tight_layout()
        return fig

    def widget(self):
        """The ipywidgets VBox: play button and frame slider above the tiled frame."""
        if self._widget is None:
            import ipywidgets as w

            slider = w.IntSlider(value=0, min=0, max=self.steps - 1, description="frame",
                                 continuous_update=True, layout=w.Layout(width="60%"))
            play = w.Play(value=0, min=0, max=self.steps - 1, interval=round(1000 / self.fps), description="play")
            w.jslink((play, "value"), (slider, "value"))  # the browser moves the slider while playing
            image = w.Image(value=self.png(0), format="png")
            slider.observe(self._on_change, names="value")
            names = w.HTML(" | ".join(self.titles))
            self._parts = {"slider": slider, "play": play, "image": image}
            self._widget = w.VBox([w.HBox([play, slider]), names, image])
        return self._widget

    @property
    def slider(self):
        """The frame slider (built on first use)."""
        self.widget()
        return self._parts["slider"]

    @property
    def image(self):
        """The image widget that shows the current frame."""
        self.widget()
        return self._parts["image"]

    def _on_change(self, change):
        self.current = int(change["new"])
        self._parts["image"].value = self.png(self.current)

    def show(self, frames: int = 8):
        """Display the widget and, below it, the static strip; the strip alone where widgets cannot run."""
        show_with_figure(self.widget, lambda: self.static(frames))

    def _ipython_display_(self):
        self.show()


def play(videos, levels=None, titles=None, fps: float = 5, **kwargs) -> VideoPlayer:
    """VideoPlayer(videos, ...): in a notebook, `viz.play(train.videos[:4], levels=256)` shows it."""
    return VideoPlayer(videos, levels=levels, titles=titles, fps=fps, **kwargs)
