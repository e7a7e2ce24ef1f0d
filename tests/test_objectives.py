"""Tests for fit's pluggable objective: several parameter groups with their own optimizers and losses
(a generator and a discriminator), stochastic losses that resume exactly, and models holding a tokenizer."""
import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn

import armini
from armini import models, train
from armini.models import ARModel, IndependentPixels, PixelCNN
from armini.nn.palette import Palette

SHAPE, K = (1, 6, 6), 4
D = math.prod(SHAPE)
FAST = dict(device="cpu", progress=False)


def images(n=48, seed=0):
    return torch.randint(0, K, (n, *SHAPE), generator=torch.Generator().manual_seed(seed))


def same_params(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ----------------------------------------------------------------------------- two groups, two losses


class WithCritic(ARModel):
    """A toy GAN-like model: a small PixelCNN (the generator) and a linear critic that scores images."""

    def __init__(self, shape=SHAPE, levels=K):
        super().__init__(shape, levels)
        self.generator = PixelCNN(shape=shape, levels=levels, channels=8, n_blocks=1, head_channels=8)
        self.critic = nn.Linear(D, 1)

    def conditionals(self, x, y=None):
        return self.generator.conditionals(x, y)


def with_critic(seed=0):
    armini.seed_everything(seed)
    return WithCritic()


def adversarial(model, x, y):
    """Generator: bits/dim minus the critic's score of its expected image; critic: score real above expected.

    Stochastic, like ARDM's random t: a random part of the batch counts. Nothing is detached: each loss
    must move only its own group all the same."""
    keep = torch.rand(len(x), device=x.device) < 0.7  # from torch's global RNG, which checkpoints hold
    keep[0] = True
    lp = model.conditionals(x)  # (B, C, H, W, K) log-probabilities
    expected = (lp.exp() * torch.arange(K, device=x.device)).sum(-1).flatten(1) / (K - 1)  # (B, D) in [0, 1]
    real = x.flatten(1).float() / (K - 1)  # (B, D)
    nll = -lp.gather(-1, x.unsqueeze(-1)).mean() / math.log(2)
    fake_score, real_score = model.critic(expected[keep]).mean(), model.critic(real[keep]).mean()
    return {"generator": nll - 0.1 * fake_score, "discriminator": fake_score - real_score}


GROUPS = dict(param_groups=lambda m: {"generator": m.generator, "discriminator": m.critic})


def test_group_steps_move_each_group_by_its_own_loss_only():
    a, b = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0, -1.0]))
    losses = {"a": (a * b).sum(), "b": 3 * (a * b).sum()}  # both losses depend on both groups
    sgd = {"a": torch.optim.SGD([a], lr=1.0), "b": torch.optim.SGD([b], lr=1.0)}
    a0, b0 = a.detach().clone(), b.detach().clone()
    train.group_steps(losses, {"a": [a], "b": [b]}, sgd, torch.amp.GradScaler("cpu", enabled=False), clip=None)
    assert torch.equal(a.detach(), a0 - b0)  # d loss_a / d a = b: no stale gradient from loss_b
    assert torch.equal(b.detach(), b0 - 3 * a0)  # d loss_b / d b = 3a, taken before a moved
    assert a.grad is None and b.grad is None


def test_two_groups_with_a_stochastic_loss_resume_exactly(tmp_path):
    x = images(50)  # not a multiple of the batch size: epochs end with a reshuffle
    kw = dict(batch_size=16, lr_schedule="constant", warmup=2, loss_fn=adversarial, **GROUPS, **FAST)
    straight = with_critic(0)
    torch.manual_seed(1)
    hist = train.fit(straight, x, steps=12, **kw)

    path = tmp_path / "model.pt"
    first = with_critic(0)
    torch.manual_seed(1)
    train.fit(first, x, steps=6, checkpoint=path, checkpoint_every=4, **kw)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt["optimizer"]) == set(ckpt["scheduler"]) == {"generator", "discriminator"}
    assert ckpt["fit_args"]["param_groups"] == ["generator", "discriminator"]

    torch.manual_seed(12345)  # another global RNG state and other weights: the checkpoint restores both
    resumed = with_critic(7)
    resumed_hist = train.fit(resumed, x, steps=12, checkpoint=path, resume=True, **kw)
    assert same_params(resumed, straight)
    assert resumed_hist.train_losses == hist.train_losses and resumed_hist.train == hist.train
    step, losses = hist.train_losses[-1]
    assert step == 12 and list(losses) == ["generator", "discriminator"]
    assert hist.train[-1] == (12, losses["generator"] + losses["discriminator"])
    hist.plot()  # one curve per loss


def test_parameters_in_no_group_are_not_trained():
    """The generator's loss goes through the critic, yet a critic in no group (a frozen part) never moves."""
    model = with_critic()
    critic = [p.detach().clone() for p in model.critic.parameters()]
    generator = [p.detach().clone() for p in model.generator.parameters()]
    only_generator = lambda m, x, y: {"generator": adversarial(m, x, y)["generator"]}  # noqa: E731
    train.fit(model, images(), steps=3, batch_size=16, loss_fn=only_generator,
              param_groups={"generator": model.generator}, **FAST)
    assert all(torch.equal(p, q) for p, q in zip(model.critic.parameters(), critic))
    assert not all(torch.equal(p, q) for p, q in zip(model.generator.parameters(), generator))
    assert all(p.grad is None for p in model.parameters())  # no stale gradient left in the critic either


def test_one_named_group_trains_exactly_like_the_default():
    x = images()
    plain = with_critic()
    train.fit(plain, x, steps=4, batch_size=16, **FAST)
    grouped = with_critic()
    train.fit(grouped, x, steps=4, batch_size=16, param_groups={"all": list(grouped.parameters())},
              loss_fn=lambda m, x, y: {"all": m.loss(x, y)}, **FAST)
    assert same_params(plain, grouped)


@pytest.mark.parametrize("loss_fn, message", [
    (lambda m, x, y: adversarial(m, x, y)["generator"],
     r"one scalar loss per group, \{'generator': loss, 'discriminator': loss\}; got Tensor"),
    (lambda m, x, y: {"generator": m.loss(x)},
     r"one scalar loss per group.*got a dict with keys \['generator'\]"),
    (lambda m, x, y: {"generator": m.loss(x), "discriminator": m.log_prob(x)},
     r"loss_fn's 'discriminator' loss must be a scalar tensor \(the loss to minimise\), got Tensor \(16,\)"),
])
def test_a_wrong_loss_for_the_groups_is_named(loss_fn, message):
    model = with_critic()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=message):
        train.fit(model, images(), steps=2, batch_size=16, loss_fn=loss_fn, **GROUPS, **FAST)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # no step was taken


def test_a_dict_of_losses_without_groups_says_to_pass_param_groups():
    with pytest.raises(TypeError, match=r"with one optimizer it must return a scalar tensor.*pass param_groups="):
        train.fit(with_critic(), images(), steps=2, batch_size=16, loss_fn=adversarial, **FAST)


def test_a_diverging_group_is_named(tmp_path):
    def broken_critic(model, x, y):
        return {**adversarial(model, x, y), "discriminator": torch.tensor(float("nan"))}

    with pytest.raises(FloatingPointError, match=r"the training loss is nan \('discriminator'\)"):
        train.fit(with_critic(), images(), steps=2, batch_size=16, loss_fn=broken_critic,
                  checkpoint=tmp_path / "m.pt", **GROUPS, **FAST)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("groups, error, message", [
    ({}, TypeError, "param_groups must be a non-empty dict name -> parameters"),
    ([torch.nn.Parameter(torch.zeros(1))], TypeError, "got list"),
    (lambda m: {"generator": m.generator, "everything": m}, ValueError,
     r"a parameter is in both param_groups\['generator'\] and param_groups\['everything'\]"),
    ({"extra": [torch.nn.Parameter(torch.zeros(1))]}, ValueError,
     r"param_groups\['extra'\] holds a Parameter that is not a parameter of the model"),
    (lambda m: {"critic": [p.detach() for p in m.critic.parameters()]}, ValueError,
     r"param_groups\['critic'\] holds no trainable parameter"),
])
def test_bad_param_groups_are_refused_before_any_step(groups, error, message):
    with pytest.raises(error, match=message):
        train.fit(with_critic(), images(), steps=2, batch_size=16, loss_fn=adversarial, param_groups=groups, **FAST)


def test_resume_refuses_other_param_groups(tmp_path):
    path = tmp_path / "model.pt"
    train.fit(with_critic(), images(), steps=2, batch_size=16, loss_fn=adversarial, checkpoint=path, **GROUPS, **FAST)
    with pytest.raises(ValueError, match=r"param_groups \['generator', 'discriminator'\] -> None"):
        train.fit(with_critic(), images(), steps=4, batch_size=16, checkpoint=path, resume=True, **FAST)


# ----------------------------------------------------------------------------- a stochastic loss, one group


def random_t_bits(model, x, y):
    """An ARDM-style stochastic estimate: a random number t of dimensions counts, scaled to all D."""
    lp = model.log_prob_pixels(x, y).flatten(1)  # (B, D) in nats
    t = torch.randint(1, D + 1, (len(x), 1), device=x.device)  # from torch's global RNG
    counted = torch.rand(lp.shape, device=x.device).argsort(1) < t  # (B, D): t random dimensions per image
    return -(lp * counted).sum(1).div(t.squeeze(1)).mean() / math.log(2)


def test_a_stochastic_loss_resumes_exactly_because_the_global_rng_is_checkpointed(tmp_path):
    x = images(40)
    model = PixelCNN(shape=SHAPE, levels=K, channels=8, n_blocks=1, head_channels=8)
    assert random_t_bits(model, x[:8], None) != random_t_bits(model, x[:8], None)  # it does draw

    def pixelcnn(seed):
        armini.seed_everything(seed)
        return PixelCNN(shape=SHAPE, levels=K, channels=8, n_blocks=1, head_channels=8)

    kw = dict(steps=10, batch_size=16, loss_fn=random_t_bits, **FAST)
    straight = pixelcnn(0)
    torch.manual_seed(1)
    train.fit(straight, x, **kw)
    path = tmp_path / "model.pt"
    first = pixelcnn(0)
    torch.manual_seed(1)
    train.fit(first, x, stop_after=5, checkpoint=path, **kw)
    torch.manual_seed(999)
    resumed = pixelcnn(3)
    train.fit(resumed, x, checkpoint=path, resume=True, **kw)
    assert same_params(resumed, straight)


# ----------------------------------------------------------------------------- a model holding a tokenizer

RGB, LEVELS = (3, 4, 4), 8


class TokenPrior(ARModel):
    """A toy two-stage model: lesson 07's palette tokenizer and a prior over its codes (a table per position).

    Its config holds the tokenizer's settings as a nested dict; its state_dict the palette's centres."""

    nll_is_bound = True

    def __init__(self, shape=RGB, levels=LEVELS, tokenizer=None):
        super().__init__(shape, levels)
        self.config = {"tokenizer": {"n_colors": 4, **(tokenizer or {})}}
        n_colors = self.config["tokenizer"]["n_colors"]
        self.tokenizer = Palette(torch.zeros(n_colors, 3), levels)  # centres: Palette.fit, or the state_dict
        self.prior = IndependentPixels(shape=(1, *shape[1:]), levels=n_colors)

    def nll_bits(self, x, y=None, **kwargs):
        return self.prior.nll_bits(self.tokenizer.encode(x))


def token_bits(model, x, y):
    return model.prior.loss(model.tokenizer.encode(x))


def test_a_model_holding_a_tokenizer_saves_and_loads(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "token-prior", TokenPrior)
    x = torch.randint(0, LEVELS, (32, *RGB), generator=torch.Generator().manual_seed(0))
    armini.seed_everything(0)
    model = TokenPrior(tokenizer={"n_colors": 5})
    model.tokenizer.centres.copy_(Palette.fit(x, n_colors=5, levels=LEVELS).centres)
    path = tmp_path / "model.pt"
    hist = train.fit(model, x, x[:8], steps=3, batch_size=8, lr=0.1, loss_fn=token_bits, checkpoint=path, **FAST)
    assert hist.unit == "bits/dim (bound)"

    loaded, info = train.load_checkpoint(path, device="cpu")
    assert type(loaded) is TokenPrior and info["model_kwargs"]["tokenizer"] == {"n_colors": 5}
    assert {"tokenizer.centres", "prior.logits"} <= set(torch.load(path, weights_only=True)["model"])
    assert same_params(loaded, model)
    model.eval()
    assert torch.equal(loaded.tokenizer.encode(x), model.tokenizer.encode(x))
    assert torch.equal(loaded.nll_bits(x), model.nll_bits(x))
    again = TokenPrior(tokenizer={"n_colors": 5})
    assert train.fit(again, x, steps=5, batch_size=8, lr=0.1, loss_fn=token_bits, checkpoint=path, resume=True,
                     **FAST).steps == 5


@dataclass
class _TokenizerConfig:
    n_colors: int = 4
    sizes: tuple = (2, 2)


@dataclass
class _PriorConfig:
    width: int = 8
    tokenizer: _TokenizerConfig = field(default_factory=_TokenizerConfig)


def test_a_nested_dataclass_config_is_stored_as_plain_dicts():
    model = PixelCNN(shape=SHAPE, levels=K, channels=8, n_blocks=1, head_channels=8)
    model.config = _PriorConfig()
    kwargs = train.model_kwargs(model)
    assert kwargs["tokenizer"] == {"n_colors": 4, "sizes": (2, 2)} and kwargs["width"] == 8


# ----------------------------------------------------------------------------- mixed precision, older checkpoints


def test_two_groups_through_the_mixed_precision_code_path(tmp_path, monkeypatch):
    """One GradScaler for both optimizers (scale each loss, unscale and step each, update once), as on
    CUDA with float16, exercised with CPU autocast and an enabled CPU GradScaler; its state is saved."""
    monkeypatch.setattr(train, "_amp_setup", lambda dev, amp: (torch.bfloat16, torch.amp.GradScaler("cpu")))
    path = tmp_path / "model.pt"
    model = with_critic()
    critic = [p.detach().clone() for p in model.critic.parameters()]
    hist = train.fit(model, images(), steps=3, batch_size=16, loss_fn=adversarial, checkpoint=path, **GROUPS, **FAST)
    assert hist.steps == 3 and all(math.isfinite(v) for _, losses in hist.train_losses for v in losses.values())
    assert not all(torch.equal(p, q) for p, q in zip(model.critic.parameters(), critic))
    assert torch.load(path, weights_only=True)["scaler"]["scale"] > 0
    assert train.fit(with_critic(), images(), steps=5, batch_size=16, loss_fn=adversarial, checkpoint=path,
                     resume=True, **GROUPS, **FAST).steps == 5


def test_a_checkpoint_saved_before_param_groups_existed_resumes(tmp_path):
    """Single-optimizer checkpoints keep their layout (one optimizer state, one scheduler state), and
    one without the param_groups setting reads as param_groups=None."""
    path = tmp_path / "model.pt"
    train.fit(with_critic(), images(), steps=2, batch_size=16, checkpoint=path, **FAST)
    ckpt = torch.load(path, weights_only=True)
    assert "state" in ckpt["optimizer"] and "last_epoch" in ckpt["scheduler"]
    del ckpt["fit_args"]["param_groups"]  # as an older armini saved it
    torch.save(ckpt, path)
    assert train.fit(with_critic(), images(), steps=4, batch_size=16, checkpoint=path, resume=True, **FAST).steps == 4
    with pytest.raises(ValueError, match=r"param_groups None -> \['generator', 'discriminator'\]"):
        train.fit(with_critic(), images(), steps=6, batch_size=16, loss_fn=adversarial, checkpoint=path, resume=True,
                  **GROUPS, **FAST)
