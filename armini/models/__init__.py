"""Every model of the course, by name. Lessons, the CLI, the benchmark and the tests use MODELS.

    model = armini.models.MODELS["pixelcnn"](shape=(1, 28, 28), levels=256)
"""
from .ardm import ARDM, UpscaleARDM
from .base import ARModel, SampleStep
from .baselines import FVSBN, NADE, IndependentPixels
from .frame_predictor import FramePredictor
from .gated_pixelcnn import GatedPixelCNN
from .lmconv import LMConv
from .pixelcnn import PixelCNN
from .pixelcnnpp import PixelCNNpp
from .pixelrnn import DiagonalBiLSTM, RowLSTM
from .pixelsnail import PixelSNAIL
from .pmard import PMARD
from .token_ar import TwoStage
from .transformer import PixelTransformer
from .var import VAR
from .videogpt import VideoGPT
from .vpn import VPN

MODELS = {
    "independent": IndependentPixels,  # lesson 01
    "fvsbn": FVSBN,  # lesson 01
    "nade": NADE,  # lesson 01
    "pixelcnn": PixelCNN,  # lesson 02
    "row-lstm": RowLSTM,  # lesson 03
    "diagonal-bilstm": DiagonalBiLSTM,  # lesson 03
    "gated-pixelcnn": GatedPixelCNN,  # lesson 04
    "pixelcnn++": PixelCNNpp,  # lesson 05
    "pixelsnail": PixelSNAIL,  # lesson 06
    "pixel-transformer": PixelTransformer,  # lesson 07
    "lmconv": LMConv,  # lesson 09
    "ardm": ARDM,  # lesson 10
    "upscale-ardm": UpscaleARDM,  # lesson 10
    "vq-transformer": TwoStage,  # lesson 12: a VQ-VAE and a transformer prior over its tokens
    "pmard": PMARD,  # lesson 14: a base raster model, then groups of pixels per doubling
    "var": VAR,  # lesson 15: a multi-scale residual tokenizer and a next-scale prior (one step per scale)
    "vpn": VPN,  # lesson 16: Video Pixel Network (video: shape (T, C, H, W))
    "frame-predictor": FramePredictor,  # lesson 17: next frame from the past, complementary mask (video)
    "videogpt": VideoGPT,  # lesson 18: a 3D VQ-VAE and a GPT over its (T', h, w) tokens (video)
}

__all__ = ["ARModel", "SampleStep", "MODELS", "IndependentPixels", "FVSBN", "NADE", "PixelCNN", "GatedPixelCNN", "RowLSTM",
           "DiagonalBiLSTM", "PixelCNNpp", "PixelSNAIL", "PixelTransformer", "LMConv", "ARDM", "UpscaleARDM", "TwoStage",
           "PMARD", "VAR", "VPN", "FramePredictor", "VideoGPT"]
