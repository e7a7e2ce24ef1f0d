"""Pretrained checkpoints: each lesson's main model, trained once at the lesson's default budget, to sample in seconds.

    from armini import pretrained
    pretrained.names()                       # ["pixelcnn", "gated-pixelcnn", ...]: the recipes this checkout can build
    pretrained.available("pixelcnn")         # its files are here and their checksums match
    model = pretrained.load("pixelcnn")      # the trained model, in eval mode
    pretrained.record("pixelcnn")            # how it was trained and what it measured (NAME.json)
    pretrained.verify()                      # problems with the shipped files ([] when all good)

    python -m armini pretrained list         # name, lesson, size, measured figures, present / missing
    python -m armini pretrained --verify     # exit 1 with one line per problem, else "N checkpoints OK"
    python -m armini pretrained train NAME   # retrain NAME from its recipe (or --all)

A checkpoint is three things in data/pretrained/: NAME.pt (the weights and the settings that rebuild the model,
written by armini.train.save_checkpoint), NAME.json (the training record: lesson, command, model settings, data,
steps, batch size, learning rate, seed, CPU seconds, test bits/dim, FID) and a line of SHA256SUMS (the format of
`sha256sum -c`) for each of the two files. `load` checks the checksum before it reads a byte of the weights.

A recipe is the lesson's own training cell at its default budget (not quick mode): the same data, model settings,
batch size, learning rate and seed, for a FIXED number of steps. Where the lesson trains for a CPU-time budget,
the recipe fixes the steps that budget gave on the machine that trained the course's checkpoints (recorded beside
the recipe), so `train` gives the same checkpoint on any machine, one thread, seeded. Loading the checkpoint gives
what "train it yourself" gives in the lesson, not bit for bit (the lesson draws its own random numbers before
training) but from the same recipe.

Lessons 11 and 13 train several models each, in a sequence of their own: their recipes name a `trainer` that
replays the lesson's cells (lesson 11's tokenizers with their codebook-usage log, `usage_log(NAME)`; lesson 13's
VQ-VAE warm-up and its two continuations, VQ-VAE and VQGAN; a prior over a tokenizer checkpoint's tokens). A
tokenizer (armini.tokenizers: VQVAE, VQGAN) is stored like a model of armini.models.MODELS, under its name in
`tokenizer_classes()`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

import armini
from armini.files import atomic_write

__all__ = ["PretrainedError", "Recipe", "RECIPES", "names", "available", "load", "record", "history", "verify", "train",
           "folder", "COMMAND"]

COMMAND = "python -m armini pretrained train {name}"
SUMS = "SHA256SUMS"


def folder() -> Path:
    """data/pretrained in the repository, or $ARMINI_PRETRAINED_DIR when set (checkpoints kept elsewhere)."""
    other = os.environ.get("ARMINI_PRETRAINED_DIR", "").strip()
    return Path(other).expanduser() if other else Path(__file__).resolve().parent.parent / "data" / "pretrained"


class PretrainedError(ValueError):
    """A checkpoint that is missing, damaged or does not fit the current code; the message names the fix."""


# ----------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """How one checkpoint is trained: the lesson's training cell at its default budget."""

    lesson: str  # the notebook, e.g. "02_pixelcnn"
    model: str  # the name in armini.models.MODELS
    kwargs: dict  # constructor settings beyond shape and levels
    data: dict  # dataset settings: dataset, size, levels, limit (images) or videos, frames, test (test images used)
    steps: int | tuple  # optimizer steps, fixed; (tokenizer steps, prior steps) for a two-stage model
    batch_size: int
    lr: float
    seed: int = 0
    fit: dict = field(default_factory=dict)  # other armini.train.fit settings (lr_schedule, stop_after)
    budget: str = ""  # where `steps` comes from
    fid_samples: int = 0  # samples for FID-FMNIST (0: not measured, sampling too slow on a CPU)
    trainer: str = "fit"  # how it is trained: "fit" (one fit, or fit_stages for a two-stage model), or a lesson's
    # own sequence: "tokenizer" (lesson 11), "vqgan" (lesson 13's two tokenizers), "prior" (lesson 13's priors)
    after: str = ""  # "prior": the tokenizer checkpoint whose tokens it models (trained first)
    usage: tuple = ()  # "tokenizer": (N, every): lesson 11's UsageLog on the last N test images every `every` steps
    quality: int = 0  # test images for reconstruction_quality (PSNR, SSIM, rFID, ...), as the lesson measures


PRIOR = dict(dim=64, n_layers=4, n_heads=4)  # lessons 12 and 15: lesson 07's transformer over tokens
FMNIST = dict(dataset="fashion-mnist", size=28, levels=256, test=1000)
FMNIST14 = dict(FMNIST, size=14)

RECIPES: dict[str, Recipe] = {
    "pixelcnn": Recipe("02_pixelcnn", "pixelcnn", {}, FMNIST, steps=900, batch_size=32, lr=2e-3,
                       budget="lesson 02: steps = armini.budget(900, 30)", fid_samples=500),
    "gated-pixelcnn": Recipe("04_gated_pixelcnn", "gated-pixelcnn", {}, FMNIST, steps=500, batch_size=32, lr=2e-3,
                             budget="lesson 04: steps = armini.budget(500, 15)"),
    "pixelcnn++": Recipe("05_pixelcnnpp", "pixelcnn++", {}, FMNIST, steps=1000, batch_size=16, lr=4e-3,
                         budget="lesson 05: steps = armini.budget(1000, 6), bench.LR and bench.BATCH"),
    "pixelsnail": Recipe("06_pixelsnail", "pixelsnail", {}, FMNIST, steps=300, batch_size=32, lr=2e-3,
                         budget="lesson 06: steps = armini.budget(300, 6) (/work/issues/BUDGETS.md)"),
    "pixel-transformer": Recipe("07_pixel_transformer", "pixel-transformer", {}, FMNIST14, steps=1000, batch_size=32,
                                lr=2e-3, budget="lesson 07: steps = armini.budget(1000, 20)"),
    "lmconv": Recipe("09_lmconv", "lmconv", dict(head="softmax", orders="s-curve+spiral"), FMNIST14, steps=800,
                     batch_size=32, lr=4e-3, budget="lesson 09: lm_steps, lm_lr = armini.budget(800, 6), 4e-3"),
    "ardm": Recipe("10_ardm", "ardm", dict(channels=32), dict(FMNIST14, test=500), steps=1200, batch_size=32, lr=3e-3,
                   budget="lesson 10: steps = armini.budget(1200, 40)"),
    "vq-transformer": Recipe(
        "12_token_priors", "vq-transformer",
        dict(tokenizer=dict(quantizer="ema", codebook_size=128, dim=16, channels=32), prior="pixel-transformer",
             prior_kwargs=PRIOR, num_classes=10, tokenizer_share=0.5),
        FMNIST, steps=(1070, 1400), batch_size=32, lr=2e-3, fid_samples=500,
        budget="lesson 12: 220 CPU s, half to each stage; 0.103 and 0.075 CPU s a step here: (1070, 1400) steps, "
               "each stage's cosine spanning its steps"),
    "pmard": Recipe("14_pmard", "pmard", {}, FMNIST, steps=420, batch_size=32, lr=2e-3, fid_samples=500,
                    fit=dict(stop_after=350),  # the lesson plans 20% more steps than fit; its time limit ends at 350
                    budget="lesson 14: 150 CPU s at 0.428 CPU s a step here: 350 steps of a 420-step schedule"),
    "var": Recipe(
        "15_var", "var",
        dict(tokenizer=dict(quantizer="msvq", codebook_size=26, scales=[1, 2, 4, 7]), prior_kwargs=PRIOR,
             num_classes=10),
        FMNIST, steps=(935, 1110), batch_size=32, lr=2e-3, fid_samples=500,
        budget="lesson 15: tokenizer 90 CPU s, prior the other 90 of 180; 0.096 and 0.081 CPU s a step here "
               "(scales 1, 2, 4, 7: 70 tokens)"),
    "vpn": Recipe("16_vpn", "vpn", dict(spatial=True), dict(dataset="moving-mnist", videos=2000, frames=8, size=16,
                                                            levels=16, test=100),
                  steps=254, batch_size=16, lr=2e-3, fit=dict(lr_schedule="constant"),
                  budget="lesson 16: 200 CPU s (constant lr) at 0.787 CPU s a step here: 254 steps"),
    "frame-predictor": Recipe("17_scheduled_sampling", "frame-predictor", dict(channels=16, lstm_channels=32),
                              dict(dataset="moving-mnist", videos=2000, frames=12, size=32, levels=16, test=100),
                              steps=350, batch_size=16, lr=3e-3,
                              budget="lesson 17: STEPS = armini.budget(350, 20), teacher forcing"),
    "videogpt": Recipe("18_videogpt", "videogpt", {}, dict(dataset="moving-mnist", videos=2000, frames=8, size=16,
                                                           levels=16, test=256),
                       steps=(1000, 1200), batch_size=16, lr=2e-3,
                       budget="lesson 18: TOK_STEPS, PRIOR_STEPS = armini.budget(1000, 40), armini.budget(1200, 60); "
                              "BATCH, LR = 16, 2e-3 (the tokenizer by fit, then the prior by fit_stages)"),
    "diagonal-bilstm": Recipe("03_pixelrnn", "diagonal-bilstm", {}, FMNIST, steps=500, batch_size=32, lr=2e-3,
                              budget="lesson 03: steps = armini.budget(500, 10)"),
    "nade": Recipe("01_factorisation", "nade", dict(hidden=64), dict(FMNIST, levels=2), steps=1500, batch_size=64,
                   lr=3e-3, budget="lesson 01: steps = armini.budget(1500, 60)", fid_samples=500),
}


def _lesson11(quantizer: dict, table: bool = True) -> Recipe:
    """Lesson 11's tokenizer with these quantizer settings: seeded 0, `steps = armini.budget(500, 30)` at batch 32,
    lr 2e-3; one of section 4's table (table=True: tested on 500 test images, codebook usage logged on the last 500
    every 25 steps) or section 6's deep residual VQ (neither). Quality on the first 2000 test images (n_judge)."""
    return Recipe("11_tokenizers", "vqvae", dict(latent_size=7, **quantizer), dict(FMNIST, test=500), steps=500,
                  batch_size=32, lr=2e-3, trainer="tokenizer", quality=2000,
                  fit=dict(eval_images=500) if table else {}, usage=(500, 25) if table else (),
                  budget="lesson 11: steps = armini.budget(500, 30), batch_size=32, lr=2e-3"
                         + (", eval_images=500, UsageLog every 25 steps" if table else ""))


RECIPES.update({
    "tokenizer-vq": _lesson11(dict(quantizer="vq", codebook_size=1024)),
    "tokenizer-ema": _lesson11(dict(quantizer="ema", codebook_size=1024)),
    "tokenizer-fsq": _lesson11(dict(quantizer="fsq", fsq_levels=(8, 5, 5, 5))),
    "tokenizer-rvq": _lesson11(dict(quantizer="rvq", codebook_size=32, depth=2)),
    "tokenizer-rvq4": _lesson11(dict(quantizer="rvq", codebook_size=32, depth=4), table=False),
})

# Lesson 13: 16 grey levels; a VQ-VAE warm-up (N_WARM = armini.budget(500, 15) steps, batch 64, fit's lr 1e-3,
# seeded 0), then (seeded 1) the VQ-VAE N_MORE = 500 more steps on its likelihood and a VQGAN from the warm-up's
# weights for 500 steps (batch order seed 1); then a transformer prior over each one's tokens (seeded 2,
# P_STEPS = armini.budget(800, 15)), sample FID on n_samples = 1000.
FMNIST16 = dict(FMNIST, levels=16)
TOKENIZER13 = dict(latent_size=7, quantizer="ema", codebook_size=16)
RECIPES.update({
    "vqgan-baseline": Recipe("13_vqgan", "vqvae", TOKENIZER13, FMNIST16, steps=(500, 500), batch_size=64, lr=1e-3,
                             trainer="vqgan", quality=2000,
                             budget="lesson 13: N_WARM, N_MORE = armini.budget(500, 15), armini.budget(500, 15); "
                                    "BATCH = 64 (the warm-up, then N_MORE steps with seed=1)"),
    "vqgan": Recipe("13_vqgan", "vqgan", dict(TOKENIZER13, disc_start=500, adversarial_weight=0.1), FMNIST16,
                    steps=(500, 500), batch_size=64, lr=1e-3, trainer="vqgan", quality=2000,
                    budget="lesson 13: the warm-up's N_WARM = 500 steps, then fit_vqgan for N_MORE = 500 (seed=1) "
                           "after the VQ-VAE's own 500 more (run first, as in the lesson, for the random numbers)"),
    "vqgan-baseline-prior": Recipe("13_vqgan", "pixel-transformer", dict(prior_kwargs=PRIOR), FMNIST16, steps=800,
                                   batch_size=64, lr=1e-3, seed=2, trainer="prior", after="vqgan-baseline",
                                   fid_samples=1000, budget="lesson 13: P_STEPS = armini.budget(800, 15), BATCH = 64"),
    "vqgan-prior": Recipe("13_vqgan", "pixel-transformer", dict(prior_kwargs=PRIOR), FMNIST16, steps=800,
                          batch_size=64, lr=1e-3, seed=2, trainer="prior", after="vqgan", fid_samples=1000,
                          budget="lesson 13: P_STEPS = armini.budget(800, 15), BATCH = 64"),
})


def tokenizer_classes() -> dict:
    """The tokenizers a checkpoint may hold besides armini.models.MODELS, by the name its record gives."""
    from armini.tokenizers.vqgan import VQGAN
    from armini.tokenizers.vqvae import VQVAE

    return {"vqvae": VQVAE, "vqgan": VQGAN}


def model_classes() -> dict:
    """Every class a checkpoint may hold, by name: armini.models.MODELS and the tokenizers."""
    from armini.models import MODELS

    return {**MODELS, **tokenizer_classes()}


def model_entry(model) -> tuple[str, dict]:
    """(name, constructor kwargs) that rebuild `model` with model_classes()[name](**kwargs): a model of
    armini.models.MODELS (armini.train.model_name, model_kwargs) or a tokenizer (its config; a VQGAN's VQVAE
    settings under `tokenizer`, without the image shape and levels it takes itself)."""
    from armini import train as training

    name = training.model_name(model)
    if name is not None:
        return name, training.model_kwargs(model)
    found = [n for n, cls in tokenizer_classes().items() if type(model) is cls]
    if not found:
        raise TypeError(f"a pretrained checkpoint holds a model of armini.models.MODELS or a tokenizer "
                        f"({', '.join(tokenizer_classes())}), not a {type(model).__name__}")
    config = training._plain(model.config)
    if found[0] == "vqgan":
        tokenizer = dict(config.pop("tokenizer"))
        config = dict(image_shape=tokenizer.pop("image_shape"), levels=tokenizer.pop("levels"), tokenizer=tokenizer,
                      **config)
    return found[0], config


def names() -> list[str]:
    """The recipes whose model this checkout has (armini.models.MODELS or a tokenizer), in the course's order of
    priority. Whether a checkpoint is trained and shipped: `available(name)`."""
    classes = model_classes()
    return [name for name, r in RECIPES.items() if r.model in classes]


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise PretrainedError(f"no pretrained checkpoint called {name!r}; the names are: {', '.join(RECIPES)}")
    return RECIPES[name]


# ----------------------------------------------------------------------------- checksums


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(where: Optional[Path] = None) -> dict[str, str]:
    """SHA256SUMS as {file name: hex digest} ({} when there is none)."""
    path = (where or folder()) / SUMS
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, _, file = line.partition("  ")
            sums[file.strip().lstrip("*")] = digest.strip().lower()
    return sums


def write_sums(sums: dict[str, str], where: Optional[Path] = None) -> None:
    with atomic_write((where or folder()) / SUMS, "w") as f:
        f.write("".join(f"{digest}  {file}\n" for file, digest in sorted(sums.items())))


@contextlib.contextmanager
def _folder_lock(where: Path):
    """An exclusive lock on the folder (flock on its descriptor; nothing where fcntl is missing) while
    SHA256SUMS is read, changed and written back."""
    try:
        import fcntl
    except ImportError:  # Windows: one training at a time
        yield
        return
    fd = os.open(where, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fix_missing(name: str) -> str:
    return (f"restore it with `git checkout -- data/pretrained/{name}.pt data/pretrained/{name}.json` "
            f"or retrain it with `{COMMAND.format(name=name)}`")


def _problem(name: str, where: Path) -> Optional[str]:
    """What is wrong with NAME's files before reading them (None: present, checksums match)."""
    sums = read_sums(where)
    for file in (f"{name}.pt", f"{name}.json"):
        path = where / file
        if not path.is_file():
            return f"pretrained checkpoint {name!r}: {path} is missing; {_fix_missing(name)}"
        if file not in sums:
            return (f"pretrained checkpoint {name!r}: {file} has no line in {where / SUMS}; "
                    f"retrain it with `{COMMAND.format(name=name)}` (which writes the checksum)")
        if sha256_file(path) != sums[file]:
            return (f"pretrained checkpoint {name!r}: {path} is damaged (its SHA-256 does not match {SUMS}); "
                    f"{_fix_missing(name)}")
    return None


def available(name: str) -> bool:
    """True when NAME's checkpoint and record are here and their checksums match."""
    return name in RECIPES and _problem(name, folder()) is None


# ----------------------------------------------------------------------------- loading


def record(name: str) -> dict:
    """The training record of NAME (data/pretrained/NAME.json), checked against its checksum."""
    return _record(name, folder())


def _record(name: str, where: Path) -> dict:
    recipe(name)
    problem = _problem(name, where)
    if problem:
        raise PretrainedError(problem)
    return json.loads((where / f"{name}.json").read_text())


def _mismatch(name: str, why: str) -> PretrainedError:
    return PretrainedError(f"pretrained checkpoint {name!r} does not fit this version of armini ({why}); "
                           f"retrain it with `{COMMAND.format(name=name)}`")


def load(name: str, device=None):
    """NAME's trained model, in eval mode on `device` (default armini.device()).

    The SHA-256 of NAME.pt is checked before torch.load (weights_only) reads it; PretrainedError (a ValueError)
    names the fix when the file is missing, damaged or was saved by code that no longer builds the same model."""
    return _load(name, folder(), device)


def _load(name: str, where: Path, device=None):
    from armini import train

    rec = _record(name, where)
    path = where / f"{name}.pt"
    ckpt = train._read_checkpoint(path)  # torch.load(weights_only=True), after the checksum above
    want = rec.get("model_kwargs")
    as_json = lambda value: json.loads(json.dumps(value))  # noqa: E731 (tuples become lists, as in the record)
    if ckpt.get("model_name") != rec.get("model") or as_json(ckpt.get("model_kwargs")) != want:
        raise _mismatch(name, f"{path.name} holds {ckpt.get('model_name')} {ckpt.get('model_kwargs')}, "
                              f"its record says {rec.get('model')} {want}")
    classes = model_classes()
    if rec.get("model") not in classes:
        raise PretrainedError(f"pretrained checkpoint {name!r} holds a {rec.get('model')!r}, which this checkout's "
                              f"armini does not have (armini.models.MODELS and {', '.join(tokenizer_classes())}): "
                              f"update armini (git pull) to use it")
    try:
        model, _ = train.load_checkpoint(path, device=device, classes=classes)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:  # kwargs the code no longer takes, other weights
        raise _mismatch(name, f"{type(e).__name__}: {e}") from e
    return model


def history(name: str):
    """NAME's training History (armini.train.History), read from its checkpoint: steps, train_s (the CPU
    seconds of training), the training loss of every step (`train`) and the test bits/dim at the end (`test`,
    `final_test_bpd`); a two-stage model's also has `stages` (the tokenizer's and the prior's Histories).
    What a lesson's cells read from `fit`'s History works on it; there is no test curve during training."""
    from armini import train

    record(name)  # the checksums first
    ckpt = train._read_checkpoint(folder() / f"{name}.pt")
    hist = train.History(**ckpt["history"])
    if ckpt.get("stages"):
        hist.stages = {k: train.History(**h) for k, h in ckpt["stages"].items()}
    return hist


def usage_log(name: str):
    """The codebook usage NAME's tokenizer logged while it trained (lesson 11's UsageLog: `steps`, `used`,
    `perplexity` on the held-out test images), read from its record: what the lesson plots."""
    from armini.tokenizers import UsageLog

    usage = record(name).get("usage")
    if usage is None:
        raise PretrainedError(f"pretrained checkpoint {name!r} logged no codebook usage while training (lesson 11's "
                              f"tokenizers do: {', '.join(n for n, r in RECIPES.items() if r.usage)})")
    log = UsageLog(None, every=usage["every"])
    log.steps, log.used, log.perplexity = list(usage["steps"]), list(usage["used"]), list(usage["perplexity"])
    return log


def settings(model) -> dict:
    """Everything that decides what `model` is, as JSON values: its constructor settings (shape, levels, config)
    with a tokenizer's full config in place of the settings it was given."""
    from armini.models.token_ar import _config_of

    found = dict(model_entry(model)[1])
    if getattr(model, "tokenizer", None) is not None:
        found["tokenizer"] = _config_of(model.tokenizer)
    return json.loads(json.dumps(found))


def mismatches(name: str, model) -> list[str]:
    """How NAME's shipped checkpoint differs from `model`, built as its lesson builds it: model name, shape,
    levels and every constructor setting (a tokenizer's too), one line each ([] when they agree)."""
    shipped = load(name, device="cpu")
    found = [] if type(shipped) is type(model) else \
        [f"model: the checkpoint holds a {type(shipped).__name__}, the lesson builds a {type(model).__name__}"]
    have, want = settings(shipped), settings(model)
    for key in sorted(set(have) | set(want)):
        if have.get(key) != want.get(key):
            found.append(f"{key}: the checkpoint has {have.get(key)!r}, the lesson {want.get(key)!r}")
    return found


def lesson_cell(name: str) -> str:
    """The source of the solution notebook's cell that loads NAME (its training cell, with the switch)."""
    path = Path(__file__).resolve().parent.parent / "solutions" / f"{recipe(name).lesson}.ipynb"
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    found = [c for c in cells if f'pretrained.load("{name}"' in c]
    if not found:  # a cell that loads several checkpoints by a table of their names (lessons 11 and 13)
        found = [c for c in cells if "pretrained.load(" in c and f'"{name}"' in c]
    if len(found) != 1:
        raise ValueError(f"{path.name}: {len(found)} cells call pretrained.load({name!r}), expected one")
    return found[0]


# ----------------------------------------------------------------------------- verify


def verify(where: Optional[Path] = None, load_models: bool = True) -> list[str]:
    """Problems with the shipped checkpoints, one line each ([] when all good): every checkpoint SHA256SUMS
    lists must be present with a matching checksum and must load; every NAME.pt / NAME.json needs a line."""
    where = where or folder()
    sums = read_sums(where)
    files = [*sums, *(p.name for p in where.glob("*.pt")), *(p.name for p in where.glob("*.json"))]
    shipped = {Path(f).stem for f in files}
    problems = []
    for name in sorted(shipped):
        if name not in RECIPES:
            problems.append(f"{where / name}.*: no recipe called {name!r} in armini.pretrained.RECIPES "
                            f"(the names are: {', '.join(RECIPES)}); delete the file or its line in {SUMS}")
            continue
        problem = _problem(name, where)
        if problem is None and load_models:
            try:
                _load(name, where, device="cpu")
            except (PretrainedError, ValueError) as e:
                problem = str(e)
        if problem:
            problems.append(problem)
    return problems


# ----------------------------------------------------------------------------- training


def datasets(r: Recipe):
    """(train, test) as the lesson loads them."""
    from armini import data

    d = r.data
    if d["dataset"] == "moving-mnist":
        video = dict(frames=d["frames"], size=d["size"], levels=d["levels"])
        return (data.moving_mnist(d["videos"], split="train", **video),
                data.moving_mnist(d["test"], split="test", **video))
    load = dict(size=d["size"], levels=d["levels"])
    return data.load(d["dataset"], "train", **load), data.load(d["dataset"], "test", **load)


def build(name: str, shape=None, levels=None):
    """NAME's model, untrained, with the lesson's settings (shape and levels default to the recipe's data)."""
    from armini.models import MODELS
    from armini.models.token_ar import TwoStage

    r = recipe(name)
    d = r.data
    if shape is None:
        shape = (d["frames"], 1, d["size"], d["size"]) if d["dataset"] == "moving-mnist" else (1, d["size"], d["size"])
    levels = levels or d["levels"]
    if r.trainer == "prior":  # the prior of a TwoStage over the tokens of the checkpoint r.after
        tokenizer = build(r.after, shape, levels)
        return TwoStage(shape=tuple(shape), levels=levels, tokenizer=getattr(tokenizer, "autoencoder", tokenizer),
                        **r.kwargs).prior
    if r.model in tokenizer_classes():
        return tokenizer_classes()[r.model](image_shape=tuple(shape), levels=levels, **r.kwargs)
    return MODELS[r.model](shape=tuple(shape), levels=levels, **r.kwargs)


def _fid(model, r: Recipe, test, seed: int) -> Optional[float]:
    if not r.fid_samples:
        return None
    from armini import metrics

    n = r.fid_samples
    y = armini.class_labels(model, n)
    fake = model.sample(n, y=y, generator=torch.Generator().manual_seed(seed), progress=False)
    return metrics.fid(test.images[:n], fake.cpu(), model.levels)


def _stage_tests(model, test, n: int) -> tuple[float, float]:
    """A two-stage model's stages on the first n test images: the tokenizer's bits/dim of p(x|z) and the
    prior's bits per token (labels as given: no dropout), what fit_stages reports with a test set."""
    from armini import train as training

    images, labels = training.as_images_labels(test)
    images, labels = images[:n], None if labels is None else labels[:n]
    with torch.no_grad():
        tokens = torch.cat([model.encode(part) for part in images.split(500)])  # (n, D, h, w)
    prior_test = tokens if labels is None or model.num_classes is None else (tokens, labels)
    return (training.evaluate(model.tokenizer, images, device="cpu"),
            training.evaluate(model.prior, prior_test, device="cpu"))


def train(name: str, where: Optional[Path] = None, progress: bool = False) -> dict:
    """Train NAME from its recipe (one thread, seeded, on the CPU), write NAME.pt, NAME.json and its SHA256SUMS
    lines; returns the record."""
    from armini import train as training

    r = recipe(name)
    where = Path(where or folder())
    torch.set_num_threads(1)
    if r.trainer != "fit":
        return TRAINERS[r.trainer](name, r, where, progress)
    train_set, test_set = datasets(r)
    armini.seed_everything(r.seed)
    model = build(name, train_set.shape, train_set.levels)
    armini.seed_everything(r.seed)
    settings = dict(batch_size=r.batch_size, lr=r.lr, seed=r.seed, progress=progress, clock=time.process_time,
                    device="cpu")
    start = time.process_time()
    if isinstance(r.steps, tuple):
        hist = model.fit_stages(train_set, None, steps=r.steps, **settings)
    else:
        hist = training.fit(model, train_set, None, steps=r.steps, **settings, **r.fit)
    train_cpu_s = time.process_time() - start
    model.eval()
    start = time.process_time()
    test_bpd = training.evaluate(model, test_set, device="cpu", limit=r.data["test"])
    fid = _fid(model, r, test_set, r.seed)
    measure_cpu_s = time.process_time() - start

    rec = _base_record(name, r, model, train_set, test_set, hist.steps, train_cpu_s, test_bpd, fid,
                       measure_cpu_s=round(measure_cpu_s, 1))
    hist.test = [(hist.steps, test_bpd)]  # evaluated once, at the end
    hist.final_test_bpd = test_bpd
    stages = getattr(hist, "stages", None)  # a two-stage model: the tokenizer's and the prior's runs
    if stages:
        tok_test, prior_test = _stage_tests(model, test_set, r.data["test"])
        stages["tokenizer"].final_test_bpd, stages["prior"].final_test_bpd = tok_test, prior_test
        rec["stages"] = {k: dict(steps=h.steps, train_cpu_s=round(h.train_s, 1), test=round(h.final_test_bpd, 4),
                                 unit=h.unit) for k, h in stages.items()}
    return write(name, model, rec, where, hist)


def _base_record(name: str, r: Recipe, model, train_set, test_set, steps_done, train_cpu_s: float, test_bpd: float,
                 fid: Optional[float] = None, **more) -> dict:
    """The training record every recipe writes (write() adds the model's settings and the file's size), plus `more`."""
    if not math.isfinite(test_bpd):
        raise FloatingPointError(f"{name}: test bits/dim is {test_bpd} after training; nothing written")
    return dict(
        name=name, lesson=r.lesson, command=COMMAND.format(name=name), model=r.model,
        data=dict(r.data, train_source=str(getattr(train_set, "source", ""))),
        steps=list(r.steps) if isinstance(r.steps, tuple) else r.steps, steps_done=steps_done, budget=r.budget,
        batch_size=r.batch_size, lr=r.lr, seed=r.seed, fit=dict(r.fit), threads=1, train_cpu_s=round(train_cpu_s, 1),
        test_bpd=round(test_bpd, 4), unit=model.unit, is_bound=bool(getattr(model, "nll_is_bound", False)),
        test_images=min(r.data["test"], len(test_set)),
        fid=None if fid is None else round(fid, 2), fid_samples=r.fid_samples if fid is not None else 0, **more,
    )


# ----------------------------------------------------------------------------- lessons 11 and 13: their own sequences


def _quality(tok, r: Recipe, train_set, test_set) -> dict:
    """Lessons 11 and 13's reconstruction table for `tok` on the first r.quality test images
    (armini.tokenizers.reconstruction_quality: PSNR, SSIM, rFID, precision, recall, usage, bits/dim), with the
    real-vs-real FID floor at that N; for residual VQ also the PSNR (dB) of the first t token stacks (lesson 11)."""
    from armini import metrics
    from armini.tokenizers import psnr_by_depth, reconstruction_quality

    real = test_set.images[:r.quality]
    found = {k: round(float(v), 4) for k, v in reconstruction_quality(tok, real).items() if v is not None}
    found.update(images=len(real), rfid_floor=round(metrics.fid(train_set.images[:len(real)], real, tok.levels), 2))
    if getattr(tok, "depth", 1) > 1:  # each extra stack of tokens refines the sum before it
        found["psnr_first_stacks"] = [round(p, 3) for p in psnr_by_depth(tok, real)]
    return found


def _two_part_history(first, second, names: tuple, test_bpd: float):
    """One History for two fit runs one after the other (steps and CPU s added, the second's steps counted on),
    with each run under `stages[name]`: what history(NAME) gives the lesson."""
    from armini import train as training

    shift = lambda rows: [(step + first.steps, value) for step, value in rows]  # noqa: E731
    hist = training.History(train=first.train + shift(second.train), steps=first.steps + second.steps,
                            train_s=first.train_s + second.train_s, unit=second.unit,
                            train_losses=first.train_losses + shift(second.train_losses),
                            test=[(first.steps + second.steps, test_bpd)], final_test_bpd=test_bpd)
    hist.stages = dict(zip(names, (first, second)))
    return hist


def _train_tokenizer(name: str, r: Recipe, where: Path, progress: bool) -> dict:
    """Lesson 11's tokenizer cells: seeded, built, seeded again, trained by fit (with the test set and a UsageLog
    where the lesson has them). (The lesson's check_tokenizer between the two seeds changes no weight.)"""
    from armini import train as training
    from armini.tokenizers import UsageLog

    train_set, test_set = datasets(r)
    armini.seed_everything(r.seed)
    tok = build(name, train_set.shape, train_set.levels)
    log = UsageLog(test_set.images[-r.usage[0]:], every=r.usage[1]) if r.usage else None
    armini.seed_everything(r.seed)
    start = time.process_time()
    hist = training.fit(tok, train_set, test_set if "eval_images" in r.fit else None, steps=r.steps,
                        batch_size=r.batch_size, lr=r.lr, seed=r.seed, loss_fn=log, device="cpu", progress=progress,
                        clock=time.process_time, **r.fit)
    train_cpu_s = time.process_time() - start
    start = time.process_time()
    more = {}
    if log is not None:
        log.measure(tok)  # and once after the last step, as the lesson does
        more["usage"] = dict(images=r.usage[0], every=r.usage[1], steps=log.steps,
                             used=[round(u, 6) for u in log.used], perplexity=[round(p, 4) for p in log.perplexity])
    tok.eval()
    test_bpd = training.evaluate(tok, test_set, device="cpu", limit=r.data["test"])
    more["quality"] = _quality(tok, r, train_set, test_set)
    rec = _base_record(name, r, tok, train_set, test_set, hist.steps, train_cpu_s, test_bpd, **more,
                       measure_cpu_s=round(time.process_time() - start, 1))
    return write(name, tok, rec, where, hist)


def _train_vqgan(name: str, r: Recipe, where: Path, progress: bool) -> dict:
    """Lesson 13's two tokenizers, in the lesson's order: the VQ-VAE's warm-up (seeded 0); seeded 1, the VQGAN
    built with the warm-up's weights and its warm-up clock at the end; the VQ-VAE trained on (seed=1); then the
    VQGAN by fit_vqgan (seed=1). NAME is "vqgan-baseline" (the VQ-VAE) or "vqgan"; "vqgan" trains the VQ-VAE's
    second run too, since its random numbers come before the VQGAN's (its CPU s are not in the record's)."""
    from armini import metrics
    from armini import train as training
    from armini.tokenizers.vqgan import VQGAN, fit_vqgan
    from armini.tokenizers.vqvae import VQVAE

    train_set, test_set = datasets(r)
    image = dict(image_shape=train_set.shape, levels=train_set.levels)
    settings = dict(batch_size=r.batch_size, lr=r.lr, device="cpu", progress=progress, clock=time.process_time)
    warm_steps, more_steps = r.steps
    armini.seed_everything(r.seed)
    vq = VQVAE(**image, **RECIPES["vqgan-baseline"].kwargs)
    start = time.process_time()
    warm = training.fit(vq, train_set, steps=warm_steps, **settings)
    warm_cpu_s = time.process_time() - start
    armini.seed_everything(1)
    vqgan = VQGAN(**image, **RECIPES["vqgan"].kwargs, perceptual_net=metrics.load_classifier(device="cpu"))
    vqgan.autoencoder.load_state_dict(vq.state_dict())  # the warm-up's autoencoder
    vqgan.step.fill_(warm_steps)  # and its clock: the adversarial terms start now
    start = time.process_time()
    more = training.fit(vq, train_set, steps=more_steps, seed=1, **settings)
    more_cpu_s = time.process_time() - start
    if name == "vqgan":
        start = time.process_time()
        second = fit_vqgan(vqgan, train_set, steps=more_steps, seed=1, **settings)
        more_cpu_s, model, names = time.process_time() - start, vqgan, ("warm-up", "vqgan")
    else:
        model, second, names = vq, more, ("warm-up", "more")
    start = time.process_time()
    model.eval()
    test_bpd = training.evaluate(model, test_set, device="cpu", limit=r.data["test"])
    extra = dict(last_lambda=round(float(vqgan.last_lambda), 6)) if name == "vqgan" else {}
    rec = _base_record(name, r, model, train_set, test_set, warm.steps + second.steps, warm_cpu_s + more_cpu_s,
                       test_bpd, quality=_quality(model, r, train_set, test_set), **extra,
                       stages={k: dict(steps=h.steps, train_cpu_s=round(h.train_s, 1))
                               for k, h in zip(names, (warm, second))},
                       measure_cpu_s=round(time.process_time() - start, 1))
    return write(name, model, rec, where, _two_part_history(warm, second, names, test_bpd))


def _train_prior(name: str, r: Recipe, where: Path, progress: bool) -> dict:
    """Lesson 13's priors: seeded, a TwoStage over the tokenizer checkpoint r.after (loaded, so trained first and
    its checksum checked) and lesson 07's transformer; the prior trained by fit on every training image's tokens;
    tested on the test images' tokens; sample FID-FMNIST of r.fid_samples samples against as many test images."""
    from armini import metrics
    from armini import train as training
    from armini.models.token_ar import TwoStage

    train_set, test_set = datasets(r)
    tokenizer = _load(r.after, where, device="cpu")
    armini.seed_everything(r.seed)
    two = TwoStage(shape=train_set.shape, levels=train_set.levels,
                   tokenizer=getattr(tokenizer, "autoencoder", tokenizer), **r.kwargs)
    start = time.process_time()
    tokens = two.encode(train_set.images)  # (N, D, h, w): the tokenizer is frozen from here on
    hist = training.fit(two.prior, tokens, steps=r.steps, batch_size=r.batch_size, lr=r.lr, device="cpu",
                        progress=progress, clock=time.process_time, **r.fit)
    train_cpu_s = time.process_time() - start
    start = time.process_time()
    two.eval()
    test_bpd = training.evaluate(two.prior, two.encode(test_set.images[:r.data["test"]]), device="cpu")
    n = r.fid_samples
    samples = two.sample(n, generator=torch.Generator().manual_seed(0))  # (n, C, H, W), as the lesson draws them
    fid = metrics.fid(test_set.images[:n], samples, two.levels)
    hist.test, hist.final_test_bpd = [(hist.steps, test_bpd)], test_bpd
    rec = _base_record(name, r, two.prior, train_set, test_set, hist.steps, train_cpu_s, test_bpd, fid,
                       tokenizer=dict(name=r.after, sha256=read_sums(where).get(f"{r.after}.pt")),
                       fid_floor=round(metrics.fid(train_set.images[:n], test_set.images[:n], two.levels), 2),
                       measure_cpu_s=round(time.process_time() - start, 1))
    return write(name, two.prior, rec, where, hist)


TRAINERS = {"tokenizer": _train_tokenizer, "vqgan": _train_vqgan, "prior": _train_prior}


def write(name: str, model, rec: dict, where: Optional[Path] = None, hist=None) -> dict:
    """Write NAME.pt (armini.train.save_checkpoint: weights, the settings that rebuild the model and the
    training History `hist`, with a two-stage model's `stages`), NAME.json
    (`rec` plus model, kwargs, parameters, file size, torch version) and their SHA256SUMS lines, each file
    through armini.files.atomic_write. Returns the full record."""
    from armini import train as training

    where = Path(where or folder())
    where.mkdir(parents=True, exist_ok=True)
    model_name, kwargs = model_entry(model)
    pt = where / f"{name}.pt"
    if hist is None:
        hist = training.History(steps=rec.get("steps_done") or 0, unit=training.unit_label(model))
    stages = {k: asdict(h) for k, h in (getattr(hist, "stages", None) or {}).items()}
    training.save_checkpoint(pt, dict(
        model_name=model_name, model_class=type(model).__name__, model_kwargs=kwargs,
        model=model.state_dict(), step=rec.get("steps_done"), fit_args={}, metrics=dict(test_bpd=rec.get("test_bpd")),
        history=asdict(hist), stages=stages,
    ))
    rec = dict(rec, model=model_name, model_class=type(model).__name__,
               model_kwargs=json.loads(json.dumps(kwargs)), params=model.num_params(), file_bytes=pt.stat().st_size,
               torch=torch.__version__, armini=getattr(armini, "__version__", None))
    with atomic_write(where / f"{name}.json", "w") as f:
        json.dump(rec, f, indent=2, allow_nan=False)
        f.write("\n")
    with _folder_lock(where):  # two trainings finishing at once must not drop each other's lines
        sums = read_sums(where)
        sums.update({pt.name: sha256_file(pt), f"{name}.json": sha256_file(where / f"{name}.json")})
        write_sums(sums, where)
    return rec


# ----------------------------------------------------------------------------- the command line


def summary_rows(where: Optional[Path] = None) -> list[dict]:
    """One row per recipe for `pretrained list`: name, lesson, MB, measured figures, status."""
    where = where or folder()
    rows = []
    for name, r in RECIPES.items():
        problem = _problem(name, where)
        row = dict(name=name, lesson=r.lesson, status="present" if problem is None else "missing", mb=None,
                   steps=None, train_cpu_s=None, test_bpd=None, unit="", fid=None)
        if (where / f"{name}.pt").is_file() and problem and "is missing" not in problem:
            row["status"] = "damaged"
        if problem is None:
            rec = json.loads((where / f"{name}.json").read_text())
            steps = rec["steps"] if isinstance(rec["steps"], list) else rec.get("steps_done", rec["steps"])
            row.update(mb=(where / f"{name}.pt").stat().st_size / 1e6, steps=steps,
                       train_cpu_s=rec["train_cpu_s"], test_bpd=rec["test_bpd"],
                       unit=rec["unit"] + (" (bound)" if rec["is_bound"] else ""), fid=rec["fid"])
        rows.append(row)
    return rows


def main(args) -> int:
    """`python -m armini pretrained ...` (armini.__main__ parses the flags): list, --verify, train NAME / --all."""
    if args.verify:
        problems = verify()
        for p in problems:
            print(p)
        if problems:
            return 1
        print(f"{len(read_sums()) // 2} checkpoints OK")
        return 0
    if args.action == "train":
        todo = list(RECIPES) if args.all else args.names
        if not todo:
            raise ValueError("pretrained train: name a checkpoint (one of " + ", ".join(RECIPES) + ") or give --all")
        for name in todo:
            recipe(name)
        for name in todo:
            rec = train(name, progress=not args.no_progress)
            fid = "" if rec["fid"] is None else f", FID-FMNIST {rec['fid']:.1f} ({rec['fid_samples']} samples)"
            print(f"{name}: {rec['steps']} steps in {rec['train_cpu_s']:.0f} CPU s, test {rec['unit']} "
                  f"{rec['test_bpd']:.3f}{fid}, {rec['file_bytes'] / 1e6:.1f} MB")
        return 0
    rows = summary_rows()
    width = max(len(name) for name in RECIPES)
    print(f"{'name':<{width}} {'lesson':<22} {'MB':>5} {'steps':>11} {'CPU s':>6} {'test':>7} {'unit':<18} "
          f"{'FID':>6}  status")
    for row in rows:
        def show(v, fmt):
            return "-" if v is None else format(v, fmt)

        steps = "-" if row["steps"] is None else "+".join(map(str, row["steps"])) if isinstance(row["steps"], list) \
            else str(row["steps"])
        print(f"{row['name']:<{width}} {row['lesson']:<22} {show(row['mb'], '.1f'):>5} {steps:>11} "
              f"{show(row['train_cpu_s'], '.0f'):>6} {show(row['test_bpd'], '.3f'):>7} {row['unit']:<18} "
              f"{show(row['fid'], '.1f'):>6}  {row['status']}")
    present = [r for r in rows if r["status"] == "present"]
    print(f"{len(present)} of {len(rows)} present, {sum(r['mb'] for r in present):.1f} MB in all")
    return 0
