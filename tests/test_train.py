"""Tests for armini.train: the loop learns, reports, fails loudly, saves safely and resumes exactly."""
import math
import os
import re
import stat
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import armini
from armini import train
from armini.models import MODELS, ARModel, PixelCNN

SHAPE, K = (1, 8, 8), 4
TINY = dict(channels=16, n_blocks=2, head_channels=16)  # a small PixelCNN: fast on 2 cores


def small_pixelcnn(seed=0, **kw):
    armini.seed_everything(seed)
    return PixelCNN(shape=SHAPE, levels=K, **{**TINY, **kw})


def stripes(n=128, seed=0):
    """Synthetic images with structure a PixelCNN can learn: every row repeats its first pixel."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(0, K, (n, 1, SHAPE[1], 1), generator=g)
    return first.expand(n, *SHAPE).clone()  # (n, 1, 8, 8)


def same_params(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


FAST = dict(device="cpu", progress=False)


# ----------------------------------------------------------------------------- learning and History


def test_loss_goes_down_and_history_fields():
    x = stripes()
    model = small_pixelcnn()
    before = train.evaluate(model, x[:32])
    hist = train.fit(model, x, x[:32], steps=40, batch_size=32, lr=1e-2, eval_every=20, **FAST)
    assert hist.final_test_bpd < before - 0.3, (before, hist.final_test_bpd)
    first = sum(b for _, b in hist.train[:5]) / 5
    last = sum(b for _, b in hist.train[-5:]) / 5
    assert last < first - 0.3

    assert hist.steps == 40 and [s for s, _ in hist.train] == list(range(1, 41))
    assert hist.test == [(20, hist.test[0][1]), (40, hist.final_test_bpd)]
    assert hist.images_seen == 40 * 32 and hist.images_per_s > 0
    assert 0 < hist.train_s <= hist.elapsed_s
    assert hist.final_train_bpd == hist.train[-1][1] and not hist.stopped_early
    assert model.training  # fit leaves the model in train mode, evaluate restores it

    import matplotlib

    matplotlib.use("Agg")
    ax = hist.plot()
    assert ax.get_xlabel() == "step" and len(ax.get_lines()) == 2


def test_time_limit_stops_early():
    hist = train.fit(small_pixelcnn(), stripes(), steps=10**6, batch_size=16, time_limit=0.5, **FAST)
    assert hist.stopped_early and 1 <= hist.steps < 10**6 and hist.time_limit == 0.5


def test_time_limit_follows_the_given_clock():
    ticks = iter(range(10**6))  # a clock that advances one "second" per reading
    hist = train.fit(small_pixelcnn(), stripes(), steps=10**6, batch_size=16, time_limit=20,
                     clock=lambda: float(next(ticks)), **FAST)
    # each step reads the clock three times (start, end of step, time check): about 20 / 3 steps
    assert hist.stopped_early and 4 <= hist.steps <= 8


def test_a_clock_that_does_not_move_leaves_the_rate_unmeasured():
    # fit(clock=lambda: 0.0) used to raise ZeroDivisionError in images_per_s (train_s stays 0)
    hist = train.fit(small_pixelcnn(), stripes(), steps=3, batch_size=16, clock=lambda: 0.0, **FAST)
    assert hist.steps == 3 and hist.train_s == 0.0 and hist.images_per_s == 0.0


def test_lr_schedule():
    f = [train.lr_factor(s, steps=100, warmup=10) for s in range(100)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11) and f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert train.lr_factor(99, steps=100, warmup=10, schedule="constant") == 1.0


def test_cpu_mixed_precision_only_when_asked_and_native(monkeypatch):
    dtype, scaler = train._amp_setup(torch.device("cpu"), None)
    assert dtype is None and not scaler.is_enabled()  # the default on a CPU: float32
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    dtype, scaler = train._amp_setup(torch.device("cpu"), True)
    assert dtype == torch.bfloat16 and not scaler.is_enabled()  # bfloat16 needs no loss scaling
    assert train._amp_setup(torch.device("cpu"), False)[0] is None
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)  # emulated bfloat16 gains nothing: refused
    with pytest.warns(UserWarning, match="native bfloat16"):
        assert train._amp_setup(torch.device("cpu"), True)[0] is None
    with pytest.warns(UserWarning, match="float32 on mps"):
        assert train._amp_setup(torch.device("mps"), True)[0] is None


@pytest.mark.parametrize("name", ["gated-pixelcnn", "pixelcnn++"])
def test_cpu_bfloat16_training_loss_is_float32_and_close(name, monkeypatch):
    """Under CPU autocast the convolutions run in bfloat16 but the loss is computed in float32 (cross-entropy,
    the logistic mixture) and stays within 5% of the float32 loss; fit(amp=True) trains with it to a finite
    test bits/dim (test_cli_bench checks the checkpoint records the precision)."""
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    model = MODELS[name](shape=(1, 8, 8), levels=16)
    x = torch.randint(16, (8, 1, 8, 8))
    fp32 = model.loss(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.loss(x)
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 0.05 * fp32.item()
    assert model.loss(x.clone()).item() == fp32.item()  # nothing left in bfloat16 outside autocast
    hist = train.fit(model, x, x, steps=2, batch_size=4, amp=True, **FAST)
    assert math.isfinite(hist.final_test_bpd)


def test_bad_data_is_refused_before_training():
    with pytest.raises(ValueError, match="levels"):
        train.fit(small_pixelcnn(), stripes() + K, steps=1, **FAST)  # values out of range
    with pytest.raises(TypeError, match="integer"):
        train.fit(small_pixelcnn(), stripes().float(), steps=1, **FAST)


# ----------------------------------------------------------------------------- NaN


class NaNModel(ARModel):
    """A model whose loss is NaN: the loop must stop and say so."""

    def __init__(self):
        super().__init__(SHAPE, K)
        self.w = nn.Parameter(torch.zeros(K))

    def conditionals(self, x, y=None):
        return (self.w * float("nan")).expand(*x.shape, K)


def test_nan_loss_raises_and_saves_nothing(tmp_path):
    path = tmp_path / "run" / "model.pt"
    with pytest.raises(FloatingPointError, match=r"step 1\b.*lower learning rate.*\[0, 4\)"):
        train.fit(NaNModel(), stripes(), steps=5, checkpoint=path, **FAST)
    assert not path.exists()
    assert not any(tmp_path.rglob("*.tmp"))


def dead_pid():
    """The id of a process that has exited (its stale temporaries may be deleted)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_nan_loss_also_cleans_stale_temporaries_of_killed_runs(tmp_path):
    path = tmp_path / "model.pt"
    stale = [tmp_path / f".model.pt.{dead_pid()}.abcd.tmp", tmp_path / ".model.pt.k2j4h5.tmp"]  # new and old naming
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    with pytest.raises(FloatingPointError):
        train.fit(NaNModel(), stripes(), steps=5, checkpoint=path, **FAST)  # fails before any save ...
    assert not any(p.exists() for p in stale)  # ... and still the killed runs' leftovers are gone


def test_a_diverging_run_never_saves_its_weights(tmp_path):
    """lr 1e6: the loss of step 1 is finite, the weights it leads to give NaN. Nothing is saved."""
    path = tmp_path / "model.pt"
    kw = dict(batch_size=16, lr_schedule="constant", warmup=0, checkpoint_every=1, checkpoint=path, **FAST)
    lr_1e6 = r"diverged at step 1 \(lr 1e\+06\).*lower learning rate.*nothing was saved"
    with pytest.raises(FloatingPointError, match=lr_1e6):
        train.fit(small_pixelcnn(), stripes(64), steps=5, lr=1e6, **kw)
    assert not path.exists() and not any(tmp_path.iterdir())

    # lr 1e3: the first steps are fine, then the weights of a step give an infinite loss: the checkpoint before stays
    kept = r"loss (of|is) (inf|nan).*last good checkpoint .*model.pt \(step \d+\) is kept"
    with pytest.raises(FloatingPointError, match=kept) as e:
        train.fit(small_pixelcnn(), stripes(64), steps=5, lr=1e3, **kw)
    bad_step = int(re.search(r"diverged at step (\d+)", str(e.value)).group(1))
    model, info = train.load_checkpoint(path, device="cpu")
    assert info["step"] == bad_step - 1 >= 1 and all(p.isfinite().all() for p in model.parameters())
    assert math.isfinite(train.evaluate(model, stripes(64)))


class NaNGradient(ARModel):
    """Finite loss, infinite gradient (d sqrt(z)/dz at z = 0): one step turns a weight into NaN."""

    def __init__(self):
        super().__init__(SHAPE, K)
        self.w = nn.Parameter(torch.zeros(K))
        self.z = nn.Parameter(torch.zeros(()))

    def conditionals(self, x, y=None):
        return torch.log_softmax(self.w + self.z.sqrt(), -1).expand(*x.shape, K)


def test_non_finite_weights_are_never_saved(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(FloatingPointError, match=r"step 1 .*weights hold NaN or inf \(z\)"):
        train.fit(NaNGradient(), stripes(), steps=3, checkpoint=path, checkpoint_every=1, **FAST)
    assert not path.exists()


def test_non_finite_final_test_bits_per_dim_fails_and_saves_nothing(tmp_path):
    """What `python -m armini train pixelcnn --steps 1 --lr 1e6` does: one step, then NaN test bits/dim."""
    path = tmp_path / "model.pt"
    x = stripes(64)
    with pytest.raises(FloatingPointError, match=r"test bits/dim is nan"):
        train.fit(small_pixelcnn(), x, x[:16], steps=1, batch_size=16, lr=1e6, checkpoint=path, **FAST)
    assert not path.exists()


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("setting, value", [
    ("batch_size", 0), ("batch_size", -3), ("batch_size", 2.5), ("batch_size", True), ("steps", -1),
    ("eval_images", 0), ("eval_images", -5), ("eval_every", 0), ("checkpoint_every", 0), ("lr", 0.0),
    ("lr", -1e-3), ("lr", float("nan")), ("weight_decay", -0.1), ("clip", 0.0), ("time_limit", -1.0),
    ("warmup", -1), ("stop_after", -2), ("seed", 1.5),
])
def test_settings_are_checked_before_any_step(setting, value, tmp_path):
    model = small_pixelcnn()
    before = [p.clone() for p in model.parameters()]
    x = stripes(32)
    with pytest.raises(ValueError, match=rf"^{setting} must be .*got {re.escape(repr(value))}$"):
        train.fit(model, x, x[:8], checkpoint=tmp_path / "model.pt", **{"steps": 2, setting: value, **FAST})
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # not one step taken
    assert not (tmp_path / "model.pt").exists()


def test_contradictory_checkpoint_settings():
    with pytest.raises(ValueError, match="resume=True needs the checkpoint"):
        train.fit(small_pixelcnn(), stripes(32), steps=1, resume=True, **FAST)
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        train.fit(small_pixelcnn(), stripes(32), steps=1, loss_fn="bits", **FAST)


def test_an_existing_checkpoint_needs_resume_or_overwrite(tmp_path):
    path = tmp_path / "model.pt"
    kw = dict(batch_size=16, checkpoint=path, **FAST)
    train.fit(small_pixelcnn(), stripes(32), steps=2, **kw)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a checkpoint \(pixelcnn, step 2\): pass resume=True "
                                              r"\(--resume\) to continue that run, overwrite=True \(--overwrite\)"):
        train.fit(small_pixelcnn(), stripes(32), steps=3, **kw)
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="pass only one"):
        train.fit(small_pixelcnn(), stripes(32), steps=3, resume=True, overwrite=True, **kw)
    train.fit(small_pixelcnn(), stripes(32), steps=3, overwrite=True, **kw)
    assert train.load_checkpoint(path)[1]["step"] == 3


def test_checkpoints_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        train.fit(small_pixelcnn(), stripes(32), steps=1, batch_size=16, checkpoint=tmp_path / "model.pt", **FAST)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "model.pt").st_mode) == 0o644  # not tempfile's 0600


# ----------------------------------------------------------------------------- checkpoints and resume


class DropoutPixelCNN(PixelCNN):
    """A PixelCNN with dropout: its training uses the global RNG, which a resume must restore too."""

    def logits(self, x):
        return F.dropout(super().logits(x), 0.2, self.training)


def dropout_model(seed):
    armini.seed_everything(seed)
    return DropoutPixelCNN(shape=SHAPE, levels=K, **TINY)


def test_resume_is_bitwise_exact(tmp_path):
    x = stripes(100)  # not a multiple of the batch size: epochs end with a reshuffle
    kw = dict(batch_size=16, lr_schedule="constant", warmup=3, **FAST)
    straight = dropout_model(0)
    torch.manual_seed(1)
    train.fit(straight, x, steps=16, **kw)

    path = tmp_path / "model.pt"
    first = dropout_model(0)
    torch.manual_seed(1)
    train.fit(first, x, steps=8, checkpoint=path, checkpoint_every=3, **kw)  # each save's finiteness check uses no RNG
    assert not same_params(first, straight)

    torch.manual_seed(12345)  # a different global RNG state and initial weights: the checkpoint restores both
    resumed = dropout_model(7)
    hist = train.fit(resumed, x, steps=16, checkpoint=path, resume=True, **kw)
    assert same_params(resumed, straight)
    assert hist.steps == 16 and [s for s, _ in hist.train] == list(range(1, 17))


def test_resume_with_cosine_schedule_and_stop_after(tmp_path):
    x = stripes(64)
    kw = dict(steps=12, batch_size=16, warmup=2, **FAST)
    straight = small_pixelcnn()
    train.fit(straight, x, **kw)
    path = tmp_path / "model.pt"
    part = small_pixelcnn()
    assert train.fit(part, x, stop_after=5, checkpoint=path, **kw).steps == 5
    resumed = small_pixelcnn(seed=3)
    train.fit(resumed, x, checkpoint=path, resume=True, **kw)
    assert same_params(resumed, straight)


def test_checkpoint_is_atomic_and_never_overwrites_other_files(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    train.fit(small_pixelcnn(), stripes(32), steps=2, batch_size=16, checkpoint=path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"] and train.is_checkpoint(path)

    # a crash while writing leaves the previous checkpoint intact and no temporary file
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        train.fit(small_pixelcnn(), stripes(32), steps=2, batch_size=16, checkpoint=path, overwrite=True, **FAST)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    # someone else's file is never overwritten, and we say so before training
    theirs = tmp_path / "notes.pt"
    theirs.write_text("my thesis")
    with pytest.raises(FileExistsError, match="not an armini checkpoint"):
        train.fit(small_pixelcnn(), stripes(32), steps=2, checkpoint=theirs, **FAST)
    with pytest.raises(FileExistsError):
        train.save_checkpoint(theirs, {})
    assert theirs.read_text() == "my thesis"


def test_load_checkpoint_rebuilds_the_model(tmp_path):
    path = tmp_path / "model.pt"
    model = small_pixelcnn(channels=8, n_blocks=1)
    x = stripes(64)
    hist = train.fit(model, x, x[:16], steps=3, batch_size=16, checkpoint=path, **FAST)
    loaded, info = train.load_checkpoint(path, device="cpu")
    assert type(loaded) is PixelCNN and loaded.config == model.config and not loaded.training
    assert same_params(loaded, model)
    assert info["step"] == 3 and info["model_name"] == "pixelcnn"
    assert info["history"].train == hist.train and info["metrics"]["test_bpd"] == hist.final_test_bpd
    model.eval()
    assert torch.equal(loaded.log_prob(x[:4]), model.log_prob(x[:4]))
    with pytest.raises(ValueError, match="channels 8 -> 32"):
        train.fit(small_pixelcnn(channels=32), x, steps=4, checkpoint=path, resume=True, **FAST)


def test_load_checkpoint_rebuilds_from_the_classes_given(tmp_path):
    """A model_name outside armini.models.MODELS (armini.pretrained's tokenizers) loads from `classes`; without
    them the error names the table it looked in."""
    path = tmp_path / "model.pt"
    model = small_pixelcnn(channels=8, n_blocks=1)
    train.fit(model, stripes(32), steps=1, batch_size=16, checkpoint=path, **FAST)
    ckpt = torch.load(path, weights_only=True)
    train.save_checkpoint(path, dict(ckpt, model_name="my-pixelcnn"))  # a name MODELS does not have
    with pytest.raises(ValueError, match=r"\(name 'my-pixelcnn'\), which is not in armini\.models\.MODELS \(.*pixelcnn"):
        train.load_checkpoint(path)
    with pytest.raises(ValueError, match=r"which is not in the classes given \(pixelcnn\)"):
        train.load_checkpoint(path, classes={"pixelcnn": PixelCNN})
    loaded, info = train.load_checkpoint(path, device="cpu", classes={"my-pixelcnn": PixelCNN})
    assert type(loaded) is PixelCNN and not loaded.training and same_params(loaded, model)
    assert info["model_name"] == "my-pixelcnn"


def test_resume_refuses_changed_settings_and_names_each(tmp_path):
    path = tmp_path / "model.pt"
    train.fit(small_pixelcnn(), stripes(64), steps=3, batch_size=16, checkpoint=path, **FAST)
    before = path.read_bytes()
    # a PixelCNN's weights fit any image size, so without the check this "resumed" silently, and ignored lr
    armini.seed_everything(0)
    other = PixelCNN(shape=(1, 4, 4), levels=K, **TINY)
    x = torch.randint(0, K, (64, 1, 4, 4))
    with pytest.raises(ValueError) as e:
        train.fit(other, x, steps=6, batch_size=8, lr=1e-2, checkpoint=path, resume=True, **FAST)
    message = str(e.value)
    assert message.startswith(f"cannot resume from {path}: these settings differ from the saved run (saved -> given): "
                              "shape (1, 8, 8) -> (1, 4, 4), batch_size 16 -> 8, lr 0.001 -> 0.01. ")
    assert "give the saved settings, or train into another checkpoint path" in message
    assert path.read_bytes() == before


def test_resume_may_extend_steps_and_keeps_the_saved_warmup(tmp_path):
    path = tmp_path / "model.pt"
    kw = dict(batch_size=16, lr_schedule="constant", checkpoint=path, **FAST)
    train.fit(small_pixelcnn(), stripes(64), steps=40, **kw)  # warmup min(100, 40 // 10) = 4
    hist = train.fit(small_pixelcnn(), stripes(64), steps=60, resume=True, **kw)  # default warmup would be 6
    assert hist.steps == 60
    info = train.load_checkpoint(path)[1]
    assert info["fit_args"]["steps"] == 60 and info["fit_args"]["warmup"] == 4  # recorded as run
    with pytest.raises(ValueError, match=r"warmup 4 -> 6"):
        train.fit(small_pixelcnn(), stripes(64), steps=70, warmup=6, resume=True, **kw)


def test_damaged_checkpoints_are_called_damaged(tmp_path):
    path = tmp_path / "model.pt"
    train.fit(small_pixelcnn(), stripes(32), steps=1, batch_size=16, checkpoint=path, **FAST)
    whole = path.read_bytes()
    for cut in (len(whole) // 2, 100, 0):
        path.write_bytes(whole[:cut])
        damaged = re.escape(f"{path} is damaged or incomplete ({cut:,} bytes); it cannot be loaded; "
                            "delete it or restore a backup")
        with pytest.raises(ValueError, match=damaged):
            train.load_checkpoint(path)
        with pytest.raises(ValueError, match=damaged):
            train.fit(small_pixelcnn(), stripes(32), steps=2, checkpoint=path, resume=True, **FAST)
        with pytest.raises(FileExistsError, match="refusing to overwrite .*, which is damaged or incomplete"):
            train.fit(small_pixelcnn(), stripes(32), steps=2, checkpoint=path, overwrite=True, **FAST)
        assert path.read_bytes() == whole[:cut] and not train.is_checkpoint(path)

    # files that are not ours keep that message
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"is not an armini checkpoint \(a torch file"):
        train.load_checkpoint(path)
    path.write_text("my thesis")
    with pytest.raises(ValueError, match=r"is not an armini checkpoint \(not a file torch.save wrote\)"):
        train.load_checkpoint(path)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_is_mean_negative_log2_likelihood():
    model = small_pixelcnn()
    x = stripes(50)
    with torch.no_grad():
        direct = (-model.log_prob(x).double().sum() / (50 * model.dims * math.log(2))).item()
    assert train.evaluate(model, x, batch_size=16) == pytest.approx(direct, rel=1e-6)
    assert model.training  # restored
    with torch.no_grad():
        first10 = (-model.log_prob(x[:10]).double().sum() / (10 * model.dims * math.log(2))).item()
    assert train.evaluate(model, (x, torch.zeros(50)), limit=10) == pytest.approx(first10, rel=1e-6)


# ----------------------------------------------------------------------------- class-conditional models


class ClassHistograms(ARModel):
    """A tiny class-conditional model: one learned K-way distribution per (class, dimension)."""

    num_classes = 3

    def __init__(self, shape=SHAPE, levels=3):
        super().__init__(shape, levels)
        self.logits = nn.Parameter(torch.zeros(self.num_classes, *self.shape, self.levels))
        self.seen = []

    def conditionals(self, x, y=None):
        y = self.check_labels(y, x.shape[0])
        self.seen.append(y.clone())
        return torch.log_softmax(self.logits[y], dim=-1)  # (B, C, H, W, K)


def test_labels_reach_conditional_models():
    labels = torch.arange(60) % 3
    images = labels.view(-1, 1, 1, 1).expand(60, *SHAPE).clone()  # class k: every pixel = k
    model = ClassHistograms()
    hist = train.fit(model, (images, labels), (images, labels), steps=60, batch_size=20, lr=0.1, **FAST)
    assert all(s is not None for s in model.seen)
    # without the label the best possible is log2(3) = 1.58 bits/dim; with it, close to 0
    assert hist.final_test_bpd < 0.2
    with pytest.raises(ValueError, match="class-conditional"):
        train.fit(ClassHistograms(), images, steps=1, **FAST)


def test_labels_as_numpy_or_lists_reach_evaluation():
    """Raw labels used to crash the final evaluation, after all the training."""
    labels = torch.arange(60) % 3
    images = labels.view(-1, 1, 1, 1).expand(60, *SHAPE).clone()
    hist = train.fit(ClassHistograms(), (images, labels.numpy()), (images, labels.tolist()), steps=3,
                     batch_size=20, lr=0.1, eval_every=2, **FAST)
    assert hist.steps == 3 and math.isfinite(hist.final_test_bpd) and len(hist.test) == 2
    assert math.isfinite(train.evaluate(ClassHistograms(), (images, labels.numpy())))
    with pytest.raises(ValueError, match="whole numbers"):
        train.evaluate(ClassHistograms(), (images, labels.numpy() + 0.5))


# ----------------------------------------------------------------------------- the objective


def test_loss_fn_is_the_objective_and_the_history_records_it(tmp_path):
    x = stripes(64)
    kw = dict(steps=4, batch_size=16, **FAST)
    plain = small_pixelcnn()
    hist = train.fit(plain, x, **kw)
    calls = []

    def shifted(model, x, y):  # a constant changes no gradient: the same weights, the history shifted by 10
        calls.append(x.shape)
        return model.loss(x, y) + 10.0

    shifted_model = small_pixelcnn()
    path = tmp_path / "model.pt"
    shifted_hist = train.fit(shifted_model, x, checkpoint=path, loss_fn=shifted, **kw)
    assert same_params(plain, shifted_model) and len(calls) == 4 + 1  # 4 steps + the check before the save
    assert [b for _, b in shifted_hist.train] == pytest.approx([b + 10.0 for _, b in hist.train], abs=1e-5)
    assert train.load_checkpoint(path)[1]["fit_args"]["objective"].endswith("shifted")
    with pytest.raises(TypeError, match="scalar tensor"):
        train.fit(small_pixelcnn(), x, loss_fn=lambda m, x, y: m.log_prob(x, y), **kw)


def test_unconditional_models_ignore_labels():
    x = stripes(32)
    hist = train.fit(small_pixelcnn(), (x, torch.zeros(32, dtype=torch.long)), steps=2, batch_size=16, **FAST)
    assert hist.steps == 2


def test_mixed_precision_code_path(tmp_path, monkeypatch):
    """What CUDA runs (autocast, loss scaling, unscale before clipping, scaler state in checkpoints),
    exercised on the CPU with CPU autocast and an enabled CPU GradScaler standing in."""
    monkeypatch.setattr(train, "_amp_setup", lambda dev, amp: (torch.bfloat16, torch.amp.GradScaler("cpu")))
    path = tmp_path / "model.pt"
    x = stripes(64)
    hist = train.fit(small_pixelcnn(), x, x[:16], steps=3, batch_size=16, checkpoint=path, **FAST)
    assert hist.steps == 3 and math.isfinite(hist.final_test_bpd)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["scaler"]["scale"] > 0 and ckpt["fit_args"]["amp"] == "torch.bfloat16"
    assert train.fit(small_pixelcnn(), x, steps=5, batch_size=16, checkpoint=path, resume=True, **FAST).steps == 5


def test_resume_accepts_a_checkpoint_saved_before_a_setting_existed(tmp_path):
    """A setting added to a model later (e.g. input=, num_classes=) is absent from older checkpoints:
    a resume reads it as the setting's default, not as a change."""
    from armini.models import PixelCNN

    x = torch.randint(4, (16, 1, 4, 4))
    path = tmp_path / "model.pt"
    model = PixelCNN(shape=(1, 4, 4), levels=4, channels=8, n_blocks=1, head_channels=8)
    train.fit(model, x, steps=2, batch_size=4, checkpoint=path, progress=False)
    ckpt = torch.load(path, weights_only=True)
    for key in ("input", "embed_dim", "num_classes"):
        del ckpt["model_kwargs"][key]  # as an older armini saved it
    torch.save(ckpt, path)
    again = PixelCNN(shape=(1, 4, 4), levels=4, channels=8, n_blocks=1, head_channels=8)
    hist = train.fit(again, x, steps=4, batch_size=4, checkpoint=path, resume=True, progress=False)
    assert hist.steps == 4
    changed = PixelCNN(shape=(1, 4, 4), levels=4, channels=8, n_blocks=1, head_channels=8, num_classes=3)
    with pytest.raises(ValueError, match="num_classes None -> 3"):
        train.fit(changed, (x, torch.zeros(16, dtype=torch.long)), steps=6, batch_size=4, checkpoint=path,
                  resume=True, progress=False)


def test_history_plot_has_whole_number_step_ticks():
    """A short run (4 steps) must not get 0.5, 1.5, ... ticks on the step axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from armini.train import History

    h = History(train=[(1, 3.0), (2, 2.5), (3, 2.2), (4, 2.0)], test=[(4, 2.1)])
    ax = h.plot()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    plt.close(ax.figure)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
