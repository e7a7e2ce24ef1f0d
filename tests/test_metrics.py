"""Tests for armini.metrics: the classifier judge, its checksum, FID/KID/precision/recall on known cases."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from armini import data, metrics

N = 1000  # images per set (the bench's default): FID is biased upwards for small sets, so compare at equal N


@pytest.fixture(scope="module")
def real():
    """The first N training and test images of the bundled subset (ARMINI_DATA_SUBSET=1 in the tests)."""
    train = data.load("fashion-mnist", "train", limit=N)
    test = data.load("fashion-mnist", "test", limit=N)
    assert "subset" in train.source
    return train.images, test.images


def blur(images, radius: int):
    """Box blur of (N, 1, 28, 28) integer images over (2 radius + 1)^2 pixels, rounded back to integers."""
    if radius == 0:
        return images
    x = F.avg_pool2d(images.float(), 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    return x.round().long()


def noised(images, sigma: float, seed: int = 0):
    """Gaussian noise of `sigma` pixel values (out of 255), clipped and rounded."""
    g = torch.Generator().manual_seed(seed)
    return (images.float() + sigma * torch.randn(images.shape, generator=g)).round().clamp(0, 255).long()


def test_classifier_accuracy_on_the_bundled_test_subset():
    test = data.load("fashion-mnist", "test")  # 2000 images, 200 per class
    acc = metrics.accuracy(metrics.load_classifier(), test.images, test.labels)
    assert acc >= 0.90, acc  # measured: 0.923 on the full test set, 0.927 on this subset


def test_missing_or_corrupt_weights_name_the_command_that_retrains_them(tmp_path):
    bundled = metrics.CLASSIFIER_DIR / metrics.WEIGHTS_FILE
    copy = tmp_path / metrics.WEIGHTS_FILE
    shutil.copy(bundled, copy)
    shutil.copy(bundled.with_name(bundled.name + ".sha256"), tmp_path)
    assert metrics.load_classifier(copy).num_features == 128  # an intact copy loads

    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    copy.write_bytes(bytes(raw))
    with pytest.raises(metrics.ClassifierError, match="does not match.*train-classifier"):
        metrics.load_classifier(copy)
    with pytest.raises(metrics.ClassifierError, match="missing.*train-classifier"):
        metrics.load_classifier(tmp_path / "nothing-here.pt")
    (tmp_path / (copy.name + ".sha256")).unlink()
    with pytest.raises(metrics.ClassifierError, match="checksum.*train-classifier"):
        metrics.load_classifier(copy)
    assert bundled.is_file()  # nothing of ours was touched


def test_to_classifier_input_scales_levels_and_enlarges_small_views():
    x = torch.tensor([[0, 3], [1, 2]]).view(1, 1, 2, 2).repeat(1, 1, 7, 7)  # (1, 1, 14, 14), levels 4
    out = metrics.to_classifier_input(x, levels=4)
    assert out.shape == (1, 1, 28, 28) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0, :4, :4], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1],
                                                                [1 / 3, 1 / 3, 2 / 3, 2 / 3], [1 / 3, 1 / 3, 2 / 3, 2 / 3]]))
    with pytest.raises(ValueError, match="levels=4"):
        metrics.to_classifier_input(x + 1, levels=4)
    with pytest.raises(ValueError, match="grayscale"):
        metrics.to_classifier_input(torch.zeros(2, 3, 28, 28, dtype=torch.long), levels=256)
    with pytest.raises(ValueError, match="28x28, 14x14 or 7x7"):
        metrics.to_classifier_input(torch.zeros(2, 1, 8, 8, dtype=torch.long), levels=17)


def test_frechet_distance_equals_torchmetrics_fid_on_gaussian_features():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 16, generator=g, dtype=torch.float64)
    b = 0.5 + torch.randn(500, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g,
                                                                                  dtype=torch.float64) / 4
    by_formula = metrics.frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    assert by_formula == pytest.approx(metrics.fid_from_features(a, b), rel=1e-6)
    assert by_formula > 1.0
    assert metrics.frechet_distance(a.mean(0), torch.cov(a.T), a.mean(0), torch.cov(a.T)) == pytest.approx(0, abs=1e-6)


def test_kid_is_the_unbiased_mmd_with_the_cubic_polynomial_kernel():
    """torchmetrics' KID checked against the reference: k(a, b) = (a.b / F + 1)^3, unbiased MMD^2.
    With subsets as large as half of each set the draw matters, so compare on a set of 2 x size."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 8, generator=g, dtype=torch.float64), 0.3 + torch.randn(40, 8, generator=g,
                                                                                    dtype=torch.float64)

    def mmd2(x, y):
        k = lambda u, v: (u @ v.T / u.shape[1] + 1) ** 3  # noqa: E731
        m = len(x)
        kxx, kyy = k(x, x), k(y, y)
        return ((kxx.sum() - kxx.trace()) + (kyy.sum() - kyy.trace())) / (m * (m - 1)) - 2 * k(x, y).mean()

    mean, std = metrics.kid_from_features(a, b, subsets=1, subset_size=40)  # size capped at N // 2 = 20
    # one subset of 20 out of 40: draw the same subsets torchmetrics draws
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ia, ib = torch.randperm(40)[:20], torch.randperm(40)[:20]
    assert mean == pytest.approx(float(mmd2(a[ia], b[ib])), rel=1e-9) and std == 0.0
    before = torch.random.get_rng_state()
    metrics.kid_from_features(a, b, subsets=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global random state is untouched


def test_fid_of_train_vs_test_is_small_beside_noised_test_images(real):
    train, test = real
    floor = metrics.fid(train, test, 256)
    assert floor < 0.25 * metrics.fid(test, noised(test, 32), 256), floor


def test_fid_rises_monotonically_with_blur_and_with_noise(real):
    train, test = real
    f_train = metrics.features(train, 256)
    blurs = [metrics.fid_from_features(f_train, metrics.features(blur(test, r), 256)) for r in (0, 1, 2, 3)]
    noises = [metrics.fid_from_features(f_train, metrics.features(noised(test, s), 256)) for s in (0, 16, 48, 96)]
    assert blurs == sorted(blurs) and blurs[-1] > 4 * blurs[0], blurs
    assert noises == sorted(noises) and noises[-1] > 4 * noises[0], noises


def test_one_repeated_image_has_high_precision_and_almost_no_recall(real):
    train, test = real
    collapse = test[:1].repeat(N, 1, 1, 1)  # model collapse: one realistic image, N times
    precision, recall = metrics.precision_recall(train, collapse, 256)
    assert precision > 0.9 and recall < 0.02, (precision, recall)
    precision, recall = metrics.precision_recall(train, test, 256)  # real vs real: both high
    assert precision > 0.6 and recall > 0.6, (precision, recall)


def test_sample_quality_returns_every_field_finite(real):
    train, test = real
    small = [data.quantize(x[:64], 4) for x in (train, test)]  # the quick bench: 64 images, 4 levels
    q = metrics.sample_quality(small[0], small[1], levels=4)
    assert set(q) == {"fid", "kid", "kid_std", "precision", "recall"}
    assert all(torch.isfinite(torch.tensor(v)) for v in q.values()), q
    assert 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1


def test_training_the_classifier_is_reproducible():
    """Same seed, same weights (the bundled file's record says how it was trained; here a few steps)."""
    (a, record), (b, _) = (metrics.train_classifier(epochs=0.04, source="subset", progress=False) for _ in range(2))
    assert record["steps"] == 3 and record["seed"] == 0 and 0 <= record["test_accuracy"] <= 1
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    torch.manual_seed(0)
    assert not torch.equal(a.head.weight, metrics.FMNISTClassifier().head.weight)  # the steps changed the weights


def test_the_loaded_judge_stays_frozen_inside_a_trained_model_but_passes_gradients_to_its_input():
    judge = metrics.load_classifier()
    holder = torch.nn.Sequential(torch.nn.Identity(), judge)  # e.g. a VQGAN's perceptual loss
    holder.train()
    assert not judge.training and not any(p.requires_grad for p in judge.parameters())
    before = judge.body[0][1].running_mean.clone()  # the first batch norm's statistics
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    judge.features(x).square().sum().backward()
    assert torch.equal(judge.body[0][1].running_mean, before) and x.grad.abs().sum() > 0
    fresh = metrics.FMNISTClassifier()
    assert fresh.train().training  # an unfrozen classifier trains as usual
