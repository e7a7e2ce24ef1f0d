"""The linear probe (armini.probe): it finds a separating classifier when there is one, stays at
chance when the labels carry no information, reaches the optimum of its convex objective, and
the features it reads belong to one image each."""
import pytest
import torch
import torch.nn.functional as F

from armini.models import PixelCNN
from armini.models.transformer import PixelTransformer
from armini.probe import LinearProbe, extract_features, linear_probe, pixel_features, probe_model
from helpers import train_a_little


def blobs(n_per_class, K=3, dims=5, spread=0.3, seed=0):
    """K Gaussian clusters in `dims` dimensions, centres far apart: features (N, dims), labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(K, dims, generator=torch.Generator().manual_seed(100))
    y = torch.arange(K).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dims, generator=g), y


def objective(probe, features, labels):
    """The probe's training objective at parameters W, b (mean cross-entropy + (l2/2)||W||^2)."""
    z = (features.to(probe.mean.dtype) - probe.mean) / probe.std
    return F.cross_entropy(z @ probe.weight.T + probe.bias, labels) + 0.5 * probe.l2 * probe.weight.square().sum()


# ------------------------------------------------------------------ the classifier
def test_separable_clusters_are_separated():
    f_train, y_train = blobs(100)
    f_test, y_test = blobs(100, seed=1)
    result = linear_probe(f_train, y_train, f_test, y_test)
    assert result.train_accuracy == 1.0 and result.test_accuracy >= 0.99
    assert result.num_features == 5 and result.probe.num_classes == 3
    assert "test accuracy" in str(result)


def test_random_labels_stay_near_chance():
    """Labels independent of the features: the probe may memorise the training set, but not generalise."""
    g = torch.Generator().manual_seed(0)
    K = 4
    f_train, f_test = torch.randn(200, 50, generator=g), torch.randn(4000, 50, generator=g)
    y_train, y_test = torch.randint(K, (200,), generator=g), torch.randint(K, (4000,), generator=g)
    result = linear_probe(f_train, y_train, f_test, y_test, l2=1e-4)
    assert result.train_accuracy > 0.6  # 50 features, 200 points: it memorises
    assert abs(result.test_accuracy - 1 / K) < 0.04  # chance, within about 3 standard deviations


def test_fit_reaches_the_optimum():
    """The gradient of the (convex) objective vanishes at the fitted parameters, and nudging them costs."""
    f, y = blobs(50, spread=2.0)  # overlapping clusters: a finite optimum
    probe = LinearProbe.fit(f, y, l2=1e-2)
    W, b = probe.weight.clone().requires_grad_(), probe.bias.clone().requires_grad_()
    at = LinearProbe(W, b, probe.mean, probe.std, probe.l2)
    loss = objective(at, f, y)
    gW, gb = torch.autograd.grad(loss, (W, b))
    assert gW.abs().max() < 1e-6 and gb.abs().max() < 1e-6
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        nudged = LinearProbe(probe.weight + 0.05 * torch.randn(W.shape, generator=g), probe.bias, probe.mean,
                             probe.std, probe.l2)
        assert objective(nudged, f, y) > loss


def test_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    f, y = blobs(60, K=4, spread=2.5)
    l2 = 1e-2
    probe = LinearProbe.fit(f, y, l2=l2)
    z = ((f - probe.mean) / probe.std).double().numpy()
    # scikit-learn minimises C * sum_n loss_n + ||W||^2 / 2, i.e. ours times C * N with C = 1 / (l2 * N)
    reference = sklearn.LogisticRegression(C=1.0 / (l2 * len(f)), tol=1e-10, max_iter=10_000).fit(z, y.numpy())
    ours = probe.logits(f).softmax(1).double()
    torch.testing.assert_close(ours, torch.from_numpy(reference.predict_proba(z)), atol=1e-5, rtol=0)


def test_standardisation_makes_feature_scale_irrelevant():
    """Rescaling and shifting each feature changes nothing: the probe standardises first."""
    f, y = blobs(50, spread=2.0)
    f = f.double()  # so that the transformed features keep every digit
    scale, shift = torch.tensor([1e-3, 1.0, 50.0, 7.0, 0.2]).double(), torch.tensor([5.0, -3.0, 100.0, 0.0, 1.0]).double()
    p1, p2 = LinearProbe.fit(f, y), LinearProbe.fit(f * scale + shift, y)
    torch.testing.assert_close(p1.logits(f), p2.logits(f * scale + shift), atol=1e-5, rtol=1e-5)


def test_constant_features_are_harmless():
    f, y = blobs(30)
    f = torch.cat([f, torch.zeros(len(f), 2), torch.full((len(f), 1), 7.0)], dim=1)  # 3 constant columns
    probe = LinearProbe.fit(f, y)
    assert torch.isfinite(probe.weight).all() and probe.accuracy(f, y) == 1.0
    assert probe.weight[:, 5:].abs().max() < 1e-6  # nothing to learn from a constant


def test_bad_inputs_raise():
    f, y = blobs(10)
    with pytest.raises(ValueError, match="shape"):
        LinearProbe.fit(f, y[:-1])
    with pytest.raises(ValueError, match="integer"):
        LinearProbe.fit(f, y.float())
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        LinearProbe.fit(f, y, num_classes=2)
    with pytest.raises(ValueError, match="NaN"):
        LinearProbe.fit(f.masked_fill(f > 1, float("nan")), y)
    probe = LinearProbe.fit(f, y)
    with pytest.raises(ValueError, match="columns"):
        probe.predict(f[:, :3])


# ------------------------------------------------------------------ features
def small_transformer(seed=0):
    torch.manual_seed(seed)
    return PixelTransformer(shape=(1, 6, 6), levels=4, dim=16, n_layers=2, n_heads=2, mlp_ratio=2)


def test_extract_features_one_image_at_a_time():
    """Batching changes nothing: each image's features depend on that image only."""
    m = train_a_little(small_transformer()).train()
    x = torch.randint(4, (7, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    f = extract_features(m, x, batch_size=3)
    assert f.shape == (7, 16) and f.dtype == torch.float32
    assert m.training  # the mode is restored
    torch.testing.assert_close(f, extract_features(m, x, batch_size=1))
    torch.testing.assert_close(f, m.eval().features(x))
    torch.testing.assert_close(f, m.features(x, layer=1))  # the middle of 2 blocks: block 1
    torch.testing.assert_close(extract_features(m, x, layer=2), m.features(x, layer=2))
    assert not torch.allclose(extract_features(m, x, layer=2), f)  # another layer, other features
    every = extract_features(m, x, layer="all", batch_size=3)  # (7, 2 blocks, 16)
    assert every.shape == (7, 2, 16)
    torch.testing.assert_close(every[:, 0], f)
    alone = extract_features(m, x[2:3])
    torch.testing.assert_close(alone, f[2:3])


def test_extract_features_needs_a_features_method():
    with pytest.raises(TypeError, match="features"):
        extract_features(PixelCNN(shape=(1, 6, 6), levels=4, channels=8, n_blocks=1, head_channels=8),
                         torch.zeros(2, 1, 6, 6, dtype=torch.long))


def test_pixel_features():
    x = torch.tensor([[[[0, 3], [1, 2]]]])
    torch.testing.assert_close(pixel_features(x, levels=4), torch.tensor([[0.0, 1.0, 1 / 3, 2 / 3]]))
    assert pixel_features(x).shape == (1, 4)


def striped_images(n, seed):
    """Two classes of 6x6 images with 4 levels: class 0 has bright rows on top, class 1 at the bottom."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(2, (n, 1, 6, 6), generator=g)  # background noise in {0, 1}
    bright = torch.zeros(n, 1, 6, 6, dtype=torch.bool)
    bright[y == 0, :, :2] = True
    bright[y == 1, :, 4:] = True
    return x.masked_fill(bright, 3), y


def test_probe_model_is_extract_then_fit():
    m = small_transformer()
    train, test = striped_images(40, 0), striped_images(30, 1)
    result = probe_model(m, train, test, limit=32, layer=1)
    assert (result.n_train, result.n_test) == (32, 30)
    manual = linear_probe(extract_features(m, train[0][:32], layer=1), train[1][:32],
                          extract_features(m, test[0], layer=1), test[1])
    assert (result.train_accuracy, result.test_accuracy) == (manual.train_accuracy, manual.test_accuracy)
    pixels = linear_probe(pixel_features(train[0]), train[1], pixel_features(test[0]), test[1])
    assert pixels.test_accuracy == 1.0  # the classes differ in which rows are bright: linear in the pixels
