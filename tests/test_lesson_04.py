"""Lesson 04's exercise "the gated layer": armini.course.check passes a correct two-stack layer and names
what a wrong one gets wrong (the harness is the lesson's: both classes built with the same weights, as
GatedPixelCNN builds its layers, run on the same inputs)."""
import torch

from armini.course import check
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
