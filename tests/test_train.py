"""Tests for armini.train: the loop learns, reports, fails loudly, saves safely and resumes exactly."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import armini
from armini import train
from armini.models import ARModel, PixelCNN

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


def test_lr_schedule():
    f = [train.lr_factor(s, steps=100, warmup=10) for s in range(100)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11) and f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert train.lr_factor(99, steps=100, warmup=10, schedule="constant") == 1.0


def test_cpu_has_no_mixed_precision():
    dtype, scaler = train._amp_setup(torch.device("cpu"), None)
    assert dtype is None and not scaler.is_enabled()
    with pytest.warns(UserWarning, match="CUDA"):
        assert train._amp_setup(torch.device("cpu"), True)[0] is None


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
    train.fit(first, x, steps=8, checkpoint=path, **kw)
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
        train.fit(small_pixelcnn(), stripes(32), steps=2, batch_size=16, checkpoint=path, **FAST)
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
    with pytest.raises(ValueError, match="does not fit"):
        train.fit(small_pixelcnn(channels=32), x, steps=4, checkpoint=path, resume=True, **FAST)


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
