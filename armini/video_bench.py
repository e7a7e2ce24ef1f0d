"""The video race: three routes to autoregressive video, the same data, the same training budget, one table.

    python -m armini.bench video                                       # the three routes, 120 s of training each
    python -m armini.bench video --budget 300 --cpu-time --json video.json
    python -m armini.bench video --routes vpn,videogpt --samples 0      # two routes, no FVD-MM
    (the same as python -m armini.video_bench ...)

Part V's three routes (lessons 16-18), each a `VideoARModel` (armini.models.base: shape (T, C, H, W)):

    vpn              pixels across time and space: a ConvLSTM over past frames, a PixelCNN within a frame
                     (lesson 16; one sampling step per pixel, an exact likelihood)
    frame-predictor  frame by frame: a ConvLSTM predicts the whole next frame, its pixels independent given the
                     past, with the complementary mask (lesson 17, teacher forcing; one step per frame, exact)
    videogpt         in a learned latent space: a 3D VQ tokenizer and a GPT prior over its token grid (lesson 18;
                     one step per token, a likelihood *bound* -log p(z) - log p(x | z))

on lesson 16's Moving MNIST (SETTING: 8 frames of 16x16, 16 grey levels, two digits; --frames, --size, --levels
change it). Each route is trained for the same budget of seconds (--budget; with --cpu-time CPU seconds of this
process, fair on a busy machine) by armini.train.fit at a constant learning rate after fit's 100-step warm-up
(lesson 16's recipe), or by the model's own `fit_stages` (VideoGPT: the tokenizer, then the prior, 40% and 60% of
the budget, the encoding of the training videos counted), with its lesson's batch size and learning rate (RECIPES)
and size (ROUTE_KWARGS); the time limit, not a step count, ends each run. Lesson 18 runs the same race with its own
VideoGPT (trained for fixed steps) and gives the others its CPU seconds (train_route, route_record). Then, on the
--test-videos test videos:

    test_bpd, unit, is_bound   bits per dimension (exact, or an upper bound on -log2 p(x) for videogpt)
    nats_per_frame             the video papers' unit: -ln p(x) / T (bits/dim x ln 2 x C*H*W; a bound where is_bound)
    fvd, kid, fvd_floor        FVD-MM (armini.video_metrics: the course's Moving MNIST judge) of --samples
                               unconditional samples against as many test videos; the floor: as many training videos
                               against the same test videos (FVD-MM compares only with itself, never with I3D FVDs)
    s_per_frame_batch          seconds per generated frame drawing the --samples videos in batches (of up to 64)
    s_per_frame_one            seconds per generated frame drawing one video alone (latency, not throughput)
    sampling_steps             steps of the sampling loop per video (pixels, frames or tokens)
    params, steps, train_s, train_cpu_min   model size, optimizer steps, training seconds on the budget's clock

All settings are checked before any training (every route is built once): a bad value is a one-line error
naming the flag. The --json file (its folder must exist; an existing file is replaced only with --overwrite)
is rewritten atomically (armini.files.atomic_write) after each route, so a run stopped midway keeps the
routes done. ARMINI_QUICK=1 shrinks the budget (5 s) and the sets (200 training, 32 test videos).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

import armini
from armini import cli
from armini.files import atomic_write

ROUTES = ("vpn", "frame-predictor", "videogpt")
ROUTE_TEXT = {"vpn": "pixels across time and space", "frame-predictor": "frame by frame",
              "videogpt": "latent tokens (3D VQ + GPT)"}
SETTING = dict(frames=8, size=16, levels=16, digits=2)  # lesson 16's Moving MNIST: 8 frames of 16x16, 16 levels
ROUTE_KWARGS = {  # each route at its lesson's size
    "vpn": {},  # lesson 16: VPN(shape, levels) at its defaults
    "frame-predictor": dict(channels=16, lstm_channels=32),  # lesson 17
    "videogpt": {},  # lesson 18: VideoGPT(shape, levels) at its defaults
}
RECIPES = {"vpn": (16, 2e-3), "frame-predictor": (16, 3e-3), "videogpt": (16, 2e-3)}  # (batch size, learning rate)
FVD_SIDES = (16, 32, 64)  # frame sides the FVD-MM judge reads (16 enlarged, 64 area-averaged to its 32)
MIN_SAMPLES = 10  # FVD-MM, KID: 0 (skip) or at least this many videos
SAMPLE_BATCH = 64  # videos drawn at once for FVD-MM and the batched seconds per frame


def route_model(name: str, frames: int, size: int, levels: int):
    """An untrained model of route `name` for (frames, 1, size, size) videos with `levels` values."""
    from armini.models import MODELS

    if name not in MODELS:
        raise ValueError(f"route {name!r} needs MODELS[{name!r}], which this armini does not have "
                         f"(armini/models/__init__.py); leave it out with --routes")
    return MODELS[name](shape=(frames, 1, size, size), levels=levels, **ROUTE_KWARGS[name])


def check_settings(routes, *, budget_s: float, frames: int, size: int, levels: int, train_videos: int,
                   test_videos: int, samples: int):
    """Refuse, before any training, settings that would only fail (or mean nothing) later; every route is built
    once (its own clear error if it cannot take the setting)."""
    unknown = [r for r in routes if r not in ROUTES]
    if unknown or not routes:
        raise ValueError(f"unknown route(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {','.join(ROUTES)} (--routes)")
    if len(set(routes)) != len(routes):
        raise ValueError(f"--routes names a route twice: {','.join(routes)}")
    if not (isinstance(budget_s, (int, float)) and 0 < budget_s < math.inf):
        raise ValueError(f"--budget must be a number of seconds > 0, got {budget_s!r}")
    if not (isinstance(frames, int) and frames >= 2):
        raise ValueError(f"--frames must be a whole number >= 2 (a video model needs a past), got {frames!r}")
    if not (isinstance(levels, int) and 2 <= levels <= 256):
        raise ValueError(f"--levels must be a whole number from 2 to 256 (grey values), got {levels!r}")
    if not (isinstance(train_videos, int) and train_videos >= 1):
        raise ValueError(f"--train-videos must be a whole number >= 1, got {train_videos!r}")
    if not (isinstance(test_videos, int) and test_videos >= 1):
        raise ValueError(f"--test-videos must be a whole number >= 1, got {test_videos!r}")
    if samples != 0 and not (isinstance(samples, int) and MIN_SAMPLES <= samples <= min(test_videos, train_videos)):
        raise ValueError(f"--samples must be 0 (no FVD-MM) or a whole number from {MIN_SAMPLES} (KID and the "
                         f"covariances need several videos) to --test-videos and --train-videos "
                         f"({min(test_videos, train_videos)}: as many real videos are compared), got {samples!r}")
    if samples and size not in FVD_SIDES:
        raise ValueError(f"the FVD-MM judge reads frames of side {', '.join(map(str, FVD_SIDES))}, got --size "
                         f"{size}: choose one of those, or --samples 0 to skip FVD-MM")
    for name in routes:
        try:
            route_model(name, frames, size, levels)
        except (ValueError, TypeError) as e:
            raise ValueError(f"route {name} cannot take {frames} frames of {size}x{size} at {levels} levels: "
                             f"{cli.one_line(e)}") from e


def video_sets(*, frames: int, size: int, levels: int, train_videos: int, test_videos: int, digits: int = 2):
    """(train, test) Moving MNIST VideoData, seeded (armini.data.moving_mnist): the same for every route."""
    from armini import data

    settings = dict(frames=frames, size=size, levels=levels, digits=digits)
    return (data.moving_mnist(train_videos, **settings),
            data.moving_mnist(test_videos, split="test", **settings))


def train_route(name: str, train_set, *, budget_s: float, cpu_time: bool = True, device=None, seed: int = 0,
                model=None) -> tuple:
    """Train route `name` (a fresh model, or `model`) for `budget_s` seconds on train_set: (model, fields), fields
    the record's training part (steps, train_s, batch_size, lr, train_bpd). A model with `fit_stages` (tokenizer,
    then prior) is trained by it, the budget covering both stages; others by armini.train.fit, constant lr."""
    from armini import train
    from armini.bench import trainer

    T, _, H, _ = train_set.shape
    batch_size, lr = RECIPES[name]
    armini.seed_everything(seed)
    model = route_model(name, T, H, train_set.levels) if model is None else model
    clock = time.process_time if cpu_time else time.perf_counter
    fit = trainer(model)  # train.fit, or the model's own fit_stages
    extra = {"lr_schedule": "constant"} if fit is train.fit else {}
    t0 = clock()
    hist = fit(model, train_set, None, steps=100_000, time_limit=budget_s, batch_size=batch_size, lr=lr,
               device=armini.device(device), seed=seed, progress=False, clock=clock, **extra)
    train_s = clock() - t0
    model.eval()
    return model, dict(steps=hist.steps, train_s=train_s, train_cpu_min=train_s / 60 if cpu_time else None,
                       batch_size=batch_size, lr=lr, train_bpd=hist.final_train_bpd)


def sample_videos(model, n: int, seed: int, batch: int = SAMPLE_BATCH) -> torch.Tensor:
    """n unconditional videos (n, T, C, H, W) on the CPU, `batch` at a time from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        out.append(model.sample(min(batch, n - start), generator=gen).cpu())
    return torch.cat(out)


def measure_route(name: str, model, test_set, *, samples: int, floor=None, train_set=None, seed: int = 0,
                  cpu_time: bool = True) -> dict:
    """The record's measured part for a trained model: likelihood on test_set, FVD-MM of `samples` samples
    against the first `samples` test videos (floor: as many training videos against them, computed here from
    train_set when not given), seconds per generated frame in batches and alone, sampling steps, parameters."""
    from armini import video_metrics
    from armini.models.base import nats_per_frame
    from armini.train import evaluate

    clock = time.process_time if cpu_time else time.perf_counter
    T = model.frames
    videos = test_set.videos.long()
    with torch.no_grad():
        bpd = evaluate(model, videos)  # bits/dim (exact, or the model's bound)
    record = dict(route=name, model=type(model).__name__, params=model.num_params(), shape=list(model.shape),
                  levels=model.levels, test_videos=len(videos), test_bpd=bpd, unit="bits/dim",
                  is_bound=bool(getattr(model, "nll_is_bound", False)),
                  nats_per_frame=nats_per_frame(bpd, model.shape), sampling_steps=len(model.sampling_steps()))
    armini.seed_everything(seed)
    t0 = clock()
    model.sample(1, generator=torch.Generator().manual_seed(seed))  # one video alone
    record["s_per_frame_one"] = (clock() - t0) / T
    n = samples or min(SAMPLE_BATCH, len(videos))  # without FVD-MM, a batch is still timed
    t0 = clock()
    fake = sample_videos(model, n, seed)  # (n, T, 1, H, W)
    record.update(s_per_frame_batch=(clock() - t0) / (n * T), sampled_videos=n)
    if samples:
        real = videos[:samples]
        if floor is None:
            floor = video_metrics.fvd(train_set.videos[:samples].long(), real, model.levels)
        quality = video_metrics.video_quality(real, fake, model.levels)
        record.update(fvd=quality["fvd"], kid=quality["kid"], precision=quality["precision"],
                      recall=quality["recall"], fvd_floor=floor, samples=samples)
    return record


def route_record(name: str, model, fields: dict, train_set, test_set, *, budget_s: float, samples: int, floor=None,
                 cpu_time: bool = True, seed: int = 0) -> dict:
    """One JSON record (kind="video") for route `name`: its trained `model`, the training `fields` train_route
    returned (or the same keys for a model trained elsewhere, e.g. a lesson's), and measure_route's figures."""
    record = dict(kind="video", budget_s=budget_s, clock="cpu" if cpu_time else "wall",
                  threads=torch.get_num_threads(), device=str(model.model_device), data_source=train_set.source,
                  train_videos=len(train_set), **fields)
    record.update(measure_route(name, model, test_set, samples=samples, floor=floor, train_set=train_set, seed=seed,
                                cpu_time=cpu_time))
    return record


def bench_route(name: str, train_set, test_set, *, budget_s: float, samples: int, floor=None, cpu_time: bool = True,
                device=None, seed: int = 0, models=None) -> dict:
    """Train route `name` for `budget_s` seconds and measure it: one JSON record (kind="video").
    models: a dict that receives the trained model under `name`."""
    model, fields = train_route(name, train_set, budget_s=budget_s, cpu_time=cpu_time, device=device, seed=seed)
    if models is not None:
        models[name] = model
    return route_record(name, model, fields, train_set, test_set, budget_s=budget_s, samples=samples, floor=floor,
                        cpu_time=cpu_time, seed=seed)


def format_table(records) -> str:
    """The records as a text table, one row per route (armini.bench.text_table)."""
    from armini.bench import text_table

    head = ["route", "model", "params", "steps", "train min", "nats/frame", "bits/dim", "FVD-MM (floor)",
            "s/frame batch", "s/frame one", "sampling steps"]
    rows = []
    for r in records:
        bound = " (bound)" if r["is_bound"] else ""
        fvd = f"{r['fvd']:.1f} ({r['fvd_floor']:.1f})" if "fvd" in r else "-"
        rows.append([r["route"], r["model"], f"{r['params']:,}", str(r["steps"]), f"{r['train_s'] / 60:.2f}",
                     f"{r['nats_per_frame']:.1f}{bound}", f"{r['test_bpd']:.3f}{bound}", fvd,
                     f"{r['s_per_frame_batch']:.4f}",
                     f"{r['s_per_frame_one']:.4f}", str(r["sampling_steps"])])
    title = "video race"
    if records:
        r = records[0]
        T, C, H, W = r["shape"]
        clock = "CPU" if r["clock"] == "cpu" else "wall-clock"
        title = (f"Moving MNIST, {T} frames of {H}x{W} at {r['levels']} levels; {r['budget_s']:.3g} {clock} s of training "
                 f"per route; nats/frame and bits/dim on {r['test_videos']} test videos ((bound): an upper bound on "
                 f"-log p(x)); s/frame = {clock} seconds per generated frame")
        n = next((q["samples"] for q in records if "samples" in q), None)
        if n:
            title += (f"; FVD-MM of {n} samples against {n} test videos (floor: {n} training videos; comparable only "
                      "with itself)")
    return text_table(title, head, rows, numeric=range(2, len(head)))


def save_records(records, path):
    """The records as JSON, written atomically (armini.files): the old file or the new one, never half."""
    with atomic_write(path, "w") as f:
        json.dump(records, f, indent=2)


def race(routes=ROUTES, *, budget_s: float, frames: int = SETTING["frames"], size: int = SETTING["size"],
         levels: int = SETTING["levels"], train_videos: int = 2000, test_videos: int = 256, samples: int = 256,
         cpu_time: bool = True, device=None, seed: int = 0, json_path=None, models=None, progress=print) -> list:
    """The race in one call: check the settings, make the data, train and measure each route in turn; returns
    the records (and writes them to json_path after each route, when given; check it first with
    cli.check_new_file). models: a dict that receives the trained models by route."""
    routes = list(routes)
    check_settings(routes, budget_s=budget_s, frames=frames, size=size, levels=levels, train_videos=train_videos,
                   test_videos=test_videos, samples=samples)
    if samples:
        from armini import video_metrics

        video_metrics.load_video_classifier()  # a missing or damaged judge fails now, not after training
    train_set, test_set = video_sets(frames=frames, size=size, levels=levels, train_videos=train_videos,
                                     test_videos=test_videos)
    floor = None
    if samples:
        from armini import video_metrics

        floor = video_metrics.fvd(train_set.videos[:samples].long(), test_set.videos[:samples].long(), levels)
    records = []
    for name in routes:
        if progress:
            progress(f"training {name} ({ROUTE_TEXT[name]}) for {budget_s:g} {'CPU ' if cpu_time else ''}s ...")
        records.append(bench_route(name, train_set, test_set, budget_s=budget_s, samples=samples, floor=floor,
                                   cpu_time=cpu_time, device=device, seed=seed, models=models))
        if json_path:
            save_records(records, json_path)  # after every route: a run stopped midway keeps what it measured
    return records


def build_parser():
    from armini.bench import add_run_flags

    p = argparse.ArgumentParser(
        prog="python -m armini.bench video",
        description="The video race: VPN (pixels), the frame predictor (frames) and VideoGPT (latent tokens) trained "
                    "for the same budget on the same Moving MNIST, measured in nats/frame (or its bound), FVD-MM, "
                    "seconds per generated frame and sampling steps.")
    p.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated routes (default all: {','.join(ROUTES)})")
    p.add_argument("--budget", "--budget-s", dest="budget", type=cli.positive_float, default=None,
                   help="training seconds per route (default 120; 5 in quick mode)")
    p.add_argument("--cpu-time", action="store_true",
                   help="budget and timings in CPU seconds of this process (time.process_time): fair on a busy machine")
    p.add_argument("--frames", type=cli.positive_int, default=SETTING["frames"], help="frames per video (default 8)")
    p.add_argument("--size", type=cli.positive_int, default=SETTING["size"], help="canvas side (default 16)")
    p.add_argument("--levels", type=cli.positive_int, default=SETTING["levels"], help="grey levels K (default 16)")
    p.add_argument("--train-videos", type=cli.positive_int, default=None,
                   help="training videos (default 2000; 200 in quick mode)")
    p.add_argument("--test-videos", type=cli.positive_int, default=None,
                   help="test videos scored (default 256; 32 in quick mode)")
    p.add_argument("--samples", type=cli.non_negative_int, default=None,
                   help=f"videos sampled per route for FVD-MM and KID (default: --test-videos; 0 skips them; "
                        f"otherwise at least {MIN_SAMPLES})")
    add_run_flags(p)
    return p


def run(args) -> list:
    """The race the parsed flags ask for: prints the table, returns the records."""
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    budget_s = args.budget if args.budget is not None else armini.budget(120.0, 5.0)
    train_videos = args.train_videos if args.train_videos is not None else armini.budget(2000, 200)
    test_videos = args.test_videos if args.test_videos is not None else armini.budget(256, 32)
    samples = args.samples if args.samples is not None else test_videos
    check_settings(routes, budget_s=budget_s, frames=args.frames, size=args.size, levels=args.levels,
                   train_videos=train_videos, test_videos=test_videos, samples=samples)
    if args.json:
        cli.check_new_file(args.json, args.overwrite, "--json")  # before the race, not after it
    if args.threads:
        torch.set_num_threads(args.threads)
    records = race(routes, budget_s=budget_s, frames=args.frames, size=args.size, levels=args.levels,
                   train_videos=train_videos, test_videos=test_videos, samples=samples, cpu_time=args.cpu_time,
                   device=args.device, seed=args.seed, json_path=args.json,
                   progress=lambda text: print(text, flush=True))
    print()
    print(format_table(records))
    if args.json:
        print(f"\nwrote {args.json}")
    return records


def main(argv=None) -> int:
    """`python -m armini.bench video ...` (argv without "video"); returns the exit status (errors: one line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return cli.run(lambda: run(args), parser.prog, args.debug)


if __name__ == "__main__":
    sys.exit(main())
