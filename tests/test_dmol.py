"""The discretised logistic mixture (armini.nn.dmol): normalisation for any K, agreement with
the definition, the per-sub-pixel conditionals, the paper's fallback, gradients and the sampler."""
import math

import pytest
import torch

from armini.nn.dmol import (
    LOG_SCALE_MIN,
    dmol_conditionals,
    dmol_log_prob_pixels,
    dmol_num_params,
    dmol_sample,
    dmol_split,
    log_bin_mass,
    log_bin_mass_fallback,
)





def random_params(B, C, M, H, W, seed=0, dtype=torch.float64, extreme=False):
    """Raw network outputs (B, P, H, W); extreme=True adds tiny/huge scales and far-away means."""
    g = torch.Generator().manual_seed(seed)
    per = 2 * C + C * (C - 1) // 2
    logits = 2 * torch.randn(B, M, H, W, generator=g, dtype=dtype)
    rest = torch.randn(B, per, M, H, W, generator=g, dtype=dtype)
    if extreme:
        mu = rest[:, :C]
        log_s = rest[:, C : 2 * C]
        u = torch.rand(mu.shape, generator=g, dtype=dtype)
        mu.copy_(torch.where(u < 0.3, 40 * torch.sign(mu), mu))  # means far outside [-1, 1]
        u = torch.rand(log_s.shape, generator=g, dtype=dtype)
        huge = torch.where(u > 0.9, torch.full_like(log_s, 40.0), 5 * log_s)  # s up to e^40: all mass at the edges
        log_s.copy_(torch.where(u < 0.3, torch.full_like(log_s, -12.0), huge))  # below the clamp
        rest[:, 2 * C :] *= 5
    return torch.cat([logits, rest.reshape(B, -1, H, W)], 1)


def cdf_direct(t):
    """The logistic CDF sigma(t), float64, with sigma(-inf) = 0 and sigma(inf) = 1."""
    return torch.sigmoid(t.double())


def bin_mass_direct(x, mean, s, K):
    """P(x) from the definition: CDF difference over [v - 1/(K-1), v + 1/(K-1)], edges open, float64."""
    v = 2 * x / (K - 1) - 1
    upper = torch.where(x == K - 1, torch.full_like(v, math.inf), v + 1 / (K - 1))
    lower = torch.where(x == 0, torch.full_like(v, -math.inf), v - 1 / (K - 1))
    return cdf_direct((upper - mean) / s) - cdf_direct((lower - mean) / s)


def joint_direct(params, x, K):
    """log p(pixel) = log sum_m pi_m prod_c P_m(x_c | x_<c), written out channel by channel: (B, H, W)."""
    B, C, H, W = x.shape
    M = params.shape[1] // dmol_num_params(C, 1)
    logit_pi, mu, log_s, coeff = dmol_split(params.double(), C)
    pi = torch.softmax(logit_pi, 1)  # (B, M, H, W)
    v = 2 * x.double() / (K - 1) - 1
    total = torch.zeros(B, H, W, dtype=torch.float64)
    for m in range(M):
        means = [mu[:, 0, m]]
        if C == 3:
            alpha, beta, gamma = coeff[:, 0, m], coeff[:, 1, m], coeff[:, 2, m]
            means.append(mu[:, 1, m] + alpha * v[:, 0])  # mu_G + alpha x_R
            means.append(mu[:, 2, m] + beta * v[:, 0] + gamma * v[:, 1])  # mu_B + beta x_R + gamma x_G
        p = pi[:, m]
        for c in range(C):
            p = p * bin_mass_direct(x[:, c].double(), means[c], log_s[:, c, m].exp(), K)
        total = total + p
    return total.log()


@pytest.mark.parametrize("K", [2, 4, 17, 256])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("extreme", [False, True])
def test_conditionals_normalise_for_any_K(K, C, extreme):
    params = random_params(2, C, 3, 3, 4, seed=K + C, extreme=extreme)
    x = torch.randint(K, (2, C, 3, 4), generator=torch.Generator().manual_seed(1))
    for dtype, atol in [(torch.float64, 1e-10), (torch.float32, 1e-4)]:
        lp = dmol_conditionals(params.to(dtype), x, K)  # (B, C, H, W, K)
        assert lp.shape == (2, C, 3, 4, K)
        assert not torch.isnan(lp).any() and not (lp == math.inf).any()
        total = torch.logsumexp(lp, -1)
        torch.testing.assert_close(total, torch.zeros_like(total), atol=atol, rtol=0)
        # the likelihood at the observed value is the same number
        picked = lp.gather(-1, x.unsqueeze(-1)).squeeze(-1)
        direct = dmol_log_prob_pixels(params.to(dtype), x, K)
        assert torch.isfinite(direct).all()
        torch.testing.assert_close(direct, picked, atol=atol * 10, rtol=1e-5)


@pytest.mark.parametrize("K", [2, 4, 17, 256])
def test_single_logistic_matches_definition(K):
    g = torch.Generator().manual_seed(K)
    x = torch.arange(K, dtype=torch.float64)[:, None]  # (K, 1): every bin, edges included
    mean = torch.rand(1, 20, generator=g, dtype=torch.float64) * 2.4 - 1.2  # (1, 20) moderate means
    log_s = torch.rand(1, 20, generator=g, dtype=torch.float64) * 3 - 4  # s in [0.02, 0.37]
    ours = log_bin_mass(torch.arange(K)[:, None], mean, log_s, K)
    direct = bin_mass_direct(x, mean, log_s.exp(), K)
    ok = direct > 1e-6  # compare where the direct float64 subtraction itself is accurate
    torch.testing.assert_close(ours[ok], direct[ok].log(), atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(ours.exp().sum(0), torch.ones(20, dtype=torch.float64))


@pytest.mark.parametrize("K", [4, 256])
def test_float32_tails_stay_exact(K):
    """Far in the tails sigma(a) - sigma(b) underflows in float32; the identity we use does not."""
    mean = torch.tensor([-0.9, 0.9, 0.0])
    log_s = torch.tensor([-5.0, -5.0, -3.0])
    x = torch.arange(K)[:, None]  # (K, 1)
    ours = log_bin_mass(x, mean, log_s, K)  # float32
    exact = log_bin_mass(x, mean.double(), log_s.double(), K)
    naive = torch.log(torch.sigmoid((2 * x / (K - 1) - 1 + 1 / (K - 1) - mean) / log_s.exp())
                      - torch.sigmoid((2 * x / (K - 1) - 1 - 1 / (K - 1) - mean) / log_s.exp()))
    assert torch.isfinite(ours).all()
    assert (~torch.isfinite(naive[1:-1])).any()  # the naive float32 difference breaks somewhere
    torch.testing.assert_close(ours.double(), exact, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("K", [4, 17, 256])
def test_paper_fallback_is_close_to_exact_for_tiny_bins(K):
    """log pdf(centre) + log(2/(K-1)) approximates a bin that is narrow compared with s; the
    threshold 1e-5 is where the paper switches to it. A hard-coded log(127.5) would be off by
    log(127.5 (K-1)/2) for K != 256."""
    x = torch.tensor([1, K // 2, K - 2])  # middle bins only (the fallback is not for the edges)
    width = 2 / (K - 1)
    s = torch.tensor(8.0 * width, dtype=torch.float64)  # bin narrow compared with the logistic
    for target in [1e-5, 3e-6, 1e-7]:
        # put the mean so the bin is deep in the upper tail with mass about `target`
        z = math.log(width / s.item() / target)  # pdf(z) * width ~ e^-z width / s
        mean = 2 * x.double() / (K - 1) - 1 - z * s
        exact = log_bin_mass(x, mean, s.log(), K)
        approx = log_bin_mass_fallback(x, mean, s.log(), K)
        assert (exact < math.log(3e-5)).all()
        torch.testing.assert_close(approx, exact, atol=0.02, rtol=0)
        wrong = approx - math.log(width) + math.log(1 / 127.5)  # the 8-bit constant
        if K != 256:
            assert ((wrong - exact).abs() > 1.0).all()


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("K", [2, 17, 256])
def test_sub_pixel_conditionals_telescope_to_the_joint(C, K):
    params = random_params(3, C, 4, 2, 3, seed=7 * C + K)
    x = torch.randint(K, (3, C, 2, 3), generator=torch.Generator().manual_seed(K))
    ours = dmol_log_prob_pixels(params, x, K).sum(1)  # sum_c log p(x_c | x_<c): (B, H, W)
    torch.testing.assert_close(ours, joint_direct(params, x, K), atol=1e-9, rtol=1e-9)


def test_channel_c_depends_on_earlier_channels_only():
    K, C = 17, 3
    params = random_params(1, C, 3, 2, 2, seed=3)
    x = torch.randint(K, (1, C, 2, 2), generator=torch.Generator().manual_seed(0))
    base = dmol_conditionals(params, x, K)
    for c in range(C):
        x2 = x.clone()
        x2[:, c] = (x2[:, c] + 5) % K
        moved = (dmol_conditionals(params, x2, K) - base).abs().amax(dim=(0, 2, 3, 4))  # (C,)
        assert (moved[: c + 1] == 0).all(), f"changing channel {c} moved channel <= {c}: {moved}"
        assert (moved[c + 1 :] > 1e-6).all(), f"changing channel {c} did not move a later channel: {moved}"


def test_log_scale_is_clamped_and_gradients_are_finite():
    K, C = 256, 3
    params = random_params(2, C, 5, 3, 3, seed=11, dtype=torch.float32, extreme=True).requires_grad_()
    _, _, log_s, _ = dmol_split(params, C)
    assert log_s.min() >= LOG_SCALE_MIN
    x = torch.randint(K, (2, C, 3, 3), generator=torch.Generator().manual_seed(2))
    x[0, :, 0, 0] = 0  # edges included
    x[0, :, 0, 1] = K - 1
    dmol_log_prob_pixels(params, x, K).sum().backward()
    assert torch.isfinite(params.grad).all()
    params.grad = None
    dmol_conditionals(params, x, K).logsumexp(-1).sum().backward()
    assert torch.isfinite(params.grad).all()


@pytest.mark.parametrize("C,K", [(1, 17), (3, 4)])
def test_paper_sampler_matches_the_likelihood(C, K):
    """Draws of dmol_sample (component, logistic, clip, quantise) follow exp(log p(pixel))."""
    M = 3
    one = random_params(1, C, M, 1, 1, seed=5, dtype=torch.float32) * 0.7  # one pixel's parameters
    n_h, n_w = 100, 200  # 20000 independent draws of that pixel
    params = one.expand(1, -1, n_h, n_w)
    draws = dmol_sample(params, K, C, generator=torch.Generator().manual_seed(0))  # (1, C, n_h, n_w)
    assert draws.shape == (1, C, n_h, n_w) and draws.min() >= 0 and draws.max() < K
    assert torch.equal(draws, dmol_sample(params, K, C, generator=torch.Generator().manual_seed(0)))
    # every possible pixel value and its exact probability
    grid = torch.cartesian_prod(*[torch.arange(K)] * C).reshape(-1, C)  # (K^C, C)
    n_values = grid.shape[0]
    logp = dmol_log_prob_pixels(one.double().expand(n_values, -1, 1, 1), grid[:, :, None, None], K).sum(1)
    probs = logp.flatten().exp()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    code = (draws.flatten(2)[0].T * (K ** torch.arange(C - 1, -1, -1))).sum(1)  # (N,) value index
    counts = torch.bincount(code, minlength=n_values).double()
    expected = probs * code.numel()
    big = expected > 5  # chi-square over the well-populated cells, the rest lumped together
    chi2 = ((counts[big] - expected[big]) ** 2 / expected[big]).sum()
    rest = counts[~big].sum() - expected[~big].sum()
    chi2 += rest**2 / expected[~big].sum().clamp(min=1.0)
    dof = int(big.sum())
    assert chi2 < dof + 6 * math.sqrt(2 * dof), f"chi2 {chi2:.1f} with {dof} cells"


def test_half_precision_outputs_are_computed_in_float32():
    """Mixed-precision training hands over bfloat16 network outputs: the bins must not get coarser
    (8 bits of mantissa cannot tell the 256 bin centres apart near 1), under autocast too."""
    K, C = 256, 3
    params = random_params(2, C, 4, 3, 3, seed=13, dtype=torch.float32).bfloat16()
    x = torch.randint(K, (2, C, 3, 3), generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = K - 2  # next to the edge, where bfloat16 rounds bin centres together
    lp = dmol_conditionals(params, x, K)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(2, C, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(lp, dmol_conditionals(params.float(), x, K))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lpp = dmol_log_prob_pixels(params, x, K)
    torch.testing.assert_close(lpp, dmol_log_prob_pixels(params.float(), x, K))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(dmol_sample(params, K, C, generator=g), dmol_sample(params.float(), K, C, generator=g.manual_seed(1)))


def test_bad_inputs_raise():
    params = torch.zeros(1, dmol_num_params(3, 2), 2, 2)
    x = torch.zeros(1, 3, 2, 2, dtype=torch.long)
    dmol_log_prob_pixels(params, x, 4)
    with pytest.raises(ValueError, match="multiple"):
        dmol_log_prob_pixels(params[:, :-1], x, 4)
    with pytest.raises(ValueError, match="lie in"):
        dmol_log_prob_pixels(params, x + 4, 4)
    with pytest.raises(TypeError):
        dmol_log_prob_pixels(params, x.float(), 4)
    with pytest.raises(ValueError, match="agree"):
        dmol_conditionals(params, x[:, :, :1], 4)
