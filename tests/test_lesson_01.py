"""Lesson 01's FVSBN exercise: the check accepts a right FVSBN and names what is wrong with wrong ones.

The check's comparison (`same_fvsbn`) and the model solution are read from the lesson itself, so this
test drives exactly the check a learner meets."""
import ast
import json
import re

import pytest
import torch

from armini import course, pretrained
from armini.causality import check_causality
from armini.models import FVSBN, NADE, ARModel
from armini.nn import MaskedLinear, sequence_mask

LESSON = course.ROOT / "solutions" / "01_factorisation.ipynb"
CASES = [((1, 3, 3), 2), ((2, 2, 2), 3)]  # as in the lesson: one channel with K = 2, two channels with K = 3


def lesson_definitions(*names):
    """Execute the definitions `names` (functions, classes) found in the lesson's code cells."""
    nb = json.loads(LESSON.read_text())
    namespace = {"torch": torch, "check_causality": check_causality, "ARModel": ARModel,
                 "MaskedLinear": MaskedLinear, "sequence_mask": sequence_mask}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                exec(compile(ast.Module([node], []), str(LESSON), "exec"), namespace)
    missing = [name for name in names if name not in namespace]
    assert not missing, f"{LESSON.name} no longer defines {missing}"
    return [namespace[name] for name in names]


SAME_FVSBN, MY_FVSBN = lesson_definitions("same_fvsbn", "MyFVSBN")


class Written(ARModel):
    """A learner's FVSBN with switchable mistakes."""

    keep_diagonal = flat_order = no_softmax = unscaled = False
    layer = "linear"  # the masked layer's name

    def __init__(self, shape=(1, 28, 28), levels=2):
        super().__init__(shape, levels)
        D, K = self.dims, self.levels
        mask = sequence_mask(D, strict=not self.keep_diagonal)  # (D, D)
        setattr(self, self.layer, MaskedLinear(D, D * K, mask.repeat_interleave(K, dim=0)))

    def conditionals(self, x, y=None):
        B, D, K = x.shape[0], self.dims, self.levels
        order = torch.arange(D) if self.flat_order else self.generation_order()  # (D,)
        s = x.flatten(1)[:, order].float() / (1 if self.unscaled else K - 1)  # (B, D)
        logits = getattr(self, self.layer)(s).view(B, D, K)[:, torch.argsort(order)]  # (B, D, K)
        out = logits if self.no_softmax else torch.log_softmax(logits, dim=-1)
        return out.view(B, *self.shape, K)


def run_check(candidate, capsys):
    result = course.check("FVSBN", candidate, FVSBN, cases=CASES, compare=SAME_FVSBN)
    return result, capsys.readouterr().out


def test_the_lessons_solution_and_a_careful_learners_version_pass(capsys):
    for candidate in (MY_FVSBN, Written):
        result, out = run_check(candidate, capsys)
        assert result is candidate and out.startswith("✅ FVSBN: correct on 2 checks"), out


@pytest.mark.parametrize("mistake, case, message", [
    ("keep_diagonal", 1, "not causal: (0, 0, 0) moves when (0, 0, 0) changes: the dimension itself"),
    ("flat_order", 2, "not causal: (1, 0, 0) moves when"),  # channel 1 read channel 0 of later pixels
    ("no_softmax", 1, "p(x) over all 512 images sums to"),
    ("unscaled", 2, "with armini's weights, log-probabilities differ from FVSBN's"),  # x in [0, 2], not [0, 1]
])
def test_wrong_fvsbns_are_named_and_the_lesson_carries_on_with_armini(mistake, case, message, capsys):
    wrong = type(mistake, (Written,), {mistake: True})
    result, out = run_check(wrong, capsys)
    assert result is FVSBN, out
    assert out.startswith(f"❌ FVSBN: case {case} of 2") and message in out, out


def test_an_unfinished_exercise_falls_back_without_a_fuss(capsys):
    class Unfinished(ARModel):
        def __init__(self, shape=(1, 28, 28), levels=2):
            super().__init__(shape, levels)
            raise NotImplementedError("Exercise: FVSBN")

    result, out = run_check(Unfinished, capsys)
    assert result is FVSBN and out.startswith("⏭ FVSBN: not done yet"), out



def test_a_model_armini_cannot_give_its_weights_is_told_what_to_name_the_layer(capsys):
    result, out = run_check(type("other_name", (Written,), {"layer": "masked"}), capsys)
    assert result is FVSBN, out
    assert ("❌ FVSBN: case 1 of 2" in out and "make self.linear a MaskedLinear(D, D * K, mask)" in out
            and 'Missing key(s) in state_dict: "masked.weight"' in out), out


# ----------------------------------------------------------------------------- the pretrained switch (NADE)


def nade_cell(folder: str) -> str:
    """The code cell of `folder`/01_factorisation.ipynb that loads the NADE checkpoint (the training cell)."""
    cells = json.loads((course.ROOT / folder / LESSON.name).read_text())["cells"]
    found = ["".join(c["source"]) for c in cells
             if c["cell_type"] == "code" and 'pretrained.load("nade"' in "".join(c["source"])]
    assert len(found) == 1, f"{folder}/{LESSON.name}: {len(found)} cells load the checkpoint 'nade', not 1"
    return found[0]


def lesson_nade_settings(cell: str) -> dict:
    """What the training cell gives NADE: default steps, batch size, learning rate, hidden units."""
    found = dict(steps=re.search(r"steps = armini\.budget\(([\d_]+),", cell),
                 fit=re.search(r"fit\(models\[name\].*?batch_size=(\d+), lr=([\d.e-]+)", cell, re.S),
                 hidden=re.search(r'"NADE": NADE\(shape=binary_train\.shape, levels=2, hidden=(\d+)\)', cell))
    missing = [key for key, match in found.items() if match is None]
    assert not missing, f"lesson 01's training cell no longer shows {missing} where this test reads them"
    return dict(steps=int(found["steps"].group(1)), batch_size=int(found["fit"].group(1)),
                lr=float(found["fit"].group(2)), hidden=int(found["hidden"].group(1)))


@pytest.mark.parametrize("folder", ["solutions", "notebooks"])
def test_training_cell_has_the_pretrained_switch(folder):
    cell = nade_cell(folder)
    assert 'PRETRAINED = armini.env_flag("ARMINI_PRETRAINED")' in cell
    assert re.search(r'^if PRETRAINED:\n    models\["NADE"\] = pretrained\.load\("nade"', cell, re.M), \
        "the load must sit under `if PRETRAINED:` and replace the lesson's NADE"


def test_nade_recipe_is_the_lessons_default_budget():
    lesson = lesson_nade_settings(nade_cell("solutions"))
    recipe = pretrained.RECIPES["nade"]
    assert recipe.lesson == "01_factorisation"
    assert (recipe.steps, recipe.batch_size, recipe.lr, recipe.kwargs, recipe.data["levels"]) == (
        lesson["steps"], lesson["batch_size"], lesson["lr"], dict(hidden=lesson["hidden"]), 2), (
        f"the nade recipe ({recipe.steps} steps, batch {recipe.batch_size}, lr {recipe.lr}, {recipe.kwargs}) "
        f"is not lesson 01's {lesson}")


def test_shipped_nade_checkpoint_holds_the_lessons_model():
    if not pretrained.available("nade"):
        pytest.skip("no checkpoint nade here (python -m armini pretrained train nade)")
    lesson = lesson_nade_settings(nade_cell("solutions"))
    assert pretrained.mismatches("nade", NADE(shape=(1, 28, 28), levels=2, hidden=lesson["hidden"])) == []
    record = pretrained.record("nade")
    assert (record["steps"], record["batch_size"], record["lr"]) == (lesson["steps"], lesson["batch_size"], lesson["lr"])


def test_a_nade_the_lesson_does_not_build_is_told_apart():
    """The comparison above can fail: other hidden units or other levels are named."""
    if not pretrained.available("nade"):
        pytest.skip("no checkpoint nade here (python -m armini pretrained train nade)")
    assert any("hidden" in line for line in pretrained.mismatches("nade", NADE(shape=(1, 28, 28), levels=2, hidden=32)))
    assert any("levels" in line for line in pretrained.mismatches("nade", NADE(shape=(1, 28, 28), levels=4, hidden=64)))


def test_lesson_settings_are_read_from_the_cell():
    cell = ('"NADE": NADE(shape=binary_train.shape, levels=2, hidden=64),\nsteps = armini.budget(1500, 60)\n'
            "histories[name] = fit(models[name], binary_train, binary_test, steps=steps, batch_size=64, lr=3e-3,\n")
    assert lesson_nade_settings(cell) == dict(steps=1500, batch_size=64, lr=3e-3, hidden=64)
    with pytest.raises(AssertionError, match="steps"):
        lesson_nade_settings(cell.replace("armini.budget(1500, 60)", "1500"))
