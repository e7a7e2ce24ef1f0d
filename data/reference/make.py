"""Make a lesson's reference samples from the course's pretrained checkpoint (data/pretrained/NAME.pt).

    python data/reference/make.py pixelcnn            # writes data/reference/02_pixelcnn_default.png and .json
    python data/reference/make.py leaderboard         # lesson 08: one row per raster checkpoint
    python data/reference/make.py --all               # every lesson below whose checkpoint is here

A checkpoint is the lesson's main model trained with the lesson's default budget and settings (armini.pretrained),
so its samples are what the lesson's default run draws. The images are drawn as the lesson's own sampling cell draws
them (same count, same seed, same call), on the CPU, one thread; the record beside the image copies the checkpoint's
training figures from data/pretrained/NAME.json.
"""
import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Callable, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import torch  # noqa: E402

from armini import data, pretrained, viz  # noqa: E402
from armini.files import atomic_write  # noqa: E402

HERE = Path(__file__).resolve().parent


def plain_samples(n, seed):
    """The lesson's `model.sample(n, generator=torch.Generator().manual_seed(seed))`."""
    return lambda model: model.sample(n, generator=torch.Generator().manual_seed(seed))


def scrubber_samples(n, seed):
    """The lesson's scrubber run (`viz.SamplingScrubber(model, n=n, generator=...)`): its final images."""
    return lambda model: viz.SamplingScrubber(model, n=n, generator=torch.Generator().manual_seed(seed)).final


def lmconv_completions(n, seed):
    """Lesson 09's completions (section 7): test images 10..10+n at 14x14, the left half and then the centre
    observed, each completed in `model.completion_order(observed)`; rows: input (missing grey), completion, original."""
    def draw(model):
        H, W = model.shape[1:]
        x = data.load("fashion-mnist", "test", size=H).images[10:10 + n]  # (n, 1, H, W)
        left, centre = torch.zeros(1, 1, H, W, dtype=torch.bool), torch.ones(1, 1, H, W, dtype=torch.bool)
        left[..., :, :W // 2] = True  # columns 0-6 given
        centre[..., H // 2 - 3:H // 2 + 4, W // 2 - 3:W // 2 + 4] = False  # the central 7x7 block missing
        rows = []
        for observed in (left, centre):
            shown = torch.where(observed, x, torch.full_like(x, model.levels // 2))  # missing pixels grey
            done = model.sample(n, x=x, observed=observed, order=model.completion_order(observed),
                                generator=torch.Generator().manual_seed(seed))
            rows += [shown, done, x]
        return torch.cat(rows)  # (6n, 1, H, W)
    return draw


def ardm_budgets(n, seed, short=20, held_out=(1000, 1128)):
    """Lesson 10's samples with D steps and with `short` steps (section 5): step losses measured as the lesson
    measures them (test images 1000..1127, every 2nd t, generator seed 0), then n samples per budget."""
    def draw(model):
        images = data.load("fashion-mnist", "test", size=model.shape[1]).images[held_out[0]:held_out[1]]
        model.measure_step_losses(images, stride=2, generator=torch.Generator().manual_seed(0))
        rows = []
        for steps in (model.dims, short):
            model.set_budget(steps)
            rows.append(model.sample(n, generator=torch.Generator().manual_seed(seed)))
        return torch.cat(rows)  # (2n, C, H, W)
    return draw


class Reference(NamedTuple):
    lesson: str  # the notebook, e.g. "02_pixelcnn"
    draw: Callable  # model -> (n, C, H, W) integer images, as the lesson's sampling cell draws them
    call: str  # what the lesson calls it
    nrow: int = 8  # images per row of the picture
    rows: tuple = ()  # what each row shows (the lesson labels the rows with these)


# checkpoint name -> its lesson's reference
LESSONS = {
    "nade": Reference("01_factorisation", plain_samples(16, 1), "model.sample(16, generator=...manual_seed(1))"),
    "pixelcnn": Reference("02_pixelcnn", plain_samples(16, 1), "samples = model.sample(16, generator=...manual_seed(1))"),
    "diagonal-bilstm": Reference("03_pixelrnn", plain_samples(8, 1), "model.sample(8, generator=...manual_seed(1))"),
    "gated-pixelcnn": Reference("04_gated_pixelcnn", plain_samples(16, 1), "model.sample(16, generator=...manual_seed(1))"),
    "pixelcnn++": Reference("05_pixelcnnpp", scrubber_samples(8, 0), "viz.SamplingScrubber(model, n=8, ...manual_seed(0))"),
    "pixelsnail": Reference("06_pixelsnail", scrubber_samples(8, 0), "viz.SamplingScrubber(model, n=8, ...manual_seed(0))"),
    "pixel-transformer": Reference("07_pixel_transformer", plain_samples(16, 1),
                                   "model.sample(16, generator=...manual_seed(1))"),
    "lmconv": Reference("09_lmconv", lmconv_completions(4, 0),
                        "model.sample(4, x=test.images[10:14], observed=..., order=model.completion_order(observed), "
                        "generator=...manual_seed(0)) for the left half and the centre", nrow=4,
                        rows=("left half: input", "LMConv", "original", "centre: input", "LMConv", "original")),
    "ardm": Reference("10_ardm", ardm_budgets(10, 3), "model.set_budget(S); model.sample(10, generator=...manual_seed(3)) "
                      "for S = D and 20, after model.measure_step_losses(test.images[1000:1128], stride=2, ...)",
                      nrow=10, rows=("196 steps (D)", "20 steps")),
}
# lesson 08: one row per raster model, each its own lesson's checkpoint (no Row LSTM checkpoint: lesson 03 trains the
# Diagonal BiLSTM), sampled as lesson 08's side-by-side cell samples (more images per row)
LEADERBOARD = ["pixelcnn", "diagonal-bilstm", "gated-pixelcnn", "pixelcnn++", "pixelsnail", "pixel-transformer"]
LEADERBOARD_N, LEADERBOARD_SEED, LEADERBOARD_SIZE = 8, 0, 28


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def save_picture(samples, levels: int, nrow: int, path: Path) -> None:
    """Save integer images (n, C, H, W) as one picture: `nrow` per row, 4x enlarged (one pixel = 4x4 screen pixels)."""
    grid = viz.make_grid(samples.float() / (levels - 1), nrow=nrow)  # (H', W') or (H', W', C) in [0, 1]
    grid = grid.repeat(4, axis=0).repeat(4, axis=1)  # 4x larger, to be seen
    with atomic_write(path) as f:
        matplotlib.image.imsave(f, grid, cmap="gray", vmin=0, vmax=1, format="png")


def training_fields(record: dict) -> dict:
    """The checkpoint's training figures (data/pretrained/NAME.json), as a reference record names them."""
    d = record["data"]
    return {
        "steps": record["steps"],
        "batch_size": record["batch_size"],
        "lr": record["lr"],
        "test_bits_per_dim": round(record["test_bpd"], 3),
        "test_images": record["test_images"],
        "cpu_seconds": record["train_cpu_s"],  # the checkpoint's training (time.process_time, one thread)
        "wall_seconds": None,  # the checkpoint's record keeps CPU time only
        "threads": record["threads"],
        "data": d.get("train_source", d["dataset"]).split(" from ")[0],  # e.g. "full Fashion-MNIST (train: 60000 images)"
        "size": f"{d['size']}x{d['size']}, {d['levels']} levels",
    }


def write_record(folder: Path, stem: str, reference: dict) -> None:
    with atomic_write(folder / f"{stem}.json", "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")


def make(name: str, folder: Path = HERE, load: str = "") -> dict:
    """Draw NAME's reference samples, save NN_lesson_default.png (its lesson's layout, 4x enlarged) and its record."""
    if name == "leaderboard":
        return make_leaderboard(folder, load)
    ref = LESSONS[name]
    torch.set_num_threads(1)
    record = pretrained.record(name)  # checks the checksums first
    model = pretrained.load(name, device="cpu")
    load_before, start, cpu = load_average(), time.perf_counter(), time.process_time()
    with torch.no_grad():
        samples = ref.draw(model)  # (n, C, H, W) integers in [0, levels)
    sample_cpu_s, sample_wall_s = time.process_time() - cpu, time.perf_counter() - start
    image = f"{ref.lesson}_default.png"
    save_picture(samples, model.levels, ref.nrow, folder / image)
    reference = {
        "lesson": f"solutions/{ref.lesson}.ipynb",
        "budget": "default",
        "image": image,
        "command": f"python data/reference/make.py {name}",
        "source": f"the pretrained checkpoint data/pretrained/{name}.pt, trained by `{record['command']}`",
        "sampling": f"as the lesson: {ref.call}, on the CPU, one thread",
        "samples": len(samples),
        **training_fields(record),
        "load": load or f"a shared 2-core VM; load average {load_before} when the samples were drawn",
        "sample_cpu_seconds": round(sample_cpu_s, 1),
        "sample_wall_seconds": round(sample_wall_s, 1),
        "machine": "2-core Linux VM shared with other jobs, no GPU",
        "made": date.today().isoformat(),
    }
    if ref.rows:
        reference["rows"] = list(ref.rows)  # what each row of the picture shows, top to bottom
    write_record(folder, f"{ref.lesson}_default", reference)
    return reference


def make_leaderboard(folder: Path = HERE, load: str = "") -> dict:
    """Lesson 08's reference: one row per raster checkpoint here (LEADERBOARD), each trained at its own lesson's
    default budget, all drawn with the same random numbers (`model.sample(8, generator=...manual_seed(0))`, as
    lesson 08's side-by-side cell); a 14x14 model's images are enlarged 2x to 28x28 (nearest) to fit the rows."""
    torch.set_num_threads(1)
    names = [n for n in LEADERBOARD if pretrained.available(n)]
    if not names:
        raise SystemExit("no raster checkpoint here (python -m armini pretrained train pixelcnn)")
    load_before, start, cpu = load_average(), time.perf_counter(), time.process_time()
    rows, models = [], []
    for name in names:
        record = pretrained.record(name)  # checks the checksums first
        model = pretrained.load(name, device="cpu")
        with torch.no_grad():
            x = model.sample(LEADERBOARD_N, generator=torch.Generator().manual_seed(LEADERBOARD_SEED))  # (n, 1, h, w)
        scale = LEADERBOARD_SIZE // x.shape[-1]
        rows.append(x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1).float() / (model.levels - 1))
        models.append({"model": name, "lesson": f"solutions/{record['lesson']}.ipynb", **training_fields(record),
                       "shown": f"enlarged {scale}x" if scale > 1 else "as drawn"})
    sample_cpu_s, sample_wall_s = time.process_time() - cpu, time.perf_counter() - start
    image = "08_leaderboard_default.png"
    save_picture(torch.cat(rows), 2, LEADERBOARD_N, folder / image)  # values already in [0, 1]: levels 2 keeps them
    reference = {
        "lesson": "solutions/08_leaderboard.ipynb",
        "budget": "default (each model's own lesson)",
        "image": image,
        "command": "python data/reference/make.py leaderboard",
        "source": "the pretrained checkpoints data/pretrained/NAME.pt of lessons 02-07, each trained by "
                  "`python -m armini pretrained train NAME` at its lesson's default budget",
        "sampling": f"as lesson 08's side-by-side cell, {LEADERBOARD_N} images per model: "
                    f"model.sample({LEADERBOARD_N}, generator=...manual_seed({LEADERBOARD_SEED})), on the CPU, one thread",
        "samples": LEADERBOARD_N * len(names),
        "rows": names,
        "models": models,  # one record per row: its checkpoint's training figures
        "load": load or f"a shared 2-core VM; load average {load_before} when the samples were drawn",
        "threads": 1,
        "data": models[0]["data"],
        "sample_cpu_seconds": round(sample_cpu_s, 1),
        "sample_wall_seconds": round(sample_wall_s, 1),
        "machine": "2-core Linux VM shared with other jobs, no GPU",
        "made": date.today().isoformat(),
    }
    write_record(folder, "08_leaderboard_default", reference)
    return reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*LESSONS, "leaderboard"]
    parser.add_argument("names", nargs="*", help=f"checkpoints: {', '.join(choices)}")
    parser.add_argument("--all", action="store_true", help="every lesson whose checkpoint is here")
    parser.add_argument("--load", default="", help="the machine's load while the checkpoint trained (the record's words)")
    args = parser.parse_args(argv)
    names = [n for n in LESSONS if pretrained.available(n)] + ["leaderboard"] if args.all else args.names
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        parser.error(f"name one or more of {', '.join(choices)} (or --all); got {unknown or 'nothing'}")
    for name in names:
        ref = make(name, load=args.load)
        runs = ref.get("models", [ref])
        print(f"{ref['image']}: {ref['samples']} samples; " + "; ".join(
            f"{r.get('model', name)} {r['steps']} steps, test bits/dim {r['test_bits_per_dim']} on {r['test_images']} "
            f"images, trained in {r['cpu_seconds']:.0f} CPU s" for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
