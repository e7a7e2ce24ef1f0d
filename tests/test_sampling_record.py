"""armini.sampling_record: partial images replayed from what each step wrote."""
import torch

from armini.models import MODELS
from armini.sampling_record import SamplingRecord


def test_partial_images_are_what_the_sampler_held():
    """For a one-fill model (PixelCNN) every partial image equals the sampler's canvas after that step."""
    torch.manual_seed(0)
    model = MODELS["pixelcnn"](shape=(1, 3, 3), levels=4)
    seen = []
    rec = SamplingRecord.run(model, 2, generator=torch.Generator().manual_seed(0),
                             callback=lambda step: seen.append(step.x.clone()))
    assert rec.steps == 9
    for t, canvas in enumerate(seen):
        assert torch.equal(rec.partial(t), canvas)
    assert torch.equal(rec.partial(8), rec.final)


def test_a_dimension_filled_twice_shows_each_value_while_it_held():
    """Depth upscaling writes every pixel twice (a coarse value, then the exact one). Old code: every
    step's partial image was cut from the final image, so the whole first stage showed blank images."""
    torch.manual_seed(0)
    model = MODELS["upscale-ardm"](shape=(1, 3, 3), levels=4, channels=8)
    seen = []
    rec = SamplingRecord.run(model, 2, generator=torch.Generator().manual_seed(0),
                             callback=lambda step: seen.append(step.x.clone()))
    assert rec.steps == len(seen) > 9  # both stages
    for t, canvas in enumerate(seen):
        assert torch.equal(rec.partial(t), canvas), t
    assert rec.partial(rec.steps - 1).equal(rec.final)
    assert int((rec.step_of >= 0).sum()) == 2 * 9 and int(rec.step_of.max()) < 9  # first fills: stage 1


def test_a_videos_given_frames_are_recorded_as_given_not_sampled():
    """SamplingRecord.run(..., context=first_frames) (a video model) marks the given frames as observed
    (step_of -1), as observed= does for an image; the generated frames get the steps that drew them."""
    from tests.test_contract import PreviousFrame

    model = PreviousFrame((3, 1, 2, 2), levels=3)
    context = torch.tensor([[[[1, 2], [0, 1]]]])  # (k=1, C, H, W): the first frame of every video
    record = SamplingRecord.run(model, 2, context=context, generator=torch.Generator().manual_seed(0))
    given = record.step_of.view(2, 3, 1, 2, 2)[:, 0]  # (n, C, H, W): frame 0
    assert bool((given == -1).all()), "the given frame must count as observed, not sampled"
    assert bool((record.step_of.view(2, 3, 4)[:, 1:] >= 0).all())
    assert torch.equal(record.final[:, 0], context.expand(2, 1, 2, 2))
