"""FVD-MM: the Frechet video distance on Moving MNIST, judged by a small video classifier of our own.

Unterthiner et al. (2018) define FVD as the Frechet distance between Gaussians fitted to features of real
and generated videos, the features coming from an I3D network pretrained on Kinetics, which we cannot
download. As Part III did for images (`armini.metrics`, FID-FMNIST), the course trains its own judge:
`VideoClassifier`, a small two-stream CNN (2D convolutions on single frames for appearance,
3D convolutions over the clip for motion) that watches a Moving MNIST video and says

    which digits are in it      10 yes/no outputs (a set: "a 3 and a 7"), and
    which ways they move        8 yes/no outputs, one per compass sector of 45 degrees, "on" when some
                                digit moves that way in some frame (a bounce adds the new direction)

so its penultimate features (F = 128 numbers per video) must see appearance *and* motion. Both targets
are sets, so the order of the digits does not matter.

    from armini import data, video_metrics
    real = data.moving_mnist(256, split="test").videos             # (N, T, 1, 32, 32) in [0, 256)
    fake = model.sample(256)                                       # same shape and levels
    video_metrics.video_quality(real, fake, levels=256)
    # {'fvd': ..., 'kid': ..., 'kid_std': ..., 'precision': ..., 'recall': ...}

FVD-MM = ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r^1/2 S_f S_r^1/2)^1/2) on the judge's features, computed
by the very code FID-FMNIST uses (`metrics.fid_from_features`), as are KID and precision/recall.

Measured with the shipped judge (real training videos vs real test videos, seed 0, same counts): the floor
is 66 at 64 videos a set, 18 at 256, 7.0 at 1000 (biased upwards for small sets, as FID). At 256 videos,
damaged copies of the training videos against the test videos: frames shuffled 396, frozen (first frame
repeated) 245, 1% / 5% / 20% of pixels replaced by noise 68 / 377 / 819, one video repeated 1081. Played
backwards: 19, the floor, rightly: a Moving MNIST video reversed is another Moving MNIST video. Fewer
levels (real and damaged videos alike): floor / shuffled / frozen 24 / 406 / 494 at K = 2, 22 / 399 / 314
at K = 4; the official setting (20 frames, 64x64): 18 / 494 / 292.

FVD-MM is comparable only with itself: the same judge (data/video_classifier/, checked by SHA-256), the
same number of videos (the distance is biased upwards for small sets), the same frame count and levels.
It is NOT comparable with published FVDs (I3D features). Always print the real-vs-real floor (training
videos vs test videos, same counts) beside a model's number.

What the judge reads: integer videos (N, T, 1, H, W) with `levels` values. It was trained on the course's
default Moving MNIST (T = 16 frames, 32x32, two 14x14 digits, 1.8 pixels per frame). It is convolutional
over time and averages over it, so any T >= 2 runs (compare sets of the same T); 64x64 videos (the official
setting: 28x28 digits, 3.6 px/frame) are area-averaged to 32x32, which is exactly the default setting at
half the scale, and 16x16 videos are enlarged by repeating pixels. Other sizes are refused.

The judge is retrained, seeded on one thread (a few CPU minutes), by

    python -m armini.metrics train-video-classifier [--out DIR]

which writes the weights, their .sha256 and a JSON record of the run (command, seed, steps, accuracy).
Shape legend: N videos, B a batch, T frames, C = 1 channel, H = W = side, D digits, F features.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from armini import metrics
from armini.data import BUNDLED_DIR
from armini.files import atomic_write

__all__ = [
    "VideoClassifier", "to_video_input", "video_targets", "load_video_classifier", "video_features",
    "fvd", "video_quality", "train_video_classifier", "video_accuracy", "train_and_save",
    "VIDEO_CLASSIFIER_DIR", "VIDEO_WEIGHTS_FILE", "VIDEO_RETRAIN", "SIDE", "FRAMES", "SECTORS",
]

VIDEO_CLASSIFIER_DIR = BUNDLED_DIR / "video_classifier"
VIDEO_WEIGHTS_FILE = "moving-mnist-classifier.pt"
RECORD_FILE = "training.json"
VIDEO_RETRAIN = "python -m armini.metrics train-video-classifier"
SIDE = 32      # the judge reads 32x32 frames
FRAMES = 16    # ... and was trained on 16-frame videos
SECTORS = 8    # motion directions in 45-degree compass sectors: 0 = right, 2 = up, 4 = left, 6 = down
NUM_CLASSES = 10


# ----------------------------------------------------------------------------- the classifier

def conv3d_block(c_in: int, c_out: int, stride) -> nn.Sequential:
    """3x3x3 convolution over (time, row, column), batch norm, ReLU; `stride` shrinks (T, H, W)."""
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm3d(c_out), nn.ReLU())


def mean_and_max(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """(B, C, ...) -> (B, 2C): the average and the maximum of each channel over `dims` (the maximum says
    "this pattern occurs somewhere", the average "how much of it there is")."""
    return torch.cat([x.mean(dim=dims), x.amax(dim=dims)], dim=1)


class VideoClassifier(metrics.Judge):
    """A small two-stream video CNN (the two streams of Simonyan & Zisserman 2014, both learned from pixels):

        appearance: every `stride`-th frame alone through three 2D conv blocks (metrics.conv_block:
                    32 -> 16 -> 8 -> 4), each channel's mean and max over space, averaged over the frames
                    (B, 1, T, 32, 32) -> (B*T', 1, 32, 32) -> (B*T', a3, 4, 4) -> (B, 2 a3)
        motion:     the whole clip through three 3x3x3 conv blocks, each filter seeing three frames at once
                    (B, 1, T, 32, 32) -s(1,2,2)-> (B, m1, T, 16, 16) -s2-> (B, m2, T/2, 8, 8)
                    -s2-> (B, m3, T/4, 4, 4) -> mean and max over (time, space) -> (B, 2 m3)
        both -> 128 ReLU features (what FVD-MM compares) -> 10 digit logits and 8 direction logits

    Input: float videos (B, 1, T, 32, 32) in [0, 1] (see to_video_input). Both streams average over time,
    so any T runs. A 3D CNN alone (C3D-like, strided) learned the motion but hardly the digits in our
    budget; the 2D appearance stream with max pooling learns them in a few hundred steps."""

    def __init__(self, appearance=(16, 32, 64), motion=(16, 32, 64), stride: int = 4, num_features: int = 128,
                 num_classes: int = NUM_CLASSES, sectors: int = SECTORS):
        super().__init__()
        self.config = dict(appearance=list(appearance), motion=list(motion), stride=stride,
                           num_features=num_features, num_classes=num_classes, sectors=sectors)
        self.num_features = num_features
        self.stride = stride
        a1, a2, a3 = appearance
        m1, m2, m3 = motion
        self.appearance = nn.Sequential(metrics.conv_block(1, a1), metrics.conv_block(a1, a2),
                                        metrics.conv_block(a2, a3))                 # (B*T', a3, 4, 4)
        self.motion = nn.Sequential(conv3d_block(1, m1, (1, 2, 2)), conv3d_block(m1, m2, 2),
                                    conv3d_block(m2, m3, 2))                         # (B, m3, T/4, 4, 4)
        self.joint = nn.Sequential(nn.Linear(2 * (a3 + m3), num_features), nn.ReLU())  # (B, F)
        self.digits_head = nn.Linear(num_features, num_classes)  # which digits appear
        self.motion_head = nn.Linear(num_features, sectors)      # which ways they move

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, 32, 32) in [0, 1] -> (B, F): the penultimate layer, what FVD-MM compares."""
        B = x.shape[0]
        frames = x[:, :, ::self.stride].transpose(1, 2).flatten(0, 1)     # (B*T', 1, 32, 32)
        a = mean_and_max(self.appearance(frames), (2, 3))                  # (B*T', 2 a3)
        a = a.unflatten(0, (B, -1)).mean(dim=1)                            # (B, T', 2 a3) -> (B, 2 a3)
        m = mean_and_max(self.motion(x), (2, 3, 4))                        # (B, 2 m3)
        return self.joint(torch.cat([a, m], dim=1))                        # (B, F)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, T, 32, 32) in [0, 1] -> (digit logits (B, 10), direction logits (B, 8))."""
        f = self.features(x)
        return self.digits_head(f), self.motion_head(f)


def to_video_input(videos, levels: int) -> torch.Tensor:
    """Integer videos (N, T, 1, H, W) with values in [0, levels), H = W in {32, 64, 16}, T >= 2 -> float
    (N, 1, T, 32, 32) in [0, 1] (channels first, as Conv3d reads them): v becomes v / (levels - 1); 64x64
    frames are area-averaged 2x2, 16x16 frames enlarged by repeating each pixel."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be a whole number >= 2 (the videos' number of pixel values), got {levels!r}")
    videos = torch.as_tensor(videos)
    if videos.ndim != 5 or videos.shape[2] != 1:
        raise ValueError(f"the video judge reads grayscale videos (N, T, 1, H, W), got shape {tuple(videos.shape)}")
    T, (h, w) = videos.shape[1], videos.shape[-2:]
    if h != w or h not in (SIDE, 2 * SIDE, SIDE // 2):
        raise ValueError(f"frames must be 32x32 (the course's Moving MNIST), 64x64 (the official setting, "
                         f"averaged to 32x32) or 16x16, got {h}x{w}")
    if T < 2:
        raise ValueError(f"videos need at least 2 frames for the judge to see motion, got T={T}")
    if videos.dtype.is_floating_point and not torch.equal(videos, videos.round()):
        raise ValueError("videos must hold whole pixel values in [0, levels) (an integer tensor), got fractions; "
                         "for a model's samples pass model.sample(n) as it comes")
    if videos.numel() and (int(videos.min()) < 0 or int(videos.max()) >= levels):  # int(): uint8 wraps 256
        raise ValueError(f"pixel values must lie in [0, {levels}) for levels={levels}, found "
                         f"[{int(videos.min())}, {int(videos.max())}]: pass the levels the videos were made with")
    x = videos.float().transpose(1, 2) / (levels - 1)  # (N, 1, T, H, W) in [0, 1]
    if h == 2 * SIDE:
        x = F.avg_pool3d(x, (1, 2, 2))                  # (N, 1, T, 32, 32): area-average 2x2
    elif h == SIDE // 2:
        x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # (N, 1, T, 32, 32)
    return x


def video_targets(labels: torch.Tensor, velocities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's two targets, as sets (multi-hot), from VideoData's labels (N, D) and velocities (N, D, T, 2):

    digits (N, 10):  1 for each class among the video's digits
    motion (N, 8):   1 for each compass sector some digit moves in, over the steps frame t -> t+1 that the
                     video shows (t < T - 1); the angle is atan2(-row, column): 0 = right, 90 = up."""
    N = len(labels)
    digits = torch.zeros(N, NUM_CLASSES)
    digits.scatter_(1, labels.long().clamp(min=0), 1.0)                 # (N, 10); -1 (unknown) never occurs here
    v = velocities[:, :, :-1]                                           # (N, D, T-1, 2): the shown steps
    angle = torch.atan2(-v[..., 0], v[..., 1])                          # (N, D, T-1) in (-pi, pi]
    sector = torch.round(angle / (2 * math.pi / SECTORS)).long() % SECTORS  # nearest of the 8 directions
    motion = torch.zeros(N, SECTORS)
    motion.scatter_(1, sector.flatten(1), 1.0)                          # (N, 8)
    return digits, motion


# ----------------------------------------------------------------------------- weights on disk

def load_video_classifier(path=None, device=None) -> VideoClassifier:
    """The trained video judge in eval mode, frozen, from `path` (default
    data/video_classifier/moving-mnist-classifier.pt), after checking its SHA-256 against `path`.sha256.
    A missing or damaged file raises metrics.ClassifierError naming `python -m armini.metrics
    train-video-classifier`. Loaded once per process (and file version, and device)."""
    path = Path(path) if path is not None else VIDEO_CLASSIFIER_DIR / VIDEO_WEIGHTS_FILE
    return metrics.load_checked(path, VideoClassifier, device=device, folder="data/video_classifier/",
                                what="the video classifier's weights (the judge of FVD-MM)",
                                retrain=VIDEO_RETRAIN)


# ----------------------------------------------------------------------------- features and distances

@torch.no_grad()
def video_features(videos, levels: int, classifier=None, batch_size: int = 100) -> torch.Tensor:
    """(N, F) float64 features of integer videos (N, T, 1, H, W) with `levels` values (see to_video_input)."""
    classifier = classifier if classifier is not None else load_video_classifier()
    dev = next(classifier.parameters()).device
    x = to_video_input(videos, levels)  # (N, 1, T, 32, 32)
    was_training = classifier.training
    classifier.eval()
    try:
        out = [classifier.features(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        classifier.train(was_training)
    return torch.cat(out).double() if out else torch.zeros(0, classifier.num_features, dtype=torch.float64)


def fvd(real, fake, levels: int, classifier=None) -> float:
    """FVD-MM between two sets of integer videos (N, T, 1, H, W) with `levels` values: the Frechet distance
    of Part III (metrics.fid_from_features) on the video judge's features."""
    return metrics.fid_from_features(video_features(real, levels, classifier), video_features(fake, levels, classifier))


def video_quality(real, fake, levels: int, classifier=None) -> dict:
    """THE entry point: dict(fvd=, kid=, kid_std=, precision=, recall=) of `fake` against `real`, two sets of
    integer videos (N, T, 1, H, W) with `levels` values, features computed once; the same definitions as
    metrics.sample_quality, on video features. Use the same number of real and fake videos and the same T,
    and report the real-vs-real floor beside it (e.g. training videos vs test videos)."""
    f_real, f_fake = video_features(real, levels, classifier), video_features(fake, levels, classifier)
    kid_mean, kid_std = metrics.kid_from_features(f_real, f_fake)
    precision, recall = metrics.precision_recall_from_features(f_real, f_fake)
    return dict(fvd=metrics.fid_from_features(f_real, f_fake), kid=kid_mean, kid_std=kid_std,
                precision=precision, recall=recall)


# ----------------------------------------------------------------------------- training the judge

@torch.no_grad()
def video_accuracy(classifier, videos, levels: int, digits: torch.Tensor, motion: torch.Tensor,
                   batch_size: int = 200) -> dict:
    """Accuracy of each head on videos (N, T, 1, H, W) against multi-hot targets (N, 10) and (N, 8), an
    output counting as "yes" when its logit is > 0:

    digits_exact / motion_exact   fraction of videos whose whole set is right (every output)
    digits_label / motion_label   fraction of single yes/no outputs that are right"""
    dev = next(classifier.parameters()).device
    x = to_video_input(videos, levels)
    classifier.eval()
    outs = [classifier(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)]
    record = {}
    for k, (name, target) in enumerate((("digits", digits), ("motion", motion))):
        right = (torch.cat([o[k].cpu() for o in outs]) > 0) == (target > 0.5)   # (N, 10) or (N, 8)
        record[f"{name}_exact"] = round(float(right.all(dim=1).double().mean()), 4)
        record[f"{name}_label"] = round(float(right.double().mean()), 4)
    return record


def train_video_classifier(steps: int = 1200, batch_size: int = 32, lr: float = 3e-3, weight_decay: float = 1e-4,
                           seed: int = 0, test_videos: int = 1000, progress: bool = True):
    """Train VideoClassifier on freshly generated Moving MNIST training videos (the course's default: 16
    frames, 32x32, 2 digits, 256 levels) on one CPU thread,
    seeded; returns (classifier, record). Test: `test_videos` videos of the test split (other digits).
    Every 32 steps a new chunk of 32 * batch_size videos is drawn (seed 1000 + 1000 * seed + chunk index),
    so the judge never sees a video twice.

    Recipe: AdamW, one-cycle learning rate peaking at `lr`, the sum of the two heads' binary
    cross-entropies (each averaged over its outputs); no augmentation beyond the endless fresh videos."""
    from armini import data

    per_chunk = 32  # batches per chunk of fresh videos

    def fresh_chunk(k: int):  # the k-th chunk of training videos (per_chunk * B, T, 1, 32, 32) uint8, targets
        d = data.moving_mnist(per_chunk * batch_size, split="train", seed=1000 + 1000 * seed + k, dtype=torch.uint8)
        return d.videos, *video_targets(d.labels, d.velocities)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reproducible, and the CPU time we report
    try:
        torch.manual_seed(seed)
        model = VideoClassifier()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        t0 = time.process_time()
        model.train()
        for step in range(steps):
            if step % per_chunk == 0:
                chunk = fresh_chunk(step // per_chunk)
            i = (step % per_chunk) * batch_size
            v, y_digits, y_motion = (c[i:i + batch_size] for c in chunk)  # (B, T, 1, 32, 32), (B, 10), (B, 8)
            logits_digits, logits_motion = model(to_video_input(v, 256))
            loss = (F.binary_cross_entropy_with_logits(logits_digits, y_digits)
                    + F.binary_cross_entropy_with_logits(logits_motion, y_motion))
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            if progress and (step % 100 == 0 or step == steps - 1):
                print(f"step {step + 1}/{steps}  loss {loss.item():.3f}  {time.process_time() - t0:.0f} CPU s",
                      flush=True)
        cpu_s = time.process_time() - t0
        model.eval()
        test = data.moving_mnist(test_videos, split="test", seed=0, dtype=torch.uint8)
        acc = video_accuracy(model, test.videos, 256, *video_targets(test.labels, test.velocities))
    finally:
        torch.set_num_threads(threads)
    record = dict(command=VIDEO_RETRAIN, seed=seed, steps=steps, batch_size=batch_size,
                  train_videos=steps * batch_size, lr=lr, weight_decay=weight_decay,
                  optimizer="AdamW, one-cycle lr", threads=1, train_cpu_s=round(cpu_s, 1),
                  test_accuracy=acc, test_videos=test_videos, params=model.num_params(),
                  data=(f"moving_mnist({per_chunk * batch_size}, split='train', seed=1000 + 1000 * seed + k) "
                        "for chunk k (16 frames, 32x32, 2 digits, 256 levels)"),
                  test_data=test.source, torch=torch.__version__, config=model.config)
    return model, record


def train_and_save(out, steps: int = 1200, seed: int = 0, test_videos: int = 1000) -> dict:
    """Train the judge and write `out`/moving-mnist-classifier.pt, its .sha256 and training.json."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"--out {out}: no such folder (create it first)")
    model, record = train_video_classifier(steps=steps, seed=seed, test_videos=test_videos)
    record["sha256"] = metrics.save_classifier(model, out / VIDEO_WEIGHTS_FILE)
    with atomic_write(out / RECORD_FILE, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    acc = record["test_accuracy"]
    print(f"test accuracy on {record['test_videos']} test videos: digits {acc['digits_exact']:.4f} (whole set), "
          f"motion {acc['motion_exact']:.4f} (whole set); {record['train_cpu_s']:.0f} CPU s of training; "
          f"wrote {out / VIDEO_WEIGHTS_FILE} (+ .sha256, {RECORD_FILE})")
    return record
