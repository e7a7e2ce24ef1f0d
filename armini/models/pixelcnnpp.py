"""PixelCNN++ (Salimans, Karpathy, Chen & Kingma, 2017, "PixelCNN++: Improving the PixelCNN
with Discretized Logistic Mixture Likelihood and Other Modifications").

The changes to PixelCNN, all here:

1. Output (sec. 2.1): a discretised logistic mixture per pixel instead of a K-way
   softmax per sub-pixel (armini.nn.dmol), so neighbouring values share probability
   mass and the output layer has M * (1 + 2C + C(C-1)/2) channels instead of C * K.
2. Conditioning on whole pixels (sec. 2.2): the network's output at pixel (i, j)
   depends on earlier *pixels* only; the channels of a pixel are tied together inside
   the mixture (the mean of G is shifted by R, the mean of B by R and G), so no
   channel masks are needed anywhere.
3. Two streams of shifted convolutions (armini.nn.shifted), as in Gated PixelCNN, so
   there is no blind spot: u ("up") sees the rows above, ul ("up-left") sees the rows
   above and the pixels to the left in the current row. ul reads u at every layer,
   never the other way.

       u  at (i, j):  . . . . .        ul at (i, j):  . . . . .
                      # # # # #                       # # # # #
                      # # # # #                       # # # # #
                      . . o . .                       # # o . .

4. Down-sampling (sec. 2.3: stride-2 shifted convolutions, up-sampling by stride-2
   transposed ones, all in armini.nn.shifted) with shortcut connections (sec. 2.4) from the up pass (fine ->
   coarse) to the down pass (coarse -> fine), like a U-net: 28 -> 14 -> 7 -> 14 -> 28.
5. Every block is a gated resnet with dropout (sec. 2.5) and the reference code's
   concatenated ELU (armini.nn.gated):

       c1 = conv(concat_elu(h)) [+ nin(concat_elu(skip))];  c2 = conv(dropout(concat_elu(c1)))
       h  = h + a * sigmoid(b),   (a, b) = split(c2)

Why it stays causal: a pixel's u lives on the rows strictly above it (the first
layer is followed by a down-shift) and its ul on what is strictly before it in
raster order (a down-shift plus a right-shift of the first layer); every later
convolution reads the current position of features that already have that
property. A stride-2 convolution reads positions up to (2i, 2j) into coarse
position (i, j), and the transposed one writes (i, j) back into (2i..2i+1, 2j..2j+1),
never earlier.

Inputs and labels: pixel values are read as numbers in [-1, 1]; codebook indices (a prior over
token grids, `input="embedding"`) get a learned vector per value instead (armini.nn.inputs); the
output stays a discretised logistic mixture over the K values either way. Class conditioning
(`num_classes`): a learned vector per class is added to the first features of both streams (u and
ul) at every position; the same at every position, it tells every pixel the class and nothing
about other pixels, so causality is unchanged. The paper adds a class term inside every gated
resnet; here the class enters once, at the start, and the network carries it from there.

Deviations from the paper: no weight normalisation or data-dependent init (plain
convolutions, Adam is fine at this size); the class enters once (above); any number of
down-sampling stages (`n_stages`); images whose sides do not divide by 2^(n_stages-1)
are zero-padded at the bottom and right (padding after the last row and column of
each row keeps the raster order of the real pixels, so causality is unchanged);
defaults are small (nr_filters 32, nr_resnet 0, no dropout, instead of 160, 5 and 0.5)
so a CPU trains it in minutes (a few epochs do not overfit). nr_resnet 0 is the lightest
U-net: the up pass only down-samples, and each finer stage of the down pass keeps one gated
resnet that reads the shortcut; at equal CPU time on Fashion-MNIST it beat nr_resnet 1, which
takes 2.4 times longer per step (armini.bench, data/results/README.md); the sampler
draws from the exact per-sub-pixel conditionals through the shared loop
(armini.nn.dmol.dmol_sample is the paper's sampler, given the parameters).

Sampling is cached (armini.fast.pixelcnnpp_cache, Ramachandran et al. 2017): every layer's maps
are kept between steps and each position is computed once per image, once the pixels it depends
on are drawn; the images equal the naive sampler's (`sample(..., cached=False)`, a full pass per
step) for the same generator.

Legend: B batch, C image channels, H, W height and width, K levels, F filters (nr_filters),
P mixture parameters per pixel, S number of sampled dimensions in one step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fast.pixelcnnpp_cache import PixelCNNppCache
from ..nn.dmol import (coupled_means, dmol_conditionals, dmol_log_prob_pixels, dmol_num_params, dmol_split,
                       LOG_SCALE_MIN, log_bin_mass, to_unit_range)
from ..nn.gated import GatedResnet
from ..nn.inputs import ValueInput
from ..nn.shifted import (DownRightShiftedConv2d, DownRightShiftedConvTranspose2d, DownShiftedConv2d,
                          DownShiftedConvTranspose2d, down_shift, right_shift)
from ..orders import unravel
from .base import ARModel, probability_dtype


@dataclass
class PixelCNNppConfig:
    shape: tuple = (1, 28, 28)
    levels: int = 256
    nr_filters: int = 32  # F, channels of both streams
    nr_resnet: int = 0  # gated resnets per stage in the up pass (nr_resnet + 1 per finer stage of the down pass)
    n_stages: int = 3  # resolutions: 28 -> 14 -> 7 (the paper: 32 -> 16 -> 8)
    nr_mix: int = 5  # M, logistics in the mixture
    dropout: float = 0.0  # on the gated resnets' hidden layer; the paper uses 0.5 (long training, overfitting)
    input: str = "ordinal"  # how values are read: "ordinal" (pixels) or "embedding" (codebook indices)
    embed_dim: int = 16  # embedding size per channel when input="embedding"
    num_classes: Optional[int] = None  # class-conditional with this many classes (None: unconditional)


class PixelCNNpp(ARModel):
    """PixelCNN++: two shifted-convolution streams in a U-net, discretised logistic mixture output."""

    rows_so_far = True  # row i reads rows <= i: the naive sampler feeds the rows so far (armini.models.base)

    def __init__(self, shape=(1, 28, 28), levels=256, **kwargs):
        super().__init__(shape, levels)
        cfg = PixelCNNppConfig(shape=self.shape, levels=self.levels, **kwargs)
        if cfg.nr_filters < 1 or cfg.nr_resnet < 0 or cfg.n_stages < 1 or cfg.nr_mix < 1:
            raise ValueError(f"need nr_filters >= 1, nr_resnet >= 0, n_stages >= 1, nr_mix >= 1; got {cfg}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {cfg.dropout!r}")
        self.config = cfg
        self.set_classes(cfg.num_classes)
        self._edges = {}  # (dtype, device) -> the bin edges of a sampling step (_bin_edges)
        C = self.shape[0]
        Fn, R, S = cfg.nr_filters, cfg.nr_resnet, cfg.n_stages
        self.inputs = ValueInput(self.levels, C, cfg.input, cfg.embed_dim)  # (B, C, H, W) -> (B, C_in, H, W)
        C_in = self.inputs.out_channels

        def resnets(n, conv, skip):
            return nn.ModuleList([GatedResnet(Fn, conv, skip, cfg.dropout) for _ in range(n)])

        # first layer, on the inputs plus a channel of ones (so the convolutions' zero padding is visible)
        self.u_init = DownShiftedConv2d(C_in + 1, Fn, (2, 3))  # rows above (after the down-shift)
        self.ul_init_up = DownShiftedConv2d(C_in + 1, Fn, (1, 3))  # the row above (after the down-shift)
        self.ul_init_left = DownRightShiftedConv2d(C_in + 1, Fn, (2, 1))  # left column (after the right-shift)
        # the u stream's convolutions are DownShiftedConv2d (2, 3): rows i-1..i, columns j-1..j+1;
        # the ul stream's DownRightShiftedConv2d (2, 2): rows i-1..i, columns j-1..j (their default kernels)
        # up pass: fine -> coarse; ul reads u at the same position
        self.up_u = nn.ModuleList([resnets(R, DownShiftedConv2d, 0) for _ in range(S)])
        self.up_ul = nn.ModuleList([resnets(R, DownRightShiftedConv2d, Fn) for _ in range(S)])
        self.downsize_u = nn.ModuleList([DownShiftedConv2d(Fn, Fn, stride=2) for _ in range(S - 1)])
        self.downsize_ul = nn.ModuleList([DownRightShiftedConv2d(Fn, Fn, stride=2) for _ in range(S - 1)])
        # down pass: coarse -> fine; every block also reads a shortcut from the up pass
        n_down = [R] + [R + 1] * (S - 1)
        self.down_u = nn.ModuleList([resnets(n, DownShiftedConv2d, Fn) for n in n_down])
        self.down_ul = nn.ModuleList([resnets(n, DownRightShiftedConv2d, 2 * Fn) for n in n_down])
        self.upsize_u = nn.ModuleList([DownShiftedConvTranspose2d(Fn, Fn) for _ in range(S - 1)])
        self.upsize_ul = nn.ModuleList([DownRightShiftedConvTranspose2d(Fn, Fn) for _ in range(S - 1)])
        self.nin_out = nn.Conv2d(Fn, dmol_num_params(C, cfg.nr_mix), 1)
        # a learned vector per class for each stream, made last (the unconditional model draws what it always drew)
        if cfg.num_classes is not None:
            self.class_u = nn.Embedding(cfg.num_classes, Fn)  # (num_classes, F)
            self.class_ul = nn.Embedding(cfg.num_classes, Fn)

    def dmol_params(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """Mixture parameters (B, P, H, W) of every pixel, computed from the pixels strictly before it
        (and the labels y (B,) of a class-conditional model)."""
        B, C, H, W = x.shape
        S = self.config.n_stages
        h = self.inputs(x, self.nin_out.weight.dtype)  # (B, C_in, H, W): in [-1, 1], or embedded
        h = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)  # (B, C_in+1, H, W)
        # pad bottom and right to a multiple of 2^(S-1): the real pixels keep their raster order
        step = 2 ** (S - 1)
        h = F.pad(h, (0, -W % step, 0, -H % step))  # (B, C_in+1, H', W')

        # up pass: keep every output for the shortcuts
        u_list = [down_shift(self.u_init(h))]  # (B, F, H', W'): rows above
        ul_list = [down_shift(self.ul_init_up(h)) + right_shift(self.ul_init_left(h))]  # above and left
        if y is not None:  # the class, at every position of both streams
            u_list[0] = u_list[0] + self.class_u(y)[:, :, None, None]  # (B, F, H', W')
            ul_list[0] = ul_list[0] + self.class_ul(y)[:, :, None, None]
        for s in range(S):
            for res_u, res_ul in zip(self.up_u[s], self.up_ul[s]):
                u_list.append(res_u(u_list[-1]))
                ul_list.append(res_ul(ul_list[-1], u_list[-1]))
            if s < S - 1:
                u_list.append(self.downsize_u[s](u_list[-1]))  # (B, F, H'/2^(s+1), W'/2^(s+1))
                ul_list.append(self.downsize_ul[s](ul_list[-1]))

        # down pass: consume the shortcuts in reverse
        u, ul = u_list.pop(), ul_list.pop()
        for s in range(S):
            if s > 0:
                u = self.upsize_u[s - 1](u)  # (B, F, 2h, 2w)
                ul = self.upsize_ul[s - 1](ul)
            for res_u, res_ul in zip(self.down_u[s], self.down_ul[s]):
                u = res_u(u, u_list.pop())
                ul = res_ul(ul, torch.cat([u, ul_list.pop()], dim=1))
        assert not u_list and not ul_list

        out = self.nin_out(F.elu(ul))  # (B, P, H', W')
        return out[:, :, :H, :W]  # (B, P, H, W)

    # ------------------------------------------------------------- likelihood
    def log_prob_pixels(self, x, y=None):
        return dmol_log_prob_pixels(self.dmol_params(x, y), x, self.levels, check_values=False)  # x checked on entry

    def conditionals(self, x, y=None):
        return dmol_conditionals(self.dmol_params(x, y), x, self.levels, check_values=False)  # (B, C, H, W, K)

    # --------------------------------------------------------------- sampling
    def init_cache(self, x, y=None):
        """The cached sampler (armini.fast.pixelcnnpp_cache, Ramachandran et al. 2017): every layer's
        maps are kept between steps and each position is computed once per image."""
        return PixelCNNppCache(self, x, y)

    def conditional_logprobs(self, x, index, y=None, cache=None):
        """Only the sampled dimensions' K-way conditionals: (n, S, K). Without a cache (the naive
        sampler) a full pass over the whole image per step; with one, through the cache."""
        if cache is not None:
            return cache.conditional_logprobs(x, index)  # (n, 1, K)
        c, i, j = unravel(index, x.shape[1:])  # flat positions -> (S,) channel, row, column (x: maybe the top rows)
        params = self.dmol_params(x, y)[:, :, i, j]  # (n, P, S)
        return torch.cat([self.pixel_conditionals(params[:, :, s], x[:, :, i[s], j[s]], int(c[s]))
                          for s in range(len(c))], 1)  # (n, S, K)

    def pixel_conditionals(self, params, x_pixel, c: int):
        """log p(x_c = k | x_<c) for one sub-pixel of each image: (n, 1, K), from its pixel's mixture
        parameters (n, P) and its values x_pixel (n, C) (only x_<c is read: None will do for c = 0).

        What a sampling step needs, as probabilities: the mixture of the discretised logistics,

            P(k) = sum_m pi_m (sigma(z_(k+1)) - sigma(z_k)),   z_k = (e_k - mean_m) / s_m,

        with e_0 = -inf, e_K = +inf (the edge bins take the tails): each edge's logistic CDF once, the
        differences, then one matrix product with the weights. In float64, where a difference is exact
        to about 1e-16 of probability, so a value is drawn with its chance to that accuracy (the
        log-space formula of armini.nn.dmol, which training needs for its tails' logarithms, drifts by
        up to 1e-5 of probability in float32 on a sharp logistic). A step costs a few microseconds per
        tensor operation whatever its size, so this one counts its operations: the parameters are cut
        from the row as dmol_split lays them out (logits, then M per block: C means, C log-scales, the
        couplings), without its checks."""
        C, M = self.shape[0], self.config.nr_mix
        dtype = torch.float64 if params.dtype == torch.float64 else torch.float32  # what it returns
        params = params.to(probability_dtype(params.device))  # (n, P): float64 (float32 on Apple MPS)
        logit_pi = params[:, :M]  # (n, M)
        mean = params[:, M * (1 + c): M * (2 + c)]  # (n, M): channel c's means
        log_s = params[:, M * (1 + C + c): M * (2 + C + c)].clamp(min=LOG_SCALE_MIN)  # (n, M): its log-scales
        if c > 0:  # the means are coupled to the earlier channels, the weights are their posterior (dmol._components)
            _, mu, log_s_all, coeff = dmol_split(params[:, :, None, None], C)  # (n, C, M, 1, 1), ...
            x = x_pixel[:, :, None, None]  # (n, C, 1, 1)
            means = coupled_means(mu, coeff, to_unit_range(x.to(mu.dtype), self.levels))  # (n, C, M, 1, 1)
            mean = means[:, c, :, 0, 0]  # (n, M)
            logit_pi = logit_pi + log_bin_mass(x[:, :c, None], means[:, :c], log_s_all[:, :c],
                                               self.levels).cumsum(1)[:, -1, :, 0, 0]  # (n, M)
        edges = self._bin_edges(params.dtype, params.device)  # (K+1,)
        cdf = torch.sigmoid((edges - mean[..., None]) * torch.exp(-log_s)[..., None])  # (n, M, K+1): sigma(z_k)
        probs = torch.bmm(torch.softmax(logit_pi, dim=1)[:, None], cdf.diff(dim=-1))  # (n, 1, M) @ (n, M, K) -> (n, 1, K)
        return probs.clamp_(min=0).log_().to(dtype)  # clamp: a difference of two equal CDFs may round below 0

    def _bin_edges(self, dtype, device) -> torch.Tensor:
        """The K + 1 bin edges e_0 = -inf, e_k = -1 + (2k - 1) / (K - 1), e_K = +inf: made once per dtype and device."""
        key = (dtype, device)
        if key not in self._edges:
            half = 1.0 / (self.levels - 1)
            edges = torch.linspace(-1.0 - half, 1.0 + half, self.levels + 1, dtype=dtype, device=device)
            edges[0], edges[-1] = -math.inf, math.inf
            self._edges[key] = edges
        return self._edges[key]
