"""Settings for the whole test session (nbval's notebook kernels, started later, inherit the environment)."""
import os

os.environ.setdefault("ARMINI_QUICK", "1")  # small training budgets in lessons and tests
os.environ.setdefault("MPLBACKEND", "Agg")  # no windows, no inline images
# Lessons and tests train on the bundled subset, so results do not depend on whether the full set is installed.
os.environ.setdefault("ARMINI_DATA_SUBSET", "1")

import torch  # noqa: E402

# The tests run tiny models, for which one thread is fastest (threads cost more than they save on
# small tensors, and much more on a busy machine). Notebook kernels keep torch's default.
torch.set_num_threads(1)
