"""Lesson 19's build-it exercise (solutions/19_side_by_side.ipynb): the Pareto front of the course table (quality
against sampling time, both lower is better). The check passes the right answer and rejects the usual wrong ones
with a verdict that says where the result differs; the learner's copy shows no answer.

The cases below are the lesson's own synthetic tables, plus a table shaped like the bench's records."""
from pathlib import Path

import nbformat

from armini import course
from armini.bench import pareto_front
from armini.course import check

ROOT = Path(__file__).resolve().parent.parent
LESSON = "19_side_by_side.ipynb"


def rows(*points):
    return [dict(model=f"m{i}", s=s, fid=f) for i, (s, f) in enumerate(points)]


def pareto_cases():
    table = [dict(model=name, sample_s_per_image_batch=s, fid=f) for name, s, f in
             (("pixelcnn", 0.03, 60.0), ("pixelsnail", 0.2, 45.0), ("vq-transformer", 0.01, 70.0),
              ("var", 0.006, 90.0), ("pmard", 0.011, 75.0), ("ardm", 0.3, 80.0))]
    return [(rows((10.0, 5.0), (0.1, 50.0), (1.0, 20.0)), "s", "fid"),
            (rows((10.0, 5.0), (10.0, 60.0), (1.0, 20.0), (1.0, 21.0)), "s", "fid"),
            (rows((1.0, 2.0), (1.0, 2.0), (3.0, 1.0)), "s", "fid"),
            (rows((5.0, 5.0)), "s", "fid"),
            (table, "sample_s_per_image_batch", "fid")]


def right(records, x="sample_s_per_image_batch", y="fid"):
    front = []
    for a in records:
        if not any(b[x] <= a[x] and b[y] <= a[y] and (b[x] < a[x] or b[y] < a[y]) for b in records):
            front.append(a["model"])
    return front


def strictly_better_on_both(records, x="sample_s_per_image_batch", y="fid"):  # a tie on one axis never beats
    return [a["model"] for a in records if not any(b[x] < a[x] and b[y] < a[y] for b in records)]


def no_strict_part(records, x="sample_s_per_image_batch", y="fid"):  # every record beats itself: an empty front
    return [a["model"] for a in records if not any(b[x] <= a[x] and b[y] <= a[y] for b in records)]


def sorted_by_time(records, x="sample_s_per_image_batch", y="fid"):  # the right set, in the wrong order
    return sorted(right(records, x, y), key=lambda m: next(r[x] for r in records if r["model"] == m))


def quality_only(records, x="sample_s_per_image_batch", y="fid"):  # the best FID alone
    return [min(records, key=lambda r: r[y])["model"]]


def test_pareto_right(capsys):
    assert check("Pareto front", right, pareto_front, pareto_cases()) is right
    assert capsys.readouterr().out == "✅ Pareto front: correct on 5 checks\n"


def test_pareto_wrong_versions_are_caught(capsys):
    for wrong, case in ((strictly_better_on_both, 2), (no_strict_part, 1), (sorted_by_time, 1), (quality_only, 1)):
        got = check("Pareto front", wrong, pareto_front, pareto_cases())
        assert got is pareto_front, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith(f"❌ Pareto front: case {case} of 5"), (wrong.__name__, out)
        assert "armini's reference version" in out, out


def test_learner_copy_hides_the_answer_and_matches_the_build():
    source = nbformat.read(ROOT / "solutions" / LESSON, as_version=4)
    student = course.student_notebook(source, LESSON)
    assert course.giveaways(student, LESSON) == []
    exercise = next(c.source for c in student.cells if c.source.startswith("# Exercise: the Pareto front"))
    assert "beaten" not in exercise and "front.append" not in exercise  # the body is gone
    assert "def pareto(records" in exercise  # the signature stays
    built = ROOT / "notebooks" / LESSON
    assert built.read_text(encoding="utf-8") == course.to_json(student), \
        "notebooks/19_side_by_side.ipynb is out of date: python -m armini.course build"
