"""Lesson 01's baselines: three ways to fill in the chain rule p(x) = prod_d p(x_d | x_<d).

- IndependentPixels: p(x_d | x_<d) = p(x_d). No context at all; one K-way
  histogram per dimension. The best a model can do without looking at other pixels.
- FVSBN, the fully visible sigmoid belief net (Frey, 1998; Neal, 1992): every
  conditional is a logistic (softmax for K > 2) regression on all earlier dimensions,
      p(x_d = k | x_<d) = softmax_k( b_{d,k} + sum_{j<d} W_{d,k,j} x_j ).
  D*D*K weights: fine for binarised 28x28 images (K = 2), too many for K = 256.
- NADE (Larochelle & Murray, 2011): the regressions share one hidden layer,
      h_d = sigmoid(c + sum_{j<d} W[:, j] x_j),   p(x_d = . | x_<d) = softmax(b_d + V_d h_d),
  and the sums over j < d for all d are one cumulative sum: O(D*H) per image.

Class-conditional versions (`num_classes`), each with the class where its bias is, all zero
at the start (so a new conditional model is the unconditional one until it trains):
- IndependentPixels: one table of histograms per class, p(x_d = k | y) = softmax_k(logits_{y,d,k});
- FVSBN: a bias per class and dimension, softmax_k( b_{d,k} + B_{y,d,k} + sum_{j<d} W_{d,k,j} x_j );
- NADE: a hidden bias per class, h_d = sigmoid(c + U_y + sum_{j<d} W[:, j] x_j).

All three order dimensions as `generation_order()` says (the base class: raster, channels
within a pixel); a subclass may override it. Inputs are fed as values scaled to [0, 1], in the
dtype of the weights (so `.double()` computes in float64 throughout).

Legend: B batch, C, H, W image, D = C*H*W, K levels, N hidden units, Y classes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..memory import require_memory
from ..nn.masked import MaskedLinear, sequence_mask
from .base import ARModel, smaller_size


class IndependentPixels(ARModel):
    """p(x) = prod_d p(x_d): one learned K-way distribution per dimension (per class and dimension
    with num_classes)."""

    def __init__(self, shape=(1, 28, 28), levels=256, num_classes=None):
        super().__init__(shape, levels)
        if num_classes is not None:
            self.set_classes(num_classes)
            self.config = {"num_classes": self.num_classes}  # rebuilds the model from a checkpoint
        classes = () if num_classes is None else (self.num_classes,)
        self.logits = nn.Parameter(torch.zeros(*classes, *self.shape, self.levels))  # ([Y,] C, H, W, K)

    @classmethod
    @torch.no_grad()
    def from_counts(cls, images: torch.Tensor, levels: int, alpha: float = 1.0, y=None,
                    num_classes=None) -> "IndependentPixels":
        """The maximum-likelihood fit in closed form: per-dimension histograms with add-alpha smoothing,
            p(x_d = k) = (n_{d,k} + alpha) / (N + K alpha),
        or, given labels y (N,) and num_classes, one histogram per class: p(x_d = k | y) from the images of class y."""
        if y is not None and num_classes is None:
            raise ValueError("from_counts got labels y but no num_classes: pass num_classes, the number of classes")
        model = cls(shape=images.shape[1:], levels=levels, num_classes=num_classes)
        images = model.check_input(images, "images")
        y = model.check_labels(y, images.shape[0])
        D, K = model.dims, levels
        # n_{d,k} (n_{y,d,k}): how many images (of class y) have value k at dimension d, as one bincount
        row = torch.arange(D) if y is None else y[:, None] * D + torch.arange(D)  # (D,) or (N, D): row y*D + d
        code = row * K + images.flatten(1)  # (N, D)
        counts = torch.bincount(code.flatten(), minlength=model.logits.numel()).view(model.logits.shape).float()
        model.logits.copy_(torch.log(counts + alpha))  # ([Y,] C, H, W, K); softmax divides by N + K alpha
        return model

    def conditionals(self, x, y=None):
        if y is not None:
            return torch.log_softmax(self.logits[y], dim=-1)  # (B, C, H, W, K): each image's class table
        lp = torch.log_softmax(self.logits, dim=-1)  # (C, H, W, K)
        return lp.expand(x.shape[0], *lp.shape)  # (B, C, H, W, K)


class _Sequential(ARModel):
    """Shared plumbing for models that see the image as a sequence in generation order."""

    def __init__(self, shape, levels):
        super().__init__(shape, levels)
        self._orders = {}  # device -> (order, rank), filled on first use (see sequence_order)

    def sequence_order(self, device):
        """(order, rank) on `device`: order[t] is the position in x.flatten(1) of step t of
        generation_order(), rank its inverse (position -> step). Computed on the first forward
        pass, not in __init__, so that a subclass's generation_order() may use settings the
        subclass sets after super().__init__(); kept per device, so no step copies it again."""
        if device not in self._orders:
            order = self.generation_order().to(device)  # (D,) sequence index -> flat index
            self._orders[device] = order, torch.argsort(order)  # rank: flat index -> sequence index
        return self._orders[device]

    def to_sequence(self, x):
        order, _ = self.sequence_order(x.device)
        return x.flatten(1)[:, order].to(self.model_dtype) / (self.levels - 1)  # (B, D) in [0, 1]

    def from_sequence(self, logits):
        B = logits.shape[0]
        _, rank = self.sequence_order(logits.device)
        return logits[:, rank].view(B, *self.shape, self.levels)  # (B, D, K) -> (B, C, H, W, K)


class FVSBN(_Sequential):
    """Fully visible sigmoid belief net: a masked linear map from earlier dimensions to logits."""

    max_weights = 50_000_000

    def __init__(self, shape=(1, 28, 28), levels=2, num_classes=None):
        super().__init__(shape, levels)
        D, K = self.dims, self.levels
        if D * D * K > self.max_weights:
            raise ValueError(
                f"FVSBN needs D*D*K = {D}*{D}*{K} = {D * D * K:,} weights for shape={self.shape}, "
                f"levels={K}; that is over {self.max_weights:,}. Use levels=2 (binarised images, the "
                "model's classic setting) or a smaller shape such as (1, 14, 14)"
            )
        mask = sequence_mask(D)  # (D, D): output d may read input j only if j < d in generation order
        self.linear = MaskedLinear(D, D * K, mask.repeat_interleave(K, dim=0))  # rows d*K + k
        if num_classes is not None:
            self.set_classes(num_classes)
            self.config = {"num_classes": self.num_classes}  # rebuilds the model from a checkpoint
            self.class_bias = nn.Parameter(torch.zeros(self.num_classes, D, K))  # B_{y,d,k}

    def conditionals(self, x, y=None):
        s = self.to_sequence(x)  # (B, D)
        logits = self.linear(s).view(x.shape[0], self.dims, self.levels)  # (B, D, K)
        if y is not None:
            logits = logits + self.class_bias[y]  # (B, D, K): each image's class bias
        return torch.log_softmax(self.from_sequence(logits), dim=-1)  # (B, C, H, W, K)


class NADE(_Sequential):
    """Neural autoregressive distribution estimator with N shared hidden units."""

    def __init__(self, shape=(1, 28, 28), levels=256, hidden=32, num_classes=None):
        super().__init__(shape, levels)
        self.config = {"hidden": int(hidden)}  # rebuilds the model from a checkpoint
        D, K, N = self.dims, self.levels, int(hidden)
        self.check_weight_memory(N)
        self.W = nn.Parameter(torch.randn(N, D) * 0.01)  # input -> hidden, shared by every conditional
        self.c = nn.Parameter(torch.zeros(N))
        self.V = nn.Parameter(torch.randn(D, K, N) * (1.0 / N**0.5))  # hidden -> logits of dimension d
        self.b = nn.Parameter(torch.zeros(D, K))
        if num_classes is not None:
            self.config["num_classes"] = self.set_classes(num_classes)
            self.U = nn.Parameter(torch.zeros(self.num_classes, N))  # U_y: class y's hidden bias

    def weight_bytes(self, C, H, W, N) -> int:
        """Memory of the weights W, c, V, b for images (C, H, W) and N hidden units; V, D*K*N numbers, dominates."""
        D, K = C * H * W, self.levels
        return (N * D + N + D * K * N + D * K) * torch.get_default_dtype().itemsize

    def check_weight_memory(self, N):
        """Refuse, before allocating, weights that cannot fit (a 512x512 image: 8.6 GB)."""
        C, H, W = self.shape
        size = smaller_size(H)
        smaller = ""
        if size:
            mib = self.weight_bytes(C, size, size, N) / 2**20
            smaller = f"smaller images (CLI: --size {size} gives shape ({C}, {size}, {size}): {mib:,.0f} MiB), "
        require_memory(self.weight_bytes(C, H, W, N), torch.get_default_device(),
                       f"NADE's weights for shape={self.shape}, levels={self.levels}, hidden={N}",
                       f"Use {smaller}fewer levels (--levels) or fewer hidden units (-o hidden=...).")

    def activation_bytes(self, batch):
        """Live at once in a forward pass: about three (B, D, K) tensors (logits, reordered, log-softmax)
        and three (B, N, D) ones (the running sums and h)."""
        D, K, N = self.dims, self.levels, self.config["hidden"]
        return batch * D * (3 * K + 3 * N) * self.model_dtype.itemsize

    def conditionals(self, x, y=None):
        s = self.to_sequence(x)  # (B, D)
        contrib = s[:, None, :] * self.W[None]  # (B, N, D): W[:, j] x_j
        a = F.pad(torch.cumsum(contrib, dim=2)[..., :-1], (1, 0))  # sum over j < d only, shifted: (B, N, D)
        c = self.c[None, :, None] if y is None else (self.c + self.U[y])[:, :, None]  # c (+ U_y): (1 or B, N, 1)
        h = torch.sigmoid(c + a)  # h_d, (B, N, D)
        logits = torch.einsum("bnd,dkn->bdk", h, self.V) + self.b  # (B, D, K)
        return torch.log_softmax(self.from_sequence(logits), dim=-1)  # (B, C, H, W, K)
