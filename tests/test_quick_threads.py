"""Quick mode runs torch on one CPU thread in a learner's kernel too (armini.set_threads, called on import)."""
import os
import subprocess
import sys

import pytest
import torch

import armini


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_quick_mode_sets_one_thread(monkeypatch, threads_restored):
    monkeypatch.setenv("ARMINI_QUICK", "1")
    monkeypatch.delenv("ARMINI_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)  # what torch starts with on a 2-core laptop
    assert armini.set_threads() == 1
    assert torch.get_num_threads() == 1


def test_outside_quick_mode_threads_are_left_alone(monkeypatch, threads_restored):
    monkeypatch.delenv("ARMINI_QUICK", raising=False)
    monkeypatch.delenv("ARMINI_THREADS", raising=False)
    torch.set_num_threads(2)
    assert armini.set_threads() == 2


def test_omp_num_threads_wins_over_quick_mode(monkeypatch, threads_restored):
    monkeypatch.setenv("ARMINI_QUICK", "1")
    monkeypatch.delenv("ARMINI_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)  # as torch would have read OMP_NUM_THREADS=2 at start
    assert armini.set_threads() == 2


@pytest.mark.parametrize("quick", ["1", ""])
def test_armini_threads_sets_the_count_in_any_mode(monkeypatch, threads_restored, quick):
    monkeypatch.setenv("ARMINI_QUICK", quick)
    monkeypatch.setenv("ARMINI_THREADS", "3")
    assert armini.set_threads() == 3


@pytest.mark.parametrize("bad", ["two", "0", "-1", "1.5"])
def test_bad_armini_threads_says_what_to_give(monkeypatch, threads_restored, bad):
    monkeypatch.setenv("ARMINI_THREADS", bad)
    with pytest.raises(ValueError, match="ARMINI_THREADS.*whole number of CPU threads"):
        armini.set_threads()


def test_import_armini_sets_it_in_a_fresh_process(tmp_path):
    """What a learner's kernel does: its first cell imports armini, with no OMP_NUM_THREADS set."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ARMINI_THREADS")}
    env["ARMINI_QUICK"] = "1"
    code = "import torch; torch.set_num_threads(2); import armini; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "1"
