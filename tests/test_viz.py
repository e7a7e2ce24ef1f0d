"""armini.viz with the Agg backend: pure helpers exactly, drawings by what they return."""
import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from armini import causality, orders, viz  # noqa: E402
from armini.models import PixelCNN  # noqa: E402
from armini.nn.masked import causal_mask  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def small_pixelcnn(shape=(1, 5, 5), levels=4):
    torch.manual_seed(0)
    return PixelCNN(shape=shape, levels=levels, channels=8, n_blocks=1, head_channels=8, first_kernel=3)


# ------------------------------------------------------------------------- make_grid
def test_make_grid_shapes_and_padding():
    x = torch.arange(5 * 4 * 3).view(5, 1, 4, 3)
    grid = viz.make_grid(x, nrow=2, pad=1, pad_value=-1)
    assert grid.shape == (3 * (4 + 1) + 1, 2 * (3 + 1) + 1)  # 3 rows of 2 images
    assert np.array_equal(grid[1:5, 1:4], x[0, 0].numpy())  # image 0 top-left
    assert np.array_equal(grid[1:5, 5:8], x[1, 0].numpy())  # image 1 to its right
    assert np.array_equal(grid[6:10, 1:4], x[2, 0].numpy())  # image 2 on the next row
    assert (grid[0] == -1).all() and (grid[:, 4] == -1).all()  # padding
    assert (grid[11:15, 5:8] == -1).all()  # the missing 6th image is padding
    rgb = viz.make_grid(np.zeros((3, 3, 4, 4)), nrow=8, pad=2)
    assert rgb.shape == (4 + 4, 3 * 6 + 2, 3)  # nrow > B: one row of B images, channels last
    assert viz.make_grid(np.ones((4, 1, 2, 2)), nrow=2, pad=0).shape == (4, 4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        viz.make_grid(np.zeros((4, 4)))


def test_show_images_gray_rgb_and_floats():
    ax = viz.show_images(torch.randint(4, (6, 1, 5, 5)), levels=4, nrow=3, title="gray")
    assert ax.get_title() == "gray"
    img = ax.get_images()[0].get_array()
    assert img.shape == (2 * 6 + 1, 3 * 6 + 1) and img.max() <= 1
    ax = viz.show_images(torch.randint(256, (2, 3, 4, 4)))  # levels guessed
    assert ax.get_images()[0].get_array().shape == (5 + 1, 2 * 5 + 1, 3)
    viz.show_images(np.random.rand(4, 4))  # one float image in [0, 1]


# -------------------------------------------------------------------------- curves
def test_plot_curves_accepts_objects_dicts_and_plain_lists():
    history = SimpleNamespace(train=[(1, 3.0), (2, 2.5), (3, 2.0)], test=[(3, 2.2)])
    ax = viz.plot_curves(history)
    assert len(ax.lines) == 2
    assert np.array_equal(ax.lines[0].get_xdata(), [1, 2, 3])
    ax = viz.plot_curves({"train": [3.0, 2.0], "test": []})  # no test points yet
    assert len(ax.lines) == 1 and np.array_equal(ax.lines[0].get_xdata(), [1, 2])
    assert "bits" in ax.get_ylabel()


# --------------------------------------------------------------------------- heatmap
def test_nll_heatmap_matches_log_prob_pixels():
    model = small_pixelcnn(shape=(3, 4, 4))
    x = torch.randint(4, (3, 3, 4, 4))
    axes, nll = viz.nll_heatmap(model, x)
    assert len(axes) == 2 and nll.shape == (3, 4, 4)
    with torch.no_grad():
        expected = (-model.log_prob_pixels(x) / math.log(2)).sum(1).numpy()  # bits per pixel
        total = -model.log_prob(x).numpy() / math.log(2)
    assert np.allclose(nll, expected, atol=1e-5)
    assert np.allclose(nll.sum((1, 2)), total, atol=1e-3)
    heat = axes[1].get_images()[0].get_array()
    assert np.allclose(heat[1:5, 1:5], nll[0])


# ----------------------------------------------------------------------- mask, context
def test_plot_mask_writes_every_entry():
    ax = viz.plot_mask(causal_mask(5, "A"), title="mask A")
    assert ax.get_title() == "mask A"
    assert sorted(t.get_text() for t in ax.texts) == ["0"] * 13 + ["1"] * 12
    viz.plot_mask(causal_mask(3, "B", 6, 6, 3))  # a 4-D mask shows its [0, 0] slice


def test_plot_context_from_model_report_and_map():
    model = small_pixelcnn()
    ax = viz.plot_context(model, (0, 2, 2))
    cats = ax.get_images()[0].get_array()
    report = causality.check_causality(model)
    assert np.array_equal(cats, report.categories((0, 2, 2))[0].numpy())
    assert cats[2, 2] == causality.TARGET and cats[4, 4] == causality.FUTURE
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["target", "seen", "earlier, inside reach, not seen (blind spot)",
                      "earlier, out of reach (receptive field)", "future (must not be seen)"]
    viz.plot_context(report, (2, 2))
    m = causality.dependency_map(model, target=(0, 2, 2))
    ax = viz.plot_context(m, (0, 2, 2))
    assert np.array_equal(ax.get_images()[0].get_array(), cats)
    rgb = small_pixelcnn(shape=(3, 3, 3))
    ax = viz.plot_context(rgb, (1, 1, 1))
    stripes = ax.get_images()[0].get_array()
    assert stripes.shape == (3, 9)  # every pixel drawn as 3 channel stripes
    assert list(stripes[1, 3:6]) == [causality.SEEN, causality.TARGET, causality.FUTURE]


def test_plot_context_colours_blind_spot_and_out_of_reach_apart_and_keeps_its_legend_inside_the_figure():
    shape, target = (1, 28, 28), (0, 14, 14)
    seen = torch.zeros(shape, dtype=torch.bool)
    seen[0, 8:14, 4:24] = True
    seen[0, 13, 20:24] = False  # blind spot
    seen[0, 14, 6:14] = True
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))  # lesson 04's two panels side by side
    for ax in axes:
        viz.plot_context(seen, target=target, ax=ax)
    cats = axes[0].get_images()[0].get_array()
    assert cats[13, 21] == causality.BLIND and cats[0, 0] == causality.OUT_OF_REACH
    cmap = axes[0].get_images()[0].get_cmap()
    colours = {k: matplotlib.colors.to_hex(cmap(k)) for k in viz.CONTEXT_COLOURS}
    assert len(set(colours.values())) == len(viz.CONTEXT_COLOURS)  # five categories, five colours
    assert all(colours[k] == viz.CONTEXT_COLOURS[k][0] for k in colours)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    left_legend = axes[0].get_legend().get_window_extent(renderer)
    right_image = axes[1].get_window_extent(renderer)
    assert left_legend.x1 <= right_image.x0  # the next panel does not cover the legend
    assert left_legend.y0 >= fig.bbox.y0  # nor does the figure's edge cut it off


# ------------------------------------------------------------------------- plot_curves, plot_unet_path
def test_plot_curves_counts_steps_in_whole_numbers():
    ax = viz.plot_curves({"train": [(1, 5.0), (2, 4.0), (3, 3.5)], "test": [(3, 3.6)]})  # a quick-mode run
    ax.figure.canvas.draw()
    ticks = ax.get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)  # no step 2.5
    plt.close(ax.figure)


def test_plot_unet_path_draws_every_layer_and_each_shortcut_from_its_resolution():
    path = [("first layer", 28), ("gated resnet", 28), ("stride-2 conv", 14), ("stride-2 conv", 7),
            ("transposed conv", 14), ("gated resnet + shortcut", 14), ("transposed conv", 28),
            ("gated resnet + shortcut", 28)]
    from matplotlib.patches import Rectangle
    from matplotlib.text import Annotation

    ax = viz.plot_unet_path(path)
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == len(path)
    arrows = [t for t in ax.texts if isinstance(t, Annotation)]
    # each shortcut comes from the last layer of the way down at its own resolution, not from the coarsest
    assert [(a.xyann[0], a.xy[0]) for a in arrows] == [(2, 5), (1, 7)]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == set(viz.UNET_COLOURS)
    plt.close(ax.figure)


# ------------------------------------------------------------------------- scrubber
@pytest.fixture
def scrubber_and_steps():
    model = small_pixelcnn(shape=(1, 4, 4))
    seen = []
    s = viz.SamplingScrubber(model, n=2, generator=torch.Generator().manual_seed(0),
                             callback=lambda st: seen.append((st.x.clone(), st.probs.clone(), st.index.clone())))
    return s, seen


def test_scrubber_frames_equal_what_the_sampler_saw(scrubber_and_steps):
    s, seen = scrubber_and_steps
    assert s.steps == len(seen) == 16
    for t, (x, probs, index) in enumerate(seen):
        partial, p, (c, i, j), value = s.frame(t)
        assert np.array_equal(partial, x.numpy())  # rebuilt from the final image, not stored
        assert np.allclose(p, probs[0, 0].numpy())
        assert (c, i, j) == tuple(torch.stack(orders.unravel(index, x.shape[1:]), 1)[0].tolist())
        assert value == int(x[0, c, i, j])
    assert np.array_equal(s.frame(15)[0], s.final.numpy())
    with pytest.raises(IndexError):
        s.frame(16)


def test_scrubber_keeps_observed_dimensions_in_every_frame():
    model = small_pixelcnn(shape=(1, 4, 4))
    x = torch.full((1, 1, 4, 4), 3)
    observed = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    observed[..., :2, :] = True
    s = viz.SamplingScrubber(model, x=x, observed=observed, generator=torch.Generator().manual_seed(0))
    assert (s.frame(0)[0][..., :2, :] == 3).all()
    assert (s.step_of[observed] == -1).all()


def test_scrubber_slider_moves_the_current_step(scrubber_and_steps):
    s, _ = scrubber_and_steps
    box = s.widget()
    assert (s.slider.min, s.slider.max) == (1, s.steps) and s.current == 0  # counts steps from 1, like the title
    s.slider.value = 10  # what dragging the slider does
    assert s.current == 9
    assert s.widget() is box


def test_scrubber_render_and_static_fallback(scrubber_and_steps, monkeypatch):
    s, _ = scrubber_and_steps
    fig = s.render(5)
    assert len(fig.axes) == 2
    bars = fig.axes[1].patches
    assert len(bars) == 4  # one bar per level
    fig = s.static(frames=6)
    assert len(fig.axes) == 12
    assert viz.static_mode()  # the Agg backend
    monkeypatch.setenv("ARMINI_STATIC", "1")
    before = set(plt.get_fignums())
    s.show()  # no IPython: draws the static strip and leaves it open
    s._ipython_display_()
    assert len(set(plt.get_fignums()) - before) == 2


def test_scrubber_shows_a_static_strip_below_the_widget(scrubber_and_steps, monkeypatch):
    """A rendered notebook (GitHub, nbviewer) shows a widget blank: the strip below it still shows sampling."""
    import ipywidgets
    from matplotlib.figure import Figure

    s, _ = scrubber_and_steps
    shown = []
    monkeypatch.setattr(viz, "_display", lambda obj: shown.append(obj) or True)  # as in a Jupyter kernel
    monkeypatch.setattr(viz, "static_mode", lambda: False)  # widgets can run
    s.show()
    assert [type(o) for o in shown] == [ipywidgets.VBox, Figure]  # the widget, then the strip below it
    strip = shown[1]
    assert len(strip.axes) == 12  # six steps: partial image above, distribution below
    assert strip.axes[0].get_title().startswith("step 1/16") and strip.axes[5].get_title().startswith("step 16/16")
    assert strip.get_size_inches()[0] <= 6 * viz.STRIP_WIDTH  # small: about a page wide
    assert strip.axes[0].get_images()[0].get_array().shape[:2] == (6, 6)  # image 0 alone (4x4, padded), not both
    assert not plt.fignum_exists(strip.number)  # shown once, not again by the inline backend

    shown.clear()
    monkeypatch.setattr(viz, "static_mode", lambda: True)  # widgets cannot run: the strip alone
    s.show()
    assert [type(o) for o in shown] == [Figure]


def test_scrubber_draws_several_dimensions_per_step_and_video_frames():
    from armini.sampling_record import SamplingRecord

    T, C, H, W, n = 2, 1, 3, 3, 1  # a tiny "video": two 3x3 frames, each frame filled in one step
    final = torch.arange(T * C * H * W).view(n, T, C, H, W) % 4
    step_of = torch.arange(T).repeat_interleave(C * H * W).view(1, -1)  # (n, D): frame f at step f
    positions = [torch.arange(f * 9, (f + 1) * 9) for f in range(T)]
    probs = [torch.full((n, 9, 4), 0.25) for _ in range(T)]
    rec = SamplingRecord((T, C, H, W), final, step_of, positions, probs)
    s = viz.SamplingScrubber.from_record(rec, levels=4)
    assert s.steps == 2 and rec.coords(1)[0] == (1, 0, 0, 0)
    fig = s.render(1)
    assert "frame 1" in fig.axes[0].get_title() and "9 dimensions at once" in fig.axes[0].get_title()
    assert len(fig.axes[0].patches) == 9  # every pixel filled at that step is boxed
    assert torch.equal(rec.partial(0)[0, 1], torch.zeros(C, H, W)) and torch.equal(rec.partial(1), final)
