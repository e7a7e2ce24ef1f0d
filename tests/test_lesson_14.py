"""Lesson 14's build-it exercises (solutions/14_pmard.ipynb): the pixels of a group (block_grid) and the
list of sampling steps (scale_steps). Each check passes the right answer and rejects the usual wrong ones."""
import math

import pytest
import torch

from armini import pretrained
from armini.course import check
from armini.models.pmard import GROUPS, base_image, block_grid, scale_steps

# ---------------------------------------------------------------------------------------------
# the pixels of a group


def grid_case(level, doublings, offset, shape=(2, 1, 8, 8)):
    return (torch.arange(math.prod(shape)).view(shape), level, doublings, offset)


GRID_CASES = [grid_case(2, 2, (0, 1)), grid_case(1, 2, (1, 0)), grid_case(1, 2, (1, 1)), grid_case(3, 3, (1, 1)),
              grid_case(1, 1, (0, 0), (1, 3, 4, 6))]  # as in the lesson


def right_grid(x, level, doublings, offset=(0, 0)):
    r = 2 ** (doublings - level)
    a, b = offset
    return x[..., a * r::2 * r, b * r::2 * r]


def offsets_swapped(x, level, doublings, offset=(0, 0)):  # (a, b) read as (column, row)
    r = 2 ** (doublings - level)
    a, b = offset
    return x[..., b * r::2 * r, a * r::2 * r]


def stride_from_level(x, level, doublings, offset=(0, 0)):  # r = 2^l instead of 2^(L - l): levels upside down
    r = 2 ** level // 2
    a, b = offset
    return x[..., a * r::2 * r, b * r::2 * r]


def blocks_r_apart(x, level, doublings, offset=(0, 0)):  # every pixel of x_level from the offset on, not one per block
    r = 2 ** (doublings - level)
    a, b = offset
    return x[..., a * r::r, b * r::r]


def test_block_grid_right(capsys):
    assert check("block grid", right_grid, block_grid, GRID_CASES) is right_grid
    assert capsys.readouterr().out == "✅ block grid: correct on 5 checks\n"


def test_block_grid_wrong_versions_are_caught(capsys):
    for wrong, problem in ((offsets_swapped, "32 of 32 values differ"), (stride_from_level, "expected shape (2, 1, 4, 4)"),
                           (blocks_r_apart, "expected shape (2, 1, 4, 4)")):
        assert check("block grid", wrong, block_grid, GRID_CASES) is block_grid, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ block grid: case 1 of 5") and problem in out, (wrong.__name__, out)
        assert "armini's reference version" in out


# ---------------------------------------------------------------------------------------------
# the sampling steps

STEP_CASES = [((1, 8, 8), 2, GROUPS[3], torch.arange(4)), ((1, 8, 8), 2, GROUPS[1], torch.tensor([3, 1, 2, 0])),
              ((3, 4, 4), 1, GROUPS[3], torch.arange(12)), ((1, 28, 28), 2, GROUPS[3], torch.arange(49))]


def right_steps(shape, doublings, group_offsets, base_order):
    where = torch.arange(math.prod(shape)).view(shape)
    steps = list(base_image(where, doublings).flatten()[base_order].split(1))
    for level in range(1, doublings + 1):
        for offsets in group_offsets:
            steps.append(torch.cat([block_grid(where, level, doublings, o).flatten() for o in offsets]))
    return steps


def finest_first(shape, doublings, group_offsets, base_order):  # the doublings in the wrong order
    steps = right_steps(shape, doublings, group_offsets, base_order)
    n_base = len(base_order)
    groups = steps[n_base:]
    per_level = len(group_offsets)
    levels = [groups[k:k + per_level] for k in range(0, len(groups), per_level)]
    return steps[:n_base] + [g for level in reversed(levels) for g in level]


def base_not_mapped(shape, doublings, group_offsets, base_order):  # x_0's own flat positions, not the image's
    steps = right_steps(shape, doublings, group_offsets, base_order)
    return list(base_order.split(1)) + steps[len(base_order):]


def one_step_per_doubling(shape, doublings, group_offsets, base_order):  # the groups of a doubling merged
    steps = right_steps(shape, doublings, group_offsets, base_order)
    n_base, per_level = len(base_order), len(group_offsets)
    groups = steps[n_base:]
    return steps[:n_base] + [torch.cat(groups[k:k + per_level]) for k in range(0, len(groups), per_level)]


def test_scale_steps_right(capsys):
    assert check("sampling steps", right_steps, scale_steps, STEP_CASES) is right_steps
    assert capsys.readouterr().out == "✅ sampling steps: correct on 4 checks\n"


def test_scale_steps_wrong_versions_are_caught(capsys):
    for wrong, problem in ((finest_first, "expected shape (4,) at [4], got (16,)"),
                           (base_not_mapped, "values differ at [1]"), (one_step_per_doubling, "expected 10 items, got 6")):
        assert check("sampling steps", wrong, scale_steps, STEP_CASES) is scale_steps, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ sampling steps: case 1 of 4") and problem in out, (wrong.__name__, out)
        assert "armini's reference version" in out


# ----------------------------------------------------------------------------- the pretrained checkpoint


@pytest.mark.skipif(not pretrained.available("pmard"),
                    reason="data/pretrained/pmard.pt is not here: python -m armini pretrained train pmard")
def test_pretrained_checkpoint_is_the_lessons_model():
    """ARMINI_PRETRAINED=1 loads what the training cell trains: the same model, shape, levels and settings
    (the default budget's), and the cell's budget is the recipe's."""
    from armini.models import MODELS

    lesson_model = MODELS["pmard"](shape=(1, 28, 28), levels=256)
    assert pretrained.mismatches("pmard", lesson_model) == []
    cell = pretrained.lesson_cell("pmard")
    for setting in ['armini.budget(150, 12)', 'BATCH, LR = 32, 2e-3', 'train_for(model, BUDGET)']:
        assert setting in cell, setting
