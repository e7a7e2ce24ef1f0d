"""Small pieces several test files share (pytest puts tests/ on sys.path: `from helpers import ...`)."""
import itertools
import math

import torch

from armini import class_labels  # noqa: F401  (labels 0, 1, 2, ... for conditional models; None otherwise)


def train_a_little(model, steps=3, batch=8, lr=1e-2, seed=1):
    """A few Adam steps on random images, so checks do not only see the initialisation."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(model.levels, (batch,) + model.shape, generator=g)
        opt.zero_grad()
        model.loss(x, class_labels(model, batch)).backward()
        opt.step()
    return model


def all_images(shape, levels):
    """Every image of this shape: (levels ** D, *shape), so normalisation can be summed exactly."""
    D = math.prod(shape)
    grid = torch.tensor(list(itertools.product(range(levels), repeat=D)))  # (K^D, D)
    return grid.view(-1, *shape)


# Wrong ARDM losses (log p (B, D), given (B, D) bool, t (B,) counted from 0 -> (B,) nats): the library's
# unbiasedness test and lesson 10's check both show that each one is caught.
def ardm_weight_off_by_one(logp, given, t):
    """The paper's weight for t counted from 1, D / (D - t + 1), used with t counted from 0."""
    D = logp.shape[1]
    return D / (D - t + 1) * -(logp * ~given).sum(1)


def ardm_weight_missing(logp, given, t):
    """The absorbed dimensions' NLL without the D / (D - t) weight."""
    return -(logp * ~given).sum(1)


def ardm_scores_given_dims(logp, given, t):
    """The right weight on the wrong dimensions: the given ones."""
    D = logp.shape[1]
    return D / (D - t) * -(logp * given).sum(1)
