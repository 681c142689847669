"""DiffusionBlocks: train a residual network block by block, each block a denoiser for its
own range of noise levels (Shing, Koyama, Akiba, ICLR 2026)."""

from .adapters import ImageToImage, ImageToLabel, TokensToNextToken, TokensToTokens
from .blocks import Adapter, Block, DiffusionBlocks, SharedParts, TokenSpace, split_layers
from .conditioning import AdaLNZero, NoiseEmbedding
from .convert import Conditioned, conditioned
from .noise import (
    NoiseConfig,
    block_ranges,
    loss_weight,
    partition,
    sample_sigma,
    scalings,
    sigmas_equiprob,
    sigmas_karras,
)
from .sampling import initial_noise, sample_euler, sample_heun
from .training import Blockwise, EndToEnd, OptimConfig, blockwise_loss, fit

__all__ = [
    "AdaLNZero", "Adapter", "Block", "Blockwise", "Conditioned", "DiffusionBlocks", "EndToEnd",
    "ImageToImage", "ImageToLabel", "NoiseConfig", "NoiseEmbedding", "OptimConfig", "SharedParts",
    "TokenSpace", "TokensToNextToken", "TokensToTokens", "block_ranges", "blockwise_loss",
    "conditioned", "fit", "initial_noise", "loss_weight", "partition", "sample_euler",
    "sample_heun", "sample_sigma", "scalings", "sigmas_equiprob", "sigmas_karras", "split_layers",
]
__version__ = "0.1.0"
