"""Tests for the command line (python -m armini) and the benchmark (python -m armini.bench), with tiny settings."""
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from armini import bench
from armini.__main__ import image_grid, main
from armini.models import MODELS, IndependentPixels




def run_cli(args, cwd):
    env = {**os.environ, "ARMINI_QUICK": "1", "ARMINI_DATA_SUBSET": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "armini", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_train_command_writes_checkpoint_samples_and_metrics(tmp_path, monkeypatch):
    args = ["train", "pixelcnn", "--data", "fashion-mnist", "--size", "7", "--levels", "4", "--batch-size", "16",
            "--eval-images", "100", "--samples", "4", "--out", "run", "--device", "cpu", "--no-progress",
            "-o", "channels=16", "-o", "n_blocks=1"]
    out = run_cli(args + ["--steps", "3"], tmp_path)
    assert "test bits/dim" in out
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.pt", "samples.png"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "pixelcnn" and metrics["steps"] == 3 and metrics["shape"] == [1, 7, 7]
    assert metrics["levels"] == 4 and metrics["test_images"] == 100 and 0 < metrics["test_bpd"] < 10
    assert "subset" in metrics["data_source"] and metrics["train_images_per_s"] > 0

    import matplotlib.image

    png = matplotlib.image.imread(run / "samples.png")
    assert png.shape[:2] == (230, 230)  # 2 x 2 images of 7 x 7 drawn 16x (112 px) with 2-pixel borders

    # resume in this process (quicker than a second interpreter)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    assert main(args + ["--steps", "5", "--resume", "--samples", "0"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 5


def test_train_command_amp_on_trains_in_bfloat16_on_a_cpu(tmp_path, monkeypatch):
    from armini import train
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)  # any CPU runs bfloat16, natively or not
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    args = ["train", "pixelcnn", "--size", "7", "--levels", "4", "--batch-size", "16", "--eval-images", "20",
            "--samples", "0", "--out", "run", "--device", "cpu", "--no-progress", "-o", "channels=8", "-o", "n_blocks=1",
            "--steps", "2"]
    assert main(args + ["--amp", "on"]) == 0
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["fit_args"]["amp"] == "torch.bfloat16"
    assert main(args + ["--overwrite"]) == 0  # the default on a CPU: float32
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["fit_args"]["amp"] == "None"


def test_list_and_unknown_model(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in MODELS)
    with pytest.raises(SystemExit) as e:
        main(["train", "no-such-model"])
    assert e.value.code == 2 and "pixelcnn" in capsys.readouterr().err


def test_image_grid():
    grid = image_grid(torch.full((3, 3, 4, 4), 255), levels=256)  # colour: (rows, cols, 3)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3) and grid.max() == 1.0


def test_image_grid_is_viz_make_grid_with_pixels_enlarged():
    from armini.viz import make_grid

    x = torch.randint(0, 4, (5, 1, 3, 2))
    grid = image_grid(x, levels=4, scale=3, pad=2)
    big = x.repeat_interleave(3, dim=2).repeat_interleave(3, dim=3) / 3.0  # each pixel a 3 x 3 block
    assert grid.shape == (3 * (9 + 2) + 2, 2 * (6 + 2) + 2)  # 5 images, 2 a row (sqrt(5) rounded), 3 rows
    np.testing.assert_allclose(grid, make_grid(big, nrow=2, pad=2, pad_value=1.0))


class CachedIndependent(IndependentPixels):
    """IndependentPixels with a 'fast sampler' (its cache is the normalised table), for the benchmark's timing."""

    def init_cache(self, x, y=None):
        return {"logp": torch.log_softmax(self.logits, dim=-1)}  # (C, H, W, K)

    def conditional_logprobs(self, x, index, y=None, cache=None):
        if cache is None:
            return super().conditional_logprobs(x, index, y, cache)
        return cache["logp"].flatten(0, -2)[index].expand(x.shape[0], -1, -1)  # (n, S, K), index: flat positions


def test_bench_json_schema(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    monkeypatch.setitem(MODELS, "cached-toy", CachedIndependent)
    path = tmp_path / "bench.json"
    path.write_text("[]")  # an earlier result: replaced only because of --overwrite
    assert bench.main(["--models", "fvsbn,cached-toy", "--budget-s", "0.5", "--test-images", "50",
                       "--sample-n", "1", "--device", "cpu", "--json", str(path), "--overwrite"]) == 0
    records = json.loads(path.read_text())
    assert [r["model"] for r in records] == ["fvsbn", "cached-toy"]
    for r in records:
        for key in ("model", "device", "params", "levels", "shape", "train_images_per_s", "budget_s", "steps",
                    "test_bpd", "test_images", "sample_s_per_image", "note"):
            assert key in r, key
        assert r["device"] == "cpu" and r["shape"] == [1, 28, 28] and r["budget_s"] == 0.5 and r["test_images"] == 50
        assert r["steps"] >= 1 and r["train_images_per_s"] > 0 and r["sample_s_per_image"] > 0
        # sample quality (armini.metrics): 64 samples in quick mode against 64 test images
        assert r["quality_samples"] == 64 and r["quality_sample_s"] > 0
        for key in ("fid", "kid", "kid_std", "precision", "recall", "fid_floor"):
            assert np.isfinite(r[key]), (key, r[key])
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["fid"] > r["fid_floor"] > 0
    fvsbn, toy = records
    assert fvsbn["levels"] == 2 and "levels=2" in fvsbn["note"] and "sample_s_per_image_cached" not in fvsbn
    assert toy["levels"] == 256 and toy["note"] == ""
    assert toy["sample_s_per_image_naive"] > 0 and toy["sample_s_per_image_cached"] > 0
    assert toy["cache_speedup"] == pytest.approx(toy["sample_s_per_image_naive"] / toy["sample_s_per_image_cached"])
    assert toy["cached_matches_naive"]
    assert toy["forward_equivalents"] == pytest.approx(toy["sample_s_per_image_cached"] / toy["forward_s_per_image"])
    assert all(r["train_s_per_step"] > 0 for r in records)
    table = capsys.readouterr().out
    assert "first 50 test images" in table and "cached-toy" in table
    assert "FID (floor)" in table and f"{toy['fid']:.2f} ({toy['fid_floor']:.2f})" in table
    with pytest.raises(SystemExit):
        bench.main(["--models", "nope"])


def test_bench_cpu_clock_and_model_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    path = tmp_path / "bench.json"
    assert bench.main(["--models", "pixelcnn", "--budget-s", "0.5", "--test-images", "20", "--sample-n", "1",
                       "--device", "cpu", "--cpu-time", "--set", "channels=8", "--set", "n_blocks=1",
                       "--quality-samples", "0", "--json", str(path)]) == 0
    (r,) = json.loads(path.read_text())
    assert r["clock"] == "cpu" and r["model_kwargs"] == {"channels": 8, "n_blocks": 1}
    assert r["params"] == bench.build("pixelcnn", channels=8, n_blocks=1)[0].num_params()
    assert r["params"] < bench.build("pixelcnn")[0].num_params()
    assert "CPU s of training" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--models", "pixelcnn", "--set", "channels"])  # no '='


def test_bench_model_on_the_14x14_view_keeps_the_trained_model(monkeypatch):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    models = {}
    r = bench.bench_model("pixelcnn", budget_s=0.3, device="cpu", test_images=10, sample_n=1, models=models,
                          channels=8, n_blocks=1, size=14, quality_samples=20)
    assert r["shape"] == [1, 14, 14] and r["test_images"] == 10 and r["cached_matches_naive"]
    assert r["quality_samples"] == 20 and np.isfinite(r["fid"]) and r["fid_floor"] > 0  # judged enlarged to 28x28
    assert models["pixelcnn"].shape == (1, 14, 14) and models["pixelcnn"].num_params() == r["params"]


class OrderedToy(CachedIndependent):
    """A cached toy that reports extra bench fields, as an order-agnostic model reports its orders and steps."""

    def bench_fields(self):
        return {"orders": "random", "steps": self.dims}


def test_bench_speed_mode_reports_forward_equivalents_and_training_steps(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODELS, "ordered-toy", OrderedToy)
    path = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    common = ["--size", "7", "--threads", "1,2", "--fe-batch", "1,3", "--train-steps", "1", "--no-peers", "--cpu-time",
              "--device", "cpu"]
    assert bench.main(["speed", "--models", "pixelcnn", "--set", "channels=8", "--json", str(path), *common]) == 0
    (pixelcnn,) = json.loads(path.read_text())
    assert bench.main(["speed", "--models", "ordered-toy,fvsbn", "--json", str(path), "--overwrite", *common]) == 0
    assert torch.get_num_threads() == threads  # the thread setting is restored
    toy, fvsbn = json.loads(path.read_text())
    for r in (pixelcnn, toy):
        assert r["kind"] == "speed" and r["clock"] == "cpu" and r["shape"] == [1, 7, 7] and r["sample_threads"] == 1
        assert r["sample_repeats"] == 3  # the default: each sampler's fastest of 3 runs
        assert set(r["forward_equivalents"]) == set(r["sample_s_per_image_cached"]) == {"1", "3"}
        for n in ("1", "3"):
            assert r["forward_equivalents"][n] == pytest.approx(r["sample_s_per_image_cached"][n] /
                                                                r["forward_s_per_image"][n])
        assert r["naive_n"] == 1 and r["sample_s_per_image_naive"] > 0 and r["cached_matches_naive"]
        assert set(r["train_s_per_step"]) == set(r["train_cpu_s_per_step"]) == {"1", "2"}
        assert all(v > 0 for v in r["train_s_per_step"].values()) and r["train_threads"] == [1, 2]
    assert pixelcnn["config"] == "default with --set" and pixelcnn["model_kwargs"] == {"channels": 8}
    assert pixelcnn["batch_size"] == 32 and "orders" not in pixelcnn
    assert toy["orders"] == "random" and toy["steps"] == 49  # from the model's bench_fields()
    assert "forward_equivalents" not in fvsbn and fvsbn["naive_forward_equivalents"] > 0  # no cache: naive only
    table = capsys.readouterr().out
    assert "fwd-equiv n=3" in table and "train s/step 2thr" in table
    row = next(line for line in table.splitlines() if line.split()[:1] == ["pixelcnn"])
    assert "naive/cached" in table and f"{pixelcnn['cache_speedup']:.1f}" in row.split()  # the ratio's column
    with pytest.raises(SystemExit):
        bench.main(["speed", "--fe-batch", "0"])


def test_bench_speed_amp_both_times_float32_then_bfloat16_training_only(tmp_path, monkeypatch, capsys):
    from armini import train
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)  # any CPU runs bfloat16, natively or not
    path = tmp_path / "speed.json"
    assert bench.main(["speed", "--models", "pixelcnn", "--set", "channels=8", "--size", "7", "--threads", "1",
                       "--fe-batch", "1", "--train-steps", "1", "--no-peers", "--device", "cpu", "--amp", "both",
                       "--json", str(path)]) == 0
    fp32, bf16 = json.loads(path.read_text())
    assert (fp32["precision"], bf16["precision"]) == ("float32", "bfloat16")
    assert "forward_equivalents" in fp32 and "forward_equivalents" not in bf16  # sampling is timed once
    assert bf16["train_s_per_step"]["1"] > 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["pixelcnn"]]
    assert [[c for c in r if "float" in c] for r in rows] == [["float32"], ["bfloat16"]]  # the precision column


def test_time_samplers_draws_one_untimed_cached_image_before_timing(monkeypatch):
    # a process's first sample pays one-off start-up costs: the bench's first model looked slower than it is
    calls = []
    real = bench.time_sampling

    def recording(model, n, seed, cached, clock=time.perf_counter):
        calls.append((n, cached))
        return real(model, n, seed, cached, clock)

    monkeypatch.setattr(bench, "time_sampling", recording)
    model = MODELS["pixelcnn"](shape=(1, 4, 4), levels=4, channels=8, n_blocks=1, head_channels=8).eval()
    out = bench.time_samplers(model, [1, 2], naive_n=1, seed=0, clock=time.process_time)
    assert calls[0] == (1, True) and calls[1:] == [(1, True), (2, True), (1, False)]
    assert set(out["forward_equivalents"]) == {"1", "2"} and out["cached_matches_naive"]


def test_best_sampling_keeps_the_fastest_run_and_the_images(monkeypatch):
    """Each sampler is timed `repeats` times (the same seed, so the same images) and the fastest run is kept:
    the least disturbed by other work, as time_forward keeps its fastest pass."""
    times = iter([0.5, 0.2, 0.4])
    calls = []

    def fake(model, n, seed, cached, clock=time.perf_counter):
        calls.append((n, seed, cached))
        return next(times), torch.full((n, 1), len(calls))

    monkeypatch.setattr(bench, "time_sampling", fake)
    seconds, images = bench.best_sampling(None, 2, 7, True, time.process_time, repeats=3)
    assert seconds == 0.2 and calls == [(2, 7, True)] * 3 and torch.equal(images, torch.full((2, 1), 1))


def test_peer_configurations_match_the_peers_sizes():
    """Gated PixelCNN at about the 852k parameters of UvA tutorial 12's GatedPixelCNN(c_hidden=64), batch 32;
    PixelCNN++ at pclucas14's nr_resnet=1, nr_filters=32, batch 16; both measured beside the defaults."""
    configs = {(name, label): (batch, kwargs) for name, label, batch, kwargs, sample
               in bench.speed_configs(["gated-pixelcnn", "pixelcnn++", "pixelcnn"], True, {})}
    (gated,) = [v for (name, label), v in configs.items() if name == "gated-pixelcnn" and label.startswith("peer:")]
    assert gated[0] == 32 and abs(bench.build("gated-pixelcnn", **gated[1])[0].num_params() - 852_000) < 30_000
    (width,) = [v for (name, label), v in configs.items() if name == "gated-pixelcnn" and label.startswith("peer width")]
    assert width == (32, {"channels": 64, "n_layers": 7})  # UvA's c_hidden, its layer count
    (pp,) = [v for (name, label), v in configs.items() if name == "pixelcnn++" and label.startswith("peer")]
    assert pp == (16, {"nr_resnet": 1, "nr_filters": 32})
    assert [label for name, label in configs if name == "pixelcnn"] == ["default"]
    assert "pixelcnn++" in bench.cached_model_names() and "fvsbn" not in bench.cached_model_names()


def test_kendall_tau():
    assert bench.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert bench.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert bench.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    assert bench.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)  # the tied pair counts as neither
    with pytest.raises(ValueError, match="same length"):
        bench.kendall_tau([1, 2], [1, 2, 3])


def test_bench_order_agnostic_models_record_orders_and_sampling_steps(monkeypatch):
    """lmconv reports its orders; ardm samples in the --sampling-steps budget it is given, planned from
    per-step losses on held-out images, and its unit says the test figure is a bound."""
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    ardm = bench.bench_model("ardm", budget_s=0.3, device="cpu", test_images=8, sample_n=1, size=7,
                             sampling_steps=5, channels=8, mults=(1,), emb_dim=8, quality_samples=0)
    assert ardm["sampling_steps"] == 5 and ardm["budget"] == 5 and ardm["order_set"] == "random"
    assert ardm["unit"] == "bits/dim (bound)" and np.isfinite(ardm["test_bpd"])
    lmconv = bench.bench_model("lmconv", budget_s=0.3, device="cpu", test_images=8, sample_n=1, size=7,
                               nr_filters=8, nr_resnet=1, quality_samples=0)
    assert lmconv["orders"] == 1 and lmconv["train_orders"] == 8 and lmconv["sampling_steps"] == 49
    pixelcnn = bench.bench_model("pixelcnn", budget_s=0.3, device="cpu", test_images=8, sample_n=1, size=7,
                                 sampling_steps=5, channels=8, n_blocks=1, quality_samples=0)
    assert pixelcnn["sampling_steps"] == 49  # one pixel per step: a budget does not apply


class StagedToy(IndependentPixels):
    """A model that trains in stages: bench must call its fit_stages, not armini.train.fit."""

    calls = []

    def fit_stages(self, train, test, *, steps, time_limit, batch_size, lr, device, seed, progress, clock):
        from armini import train as training

        StagedToy.calls.append(dict(steps=steps, time_limit=time_limit, with_test=test is not None, clock=clock))
        half = max(1, steps // 2) if steps < 10**9 else steps
        training.fit(self, train, None, steps=half, time_limit=time_limit / 2, batch_size=batch_size, lr=lr,
                     device=device, seed=seed, progress=progress, clock=clock)  # "stage 1"
        return training.fit(self, train, test, steps=steps, time_limit=time_limit, batch_size=batch_size, lr=lr,
                             device=device, seed=seed, progress=progress, clock=clock, resume=False)


def test_bench_trains_a_staged_model_through_its_fit_stages(monkeypatch):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    monkeypatch.setattr(StagedToy, "calls", [])
    monkeypatch.setitem(MODELS, "staged-toy", StagedToy)
    r = bench.bench_model("staged-toy", budget_s=0.4, device="cpu", test_images=10, sample_n=1, size=7,
                          cpu_time=True, quality_samples=20)
    probe, real = StagedToy.calls  # the probe on a copy, then the real run
    assert probe["steps"] == 10**9 and not probe["with_test"] and probe["time_limit"] == pytest.approx(0.04)
    assert real["with_test"] and real["time_limit"] == 0.4 and real["steps"] == r["planned_steps"]
    assert real["clock"] is time.process_time and r["steps"] >= 1 and np.isfinite(r["test_bpd"])
    assert r["quality_samples"] == 20 and np.isfinite(r["fid"])


def test_bench_quality_samples_zero_skips_sample_quality_and_few_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    r = bench.bench_model("independent", budget_s=0.2, device="cpu", test_images=10, sample_n=1, size=7,
                          quality_samples=0)
    assert "fid" not in r and "precision" not in r
    assert "FID" not in bench.format_table([r], 0.2, 10)  # no sample-quality columns without the fields
    with pytest.raises(ValueError, match="quality_samples must be 0.*at least|>= 10"):
        bench.bench_model("independent", budget_s=0.2, device="cpu", quality_samples=3)
    assert bench.main(["--models", "independent", "--quality-samples", "3", "--budget-s", "0.2"]) == 1
    assert "quality_samples must be 0" in capsys.readouterr().err


def test_bench_tokenizers_writes_one_finite_record_per_tokenizer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    path = tmp_path / "tokenizers.json"
    assert bench.main(["tokenizers", "--kinds", "vq,fsq", "--budget", "1", "--cpu-time", "--test-images", "32",
                       "--size", "14", "--levels", "16", "--device", "cpu", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert [r["tokenizer"] for r in records] == ["vq", "fsq"]
    for r in records:
        assert r["kind"] == "tokenizer" and r["clock"] == "cpu" and r["budget_s"] == 1 and r["test_images"] == 32
        assert r["shape"] == [1, 14, 14] and r["levels"] == 16 and r["token_shape"] == [1, 7, 7]
        assert "subset" in r["data_source"] and r["steps"] >= 1 and r["train_images_per_s"] > 0
        for key in ("params", "codebook_size", "rate_bits", "steps", "train_images_per_s", "psnr", "ssim", "rfid",
                    "rfid_floor", "precision", "recall", "used", "perplexity", "recon_bpd", "bound_bpd"):
            assert isinstance(r[key], (int, float)) and np.isfinite(r[key]), (r["tokenizer"], key, r[key])
        assert r["rate_bits"] == pytest.approx(math.prod(r["token_shape"]) * math.log2(r["codebook_size"]))
        assert r["bound_bpd"] == pytest.approx(r["recon_bpd"] + r["rate_bits"] / 196)  # a uniform prior's bound
        assert 0 < r["used"] <= 1 and 1 <= r["perplexity"] <= r["codebook_size"]
        assert r["params"] == bench.make_tokenizer(r["tokenizer"], size=14, levels=16).num_params()
    vq, fsq = records
    assert vq["codebook_size"] == 1024 and vq["rate_bits"] == pytest.approx(490)  # lesson 11's matched rates
    assert fsq["codebook_size"] == 8 * 5 * 5 * 5 and fsq["rate_bits"] == pytest.approx(49 * math.log2(1000))
    table = capsys.readouterr().out
    assert "rate bits" in table and "bound bpd" in table and "first 32 test images" in table
    assert any(line.startswith("fsq ") and " 488 " in line for line in table.splitlines())


def test_bench_tokenizers_vqgan_counts_only_its_tokenizer_and_starts_the_critic_halfway(monkeypatch):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    models = {}
    r = bench.bench_tokenizer("vqgan", budget_s=0.5, device="cpu", test_images=16, size=14, levels=16,
                              cpu_time=True, models=models)
    tok = models["vqgan"]
    critic = sum(p.numel() for p in tok.critic.parameters())
    assert r["params"] == tok.autoencoder.num_params() == sum(p.numel() for p in tok.parameters()) - critic
    assert r["critic_params"] == critic > 0
    assert r["disc_start"] == r["planned_steps"] // 2 == tok.config.disc_start and r["rate_bits"] == pytest.approx(490)
    assert int(tok.step) == r["steps"] and np.isfinite(r["bound_bpd"]) and np.isfinite(r["rfid"])


def test_bench_tokenizers_refuses_unknown_kinds_and_bad_numbers(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["tokenizers", "--kinds", "vq,nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown tokenizer kind(s) nope" in err and "vq,ema,fsq,rvq,vqgan" in err
    with pytest.raises(SystemExit):
        bench.main(["tokenizers", "--budget", "0"])  # argparse: must be a number > 0
    assert "--budget/--budget-s: must be a number > 0, got 0" in capsys.readouterr().err
    for flags, message in ((["--levels", "1"], "levels must be a whole number from 2 to 256"),
                           (["--test-images", "3"], "test_images must be a whole number >= 10"),
                           (["--latent-size", "5"], "latent_size must be the image side 28 divided by 2, 4")):
        assert bench.main(["tokenizers", *flags]) == 1, flags  # refused before any data or training
        assert message in capsys.readouterr().err, flags
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        bench.bench_tokenizer("vqvae", budget_s=1.0)


def test_bench_tokenizers_msvq_row_reports_every_scale(monkeypatch, capsys):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    models = {}
    r = bench.bench_tokenizer("msvq", budget_s=0.5, device="cpu", test_images=16, size=14, levels=16,
                              cpu_time=True, models=models)
    tok = models["msvq"]
    assert r["token_shape"] == [104] and r["scales"] == [1, 2, 3, 4, 5, 7] and r["codebook_size"] == 26
    assert r["settings"]["phi"] == 4 and len(tok.quantizer.phis) == 4  # VAR's four phi convolutions
    assert r["rate_bits"] == pytest.approx(104 * math.log2(26)) == pytest.approx(489, abs=1)  # the others' ~490
    assert len(r["used_per_scale"]) == len(r["perplexity_per_scale"]) == len(r["latent_mse_per_scale"]) == 6
    tokens = tok.encode(bench.tokenizer_data(16, 14, 16, {})[1].images)
    assert [u for u, _ in tok.quantizer.usage_per_scale(tokens)] == r["used_per_scale"]
    assert all(0 < u <= 1 for u in r["used_per_scale"]) and all(np.isfinite(r["latent_mse_per_scale"]))
    assert np.isfinite(r["bound_bpd"]) and np.isfinite(r["rfid"])
    table = bench.format_tokenizer_table([r])
    assert any(line.startswith("msvq ") and " 104 " in line and " 489 " in line for line in table.splitlines())
    assert "msvq per scale (1, 2, 3, 4, 5, 7): used " in table and "latent MSE of f_hat" in table


# ---------------------------------------------------------------------------------------------
# python -m armini.bench course (lesson 19) and the video dispatch


class FakePretrained:
    """A stand-in for armini.pretrained holding one tiny 'checkpoint' (an untrained IndependentPixels at 7x7)."""

    def __init__(self, name, train_cpu_s=120.0):
        self.name, self.train_cpu_s, self.loaded = name, train_cpu_s, []

    def available(self, name):
        return name == self.name

    def load(self, name, device=None):
        if name != self.name:
            raise ValueError(f"no checkpoint for {name}")
        self.loaded.append(name)
        torch.manual_seed(0)
        return IndependentPixels(shape=(1, 7, 7), levels=256).to(device or "cpu")

    def record(self, name):
        return {"train_cpu_s": self.train_cpu_s, "model": name}


def test_bench_course_trains_missing_models_here_and_measures_each_in_one_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    monkeypatch.setitem(MODELS, "cached-toy", CachedIndependent)
    monkeypatch.setattr(bench, "pretrained_module", lambda: None)  # no checkpoints at all
    path = tmp_path / "course.json"
    assert bench.main(["course", "--models", "independent,cached-toy", "--train-missing", "--train-budget", "0.3",
                       "--size", "7", "--quality-samples", "10", "--test-images", "20", "--single-n", "2",
                       "--device", "cpu", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert [r["model"] for r in records] == ["independent", "cached-toy"]
    for r in records:
        assert r["kind"] == "course" and r["source"] == "trained here" and r["size"] == 7 and r["shape"] == [1, 7, 7]
        assert r["train_cpu_s"] > 0 and r["test_images"] == 20 and r["quality_samples"] == 10 and r["clock"] == "cpu"
        assert r["sampling_steps"] == 49 and r["is_bound"] is False and r["unit"] == "bits/dim"
        assert r["judged_at"] == 28 and r["single_n"] == 2
        assert r["sample_s_per_image_batch"] == pytest.approx(r["quality_sample_s"] / 10)
        assert r["sample_s_per_image_single"] > 0 and 0 < r["test_bpd"] < 9
        for key in ("fid", "fid_floor", "precision", "recall", "kid"):
            assert np.isfinite(r[key]), key
    assert records[1]["cached_sampler"] and not records[0]["cached_sampler"]
    out = capsys.readouterr().out
    assert "trained here" in out and "7x7" in out and "Pareto front" in out and "FID (floor)" in out
    before = path.read_text()  # the file exists: replaced only with --overwrite, refused before any model loads
    assert bench.main(["course", "--models", "independent", "--json", str(path)]) == 1
    assert "add --overwrite" in capsys.readouterr().err and path.read_text() == before


def test_bench_course_caps_the_slow_samplers_and_floors_each_row_at_its_own_size_and_count(tmp_path, monkeypatch,
                                                                                           capsys):
    from armini import data, metrics

    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    monkeypatch.setitem(MODELS, "cached-toy", CachedIndependent)
    monkeypatch.setattr(bench, "pretrained_module", lambda: None)
    monkeypatch.setattr(bench, "SLOW_SAMPLERS", ("independent",))  # a stand-in for LMConv's uncached sampler
    path = tmp_path / "course.json"
    assert bench.main(["course", "--models", "independent,cached-toy", "--train-missing", "--train-budget", "0.2",
                       "--size", "14", "--quality-samples", "20", "--slow-samples", "10", "--test-images", "10",
                       "--single-n", "1", "--device", "cpu", "--json", str(path)]) == 0
    slow, fast = json.loads(path.read_text())
    assert (slow["quality_samples"], fast["quality_samples"]) == (10, 20)  # min(--quality-samples, --slow-samples)
    for r, n in ((slow, 10), (fast, 20)):  # the floor of the row's own comparison: n images, 14x14, enlarged alike
        train_images = data.load("fashion-mnist", "train", levels=256, size=14, limit=n).images
        test_images = data.load("fashion-mnist", "test", levels=256, size=14, limit=n).images
        assert r["fid_floor"] == pytest.approx(metrics.fid(train_images, test_images, 256)), n
        assert r["sample_s_per_image_batch"] == pytest.approx(r["quality_sample_s"] / n)
    table = [line.split() for line in bench.format_course_table([slow, fast]).splitlines()[-2:]]
    assert [row[11] for row in table] == ["10", "20"]  # the n column, before "FID (floor)"
    assert "n samples" in capsys.readouterr().out
    with pytest.raises(ValueError, match="slow_samples must be at least 10"):
        bench.run_course_bench(["independent"], slow_samples=5)


def test_bench_course_loads_checkpoints_and_skips_missing_ones_with_a_note(monkeypatch, capsys):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    fake = FakePretrained("independent", train_cpu_s=120.0)
    monkeypatch.setattr(bench, "pretrained_module", lambda: fake)
    samples = {}
    records = bench.run_course_bench(["independent", "pixelcnn"], test_images=20, quality_samples=10, single_n=1,
                                     device="cpu", samples=samples)
    assert fake.loaded == ["independent"]  # pixelcnn has no checkpoint and --train-missing is off: not trained
    (r,) = records
    assert r["source"] == "pretrained" and r["train_cpu_s"] == 120.0 and r["part"] == "other"
    assert samples["independent"].shape == (10, 1, 7, 7)
    out = capsys.readouterr().out
    assert "pixelcnn: no pretrained checkpoint (python -m armini pretrained train pixelcnn); skipped" in out
    table = bench.format_course_table(records)
    assert "pretrained" in table and "  2.0  " in table  # 120 CPU s of training: 2.0 minutes


def test_bench_course_table_labels_bounds_and_unknown_training_time():
    base = dict(part="tokens", source="trained here", size=28, params=1000, test_images=10, quality_samples=10,
                judged_at=28, clock="cpu", threads=1, sampling_steps=49, sample_s_per_image_batch=0.01,
                sample_s_per_image_single=0.1, fid=50.0, fid_floor=5.0, precision=0.5, recall=0.4)
    table = bench.format_course_table([dict(base, model="two-stage", test_bpd=1.25, is_bound=True, train_cpu_s=None),
                                       dict(base, model="exact", test_bpd=1.5, is_bound=False, train_cpu_s=90)])
    two, exact = [line for line in table.splitlines() if line.startswith("tokens")]
    assert "1.250 bound" in two and " - " in two  # no training time known
    assert "1.500" in exact and "bound" not in exact and exact.split()[6] == "1.5"  # 90 CPU s


def test_pareto_front_keeps_the_models_nothing_beats_on_both_axes():
    records = [dict(model="slow-good", s=10.0, fid=5.0), dict(model="fast-bad", s=0.1, fid=50.0),
               dict(model="dominated", s=10.0, fid=60.0), dict(model="middle", s=1.0, fid=20.0),
               dict(model="tie-worse", s=1.0, fid=21.0), dict(model="twin", s=1.0, fid=20.0)]
    assert bench.pareto_front(records, x="s", y="fid") == ["slow-good", "fast-bad", "middle", "twin"]
    assert bench.pareto_front([dict(model="only", s=1.0, fid=1.0)], x="s", y="fid") == ["only"]


def test_bench_course_refuses_video_and_unknown_models(capsys):
    for names in ("vpn", "no-such-model"):
        with pytest.raises(SystemExit) as e:
            bench.main(["course", "--models", names])
        assert e.value.code == 2
        assert "choose from" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown or video"):
        bench.run_course_bench(["vpn"])


def test_bench_video_dispatches_to_video_bench_and_says_when_it_is_missing(monkeypatch, capsys):
    import types

    import armini

    calls = []
    stub = types.ModuleType("armini.video_bench")
    stub.main = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "armini.video_bench", stub)
    monkeypatch.setattr(armini, "video_bench", stub, raising=False)
    assert bench.main(["video", "--routes", "vpn"]) == 7 and calls == [["--routes", "vpn"]]

    monkeypatch.setitem(sys.modules, "armini.video_bench", None)  # a checkout without the file
    monkeypatch.delattr(armini, "video_bench", raising=False)
    assert bench.main(["video"]) == 1
    assert "armini/video_bench.py" in capsys.readouterr().err
