"""Course tooling: build the learner notebooks, and check a learner's exercise answers.

Two halves, both small:

1. **Notebook build.** ``solutions/NN_topic.ipynb`` are the source of every lesson.
   ``notebooks/NN_topic.ipynb`` are generated from them by blanking out each exercise
   region, marked the nbgrader way inside a function body::

       # Exercise: mask A
       def mask_a(k):
           ### BEGIN SOLUTION
           ...
           ### END SOLUTION

   becomes::

       # Exercise: mask A
       def mask_a(k):
           # YOUR CODE HERE
           raise NotImplementedError("Exercise: mask A")

   The exercise name comes from a ``# Exercise: <name>`` comment in the cell
   (``"fill this in"`` without one). Markdown regions become ``YOUR ANSWER HERE``.
   A learner's copy carries **no outputs** and no ``# NBVAL_CHECK_OUTPUT`` markers: the reference
   outputs that nbval (``--nbval-lax``) compares live in ``solutions/`` only, so nothing printed
   above an exercise gives it away. ``record`` runs a solutions notebook the way the tests do
   (quick mode, bundled data) and stores exactly those outputs.

   A learner's work in ``notebooks/`` is never lost. Each built notebook carries a stamp (notebook
   metadata ``armini``: the SHA-256 of what was written), so the tools can tell a notebook as built
   from one a learner changed (exercises filled in, outputs saved, cells added):

   * ``check`` (and the tests) accept a changed notebook when, outputs stripped and exercise
     regions masked, it is still the built one; an unchanged notebook must match byte for byte.
   * ``build`` never overwrites a changed notebook; ``build --force`` first copies it to
     ``notebooks/.backup/NN_topic.<time>.ipynb`` and says so.
   * Every write goes through :func:`armini.files.atomic_write` (a temporary file, then a rename),
     and every solutions notebook is read and checked before anything is written.

   From the repository root::

       python -m armini.course build    # regenerate notebooks/ from solutions/ (never over your changes)
       python -m armini.course build --force  # rebuild changed notebooks too, after a backup
       python -m armini.course check    # exit 1 if anything is out of sync
       python -m armini.course clean    # strip outputs from solutions/ in place
       python -m armini.course record solutions/02_pixelcnn.ipynb  # store check-cell outputs
       python -m armini.course nbgrader --out lab --lessons 02,04  # an nbgrader course folder (armini.grading)

2. **Exercise checks.** In a notebook, a learner's function is compared with
   armini's reference on a few inputs; whatever happens, the notebook goes on::

       mask_fn = check("mask A", mask_a, armini.nn.masked.causal_mask, cases=[(3,), (5,)])

   prints ``✅ mask A: correct on 2 checks`` and returns ``mask_a`` -- or says what
   went wrong and returns the reference, so later cells still work. The verdict is kept in
   ``VERDICTS``; ``require("mask A")`` raises unless it was ✅ (nbgrader's hidden test: a check never raises).
"""
from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .files import atomic_write

__all__ = [
    "SolutionError", "NotebookError", "LearnerWorkError", "student_notebook", "strip_outputs", "to_json",
    "build", "build_notebook", "clean", "record", "problems", "sync_problem", "changed_by_learner", "giveaways",
    "main", "exercise_name", "code_stub",
    "check", "check_value", "require", "note", "reference_bits_per_dim", "reference_dimensions",
]

ROOT = Path(__file__).resolve().parents[1]  # the repository root (parent of the armini package)

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
KEEP_OUTPUT = "# KEEP_OUTPUT"
CHECK_OUTPUT = "# NBVAL_CHECK_OUTPUT"  # nbval compares these cells' outputs with the stored ones
# the environment of the test run (tests/conftest.py), in which reference outputs are recorded; one
# thread, because torch's spinning thread pool crawls on a busy machine (a check cell's output must
# not depend on the thread count anyway)
RECORD_ENV = {"ARMINI_QUICK": "1", "ARMINI_DATA_SUBSET": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
NAME_PATTERN = re.compile(r"^\d{2}_[a-z0-9_]+\.ipynb$")  # NN_topic.ipynb
EXERCISE_NAME = re.compile(r"^\s*#\s*Exercise:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
KEEP_CELL_METADATA = ("tags",)  # nbval reads tags such as raises-exception and nbval-skip
STAMP = "armini"  # notebook metadata of a built notebook: {"built_from": ..., "sha256": ...}
BACKUP = ".backup"  # notebooks/.backup/: where build --force keeps a learner's version (git and pytest skip it)
# what an exercise region becomes; check masks these lines when it compares a learner's notebook
CODE_PLACEHOLDER = re.compile(r"^[ \t]*# YOUR CODE HERE\n[ \t]*raise NotImplementedError\(.*\)$", re.MULTILINE)
MARKDOWN_PLACEHOLDER = re.compile(r"^YOUR ANSWER HERE$", re.MULTILINE)


class SolutionError(ValueError):
    """A solution region that cannot be turned into an exercise (unbalanced, or not inside a function)."""


class NotebookError(ValueError):
    """A notebook file that cannot be read: not UTF-8, not JSON, or not a Jupyter notebook."""


class LearnerWorkError(ValueError):
    """build would overwrite notebooks a learner changed (and --force was not given)."""


# ----------------------------------------------------------------------------------------------
# 1. Notebook build


def _blank_regions(source: str, replacement, where: str) -> tuple[str, list[int]]:
    """Replace every BEGIN/END SOLUTION region of `source` by `replacement(indent)` (a list of lines).
    Returns the new text and, for each region, (its BEGIN line in `source`, its last line in the new text)."""
    out, replaced, start = [], [], None
    for number, line in enumerate(source.split("\n"), start=1):
        if BEGIN in line:
            if start is not None:
                raise SolutionError(f"{where}: '{BEGIN}' on line {number} inside another region "
                                    f"(opened on line {start}); regions cannot nest")
            start, indent = number, line[: len(line) - len(line.lstrip())]
        elif END in line:
            if start is None:
                raise SolutionError(f"{where}: '{END}' on line {number} without a '{BEGIN}' before it")
            out.extend(replacement(indent))
            replaced.append((start, len(out)))
            start = None
        elif start is None:
            out.append(line)
    if start is not None:
        raise SolutionError(f"{where}: '{BEGIN}' on line {start} is never closed by '{END}'")
    return "\n".join(out), replaced


def _outside_functions(code: str, lines: list[int]) -> list[int]:
    """Which of `lines` are not inside a function body (those would raise when the cell runs).
    Cells that are not plain Python (IPython magics) are not inspected: [] is returned."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(range(node.body[0].lineno, node.end_lineno + 1))
    return [line for line in lines if line not in inside]


def exercise_name(source: str) -> str:
    """The name of the exercise in a cell: its ``# Exercise: <name>`` comment, or "fill this in"."""
    found = EXERCISE_NAME.search(source)
    return found.group(1) if found else "fill this in"


def code_stub(source: str) -> str:
    """What each exercise region of code cell `source` becomes (before indenting): two lines,
    ``# YOUR CODE HERE`` and ``raise NotImplementedError("Exercise: <name>")``. The nbgrader
    preprocessor in armini.grading writes the same stub, so both ways of building agree."""
    message = "Exercise: " + exercise_name(source)
    message = '"' + message.replace("\\", "\\\\").replace('"', '\\"') + '"'  # a Python string literal
    return f"# YOUR CODE HERE\nraise NotImplementedError({message})"


def _student_code(source: str, where: str) -> str:
    """The learner's version of one code cell."""
    stub = code_stub(source).split("\n")

    def replacement(indent):
        if not indent:
            raise SolutionError(f"{where}: a solution region is at top level; put it inside a function "
                                "body so the learner's notebook still runs to the end")
        return [indent + line for line in stub]

    code, replaced = _blank_regions(source, replacement, where)
    bad = _outside_functions(code, [new for _, new in replaced])
    if bad:
        begin = next(old for old, new in replaced if new == bad[0])
        raise SolutionError(f"{where}: the solution region starting on line {begin} is not inside a function "
                            "body (a class body or a loop at top level runs when the cell runs)")
    return code


def _is_check(cell) -> bool:
    return cell.cell_type == "code" and CHECK_OUTPUT in cell.source


def strip_outputs(nb) -> "nbformat.NotebookNode":
    """Strip outputs and execution counts and normalise metadata, in place. `# KEEP_OUTPUT` and
    `# NBVAL_CHECK_OUTPUT` cells keep both (nbval only compares cells with an execution count)."""
    nb.nbformat, nb.nbformat_minor = 4, 5
    nb.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    for index, cell in enumerate(nb.cells):
        cell.setdefault("id", f"cell-{index}")
        cell.metadata = nbformat.from_dict(
            {key: cell.metadata[key] for key in KEEP_CELL_METADATA if key in cell.metadata})
        if cell.cell_type == "code" and KEEP_OUTPUT not in cell.source and not _is_check(cell):
            cell.outputs, cell.execution_count = [], None
    return nb


def _without_check_marker(source: str) -> str:
    """A check cell as the learner sees it: without the `# NBVAL_CHECK_OUTPUT` line (its reference
    output stays in solutions/, so nbval has nothing to compare in notebooks/)."""
    return "\n".join(line for line in source.split("\n") if line.strip() != CHECK_OUTPUT)


def student_notebook(nb, name: str = "notebook") -> "nbformat.NotebookNode":
    """The learner's version of a solutions notebook (a new notebook; `nb` is left alone): exercise
    regions blanked, no outputs, no check markers, stamped with the SHA-256 of its content.

    `name` only appears in error messages, e.g. ``SolutionError: 03_pixelcnn.ipynb, cell 7: ...``.
    """
    nb = strip_outputs(copy.deepcopy(nb))
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        if cell.cell_type == "code":
            cell.source = _without_check_marker(_student_code(cell.source, where))
            cell.outputs, cell.execution_count = [], None  # nothing printed above an exercise
        elif cell.cell_type == "markdown":
            cell.source = _blank_regions(cell.source, lambda indent: ["YOUR ANSWER HERE"], where)[0]
    nb.metadata[STAMP] = {"built_from": f"solutions/{Path(name).name}", "sha256": _content_hash(nb)}
    return nb


def to_json(nb) -> str:
    """The notebook as Jupyter saves it (nbformat v4, indent 1, sorted keys), ending in a newline."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def _content_hash(nb) -> str:
    """SHA-256 of the notebook as saved, leaving out its own stamp."""
    bare = copy.deepcopy(nb)
    bare.metadata.pop(STAMP, None)
    return hashlib.sha256(to_json(bare).encode("utf-8")).hexdigest()


def _read(path: Path, name: str | None = None):
    """Read a notebook, or raise NotebookError naming the file and what is wrong (one line)."""
    path, name = Path(path), name or str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise NotebookError(f"{name}: not UTF-8 text (byte {error.start}); {_restore(name)}") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise NotebookError(f"{name}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}; "
                            f"{_restore(name)}") from None
    try:
        return nbformat.reads(text, as_version=4)
    except Exception as error:  # valid JSON but no notebook (nbformat's validation errors)
        reason = str(error).strip().split("\n")[0]
        raise NotebookError(f"{name}: not a Jupyter notebook ({reason}); {_restore(name)}") from None


def _restore(name: str) -> str:
    if Path(name).parts[:1] == ("notebooks",):
        return f"restore it with git checkout {name}, or rebuild it with python -m armini.course build --force"
    return f"fix it, or restore it with git checkout {name}"


def _relative(path: Path, root: Path) -> str:
    """`path` as the user knows it: relative to the repository root when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _write_if_changed(path: Path, text: str) -> bool:
    """Write `text` to `path` atomically (temporary file + rename) unless it already holds it."""
    data = text.encode("utf-8")
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:  # bytes: no platform newline translation
        f.write(data)
    return True


# ----------------------------------------------------------------------------------------------
# A learner's notebook: as built, or changed (and then only inside exercises, or elsewhere too)


def changed_by_learner(nb) -> bool:
    """True unless `nb` is exactly what build wrote (its stamp matches its content).
    Exercises filled in, outputs saved, even a save that only touched metadata: all count as changes.
    `nb` may be a path; a file that is not a readable notebook counts as changed."""
    if isinstance(nb, (str, Path)):
        try:
            nb = _read(nb)
        except (NotebookError, OSError):
            return True
    stamp = nb.metadata.get(STAMP) or {}
    return stamp.get("sha256") != _content_hash(nb)


def _masked(cell) -> re.Pattern:
    """A pattern matching `cell`'s source with any text in place of each exercise placeholder."""
    placeholder = CODE_PLACEHOLDER if cell.cell_type == "code" else MARKDOWN_PLACEHOLDER
    return re.compile("(?s)" + ".*?".join(re.escape(part) for part in placeholder.split(cell.source)))


def _differences_outside_exercises(nb, expected) -> list[str]:
    """How learner notebook `nb` differs from built notebook `expected` once outputs, execution counts
    and metadata are ignored, exercise regions masked and cells the learner added (new ids) skipped."""
    mine = {cell.get("id"): cell for cell in nb.cells}
    found = []
    for index, cell in enumerate(expected.cells):
        theirs = mine.get(cell.get("id"))
        if theirs is None:
            found.append(f"cell {index} is missing")
        elif theirs.cell_type != cell.cell_type or not _masked(cell).fullmatch(theirs.source):
            found.append(f"cell {index} differs outside its exercise regions")
    order = [cell.get("id") for cell in nb.cells if cell.get("id") in {c.get("id") for c in expected.cells}]
    if not found and order != [cell.get("id") for cell in expected.cells]:
        found.append("its cells are in a different order")
    return found


def sync_problem(target: Path, expected, name: str) -> str | None:
    """Is learner notebook `target` in sync with `expected` (the built notebook)? None if so, else one line.

    A notebook as build wrote it must be byte for byte the current build. A notebook a learner changed
    is compared with outputs and execution counts stripped and exercise regions masked, so filled-in
    exercises, saved outputs and added cells never make it out of sync."""
    try:
        nb = _read(target, name)
    except NotebookError as error:
        return str(error)
    if not changed_by_learner(nb):
        if to_json(nb) == to_json(expected):
            return None
        return f"{name}: out of sync with {expected.metadata[STAMP]['built_from']} (run python -m armini.course build)"
    found = _differences_outside_exercises(nb, expected)
    if not found:
        return None
    return (f"{name}: changed outside its exercises ({'; '.join(found[:3])}{'; ...' if len(found) > 3 else ''}), "
            f"compared with what build makes of {expected.metadata[STAMP]['built_from']}; undo those changes, or "
            f"rebuild it with python -m armini.course build --force (which first saves your version in "
            f"notebooks/{BACKUP}/)")


def _armini_names(tree) -> set[str]:
    """Names a cell binds by importing from armini (`from armini.nn import dmol` binds dmol)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "armini":
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names
                         if alias.name.split(".")[0] == "armini")
    return names


def _is_literal(node) -> bool:
    """An expression of constants only (`1 * 28 * 28`): a value written out, not computed."""
    return all(not isinstance(part, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) for part in ast.walk(node))


def giveaways(nb, name: str = "notebook") -> list[str]:
    """What in learner notebook `nb` shows an exercise's answer before it is done, one line each:
    stored outputs, solution markers, a check's reference defined in the notebook without the library
    (its body is the answer), or a check_value whose expected value is written out."""
    found = [f"{name}, cell {index}: stored outputs" for index, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    found += [f"{name}, cell {index}: a solution marker" for index, cell in enumerate(nb.cells)
              if BEGIN in cell.source or END in cell.source]
    trees = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            try:
                trees[index] = ast.parse(cell.source)
            except SyntaxError:  # IPython magics: nothing to inspect
                pass
    library = set().union(*map(_armini_names, trees.values()))
    functions = {node.name: (index, node) for index, tree in trees.items() for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for index, tree in trees.items():
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and len(call.args) >= 3):
                continue
            reference = call.args[2]
            if call.func.id == "check" and isinstance(reference, ast.Name) and reference.id in functions:
                where, function = functions[reference.id]
                if not {node.id for node in ast.walk(function) if isinstance(node, ast.Name)} & library:
                    found.append(f"{name}, cell {where}: {reference.id}, the reference of the check in cell "
                                 f"{index}, computes the answer without the library: move it into armini")
            elif call.func.id == "check_value" and _is_literal(reference):
                found.append(f"{name}, cell {index}: check_value's expected value is written out "
                             f"({ast.unparse(reference)}): compute it with the library")
    return found


# ----------------------------------------------------------------------------------------------
# The commands: every input read and checked before any output is written


def _sources(root: Path) -> list[Path]:
    return sorted((root / "solutions").glob("*.ipynb"))


def _built(root: Path) -> list[tuple[Path, Path, "nbformat.NotebookNode"]]:
    """(source, target, the built notebook) for every solutions notebook; raises NotebookError or
    SolutionError for the first one that is not valid JSON or whose solution regions are unbalanced."""
    return [(src, root / "notebooks" / src.name, student_notebook(_read(src, f"solutions/{src.name}"),
                                                                  f"solutions/{src.name}"))
            for src in _sources(root)]


def _backup(target: Path) -> Path:
    """Copy `target` to notebooks/.backup/<stem>.<local time>[-n].ipynb (atomically); return the copy."""
    folder = target.parent / BACKUP
    folder.mkdir(exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():  # backups are the learner's, not the repository's
        with atomic_write(ignore, "w") as f:
            f.write("# build --force keeps a learner's notebooks here; git leaves them alone\n*\n")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup, n = folder / f"{target.stem}.{stamp}{target.suffix}", 1
    while backup.exists():
        backup, n = folder / f"{target.stem}.{stamp}-{n}{target.suffix}", n + 1
    data = target.read_bytes()
    with atomic_write(backup, "wb") as f:
        f.write(data)
    return backup


@dataclass
class BuildResult:
    written: list[Path] = field(default_factory=list)  # notebooks that changed
    backups: dict[Path, Path] = field(default_factory=dict)  # a learner's notebook -> where its old version went


def build_notebook(source: Path, target: Path) -> bool:
    """Write the learner's version of `source` to `target` (atomically); True if `target` changed.
    Overwrites whatever `target` holds: `build` is the command that protects a learner's changes."""
    source = Path(source)
    return _write_if_changed(Path(target), to_json(student_notebook(_read(source), source.name)))


def build(root: Path | None = None, force: bool = False) -> BuildResult:
    """Rebuild every ``notebooks/*.ipynb`` from ``solutions/*.ipynb``.

    Every solutions notebook is read and turned into its learner's version before anything is written
    (a broken lesson 03 leaves lesson 00 as it was). A notebook a learner changed is never overwritten:
    LearnerWorkError names them and nothing is written, unless `force`, which first copies each to
    ``notebooks/.backup/``."""
    root = Path(root or ROOT)
    plan = [(target, to_json(nb)) for _, target, nb in _built(root)]
    (root / "notebooks").mkdir(exist_ok=True)
    changed = [target for target, text in plan if target.exists() and target.read_bytes() != text.encode("utf-8")
               and changed_by_learner(target)]
    if changed and not force:
        names = ", ".join(str(target.relative_to(root)) for target in changed)
        raise LearnerWorkError(f"{names}: changed since the last build (your exercises or saved outputs), "
                               "so nothing was written; python -m armini.course build --force rebuilds "
                               f"{'them' if len(changed) > 1 else 'it'} after copying your version to "
                               f"notebooks/{BACKUP}/")
    result = BuildResult(backups={target: _backup(target) for target in changed})
    result.written = [target for target, text in plan if _write_if_changed(target, text)]
    return result


def clean(path: Path) -> bool:
    """Strip outputs (except `# KEEP_OUTPUT` and check cells) from a solutions notebook in place
    (atomically); True if it changed."""
    path = Path(path)
    return _write_if_changed(path, to_json(strip_outputs(_read(path))))


def _has_outputs(nb) -> list[int]:
    """Cells with outputs or execution counts that `clean` would remove."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and KEEP_OUTPUT not in cell.source
            and not _is_check(cell) and (cell.get("outputs") or cell.get("execution_count") is not None)]


def _unrecorded(nb) -> list[int]:
    """`# NBVAL_CHECK_OUTPUT` cells with no reference output: nbval would check nothing there."""
    return [i for i, cell in enumerate(nb.cells) if _is_check(cell) and not cell.get("outputs")]


def record(path: Path, timeout: int = 600) -> list[int]:
    """Run solutions notebook `path` top to bottom as the tests do (RECORD_ENV: quick mode, bundled
    data), store the outputs of its `# NBVAL_CHECK_OUTPUT` cells, strip all others, and write it back
    (atomically). Returns the indices of the check cells whose output changed. A cell that raises stops
    the recording with nbclient's CellExecutionError, and the file is left as it was."""
    from nbclient import NotebookClient

    path = Path(path).resolve()
    nb = _read(path)
    student_notebook(nb, path.name)  # unbalanced solution regions: stop before a long run
    ran = copy.deepcopy(nb)
    NotebookClient(ran, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
                   ).execute(env={**os.environ, **RECORD_ENV})  # the kernel's environment; ours stays as it is
    changed = []
    for index, (cell, new) in enumerate(zip(nb.cells, ran.cells)):
        if _is_check(cell):
            if new.outputs != cell.get("outputs"):
                changed.append(index)
            cell.outputs, cell.execution_count = new.outputs, new.execution_count
    _write_if_changed(path, to_json(strip_outputs(nb)))
    return changed


def problems(root: Path | None = None) -> list[str]:
    """Everything wrong with solutions/ and notebooks/, one line each ([] when all is well).
    A learner's filled-in exercises, saved outputs and added cells are not problems (see sync_problem)."""
    root = Path(root or ROOT)
    found = []
    for folder in ("solutions", "notebooks"):
        if not (root / folder).is_dir():
            found.append(f"{folder}/ is missing")
    for src in _sources(root):
        rel, target = f"solutions/{src.name}", root / "notebooks" / src.name
        if not NAME_PATTERN.match(src.name):
            found.append(f"{rel}: name it NN_topic.ipynb (two digits, underscore, lowercase topic)")
        try:
            nb = _read(src, rel)
        except NotebookError as error:
            found.append(str(error))
            continue
        if _has_outputs(nb):
            found.append(f"{rel}: outputs in cells {_has_outputs(nb)} (run python -m armini.course clean)")
        if _unrecorded(nb):
            found.append(f"{rel}: {CHECK_OUTPUT} cells {_unrecorded(nb)} have no reference output "
                         f"(run python -m armini.course record {rel})")
        try:
            expected = student_notebook(nb, rel)
        except SolutionError as error:
            found.append(str(error))
            continue
        found.extend(giveaways(expected, f"notebooks/{src.name} as built"))
        if not target.exists():
            found.append(f"notebooks/{src.name}: missing (run python -m armini.course build)")
        else:
            found.extend(filter(None, [sync_problem(target, expected, f"notebooks/{src.name}")]))
    for target in sorted((root / "notebooks").glob("*.ipynb")):
        text = target.read_bytes().decode("utf-8", errors="replace")
        if not changed_by_learner(target) and (BEGIN in text or END in text):
            found.append(f"notebooks/{target.name}: leaks a solution region")
        if not (root / "solutions" / target.name).exists():
            found.append(f"notebooks/{target.name}: no solutions/{target.name} to build it from")
    return found


def main(argv=None) -> int:
    """``python -m armini.course {build,check,clean,record,nbgrader} [NOTEBOOK ...] [--force] [--root DIR]``;
    returns the exit status. Bad input is one line on stderr and exit status 1, never a traceback."""
    parser = argparse.ArgumentParser(prog="python -m armini.course", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "check", "clean", "record", "nbgrader"])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="record: the solutions notebooks to run (default: every one)")
    parser.add_argument("--force", action="store_true",
                        help=f"build: rebuild notebooks you changed too, after copying them to notebooks/{BACKUP}/; "
                             "nbgrader: write into an existing course folder, after copying each file it replaces "
                             "to COURSE_DIR/armini-backup/")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: %(default)s)")
    grading = parser.add_argument_group("nbgrader (an nbgrader course folder from solutions/)")
    grading.add_argument("--out", type=Path, metavar="COURSE_DIR", help="the course folder to write (required)")
    grading.add_argument("--lessons", help="comma-separated lessons, e.g. 02,04 (default: every lesson with exercises)")
    grading.add_argument("--assignment", help="one assignment holding every lesson (default: one per lesson)")
    grading.add_argument("--points", type=float, default=1, help="points per exercise (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.notebooks and args.command != "record":
        parser.error(f"{args.command} takes no notebook names (only record does)")
    if args.force and args.command not in ("build", "nbgrader"):
        parser.error("only build and nbgrader take --force")
    given = [option for option in ("out", "lessons", "assignment") if getattr(args, option) is not None]
    if args.command != "nbgrader" and (given or args.points != 1):
        parser.error("--out, --lessons, --assignment and --points are options of nbgrader only")
    if args.command == "nbgrader" and args.out is None:
        parser.error("nbgrader needs --out COURSE_DIR, the folder to write the course into (e.g. --out lab)")
    if args.points <= 0 or not math.isfinite(args.points):
        parser.error(f"--points must be a positive number, got {args.points}")
    try:
        if args.command == "nbgrader":
            return _nbgrader(args)
        if args.command == "record":
            paths = args.notebooks or _sources(args.root)
            for path in paths:  # every notebook readable and balanced before the first (long) run
                if not path.is_file():
                    print(f"error: {path}: no such notebook", file=sys.stderr)
                    return 1
                name = _relative(path, args.root)
                student_notebook(_read(path, name), name)
            for path in paths:
                try:
                    changed = record(path)
                except Exception as error:  # nbclient's CellExecutionError, or a kernel that died
                    print(f"error: {path}: {error}\nnothing was written to {path}", file=sys.stderr)
                    return 1
                print(f"recorded {path}: " + (f"check cells {changed} changed" if changed else "no change"))
            print("now run python -m armini.course build")
        elif args.command == "build":
            result = build(args.root, force=args.force)
            for target, backup in result.backups.items():
                print(f"your version of {target.relative_to(args.root)} is saved as {backup.relative_to(args.root)}")
            for path in result.written:
                print(f"wrote {path.relative_to(args.root)}")
            print(f"{len(result.written)} of {len(_sources(args.root))} notebooks changed")
        elif args.command == "clean":
            sources = _sources(args.root)
            _built(args.root)  # every notebook readable and balanced before the first is written
            changed = [src for src in sources if clean(src)]
            for path in changed:
                print(f"cleaned {path.relative_to(args.root)}")
            print(f"{len(changed)} of {len(sources)} solutions changed")
        else:
            found = problems(args.root)
            for line in found:
                print(line)
            print(f"{len(found)} problem(s)" if found else "notebooks are in sync with solutions")
            return 1 if found else 0
    except (SolutionError, NotebookError, LearnerWorkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a read-only folder: atomic_write left every file as it was
        print(f"error: {error}; files already written are complete, the rest are unchanged", file=sys.stderr)
        return 1
    return 0


def _nbgrader(args) -> int:
    """``python -m armini.course nbgrader --out COURSE_DIR``: see armini.grading."""
    try:
        from . import grading
    except ImportError as error:
        print(f"error: nbgrader is not installed ({error}); pip install nbgrader, or pip install -e '.[dev]'",
              file=sys.stderr)
        return 1
    lessons = [token for token in (args.lessons or "").split(",") if token.strip()] or None
    try:
        result = grading.prepare(args.out, lessons, root=args.root, assignment=args.assignment,
                                 points=args.points, force=args.force)
    except grading.CourseFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, backup in result.backups.items():
        print(f"your version of {path} is saved as {backup}")
    for path in result.written:
        print(f"wrote {path}")
    for stem in result.skipped:
        print(f"skipped {stem}: no exercises")
    if result.kept_config:
        print(f"kept your {args.out / 'nbgrader_config.py'}; armini's settings are in armini.grading.CONFIG")
    print(f"now, in {args.out}: nbgrader generate_assignment ASSIGNMENT, then nbgrader autograde ASSIGNMENT "
          "(the README's instructor guide has the steps)")
    return 0


# ----------------------------------------------------------------------------------------------
# 2. Exercise checks


def _show(x, limit: int = 60) -> str:
    """A short description of a value for a verdict: tensors by shape and dtype, the rest by repr."""
    import torch

    if isinstance(x, torch.Tensor):
        if x.numel() <= 6:
            return repr(x.tolist()) if x.dim() else repr(x.item())
        return f"tensor of shape {tuple(x.shape)}, {x.dtype}"
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mismatch(got, expected, atol: float, rtol: float, where: str = "") -> str | None:
    """None if `got` matches `expected`, else a one-line description of the first difference."""
    import numpy as np
    import torch

    at = f" at {where}" if where else ""
    if isinstance(expected, np.ndarray):
        expected = torch.as_tensor(expected)
        got = torch.as_tensor(got) if isinstance(got, np.ndarray) else got
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor{at}, got {type(got).__name__} {_show(got)}"
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}{at}, got {tuple(got.shape)}"
        if got.dtype != expected.dtype:
            return f"expected dtype {expected.dtype}{at}, got {got.dtype}"
        got, expected = got.detach().cpu(), expected.detach().cpu()
        if expected.is_floating_point() or expected.is_complex():
            close = torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
        else:
            close = got == expected
        if bool(close.all()):
            return None
        if expected.dim() == 0:
            return f"expected {expected.item()}{at}, got {got.item()}"
        bad = (~close).nonzero()[0].tolist()
        index = tuple(bad) if len(bad) != 1 else bad[0]
        count = int((~close).sum())
        return (f"{count} of {close.numel()} values differ{at}; first at index {index}: "
                f"expected {expected[tuple(bad)].item()}, got {got[tuple(bad)].item()}")
    if isinstance(expected, (bool, np.bool_)):
        ok = isinstance(got, (bool, np.bool_)) and bool(got) == bool(expected)
        return None if ok else f"expected {expected!r}{at}, got {_show(got)}"
    if isinstance(expected, (int, float, np.number)):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float, np.number)) or isinstance(got, bool):
            return f"expected a number{at}, got {type(got).__name__} {_show(got)}"
        if math.isclose(float(got), float(expected), rel_tol=rtol, abs_tol=atol) or (
                math.isnan(float(got)) and math.isnan(float(expected))):
            return None
        return f"expected {expected!r}{at}, got {got!r}"
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"expected a {type(expected).__name__}{at}, got {type(got).__name__} {_show(got)}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items{at}, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = _mismatch(g, e, atol, rtol, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"expected a dict with keys {sorted(expected, key=str)}{at}, got {_show(got)}"
        for key in expected:
            problem = _mismatch(got[key], expected[key], atol, rtol, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    try:
        return None if bool(got == expected) else f"expected {_show(expected)}{at}, got {_show(got)}"
    except Exception:
        return f"expected {_show(expected)}{at}, got {_show(got)}"


def _compare(got, expected, compare, atol, rtol) -> str | None:
    """Run the default comparison, or a custom `compare(got, expected)` that returns False or raises
    AssertionError on a mismatch."""
    if compare is None:
        return _mismatch(got, expected, atol, rtol)
    try:
        ok = compare(got, expected)
    except AssertionError as error:
        return str(error).strip().split("\n")[0] or "the comparison failed"
    return None if ok is None or ok else "the comparison failed"


def _call(fn, case, seed: int):
    """Call `fn` on a copy of `case` (a tuple of arguments or a dict of keyword arguments) with torch's
    random generator seeded to `seed`, so a learner's function and the reference see the same randomness
    and the notebook's own random stream is left untouched."""
    import torch

    try:
        case = copy.deepcopy(case)  # a function that changes its input in place must not spoil the next call
    except Exception:
        pass
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fn(**case) if isinstance(case, dict) else fn(*case)


def _where_it_failed(error: BaseException) -> str:
    """' (line 4 of mask_a)' for the innermost frame of the traceback, or ''."""
    frames = traceback.extract_tb(error.__traceback__)
    return f" (line {frames[-1].lineno} of {frames[-1].name})" if len(frames) > 1 else ""


def _describe_case(case) -> str:
    if isinstance(case, dict):
        return ", ".join(f"{key}={_show(value, 30)}" for key, value in case.items())
    return ", ".join(_show(value, 30) for value in case)


# the latest verdict of each check by name, True when correct (this kernel's run so far)
VERDICTS: dict[str, bool] = {}

_FALLBACK = "   The rest of the notebook uses armini's reference version; fix yours and re-run this cell."


def check(name: str, candidate, reference, cases, *, compare=None, atol: float = 1e-5, rtol: float = 1e-5):
    """Compare a learner's function with armini's `reference` and print a verdict; never raises for a
    learner's mistake.

    cases:    a list of inputs, each a tuple of positional arguments or a dict of keyword arguments
              (a lone non-tuple value is taken as a single argument).
    compare:  optional ``compare(got, expected)`` returning False, or raising AssertionError, on a mismatch;
              by default tensors (shape, dtype, values within atol/rtol), numbers, bools, tuples, lists
              and dicts are compared.

    Returns `candidate` if it is right on every case, else `reference`, so that the next cells can use
    whatever this returns::

        mask_fn = check("mask A", mask_a, armini.nn.masked.causal_mask, cases=[(3,), (5,)])
    """
    cases = [case if isinstance(case, (tuple, dict)) else (case,) for case in cases]
    if not cases:
        raise ValueError("check() needs at least one case")
    VERDICTS[name] = False  # until every case is right (what require, nbgrader's hidden test, reads)
    if not callable(candidate):
        print(f"❌ {name}: expected a function, got {type(candidate).__name__} {_show(candidate)}\n{_FALLBACK}")
        return reference
    for k, case in enumerate(cases, start=1):
        expected = _call(reference, case, seed=k)  # a failure here is armini's bug, not the learner's: raise
        try:
            got = _call(candidate, case, seed=k)
        except NotImplementedError:
            print(f"⏭ {name}: not done yet — the rest of the notebook uses armini's reference version")
            return reference
        except Exception as error:
            print(f"❌ {name}: case {k} of {len(cases)} ({_describe_case(case)}) raised "
                  f"{type(error).__name__}: {error}{_where_it_failed(error)}\n{_FALLBACK}")
            return reference
        problem = _compare(got, expected, compare, atol, rtol)
        if problem:
            print(f"❌ {name}: case {k} of {len(cases)} ({_describe_case(case)}): {problem}\n{_FALLBACK}")
            return reference
    print(f"✅ {name}: correct on {len(cases)} check{'s' if len(cases) != 1 else ''}")
    VERDICTS[name] = True
    return candidate


def check_value(name: str, value, expected, *, compare=None, atol: float = 1e-5, rtol: float = 1e-5):
    """Like `check`, for an exercise whose answer is a value: print a verdict, return `value` if it matches
    `expected`, else `expected`.

    `value` may be a function of no arguments (how an exercise region produces a value: the learner fills
    in its body); it is called, and NotImplementedError means "not done yet".
    """
    VERDICTS[name] = False
    if callable(value) and not callable(expected):
        try:
            value = value()
        except NotImplementedError:
            print(f"⏭ {name}: not done yet — the rest of the notebook uses armini's reference value")
            return expected
        except Exception as error:
            print(f"❌ {name}: raised {type(error).__name__}: {error}{_where_it_failed(error)}\n{_FALLBACK}")
            return expected
    problem = _compare(value, expected, compare, atol, rtol)
    if problem:
        print(f"❌ {name}: {problem}\n{_FALLBACK.replace('version', 'value')}")
        return expected
    print(f"✅ {name}: correct")
    VERDICTS[name] = True
    return value


def require(*names: str) -> None:
    """Raise AssertionError unless the latest check of each name passed: the hidden test that nbgrader
    runs after an exercise's check (see armini.grading), since `check` itself never raises."""
    for name in names:
        if name not in VERDICTS:
            raise AssertionError(f"the check {name!r} did not run: restore the cell that calls it")
        if not VERDICTS[name]:
            raise AssertionError(f"{name}: not correct yet (the check's message above says why)")
    print(f"graded: {', '.join(names)} correct")


def note(msg: str) -> None:
    """Print a note that stands out from ordinary output."""
    print(f"📝 Note: {msg}")


# ----------------------------------------------------------------------------------------------
# 3. Reference answers that have no function of their own in the library. They live here, not in the
#    learner's notebook, so that no cell beside an exercise shows its answer.


def reference_bits_per_dim(log_prob_nats, D):
    """Lesson 01: mean bits per dimension of images with log-likelihoods `log_prob_nats` (nats, (B,))."""
    from .models.base import LN2

    return -log_prob_nats.mean() / (D * LN2)  # bits/dim = -log p(x) / (D ln 2)


def reference_dimensions(images) -> int:
    """Lesson 00: the number of values in one image of `images` (an ImageData or a (N, C, H, W) tensor)."""
    return math.prod(tuple(images.shape)[-3:])


if __name__ == "__main__":
    sys.exit(main())
