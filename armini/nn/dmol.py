"""The discretised logistic mixture likelihood (Salimans, Karpathy, Chen & Kingma, 2017,
"PixelCNN++: Improving the PixelCNN with Discretized Logistic Mixture Likelihood and
Other Modifications", section 2.1-2.2).

A K-way softmax per sub-pixel knows nothing about the order of the values: 127 and
128 are as unrelated as 0 and 255. PixelCNN++ instead puts a continuous density on
the value, a mixture of M logistics, and gives each integer the mass of its bin.
With x in {0, ..., K-1} scaled to v = 2x/(K-1) - 1 in [-1, 1], the bins have
half-width 1/(K-1) and, for one logistic with mean mu and scale s (sigma is the
logistic sigmoid, its CDF),

    P(x | mu, s) = sigma((v + 1/(K-1) - mu) / s) - sigma((v - 1/(K-1) - mu) / s)   (eq. 2, one component)

except at the edges, where the bin reaches out to infinity so that the K masses
sum to one: P(x=0) = sigma((v + 1/(K-1) - mu) / s), P(x=K-1) = 1 - sigma((v - 1/(K-1) - mu) / s).

Colour (paper, eq. 3): one mixture component m is shared by the channels of a pixel,
and the means of later channels are shifted by the earlier ones (true values in the
likelihood, sampled ones when sampling):

    mu_G = mu_G,m + alpha_m v_R,     mu_B = mu_B,m + beta_m v_R + gamma_m v_G

    p(pixel) = sum_m pi_m P_m(R) P_m(G | R) P_m(B | R, G)

We do this for any number of channels C: channel c's mean gets a coefficient for
every earlier channel, C(C-1)/2 of them (0 for grayscale, 3 = alpha, beta, gamma for RGB).

Per-sub-pixel conditionals. armini's contract wants log p(x_d | x_<d) for every
sub-pixel, but the mixture above does not factor into per-channel terms (the same m
runs through R, G and B). It does once we condition on what the earlier channels
said about m (Bayes):

    p(x_c | x_<c) = sum_m w_m^(c) P_m(x_c | x_<c),   w_m^(c) = P(m | x_<c) ∝ pi_m prod_{c'<c} P_m(x_c' | x_<c')

so R uses the prior weights pi, G the posterior after seeing R, B after seeing R and G.
The product over channels telescopes back to the paper's p(pixel) exactly, and each
conditional sums to one over the K values.

Parameter layout, per pixel (M = nr_mix, P = M * (1 + 2C + C(C-1)/2) channels):

    [ M mixture logits | C*M means | C*M log-scales | C(C-1)/2 * M coupling coefficients ]

each block channel-major (entry c*M + m). Log-scales are clamped below at -7, the
coupling coefficients go through tanh, as in the reference code.

Deviations from the paper's code:
  * any K (the bin width 2/(K-1) comes from K; nothing assumes 8 bits);
  * middle bins use an exact, stable identity for log(sigma(a) - sigma(b)) instead of
    float32 subtraction plus the "log pdf times bin width" fallback for bins under 1e-5
    (kept as `log_bin_mass_fallback` to compare in the lesson);
  * the sampler couples later channels to the *quantised* earlier values, which is
    what the likelihood conditions on (the reference sampler used the unquantised ones);
  * per-sub-pixel conditionals via posterior mixture weights (above).

Legend: B batch, C image channels, M mixture components, H, W height and width, K levels.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .inputs import to_unit_range  # noqa: F401  (used here, and part of this module's API)

LOG_SCALE_MIN = -7.0  # log s is clamped below here (s >= 9e-4): a bin can hold at most all the mass


# ------------------------------------------------------------------------- layout
def _per_component(channels: int) -> int:
    """Parameters per mixture component: 1 logit, C means, C log-scales, C(C-1)/2 couplings."""
    return 1 + 2 * channels + channels * (channels - 1) // 2


def dmol_num_params(channels: int, nr_mix: int) -> int:
    """Number of parameter channels a network must output per pixel: M * (1 + 2C + C(C-1)/2)."""
    return nr_mix * _per_component(channels)


def dmol_split(params: torch.Tensor, channels: int):
    """Split raw network outputs (B, P, H, W) into the mixture's parameters:

    logit_pi (B, M, H, W), mu (B, C, M, H, W), log_s (B, C, M, H, W) clamped at LOG_SCALE_MIN,
    coeff (B, C(C-1)/2, M, H, W) in (-1, 1): entries ordered (1,0), (2,0), (2,1), ... = alpha, beta, gamma.

    Half-precision outputs (mixed-precision training) are converted to float32 first: bfloat16's 8 bits of
    mantissa cannot even tell the bin centres of K = 256 apart near 1."""
    if params.dim() != 4:
        raise ValueError(f"params must be (B, P, H, W), got shape {tuple(params.shape)}")
    if params.dtype in (torch.float16, torch.bfloat16):
        params = params.float()
    B, P, H, W = params.shape
    C, per = channels, _per_component(channels)
    if P % per != 0 or P == 0:
        raise ValueError(
            f"params has {P} channels, not a multiple of {per} = 1 + 2C + C(C-1)/2 for C={C}: "
            f"a mixture of M logistics needs dmol_num_params({C}, M) channels"
        )
    M = P // per
    logit_pi = params[:, :M]  # (B, M, H, W)
    rest = params[:, M:].reshape(B, per - 1, M, H, W)  # (B, 2C + C(C-1)/2, M, H, W)
    mu = rest[:, :C]  # (B, C, M, H, W)
    log_s = rest[:, C : 2 * C].clamp(min=LOG_SCALE_MIN)  # (B, C, M, H, W)
    coeff = torch.tanh(rest[:, 2 * C :])  # (B, C(C-1)/2, M, H, W)
    return logit_pi, mu, log_s, coeff


# to_unit_range (from armini.nn.inputs): integers {0..K-1} -> bin centres v = 2x/(K-1) - 1 in [-1, 1]


def coupled_means(mu: torch.Tensor, coeff: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Shift each channel's means by the earlier channels' values (paper, eq. 3): (B, C, M, H, W).

    mu_c = mu_c + sum_{c' < c} coeff_(c, c') v_c'; for RGB: mu_G += alpha v_R, mu_B += beta v_R + gamma v_G.
    v: (B, C, H, W) earlier channels' values in [-1, 1] (true ones in the likelihood, sampled ones when sampling)."""
    C = mu.shape[1]
    means, p = [mu[:, 0]], 0
    for c in range(1, C):
        mean = mu[:, c]  # (B, M, H, W)
        for c_prev in range(c):
            mean = mean + coeff[:, p] * v[:, c_prev, None]  # (B, M, H, W)
            p += 1
        means.append(mean)
    return torch.stack(means, 1)  # (B, C, M, H, W)


# -------------------------------------------------------------- one logistic, one bin
def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-d)) for d > 0, accurate for small and large d (Maechler, 2012)."""
    ln2 = math.log(2.0)
    small, large = d.clamp(1e-30, ln2), d.clamp(min=ln2)  # each branch only sees its own range: finite gradients
    return torch.where(d < ln2, torch.log(-torch.expm1(-small)), torch.log1p(-torch.exp(-large)))


def log_bin_mass(x: torch.Tensor, mean: torch.Tensor, log_s: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(x | mean, s) of a logistic discretised to K bins on [-1, 1], edges open (broadcasts).

    x: integers in {0..K-1}; mean, log_s: the logistic's location and log-scale in v units."""
    K = levels
    half = 1.0 / (K - 1)  # bin half-width in [-1, 1]
    inv_s = torch.exp(-log_s)
    centred = to_unit_range(x.to(mean.dtype), K) - mean
    plus_in = inv_s * (centred + half)  # upper bin edge, standardised
    min_in = inv_s * (centred - half)  # lower bin edge, standardised
    log_cdf_plus = -F.softplus(-plus_in)  # log sigma(plus_in): left edge bin, (-inf, v + half]
    log_sf_min = -F.softplus(min_in)  # log(1 - sigma(min_in)): right edge bin, [v - half, inf)
    # middle bins: log(sigma(a) - sigma(b)) = log sigma(a) + log(1 - sigma(b)) + log(1 - exp(-(a - b)))
    # (exact; no cancellation in either tail, so no fallback is needed)
    log_gap = _log1mexp(inv_s * (2 * half))  # (a - b) = bin width / s
    zero = torch.zeros((), dtype=log_cdf_plus.dtype, device=log_cdf_plus.device)
    return (
        torch.where(x < K - 1, log_cdf_plus, zero)  # every bin but the right edge has an upper edge
        + torch.where(x > 0, log_sf_min, zero)  # every bin but the left edge has a lower edge
        + torch.where((x > 0) & (x < K - 1), log_gap, zero)  # only middle bins have both
    )


def log_bin_mass_fallback(x: torch.Tensor, mean: torch.Tensor, log_s: torch.Tensor, levels: int) -> torch.Tensor:
    """The paper's approximation of a tiny middle bin: density at the bin centre times the bin width,

    log P ~ log pdf(v) + log(2/(K-1)) = z - log s - 2 softplus(z) + log(2/(K-1)),  z = (v - mean)/s.

    The width is 2/(K-1) for K levels (the 8-bit code's log(127.5) is the K=256 case)."""
    z = (to_unit_range(x.to(mean.dtype), levels) - mean) * torch.exp(-log_s)
    return z - log_s - 2 * F.softplus(z) + math.log(2.0 / (levels - 1))


# ------------------------------------------------------------------------ the mixture
def _check(params: torch.Tensor, x: torch.Tensor, levels: int, values: bool = True):
    """Shapes, dtype and (values=True) the range of x; a model that checked x itself passes values=False,
    so a call waits for the device once, not twice."""
    if int(levels) < 2:
        raise ValueError(f"levels must be at least 2, got {levels!r}")
    if x.dim() != 4 or params.dim() != 4 or params.shape[0] != x.shape[0] or params.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"params (B, P, H, W) and x (B, C, H, W) must agree in B, H, W: got {tuple(params.shape)} "
            f"and {tuple(x.shape)}"
        )
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"x must hold integers in [0, {levels}), got dtype {x.dtype}")
    if values and x.numel():
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one wait for the device
        if lo < 0 or hi >= levels:
            raise ValueError(f"x must lie in [0, {levels}), found [{lo}, {hi}]")


def _components(params: torch.Tensor, x: torch.Tensor, levels: int):
    """Everything both likelihood functions need, given the true image x (B, C, H, W):

    log_w (B, C, M, H, W): log P(m | x_<c of the pixel), the weights channel c mixes with;
    mean, log_s (B, C, M, H, W): each component's logistic for channel c, coupled to the true x_<c."""
    C = x.shape[1]
    logit_pi, mu, log_s, coeff = dmol_split(params, C)
    mean = coupled_means(mu, coeff, to_unit_range(x.to(mu.dtype), levels))  # (B, C, M, H, W)
    lp = log_bin_mass(x[:, :, None], mean, log_s, levels)  # (B, C, M, H, W): log P_m(x_c | x_<c)
    # w_m^(c) ∝ pi_m prod_{c' < c} P_m(x_c' | x_<c'): the posterior over m after the earlier channels
    seen = torch.cat([torch.zeros_like(lp[:, :1]), lp[:, :-1].cumsum(1)], 1)  # (B, C, M, H, W)
    log_w = torch.log_softmax(logit_pi[:, None] + seen, dim=2)  # (B, C, M, H, W)
    return log_w, mean, log_s, lp


def dmol_log_prob_pixels(params: torch.Tensor, x: torch.Tensor, levels: int, check_values: bool = True) -> torch.Tensor:
    """log p(x_c | x_<c) in nats for every sub-pixel: (B, C, H, W).

    params: (B, P, H, W) network outputs for each pixel (they may depend on earlier pixels only);
    x: (B, C, H, W) integers in [0, K). Summed over channels this is the paper's log p(pixel).
    check_values=False skips reading x's range (the caller checked it)."""
    _check(params, x, levels, check_values)
    log_w, _, _, lp = _components(params, x, levels)
    return torch.logsumexp(log_w + lp, dim=2)  # (B, C, H, W): log sum_m w_m^(c) P_m(x_c | x_<c)


def dmol_conditionals(params: torch.Tensor, x: torch.Tensor, levels: int, check_values: bool = True) -> torch.Tensor:
    """log p(x_c = k | x_<c) for all K values k of every sub-pixel: (B, C, H, W, K).

    Entry (c, k) uses the true earlier channels of the pixel (coupling and mixture weights) and
    never x_c itself, so it is a proper conditional; costs K times the likelihood."""
    _check(params, x, levels, check_values)
    log_w, mean, log_s, _ = _components(params, x, levels)
    k = torch.arange(levels, device=x.device)  # (K,)
    lp_all = log_bin_mass(k, mean[..., None], log_s[..., None], levels)  # (B, C, M, H, W, K)
    return torch.logsumexp(log_w[..., None] + lp_all, dim=2)  # (B, C, H, W, K)


@torch.no_grad()
def dmol_sample(params: torch.Tensor, levels: int, channels: int,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The paper's sampler: one draw per pixel from the mixture, (B, C, H, W) integers in [0, K).

    Per pixel: pick a component m (Gumbel-max), then channel by channel draw a logistic
    with the mean coupled to the channels already drawn, clip to [-1, 1], quantise.
    (In an AR model params of a pixel depend on earlier pixels, so a full image is drawn
    pixel by pixel; this function draws every pixel of `params` at once, given params.)"""
    K, C = int(levels), int(channels)
    logit_pi, mu, log_s, coeff = dmol_split(params, C)
    dtype, dev = mu.dtype, mu.device  # float32 if params was half precision (see dmol_split)
    B, M, H, W = logit_pi.shape
    gdev = generator.device if generator is not None else dev

    def uniform(*shape):  # in (0, 1): both logs below stay finite
        u = torch.rand(shape, generator=generator, device=gdev, dtype=dtype).to(dev)
        return u.clamp(min=torch.finfo(dtype).tiny)

    # m = argmax_m (log pi_m + Gumbel noise): a draw from the mixture weights
    m = (logit_pi - torch.log(-torch.log(uniform(B, M, H, W)))).argmax(1)  # (B, H, W)

    def pick(t):  # (B, n, M, H, W) -> (B, n, H, W), component m of every pixel
        return t.gather(2, m[:, None, None].expand(B, t.shape[1], 1, H, W)).squeeze(2)

    mu_m, log_s_m, coeff_m = pick(mu), pick(log_s), pick(coeff)  # (B, C, H, W), (B, C, H, W), (B, C(C-1)/2, H, W)
    x = torch.zeros(B, C, H, W, dtype=torch.long, device=dev)
    v = torch.zeros(B, C, H, W, dtype=dtype, device=dev)
    p = 0
    for c in range(C):
        mean = mu_m[:, c]  # (B, H, W)
        for c_prev in range(c):  # coupling on the values just drawn (quantised)
            mean = mean + coeff_m[:, p] * v[:, c_prev]
            p += 1
        u = uniform(B, H, W)
        y = mean + torch.exp(log_s_m[:, c]) * (torch.log(u) - torch.log1p(-u))  # logistic, by inverse CDF
        x[:, c] = torch.round((y.clamp(-1.0, 1.0) + 1.0) * ((K - 1) / 2.0)).long().clamp(0, K - 1)
        v[:, c] = to_unit_range(x[:, c].to(v.dtype), K)
    return x
