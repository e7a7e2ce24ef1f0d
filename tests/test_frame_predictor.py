"""The frame predictor of lesson 17 (armini.models.frame_predictor): the scheduled-sampling schedule,
the complementary mask, teacher forcing vs scheduled sampling, rollouts that never read the future."""
import itertools
import math

import pytest
import torch

import armini
from armini.models.frame_predictor import (
    SCHEDULES, FramePredictor, ScheduledSampling, coin_flips, complementary_blend, frame_quality, predict,
    rollout, schedule_params, scheduled_pass, scheduled_sampling_loss, teacher_forcing_prob,
)
from armini.train import fit

SHAPE = (5, 1, 6, 6)  # (T, C, H, W): small enough for a second
K = 4


def model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return FramePredictor(shape=SHAPE, levels=K, channels=8, lstm_channels=8, **kwargs)


def videos(n=3, seed=1, T=SHAPE[0]):
    return torch.randint(K, (n, T) + SHAPE[1:], generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ the schedule
def test_schedule_values_are_the_papers():
    assert teacher_forcing_prob(0, "linear", k=1.0, c=0.01) == 1.0
    assert teacher_forcing_prob(30, "linear", k=1.0, c=0.01) == pytest.approx(0.7)
    assert teacher_forcing_prob(500, "linear", k=1.0, c=0.01, epsilon=0.1) == 0.1  # the floor
    assert teacher_forcing_prob(3, "exponential", k=0.9) == pytest.approx(0.9 ** 3)
    assert teacher_forcing_prob(0, "exponential", k=0.9) == 1.0
    assert teacher_forcing_prob(20, "inverse_sigmoid", k=10.0) == pytest.approx(10 / (10 + math.exp(2)))
    with pytest.raises(ValueError, match="kind must be one of"):
        teacher_forcing_prob(0, "cosine")


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedules_fall_monotonically_from_about_one_to_a_half_at_mid_training(kind):
    steps = 400
    params = schedule_params(kind, steps)
    eps = [teacher_forcing_prob(i, kind, **params) for i in range(steps + 1)]
    assert all(0 <= e <= 1 for e in eps)
    assert all(a >= b for a, b in zip(eps, eps[1:]))  # non-increasing
    assert eps[0] > 0.95 and eps[-1] < 0.3
    assert eps[steps // 2] == pytest.approx(0.5, abs=1e-6)
    assert eps[steps // 4] > 0.5 > eps[3 * steps // 4]


def test_schedule_params_refuses_bad_input():
    with pytest.raises(ValueError, match="kind must be one of"):
        schedule_params("step", 100)
    with pytest.raises(ValueError, match="steps must be"):
        schedule_params("linear", 0)


# ------------------------------------------------------------------------------ the complementary mask
def test_complementary_mask_blends_copy_and_generated_as_specified():
    g = torch.Generator().manual_seed(0)
    a = 3 * torch.randn(2, 1, 3, 4, generator=g)  # mask logits
    gen = torch.log_softmax(torch.randn(2, 1, 3, 4, K, generator=g), -1)
    prev = torch.randint(K, (2, 1, 3, 4), generator=g)
    p = complementary_blend(a, gen, prev).exp()
    m = torch.sigmoid(a)[..., None]
    expected = m * torch.nn.functional.one_hot(prev, K) + (1 - m) * gen.exp()  # m [v = prev] + (1 - m) p_gen
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 1, 3, 4))


def test_mask_one_copies_the_previous_frame_and_mask_zero_generates():
    g = torch.Generator().manual_seed(1)
    gen = torch.log_softmax(torch.randn(1, 1, 2, 2, K, generator=g), -1)
    prev = torch.tensor([[[[0, 3], [2, 1]]]])
    copy = complementary_blend(torch.full((1, 1, 2, 2), 50.0), gen, prev)  # m = 1
    assert torch.equal(predict(copy), prev)  # the mean is the previous pixel
    torch.testing.assert_close(copy.exp(), torch.nn.functional.one_hot(prev, K).float())
    new = complementary_blend(torch.full((1, 1, 2, 2), -50.0), gen, prev)  # m = 0
    torch.testing.assert_close(new, gen)


def test_loss_and_gradients_are_finite_with_the_copy_branch():
    m, x = model(), videos()
    loss = m.loss(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_a_video_model_that_sums_to_one():
    torch.manual_seed(0)
    m = FramePredictor(shape=(2, 1, 2, 2), levels=2, channels=4, lstm_channels=4)
    every = torch.tensor(list(itertools.product(range(2), repeat=8))).view(256, 2, 1, 2, 2)
    total = torch.logsumexp(m.log_prob(every), 0)
    assert abs(total.item()) < 1e-4


def test_without_the_mask_the_model_is_a_plain_softmax():
    m = model(mask=False)
    x = videos()
    logp = m.conditionals(x)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(x.shape))


# ------------------------------------------------------------------------------ what is fed
def record_fed(m):
    """Wrap m.step so that every frame fed to it is kept."""
    fed, step = [], m.step

    def recording(previous, state=None):
        fed.append(previous.clone())
        return step(previous, state)

    m.step = recording
    return fed


def test_teacher_forcing_feeds_the_true_frames_only():
    m, x = model(), videos()
    fed = record_fed(m)
    m.loss(x)
    assert len(fed) == SHAPE[0]
    assert torch.equal(fed[0], torch.zeros_like(x[:, 0]))  # frame -1 is black
    for t in range(1, SHAPE[0]):
        assert torch.equal(fed[t], x[:, t - 1])


def test_scheduled_sampling_with_probability_zero_equals_teacher_forcing():
    m, x = model(), videos()
    tf = m.loss(x)
    ss = scheduled_sampling_loss(m, x, p_truth=1.0, context=1)  # never the model's own prediction
    torch.testing.assert_close(ss, tf, rtol=0, atol=0)
    loss_fn = ScheduledSampling("linear", steps=10, k=1.0, c=0.0)  # eps_i = 1 at every step
    torch.testing.assert_close(loss_fn(m, x), tf, rtol=0, atol=0)


def test_free_running_feeds_the_models_own_predictions_after_the_context():
    m, x = model(), videos()
    fed = record_fed(m)
    context = 2
    use_truth = coin_flips(x.shape[0], x.shape[1], p_truth=0.0, context=context)
    assert use_truth[:, :context].all() and not use_truth[:, context:].any()
    with torch.no_grad():
        logp = scheduled_pass(m, x, use_truth)
    for t in range(1, SHAPE[0]):
        expected = x[:, t - 1] if t - 1 < context else predict(logp[:, t - 1])
        assert torch.equal(fed[t], expected), t


def test_coin_flips_follow_the_probability():
    use_truth = coin_flips(4000, 3, p_truth=0.3, context=0, generator=torch.Generator().manual_seed(0))
    assert use_truth.shape == (4000, 2)
    assert abs(use_truth.float().mean().item() - 0.3) < 0.02


def test_a_frame_reads_no_later_frame():
    m, x = model(), videos()
    with torch.no_grad():
        base = m.conditionals(x)
        for t in range(SHAPE[0]):
            y = x.clone()
            y[:, t:] = (y[:, t:] + 1) % K  # change frame t and every later one
            torch.testing.assert_close(m.conditionals(y)[:, :t], base[:, :t])


def test_a_rollout_never_reads_future_true_frames():
    m, x = model(), videos(T=9)
    k, steps = 3, 6
    with torch.no_grad():
        pred = rollout(m, x[:, :k], steps)
        # the same frames from a training pass fed the truth only for the context: the future truth is unused
        y = x.clone()
        y[:, k:] = (y[:, k:] + 2) % K
        use_truth = torch.zeros(x.shape[0], x.shape[1] - 1, dtype=torch.bool)
        use_truth[:, :k] = True
        for v in (x, y):
            logp = scheduled_pass(m, v, use_truth)
            guesses = torch.stack([predict(logp[:, t]) for t in range(k, k + steps)], 1)
            assert torch.equal(guesses, pred)
    assert pred.shape == (x.shape[0], steps) + SHAPE[1:]
    with pytest.raises(ValueError, match="at least one given frame"):
        rollout(m, x[:, :0], 3)


def test_sampling_continues_the_context():
    m, x = model(), videos()
    out = m.sample(2, context=x[:2, :2], generator=torch.Generator().manual_seed(0))
    assert out.shape == (2,) + SHAPE and torch.equal(out[:, :2], x[:2, :2])


# ------------------------------------------------------------------------------ determinism and errors
def test_seeded_training_and_sampled_rollouts_are_deterministic():
    x = videos(8, T=SHAPE[0])
    weights = []
    for _ in range(2):
        armini.seed_everything(0)
        m = FramePredictor(shape=SHAPE, levels=K, channels=8, lstm_channels=8)
        fit(m, x, steps=3, batch_size=4, loss_fn=ScheduledSampling("inverse_sigmoid", steps=3, context=1),
            progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    a = rollout(m, x[:, :2], 4, how="sample", generator=torch.Generator().manual_seed(3))
    b = rollout(m, x[:, :2], 4, how="sample", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_scheduled_sampling_loss_fn_counts_steps_and_keeps_its_probabilities():
    m, x = model(), videos()
    loss_fn = ScheduledSampling("exponential", steps=4, context=1)
    for _ in range(3):
        loss_fn(m, x)
    assert [i for i, _ in loss_fn.history] == [0, 1, 2]
    k = loss_fn.params["k"]
    assert [p for _, p in loss_fn.history] == pytest.approx([1.0, k, k * k])


def test_frame_quality_is_perfect_on_the_truth_and_names_a_shape_mismatch():
    x = videos(2, T=4)
    q = frame_quality(x, x, K)
    assert q["psnr"].shape == (2, 4) and torch.all(q["psnr"] == 100.0)
    torch.testing.assert_close(q["ssim"], torch.ones(2, 4))
    worse = frame_quality((x + 1).clamp(max=K - 1), x, K)
    assert torch.all(worse["psnr"] < 100.0)
    with pytest.raises(ValueError, match="same shape"):
        frame_quality(x[:, :3], x, K)


def test_predict_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="how must be"):
        predict(torch.zeros(1, 1, 2, 2, K), how="mode")
