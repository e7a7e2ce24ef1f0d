"""Lesson 18's build-it exercises (solutions/18_videogpt.ipynb): the prior's input at every position (the right
shift and VideoGPT's factorised time/row/column positions), which tokens a pixel mask fixes (what given frames
mean in token space), and the block-local mask of the Video Transformer's attention. Each check passes the right
answer and rejects the usual wrong ones with a verdict that says where the result differs; the learner's copy
(notebooks/) shows none of the answers. The cases below are the lesson's own."""
import json
import math
from pathlib import Path

import pytest
import torch

from armini import course
from armini.course import check
from armini.models.videogpt import VideoTokenPrior, video_observed_tokens
from armini.nn.attention import block_local_mask

ROOT = Path(__file__).resolve().parent.parent
LESSON = "18_videogpt.ipynb"


# ---------------------------------------------------------------------------------------------
# the prior's input: E_token[z_{n-1}] + E_time[t] + E_row[i] + E_col[j]


def embed_cases():
    gen = torch.Generator().manual_seed(0)
    cases = []
    for grid in ((4, 4, 4), (2, 3, 5), (3, 2, 1)):
        torch.manual_seed(len(cases))
        prior = VideoTokenPrior(grid, levels=7, dim=8, n_layers=1, n_heads=2)
        with torch.no_grad():
            for table in (prior.token_emb.weight, prior.start, prior.time_emb.weight, prior.row_emb.weight,
                          prior.col_emb.weight):
                table.normal_(generator=gen)
        cases.append((prior, torch.randint(7, (2, math.prod(grid)), generator=gen)))
    return cases


def make_embed(shift=True, start=True, row=lambda n, h, w: n // w % h, positions_of_previous=False):
    def embed(prior, seq):
        T_, h, w = prior.shape
        B, L = seq.shape
        n = torch.arange(L)
        if positions_of_previous:  # the slip: the position of the token read, not of the one predicted
            n = (n - 1).clamp(min=0)
        t, i, j = n // (h * w), row(n, h, w), n % w
        if shift:
            first = prior.start.expand(B, 1, -1) if start else torch.zeros(B, 1, prior.start.numel())
            tokens = torch.cat([first, prior.token_emb(seq[:, :-1])], dim=1)
        else:  # the leak: position n reads its own token
            tokens = prior.token_emb(seq)
        return tokens + prior.time_emb(t) + prior.row_emb(i) + prior.col_emb(j)
    return embed


def test_embed_right(capsys):
    right = make_embed()
    with torch.no_grad():
        assert check("prior input", right, VideoTokenPrior.embed, embed_cases()) is right
    assert capsys.readouterr().out == "✅ prior input: correct on 3 checks\n"


@pytest.mark.parametrize("name, wrong, case", [
    ("no right shift (reads its own token)", make_embed(shift=False), 1),
    ("zeros instead of the start vector", make_embed(start=False), 1),
    ("positions of the token read", make_embed(positions_of_previous=True), 1),
    ("row index with the wrong stride", make_embed(row=lambda n, h, w: n // h % h), 2),  # equal when h == w
])
def test_embed_wrong_versions_are_caught(capsys, name, wrong, case):
    with torch.no_grad():
        got = check("prior input", wrong, VideoTokenPrior.embed, embed_cases())
    assert got is VideoTokenPrior.embed, name
    out = capsys.readouterr().out
    assert out.startswith(f"❌ prior input: case {case} of 3") and "armini's reference version" in out, (name, out)


# ---------------------------------------------------------------------------------------------
# which tokens a pixel mask fixes


def observed_cases():
    gen = torch.Generator().manual_seed(2)
    first_four = torch.zeros(2, 8, 1, 16, 16, dtype=torch.bool)
    first_four[:, :4] = True
    corner = torch.zeros(1, 8, 1, 16, 16, dtype=torch.bool)
    corner[:, 1:7, :, 2:13, 3:16] = True
    return [(first_four, (8, 1, 16, 16), (4, 4, 4)), (corner, (8, 1, 16, 16), (4, 4, 4)),
            (torch.rand(3, 4, 2, 4, 6, generator=gen) < 0.9, (4, 2, 4, 6), (2, 2, 3)),
            (torch.ones(1, 4, 2, 4, 6, dtype=torch.bool), (4, 2, 4, 6), (2, 2, 3))]


def make_observed(reduce="all", channels=True, interleaved=False):
    def observed_tokens(observed, video_shape, token_shape):
        B = len(observed)
        T_, C, H, W = video_shape
        t, h, w = token_shape
        if not channels:  # the slip: only the first channel is looked at
            observed, C = observed[:, :, :1], 1
        if interleaved:  # the slip: token (t, i, j) made of every h-th row and w-th column, not a patch
            patches = observed.view(B, t, T_ // t, C, H // h, h, W // w, w).transpose(4, 5).transpose(6, 7)
        else:
            patches = observed.view(B, t, T_ // t, C, h, H // h, w, W // w)
        pool = (lambda v, d: v.all(dim=d)) if reduce == "all" else (lambda v, d: v.any(dim=d))
        return pool(pool(pool(pool(patches, 7), 5), 3), 2)
    return observed_tokens


def test_observed_tokens_right(capsys):
    right = make_observed()
    assert check("observed tokens", right, video_observed_tokens, observed_cases()) is right
    assert capsys.readouterr().out == "✅ observed tokens: correct on 4 checks\n"


@pytest.mark.parametrize("name, wrong, case", [
    ("a token fixed when any pixel is given", make_observed(reduce="any"), 2),
    ("channels after the first ignored", make_observed(channels=False), 3),
    ("strided pixels instead of a patch", make_observed(interleaved=True), 2),
])
def test_observed_tokens_wrong_versions_are_caught(capsys, name, wrong, case):
    got = check("observed tokens", wrong, video_observed_tokens, observed_cases())
    assert got is video_observed_tokens, name
    out = capsys.readouterr().out
    assert out.startswith(f"❌ observed tokens: case {case} of 4"), (name, out)


# ---------------------------------------------------------------------------------------------
# the block-local mask


BLOCK_CASES = [((2, 2, 4), (1, 2, 2)), ((4, 4, 4), (2, 2, 2)), ((3, 5, 5), (2, 2, 3)), ((4, 4, 4), (4, 2, 2)),
               ((2, 3, 2), (2, 3, 2))]


def right_mask(grid, block):
    t, i, j = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    cell = torch.stack([t // block[0], i // block[1], j // block[2]], dim=-1).view(-1, 3)
    return (cell[:, None] == cell[None, :]).all(-1)


def flat_blocks(grid, block):  # consecutive runs of bt*bh*bw positions, not 3D blocks
    n = torch.arange(math.prod(grid)) // math.prod(block)
    return n[:, None] == n[None, :]


def floor_count(grid, block):  # blocks per axis rounded down: ids collide when a block does not divide its axis
    t, i, j = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    nh, nw = grid[1] // block[1], grid[2] // block[2]
    ids = (((t // block[0]) * nh + i // block[1]) * nw + j // block[2]).flatten()
    return ids[:, None] == ids[None, :]


def with_causal(grid, block):  # the layer adds the causal rule itself: the mask must not
    return right_mask(grid, block) & torch.ones(math.prod(grid), math.prod(grid)).tril().bool()


def time_only(grid, block):  # same time block, any place in the frame
    t = torch.arange(grid[0]).repeat_interleave(grid[1] * grid[2]) // block[0]
    return t[:, None] == t[None, :]


def test_block_mask_right(capsys):
    assert check("block-local mask", right_mask, block_local_mask, BLOCK_CASES) is right_mask
    assert capsys.readouterr().out == "✅ block-local mask: correct on 5 checks\n"


@pytest.mark.parametrize("wrong, case", [(flat_blocks, 1), (floor_count, 3), (with_causal, 1), (time_only, 1)])
def test_block_mask_wrong_versions_are_caught(capsys, wrong, case):
    got = check("block-local mask", wrong, block_local_mask, BLOCK_CASES)
    assert got is block_local_mask, wrong.__name__
    out = capsys.readouterr().out
    assert out.startswith(f"❌ block-local mask: case {case} of 5"), (wrong.__name__, out)


# ---------------------------------------------------------------------------------------------
# the notebooks


def cells(folder):
    return json.loads((ROOT / folder / LESSON).read_text())["cells"]


def test_student_copy_hides_the_answers():
    nb = course._read(ROOT / "notebooks" / LESSON)
    assert course.giveaways(nb, LESSON) == []
    student = "\n".join("".join(c["source"]) for c in cells("notebooks"))
    for answer in ("t, i, j = n // (h * w), n // w % h, n % w", "patches.all(dim=7)", "(cell[:, None] == cell[None, :])"):
        assert answer in "\n".join("".join(c["source"]) for c in cells("solutions")), answer
        assert answer not in student, answer
    for name in ("the prior's input (the right shift and the factorised positions)", "which tokens a pixel mask fixes",
                 "the block-local mask of a 3D grid"):
        assert f'raise NotImplementedError("Exercise: {name}")' in student, name


def test_every_exercise_is_checked_against_the_library():
    source = "\n".join("".join(c["source"]) for c in cells("solutions"))
    for call in ('check("prior input", my_embed, VideoTokenPrior.embed',
                 'check("observed tokens", my_observed_tokens, video_observed_tokens',
                 'check("block-local mask", my_block_local_mask, block_local_mask'):
        assert call in source, call


def test_pretrained_recipe_is_the_lessons_training():
    """The course's videogpt checkpoint (helper P's recipe, when there is one) trains the lesson's model: the same
    data, model settings, steps, batch size and learning rate as the lesson's default budget."""
    from armini import pretrained

    if "videogpt" not in pretrained.RECIPES:
        pytest.skip("no videogpt recipe in armini.pretrained yet")
    source = "\n".join("".join(c["source"]) for c in cells("solutions"))
    assert "TOK_STEPS, PRIOR_STEPS = armini.budget(1000, 40), armini.budget(1200, 60)" in source
    assert "BATCH, LR = 16, 2e-3" in source and "VideoGPT(shape=train.shape, levels=K)" in source
    r = pretrained.RECIPES["videogpt"]
    assert (r.lesson, r.model, r.kwargs) == ("18_videogpt", "videogpt", {})
    assert tuple(r.steps) == (1000, 1200) and (r.batch_size, r.lr, r.seed) == (16, 2e-3, 0)
    assert {k: r.data[k] for k in ("dataset", "videos", "frames", "size", "levels")} == dict(
        dataset="moving-mnist", videos=2000, frames=8, size=16, levels=16)
