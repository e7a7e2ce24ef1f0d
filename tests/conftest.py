"""Settings for the whole test session (nbval's notebook kernels, started later, inherit the environment)."""
import os

os.environ.setdefault("ARMINI_QUICK", "1")  # small training budgets in lessons and tests
os.environ.setdefault("MPLBACKEND", "Agg")  # no windows, no inline images
# Lessons and tests train on the bundled subset, so results do not depend on whether the full set is installed.
os.environ.setdefault("ARMINI_DATA_SUBSET", "1")

# Notebook kernels run on one thread too: on a 2-core machine with anything else running, torch's
# spinning thread pool slows the many small operations of quick mode by 10x or more (a NADE cell
# of lesson 01 ran past nbval's 300 s limit with two threads under load). Set OMP_NUM_THREADS to
# override. Reference outputs (python -m armini.course record) are recorded on one thread as well.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# The tests run tiny models, for which one thread is fastest (threads cost more than they save on
# small tensors, and much more on a busy machine).
torch.set_num_threads(1)
