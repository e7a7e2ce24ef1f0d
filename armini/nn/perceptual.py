"""A perceptual loss: compare two images by what a trained classifier sees in them, not pixel by pixel.

Squared or absolute pixel error treats a one-pixel shift of a sharp edge as a large error and a
blur as a small one; people judge the other way round. A perceptual loss measures the distance
between the features a trained network computes from each image: features that tell a sandal
from a sneaker respond to edges, textures and parts, so a blurred sandal is far from a sharp one.

LPIPS (Zhang et al. 2018), VQGAN's perceptual loss, compares the activations of five layers of
an ImageNet VGG-16, each unit-normalised over channels at every position, with per-channel
weights fitted to human judgements of which of two distortions looks closer. Those weights
cannot be downloaded here, so the course uses what it has: the penultimate features of its own
Fashion-MNIST classifier (armini.metrics.load_classifier(), any module with a `features` method):

    d(x, x_hat) = || f(x) / ||f(x)|| - f(x_hat) / ||f(x_hat)|| ||^2,   averaged over the batch

One layer and no human calibration: it sees what separates the ten classes (shape, parts, some
texture) and is blind to what the classifier ignores.

Legend: B batch, F features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["perceptual_loss"]


def perceptual_loss(x: torch.Tensor, x_hat: torch.Tensor, net) -> torch.Tensor:
    """Mean squared distance of unit-normalised features: x, x_hat float images (B, 1, 28, 28) in [0, 1]
    (the classifier's input, armini.metrics.to_classifier_input); net: a module with features(x) -> (B, F).

    Gradients flow to x_hat (and x) through the network; the network's own weights are not trained
    here (train only the parameters you mean to, e.g. through fit's param_groups)."""
    f, f_hat = net.features(x), net.features(x_hat)  # (B, F) each
    f, f_hat = F.normalize(f, dim=1, eps=1e-8), F.normalize(f_hat, dim=1, eps=1e-8)  # unit length, as LPIPS
    return (f - f_hat).square().sum(1).mean()
