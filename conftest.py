"""pytest settings for the notebooks: a learner's changed notebook in notebooks/ is not run.

`ARMINI_QUICK=1 pytest` runs every notebook in solutions/ and notebooks/ with nbval. A notebook in
notebooks/ that you changed (exercises filled in, outputs saved, cells added) is skipped, with a line
saying so: its lesson is still tested through its solutions/ twin, and your work in progress (a
half-done exercise, an experiment that raises) cannot make the course's test command fail.
`python -m armini.course check` still checks that your notebook matches its lesson outside the
exercises. To run your own notebooks too: ARMINI_TEST_MY_NOTEBOOKS=1 pytest notebooks/
"""
import os
from pathlib import Path

# Settings for the whole test session, here at the root so that `pytest notebooks/` or one lesson alone
# runs as the full command does (nbval's notebook kernels, started later, inherit the environment).
os.environ.setdefault("ARMINI_QUICK", "1")  # small training budgets in lessons and tests
os.environ.setdefault("MPLBACKEND", "Agg")  # no windows, no inline images (reference outputs hold no figures)
# Lessons and tests train on the bundled subset, so results do not depend on whether the full set is installed.
os.environ.setdefault("ARMINI_DATA_SUBSET", "1")
# Notebook kernels run on one thread too: on a 2-core machine with anything else running, torch's
# spinning thread pool slows the many small operations of quick mode by 10x or more (a NADE cell
# of lesson 01 ran past nbval's 300 s limit with two threads under load). Set OMP_NUM_THREADS to
# override. Reference outputs (python -m armini.course record) are recorded on one thread as well.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from armini import course  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ARMINI_TEST_MY_NOTEBOOKS") == "1":
        return
    changed = {}  # notebook path -> changed by a learner?
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix != ".ipynb" or path.parent.name != "notebooks":
            continue
        if path not in changed:
            changed[path] = course.changed_by_learner(path)
        if changed[path]:
            item.add_marker(pytest.mark.skip(
                reason=f"notebooks/{path.name} has your changes: not run (solutions/{path.name} is; "
                       "ARMINI_TEST_MY_NOTEBOOKS=1 runs it)"))
