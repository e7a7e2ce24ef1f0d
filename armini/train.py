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
    2. loss = model.loss(x) (bits per dimension), under mixed precision on CUDA;
    3. backpropagate, clip the gradient norm, take an AdamW step, update the learning rate
       (short linear warmup, then cosine decay to a tenth);
    4. every `eval_every` steps measure test bits/dim; every `checkpoint_every` steps and
       at the end save everything needed to resume exactly.

Models only have to implement the contract of `armini.models.base.ARModel`; class-
conditional models (`model.num_classes` set) also receive the labels as `y=`.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

import armini

__all__ = ["fit", "evaluate", "optimizer_step", "History", "load_checkpoint", "save_checkpoint", "is_checkpoint", "lr_factor"]

CHECKPOINT_FORMAT = 1  # the value of the "armini_checkpoint" key: how we recognise our own files


# ----------------------------------------------------------------------------- history


@dataclass
class History:
    """What happened during training.

    train:   [(step, train bits/dim of that step's batch), ...]
    test:    [(step, test bits/dim), ...] every `eval_every` steps and at the end
    steps:   optimizer steps completed (counting earlier runs when resumed)
    elapsed_s: wall-clock seconds spent in `fit`, evaluation and saving included (summed over resumes)
    train_s: seconds spent in training steps only; images_per_s = images_seen / train_s
    final_test_bpd: test bits/dim at the end (None without a test set)
    stopped_early: True when `time_limit` ended training before `steps`
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
        if self.train:
            s, b = zip(*self.train)
            ax.plot(s, b, lw=0.8, alpha=0.7, label=f"{label}: train (per batch)" if label else "train (per batch)")
        if self.test:
            s, b = zip(*self.test)
            ax.plot(s, b, "o-", label=f"{label}: test" if label else "test")
        ax.set_xlabel("step")
        ax.set_ylabel("bits per dimension")
        ax.grid(alpha=0.3)
        if self.train or self.test:
            ax.legend()
        return ax


# ----------------------------------------------------------------------------- data


def as_images_labels(data):
    """(images, labels or None) from an images tensor, an (images, labels) tuple or an ImageData."""
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    if hasattr(data, "images"):
        return data.images, getattr(data, "labels", None)
    raise TypeError(
        "data must be an images LongTensor (N, C, H, W), an (images, labels) tuple, or an object with "
        f".images and .labels such as armini.data.load(...); got {type(data).__name__}"
    )


def _check_data(model, data, name):
    """Validate a whole dataset once (shape, integer type, value range, labels) before any step."""
    images, labels = as_images_labels(data)
    images = model.check_input(images, f"{name} images")  # raises a clear error on a wrong shape or range
    if len(images) == 0:
        raise ValueError(f"{name} set is empty")
    if model.num_classes is None:
        return images, None
    if labels is None:
        raise ValueError(
            f"{type(model).__name__} is class-conditional (num_classes={model.num_classes}): pass {name} "
            "data with labels, as an (images, labels) tuple or an ImageData"
        )
    labels = torch.as_tensor(labels).long()
    if labels.shape != (len(images),):
        raise ValueError(f"{name} labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= model.num_classes:
        raise ValueError(f"{name} labels must lie in [0, {model.num_classes}), found [{labels.min()}, {labels.max()}]")
    return images, labels


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
def evaluate(model, data, batch_size: int = 256, device=None, limit: Optional[int] = None) -> float:
    """Test bits per dimension: -sum over images and dimensions of log2 p, divided by N * D.

    data: like `fit`'s; limit: use only the first `limit` images; device: default the model's.
    Runs in eval mode without gradients and restores the model's previous mode.
    """
    images, labels = as_images_labels(data)
    if limit is not None:
        images = images[:limit]
        labels = labels[:limit] if labels is not None else None
    if len(images) == 0:
        raise ValueError("evaluate() got no images")
    if model.num_classes is not None and labels is None:
        raise ValueError(f"{type(model).__name__} is class-conditional: evaluate() needs labels")
    dev = torch.device(device) if device is not None else model.model_device
    was_training = model.training
    model.eval()
    total_nats = 0.0
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(dev).long()
            y = labels[start : start + batch_size].to(dev) if model.num_classes is not None else None
            total_nats -= model.log_prob(x, y).double().sum().item()
    finally:
        model.train(was_training)
    return total_nats / (len(images) * model.dims * math.log(2.0))


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
    """Config values as plain Python (tuples, lists, numbers, strings), so checkpoints load with weights_only."""
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


def is_checkpoint(path) -> bool:
    """True if `path` is a file written by armini's `save_checkpoint`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(ckpt, dict) and ckpt.get("armini_checkpoint") == CHECKPOINT_FORMAT


def _check_can_write(path: Path):
    """Refuse to overwrite anything that is not an armini checkpoint."""
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {path} is a directory; give a file name such as {path / 'model.pt'}")
    if path.exists() and not is_checkpoint(path):
        raise FileExistsError(
            f"{path} exists and is not an armini checkpoint: refusing to overwrite it. "
            "Choose another checkpoint path, or move that file away yourself."
        )


def save_checkpoint(path, state: dict):
    """Write `state` to `path` atomically: to a temporary file in the same folder, then os.replace.

    A crash midway leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_can_write(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"armini_checkpoint": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not an armini checkpoint (torch.load failed: {e})") from e
    if not (isinstance(ckpt, dict) and ckpt.get("armini_checkpoint") == CHECKPOINT_FORMAT):
        raise ValueError(f"{path} is not an armini checkpoint")
    return ckpt


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


def load_checkpoint(path, device=None):
    """Rebuild the model saved at `path`: returns (model in eval mode, info).

    info: dict with step, model_name, model_kwargs, fit_args, metrics and history (a History).
    device: where to put the model (default armini.device())."""
    from armini.models import MODELS

    ckpt = _read_checkpoint(path)
    name, kwargs = ckpt.get("model_name"), ckpt["model_kwargs"]
    if name not in MODELS:
        raise ValueError(
            f"checkpoint {path} holds model {ckpt.get('model_class')!r} (name {name!r}), which is not in "
            f"armini.models.MODELS ({', '.join(MODELS)}): build the model yourself and call "
            "model.load_state_dict(torch.load(path)['model'])"
        )
    model = MODELS[name](**kwargs)
    _load_model_state(model, ckpt, path)
    model.to(armini.device(device) if device is None or isinstance(device, str) else device).eval()
    info = {k: ckpt.get(k) for k in ("step", "model_name", "model_class", "model_kwargs", "fit_args", "metrics")}
    info["history"] = History(**ckpt["history"])
    return model, info


# ----------------------------------------------------------------------------- training


def _amp_setup(dev: torch.device, amp: Optional[bool]):
    """(autocast dtype or None, GradScaler): bfloat16 on CUDA if supported, else float16 with loss scaling."""
    use = dev.type == "cuda" if amp is None else bool(amp)
    if use and dev.type != "cuda":
        warnings.warn(f"amp=True is only used on CUDA; training in float32 on {dev.type}")
        use = False
    dtype = None
    if use:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda" if use else "cpu", enabled=dtype == torch.float16)  # off: a no-op
    return dtype, scaler


def optimizer_step(loss, model, optimizer, scaler, clip: Optional[float]):
    """Backpropagate `loss`, clip the gradient norm to `clip`, update the weights, clear the gradients.

    With float16 the scaler multiplies the loss so small gradients survive, divides them back
    (unscale_) before clipping, and skips the update if they overflowed; otherwise it does nothing."""
    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


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
    checkpoint_every: int = 1000,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    time_limit: Optional[float] = None,
    stop_after: Optional[int] = None,
    lr_schedule: str = "cosine",
    warmup: Optional[int] = None,
    clock: Callable[[], float] = time.perf_counter,
) -> History:
    """Train `model` in place for `steps` optimizer steps (in total, when resuming); return a History.

    train, test:   images LongTensor (N, C, H, W), (images, labels), or ImageData (armini.data.load)
    batch_size, lr, weight_decay: AdamW settings; clip: max gradient norm (None: no clipping)
    lr_schedule:   "cosine" (decay to lr/10 at `steps`) or "constant", after `warmup` linear warmup
                   steps (default min(100, steps // 10))
    eval_every:    test bits/dim every this many steps (None: only at the end), on the first
                   `eval_images` test images (None: all)
    amp:           mixed precision; None = on when training on CUDA (bfloat16, or float16 + GradScaler)
    device:        default armini.device(); the dataset stays on the CPU, batches are copied over
    checkpoint:    file to save to every `checkpoint_every` steps and at the end (atomically)
    resume:        continue from `checkpoint` if it exists: the same batches, RNG and optimizer state,
                   so training N steps, then resuming to 2N gives the very same weights as 2N at once
                   (the cosine schedule spans `steps`: split a run with `stop_after`, or use
                   lr_schedule="constant" with a fixed `warmup`)
    seed:          seeds the order of the batches
    time_limit:    stop after this many seconds (History.stopped_early tells)
    clock:         what a second is for time_limit and the timings: wall-clock time.perf_counter,
                   or time.process_time for this process's CPU seconds (fair on a shared machine)
    stop_after:    stop once this many steps are done, keeping the schedule of `steps`: train in pieces,
                   fit(steps=2000, stop_after=500, checkpoint=p), later fit(steps=2000, checkpoint=p, resume=True)
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    t_start = clock()
    dev = armini.device(device) if device is None or isinstance(device, str) else torch.device(device)
    warmup = min(100, steps // 10) if warmup is None else int(warmup)
    images, labels = _check_data(model, train, "train")
    if images.max() < 256:
        images = images.to(torch.uint8)  # 8x less memory and host->device traffic; back to long on the device
    if test is not None:
        _check_data(model, test, "test")
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        _check_can_write(path)  # fail now, not after an hour of training

    model.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = partial(lr_factor, steps=steps, warmup=warmup, schedule=lr_schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype, scaler = _amp_setup(dev, amp)
    order = BatchOrder(len(images), batch_size, seed)
    hist = History(time_limit=time_limit)
    fit_args = dict(steps=steps, batch_size=order.batch_size, lr=lr, weight_decay=weight_decay, clip=clip,
                    lr_schedule=lr_schedule, warmup=warmup, seed=seed, amp=str(amp_dtype))

    if resume and path is not None and path.exists():
        ckpt = _read_checkpoint(path)
        _load_model_state(model, ckpt, path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        order.load_state_dict(ckpt["data_order"])
        _set_rng_state(ckpt["rng"], dev)
        hist = History(**{**ckpt["history"], "time_limit": time_limit, "stopped_early": False})
        if progress:
            print(f"resuming from {path} at step {hist.steps}")
    elif resume and progress:
        print(f"no checkpoint at {path}: starting from scratch")

    def do_eval():
        bpd = evaluate(model, test, device=dev, limit=eval_images)
        hist.test.append((hist.steps, bpd))
        return bpd

    def save():
        metrics = dict(steps=hist.steps, train_bpd=hist.final_train_bpd, test_bpd=hist.final_test_bpd,
                       images_per_s=hist.images_per_s, elapsed_s=hist.elapsed_s, device=str(dev),
                       params=sum(p.numel() for p in model.parameters()))
        save_checkpoint(path, dict(
            model_name=model_name(model), model_class=type(model).__name__, model_kwargs=model_kwargs(model),
            model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(), step=hist.steps, data_order=order.state_dict(), rng=_rng_state(dev),
            history=asdict(hist), metrics=metrics, fit_args=fit_args,
        ))

    from tqdm.auto import tqdm

    end = steps if stop_after is None else min(steps, stop_after)
    bar = tqdm(total=steps, initial=min(hist.steps, steps), disable=not progress, desc="training", unit="step")
    elapsed_before = hist.elapsed_s
    try:
        while hist.steps < end:
            t0 = clock()
            idx = order.next()
            x = _to_device(images[idx], dev).long()  # (B, C, H, W)
            y = _to_device(labels[idx], dev) if labels is not None else None
            with torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                loss = model.loss(x, y)  # mean bits per dimension of the batch
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training loss is {value} at step {hist.steps + 1} (lr {optimizer.param_groups[0]['lr']:.3g}): "
                    "try a lower learning rate (lr=) or gradient clipping (clip=), and check that the data are "
                    f"integers in [0, {model.levels}). Nothing was saved for this step."
                )
            optimizer_step(loss, model, optimizer, scaler, clip)
            scheduler.step()  # the learning rate of the next step

            hist.steps += 1
            hist.images_seen += len(idx)
            hist.train_s += clock() - t0
            hist.images_per_s = hist.images_seen / hist.train_s
            hist.train.append((hist.steps, value))
            bar.update(1)
            bar.set_postfix(train_bpd=f"{value:.3f}", refresh=False)

            out_of_time = time_limit is not None and clock() - t_start > time_limit
            last = hist.steps == end or out_of_time
            if test is not None and eval_every and hist.steps % eval_every == 0 and not last:
                bar.set_postfix(train_bpd=f"{value:.3f}", test_bpd=f"{do_eval():.3f}")
            if path is not None and checkpoint_every and hist.steps % checkpoint_every == 0 and not last:
                hist.elapsed_s = elapsed_before + clock() - t_start
                save()
            if out_of_time:
                hist.stopped_early = hist.steps < end
                break
    finally:
        bar.close()

    if test is not None:
        hist.final_test_bpd = hist.test[-1][1] if hist.test and hist.test[-1][0] == hist.steps else do_eval()
    hist.elapsed_s = elapsed_before + clock() - t_start
    if path is not None:
        save()
    return hist
