"""armini: a small PyTorch library for a course on autoregressive image and video generation.

Every lesson's model, data view, training loop and picture lives here once; the
notebooks derive a piece, check it against the library's version, then use it.

Start with::

    import armini
    dev = armini.device()          # CUDA, then Apple MPS, then CPU (ARMINI_DEVICE overrides)
    armini.seed_everything(0)      # Python, NumPy and PyTorch random generators
    armini.quick()                 # True when ARMINI_QUICK=1 (tests, CI): budgets shrink

Quick mode also runs torch on one CPU thread (see `set_threads`, called on import): its small
tensors gain nothing from more, and on a busy laptop torch's threads fight for the cores.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__version__ = "0.1.0"
__all__ = ["device", "seed_everything", "quick", "budget", "set_threads", "env_flag", "class_labels", "__version__"]


def env_flag(name: str) -> bool:
    """True when the environment variable `name` holds a true value: 1, true, yes or on (any case)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def device(prefer: str | torch.device | None = None) -> torch.device:
    """The device lessons train on: `prefer`, then $ARMINI_DEVICE, then CUDA, then MPS, then CPU.

    prefer: a name ("cpu", "cuda", "cuda:1", "mps") or a torch.device; an unavailable one is an error.

    >>> armini.device()                # doctest: +SKIP
    device(type='cpu')
    """
    if isinstance(prefer, torch.device):
        prefer = str(prefer)
    name = prefer or os.environ.get("ARMINI_DEVICE")
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r} was asked for (argument or ARMINI_DEVICE) but CUDA is not available; "
                "unset ARMINI_DEVICE or set it to 'cpu'"
            )
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RuntimeError(
                f"device {name!r} was asked for but Apple MPS is not available; unset ARMINI_DEVICE or set it to 'cpu'"
            )
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a CPU `torch.Generator` seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def quick() -> bool:
    """True when ARMINI_QUICK is set to a true value (1, true, yes): tests and CI shrink every budget."""
    return env_flag("ARMINI_QUICK")


def budget(default, quick_value):
    """`quick_value` in quick mode, else `default`: how lessons size their training runs.

    >>> steps = armini.budget(3000, 60)   # 3000 steps normally, 60 under ARMINI_QUICK=1
    """
    return quick_value if quick() else default


def set_threads() -> int:
    """Set torch's CPU thread count the way quick mode wants it, and return the count now in use.

    $ARMINI_THREADS=N sets N threads in any mode; otherwise quick mode uses one thread unless
    $OMP_NUM_THREADS already chose (torch reads that itself); otherwise torch's default (one per core)
    stays. `import armini` calls this, so every lesson's kernel gets it from its first cell.

    Why one thread in quick mode: its tensors are small, so a second thread saves little, and on a
    busy 2-core machine torch's spinning threads wait for each other (lessons took several times as
    long in a Jupyter kernel with the default threads; the tests have always pinned one).
    """
    wanted = os.environ.get("ARMINI_THREADS", "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ValueError(f"ARMINI_THREADS={wanted!r}: give a whole number of CPU threads, 1 or more "
                             "(or unset it: quick mode then uses 1, otherwise torch uses one per core)")
        torch.set_num_threads(int(wanted))
    elif quick() and not os.environ.get("OMP_NUM_THREADS", "").strip():
        torch.set_num_threads(1)
    return torch.get_num_threads()


def class_labels(model, n: int, device=None):
    """Labels 0, 1, 2, ... (cycling through the classes) for n images of a class-conditional
    model, None for an unconditional one: what to pass as y= to see every class in turn."""
    if getattr(model, "num_classes", None) is None:
        return None
    dev = device if device is not None else getattr(model, "model_device", "cpu")
    return torch.arange(int(n), device=dev) % model.num_classes


set_threads()  # quick mode: one CPU thread (ARMINI_THREADS overrides)
