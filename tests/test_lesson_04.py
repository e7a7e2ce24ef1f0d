"""Lesson 04's exercise "the gated layer": armini.course.check passes a correct two-stack layer and names
what a wrong one gets wrong (the harness is the lesson's: both classes built with the same weights, as
GatedPixelCNN builds its layers, run on the same inputs); the lesson's depth sweep (no blind spot at any
depth, PixelCNN's from two layers on); and lessons 02-04 end no cell with a model, which Jupyter would print
in full."""
import ast
import json
from pathlib import Path

import pytest
import torch

from armini import causality
from armini.course import check
from armini.models import GatedPixelCNN, PixelCNN
from armini.models.gated_pixelcnn import GatedLayer, gate
from armini.nn.shifted import down_shift


def run_layer(layer_class):
    """(first, v, h) -> the outputs of both stacks of a layer of `layer_class` with F = 8 channels."""
    def run(first, v, h):
        layer = layer_class(h.shape[1], 8, 7 if first else 3, first, groups=1, num_classes=None)
        v_next, link = layer.vertical(v)
        h_next, skip = layer.horizontal(h, link)
        return {"next v (vertical stack)": v_next, "link (vertical -> horizontal)": link,
                "next h (horizontal stack)": h_next, "skip": skip}
    return run


def cases():
    inputs = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 6, 6, generator=inputs) * 2 - 1
    features = torch.randn(4, 2, 8, 5, 7, generator=inputs)
    return [dict(first=True, v=down_shift(image), h=image),
            dict(first=False, v=features[0], h=features[1]),
            dict(first=False, v=features[2], h=features[3])]


class Correct(GatedLayer):
    def vertical(self, v, y=None):
        v_pre = self.v_conv(v)
        return gate(v_pre), self.v_to_h(v_pre)

    def horizontal(self, h, link):
        out, skip = self.h_out(gate(self.h_conv(h) + link)).chunk(2, dim=1)
        return (out if self.first else h + out), skip


class ResidualInFirstLayer(Correct):
    def horizontal(self, h, link):
        out, skip = self.h_out(gate(self.h_conv(h) + link)).chunk(2, dim=1)
        return h + out, skip  # h is the image in the first layer: broadcasts over F, leaks each pixel


class LinkFromHorizontal(Correct):
    def horizontal(self, h, link):
        h_pre = self.h_conv(h)
        out, skip = self.h_out(gate(h_pre + self.v_to_h(h_pre))).chunk(2, dim=1)  # 1x1 of its own stack
        return (out if self.first else h + out), skip


class LinkAfterGate(Correct):
    def vertical(self, v, y=None):
        v_next = gate(self.v_conv(v))
        return v_next, self.v_to_h(torch.cat([v_next, v_next], dim=1))  # link from the gated output


class NoGate(Correct):
    def horizontal(self, h, link):
        out, skip = self.h_out(torch.tanh((self.h_conv(h) + link).chunk(2, dim=1)[0])).chunk(2, dim=1)
        return (out if self.first else h + out), skip


def verdict(candidate, capsys):
    returned = check("gated layer", run_layer(candidate), run_layer(GatedLayer), cases=cases())
    return returned, capsys.readouterr().out


def test_correct_layer_passes_and_is_returned(capsys):
    candidate = run_layer(Correct)
    returned = check("gated layer", candidate, run_layer(GatedLayer), cases=cases())
    assert returned is candidate
    assert "✅ gated layer: correct on 3 checks" in capsys.readouterr().out


def test_residual_in_first_layer_fails_on_the_first_layer_and_names_next_h(capsys):
    _, out = verdict(ResidualInFirstLayer, capsys)
    assert "❌ gated layer: case 1 of 3 (first=True" in out
    assert "at ['next h (horizontal stack)']" in out
    assert "armini's reference version" in out


def test_link_from_the_horizontal_stack_fails_and_names_next_h(capsys):
    _, out = verdict(LinkFromHorizontal, capsys)
    assert "❌ gated layer: case 1 of 3" in out and "at ['next h (horizontal stack)']" in out


def test_link_after_the_gate_fails_and_names_the_link(capsys):
    _, out = verdict(LinkAfterGate, capsys)
    assert "❌ gated layer: case 1 of 3" in out and "at ['link (vertical -> horizontal)']" in out


def test_no_gate_fails_and_names_next_h(capsys):
    _, out = verdict(NoGate, capsys)
    assert "❌ gated layer: case 1 of 3" in out and "at ['next h (horizontal stack)']" in out


def test_unwritten_exercise_falls_back_to_armini(capsys):
    class Unwritten(GatedLayer):
        def vertical(self, v, y=None):
            raise NotImplementedError("Exercise: the gated layer")

    returned, out = verdict(Unwritten, capsys)
    assert "not done yet" in out
    v, h = torch.zeros(1, 8, 3, 3), torch.zeros(1, 8, 3, 3)
    assert set(returned(False, v, h)) == {"next v (vertical stack)", "link (vertical -> horizontal)",
                                          "next h (horizontal stack)", "skip"}


# ---------------------------------------------------------------------------------------------
# the depth sweep of lessons 02 and 04 (on a smaller image: the same shapes of context, faster)


def architecture_counts(model, target):
    """The lessons' probe: positive float64 weights, an all-white image, any change counts."""
    probe = causality.positive_copy(model, scale=0.3)
    white = torch.full((1, *model.shape), model.levels - 1)
    seen = causality.context_map(probe, white, target=target, trials=1, rtol=0, atol=0)
    return causality.context_counts(seen, target)


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_gated_pixelcnn_has_no_blind_spot_at_any_depth_and_pixelcnn_has_one_from_two_layers(layers):
    shape, target = (1, 11, 11), (0, 7, 5)
    torch.manual_seed(0)
    small = dict(shape=shape, levels=4, channels=4, head_channels=4, first_kernel=3)
    gated = architecture_counts(GatedPixelCNN(n_layers=layers, **small), target)
    pixelcnn = architecture_counts(PixelCNN(n_blocks=layers - 1, **small), target)
    assert gated["blind spot"] == 0
    assert gated["seen"] > pixelcnn["seen"] or layers == 1
    assert (pixelcnn["blind spot"] > 0) == (layers > 1), pixelcnn  # a 3x3 mask A alone sees its whole window
    assert gated["out of reach"] == pixelcnn["out of reach"]  # the same reach: only the blind spot differs


# ---------------------------------------------------------------------------------------------
# no cell of lessons 02-04 ends with a bare model expression (model.cpu() printed 30 lines of layers)

LESSONS = Path(__file__).resolve().parents[1] / "solutions"
MODEL_METHODS = {"cpu", "cuda", "to", "eval", "train", "double", "float", "half", "requires_grad_"}


def ends_with_a_model(source):
    """True when the cell's last statement is a bare call such as `model.cpu()`, whose value Jupyter shows."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    last = body[-1] if body else None
    return (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
            and isinstance(last.value.func, ast.Attribute) and last.value.func.attr in MODEL_METHODS)


def test_the_detector_finds_a_bare_model_call():
    assert ends_with_a_model("x = 1\ncond.cpu()")
    assert not ends_with_a_model("cond = cond.cpu()")
    assert not ends_with_a_model("model.cpu()\nscrubber")


@pytest.mark.parametrize("lesson", ["02_pixelcnn", "03_pixelrnn", "04_gated_pixelcnn"])
def test_no_cell_prints_a_whole_model(lesson):
    cells = json.loads((LESSONS / f"{lesson}.ipynb").read_text(encoding="utf-8"))["cells"]
    bad = [index for index, cell in enumerate(cells)
           if cell["cell_type"] == "code" and ends_with_a_model("".join(cell["source"]))]
    assert not bad, f"{lesson}: cells {bad} end with a bare model call; assign it (model = model.cpu())"
