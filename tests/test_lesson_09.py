"""Lesson 09's exercises: armini.course.check passes a correct per-location mask and order-ensemble
likelihood, and says "wrong" for the usual mistakes (the cases are the lesson's)."""
import math

import pytest
import torch

from armini import orders
from armini import pretrained
from armini.course import check
from armini.models.lmconv import ensemble_log_likelihood
from armini.nn.locally_masked import local_mask


# ----------------------------------------------------------------------------- the per-location mask
def mask_cases():
    g = torch.Generator().manual_seed(0)
    return [(orders.raster(4, 4), 4, 4, 3, 1, "A"),
            (orders.s_curve(5, 7), 5, 7, 3, 1, "B"),
            (orders.hilbert(6, 6), 6, 6, 3, 1, "A"),
            (orders.named("hilbert", 6, 8, "transpose+rot180"), 6, 8, 3, 2, "B"),
            (orders.random_order(5, 9, g), 5, 9, 5, 1, "A"),
            (orders.random_order(7, 4, g), 7, 4, 3, 3, "B")]


def make_mask(visible, centre=True, inside_only=True, scale_by_dilation=True):
    """A version of the exercise with one rule swapped: visible(rank_q, rank_p) decides the taps."""
    def mask_fn(order, H, W, kernel_size=3, dilation=1, mask_type="B"):
        k, half = kernel_size, kernel_size // 2
        rank = orders.rank(order)
        i, j = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)
        offset = (torch.arange(k) - half) * (dilation if scale_by_dilation else 1)
        qi, qj = i + offset.repeat_interleave(k)[:, None], j + offset.repeat(k)[:, None]
        inside = (qi >= 0) & (qi < H) & (qj >= 0) & (qj < W)
        rank_q = rank[qi.clamp(0, H - 1) * W + qj.clamp(0, W - 1)]
        mask = visible(rank_q, rank)
        if inside_only:
            mask = mask & inside
        if centre:
            mask[k * k // 2] = mask_type == "B"
        return mask.float()
    return mask_fn


WRONG_MASKS = {
    "the centre visible in mask A": lambda *args: _centre_always_visible(*args),
    ">= instead of > (the centre rule left out)": make_mask(lambda q, p: q <= p, centre=False),
    "a tap visible one step too early": make_mask(lambda q, p: q <= p + 1),
    "padding ignored (clamped neighbours)": make_mask(lambda q, p: q < p, inside_only=False),
    "dilation ignored": make_mask(lambda q, p: q < p, scale_by_dilation=False),
    "later neighbours instead of earlier": make_mask(lambda q, p: q > p),
}


def _centre_always_visible(order, H, W, kernel_size=3, dilation=1, mask_type="B"):
    mask = local_mask(order, H, W, kernel_size, dilation, mask_type)
    mask[kernel_size * kernel_size // 2] = 1.0  # mask A's centre shown: a pixel sees itself
    return mask


def test_a_correct_mask_passes(capsys):
    right = make_mask(lambda q, p: q < p)
    assert check("the per-location mask", right, local_mask, cases=mask_cases()) is right
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", list(WRONG_MASKS))
def test_wrong_masks_are_caught(mistake, capsys):
    wrong = WRONG_MASKS[mistake]
    assert check("the per-location mask", wrong, local_mask, cases=mask_cases()) is local_mask  # the library's
    out = capsys.readouterr().out
    assert "❌" in out and "case" in out, out


# --------------------------------------------------------------------------- the order ensemble
def ensemble_cases():
    g = torch.Generator().manual_seed(0)
    return [(-torch.rand(3, 4, 5, generator=g) * 2,),
            (-torch.rand(1, 2, 6, generator=g),),
            (-torch.rand(8, 5, 196, generator=g) * 9,)]


def right_ensemble(log_probs):
    return torch.logsumexp(log_probs.sum(-1), dim=0) - math.log(log_probs.shape[0])


WRONG_ENSEMBLES = {
    "averaged per-pixel probabilities": lambda lp: lp.exp().mean(0).log().sum(-1),
    "averaged log-likelihoods": lambda lp: lp.sum(-1).mean(0),
    "no -log K": lambda lp: torch.logsumexp(lp.sum(-1), dim=0),
    "exp underflows (no logsumexp)": lambda lp: lp.sum(-1).exp().mean(0).log(),
}


def test_a_correct_ensemble_passes(capsys):
    assert check("the order ensemble", right_ensemble, ensemble_log_likelihood, cases=ensemble_cases()) is right_ensemble
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", list(WRONG_ENSEMBLES))
def test_wrong_ensembles_are_caught(mistake, capsys):
    wrong = WRONG_ENSEMBLES[mistake]
    assert check("the order ensemble", wrong, ensemble_log_likelihood, cases=ensemble_cases()) is ensemble_log_likelihood
    out = capsys.readouterr().out
    assert "❌" in out, out


# ----------------------------------------------------------------------------- the pretrained checkpoint


@pytest.mark.skipif(not pretrained.available("lmconv"),
                    reason="data/pretrained/lmconv.pt is not here: python -m armini pretrained train lmconv")
def test_pretrained_checkpoint_is_the_lessons_model():
    """ARMINI_PRETRAINED=1 loads what the training cell trains: the same model, shape, levels and settings
    (the default budget's), and the cell's budget is the recipe's."""
    from armini.models.lmconv import LMConv

    lesson_model = LMConv(shape=(1, 14, 14), levels=256, head="softmax", orders="s-curve+spiral")  # the cell's
    assert pretrained.mismatches("lmconv", lesson_model) == []
    cell = pretrained.lesson_cell("lmconv")
    for setting in ['lm_steps, lm_lr = armini.budget(800, 6), 4e-3', 'batch_size=32',
                    'LMConv(shape=train.shape, levels=train.levels, head="softmax", orders="s-curve+spiral")',
                    'fit(model, train, test, steps=lm_steps, lr=lm_lr, **settings)']:
        assert setting in cell, setting
