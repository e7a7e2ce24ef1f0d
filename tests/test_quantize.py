"""armini.nn.quantize: what must be true of each quantiser (gradients, losses, EMA, restarts, FSQ's grid)."""
import math

import pytest
import torch
import torch.nn.functional as F

from armini.nn import quantize as Q


def latents(B=2, d=3, h=4, w=5, seed=0):
    return torch.randn(B, d, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ straight-through
def test_quantize_picks_the_nearest_code_and_passes_the_gradient_straight_through():
    z = latents().requires_grad_()
    codebook = torch.randn(7, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    z_q, k = Q.quantize(z, codebook)
    brute = torch.cdist(z.detach().permute(0, 2, 3, 1).reshape(-1, 3), codebook.detach()).argmin(1)
    assert torch.equal(k.flatten(), brute) and k.shape == (2, 4, 5)
    assert torch.allclose(z_q, codebook.detach()[k].permute(0, 3, 1, 2))  # forward value: the codes
    weights = torch.randn_like(z)
    (z_q * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # the decoder's gradient reaches the encoder unchanged
    assert codebook.grad is None or not codebook.grad.any()  # and nothing flows through argmin to the codes


def test_vector_quantizer_straight_through_reaches_the_encoder():
    vq = Q.VectorQuantizer(8, 3)
    z = latents().requires_grad_()
    out = vq(z)
    out.z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    assert vq.codebook.grad is None  # z_q's forward value is a code, but its gradient is the encoder's


# ------------------------------------------------------------------------------- the loss
def test_commitment_reaches_only_the_encoder_and_the_codebook_term_only_the_codebook():
    vq = Q.VectorQuantizer(8, 3, beta=0.25)
    z = latents().requires_grad_()
    out = vq(z)
    commit_z, = torch.autograd.grad(out.commitment_loss, z, retain_graph=True)
    assert commit_z.abs().sum() > 0
    assert torch.autograd.grad(out.commitment_loss, vq.codebook, retain_graph=True, allow_unused=True)[0] is None
    book_e, = torch.autograd.grad(out.codebook_loss, vq.codebook, retain_graph=True)
    assert book_e.abs().sum() > 0
    assert torch.autograd.grad(out.codebook_loss, z, allow_unused=True)[0] is None


def test_the_vq_loss_equals_its_definition_with_beta_on_the_encoder_term():
    vq = Q.VectorQuantizer(8, 3, beta=0.25)
    z = latents().requires_grad_()
    out = vq(z)
    e = vq.codebook.detach()[out.indices].permute(0, 3, 1, 2)  # (B, d, h, w)
    sq = (z.detach() - e).square().mean()
    assert torch.allclose(out.codebook_loss, sq) and torch.allclose(out.commitment_loss, sq)
    assert torch.allclose(out.loss, 1.25 * sq)
    # beta weighs the encoder's gradient, not the codebook's: d loss / d z = beta * 2 (z - e) / n
    gz, = torch.autograd.grad(out.loss, z)
    assert torch.allclose(gz, 0.25 * 2 * (z.detach() - e) / z.numel(), atol=1e-7)
    # the functional form says the same
    z2, e2 = z.detach().clone().requires_grad_(), e.clone().requires_grad_()
    loss = Q.vq_loss(z2, e2, beta=0.25)
    loss.backward()
    assert torch.allclose(loss, 1.25 * sq)
    assert torch.allclose(z2.grad, 0.25 * 2 * (z2 - e2).detach() / z.numel(), atol=1e-7)
    assert torch.allclose(e2.grad, 2 * (e2 - z2).detach() / z.numel(), atol=1e-7)


# ------------------------------------------------------------------------------------ EMA
def toy_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    z = torch.cat([c + 0.5 * torch.randn(20, 2, generator=g) for c in centres])  # (60, 2)
    return z, centres + 0.7  # start near, not at, the means


def test_ema_with_decay_zero_is_a_k_means_step():
    z, start = toy_clusters()
    vq = Q.VectorQuantizer(3, 2, ema=True, decay=0.0, eps=0.0)
    vq.codebook.copy_(start)
    vq.train()
    out = vq(z.t().reshape(1, 2, 60, 1))  # (1, d, 60, 1): 60 vectors
    k = torch.cdist(z, start).argmin(1)  # k-means' assignment step
    assert torch.equal(out.indices.flatten(), k)
    means = torch.stack([z[k == j].mean(0) for j in range(3)])  # k-means' update step
    assert torch.allclose(vq.codebook, means, atol=1e-5)
    assert torch.equal(out.codebook_loss, torch.zeros(()))  # EMA: no codebook loss, commitment kept
    assert out.commitment_loss > 0
    # and in eval mode nothing moves
    vq.eval()
    before = vq.codebook.clone()
    vq(z.t().reshape(1, 2, 60, 1) + 1)
    assert torch.equal(vq.codebook, before)


def test_ema_update_is_the_running_mean_with_laplace_smoothing():
    N, m = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([[2.0], [3.0], [0.0]])
    z, k = torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 1])
    N2, m2, e = Q.ema_update(N, m, z, k, decay=0.9, eps=1e-5)
    assert torch.allclose(N2, torch.tensor([0.9 * 2 + 0.1 * 2, 0.9 * 1 + 0.1 * 1, 0.0]))
    assert torch.allclose(m2, torch.tensor([[0.9 * 2 + 0.1 * 4], [0.9 * 3 + 0.1 * 5], [0.0]]))
    smoothed = (N2 + 1e-5) / (N2.sum() + 3e-5) * N2.sum()
    assert torch.allclose(e, m2 / smoothed[:, None]) and torch.isfinite(e).all()  # no division by zero


def test_dead_codes_restart_at_encoder_outputs_with_their_sums_reset():
    z, start = toy_clusters()
    vq = Q.VectorQuantizer(4, 2, ema=True, decay=0.5, restart_dead=True, dead_threshold=1.0)
    vq.codebook.copy_(torch.cat([start, torch.tensor([[100.0, 100.0]])]))  # code 3 is far from everything
    vq.m.copy_(vq.codebook)
    vq.train()
    torch.manual_seed(0)
    vq(z.t().reshape(1, 2, 60, 1))
    assert int(vq.restarts) == 1
    assert ((vq.codebook[3] - z).abs().sum(1).min() == 0)  # now sits on an encoder output
    assert vq.N[3] == 1.0 and torch.equal(vq.m[3], vq.codebook[3])  # count and sum reset: e = m / N
    # without the reset the next EMA step would pull it back towards m / N = the old far code
    vq(z.t().reshape(1, 2, 60, 1))
    assert vq.codebook[3].abs().max() < 20


def test_data_init_takes_the_codebook_from_the_first_batch():
    z, _ = toy_clusters()
    vq = Q.VectorQuantizer(5, 2, data_init=True)
    vq.train()
    vq(z.t().reshape(1, 2, 60, 1))
    assert ((vq.codebook.detach()[:, None] - z[None]).abs().sum(-1).min(1).values == 0).all()  # rows of z
    with pytest.raises(ValueError, match="restart_dead needs ema=True"):
        Q.VectorQuantizer(5, 2, restart_dead=True)


# ------------------------------------------------------------------------------------ FSQ
def test_fsq_has_exactly_prod_levels_codes_and_index_code_index_round_trips():
    fsq = Q.FSQ((8, 5, 5, 5))
    assert fsq.codebook_size == 1000
    idx = torch.arange(1000).view(1, 10, 100)
    codes = fsq.indices_to_codes(idx)  # (1, 4, 10, 100)
    assert codes.shape == (1, 4, 10, 100)
    assert len(torch.unique(codes.permute(0, 2, 3, 1).reshape(-1, 4), dim=0)) == 1000  # all distinct
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    # and every output of the bound-and-round is one of those codes
    z = 3 * latents(B=4, d=4, h=8, w=8)
    out = fsq(z)
    assert torch.allclose(out.z_q, fsq.indices_to_codes(out.indices))
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 1000
    levels_seen = [len(torch.unique(fsq(10 * latents(B=8, d=4, h=8, w=8, seed=s)).z_q[:, c])) for c, s in
                   zip(range(4), range(4))]
    assert levels_seen == [8, 5, 5, 5]


def test_fsq_bound_uses_the_atanh_shift_and_rounds_straight_through():
    z = torch.zeros(1, 2, 1, 1)
    assert torch.allclose(Q.fsq_bound(z, (8, 5)), torch.zeros_like(z), atol=1e-6)  # 0 stays 0 (even L too)
    big = torch.tensor([-50.0, 50.0]).view(1, 1, 2, 1)
    assert torch.allclose(Q.fsq_quantize(big, (8,)).flatten(), torch.tensor([-1.0, 0.75]))  # -4/4 .. 3/4
    x = torch.randn(2, 4, 3, 3).requires_grad_()
    Q.FSQ((8, 5, 5, 5))(x).z_q.sum().backward()
    assert (x.grad > 0).all()  # the gradient of tanh, passed straight through the rounding
    with pytest.raises(ValueError, match="expects 4 channels"):
        Q.FSQ((8, 5, 5, 5))(torch.zeros(1, 3, 2, 2))


# ----------------------------------------------------------------------------- residual VQ
def test_residual_vq_error_shrinks_with_depth():
    z = latents(B=8, d=4, h=6, w=6)
    errors = []
    for depth in (1, 2, 4):
        torch.manual_seed(0)
        rvq = Q.ResidualVQ(depth, 16, 4, ema=True, decay=0.0, data_init=True)
        rvq.train()
        for _ in range(5):  # a few k-means-like steps
            rvq(z)
        rvq.eval()
        out = rvq(z)
        assert out.indices.shape == (8, depth, 6, 6)
        assert torch.allclose(out.z_q, rvq.embed(out.indices), atol=1e-5)
        errors.append(F.mse_loss(out.z_q, z).item())
    assert errors[0] > errors[1] > errors[2]
    # truncating the stack decodes at a lower rate: the sum of the first depths
    assert torch.allclose(rvq.embed(out.indices[:, :1]), rvq.vq(0).embed(out.indices[:, 0]))


def test_residual_vq_straight_through_and_commitment_on_the_cumulative_code():
    rvq = Q.ResidualVQ(2, 8, 3, beta=0.25)
    z = latents().requires_grad_()
    out = rvq(z)
    g, = torch.autograd.grad(out.z_q.sum(), z, retain_graph=True)
    assert torch.equal(g, torch.ones_like(z))
    e1 = rvq.embed(out.indices[:, :1]).detach()
    e2 = rvq.embed(out.indices).detach()
    expected = ((z - e1).square().mean() + (z - e2).square().mean()) / 2
    assert torch.allclose(out.commitment_loss, expected)
    assert torch.autograd.grad(out.commitment_loss, rvq.vq(0).codebook, allow_unused=True)[0] is None


# ---------------------------------------------------------------------------------- usage
def test_codebook_usage_fraction_and_perplexity():
    frac, ppl = Q.codebook_usage(torch.tensor([0, 1, 2, 3]), 8)
    assert frac == 0.5 and math.isclose(ppl, 4.0)
    frac, ppl = Q.codebook_usage(torch.zeros(10, dtype=torch.long), 8)
    assert frac == 1 / 8 and math.isclose(ppl, 1.0)
    frac, ppl = Q.codebook_usage(torch.tensor([[0, 0, 0, 1]]), 2)
    assert frac == 1.0 and math.isclose(ppl, math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
