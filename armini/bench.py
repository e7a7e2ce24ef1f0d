"""The benchmark: every model, the same time budget, the same data, one table.

    python -m armini.bench                                  # every model, 60 s of training each
    python -m armini.bench --models pixelcnn,nade --budget-s 300 --json bench.json --device cuda
    python -m armini.bench --models pixelcnn,pixelsnail --budget-s 600 --cpu-time --threads 1   # equal CPU time

For each model: build it for Fashion-MNIST 28x28 (or the --size 14 or 7 view) with 256 levels (a model that cannot take
that, like FVSBN with its D*D*K weights, falls back to its own default levels and says so
in `note`), train it for a fixed budget of wall-clock seconds (or, with --cpu-time, CPU seconds of
this process, which stay fair when other work shares the machine) with armini.train.fit (a cosine learning-rate
schedule over the number of steps a short probe run says fits the budget), then measure

    train_images_per_s   training throughput (images per second, training steps only)
    test_bpd             bits per dimension on the first `test_images` test images
    unit                 what test_bpd measures (the model's unit: bits/dim, bits/token; "(bound)" for an upper bound)
    sample_s_per_image   seconds to sample `sample_n` images, divided by sample_n

Models with a fast sampler (an `init_cache` override that returns a cache) are timed both
ways in the same run: sample_s_per_image_naive (cached=False), sample_s_per_image_cached and
cache_speedup = naive / cached. ARMINI_QUICK=1 shrinks the budget and the test subset.
Everything is seeded; timings depend on the machine (the JSON records the device).

Every setting is checked before the first model trains: the flags' values (--sample-n must be at
least 1: every record has sampling timings), each model built and run once with the --set options,
and the --json file (its folder must exist; an existing file is replaced only with --overwrite). The
JSON is rewritten atomically after each model, so a run that stops midway keeps the models done.
Errors are one line on stderr and exit status 1 (see armini.cli); --debug adds the traceback.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

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


def time_sampling(model, n: int, seed: int, cached: bool):
    """(seconds per image, images) for drawing n images."""
    dev = model.model_device
    gen = torch.Generator().manual_seed(seed)
    _sync(dev)
    t0 = time.perf_counter()
    x = model.sample(n, y=armini.class_labels(model, n), generator=gen, cached=cached)
    _sync(dev)
    return (time.perf_counter() - t0) / n, x


def bench_model(name: str, *, budget_s: float, device, batch_size=None, lr=None, test_images=1000, sample_n=2,
                seed=0, datasets=None, models=None, cpu_time=False, size=28, **model_kwargs) -> dict:
    """Train one model for `budget_s` seconds and measure it; returns one JSON record.

    cpu_time: count the budget in CPU seconds of this process (time.process_time) instead of wall-clock
    seconds; size: 28 (Fashion-MNIST as it comes), 14 or 7 (the area-averaged views); model_kwargs go to the
    model's constructor (e.g. channels=64); models: a dict that receives the trained model under `name`."""
    from armini import data, train

    check_settings(budget_s=budget_s, test_images=test_images, sample_n=sample_n)
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
    # The learning rate follows a cosine schedule over the number of steps that fits the budget,
    # estimated from a short probe run on a copy; time_limit stops the real run at the budget anyway.
    probe = train.fit(copy.deepcopy(model), train_set, None, steps=10**9, time_limit=min(10.0, budget_s / 10),
                      batch_size=batch_size, lr=lr, lr_schedule="constant", device=dev, seed=seed, progress=False,
                      clock=clock)
    steps = max(1, int(budget_s * probe.steps / max(probe.train_s, 1e-9)))
    hist = train.fit(model, train_set, test_set, steps=steps, time_limit=budget_s, batch_size=batch_size, lr=lr,
                     device=dev, seed=seed, progress=False, clock=clock)
    record = dict(
        model=name, device=str(dev), params=model.num_params(), levels=model.levels, shape=list(model.shape),
        batch_size=batch_size, lr=lr, budget_s=budget_s, clock="cpu" if cpu_time else "wall",
        threads=torch.get_num_threads(), model_kwargs=model_kwargs, steps=hist.steps, planned_steps=steps,
        train_images_per_s=hist.images_per_s,
        train_bpd=hist.final_train_bpd, test_bpd=hist.final_test_bpd, unit=hist.unit, test_images=len(test_set),
        data_source=train_set.source, sample_n=sample_n,
    )
    if has_fast_sampler(model):
        naive, x_naive = time_sampling(model, sample_n, seed, cached=False)
        cached, x_cached = time_sampling(model, sample_n, seed, cached=True)
        record.update(sample_s_per_image=cached, sample_s_per_image_naive=naive, sample_s_per_image_cached=cached,
                      cache_speedup=naive / cached, cached_matches_naive=bool(torch.equal(x_naive, x_cached)))
    else:
        record["sample_s_per_image"] = time_sampling(model, sample_n, seed, cached=False)[0]
    record["note"] = note
    if models is not None:
        models[name] = model
    return record


def check_settings(budget_s: float, test_images: int, sample_n: int):
    """Refuse, before any training, settings that would only fail (or mean nothing) at the end."""
    if not budget_s > 0:
        raise ValueError(f"budget_s must be a number of seconds > 0, got {budget_s}")
    if test_images is not None and test_images < 1:
        raise ValueError(f"test_images must be at least 1 (or None: all), got {test_images}")
    if sample_n < 1:
        raise ValueError(f"sample_n (images sampled for timing) must be at least 1, got {sample_n}")


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
    head = ["model", "device", "params", "levels", "train img/s", "steps", "test bpd", "sample s/img",
            "cache speedup", "note"]
    rows = []
    for r in records:
        speedup = f"{r['cache_speedup']:.1f}x" if "cache_speedup" in r else "-"
        rows.append([r["model"], r["device"], f"{r['params']:,}", str(r["levels"]), f"{r['train_images_per_s']:.0f}",
                     str(r["steps"]), f"{r['test_bpd']:.3f}", f"{r['sample_s_per_image']:.3f}", speedup,
                     r["note"] if len(r["note"]) <= 60 else r["note"][:57] + "..."])  # the JSON has it all
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    numeric = {2, 3, 4, 5, 6, 7, 8}  # right-aligned columns

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    clock = "CPU" if records and records[0].get("clock") == "cpu" else "wall-clock"
    size = "x".join(map(str, records[0]["shape"][1:])) if records else "28x28"
    title = (f"Fashion-MNIST {size}, {budget_s:g} {clock} s of training per model (cosine lr over the steps that fit); "
             f"test bits/dim on the first {test_images} test images")
    return "\n".join([title, line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]).rstrip()


def build_parser():
    p = argparse.ArgumentParser(prog="python -m armini.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated names (default all: {','.join(MODELS)})")
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
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        parser.error(f"unknown model(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}")
    budget_s = args.budget_s if args.budget_s is not None else armini.budget(60.0, 3.0)
    test_images = args.test_images if args.test_images is not None else armini.budget(1000, 200)
    sample_n = args.sample_n if args.sample_n is not None else armini.budget(2, 1)
    check_settings(budget_s=budget_s, test_images=test_images, sample_n=sample_n)
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
                                   cpu_time=args.cpu_time, size=args.size, **model_kwargs))
        if args.json:
            save_records(records, args.json)  # after every model: a run that stops midway keeps what it measured
    print()
    print(format_table(records, budget_s, test_images))
    if args.json:
        print(f"\nwrote {args.json}")
    return records


def main(argv=None) -> int:
    """Run the benchmark from the command line; returns the exit status (errors: one line, see armini.cli)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return cli.run(lambda: run(args, parser), parser.prog, args.debug)


if __name__ == "__main__":
    sys.exit(main())
