"""data/reference/: every reference image has its record, the image loads, and the lessons show files that exist."""
import json
import re
from pathlib import Path

import matplotlib.image
import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "data" / "reference"
# what a lesson's reference cell prints, and how the run was made (README.md in data/reference/ says more)
REQUIRED = {"lesson", "budget", "image", "command", "steps", "batch_size", "test_bits_per_dim", "cpu_seconds",
            "wall_seconds", "load", "threads", "data", "made"}
LESSONS_WITH_REFERENCES = ["02_pixelcnn.ipynb", "04_gated_pixelcnn.ipynb"]


def record_problems(png: Path) -> list:
    """What is wrong with the reference image `png` and the JSON record beside it (empty: nothing)."""
    record_path = png.with_suffix(".json")
    if not record_path.exists():
        return [f"{png.name} has no record {record_path.name}"]
    record = json.loads(record_path.read_text())
    problems = [f"{record_path.name} lacks {key!r}" for key in sorted(REQUIRED - record.keys())]
    if problems:
        return problems
    if record["image"] != png.name:
        problems.append(f"{record_path.name} names image {record['image']!r}, not {png.name!r}")
    if not (record["steps"] > 0 and record["cpu_seconds"] > 0 and record["wall_seconds"] > 0):
        problems.append(f"{record_path.name}: steps, cpu_seconds and wall_seconds must be positive")
    if not 0 < record["test_bits_per_dim"] < 8:  # 8 bits/dim is a uniform guess over 256 values
        problems.append(f"{record_path.name}: test bits/dim {record['test_bits_per_dim']} is not in (0, 8)")
    image = matplotlib.image.imread(png)  # (H, W) or (H, W, channels)
    if not (56 <= image.shape[0] <= 4000 and 56 <= image.shape[1] <= 4000):
        problems.append(f"{png.name} is {image.shape[1]}x{image.shape[0]} pixels: not a readable sample grid")
    return problems


def test_reference_folder_holds_images():
    assert sorted(REFERENCE.glob("*.png")), f"no reference images in {REFERENCE}"


@pytest.mark.parametrize("png", sorted(REFERENCE.glob("*.png")), ids=lambda p: p.name)
def test_every_reference_image_has_a_complete_record_and_loads(png):
    assert record_problems(png) == []


@pytest.mark.parametrize("record", sorted(REFERENCE.glob("*.json")), ids=lambda p: p.name)
def test_every_record_has_its_image(record):
    assert record.with_suffix(".png").exists(), f"{record.name} has no image {record.with_suffix('.png').name}"


def test_a_broken_record_is_found(tmp_path):
    """The checker can fail: a record without its figures, and an image without a record."""
    png = tmp_path / "lesson.png"
    matplotlib.image.imsave(png, [[0.0] * 100] * 100, cmap="gray")
    assert record_problems(png) == ["lesson.png has no record lesson.json"]
    (tmp_path / "lesson.json").write_text(json.dumps({"lesson": "x", "image": "lesson.png"}))
    assert "lesson.json lacks 'cpu_seconds'" in record_problems(png)


def referenced_files(notebook: Path) -> list:
    """The data/reference/ files a lesson's code cells open: `reference / "NAME"` (NAME.json names its image)."""
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return re.findall(r'reference / "([^"]+)"', code)


@pytest.mark.parametrize("folder", ["solutions", "notebooks"])
@pytest.mark.parametrize("lesson", LESSONS_WITH_REFERENCES)
def test_lessons_show_reference_files_that_exist(folder, lesson):
    names = referenced_files(ROOT / folder / lesson)
    assert names, f"{folder}/{lesson} shows no reference image"
    for name in names:
        assert (REFERENCE / name).exists(), f"{folder}/{lesson} opens data/reference/{name}, which does not exist"
        if name.endswith(".json"):
            image = json.loads((REFERENCE / name).read_text())["image"]
            assert (REFERENCE / image).exists(), f"data/reference/{name} names {image}, which does not exist"
