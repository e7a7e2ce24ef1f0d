"""The command line and the benchmark under bad input: one readable line and a non-zero exit, never a
traceback (unless --debug), settings refused before any work, nothing on disk replaced unasked.
Everything runs in this process on the bundled 8x8 digits with a tiny model."""
import json

import pytest
import torch

import armini.data
import armini.models
import armini.train
from armini import bench
from armini.__main__ import main

TINY = ["--data", "digits", "--steps", "2", "--samples", "4", "--no-progress", "--device", "cpu",
        "-o", "channels=8", "-o", "n_blocks=1"]


def train(out, *flags):
    return main(["train", "pixelcnn", "--out", str(out), *TINY, *flags])


def error_line(err: str, prog: str = "python -m armini") -> str:
    """The one line an error prints on stderr (and check that it is one line, without a traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: what is checked 'at the start' must fail before it."""
    def load(*args, **kwargs):
        raise AssertionError("data was loaded before the bad setting was refused")
    monkeypatch.setattr(armini.data, "load", load)


# ------------------------------------------------------------------------------ train: --out


def test_existing_checkpoint_is_refused_before_loading_data(tmp_path, no_data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"another model's checkpoint")
    assert train(run) == 1
    line = error_line(capsys.readouterr().err)
    assert str(run / "model.pt") in line and "--resume" in line and "--overwrite" in line and "--out" in line
    assert (run / "model.pt").read_bytes() == b"another model's checkpoint"


def test_overwrite_replaces_a_run_and_cannot_go_with_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run) == 0
    first = (run / "model.pt").read_bytes()
    assert train(run, "--overwrite", "--seed", "1") == 0
    assert (run / "model.pt").read_bytes() != first and json.loads((run / "metrics.json").read_text())["seed"] == 1
    with pytest.raises(SystemExit) as e:
        train(run, "--overwrite", "--resume")
    assert e.value.code == 2 and "not allowed" in capsys.readouterr().err


def test_out_that_is_a_file(tmp_path, no_data, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert train(tmp_path / "notes.txt") == 1
    assert "is a file, not a folder" in error_line(capsys.readouterr().err)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------ train: settings


@pytest.mark.parametrize("flag, value", [("--eval-images", "0"), ("--eval-images", "-5"), ("--batch-size", "0"),
                                         ("--batch-size", "-3"), ("--samples", "-1"), ("--steps", "-1"),
                                         ("--lr", "nan"), ("--lr", "0"), ("--limit", "0")])
def test_impossible_settings_fail_at_once(tmp_path, no_data, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        train(tmp_path / "run", flag, value)
    assert e.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_cuda_device(tmp_path, no_data, capsys):
    with pytest.raises(SystemExit) as e:
        train(tmp_path / "run", "--device", "cuda")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'cuda' is not available" in err and "--device cpu" in err and "Traceback" not in err


@pytest.mark.parametrize("flags, says", [
    (["-o", "channels=0"], "pixelcnn cannot run with channels=0"),  # built fine, fails in forward: tried once
    (["-o", "foo=1"], "pixelcnn has no option foo; it takes channels="),
    (["-o", "channels='many'"], "cannot build pixelcnn with channels='many'"),
    (["--size", "5"], "size must be a whole divisor"),
])
def test_bad_model_or_data_settings_are_one_line(tmp_path, monkeypatch, capsys, flags, says):
    monkeypatch.setattr(armini.train, "fit", lambda *a, **k: pytest.fail("training started"))
    assert train(tmp_path / "run", *flags) == 1
    assert says in error_line(capsys.readouterr().err)


def test_debug_flag_and_variable_show_the_traceback(tmp_path, monkeypatch, capsys):
    assert train(tmp_path / "run", "-o", "channels=0", "--debug") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("python -m armini: error: pixelcnn")
    monkeypatch.setenv("ARMINI_DEBUG", "1")
    assert train(tmp_path / "run", "-o", "channels=0") == 1
    assert "Traceback" in capsys.readouterr().err


def test_diverging_run_fails_and_writes_no_results(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "pixelcnn", "--out", str(run), "--data", "digits", "--steps", "1", "--lr", "1e6",
                 "--no-progress", "--device", "cpu", "-o", "channels=8", "-o", "n_blocks=1"]) == 1
    assert "diverged" in error_line(capsys.readouterr().err)
    assert not (run / "metrics.json").exists() and not (run / "samples.png").exists()
    if (run / "model.pt").exists():  # if a checkpoint was kept, it is a good one
        model, _ = armini.train.load_checkpoint(run / "model.pt", device="cpu")
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_interrupt_and_unexpected_errors(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(armini.train, "fit", interrupted)
    try:
        assert train(tmp_path / "a") == 130
    except KeyboardInterrupt:  # let through, it would stop the whole test session
        pytest.fail("Ctrl-C was not handled")
    assert capsys.readouterr().err.strip() == "python -m armini: interrupted"

    def broken(*args, **kwargs):
        return {}["history"]  # a bug: KeyError

    monkeypatch.setattr(armini.train, "fit", broken)
    assert train(tmp_path / "b") == 1
    first, second = capsys.readouterr().err.strip().splitlines()
    assert first == "python -m armini: error: KeyError: 'history'" and "--debug" in second and "bug" in second


def test_closed_pipe_stops_quietly(monkeypatch, capsys):
    class ClosedPipe:  # stdout of `python -m armini list | head -1` once head has gone
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["list"]) == 141
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------ train: what it writes


def test_samples_are_large_and_files_are_written_atomically(tmp_path, monkeypatch):
    import matplotlib.image

    import armini.__main__ as cli_main

    written = []
    real = cli_main.atomic_write

    def spy(path, *args, **kwargs):
        written.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cli_main, "atomic_write", spy)
    run = tmp_path / "run"
    assert train(run, "--eval-images", "100000") == 0  # more than the 297 test digits
    assert sorted(written) == ["metrics.json", "samples.png"]
    png = matplotlib.image.imread(run / "samples.png")
    assert png.shape[:2] == (2 * (112 + 2) + 2,) * 2  # 2 x 2 digits of 8 x 8, each drawn 14x: 112 px a side
    assert json.loads((run / "metrics.json").read_text())["test_images"] == 297  # the images really used
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporaries left



def test_a_video_model_trains_on_moving_mnist_and_writes_a_gif(tmp_path):
    """`train vpn` takes Moving MNIST by default (frames x size x size) and writes samples.gif, not a PNG."""
    from PIL import Image

    run = tmp_path / "run"
    assert main(["train", "vpn", "--out", str(run), "--frames", "2", "--size", "4", "--limit", "8",
                 "--levels", "4", "--steps", "1", "--samples", "2", "--eval-images", "4", "--no-progress",
                 "--device", "cpu", "-o", "channels=4", "-o", "n_layers=2", "-o", "encoder_channels=4",
                 "-o", "lstm_channels=4", "-o", "head_channels=4"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"] == "moving-mnist" and metrics["shape"] == [2, 1, 4, 4]
    assert metrics["samples"].endswith("samples.gif") and not (run / "samples.png").exists()
    with Image.open(run / "samples.gif") as gif:
        assert gif.n_frames == 2  # one frame of the GIF per video frame


@pytest.mark.parametrize("model, data, says", [
    ("pixelcnn", "moving-mnist", "pixelcnn is an image model but --data moving-mnist holds videos"),
    ("vpn", "digits", "vpn is a video model but --data digits holds images: use --data moving-mnist"),
])
def test_images_and_videos_are_not_mixed_up(tmp_path, no_data, capsys, model, data, says):
    assert main(["train", model, "--out", str(tmp_path / "run"), "--data", data, "--steps", "1"]) == 1
    assert says in error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------ bench


BENCH = ["--models", "pixelcnn", "--budget-s", "0.3", "--test-images", "10", "--device", "cpu",
         "--set", "channels=8", "--set", "n_blocks=1"]


@pytest.fixture
def no_bench(monkeypatch):
    monkeypatch.setattr(bench, "bench_model", lambda *a, **k: pytest.fail("the benchmark started"))


@pytest.mark.parametrize("case", ["missing folder", "a folder", "existing file"])
def test_bench_json_path_is_checked_before_the_benchmark(tmp_path, no_bench, capsys, case):
    path = {"missing folder": tmp_path / "no" / "bench.json", "a folder": tmp_path,
            "existing file": tmp_path / "bench.json"}[case]
    if case == "existing file":
        path.write_text("[1, 2]")
    assert bench.main(BENCH + ["--json", str(path)]) == 1
    line = error_line(capsys.readouterr().err, "python -m armini.bench")
    assert str(path) in line
    assert {"missing folder": "mkdir -p", "a folder": "file name inside", "existing file": "--overwrite"}[case] in line
    if case == "existing file":
        assert path.read_text() == "[1, 2]"


@pytest.mark.parametrize("flags", [["--sample-n", "0"], ["--budget-s", "0"], ["--test-images", "0"],
                                   ["--batch-size", "-1"], ["--set", "channels"]])
def test_bench_impossible_settings_fail_at_once(no_bench, capsys, flags):
    with pytest.raises(SystemExit) as e:
        bench.main(BENCH + flags)
    assert e.value.code == 2 and "argument" in capsys.readouterr().err


def test_bench_races_image_models_and_names_a_video_model(no_bench, capsys):
    """The default list leaves video models out; asking for one is a one-line error that says what it is."""
    assert "vpn" in armini.models.MODELS and "vpn" not in bench.image_models() and "pmard" in bench.image_models()
    with pytest.raises(SystemExit) as e:
        bench.main(["--models", "vpn", "--budget-s", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "vpn: a video model" in err and "python -m armini train vpn" in err


def test_bench_model_refuses_sample_n_0_before_training(no_data):
    with pytest.raises(ValueError, match="sample_n"):
        bench.bench_model("pixelcnn", budget_s=1, device="cpu", sample_n=0)


def test_bench_model_options_are_tried_before_the_first_model_trains(no_bench, capsys):
    assert bench.main(["--models", "nade,pixelcnn", "--set", "channels=0", "--device", "cpu"]) == 1
    assert "nade has no option channels" in error_line(capsys.readouterr().err, "python -m armini.bench")


def test_bench_keeps_the_models_done_when_a_later_one_fails(tmp_path, monkeypatch, capsys):
    def fake(name, **kwargs):
        if name == "nade":
            raise FloatingPointError("training diverged")
        return {"model": name}

    monkeypatch.setattr(bench, "bench_model", fake)
    path = tmp_path / "bench.json"
    assert bench.main(["--models", "pixelcnn,nade", "--json", str(path), "--device", "cpu"]) == 1
    assert "diverged" in error_line(capsys.readouterr().err, "python -m armini.bench")
    assert json.loads(path.read_text()) == [{"model": "pixelcnn"}]


def test_bench_debug_flag(tmp_path, no_bench, capsys):
    assert bench.main(BENCH + ["--json", str(tmp_path), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_two_stage_model_trains_its_tokenizer_first(tmp_path, capsys):
    """`train vq-transformer` trains the tokenizer (OUT/tokenizer.pt), then the prior on its tokens: the prior
    must not learn the codes of an untrained tokenizer (it did, before the tokenizer stage existed)."""
    run = tmp_path / "run"
    assert main(["train", "vq-transformer", "--out", str(run), "--data", "digits", "--steps", "3", "--samples", "0",
                 "--no-progress", "--device", "cpu", "--eval-images", "8"]) == 0
    out = capsys.readouterr().out
    assert "stage 1 of 2: the tokenizer" in out and "stage 2 of 2: the prior" in out
    tok = armini.train._read_checkpoint(run / "tokenizer.pt")
    whole = armini.train._read_checkpoint(run / "model.pt")
    assert tok["step"] == 3
    armini.seed_everything(0)  # as the command does (--seed 0) before it builds the model
    fresh = armini.models.MODELS["vq-transformer"](**whole["model_kwargs"]).tokenizer.state_dict()
    trained = {k[len("tokenizer."):]: v for k, v in whole["model"].items() if k.startswith("tokenizer.")}
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh if fresh[k].is_floating_point())
    for k, v in tok["model"].items():  # model.pt keeps the trained tokenizer: the prior's stage left it as it was
        assert torch.equal(trained[k], v), k
