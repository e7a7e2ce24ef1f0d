"""The kill loop of issue 9: SIGKILL a training run at random moments, 30 times, with a checkpoint every step.

A flaky laptop kills runs at any instant, often in the middle of writing a checkpoint. After every kill
the checkpoint on disk must load and hold finite weights (the last good one), the next run must resume
from it, and once a run finishes no temporary file of the killed ones may be left beside it.

Each run is a fork of this process (torch is already imported, so a run starts in milliseconds): the
whole loop takes a few seconds on one core, quick enough for every CI run.
"""
import os
import random
import signal
import sys
import time
import traceback
import warnings

import pytest
import torch

import armini
from armini import train
from armini.models import PixelCNN

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill loop forks (POSIX only)")

KILLS = 30
SHAPE, K = (1, 6, 6), 4
SETTINGS = dict(steps=10**6, batch_size=8, lr=1e-3, lr_schedule="constant", warmup=0, checkpoint_every=1,
                resume=True, device="cpu", progress=False)


def tiny_run(path, **settings):
    """A tiny PixelCNN on tiny random images, resumed from `path` and saving there every step."""
    armini.seed_everything(0)
    model = PixelCNN(shape=SHAPE, levels=K, channels=8, n_blocks=1, head_channels=8)
    images = torch.randint(0, K, (64, *SHAPE), generator=torch.Generator().manual_seed(0))
    return train.fit(model, images, checkpoint=path, **{**SETTINGS, **settings})


def start_run(path, log):
    """Fork a child that trains until it is killed; returns its process id."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns about forking with threads
        pid = os.fork()
    if pid:
        return pid
    try:  # the child: never returns into pytest
        torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
        tiny_run(path)
        os._exit(0)
    except BaseException:
        log.write_text(traceback.format_exc())
        os._exit(1)


def temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".model.pt.") and p.name.endswith(".tmp"))


def test_sigkill_at_random_moments_leaves_a_loadable_checkpoint_and_no_stray_temporaries(tmp_path):
    path, log = tmp_path / "model.pt", tmp_path / "child.log"
    tiny_run(tmp_path / "warm-up.pt", stop_after=1)  # imports and first calls happen here, not in every child
    (tmp_path / "warm-up.pt").unlink()
    rng = random.Random(0)
    steps, left_behind = [], 0
    for kill in range(KILLS):
        pid = start_run(path, log)
        time.sleep(rng.uniform(0.05, 0.25))  # long enough for startup, a resume and a few saves
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), f"run {kill} ended by itself:\n" + (log.read_text() if log.exists() else "")

        if path.exists():  # the very first kill may come before the first save
            model, info = train.load_checkpoint(path, device="cpu")
            assert all(p.isfinite().all() for p in model.state_dict().values() if p.is_floating_point())
            assert info["history"].steps == info["step"] >= (steps[-1] if steps else 0)  # never goes back
            steps.append(info["step"])
        left_behind += bool(temporaries(tmp_path))
        assert len(temporaries(tmp_path)) <= 1  # each run removes what the previous kill left

    assert len(steps) >= KILLS - 2 and steps[-1] > steps[0], steps  # the runs did resume and make progress
    print(f"{KILLS} kills, checkpoints at steps {steps[0]}..{steps[-1]}, "
          f"{left_behind} kills left a temporary behind", file=sys.stderr)

    hist = tiny_run(path, stop_after=steps[-1] + 2)  # the next run, to its end
    assert hist.steps == steps[-1] + 2 and train.load_checkpoint(path)[1]["step"] == hist.steps
    assert temporaries(tmp_path) == []
