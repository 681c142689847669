"""DiffusionBlocks: the family's B blocks, each a denoiser of its own noise range, trained alone.

Unit: one block (its share of the layers, its σ-range); a step trains one uniformly drawn block
with the family's denoising loss (:class:`~..training.Blockwise`). Budget: equal layer
evaluations to end to end (``match = "layers"``: B× the steps and the warm-up; ``"steps"``: the
same count), of which a block job or a parallel rank takes its blocks' share. Nothing crosses
between blocks in training but a co-trained label table's gradients. Inference: the family's
chain, one call per block.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..training import Blockwise, Method, block_share, matched_budget
from .family import Family

ABOUT = "DiffusionBlocks: B blocks, each a denoiser of its own noise range, trained alone"


def method(family: Family, cfg, model: nn.Module, blocks: list[int] | None = None,
           offload_dir: str | Path | None = None) -> Method:
    """Train ``model``'s blocks (``blocks``: these only, with their share of the budget)."""
    num_blocks = model.num_blocks
    total, warmup = block_share(*matched_budget(cfg.steps, cfg.optim.warmup, num_blocks, cfg.match),
                                blocks, num_blocks)
    loss = family.block_loss(cfg) if family.block_loss else None
    strategy = Blockwise(model, cfg.optim, blocks, offload=getattr(cfg, "offload", None),
                         offload_dir=offload_dir, loss=loss)
    return Method(strategy, total, warmup)
