"""The command line: `python -m armini list` and `python -m armini train MODEL ...`.

    python -m armini list
    python -m armini train pixelcnn --data fashion-mnist --steps 3000 --out runs/pixelcnn
    python -m armini train pixelcnn --out runs/pixelcnn --steps 6000 --resume     # continue that run
    python -m armini train pixelcnn --out runs/pixelcnn --overwrite               # start that run again
    python -m armini train pixelcnn --size 14 --levels 4 -o channels=32 -o n_blocks=3
    python -m armini train vpn --frames 8 --size 16 --out runs/vpn    # a video model: Moving MNIST
    python -m armini pretrained list                # the course's checkpoints (armini.pretrained)
    python -m armini pretrained --verify            # check their SHA-256 sums and that they load
    python -m armini pretrained train pixelcnn      # retrain one from its recipe (--all: every one)

`train` writes three files into --out: model.pt (a checkpoint, see armini.train.load_checkpoint),
samples.png (a grid of samples, each image enlarged to at least 112 pixels a side; a video model
writes samples.gif, the videos side by side, played frame by frame) and metrics.json
(test bits/dim, speed, settings). It never replaces a checkpoint unless told to: an existing
OUT/model.pt needs --resume (continue it) or --overwrite (start again). A run that diverges (test
bits/dim not finite) stops with an error and writes no samples or metrics.
Default steps shrink under ARMINI_QUICK=1 (see armini.budget).

Errors are one line on stderr and exit status 1 (see armini.cli); --debug or ARMINI_DEBUG=1 adds
the Python traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

import armini
from armini import cli
from armini.files import atomic_write
from armini.models import MODELS

SAMPLE_SIDE = 112  # samples.png shows each image at least this many pixels a side: 28x28 drawn 4x, 8x8 14x


def image_grid(images: torch.Tensor, levels: int, nrow: int | None = None, pad: int = 1, scale: int = 1):
    """Integer images (n, C, H, W) in [0, levels) -> one float array (rows, cols) or (rows, cols, 3) in [0, 1]:
    `nrow` images per row (default about sqrt(n)), each pixel a scale x scale block, white between images."""
    from armini.viz import make_grid

    n = len(images)
    x = images.float().cpu() / (levels - 1)  # (n, C, H, W) in [0, 1]
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # (n, C, H*scale, W*scale)
    return make_grid(x, nrow=nrow or max(1, round(n**0.5)), pad=pad, pad_value=1.0)


def save_grid(images: torch.Tensor, levels: int, path) -> None:
    """Save integer images as one PNG grid, enlarged (nearest neighbour) to at least SAMPLE_SIDE pixels an image."""
    import matplotlib.image

    H, W = images.shape[-2:]
    grid = image_grid(images, levels, pad=2, scale=max(1, math.ceil(SAMPLE_SIDE / min(H, W))))
    with atomic_write(path, "wb") as f:
        matplotlib.image.imsave(f, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")  # cmap: one channel only


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m armini", description="armini: autoregressive image models")
    cli.add_debug_flag(p)
    sub = p.add_subparsers(dest="command", required=True)
    cli.add_debug_flag(sub.add_parser("list", help="list the models"), default=argparse.SUPPRESS)
    t = sub.add_parser("train", help="train a model, report test bits/dim, save checkpoint and samples")
    t.add_argument("model", choices=sorted(MODELS), help="model name (see `python -m armini list`)")
    t.add_argument("--data", default=None, choices=["fashion-mnist", "digits", "moving-mnist"],
                   help="default: fashion-mnist for an image model, moving-mnist for a video model")
    t.add_argument("--levels", type=cli.positive_int, default=None, help="pixel values K (default: the dataset's)")
    t.add_argument("--size", type=cli.positive_int, default=None,
                   help="image side after downscaling (must divide 28); moving-mnist: the canvas side (default 16)")
    t.add_argument("--frames", type=cli.positive_int, default=8, help="moving-mnist: frames per video")
    t.add_argument("--color", action="store_true", help="the RGB variant of the data")
    t.add_argument("--source", default="auto", choices=["auto", "full", "subset"], help="Fashion-MNIST files")
    t.add_argument("--limit", type=cli.positive_int, default=None,
                   help="use only the first N training images (moving-mnist: N videos, default 2000)")
    t.add_argument("--steps", type=cli.non_negative_int, default=None,
                   help="optimizer steps (default 3000; 30 in quick mode)")
    t.add_argument("--batch-size", type=cli.positive_int, default=64)
    t.add_argument("--lr", type=cli.positive_float, default=1e-3)
    t.add_argument("--weight-decay", type=cli.non_negative_float, default=0.0)
    t.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    t.add_argument("--eval-every", type=cli.positive_int, default=None,
                   help="test bits/dim every N steps (default: at the end)")
    t.add_argument("--eval-images", type=cli.positive_int, default=None,
                   help="test images used (default all; 500 in quick mode)")
    t.add_argument("--time-limit", type=cli.positive_float, default=None, help="stop training after this many seconds")
    t.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from OUT/model.pt (with its settings)")
    again.add_argument("--overwrite", action="store_true",
                       help="start again: replace OUT/model.pt (and, at the end, samples.png and metrics.json)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--samples", type=cli.non_negative_int, default=16,
                   help="images to sample into samples.png (0: none)")
    t.add_argument("--device", type=cli.device_name, default=None, help="cpu, cuda, mps (default: armini.device())")
    t.add_argument("--amp", default="auto", choices=list(cli.AMP),
                   help="mixed precision: auto (on CUDA only, the default), on (also bfloat16 on a CPU with native "
                        "bfloat16 arithmetic, 1.3-1.9x faster per step there), off")
    t.add_argument("-o", "--option", action="append", default=[], type=cli.key_value, metavar="KEY=VALUE",
                   help="model constructor option, e.g. -o channels=32 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_flag(t, default=argparse.SUPPRESS)
    add_pretrained_parser(sub)
    return p


def add_pretrained_parser(sub) -> None:
    """`pretrained list`, `pretrained --verify`, `pretrained train NAME... | --all` (see armini.pretrained)."""
    from armini import pretrained

    q = sub.add_parser("pretrained", help="the course's pretrained checkpoints: list, --verify, train NAME")
    q.add_argument("action", nargs="?", default="list", choices=["list", "train"], help="list (default) or train")
    q.add_argument("names", nargs="*", metavar="NAME",
                   help=f"train: checkpoints to retrain ({', '.join(pretrained.RECIPES)})")
    q.add_argument("--all", action="store_true", help="train: every checkpoint, in turn")
    q.add_argument("--verify", action="store_true", help="check every shipped checkpoint; exit 1 on any problem")
    q.add_argument("--no-progress", action="store_true", help="train: no progress bar")
    cli.add_debug_flag(q, default=argparse.SUPPRESS)


def is_video(cls) -> bool:
    """Does the model generate videos, shape (T, C, H, W) (armini.models.base.VideoARModel)?"""
    return cls.shape_axes == 4


def cmd_list(args) -> None:
    width = max(map(len, MODELS))
    for name, cls in MODELS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        kind = "video" if is_video(cls) else "image"
        print(f"{name:<{width}}  {cls.__name__:<18} {kind:<6} {doc[0] if doc else ''}")


def output_folder(args) -> Path:
    """--out, checked before any data is loaded: never replace a checkpoint the user did not say to."""
    out = Path(args.out or f"runs/{args.model}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder: choose another --out")
    checkpoint = out / "model.pt"
    if checkpoint.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{checkpoint} already exists: add --resume to continue that run, "
                              "--overwrite to replace it, or choose another --out")
    return out


def data_name(args) -> str:
    """--data, or the model's kind of data when not given; a video model needs videos and an image model images."""
    video = is_video(MODELS[args.model])
    name = args.data or ("moving-mnist" if video else "fashion-mnist")
    if video != (name == "moving-mnist"):
        kind, fix = ("a video model", "--data moving-mnist") if video else ("an image model", "--data fashion-mnist or digits")
        raise ValueError(f"{args.model} is {kind} but --data {name} holds {'images' if video else 'videos'}: use {fix}")
    return name


def load_data(args):
    """(train set, test set) as the flags ask."""
    from armini import data

    if args.data == "moving-mnist":  # videos (N, T, 1, size, size); the seeded train and test sets
        if args.color:
            raise ValueError("--color: Moving MNIST is grey only; leave --color out")
        video = dict(frames=args.frames, size=args.size or 16, levels=args.levels)
        return (data.moving_mnist(args.limit or 2000, split="train", **video),
                data.moving_mnist(200, split="test", **video))
    load = dict(levels=args.levels, size=args.size, color=args.color)
    if args.data == "fashion-mnist":
        load["source"] = args.source
    return data.load(args.data, "train", limit=args.limit, **load), data.load(args.data, "test", **load)


def save_samples(model, args, path) -> None:
    """args.samples images into one PNG grid (videos: one GIF, side by side); class-conditional models draw
    every class in turn."""
    y = armini.class_labels(model, args.samples)  # every class in turn (None: unconditional)
    gen = torch.Generator().manual_seed(args.seed)
    samples = model.sample(args.samples, y=y, generator=gen, progress=not args.no_progress)
    if is_video(type(model)):
        from armini.viz import save_video

        save_video(samples, path, levels=model.levels)
    else:
        save_grid(samples, model.levels, path)


def train_tokenizer_first(model, args, train_set, test_set, *, steps: int, dev, out, say) -> None:
    """A two-stage model (a tokenizer, then a prior over its tokens; lessons 12, 15, 18): train the tokenizer
    for `steps` first, into OUT/tokenizer.pt (resumable like model.pt); the prior's run then reads its tokens.
    Without this, the prior would learn the tokens of an untrained tokenizer."""
    from armini import train

    say(f"stage 1 of 2: the tokenizer ({type(model.tokenizer).__name__}), {steps} steps")
    hist = train.fit(
        model.tokenizer, train_set, test_set, steps=steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, eval_every=args.eval_every,
        eval_images=args.eval_images, device=dev, checkpoint=out / "tokenizer.pt", resume=args.resume,
        overwrite=args.overwrite, seed=args.seed, progress=not args.no_progress, time_limit=args.time_limit,
        amp=cli.AMP[args.amp],
    )
    if not math.isfinite(hist.final_test_bpd):
        raise FloatingPointError(f"the tokenizer's test bits/dim is {hist.final_test_bpd} after {hist.steps} steps: "
                                 f"training diverged; try a lower --lr (this run: {args.lr:g}). Nothing else written.")
    say(f"tokenizer: test bits/dim of p(x|z) {hist.final_test_bpd:.4f}; stage 2 of 2: the prior, {steps} steps")


def cmd_train(args) -> dict:
    from armini import distributed, train

    say = print if distributed.is_main() else lambda *_, **__: None  # under torchrun: rank 0 speaks

    out = output_folder(args)
    dev = armini.device(args.device)
    steps = args.steps if args.steps is not None else armini.budget(3000, 30)
    eval_images = args.eval_images if args.eval_images is not None else armini.budget(None, 500)
    args.data = data_name(args)
    samples_file = out / ("samples.gif" if is_video(MODELS[args.model]) else "samples.png")
    train_set, test_set = load_data(args)
    say(f"data: {train_set}")
    test_images = len(test_set) if eval_images is None else min(eval_images, len(test_set))  # what fit evaluates on

    armini.seed_everything(args.seed)
    options = dict(args.option)
    model = cli.build_model(args.model, options, shape=train_set.shape, levels=train_set.levels)  # and tried once
    say(f"model: {args.model}, {model.num_params():,} parameters, device {dev}")

    out.mkdir(parents=True, exist_ok=True)
    if isinstance(getattr(model, "tokenizer", None), torch.nn.Module):  # tokens, then a prior over them
        train_tokenizer_first(model, args, train_set, test_set, steps=steps, dev=dev, out=out, say=say)
    hist = train.fit(
        model, train_set, test_set, steps=steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, eval_every=args.eval_every,
        eval_images=eval_images, device=dev, checkpoint=out / "model.pt", resume=args.resume,
        overwrite=args.overwrite, seed=args.seed, progress=not args.no_progress, time_limit=args.time_limit,
        amp=cli.AMP[args.amp],
    )
    if not math.isfinite(hist.final_test_bpd):  # a diverged run: no samples or metrics that look like results
        raise FloatingPointError(f"test bits/dim is {hist.final_test_bpd} after {hist.steps} steps: training "
                                 f"diverged; try a lower --lr (this run: {args.lr:g}). No samples or metrics written.")
    if not distributed.is_main():  # under torchrun: the other processes trained with rank 0, which writes the files
        return {}
    used = "all" if test_images == len(test_set) else "first"
    print(f"test {hist.unit}: {hist.final_test_bpd:.4f} ({used} {test_images} test images), after {hist.steps} steps, "
          f"{hist.images_per_s:.0f} train images/s")

    metrics = dict(
        model=args.model, params=model.num_params(), data=args.data, data_source=train_set.source,
        shape=list(model.shape), levels=model.levels, steps=hist.steps, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, device=str(dev), test_bpd=hist.final_test_bpd, test_images=test_images,
        train_bpd=hist.final_train_bpd, train_images_per_s=hist.images_per_s,
        elapsed_s=hist.elapsed_s, stopped_early=hist.stopped_early, checkpoint=str(out / "model.pt"),
    )
    if args.samples > 0:
        save_samples(model, args, samples_file)
        metrics["samples"] = str(samples_file)
    with atomic_write(out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2, allow_nan=False)  # allow_nan=False: always valid JSON
    print(f"saved {out / 'model.pt'}, {out / 'metrics.json'}" + (f", {samples_file}" if args.samples else ""))
    return metrics


def cmd_pretrained(args) -> int:
    from armini import pretrained

    if args.names and args.action != "train":
        raise ValueError(f"pretrained {args.action}: takes no names (got {' '.join(args.names)}); "
                         "to retrain use `python -m armini pretrained train NAME`")
    args.exit_status = pretrained.main(args)  # --verify: 1 when it found problems (printed one a line)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr, see armini.cli)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"list": cmd_list, "train": cmd_train, "pretrained": cmd_pretrained}[args.command]
    status = cli.run(lambda: command(args), parser.prog, args.debug)
    return status or getattr(args, "exit_status", 0)


if __name__ == "__main__":
    sys.exit(main())
