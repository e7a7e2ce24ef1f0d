"""Training on several processes at once (several GPUs): the few pieces `armini.train.fit` uses under torchrun.

    torchrun --standalone --nproc_per_node=4 -m armini train pixelcnn --steps 3000    # 4 GPUs, one process each
    torchrun --standalone --nproc_per_node=2 -m armini train pixelcnn --device cpu   # 2 CPU processes (gloo)

torchrun starts N copies of the same program and tells each one who it is through environment
variables: RANK (0..N-1: which process), WORLD_SIZE (N) and LOCAL_RANK (which GPU of this machine).
`fit` then trains by data parallelism (DistributedDataParallel, DDP: Li et al. 2020, "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training"):

    1. every process holds the same model (DDP copies rank 0's weights to the others at the start);
    2. every process draws the same global batch of B images (the same seeded BatchOrder) and keeps
       its own slice of B/N of them (`shard`, our distributed sampler): together they see one batch;
    3. each computes the mean loss of its slice and backpropagates; while backward runs, DDP averages
       the gradients over the processes (an all-reduce):
           (1/N) sum_r (1/(B/N)) sum_{i in slice r} grad l_i  =  (1/B) sum_i grad l_i,
       the gradient of the mean loss of the whole batch, the one a single process computes;
    4. every process takes the same optimizer step from the same gradient: the copies stay equal.

So N processes with batch_size B train like one process with batch_size B (to float rounding), each
GPU doing 1/N of every step's work (plus the all-reduce). The test set is split the same way (every N-th test batch) and the
sums added up (`total`). Only rank 0 prints and writes files (`is_main`). A checkpoint holds the one
state all processes share, so every process restores the same: a resume continues exactly (with
another number of processes: to float rounding, as above).

What is not the same as one process (stated, not hidden):
- random numbers a loss draws (ARDM's random order and step, dropout, label dropout): each process
  draws its own for its slice (`own_random_stream`), so they differ from a one-process run's;
- buffers a forward pass updates (an EMA codebook): DDP copies rank 0's to every process before each
  step, so they follow rank 0's slice of the batch only;
- param_groups (a VQGAN's generator and discriminator, one backward pass each) are refused: DDP
  averages the gradients of one backward pass per step.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["World", "from_env", "is_main", "start", "check_batch", "shard", "Objective", "wrap",
           "own_random_stream", "same_random_state", "same_buffers", "barrier", "any_process",
           "mean", "total"]


@dataclass(frozen=True)
class World:
    """Who this process is among those training together: rank in 0..size-1; local_rank picks its GPU."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where this process trains (and what collectives run on)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be a whole number (torchrun sets it); "
                         "unset it to train in one process") from None


def from_env() -> World:
    """This process as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK); one process without torchrun."""
    if dist.is_available() and dist.is_initialized():  # a process group someone already started
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    world = World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise ValueError(f"RANK={world.rank} and WORLD_SIZE={world.size} do not describe a process of a group "
                         "(0 <= RANK < WORLD_SIZE): launch with torchrun, or unset them to train in one process")
    return world


def is_main() -> bool:
    """Is this the process that prints and writes files (rank 0; always true without torchrun)?"""
    return from_env().main


def start(dev: torch.device) -> World:
    """Join the other processes (once per process) and pick this one's device; one process: nothing to do.

    The backend carries the all-reduces: NCCL between GPUs, gloo between CPU processes. Each process
    trains on GPU LOCAL_RANK (a "cuda" device becomes cuda:LOCAL_RANK). The group lives until the
    process exits."""
    world = from_env()
    if world.size == 1:
        return World(device=dev)
    if dev.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"process LOCAL_RANK={world.local_rank} has no GPU of its own: this machine has "
                               f"{torch.cuda.device_count()}; start at most that many (torchrun --nproc_per_node)")
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)  # "cuda" now means this process's GPU, in fit and after it
    elif dev.type != "cpu":
        raise ValueError(f"training on several processes needs CUDA GPUs (NCCL) or the CPU (gloo), not {dev.type}: "
                         "pass --device cpu / device='cpu', or train in one process (without torchrun)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")  # rendezvous: torchrun's MASTER_ADDR/PORT
        atexit.register(dist.destroy_process_group)
    return World(world.rank, world.size, world.local_rank, dev)


def check_batch(batch_size: int, world: World):
    """The global batch must split into equal slices, one per process (so the mean of their mean losses
    is the batch's mean loss), or a clear error naming the sizes that work."""
    if batch_size % world.size:
        below, above = batch_size - batch_size % world.size, batch_size - batch_size % world.size + world.size
        raise ValueError(f"batch_size {batch_size} is the global batch, split equally among the {world.size} "
                         f"processes (torchrun --nproc_per_node={world.size}): it must be a multiple of "
                         f"{world.size}, such as {below or above} or {above}")


def shard(idx: torch.Tensor, world: World) -> torch.Tensor:
    """This process's slice of the global batch `idx` (B,): (B/N,) rank r takes images r*B/N..(r+1)*B/N-1."""
    if world.size == 1:
        return idx
    b = len(idx) // world.size  # check_batch made it exact
    return idx[world.rank * b : (world.rank + 1) * b]


class Objective(nn.Module):
    """The loss as a module: forward(x, y) = loss_fn(model, x, y).

    DDP averages the gradients of work done through its own forward only, and a model's objective is
    model.loss (or any loss_fn), not model.forward: so DDP wraps this, and `model` itself stays plain
    (what fit saves, samples from and returns is the model, never a wrapper)."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, x, y=None):
        return self.loss_fn(self.model, x, y)


def wrap(model: nn.Module, loss_fn, world: World):
    """loss_fn(model, ., .) as a function (x, y) -> loss: itself with one process, through DDP with several."""
    if world.size == 1:
        return lambda x, y: loss_fn(model, x, y)
    ids = [world.device.index] if world.device.type == "cuda" else None
    # find_unused_parameters: some parameters get no gradient from the loss (the frozen tokenizer of a
    # two-stage model); DDP then walks the graph each step to find them, instead of waiting for them forever.
    # With none unused, DDP prints once that the flag was not needed: a note about speed, not an error
    return nn.parallel.DistributedDataParallel(Objective(model, loss_fn), device_ids=ids, find_unused_parameters=True)


def same_random_state(world: World):
    """Give every process rank 0's random state (CPU): they then draw the same seeds in step."""
    if world.size == 1:
        return
    state = torch.get_rng_state().to(world.device)  # NCCL only moves GPU tensors
    dist.broadcast(state, src=0)
    torch.set_rng_state(state.cpu())


@contextlib.contextmanager
def own_random_stream(world: World):
    """Inside: random numbers of this process's own (a loss's random orders, dropout), different on each rank.

    Every process draws one seed from the shared generator (the same number everywhere, so the
    generators stay equal and a checkpoint holds one state), then draws from seed + rank."""
    if world.size == 1:
        yield
        return
    seed = int(torch.randint(2**62, ()))  # the same on every rank: the shared CPU generator moves on in step
    on_gpu = world.device.type == "cuda"
    with torch.random.fork_rng(devices=[world.device.index] if on_gpu else [], device_type="cuda"):
        torch.manual_seed(seed + world.rank)
        yield


def same_buffers(model: nn.Module, world: World):
    """Copy rank 0's buffers (an EMA codebook) to every process, as DDP does before each step: evaluation
    and checkpoints then see one model."""
    if world.size == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier(world: World):
    """Wait here until every process has arrived (after rank 0 wrote a file that the others may read next)."""
    if world.size > 1:
        dist.barrier()


def any_process(flag: bool, world: World) -> bool:
    """True on every process if it is true on any (a time limit one clock passed): they stop together."""
    if world.size == 1:
        return flag
    t = torch.tensor(int(flag), device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean(values: dict, world: World) -> dict:
    """name -> number averaged over the processes: equal slices, so the mean of their batch means is the
    global batch's mean loss, the same on every rank (they then all stop, or none does)."""
    if world.size == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=world.device)  # (groups,)
    dist.all_reduce(t)  # sum over the processes
    return {name: v / world.size for name, v in zip(values, t.tolist())}


def total(value: float, world: World) -> float:
    """A number summed over the processes (bits of their shares of the test set)."""
    if world.size == 1:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.item()
