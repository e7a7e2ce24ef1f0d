"""Lessons 02-07 load the course's pretrained checkpoint (ARMINI_PRETRAINED=1) of exactly the model they train:
the training cell has the switch, the checkpoint's recipe uses the lesson's default steps, batch size and learning
rate, and a shipped checkpoint holds the model the lesson builds (shape, levels, every setting). No notebook runs."""
import json
import re
from pathlib import Path

import pytest

from armini import bench, pretrained
from armini.models import DiagonalBiLSTM, GatedPixelCNN, PixelCNN, PixelCNNpp, PixelSNAIL, PixelTransformer

ROOT = Path(__file__).resolve().parent.parent
FMNIST, FMNIST14 = dict(shape=(1, 28, 28), levels=256), dict(shape=(1, 14, 14), levels=256)  # data.load's shapes
# checkpoint -> (lesson, its main model as the lesson builds it, batch size, learning rate)
LESSONS = {
    "pixelcnn": ("02_pixelcnn", lambda: PixelCNN(**FMNIST), 32, 2e-3),
    "diagonal-bilstm": ("03_pixelrnn", lambda: DiagonalBiLSTM(**FMNIST), 32, 2e-3),
    "gated-pixelcnn": ("04_gated_pixelcnn", lambda: GatedPixelCNN(**FMNIST), 32, 2e-3),
    "pixelcnn++": ("05_pixelcnnpp", lambda: PixelCNNpp(**FMNIST), bench.BATCH["pixelcnn++"], bench.LR["pixelcnn++"]),
    "pixelsnail": ("06_pixelsnail", lambda: PixelSNAIL(**FMNIST), 32, 2e-3),
    "pixel-transformer": ("07_pixel_transformer", lambda: PixelTransformer(**FMNIST14), 32, 2e-3),
}


def training_cell(folder: str, lesson: str, name: str) -> str:
    """The code cell of `folder/lesson.ipynb` that loads checkpoint `name`."""
    cells = json.loads((ROOT / folder / f"{lesson}.ipynb").read_text())["cells"]
    found = ["".join(c["source"]) for c in cells
             if c["cell_type"] == "code" and f'pretrained.load("{name}"' in "".join(c["source"])]
    assert len(found) == 1, f"{folder}/{lesson}.ipynb: {len(found)} cells load the checkpoint {name!r}, not 1"
    return found[0]


def default_steps(cell: str) -> int:
    """N in the cell's `steps = armini.budget(N, quick)`: the default budget."""
    match = re.search(r"steps = armini\.budget\(([\d_]+),", cell)
    assert match, "no `steps = armini.budget(N, ...)` in the training cell"
    return int(match.group(1))


@pytest.mark.parametrize("folder", ["solutions", "notebooks"])
@pytest.mark.parametrize("name", LESSONS)
def test_training_cell_has_the_pretrained_switch(folder, name):
    cell = training_cell(folder, LESSONS[name][0], name)
    assert 'PRETRAINED = armini.env_flag("ARMINI_PRETRAINED")' in cell
    assert re.search(r"^if PRETRAINED:", cell, re.M), "the load must sit under `if PRETRAINED:`"


@pytest.mark.parametrize("name", LESSONS)
def test_recipe_is_the_lessons_default_budget(name):
    lesson, _, batch_size, lr = LESSONS[name]
    recipe = pretrained.RECIPES[name]
    steps = default_steps(training_cell("solutions", lesson, name))
    assert (recipe.lesson, recipe.steps, recipe.batch_size, recipe.lr) == (lesson, steps, batch_size, lr), (
        f"{name}: the checkpoint recipe trains {recipe.steps} steps at batch {recipe.batch_size}, lr {recipe.lr}; "
        f"lesson {lesson} trains {steps} steps at batch {batch_size}, lr {lr}")


@pytest.mark.parametrize("name", LESSONS)
def test_shipped_checkpoint_holds_the_lessons_model(name):
    if not pretrained.available(name):
        pytest.skip(f"no checkpoint {name} here (python -m armini pretrained train {name})")
    lesson, build, batch_size, lr = LESSONS[name]
    assert pretrained.mismatches(name, build()) == []
    record = pretrained.record(name)
    steps = default_steps(training_cell("solutions", lesson, name))
    assert (record["steps"], record["batch_size"], record["lr"]) == (steps, batch_size, lr), (
        f"data/pretrained/{name}.json was trained for {record['steps']} steps at batch {record['batch_size']}, "
        f"lr {record['lr']}; lesson {lesson} trains {steps} steps at batch {batch_size}, lr {lr}: retrain it")


def test_default_steps_reads_the_default_not_the_quick_budget():
    assert default_steps("steps = armini.budget(900, 30)  # quick mode: 30 steps") == 900
    with pytest.raises(AssertionError):
        default_steps("steps = 900")
