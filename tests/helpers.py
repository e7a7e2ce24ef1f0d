"""Small pieces several test files share (pytest puts tests/ on sys.path: `from helpers import ...`)."""
import torch


def class_labels(model, n):
    """Labels 0, 1, 2, ... for class-conditional models; None for the others."""
    return None if model.num_classes is None else torch.arange(n) % model.num_classes


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
