"""Lesson 16's build-it exercises (solutions/16_vpn.ipynb): one step of the convolutional LSTM (Shi et al.
2015, eq. 3) and the one-frame shift of the ConvLSTM's inputs (what frame t may see). Each check passes the
right answer and rejects the usual wrong ones with a verdict that says where the result differs.

The cases below are the lesson's own: what each check compares."""
import pytest
import torch

from armini import pretrained
from armini.course import check
from armini.models.vpn import context_inputs
from armini.nn.convlstm import ConvLSTMCell, compare_step, conv_lstm_step

# ---------------------------------------------------------------------------------------------
# the ConvLSTM step


def lstm_cases():
    gen = torch.Generator().manual_seed(0)
    cases = []
    for F_in, F_, size in ((2, 3, 5), (4, 2, 6)):
        torch.manual_seed(F_in)
        cell = ConvLSTMCell(F_in, F_, kernel=3)
        with torch.no_grad():
            for w in (cell.w_ci, cell.w_cf, cell.w_co):
                w.normal_(generator=gen)
        maps = [torch.randn(2, n, size, size, generator=gen) for n in (F_in, F_, F_)]
        cases.append((*maps, cell.conv, cell.w_ci, cell.w_cf, cell.w_co))
    return cases


def make_step(g_act=torch.tanh, o_reads_new_cell=True, forget_reads_old_cell=True):
    def step(x, h, c, conv, w_ci, w_cf, w_co):
        i, f, g, o = conv(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c_old = c
        i = torch.sigmoid(i + w_ci * c_old)
        f = torch.sigmoid(f + w_cf * c_old) if forget_reads_old_cell else None
        if f is None:  # the slip: the forget gate's peephole reads the input gate's result, not C_{t-1}
            f = torch.sigmoid(torch.zeros_like(c_old) + w_cf * i)
        c = f * c_old + i * g_act(g)
        o = torch.sigmoid(o + w_co * (c if o_reads_new_cell else c_old))
        return o * torch.tanh(c), c
    return step


def test_lstm_step_right(capsys):
    right = make_step()
    with torch.no_grad():
        assert check("ConvLSTM step", right, conv_lstm_step, lstm_cases(), compare=compare_step) is right
    assert capsys.readouterr().out == "✅ ConvLSTM step: correct on 2 checks\n"


def test_lstm_step_wrong_versions_are_caught(capsys):  # the verdict names which of H_t, C_t is wrong
    wrongs = {"output peephole on C_{t-1}": (make_step(o_reads_new_cell=False), "C_t is right but H_t differs"),
              "sigmoid on g": (make_step(g_act=torch.sigmoid), "C_t differs"),
              "forget gate off C_{t-1}": (make_step(forget_reads_old_cell=False), "C_t differs")}
    for name, (wrong, where) in wrongs.items():
        with torch.no_grad():
            got = check("ConvLSTM step", wrong, conv_lstm_step, lstm_cases(), compare=compare_step)
        assert got is conv_lstm_step, name
        out = capsys.readouterr().out
        assert out.startswith("❌ ConvLSTM step: case 1 of 2") and where in out, (name, out)
        assert "armini's reference version" in out, out


# ---------------------------------------------------------------------------------------------
# the one-frame shift


def shift_cases():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 4, 3, 5, 5, generator=gen),), (torch.randn(1, 2, 2, 3, 3, generator=gen),),
            (torch.randn(3, 6, 1, 4, 4, generator=gen),)]


def right_shift(enc):
    return torch.cat([torch.zeros_like(enc[:, :1]), enc[:, :-1]], dim=1)


def no_shift(enc):  # frame t reads itself: the leak the lesson shows
    return enc


def rolled(enc):  # frame 0 reads the last frame instead of zeros
    return torch.roll(enc, 1, dims=1)


def shifted_the_wrong_way(enc):  # frame t reads frame t+1
    return torch.cat([enc[:, 1:], torch.zeros_like(enc[:, :1])], dim=1)


def dropped_a_frame(enc):  # T-1 inputs: the last frame gets no LSTM step
    return enc[:, :-1]


def test_shift_right(capsys):
    assert check("one-frame shift", right_shift, context_inputs, shift_cases()) is right_shift
    assert capsys.readouterr().out == "✅ one-frame shift: correct on 3 checks\n"


def test_shift_wrong_versions_are_caught(capsys):
    for wrong, problem in ((no_shift, "values differ"), (rolled, "values differ"),
                           (shifted_the_wrong_way, "values differ"), (dropped_a_frame, "expected shape (2, 4, 3, 5, 5)")):
        got = check("one-frame shift", wrong, context_inputs, shift_cases())
        assert got is context_inputs, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ one-frame shift: case 1 of 3") and problem in out, (wrong.__name__, out)


# ----------------------------------------------------------------------------- the pretrained checkpoint


@pytest.mark.skipif(not pretrained.available("vpn"),
                    reason="data/pretrained/vpn.pt is not here: python -m armini pretrained train vpn")
def test_pretrained_checkpoint_is_the_lessons_model():
    """ARMINI_PRETRAINED=1 loads what the training cell trains: the same model, shape, levels and settings
    (the default budget's), and the cell's budget is the recipe's."""
    from armini.models.vpn import VPN

    lesson_model = VPN(shape=(8, 1, 16, 16), levels=16, spatial=True)  # T, SIZE, K = 8, 16, 16
    assert pretrained.mismatches("vpn", lesson_model) == []
    cell = pretrained.lesson_cell("vpn")
    for setting in ['armini.budget(200, 8)', 'lr=2e-3', 'lr_schedule="constant"']:
        assert setting in cell, setting


# ---------------------------------------------------------------------------------------------
# the bounce (Moving MNIST's motion)


def bounce_cases():
    import numpy as np

    return [
        (np.array([[2.0, 3.0], [0.5, 8.0], [9.0, 1.0]]), np.array([[1.0, -1.0], [-1.0, 1.5], [1.0, -2.0]]), 9.0),
        (np.array([[0.0, 9.0], [4.0, 4.0]]), np.array([[0.0, 0.0], [5.0, -4.0]]), 9.0),
        (np.random.default_rng(0).uniform(0, 12, (5, 2)), np.random.default_rng(1).uniform(-4, 4, (5, 2)), 12.0),
    ]


def test_bounce_right(capsys):
    import numpy as np

    from armini import data

    def right(position, velocity, high):
        position = position + velocity
        hit = (position < 0) | (position > high)
        return np.clip(position, 0, high), np.where(hit, -velocity, velocity)

    assert check("bounce", right, data.bounce, bounce_cases(), compare=data.compare_bounce) is right
    assert capsys.readouterr().out == "✅ bounce: correct on 3 checks\n"


def test_bounce_wrong_versions_are_caught(capsys):
    import numpy as np

    from armini import data

    def no_clip(p, v, high):  # the digit leaves the canvas for a frame
        p = p + v
        return p, np.where((p < 0) | (p > high), -v, v)

    def flips_both(p, v, high):  # a wall flips the whole velocity, not the component that hit it
        p = p + v
        hit = ((p < 0) | (p > high)).any(-1, keepdims=True)
        return np.clip(p, 0, high), np.where(hit, -v, v)

    def wraps(p, v, high):  # a torus, not walls
        return (p + v) % high, v

    def touching_flips(p, v, high):  # landing exactly on a wall counts as crossing it
        p = p + v
        hit = (p <= 0) | (p >= high)
        return np.clip(p, 0, high), np.where(hit, -v, v)

    wrongs = {"no clip": (no_clip, "positions differ"), "flips both": (flips_both, "velocities differ"),
              "wraps": (wraps, "positions differ"), "touching flips": (touching_flips, "velocities differ")}
    for name, (wrong, where) in wrongs.items():
        assert check("bounce", wrong, data.bounce, bounce_cases(), compare=data.compare_bounce) is data.bounce, name
        out = capsys.readouterr().out
        assert out.startswith("❌ bounce: case") and where in out and "armini's reference version" in out, (name, out)
