"""PMARD (armini/models/pmard.py): the group factorisation is a normalised, causal model in its group
order, sampling follows sampling_steps (55 steps for 28x28), the cached sampler draws what the naive one
draws, per-group bits add up to the loss, and a config that cannot work says why.

The generic contract tests of tests/test_models.py also run on MODELS["pmard"]."""
import math

import pytest
import torch

from armini import train
from armini.causality import check_causality, step_rank
from armini.models import MODELS
from armini.models.pmard import PMARD, max_doublings
from helpers import all_images, train_a_little


def pmard(shape=(1, 8, 8), levels=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    small = {"channels": 8, "n_blocks": 1, "base_kwargs": {"channels": 8, "n_layers": 2, "head_channels": 8}}
    return PMARD(shape=shape, levels=levels, **{**small, **kwargs})


class LeakyPMARD(PMARD):
    """A PMARD whose group g reads its own pixels instead of the coarser image (the input stacks the offset
    being predicted: a classic leak). The inspector and the normalisation sum must catch it."""

    def known_offsets(self, g):
        return self.group_offsets[g][:1] + super().known_offsets(g)[1:]


# ----------------------------------------------------------------------------- the group order
def test_28x28_samples_in_55_steps_base_pixels_then_groups():
    m = MODELS["pmard"](shape=(1, 28, 28), levels=256)
    steps = m.sampling_steps()
    assert m.doublings == 2 and m.base.shape == (1, 7, 7)
    assert len(steps) == 49 + 2 * 3 == 55
    assert [len(s) for s in steps] == [1] * 49 + [49] * 3 + [196] * 3
    rank = step_rank(m)[0]  # (28, 28) the step of each pixel
    i, j = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    assert bool((rank[::4, ::4] < 49).all())  # x_0: every 4th row and column, one pixel a step
    assert torch.equal(rank[::4, ::4].flatten(), torch.arange(49))  # in raster order within x_0
    # level 1 (x_1 = every 2nd row and column): (0,1), (1,0), (1,1) of each block of x_1; then level 2
    assert bool((rank[(i % 4 == 0) & (j % 4 == 2)] == 49).all()) and bool((rank[(i % 4 == 2) & (j % 4 == 0)] == 50).all())
    assert bool((rank[(i % 4 == 2) & (j % 4 == 2)] == 51).all())
    assert bool((rank[(i % 2 == 0) & (j % 2 == 1)] == 52).all()) and bool((rank[(i % 2 == 1) & (j % 2 == 0)] == 53).all())
    assert bool((rank[(i % 2 == 1) & (j % 2 == 1)] == 54).all())
    assert torch.equal(m.generation_order(), torch.cat(steps))
    assert len(MODELS["pmard"](shape=(1, 28, 28), levels=256, groups=1).sampling_steps()) == 49 + 2


def test_doublings_follow_the_size():
    assert [max_doublings(H, W) for H, W in [(28, 28), (6, 6), (4, 4), (1, 1), (7, 7), (8, 4)]] == [2, 1, 2, 0, 0, 2]
    m = pmard((1, 4, 4), doublings=1)
    assert m.base.shape == (1, 2, 2) and len(m.sampling_steps()) == 4 + 3
    assert len(pmard((1, 3, 3)).sampling_steps()) == 9  # no doubling: the base model alone


def test_sampling_follows_sampling_steps():
    m = pmard((2, 8, 8), levels=3)
    seen = []
    out = m.sample(2, generator=torch.Generator().manual_seed(0), callback=lambda s: seen.append(s.index.clone()))
    steps = m.sampling_steps()
    assert len(seen) == len(steps) == 2 + 3 * 3  # 8 -> 4 -> 2 -> 1: a 1x1 base (2 channels), 3 doublings
    assert all(torch.equal(a, b) for a, b in zip(seen, steps))
    assert out.shape == (2, 2, 8, 8)


# ----------------------------------------------------------------------------- a valid model
@pytest.mark.parametrize("kwargs", [{}, {"doublings": 1}, {"groups": 1}], ids=["base-1x1", "base-2x2", "one-group"])
def test_probabilities_of_all_images_sum_to_one(kwargs):
    """sum over all 2^16 binary 4x4 images of p(x) = 1: true only if the group factorisation is normalised AND causal."""
    m = pmard((1, 4, 4), levels=2, **kwargs)
    x = all_images((1, 4, 4), 2)  # (65536, 1, 4, 4)
    for trained in (False, True):
        with torch.no_grad():
            total = torch.logsumexp(m.log_prob(x).double(), 0).exp()
        assert total.item() == pytest.approx(1.0, abs=1e-4), f"trained={trained}"
        train_a_little(m)


def test_a_group_that_reads_itself_is_not_normalised():
    m = LeakyPMARD(shape=(1, 4, 4), levels=2, channels=8, n_blocks=1, base_kwargs={"channels": 8, "n_layers": 2})
    train_a_little(m)
    with torch.no_grad():
        total = torch.logsumexp(m.log_prob(all_images((1, 4, 4), 2)).double(), 0).exp()
    assert abs(total.item() - 1.0) > 1e-3


@pytest.mark.parametrize("shape,kwargs", [((1, 8, 8), {}), ((1, 8, 8), {"groups": 1}), ((3, 4, 4), {})],
                         ids=["gray", "one-group", "rgb"])
def test_causal_in_group_order(shape, kwargs):
    m = train_a_little(pmard(shape, levels=4, **kwargs))
    report = check_causality(m)
    assert report.ok, report
    leaky = train_a_little(LeakyPMARD(shape=shape, levels=4, channels=8, n_blocks=1, **kwargs,
                                      base_kwargs={"channels": 8, "n_layers": 2}))
    assert not check_causality(leaky).ok


def test_a_group_sees_the_coarser_image_and_earlier_groups():
    """The last group of the last doubling, offset (1, 1), sees pixels of x_(L-1) and of both earlier groups."""
    m = train_a_little(pmard((1, 8, 8), levels=4))
    report = check_causality(m)
    seen, rank = report.context((0, 7, 7))[0], report.rank[0]  # (8, 8) each
    assert bool(seen[6, 6]) and bool(seen[6, 7]) and bool(seen[7, 6])  # (0,0), (0,1), (1,0) of its block
    assert not bool(seen[7, 5]) and int(rank[7, 5]) == int(rank[7, 7])  # its own group: independent


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 4), (1, 7, 7)], ids=["gray", "rgb", "no-doubling"])
def test_cached_sampler_draws_what_the_naive_one_draws(shape):
    # 7x7 cannot be halved: the base is all of x, and its canvas must still be a copy (it was x itself, written twice)
    m = train_a_little(pmard(shape, levels=5))
    probs = {}
    for cached in (True, False):
        steps = []
        out = m.sample(3, generator=torch.Generator().manual_seed(1), cached=cached,
                       callback=lambda s: steps.append(s.probs.clone()))
        probs[cached] = (out, steps)
    assert torch.equal(probs[True][0], probs[False][0])
    for a, b in zip(probs[True][1], probs[False][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cached_completion_keeps_the_observed_pixels():
    m = train_a_little(pmard((1, 8, 8), levels=5))
    x = torch.randint(5, (2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    observed = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    observed[..., ::2, ::2] = True  # x_(L-1) given: the last doubling is super-resolution
    outs = [m.sample(2, x=x, observed=observed, cached=c, generator=torch.Generator().manual_seed(0)) for c in (True, False)]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][..., ::2, ::2], x[..., ::2, ::2])


# ----------------------------------------------------------------------------- measuring
def test_group_bits_add_up_to_the_loss():
    m = train_a_little(pmard((1, 8, 8), levels=4))
    x = torch.randint(4, (6, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    parts = m.group_bits(x)
    sizes = [1] + [len(s) for s in m.sampling_steps()[1:]]  # base 1x1, then the groups
    assert list(parts)[0] == "base" and len(parts) == 1 + 3 * 3
    total = sum(bits * n for bits, n in zip(parts.values(), sizes)) / m.dims
    assert total == pytest.approx(m.loss(x).item(), rel=1e-5)


def test_checkpoint_rebuilds_the_same_model(tmp_path):
    m = pmard((1, 8, 8), levels=4)
    x = torch.randint(4, (32, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    train.fit(m, x, steps=2, batch_size=8, checkpoint=tmp_path / "pmard.pt", progress=False)
    back, info = train.load_checkpoint(tmp_path / "pmard.pt", device="cpu")
    assert info["model_name"] == "pmard" and back.config.base_kwargs == m.config.base_kwargs
    torch.testing.assert_close(back.log_prob(x[:4]), m.eval().log_prob(x[:4]))


# ----------------------------------------------------------------------------- bad config
@pytest.mark.parametrize("kwargs,match", [
    ({"doublings": 3}, "divisible by 8.*at most 2"),
    ({"doublings": -1}, "doublings must be a whole number"),
    ({"doublings": 1.5}, "doublings must be a whole number"),
    ({"groups": 2}, "groups must be one of"),
    ({"base": "no-such-model"}, "base must be the MODELS name"),
    ({"base": "ardm"}, "fixed-order model"),
    ({"base": "vq-transformer"}, "fixed-order model"),
    ({"base": "pmard"}, "fixed-order model"),
    ({"base_kwargs": {"num_classes": 10}}, "unconditional"),
    ({"channels": 0}, "channels must be at least 1"),
    ({"kernel": 2}, "kernel must be odd"),
])
def test_a_config_that_cannot_work_says_why(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MODELS["pmard"](shape=(1, 28, 28), levels=256, **kwargs)


def test_an_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="no_such_option"):
        MODELS["pmard"](shape=(1, 8, 8), levels=4, no_such_option=1)
    with pytest.raises(ValueError, match="fixed order"):
        pmard().sample(1, order=torch.arange(64))


def test_bits_per_dim_is_finite_and_the_base_is_trained_with_the_rest():
    m = pmard((1, 8, 8), levels=4)
    before = [p.detach().clone() for p in m.base.parameters()]
    train_a_little(m)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.base.parameters()))
    assert math.isfinite(m.loss(torch.zeros(2, 1, 8, 8, dtype=torch.long)).item())
