"""Settings for the library tests (the environment of the whole session is set in the root conftest.py)."""
import torch

# The tests run tiny models, for which one thread is fastest (threads cost more than they save on
# small tensors, and much more on a busy machine).
torch.set_num_threads(1)
