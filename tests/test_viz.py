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
