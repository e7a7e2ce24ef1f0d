"""Refusing, before allocating, what can never fit in memory.

A 512x512 image makes attention's (B, heads, T, T) scores hundreds of GB and NADE's weights
8.6 GB. Left to the allocator, that ends in a raw error (or, on a CPU, the process is killed).
Code that can estimate its memory asks first:

    from armini.memory import require_memory
    require_memory(need_bytes, device, "NADE's weights for shape=(1, 512, 512)",
                   "Use smaller images (CLI: --size 28).")

which raises NotEnoughMemory, naming the size needed, the memory there is and the smaller
choice, when `need_bytes` is more than the device has at all (a GPU's total memory, the CPU's
RAM). Only what could not fit even on an idle machine is refused: an estimate is rough.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

__all__ = ["GIB", "NotEnoughMemory", "device_memory", "require_memory"]

GIB = 2**30


class NotEnoughMemory(ValueError, MemoryError):
    """A setting would need more memory than the device has. The message names the size needed and a
    smaller choice. It is a ValueError (a bad setting) and a MemoryError (what it would have become)."""


@functools.lru_cache(maxsize=None)
def device_memory(device: torch.device) -> Optional[int]:
    """All the memory `device` has, in bytes: a CUDA device's total memory, the machine's RAM for the
    CPU; None if unknown (another device type, or no sysconf on Windows)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):
            return None
    return None


def require_memory(need: int, device, what: str, fix: str) -> None:
    """Raise NotEnoughMemory if `need` bytes are more than `device` has.

    what: what needs the memory, as the subject of "need about ... GiB"; fix: a smaller choice."""
    device = torch.device(device)
    have = device_memory(device)
    if have is not None and need > have:
        memory = "GPU memory" if device.type == "cuda" else "RAM"
        raise NotEnoughMemory(
            f"{what} need about {need / GIB:,.1f} GiB of memory, more than the {have / GIB:,.1f} GiB of "
            f"{memory} here ({device}). {fix}"
        )
