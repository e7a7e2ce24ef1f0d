"""FVD-MM (armini.video_metrics): the shipped video judge, its checks, and sanity tests that can fail.

The sanity tests compare real Moving MNIST videos with damaged copies at 256 videos a set: the damage
(shuffled frames, frozen frames, noise, one video repeated) must raise FVD-MM well above the real-vs-real
floor (training videos vs test videos, other digits)."""
import copy
import json
import shutil

import pytest
import torch

from armini import data, metrics, video_metrics

N = 256  # videos per set in the sanity tests


@pytest.fixture(scope="module")
def real():
    """(train, test): N real videos each, the course's default Moving MNIST (16 frames, 32x32, 2 digits)."""
    return (data.moving_mnist(N, split="train", seed=0).videos,
            data.moving_mnist(N, split="test", seed=0).videos)


@pytest.fixture(scope="module")
def real_features(real):
    return tuple(video_metrics.video_features(v, 256) for v in real)


def fvd_to_test(real_features, fake) -> float:
    """FVD-MM of `fake` (integer videos) against the real test videos."""
    return metrics.fid_from_features(real_features[1], video_metrics.video_features(fake, 256))


@pytest.fixture(scope="module")
def floor(real_features):
    return metrics.fid_from_features(*real_features)


def shuffle_frames(videos: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each video's frames in a random order (the same frames, time order destroyed)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(videos.shape[1], generator=g) for _ in range(len(videos))])  # (N, T)
    return videos[torch.arange(len(videos))[:, None], order]


def add_noise(videos: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Replace a `fraction` of the pixels by uniform random values in [0, 256)."""
    g = torch.Generator().manual_seed(seed)
    hit = torch.rand(videos.shape, generator=g) < fraction
    return torch.where(hit, torch.randint(0, 256, videos.shape, generator=g), videos)


# ----------------------------------------------------------------------------- sanity: can FVD-MM tell?

def test_real_vs_real_floor_is_small(floor, real_features):
    assert 0 <= floor
    # the same judge on two halves of the *same* set is the noise level; the floor (other digits) is of that order
    f_test = real_features[1]
    halves = metrics.fid_from_features(f_test[: N // 2], f_test[N // 2:])
    assert floor < 2 * halves, (floor, halves)


def test_shuffled_frames_are_far(floor, real, real_features):
    """The frames are the real ones, only their order is destroyed: only the motion features can tell."""
    assert fvd_to_test(real_features, shuffle_frames(real[0])) > 5 * floor


def test_a_judge_blind_to_motion_fails_the_shuffle_test(real):
    """The shuffle test can fail: silence the motion stream (its last batch norm outputs a constant) and
    shuffled frames look as real as real ones (measured: floor 8.6, shuffled 10.3; the judge: 18 and 396)."""
    blind = copy.deepcopy(video_metrics.load_video_classifier())
    with torch.no_grad():
        blind.motion[-1][1].weight.zero_()                       # (B, m3, T/4, 4, 4) -> its bias, constant
    f_test = video_metrics.video_features(real[1], 256, blind)
    floor = metrics.fid_from_features(video_metrics.video_features(real[0], 256, blind), f_test)
    shuffled = metrics.fid_from_features(video_metrics.video_features(shuffle_frames(real[0]), 256, blind), f_test)
    assert shuffled < 2 * floor, (shuffled, floor)


def test_frozen_videos_are_far(floor, real, real_features):
    """The first frame repeated: the right digits, no motion."""
    frozen = real[0][:, :1].expand_as(real[0])
    assert fvd_to_test(real_features, frozen) > 5 * floor


def test_more_noise_is_farther(floor, real, real_features):
    scores = [fvd_to_test(real_features, add_noise(real[0], p)) for p in (0.01, 0.05, 0.2)]
    assert scores[0] < scores[1] < scores[2], scores
    assert scores[2] > 5 * floor, (scores, floor)


def test_model_collapse_is_far(floor, real, real_features):
    """One video repeated N times: every feature variance is zero."""
    collapsed = real[0][:1].expand_as(real[0])
    assert fvd_to_test(real_features, collapsed) > 5 * floor
    assert video_metrics.video_quality(real[1], collapsed, 256)["recall"] < 0.1  # the variety is missing


def test_video_quality_reuses_the_frechet_distance_of_part_iii(real, real_features):
    q = video_metrics.video_quality(*real, levels=256)
    assert set(q) == {"fvd", "kid", "kid_std", "precision", "recall"}
    f_train, f_test = real_features
    by_formula = metrics.frechet_distance(f_train.mean(0), f_train.T.cov(), f_test.mean(0), f_test.T.cov())
    assert q["fvd"] == pytest.approx(by_formula, rel=1e-6)
    assert q["fvd"] == pytest.approx(video_metrics.fvd(*real, levels=256), rel=1e-9)


# ----------------------------------------------------------------------------- the shipped judge

def test_shipped_record_matches_the_weights_and_reproduces_its_accuracy():
    folder = video_metrics.VIDEO_CLASSIFIER_DIR
    record = json.loads((folder / "training.json").read_text())
    weights = folder / video_metrics.VIDEO_WEIGHTS_FILE
    assert record["sha256"] == metrics.sha256_of(weights)
    assert (folder / (weights.name + ".sha256")).read_text().split()[0] == record["sha256"]
    assert weights.stat().st_size < 1_000_000
    judge = video_metrics.load_video_classifier()
    assert judge.config == record["config"] and judge.num_params() == record["params"]
    test = data.moving_mnist(record["test_videos"], split="test", seed=0)
    targets = video_metrics.video_targets(test.labels, test.velocities)
    assert video_metrics.video_accuracy(judge, test.videos, 256, *targets) == record["test_accuracy"]
    assert record["test_accuracy"]["digits_label"] > 0.95 and record["test_accuracy"]["motion_label"] > 0.85


def test_the_loaded_judge_stays_frozen():
    judge = video_metrics.load_video_classifier()
    judge.train()
    assert not judge.training and not any(p.requires_grad for p in judge.parameters())


def test_missing_or_damaged_weights_name_the_retrain_command(tmp_path):
    shipped = video_metrics.VIDEO_CLASSIFIER_DIR / video_metrics.VIDEO_WEIGHTS_FILE
    copy = tmp_path / shipped.name
    shutil.copy(shipped, copy)
    shutil.copy(shipped.with_name(shipped.name + ".sha256"), tmp_path)
    assert video_metrics.load_video_classifier(copy).num_features == 128  # an intact copy loads
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    copy.write_bytes(bytes(raw))
    with pytest.raises(metrics.ClassifierError, match="does not match.*train-video-classifier"):
        video_metrics.load_video_classifier(copy)
    with pytest.raises(metrics.ClassifierError,
                       match="FVD-MM.*missing.*data/video_classifier/.*train-video-classifier"):
        video_metrics.load_video_classifier(tmp_path / "nothing-here.pt")
    (tmp_path / (copy.name + ".sha256")).unlink()
    with pytest.raises(metrics.ClassifierError, match="checksum.*train-video-classifier"):
        video_metrics.load_video_classifier(copy)


def test_train_command_is_seeded_and_writes_weights_that_load(tmp_path, capsys):
    """Three steps only, twice: the command, the three files, the same weights from the same seed, and the
    round trip through the checked loader."""
    records = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        args = ["train-video-classifier", "--out", str(tmp_path / run), "--steps", "3", "--test-videos", "8"]
        assert metrics.main(args) == 0
        records.append(json.loads((tmp_path / run / "training.json").read_text()))
    assert records[0]["steps"] == 3 and records[0]["command"] == video_metrics.VIDEO_RETRAIN
    assert records[0]["sha256"] == records[1]["sha256"]  # seeded, one thread: the same weights
    judge = video_metrics.load_video_classifier(tmp_path / "a" / video_metrics.VIDEO_WEIGHTS_FILE)
    assert judge.config == records[0]["config"]
    assert "test accuracy on 8 test videos" in capsys.readouterr().out


# ----------------------------------------------------------------------------- inputs and targets

def test_targets_are_the_sets_of_digits_and_directions():
    labels = torch.tensor([[3, 7], [5, 5]])
    velocities = torch.zeros(2, 2, 3, 2)                       # (N, D, T, 2) as (row, column)
    velocities[0, 0] = torch.tensor([0.0, 1.0])                # right: sector 0
    velocities[0, 1] = torch.tensor([-1.0, 0.0])               # up (row decreases): sector 2
    velocities[1, 0, :2] = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])  # down-left (5), then a bounce: up-left (3)
    velocities[1, 0, 2] = torch.tensor([0.0, 1.0])             # after the last frame: not shown, not counted
    velocities[1, 1] = torch.tensor([1.0, 0.1])                # down (6)
    digits, motion = video_metrics.video_targets(labels, velocities)
    assert digits[0].nonzero().flatten().tolist() == [3, 7] and digits[1].nonzero().flatten().tolist() == [5]
    assert motion[0].nonzero().flatten().tolist() == [0, 2]
    assert motion[1].nonzero().flatten().tolist() == [3, 5, 6]


def test_inputs_other_sizes_and_bad_values():
    official = data.moving_mnist(2, **data.MOVING_MNIST_OFFICIAL).videos  # (2, 20, 1, 64, 64)
    x = video_metrics.to_video_input(official, 256)
    assert x.shape == (2, 1, 20, 32, 32)
    assert torch.allclose(x[:, :, 0, 0, 0], official[:, 0, 0, :2, :2].float().mean((1, 2)) / 255)
    assert video_metrics.video_features(official, 256).shape == (2, 128)
    videos = data.moving_mnist(2, dtype=torch.uint8).videos
    assert video_metrics.to_video_input(videos, 256).max() <= 1  # uint8 at 256 levels (255 < 256) is fine
    with pytest.raises(ValueError, match="32x32.*64x64"):
        video_metrics.to_video_input(torch.zeros(2, 16, 1, 28, 28, dtype=torch.long), 256)
    with pytest.raises(ValueError, match=r"\(N, T, 1, H, W\)"):
        video_metrics.to_video_input(torch.zeros(2, 1, 32, 32, dtype=torch.long), 256)
    with pytest.raises(ValueError, match="levels=4"):
        video_metrics.to_video_input(videos, 4)
    with pytest.raises(ValueError, match="at least 2 frames"):
        video_metrics.to_video_input(videos[:, :1], 256)
    with pytest.raises(ValueError, match="whole pixel values"):
        video_metrics.to_video_input(videos.float() / 2, 256)


def test_uint8_images_at_256_levels_are_accepted_by_the_image_judge():
    """uint8 255 >= 256 wrapped to 255 >= 0 (True): every uint8 image at 256 levels was refused before."""
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    assert metrics.to_classifier_input(images, 256).max() == 1
