"""armini.pretrained: checkpoints load only when their checksums match, every problem (missing, damaged,
mismatched, unknown) is an error naming the fix, --verify finds each one, and every shipped checkpoint
rebuilds its lesson's model. Each test writes tiny checkpoints into tmp_path (the folder is monkeypatched)."""
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from armini import pretrained
from armini import train as training
from armini.__main__ import main
from armini.models import MODELS

SHIPPED = Path(pretrained.__file__).resolve().parent.parent / "data" / "pretrained"


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return MODELS["pixelcnn"](shape=(1, 7, 7), levels=4, channels=8, n_blocks=1, head_channels=8)


def tiny_record():
    return dict(name="pixelcnn", lesson="02_pixelcnn", command=pretrained.COMMAND.format(name="pixelcnn"),
                data=dict(dataset="fashion-mnist", size=7, levels=4, test=10), steps=3, steps_done=3, batch_size=4,
                lr=1e-3, seed=0, train_cpu_s=0.1, test_bpd=1.5, unit="bits/dim", is_bound=False, fid=None)


@pytest.fixture
def where(tmp_path, monkeypatch):
    """An empty checkpoint folder that armini.pretrained reads instead of data/pretrained."""
    monkeypatch.setattr(pretrained, "folder", lambda: tmp_path)
    return tmp_path


@pytest.fixture
def shipped(where):
    """`where` holding one good checkpoint, pixelcnn, written as `train` writes one."""
    pretrained.write("pixelcnn", tiny_model(), tiny_record(), where)
    return where


def rewrite_sums(where, name):
    """Make SHA256SUMS agree with the files again (a deliberate edit, not damage)."""
    sums = pretrained.read_sums(where)
    for file in (f"{name}.pt", f"{name}.json"):
        sums[file] = pretrained.sha256_file(where / file)
    pretrained.write_sums(sums, where)


# ----------------------------------------------------------------------------- the good case


def test_round_trip_gives_the_same_model_in_eval_mode(shipped):
    model = tiny_model()
    loaded = pretrained.load("pixelcnn", device="cpu")
    assert type(loaded) is type(model) and not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    x = torch.randint(4, (2, 1, 7, 7))
    model.eval()
    torch.testing.assert_close(model.log_prob(x), loaded.log_prob(x))
    assert pretrained.available("pixelcnn") and not pretrained.available("pixelsnail")
    rec = pretrained.record("pixelcnn")
    assert rec["model_kwargs"]["shape"] == [1, 7, 7] and rec["params"] == model.num_params()
    assert rec["file_bytes"] == (shipped / "pixelcnn.pt").stat().st_size
    assert pretrained.verify() == []


def test_the_folder_can_be_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("ARMINI_PRETRAINED_DIR", str(tmp_path))
    assert pretrained.folder() == tmp_path
    monkeypatch.delenv("ARMINI_PRETRAINED_DIR")
    assert pretrained.folder() == SHIPPED


def test_sums_file_is_in_sha256sum_format(shipped):
    lines = (shipped / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in lines) == ["pixelcnn.json", "pixelcnn.pt"]
    assert all(re.fullmatch(r"[0-9a-f]{64}  \S+", line) for line in lines)


def test_train_writes_what_load_reads(where, monkeypatch):
    tiny = pretrained.Recipe("02_pixelcnn", "pixelcnn", dict(channels=8, n_blocks=1, head_channels=8),
                             dict(dataset="fashion-mnist", size=7, levels=4, test=20), steps=2, batch_size=8, lr=1e-3)
    monkeypatch.setitem(pretrained.RECIPES, "pixelcnn", tiny)
    rec = pretrained.train("pixelcnn")
    assert rec["steps_done"] == 2 and rec["command"] == "python -m armini pretrained train pixelcnn"
    assert rec["unit"] == "bits/dim" and rec["is_bound"] is False and rec["test_images"] == 20
    model = pretrained.load("pixelcnn", device="cpu")
    assert model.shape == (1, 7, 7) and model.levels == 4 and model.config.channels == 8
    assert pretrained.verify() == []
    hist = pretrained.history("pixelcnn")  # what a lesson reads from fit's History, from the checkpoint
    assert hist.steps == 2 and [s for s, _ in hist.train] == [1, 2]
    assert 0 < hist.train_s <= rec["train_cpu_s"] + 0.05  # the steps; the record counts all of fit
    assert hist.test == [(2, pytest.approx(rec["test_bpd"], abs=1e-4))] and hist.final_test_bpd == hist.test[0][1]


# ----------------------------------------------------------------------------- each problem names its fix


def test_unknown_name_lists_the_names(where):
    with pytest.raises(pretrained.PretrainedError,
                       match="no pretrained checkpoint called 'pixelcnnn'.*pixelcnn, gated"):
        pretrained.load("pixelcnnn")


def test_missing_checkpoint_names_the_command(where):
    with pytest.raises(pretrained.PretrainedError) as e:
        pretrained.load("pixelcnn")
    assert "python -m armini pretrained train pixelcnn" in str(e.value)
    assert "git checkout -- data/pretrained/pixelcnn.pt" in str(e.value)


def test_a_corrupted_byte_is_caught_before_loading(shipped, monkeypatch):
    path = shipped / "pixelcnn.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran on a damaged file"))
    with pytest.raises(pretrained.PretrainedError, match=r"is damaged \(its SHA-256 does not match SHA256SUMS\)"):
        pretrained.load("pixelcnn")
    assert not pretrained.available("pixelcnn")


def test_an_edited_record_is_caught(shipped):
    rec = json.loads((shipped / "pixelcnn.json").read_text())
    (shipped / "pixelcnn.json").write_text(json.dumps(dict(rec, lr=1.0)))
    with pytest.raises(pretrained.PretrainedError, match="pixelcnn.json is damaged"):
        pretrained.record("pixelcnn")


def test_kwargs_the_code_does_not_take_are_a_mismatch(shipped):
    ckpt = torch.load(shipped / "pixelcnn.pt", weights_only=True)
    ckpt["model_kwargs"]["wings"] = 2  # a setting of some other version of PixelCNN
    torch.save(ckpt, shipped / "pixelcnn.pt")
    rec = json.loads((shipped / "pixelcnn.json").read_text())
    rec["model_kwargs"]["wings"] = 2
    (shipped / "pixelcnn.json").write_text(json.dumps(rec))
    rewrite_sums(shipped, "pixelcnn")
    with pytest.raises(pretrained.PretrainedError,
                       match=r"does not fit this version of armini.*wings.*python -m armini pretrained train pixelcnn"):
        pretrained.load("pixelcnn")


def test_weights_of_another_shape_are_a_mismatch(shipped):
    ckpt = torch.load(shipped / "pixelcnn.pt", weights_only=True)
    ckpt["model"] = MODELS["pixelcnn"](shape=(1, 7, 7), levels=4, channels=16, n_blocks=1, head_channels=8).state_dict()
    torch.save(ckpt, shipped / "pixelcnn.pt")
    rewrite_sums(shipped, "pixelcnn")
    with pytest.raises(pretrained.PretrainedError, match="does not fit this version of armini"):
        pretrained.load("pixelcnn")


def test_a_model_this_checkout_does_not_have_asks_for_an_update(shipped):
    ckpt = torch.load(shipped / "pixelcnn.pt", weights_only=True)
    training.save_checkpoint(shipped / "pixelcnn.pt", dict(ckpt, model_name="pixelcnn-9000"))  # a later armini's
    rec = json.loads((shipped / "pixelcnn.json").read_text())
    (shipped / "pixelcnn.json").write_text(json.dumps(dict(rec, model="pixelcnn-9000")))
    rewrite_sums(shipped, "pixelcnn")
    with pytest.raises(pretrained.PretrainedError, match=r"holds a 'pixelcnn-9000', which this checkout's armini "
                                                         r"does not have \(armini.models.MODELS and vqvae, vqgan\): "
                                                         r"update armini \(git pull\)"):
        pretrained.load("pixelcnn")


def test_record_and_checkpoint_that_disagree_are_a_mismatch(shipped):
    rec = json.loads((shipped / "pixelcnn.json").read_text())
    rec["model_kwargs"]["channels"] = 16
    (shipped / "pixelcnn.json").write_text(json.dumps(rec))
    rewrite_sums(shipped, "pixelcnn")
    with pytest.raises(pretrained.PretrainedError, match="its record says"):
        pretrained.load("pixelcnn")


def test_the_lesson_check_names_each_difference(shipped):
    assert pretrained.mismatches("pixelcnn", tiny_model()) == []
    other = MODELS["pixelcnn"](shape=(1, 7, 7), levels=4, channels=16, n_blocks=1, head_channels=8)
    assert pretrained.mismatches("pixelcnn", other) == ["channels: the checkpoint has 8, the lesson 16"]


# ----------------------------------------------------------------------------- verify and the command line


def test_verify_finds_each_problem(shipped):
    pretrained.write("pixelsnail", MODELS["pixelsnail"](shape=(1, 7, 7), levels=4, channels=8, n_blocks=1,
                                                         n_res=1, key_dim=8, value_dim=8),
                     dict(tiny_record(), name="pixelsnail"), shipped)
    pretrained.write("nade", MODELS["nade"](shape=(1, 7, 7), levels=2, hidden=4), dict(tiny_record(), name="nade"),
                     shipped)
    assert pretrained.verify() == []
    (shipped / "pixelcnn.pt").write_bytes(b"not a checkpoint")  # damaged
    (shipped / "pixelsnail.json").unlink()  # missing
    sums = pretrained.read_sums(shipped)
    del sums["nade.pt"]  # no checksum
    pretrained.write_sums(sums, shipped)
    (shipped / "mystery.pt").write_bytes(b"")  # no recipe
    problems = pretrained.verify()
    assert len(problems) == 4, problems
    assert any("mystery" in p and "no recipe" in p for p in problems)
    assert any("'nade'" in p and "no line in" in p for p in problems)
    assert any("'pixelcnn'" in p and "damaged" in p for p in problems)
    assert any("'pixelsnail'" in p and "missing" in p for p in problems)


def test_cli_verify_exit_codes(shipped, capsys):
    assert main(["pretrained", "--verify"]) == 0
    assert capsys.readouterr().out.strip() == "1 checkpoints OK"
    (shipped / "pixelcnn.json").write_text("{}")
    assert main(["pretrained", "--verify"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "pixelcnn.json is damaged" in out[0]


def test_cli_list_shows_present_and_missing(shipped, capsys):
    assert main(["pretrained", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("pixelcnn "))
    assert "02_pixelcnn" in row and "1.500" in row and row.endswith("present")
    assert next(line for line in out.splitlines() if line.startswith("pixelsnail ")).endswith("missing")
    assert main(["pretrained"]) == 0  # list is the default


def test_cli_errors_are_one_line_and_exit_1(where, capsys):
    assert main(["pretrained", "train", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no pretrained checkpoint called 'nope'" in err and "Traceback" not in err
    assert main(["pretrained", "train"]) == 1
    assert "--all" in capsys.readouterr().err
    assert main(["pretrained", "list", "pixelcnn"]) == 1
    assert "takes no names" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the shipped checkpoints


def shipped_names():
    return sorted({Path(f).stem for f in pretrained.read_sums(SHIPPED)})


def test_shipped_files_all_have_recipes():
    assert set(shipped_names()) <= set(pretrained.RECIPES)


@pytest.mark.parametrize("name", shipped_names() or [pytest.param("none", marks=pytest.mark.skip("none shipped"))])
def test_shipped_checkpoint_is_its_recipes_model_and_loads(name, monkeypatch):
    monkeypatch.setattr(pretrained, "folder", lambda: SHIPPED)
    r = pretrained.RECIPES[name]
    rec = pretrained.record(name)
    assert (rec["lesson"], rec["model"], rec["batch_size"], rec["lr"], rec["seed"]) == \
        (r.lesson, r.model, r.batch_size, r.lr, r.seed)
    assert rec["steps"] == (list(r.steps) if isinstance(r.steps, tuple) else r.steps)
    assert {k: v for k, v in rec["data"].items() if k in r.data} == r.data
    assert pretrained.mismatches(name, pretrained.build(name)) == []  # shape, levels and every setting
    model = pretrained.load(name, device="cpu")
    assert pretrained.model_entry(model)[0] == r.model and not model.training


def test_recipes_build_their_lessons_models():
    for name in pretrained.names():
        r = pretrained.RECIPES[name]
        assert r.model in pretrained.model_classes() and dataclasses.is_dataclass(r)
        assert (SHIPPED.parent.parent / "solutions" / f"{r.lesson}.ipynb").is_file(), r.lesson
        assert not r.after or pretrained.RECIPES[r.after].lesson == r.lesson, name  # a prior's tokenizer: its lesson's


@pytest.mark.parametrize("name", [n for n, r in pretrained.RECIPES.items() if r.after])
def test_shipped_prior_was_trained_on_the_shipped_tokenizer(name, monkeypatch):
    """A prior models its tokenizer checkpoint's tokens: retraining the tokenizer without the prior would leave
    the prior reading tokens that mean something else."""
    monkeypatch.setattr(pretrained, "folder", lambda: SHIPPED)
    after = pretrained.RECIPES[name].after
    if not (pretrained.available(name) and pretrained.available(after)):
        pytest.skip(f"{name} or {after} is not here")
    assert pretrained.record(name)["tokenizer"] == dict(name=after, sha256=pretrained.read_sums()[f"{after}.pt"]), (
        f"{name} was trained on another {after}: retrain it (python -m armini pretrained train {name})")


# ----------------------------------------------------------------------------- tokenizers (lessons 11 and 13)


def tiny_vqvae(channels=8):
    from armini.tokenizers import VQVAE

    torch.manual_seed(0)
    return VQVAE(image_shape=(1, 8, 8), levels=4, latent_size=2, quantizer="rvq", codebook_size=8, depth=2,
                 channels=channels)


def test_a_tokenizer_round_trips_with_its_settings(where):
    from armini.tokenizers.vqgan import VQGAN

    torch.manual_seed(0)
    vqgan = VQGAN(image_shape=(1, 8, 8), levels=4, latent_size=2, codebook_size=8, channels=8, disc_width=8,
                  disc_start=3, adversarial_weight=0.1)
    vqgan.last_lambda.fill_(0.25)  # a buffer the lesson prints
    for name, model in (("tokenizer-rvq", tiny_vqvae()), ("vqgan", vqgan)):
        pretrained.write(name, model, dict(tiny_record(), name=name), where)
        loaded = pretrained.load(name, device="cpu")
        assert type(loaded) is type(model) and not loaded.training
        for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            torch.testing.assert_close(a, b, msg=k)
        assert pretrained.mismatches(name, model) == []
        assert pretrained.record(name)["model"] == pretrained.model_entry(model)[0]
    assert loaded.config.disc_start == 3 and loaded.autoencoder.config.channels == 8 and float(loaded.last_lambda) == 0.25
    assert pretrained.mismatches("tokenizer-rvq", tiny_vqvae(channels=16)) == [
        "channels: the checkpoint has 8, the lesson 16"]
    assert pretrained.verify() == []


def test_usage_log_comes_from_the_record(where):
    usage = dict(images=10, every=2, steps=[0, 2, 3], used=[0.25, 0.5, 0.75], perplexity=[2.0, 4.0, 6.0])
    pretrained.write("tokenizer-ema", tiny_vqvae(), dict(tiny_record(), usage=usage), where)
    log = pretrained.usage_log("tokenizer-ema")
    assert (log.steps, log.used, log.perplexity, log.every) == ([0, 2, 3], [0.25, 0.5, 0.75], [2.0, 4.0, 6.0], 2)
    pretrained.write("tokenizer-rvq4", tiny_vqvae(), tiny_record(), where)
    with pytest.raises(pretrained.PretrainedError, match="'tokenizer-rvq4' logged no codebook usage.*tokenizer-ema"):
        pretrained.usage_log("tokenizer-rvq4")


@pytest.fixture
def small_data(monkeypatch):
    """pretrained.datasets gives 256 training and 64 test images: the lessons' sequences in seconds."""
    datasets = pretrained.datasets

    def small(r):
        train, test = datasets(r)
        return (dataclasses.replace(train, images=train.images[:256], labels=train.labels[:256]),
                dataclasses.replace(test, images=test.images[:64], labels=test.labels[:64]))

    monkeypatch.setattr(pretrained, "datasets", small)


def shrink(monkeypatch, name, **changes):
    monkeypatch.setitem(pretrained.RECIPES, name, dataclasses.replace(pretrained.RECIPES[name], **changes))


def test_lesson_11_tokenizer_training_records_usage_quality_and_history(where, small_data, monkeypatch):
    shrink(monkeypatch, "tokenizer-ema", kwargs=dict(latent_size=7, quantizer="ema", codebook_size=16, channels=8),
           steps=4, usage=(20, 2), quality=40, fit=dict(eval_images=30), data=dict(pretrained.FMNIST, test=30))
    rec = pretrained.train("tokenizer-ema")
    assert rec["model"] == "vqvae" and rec["steps_done"] == 4 and rec["unit"] == "bits/dim of p(x|z)"
    assert rec["usage"]["steps"] == [0, 2, 4] and len(rec["usage"]["used"]) == 3  # every 2 steps, then at the end
    assert {"psnr", "ssim", "rfid", "rfid_floor", "used", "perplexity"} <= set(rec["quality"])
    assert rec["quality"]["images"] == 40
    assert pretrained.usage_log("tokenizer-ema").used == rec["usage"]["used"]
    hist = pretrained.history("tokenizer-ema")
    assert hist.steps == 4 and hist.test and hist.test[-1][0] == 4  # fit's own test on eval_images
    assert pretrained.load("tokenizer-ema").config.codebook_size == 16 and pretrained.verify() == []


def test_lesson_13_sequence_writes_both_tokenizers_and_a_prior_on_each(where, small_data, monkeypatch):
    tokenizer = dict(latent_size=7, quantizer="ema", codebook_size=16, channels=8)
    small = dict(steps=(2, 3), quality=30, data=dict(pretrained.FMNIST16, test=30))
    shrink(monkeypatch, "vqgan-baseline", kwargs=tokenizer, **small)
    shrink(monkeypatch, "vqgan", kwargs=dict(tokenizer, disc_start=2, adversarial_weight=0.1, disc_width=8), **small)
    base, gan = pretrained.train("vqgan-baseline"), pretrained.train("vqgan")
    assert base["stages"] == {"warm-up": dict(steps=2, train_cpu_s=base["stages"]["warm-up"]["train_cpu_s"]),
                              "more": dict(steps=3, train_cpu_s=base["stages"]["more"]["train_cpu_s"])}
    assert list(gan["stages"]) == ["warm-up", "vqgan"] and gan["steps_done"] == 5 and "last_lambda" in gan
    hist = pretrained.history("vqgan")
    assert hist.steps == 5 and [s for s, _ in hist.stages["vqgan"].train_losses] == [1, 2, 3]
    assert set(hist.stages["vqgan"].train_losses[0][1]) == {"generator", "discriminator"}
    vqgan, vq = pretrained.load("vqgan"), pretrained.load("vqgan-baseline")
    assert vqgan.config.disc_start == 2 and int(vqgan.step) == 5  # the warm-up's clock went on through the run
    assert not torch.equal(vqgan.autoencoder.decoder[-1].weight, vq.decoder[-1].weight)  # one warm-up, two runs
    shrink(monkeypatch, "vqgan-prior", kwargs=dict(prior_kwargs=dict(dim=8, n_layers=1, n_heads=2)), steps=2,
           fid_samples=12, data=dict(pretrained.FMNIST16, test=30))
    prior = pretrained.train("vqgan-prior")
    assert prior["tokenizer"] == dict(name="vqgan", sha256=pretrained.read_sums()["vqgan.pt"])
    assert prior["unit"] == "bits/token" and prior["fid_samples"] == 12 and prior["fid"] > 0
    loaded = pretrained.load("vqgan-prior")
    assert loaded.shape == (1, 7, 7) and loaded.levels == 16 and pretrained.verify() == []
