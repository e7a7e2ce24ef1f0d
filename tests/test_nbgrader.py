"""Grading with nbgrader: `python -m armini.course nbgrader` makes a course folder whose generate_assignment
writes the notebooks `python -m armini.course build` writes, and whose autograde gives each exercise's
points exactly when its check passes (armini.grading).

The slow part (one lesson through nbgrader's own generate_assignment and autograde, two students) runs
once per module on lesson 00, the cheapest lesson with exercises, in quick mode, network-free, with the
course folder, its gradebook and Jupyter's runtime files in tmp_path."""
import os
import subprocess
import sys

import nbformat
import pytest

pytest.importorskip("nbgrader", reason="nbgrader is not installed: pip install nbgrader (or pip install -e '.[dev]')")

from armini import course, grading  # noqa: E402

ROOT = course.ROOT
LESSON = "00_start_here"  # the cheapest lesson with exercises: two, one checked in its own cell, one in the answer cell
WRONG = {"quantize": "return x * K // 255"}  # off by one: values reach K, which the check rejects
STUDENTS = {"right": {}, "wrong": WRONG}  # each student's answers: the solutions, except these exercises


def _lesson(stem):
    return course._read(ROOT / "solutions" / f"{stem}.ipynb")


def _answer(source, body):
    """`source` with its solution region's body replaced by `body` (indented as the region was)."""
    lines, out, inside = source.split("\n"), [], False
    for line in lines:
        if course.BEGIN in line:
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out += [line, indent + body]
        elif course.END in line:
            inside = False
            out.append(line)
        elif not inside:
            out.append(line)
    return "\n".join(out)


def _submission(release, source, wrong):
    """A learner's notebook: the released one with every answer cell filled from the source (the solution),
    or with the wrong answer for the exercises named in `wrong`."""
    answers = {cell.id: cell.source for cell in source.cells}
    nb = nbformat.from_dict(copy_of(release))
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            name = course.exercise_name(answers[cell.id])
            cell.source = _answer(answers[cell.id], wrong[name]) if name in wrong else answers[cell.id]
    return nb


def copy_of(nb):
    return nbformat.reads(nbformat.writes(nb), as_version=4)


def _nbgrader(folder, *args, env):
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Lesson 00 through the instructor's steps: prepare, generate_assignment, two submissions, autograde."""
    from nbgrader.api import Gradebook

    tmp = tmp_path_factory.mktemp("nbgrader")
    folder = tmp / "lab"
    assert course.main(["nbgrader", "--out", str(folder), "--lessons", LESSON[:2]]) == 0
    env = {**os.environ, **course.RECORD_ENV, "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"), "IPYTHONDIR": str(tmp / "ipython")}
    _nbgrader(folder, "generate_assignment", LESSON, env=env)
    release = nbformat.read(folder / "release" / LESSON / f"{LESSON}.ipynb", as_version=4)
    source = nbformat.read(folder / "source" / LESSON / f"{LESSON}.ipynb", as_version=4)
    for student, wrong in STUDENTS.items():
        path = folder / "submitted" / student / LESSON / f"{LESSON}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(_submission(release, source, wrong), path)
    _nbgrader(folder, "autograde", LESSON, "--create", env=env)
    scores = {}
    with Gradebook(f"sqlite:///{folder / 'gradebook.db'}") as gradebook:
        for student in STUDENTS:
            notebook = gradebook.find_submission(LESSON, student).notebooks[0]
            scores[student] = {grade.name: (grade.score, grade.max_score) for grade in notebook.grades}
    autograded = {student: nbformat.read(folder / "autograded" / student / LESSON / f"{LESSON}.ipynb", as_version=4)
                  for student in STUDENTS}
    return {"folder": folder, "release": release, "source": source, "scores": scores, "autograded": autograded}


def _graded_by(source, exercise):
    """The grade id of the test cell that grades `exercise` in nbgrader source notebook `source`."""
    for found in grading.exercises(source):
        if found.name == exercise:
            for cell in source.cells[found.test:]:
                if cell.metadata.get("nbgrader", {}).get("grade"):
                    return cell.metadata.nbgrader.grade_id
    raise AssertionError(f"no test cell grades {exercise!r}")


def test_generate_assignment_writes_the_built_student_copy(graded):
    built = course.student_notebook(_lesson(LESSON), f"solutions/{LESSON}.ipynb")
    released = {cell.id: cell for cell in graded["release"].cells}
    for index, cell in enumerate(built.cells):
        assert cell.id in released, f"cell {index} is missing from nbgrader's release"
        assert (released[cell.id].cell_type, released[cell.id].source) == (cell.cell_type, cell.source), \
            f"cell {index} differs between nbgrader's release and python -m armini.course build"
    added = [cell for cell in graded["release"].cells if cell.id not in {c.id for c in built.cells}]
    assert [cell.source.split("\n")[0][:10] for cell in added] == ["# Graded: "]  # the check inside an answer cell
    text = nbformat.writes(graded["release"])
    assert "HIDDEN TESTS" not in text and "require(" not in text and course.BEGIN not in text


def test_correct_submission_scores_full_marks(graded):
    scores = graded["scores"]["right"]
    assert len(scores) == len(grading.exercises(graded["source"])) == 2  # one test cell per exercise
    assert all(score == maximum == 1 for score, maximum in scores.values()), scores


def test_wrong_answer_loses_exactly_its_exercises_points(graded):
    wrong = _graded_by(graded["source"], "quantize")
    scores = graded["scores"]["wrong"]
    assert scores[wrong] == (0, 1), scores
    assert all(score == maximum for name, (score, maximum) in scores.items() if name != wrong), scores
    printed = "".join(output.get("text", "") for cell in graded["autograded"]["wrong"].cells
                      for output in cell.get("outputs", []))
    assert "❌ quantize" in printed and "✅ dimensions of an image" in printed  # the check said why


# ----------------------------------------------------------------------------------------------
# Every lesson: nbgrader's stub and hidden-test steps make the built student copy (no kernel, no gradebook)


def _generated(nb):
    """What generate_assignment writes from source notebook `nb`, by its preprocessors that change sources."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput

    resources = {}
    for step in (grading.ClearExercises(), ClearOutput(), ClearHiddenTests()):
        nb, resources = step.preprocess(nb, resources)
    return nb


@pytest.mark.parametrize("stem", [path.stem for path in course._sources(ROOT)])
def test_every_lesson_generates_its_built_student_copy(stem):
    solutions = _lesson(stem)
    source = grading.source_notebook(solutions, stem)
    generated, built = _generated(copy_of(source)), course.student_notebook(solutions, stem)
    theirs = {cell.id: cell for cell in generated.cells}
    for index, cell in enumerate(built.cells):
        assert (theirs[cell.id].cell_type, theirs[cell.id].source) == (cell.cell_type, cell.source), f"cell {index}"
    for found in grading.exercises(source):  # every exercise answered in a solution cell, checked by a test cell
        meta = source.cells[found.cell].metadata.nbgrader
        assert meta.solution and meta.grade_id
        assert found.test is not None and found.checks, f"{stem}: exercise {found.name!r} has no check"
    tests = [cell for cell in source.cells if cell.metadata.get("nbgrader", {}).get("grade")]
    assert sum(cell.metadata.nbgrader.points for cell in tests) == len(grading.exercises(source))
    assert all("require(" in cell.source and cell.metadata.nbgrader.locked for cell in tests)


# ----------------------------------------------------------------------------------------------
# source_notebook on small notebooks: where the metadata and the hidden tests go


def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    for index, (kind, text) in enumerate(cells):
        cell = nbformat.v4.new_code_cell(text) if kind == "code" else nbformat.v4.new_markdown_cell(text)
        cell.id = f"c{index}"
        nb.cells.append(cell)
    return nb


EXERCISE = "# Exercise: double\ndef double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"


def test_source_notebook_places_tests_and_points():
    nb = _notebook(("code", EXERCISE), ("markdown", "Why?"),
                   ("code", '# NBVAL_CHECK_OUTPUT\ncheck("double", double, f, [1])'),
                   ("code", EXERCISE.replace("double", "triple") + '\n\nt = check_value("triple", triple, 3)'),
                   ("markdown", "# Exercise: say\n### BEGIN SOLUTION\nbecause\n### END SOLUTION"))
    source = grading.source_notebook(nb, "toy", points=2)
    meta = [cell.metadata.get("nbgrader") for cell in source.cells]
    assert [cell.id for cell in source.cells] == ["c0", "c1", "c2", "c3", "triple-graded", "c4"]
    assert meta[0] == {"grade": False, "grade_id": "double", "locked": False, "schema_version": 3, "solution": True}
    assert meta[1] is None
    assert meta[2] == {"grade": True, "grade_id": "double-check", "locked": True, "points": 2, "schema_version": 3,
                       "solution": False}
    assert source.cells[2].source == 'check("double", double, f, [1])\n' + grading._hidden_test(["double"])
    assert meta[3]["solution"] and not meta[3]["grade"]  # the answer cell holding its check stays the learner's
    assert meta[4]["grade"] and meta[4]["locked"] and meta[4]["points"] == 2
    assert source.cells[4].source.startswith('# Graded: the check above ("triple") must pass.\n### BEGIN HIDDEN')
    assert meta[5]["solution"] and meta[5]["grade"] and meta[5]["points"] == 2  # a written answer: graded by hand
    assert EXERCISE in nb.cells[0].source and "NBVAL" in nb.cells[2].source  # the lesson itself is left alone


def test_an_exercise_without_a_check_is_an_answer_without_points():
    source = grading.source_notebook(_notebook(("code", EXERCISE), ("code", "double(2)")), "toy")
    assert source.cells[0].metadata.nbgrader.solution
    assert not any(cell.metadata.get("nbgrader", {}).get("grade") for cell in source.cells)


def test_clear_exercises_writes_armini_stub():
    generated = _generated(grading.source_notebook(_notebook(("code", EXERCISE)), "toy"))
    assert generated.cells[0].source == ('# Exercise: double\ndef double(x):\n    # YOUR CODE HERE\n'
                                         '    raise NotImplementedError("Exercise: double")')


def test_config_uses_armini_stub():
    from nbgrader.converters import GenerateAssignment
    from nbgrader.preprocessors import ClearSolutions
    from traitlets.config import Config

    config = Config()
    exec(grading.CONFIG, {"get_config": lambda: config})  # as nbgrader reads nbgrader_config.py
    steps, default = config.GenerateAssignment.preprocessors, GenerateAssignment.class_traits()["preprocessors"].default()
    assert [grading.ClearExercises if step is ClearSolutions else step for step in default] == steps


# ----------------------------------------------------------------------------------------------
# The command: a course folder from solutions/, never over anything a user had


def _run(capsys, *argv):
    status = course.main(["nbgrader", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_nbgrader_command_writes_the_course_folder(tmp_path, capsys):
    folder = tmp_path / "lab"
    status, out, err = _run(capsys, "--out", str(folder), "--lessons", "00,01_factorisation", "--points", "3")
    assert status == 0, err
    written = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    assert written == ["nbgrader_config.py", "source/00_start_here/00_start_here.ipynb",
                       "source/01_factorisation/01_factorisation.ipynb"]
    assert (folder / "nbgrader_config.py").read_text() == grading.CONFIG
    nb = nbformat.read(folder / "source/01_factorisation/01_factorisation.ipynb", as_version=4)
    points = [cell.metadata.nbgrader.points for cell in nb.cells if cell.metadata.get("nbgrader", {}).get("grade")]
    assert points == [3] * len(grading.exercises(nb))
    assert "generate_assignment" in out


def test_nbgrader_command_one_assignment_and_lessons_without_exercises(tmp_path, capsys):
    folder = tmp_path / "lab"
    status, out, err = _run(capsys, "--out", str(folder), "--lessons", "05,00", "--assignment", "week1")
    assert status == 0, err
    assert sorted(path.name for path in (folder / "source" / "week1").iterdir()) == [
        "00_start_here.ipynb", "05_pixelcnnpp.ipynb"]
    assert "skipped 05_pixelcnnpp_appendix: no exercises" in out


def test_nbgrader_command_refuses_a_folder_with_files(tmp_path, capsys):
    folder = tmp_path / "lab"
    (folder / "source" / "00_start_here").mkdir(parents=True)
    mine = folder / "source" / "00_start_here" / "00_start_here.ipynb"
    mine.write_text("my edited assignment")
    (folder / "gradebook.db").write_bytes(b"grades")
    status, out, err = _run(capsys, "--out", str(folder), "--lessons", "00")
    assert status == 1 and "already exists and is not empty, so nothing was written; --force" in err
    assert mine.read_text() == "my edited assignment" and sorted(p.name for p in folder.iterdir()) == [
        "gradebook.db", "source"]
    # --force: the lesson is refreshed, the old version kept in armini-backup/, the rest untouched
    status, out, err = _run(capsys, "--out", str(folder), "--lessons", "00", "--force")
    assert status == 0, err
    backups = list((folder / grading.BACKUPS).rglob("00_start_here.ipynb"))
    assert len(backups) == 1 and backups[0].read_text() == "my edited assignment"
    assert f"your version of {mine} is saved as {backups[0]}" in out
    assert "require(" in mine.read_text() and (folder / "gradebook.db").read_bytes() == b"grades"


def test_nbgrader_command_keeps_an_instructors_config(tmp_path, capsys):
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "nbgrader_config.py").write_text("c = get_config()\n")
    status, out, err = _run(capsys, "--out", str(folder), "--lessons", "00", "--force")
    assert status == 0, err
    assert (folder / "nbgrader_config.py").read_text() == "c = get_config()\n"
    assert "kept your" in out and "armini.grading.CONFIG" in out


@pytest.mark.parametrize("argv, message", [
    (["--lessons", "00"], "nbgrader needs --out COURSE_DIR"),
    (["--out", "{tmp}/lab", "--lessons", "42"], "no lesson '42'"),
    (["--out", "{tmp}/lab", "--lessons", "05_pixelcnnpp_appendix"], "no exercises, so nothing to grade"),
    (["--out", "{root}/solutions/lab", "--lessons", "00"], "inside solutions/"),
    (["--out", "{root}/notebooks", "--lessons", "00"], "inside notebooks/"),
    (["--out", "{tmp}/lab", "--assignment", "week 1"], "assignment name 'week 1'"),
    (["--out", "{tmp}/lab", "--points", "0"], "--points must be a positive number"),
])
def test_nbgrader_command_errors(tmp_path, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path, root=ROOT) for arg in argv]
    try:
        status = course.main(["nbgrader", *argv])
    except SystemExit as stop:  # argparse's errors
        status = stop.code
    assert status != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "lab").exists() and not (ROOT / "solutions" / "lab").exists()
