"""End to end: plain backprop through all L layers, the row every method is measured against.

Unit: the whole network, trained with the family's loss for ``cfg.steps`` steps. A family whose
end-to-end network is one denoiser over the whole noise range (image generation, masked
diffusion: ``Family.loss`` is None) trains it as DiffusionBlocks with one block. Gradients cross
every layer; there is one unit.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..training import EndToEnd, Method
from . import dblocks
from .family import Family, depth_of

ABOUT = "plain backprop through the whole network"


def method(family: Family, cfg, model: nn.Module, blocks: list[int] | None = None,
           offload_dir: str | Path | None = None) -> Method:
    """Train ``model`` whole (``blocks``: a one-block denoiser's only block, or None)."""
    if family.loss is None:  # one block over the whole noise range
        return dblocks.method(family, cfg, model, blocks, offload_dir)
    return Method(EndToEnd(model, family.loss, cfg.optim, depth_of(family, cfg)), cfg.steps, cfg.optim.warmup)
