"""Grading the course's exercises with nbgrader (https://nbgrader.readthedocs.io), the tool instructors use.

``python -m armini.course nbgrader --out lab/ --lessons 02,04`` turns lessons of ``solutions/`` into an
nbgrader course folder (``solutions/`` and ``notebooks/`` are only read)::

    lab/nbgrader_config.py                      # armini's exercise stub, quick-mode grading
    lab/source/02_pixelcnn/02_pixelcnn.ipynb    # one assignment per lesson (--assignment NAME: one for all)
    lab/source/04_gated_pixelcnn/04_gated_pixelcnn.ipynb

Each source notebook is the lesson with its outputs and ``# NBVAL_CHECK_OUTPUT`` lines removed and nbgrader's
cell metadata added from what the lesson already says:

* an exercise cell (a ``### BEGIN SOLUTION`` region, named by its ``# Exercise:`` comment) is an
  autograded answer (``"solution": true``);
* the first cell from there on that calls ``check``/``check_value`` is its test cell (``"grade": true``,
  ``points`` per exercise, locked). ``check`` never raises (a lesson must go on after a wrong answer), so
  the test cell ends in a hidden test, ``require("<check name>")``, that fails unless the check said ✅;
* when the check sits in the exercise cell itself, which the learner may edit, a locked test cell with a
  one-line comment and the hidden test is added just after it.

``nbgrader generate_assignment`` then writes the learner's notebooks that ``python -m armini.course build``
writes: the same stub in every exercise (:class:`ClearExercises`, set in the config) and the hidden tests
removed. What differs: nbgrader's cell metadata, no ``armini`` stamp, and the added test cells.
"""
from __future__ import annotations

import ast
import copy
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.converters import GenerateAssignment
from nbgrader.preprocessors import ClearSolutions

from .course import (BEGIN, CHECK_OUTPUT, ROOT, _read, _sources, _without_check_marker, _write_if_changed, code_stub,
                     exercise_name, strip_outputs, student_notebook, to_json)
from .files import atomic_write

__all__ = ["CourseFolderError", "Exercise", "exercises", "source_notebook", "select_lessons", "prepare",
           "ClearExercises", "generate_preprocessors", "CONFIG"]

BACKUPS = "armini-backup"  # COURSE_DIR/armini-backup/<time>/: files prepare replaced (nbgrader never looks there)
HIDDEN_TEST = "### BEGIN HIDDEN TESTS\nfrom armini.course import require\nrequire({names})\n### END HIDDEN TESTS"

CONFIG = '''\
# nbgrader configuration for an armini lab (written by python -m armini.course nbgrader).
# Run nbgrader from this folder; the README's "Classroom labs with nbgrader" lists the commands.
import os

from armini.grading import generate_preprocessors

c = get_config()  # noqa: F821 (nbgrader defines it)

# generate_assignment writes armini's exercise stub, raise NotImplementedError("Exercise: <name>"),
# exactly as python -m armini.course build does (nbgrader's own ClearSolutions, with armini's stub)
c.GenerateAssignment.preprocessors = generate_preprocessors()

# autograde runs every submission top to bottom: in quick mode a lesson takes about a minute of CPU.
# The checks do not depend on the budget; ARMINI_QUICK=0 grades at the lesson's full budget.
os.environ.setdefault("ARMINI_QUICK", "1")
c.Execute.timeout = 600  # seconds per cell

# release_assignment and collect (nbgrader's exchange) also need a course id:
# c.CourseDirectory.course_id = "armini-lab"
'''


class CourseFolderError(ValueError):
    """prepare would write into a folder that already holds files (and force was not given), or
    into solutions/ or notebooks/."""


# ----------------------------------------------------------------------------------------------
# Which cell checks which exercise


@dataclass
class Exercise:
    name: str           # from its "# Exercise:" comment
    cell: int           # the cell holding the solution region
    test: int | None    # the cell calling its check (may be `cell` itself); None: graded by hand or not at all
    checks: list[str] = field(default_factory=list)  # the names of the checks in `test`


def _check_names(source: str) -> list[str]:
    """The names of the check(...) / check_value(...) calls in a cell, in order (literal first arguments)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in ("check", "check_value") and isinstance(node.args[0].value, str):
                names.append((node.lineno, node.col_offset, node.args[0].value))
    return [name for *_, name in sorted(names)]


def exercises(nb) -> list[Exercise]:
    """Every exercise of a lesson with the cell that checks it: the first cell from the exercise on that
    calls check/check_value (markdown exercises have none: they are graded by hand)."""
    found = []
    for index, cell in enumerate(nb.cells):
        if BEGIN not in cell.source:
            continue
        exercise = Exercise(exercise_name(cell.source), index, None)
        if cell.cell_type == "code":
            for later in range(index, len(nb.cells)):
                names = _check_names(nb.cells[later].source) if nb.cells[later].cell_type == "code" else []
                if names:
                    exercise.test, exercise.checks = later, names
                    break
        found.append(exercise)
    return found


# ----------------------------------------------------------------------------------------------
# The nbgrader source notebook of a lesson


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50] or "exercise"


def _unique(base: str, taken: set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _metadata(grade_id: str, *, solution=False, grade=False, locked=False, points=None) -> dict:
    """nbgrader's cell metadata (schema 3): an answer (solution), a test (grade, locked) or both (by hand)."""
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution}
    if grade:
        meta["points"] = points
    return nbformat.from_dict({"nbgrader": meta})


def _hidden_test(names: list[str]) -> str:
    return HIDDEN_TEST.format(names=", ".join(repr(name) for name in names))


def source_notebook(nb, name: str = "notebook", points: float = 1) -> "nbformat.NotebookNode":
    """The nbgrader source version of solutions notebook `nb` (a new notebook; `nb` is left alone): no outputs,
    no check markers, the solutions kept, and nbgrader's metadata on exercise and test cells, each test cell
    worth `points` per exercise it checks. Raises SolutionError where `build` would."""
    student_notebook(nb, name)  # the regions must make a learner's notebook, as build requires
    nb = strip_outputs(copy.deepcopy(nb))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = _without_check_marker(cell.source)
            cell.outputs, cell.execution_count = [], None
    found = exercises(nb)
    ids, grade_ids = {cell.get("id") for cell in nb.cells}, set()
    tests: dict[int, list[Exercise]] = {}
    for exercise in found:
        cell = nb.cells[exercise.cell]
        slug = _unique(_slug(exercise.name), grade_ids)
        by_hand = cell.cell_type == "markdown"  # nbgrader grades written answers by hand
        cell.metadata.update(_metadata(slug, solution=True, grade=by_hand, points=points if by_hand else None))
        if exercise.test is not None:
            tests.setdefault(exercise.test, []).append(exercise)
    added = []  # (after which cell, the new test cell)
    for index, checked in tests.items():
        names = list(dict.fromkeys(name for exercise in checked for name in exercise.checks))
        meta = _metadata(_unique(_slug(checked[0].name) + "-check", grade_ids), grade=True, locked=True,
                         points=points * len(checked))
        cell = nb.cells[index]
        if index in [exercise.cell for exercise in checked]:  # the check is in an answer cell: a test cell after it
            quoted = ", ".join(f'"{name}"' for name in names)
            test = nbformat.v4.new_code_cell(f"# Graded: the check{'s' if len(names) > 1 else ''} above ({quoted}) "
                                             f"must pass.\n{_hidden_test(names)}")
            test.id, test.metadata = _unique(f"{_slug(checked[0].name)[:40]}-graded", ids), meta
            added.append((index, test))
        else:  # a check cell of its own: the test cell, its hidden test after what the learner sees
            cell.source = f"{cell.source}\n{_hidden_test(names)}"
            cell.metadata.update(meta)
    for index, test in sorted(added, key=lambda pair: pair[0], reverse=True):
        nb.cells.insert(index + 1, test)
    return nb


# ----------------------------------------------------------------------------------------------
# generate_assignment with armini's stub


class ClearExercises(ClearSolutions):
    """nbgrader's ClearSolutions writing armini's stub, ``raise NotImplementedError("Exercise: <name>")``
    (course.code_stub), instead of one stub for every exercise: so generate_assignment makes the exercises
    that ``python -m armini.course build`` makes."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            self.code_stub = {**self.code_stub, resources["language"]: code_stub(cell.source)}
        return super().preprocess_cell(cell, resources, index)


def generate_preprocessors() -> list:
    """GenerateAssignment's preprocessors with ClearSolutions replaced by ClearExercises (nbgrader_config.py)."""
    default = GenerateAssignment.class_traits()["preprocessors"].default()
    return [ClearExercises if step is ClearSolutions else step for step in default]


# ----------------------------------------------------------------------------------------------
# The course folder


def select_lessons(root: Path, lessons: list[str] | None = None) -> list[Path]:
    """The solutions notebooks named by `lessons` ("02" or "02_pixelcnn"; every lesson when None)."""
    sources = _sources(root)
    if not lessons:
        return sources
    chosen, unknown = [], []
    for token in lessons:
        token = token.strip().removesuffix(".ipynb")
        matches = [src for src in sources if src.stem == token or src.stem.startswith(token + "_")]
        (chosen.extend(matches) if matches else unknown.append(token))
    if unknown:
        raise CourseFolderError(f"no lesson {', '.join(map(repr, unknown))} in {root / 'solutions'}; "
                                f"give numbers or names such as {sources[0].stem[:2]} or {sources[0].stem}")
    return sorted(set(chosen))


@dataclass
class Prepared:
    written: list[Path] = field(default_factory=list)      # files written (new or changed)
    backups: dict[Path, Path] = field(default_factory=dict)  # a replaced file -> its copy in armini-backup/
    skipped: list[str] = field(default_factory=list)       # lessons without exercises (nothing to grade)
    kept_config: bool = False                               # an nbgrader_config.py was there and was kept


def prepare(out: Path, lessons: list[str] | None = None, *, root: Path | None = None,
            assignment: str | None = None, points: float = 1, force: bool = False) -> Prepared:
    """Write an nbgrader course folder `out` from solutions/: nbgrader_config.py (unless one is there) and
    source/<assignment>/<lesson>.ipynb for each lesson with exercises (assignment: the lesson's name, or
    `assignment` for all). Every notebook is built before anything is written. An existing, non-empty `out`
    needs `force`; then each file replaced is first copied to out/armini-backup/<time>/."""
    root, out = Path(root or ROOT), Path(out)
    for folder in ("solutions", "notebooks"):
        if out.resolve() == (root / folder).resolve() or (root / folder).resolve() in out.resolve().parents:
            raise CourseFolderError(f"{out}: inside {folder}/, which only python -m armini.course build and "
                                    "clean write; choose a folder of its own, such as lab/")
    if assignment is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", assignment):
        raise CourseFolderError(f"assignment name {assignment!r}: use letters, digits, '_', '-' or '.'")
    result, plan = Prepared(), {}
    for src in select_lessons(root, lessons):
        rel = f"solutions/{src.name}"
        nb = source_notebook(_read(src, rel), rel, points)
        if not exercises(nb):
            result.skipped.append(src.stem)
            continue
        plan[out / "source" / (assignment or src.stem) / src.name] = to_json(nb)
    if not plan:
        raise CourseFolderError(f"lessons {', '.join(result.skipped)}: no exercises, so nothing to grade")
    if out.exists() and any(out.iterdir()) and not force:
        raise CourseFolderError(f"{out} already exists and is not empty, so nothing was written; --force adds "
                                f"or refreshes these lessons in it (first copying each file it replaces to "
                                f"{out / BACKUPS}/)")
    config = out / "nbgrader_config.py"
    if config.exists():
        result.kept_config = config.read_text(encoding="utf-8") != CONFIG
    else:
        plan[config] = CONFIG
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path, text in plan.items():
        if path.exists() and path.read_bytes() != text.encode("utf-8"):
            backup = out / BACKUPS / stamp / path.relative_to(out)
            backup.parent.mkdir(parents=True, exist_ok=True)
            data = path.read_bytes()
            with atomic_write(backup, "wb") as f:
                f.write(data)
            result.backups[path] = backup
    result.written = [path for path, text in plan.items() if _write_if_changed(path, text)]
    return result
