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


class BlockDecoder:
    """A stand-in tokenizer: token v becomes a 4x4 block of pixel value 50 v (levels 256)."""
    levels = 256

    def decode(self, tokens):
        return (tokens[:, :1] * 50).repeat_interleave(4, 2).repeat_interleave(4, 3)  # (n, 1, 4h, 4w)


def test_scrubber_render_shows_the_decoded_image_after_every_token_step():
    torch.manual_seed(0)
    prior = PixelCNN(shape=(1, 2, 3), levels=5, channels=8, n_blocks=1, head_channels=8, first_kernel=3,
                     input="embedding")
    tok = BlockDecoder()
    s = viz.SamplingScrubber(prior, n=2, generator=torch.Generator().manual_seed(0), render=tok.decode)
    assert s.steps == 6 and s.render_levels == 256  # the levels of the tokenizer whose decode it is
    for t in range(s.steps):
        assert torch.equal(s.decoded(t), tok.decode(s.partial(t)))  # what render gives, token step by step
    fig = s.render(1)  # tokens (0, 0) and (0, 1) are in; the rest still to come
    title = fig.axes[0].get_title()
    assert title.startswith("step 2/6: token (0, 1)")
    img = fig.axes[0].get_images()[0].get_array()  # (2 * 9 + 1, 12 + 1 + ...) padded grid of two images
    tokens = s.final[0, 0]
    assert np.allclose(img[1:5, 5:9, 0], 50 * int(tokens[0, 1]) / 255)  # image 0, token (0, 1)'s decoded patch
    assert np.allclose(img[5:9, 1:13], np.array(viz.NOT_YET)[None, None, :].repeat(4, 0).repeat(12, 1))
    box = fig.axes[0].patches[0]
    assert (box.get_width(), box.get_height(), box.get_xy()) == (4, 4, (1 + 4 - 0.5, 1 - 0.5))  # the token's patch
    assert fig.axes[1].get_xlabel() == "token" and len(fig.axes[1].patches) == 5  # one bar per token value
    assert len(s.static(frames=3).axes) == 6
    with pytest.raises(TypeError, match="render must be a function"):
        viz.SamplingScrubber.from_record(s.record, levels=5, render="decode")
    with pytest.raises(ValueError, match="pass render="):
        viz.SamplingScrubber.from_record(s.record, levels=5).decoded(0)


# ------------------------------------------------------------------------- completion explorer
@pytest.fixture
def explorer():
    from armini.models import LMConv

    torch.manual_seed(0)
    model = LMConv(shape=(1, 6, 6), levels=4, nr_filters=8)
    images = torch.randint(4, (3, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    return viz.CompletionExplorer(model, images, generator_seed=0)


def test_completion_presets_mark_the_observed_pixels(explorer):
    masks = {name: explorer.observed_mask(name).int() for name in ("left half", "top half", "centre")}
    assert masks["left half"].tolist() == [[1, 1, 1, 0, 0, 0]] * 6
    assert masks["top half"].tolist() == [[1] * 6] * 3 + [[0] * 6] * 3
    centre = torch.ones(6, 6, dtype=torch.int)
    centre[2:5, 2:5] = 0  # the central 3x3 block missing
    assert torch.equal(masks["centre"], centre)
    assert torch.equal(explorer.observed_mask("centre given").int(), 1 - centre)  # only the central block given
    half = explorer.observed_mask("random 50%")
    assert 6 <= int(half.sum()) <= 30 and torch.equal(half, explorer.observed_mask("random 50%"))  # seeded
    assert explorer.preset_names == list(viz.PRESETS)
    assert not explorer.observed_mask("drawn").any()  # the click grid starts empty


@pytest.mark.parametrize("preset", ["left half", "top half", "centre", "centre given", "random 50%"])
def test_completion_keeps_the_observed_pixels_and_visits_them_first(explorer, preset):
    observed = explorer.observed_mask(preset)
    record = explorer.complete(image=1, preset=preset, order=None)
    x = explorer.images[1]
    assert torch.equal(record.final[0][:, observed], x[:, observed])  # observed pixels kept as they were
    visited = torch.cat(record.positions)  # the flat pixels in the order they were filled (C = 1)
    n = int(observed.sum())
    assert torch.equal(visited.sort().values, torch.arange(36))
    assert observed.flatten()[visited[:n]].all() and not observed.flatten()[visited[n:]].any()
    assert (record.step_of[0, observed.flatten()] == -1).all()  # the scrubber shows them as given


def test_completion_follows_a_named_order_after_the_observed_pixels(explorer):
    record = explorer.complete(preset="left half", order="hilbert")
    visited = torch.cat(record.positions)
    observed = explorer.observed_mask("left half").flatten()
    assert torch.equal(visited, orders.observed_first(observed, orders.hilbert(6, 6)))
    assert explorer.order_names[0] == viz.MODEL_ORDER and {"raster", "s-curve", "hilbert", "random"} <= set(
        explorer.order_names)
    with pytest.raises(ValueError, match="no order 'zigzag'.*hilbert"):
        explorer.complete(order="zigzag")


def test_completion_from_a_drawn_mask_pixels_or_blocks(explorer):
    drawn = torch.zeros(6, 6, dtype=torch.bool)
    drawn[0, :] = drawn[:, 0] = True
    record = explorer.complete(image=2, preset="drawn", drawn=drawn)
    assert torch.equal(record.final[0, 0][drawn], explorer.images[2, 0][drawn])
    assert observed_first_count(record, drawn) == 11  # the 11 drawn pixels come first
    # a 28x28 image gets a 7x7 grid of 4x4 blocks
    from armini.models import LMConv

    big = viz.CompletionExplorer(LMConv(shape=(1, 28, 28), levels=4, nr_filters=4), torch.zeros(1, 1, 28, 28))
    assert big.grid == (7, 7, 4)
    blocks = torch.zeros(7, 7, dtype=torch.bool)
    blocks[0, 1] = True
    mask = big.observed_mask("drawn", blocks)
    assert mask.shape == (28, 28) and int(mask.sum()) == 16 and mask[:4, 4:8].all()
    with pytest.raises(ValueError, match="28x28 pixels"):
        big.observed_mask("drawn", torch.ones(5, 5))


def observed_first_count(record, observed):
    """How many of the first steps filled observed pixels, before the first missing one."""
    given = observed.flatten()[torch.cat(record.positions)]
    return int(given.int().cumprod(0).sum())


def test_completion_names_the_presets_when_one_is_wrong(explorer):
    with pytest.raises(ValueError, match="no mask preset 'center'; choose one of: left half, top half, centre, "
                                         "centre given, random 50%, drawn"):
        explorer.complete(preset="center")
    with pytest.raises(ValueError, match="drawn= goes with preset='drawn'"):
        explorer.observed_mask("centre", drawn=torch.ones(6, 6))
    with pytest.raises(IndexError, match=r"image must be 0\.\.2"):
        explorer.complete(image=3)
    with pytest.raises(ValueError, match=r"shaped like the model's \(1, 6, 6\)"):
        viz.CompletionExplorer(explorer.model, torch.zeros(2, 1, 5, 5))


def test_a_fixed_order_model_is_refused_another_order_and_told_what_it_cannot_see():
    model = small_pixelcnn(shape=(1, 6, 6))
    images = torch.randint(4, (2, 1, 6, 6), generator=torch.Generator().manual_seed(1))
    ex = viz.CompletionExplorer(model, images)
    assert ex.order_names == [viz.MODEL_ORDER]
    with pytest.raises(ValueError, match="PixelCNN generates in one fixed order.*cannot complete in order 'hilbert'"):
        ex.complete(preset="left half", order="hilbert")
    with pytest.raises(ValueError, match="PixelCNN generates in one fixed order"):
        ex.complete(preset="left half", order=orders.s_curve(6, 6))
    with pytest.raises(ValueError, match="PixelCNN generates in one fixed order"):
        viz.CompletionExplorer(model, images, orders={"s-curve": orders.s_curve(6, 6)})
    record = ex.complete(preset="left half")  # its own raster order, observed pixels kept
    observed = ex.observed_mask("left half")
    assert torch.equal(torch.cat(record.positions), torch.arange(36))
    assert torch.equal(record.final[0][:, observed], images[0][:, observed])
    assert ex.late_observed(observed) == 15  # rows 1-5's left halves come after row 0's missing pixels
    assert "15 of the 18 observed pixels come after missing ones" in ex.note("left half")
    assert ex.late_observed(ex.observed_mask("top half")) == 0
    assert "all 18 observed pixels come first" in ex.note("top half")


def test_completion_widget_draws_clicks_and_scrubs(explorer):
    import ipywidgets

    box = explorer.widget()
    assert isinstance(box, ipywidgets.VBox)
    parts = explorer._parts
    assert parts["grid"].layout.display == "none"  # the click grid only for "drawn"
    parts["preset"].value = "drawn"
    assert parts["grid"].layout.display != "none" and len(explorer.buttons) == 36
    assert parts["note"].value.startswith("Nothing is observed")
    explorer.buttons[0].value = explorer.buttons[7].value = True  # click pixels (0, 0) and (1, 1)
    assert explorer.observed_mask("drawn").nonzero().tolist() == [[0, 0], [1, 1]]
    assert "visits the 2 observed pixels first" in parts["note"].value
    parts["image"].value = 1
    parts["complete"].click()
    rec = explorer.record
    assert rec.steps == 36 and rec.final[0, 0, 0, 0] == explorer.images[1, 0, 0, 0]
    assert explorer.scrubber.slider.max == 36  # the scrubber over that completion
    explorer.scrubber.slider.value = 5
    assert explorer.scrubber.current == 4


def test_completion_explorer_shows_a_static_strip_outside_ipython(explorer, monkeypatch):
    monkeypatch.setenv("ARMINI_STATIC", "1")
    before = set(plt.get_fignums())
    explorer.show(frames=4)
    new = set(plt.get_fignums()) - before
    assert len(new) == 1
    fig = plt.figure(new.pop())
    assert len(fig.axes) == 8 and "left half observed" in fig._suptitle.get_text()


# ------------------------------------------------------------------------- token explorer
class BlockTokenizer(BlockDecoder):
    """encode: the first pixel of each 4x4 block // 50; decode: blocks of 50 * token (5 tokens)."""
    codebook_size = 5

    def encode(self, images):
        return images[:, :, ::4, ::4] // 50  # (n, 1, h, w)


def block_images():
    tokens = torch.tensor([[[0, 1], [2, 3]], [[4, 4], [4, 0]]]).unsqueeze(1)  # (2, 1, 2, 2)
    return BlockTokenizer().decode(tokens)  # (2, 1, 8, 8)


def test_token_explorer_swaps_one_token_and_decodes():
    e = viz.TokenExplorer(BlockTokenizer(), block_images())
    assert torch.equal(e.tokens(1), torch.tensor([[[4, 4], [4, 0]]]))
    before, after, swapped = e.swap(0, 1, 0, value=4)
    assert torch.equal(before, block_images()[0])
    assert int(swapped[0, 1, 0]) == 4 and (after[0, 4:, :4] == 200).all()  # that token's patch, decoded again
    assert torch.equal(after[0, :4], before[0, :4]) and torch.equal(after[0, 4:, 4:], before[0, 4:, 4:])
    assert e.default_swap(1) == (1, 1, 4)  # the centre token -> the most common one (4)
    axes = e.draw(0, 1, 0, 4)
    assert axes[3].get_title() == "token (1, 0): 2 -> 4"
    assert axes[4].get_title() == "|change|: 0% outside the patch"  # this decoder does not mix tokens
    assert [t.get_text() for t in axes[1].texts] == ["0", "1", "2", "3"]  # each cell names its token
    cells = axes[1].get_images()[0].get_array()
    assert np.allclose(cells[1, 0], e.colours[2]) and not np.allclose(e.colours[2], e.colours[3])
    with pytest.raises(ValueError, match=r"a token is in \[0, 5\)"):
        e.swap(0, 0, 0, value=5)
    with pytest.raises(IndexError, match=r"\(1, 2, 2\) token grid"):
        e.swap(0, 2, 0, value=1)
    with pytest.raises(TypeError, match="lacks encode"):
        viz.TokenExplorer(BlockDecoder(), block_images())


def test_token_explorer_widget_and_static_figure(monkeypatch):
    import ipywidgets
    from matplotlib.figure import Figure

    from armini.tokenizers import VQVAE

    torch.manual_seed(0)
    tok = VQVAE(quantizer="rvq", channels=8, codebook_size=16, depth=2)
    images = torch.randint(256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    e = viz.TokenExplorer(tok, images)
    box = e.widget()
    p = e._parts
    assert p["depth"].max == 1 and p["value"].max == 15 and p["row"].max == 6
    p["image"].value = 2  # a new image proposes its own default swap
    assert e.current()[:4] == (2, *e.default_swap(2))
    assert e.widget() is box
    shown = []
    monkeypatch.setattr(viz, "_display", lambda obj: shown.append(obj) or True)
    monkeypatch.setattr(viz, "static_mode", lambda: False)
    e.show(images=2)
    assert [type(o) for o in shown] == [ipywidgets.VBox, Figure]  # the widget, then the figure below it
    assert len(shown[1].axes) == 10  # two images, five panels each
    shown.clear()
    monkeypatch.setattr(viz, "static_mode", lambda: True)
    e.show(images=1)
    assert [type(o) for o in shown] == [Figure]


# ------------------------------------------------------------------------- video
def bouncing_square(T=6, size=8, levels=4):
    """(T, 1, size, size): a 2x2 square of value levels-1 moving one pixel right per frame."""
    v = torch.zeros(T, 1, size, size, dtype=torch.long)
    for t in range(T):
        v[t, 0, 3:5, t:t + 2] = levels - 1
    return v


def test_video_frames_tiles_videos_side_by_side_and_holds_short_ones():
    a = bouncing_square()
    b = bouncing_square(T=4).flip(-1)
    frames = viz.video_frames([a[None], b], levels=4, pad=1)  # (T, 1 + 8 + 1 + 8 + 1 ... )
    assert frames.shape == (6, 10, 19)
    assert np.array_equal(frames[2, 1:9, 1:9], a[2, 0].numpy() / 3)  # video 0 on the left
    assert np.array_equal(frames[2, 1:9, 10:18], b[2, 0].numpy() / 3)  # video 1 to its right
    assert np.array_equal(frames[5, 1:9, 10:18], b[3, 0].numpy() / 3)  # shorter: its last frame held
    assert frames[:, 0].min() == 1.0  # white padding
    with pytest.raises(ValueError, match="one frame shape"):
        viz.video_frames([a, torch.zeros(6, 1, 4, 4)])
    with pytest.raises(ValueError, match=r"\(N, T, C, H, W\)"):
        viz.video_frames(torch.zeros(3, 4, 4))


def test_save_video_writes_a_readable_gif_with_exact_frames(tmp_path):
    from PIL import Image, ImageSequence

    videos = torch.stack([bouncing_square(), bouncing_square().flip(-2)])  # (2, T, 1, 8, 8)
    path = viz.save_video(videos, tmp_path / "moving.gif", fps=10, levels=4, scale=3)
    assert [p.name for p in tmp_path.iterdir()] == ["moving.gif"]  # no temporary left
    expected = (viz.video_frames(videos, levels=4) * 255).round().astype(np.uint8)  # (T, H', W')
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.info["duration"] == 100 and gif.info.get("loop") == 0
        got = np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(gif)])
    assert np.array_equal(got, expected.repeat(3, axis=1).repeat(3, axis=2))


def test_save_video_errors_leave_the_old_file(tmp_path, monkeypatch):
    old = tmp_path / "clip.gif"
    old.write_bytes(b"my old gif")
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        viz.save_video(bouncing_square(), tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="fps"):
        viz.save_video(bouncing_square(), old, fps=0)
    monkeypatch.setitem(__import__("sys").modules, "imageio_ffmpeg", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install imageio-ffmpeg"):
        viz.save_video(bouncing_square(), tmp_path / "clip.mp4", levels=4)
    assert old.read_bytes() == b"my old gif" and sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]


def test_save_video_mp4_when_imageio_ffmpeg_is_installed(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    path = viz.save_video(bouncing_square(T=5), tmp_path / "clip.mp4", fps=5, levels=4)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"] and path.read_bytes()[4:8] == b"ftyp"
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["size"] == (48, 48) and sum(1 for _ in reader) == 5  # 4 x (1 + 8 + 1) = 40, padded to 48


def test_video_player_widget_slider_and_static_strip(monkeypatch):
    import ipywidgets
    from matplotlib.figure import Figure

    truth = bouncing_square()
    p = viz.VideoPlayer([truth, truth.flip(-1)[:4]], levels=4, titles=["truth", "mirror"], fps=4)
    assert p.steps == 6 and p.frame(5).shape == (10, 19)
    box = p.widget()
    assert isinstance(box, ipywidgets.VBox) and p.slider.max == 5
    first = p.image.value
    p.slider.value = 3  # what the play button does, through the browser link
    assert p.current == 3 and p.image.value == p.png(3) != first
    fig = p.static(frames=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["t = 0", "t = 2", "t = 5"]
    shown = []
    monkeypatch.setattr(viz, "_display", lambda obj: shown.append(obj) or True)  # as in a Jupyter kernel
    monkeypatch.setattr(viz, "static_mode", lambda: False)
    p.show()
    assert [type(o) for o in shown] == [ipywidgets.VBox, Figure]  # the widget, then the strip below it
    with pytest.raises(ValueError, match="one per video"):
        viz.VideoPlayer(torch.stack([truth, truth]), levels=4, titles=["only one"])


def test_video_player_without_ipywidgets_shows_the_strip(monkeypatch):
    from matplotlib.figure import Figure

    monkeypatch.setitem(__import__("sys").modules, "ipywidgets", None)  # as if not installed
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    assert viz.static_mode()
    shown = []
    monkeypatch.setattr(viz, "_display", lambda obj: shown.append(obj) or True)
    viz.play(bouncing_square()[None], levels=4).show()
    assert [type(o) for o in shown] == [Figure]
