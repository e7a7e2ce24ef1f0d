"""Lesson 15's build-it exercises (solutions/15_var.ipynb): the block-causal mask, the teacher-forcing input
from the cumulative f_hat and the scale-by-scale sampler. Each check passes the right answer and rejects the
usual wrong ones."""
import pytest
import torch
import torch.nn.functional as F

from armini import pretrained
from armini.course import check
from armini.models.var import VAR, next_scale_sample
from armini.nn.attention import block_causal_mask
from armini.nn.quantize import MultiScaleQuantizer
from test_var import SMALL

# ---------------------------------------------------------------------------------------------
# the block-causal mask

MASK_CASES = [([1, 4, 9],), ([2, 3],), ([1, 1, 1, 1],), ([1, 4, 9, 16, 25, 49],)]


def right_mask(sizes):
    scale = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return scale[None, :] <= scale[:, None]


def plain_causal(sizes):  # lesson 07's triangle: a token cannot read the rest of its own scale
    L = sum(sizes)
    return torch.ones(L, L, dtype=torch.bool).tril()


def own_scale_hidden(sizes):  # strictly coarser scales only: scale 1 would read nothing
    scale = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return scale[None, :] < scale[:, None]


def transposed(sizes):  # coarse positions read the finer ones
    return right_mask(sizes).T


def test_block_mask_right(capsys):
    assert check("block-causal mask", right_mask, block_causal_mask, MASK_CASES) is right_mask
    assert capsys.readouterr().out == "✅ block-causal mask: correct on 4 checks\n"


def test_block_mask_wrong_versions_are_caught(capsys):
    for wrong, case in ((plain_causal, 1), (own_scale_hidden, 1), (transposed, 1)):
        assert check("block-causal mask", wrong, block_causal_mask, MASK_CASES) is block_causal_mask, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith(f"❌ block-causal mask: case {case} of 4") and "armini's reference version" in out, out


# ---------------------------------------------------------------------------------------------
# the teacher-forcing input


def quantizer():
    torch.manual_seed(0)
    q = MultiScaleQuantizer(16, 4, scales=(1, 2, 3, 4), phi="per-scale")
    return q.eval()


def tf_cases():
    q = quantizer()
    g = torch.Generator().manual_seed(1)
    return [(q, torch.randint(16, (5, q.length), generator=g)), (q, torch.randint(16, (2, q.length), generator=g))]


def right_inputs(q, tokens):
    f_hats = q.cumulative(tokens)
    rows = [F.interpolate(f_hats[k - 1], size=(s, s), mode="area").flatten(2).transpose(1, 2)
            for k, s in enumerate(q.scales) if k > 0]
    return torch.cat(rows, 1)


def per_scale_residual(q, tokens):  # the classic bug: scale k reads only scale k-1's own code map
    grids = q.split(tokens)
    rows = [F.interpolate(q.scale_code(grids[k - 1], k - 1), size=(s, s), mode="area").flatten(2).transpose(1, 2)
            for k, s in enumerate(q.scales) if k > 0]
    return torch.cat(rows, 1)


def includes_own_scale(q, tokens):  # f_hat after scale k: the answer leaks into its own input
    f_hats = q.cumulative(tokens)
    rows = [F.interpolate(f_hats[k], size=(s, s), mode="area").flatten(2).transpose(1, 2)
            for k, s in enumerate(q.scales) if k > 0]
    return torch.cat(rows, 1)


def channels_last_wrong(q, tokens):  # (B, d, s*s) flattened the other way round: rows are channels
    f_hats = q.cumulative(tokens)
    rows = [F.interpolate(f_hats[k - 1], size=(s, s), mode="area").flatten(2).reshape(len(tokens), s * s, -1)
            for k, s in enumerate(q.scales) if k > 0]
    return torch.cat(rows, 1)


def test_teacher_forcing_input_right(capsys):
    with torch.no_grad():
        assert check("teacher-forcing input", right_inputs, MultiScaleQuantizer.next_scale_inputs,
                     tf_cases()) is right_inputs
    assert capsys.readouterr().out == "✅ teacher-forcing input: correct on 2 checks\n"


def test_teacher_forcing_input_wrong_versions_are_caught(capsys):
    for wrong in (per_scale_residual, includes_own_scale, channels_last_wrong):
        with torch.no_grad():
            got = check("teacher-forcing input", wrong, MultiScaleQuantizer.next_scale_inputs, tf_cases())
        assert got is MultiScaleQuantizer.next_scale_inputs, wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ teacher-forcing input: case 1 of 2") and "armini's reference version" in out, out


# ---------------------------------------------------------------------------------------------
# the scale-by-scale sampler


def tiny_prior():
    torch.manual_seed(0)
    model = VAR(shape=(1, 8, 8), levels=4, tokenizer=dict(quantizer="msvq", latent_size=4, codebook_size=6, dim=4,
                                                          channels=8, scales=(1, 2, 3, 4)),
                prior_kwargs=SMALL, num_classes=3)  # scales named: four steps for the wrong samplers to go astray
    prior = model.prior
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)  # a few steps: distributions that are not uniform
    z = torch.randint(6, (16, prior.dims), generator=torch.Generator().manual_seed(2))
    for _ in range(5):
        opt.zero_grad()
        prior.loss(z, torch.arange(16) % 4).backward()
        opt.step()
    return prior.eval()


def sampler_cases():
    prior = tiny_prior()
    return [(prior, 4, torch.tensor([0, 1, 2, 3])), (prior, 3, torch.tensor([1, 1, 2]))]


def right_sampler(prior, n, y):
    tokens = torch.zeros(n, prior.dims, dtype=torch.long)
    with torch.no_grad():
        for index in prior.sampling_steps():
            probs = prior.conditionals(tokens, y)[:, index].exp()
            tokens[:, index] = torch.multinomial(probs.flatten(0, 1), 1).view(n, -1)
    return tokens


def forgets_the_class(prior, n, y):  # draws from the null class: the unconditional model
    null = torch.full_like(y, prior.num_classes - 1)
    return right_sampler(prior, n, null)


def conditions_once(prior, n, y):  # computes the distributions once, from the empty canvas: no coarse-to-fine
    tokens = torch.zeros(n, prior.dims, dtype=torch.long)
    with torch.no_grad():
        logp = prior.conditionals(tokens, y)
        for index in prior.sampling_steps():
            tokens[:, index] = torch.multinomial(logp[:, index].exp().flatten(0, 1), 1).view(n, -1)
    return tokens


def test_scale_sampler_right(capsys):
    assert check("scale-by-scale sampler", right_sampler, next_scale_sample, sampler_cases()) is right_sampler
    assert capsys.readouterr().out == "✅ scale-by-scale sampler: correct on 2 checks\n"


def test_scale_sampler_wrong_versions_are_caught(capsys):
    for wrong in (forgets_the_class, conditions_once):
        assert check("scale-by-scale sampler", wrong, next_scale_sample, sampler_cases()) is next_scale_sample, \
            wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("❌ scale-by-scale sampler: case 1 of 2") and "armini's reference version" in out, out


# ----------------------------------------------------------------------------- the pretrained checkpoint


@pytest.mark.skipif(not pretrained.available("var"),
                    reason="data/pretrained/var.pt is not here: python -m armini pretrained train var")
def test_pretrained_checkpoint_is_the_lessons_model():
    """ARMINI_PRETRAINED=1 loads what the training cell trains: the same model, shape, levels and settings
    (the default budget's), and the cell's budget is the recipe's."""
    from armini.nn.quantize import default_scales
    from armini.tokenizers.vqvae import VQVAE

    msvq = VQVAE(image_shape=(1, 28, 28), levels=256, quantizer="msvq", codebook_size=26, scales=default_scales(7))
    lesson_model = VAR(shape=(1, 28, 28), levels=256, tokenizer=msvq, prior_kwargs=dict(dim=64, n_layers=4, n_heads=4),
                       num_classes=10)
    assert pretrained.mismatches("var", lesson_model) == []
    cell = pretrained.lesson_cell("var")
    for setting in ['armini.budget(90, 6)', 'batch_size=32, lr=2e-3']:
        assert setting in cell, setting
