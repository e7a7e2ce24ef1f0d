"""A linear probe: has a generative model learned features a linear classifier can read the class from?

ImageGPT (Chen et al., 2020, "Generative Pretraining from Pixels") trained a GPT on pixel
sequences with nothing but next-pixel prediction, froze it, average-pooled one layer's hidden
states into a single vector per image, and fitted a logistic regression from those vectors to the
class labels. If the classes are linearly separable in that space, the model has learned a
representation of what it generates, not just local pixel statistics. (ImageGPT found the best
layer in the middle of the network, and suggested that the last layers specialise in predicting
the next pixel.)

The probe here is multinomial logistic regression on standardised features:

    z = (f - mean) / std                      mean, std: of the training features, per feature
    p(y = k | f) = softmax(W z + b)_k
    minimise  -(1/N) sum_n log p(y_n | f_n) + (l2 / 2) ||W||^2

fitted by full-batch L-BFGS. The objective is convex (strictly, with l2 > 0), so the answer does
not depend on an initialisation, a batch size or a learning rate: only the features decide.

    from armini import data, probe
    train, test = data.load("fashion-mnist", "train", size=14), data.load("fashion-mnist", "test", size=14)
    result = probe.probe_model(model, train, test, limit=5000)    # model.features(x, layer) per image
    print(result)                                                  # train and test accuracy
    pixels = probe.linear_probe(probe.pixel_features(train.images), train.labels,
                                probe.pixel_features(test.images), test.labels)   # the baseline
    every = probe.extract_features(model, train.images[:5000], layer="all")  # (N, L, F): every block

Any model with a `features(x, layer=None) -> (B, F)` method can be probed
(armini.models.transformer.PixelTransformer has one).

Deviations from ImageGPT: L-BFGS on the whole training set at once instead of minibatch Adam,
an L2 penalty instead of early stopping, and features standardised on the training set.

Legend: N examples, F features per example, K classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .train import as_images_labels

__all__ = ["LinearProbe", "ProbeResult", "extract_features", "pixel_features", "linear_probe", "probe_model"]


# ----------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(model, images: torch.Tensor, *, layer=None, batch_size: int = 256,
                     device=None) -> torch.Tensor:
    """`model.features(x, layer)` for every image, a batch at a time: (N, F) float32 on the CPU
    ((N, L, F) for layer="all" on a PixelTransformer: every block's features from one pass).

    Runs in eval mode without gradients and restores the model's previous mode. Each image's
    features depend on that image only, so the batch size changes nothing but the speed."""
    if not callable(getattr(model, "features", None)):
        raise TypeError(f"{type(model).__name__} has no features(x, layer) method to probe "
                        "(armini's PixelTransformer has one)")
    if len(images) == 0:
        raise ValueError("extract_features() got no images")
    dev = torch.device(device) if device is not None else model.model_device
    was_training = model.training
    model.eval()
    try:
        parts = [model.features(images[start:start + batch_size].to(dev), layer=layer).float().cpu()
                 for start in range(0, len(images), batch_size)]  # (b, F) each
    finally:
        model.train(was_training)
    return torch.cat(parts)  # (N, F)


def pixel_features(images: torch.Tensor, levels: Optional[int] = None) -> torch.Tensor:
    """The raw-pixel baseline: every image flattened, (N, C*H*W) float32, scaled to [0, 1] when
    `levels` is given (the probe standardises its features, so the scale changes nothing)."""
    f = images.flatten(1).float()  # (N, C*H*W)
    return f / (levels - 1) if levels is not None else f


# ----------------------------------------------------------------------------- the probe


def _check_labels(labels, n: int, name: str) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (n,):
        raise ValueError(f"{name} must be integer class indices of shape ({n},), got {tuple(labels.shape)} "
                         f"{labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be class indices >= 0, found {int(labels.min())}")
    return labels.long()


def _check_features(features, name: str) -> torch.Tensor:
    features = torch.as_tensor(features)
    if features.dim() != 2 or not features.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor (N, F), got {tuple(features.shape)} {features.dtype}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    return features


@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression on standardised features.

    weight (K, F), bias (K,): the classifier; mean (F,), std (F,): the standardisation, from the
    training features (a constant feature gets std 1: it is zero after centring and stays zero)."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    l2: float
    iterations: int = 0

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, *, num_classes: Optional[int] = None,
            l2: float = 1e-3, max_iter: int = 500) -> "LinearProbe":
        """Fit on training features (N, F) and labels (N,) by full-batch L-BFGS.

        num_classes: K (default: the largest label + 1); l2: the weight penalty (l2/2)||W||^2."""
        f = _check_features(features, "features")
        y = _check_labels(labels, len(f), "labels")
        if len(f) == 0:
            raise ValueError("LinearProbe.fit() got no examples")
        K = int(y.max()) + 1 if num_classes is None else int(num_classes)
        if int(y.max()) >= K:
            raise ValueError(f"labels must lie in [0, {K}), found {int(y.max())}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        f = f.double()  # float64: L-BFGS converges to the optimum, not to float32's rounding noise
        mean = f.mean(0)  # (F,)
        std = f.std(0, unbiased=False)  # (F,)
        std = torch.where(std > 1e-6 * std.max().clamp(min=1e-12), std, torch.ones_like(std))  # constant: 1
        z = (f - mean) / std  # (N, F) standardised
        W = torch.zeros(K, z.shape[1], dtype=z.dtype, requires_grad=True)  # (K, F)
        b = torch.zeros(K, dtype=z.dtype, requires_grad=True)  # (K,)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-7, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z @ W.T + b, y) + 0.5 * l2 * W.square().sum()  # the objective above
            loss.backward()
            return loss

        opt.step(closure)
        iterations = opt.state[W].get("n_iter", 0)  # L-BFGS keeps its count with the first parameter
        return cls(W.detach(), b.detach(), mean, std, float(l2), int(iterations))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """W z + b for features (N, F): (N, K)."""
        f = _check_features(features, "features").to(self.weight.dtype)
        if f.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features have {f.shape[1]} columns, the probe was fitted on {self.weight.shape[1]}")
        return ((f - self.mean) / self.std) @ self.weight.T + self.bias  # (N, K)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The most probable class of every row: (N,) long."""
        return self.logits(features).argmax(1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of rows whose predicted class is the label."""
        y = _check_labels(labels, len(features), "labels")
        return float((self.predict(features) == y).float().mean())


@dataclass
class ProbeResult:
    """Accuracy of a linear probe on the features it was fitted on (train) and on held-out ones (test)."""

    train_accuracy: float
    test_accuracy: float
    probe: LinearProbe
    n_train: int
    n_test: int

    @property
    def num_features(self) -> int:
        return self.probe.weight.shape[1]

    def __str__(self) -> str:
        return (f"linear probe on {self.num_features} features: train accuracy {self.train_accuracy:.1%} "
                f"({self.n_train} images), test accuracy {self.test_accuracy:.1%} ({self.n_test} images)")


def linear_probe(train_features, train_labels, test_features, test_labels, *, num_classes: Optional[int] = None,
                 l2: float = 1e-3, max_iter: int = 500) -> ProbeResult:
    """Fit a LinearProbe on the training features and report its train and test accuracy."""
    train_labels = _check_labels(train_labels, len(train_features), "train labels")
    test_labels = _check_labels(test_labels, len(test_features), "test labels")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fitted = LinearProbe.fit(train_features, train_labels, num_classes=num_classes, l2=l2, max_iter=max_iter)
    return ProbeResult(fitted.accuracy(train_features, train_labels), fitted.accuracy(test_features, test_labels),
                       fitted, len(train_features), len(test_features))


def probe_model(model, train, test, *, layer: Optional[int] = None, limit: Optional[int] = None,
                test_limit: Optional[int] = None, batch_size: int = 256, device=None, **fit_kwargs) -> ProbeResult:
    """ImageGPT's linear probe of `model`: features of the first `limit` training and `test_limit` test
    images (default: all of them), a LinearProbe fitted on the training ones, both accuracies.

    train, test: ImageData or (images, labels); fit_kwargs: num_classes, l2, max_iter."""
    results = []
    for data, n, name in ((train, limit, "train"), (test, test_limit, "test")):
        images, labels = as_images_labels(data)  # the trainer's reader: ImageData or (images, labels)
        if labels is None:
            raise TypeError(f"the {name} data have no labels to probe: pass an ImageData (armini.data.load) "
                            "or an (images, labels) tuple")
        images, labels = images[:n], torch.as_tensor(labels)[:n]
        results += [extract_features(model, images, layer=layer, batch_size=batch_size, device=device), labels]
    return linear_probe(*results, **fit_kwargs)
