"""Bad input to any model of armini.models.MODELS gets one clear error, from the base class.

The base class checks every call once, where it enters the model (armini/models/base.py,
`checks_inputs`): an empty batch, float images, values outside [0, K), labels for an
unconditional model, a temperature that is not a finite positive number, and sizes whose
memory could never fit are refused before any work, with a message that says what to do.
"""
import math

import pytest
import torch

from armini import memory
from armini.memory import NotEnoughMemory
from armini.models import MODELS, NADE, ARModel, IndependentPixels, PixelCNN

NAMES = sorted(n for n in MODELS if MODELS[n].shape_axes != 4)  # image models (video ones: test_contract, test_vpn)


def build(name, shape=(1, 4, 4), levels=4):
    torch.manual_seed(0)
    return MODELS[name](shape=shape, levels=levels)


def images(model, n=2):
    return torch.randint(model.levels, (n,) + model.shape, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------ the empty batch
@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_is_an_error_for_every_model(name):
    """Old code: NaN from six models' loss, a raw reshape error from four."""
    model = build(name)
    empty = images(model)[:0]  # (0, C, H, W)
    for method in (model.loss, model.log_prob, model.log_prob_pixels, model.conditionals):
        with pytest.raises(ValueError, match=r"x holds no images \(batch of 0\)"):
            method(empty)


# ------------------------------------------------------------ conditionals called directly
@pytest.mark.parametrize("name", NAMES)
def test_conditionals_called_directly_checks_its_input(name):
    """Old code: float images and the value K went through conditionals() of most models."""
    model = build(name)
    x = images(model)
    with pytest.raises(TypeError, match="integer pixel values"):
        model.conditionals(x.float())
    with pytest.raises(ValueError, match=r"values must lie in \[0, 4\).*found range \[0, 4\]"):
        model.conditionals(torch.cat([x[:1] * 0, torch.full_like(x[:1], 4)]))  # values 0 and K
    with pytest.raises(ValueError, match="shape"):
        model.conditionals(x[:, :, :3])


@pytest.mark.parametrize("name", NAMES)
def test_unconditional_models_refuse_labels(name):
    """Old code: PixelCNN, PixelSNAIL, the transformer and NADE ignored y without a word."""
    model = build(name)
    x = images(model)
    with pytest.raises(ValueError, match="unconditional: pass y=None"):
        model.loss(x, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_one_call_reads_from_the_device_once(name, monkeypatch):
    """The input check runs once per call and reads x's range in one go (one device sync on a GPU).

    Old code: int(x.min()) and int(x.max()), twice over in models whose conditionals checked again."""
    model = build(name)
    x = images(model)
    calls = [model.loss, model.log_prob] + ([] if model.two_stage else [model.conditionals])
    for call in calls:  # warm-up: one-off per-order builds (LMConv's masks and their groups, on the host) happen here
        call(x)
    reads = []
    for method in ("__int__", "__bool__", "__float__", "item", "tolist"):
        original = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method,
                            lambda self, *a, _m=method, _f=original: reads.append(_m) or _f(self, *a))
    for call in calls:
        call(x)
    assert reads == ["tolist"] * len(calls), reads


def test_a_new_subclass_is_checked_without_writing_a_check():
    class Uniform(ARModel):  # the smallest model: every value equally likely
        def conditionals(self, x, y=None):
            return torch.full(x.shape + (self.levels,), -math.log(self.levels))

    model = Uniform(shape=(1, 2, 2), levels=4)
    assert model.loss(torch.zeros(3, 1, 2, 2, dtype=torch.long)).item() == pytest.approx(2.0)  # log2(4) bits
    with pytest.raises(TypeError, match="dtype"):
        model.conditionals(torch.zeros(3, 1, 2, 2))
    with pytest.raises(ValueError, match="batch of 0"):
        model.loss(torch.zeros(0, 1, 2, 2, dtype=torch.long))


def test_a_failing_call_does_not_switch_the_checks_off():
    class Flaky(IndependentPixels):
        fail = True

        def conditionals(self, x, y=None):
            if self.fail:
                raise RuntimeError("boom")
            return super().conditionals(x, y)

    model = Flaky(shape=(1, 2, 2), levels=4)
    with pytest.raises(RuntimeError, match="boom"):
        model.loss(torch.zeros(1, 1, 2, 2, dtype=torch.long))
    model.fail = False
    with pytest.raises(ValueError, match="values must lie"):
        model.loss(torch.full((1, 1, 2, 2), 9))


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), 0.0, -1.0])
def test_temperature_must_be_finite_and_positive(name, temperature):
    """Old code: nan and inf passed the check and gave an all-zero image."""
    model = build(name)
    with pytest.raises(ValueError, match="temperature must be a finite positive number"):
        model.sample(1, temperature=temperature)


def test_temperature_must_be_a_number():
    with pytest.raises(TypeError, match="temperature must be a number"):
        build("independent").sample(1, temperature="hot")


# ------------------------------------------------------------------------------ memory
GIB = 2**30


def test_nade_refuses_weights_that_cannot_fit(monkeypatch):
    """Old code: NADE(shape=(1, 512, 512)) asked the allocator for 8.6 GB of weights."""
    monkeypatch.setattr(memory, "device_memory", lambda device: 4 * GIB)
    with pytest.raises(NotEnoughMemory, match=r"NADE's weights .*\(1, 512, 512\).* 8\.3 GiB .* 4\.0 GiB of RAM.*--size 28"):
        NADE(shape=(1, 512, 512), levels=256)
    # small enough for an old-code failure check: 26 MiB of weights, 1 MiB of memory
    monkeypatch.setattr(memory, "device_memory", lambda device: 2**20)
    with pytest.raises(MemoryError):  # NotEnoughMemory is a MemoryError and a ValueError
        NADE(shape=(1, 28, 28), levels=256)


def test_nade_refuses_a_batch_that_cannot_fit_and_names_one_that_does(monkeypatch):
    model = NADE(shape=(1, 4, 4), levels=4, hidden=8)
    per_image = model.activation_bytes(1)
    monkeypatch.setattr(memory, "device_memory", lambda device: 10 * per_image)
    x = images(model, 11)
    with pytest.raises(NotEnoughMemory, match=r"batch of 11 images.*at most 10 images at a time \(training CLI: "
                                              r"--batch-size 10\) or smaller images \(CLI: --size 2\)"):
        model.loss(x)
    with pytest.raises(ValueError, match="at most 10 images"):
        model.sample(11)
    assert torch.isfinite(model.loss(x[:10]))  # 10 fit
    monkeypatch.setattr(memory, "device_memory", lambda device: per_image // 2)
    with pytest.raises(NotEnoughMemory, match="Not even one image fits"):
        model.loss(x[:1])


def test_models_without_an_estimate_are_not_checked(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: 1)
    torch.manual_seed(0)
    model = PixelCNN(shape=(1, 4, 4), levels=4, channels=8, n_blocks=1, head_channels=8)
    assert model.activation_bytes(64) is None
    assert torch.isfinite(model.loss(images(model)))
