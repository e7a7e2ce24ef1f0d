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

import pytest

from armini import course


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
