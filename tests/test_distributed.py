"""fit under torchrun (armini.distributed): two CPU processes (gloo) train like one process with the same
global batch, only rank 0 writes, a resume under two processes continues exactly, and the CLI runs unchanged.

One launch of `python -m torch.distributed.run --standalone --nproc_per_node=2 tests/test_distributed.py
worker OUT` does every two-process run (this file is also the workers' program); the test compares what
they left in OUT with one-process runs made here.
"""
import os
from collections import Counter
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from armini import distributed, train
from armini.models import MODELS

REPO = Path(__file__).resolve().parents[1]
PIXELCNN = dict(channels=8, n_blocks=1, head_channels=8)  # tiny: the launch dominates the test's time
ARDM = dict(channels=8, mults=(1,), emb_dim=8)
FIT = dict(steps=4, batch_size=16, eval_every=2, device="cpu", progress=False)  # batch_size: the global batch
CLI = ["train", "pixelcnn", "--steps", "2", "--size", "7", "--levels", "4", "--limit", "64", "--batch-size", "16",
       "--eval-images", "64", "--samples", "0", "--device", "cpu", "--no-progress",
       "-o", "channels=8", "-o", "n_blocks=1", "-o", "head_channels=8"]


def tiny_data():
    """(train, test) 4-level 7x7 images, the same in every process."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 4, (64, 1, 7, 7), generator=g), torch.randint(0, 4, (40, 1, 7, 7), generator=g)


SLICES = []  # how many images each call of the loss saw in this process


def counted_loss(model, x, y):
    """The default objective (model.loss), counting the images of each call."""
    SLICES.append(len(x))
    return model.loss(x, y)


def new_model(name: str):
    torch.manual_seed(0)
    return MODELS[name](shape=(1, 7, 7), levels=4, **(PIXELCNN if name == "pixelcnn" else ARDM))


def run_in_one_go(name: str, out: Path):
    """fit for FIT's steps at once (checkpoint in out/model.pt): (model, history)."""
    model = new_model(name)
    hist = train.fit(model, *tiny_data(), checkpoint=out / "model.pt", loss_fn=counted_loss, **FIT)
    return model, hist


def run_with_resume(name: str, out: Path):
    """The same run stopped after 2 steps, then resumed into a fresh model (printing "resuming from ...")."""
    train.fit(new_model(name), *tiny_data(), checkpoint=out / "model.pt", stop_after=2, **FIT)
    model = MODELS[name](shape=(1, 7, 7), levels=4, **(PIXELCNN if name == "pixelcnn" else ARDM))
    hist = train.fit(model, *tiny_data(), checkpoint=out / "model.pt", resume=True, **{**FIT, "progress": True})
    return model, hist


def summary(model, hist) -> dict:
    return dict(weights=model.state_dict(), train=hist.train, test=hist.test, final=hist.final_test_bpd,
                images_seen=hist.images_seen, model_class=type(model).__name__)


def worker(out: Path):
    """One of the two processes torchrun starts: every run, then this rank's results in out/rank{R}.pt."""
    torch.set_num_threads(1)
    rank = distributed.from_env().rank
    writes = []  # the checkpoints this process wrote
    write = train._write_checkpoint
    train._write_checkpoint = lambda path, state: (writes.append(str(path)), write(path, state))
    results = {
        "pixelcnn": summary(*run_in_one_go("pixelcnn", out / "pixelcnn")),
        "slices": list(SLICES),
        "pixelcnn resumed": summary(*run_with_resume("pixelcnn", out / "pixelcnn-resumed")),
        "ardm": summary(*run_in_one_go("ardm", out / "ardm")),  # a loss drawing random numbers
        "ardm resumed": summary(*run_with_resume("ardm", out / "ardm-resumed")),
    }
    model = new_model("pixelcnn")  # resume what one process trained (the test ran it before the launch)
    hist = train.fit(model, *tiny_data(), checkpoint=out / "one-then-two" / "model.pt", resume=True, **FIT)
    results["one then two"] = summary(model, hist)
    calls = []  # rank 0's clock passes the time limit after two steps, rank 1's never: both must stop there
    clock = (lambda: 100.0 * len(calls)) if rank == 0 else (lambda: 1.0 * len(calls))
    hist = train.fit(new_model("pixelcnn"), tiny_data()[0], steps=4, batch_size=16, device="cpu", progress=False,
                     time_limit=150, clock=clock, loss_fn=lambda model, x, y: (calls.append(1), model.loss(x, y))[1])
    results["time limit"] = hist.steps, hist.stopped_early
    from armini.__main__ import main  # the command line, as `python -m armini` runs it

    results["cli status"] = main([*CLI, "--out", str(out / "cli")])
    results["writes"] = writes
    results["world"] = distributed.from_env().size, dist.is_initialized(), dist.get_backend()
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Launch the two workers once: (the folder they wrote, rank 0's results, rank 1's results)."""
    out = tmp_path_factory.mktemp("two")
    train.fit(new_model("pixelcnn"), *tiny_data(), checkpoint=out / "one-then-two" / "model.pt", stop_after=2, **FIT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, "worker",
           str(out)]
    done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return out, ranks[0], ranks[1], done.stdout


def test_processes_joined_with_gloo(two_processes):
    _, rank0, rank1, _ = two_processes
    assert rank0["world"] == rank1["world"] == (2, True, "gloo")


def test_two_processes_train_like_one_with_the_same_global_batch(two_processes, tmp_path):
    _, rank0, rank1, _ = two_processes
    model, hist = run_in_one_go("pixelcnn", tmp_path)
    two = rank0["pixelcnn"]
    assert two["model_class"] == "PixelCNN"  # the model itself, not a DDP wrapper
    for name, w in model.state_dict().items():
        torch.testing.assert_close(two["weights"][name], w, rtol=0, atol=1e-5, msg=name)
    assert [s for s, _ in two["train"]] == [s for s, _ in hist.train]
    torch.testing.assert_close([b for _, b in two["train"]], [b for _, b in hist.train], rtol=0, atol=1e-5)
    torch.testing.assert_close(two["test"], hist.test, rtol=0, atol=1e-5)  # sharded evaluation, all-reduced
    assert two["final"] == pytest.approx(hist.final_test_bpd, abs=1e-5)
    assert two["images_seen"] == hist.images_seen == 4 * 16  # the global batches
    assert set(rank0["slices"]) == set(rank1["slices"]) == {8}  # each process: its half of each batch
    for name, w in two["weights"].items():  # the copies stay equal, and both processes report the same numbers
        assert torch.equal(rank1["pixelcnn"]["weights"][name], w), name
    assert rank1["pixelcnn"]["test"] == two["test"] and rank1["pixelcnn"]["train"] == two["train"]


def test_a_time_limit_stops_every_process_together(two_processes):
    _, rank0, rank1, _ = two_processes
    assert rank0["time limit"] == rank1["time limit"] == (2, True)


@pytest.mark.parametrize("name", ["pixelcnn", "ardm"])
def test_resume_under_two_processes_continues_exactly(two_processes, name):
    _, rank0, rank1, _ = two_processes
    at_once, resumed = rank0[name], rank0[f"{name} resumed"]
    for key, w in at_once["weights"].items():
        assert torch.equal(resumed["weights"][key], w), key
        assert torch.equal(rank1[f"{name} resumed"]["weights"][key], w), key
    assert resumed["train"] == at_once["train"] and resumed["test"] == at_once["test"]


def test_a_checkpoint_of_one_process_resumes_under_two(two_processes, tmp_path):
    _, rank0, rank1, _ = two_processes
    model, hist = run_in_one_go("pixelcnn", tmp_path)  # the whole run in one process
    for name, w in model.state_dict().items():
        torch.testing.assert_close(rank0["one then two"]["weights"][name], w, rtol=0, atol=1e-5, msg=name)
    torch.testing.assert_close(rank0["one then two"]["test"], hist.test, rtol=0, atol=1e-5)
    assert rank1["one then two"]["test"] == rank0["one then two"]["test"]


def test_only_rank_0_writes_checkpoints_and_prints(two_processes):
    out, rank0, rank1, stdout = two_processes
    assert rank1["writes"] == []
    written = Counter(Path(p).parent.name for p in rank0["writes"])  # checkpoint_every=1000: at the end of each fit
    assert written == {"pixelcnn": 1, "pixelcnn-resumed": 2, "ardm": 1, "ardm-resumed": 2, "one-then-two": 1, "cli": 1}
    assert stdout.count("resuming from") == 2  # pixelcnn and ardm, rank 0 only
    assert sorted(p.name for p in (out / "pixelcnn").iterdir()) == ["model.pt"]  # no temporaries left over
    model, info = train.load_checkpoint(out / "pixelcnn" / "model.pt", device="cpu")
    assert info["step"] == 4
    for key, w in model.state_dict().items():
        assert torch.equal(rank0["pixelcnn"]["weights"][key], w), key


def test_the_command_line_runs_unchanged_under_torchrun(two_processes):
    out, rank0, rank1, _ = two_processes
    assert rank0["cli status"] == rank1["cli status"] == 0
    model, info = train.load_checkpoint(out / "cli" / "model.pt", device="cpu")
    assert info["step"] == 2 and info["fit_args"]["batch_size"] == 16


def test_a_global_batch_that_does_not_split_is_refused_before_any_process_waits(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    model = new_model("pixelcnn")
    with pytest.raises(ValueError, match=r"batch_size 15 is the global batch.*multiple of 2, such as 14 or 16"):
        train.fit(model, *tiny_data(), steps=1, batch_size=15, progress=False, device="cpu")
    with pytest.raises(ValueError, match="param_groups .* cannot train under torchrun"):
        train.fit(model, *tiny_data(), steps=1, batch_size=16, progress=False, device="cpu",
                  loss_fn=lambda m, x, y: {"all": m.loss(x)}, param_groups={"all": model})
    assert not dist.is_initialized()  # refused before joining: no process waits for this one


def test_shards_cover_the_global_batch_once():
    idx = torch.randperm(12)
    parts = [distributed.shard(idx, distributed.World(rank=r, size=3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), idx)
    assert distributed.shard(idx, distributed.World()) is idx  # one process: the whole batch, untouched


def test_a_wrong_rank_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2"):
        distributed.from_env()


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(Path(sys.argv[2]))
