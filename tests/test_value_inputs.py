"""armini.nn.inputs: integers read by value kind; models become priors over token grids."""
import pytest
import torch

from armini import causality
from armini.models import MODELS
from armini.nn.inputs import ValueInput, to_unit_range
from helpers import class_labels


def test_ordinal_is_the_unit_range_and_has_no_parameters():
    v = ValueInput(256, 3)
    x = torch.tensor([0, 255, 128]).view(1, 3, 1, 1)
    assert torch.equal(v(x), to_unit_range(x.float(), 256))
    assert v(x)[0, :, 0, 0].tolist()[:2] == [-1.0, 1.0]
    assert v.out_channels == 3 and not list(v.parameters())
    assert v(x, torch.float64).dtype == torch.float64


def test_embedding_gives_each_channel_its_own_table_channel_major():
    v = ValueInput(5, 2, "embedding", dim=3)
    x = torch.tensor([[4, 4]]).view(1, 2, 1, 1)  # the same value in both channels
    out = v(x)  # (1, 6, 1, 1): channel 0's 3 features, then channel 1's
    assert out.shape == (1, 6, 1, 1) and v.out_channels == 6
    assert torch.equal(out[0, :3, 0, 0], v.table.weight[4])  # channel 0 reads row 4
    assert torch.equal(out[0, 3:, 0, 0], v.table.weight[5 + 4])  # channel 1 reads its own table
    with pytest.raises(ValueError, match="'ordinal' for pixel values, 'embedding' for codebook indices"):
        ValueInput(5, 1, "onehot")


EMBED = dict(input="embedding")
TOKEN_PRIORS = {  # small settings: a 7x7 grid of 512 codebook indices, read through an embedding
    "pixelcnn": dict(channels=16, n_blocks=1, head_channels=16, first_kernel=3, **EMBED),
    "gated-pixelcnn": dict(channels=8, n_layers=2, head_channels=16, first_kernel=3, **EMBED),
    "pixelcnn++": dict(nr_filters=8, nr_mix=2, n_stages=2, **EMBED),
    "pixelsnail": dict(channels=8, n_blocks=1, n_res=1, key_dim=8, value_dim=8, head_channels=8, **EMBED),
    "pixel-transformer": dict(dim=16, n_layers=2, n_heads=2, mlp_ratio=2),  # tokens are always embedded
}


@pytest.mark.parametrize("name", list(TOKEN_PRIORS))
@pytest.mark.parametrize("num_classes", [None, 10])
def test_models_train_as_class_conditional_priors_over_token_grids(name, num_classes):
    torch.manual_seed(0)
    model = MODELS[name](shape=(1, 7, 7), levels=512, num_classes=num_classes, **TOKEN_PRIORS[name])
    assert model.num_classes == num_classes
    g = torch.Generator().manual_seed(0)
    x = torch.randint(512, (16, 1, 7, 7), generator=g)
    y = class_labels(model, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it learns (the same batch, so the loss must fall)
    lp = model.conditionals(x[:2], None if y is None else y[:2])  # normalised over all 512 indices
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 1, 7, 7), atol=1e-5)
    causality.assert_causal(model) if num_classes is None else None
    if num_classes is not None:  # the label really changes the distribution
        a = model.conditionals(x[:1], torch.tensor([0]))
        b = model.conditionals(x[:1], torch.tensor([1]))
        assert not torch.allclose(a, b)
        with pytest.raises(ValueError, match="class-conditional"):
            model.loss(x)
    else:
        with pytest.raises(ValueError, match="unconditional"):
            model.loss(x, torch.zeros(16, dtype=torch.long))
    cached = model.sample(2, y=None if y is None else y[:2], generator=torch.Generator().manual_seed(3))
    naive = model.sample(2, y=None if y is None else y[:2], generator=torch.Generator().manual_seed(3), cached=False)
    assert torch.equal(cached, naive)


def test_embedding_input_keeps_colour_models_causal():
    model = MODELS["pixelcnn"](shape=(3, 4, 4), levels=8, input="embedding", embed_dim=2,
                               channels=12, n_blocks=1, head_channels=12, first_kernel=3)
    causality.assert_causal(model)
