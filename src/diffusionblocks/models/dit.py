"""A small DiT (Peebles & Xie, 2023): patch tokens of the noisy image, AdaLN-Zero transformer
layers conditioned on noise level and class, and a final AdaLN layer back to pixels.

The layers are the ViT's conditioned :class:`TransformerLayer`. What a block needs around its
layers (patch embedding, class embedding, final layer) is a :class:`DiTAdapter`, one per block,
so DiffusionBlocks' blocks share no parameters at all; end to end is the same model with B = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..blocks import Adapter
from ..checks import check_at_least_one, check_numbers
from ..conditioning import AdaLNZero, modulated_linear
from .vit import SHAPE_FIELDS, TransformerLayer, patchify, unpatchify


@dataclass
class DiTConfig:
    """Backbone shape. ``image_size``, ``channels`` and ``num_classes`` are set from the data."""

    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    width: int = 96
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    class_dropout: float = 0.1

    def __post_init__(self) -> None:
        check_numbers(self)
        check_at_least_one(self, SHAPE_FIELDS)
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.width % self.heads:
            raise ValueError(f"heads {self.heads} must divide width {self.width}")
        if not 0 <= self.class_dropout < 1:
            raise ValueError(f"class_dropout must lie in [0, 1), got {self.class_dropout}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def null_class(self) -> int:
        """The label index meaning "no class" (dropped labels; the unconditional branch)."""
        return self.num_classes


def sincos_positions(grid: int, width: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings, (grid², width): half the width per axis."""
    quarter = width // 4
    freqs = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)[:, None] * freqs[None]
    axis = torch.cat([pos.sin(), pos.cos()], dim=1)  # (grid, width/2)
    rows, cols = axis[:, None].expand(grid, grid, -1), axis[None].expand(grid, grid, -1)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, -1)
    return nn.functional.pad(table, (0, width - table.shape[1])).float()


class DiTAdapter(Adapter):
    """A block's patch embedding of the noisy image, class embedding and final AdaLN layer."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        p, c = cfg.patch_size, cfg.channels
        self.embed = nn.Linear(c * p * p, cfg.width)
        self.register_buffer("pos", sincos_positions(cfg.grid, cfg.width), persistent=False)
        self.labels = nn.Embedding(cfg.num_classes + 1, cfg.width)  # + the null class
        nn.init.normal_(self.labels.weight, std=0.02)
        self.ada = AdaLNZero(cfg.width, cfg.width, chunks=2)
        self.out = nn.Linear(cfg.width, c * p * p)
        nn.init.zeros_(self.out.weight)  # a fresh block outputs F = 0: D = c_skip·z
        nn.init.zeros_(self.out.bias)

    def condition(self, x: Tensor) -> Tensor:
        return self.labels(x)

    def encode(self, x: Tensor, z_in: Tensor) -> Tensor:
        return self.embed(patchify(z_in, self.cfg.patch_size)) + self.pos

    def decode(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c)
        return unpatchify(modulated_linear(h, shift, scale, self.out), self.cfg.patch_size, self.cfg.channels)


def make_layers(cfg: DiTConfig) -> list[TransformerLayer]:
    """The DiT's ``depth`` AdaLN-Zero layers, conditioned on a ``width`` vector."""
    return [TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cond_dim=cfg.width)
            for _ in range(cfg.depth)]
