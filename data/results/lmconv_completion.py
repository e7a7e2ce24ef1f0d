"""Lesson 09's completion comparison at equal training: LMConv against PixelCNN, same steps, learning rate
and batches (the lesson's default run gives LMConv more of each; this script removes that difference).

    python data/results/lmconv_completion.py --steps 8000 --eval-at 4000 8000 \
        --json data/results/lmconv-completion-equal-steps.json

Both models train as lesson 09's training cells train them (armini.train.fit: seed 0, batch 32, one
cosine schedule over --steps, the same batches in the same order), on 14x14 Fashion-MNIST (256 levels),
one torch thread, at one learning rate (--lr). PixelCNN is lesson 02's network in raster order. LMConv
is lesson 09's network (softmax head) trained on 3 x F orders: for each S-curve symmetry in --families,
the order itself and the order made observed-first (armini.orders.observed_first) for a given left half
and for a given centre, so each family shares its masks between the three.

At each --eval-at step, on the first --test-images test images: whole-image test bits/dim (LMConv in
the plain S-curve), and for each mask the completion NLL in bits per missing dimension,
-log2 p(x_missing | x_observed) / (missing dimensions):
  - LMConv, one order: model.completion_order(observed) (every observed pixel first);
  - LMConv, ensemble: the mixture of every training order that visits the observed pixels first,
    model.ensemble_log_prob(x, model.completion_orders(observed), observed=observed);
  - PixelCNN: its raster conditionals of the missing pixels (it sees the observed pixels before each).
Differences are paired over the images: mean, standard error, and the share of images LMConv scores
better. Each record is one (model pair, step); --json appends them to a JSON list. To score the
checkpoints a run left behind on other test images (e.g. all 10,000), without training again:

    python data/results/lmconv_completion.py --measure-only --test-images 10000 --json <file>
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch

import armini
from armini import data, orders, viz
from armini.models import LMConv, PixelCNN
from armini.train import evaluate, fit

H = W = 14


def masks() -> dict:
    """The observed pixels of each completion task, as the completion widget's presets make them:
    {name: (H, W) bool, True = given}. Columns 0-6 given; the central 7x7 block (rows and columns 4-10)
    given, or everything but it."""
    preset = {"left half given": "left half", "centre given": "centre given", "centre missing": "centre"}
    return {name: viz.preset_mask(p, H, W) for name, p in preset.items()}


def training_orders(families) -> torch.Tensor:
    """Each S-curve symmetry in `families`, plain and made observed-first for the left half and the centre."""
    given = masks()
    plain = [orders.named("s-curve", H, W, k) for k in families]
    made = [orders.observed_first(given[name], o) for name in ("left half given", "centre given") for o in plain]
    return torch.stack(plain + made)  # (3F, L)


def raster_missing_nats(pixelcnn, x, observed, batch=100) -> torch.Tensor:
    """PixelCNN's sum over the missing pixels of log p(x_d | x_<d in raster): (N,) nats. (Its log_prob refuses
    observed= here: some observed pixels come after missing ones, so this is not p(x_missing | x_observed).)"""
    with torch.no_grad():
        lp = torch.cat([pixelcnn.log_prob_pixels(b) for b in x.split(batch)])  # (N, 1, H, W)
    return (lp * ~observed.view(1, 1, H, W)).flatten(1).sum(1)


def paired(lm_bits, pc_bits) -> dict:
    """LMConv minus PixelCNN over the same images: mean, standard error, share where LMConv is better."""
    d = lm_bits - pc_bits
    return {"diff": round(d.mean().item(), 4), "se": round(d.std().item() / math.sqrt(len(d)), 4),
            "lmconv_better": round((d < 0).double().mean().item(), 3)}


def completion(lmconv, pixelcnn, x) -> dict:
    """Bits per missing dimension for each mask: LMConv's one order and ensemble, PixelCNN, paired."""
    lmconv.eval(), pixelcnn.eval()
    rows = {}
    for name, observed in masks().items():
        per_dim = (~observed).sum().item() * math.log(2)  # nats -> bits per missing dimension
        one = lmconv.completion_order(observed)  # (L,)
        ready = lmconv.completion_orders(observed)  # (N, L): trained orders that visit the observed pixels first
        with torch.no_grad():  # (N,) nats: log p(x_missing | x_observed) in the one order, and of the mixture
            one_nats = torch.cat([lmconv.log_prob(b, order=one, observed=observed) for b in x.split(100)])
            mixed = torch.cat([lmconv.ensemble_log_prob(b, ready, observed=observed) for b in x.split(100)])
        lm_one, lm_mix = -one_nats / per_dim, -mixed / per_dim
        pc = -raster_missing_nats(pixelcnn, x, observed) / per_dim
        rows[name] = {"pixelcnn": round(pc.mean().item(), 4), "lmconv_one_order": round(lm_one.mean().item(), 4),
                      "lmconv_ensemble": round(lm_mix.mean().item(), 4), "ensemble_orders": len(ready),
                      "one_order_vs_pixelcnn": paired(lm_one, pc), "ensemble_vs_pixelcnn": paired(lm_mix, pc)}
    lmconv.train(), pixelcnn.train()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8000, help="the cosine schedule's length, for both models")
    p.add_argument("--eval-at", type=int, nargs="*", help="steps at which to measure (default: --steps)")
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--families", default="identity,flip-lr", help="S-curve symmetries (armini.orders.SYMMETRIES)")
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--test-from", type=int, default=0, help="the first test image to score (0: the first)")
    p.add_argument("--measure-only", action="store_true",
                   help="score the two checkpoints an earlier run left in --runs, without training")
    p.add_argument("--runs", default="runs/lmconv-completion", help="folder for the two checkpoints")
    p.add_argument("--json", help="append the records to this JSON list")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = armini.device()
    train = data.load("fashion-mnist", "train", size=H)
    test = data.load("fashion-mnist", "test", size=H)
    x = test.images[args.test_from: args.test_from + args.test_images].to(device)
    families = args.families.split(",")

    def build(name):  # as the lesson's training cells do: seed, build, then fit
        armini.seed_everything(0)
        if name == "pixelcnn":
            return PixelCNN(shape=(1, H, W), levels=256)  # lesson 02's network
        model = LMConv(shape=(1, H, W), levels=256, head="softmax", orders="s-curve")  # lesson 09's network
        model.train_orders = training_orders(families)  # loss() draws one of these per batch
        return model

    models, cpu = {}, {"pixelcnn": 0.0, "lmconv": 0.0}
    for n, stop in enumerate(args.eval_at or [args.steps]):
        for name in cpu:  # each model to `stop` steps of one schedule, resumed (RNG state too) between stops
            if n == 0:
                models[name] = build(name)
            model = models[name]
            if args.measure_only:
                saved = torch.load(Path(args.runs) / f"{name}.pt", map_location=device, weights_only=False)
                model.load_state_dict(saved["model"])
                stop, args.steps, args.lr = saved["step"], saved["fit_args"]["steps"], saved["fit_args"]["lr"]
                continue
            t0 = time.process_time()
            fit(model, train, test, steps=args.steps, stop_after=stop, lr=args.lr, batch_size=32, eval_every=None,
                eval_images=20, device=device, checkpoint=Path(args.runs) / f"{name}.pt", checkpoint_every=None,
                resume=n > 0, overwrite=n == 0, seed=0, progress=False, clock=time.process_time)
            cpu[name] += time.process_time() - t0
        record = {"script": "data/results/lmconv_completion.py", "steps": stop, "schedule_steps": args.steps,
                  "lr": args.lr, "batch_size": 32, "threads": 1, "test_images": len(x), "test_from": args.test_from,
                  "train_images": len(train.images), "lmconv_families": families,
                  "lmconv_train_orders": len(models["lmconv"].train_orders),
                  "params": {k: m.num_params() for k, m in models.items()},
                  "measure_only": args.measure_only,  # then cpu_s is None: this run trained nothing
                  "cpu_s": None if args.measure_only else {k: round(v, 1) for k, v in cpu.items()},
                  "whole_image_bits_per_dim": {k: round(evaluate(m, test, limit=len(x), device=device), 4)
                                               for k, m in models.items()},
                  "completion_bits_per_missing_dim": completion(models["lmconv"], models["pixelcnn"], x)}
        print(json.dumps(record), flush=True)
        if args.json:
            path = Path(args.json)
            records = json.loads(path.read_text()) if path.exists() else []
            path.write_text(json.dumps(records + [record], indent=1) + "\n")


if __name__ == "__main__":
    main()
