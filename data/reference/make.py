"""Make a lesson's reference samples from the course's pretrained checkpoint (data/pretrained/NAME.pt).

    python data/reference/make.py pixelcnn            # writes data/reference/02_pixelcnn_default.png and .json
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import torch  # noqa: E402

from armini import pretrained, viz  # noqa: E402
from armini.files import atomic_write  # noqa: E402

HERE = Path(__file__).resolve().parent


def plain_samples(n, seed):
    """The lesson's `model.sample(n, generator=torch.Generator().manual_seed(seed))`."""
    return lambda model: model.sample(n, generator=torch.Generator().manual_seed(seed))


def scrubber_samples(n, seed):
    """The lesson's scrubber run (`viz.SamplingScrubber(model, n=n, generator=...)`): its final images."""
    return lambda model: viz.SamplingScrubber(model, n=n, generator=torch.Generator().manual_seed(seed)).final


# checkpoint name -> (lesson, the lesson's sampling call, what the lesson calls it)
LESSONS = {
    "pixelcnn": ("02_pixelcnn", plain_samples(16, 1), "samples = model.sample(16, generator=...manual_seed(1))"),
    "diagonal-bilstm": ("03_pixelrnn", plain_samples(8, 1), "model.sample(8, generator=...manual_seed(1))"),
    "gated-pixelcnn": ("04_gated_pixelcnn", plain_samples(16, 1), "model.sample(16, generator=...manual_seed(1))"),
    "pixelcnn++": ("05_pixelcnnpp", scrubber_samples(8, 0), "viz.SamplingScrubber(model, n=8, ...manual_seed(0))"),
    "pixelsnail": ("06_pixelsnail", scrubber_samples(8, 0), "viz.SamplingScrubber(model, n=8, ...manual_seed(0))"),
    "pixel-transformer": ("07_pixel_transformer", plain_samples(16, 1), "model.sample(16, generator=...manual_seed(1))"),
}


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def make(name: str, folder: Path = HERE, load: str = "") -> dict:
    """Draw NAME's reference samples, save NN_lesson_default.png (8 per row, 4x enlarged) and its record."""
    lesson, draw, call = LESSONS[name]
    torch.set_num_threads(1)
    record = pretrained.record(name)  # checks the checksums first
    model = pretrained.load(name, device="cpu")
    load_before, start, cpu = load_average(), time.perf_counter(), time.process_time()
    with torch.no_grad():
        samples = draw(model)  # (n, C, H, W) integers in [0, levels)
    sample_cpu_s, sample_wall_s = time.process_time() - cpu, time.perf_counter() - start
    grid = viz.make_grid(samples.float() / (model.levels - 1), nrow=8)  # (H', W') or (H', W', C) in [0, 1]
    grid = grid.repeat(4, axis=0).repeat(4, axis=1)  # 4x larger, to be seen
    image = f"{lesson}_default.png"
    with atomic_write(folder / image) as f:
        matplotlib.image.imsave(f, grid, cmap="gray", vmin=0, vmax=1, format="png")
    d = record["data"]
    reference = {
        "lesson": f"solutions/{lesson}.ipynb",
        "budget": "default",
        "image": image,
        "command": f"python data/reference/make.py {name}",
        "source": f"the pretrained checkpoint data/pretrained/{name}.pt, trained by `{record['command']}`",
        "sampling": f"as the lesson: {call}, on the CPU, one thread",
        "samples": len(samples),
        "steps": record["steps"],
        "batch_size": record["batch_size"],
        "lr": record["lr"],
        "test_bits_per_dim": round(record["test_bpd"], 3),
        "test_images": record["test_images"],
        "cpu_seconds": record["train_cpu_s"],  # the checkpoint's training (time.process_time, one thread)
        "wall_seconds": None,  # the checkpoint's record keeps CPU time only
        "load": load or f"a shared 2-core VM; load average {load_before} when the samples were drawn",
        "threads": record["threads"],
        "data": d.get("train_source", d["dataset"]).split(" from ")[0],  # e.g. "full Fashion-MNIST (train: 60000 images)"
        "size": f"{d['size']}x{d['size']}, {d['levels']} levels",
        "sample_cpu_seconds": round(sample_cpu_s, 1),
        "sample_wall_seconds": round(sample_wall_s, 1),
        "machine": "2-core Linux VM shared with other jobs, no GPU",
        "made": date.today().isoformat(),
    }
    with atomic_write(folder / f"{lesson}_default.json", "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    return reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"checkpoints: {', '.join(LESSONS)}")
    parser.add_argument("--all", action="store_true", help="every lesson whose checkpoint is here")
    parser.add_argument("--load", default="", help="the machine's load while the checkpoint trained (the record's words)")
    args = parser.parse_args(argv)
    names = [n for n in LESSONS if pretrained.available(n)] if args.all else args.names
    unknown = [n for n in names if n not in LESSONS]
    if unknown or not names:
        parser.error(f"name one or more of {', '.join(LESSONS)} (or --all); got {unknown or 'nothing'}")
    for name in names:
        ref = make(name, load=args.load)
        print(f"{ref['image']}: {ref['samples']} samples, {ref['steps']} steps, test bits/dim "
              f"{ref['test_bits_per_dim']} on {ref['test_images']} images, trained in {ref['cpu_seconds']:.0f} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
