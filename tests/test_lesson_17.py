"""Lesson 17's build-it exercises (solutions/17_scheduled_sampling.ipynb): the teacher-forcing probability
of scheduled sampling (Bengio et al. 2015's three decays) and the mixing step of a training pass. Each
check passes the right answer and rejects the usual wrong ones.

The cases below are the lesson's own: what each check compares."""
import math

import pytest
import torch

import armini
from armini import data, pretrained
from armini.course import check
from armini.models.frame_predictor import FramePredictor, predict, scheduled_pass, teacher_forcing_prob

# ---------------------------------------------------------------------------------------------
# the schedule

SCHEDULE_CASES = [(0, "linear", 1.0, 0.01), (40, "linear", 1.0, 0.01), (300, "linear", 1.0, 0.01, 0.1),
                  (25, "linear", 0.9, 0.002, 0.05), (0, "exponential", 0.99), (120, "exponential", 0.99),
                  (0, "inverse_sigmoid", 20.0), (60, "inverse_sigmoid", 20.0), (400, "inverse_sigmoid", 50.0)]


def right_schedule(i, kind="linear", k=1.0, c=1e-3, epsilon=0.0):
    if kind == "linear":
        return max(epsilon, k - c * i)
    if kind == "exponential":
        return k ** i
    return k / (k + math.exp(i / k))


def no_floor(i, kind="linear", k=1.0, c=1e-3, epsilon=0.0):  # the linear decay goes below epsilon (and 0)
    if kind == "linear":
        return k - c * i
    return right_schedule(i, kind, k, c, epsilon)


def exponential_of_minus_ki(i, kind="linear", k=1.0, c=1e-3, epsilon=0.0):  # exp(-k i) is not k^i
    if kind == "exponential":
        return math.exp(-k * i)
    return right_schedule(i, kind, k, c, epsilon)


def sigmoid_sign_flipped(i, kind="linear", k=1.0, c=1e-3, epsilon=0.0):  # rises towards 1 instead of falling
    if kind == "inverse_sigmoid":
        return k / (k + math.exp(-i / k))
    return right_schedule(i, kind, k, c, epsilon)


def sampling_probability(i, kind="linear", k=1.0, c=1e-3, epsilon=0.0):  # 1 - eps: P(feed the model's own)
    return 1 - right_schedule(i, kind, k, c, epsilon)


def test_schedule_right(capsys):
    assert check("teacher-forcing probability", right_schedule, teacher_forcing_prob, SCHEDULE_CASES) is right_schedule
    assert capsys.readouterr().out == "✅ teacher-forcing probability: correct on 9 checks\n"


def test_schedule_wrong_versions_are_caught(capsys):
    for wrong in (no_floor, exponential_of_minus_ki, sigmoid_sign_flipped, sampling_probability):
        got = check("teacher-forcing probability", wrong, teacher_forcing_prob, SCHEDULE_CASES)
        assert got is teacher_forcing_prob, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ teacher-forcing probability: case") and "armini's reference version" in out, out


# ---------------------------------------------------------------------------------------------
# the mixing step


def pass_cases():
    armini.seed_everything(1)
    tiny = FramePredictor(shape=(5, 1, 8, 8), levels=4, channels=8, lstm_channels=8)
    clips = data.moving_mnist(3, frames=5, size=8, digits=1, levels=4, seed=5).videos.long()  # (3, 5, 1, 8, 8)
    coins = torch.Generator().manual_seed(2)
    return [(tiny, clips, torch.ones(3, 4, dtype=torch.bool)),
            (tiny, clips, torch.zeros(3, 4, dtype=torch.bool)),
            (tiny, clips, torch.rand(3, 4, generator=coins) < 0.5)]


def make_pass(choose, keep_state=True):
    """A training pass whose fed frame after frame t is choose(x, t, use_truth, logp)."""
    def mixed_pass(model, x, use_truth):
        B, T = x.shape[:2]
        previous, state, logps = model.blank_frame(B), None, []
        for t in range(T):
            logp, state = model.step(previous, state if keep_state else None)
            logps.append(logp)
            if t < T - 1:
                previous = choose(x, t, use_truth, logp)
        return torch.stack(logps, dim=1)
    return mixed_pass


right_pass = make_pass(lambda x, t, u, logp: torch.where(u[:, t, None, None, None], x[:, t], predict(logp)))
always_truth = make_pass(lambda x, t, u, logp: x[:, t])  # ignores the coins: teacher forcing every time
coins_inverted = make_pass(lambda x, t, u, logp: torch.where(u[:, t, None, None, None], predict(logp), x[:, t]))
feeds_the_future = make_pass(lambda x, t, u, logp: torch.where(u[:, t, None, None, None], x[:, t + 1],
                                                               predict(logp)))  # x_{t+1}: the frame to predict
forgets_the_state = make_pass(lambda x, t, u, logp: torch.where(u[:, t, None, None, None], x[:, t], predict(logp)),
                              keep_state=False)  # the ConvLSTM restarts every frame: no memory of earlier frames


def test_pass_right(capsys):
    with torch.no_grad():
        assert check("scheduled-sampling pass", right_pass, scheduled_pass, pass_cases()) is right_pass
    assert capsys.readouterr().out == "✅ scheduled-sampling pass: correct on 3 checks\n"


def test_pass_wrong_versions_are_caught(capsys):
    for wrong in (always_truth, coins_inverted, feeds_the_future, forgets_the_state):
        with torch.no_grad():
            got = check("scheduled-sampling pass", wrong, scheduled_pass, pass_cases())
        assert got is scheduled_pass, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ scheduled-sampling pass: case") and "armini's reference version" in out, out


# ----------------------------------------------------------------------------- the pretrained checkpoint


@pytest.mark.skipif(not pretrained.available("frame-predictor"), reason="data/pretrained/frame-predictor.pt is not "
                    "here: python -m armini pretrained train frame-predictor")
def test_pretrained_checkpoint_is_the_lessons_model():
    """ARMINI_PRETRAINED=1 loads what the training cell trains: the same model, shape, levels and settings
    (the default budget's), and the cell's budget is the recipe's."""
    lesson_model = FramePredictor(shape=(12, 1, 32, 32), levels=16, channels=16, lstm_channels=32)  # T_TRAIN, K
    assert pretrained.mismatches("frame-predictor", lesson_model) == []
    cell = pretrained.lesson_cell("frame-predictor")
    for setting in ['armini.budget(350, 20)', 'armini.budget(16, 8)', 'lr=3e-3']:
        assert setting in cell, setting
