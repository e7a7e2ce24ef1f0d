"""The causality inspector on hand-made tiny models whose true dependencies we know exactly."""
import pytest
import torch
import torch.nn as nn

from armini import causality
from armini.causality import assert_causal, check_causality, dependency_map, dependency_matrix
from armini.models import ARModel, IndependentPixels


class ReadsAR(ARModel):
    """A toy AR model whose conditional d reads exactly the inputs j with reads[d, j] = True.

    logits[d, k] = b[d, k] + sum_j reads[d, j] W[d, k, j] x_j / (K - 1); d, j index x.flatten(1)."""

    def __init__(self, shape, levels, reads):
        super().__init__(shape, levels)
        D = self.dims
        g = torch.Generator().manual_seed(0)
        self.register_buffer("reads", reads.float())
        self.W = nn.Parameter(torch.randn(D, levels, D, generator=g) + 1.0)  # (D, K, D), far from 0
        self.b = nn.Parameter(torch.randn(D, levels, generator=g))

    def conditionals(self, x, y=None):
        s = x.flatten(1).float() / (self.levels - 1)  # (B, D)
        logits = torch.einsum("dkj,bj->bdk", self.W * self.reads[:, None, :], s) + self.b  # (B, D, K)
        return torch.log_softmax(logits, -1).view(x.shape[0], *self.shape, self.levels)


def causal_reads(shape, rank=None):
    """reads[d, j] = j strictly before d in `rank` (default raster order): (D, D) bool."""
    r = (causality.raster_rank(shape) if rank is None else rank).flatten()
    return r[None, :] < r[:, None]


def flat(c, i, j, shape):
    C, H, W = shape
    return (c * H + i) * W + j


def test_correct_model_has_no_leaks_and_the_matrix_recovers_its_reads():
    shape = (1, 3, 4)
    reads = causal_reads(shape)
    model = ReadsAR(shape, 3, reads)
    report = check_causality(model)
    assert report.ok and report.leaks == []
    assert torch.equal(report.seen, reads)  # every dependency found, none invented
    M = dependency_matrix(model)
    assert M.shape == (12, 12)
    assert torch.equal(M > 0, reads)
    assert_causal(model)  # does not raise
    assert "OK" in str(report)


def test_leak_of_the_current_pixel_is_flagged():
    shape = (1, 3, 3)
    reads = causal_reads(shape)
    d = flat(0, 1, 1, shape)
    reads[d, d] = True  # pixel (1, 1) peeks at itself
    report = check_causality(ReadsAR(shape, 4, reads))
    assert not report.ok
    assert report.leaks == [((0, 1, 1), (0, 1, 1))]
    assert "itself" in str(report)
    with pytest.raises(AssertionError, match=r"\(0, 1, 1\) moves when \(0, 1, 1\) changes"):
        assert_causal(ReadsAR(shape, 4, reads))


def test_leak_of_a_future_pixel_is_flagged():
    shape = (1, 4, 4)
    reads = causal_reads(shape)
    reads[flat(0, 0, 2, shape), flat(0, 2, 3, shape)] = True  # (0, 2) reads a pixel two rows below
    report = check_causality(ReadsAR(shape, 2, reads))
    assert report.leaks == [((0, 0, 2), (0, 2, 3))]
    assert "a later dimension" in str(report)


def test_channel_leak_is_flagged():
    shape = (3, 2, 2)
    reads = causal_reads(shape)
    reads[flat(0, 1, 0, shape), flat(1, 1, 0, shape)] = True  # R of pixel (1, 0) reads its own G
    report = check_causality(ReadsAR(shape, 3, reads))
    assert report.leaks == [((0, 1, 0), (1, 1, 0))]
    assert "later channel of the same pixel" in str(report)
    # ...while G reading R of the same pixel is fine: R comes first
    assert report.context((1, 1, 0))[0, 1, 0]


def test_independent_pixels_see_nothing():
    model = IndependentPixels((1, 4, 4), 4)
    with torch.no_grad():
        model.logits.normal_()
    report = check_causality(model)
    assert report.ok
    assert not report.seen.any()
    target = (0, 2, 2)
    assert not report.context(target).any()
    assert torch.equal(report.unseen(target), report.earlier(target))  # every earlier pixel unseen
    assert torch.equal(report.out_of_reach(target), report.earlier(target))  # a context of nothing reaches nothing
    assert not report.blind_spot(target).any()
    assert int(report.earlier(target).sum()) == 2 * 4 + 2
    assert not dependency_map(model, target=target).any()


def test_dependency_map_is_a_row_of_the_matrix_and_targets_default_to_the_centre():
    shape = (2, 3, 3)
    model = ReadsAR(shape, 3, causal_reads(shape))
    M = dependency_matrix(model, trials=1, generator=torch.Generator().manual_seed(3))
    m = dependency_map(model, trials=1, generator=torch.Generator().manual_seed(3))  # default target
    assert causality.default_target(shape) == (1, 1, 1)
    assert m.shape == shape
    assert torch.equal(m.flatten(), M[flat(1, 1, 1, shape)])
    # (i, j) means the pixel's last channel
    assert torch.equal(dependency_map(model, target=(1, 1)), dependency_map(model, target=(1, 1, 1)))
    with pytest.raises(ValueError, match="outside the image"):
        dependency_map(model, target=(0, 3, 0))


def test_own_generation_order_defines_what_is_earlier():
    class Reversed(ReadsAR):
        def generation_order(self):
            return super().generation_order().flip(0)  # bottom-right pixel first

    shape = (1, 3, 3)
    rank = causality.raster_rank(shape).flip(1, 2)  # step of each pixel in reversed raster order
    model = Reversed(shape, 3, causal_reads(shape, rank))
    report = check_causality(model)
    assert report.ok, str(report)
    assert torch.equal(report.rank, rank)
    # the same reads under raster order leak: every read is of a later pixel
    assert not check_causality(ReadsAR(shape, 3, causal_reads(shape, rank))).ok


def test_dimensions_generated_in_the_same_step_must_not_see_each_other():
    class Pairs(ReadsAR):
        def sampling_steps(self):  # two pixels per step, in raster order
            return list(self.generation_order().split(2))

    shape = (1, 2, 2)
    rank = torch.tensor([[[0, 0], [1, 1]]])
    ok = Pairs(shape, 3, causal_reads(shape, rank))
    assert check_causality(ok).ok
    reads = causal_reads(shape, rank)
    reads[flat(0, 0, 1, shape), flat(0, 0, 0, shape)] = True  # fine in raster order, not in pairs
    report = check_causality(Pairs(shape, 3, reads))
    assert report.leaks == [((0, 0, 1), (0, 0, 0))]
    assert "same step" in str(report)


def test_step_rank_rejects_orders_that_skip_or_repeat_dimensions():
    class Bad(ReadsAR):
        def sampling_steps(self):
            steps = list(self.generation_order().split(1))
            return steps[:-1] + [steps[0]]

    model = Bad((1, 2, 2), 2, causal_reads((1, 2, 2)))
    with pytest.raises(ValueError, match="twice"):
        causality.step_rank(model)


def test_dropout_is_off_and_the_model_is_left_as_found():
    class Dropped(ReadsAR):
        def __init__(self, *a):
            super().__init__(*a)
            self.drop = nn.Dropout(0.5)

        def conditionals(self, x, y=None):
            return torch.log_softmax(self.drop(super().conditionals(x)), -1)

    shape = (1, 3, 3)
    model = Dropped(shape, 3, causal_reads(shape)).train()
    before = [p.clone() for p in model.parameters()]
    assert check_causality(model).ok  # with dropout on, every output would "move"
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_minus_infinity_log_probs_are_no_change():
    class Impossible(ReadsAR):
        def conditionals(self, x, y=None):
            lp = super().conditionals(x).clone()
            lp[..., 0] = -float("inf")  # value 0 is impossible everywhere (not normalised: fine here)
            return lp

    shape = (1, 2, 3)
    assert check_causality(Impossible(shape, 3, causal_reads(shape))).ok


def test_class_conditional_models_get_labels():
    class Conditional(ReadsAR):
        num_classes = 3

        def __init__(self, *a):
            super().__init__(*a)
            self.emb = nn.Parameter(torch.randn(3, self.levels))

        def conditionals(self, x, y=None):
            y = self.check_labels(y, x.shape[0])
            return torch.log_softmax(super().conditionals(x) + self.emb[y][:, None, None, None, :], -1)

    shape = (1, 2, 2)
    model = Conditional(shape, 3, causal_reads(shape))
    assert check_causality(model).ok  # label 0 by default
    assert check_causality(model, y=2).ok


def test_several_base_images_and_user_images():
    shape = (1, 2, 3)
    model = ReadsAR(shape, 4, causal_reads(shape))
    x = torch.randint(4, (3, 1, 2, 3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(dependency_matrix(model, x) > 0, causal_reads(shape))
    assert dependency_map(model, x[0]).shape == shape  # one (C, H, W) image works too
    with pytest.raises(TypeError):
        dependency_matrix(model, x.float())


def test_context_text_and_categories():
    shape = (1, 4, 5)
    reads = causal_reads(shape)
    t = flat(0, 2, 2, shape)
    reads[t, flat(0, 1, 4, shape)] = False  # a hole above-right, inside the columns row 0 reaches
    reads[t, [flat(0, 0, 0, shape), flat(0, 1, 0, shape), flat(0, 2, 0, shape)]] = False  # column 0: beyond reach
    report = check_causality(ReadsAR(shape, 3, reads))
    target = (0, 2, 2)
    assert report.blind_spot(target).nonzero().tolist() == [[0, 1, 4]]
    assert report.out_of_reach(target).nonzero().tolist() == [[0, 0, 0], [0, 1, 0], [0, 2, 0]]
    assert torch.equal(report.unseen(target), report.blind_spot(target) | report.out_of_reach(target))
    assert report.counts(target) == {"earlier": 12, "seen": 8, "blind spot": 1, "out of reach": 3}
    assert report.context_text(target) == "channel 0:\n- # # # #\n- # # # o\n- # X . .\n. . . . ."
    cat = report.categories(target)
    assert cat[0, 2, 2] == causality.TARGET and cat[0, 1, 4] == causality.BLIND
    assert cat[0, 0, 0] == causality.OUT_OF_REACH and cat[0, 0, 1] == causality.SEEN
    assert cat[0, 3, 3] == causality.FUTURE
    assert "blind spots" in str(report) and "out of reach" in str(report)


def test_blind_spot_is_inside_the_reach_of_the_context_and_the_rest_is_out_of_reach():
    """Hand-made seen maps: a wedge inside the bounding box of what the target sees is a blind spot,
    what lies beyond the box (rows above the top one seen, columns past the widest) is out of reach."""
    shape, target = (1, 6, 7), (0, 4, 3)
    seen = torch.zeros(shape, dtype=torch.bool)
    seen[0, 1:4, 1:6] = True  # rows 1-3, columns 1-5 above the target
    seen[0, 3, 5] = seen[0, 2, 5] = False  # PixelCNN's wedge: up-right, rows near the target
    seen[0, 3, 4] = False
    seen[0, 4, 1:3] = True  # left of the target in its row
    rank = causality.raster_rank(shape)
    cat = causality.context_categories(seen, rank, target)
    blind = (cat == causality.BLIND).nonzero()[:, 1:].tolist()
    assert blind == [[2, 5], [3, 4], [3, 5]]
    out = cat == causality.OUT_OF_REACH
    assert out[0, 0].all() and out[0, 1:5, 0].all() and out[0, 1:4, 6].all()  # row 0, column 0, column 6
    assert int(out.sum()) == 7 + 4 + 3
    assert (cat[0, 4, 4:] == causality.FUTURE).all() and (cat[0, 5] == causality.FUTURE).all()
    counts = causality.context_counts(seen, target)  # raster order by default
    assert counts == {"earlier": 31, "seen": 14, "blind spot": 3, "out of reach": 14}
    # a context that reaches every row and column has no out of reach; seeing everything leaves no blind spot
    full = rank < rank[target]
    assert causality.context_counts(full, target) == {"earlier": 31, "seen": 31, "blind spot": 0, "out of reach": 0}
    holes = full.clone()
    holes[0, 2, 2] = False  # a hole in the middle of the context is a blind spot, never out of reach
    assert causality.context_counts(holes, target)["blind spot"] == 1
    # a raster-order window sees the last w dimensions: its box spans whole rows, but what comes
    # before its earliest seen dimension is out of reach, not a blind spot
    window = (rank < rank[target]) & (rank >= rank[target] - 9)  # the 9 dimensions before (4, 3)
    assert causality.context_counts(window, target) == {"earlier": 31, "seen": 9, "blind spot": 0,
                                                        "out of reach": 22}
    # channels: the box is spatial; an unseen earlier channel of a seen pixel is a blind spot
    rgb = torch.zeros(3, 3, 3, dtype=torch.bool)
    rgb[:, 0, :] = True
    rgb[0, 1, 1] = True  # the target's own R, not its G
    cat = causality.context_categories(rgb, causality.raster_rank((3, 3, 3)), (2, 1, 1))
    assert cat[1, 1, 1] == causality.BLIND and cat[0, 1, 0] == causality.BLIND  # inside columns 0-2
    assert not (cat == causality.OUT_OF_REACH).any()


def probe_counts(model, target, scale=1.0):
    """The architecture's context of `target` (positive-weight probe on a white image), counted."""
    white = torch.full((1, *model.shape), model.levels - 1)
    seen = causality.context_map(causality.positive_copy(model, scale), white, target=target, trials=1,
                                 rtol=0, atol=0)
    return causality.context_counts(seen, target)


def test_pixelcnn_has_a_blind_spot_gated_pixelcnn_and_attention_only_a_reach():
    from armini.models import GatedPixelCNN, PixelCNN, PixelSNAIL

    torch.manual_seed(0)
    shape, target = (1, 16, 16), (0, 10, 8)
    pixelcnn = probe_counts(PixelCNN(shape=shape, levels=4, channels=4, n_blocks=3, head_channels=4), target)
    assert pixelcnn["blind spot"] > 0 and pixelcnn["out of reach"] > 0  # the wedge, and a finite field
    gated = probe_counts(GatedPixelCNN(shape=shape, levels=4, channels=4, n_layers=3, head_channels=4),
                         target, scale=0.1)
    assert gated["blind spot"] == 0 and gated["out of reach"] > 0
    snail = probe_counts(PixelSNAIL(shape=(1, 6, 6), levels=4, channels=4, key_dim=4, value_dim=4,
                                    head_channels=4), (0, 3, 3), scale=0.5)
    assert snail == {"earlier": 21, "seen": 21, "blind spot": 0, "out of reach": 0}


class DeadReLU(ARModel):
    """Conditional d reads x_j (j in reads[d]) through relu(W x_j) with W < 0: on a bright image
    every ReLU is off, so no single set of these weights shows the architecture's context."""

    def __init__(self, shape, levels, reads):
        super().__init__(shape, levels)
        self.register_buffer("reads", reads.float())
        self.W = nn.Parameter(-torch.ones(self.dims, self.dims))  # (D, D)
        self.V = nn.Parameter(torch.linspace(-1, 1, levels))  # (K,)

    def conditionals(self, x, y=None):
        s = x.flatten(1).to(self.W.dtype) / (self.levels - 1)  # (B, D), in (0, 1] on a bright image
        h = torch.relu(torch.einsum("dj,bj->bd", self.W * self.reads, s))  # (B, D)
        return torch.log_softmax(h[..., None] * self.V, -1).view(x.shape[0], *self.shape, self.levels)


def test_positive_copy_reveals_what_dead_relus_hide_and_leaves_the_model_alone():
    shape, levels = (1, 3, 3), 4
    reads = causal_reads(shape)
    model = DeadReLU(shape, levels, reads)
    white = torch.full((1, *shape), levels - 1)
    target = (0, 2, 2)
    assert not causality.context_map(model, white, target=target, trials=1).any()  # all ReLUs off

    probe = causality.positive_copy(model, scale=0.5)
    assert probe.W.dtype == torch.float64 and model.W.dtype == torch.float32
    assert torch.equal(probe.W, 0.5 * model.W.abs().double()) and bool((model.W == -1).all())
    seen = causality.context_map(probe, white, target=target, trials=1)  # (1, 3, 3)
    assert torch.equal(seen.flatten(), reads[flat(*target, shape)])  # exactly the 8 earlier pixels


# ------------------------------------------------------------------------- videos
class ReadsVideo(ReadsAR):
    """ReadsAR on videos (T, C, H, W): frame by frame, raster order within a frame."""

    shape_axes = 4


def test_a_video_report_says_which_frame_each_dependency_is_in():
    shape = (3, 1, 2, 2)
    rank = causality.raster_rank(shape)
    assert rank.flatten().tolist() == list(range(12))  # C = 1: frame-major flat positions in order
    reads = causal_reads(shape, rank)
    model = ReadsVideo(shape, 3, reads)
    report = check_causality(model)
    assert report.ok and torch.equal(report.rank, rank)
    assert torch.equal(report.frame_matrix(), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    assert report.frame_leaks == []
    assert "frame 2 sees frames 0, 1 and its own earlier pixels" in str(report)
    assert "frame 0 sees its own earlier pixels" in str(report)
    # a video target: (t, c, i, j), or (t, i, j) for the last channel; default: the last frame's centre
    assert causality.default_target(shape) == (2, 0, 1, 1)
    assert torch.equal(dependency_map(model, target=(1, 0, 1)), dependency_map(model, target=(1, 0, 0, 1)))
    assert report.context((1, 0, 0, 1)).flatten().tolist() == [True] * 5 + [False] * 7  # frame 0 and (1, 0, 0, 0)
    assert report.context_text((1, 0, 0, 1)).startswith("frame 0, channel 0:\n# #\n# #\nframe 1, channel 0:\n# X")
    with pytest.raises(ValueError, match="outside the video"):
        dependency_map(model, target=(3, 0, 0, 0))


def test_a_frame_that_sees_a_later_frame_is_flagged_with_both_frames():
    shape = (3, 1, 2, 2)
    reads = causal_reads(shape, causality.raster_rank(shape))
    reads[flat(0, 1, 1, (3, 2, 2)), flat(2, 0, 0, (3, 2, 2))] = True  # frame 0's pixel (1, 1) reads frame 2
    reads[flat(1, 0, 0, (3, 2, 2)), flat(1, 1, 0, (3, 2, 2))] = True  # frame 1: a later pixel of its own frame
    report = check_causality(ReadsVideo(shape, 3, reads))
    assert report.leaks == [((0, 0, 1, 1), (2, 0, 0, 0)), ((1, 0, 0, 0), (1, 0, 1, 0))]
    assert report.frame_leaks == [(0, 2)]
    text = str(report)
    assert "a later frame (frame 2; the target is in frame 0)" in text
    assert "a later dimension of the same frame (frame 1)" in text
    assert "frame 0 sees its own earlier pixels; LEAK: later frames 2" in text


def test_video_reach_is_a_box_in_frames_rows_and_columns():
    """A target that sees only the frame before, near its own position: what lies in the frames,
    rows and columns between the seen pixels is within reach; the frame before those is out of reach."""
    shape = (3, 1, 3, 3)
    rank = causality.raster_rank(shape)
    seen = torch.zeros(shape, dtype=torch.bool)
    seen[1, 0, 0:2, 0:2] = True  # frame 1, rows 0-1, columns 0-1
    seen[1, 0, 1, 0] = False  # a hole inside that box: a blind spot
    cat = causality.context_categories(seen, rank, (2, 0, 0, 0))
    assert (cat[0] == causality.OUT_OF_REACH).all()  # frame 0: outside the box of frames 1-2
    assert cat[1, 0, 1, 0] == causality.BLIND and cat[1, 0, 0, 0] == causality.SEEN
    assert cat[1, 0, 2, 2] == causality.OUT_OF_REACH and cat[1, 0, 0, 2] == causality.OUT_OF_REACH
    assert cat[2, 0, 0, 0] == causality.TARGET and (cat[2, 0].flatten()[1:] == causality.FUTURE).all()
    counts = causality.context_counts(seen, (2, 0, 0, 0), rank)
    assert counts == {"earlier": 18, "seen": 3, "blind spot": 1, "out of reach": 14}
