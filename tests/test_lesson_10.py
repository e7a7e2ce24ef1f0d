"""Lesson 10's build-it exercises (solutions/10_ardm.ipynb): the ARDM loss with its weight and the
step-budget dynamic program. Each check passes the right answer and rejects the usual wrong ones.

The cases below are the lesson's own: what each check compares."""
import math

import pytest
import torch

from armini import pretrained
from armini.course import check
from armini.models.ardm import ardm_nll, plan_steps, random_ranks
from helpers import ardm_scores_given_dims, ardm_weight_missing, ardm_weight_off_by_one

# ---------------------------------------------------------------------------------------------
# the ARDM loss


def loss_case(B, D, seed):
    g = torch.Generator().manual_seed(seed)
    logp = -3 * torch.rand(B, D, generator=g, dtype=torch.float64)
    t = torch.randint(0, D, (B,), generator=g)
    t[0], t[-1] = 0, D - 1
    given = random_ranks(B, D, g) < t[:, None]
    return (logp, given, t)


LOSS_CASES = [loss_case(4, 6, 0), loss_case(8, 49, 1), loss_case(3, 2, 2)]


def right_loss(logp, given, t):
    D = logp.shape[1]
    return D / (D - t) * -(logp * ~given).sum(1)


def mean_not_sum(logp, given, t):  # averages over the absorbed dimensions instead of reweighting
    return -(logp * ~given).sum(1) / (~given).sum(1)


def test_ardm_loss_right(capsys):
    assert check("ARDM loss", right_loss, ardm_nll, LOSS_CASES) is right_loss
    assert capsys.readouterr().out == "✅ ARDM loss: correct on 3 checks\n"


def test_ardm_loss_wrong_versions_are_caught(capsys):
    for wrong in (ardm_weight_off_by_one, ardm_weight_missing, ardm_scores_given_dims, mean_not_sum):
        assert check("ARDM loss", wrong, ardm_nll, LOSS_CASES) is ardm_nll, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ ARDM loss: case 1 of 3") and "armini's reference version" in out, (wrong.__name__, out)


# ---------------------------------------------------------------------------------------------
# the step-budget dynamic program


def losses_case(D, seed):
    return torch.rand(D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).sort(descending=True).values * 4


PLAN_CASES = [(losses_case(8, 0), 3), (losses_case(10, 1), 10), (losses_case(12, 2), 1), (losses_case(16, 3), 5),
              (torch.rand(9, generator=torch.Generator().manual_seed(4), dtype=torch.float64), 4)]


def dp(step_losses, S, price):
    """The lesson's DP, with the price of a step t -> u given as a function (the wrong versions change it)."""
    L = torch.as_tensor(step_losses, dtype=torch.float64)
    D = len(L)
    cost = torch.full((D + 1,), math.inf, dtype=torch.float64)
    cost[0] = 0.0
    came_from = []
    for _ in range(S):
        new, back = torch.full_like(cost, math.inf), torch.zeros(D + 1, dtype=torch.long)
        for u in range(1, D + 1):
            t = torch.arange(u)
            new[u], back[u] = (cost[:u] + price(L, t, u)).min(0)
        cost = new
        came_from.append(back)
    sizes, u = [], D
    for back in reversed(came_from):
        t = int(back[u])
        sizes.append(u - t)
        u = t
    return sizes[::-1]


def right_plan(step_losses, S):
    return dp(step_losses, S, lambda L, t, u: (u - t) * L[t])


def paid_at_the_end(step_losses, S):  # off by one: the step's loss read where it ends, L_{u-1}
    return dp(step_losses, S, lambda L, t, u: (u - t) * L[u - 1])


def not_reversed(step_losses, S):  # the backtrack gives the last step first: it must be reversed
    return right_plan(step_losses, S)[::-1]


def equal_steps(step_losses, S):  # greedy: the same number of dimensions every step
    D = len(step_losses)
    return [D // S + (k < D % S) for k in range(S)]


def cheapest_first(step_losses, S):  # greedy: one dimension per step, then the rest at once
    D = len(step_losses)
    return [1] * (S - 1) + [D - S + 1]


def test_plan_right(capsys):
    assert check("step-budget DP", right_plan, plan_steps, PLAN_CASES) is right_plan
    assert capsys.readouterr().out == "✅ step-budget DP: correct on 5 checks\n"


def test_plan_wrong_versions_are_caught(capsys):
    for wrong in (paid_at_the_end, not_reversed, equal_steps, cheapest_first):
        assert check("step-budget DP", wrong, plan_steps, PLAN_CASES) is plan_steps, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ step-budget DP: case") and "armini's reference version" in out, (wrong.__name__, out)


# ----------------------------------------------------------------------------- the pretrained checkpoint


@pytest.mark.skipif(not pretrained.available("ardm"),
                    reason="data/pretrained/ardm.pt is not here: python -m armini pretrained train ardm")
def test_pretrained_checkpoint_is_the_lessons_model():
    """ARMINI_PRETRAINED=1 loads what the training cell trains: the same model, shape, levels and settings
    (the default budget's), and the cell's budget is the recipe's."""
    from armini.models.ardm import ARDM

    lesson_model = ARDM(shape=(1, 14, 14), levels=256, channels=32)  # the default budget's width
    assert pretrained.mismatches("ardm", lesson_model) == []
    cell = pretrained.lesson_cell("ardm")
    for setting in ['armini.budget(1200, 40)', 'batch_size=32, lr=3e-3', 'channels=armini.budget(32, 16)']:
        assert setting in cell, setting
