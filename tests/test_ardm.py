"""The order-agnostic ARDM (armini/models/ardm.py): its estimator, its likelihood, its causality in any
order, the step-budget dynamic program and parallel sampling.

The generic contract tests of tests/test_models.py also run on MODELS["ardm"] (normalisation,
causality and sampling in generation_order()); test_loss_is_bits_per_dimension cannot apply (the
ARDM loss is a random-order estimate, not the exact chain rule), so the unbiasedness of that
estimate is tested here instead, by enumeration.

UpscaleARDM (depth upscaling: the coarse values first, then the rest given them) is tested here too:
its stages' bits add up, the two-stage likelihood normalises and its estimate is unbiased (by
enumeration), each stage is causal in its own random order, and sampling fills every dimension once
per stage. It has no per-dimension conditionals, so the generic contract tests do not apply to it.
"""
import itertools
import math

import pytest
import torch

from armini import train
from armini.causality import check_causality
from armini.models.ardm import ARDM, RefineARDM, UpscaleARDM, ardm_nll, plan_steps, policy_bits, random_ranks, split_levels
from armini.models.base import ARModel
from helpers import all_images, ardm_scores_given_dims, ardm_weight_missing, ardm_weight_off_by_one

LN2 = math.log(2.0)


def tiny(shape=(1, 1, 3), levels=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    return ARDM(shape=shape, levels=levels, channels=8, mults=(1, 2), emb_dim=16, **kwargs)


def fit_a_little(model, x, steps=20, lr=1e-2):
    """Adam steps on the ARDM loss, so that tests do not only see the initialisation (returns the losses)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------ the estimator
def expected_estimate(model, x, estimator=ardm_nll, cond=None):
    """E over t in {0..D-1} and every order sigma of estimator(log p, given, t), exactly: (B,) nats.
    cond: what the network also reads (an Upscale ARDM's stage 2: the coarse image)."""
    D = model.dims
    total = torch.zeros(len(x), dtype=torch.float64)
    perms = list(itertools.permutations(range(D)))
    with torch.no_grad():
        for t in range(D):
            for rank in perms:
                rank = torch.tensor(rank).expand(len(x), D)  # (B, D) the step of each dimension
                tt = torch.full((len(x),), t)
                given = rank < t
                lp = model.predict(x, given.view(x.shape), cond).gather(-1, x.unsqueeze(-1)).flatten(1)  # (B, D)
                total += estimator(lp, given, tt)
    return total / (D * len(perms))


def order_averaged_nll(model, x):
    """The exact NLL averaged over all D! orders (one chain rule each): (B,) nats."""
    perms = list(itertools.permutations(range(model.dims)))
    with torch.no_grad():
        return -torch.stack([model.log_prob(x, order=torch.tensor(p)) for p in perms]).mean(0)


def test_the_ardm_estimate_is_unbiased_for_the_order_averaged_nll():
    model = tiny().double()
    x = all_images(model.shape, 3)  # every image of 3 dimensions with 3 levels
    fit_a_little(model, x[::3], steps=15)  # conditionals that differ between orders and steps
    exact = order_averaged_nll(model, x)  # (27,)
    torch.testing.assert_close(expected_estimate(model, x, ardm_nll), exact)
    for wrong in (ardm_weight_off_by_one, ardm_weight_missing, ardm_scores_given_dims):  # each would bias the bound
        assert not torch.allclose(expected_estimate(model, x, wrong), exact, rtol=1e-3), wrong.__name__


def test_weighted_nll_and_loss_use_that_estimate_in_bits_per_dimension():
    model = tiny(shape=(1, 2, 3), levels=4).double()
    x = torch.randint(4, (5, 1, 2, 3), generator=torch.Generator().manual_seed(1))
    D = model.dims
    torch.manual_seed(7)
    loss = model.loss(x)
    torch.manual_seed(7)  # the same draws from torch's global RNG (what fit's checkpoints hold)
    t = torch.randint(0, D, (5,))
    rank = random_ranks(5, D)
    given = rank < t[:, None]
    lp = model.predict(x, given.view(x.shape)).gather(-1, x.unsqueeze(-1)).flatten(1)
    torch.testing.assert_close(model.weighted_nll(x, rank, t), ardm_nll(lp, given, t))
    torch.testing.assert_close(loss, ardm_nll(lp, given, t).mean() / (D * LN2))
    assert int(t.max()) < D  # t never reaches D: no division by zero


# ------------------------------------------------------------------------------ likelihoods
@pytest.mark.parametrize("budget", [None, 2])
def test_log_prob_in_any_order_is_normalised(budget):
    model = tiny(shape=(1, 2, 2), levels=3)
    x = all_images(model.shape, 3)  # (81, 1, 2, 2)
    fit_a_little(model, x, steps=10)
    model.step_losses = torch.tensor([3.0, 2.0, 1.5, 1.0])
    model.set_budget(budget)  # 2 steps: a parallel model, normalised as well
    for order in (torch.tensor([3, 0, 2, 1]), torch.tensor([0, 1, 2, 3])):
        with torch.no_grad():
            total = torch.logsumexp(model.log_prob(x, order=order).double(), 0).exp()
        assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_log_prob_in_an_order_is_the_chain_rule_of_one_pass_per_step():
    model = tiny(shape=(1, 2, 3), levels=4).double()
    x = torch.randint(4, (3, 1, 2, 3), generator=torch.Generator().manual_seed(0))
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    expected = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for t, d in enumerate(order.tolist()):
            given = torch.zeros(6, dtype=torch.bool)
            given[order[:t]] = True
            lp = model.predict(x, given.view(1, 1, 2, 3).expand_as(x)).flatten(1, -2)  # (B, D, K)
            expected += lp[torch.arange(3), d, x.flatten(1)[:, d]]
        torch.testing.assert_close(model.log_prob(x, order=order), expected)


def test_elbo_bits_mean_and_standard_error():
    model = tiny(shape=(1, 3, 3), levels=4)
    x = torch.randint(4, (6, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    draws = model.elbo_draws(x, draws=5, generator=torch.Generator().manual_seed(3))  # (5, 6) bits per image
    mean, stderr = model.elbo_bits(x, draws=5, generator=torch.Generator().manual_seed(3))
    per_image = draws.mean(0) / model.dims
    assert mean == pytest.approx(float(per_image.mean()))
    assert stderr == pytest.approx(float(per_image.std() / math.sqrt(6))) and stderr > 0
    assert torch.equal(model.nll_bits(x), model.nll_bits(x))  # a fixed seed: evaluate is reproducible
    state = torch.random.get_rng_state()
    model.elbo_bits(x, draws=2)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert train.unit_label(model) == "bits/dim (bound)"
    with pytest.raises(ValueError, match="at least 2 images"):
        model.elbo_bits(x[:1])
    with pytest.raises(ValueError, match="draws must be"):
        model.elbo_bits(x, draws=0)


# -------------------------------------------------------------------------------- causality
class SeesItsOwnStep(ARDM):
    """A leak: each step is given its own dimensions too (<= instead of <): one step too early."""

    @staticmethod
    def given_at(step, ks):
        return step[None, :] <= ks[:, None]


class ForgetsTheMask(ARDM):
    """A leak: the dimensions not given keep their values in the network's input."""

    def network_input(self, x, given):
        v = x.to(self.model_dtype) * (2.0 / (self.levels - 1)) - 1.0
        return torch.cat([v, given.to(v.dtype)], dim=1)


def test_causal_in_any_order_and_leaks_are_caught():
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    model = tiny(shape=(1, 4, 4), levels=4)
    fit_a_little(model, torch.randint(4, (8, 1, 4, 4), generator=torch.Generator().manual_seed(0)), steps=5)
    assert check_causality(model, order=order).ok
    model.step_losses = torch.linspace(2, 1, 16)
    model.set_budget(5)  # dimensions of one step must not see each other either
    assert check_causality(model, order=order).ok
    for leaky in (SeesItsOwnStep, ForgetsTheMask):
        torch.manual_seed(0)
        bad = leaky(shape=(1, 4, 4), levels=4, channels=8, mults=(1, 2), emb_dim=16)
        bad.load_state_dict(model.state_dict())
        report = check_causality(bad, order=order)
        assert not report.ok, leaky.__name__
        d = int(order[7])
        coord = (0, d // 4, d % 4)
        assert (coord, coord) in report.leaks or any(t == coord for t, _ in report.leaks), leaky.__name__


# ----------------------------------------------------------------------------- step budgets
def brute_force(L, S):
    """The least total cost over every way of splitting D dimensions into S non-empty steps."""
    D = len(L)
    best = math.inf
    for cuts in itertools.combinations(range(1, D), S - 1):
        bounds = (0,) + cuts + (D,)
        best = min(best, sum((b - a) * float(L[a]) for a, b in zip(bounds, bounds[1:])))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_dynamic_program_equals_brute_force(seed):
    L = torch.rand(8, generator=torch.Generator().manual_seed(seed)) * 3
    for Lt in (L, L.sort(descending=True).values):  # measured (noisy) or sorted
        for S in range(1, 9):
            sizes = plan_steps(Lt, S)
            assert len(sizes) == S and sum(sizes) == 8 and min(sizes) >= 1
            assert policy_bits(Lt, sizes) * 8 == pytest.approx(brute_force(Lt, S), rel=1e-12)


def test_budget_extremes_and_errors():
    L = torch.linspace(3, 1, 10)
    assert plan_steps(L, 10) == [1] * 10  # S = D: one dimension per step
    assert plan_steps(L, 1) == [10]
    assert policy_bits(L, [1] * 10) == pytest.approx(float(L.mean()))  # the D-step ELBO
    assert policy_bits(L, [10]) == pytest.approx(3.0)  # everything from nothing
    for bad in (0, 11, 2.5):
        with pytest.raises(ValueError, match="steps must be"):
            plan_steps(L, bad)
    with pytest.raises(ValueError, match="add up to"):
        policy_bits(L, [3, 3])
    model = tiny()
    with pytest.raises(ValueError, match="measure_step_losses"):
        model.set_budget(2)
    model.step_losses = torch.ones(5)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model.set_budget(2)


def test_sampling_with_a_budget_fills_every_dimension_once():
    model = tiny(shape=(1, 4, 5), levels=4)
    x = torch.randint(4, (6, 1, 4, 5), generator=torch.Generator().manual_seed(0))
    L = model.measure_step_losses(x, stride=3)
    assert L.shape == (20,) and torch.isfinite(L).all()
    sizes = model.set_budget(6)
    assert model.budget == 6 and sum(sizes) == 20
    groups = model.sampling_steps(torch.randperm(20))
    assert [len(g) for g in groups] == sizes
    for S in (20, 6, 1):
        model.set_budget(S)
        steps = []
        out = model.sample(3, generator=torch.Generator().manual_seed(1), callback=lambda s: steps.append(s.index.clone()))
        filled = torch.cat(steps)
        assert len(steps) == S and torch.equal(filled.sort().values, torch.arange(20))  # each exactly once
        assert out.shape == (3, 1, 4, 5) and int(out.max()) < 4
        assert torch.equal(out, model.sample(3, generator=torch.Generator().manual_seed(1)))  # reproducible
    model.set_budget(20)
    orders = [torch.cat(model_steps(model, seed)) for seed in (1, 2)]
    assert not torch.equal(orders[0], orders[1])  # one random order per call
    assert model.budget_bits(20) <= model.budget_bits(4) <= model.budget_bits(1)
    model.set_budget(None)
    assert model.budget is None and [len(g) for g in model.sampling_steps()] == [1] * 20


def model_steps(model, seed):
    steps = []
    model.sample(1, generator=torch.Generator().manual_seed(seed), callback=lambda s: steps.append(s.index.clone()))
    return steps


def test_completion_keeps_observed_dimensions_with_a_random_order():
    model = tiny(shape=(1, 4, 4), levels=4)
    model.step_losses = torch.linspace(2, 1, 16)
    model.set_budget(4)
    x = torch.randint(4, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    observed = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.5  # scattered pixels
    out = model.sample(2, x=x, observed=observed, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[observed.expand_as(out)], x[observed.expand_as(x)])


# ------------------------------------------------------------------------------- training
def test_loss_decreases_on_a_tiny_training_run():
    model = tiny(shape=(1, 4, 4), levels=4)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(4, (32, 1, 4, 1), generator=g)
    x = rows.expand(32, 1, 4, 4).contiguous()  # each row one value: easy to predict from given pixels
    before, _ = model.elbo_bits(x, draws=4)
    train.fit(model, x, steps=60, batch_size=16, lr=1e-2, progress=False)
    after, stderr = model.elbo_bits(x, draws=4)
    assert after < before - 0.3, (before, after)


def test_a_resumed_run_draws_the_same_orders_and_steps(tmp_path):
    """The loss draws t and sigma from torch's global RNG, which fit's checkpoints hold: 2 + 2 steps = 4 steps."""
    x = torch.randint(4, (16, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    straight, split = tiny(shape=(1, 3, 3), levels=4), tiny(shape=(1, 3, 3), levels=4)
    settings = dict(steps=4, batch_size=8, lr=1e-2, progress=False, lr_schedule="constant", warmup=0)
    torch.manual_seed(1)
    train.fit(straight, x, **settings)
    path = tmp_path / "ardm.pt"
    torch.manual_seed(1)  # the same global RNG at the start
    train.fit(split, x, checkpoint=path, stop_after=2, **settings)
    torch.manual_seed(123)  # whatever happens in between: the checkpoint restores the RNG
    train.fit(split, x, checkpoint=path, resume=True, **settings)
    for a, b in zip(straight.parameters(), split.parameters()):
        assert torch.equal(a, b)


# -------------------------------------------------------------------------- depth upscaling
def tiny_upscale(shape=(1, 1, 3), levels=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    return UpscaleARDM(shape=shape, levels=levels, channels=8, mults=(1, 2), emb_dim=16, **kwargs)


def fit_upscale(model, x, steps=15, lr=1e-2):
    """Adam steps on the two-stage loss: both stages move away from their initialisation."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_split_levels_and_the_error_for_levels_that_do_not_split():
    assert split_levels(256) == (16, 16) and split_levels(4) == (2, 2) and split_levels(256, 4) == (4, 64)
    x = torch.arange(256).view(4, 1, 8, 8)
    model = UpscaleARDM(shape=(1, 8, 8), levels=256, channels=8, mults=(1,), emb_dim=16)
    c, f = model.split(x)
    assert torch.equal(c, x >> 4) and torch.equal(f, x & 15)  # the top 4 bits, the low 4 bits
    assert torch.equal(model.join(c, f), x)
    assert torch.equal(model.bin_centre(c), (x >> 4) * 16 + 8)
    with pytest.raises(ValueError, match=r"levels=255 .* do not split\. Pass coarse_levels= one of "
                                         r"\[3, 5, 15, 17, 51, 85\], or use levels=256 \(coarse_levels=16"):
        UpscaleARDM(shape=(1, 4, 4), levels=255)
    with pytest.raises(ValueError, match=r"levels=256 and coarse_levels=3 do not split\. Pass coarse_levels= one of \[2"):
        UpscaleARDM(shape=(1, 4, 4), levels=256, coarse_levels=3)
    for K, K1 in ((7, None), (16, 16), (16, 1)):  # prime; a stage of one value
        with pytest.raises(ValueError, match="do not split"):
            split_levels(K, K1)


def test_two_stage_likelihood_normalises_and_adds_up_from_its_stages():
    model = tiny_upscale().double()
    x = all_images(model.shape, 4)  # (64, 1, 1, 3): every image, 4 levels split 2 x 2
    fit_upscale(model, x[::3])
    c, f = model.split(x)
    for order in (torch.tensor([2, 0, 1]), torch.tensor([0, 1, 2])):
        with torch.no_grad():
            lp = model.log_prob(x, order=order)  # (64,)
            total = torch.logsumexp(lp, 0).exp()
            stages = model.coarse.log_prob(c, order=order) + model.fine.log_prob(f, c, order=order)
        assert total.item() == pytest.approx(1.0, abs=1e-9)
        torch.testing.assert_close(lp, stages)  # log p(x) = log p1(c) + log p2(f | c)
        torch.testing.assert_close(model.nll_bits(x, order=order), -lp / LN2)
    leaky = tiny_upscale().double()  # stage 2 reads its own fine values: no longer a distribution
    leaky.fine = RefineForgetsTheMask(shape=(1, 1, 3), levels=2, coarse_levels=2, channels=8, mults=(1, 2), emb_dim=16)
    leaky.fine.double()
    leaky.fine.load_state_dict(model.fine.state_dict())
    with torch.no_grad():
        total = torch.logsumexp(leaky.log_prob(x, order=torch.tensor([2, 0, 1])), 0).exp().item()
    assert total != pytest.approx(1.0, abs=1e-3)


class RefineForgetsTheMask(RefineARDM):
    def network_input(self, x, given):
        v = x.to(self.model_dtype) * (2.0 / (self.levels - 1)) - 1.0  # the fine values not given are NOT replaced
        return torch.cat([v, given.to(v.dtype)], dim=1)


def test_two_stage_estimate_is_unbiased_for_the_order_averaged_nll():
    model = tiny_upscale().double()
    x = all_images(model.shape, 4)
    fit_upscale(model, x[::3])
    c, f = model.split(x)
    perms = [torch.tensor(p) for p in itertools.permutations(range(3))]
    with torch.no_grad():
        exact = -torch.stack([model.log_prob(x, order=p) for p in perms]).mean(0)  # (64,) nats
    coarse, fine = expected_estimate(model.coarse, c), expected_estimate(model.fine, f, cond=c)
    torch.testing.assert_close(coarse + fine, exact)
    assert not torch.allclose(coarse, exact, rtol=1e-3)  # stage 2 carries a real share of the bound
    # loss() is that estimate: the two stages' ARDM estimates with the same draws, in bits/dim
    torch.manual_seed(3)
    loss = model.loss(x)
    torch.manual_seed(3)
    parts = []
    for stage, target, cond in ((model.coarse, c, None), (model.fine, f, c)):
        t, rank = torch.randint(0, 3, (64,)), random_ranks(64, 3)
        parts.append(stage.weighted_nll(target, rank, t, cond))
    torch.testing.assert_close(loss, (parts[0] + parts[1]).mean() / (3 * LN2))


def test_stage_bits_add_up_to_the_total():
    model = tiny_upscale(shape=(1, 3, 3), levels=16)
    x = torch.randint(16, (6, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    draws = model.stage_elbo_draws(x, draws=3, generator=torch.Generator().manual_seed(2))  # (2, 3, 6) bits per image
    (m1, s1), (m2, s2), (m, s) = model.stage_elbo_bits(x, draws=3, generator=torch.Generator().manual_seed(2))
    assert m1 + m2 == pytest.approx(m) and min(s1, s2, s) > 0
    assert (m, s) == model.elbo_bits(x, draws=3, generator=torch.Generator().manual_seed(2))
    assert m == pytest.approx(float(draws.sum(0).mean() / 9))
    c, f = model.split(x)  # the stages' own estimates, with the same generator in the same order
    g = torch.Generator().manual_seed(2)
    torch.testing.assert_close(draws[0], model.coarse.elbo_draws(c, draws=3, generator=g))
    torch.testing.assert_close(draws[1], model.fine.elbo_draws(f, c, draws=3, generator=g))
    torch.testing.assert_close(model.nll_bits(x).double(), model.elbo_draws(x).sum(0), check_dtype=False)
    assert train.unit_label(model) == "bits/dim (bound)"
    with pytest.raises(NotImplementedError, match="no conditionals"):
        model.conditionals(x)


class FixedCoarse(ARModel):
    """Stage 2 seen as a model of the fine values alone, given one coarse image: for the causality inspector."""

    any_order = True

    def __init__(self, fine, coarse):
        super().__init__(fine.shape, fine.levels)
        self.fine, self.c = fine, coarse  # (1, C, H, W)

    def conditionals(self, x, y=None, *, order=None, filled=None):
        return self.fine.conditionals(x, self.c.expand(len(x), -1, -1, -1), order=order, filled=filled)


class RefineSeesItsOwnStep(RefineARDM):
    @staticmethod
    def given_at(step, ks):
        return step[None, :] <= ks[:, None]


def test_each_stage_is_causal_in_its_own_random_order_and_leaks_are_caught():
    model = tiny_upscale(shape=(1, 4, 4), levels=16)
    fit_upscale(model, torch.randint(16, (8, 1, 4, 4), generator=torch.Generator().manual_seed(0)), steps=5)
    orders = [torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]  # one per stage
    coarse = torch.randint(4, (1, 1, 4, 4), generator=torch.Generator().manual_seed(2))
    assert check_causality(model.coarse, order=orders[0]).ok
    assert check_causality(FixedCoarse(model.fine, coarse), order=orders[1]).ok
    bad = RefineSeesItsOwnStep(shape=(1, 4, 4), levels=4, coarse_levels=4, channels=8, mults=(1, 2), emb_dim=16)
    bad.load_state_dict(model.fine.state_dict())
    assert not check_causality(FixedCoarse(bad, coarse), order=orders[1]).ok
    f = torch.randint(4, (1, 1, 4, 4))
    with torch.no_grad():  # ... and stage 2 does read the coarse image: another one changes its predictions
        a = model.fine.conditionals(f, coarse, order=orders[1])
        b = model.fine.conditionals(f, (coarse + 1) % 4, order=orders[1])
    assert not torch.allclose(a, b)


def test_upscale_sampling_fills_every_dimension_once_per_stage_and_is_reproducible():
    model = tiny_upscale(shape=(1, 3, 4), levels=16)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    steps = []
    out = model.sample(3, generator=g(0),
                       callback=lambda s: steps.append((s.step, s.total, s.index.clone(), s.x.clone(), s.probs)))
    assert out.shape == (3, 1, 3, 4) and out.dtype == torch.long and 0 <= int(out.min()) and int(out.max()) < 16
    assert torch.equal(out, model.sample(3, generator=g(0)))
    assert not torch.equal(out, model.sample(3, generator=g(1)))
    assert [s[0] for s in steps] == list(range(24)) and {s[1] for s in steps} == {24}  # step numbers go on
    for stage in (steps[:12], steps[12:]):  # each stage fills every dimension exactly once
        assert torch.equal(torch.cat([s[2] for s in stage]).sort().values, torch.arange(12))
    c = model.split(out)[0]
    torch.testing.assert_close(steps[11][3], model.bin_centre(c))  # after stage 1: coarse values at bin centres
    assert torch.equal(steps[-1][3], out)  # after stage 2: the image
    for _, _, index, x_so_far, probs in steps:
        assert probs.shape == (3, len(index), 16)
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, len(index)))
        value = x_so_far.flatten(1)[:, index]  # (3, S): each drawn value has probability > 0
        assert bool((probs.gather(-1, value.unsqueeze(-1)) > 0).all())
    model.measure_step_losses(out, stride=2)
    assert model.set_budget((3, 5)) and model.budget == (3, 5) and len(model.sampling_steps()) == 8
    assert model.budget_bits((3, 5)) == pytest.approx(model.coarse.budget_bits(3) + model.fine.budget_bits(5))
    seen = []
    a = model.sample(2, generator=g(4), callback=lambda s: seen.append(s.index))
    assert len(seen) == 8 and torch.equal(a, model.sample(2, generator=g(4)))
    model.set_budget(None)
    assert model.budget is None


def test_upscale_completion_keeps_the_observed_values():
    model = tiny_upscale(shape=(1, 4, 4), levels=16)
    x = torch.randint(16, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    observed = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.5
    out = model.sample(2, x=x, observed=observed, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[observed.expand_as(out)], x[observed.expand_as(x)])
    with pytest.raises(ValueError, match="observed"):
        model.sample(2, x=x)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="coarse image"):
        model.fine.sample(2)  # stage 2 alone needs the coarse image it refines
