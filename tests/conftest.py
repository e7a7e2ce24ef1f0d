"""Settings for the whole test session (nbval's notebook kernels, started later, inherit the environment)."""
import os

os.environ.setdefault("ARMINI_QUICK", "1")  # small training budgets in lessons and tests
os.environ.setdefault("MPLBACKEND", "Agg")  # no windows, no inline images
os.environ.setdefault("OMP_NUM_THREADS", str(min(4, os.cpu_count() or 1)))  # for the kernels' torch

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# Lessons and tests train on the bundled subset, so results do not depend on whether the full set is installed.
os.environ.setdefault("ARMINI_DATA_SUBSET", "1")
