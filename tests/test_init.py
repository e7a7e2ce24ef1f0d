"""armini's top-level helpers: environment flags, device choice, class labels."""
import pytest
import torch

import armini


@pytest.mark.parametrize("value,expected", [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                                            ("0", False), ("", False), ("no", False), ("2", False)])
def test_env_flag(monkeypatch, value, expected):
    monkeypatch.setenv("ARMINI_SOMETHING", value)
    assert armini.env_flag("ARMINI_SOMETHING") is expected


def test_device_takes_names_and_devices(monkeypatch):
    monkeypatch.delenv("ARMINI_DEVICE", raising=False)
    assert armini.device("cpu") == armini.device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            armini.device(torch.device("cuda"))


def test_class_labels_cycle_through_the_classes():
    class Conditional(torch.nn.Module):
        num_classes = 3

    assert armini.class_labels(Conditional(), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert armini.class_labels(torch.nn.Module(), 7) is None
