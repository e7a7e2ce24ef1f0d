"""data/reference/: every reference image has its record, the image loads, the lessons show files that exist,
every reference is shown by its lesson, and data/reference/make.py writes complete records."""
import importlib.util
import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from armini import viz

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "data" / "reference"
# what a lesson's reference cell prints, and how the run was made (README.md in data/reference/ says more)
REQUIRED = {"lesson", "budget", "image", "command", "steps", "batch_size", "test_bits_per_dim", "test_images",
            "cpu_seconds", "load", "threads", "data", "made"}
# a picture of several checkpoints (lesson 08) keeps each one's training figures in `models`, one per row
RUN_FIGURES = {"steps", "batch_size", "test_bits_per_dim", "test_images", "cpu_seconds"}
LESSONS = sorted(p.name for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))


def record_problems(png: Path) -> list:
    """What is wrong with the reference image `png` and the JSON record beside it (empty: nothing)."""
    record_path = png.with_suffix(".json")
    if not record_path.exists():
        return [f"{png.name} has no record {record_path.name}"]
    record = json.loads(record_path.read_text())
    runs = record.get("models", [record])  # one run, or one per row of a several-checkpoint picture
    required = REQUIRED - RUN_FIGURES if "models" in record else REQUIRED
    problems = [f"{record_path.name} lacks {key!r}" for key in sorted(required - record.keys())]
    if "models" in record:
        if not runs or len(runs) != len(record.get("rows", [])):
            problems.append(f"{record_path.name}: {len(runs)} models for {len(record.get('rows', []))} rows")
        problems += [f"{record_path.name}: models[{k}] lacks {key!r}" for k, run in enumerate(runs)
                     for key in sorted((RUN_FIGURES | {"model"}) - run.keys())]
    if problems:
        return problems
    if record["image"] != png.name:
        problems.append(f"{record_path.name} names image {record['image']!r}, not {png.name!r}")
    for run in runs:
        name = f"{record_path.name}" + (f" ({run['model']})" if "models" in record else "")
        if not (run["steps"] > 0 and run["cpu_seconds"] > 0 and run["test_images"] > 0):
            problems.append(f"{name}: steps, cpu_seconds and test_images must be positive")
        if not 0 < run["test_bits_per_dim"] < 8:  # 8 bits/dim is a uniform guess over 256 values
            problems.append(f"{name}: test bits/dim {run['test_bits_per_dim']} is not in (0, 8)")
    image = matplotlib.image.imread(png)  # (H, W) or (H, W, channels)
    if not (56 <= image.shape[0] <= 4000 and 56 <= image.shape[1] <= 4000):
        problems.append(f"{png.name} is {image.shape[1]}x{image.shape[0]} pixels: not a readable sample grid")
    return problems


def test_reference_folder_holds_images():
    assert sorted(REFERENCE.glob("*.png")), f"no reference images in {REFERENCE}"


@pytest.mark.parametrize("png", sorted(REFERENCE.glob("*.png")), ids=lambda p: p.name)
def test_every_reference_image_has_a_complete_record_and_loads(png):
    assert record_problems(png) == []


@pytest.mark.parametrize("record", sorted(REFERENCE.glob("[0-9]*.json")), ids=lambda p: p.name)
def test_every_record_has_its_image(record):
    assert record.with_suffix(".png").exists(), f"{record.name} has no image {record.with_suffix('.png').name}"


def test_a_broken_record_is_found(tmp_path):
    """The checker can fail: a record without its figures, and an image without a record."""
    png = tmp_path / "lesson.png"
    matplotlib.image.imsave(png, [[0.0] * 100] * 100, cmap="gray")
    assert record_problems(png) == ["lesson.png has no record lesson.json"]
    (tmp_path / "lesson.json").write_text(json.dumps({"lesson": "x", "image": "lesson.png"}))
    assert "lesson.json lacks 'cpu_seconds'" in record_problems(png)
    several = {key: "x" for key in REQUIRED - RUN_FIGURES} | {"image": "lesson.png", "rows": ["a", "b"],
                                                            "models": [{"model": "a", "steps": 1}]}
    (tmp_path / "lesson.json").write_text(json.dumps(several))
    assert record_problems(png) == ["lesson.json: 1 models for 2 rows"] + [
        f"lesson.json: models[0] lacks {key!r}" for key in sorted(RUN_FIGURES - {"steps"})]


def referenced_files(notebook: Path) -> list:
    """The data/reference/ files a lesson's code cells open: `reference / "NAME"` (NAME.json names its image)."""
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return re.findall(r'reference / "([^"]+)"', code)


@pytest.mark.parametrize("folder", ["solutions", "notebooks"])
@pytest.mark.parametrize("lesson", LESSONS)
def test_lessons_show_reference_files_that_exist(folder, lesson):
    if not (ROOT / folder / lesson).exists():
        pytest.skip(f"{folder}/{lesson} is not built yet (python -m armini.course build)")
    for name in referenced_files(ROOT / folder / lesson):
        assert (REFERENCE / name).exists(), f"{folder}/{lesson} opens data/reference/{name}, which does not exist"
        if name.endswith(".json"):
            image = json.loads((REFERENCE / name).read_text())["image"]
            assert (REFERENCE / image).exists(), f"data/reference/{name} names {image}, which does not exist"


@pytest.mark.parametrize("folder", ["solutions", "notebooks"])
@pytest.mark.parametrize("record", sorted(REFERENCE.glob("[0-9]*.json")), ids=lambda p: p.name)
def test_every_reference_is_shown_by_its_lesson(folder, record):
    lesson = Path(json.loads(record.read_text())["lesson"]).name
    assert record.name in referenced_files(ROOT / folder / lesson), f"{folder}/{lesson} does not show {record.name}"


def load_make():
    spec = importlib.util.spec_from_file_location("make_reference", REFERENCE / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_writes_a_complete_record_from_a_checkpoint(tmp_path, monkeypatch):
    """make.py draws the lesson's samples from the checkpoint and copies its training figures into the record."""
    from armini.models import PixelCNN

    make = load_make()
    torch.manual_seed(0)
    tiny = PixelCNN(shape=(1, 8, 8), levels=4, channels=6, n_blocks=1, head_channels=6).eval()
    record = {"command": "python -m armini pretrained train pixelcnn", "steps": 900, "batch_size": 32, "lr": 2e-3,
              "test_bpd": 3.0512, "test_images": 1000, "train_cpu_s": 431.5, "threads": 1,
              "data": {"dataset": "fashion-mnist", "size": 28, "levels": 256, "train_source": "full"}}
    monkeypatch.setattr(make.pretrained, "record", lambda name: record)
    monkeypatch.setattr(make.pretrained, "load", lambda name, device=None: tiny)
    written = make.make("pixelcnn", folder=tmp_path)
    png = tmp_path / "02_pixelcnn_default.png"
    assert record_problems(png) == []
    assert written["test_bits_per_dim"] == 3.051 and written["cpu_seconds"] == 431.5 and written["samples"] == 16
    same = tiny.sample(16, generator=torch.Generator().manual_seed(1))  # the lesson's own sampling call
    grid = viz.make_grid(same.float() / 3, nrow=8).repeat(4, axis=0).repeat(4, axis=1)  # (76, 292): 2 rows of 8
    saved = matplotlib.image.imread(png)[..., 0]  # the gray image's red channel
    assert saved.shape == grid.shape and np.abs(saved - grid).max() < 0.01, "the image is not the lesson's samples"


def tiny_record(name, lesson, levels=256, size=8):
    return {"command": f"python -m armini pretrained train {name}", "lesson": lesson, "steps": 100, "batch_size": 32,
            "lr": 2e-3, "test_bpd": 3.5, "test_images": 1000, "train_cpu_s": 60.0, "threads": 1,
            "data": {"dataset": "fashion-mnist", "size": size, "levels": levels, "train_source": "full"}}


def test_make_draws_lesson_01s_binary_nade_samples(tmp_path, monkeypatch):
    from armini.models import NADE

    make = load_make()
    torch.manual_seed(0)
    tiny = NADE(shape=(1, 6, 6), levels=2, hidden=4).eval()
    monkeypatch.setattr(make.pretrained, "record", lambda name: tiny_record(name, "01_factorisation", levels=2))
    monkeypatch.setattr(make.pretrained, "load", lambda name, device=None: tiny)
    written = make.make("nade", folder=tmp_path)
    assert written["lesson"] == "solutions/01_factorisation.ipynb" and written["samples"] == 16
    saved = matplotlib.image.imread(tmp_path / "01_factorisation_default.png")[..., 0]
    same = tiny.sample(16, generator=torch.Generator().manual_seed(1)).float()  # lesson 01's call, values 0 or 1
    grid = viz.make_grid(same, nrow=8).repeat(4, axis=0).repeat(4, axis=1)
    assert saved.shape == grid.shape and np.abs(saved - grid).max() < 0.01


def test_make_leaderboard_puts_one_checkpoint_per_row_with_its_figures(tmp_path, monkeypatch):
    """Lesson 08's picture: a row per checkpoint here, the same seed in every row, a 14x14 model enlarged to 28x28."""
    from armini.models import PixelCNN

    make = load_make()
    torch.manual_seed(0)
    models = {"pixelcnn": PixelCNN(shape=(1, 28, 28), levels=4, channels=6, n_blocks=1, head_channels=6).eval(),
              "pixel-transformer": PixelCNN(shape=(1, 14, 14), levels=4, channels=6, n_blocks=1, head_channels=6).eval()}
    monkeypatch.setattr(make.pretrained, "available", lambda name: name in models)
    monkeypatch.setattr(make.pretrained, "record", lambda name: tiny_record(name, "02_pixelcnn", levels=4))
    monkeypatch.setattr(make.pretrained, "load", lambda name, device=None: models[name])
    written = make.make("leaderboard", folder=tmp_path)
    png = tmp_path / "08_leaderboard_default.png"
    assert record_problems(png) == []
    assert written["rows"] == ["pixelcnn", "pixel-transformer"] and written["samples"] == 16
    assert [m["shown"] for m in written["models"]] == ["as drawn", "enlarged 2x"]
    saved = matplotlib.image.imread(png)[..., 0]  # (2 rows of 29 px + 1) x 4
    assert saved.shape == ((2 * 29 + 1) * 4, (8 * 29 + 1) * 4)
    small = models["pixel-transformer"].sample(8, generator=torch.Generator().manual_seed(0)).float() / 3
    row = viz.make_grid(small.repeat_interleave(2, -2).repeat_interleave(2, -1), nrow=8)[1:30]  # (29, W) row 2's tiles
    assert np.abs(saved[::4, ::4][30:59] - row).max() < 0.01, "row 2 is not the enlarged 14x14 samples"


def test_lmconv_reference_keeps_the_observed_pixels_and_shows_the_originals():
    """Lesson 09's completions: rows input / completion / original for the left half, then for the centre."""
    from armini import data
    from armini.models import LMConv

    make = load_make()
    torch.manual_seed(0)
    tiny = LMConv(shape=(1, 14, 14), levels=256, nr_filters=4, nr_resnet=1, n_stages=1, nr_mix=1).eval()
    with torch.no_grad():
        rows = make.LESSONS["lmconv"].draw(tiny).view(6, 4, 1, 14, 14)
    x = data.load("fashion-mnist", "test", size=14).images[10:14]
    assert torch.equal(rows[2], x) and torch.equal(rows[5], x)
    assert torch.equal(rows[1][..., :7], x[..., :7]), "the left half's completion changed observed pixels"
    border = torch.ones(14, 14, dtype=torch.bool)
    border[4:11, 4:11] = False
    assert torch.equal(rows[4][..., border], x[..., border]), "the centre's completion changed observed pixels"
    assert (rows[3][..., ~border] == 128).all() and (rows[0][..., 7:] == 128).all(), "missing pixels are not grey"
