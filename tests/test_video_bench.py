"""The video race (armini.video_bench, `python -m armini.bench video`): settings refused before any training with a
message naming the flag, a tiny race whose records and JSON hold what the table prints, the JSON rewritten after
each route (a run stopped midway keeps the routes done), and a staged model (fit_stages) trained by its own stages."""
import json
import math

import pytest
import torch

from armini import video_bench
from armini.models import MODELS

TINY = dict(frames=3, size=16, levels=4, train_videos=12, test_videos=10)


def settings(**changes):
    return dict(dict(routes=["vpn", "frame-predictor"], budget_s=1.0, samples=10, **TINY), **changes)


def check(**changes):
    s = settings(**changes)
    video_bench.check_settings(s.pop("routes"), **s)


@pytest.mark.parametrize("changes, says", [
    (dict(routes=["vpn", "pixelcnn"]), "unknown route(s) 'pixelcnn'; choose from vpn,frame-predictor,videogpt"),
    (dict(routes=[]), "(none given)"),
    (dict(routes=["vpn", "vpn"]), "names a route twice"),
    (dict(budget_s=0.0), "--budget must be a number of seconds > 0"),
    (dict(budget_s=math.nan), "--budget must be a number of seconds > 0"),
    (dict(frames=1), "--frames must be a whole number >= 2"),
    (dict(levels=1), "--levels must be a whole number from 2 to 256"),
    (dict(levels=300), "--levels must be a whole number from 2 to 256"),
    (dict(samples=5), "--samples must be 0 (no FVD-MM) or a whole number from 10"),
    (dict(samples=11), "to --test-videos and --train-videos (10"),
    (dict(size=12), "the FVD-MM judge reads frames of side 16, 32, 64, got --size 12"),
    (dict(train_videos=0), "--train-videos must be a whole number >= 1"),
])
def test_bad_settings_are_refused_with_the_flag_named(changes, says):
    with pytest.raises(ValueError) as e:
        check(**changes)
    assert says in str(e.value)


def test_good_settings_pass_and_no_fvd_allows_any_size():
    check()
    check(size=12, samples=0)  # FVD-MM skipped: the judge's sizes do not matter


def test_a_route_that_cannot_take_the_setting_says_which(monkeypatch):
    monkeypatch.setitem(video_bench.ROUTE_KWARGS, "frame-predictor", dict(channels=0))
    with pytest.raises(ValueError, match=r"route frame-predictor cannot take 3 frames of 16x16 at 4 levels: .*channels"):
        check()


def test_nothing_trains_when_the_json_cannot_be_written(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the settings were checked")

    monkeypatch.setattr(video_bench, "train_route", no_training)
    existing = tmp_path / "race.json"
    existing.write_text("[]")
    args = ["--routes", "vpn", "--budget", "1", "--frames", "3", "--train-videos", "12", "--test-videos", "10"]
    assert video_bench.main(args + ["--json", str(existing)]) == 1
    err = capsys.readouterr().err
    assert "already exists: add --overwrite" in err and err.count("\n") == 1
    assert existing.read_text() == "[]"  # the user's file is untouched
    assert video_bench.main(args + ["--json", str(tmp_path / "missing" / "race.json")]) == 1
    assert "the folder" in capsys.readouterr().err
    assert video_bench.main(args + ["--samples", "3"]) == 1
    assert "--samples must be 0" in capsys.readouterr().err


def test_json_is_rewritten_after_each_route(tmp_path, monkeypatch):
    done = []

    def fake_route(name, *args, **kwargs):
        if done:
            raise RuntimeError("stopped midway")
        done.append(name)
        return dict(route=name)

    monkeypatch.setattr(video_bench, "bench_route", fake_route)
    path = tmp_path / "race.json"
    with pytest.raises(RuntimeError):
        video_bench.race(["vpn", "frame-predictor"], budget_s=1.0, samples=0, json_path=path, progress=None, **TINY)
    assert json.loads(path.read_text()) == [dict(route="vpn")]  # the route done is kept
    assert [p.name for p in tmp_path.iterdir()] == ["race.json"]  # no temporary left behind


def test_tiny_race_records_what_the_table_prints(tmp_path, capsys):
    path = tmp_path / "race.json"
    code = video_bench.main(["--routes", "vpn,frame-predictor", "--budget", "0.5", "--cpu-time", "--frames", "3",
                             "--levels", "4", "--train-videos", "12", "--test-videos", "10", "--samples", "10",
                             "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    records = json.loads(path.read_text())
    assert [r["route"] for r in records] == ["vpn", "frame-predictor"]
    for r in records:
        assert r["kind"] == "video" and r["shape"] == [3, 1, 16, 16] and r["levels"] == 4 and r["clock"] == "cpu"
        assert r["steps"] >= 1 and r["params"] > 0 and not r["is_bound"]
        assert r["nats_per_frame"] == pytest.approx(r["test_bpd"] * math.log(2) * 256)  # bits/dim x ln 2 x C*H*W
        assert r["s_per_frame_batch"] > 0 and r["s_per_frame_one"] > 0
        assert r["samples"] == 10 and r["fvd"] >= 0 and r["fvd_floor"] == records[0]["fvd_floor"]  # one floor
        assert f"{r['nats_per_frame']:.1f}" in out and f"{r['fvd']:.1f} ({r['fvd_floor']:.1f})" in out
    vpn, fp = records
    assert vpn["sampling_steps"] == 3 * 256 and fp["sampling_steps"] == 3  # a step per pixel, a step per frame
    assert "wrote" in out and "3 frames of 16x16 at 4 levels" in out


class StagedVideo(MODELS["frame-predictor"]):
    """A frame predictor trained 'in stages' (one fit per stage), with a bound: to test how staged routes run."""

    nll_is_bound = True

    def fit_stages(self, train, test=None, *, steps, time_limit, clock, **kwargs):
        from armini import train as training

        self.stage_calls = getattr(self, "stage_calls", 0) + 1
        return training.fit(self, train, test, steps=3, time_limit=time_limit, clock=clock, **kwargs)


def test_a_staged_route_is_trained_by_its_fit_stages_and_labelled_a_bound(monkeypatch, capsys):
    monkeypatch.setitem(MODELS, "videogpt", StagedVideo)
    monkeypatch.setitem(video_bench.ROUTE_KWARGS, "videogpt", dict(channels=4, lstm_channels=4))
    train_set, test_set = video_bench.video_sets(**TINY)
    models = {}
    record = video_bench.bench_route("videogpt", train_set, test_set, budget_s=5.0, samples=0, models=models)
    assert models["videogpt"].stage_calls == 1 and record["steps"] == 3
    assert record["is_bound"] and "fvd" not in record
    table = video_bench.format_table([record])
    assert f"{record['nats_per_frame']:.1f} (bound)" in table and "FVD-MM" in table
