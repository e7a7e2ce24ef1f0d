"""The shared sampling loop (armini.models.base.ARModel.sample): its faster bookkeeping draws what the
plain version drew, step by step (same seeds, same images)."""
import pytest
import torch

from armini.models.gated_pixelcnn import GatedPixelCNN
from armini.models.pixelcnn import PixelCNN
from armini.sampling_cache import StepMode


def small_pixelcnn(shape=(1, 5, 4), levels=6):
    torch.manual_seed(0)
    return PixelCNN(shape=shape, levels=levels, channels=12, n_blocks=1, head_channels=12).eval()


def per_step_uniforms(monkeypatch, model):
    """Make `model` draw its uniforms one step at a time, as the loop does for a CUDA or the global generator."""
    monkeypatch.setattr(model, "_uniforms", lambda *args: None)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(cached=False),
    dict(temperature=0.7),
    dict(top_k=3),
    dict(observed="top"),  # given steps are skipped, their uniforms used up
])
def test_uniforms_drawn_up_front_give_the_images_drawn_step_by_step(monkeypatch, kwargs):
    """For an explicit CPU generator the loop draws every step's uniforms in one call: the same numbers in the
    same order as one call per step, so the same images, and the generator ends in the same state."""
    model = small_pixelcnn(shape=(2, 4, 3))
    kwargs = dict(kwargs)
    if kwargs.pop("observed", None):
        x = torch.randint(6, (3, 2, 4, 3), generator=torch.Generator().manual_seed(1))
        observed = torch.zeros(1, 2, 4, 3, dtype=torch.bool)
        observed[..., :2, :] = True  # the top two rows given
        kwargs.update(x=x, observed=observed)
    g = torch.Generator().manual_seed(5)
    fast = model.sample(3, generator=g, **kwargs)
    after_fast = torch.rand(4, generator=g)
    per_step_uniforms(monkeypatch, model)
    g = torch.Generator().manual_seed(5)
    plain = model.sample(3, generator=g, **kwargs)
    assert torch.equal(fast, plain)
    assert torch.equal(after_fast, torch.rand(4, generator=g))  # the generator used up exactly as much


def test_uniforms_up_front_only_for_an_explicit_cpu_generator():
    """torch's global generator may be used between steps (by a callback, say), so it is drawn step by step."""
    model = small_pixelcnn()
    steps = model.sampling_steps()
    assert model._uniforms(steps, 2, None, torch.device("cpu")) is None
    u = model._uniforms(steps, 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert len(u) == len(steps) and u[0].shape == (2, 1, 1)
    expected = torch.rand(len(steps), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(torch.cat([v.flatten() for v in u]), expected.flatten())


def test_the_global_generator_still_gives_seeded_images():
    model = small_pixelcnn()
    torch.manual_seed(3)
    a = model.sample(2)
    torch.manual_seed(3)
    assert torch.equal(a, model.sample(2))


def test_a_callback_still_sees_every_step_filled_in_turn():
    """The loop skips updating `filled` when nothing reads it; a callback reads it, so it stays right."""
    model = small_pixelcnn(shape=(1, 3, 3))
    seen = []
    model.sample(1, generator=torch.Generator().manual_seed(0),
                 callback=lambda s: seen.append(int(s.filled.sum())))
    assert seen == list(range(1, 10))


@pytest.mark.parametrize("make", [lambda: small_pixelcnn(shape=(3, 3, 3)),
                                  lambda: GatedPixelCNN(shape=(1, 4, 4), levels=5, channels=8, n_layers=2,
                                                        head_channels=8).eval()])
def test_cached_steps_leave_threads_and_autograd_as_they_were(make):
    """A cached step runs on one thread in inference mode (StepMode) and restores both after it."""
    torch.manual_seed(0)
    model = make()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.zeros((1,) + model.shape, dtype=torch.long)
        cache = model.init_cache(x)
        cache.conditional_logprobs(x, torch.tensor([0]))
        assert torch.get_num_threads() == 2
        assert not torch.is_inference_mode_enabled()
    finally:
        torch.set_num_threads(threads)


def test_step_mode_restores_on_error():
    mode = StepMode(torch.device("cpu"))
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with mode:
            assert torch.is_inference_mode_enabled() and torch.get_num_threads() == 1
            raise RuntimeError("inside a step")
    assert torch.get_num_threads() == threads and not torch.is_inference_mode_enabled()


def test_inputs_checked_restores_the_flag():
    model = small_pixelcnn()
    assert not model._inputs_checked
    with model.inputs_checked():
        assert model._inputs_checked
        with model.inputs_checked():
            assert model._inputs_checked
        assert model._inputs_checked
    assert not model._inputs_checked
    with pytest.raises(ValueError):
        with model.inputs_checked():
            raise ValueError("x")
    assert not model._inputs_checked


def test_samplers_draw_in_float64_except_on_apple_mps():
    """The loop's probabilities and uniforms are float64, but float32 on Apple MPS, which has no float64 (a
    float64 tensor there raises, so a learner on a Mac could not sample a model trained on armini.device())."""
    from armini.models.base import probability_dtype
    assert probability_dtype("cpu") == probability_dtype(torch.device("cuda", 0)) == torch.float64
    assert probability_dtype(torch.device("mps")) == torch.float32
