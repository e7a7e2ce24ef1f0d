"""One training loop for every model of the course.

    from armini import data, models, train
    ds, test = data.load("fashion-mnist", "train"), data.load("fashion-mnist", "test")
    model = models.MODELS["pixelcnn"](shape=ds.shape, levels=ds.levels)
    hist = train.fit(model, ds, test, steps=3000, checkpoint="runs/pixelcnn/model.pt")
    hist.plot()                                    # train/test bits per dimension against step
    model, info = train.load_checkpoint("runs/pixelcnn/model.pt")

What `fit` does, step by step (the same on CPU, CUDA and Apple MPS):

    1. draw a batch of images from the training set (random order, reshuffled every epoch,
       from its own seeded generator), move it to the device;
    2. loss = model.loss(x) (bits per dimension; any objective through `loss_fn=`), under
       mixed precision on CUDA;
    3. backpropagate, clip the gradient norm, take an AdamW step, update the learning rate
       (short linear warmup, then cosine decay to a tenth); with `param_groups=` (a VQGAN's
       generator and discriminator) loss_fn returns one loss per group and each group has
       its own AdamW, moved by its own loss only (`group_steps`);
    4. every `eval_every` steps measure test bits/dim; every `checkpoint_every` steps and
       at the end save everything needed to resume exactly (never weights that diverged).

Under torchrun (`torchrun --nproc_per_node=N -m armini train ...`, or any script calling fit) the
same loop runs in N processes, one per GPU: batch_size stays the global batch, each process takes
its slice of it and DistributedDataParallel averages the gradients, so N processes train like one
with the same batch; only rank 0 prints and writes (armini.distributed tells how).

The pieces, each readable alone: `_Settings` checks every setting before the first step,
`_open_checkpoint` decides what an existing checkpoint means (resume, overwrite or refuse),
`_Run` holds what a run updates and does one step (`train_step`), one evaluation and one
checkpoint (`save`, after `check_finite`), and `_train` is the loop.

A model may hold other models (a prior over the tokens of a tokenizer such as
armini.nn.palette.Palette): its state_dict holds both, and its `config` may hold the inner
model's settings as nested dicts or dataclasses (saved as plain dicts), so `load_checkpoint`
rebuilds it like any other.

Models only have to implement the contract of `armini.models.base.ARModel`; class-
conditional models (`model.num_classes` set) also receive the labels as `y=`.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import time
import warnings
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

import armini
from armini import distributed
from armini.files import atomic_write, remove_stale_temporaries

__all__ = ["fit", "evaluate", "bits_per_dim", "optimizer_step", "group_steps", "History", "load_checkpoint",
           "save_checkpoint", "is_checkpoint", "CheckpointError", "lr_factor"]

CHECKPOINT_FORMAT = 1  # the value of the "armini_checkpoint" key: how we recognise our own files


# ----------------------------------------------------------------------------- history


@dataclass
class History:
    """What happened during training.

    train:   [(step, train bits/dim of that step's batch (or what fit's loss_fn returns)), ...];
             with several param_groups, the sum of their losses
    train_losses: [(step, {group name: loss}), ...] with several param_groups (else empty)
    test:    [(step, test bits/dim), ...] every `eval_every` steps and at the end
    steps:   optimizer steps completed (counting earlier runs when resumed)
    elapsed_s: wall-clock seconds spent in `fit`, evaluation and saving included (summed over resumes)
    train_s: seconds spent in training steps only; images_per_s = images_seen / train_s
    final_test_bpd: test bits/dim at the end (None without a test set)
    stopped_early: True when `time_limit` ended training before `steps`
    unit:    what the bits measure: the model's `unit` (bits/dim, or bits/token for a token prior),
             with "(bound)" when it is an upper bound (armini.models.base: nll_is_bound)
    """

    train: list = field(default_factory=list)
    test: list = field(default_factory=list)
    steps: int = 0
    images_seen: int = 0
    elapsed_s: float = 0.0
    train_s: float = 0.0
    images_per_s: float = 0.0
    final_test_bpd: Optional[float] = None
    time_limit: Optional[float] = None
    stopped_early: bool = False
    unit: str = "bits/dim"  # what the numbers are: model.unit, marked "(bound)" for an upper bound
    train_losses: list = field(default_factory=list)  # [(step, {name: loss})] with several param_groups

    @property
    def final_train_bpd(self) -> Optional[float]:
        """Train bits/dim of the last step (None before any step)."""
        return self.train[-1][1] if self.train else None

    def plot(self, ax=None, label=None):
        """Train and test bits per dimension against step; returns the matplotlib axes.
        label: a name put before the legend entries (to compare several runs on one axes)."""
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6, 3.5))
        from matplotlib.ticker import MaxNLocator
        curves = {"train": self.train}  # one curve per loss with several param_groups
        if self.train_losses:
            curves = {name: [(s, losses[name]) for s, losses in self.train_losses] for name in self.train_losses[0][1]}
        for name, points in curves.items():
            if points:
                s, b = zip(*points)
                what = f"{name} (per batch)"
                ax.plot(s, b, lw=0.8, alpha=0.7, label=f"{label}: {what}" if label else what)
        if self.test:
            s, b = zip(*self.test)
            ax.plot(s, b, "o-", label=f"{label}: test" if label else "test")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers: no 2.5 ticks
        ax.set_ylabel(self.unit)
        ax.grid(alpha=0.3)
        if self.train or self.test:
            ax.legend()
        return ax


def unit_label(model) -> str:
    """What a model's losses and test numbers are: "bits/dim", "bits/token", with " (bound)" when they
    are an upper bound on the negative log-likelihood rather than its exact value."""
    unit = getattr(model, "unit", "bits/dim")
    return unit + (" (bound)" if getattr(model, "nll_is_bound", False) else "")


# ----------------------------------------------------------------------------- data


def as_images_labels(data):
    """(images tensor, labels tensor or None) from an images tensor, an (images, labels) pair or an ImageData.

    NumPy arrays and lists become tensors here, once, so every reader (fit, evaluate, probes) gets tensors."""
    if isinstance(data, torch.Tensor):
        images, labels = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
    elif hasattr(data, "images"):
        images, labels = data.images, getattr(data, "labels", None)
    else:
        raise TypeError(
            "data must be an images LongTensor (N, C, H, W), an (images, labels) tuple, or an object with "
            f".images and .labels such as armini.data.load(...); got {type(data).__name__}"
        )
    return _as_tensor(images, "images"), None if labels is None else _as_tensor(labels, "labels")


def _as_tensor(values, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"{name} must be a tensor, a NumPy array or a list of numbers, got {type(values).__name__}: {e}"
        ) from e


def _check_labels(model, labels, n: int, name: str) -> torch.Tensor:
    """Class labels of a conditional model as a LongTensor (n,) in [0, num_classes), or a clear error."""
    if labels is None:
        raise ValueError(
            f"{type(model).__name__} is class-conditional (num_classes={model.num_classes}): pass {name} "
            "data with labels, as an (images, labels) tuple or an ImageData"
        )
    if labels.shape != (n,):
        raise ValueError(f"{name} labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point and not torch.equal(labels, labels.round()):
        fraction = labels[labels != labels.round()][0].item()
        raise ValueError(f"{name} labels must be whole numbers (class indices), got fractions such as {fraction}")
    labels = labels.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= model.num_classes:
        raise ValueError(f"{name} labels must lie in [0, {model.num_classes}), found [{low}, {high}]")
    return labels


def _check_data(model, data, name: str, limit: Optional[int] = None):
    """(images, labels or None) checked once (shape, integer type, value range, labels) before any step.

    Labels come back as a LongTensor for class-conditional models and as None for the others (which ignore them)."""
    images, labels = as_images_labels(data)
    if limit is not None:
        images, labels = images[:limit], None if labels is None else labels[:limit]
    images = model.check_input(images, f"{name} images")  # raises a clear error on a wrong shape or range
    if len(images) == 0:
        raise ValueError(f"{name} set is empty")
    if model.num_classes is None:
        return images, None
    return images, _check_labels(model, labels, len(images), name)


class BatchOrder:
    """Which images go into each batch: a random permutation per epoch from a seeded generator.

    An epoch ends when fewer than batch_size images are left (they are skipped); its state
    (generator, permutation, position) is saved in checkpoints so a resumed run sees the same batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        self.n, self.batch_size = n, min(batch_size, n)
        self.generator = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, 0

    def next(self) -> torch.Tensor:
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0  # a new epoch
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict):
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], state["pos"]


def _to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """Copy a CPU batch to the device (through pinned memory on CUDA, so the copy is asynchronous)."""
    if dev.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, data, batch_size: int = 256, device=None, limit: Optional[int] = None,
             world: Optional[distributed.World] = None) -> float:
    """Test bits per dimension: -sum over images and dimensions of log2 p, divided by N * D.

    In the model's unit (`model.unit`: bits/dim for pixels, bits/token for a prior over codebook
    indices), from `model.nll_bits`; an upper bound rather than the exact value when
    `model.nll_is_bound` (a two-stage model, a stochastic estimate).
    data: like `fit`'s; limit: use only the first `limit` images; device: default the model's.
    world: several processes share the work (fit under torchrun; every one of them must call it):
    process r scores batches r, r+N, r+2N, ... (the very batches one process scores) and their
    bits are added up over the processes (armini.distributed.total).
    Runs in eval mode without gradients and restores the model's previous mode.
    """
    images, labels = _check_data(model, data, "test", limit)
    dev = torch.device(device) if device is not None else model.model_device
    world = world or distributed.World()
    was_training = model.training
    model.eval()
    total_bits = 0.0
    try:
        for start in range(0, len(images), batch_size)[world.rank :: world.size]:  # this process's batches
            x = images[start : start + batch_size].to(dev).long()  # (B, *shape)
            y = labels[start : start + batch_size].to(dev) if labels is not None else None
            total_bits += model.nll_bits(x, y).cpu().double().sum().item()  # -log2 p(x) per image, summed (CPU: MPS has no float64)
    finally:
        model.train(was_training)
    total_bits = distributed.total(total_bits, world)  # every process's share
    return total_bits / (len(images) * model.dims)


# ----------------------------------------------------------------------------- schedule


def lr_factor(step: int, steps: int, warmup: int, schedule: str = "cosine", final: float = 0.1) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based).

    Linear warmup over the first `warmup` steps, then constant or cosine decay from 1 to
    `final` at `steps` (as in nanoGPT)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))  # 0 -> 1
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- checkpoints


def model_name(model) -> Optional[str]:
    """The model's name in armini.models.MODELS (None if it is not registered)."""
    from armini.models import MODELS

    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    return None


def _plain(value):
    """Config values as plain Python (tuples, lists, dicts, numbers, strings), so checkpoints load with
    weights_only. The config of a model held inside another (a tokenizer's) may be a nested dict or a
    dataclass, stored as a dict: the outer model's constructor receives it as a dict."""
    if is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"model config value {value!r} ({type(value).__name__}) cannot be stored in a checkpoint")


def model_kwargs(model) -> dict:
    """Constructor keyword arguments that rebuild `model`: shape, levels and its `config` fields."""
    kwargs = {"shape": tuple(model.shape), "levels": model.levels}
    config = getattr(model, "config", None)
    if is_dataclass(config):
        kwargs.update({f.name: getattr(config, f.name) for f in fields(config)})
    elif isinstance(config, dict):
        kwargs.update(config)
    return _plain(kwargs)


class CheckpointError(ValueError):
    """A file that cannot be read as an armini checkpoint (damaged, or not ours); `reason` is the message
    without the path."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path} {reason}")
        self.reason = reason


def _unreadable(path: Path) -> str:
    """Why torch.load could not read `path`: a damaged file of ours, or something else entirely."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    looks_ours = size == 0 or head == b"PK\x03\x04"  # torch.save writes a zip archive
    if looks_ours and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:  # a whole zip archive: was it written by torch.save?
            looks_ours = any(name.endswith("data.pkl") for name in z.namelist())
    if looks_ours:
        return f"is damaged or incomplete ({size:,} bytes); it cannot be loaded; delete it or restore a backup"
    return "is not an armini checkpoint (not a file torch.save wrote)"


def _read_checkpoint(path) -> dict:
    """The checkpoint at `path`, or a ValueError saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(path, _unreadable(path)) from e
    if not (isinstance(ckpt, dict) and ckpt.get("armini_checkpoint") == CHECKPOINT_FORMAT):
        raise CheckpointError(path, "is not an armini checkpoint (a torch file, but not one save_checkpoint wrote)")
    return ckpt


def is_checkpoint(path) -> bool:
    """True if `path` is a whole, readable file written by armini's `save_checkpoint`."""
    try:
        _read_checkpoint(path)
    except (OSError, ValueError):
        return False
    return True


def _refuse_foreign(path: Path) -> Optional[dict]:
    """Refuse to write over anything that is not an armini checkpoint (a folder, a damaged file, someone's thesis).

    Returns the checkpoint already at `path` (None if there is none)."""
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {path} is a directory; give a file name such as {path / 'model.pt'}")
    if not path.exists():
        return None
    try:
        return _read_checkpoint(path)
    except CheckpointError as e:
        raise FileExistsError(f"refusing to overwrite {path}, which {e.reason}; to keep it, choose another "
                              "checkpoint path") from e


def _write_checkpoint(path: Path, state: dict):
    """Write through armini.files.atomic_write: a crash midway leaves the old file or the new one, never half."""
    with atomic_write(path, "wb") as f:
        torch.save({"armini_checkpoint": CHECKPOINT_FORMAT, **state}, f)


def save_checkpoint(path, state: dict):
    """Write `state` to `path` atomically (a temporary file in the same folder, then a rename).

    Creates the folder if needed; replaces an armini checkpoint but refuses to touch any other file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_foreign(path)
    _write_checkpoint(path, state)


def _rng_state(dev: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if dev.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict, dev: torch.device):
    torch.set_rng_state(state["cpu"])
    if dev.type == "cuda" and "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if dev.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def _load_model_state(model, ckpt: dict, path):
    saved = ckpt.get("model_class")
    if saved is not None and saved != type(model).__name__:
        raise ValueError(f"checkpoint {path} holds a {saved}, but the model given is a {type(model).__name__}")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(
            f"checkpoint {path} does not fit this model (it was saved with {ckpt.get('model_kwargs')}); "
            f"build the model with the same settings, or use load_checkpoint({str(path)!r}). Details: {e}"
        ) from e


def load_checkpoint(path, device=None, classes=None):
    """Rebuild the model saved at `path`: returns (model in eval mode, info).

    info: dict with step, model_name, model_kwargs, fit_args, metrics and history (a History).
    device: where to put the model (default armini.device()).
    classes: {model_name: class} to rebuild it from, `classes[model_name](**model_kwargs)` (default
    armini.models.MODELS; armini.pretrained passes its model_classes(), the tokenizers too)."""
    from armini.models import MODELS

    known = "armini.models.MODELS" if classes is None else "the classes given"
    classes = MODELS if classes is None else classes
    ckpt = _read_checkpoint(path)
    name, kwargs = ckpt.get("model_name"), ckpt["model_kwargs"]
    if name not in classes:
        raise ValueError(
            f"checkpoint {path} holds model {ckpt.get('model_class')!r} (name {name!r}), which is not in "
            f"{known} ({', '.join(classes)}): build the model yourself and call "
            "model.load_state_dict(torch.load(path)['model'])"
        )
    model = classes[name](**kwargs)
    _load_model_state(model, ckpt, path)
    model.to(armini.device(device)).eval()
    info = {k: ckpt.get(k) for k in ("step", "model_name", "model_class", "model_kwargs", "fit_args", "metrics")}
    info["history"] = History(**ckpt["history"])
    return model, info


# ----------------------------------------------------------------------------- training


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (AVX512-BF16 or AMX): there, bfloat16
    convolutions and matrix products ran 2-2.5x faster than float32 (measured on the course's test
    machine); elsewhere bfloat16 is emulated with float32 instructions, so there is nothing to gain."""
    def reports(check: str) -> bool:  # torch.cpu's private feature checks (absent in some versions: False)
        return bool(getattr(torch.cpu, check, lambda: False)())

    return reports("_is_avx512_bf16_supported") or reports("_is_amx_tile_supported")


def _amp_setup(dev: torch.device, amp: Optional[bool]):
    """(autocast dtype or None, GradScaler) for training on `dev`.

    amp=None: mixed precision on CUDA only (bfloat16 if supported, else float16 with loss scaling).
    amp=True: also on a CPU with native bfloat16 (cpu_has_native_bf16), in bfloat16: convolutions and
    matrix products run in bfloat16, the losses (cross-entropy, the logistic mixture) in float32, the
    weights and the optimizer stay float32. Elsewhere (MPS, an older CPU) it warns and trains in float32."""
    use = dev.type == "cuda" if amp is None else bool(amp)
    if use and dev.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("amp=True on a CPU without native bfloat16 arithmetic (AVX512-BF16 or AMX), where it would "
                      "gain nothing; training in float32")
        use = False
    elif use and dev.type not in ("cuda", "cpu"):
        warnings.warn(f"amp=True is used on CUDA and on CPUs with native bfloat16; training in float32 on {dev.type}")
        use = False
    dtype = None
    if use:
        dtype = torch.bfloat16 if dev.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda" if dev.type == "cuda" else "cpu", enabled=dtype == torch.float16)  # off: a no-op
    return dtype, scaler


def optimizer_step(loss, model, optimizer, scaler, clip: Optional[float]):
    """Backpropagate `loss`, clip the gradient norm to `clip`, update the weights, clear the gradients.

    With float16 the scaler multiplies the loss so small gradients survive, divides them back
    (unscale_) before clipping, and skips the update if they overflowed; otherwise it does nothing."""
    group_steps({"model": loss}, {"model": list(model.parameters())}, {"model": optimizer}, scaler, clip)


def group_steps(losses: dict, groups: dict, optimizers: dict, scaler, clip: Optional[float]):
    """One update of every parameter group, each moved by its own loss (a GAN's generator and discriminator).

    losses, groups, optimizers: dicts with the same names: name -> scalar loss, parameters, optimizer.
      1. backpropagate each loss into its own group's parameters only (backward(inputs=...)): the
         generator's loss leaves no gradient in the discriminator even though it goes through it, and
         the discriminator's loss none in the generator (no need to detach the fakes);
      2. in the order of `groups`: unscale and clip the group's gradient norm, take its optimizer step;
      3. update the loss scale once (float16; the scaler does nothing otherwise), clear the gradients.
    Every gradient is taken before any weight moves, so all losses come from one forward pass on this
    step's weights, and the order of the updates in 2. does not change the result."""
    names = list(groups)
    for i, name in enumerate(names):
        trainable = [p for p in groups[name] if p.requires_grad]
        scaler.scale(losses[name]).backward(inputs=trainable, retain_graph=i < len(names) - 1)  # keep the shared graph
    for name in names:
        if clip is not None:
            scaler.unscale_(optimizers[name])
            torch.nn.utils.clip_grad_norm_(groups[name], clip)
        scaler.step(optimizers[name])
    scaler.update()
    for name in names:
        optimizers[name].zero_grad(set_to_none=True)


def _param_groups(model, param_groups) -> dict:
    """name -> the parameters one optimizer updates, checked: {"model": every parameter} by default.

    param_groups: a dict name -> parameters (an iterable of the model's parameters, or one of its
    modules), or a function model -> such a dict. Each parameter may be in one group only."""
    if param_groups is None:
        return {"model": list(model.parameters())}
    groups = param_groups if isinstance(param_groups, dict) else param_groups(model) if callable(param_groups) else None
    expected = ("param_groups must be a non-empty dict name -> parameters (a list of the model's parameters, or "
                "one of its modules), such as {'generator': model.generator, 'discriminator': model.critic}, or a "
                "function model -> such a dict")
    if not isinstance(groups, dict) or not groups:
        raise TypeError(f"{expected}; got {type(groups if groups is not None else param_groups).__name__}")
    owner = {id(p): None for p in model.parameters()}  # which group each of the model's parameters went to
    checked = {}
    for name, params in groups.items():
        if not isinstance(name, str):
            raise TypeError(f"{expected}; got a group named {name!r} ({type(name).__name__}), not a string")
        params = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
        if not any(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
            raise ValueError(f"param_groups[{name!r}] holds no trainable parameter (none with requires_grad)")
        for p in params:
            if id(p) not in owner:
                raise ValueError(f"param_groups[{name!r}] holds a {type(p).__name__} that is not a parameter of the "
                                 "model: give the model's own parameters (model.some_part.parameters())")
            if owner[id(p)] is not None:
                raise ValueError(f"a parameter is in both param_groups[{owner[id(p)]!r}] and param_groups[{name!r}]: "
                                 "give each parameter to one group only")
            owner[id(p)] = name
        checked[name] = params
    return checked


# ----------------------------------------------------------------------------- settings

# What a resume keeps: the run continues with the same model (its class and model_kwargs), the same
# batches (batch_size, seed, number of training images), the same optimizer and the same schedule.
# `steps` may change (that is how a run is extended); everything else (eval_every, eval_images,
# checkpoint_every, time_limit, stop_after, device, amp, progress) is free to change.
RESUME_KEEPS = ("batch_size", "seed", "train_images", "lr", "weight_decay", "clip", "lr_schedule", "warmup",
                "param_groups")
FIT_ARGS_BEFORE = {"param_groups": None}  # what a checkpoint saved before a setting existed was trained with


def _whole(name: str, value, low: Optional[int] = None, none: Optional[str] = None):
    """`value` if it is a whole number >= low (or None where `none` says what None means), else a clear error."""
    if value is None and none is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        also = f", or None ({none})" if none else ""
        raise ValueError(f"{name} must be a whole number{bound}{also}; got {value!r}")
    return int(value)


def _positive(name: str, value, none: Optional[str] = None, zero_ok: bool = False):
    """`value` if it is a finite number > 0 (>= 0 with zero_ok; None where `none` says what None means)."""
    if value is None and none is not None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        also = f", or None ({none})" if none else ""
        raise ValueError(f"{name} must be a finite number {'>= 0' if zero_ok else '> 0'}{also}; got {value!r}")
    return float(value)


@dataclass
class _Settings:
    """fit's settings, each checked when fit starts: nothing that can only fail at the end of a run."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    clip: Optional[float]
    lr_schedule: str
    warmup: Optional[int]  # None: min(100, steps // 10), or the checkpoint's when resuming
    seed: int
    eval_every: Optional[int]
    eval_images: Optional[int]
    checkpoint_every: Optional[int]
    time_limit: Optional[float]
    stop_after: Optional[int]

    def __post_init__(self):
        self.steps = _whole("steps", self.steps, 0)
        self.batch_size = _whole("batch_size", self.batch_size, 1)
        self.lr = _positive("lr", self.lr)
        self.weight_decay = _positive("weight_decay", self.weight_decay, zero_ok=True)
        self.clip = _positive("clip", self.clip, none="no clipping")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        self.warmup = _whole("warmup", self.warmup, 0, none="min(100, steps // 10)")
        self.seed = _whole("seed", self.seed)
        self.eval_every = _whole("eval_every", self.eval_every, 1, none="only at the end")
        self.eval_images = _whole("eval_images", self.eval_images, 1, none="all test images")
        self.checkpoint_every = _whole("checkpoint_every", self.checkpoint_every, 1, none="only at the end")
        self.time_limit = _positive("time_limit", self.time_limit, none="no limit")
        self.stop_after = _whole("stop_after", self.stop_after, 0, none="run all `steps`")

    @property
    def end(self) -> int:
        """The step at which this call stops (stop_after keeps the schedule of `steps`)."""
        return self.steps if self.stop_after is None else min(self.steps, self.stop_after)


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _config_defaults(model) -> dict:
    """The default of every setting of the model's config dataclass (what an older checkpoint, saved
    before a setting existed, was trained with)."""
    config = getattr(model, "config", None)
    if not is_dataclass(config):
        return {}
    return {f.name: _plain(f.default) for f in fields(config) if f.default is not MISSING}


def _resume_mismatches(ckpt: dict, model, fit_args: dict) -> list:
    """'name saved -> given' for every setting a resume keeps (RESUME_KEEPS, the model) that differs."""
    diffs = []
    saved_class = ckpt.get("model_class")
    if saved_class is not None and saved_class != type(model).__name__:
        diffs.append(f"model {saved_class} -> {type(model).__name__}")
    saved, given = ckpt.get("model_kwargs") or {}, model_kwargs(model)
    defaults = _config_defaults(model)  # a setting added to a model after the checkpoint was saved
    for key in [*given, *(k for k in saved if k not in given)]:
        old, new = saved.get(key, defaults.get(key, "(absent)")), given.get(key, "(absent)")
        if old != new:
            diffs.append(f"{key} {_show(old)} -> {_show(new)}")
    saved_fit = {**FIT_ARGS_BEFORE, **(ckpt.get("fit_args") or {})}
    for key in RESUME_KEEPS:
        if key in saved_fit and saved_fit[key] != fit_args[key]:
            diffs.append(f"{key} {_show(saved_fit[key])} -> {_show(fit_args[key])}")
    return diffs


def _open_checkpoint(path: Path, resume: bool, overwrite: bool) -> Optional[dict]:
    """Check the checkpoint path before any training; return the checkpoint to resume from (or None).

    Also deletes temporaries that killed runs left beside it (armini.files.remove_stale_temporaries)."""
    if resume and overwrite:
        raise ValueError("resume=True continues the checkpoint and overwrite=True replaces it: pass only one")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {path} is a directory; give a file name such as {path / 'model.pt'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if not path.exists():
        return None
    if resume:
        return _read_checkpoint(path)  # a clear ValueError if it is damaged or not ours
    held = _refuse_foreign(path)  # never overwrite what is not an armini checkpoint, even with overwrite=True
    if not overwrite:
        raise FileExistsError(
            f"{path} already holds a checkpoint ({held.get('model_name') or held.get('model_class')}, step "
            f"{held.get('step')}): pass resume=True (--resume) to continue that run, overwrite=True (--overwrite) "
            "to replace it, or choose another checkpoint path"
        )
    return None


# ----------------------------------------------------------------------------- one run


def _scalar(loss, what: str) -> torch.Tensor:
    """`loss` if it is a scalar tensor, else a clear error: `what` names where it came from."""
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise TypeError(f"{what} must be a scalar tensor (the loss to minimise), got {type(loss).__name__} "
                        f"{tuple(getattr(loss, 'shape', ()))}")
    return loss


def bits_per_dim(model, x, y=None):
    """The default objective: model.loss(x, y), the batch's mean negative log2-likelihood per dimension."""
    return model.loss(x, y)


class _Run:
    """Everything one call of `fit` updates (model, optimizers, schedules, batch order, history) and the
    three things it does with them: one training step, an evaluation, a checkpoint.

    Parameters are trained in named groups, each with its own AdamW and schedule (the same settings):
    one group, "model", holding every parameter, unless fit was given param_groups.

    Under torchrun (world.size > 1) every process runs the same _Run on its slice of each batch
    (armini.distributed): `objective` goes through DistributedDataParallel, which averages the
    gradients; `model` itself is never wrapped. Only rank 0 writes the checkpoint."""

    def __init__(self, model, images, labels, test, settings: _Settings, *, dev, amp, path, loss_fn, param_groups,
                 clock, t_start, world: distributed.World = distributed.World()):
        self.model, self.test, self.settings, self.dev, self.path = model, test, settings, dev, path
        self.images = images.to(torch.uint8) if images.max() < 256 else images  # 8x less memory; long on the device
        self.labels = labels
        self.loss_fn = bits_per_dim if loss_fn is None else loss_fn
        self.clock, self.t_start, self.elapsed_before = clock, t_start, 0.0
        self.world = world
        model.to(dev).train()
        self.objective = distributed.wrap(model, self.loss_fn, world)  # (x, y) -> loss_fn(model, x, y)
        self.single = param_groups is None  # one loss and one optimizer (every model of lessons 00-08)
        self.groups = _param_groups(model, param_groups)  # name -> parameters
        self.optimizers = {name: torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
                           for name, params in self.groups.items()}
        self.schedule = partial(lr_factor, steps=settings.steps, warmup=settings.warmup, schedule=settings.lr_schedule)
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, self.schedule)
                           for name, opt in self.optimizers.items()}
        self.amp_dtype, self.scaler = _amp_setup(dev, amp)
        self.order = BatchOrder(len(images), settings.batch_size, settings.seed)
        self.hist = History(time_limit=settings.time_limit, unit=unit_label(model))
        self.last_batch = None  # (x, y) of the latest step: the updated weights are checked on it before a save
        self.saved_step = None  # step of the last checkpoint written or resumed from
        self.lr_used = self.lr()  # the learning rate of the latest step
        self.fit_args = dict(
            steps=settings.steps, batch_size=self.order.batch_size, lr=settings.lr,
            weight_decay=settings.weight_decay, clip=settings.clip, lr_schedule=settings.lr_schedule,
            warmup=settings.warmup, seed=settings.seed, amp=str(self.amp_dtype), train_images=len(images),
            objective=f"{getattr(self.loss_fn, '__module__', '')}.{getattr(self.loss_fn, '__qualname__', '?')}",
            param_groups=None if self.single else list(self.groups),
        )

    def autocast(self):
        """Mixed precision where _amp_setup chose it (CUDA; a CPU with native bfloat16 when amp=True), else nothing."""
        return torch.autocast(self.dev.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()

    def lr(self) -> float:
        """The learning rate of the next step (every group follows the same schedule)."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def states(self, parts: dict):
        """The state_dicts of optimizers or schedulers for a checkpoint: one (as before groups existed), or
        name -> state_dict with several param_groups."""
        states = {name: part.state_dict() for name, part in parts.items()}
        return states["model"] if self.single else states

    def by_group(self, saved) -> dict:
        """What `states` wrote, back as name -> state_dict."""
        return {"model": saved} if self.single else saved

    def resume_from(self, ckpt: dict):
        """Restore everything the checkpoint holds, so the run continues exactly where it stopped."""
        _load_model_state(self.model, ckpt, self.path)
        optimizer_states, scheduler_states = self.by_group(ckpt["optimizer"]), self.by_group(ckpt["scheduler"])
        for name, optimizer in self.optimizers.items():
            scheduler = self.schedulers[name]
            optimizer.load_state_dict(optimizer_states[name])
            scheduler.load_state_dict(scheduler_states[name])
            for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base_lr * self.schedule(scheduler.last_epoch)  # the next step's lr, from this schedule
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.order.load_state_dict(ckpt["data_order"])
        _set_rng_state(ckpt["rng"], self.dev)
        self.hist = History(**{**ckpt["history"], "time_limit": self.settings.time_limit, "stopped_early": False})
        self.elapsed_before, self.saved_step = self.hist.elapsed_s, self.hist.steps
        self.lr_used = self.lr()

    def diverged(self, what: str, step: int, lr: float) -> FloatingPointError:
        """The error for a run whose loss or weights stopped being finite: what, where, the fix, what is kept."""
        if self.saved_step is not None:
            kept = f"the last good checkpoint {self.path} (step {self.saved_step}) is kept"
        elif self.path is not None and self.path.exists():
            kept = f"{self.path} was left as it was"
        else:
            kept = "nothing was saved"
        return FloatingPointError(
            f"training diverged at step {step} (lr {lr:.3g}): {what}. Try a lower learning rate (lr= or --lr) or "
            f"gradient clipping (clip=), and check that the data are integers in [0, {self.model.levels}); {kept}."
        )

    def losses(self, x, y, objective=None) -> dict:
        """loss_fn on a batch as name -> scalar tensor, one per group, or a clear error naming what was expected.
        objective: default self.objective (through DDP under torchrun)."""
        with self.autocast():
            out = (self.objective if objective is None else objective)(x, y)  # default: mean bits/dim of the batch
        if self.single:
            if isinstance(out, dict):
                raise TypeError(f"loss_fn returned a dict (keys {list(out)}); with one optimizer it must return a "
                                "scalar tensor (the loss to minimise). To train groups of parameters with losses "
                                "of their own, pass param_groups={name: parameters} to fit")
            return {"model": _scalar(out, "loss_fn")}
        names = list(self.groups)
        if not isinstance(out, dict) or set(out) != set(names):
            got = f"a dict with keys {list(out)}" if isinstance(out, dict) else type(out).__name__
            expected = ", ".join(f"{name!r}: loss" for name in names)
            raise TypeError(f"with param_groups {names}, loss_fn must return a dict with one scalar loss per group, "
                            f"{{{expected}}}; got {got}")
        return {name: _scalar(out[name], f"loss_fn's {name!r} loss") for name in names}

    def train_step(self) -> dict:
        """One optimizer step of every group on the next batch; returns the batch's losses (before the update)."""
        t0 = self.clock()
        idx = self.order.next()  # the global batch, the same in every process
        mine = distributed.shard(idx, self.world)  # this process's slice (all of idx in one process)
        x = _to_device(self.images[mine], self.dev).long()  # (B, C, H, W)
        y = _to_device(self.labels[mine], self.dev) if self.labels is not None else None
        with distributed.own_random_stream(self.world):  # several processes: each draws its own random numbers
            losses = self.losses(x, y)  # name -> scalar tensor
        values = distributed.mean({name: loss.item() for name, loss in losses.items()}, self.world)  # whole batch's
        self.check_values(values, "the training loss is", self.hist.steps + 1, self.lr())
        self.lr_used = self.lr()
        group_steps(losses, self.groups, self.optimizers, self.scaler, self.settings.clip)
        for scheduler in self.schedulers.values():
            scheduler.step()  # the learning rate of the next step
        self.last_batch = (x, y)
        self.record(values, len(idx), self.clock() - t0)  # the whole batch: images/s of all processes
        return {"loss": values["model"]} if self.single else values

    def check_values(self, values: dict, what: str, step: int, lr: float):
        """Stop a run whose loss (any group's) is not finite: `what` is the start of the message."""
        for name, value in values.items():
            if not math.isfinite(value):
                raise self.diverged(f"{what} {value}" + ("" if self.single else f" ({name!r})"), step, lr)

    def record(self, values: dict, images: int, seconds: float):
        """One step in the history: its losses (their sum in `train`), images and time."""
        hist = self.hist
        hist.steps += 1
        hist.images_seen += images
        hist.train_s += seconds
        # a clock that has not moved (a coarse or frozen one) leaves the rate unmeasured (0.0), not a ZeroDivisionError
        hist.images_per_s = hist.images_seen / hist.train_s if hist.train_s > 0 else 0.0
        hist.train.append((hist.steps, values["model"] if self.single else sum(values.values())))
        if not self.single:
            hist.train_losses.append((hist.steps, values))

    def evaluate(self) -> float:
        """Test bits/dim now (on the first eval_images test images), recorded in the history."""
        distributed.same_buffers(self.model, self.world)  # under torchrun: every process scores rank 0's model
        bpd = evaluate(self.model, self.test, device=self.dev, limit=self.settings.eval_images, world=self.world)
        if not math.isfinite(bpd):
            raise self.diverged(f"test bits/dim is {bpd}", self.hist.steps, self.lr_used)
        self.hist.test.append((self.hist.steps, bpd))
        return bpd

    @torch.no_grad()
    def check_finite(self):
        """Refuse to save diverged weights: every weight finite, and a finite loss on the latest batch.

        Weights can be finite yet useless (values of 1e5 whose logits overflow), hence the loss. It is
        computed in eval mode with the random state put back, so checking changes nothing in the run
        (on the model itself, not through DDP; under torchrun the loss is averaged over the processes'
        slices, so all of them decide alike)."""
        distributed.same_buffers(self.model, self.world)
        bad = [name for name, t in self.model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            raise self.diverged(f"the weights hold NaN or inf ({', '.join(bad[:3])})", self.hist.steps, self.lr_used)
        if self.last_batch is None:
            return
        rng = _rng_state(self.dev)
        self.model.eval()
        try:
            losses = self.losses(*self.last_batch, objective=partial(self.loss_fn, self.model))
            values = distributed.mean({name: loss.item() for name, loss in losses.items()}, self.world)
        finally:
            self.model.train()
            _set_rng_state(rng, self.dev)
        self.check_values(values, "the updated weights give a loss of", self.hist.steps, self.lr_used)

    def save(self):
        """Write a checkpoint with everything needed to resume exactly (never a diverged model).

        Under torchrun every process checks, rank 0 alone writes: the processes hold the same weights,
        optimizer states, batch order and random state, so any of them could."""
        self.check_finite()
        hist, model = self.hist, self.model
        hist.elapsed_s = self.elapsed_before + self.clock() - self.t_start
        metrics = dict(steps=hist.steps, train_bpd=hist.final_train_bpd, test_bpd=hist.final_test_bpd,
                       images_per_s=hist.images_per_s, elapsed_s=hist.elapsed_s, device=str(self.dev),
                       params=sum(p.numel() for p in model.parameters()))
        state = dict(
            model_name=model_name(model), model_class=type(model).__name__, model_kwargs=model_kwargs(model),
            model=model.state_dict(), optimizer=self.states(self.optimizers), scheduler=self.states(self.schedulers),
            scaler=self.scaler.state_dict(), step=hist.steps, data_order=self.order.state_dict(),
            rng=_rng_state(self.dev), history=asdict(hist), metrics=metrics, fit_args=self.fit_args,
        )
        if self.world.main:  # one process writes (rank 0; the only one without torchrun)
            _write_checkpoint(self.path, state)
        distributed.barrier(self.world)  # the others go on once the file is there (a resume reads it next)
        self.saved_step = hist.steps

    def evaluate_and_save_if_due(self) -> Optional[float]:
        """Every eval_every steps: test bits/dim (returned, else None); every checkpoint_every steps: a checkpoint."""
        s, step = self.settings, self.hist.steps
        bpd = self.evaluate() if self.test is not None and s.eval_every and step % s.eval_every == 0 else None
        if self.path is not None and s.checkpoint_every and step % s.checkpoint_every == 0:
            self.save()
        return bpd

    def finish(self) -> History:
        """The final test bits/dim and the final checkpoint."""
        hist = self.hist
        if self.test is not None:
            hist.final_test_bpd = hist.test[-1][1] if hist.test and hist.test[-1][0] == hist.steps else self.evaluate()
        hist.elapsed_s = self.elapsed_before + self.clock() - self.t_start
        if self.path is not None:
            self.save()
        return hist


# ----------------------------------------------------------------------------- fit


def fit(
    model,
    train,
    test=None,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    clip: Optional[float] = 1.0,
    eval_every: Optional[int] = None,
    eval_images: Optional[int] = None,
    amp: Optional[bool] = None,
    device=None,
    checkpoint=None,
    checkpoint_every: Optional[int] = 1000,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    time_limit: Optional[float] = None,
    stop_after: Optional[int] = None,
    lr_schedule: str = "cosine",
    warmup: Optional[int] = None,
    clock: Callable[[], float] = time.perf_counter,
    loss_fn: Optional[Callable] = None,
    param_groups=None,
) -> History:
    """Train `model` in place for `steps` optimizer steps (in total, when resuming); return a History.

    train, test:   images LongTensor (N, C, H, W), (images, labels), or ImageData (armini.data.load)
    batch_size, lr, weight_decay: AdamW settings; clip: max gradient norm (None: no clipping)
    lr_schedule:   "cosine" (decay to lr/10 at `steps`) or "constant", after `warmup` linear warmup
                   steps (default min(100, steps // 10))
    loss_fn:       the objective, loss_fn(model, x, y) -> scalar tensor to minimise (default
                   `bits_per_dim`: model.loss(x, y)); History.train records what it returns. It may
                   draw random numbers (a random t or order) from torch's global RNG (torch.rand(...,
                   device=x.device)), which checkpoints hold, so a resume draws the same ones; a
                   generator of its own, NumPy's or Python's `random` are not saved
    param_groups:  None: one AdamW over every parameter. Or a dict name -> parameters (a list of the
                   model's parameters or one of its modules), or a function model -> such a dict:
                   one AdamW per group, all with the same lr schedule, weight_decay and clipping;
                   loss_fn then returns a dict name -> scalar loss and each loss moves only its own
                   group, all from the same forward pass (`group_steps`). E.g. a VQGAN:
                   param_groups={"generator": model.autoencoder, "discriminator": model.critic}.
                   History.train_losses records each loss, History.train their sum
    eval_every:    test bits/dim every this many steps (None: only at the end), on the first
                   `eval_images` test images (None: all)
    amp:           mixed precision; None = on when training on CUDA (bfloat16, or float16 + GradScaler);
                   True = also on a CPU with native bfloat16 (AVX512-BF16 or AMX): 1.3-1.9x faster per step
                   on the course's test machine
    device:        default armini.device(); the dataset stays on the CPU, batches are copied over
    checkpoint:    file saved (atomically) every `checkpoint_every` steps (None: never) and at the end;
                   an existing checkpoint is refused unless `resume` or `overwrite` says what to do with it
    resume:        continue from `checkpoint` if it exists: the same batches, RNG and optimizer state,
                   so training N steps, then resuming to 2N gives the very same weights as 2N at once
                   (the cosine schedule spans `steps`: split a run with `stop_after`, or use
                   lr_schedule="constant" with a fixed `warmup`)
    overwrite:     replace an existing checkpoint (never a file that is not an armini checkpoint)
    seed:          seeds the order of the batches
    time_limit:    stop after this many seconds (History.stopped_early tells)
    clock:         what a second is for time_limit and the timings: wall-clock time.perf_counter,
                   or time.process_time for this process's CPU seconds (fair on a shared machine)
    stop_after:    stop once this many steps are done, keeping the schedule of `steps`: train in pieces,
                   fit(steps=2000, stop_after=500, checkpoint=p), later fit(steps=2000, checkpoint=p, resume=True)

    What a resume keeps: the model (class, shape, levels, config), batch_size, seed, the number of
    training images, lr, weight_decay, clip, lr_schedule, warmup (None takes the saved one) and the
    names of the param_groups must be
    those of the checkpoint, or fit refuses and names each difference; `steps` may change (the rest of
    the schedule then follows the new `steps`), and so may everything else (evaluation, checkpoint
    interval, time limits, device).

    Every setting is checked before the first step, and a run that diverges (a non-finite loss,
    weights or test bits/dim) raises FloatingPointError without saving: the last good checkpoint stays.

    Under torchrun (RANK, WORLD_SIZE set; see armini.distributed) every process calls fit alike: each
    trains on its slice of every global batch of `batch_size` (a multiple of the number of processes)
    on its own GPU (device "cuda" becomes cuda:LOCAL_RANK; "cpu" uses gloo), the test set is shared
    out, only rank 0 shows progress and writes the checkpoint, and each returns the same History and
    the same (plain, unwrapped) model. param_groups are refused there.
    """
    t_start = clock()
    settings = _Settings(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, clip=clip,
                         lr_schedule=lr_schedule, warmup=warmup, seed=seed, eval_every=eval_every,
                         eval_images=eval_images, checkpoint_every=checkpoint_every, time_limit=time_limit,
                         stop_after=stop_after)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function loss_fn(model, x, y) -> scalar tensor (a dict name -> scalar "
                        f"tensor with param_groups), got {loss_fn!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint to resume from: pass checkpoint=path")
    dev = armini.device(device)
    images, labels = _check_data(model, train, "train")
    test = _check_data(model, test, "test") if test is not None else None
    _check_processes(distributed.from_env(), min(settings.batch_size, len(images)), param_groups)
    path = Path(checkpoint) if checkpoint is not None else None
    ckpt = _open_checkpoint(path, resume, overwrite) if path is not None else None  # fail now, not after an hour
    if settings.warmup is None:
        saved = (ckpt or {}).get("fit_args", {}).get("warmup")
        settings.warmup = saved if saved is not None else min(100, settings.steps // 10)

    world = distributed.start(dev)  # under torchrun: join the other processes, this one's GPU; else nothing
    distributed.same_random_state(world)  # they draw their random numbers in step (own_random_stream)
    progress = progress and world.main  # one progress bar, rank 0's
    run = _Run(model, images, labels, test, settings, dev=world.device, amp=amp, path=path, loss_fn=loss_fn,
               param_groups=param_groups, clock=clock, t_start=t_start, world=world)
    if ckpt is not None:
        differ = _resume_mismatches(ckpt, model, run.fit_args)
        if differ:
            raise ValueError(
                f"cannot resume from {path}: these settings differ from the saved run (saved -> given): "
                f"{', '.join(differ)}. A resume continues the same run: give the saved settings, or train into "
                "another checkpoint path (or replace this one with overwrite=True / --overwrite, without resume)"
            )
        run.resume_from(ckpt)
    if progress and resume:
        print(f"resuming from {path} at step {run.hist.steps}" if ckpt else
              f"no checkpoint at {path}: starting from scratch")
    return _train(run, progress)


def _check_processes(world: distributed.World, batch_size: int, param_groups):
    """Under torchrun: what cannot be split among the processes is refused before any of them waits for another."""
    if world.size == 1:
        return
    distributed.check_batch(batch_size, world)
    if param_groups is not None:
        raise ValueError("param_groups (one optimizer per group) "
                         f"cannot train under torchrun ({world.size} processes): DistributedDataParallel averages "
                         "the gradients of one backward pass per step, and each group takes a backward pass of its "
                         "own (group_steps). Train this model in one process (without torchrun)")


def _train(run: _Run, progress: bool) -> History:
    """The loop: a step, a look at the clock, an evaluation and a checkpoint when due; then the last ones."""
    from tqdm.auto import tqdm

    s, hist = run.settings, run.hist
    bar = tqdm(total=s.steps, initial=min(hist.steps, s.steps), disable=not progress, desc="training", unit="step")
    try:
        while hist.steps < s.end:
            losses = run.train_step()  # {"loss": value}, or one value per param group
            shown = {name: f"{value:.3f}" for name, value in losses.items()}
            bar.update(1)
            bar.set_postfix(shown, refresh=False)
            out_of_time = s.time_limit is not None and distributed.any_process(  # all stop if one clock says so
                run.clock() - run.t_start > s.time_limit, run.world)
            if hist.steps == s.end or out_of_time:
                hist.stopped_early = hist.steps < s.end
                break
            test_bpd = run.evaluate_and_save_if_due()
            if test_bpd is not None:
                bar.set_postfix({**shown, "test_bpd": f"{test_bpd:.3f}"})
    finally:
        bar.close()
    return run.finish()
