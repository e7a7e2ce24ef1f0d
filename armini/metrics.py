"""Sample quality without a download: a small Fashion-MNIST classifier is the judge.

Bits/dim compares likelihood models; it cannot compare a pixel model with a two-stage token model
(whose likelihood is only a bound) or say whether samples *look* right. Papers report FID (Heusel et
al. 2017), KID (Binkowski et al. 2018) and precision/recall (Kynkaanniemi et al. 2019), all computed
on the features of a pretrained Inception network, which we cannot download. So the course trains its
own judge: `FMNISTClassifier`, a small CNN (about 92% test accuracy), whose penultimate features
(F = 128 numbers per image) stand in for Inception's.

    from armini import data, metrics
    real = data.load("fashion-mnist", "test", limit=1000).images       # (N, 1, 28, 28) in [0, 256)
    fake = model.sample(1000)                                          # same shape and levels
    metrics.sample_quality(real, fake, levels=256)
    # {'fid': ..., 'kid': ..., 'kid_std': ..., 'precision': ..., 'recall': ...}

What each number is (f = features of an image; "real" and "fake" are two sets of them):

    FID-FMNIST  the Frechet distance between Gaussians fitted to the two feature sets:
                ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r^1/2 S_f S_r^1/2)^1/2)   (0: same mean and covariance)
    KID         the unbiased MMD^2 with the polynomial kernel k(a, b) = (a.b / F + 1)^3, averaged over
                100 random subsets (kid_std: its spread over the subsets); unbiased, so near 0 (even
                slightly negative) for two samples of the same distribution
    precision   the fraction of fake images inside the real manifold: within the distance to its k-th
                nearest real neighbour (k = 3) of some real image. Low: unrealistic samples.
    recall      the fraction of real images inside the fake manifold (the same, roles swapped). Low:
                missing variety (mode collapse).

Small sets: FID is biased upwards (train vs test: 3.6 at 1000 images each, 76 at 64), and the k-NN
manifolds of precision/recall are coarse (uniform noise gets precision 1.0 against 64 test images, 0.02
against 1000): quick-mode numbers show that everything runs, not how good a model is.

FID-FMNIST is comparable only with itself: the same classifier (the weights in data/classifier/, checked by
SHA-256), the same number of images (FID is biased upwards for small sets), the same image size. It is
NOT comparable with published FIDs (Inception features of resized images). Always print the real-vs-real
floor (training images vs test images, same counts) beside a model's number.

The distances come from torchmetrics (FrechetInceptionDistance and KernelInceptionDistance, given the
features through a pass-through feature module); `frechet_distance` writes the formula out for the
lesson's check, and `precision_recall` is short enough to write here.

Images of any number of levels K and of size 28, 14 or 7 are judged: `to_classifier_input` scales them
to [0, 1] and enlarges 14x14 and 7x7 images by nearest-neighbour upsampling (so compare models and real
images at the same size). The classifier is retrained, seeded on one thread, by

    python -m armini.metrics train-classifier [--out DIR]

which writes the weights, their .sha256 and a JSON record of the run (command, seed, steps, accuracy).
Shape legend: N images, B a batch, F features, K levels.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from armini.data import BUNDLED_DIR, DataError
from armini.files import atomic_write

__all__ = [
    "FMNISTClassifier", "ClassifierError", "to_classifier_input", "load_classifier", "features",
    "frechet_distance", "fid", "kid", "precision_recall", "sample_quality",
    "fid_from_features", "kid_from_features", "precision_recall_from_features",
    "train_classifier", "accuracy", "CLASSIFIER_DIR", "WEIGHTS_FILE", "RETRAIN",
]

CLASSIFIER_DIR = BUNDLED_DIR / "classifier"
WEIGHTS_FILE = "fmnist-classifier.pt"
RECORD_FILE = "training.json"
RETRAIN = "python -m armini.metrics train-classifier"
SIZE = 28  # the classifier reads 28x28 images


class ClassifierError(DataError):
    """The classifier's weights are missing, damaged or not what their checksum says. Names the fix."""


# ----------------------------------------------------------------------------- the classifier

def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU, then 2x2 max pooling (halves H and W)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


class Judge(nn.Module):
    """A classifier whose penultimate features judge samples (FMNISTClassifier here, the video judge in
    armini.video_metrics). load_checked freezes it: always eval mode, no parameter gradients."""

    frozen = False

    def train(self, mode: bool = True):
        """As nn.Module.train, except that a frozen judge stays in eval mode, so that a model holding it as a
        submodule (a perceptual loss) cannot switch its batch norm to batch statistics, or update them."""
        return super().train(mode and not self.frozen)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class FMNISTClassifier(Judge):
    """A small CNN for 28x28 Fashion-MNIST: three conv blocks (28 -> 14 -> 7 -> 3), a 128-unit layer
    whose ReLU outputs are the judge's features, and a linear layer to the 10 class logits.
    Input: float images (B, 1, 28, 28) in [0, 1] (see to_classifier_input)."""

    def __init__(self, channels=(32, 64, 64), num_features: int = 128, num_classes: int = 10):
        super().__init__()
        self.config = dict(channels=list(channels), num_features=num_features, num_classes=num_classes)
        self.num_features = num_features  # torchmetrics reads this from a custom feature network
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            conv_block(1, c1), conv_block(c1, c2), conv_block(c2, c3),  # (B, c3, 3, 3)
            nn.Flatten(),                                                # (B, c3 * 9)
            nn.Linear(c3 * 9, num_features), nn.ReLU(),                  # (B, F)
        )
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, F): the penultimate layer, what FID/KID/precision/recall compare."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> logits (B, 10)."""
        return self.head(self.features(x))


def to_classifier_input(images, levels: int) -> torch.Tensor:
    """Integer images (N, 1, H, W) with values in [0, levels), H = W in {28, 14, 7} -> float (N, 1, 28, 28)
    in [0, 1]: value v becomes v / (levels - 1), and 14x14 or 7x7 images are enlarged by repeating each
    pixel (nearest-neighbour upsampling) to 28x28."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be a whole number >= 2 (the images' number of pixel values), got {levels!r}")
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"the classifier judges grayscale images (N, 1, H, W), got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h != w or h not in (28, 14, 7):
        raise ValueError(f"images must be 28x28, 14x14 or 7x7 (the Fashion-MNIST views), got {h}x{w}")
    if images.dtype.is_floating_point and not torch.equal(images, images.round()):
        raise ValueError("images must hold whole pixel values in [0, levels) (an integer tensor), got fractions; "
                         "for a model's samples pass model.sample(n) as it comes")
    if images.numel() and (int(images.min()) < 0 or int(images.max()) >= levels):  # int(): uint8 wraps 256
        raise ValueError(f"pixel values must lie in [0, {levels}) for levels={levels}, found "
                         f"[{int(images.min())}, {int(images.max())}]: pass the levels the images were made with")
    x = images.float() / (levels - 1)  # (N, 1, H, W) in [0, 1]
    f = SIZE // h
    return x.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)  # (N, 1, 28, 28)


# ----------------------------------------------------------------------------- weights on disk

def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _expected_sha256(path: Path, fix: str) -> str:
    """The hex digest in `path`.sha256 (the `sha256sum` format: digest, two spaces, file name)."""
    check = path.with_name(path.name + ".sha256")
    try:
        return check.read_text().split()[0].lower()
    except (OSError, IndexError) as e:
        raise ClassifierError(f"{check}: the checksum of the classifier's weights is missing or unreadable ({e}). "
                              f"{fix}") from e


def save_classifier(model: Judge, path) -> str:
    """Write the weights (with the config that rebuilds the network) and `path`.sha256; returns the digest."""
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_write(path, "wb") as f:
        torch.save({"config": model.config, "state_dict": state}, f)
    digest = sha256_of(path)
    with atomic_write(path.with_name(path.name + ".sha256"), "w") as f:
        f.write(f"{digest}  {path.name}\n")
    return digest


_LOADED: dict = {}  # (path, mtime_ns, size, device) -> judge: loaded once per process


def load_checked(path: Path, build: type, device=None, *, folder: str, what: str, retrain: str) -> Judge:
    """A judge saved by save_classifier, rebuilt as build(**config), after checking the SHA-256 of `path`
    against `path`.sha256; frozen, in eval mode, loaded once per process (and file version, and device).
    A missing or damaged file raises ClassifierError naming `what`, the `folder` to restore and `retrain`."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    fix = f"Restore {folder} from the repository, or retrain them: {retrain}"
    if not path.is_file():
        raise ClassifierError(f"{path}: {what} are missing. {fix}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device))
    if key not in _LOADED:
        expected, got = _expected_sha256(path, fix), sha256_of(path)
        if got != expected:
            raise ClassifierError(f"{path}: SHA-256 {got[:16]}... does not match {expected[:16]}... in "
                                  f"{path.name}.sha256: the weights are damaged or were changed. {fix}")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = build(**saved["config"])
        model.load_state_dict(saved["state_dict"])
        model.frozen = True  # shared by every caller in this process: nobody may change it
        _LOADED[key] = model.to(device).eval().requires_grad_(False)
    return _LOADED[key]


def load_classifier(path=None, device=None) -> FMNISTClassifier:
    """The trained judge in eval mode, from `path` (default data/classifier/fmnist-classifier.pt), after
    checking its SHA-256 against `path`.sha256. A missing or damaged file raises ClassifierError naming
    `python -m armini.metrics train-classifier`. Loaded once per process (and file version, and device), and
    frozen: it stays in eval mode and its parameters need no gradients, but gradients do flow through it to
    its input, so `load_classifier().features(x)` (x float (B, 1, 28, 28) in [0, 1]) can be a perceptual loss."""
    path = Path(path) if path is not None else CLASSIFIER_DIR / WEIGHTS_FILE
    return load_checked(path, FMNISTClassifier, device, folder="data/classifier/", retrain=RETRAIN,
                        what="the classifier's weights (the judge of FID-FMNIST, KID, precision/recall)")


# ----------------------------------------------------------------------------- features and distances

@torch.no_grad()
def features(images, levels: int, classifier=None, batch_size: int = 500) -> torch.Tensor:
    """(N, F) float64 features of integer images (N, 1, H, W) with `levels` values (see to_classifier_input)."""
    classifier = classifier if classifier is not None else load_classifier()
    dev = next(classifier.parameters()).device
    x = to_classifier_input(images, levels)  # (N, 1, 28, 28)
    was_training = classifier.training
    classifier.eval()
    try:
        out = [classifier.features(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        classifier.train(was_training)
    return torch.cat(out).double() if out else torch.zeros(0, classifier.num_features, dtype=torch.float64)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^1/2 sigma2 sigma1^1/2)^1/2)

    tr((s1^1/2 s2 s1^1/2)^1/2) = tr((s1 s2)^1/2); the symmetric form lets us take square roots of
    symmetric positive semi-definite matrices by eigendecomposition (eigenvalues clamped at 0)."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))

    def sqrt_psd(m):  # the square root of a symmetric PSD matrix
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T

    root1 = sqrt_psd(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()  # tr((s1^1/2 s2 s1^1/2)^1/2)
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross)


class _GivenFeatures(nn.Module):
    """A pass-through 'feature network' for torchmetrics: we hand it features we computed once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, f):
        return f


def _check_features(f_real, f_fake, at_least: int, what: str):
    if f_real.ndim != 2 or f_fake.ndim != 2 or f_real.shape[1] != f_fake.shape[1]:
        raise ValueError(f"{what}: need two feature matrices (N, F) with the same F, got "
                         f"{tuple(f_real.shape)} and {tuple(f_fake.shape)}")
    if min(len(f_real), len(f_fake)) < at_least:
        raise ValueError(f"{what} needs at least {at_least} real and {at_least} fake images, got "
                         f"{len(f_real)} and {len(f_fake)}")


def fid_from_features(f_real: torch.Tensor, f_fake: torch.Tensor) -> float:
    """FID between two feature sets (N, F), computed by torchmetrics' FrechetInceptionDistance (float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_features(f_real, f_fake, 2, "FID")
    metric = FrechetInceptionDistance(feature=_GivenFeatures(f_real.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(f_real.double(), real=True)
    metric.update(f_fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(f_real, f_fake, subsets: int = 100, subset_size: int = 1000, seed: int = 0):
    """(mean, std) of KID over `subsets` random subsets of min(subset_size, N // 2) images of each set
    (torchmetrics' KernelInceptionDistance: unbiased MMD^2, polynomial kernel (a.b / F + 1)^3). Half the
    smaller set at most, so that the subsets differ. Seeded; the global random state is left untouched."""
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_features(f_real, f_fake, 4, "KID")
    size = max(2, min(subset_size, len(f_real) // 2, len(f_fake) // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "saves all extracted features": we know
        metric = KernelInceptionDistance(feature=_GivenFeatures(f_real.shape[1]), subsets=subsets,
                                         subset_size=size, degree=3, coef=1.0)  # gamma None: 1 / F
    metric.update(f_real.double(), real=True)
    metric.update(f_fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws its subsets with torch.randperm
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_distance(f: torch.Tensor, k: int, chunk: int = 1000) -> torch.Tensor:
    """(N,) distance from each row of f to its k-th nearest other row."""
    out = []
    for i in range(0, len(f), chunk):
        d = torch.cdist(f[i:i + chunk], f)  # (chunk, N), includes the distance 0 to itself
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _inside_manifold(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, chunk: int = 1000):
    """(M,) bool: is each query within radii[j] of some manifold point j (a union of balls)?"""
    out = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i:i + chunk], manifold)  # (chunk, N)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall_from_features(f_real, f_fake, k: int = 3):
    """(precision, recall) with k-nearest-neighbour manifolds (Kynkaanniemi et al. 2019, k = 3): each set's
    manifold is the union of balls around its points, of radius the distance to the k-th nearest neighbour.
    precision = fraction of fakes inside the real manifold; recall = fraction of reals inside the fake one."""
    _check_features(f_real, f_fake, k + 1, "precision/recall")
    f_real, f_fake = f_real.double(), f_fake.double()
    precision = _inside_manifold(f_real, _kth_neighbour_distance(f_real, k), f_fake).double().mean()
    recall = _inside_manifold(f_fake, _kth_neighbour_distance(f_fake, k), f_real).double().mean()
    return float(precision), float(recall)


def fid(real, fake, levels: int, classifier=None) -> float:
    """FID-FMNIST between two sets of integer images (N, 1, H, W) with `levels` values."""
    return fid_from_features(features(real, levels, classifier), features(fake, levels, classifier))


def kid(real, fake, levels: int, classifier=None, subsets: int = 100, subset_size: int = 1000):
    """(mean, std) of KID-FMNIST between two sets of integer images (N, 1, H, W)."""
    return kid_from_features(features(real, levels, classifier), features(fake, levels, classifier),
                             subsets=subsets, subset_size=subset_size)


def precision_recall(real, fake, levels: int, k: int = 3, classifier=None):
    """(precision, recall) of `fake` against `real` (integer images (N, 1, H, W)) in the judge's features."""
    return precision_recall_from_features(features(real, levels, classifier), features(fake, levels, classifier), k)


def sample_quality(real, fake, levels: int, classifier=None) -> dict:
    """THE entry point: dict(fid=, kid=, kid_std=, precision=, recall=) of `fake` against `real`, two sets
    of integer images (N, 1, H, W) with `levels` values, features computed once. Use the same number of
    real and fake images, and report the real-vs-real floor beside it (e.g. train vs test images)."""
    f_real, f_fake = features(real, levels, classifier), features(fake, levels, classifier)
    kid_mean, kid_std = kid_from_features(f_real, f_fake)
    precision, recall = precision_recall_from_features(f_real, f_fake)
    return dict(fid=fid_from_features(f_real, f_fake), kid=kid_mean, kid_std=kid_std,
                precision=precision, recall=recall)


# ----------------------------------------------------------------------------- training the judge

@torch.no_grad()
def accuracy(classifier, images, labels, levels: int = 256, batch_size: int = 1000) -> float:
    """Fraction of images (N, 1, H, W) whose predicted class is the label."""
    dev = next(classifier.parameters()).device
    x = to_classifier_input(images, levels)
    classifier.eval()
    pred = torch.cat([classifier(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    return float((pred == torch.as_tensor(labels).long()).double().mean())


def train_classifier(epochs: float = 4.0, batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4,
                     seed: int = 0, source: str = "full", progress: bool = True):
    """Train FMNISTClassifier on Fashion-MNIST's training set on one CPU thread, seeded (the same weights on
    every run with the same torch build); returns (classifier, record), the record saying how.

    Recipe: AdamW, one-cycle learning rate (Smith & Topin 2019) peaking at `lr`, minibatches drawn with
    replacement from a seeded generator, cross-entropy; no augmentation."""
    from armini import data

    train = data.load("fashion-mnist", "train", source=source)
    test = data.load("fashion-mnist", "test", source=source)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reproducible, and the CPU time we report
    try:
        torch.manual_seed(seed)
        model = FMNISTClassifier()
        x, y = to_classifier_input(train.images, 256), train.labels.long()  # (N, 1, 28, 28), (N,)
        steps = int(epochs * len(x) / batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        t0 = time.process_time()
        model.train()
        for step in range(steps):
            idx = torch.randint(len(x), (batch_size,), generator=gen)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            if progress and (step % 200 == 0 or step == steps - 1):
                print(f"step {step + 1}/{steps}  loss {loss.item():.3f}  {time.process_time() - t0:.0f} CPU s",
                      flush=True)
        cpu_s = time.process_time() - t0
        model.eval()
        test_acc = accuracy(model, test.images, test.labels)
    finally:
        torch.set_num_threads(threads)
    record = dict(command=RETRAIN, seed=seed, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, optimizer="AdamW, one-cycle lr", threads=1,
                  train_cpu_s=round(cpu_s, 1), test_accuracy=test_acc, test_images=len(test),
                  params=model.num_params(), data=train.source, test_data=test.source,
                  torch=torch.__version__, config=model.config)
    return model, record


def main(argv=None) -> int:
    """python -m armini.metrics train-classifier [--out DIR]: retrain the image judge and write its files;
    python -m armini.metrics train-video-classifier [--out DIR]: the same for the video judge (FVD-MM)."""
    from armini import cli

    p = argparse.ArgumentParser(prog="python -m armini.metrics",
                                description="The course's sample-quality judge (FID-FMNIST, KID, precision/recall).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-classifier", help="retrain the Fashion-MNIST classifier (seeded, one thread, "
                                                "about 4 CPU minutes) and write its weights, .sha256 and record")
    t.add_argument("--out", default=str(CLASSIFIER_DIR),
                   help=f"folder for {WEIGHTS_FILE}, its .sha256 and {RECORD_FILE} (default: the bundled data/classifier)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=cli.positive_float, default=4.0)
    t.add_argument("--source", choices=["full", "auto", "subset"], default="full",
                   help="Fashion-MNIST files to train on (default full: the official 60000 / 10000)")
    v = sub.add_parser("train-video-classifier", help="retrain the Moving MNIST video classifier, the judge of "
                                                      "FVD-MM (armini.video_metrics; seeded, one thread, a few CPU "
                                                      "minutes) and write its weights, .sha256 and record")
    v.add_argument("--out", default=None, help="folder for the weights, their .sha256 and training.json "
                                               "(default: the bundled data/video_classifier)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--steps", type=cli.positive_int, default=1200, help="training steps of 32 videos")
    v.add_argument("--test-videos", type=cli.positive_int, default=1000, help="test videos for the accuracy")
    cli.add_debug_flag(p)
    args = p.parse_args(argv)

    if args.command == "train-video-classifier":
        from armini import video_metrics

        def train_video():
            out = video_metrics.VIDEO_CLASSIFIER_DIR if args.out is None else Path(args.out)
            video_metrics.train_and_save(out, steps=args.steps, seed=args.seed, test_videos=args.test_videos)

        return cli.run(train_video, p.prog, args.debug)

    def train_and_save():
        out = Path(args.out)
        if not out.is_dir():
            raise FileNotFoundError(f"--out {out}: no such folder (create it first)")
        model, record = train_classifier(epochs=args.epochs, seed=args.seed, source=args.source)
        record["sha256"] = save_classifier(model, out / WEIGHTS_FILE)
        with atomic_write(out / RECORD_FILE, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"test accuracy {record['test_accuracy']:.4f} on {record['test_images']} test images, "
              f"{record['train_cpu_s']:.0f} CPU s of training; wrote {out / WEIGHTS_FILE} (+ .sha256, {RECORD_FILE})")

    return cli.run(train_and_save, p.prog, args.debug)


if __name__ == "__main__":
    sys.exit(main())
