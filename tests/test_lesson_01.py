"""Lesson 01's FVSBN exercise: the check accepts a right FVSBN and names what is wrong with wrong ones.

The check's comparison (`same_fvsbn`) and the model solution are read from the lesson itself, so this
test drives exactly the check a learner meets."""
import ast
import json

import pytest
import torch

from armini import course
from armini.causality import check_causality
from armini.models import FVSBN, ARModel
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
