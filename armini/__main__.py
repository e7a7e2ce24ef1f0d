"""The command line: `python -m armini list` and `python -m armini train MODEL ...`.

    python -m armini list
    python -m armini train pixelcnn --data fashion-mnist --steps 3000 --out runs/pixelcnn
    python -m armini train pixelcnn --out runs/pixelcnn --steps 6000 --resume     # continue that run
    python -m armini train pixelcnn --size 14 --levels 4 -o channels=32 -o n_blocks=3

`train` writes three files into --out: model.pt (a checkpoint, see armini.train.load_checkpoint),
samples.png (a grid of samples) and metrics.json (test bits/dim, speed, settings).
Default steps shrink under ARMINI_QUICK=1 (see armini.budget).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import torch

import armini
from armini.models import MODELS


def image_grid(images: torch.Tensor, levels: int, nrow: int | None = None, pad: int = 1):
    """Integer images (n, C, H, W) in [0, levels) -> one float array (rows, cols) or (rows, cols, 3) in [0, 1]."""
    n, C, H, W = images.shape
    nrow = nrow or max(1, int(round(n**0.5)))  # images per row
    ncol = -(-n // nrow)  # rows of images
    grid = torch.ones(C, ncol * (H + pad) + pad, nrow * (W + pad) + pad)  # white background
    x = images.float().cpu() / (levels - 1)
    for k in range(n):
        r, c = divmod(k, nrow)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        grid[:, top : top + H, left : left + W] = x[k]
    return grid[0].numpy() if C == 1 else grid.permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, levels: int, path) -> None:
    """Save integer images as one PNG grid with matplotlib (grayscale for one channel)."""
    import matplotlib.image

    grid = image_grid(images, levels)
    if grid.ndim == 2:
        matplotlib.image.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        matplotlib.image.imsave(path, grid)


def parse_option(text: str):
    """'key=value' -> (key, Python value): -o channels=32 gives ("channels", 32)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"model options look like key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # keep it as a string
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m armini", description="armini: autoregressive image models")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the models")
    t = sub.add_parser("train", help="train a model, report test bits/dim, save checkpoint and samples")
    t.add_argument("model", choices=sorted(MODELS), help="model name (see `python -m armini list`)")
    t.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    t.add_argument("--levels", type=int, default=None, help="pixel values K (default: the dataset's, 256)")
    t.add_argument("--size", type=int, default=None, help="image side after downscaling (must divide 28)")
    t.add_argument("--color", action="store_true", help="the RGB variant of the data")
    t.add_argument("--source", default="auto", choices=["auto", "full", "subset"], help="Fashion-MNIST files")
    t.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default 3000; 30 in quick mode)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    t.add_argument("--eval-every", type=int, default=None, help="test bits/dim every N steps (default: at the end)")
    t.add_argument("--eval-images", type=int, default=None, help="test images used (default all; 500 in quick mode)")
    t.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    t.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/model.pt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--samples", type=int, default=16, help="images to sample into samples.png (0: none)")
    t.add_argument("--device", default=None, help="cpu, cuda, mps (default: armini.device())")
    t.add_argument("-o", "--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
                   help="model constructor option, e.g. -o channels=32 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def cmd_list() -> None:
    width = max(map(len, MODELS))
    for name, cls in MODELS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:<{width}}  {cls.__name__:<18} {doc[0] if doc else ''}")


def cmd_train(args, parser) -> dict:
    from armini import data, train

    dev = armini.device(args.device)
    steps = args.steps if args.steps is not None else armini.budget(3000, 30)
    eval_images = args.eval_images if args.eval_images is not None else armini.budget(None, 500)
    out = Path(args.out or f"runs/{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    load = dict(levels=args.levels, size=args.size, color=args.color)
    if args.data == "fashion-mnist":
        load["source"] = args.source
    train_set = data.load(args.data, "train", limit=args.limit, **load)
    test_set = data.load(args.data, "test", **load)
    print(f"data: {train_set}")

    armini.seed_everything(args.seed)
    try:
        model = MODELS[args.model](shape=train_set.shape, levels=train_set.levels, **dict(args.option))
    except (TypeError, ValueError) as e:
        parser.error(f"cannot build {args.model} for shape {train_set.shape}, levels {train_set.levels}: {e}")
    print(f"model: {args.model}, {model.num_params():,} parameters, device {dev}")

    hist = train.fit(
        model, train_set, test_set, steps=steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, eval_every=args.eval_every,
        eval_images=eval_images, device=dev, checkpoint=out / "model.pt", resume=args.resume, seed=args.seed,
        progress=not args.no_progress, time_limit=args.time_limit,
    )
    used = f"first {eval_images}" if eval_images and eval_images < len(test_set) else f"all {len(test_set)}"
    print(f"test bits/dim: {hist.final_test_bpd:.4f} ({used} test images), after {hist.steps} steps, "
          f"{hist.images_per_s:.0f} train images/s")

    metrics = dict(
        model=args.model, params=model.num_params(), data=args.data, data_source=train_set.source,
        shape=list(model.shape), levels=model.levels, steps=hist.steps, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, device=str(dev), test_bpd=hist.final_test_bpd, test_images=min(eval_images or 10**12,
        len(test_set)), train_bpd=hist.final_train_bpd, train_images_per_s=hist.images_per_s,
        elapsed_s=hist.elapsed_s, stopped_early=hist.stopped_early, checkpoint=str(out / "model.pt"),
    )
    if args.samples > 0:
        y = None
        if model.num_classes is not None:
            y = torch.arange(args.samples) % model.num_classes  # every class in turn
        gen = torch.Generator().manual_seed(args.seed)
        x = model.sample(args.samples, y=y, generator=gen, progress=not args.no_progress)
        save_grid(x, model.levels, out / "samples.png")
        metrics["samples"] = str(out / "samples.png")
    with open(out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"saved {out / 'model.pt'}, {out / 'metrics.json'}" + (f", {out / 'samples.png'}" if args.samples else ""))
    return metrics


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        cmd_list()
    elif args.command == "train":
        cmd_train(args, parser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
