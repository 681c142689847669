"""Greedy local learning, decoupled (Belilovsky, Eickenberg & Oyallon 2019, 2020): the ViT cut
into the same B blocks as DiffusionBlocks (``--blocks``/``--split``), each with its own
auxiliary head (LayerNorm + linear on the [CLS] token, the network's own head for the last
block) and trained by its own cross-entropy on the *detached* output of the block before.

All blocks step on every batch, one after another: block b runs forward on block b − 1's
output, its loss is back-propagated through block b alone and its optimizer steps, and only its
output (detached) goes on. So a step evaluates every layer once forward and once backward (as
end to end does), holds one block's activations at a time, and what crosses a block boundary in
training is the forward activations (batch × tokens × width), never a gradient. Inference is the
plain network: the last block's head on the whole stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import split_layers
from ..memory import activation_bytes, run_layers
from ..models.vit import ViTClassifier
from .units import PerUnit

LR = None  # trains with the end-to-end learning rate of the family


class LocalBlock(nn.Module):
    """One block's layers and its auxiliary head; the first block also owns the patch stem and
    the [CLS] token."""

    def __init__(self, layers: list[nn.Module], norm: nn.LayerNorm, head: nn.Linear,
                 stem: nn.Module | None = None, cls: nn.Parameter | None = None,
                 checkpointing: bool = False):
        super().__init__()
        self.stem, self.cls = stem, cls
        self.layers, self.norm, self.head = nn.ModuleList(layers), norm, head
        self.checkpointing = checkpointing

    def forward(self, h: Tensor, last: bool = False) -> tuple[Tensor, Tensor]:
        """(the block's output tokens, its head's logits). ``h``: images for the first block,
        the previous block's tokens otherwise; ``last``: only [CLS] is computed in the last layer."""
        if self.stem is not None:
            h = self.stem(h, self.cls.expand(h.shape[0], -1))
        h = run_layers(self.layers, h, checkpointing=self.checkpointing, queries=1 if last else None)
        return h, self.head(self.norm(h[:, 0]))


class LocalViT(nn.Module):
    """The end-to-end ViT of ``cfg`` (its layers initialised exactly as ``--mode e2e`` would from
    the same seed), cut into blocks of ``split_layers(depth, blocks, split)`` layers, blocks
    0 … B − 2 given their own head."""

    def __init__(self, vit_cfg, blocks: int, split: list[int] | None = None, checkpointing: bool = False):
        super().__init__()
        net = ViTClassifier(vit_cfg)
        self.sizes = split_layers(vit_cfg.depth, blocks, split)
        starts = [sum(self.sizes[:b]) for b in range(blocks)]
        self.blocks = nn.ModuleList()
        for b, (start, size) in enumerate(zip(starts, self.sizes)):
            last = b == blocks - 1
            norm = net.norm if last else nn.LayerNorm(vit_cfg.width, eps=1e-6)
            head = net.head if last else nn.Linear(vit_cfg.width, vit_cfg.num_classes)
            first = {"stem": net.stem, "cls": net.cls} if b == 0 else {}
            self.blocks.append(LocalBlock(list(net.layers[start : start + size]), norm, head,
                                          checkpointing=checkpointing, **first))

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def parts(self) -> dict[str, nn.Module]:
        """The blocks, each stored and optimised on its own (``block_b``)."""
        return {f"block_{b}": block for b, block in enumerate(self.blocks)}

    def heads(self, x: Tensor) -> list[Tensor]:
        """Every block's head logits on images ``x`` (the last is the prediction)."""
        h, out = x, []
        for b, block in enumerate(self.blocks):
            h, logits = block(h, last=b == self.num_blocks - 1)
            out.append(logits)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The prediction: the last block's head on the whole stack."""
        return self.heads(x)[-1]


def block_losses(model: LocalViT, x: Tensor, y: Tensor) -> list[Tensor]:
    """Each block's cross-entropy on the detached output of the block before (the graphs are
    separate: a block's loss reaches only that block's parameters)."""
    h, losses = x, []
    for b, block in enumerate(model.blocks):
        h, logits = block(h.detach(), last=b == model.num_blocks - 1)
        losses.append(F.cross_entropy(logits.float(), y))
    return losses


class LocalTrainer(PerUnit):
    """One AdamW per block; a step trains every block once, in order, on the same batch, each
    on its own loss, freeing its graph before the next block runs."""

    def __init__(self, model: LocalViT, cfg):
        parts = model.parts()
        super().__init__(model, cfg, parts)
        self.layers = sum(model.sizes)
        if cfg.compile:
            for part in parts.values():
                part.compile()

    def step(self, x: Tensor, y: Tensor, gen: torch.Generator) -> dict:
        h, losses = x, []
        last = self.model.num_blocks - 1
        for b, block in enumerate(self.model.blocks):
            with self.precision.autocast():
                h, logits = block(h.detach(), last=b == last)
                loss = F.cross_entropy(logits.float(), y)
            losses.append(self.update(f"block_{b}", block, loss))
        if self.averages:
            self.averages.update(self.optimizers)
        return {"loss": losses[-1], "block_losses": losses, "layers": self.layers}


def boundary_bytes(model: LocalViT, x: Tensor) -> int:
    """Bytes that cross block boundaries forward in one training step of batch ``x`` (each
    boundary's output tokens, as a pipeline over devices would send them); no gradient crosses."""
    total, h = 0, x
    with torch.no_grad():
        for block in model.blocks[:-1]:
            h, _ = block(h)
            total += h.numel() * h.element_size()
    return total


# The peer-method interface the classification family calls (methods.peer).

ABOUT = ("peer: greedy local learning (decoupled), the network cut into the --blocks blocks, each "
         "with its own head and cross-entropy on the detached output of the block before "
         "(activations cross forward, never gradients)")
CROSSES = "activations forward"  # between its units in training
UNITS = "layers"  # what its training evaluations count
FLAGS = frozenset({"blocks", "split"})  # the family's method flags that apply to it

def build(cfg) -> LocalViT:
    return LocalViT(cfg.vit, cfg.blocks, cfg.split, cfg.checkpointing)


def trainer(model: LocalViT, cfg) -> LocalTrainer:
    return LocalTrainer(model, cfg.optim)


def predict(model: LocalViT, x: Tensor, generator=None) -> Tensor:
    return model(x)


def activations(model: LocalViT, x: Tensor, y: Tensor) -> dict:
    """The peak a step holds: the largest block's saved activations (the blocks' graphs are
    freed one after another), each block's figure, and the bytes that cross boundaries."""
    inputs, h = [], x
    with torch.no_grad():
        for block in model.blocks[:-1]:
            inputs.append(h)
            h, _ = block(h)
    inputs.append(h)
    last = model.num_blocks - 1

    def loss(b: int) -> Tensor:
        return F.cross_entropy(model.blocks[b](inputs[b], b == last)[1], y)

    per_block = [activation_bytes(lambda b=b: loss(b), model) for b in range(model.num_blocks)]
    return {"activation_bytes_per_step": max(per_block), "activation_bytes_per_block": per_block,
            "traffic_bytes_per_step": boundary_bytes(model, x)}


def inference_layers(model: LocalViT) -> int:
    return sum(model.sizes)
