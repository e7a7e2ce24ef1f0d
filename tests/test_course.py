"""Tests for armini.course: the notebook build, the repository's notebooks, and the exercise checks."""
import os
import re
import shutil
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
    assert course.build(tmp_path).written == [tmp_path / "notebooks" / "01_intro.ipynb"]
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


def test_build_strips_every_output_and_stamps_the_notebook(tmp_path):
    make_solutions(tmp_path, [code("print(1)"), code("# KEEP_OUTPUT\nprint(2)", text="reference\n", count=7),
                              code("# NBVAL_CHECK_OUTPUT\nprint(3)", text="3\n", count=8)])
    course.build(tmp_path)
    nb = built(tmp_path)
    assert all(cell.outputs == [] and cell.execution_count is None for cell in nb.cells)  # none, even marked ones
    assert nb.cells[2].source == "print(3)"  # no check marker: nbval compares nothing in notebooks/
    stamp = nb.metadata.pop("armini")
    assert stamp["built_from"] == "solutions/01_intro.ipynb" and len(stamp["sha256"]) == 64
    assert nb.metadata == {"kernelspec": course.KERNELSPEC, "language_info": {"name": "python"}}
    assert all(cell.metadata == {} for cell in nb.cells)
    assert not course.changed_by_learner(tmp_path / "notebooks" / "01_intro.ipynb")


def test_build_is_idempotent_and_deterministic(tmp_path):
    make_solutions(tmp_path, [code(SOLVED), nbformat.v4.new_markdown_cell("# Title")])
    assert len(course.build(tmp_path).written) == 1
    first = (tmp_path / "notebooks" / "01_intro.ipynb").read_bytes()
    assert course.build(tmp_path).written == []  # nothing changed the second time
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
    assert course.problems(tmp_path) == ["notebooks/01_intro.ipynb: not a Jupyter notebook (Notebook could not be "
                                         "converted from version 1 to version 2 because it's missing a key: cells); "
                                         "restore it with git checkout notebooks/01_intro.ipynb, or rebuild it with "
                                         "python -m armini.course build --force"]


def test_check_cells_keep_reference_outputs_and_unrecorded_ones_are_flagged(tmp_path):
    make_solutions(tmp_path, [code("# NBVAL_CHECK_OUTPUT\nprint(2)", text="2\n", count=4),
                              code("# NBVAL_CHECK_OUTPUT\nprint(3)", count=None)])
    nb = nbformat.read(tmp_path / "solutions" / "01_intro.ipynb", as_version=4)
    nb.cells[1].outputs = []
    nbformat.write(nb, tmp_path / "solutions" / "01_intro.ipynb")
    course.build(tmp_path)
    cells = built(tmp_path).cells
    assert cells[0].outputs == [] and cells[0].execution_count is None  # the reference stays in solutions/
    nb = nbformat.read(tmp_path / "solutions" / "01_intro.ipynb", as_version=4)
    assert nb.cells[0].outputs[0].text == "2\n" and nb.cells[0].execution_count == 4
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
    """The sync test: a notebook as built must be the current build byte for byte; one a learner changed
    must match it with outputs stripped and exercise regions masked (course.sync_problem)."""
    assert re.fullmatch(r"\d{2}_[a-z0-9_]+\.ipynb", source.name), f"{source.name}: name it NN_topic.ipynb"
    nb = nbformat.read(source, as_version=4)
    leftovers = course._has_outputs(nb)  # outputs outside KEEP_OUTPUT and check cells
    assert not leftovers, f"solutions/{source.name} has outputs in cells {leftovers}: run python -m armini.course clean"
    unchecked = course._unrecorded(nb)  # check cells without a reference output
    assert not unchecked, (f"solutions/{source.name}: check cells {unchecked} have no reference output: "
                           f"run python -m armini.course record solutions/{source.name}")
    target = course.ROOT / "notebooks" / source.name
    assert target.exists(), f"notebooks/{source.name} is missing: run python -m armini.course build"
    expected = course.student_notebook(nb, source.name)
    problem = course.sync_problem(target, expected, f"notebooks/{source.name}")
    assert problem is None, problem


@needs_lessons
@pytest.mark.parametrize("source", SOLUTIONS, ids=lambda path: path.name)
def test_student_notebook_gives_no_answer_away(source):
    """What build writes for a learner: no outputs at all, no solution markers, no check marker, and no
    check whose reference (or check_value whose expected value) is the answer written in plain sight."""
    nb = course.student_notebook(nbformat.read(source, as_version=4), source.name)
    assert course.giveaways(nb, source.name) == []
    assert not any(course.CHECK_OUTPUT in cell.source for cell in nb.cells)


def test_giveaways_are_found():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from armini.course import check, check_value\nfrom armini import data"),
        nbformat.v4.new_code_cell("print('a mask')", execution_count=1),
        nbformat.v4.new_code_cell(  # lesson 01 before: the one-line answer right under the exercise
            "def bits(lp, D):\n    raise NotImplementedError\n\n\ndef reference_bits(lp, D):\n"
            "    return -lp.mean() / (D * math.log(2))\n\n\nbits = check('bits', bits, reference_bits, [(1, 2)])"),
        nbformat.v4.new_code_cell("def ref(k):\n    return data.quantize(k, 2)\n\nq = check('q', q, ref, [(1,)])"),
        nbformat.v4.new_code_cell("D = check_value('dimensions', dims, 1 * 28 * 28)\n"
                                  "E = check_value('dimensions', dims, data.dims(train))"),
    ])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="[[1, 0], [1, 1]]\n")]
    assert course.giveaways(nb, "x") == [
        "x, cell 1: stored outputs",
        "x, cell 2: reference_bits, the reference of the check in cell 2, computes the answer without the library: "
        "move it into armini",
        "x, cell 4: check_value's expected value is written out (1 * 28 * 28): compute it with the library"]


def test_no_solution_leaks_or_orphans_in_notebooks():
    for target in sorted((course.ROOT / "notebooks").glob("*.ipynb")):
        text = target.read_text(encoding="utf-8")
        assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text, f"{target.name} leaks a solution"
        assert (course.ROOT / "solutions" / target.name).exists(), f"notebooks/{target.name} has no solutions source"


# ---------------------------------------------------------------------------------------------
# A learner's work is never lost (issue 10), and no tool leaves a notebook broken (issue 9)


def copy_course(root):
    """solutions/ and notebooks/ as build writes them, under `root`."""
    shutil.copytree(course.ROOT / "solutions", root / "solutions")
    (root / "notebooks").mkdir()
    assert len(course.build(root).written) == len(SOLUTIONS)


def work_through(path):
    """What JupyterLab leaves after a learner's session: every exercise filled in (here with a wrong answer,
    as half-done work often is), every code cell run (outputs, execution counts, cell metadata), a scratch
    cell added, the notebook's metadata expanded; saved as Jupyter saves."""
    nb = nbformat.read(path, as_version=4)
    filled = 0
    for count, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code":
            continue
        cell.source, n = course.CODE_PLACEHOLDER.subn(
            lambda m: m.group(0).split("#")[0] + "return None  # my attempt\n" + m.group(0).split("#")[0] + "pass",
            cell.source)
        filled += n
        cell.execution_count = count
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"my output {count}\n")]
        cell.metadata["scrolled"] = True
    nb.cells.insert(3, nbformat.v4.new_code_cell("print('trying something')"))
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.4", "mimetype": "text/x-python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    nbformat.write(nb, path)
    return filled


@needs_lessons
def test_a_learners_run_keeps_the_sync_test_green_and_build_never_overwrites_it(tmp_path, capsys):
    copy_course(tmp_path)
    lesson = tmp_path / "notebooks" / SOLUTIONS[-1].name
    assert work_through(lesson) > 0  # an exercise really was filled in
    mine = lesson.read_bytes()
    assert course.changed_by_learner(lesson)
    assert course.problems(tmp_path) == []  # the sync check (course check, and the test above) stays green
    assert course.main(["check", "--root", str(tmp_path)]) == 0
    capsys.readouterr()
    (tmp_path / "solutions" / SOLUTIONS[0].name).write_bytes(  # an instructor changed lesson 00 meanwhile
        (tmp_path / "solutions" / SOLUTIONS[0].name).read_bytes().replace(b"## 5. Where next", b"## 5. Next"))
    before = {path: path.read_bytes() for path in (tmp_path / "notebooks").glob("*.ipynb")}

    assert course.main(["build", "--root", str(tmp_path)]) == 1  # refuses, names the file, says how
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"notebooks/{lesson.name}: changed since the last build" in err
    assert "nothing was written" in err and "build --force" in err and "notebooks/.backup/" in err
    assert {path: path.read_bytes() for path in (tmp_path / "notebooks").glob("*.ipynb")} == before
    assert not (tmp_path / "notebooks" / ".backup").exists()

    assert course.main(["build", "--force", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    backups = list((tmp_path / "notebooks" / ".backup").glob("*.ipynb"))
    assert len(backups) == 1 and backups[0].read_bytes() == mine  # the learner's version, byte for byte
    assert re.fullmatch(re.escape(lesson.stem) + r"\.\d{8}-\d{6}\.ipynb", backups[0].name)
    assert f"your version of notebooks/{lesson.name} is saved as notebooks/.backup/{backups[0].name}" in out
    assert f"wrote notebooks/{lesson.name}" in out and f"wrote notebooks/{SOLUTIONS[0].name}" in out
    assert (tmp_path / "notebooks" / ".backup" / ".gitignore").read_text().endswith("*\n")  # git ignores backups
    assert not course.changed_by_learner(lesson) and course.problems(tmp_path) == []


def test_nbval_skips_a_notebook_the_learner_changed(tmp_path):
    """The root conftest.py: `pytest` does not run a learner's changed notebook (its solutions/ twin is run)."""
    make_solutions(tmp_path, [nbformat.v4.new_code_cell(SOLVED), nbformat.v4.new_code_cell("1 / 0")])
    course.build(tmp_path)
    lesson = tmp_path / "notebooks" / "01_intro.ipynb"
    work_through(lesson)  # a half-done lesson, with a cell that raises
    shutil.copy(course.ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -ra --nbval-lax --nbval-current-env\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(lesson)],
                            cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "ARMINI_TEST_MY_NOTEBOOKS": ""})
    assert result.returncode == 0, result.stdout
    assert "notebooks/01_intro.ipynb has your changes: not run (solutions/01_intro.ipynb is" in result.stdout
    assert " skipped" in result.stdout and "passed" not in result.stdout


@needs_lessons
def test_a_change_outside_the_exercises_is_named(tmp_path):
    copy_course(tmp_path)
    lesson = tmp_path / "notebooks" / SOLUTIONS[0].name
    work_through(lesson)
    nb = nbformat.read(lesson, as_version=4)
    nb.cells[0].source += "\nmy note"  # not an exercise region
    del nb.cells[-1]
    nbformat.write(nb, lesson)
    (problem,) = course.problems(tmp_path)
    assert problem.startswith(f"notebooks/{lesson.name}: changed outside its exercises (cell 0 differs outside its "
                              f"exercise regions; cell {len(nb.cells) - 1} is missing), compared with what build "
                              f"makes of solutions/{lesson.name}; undo those changes")
    assert "build --force" in problem


def test_a_stale_notebook_as_built_is_out_of_sync(tmp_path):
    path = make_solutions(tmp_path, [nbformat.v4.new_code_cell(SOLVED)])
    course.build(tmp_path)
    path.write_text(path.read_text().replace("Exercise: mask A", "Exercise: mask B"))  # exercise regions too
    assert course.problems(tmp_path) == ["notebooks/01_intro.ipynb: out of sync with solutions/01_intro.ipynb "
                                         "(run python -m armini.course build)"]
    assert course.build(tmp_path).written == [tmp_path / "notebooks" / "01_intro.ipynb"]  # no --force needed


FULL_DISK = """
import resource, signal, sys
from armini import course
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
sys.exit(course.main(["build", "--root", sys.argv[1]]))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="RLIMIT_FSIZE: Linux")
def test_a_failed_write_leaves_every_notebook_valid_and_unchanged(tmp_path):
    make_solutions(tmp_path, [nbformat.v4.new_code_cell(SOLVED)], name="00_small.ipynb")
    make_solutions(tmp_path, [nbformat.v4.new_code_cell(SOLVED)], name="01_big.ipynb")
    course.build(tmp_path)
    before = {path: path.read_bytes() for path in (tmp_path / "notebooks").glob("*.ipynb")}
    big = tmp_path / "solutions" / "01_big.ipynb"  # lesson 01 grows past what the disk can take
    nb = nbformat.read(big, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("x" * 20000))
    nbformat.write(nb, big)
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path), "10000"],
                            capture_output=True, text=True, cwd=course.ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: [Errno 27] File too large") and "the rest are unchanged" in result.stderr
    for path, data in before.items():
        assert path.read_bytes() == data  # not truncated: still the old, valid notebook
        nbformat.validate(nbformat.reads(data.decode(), as_version=4))
    assert [p.name for p in (tmp_path / "notebooks").iterdir()] != [] and not list(
        (tmp_path / "notebooks").glob(".*.tmp"))  # no temporary left behind


def test_a_broken_lesson_stops_the_build_before_anything_is_written(tmp_path):
    make_solutions(tmp_path, [nbformat.v4.new_code_cell(SOLVED)], name="00_first.ipynb")
    course.build(tmp_path)
    first = (tmp_path / "notebooks" / "00_first.ipynb").read_bytes()
    source = tmp_path / "solutions" / "00_first.ipynb"
    source.write_text(source.read_text().replace("mask A", "mask C"))
    make_solutions(tmp_path, [code("def f():\n    ### BEGIN SOLUTION\n    return 1\n")], name="03_bad.ipynb")
    with pytest.raises(course.SolutionError, match="03_bad.ipynb, cell 0"):
        course.build(tmp_path)
    assert (tmp_path / "notebooks" / "00_first.ipynb").read_bytes() == first  # lesson 00 not half-rebuilt
    assert not (tmp_path / "notebooks" / "03_bad.ipynb").exists()


@pytest.mark.parametrize("command", ["build", "check", "clean", "record"])
def test_invalid_notebook_json_is_one_line_naming_the_file(tmp_path, command):
    make_solutions(tmp_path, [nbformat.v4.new_code_cell(SOLVED)], name="00_good.ipynb")
    course.build(tmp_path)
    good = {path: path.read_bytes() for path in tmp_path.rglob("*.ipynb")}
    bad = tmp_path / "solutions" / "03_bad.ipynb"
    bad.write_text('{\n "cells": [\n  {"cell_type": "code",\n }\n')  # a stray comma, then cut off
    result = subprocess.run([sys.executable, "-m", "armini.course", command, "--root", str(tmp_path)],
                            capture_output=True, text=True, cwd=course.ROOT)
    assert result.returncode == 1
    lines = (result.stderr + result.stdout).strip().split("\n")
    message = ("solutions/03_bad.ipynb: invalid JSON at line 4, column 2: Expecting property name enclosed in "
               "double quotes; fix it, or restore it with git checkout solutions/03_bad.ipynb")
    if command == "check":
        assert lines == [message, "1 problem(s)"]
    else:
        assert lines == ["error: " + message]
    assert {path: path.read_bytes() for path in tmp_path.rglob("*.ipynb") if path != bad} == good  # nothing written


def test_a_broken_learner_notebook_is_backed_up_not_overwritten(tmp_path, capsys):
    make_solutions(tmp_path, [nbformat.v4.new_code_cell(SOLVED)])
    course.build(tmp_path)
    target = tmp_path / "notebooks" / "01_intro.ipynb"
    target.write_text('{"cells": [')  # e.g. cut off by an editor that crashed
    assert course.problems(tmp_path) == [
        "notebooks/01_intro.ipynb: invalid JSON at line 1, column 12: Expecting value; restore it with "
        "git checkout notebooks/01_intro.ipynb, or rebuild it with python -m armini.course build --force"]
    assert course.main(["build", "--root", str(tmp_path)]) == 1 and target.read_text() == '{"cells": ['
    assert course.main(["build", "--force", "--root", str(tmp_path)]) == 0
    assert [p.read_text() for p in (tmp_path / "notebooks" / ".backup").glob("*.ipynb")] == ['{"cells": [']
    assert course.problems(tmp_path) == []


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


# ---------------------------------------------------------------------------------------------
# require: the hidden test nbgrader runs after a check (check itself never raises)


@pytest.mark.parametrize("candidate, verdict", [
    (lambda k: torch.ones(k, k, dtype=torch.bool).tril(), True),
    (lambda k: torch.ones(k, k, dtype=torch.bool), False),  # wrong
    (lambda k: torch.ones(k)[k + 1], False),  # raises
    (lambda k: (_ for _ in ()).throw(NotImplementedError("Exercise: mask A")), False),  # not done
])
def test_require_passes_only_after_a_correct_check(capsys, candidate, verdict):
    course.check("mask A (require)", candidate, reference_mask, cases=[(3,)])
    assert course.VERDICTS["mask A (require)"] is verdict
    if verdict:
        course.require("mask A (require)")
        assert capsys.readouterr().out.endswith("graded: mask A (require) correct\n")
    else:
        with pytest.raises(AssertionError, match=r"mask A \(require\): not correct yet"):
            course.require("mask A (require)")


def test_require_names_a_check_that_did_not_run_and_follows_the_latest_run(capsys):
    with pytest.raises(AssertionError, match="the check 'never run' did not run: restore the cell"):
        course.require("never run")
    course.check_value("answer (require)", 0.6, 0.5)
    with pytest.raises(AssertionError):
        course.require("answer (require)")
    course.check_value("answer (require)", 0.5, 0.5)  # fixed and re-run: the latest verdict counts
    course.require("answer (require)")
    course.check_value("answer (require)", 0.6, 0.5)
    with pytest.raises(AssertionError):
        course.require("answer (require)")


def test_code_stub_is_what_build_writes():
    assert course.code_stub('# Exercise: say "hi"\n') == '# YOUR CODE HERE\nraise NotImplementedError("Exercise: say \\"hi\\"")'
    assert course.code_stub("x = 1") == '# YOUR CODE HERE\nraise NotImplementedError("Exercise: fill this in")'
    assert course.exercise_name("# exercise:  mask A \n") == "mask A"


@pytest.mark.parametrize("argv, message", [
    (["build", "--out", "lab"], "--out, --lessons, --assignment and --points are options of nbgrader only"),
    (["check", "--points", "2"], "options of nbgrader only"),
    (["clean", "--force"], "only build and nbgrader take --force"),
])
def test_nbgrader_options_belong_to_nbgrader(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        course.main([*argv, "--root", str(tmp_path)])
    assert message in capsys.readouterr().err


def test_nbgrader_command_without_nbgrader_says_how_to_install(tmp_path, capsys, monkeypatch):
    import armini

    monkeypatch.setitem(sys.modules, "armini.grading", None)  # as if nbgrader (which armini.grading needs) were missing
    monkeypatch.delattr(armini, "grading", raising=False)
    assert course.main(["nbgrader", "--out", str(tmp_path / "lab")]) == 1
    assert "nbgrader is not installed" in capsys.readouterr().err
    assert not (tmp_path / "lab").exists()
