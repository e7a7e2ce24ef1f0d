"""Tests for armini.course: the notebook build, the repository's notebooks, and the exercise checks."""
import os
import re
import subprocess
import sys

import nbformat
import pytest
import torch

from armini import course

# ---------------------------------------------------------------------------------------------
# The build, on a small synthetic solutions notebook

SOLVED = '''# Exercise: mask A
def mask_a(k):
    """A k x k causal mask."""
    ### BEGIN SOLUTION
    return torch.ones(k, k).tril()
    ### END SOLUTION


class Layer:
    def forward(self, x):
        if x is not None:
            ### BEGIN SOLUTION
            return x * 2
            ### END SOLUTION
        return x
'''


def make_solutions(root, cells, name="01_intro.ipynb"):
    """Write a solutions notebook with `cells` (and an empty notebooks/) under `root`; return its path."""
    (root / "solutions").mkdir(exist_ok=True)
    (root / "notebooks").mkdir(exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["kernelspec"] = {"name": "some-env", "display_name": "Some env", "language": "python"}
    path = root / "solutions" / name
    nbformat.write(nb, path)
    return path


def code(source, text="out\n", count=3):
    cell = nbformat.v4.new_code_cell(source, execution_count=count)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    cell.metadata["ExecuteTime"] = {"end_time": "2024-01-01"}
    return cell


def built(root, name="01_intro.ipynb"):
    return nbformat.read(root / "notebooks" / name, as_version=4)


def test_build_replaces_regions_and_keeps_indentation(tmp_path):
    make_solutions(tmp_path, [code(SOLVED), code("print(1)")])
    assert course.build(tmp_path) == [tmp_path / "notebooks" / "01_intro.ipynb"]
    source = built(tmp_path).cells[0].source
    assert "BEGIN SOLUTION" not in source and "END SOLUTION" not in source
    assert "tril" not in source and "x * 2" not in source
    assert '    # YOUR CODE HERE\n    raise NotImplementedError("Exercise: mask A")\n' in source
    assert '            # YOUR CODE HERE\n            raise NotImplementedError("Exercise: mask A")\n' in source
    assert '"""A k x k causal mask."""' in source and "        return x\n" in source
    namespace = {}
    exec(source, namespace)  # the student version still runs: defining the functions does not raise
    with pytest.raises(NotImplementedError, match="Exercise: mask A"):
        namespace["mask_a"](3)


def test_build_default_exercise_name_and_markdown(tmp_path):
    make_solutions(tmp_path, [
        code("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"),
        nbformat.v4.new_markdown_cell("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION\nDone."),
    ])
    course.build(tmp_path)
    cells = built(tmp_path).cells
    assert cells[0].source == 'def f():\n    # YOUR CODE HERE\n    raise NotImplementedError("Exercise: fill this in")\n'
    assert cells[1].source == "Why?\nYOUR ANSWER HERE\nDone."


def test_build_strips_outputs_but_keeps_marked_cells(tmp_path):
    make_solutions(tmp_path, [code("print(1)"), code("# KEEP_OUTPUT\nprint(2)", text="reference\n", count=7)])
    course.build(tmp_path)
    nb = built(tmp_path)
    assert nb.cells[0].outputs == [] and nb.cells[0].execution_count is None
    assert nb.cells[1].outputs[0].text == "reference\n" and nb.cells[1].execution_count == 7
    assert nb.metadata == {"kernelspec": course.KERNELSPEC, "language_info": {"name": "python"}}
    assert all(cell.metadata == {} for cell in nb.cells)


def test_build_is_idempotent_and_deterministic(tmp_path):
    make_solutions(tmp_path, [code(SOLVED), nbformat.v4.new_markdown_cell("# Title")])
    assert len(course.build(tmp_path)) == 1
    first = (tmp_path / "notebooks" / "01_intro.ipynb").read_bytes()
    assert course.build(tmp_path) == []  # nothing changed the second time
    assert (tmp_path / "notebooks" / "01_intro.ipynb").read_bytes() == first
    assert first.endswith(b"}\n") and b'\n "cells": [\n' in first  # indent 1, trailing newline
    assert course.problems(tmp_path) == ["solutions/01_intro.ipynb: outputs in cells [0] "
                                         "(run python -m armini.course clean)"]


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "top level"),
    ("class A:\n    ### BEGIN SOLUTION\n    x = 1\n    ### END SOLUTION\n", "not inside a function"),
    ("for i in range(3):\n    ### BEGIN SOLUTION\n    x = i\n    ### END SOLUTION\n", "not inside a function"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without a"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n", "cannot nest"),
], ids=["top-level", "class-body", "loop", "unclosed", "unopened", "nested"])
def test_bad_regions_raise_naming_notebook_and_cell(tmp_path, source, message):
    make_solutions(tmp_path, [code("import torch"), code(source)], name="02_bad.ipynb")
    with pytest.raises(course.SolutionError, match=message) as error:
        course.build(tmp_path)
    assert "02_bad.ipynb, cell 1" in str(error.value)
    assert course.main(["check", "--root", str(tmp_path)]) == 1


def test_clean_and_cli(tmp_path, capsys):
    path = make_solutions(tmp_path, [code(SOLVED), code("# KEEP_OUTPUT\n1", count=2)])
    assert course.main(["check", "--root", str(tmp_path)]) == 1
    assert "outputs in cells [0]" in capsys.readouterr().out
    assert course.main(["clean", "--root", str(tmp_path)]) == 0
    assert "cleaned solutions/01_intro.ipynb" in capsys.readouterr().out
    assert course.clean(path) is False  # already clean
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].outputs == [] and "### BEGIN SOLUTION" in nb.cells[0].source  # solutions keep answers
    assert nb.cells[1].outputs and nb.cells[1].execution_count == 2
    assert course.main(["build", "--root", str(tmp_path)]) == 0
    assert "wrote notebooks/01_intro.ipynb" in capsys.readouterr().out
    assert course.main(["check", "--root", str(tmp_path)]) == 0
    (tmp_path / "notebooks" / "01_intro.ipynb").write_text("{}")
    assert course.problems(tmp_path) == ["notebooks/01_intro.ipynb: out of sync with solutions/01_intro.ipynb "
                                         "(run python -m armini.course build)"]


def test_check_cells_keep_reference_outputs_and_unrecorded_ones_are_flagged(tmp_path):
    make_solutions(tmp_path, [code("# NBVAL_CHECK_OUTPUT\nprint(2)", text="2\n", count=4),
                              code("# NBVAL_CHECK_OUTPUT\nprint(3)", count=None)])
    nb = nbformat.read(tmp_path / "solutions" / "01_intro.ipynb", as_version=4)
    nb.cells[1].outputs = []
    nbformat.write(nb, tmp_path / "solutions" / "01_intro.ipynb")
    course.build(tmp_path)
    cells = built(tmp_path).cells
    assert cells[0].outputs[0].text == "2\n" and cells[0].execution_count == 4  # the learner's copy too
    assert course.problems(tmp_path) == [
        "solutions/01_intro.ipynb: # NBVAL_CHECK_OUTPUT cells [1] have no reference output "
        "(run python -m armini.course record solutions/01_intro.ipynb)"]


def run_nbval(path):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", str(path)], cwd=path.parent, capture_output=True, text=True)


def test_record_stores_check_outputs_that_nbval_then_enforces(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ARMINI_QUICK", "0")  # record runs the kernel in quick mode whatever this process has
    path = make_solutions(tmp_path, [
        code("import os\nx = 6 * 7", text="stale\n"),
        code("# NBVAL_CHECK_OUTPUT\nprint('answer', x, os.environ['ARMINI_QUICK'])\nx", text="stale\n")])
    assert course.main(["record", str(path)]) == 0
    assert "check cells [1] changed" in capsys.readouterr().out
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].outputs == [] and nb.cells[0].execution_count is None and nb.cells[1].execution_count == 2
    assert [o.output_type for o in nb.cells[1].outputs] == ["stream", "execute_result"]
    assert nb.cells[1].outputs[0].text == "answer 42 1\n" and nb.cells[1].outputs[1].data["text/plain"] == "42"
    assert course.record(path) == []  # recording again changes nothing
    assert os.environ["ARMINI_QUICK"] == "0"  # this process's environment is left alone
    monkeypatch.setenv("ARMINI_QUICK", "1")  # nbval's kernel below reads it from here
    assert course.problems(tmp_path) == ["notebooks/01_intro.ipynb: missing (run python -m armini.course build)"]
    assert run_nbval(path).returncode == 0
    nb.cells[1].outputs[0].text = "answer 41 1\n"  # a reference the code no longer prints
    nbformat.write(nb, path)
    result = run_nbval(path)
    assert result.returncode == 1, result.stdout


def test_record_stops_on_a_failing_cell_and_writes_nothing(tmp_path, capsys):
    path = make_solutions(tmp_path, [code("1 / 0"), code("# NBVAL_CHECK_OUTPUT\nprint(1)", text="1\n")])
    before = path.read_bytes()
    assert course.main(["record", str(path)]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err and path.read_bytes() == before


def test_record_refuses_missing_notebooks(tmp_path, capsys):
    assert course.main(["record", str(tmp_path / "nope.ipynb"), "--root", str(tmp_path)]) == 1
    assert "nope.ipynb: no such notebook" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The repository's own lessons

SOLUTIONS = sorted((course.ROOT / "solutions").glob("*.ipynb"))
needs_lessons = pytest.mark.skipif(not SOLUTIONS, reason="no lessons in solutions/ yet")


def test_course_folders_exist():
    assert (course.ROOT / "solutions").is_dir() and (course.ROOT / "notebooks").is_dir()


@needs_lessons
@pytest.mark.parametrize("source", SOLUTIONS, ids=lambda path: path.name)
def test_lesson_notebook_is_built_from_solutions(source):
    assert re.fullmatch(r"\d{2}_[a-z0-9_]+\.ipynb", source.name), f"{source.name}: name it NN_topic.ipynb"
    nb = nbformat.read(source, as_version=4)
    leftovers = course._has_outputs(nb)  # outputs outside KEEP_OUTPUT and check cells
    assert not leftovers, f"solutions/{source.name} has outputs in cells {leftovers}: run python -m armini.course clean"
    unchecked = course._unrecorded(nb)  # check cells without a reference output
    assert not unchecked, (f"solutions/{source.name}: check cells {unchecked} have no reference output: "
                           f"run python -m armini.course record solutions/{source.name}")
    target = course.ROOT / "notebooks" / source.name
    assert target.exists(), f"notebooks/{source.name} is missing: run python -m armini.course build"
    expected = course.to_json(course.student_notebook(nb, source.name)).encode("utf-8")
    assert target.read_bytes() == expected, f"notebooks/{source.name} is out of sync: run python -m armini.course build"


def test_no_solution_leaks_or_orphans_in_notebooks():
    for target in sorted((course.ROOT / "notebooks").glob("*.ipynb")):
        text = target.read_text(encoding="utf-8")
        assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text, f"{target.name} leaks a solution"
        assert (course.ROOT / "solutions" / target.name).exists(), f"notebooks/{target.name} has no solutions source"


# ---------------------------------------------------------------------------------------------
# Exercise checks


def reference_mask(k):
    return torch.ones(k, k, dtype=torch.bool).tril()


def test_check_correct(capsys):
    def mask(k):
        return torch.tril(torch.ones(k, k)).bool()

    assert course.check("mask A", mask, reference_mask, cases=[(3,), {"k": 5}]) is mask
    assert capsys.readouterr().out == "✅ mask A: correct on 2 checks\n"


def test_check_not_done(capsys):
    def mask(k):
        # YOUR CODE HERE
        raise NotImplementedError("Exercise: mask A")

    assert course.check("mask A", mask, reference_mask, cases=[(3,)]) is reference_mask
    out = capsys.readouterr().out
    assert out.startswith("⏭ mask A: not done yet") and "reference version" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda k: torch.ones(k, k, dtype=torch.bool).triu(), "first at index (0, 1): expected False, got True"),
    (lambda k: torch.ones(k, k + 1, dtype=torch.bool), "expected shape (3, 3), got (3, 4)"),
    (lambda k: torch.ones(k, k).tril(), "expected dtype torch.bool, got torch.float32"),
    (lambda k: [[1]], "expected a tensor, got list"),
])
def test_check_wrong(capsys, wrong, hint):
    assert course.check("mask A", wrong, reference_mask, cases=[(3,), (5,)]) is reference_mask
    out = capsys.readouterr().out
    assert out.startswith("❌ mask A: case 1 of 2 (3)") and hint in out, out
    assert "continues" in out or "uses armini's reference" in out


def test_check_exception_is_reported_not_raised(capsys):
    def mask(k):
        return torch.ones(k)[k + 1]

    assert course.check("mask A", mask, reference_mask, cases=[(3,)]) is reference_mask
    out = capsys.readouterr().out
    assert "❌ mask A: case 1 of 1 (3) raised IndexError" in out and "of mask)" in out
    assert "Traceback" not in out


def test_check_compares_numbers_tuples_and_custom():
    def ref(x):
        return x.sum().item(), (x.shape[0], True)

    assert course.check("sum", lambda x: (float(x.sum()) + 1e-7, (x.shape[0], True)), ref, [(torch.ones(4),)]) \
        is not ref
    assert course.check("sum", lambda x: (x.sum().item(), (x.shape[0], False)), ref, [(torch.ones(4),)]) is ref
    assert course.check("any", lambda: 1, lambda: 2, [()], compare=lambda got, expected: True) is not None


def test_check_same_randomness_and_inputs_untouched():
    x = torch.zeros(3)

    def noisy(t):
        t.add_(torch.randn(3))
        return t

    assert course.check("noise", noisy, lambda t: t + torch.randn(3), cases=[(x,)]) is noisy
    assert torch.equal(x, torch.zeros(3))  # inputs are copied


def test_check_value(capsys):
    assert course.check_value("answer", 0.5000001, 0.5) == 0.5000001
    assert course.check_value("answer", 0.6, 0.5) == 0.5
    assert "❌ answer: expected 0.5, got 0.6" in capsys.readouterr().out

    def todo():
        raise NotImplementedError("Exercise: answer")

    assert course.check_value("answer", todo, torch.zeros(2)).equal(torch.zeros(2))
    assert "⏭ answer: not done yet" in capsys.readouterr().out
    course.note("quick mode")
    assert "quick mode" in capsys.readouterr().out
