"""Every model of the course, by name. Lessons, the CLI, the benchmark and the tests use MODELS.

    model = armini.models.MODELS["pixelcnn"](shape=(1, 28, 28), levels=256)
"""
from .base import ARModel, SampleStep
from .baselines import FVSBN, NADE, IndependentPixels
from .pixelcnn import PixelCNN

MODELS = {
    "independent": IndependentPixels,  # lesson 01
    "fvsbn": FVSBN,  # lesson 01
    "nade": NADE,  # lesson 01
    "pixelcnn": PixelCNN,  # lesson 02
}

__all__ = ["ARModel", "SampleStep", "MODELS", "IndependentPixels", "FVSBN", "NADE", "PixelCNN"]
