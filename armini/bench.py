"""The benchmark: every model, the same time budget, the same data, one table.

    python -m armini.bench                                  # every model, 60 s of training each
    python -m armini.bench --models pixelcnn,nade --budget-s 300 --json bench.json --device cuda
    python -m armini.bench --models pixelcnn,pixelsnail --budget-s 600 --cpu-time --threads 1   # equal CPU time
    python -m armini.bench speed --cpu-time --json speed.json    # speed only: training s/step, forward-equivalents
    python -m armini.bench tokenizers --budget 60 --cpu-time     # every tokenizer: PSNR, rFID, usage, bits/dim bound
    python -m armini.bench course --threads 1 --json course.json # every generator of Parts I-IV, pretrained (lesson 19)
    python -m armini.bench video ...                             # the video models (armini.video_bench, lesson 18)

For each model: build it for Fashion-MNIST 28x28 (or the --size 14 or 7 view) with 256 levels (a model that cannot take
that, like FVSBN with its D*D*K weights, falls back to its own default levels and says so
in `note`), train it for a fixed budget of wall-clock seconds (or, with --cpu-time, CPU seconds of
this process, which stay fair when other work shares the machine) with armini.train.fit (a cosine learning-rate
schedule over the number of steps a short probe run says fits the budget), then measure

    train_images_per_s   training throughput (images per second, training steps only)
    test_bpd             bits per dimension on the first `test_images` test images
    unit                 what test_bpd measures (the model's unit: bits/dim, bits/token; "(bound)" for an upper bound)
    train_s_per_step     seconds per training step (the budget's clock)
    sample_s_per_image   seconds to sample `sample_n` images, divided by sample_n
    sampling_steps       steps of the sampling loop per image (D, or fewer for a model with a step budget:
                         --sampling-steps S sets ARDM's)

Models with a fast sampler (an `init_cache` override that returns a cache) are timed both
ways in the same run: sample_s_per_image_naive (cached=False), sample_s_per_image_cached and
cache_speedup = naive / cached, and forward_equivalents = cached seconds per image / the seconds
per image of one full forward pass at the same batch (forward_s_per_image): what an image costs in
forward passes (1: caching for free; C*H*W: recomputing everything at every step). A model may add
fields of its own by defining `bench_fields()` -> dict (e.g. an order-agnostic model's `orders`
and `steps`). ARMINI_QUICK=1 shrinks the budget and the test subset.

Sample quality (armini.metrics, the course's Fashion-MNIST classifier as the judge): each model draws
--quality-samples N images (default 1000; 64 in quick mode; 0 skips), in batches of 100, and they are
compared with the first N test images at the model's levels and size (14x14 and 7x7 images are
enlarged to 28x28 by nearest-neighbour upsampling, real and sampled alike):

    fid, kid, kid_std    FID-FMNIST and KID (see armini.metrics), lower is better
    precision, recall    k-NN manifold precision and recall (k = 3), higher is better
    fid_floor            the first N training images against the same N test images: the FID of a perfect
                         model at this N (FID is biased upwards for small N; compare a model with its floor)
    quality_samples, quality_sample_s   N and the seconds it took to draw them (batched, so much less per
                         image than sample_s_per_image, which times sample_n images)

These FID-FMNIST values are comparable only with each other (same classifier, same N), never with
published Inception FIDs.

A model that trains in stages (a tokenizer, then a prior over its tokens) defines
`fit_stages(train, test, *, steps, time_limit, batch_size, lr, device, seed, progress, clock) -> History`;
bench_model then calls it wherever it would call armini.train.fit: once on a copy as the probe (test None,
steps=10**9 and a short time_limit: the steps it gets through size the real run), then for the real run.

Everything is seeded; timings depend on the machine (the JSON records the device).

`python -m armini.bench speed` trains nothing to a budget and measures speed only, for each model
(default: those with a cached sampler) in one run: training seconds per step (median of
--train-steps, wall-clock and CPU) on each of --threads (default 1,2), at the model's default
configuration and at the peer-sized ones in PEER_CONFIGS; and, on one thread, one forward pass's
and the cached sampler's seconds per image and their ratio at each --fe-batch (default 1 and 16
images at once), and the naive sampler at --naive-n images with `cached_matches_naive`; each sampler's time
is the fastest of --sample-repeats runs (default 3: the least disturbed by other work, as for the forward
pass; one run of a sub-second cached sampler moved by 30% between runs on a shared machine). Records
have kind="speed"; the per-thread and per-batch figures are dicts keyed by the count ("1", "16").
--amp sets the training precision as armini.train.fit's amp= does: auto (the default: mixed precision on
CUDA only), on (also bfloat16 on a CPU with native bfloat16 arithmetic), off, or both (each configuration
timed in float32 and then with amp on, in the same run; the second record times training only); each
record's `precision` says what ran.

Every setting is checked before the first model trains: the flags' values (--sample-n must be at
least 1: every record has sampling timings), each model built and run once with the --set options,
and the --json file (its folder must exist; an existing file is replaced only with --overwrite). The
JSON is rewritten atomically after each model, so a run that stops midway keeps the models done.
Errors are one line on stderr and exit status 1 (see armini.cli); --debug adds the traceback.

`python -m armini.bench tokenizers [--kinds vq,ema,fsq,rvq,vqgan,msvq] [--budget S] [--cpu-time]` trains each
tokenizer of lessons 11, 13 and 15 (msvq: VAR's multi-scale tokens) for the same budget (a probe sizes the cosine schedule, as above) at about
the same rate, 490 bits per image on a 7 x 7 grid (TOKENIZER_SETTINGS), and measures with
armini.tokenizers.reconstruction_quality on the first --test-images test images: params, codebook_size,
token_shape, rate_bits (tokens x log2 V), steps, train_images_per_s, psnr, ssim, rfid (and rfid_floor,
as many training images against the same test images), precision, recall, used, perplexity, recon_bpd
(-log2 p(x|z) per dimension) and bound_bpd (recon_bpd + rate_bits / dims: a uniform prior over tokens);
msvq records add scales, used_per_scale and perplexity_per_scale (codebook_usage of each scale's tokens)
and latent_mse_per_scale (the cumulative f_hat's error after each scale).
Records have kind="tokenizer" and tokenizer=<kind>.

`python -m armini.bench course [--models ...] [--train-missing]` lines up every generator of Parts I-IV
(COURSE_MODELS: pixels, order-agnostic, tokens, scales) in one run, each loaded from the course's pretrained
checkpoint (armini.pretrained; nothing is trained): test bits/dim at the model's own size (is_bound: an upper
bound), FID-FMNIST, KID, precision and recall of --quality-samples samples (quality_fields; 14x14 models are
judged at 28x28 after the same nearest-neighbour enlargement of their samples and of the real images, each row
with its own floor at its own size and sample count; SLOW_SAMPLERS, whose sampler has no cache, draw at most
--slow-samples, the table's n column), sampling steps, seconds per image in batches of up to 100 and one at a
time (CPU seconds unless --wall-clock), parameters and training CPU minutes from the checkpoint's record. A generator without a checkpoint
is skipped with a note, or with --train-missing trained here the bench way (source "trained here"). Quick mode
uses few images and leaves out QUICK_SKIP. Records have kind="course"; pareto_front gives the models no other
beats on both FID and seconds per image. `python -m armini.bench video ...` runs armini.video_bench.main.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import statistics
import sys
import time
from typing import Optional

import torch

import armini
from armini import cli
from armini.files import atomic_write
from armini.models import MODELS, ARModel

LEVELS = 256  # Fashion-MNIST as it comes (28x28, or the 14x14 / 7x7 views with size=14 / 7)
# Each model's training recipe where it differs from batch 32 at lr 1e-3: the learning rates and
# batch sizes its lesson trains with (PixelCNN++'s from the equal-CPU-time runs in data/results/).
LR = {"pixelcnn": 2e-3, "gated-pixelcnn": 2e-3, "pixelsnail": 2e-3, "pixelcnn++": 4e-3, "row-lstm": 2e-3,
      "diagonal-bilstm": 2e-3, "pixel-transformer": 2e-3, "nade": 3e-3, "fvsbn": 3e-3}
BATCH = {"pixelcnn++": 16}
MIN_QUALITY_SAMPLES = 10  # --quality-samples: 0 (skip) or at least this many


def build(name: str, size: int = 28, **kwargs):
    """(model, note): the model for size x size images with 256 levels, else with its own default levels."""
    cls = MODELS[name]
    shape = (1, size, size)
    if kwargs:  # the user's settings: no fallback, a clear error if the model cannot take them
        return cli.build_model(name, kwargs, shape=shape, levels=LEVELS), ""
    try:
        return cls(shape=shape, levels=LEVELS), ""
    except ValueError as e:
        model = cls(shape=shape)
        return model, f"levels={model.levels} (cannot take {LEVELS}: {str(e).split(';')[0]})"


def has_fast_sampler(model) -> bool:
    """True if the model overrides init_cache and it returns a cache (not None)."""
    if type(model).init_cache is ARModel.init_cache:
        return False
    n = 1
    x = torch.zeros((n,) + model.shape, dtype=torch.long, device=model.model_device)
    with torch.no_grad():
        return model.init_cache(x, armini.class_labels(model, n)) is not None



def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elif dev.type == "mps":
        torch.mps.synchronize()


def time_sampling(model, n: int, seed: int, cached: bool, clock=time.perf_counter):
    """(seconds per image, images) for drawing n images."""
    dev = model.model_device
    gen = torch.Generator().manual_seed(seed)
    gc.collect()  # a full collection now, not inside a timed run (about 0.09 s once)
    _sync(dev)
    t0 = clock()
    x = model.sample(n, y=armini.class_labels(model, n), generator=gen, cached=cached)
    _sync(dev)
    return (clock() - t0) / n, x


def time_forward(model, n: int, seed: int, repeats: int = 3, clock=time.perf_counter) -> float:
    """Seconds per image of one full forward pass (log_prob_pixels, the likelihood training computes)
    over n random images, without gradients: the unit of `forward_equivalents`. The fastest of
    `repeats` passes after one warm-up pass (the least disturbed by other work on the machine)."""
    dev = model.model_device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(model.levels, (n,) + model.shape, generator=gen).to(dev)  # (n, *shape)
    y = armini.class_labels(model, n)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(repeats + 1):
                gc.collect()  # a full collection now, not inside a timed run (about 0.09 s once)
                _sync(dev)
                t0 = clock()
                model.log_prob_pixels(x, y)
                _sync(dev)
                times.append(clock() - t0)
    finally:
        model.train(was_training)
    return min(times[1:]) / n


def model_fields(model) -> dict:
    """What a model adds to its bench record (e.g. an order-agnostic model's `orders` and `steps`):
    the dict its `bench_fields()` returns, if it defines one."""
    fields = getattr(model, "bench_fields", None)
    return dict(fields()) if callable(fields) else {}


def trainer(model):
    """How bench trains `model`: its own fit_stages (a model trained in stages, e.g. tokenizer then prior),
    else armini.train.fit. Both take (model's data) train, test and the same keyword arguments."""
    from armini import train

    stages = getattr(model, "fit_stages", None)
    if callable(stages):
        return lambda m, train_set, test_set, **kw: m.fit_stages(train_set, test_set, **kw)
    return train.fit


def sample_in_batches(model, n: int, seed: int, batch: int = 100) -> torch.Tensor:
    """n images (n, *shape) on the CPU, drawn `batch` at a time from one seeded generator (class-conditional
    models: classes 0, 1, 2, ... in turn)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        out.append(model.sample(m, y=armini.class_labels(model, m), generator=gen).cpu())
    return torch.cat(out)


def quality_fields(model, n: int, seed: int, size: int, datasets: dict, clock=time.perf_counter, keep=None) -> dict:
    """Sample quality of `model` (armini.metrics.sample_quality): n samples against the first n test images at
    the model's levels and size, with fid_floor (the first n training images against the same test images).
    keep: a dict that receives the samples (n, *shape) under "samples"."""
    from armini import data, metrics

    key = ("quality", model.levels, size, n)  # real images and the floor, shared between models
    if key not in datasets:
        real = data.load("fashion-mnist", "test", levels=model.levels, size=size, limit=n).images
        train_images = data.load("fashion-mnist", "train", levels=model.levels, size=size, limit=n).images
        datasets[key] = (real, metrics.fid(train_images, real, model.levels))
    real, floor = datasets[key]
    _sync(model.model_device)
    t0 = clock()
    fake = sample_in_batches(model, len(real), seed)  # (n, *shape)
    _sync(model.model_device)
    elapsed = clock() - t0
    quality = metrics.sample_quality(real, fake, model.levels)
    if keep is not None:
        keep["samples"] = fake
    return dict(quality, fid_floor=floor, quality_samples=len(real), quality_sample_s=elapsed)


def train_on_budget(model, train_set, test_set, *, budget_s: float, batch_size: int, lr: float, device, seed: int,
                    clock):
    """(History, planned steps): train `model` in place for `budget_s` seconds of `clock`, the bench way.

    The learning rate follows a cosine schedule over the number of steps that fits the budget,
    estimated from a short probe run on a copy; time_limit stops the real run at the budget anyway.
    A model with `fit_stages` is trained by it (see trainer)."""
    from armini import train

    fit = trainer(model)  # armini.train.fit, or the model's own fit_stages
    probe_settings = {} if fit is not train.fit else {"lr_schedule": "constant"}
    probe = fit(copy.deepcopy(model), train_set, None, steps=10**9, time_limit=min(10.0, budget_s / 10),
                batch_size=batch_size, lr=lr, device=device, seed=seed, progress=False, clock=clock, **probe_settings)
    steps = max(1, int(budget_s * probe.steps / max(probe.train_s, 1e-9)))
    hist = fit(model, train_set, test_set, steps=steps, time_limit=budget_s, batch_size=batch_size, lr=lr,
               device=device, seed=seed, progress=False, clock=clock)
    return hist, steps


def bench_model(name: str, *, budget_s: float, device, batch_size=None, lr=None, test_images=1000, sample_n=2,
                seed=0, datasets=None, models=None, cpu_time=False, size=28, sampling_steps=None,
                quality_samples=None, **model_kwargs) -> dict:
    """Train one model for `budget_s` seconds and measure it; returns one JSON record.

    cpu_time: count the budget in CPU seconds of this process (time.process_time) instead of wall-clock
    seconds; size: 28 (Fashion-MNIST as it comes), 14 or 7 (the area-averaged views); model_kwargs go to the
    model's constructor (e.g. channels=64); models: a dict that receives the trained model under `name`;
    sampling_steps: a sampling budget for models that can fill several dimensions per step (see
    set_sampling_budget); the record's `sampling_steps` says how many steps sampling took;
    quality_samples: images drawn for fid, kid, precision, recall (default 1000, 64 in quick mode; 0: none).
    A model with `fit_stages` is trained by it instead of armini.train.fit (see trainer)."""
    from armini import data

    quality_samples = armini.budget(1000, 64) if quality_samples is None else quality_samples
    check_settings(budget_s=budget_s, test_images=test_images, sample_n=sample_n, quality_samples=quality_samples)
    datasets = {} if datasets is None else datasets  # (levels, size) -> (train, test), shared between models
    dev = armini.device(device)
    armini.seed_everything(seed)
    model, note = build(name, size, **model_kwargs)
    clock = time.process_time if cpu_time else time.perf_counter
    key = (model.levels, size)
    if key not in datasets:
        datasets[key] = (data.load("fashion-mnist", "train", levels=model.levels, size=size),
                         data.load("fashion-mnist", "test", levels=model.levels, size=size, limit=test_images))
    train_set, test_set = datasets[key]

    lr = lr if lr is not None else LR.get(name, 1e-3)
    batch_size = batch_size if batch_size is not None else BATCH.get(name, 32)
    hist, steps = train_on_budget(model, train_set, test_set, budget_s=budget_s, batch_size=batch_size, lr=lr,
                                  device=dev, seed=seed, clock=clock)
    record = dict(
        model=name, device=str(dev), params=model.num_params(), levels=model.levels, shape=list(model.shape),
        batch_size=batch_size, lr=lr, budget_s=budget_s, clock="cpu" if cpu_time else "wall",
        threads=torch.get_num_threads(), model_kwargs=model_kwargs, steps=hist.steps, planned_steps=steps,
        train_images_per_s=hist.images_per_s,
        train_bpd=hist.final_train_bpd, test_bpd=hist.final_test_bpd, unit=hist.unit, test_images=len(test_set),
        data_source=train_set.source, sample_n=sample_n,
    )
    record["train_s_per_step"] = hist.train_s / max(hist.steps, 1)
    set_sampling_budget(model, sampling_steps, test_set)
    record["sampling_steps"] = len(model.sampling_steps())  # D for one dimension per step
    if has_fast_sampler(model):
        naive, x_naive = time_sampling(model, sample_n, seed, cached=False)
        cached, x_cached = time_sampling(model, sample_n, seed, cached=True)
        forward = time_forward(model, sample_n, seed)
        record.update(sample_s_per_image=cached, sample_s_per_image_naive=naive, sample_s_per_image_cached=cached,
                      cache_speedup=naive / cached, cached_matches_naive=bool(torch.equal(x_naive, x_cached)),
                      forward_s_per_image=forward, forward_equivalents=cached / forward)
    else:
        record["sample_s_per_image"] = time_sampling(model, sample_n, seed, cached=False)[0]
    if quality_samples:
        record.update(quality_fields(model, quality_samples, seed, size, datasets))
    record.update(model_fields(model))
    record["note"] = note
    if models is not None:
        models[name] = model
    return record


def set_sampling_budget(model, steps, test_set, held_out: int = 128):
    """Give a model with a step budget (ARDM's set_budget) `steps` sampling steps, planned from its per-step
    losses on the first `held_out` test images. Models that fill one dimension per step ignore it."""
    if steps is None or not callable(getattr(model, "set_budget", None)):
        return
    x = test_set.images[:held_out].to(model.model_device)
    model.measure_step_losses(x, stride=max(1, model.dims // 64))  # every stride-th t, interpolated between
    model.set_budget(min(int(steps), model.dims))


def check_settings(budget_s: float, test_images: int, sample_n: int, quality_samples: int = 0):
    """Refuse, before any training, settings that would only fail (or mean nothing) at the end."""
    if quality_samples != 0 and not (isinstance(quality_samples, int) and quality_samples >= MIN_QUALITY_SAMPLES):
        raise ValueError(f"quality_samples must be 0 (no sample quality) or a whole number >= {MIN_QUALITY_SAMPLES} "
                         f"(KID and precision/recall need several images), got {quality_samples!r}")
    if not budget_s > 0:
        raise ValueError(f"budget_s must be a number of seconds > 0, got {budget_s}")
    if test_images is not None and test_images < 1:
        raise ValueError(f"test_images must be at least 1 (or None: all), got {test_images}")
    if sample_n < 1:
        raise ValueError(f"sample_n (images sampled for timing) must be at least 1, got {sample_n}")


# ------------------------------------------------------------------------------------ speed mode
# Peer-sized configurations: where issue 11 compares training speed with public implementations (their
# code run beside ours in a separate folder, never copied in): model name -> list of (label, batch, kwargs).
PEER_CONFIGS = {
    # UvA DL tutorial 12's GatedPixelCNN(c_hidden=64): 7 gated layers, about 852k parameters, batch 32
    "gated-pixelcnn": [("peer: UvA tutorial 12 (7 layers, ~850k params)", 32, dict(channels=76, n_layers=7)),
                       # the same at UvA's width: about 603k parameters here, as UvA's masked-out weights are not counted
                       ("peer width: UvA's 64 channels, 7 layers", 32, dict(channels=64, n_layers=7))],
    # pclucas14/pixel-cnn-pp with nr_resnet=1, nr_filters=32, batch 16
    "pixelcnn++": [("peer: pclucas14 pixel-cnn-pp (nr_resnet=1, 32 filters)", 16, dict(nr_resnet=1, nr_filters=32))],
}


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with `threads` torch threads, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_training(model, batch_size: int, *, steps: int = 5, warmup: int = 2, seed: int = 0, lr: float = 1e-3,
                  amp: Optional[bool] = None) -> dict:
    """Seconds per training step of `model` (trained in place) at `batch_size`: the median over `steps`
    steps after `warmup` unmeasured ones, wall-clock (`wall`) and CPU seconds of this process (`cpu`,
    summed over its threads). A step is what armini.train.fit does: the loss (mixed precision as fit's amp=
    chooses: on CUDA by default, on a CPU with native bfloat16 when amp=True),
    reading it back (fit checks it is finite), backpropagation, gradient clipping and an AdamW update,
    here on one fixed batch of random images (the time does not depend on the pixel values)."""
    from armini import train

    dev = model.model_device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(model.levels, (batch_size,) + model.shape, generator=gen).to(dev)  # (B, *shape)
    y = armini.class_labels(model, batch_size)
    amp_dtype, scaler = train._amp_setup(dev, amp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    wall, cpu = [], []
    for _ in range(warmup + steps):
        _sync(dev)
        w0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            loss = model.loss(x, y)
        loss.item()
        train.optimizer_step(loss, model, optimizer, scaler, clip=1.0)
        _sync(dev)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    model.eval()
    return {"wall": statistics.median(wall[warmup:]), "cpu": statistics.median(cpu[warmup:]),
            "precision": str(amp_dtype or torch.float32).removeprefix("torch.")}


def best_sampling(model, n: int, seed: int, cached: bool, clock, repeats: int = 1):
    """(seconds per image, images): the fastest of `repeats` timings of the same draw (same seed, same
    images), the one least disturbed by other work on the machine, as time_forward takes its passes."""
    runs = [time_sampling(model, n, seed, cached=cached, clock=clock) for _ in range(repeats)]
    return min(seconds for seconds, _ in runs), runs[0][1]


def time_samplers(model, fe_batches, naive_n: int, seed: int, clock, repeats: int = 1) -> dict:
    """Sampling timings on one thread (a cached step runs on one thread anyway; the forward pass it is
    compared with runs on the same one): for each n in fe_batches the cached sampler's and one full
    forward pass's seconds per image and their ratio, `forward_equivalents` (what one image costs in
    full forward passes: 1 would be free caching, D = C*H*W the naive sampler), keyed by n; the naive
    sampler at naive_n images, and whether it drew the cached sampler's images (same draws). Each
    sampler's time is the fastest of `repeats` runs (best_sampling; the forward pass: of 3)."""
    out = {"sample_threads": 1, "sample_repeats": repeats}
    with torch_threads(1):
        cached = has_fast_sampler(model)
        if cached:  # one untimed image first: a process's first sample pays one-off start-up costs, not the sampler's
            time_sampling(model, 1, seed, cached=True, clock=clock)
        forward, sample_cached, fe, images = {}, {}, {}, {}
        for n in sorted(set(fe_batches) | {naive_n}):
            forward[str(n)] = time_forward(model, n, seed, clock=clock)
            if cached:
                sample_cached[str(n)], images[n] = best_sampling(model, n, seed, True, clock, repeats)
                fe[str(n)] = sample_cached[str(n)] / forward[str(n)]
        naive, x_naive = best_sampling(model, naive_n, seed, False, clock, repeats)
    out.update(forward_s_per_image=forward, naive_n=naive_n, sample_s_per_image_naive=naive,
               naive_forward_equivalents=naive / forward[str(naive_n)])
    if cached:
        out.update(sample_s_per_image_cached=sample_cached, forward_equivalents=fe,
                   cache_speedup=naive / sample_cached[str(naive_n)],
                   cached_matches_naive=bool(torch.equal(images[naive_n], x_naive)))
    return out


def speed_record(name: str, *, label: str, batch_size: int, threads, device, seed: int, size: int, clock_name: str,
                 train_steps: int, fe_batches=None, naive_n: int = 1, sample_repeats: int = 1, amp: Optional[bool] = None,
                 **model_kwargs) -> dict:
    """One speed-mode record: training seconds per step at each thread count (mixed precision as fit's
    amp= chooses) and, when fe_batches is given, the sampling timings (time_samplers) of one model
    configuration, untrained (seeded)."""
    armini.seed_everything(seed)
    model, note = build(name, size, **model_kwargs)
    model.to(armini.device(device)).eval()
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    record = dict(kind="speed", model=name, config=label, device=str(model.model_device), params=model.num_params(),
                  levels=model.levels, shape=list(model.shape), model_kwargs=model_kwargs, clock=clock_name,
                  batch_size=batch_size)
    if fe_batches:
        record.update(time_samplers(model, fe_batches, naive_n, seed, clock, sample_repeats))
    record.update(model_fields(model))
    wall, cpu = {}, {}
    for t in threads:
        with torch_threads(t):
            times = time_training(model, batch_size, steps=train_steps, seed=seed, amp=amp)
        wall[str(t)], cpu[str(t)] = times["wall"], times["cpu"]
    record.update(train_threads=list(threads), train_s_per_step=wall, train_cpu_s_per_step=cpu,
                  precision=times["precision"], train_steps_timed=train_steps, note=note)
    return record


def image_models() -> list:
    """The models this bench races, on Fashion-MNIST images: every MODELS entry but the video models
    (shape (T, C, H, W)), in MODELS order."""
    return [name for name, cls in MODELS.items() if cls.shape_axes != 4]


def cached_model_names() -> list:
    """The image models with a cached sampler (an init_cache of their own), in MODELS order."""
    return [name for name in image_models() if MODELS[name].init_cache is not ARModel.init_cache]


def check_model_names(names, parser) -> None:
    """Every name an image model of MODELS, or a parser error that says what to pick."""
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        parser.error(f"unknown model(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(image_models())}")
    videos = [m for m in names if MODELS[m].shape_axes == 4]
    if videos:
        parser.error(f"{', '.join(videos)}: a video model; this bench races image models on Fashion-MNIST "
                     f"(train a video model with `python -m armini train {videos[0]}`); choose from {', '.join(image_models())}")


def speed_configs(names, peers: bool, model_kwargs: dict) -> list:
    """(name, label, batch size, kwargs, sample?) for every configuration the speed mode measures:
    each model's default (with the --set options) and, with peers, its peer-sized ones (training only)."""
    configs = []
    for name in names:
        configs.append((name, "default" if not model_kwargs else "default with --set", BATCH.get(name, 32), model_kwargs, True))
        if peers:
            configs += [(name, label, batch, kwargs, False) for label, batch, kwargs in PEER_CONFIGS.get(name, [])]
    return configs


def text_table(title: str, head: list, rows: list, numeric) -> str:
    """A title, a header, a rule and the rows, columns padded to their widest cell; the columns in `numeric`
    (indices) right-aligned, the others left-aligned. Every bench table is printed by this."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    numeric = set(numeric)

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([title, line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]).rstrip()


def format_speed_table(records) -> str:
    """The speed records as a text table: training s/step per thread count, then sampling columns."""
    cpu = bool(records) and records[0]["clock"] == "cpu"  # --cpu-time: CPU seconds (of every thread) per step
    train_key = "train_cpu_s_per_step" if cpu else "train_s_per_step"
    threads = sorted({int(t) for r in records for t in r[train_key]})
    ns = sorted({int(n) for r in records for n in r.get("forward_equivalents", {})})
    head = (["model", "config", "params", "batch", "precision"] + [f"train s/step {t}thr" for t in threads]
            + ["naive s/img", "cached s/img", "naive/cached"] + [f"fwd-equiv n={n}" for n in ns] + ["same images"])
    rows = []
    for r in records:
        steps = [f"{r[train_key][str(t)]:.3f}" if str(t) in r[train_key] else "-" for t in threads]
        fe = r.get("forward_equivalents", {})
        naive_n = str(r.get("naive_n", ""))
        rows.append([r["model"], r["config"], f"{r['params']:,}", str(r["batch_size"]), r.get("precision", "-")] + steps + [
            f"{r['sample_s_per_image_naive']:.3f}" if "sample_s_per_image_naive" in r else "-",
            f"{r['sample_s_per_image_cached'][naive_n]:.3f}" if naive_n in r.get("sample_s_per_image_cached", {})
            else "-", f"{r['cache_speedup']:.1f}" if "cache_speedup" in r else "-"]
            + [f"{fe[str(n)]:.1f}" if str(n) in fe else "-" for n in ns]
            + [str(r["cached_matches_naive"]) if "cached_matches_naive" in r else "-"])

    clock = "CPU" if cpu else "wall-clock"
    title = (f"{clock} seconds. training: median s/step at each thread count{' (CPU s of all threads)' if cpu else ''}; "
             "sampling on one thread, s per image (naive and cached at naive_n images, and their ratio); "
             "fwd-equiv = cached s/img / one forward pass s/img")
    return text_table(title, head, rows, numeric=[2, 3] + list(range(5, len(head))))


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every bench subcommand that writes records shares: --json, --overwrite, --device, --seed,
    --threads and --debug (the tokenizer, course and video benches)."""
    p.add_argument("--json", default=None, metavar="PATH", help="write the records to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    p.add_argument("--device", type=cli.device_name, default=None, help="cpu, cuda, mps (default: armini.device())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads (default: torch's choice)")
    cli.add_debug_flag(p)


def build_speed_parser():
    p = argparse.ArgumentParser(
        prog="python -m armini.bench speed",
        description="Speed only, no training to a budget: training s/step at the default and peer-sized "
                    "configurations on each thread count, and the samplers' seconds per image and "
                    "forward-equivalents (cached s/image over one forward pass's s/image) at each --fe-batch.")
    p.add_argument("--models", default=None,
                   help=f"comma-separated names (default: the models with a cached sampler, {','.join(cached_model_names())})")
    p.add_argument("--threads", type=positive_ints, default=[1, 2], help="thread counts for training, e.g. 1,2 (default)")
    p.add_argument("--fe-batch", type=positive_ints, default=[1, 16],
                   help="numbers of images sampled at once for the forward-equivalents, e.g. 1,16 (default)")
    p.add_argument("--naive-n", type=cli.positive_int, default=1,
                   help="images drawn by the naive sampler (compared with the cached sampler's; default 1)")
    p.add_argument("--sample-repeats", type=cli.positive_int, default=3,
                   help="time each sampler this many times and keep the fastest, the least disturbed by other work "
                        "(default 3; one run of a short cached sampler moves by 30%% on a busy machine)")
    p.add_argument("--train-steps", type=cli.positive_int, default=5, help="timed training steps (default 5, after 2 warm-up)")
    p.add_argument("--no-peers", action="store_true", help="skip the peer-sized configurations (bench.PEER_CONFIGS)")
    p.add_argument("--amp", default="auto", choices=[*cli.AMP, "both"],
                   help="training precision, as fit's amp=: auto (mixed precision on CUDA only), on (also bfloat16 "
                        "on a CPU with native bfloat16), off, or both (float32, then amp on: two records per configuration)")
    p.add_argument("--cpu-time", action="store_true",
                   help="timings in CPU seconds of this process (fair on a busy machine; with 2 threads a training "
                        "step's CPU seconds add up both threads); the JSON records training on both clocks either way")
    p.add_argument("--json", default=None, metavar="PATH", help="write the records to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    p.add_argument("--device", type=cli.device_name, default=None, help="cpu, cuda, mps (default: armini.device())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=28, choices=[28, 14, 7], help="image side: 28, or the 14x14 or 7x7 view")
    p.add_argument("--set", action="append", default=[], type=cli.key_value, metavar="KEY=VALUE",
                   help="a model keyword argument for the default configurations (repeatable)")
    cli.add_debug_flag(p)
    return p


def positive_ints(text: str) -> list:
    """'1,16' -> [1, 16], each a whole number >= 1 (an argparse type)."""
    return [cli.positive_int(part.strip()) for part in text.split(",") if part.strip()] or [cli.positive_int(text)]


def run_speed(args, parser) -> list:
    """The speed mode the parsed flags ask for; returns the records."""
    names = [m.strip() for m in (args.models or ",".join(cached_model_names())).split(",") if m.strip()]
    check_model_names(names, parser)
    if args.json:
        cli.check_new_file(args.json, args.overwrite, "--json")
    model_kwargs = dict(args.set)
    check_models(names, args.size, model_kwargs)
    records = []
    precisions = [False, True] if args.amp == "both" else [cli.AMP[args.amp]]  # fit's amp= for each timing
    for name, label, batch, kwargs, sample in speed_configs(names, not args.no_peers, model_kwargs):
        for i, amp in enumerate(precisions):
            print(f"timing {name} ({label}{', amp on' if amp else ''}) ...", flush=True)
            records.append(speed_record(name, label=label, batch_size=batch, threads=args.threads, device=args.device,
                                        seed=args.seed, size=args.size, clock_name="cpu" if args.cpu_time else "wall",
                                        train_steps=args.train_steps, fe_batches=args.fe_batch if sample and i == 0 else None,
                                        naive_n=args.naive_n, sample_repeats=args.sample_repeats, amp=amp, **kwargs))
            if args.json:
                save_records(records, args.json)
    print()
    print(format_speed_table(records))
    if args.json:
        print(f"\nwrote {args.json}")
    return records


# ------------------------------------------------------------------------------------ tokenizer mode
# `python -m armini.bench tokenizers`: every tokenizer of Parts III and IV (lessons 11, 13 and 15), the same CPU budget,
# measured by armini.tokenizers.reconstruction_quality on the same test images.
TOKENIZER_KINDS = ("vq", "ema", "fsq", "rvq", "vqgan", "msvq")
# Each at about 490 bits per image on a 7 x 7 grid, as lesson 11 compares them: 49 tokens x log2 1024 = 490
# (VQ, EMA and VQGAN's EMA codebook), 49 x log2(8*5*5*5) = 488 (FSQ), 2 x 49 x log2 32 = 490 (residual VQ),
# 104 x log2 26 = 489 (VAR's multi-scale tokens, scales 1, 2, 3, 4, 5, 7: 1 + 4 + 9 + 16 + 25 + 49 = 104 tokens;
# lesson 15's default (1, 2, 4, 7) has 70 tokens, 329 bits: named here to keep the rates equal).
TOKENIZER_SETTINGS = {
    "vq": dict(quantizer="vq", codebook_size=1024),
    "ema": dict(quantizer="ema", codebook_size=1024),
    "fsq": dict(quantizer="fsq", fsq_levels=(8, 5, 5, 5)),
    "rvq": dict(quantizer="rvq", codebook_size=32, depth=2),
    "vqgan": dict(quantizer="ema", codebook_size=1024),
    "msvq": dict(quantizer="msvq", codebook_size=26, scales=(1, 2, 3, 4, 5, 7),
                 phi=4),  # VAR's 4 phi convs: better than one shared in 2 of 2
    # seeds at 60 CPU s (PSNR +0.2 dB, rFID -8 to -13 on 500 test images)
}
# (batch size, learning rate): lesson 11's recipe for the VQ-VAEs; lesson 13's for VQGAN, which also
# weights the adversarial term by 0.1 and starts it halfway through training (after the warm-up).
TOKENIZER_RECIPES = {"vq": (32, 2e-3), "ema": (32, 2e-3), "fsq": (32, 2e-3), "rvq": (32, 2e-3), "vqgan": (64, 1e-3),
                     "msvq": (32, 2e-3)}
VQGAN_ADVERSARIAL_WEIGHT = 0.1


def make_tokenizer(kind: str, *, size: int = 28, levels: int = LEVELS, latent_size: int = 7, disc_start: int = 0):
    """An untrained tokenizer of `kind` (TOKENIZER_KINDS) for (1, size, size) images with `levels` values:
    a VQVAE with TOKENIZER_SETTINGS[kind], or for "vqgan" a VQGAN around the same EMA VQ-VAE whose
    adversarial terms start after `disc_start` steps."""
    from armini.tokenizers.vqgan import VQGAN
    from armini.tokenizers.vqvae import VQVAE

    settings = dict(image_shape=(1, size, size), levels=levels, latent_size=latent_size, **TOKENIZER_SETTINGS[kind])
    if kind == "vqgan":
        return VQGAN(**settings, disc_start=disc_start, adversarial_weight=VQGAN_ADVERSARIAL_WEIGHT)
    return VQVAE(**settings)


def tokenizer_trainer(kind: str):
    """armini.train.fit, or for "vqgan" fit_vqgan (fit with its two losses and two optimizers)."""
    from armini import train
    from armini.tokenizers.vqgan import fit_vqgan

    return fit_vqgan if kind == "vqgan" else train.fit


def check_tokenizer_settings(kinds, *, budget_s: float, test_images: int, size: int, levels: int, latent_size: int):
    """Refuse, before any training, settings that would only fail (or mean nothing) later: a bad number,
    an unknown kind, a latent size the image side cannot be halved down to (every tokenizer is built once)."""
    unknown = [k for k in kinds if k not in TOKENIZER_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown tokenizer kind(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {','.join(TOKENIZER_KINDS)}")
    if not budget_s > 0:
        raise ValueError(f"budget must be a number of seconds > 0, got {budget_s}")
    if not (isinstance(test_images, int) and test_images >= MIN_QUALITY_SAMPLES):
        raise ValueError(f"test_images must be a whole number >= {MIN_QUALITY_SAMPLES} (rFID, precision and recall "
                         f"compare sets of images), got {test_images!r}")
    if not (isinstance(levels, int) and 2 <= levels <= 256):
        raise ValueError(f"levels must be a whole number from 2 to 256 (Fashion-MNIST's grey values), got {levels!r}")
    for kind in kinds:
        make_tokenizer(kind, size=size, levels=levels, latent_size=latent_size)  # VQVAE's clear error, if any


def tokenizer_data(levels: int, size: int, test_images: int, datasets: dict):
    """(train set, first test images, rFID floor) at `levels` and `size`, shared between tokenizers: the floor
    is the FID-FMNIST of as many training images against the same test images (a perfect tokenizer's rFID)."""
    from armini import data, metrics

    key = ("tokenizers", levels, size, test_images)
    if key not in datasets:
        train_set = data.load("fashion-mnist", "train", levels=levels, size=size)
        test_set = data.load("fashion-mnist", "test", levels=levels, size=size, limit=test_images)
        floor = metrics.fid(train_set.images[:len(test_set)], test_set.images, levels)
        datasets[key] = (train_set, test_set, floor)
    return datasets[key]


def bench_tokenizer(kind: str, *, budget_s: float, device=None, test_images: int = 1000, size: int = 28,
                    levels: int = LEVELS, latent_size: int = 7, seed: int = 0, cpu_time: bool = False,
                    datasets=None, models=None) -> dict:
    """Train one tokenizer for `budget_s` seconds (CPU seconds of this process with cpu_time) and measure its
    reconstructions of the first `test_images` test images; returns one JSON record (kind="tokenizer").

    As bench_model: a short probe run on a copy says how many steps fit the budget, the cosine schedule
    runs over those, and the time limit ends the real run at the budget anyway. models: a dict that
    receives the trained tokenizer under `kind`."""
    from armini.tokenizers import rate_bits, reconstruction_quality

    check_tokenizer_settings([kind], budget_s=budget_s, test_images=test_images, size=size, levels=levels,
                             latent_size=latent_size)
    datasets = {} if datasets is None else datasets
    train_set, test_set, floor = tokenizer_data(levels, size, test_images, datasets)
    dev = armini.device(device)
    clock = time.process_time if cpu_time else time.perf_counter
    batch_size, lr = TOKENIZER_RECIPES[kind]
    fit = tokenizer_trainer(kind)
    settings = dict(batch_size=batch_size, lr=lr, device=dev, seed=seed, progress=False, clock=clock)

    armini.seed_everything(seed)  # the probe: VQGAN's with its adversarial terms on (its slower steps)
    probe = fit(make_tokenizer(kind, size=size, levels=levels, latent_size=latent_size, disc_start=0), train_set,
                None, steps=10**9, time_limit=min(10.0, budget_s / 10), **settings)
    steps = max(1, int(budget_s * probe.steps / max(probe.train_s, 1e-9)))
    armini.seed_everything(seed)
    tok = make_tokenizer(kind, size=size, levels=levels, latent_size=latent_size, disc_start=steps // 2)
    hist = fit(tok, train_set, None, steps=steps, time_limit=budget_s, **settings)
    tok.eval()
    quality = reconstruction_quality(tok, test_set.images)  # psnr, ssim, rfid, ..., recon_bpd, bound_bpd

    shape = tuple(test_set.images.shape[1:])  # (C, H, W)
    record = dict(
        kind="tokenizer", tokenizer=kind, device=str(dev), params=tok.num_params(),
        codebook_size=tok.codebook_size, token_shape=list(tok.token_shape(shape)), rate_bits=rate_bits(tok, shape),
        levels=levels, shape=list(shape), latent_size=latent_size, settings=dict(TOKENIZER_SETTINGS[kind]),
        batch_size=batch_size, lr=lr, budget_s=budget_s, clock="cpu" if cpu_time else "wall",
        threads=torch.get_num_threads(), steps=hist.steps, planned_steps=steps,
        train_images_per_s=hist.images_per_s, test_images=len(test_set), data_source=train_set.source,
    )
    record.update({k: quality[k] for k in ("psnr", "ssim", "rfid", "rkid", "precision", "recall", "used",
                                           "perplexity", "recon_bpd", "bound_bpd")})
    record["rfid_floor"] = floor
    if kind == "msvq":  # VAR's tokens: how each scale uses the shared codebook, how each scale lowers the error
        record.update(scales_fields(tok, test_set.images))
    if kind == "vqgan":  # the discriminator is only needed for training: not counted in params
        record.update(critic_params=sum(p.numel() for p in tok.critic.parameters()), disc_start=steps // 2,
                      adversarial_weight=VQGAN_ADVERSARIAL_WEIGHT)
    if models is not None:
        models[kind] = tok
    return record


@torch.no_grad()
def scales_fields(tok, images: torch.Tensor, batch_size: int = 500) -> dict:
    """A multi-scale tokenizer's per-scale figures on integer images (N, C, H, W): scales, used_per_scale and
    perplexity_per_scale (codebook_usage of each scale's tokens over the whole set) and latent_mse_per_scale
    (mean squared error of the cumulative f_hat after each scale against the encoder's latent)."""
    q, dev = tok.quantizer, tok.model_device
    tokens, errors = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(dev)
        tokens.append(tok.encode(x).cpu())
        errors.append(torch.tensor(q.scale_errors(tok.encode_latents(x))) * len(x))  # (K,) summed over images
    usage = q.usage_per_scale(torch.cat(tokens))
    return dict(scales=list(q.scales), used_per_scale=[u for u, _ in usage], perplexity_per_scale=[p for _, p in usage],
                latent_mse_per_scale=(torch.stack(errors).sum(0) / len(images)).tolist())


def format_tokenizer_table(records) -> str:
    """The tokenizer records as a text table, one row per tokenizer."""
    head = ["tokenizer", "tokens", "V", "rate bits", "params", "steps", "train img/s", "PSNR", "SSIM",
            "rFID (floor)", "prec", "recall", "used", "perplexity", "recon bpd", "bound bpd"]
    rows = [[r["tokenizer"], "x".join(map(str, r["token_shape"])), str(r["codebook_size"]), f"{r['rate_bits']:.0f}",
             f"{r['params']:,}", str(r["steps"]), f"{r['train_images_per_s']:.0f}", f"{r['psnr']:.2f}",
             f"{r['ssim']:.3f}", f"{r['rfid']:.2f} ({r['rfid_floor']:.2f})", f"{r['precision']:.2f}",
             f"{r['recall']:.2f}", f"{r['used']:.1%}", f"{r['perplexity']:.1f}", f"{r['recon_bpd']:.3f}",
             f"{r['bound_bpd']:.3f}"] for r in records]

    title = "tokenizers"
    if records:
        r = records[0]
        clock = "CPU" if r["clock"] == "cpu" else "wall-clock"
        title = (f"Fashion-MNIST {'x'.join(map(str, r['shape'][1:]))} at {r['levels']} levels, {r['budget_s']:g} {clock} "
                 f"s of training per tokenizer; reconstructions of the first {r['test_images']} test images "
                 f"(rFID-FMNIST floor: as many training images); rate bits = tokens x log2 V; "
                 "bound bpd = recon bpd + rate bits / dims (a uniform prior over tokens)")
    table = text_table(title, head, rows, numeric=range(2, len(head)))
    for r in records:
        if "scales" in r:  # multi-scale tokens: one line per tokenizer with its figures per scale
            table += (f"\n{r['tokenizer']} per scale {tuple(r['scales'])}: used "
                      f"{' '.join(f'{u:.0%}' for u in r['used_per_scale'])}; perplexity "
                      f"{' '.join(f'{p:.1f}' for p in r['perplexity_per_scale'])}; latent MSE of f_hat "
                      f"{' '.join(f'{e:.3f}' for e in r['latent_mse_per_scale'])}")
    return table


def build_tokenizer_parser():
    p = argparse.ArgumentParser(
        prog="python -m armini.bench tokenizers",
        description="Train every tokenizer (lessons 11, 13 and 15) for the same budget at about the same rate "
                    "(bits per image) and measure its reconstructions: PSNR, SSIM, rFID, precision and recall, "
                    "codebook usage, and the pixel-space bits/dim bound with a uniform prior.")
    p.add_argument("--kinds", default=",".join(TOKENIZER_KINDS),
                   help=f"comma-separated tokenizer kinds (default all: {','.join(TOKENIZER_KINDS)})")
    p.add_argument("--budget", "--budget-s", dest="budget", type=cli.positive_float, default=None,
                   help="training seconds per tokenizer (default 60; 3 in quick mode)")
    p.add_argument("--cpu-time", action="store_true",
                   help="budget in CPU seconds of this process (time.process_time): fair on a busy machine")
    p.add_argument("--test-images", type=cli.positive_int, default=None,
                   help=f"test images reconstructed and judged (default 1000; 200 in quick mode; at least "
                        f"{MIN_QUALITY_SAMPLES})")
    p.add_argument("--levels", type=cli.positive_int, default=LEVELS, help="pixel levels K, 2 to 256 (default 256)")
    p.add_argument("--latent-size", type=cli.positive_int, default=7,
                   help="side of the token grid: the image side / 2, 4, ... (default 7)")
    p.add_argument("--size", type=int, default=28, choices=[28, 14], help="image side: 28, or the 14x14 view")
    add_run_flags(p)
    return p


def run_tokenizers(args, parser) -> list:
    """The tokenizer benchmark the parsed flags ask for; returns the records."""
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in TOKENIZER_KINDS]
    if unknown or not kinds:
        parser.error(f"unknown tokenizer kind(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {','.join(TOKENIZER_KINDS)}")
    budget_s = args.budget if args.budget is not None else armini.budget(60.0, 3.0)
    test_images = args.test_images if args.test_images is not None else armini.budget(1000, 200)
    check_tokenizer_settings(kinds, budget_s=budget_s, test_images=test_images, size=args.size, levels=args.levels,
                             latent_size=args.latent_size)
    from armini import metrics

    metrics.load_classifier()  # a missing or damaged judge (rFID, VQGAN's perceptual loss) fails now
    if args.json:
        cli.check_new_file(args.json, args.overwrite, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = armini.device(args.device)
    records, datasets = [], {}
    for kind in kinds:
        print(f"training tokenizer {kind} on {dev} for {budget_s:g} s ...", flush=True)
        records.append(bench_tokenizer(kind, budget_s=budget_s, device=dev, test_images=test_images, size=args.size,
                                       levels=args.levels, latent_size=args.latent_size, seed=args.seed,
                                       cpu_time=args.cpu_time, datasets=datasets))
        if args.json:
            save_records(records, args.json)  # after every tokenizer: a run that stops midway keeps what it measured
    print()
    print(format_tokenizer_table(records))
    if args.json:
        print(f"\nwrote {args.json}")
    return records


def kendall_tau(a, b) -> float:
    """Kendall's rank agreement of two equally long lists of scores, in [-1, 1] (tau-a):

        tau = (concordant pairs - discordant pairs) / (n (n - 1) / 2)

    A pair (i, j) is concordant when a and b order it the same way, discordant when they order it
    oppositely; a tie in either list counts as neither. 1: same ranking, -1: reversed."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two lists of the same length >= 2, got lengths {len(a)} and {len(b)}")
    n = len(a)
    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    s = sum(sign(a[i] - a[j]) * sign(b[i] - b[j]) for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


def format_table(records, budget_s, test_images) -> str:
    """The records as a text table with aligned columns."""
    with_quality = any("fid" in r for r in records)  # sample-quality columns only when some record has them
    quality_head = ["FID (floor)", "KID", "prec", "recall"] if with_quality else []
    head = ["model", "device", "params", "levels", "train img/s", "steps", "test bpd", "sample s/img",
            "cache speedup", *quality_head, "note"]
    rows = []
    for r in records:
        speedup = f"{r['cache_speedup']:.1f}x" if "cache_speedup" in r else "-"
        quality = ([f"{r['fid']:.2f} ({r['fid_floor']:.2f})", f"{r['kid']:.4f}", f"{r['precision']:.2f}",
                    f"{r['recall']:.2f}"] if "fid" in r else ["-"] * 4)[:len(quality_head)]
        rows.append([r["model"], r["device"], f"{r['params']:,}", str(r["levels"]), f"{r['train_images_per_s']:.0f}",
                     str(r["steps"]), f"{r['test_bpd']:.3f}", f"{r['sample_s_per_image']:.3f}", speedup, *quality,
                     r["note"] if len(r["note"]) <= 60 else r["note"][:57] + "..."])  # the JSON has it all

    clock = "CPU" if records and records[0].get("clock") == "cpu" else "wall-clock"
    size = "x".join(map(str, records[0]["shape"][1:])) if records else "28x28"
    title = (f"Fashion-MNIST {size}, {budget_s:g} {clock} s of training per model (cosine lr over the steps that fit); "
             f"test bits/dim on the first {test_images} test images")
    n = next((r["quality_samples"] for r in records if "quality_samples" in r), None)
    if n:
        title += (f"; FID-FMNIST, KID, precision, recall of {n} samples against {n} test images "
                  f"(floor: {n} training images; not comparable with published Inception FIDs)")
    return text_table(title, head, rows, numeric=range(2, len(head) - 1))  # all but model, device and note


def build_parser():
    p = argparse.ArgumentParser(prog="python -m armini.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(image_models()),
                   help=f"comma-separated names (default all: {','.join(image_models())})")
    p.add_argument("--budget-s", type=cli.positive_float, default=None,
                   help="training seconds per model (default 60; 3 in quick mode)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the records to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    p.add_argument("--device", type=cli.device_name, default=None, help="cpu, cuda, mps (default: armini.device())")
    p.add_argument("--batch-size", type=cli.positive_int, default=None,
                   help="default: bench.BATCH for the model, else 32")
    p.add_argument("--lr", type=cli.positive_float, default=None,
                   help="learning rate (default: bench.LR for the model, else 1e-3)")
    p.add_argument("--test-images", type=cli.positive_int, default=None,
                   help="test subset size (default 1000; 200 in quick mode)")
    p.add_argument("--sample-n", type=cli.positive_int, default=None,
                   help="images sampled for timing, at least 1 (default 2; 1 in quick mode)")
    p.add_argument("--sampling-steps", type=cli.positive_int, default=None,
                   help="sampling budget for models that fill several dimensions per step (ardm): S steps, "
                        "planned from per-step losses on held-out images (default: one dimension per step)")
    p.add_argument("--quality-samples", type=cli.non_negative_int, default=None,
                   help="images sampled per model for FID-FMNIST, KID, precision and recall against as many test "
                        f"images (default 1000; 64 in quick mode; 0 skips them; otherwise at least {MIN_QUALITY_SAMPLES})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-time", action="store_true",
                   help="budget in CPU seconds of this process (time.process_time), not wall-clock seconds: "
                        "fair when other work shares the machine")
    p.add_argument("--size", type=int, default=28, choices=[28, 14, 7], help="image side: 28, or the 14x14 or 7x7 view")
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--set", action="append", default=[], type=cli.key_value, metavar="KEY=VALUE",
                   help="a model keyword argument, e.g. --set channels=64 (repeatable; applies to every model)")
    cli.add_debug_flag(p)
    return p


def check_models(names, size: int, model_kwargs: dict):
    """Build every model once with the --set options (and run it on two blank images, see
    cli.build_model): a bad option fails now, not after the models before it have trained."""
    for name in names:
        build(name, size, **model_kwargs)


def save_records(records, path):
    """The records as JSON, written atomically (armini.files): the old file or the new one, never half."""
    with atomic_write(path, "w") as f:
        json.dump(records, f, indent=2)


def run(args, parser) -> list:
    """The benchmark the parsed flags ask for; returns the records."""
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    check_model_names(names, parser)
    budget_s = args.budget_s if args.budget_s is not None else armini.budget(60.0, 3.0)
    test_images = args.test_images if args.test_images is not None else armini.budget(1000, 200)
    sample_n = args.sample_n if args.sample_n is not None else armini.budget(2, 1)
    quality_samples = args.quality_samples if args.quality_samples is not None else armini.budget(1000, 64)
    check_settings(budget_s=budget_s, test_images=test_images, sample_n=sample_n, quality_samples=quality_samples)
    if quality_samples:
        from armini import metrics

        metrics.load_classifier()  # a missing or damaged judge fails now, not after the first model trained
    if args.json:
        cli.check_new_file(args.json, args.overwrite, "--json")  # before the benchmark, not after it
    model_kwargs = dict(args.set)
    check_models(names, args.size, model_kwargs)
    dev = armini.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    records, datasets = [], {}
    for name in names:
        print(f"benchmarking {name} on {dev} for {budget_s:g} s ...", flush=True)
        records.append(bench_model(name, budget_s=budget_s, device=dev, batch_size=args.batch_size, lr=args.lr,
                                   test_images=test_images, sample_n=sample_n, seed=args.seed, datasets=datasets,
                                   cpu_time=args.cpu_time, size=args.size, sampling_steps=args.sampling_steps,
                                   quality_samples=quality_samples, **model_kwargs))
        if args.json:
            save_records(records, args.json)  # after every model: a run that stops midway keeps what it measured
    print()
    print(format_table(records, budget_s, test_images))
    if args.json:
        print(f"\nwrote {args.json}")
    return records


# ------------------------------------------------------------------------------------ course mode
# `python -m armini.bench course`: every generator of Parts I-IV side by side (lesson 19), loaded from the course's
# pretrained checkpoints (armini.pretrained) where they exist, measured in one run on the same test images by the
# same judge. The video models of Part V have their own table: `python -m armini.bench video` (armini.video_bench).
COURSE_MODELS = (  # (name, part): each lesson's main model, in the syllabus's order (lesson 03: the Diagonal BiLSTM)
    ("pixelcnn", "pixels"), ("diagonal-bilstm", "pixels"), ("gated-pixelcnn", "pixels"),
    ("pixelcnn++", "pixels"), ("pixelsnail", "pixels"), ("pixel-transformer", "pixels"),
    ("lmconv", "order-agnostic"), ("ardm", "order-agnostic"),
    ("vq-transformer", "tokens"),
    ("pmard", "scales"), ("var", "scales"),
)
COURSE_SIZE = {"pixel-transformer": 14, "lmconv": 14, "ardm": 14}  # --train-missing: the lesson's image side (else 28)
# The generators whose sampler has no cache and costs seconds per image on a CPU (LMConv: each of its 196 steps a
# full forward pass, and the mixture's log-probabilities at every pixel). Quick mode leaves them out (a minute would
# not draw their samples); otherwise they draw at most `slow_samples` FID samples (default SLOW_SAMPLES), the
# count in the table's `n` column, each row read against the floor at its own count (FID falls as n grows).
SLOW_SAMPLERS = ("lmconv",)
QUICK_SKIP = SLOW_SAMPLERS
SLOW_SAMPLES = 50
JUDGE_SIZE = 28  # the FID judge reads 28x28 images: smaller ones, real and generated alike, are enlarged first


def course_parts() -> dict:
    """name -> part ("pixels", "order-agnostic", "tokens", "scales") of every course generator in MODELS."""
    return {name: part for name, part in COURSE_MODELS if name in MODELS}


def pretrained_module():
    """armini.pretrained, or None in a checkout without it (then every checkpoint counts as missing)."""
    try:
        from armini import pretrained
    except ModuleNotFoundError as e:
        if e.name != "armini.pretrained":
            raise
        return None
    return pretrained


def course_model(name: str, *, train_missing: bool, train_budget_s: float, size=None, device=None, seed: int = 0,
                 clock=time.process_time, model_kwargs=None):
    """(model in eval mode, source, training CPU seconds, note) for one generator, or None when it has no
    checkpoint and train_missing is off.

    source "pretrained": the course's checkpoint (armini.pretrained.load), its training CPU seconds from
    its record (`train_cpu_s`); source "trained here": no checkpoint, so it is trained now the bench way
    (train_on_budget: bench.LR / bench.BATCH, a cosine schedule over the steps that fit) for train_budget_s
    seconds of `clock` at `size` (default: its lesson's side, COURSE_SIZE, else 28) with 256 levels."""
    from armini import data

    pre = pretrained_module()
    dev = armini.device(device)
    if pre is not None and pre.available(name):
        model = pre.load(name, device=dev)
        record = pre.record(name)
        return model.eval(), "pretrained", record.get("train_cpu_s"), ""
    if not train_missing:
        return None
    side = size or COURSE_SIZE.get(name, 28)
    armini.seed_everything(seed)
    model, note = build(name, side, **(model_kwargs or {}))
    train_set = data.load("fashion-mnist", "train", levels=model.levels, size=side)
    hist, _ = train_on_budget(model, train_set, None, budget_s=train_budget_s, batch_size=BATCH.get(name, 32),
                              lr=LR.get(name, 1e-3), device=dev, seed=seed, clock=clock)
    seconds = hist.train_s if clock is time.process_time else None  # CPU seconds only when that was the clock
    return model.eval(), "trained here", seconds, note


def course_record(name: str, model, *, part: str, source: str, train_cpu_s, test_images: int, quality_samples: int,
                  single_n: int, seed: int = 0, datasets=None, clock=time.process_time, keep=None, note="") -> dict:
    """Measure one trained generator; returns one JSON record (kind="course").

    test_bpd     bits/dim on the first `test_images` test images at the model's size and levels (armini.train
                 .evaluate); is_bound: an upper bound (two-stage models, ARDM's estimate), else exact
    fid, kid, precision, recall, fid_floor   quality_fields: `quality_samples` samples in batches of 100 against
                 as many test images, judged at 28x28 (a 14x14 model's samples and its real images alike enlarged)
    sampling_steps               network calls of the sampling loop per image
    sample_s_per_image_batch     seconds (of `clock`) per image while drawing those samples in batches of 100
    sample_s_per_image_single    seconds per image drawing `single_n` images one at a time
    train_cpu_s                  training CPU seconds: the checkpoint's record, or this run's training"""
    from armini import data, train

    datasets = {} if datasets is None else datasets
    size = int(model.shape[-1])
    key = ("course-test", model.levels, size, test_images)
    if key not in datasets:
        datasets[key] = data.load("fashion-mnist", "test", levels=model.levels, size=size, limit=test_images)
    test_set = datasets[key]
    armini.seed_everything(seed)  # ARDM's bound draws random orders
    record = dict(
        kind="course", model=name, part=part, source=source, device=str(model.model_device), params=model.num_params(),
        levels=model.levels, shape=list(model.shape), size=size, train_cpu_s=train_cpu_s,
        test_bpd=train.evaluate(model, test_set), unit=train.unit_label(model),
        is_bound=bool(getattr(model, "nll_is_bound", False)), test_images=len(test_set),
        sampling_steps=len(model.sampling_steps()), clock="cpu" if clock is time.process_time else "wall",
        threads=torch.get_num_threads(), judged_at=JUDGE_SIZE,
    )
    record.update(quality_fields(model, quality_samples, seed, size, datasets, clock=clock, keep=keep))
    record["sample_s_per_image_batch"] = record["quality_sample_s"] / record["quality_samples"]
    cached = has_fast_sampler(model)
    single = [time_sampling(model, 1, seed + 1 + i, cached=cached, clock=clock)[0] for i in range(single_n)]
    record.update(sample_s_per_image_single=sum(single) / len(single), single_n=single_n, cached_sampler=cached)
    record["note"] = note
    return record


def pareto_front(records, x: str = "sample_s_per_image_batch", y: str = "fid") -> list:
    """The models no other model beats on both x and y (lower is better on both), in the records' order:
    record a is on the front unless some record b has b[x] <= a[x] and b[y] <= a[y] with one of them <."""
    front = []
    for a in records:
        beaten = any(b[x] <= a[x] and b[y] <= a[y] and (b[x] < a[x] or b[y] < a[y]) for b in records)
        if not beaten:
            front.append(a["model"])
    return front


def run_course_bench(names=None, *, test_images=None, quality_samples=None, slow_samples=None, single_n=None,
                     train_missing=False, train_budget_s=None, size=None, device=None, seed=0, cpu_time=True,
                     json_path=None, overwrite=False, samples=None, model_kwargs=None, log=print) -> list:
    """Every course generator (names: default course_parts(), less QUICK_SKIP in quick mode) from its
    checkpoint, or trained here with train_missing; measured by course_record; returns the records.
    quality_samples: FID samples per generator; the SLOW_SAMPLERS draw min(quality_samples, slow_samples).
    samples: a dict that receives each model's quality samples by name. The --json file is rewritten
    atomically after each model."""
    parts = course_parts()
    chosen = list(parts) if names is None else list(names)
    unknown = [n for n in chosen if n not in MODELS or MODELS[n].shape_axes == 4]
    if unknown or not chosen:
        raise ValueError(f"unknown or video model(s) {', '.join(unknown) or '(none given)'} for the course table; "
                         f"choose from {', '.join(parts)} (video: python -m armini.bench video)")
    test_images = test_images if test_images is not None else armini.budget(500, 50)
    quality_samples = quality_samples if quality_samples is not None else armini.budget(100, 20)
    slow_samples = slow_samples if slow_samples is not None else SLOW_SAMPLES
    single_n = single_n if single_n is not None else armini.budget(2, 1)
    train_budget_s = train_budget_s if train_budget_s is not None else armini.budget(60.0, 5.0)
    check_settings(budget_s=train_budget_s, test_images=test_images, sample_n=single_n,
                   quality_samples=quality_samples)
    if not quality_samples:
        raise ValueError(f"quality_samples must be at least {MIN_QUALITY_SAMPLES}: the course table's FID needs samples")
    if slow_samples < MIN_QUALITY_SAMPLES:
        raise ValueError(f"slow_samples must be at least {MIN_QUALITY_SAMPLES} (the FID samples of "
                         f"{', '.join(SLOW_SAMPLERS)}), got {slow_samples}")
    from armini import metrics

    metrics.load_classifier()  # a missing or damaged judge fails now
    if json_path:
        cli.check_new_file(json_path, overwrite, "--json")
    clock = time.process_time if cpu_time else time.perf_counter
    records, datasets = [], {}
    for name in chosen:
        if names is None and armini.quick() and name in QUICK_SKIP:
            log(f"{name}: skipped in quick mode (its sampler has no cache: every step is a full forward pass)")
            continue
        got = course_model(name, train_missing=train_missing, train_budget_s=train_budget_s, size=size, device=device,
                           seed=seed, clock=clock, model_kwargs=model_kwargs)
        if got is None:
            log(f"{name}: no pretrained checkpoint (python -m armini pretrained train {name}); skipped "
                f"(--train-missing trains it here for --train-budget s)")
            continue
        model, source, train_s, note = got
        log(f"measuring {name} ({source}) ...")
        keep = {} if samples is not None else None
        n = min(quality_samples, slow_samples) if name in SLOW_SAMPLERS else quality_samples
        records.append(course_record(name, model, part=parts.get(name, "other"), source=source, train_cpu_s=train_s,
                                     test_images=test_images, quality_samples=n, single_n=single_n,
                                     seed=seed, datasets=datasets, clock=clock, keep=keep, note=note))
        if samples is not None:
            samples[name] = keep["samples"]
        if json_path:
            save_records(records, json_path)  # after every model: a run that stops midway keeps what it measured
    return records


def format_course_table(records) -> str:
    """The course records as a text table, one row per generator, in the syllabus's order."""
    head = ["part", "model", "source", "image", "params", "train CPU min", "test bpd", "steps", "s/img batch",
            "s/img alone", "n", "FID (floor)", "prec", "recall"]
    rows = []
    for r in records:
        minutes = f"{r['train_cpu_s'] / 60:.1f}" if r.get("train_cpu_s") is not None else "-"
        rows.append([r["part"], r["model"], r["source"], f"{r['size']}x{r['size']}", f"{r['params']:,}", minutes,
                     f"{r['test_bpd']:.3f}" + (" bound" if r["is_bound"] else ""), str(r["sampling_steps"]),
                     f"{r['sample_s_per_image_batch']:.4f}", f"{r['sample_s_per_image_single']:.3f}",
                     str(r["quality_samples"]), f"{r['fid']:.1f} ({r['fid_floor']:.1f})", f"{r['precision']:.2f}", f"{r['recall']:.2f}"])
    title = "the course's generators side by side"
    if records:
        r = records[0]
        clock = "CPU" if r["clock"] == "cpu" else "wall-clock"
        title = (f"Fashion-MNIST, 256 levels. test bpd: bits/dim on the first {r['test_images']} test images at the "
                 f"model's own size (exact, or an upper bound where marked); FID-FMNIST, precision, recall of "
                 f"n samples against as many test images, judged at {r['judged_at']}x{r['judged_at']} (14x14 "
                 f"models: real and generated images enlarged alike); floor: n training images against the same "
                 f"test images at that size (FID falls as n grows: read a row against its own floor); {clock} s "
                 f"per image in batches of up to 100 and one at a time (alone), {r['threads']} thread(s)")
    return text_table(title, head, rows, numeric=range(4, len(head)))


def build_course_parser():
    p = argparse.ArgumentParser(
        prog="python -m armini.bench course",
        description="Every generator of Parts I-IV from its pretrained checkpoint, side by side in one run: "
                    "test bits/dim, FID-FMNIST with precision/recall, sampling steps and seconds per image "
                    "(batches and one at a time), parameters, training CPU minutes.")
    p.add_argument("--models", default=None,
                   help=f"comma-separated names (default: {','.join(course_parts())}; quick mode leaves out "
                        f"{','.join(QUICK_SKIP)})")
    p.add_argument("--test-images", type=cli.positive_int, default=None,
                   help="test images for bits/dim (default 500; 50 in quick mode)")
    p.add_argument("--quality-samples", type=cli.positive_int, default=None,
                   help=f"samples per model for FID, precision, recall (default 100; 20 in quick mode; at least "
                        f"{MIN_QUALITY_SAMPLES})")
    p.add_argument("--slow-samples", type=cli.positive_int, default=None,
                   help=f"samples for FID of the generators without a cached sampler ({','.join(SLOW_SAMPLERS)}), "
                        f"at most --quality-samples (default {SLOW_SAMPLES})")
    p.add_argument("--single-n", type=cli.positive_int, default=None,
                   help="images drawn one at a time for the latency column (default 2; 1 in quick mode)")
    p.add_argument("--train-missing", action="store_true",
                   help="train a generator without a checkpoint here, the bench way, for --train-budget s "
                        "(default: skip it with a note)")
    p.add_argument("--train-budget", type=cli.positive_float, default=None,
                   help="training seconds per missing model with --train-missing (default 60; 5 in quick mode)")
    p.add_argument("--size", type=int, default=None, choices=[28, 14, 7],
                   help="image side for models trained here (default: each lesson's, 28 or 14)")
    p.add_argument("--set", action="append", default=[], type=cli.key_value, metavar="KEY=VALUE",
                   help="a keyword argument for models trained here (repeatable)")
    p.add_argument("--wall-clock", action="store_true", help="time in wall-clock seconds (default: CPU seconds)")
    add_run_flags(p)
    return p


def run_course(args, parser) -> list:
    """The course table the parsed flags ask for; returns the records."""
    names = None if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    if names is not None:
        check_model_names(names, parser)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = run_course_bench(names, test_images=args.test_images, quality_samples=args.quality_samples,
                               slow_samples=args.slow_samples, single_n=args.single_n, train_missing=args.train_missing,
                               train_budget_s=args.train_budget, size=args.size, device=args.device, seed=args.seed,
                               cpu_time=not args.wall_clock, json_path=args.json, overwrite=args.overwrite,
                               model_kwargs=dict(args.set), log=lambda m: print(m, flush=True))
    print()
    print(format_course_table(records))
    if records:
        print("Pareto front (FID vs s/img in batches): " + ", ".join(pareto_front(records)))
    if args.json:
        print(f"\nwrote {args.json}")
    return records


def run_video(argv) -> int:
    """`python -m armini.bench video ...`: the video bench of lesson 18 (armini.video_bench.main)."""
    try:
        from armini import video_bench
    except ModuleNotFoundError as e:
        if e.name != "armini.video_bench":
            raise
        print("python -m armini.bench video: armini/video_bench.py (lesson 18's video bench) is not in this "
              "checkout yet; update it (git pull)", file=sys.stderr)
        return 1
    return video_bench.main(list(argv))


def main(argv=None) -> int:
    """Run the benchmark from the command line; returns the exit status (errors: one line, see armini.cli)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["speed"]:
        parser = build_speed_parser()
        args = parser.parse_args(argv[1:])
        return cli.run(lambda: run_speed(args, parser), parser.prog, args.debug)
    if argv[:1] == ["course"]:
        parser = build_course_parser()
        args = parser.parse_args(argv[1:])
        return cli.run(lambda: run_course(args, parser), parser.prog, args.debug)
    if argv[:1] == ["video"]:
        return run_video(argv[1:])
    if argv[:1] == ["tokenizers"]:
        parser = build_tokenizer_parser()
        args = parser.parse_args(argv[1:])
        return cli.run(lambda: run_tokenizers(args, parser), parser.prog, args.debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    return cli.run(lambda: run(args, parser), parser.prog, args.debug)


if __name__ == "__main__":
    sys.exit(main())
