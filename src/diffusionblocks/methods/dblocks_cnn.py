"""DiffusionBlocks on NoProp's CNN (the DiffusionBlocks paper's comparison with NoProp-DT, its
Table 6): B blocks, each NoProp's block network made a denoiser of its own noise range, trained
alone with the classification family's score-matching loss, read by the same Euler chain.

A block is the paper's NoProp block with noise-level conditioning: the image path and the label
path (:func:`.noprop.image_path`, :func:`.noprop.label_path`; its input is the c_in-scaled noisy
label embedding) joined into one token by the block's :class:`CNNAdapter`, then the joined
(FC, BN, ReLU) × 2 as the block's one layer (:class:`Joined`), with the embedding of the noise
level added after its first FC, and a linear read-out F into the label space. Everything else is
the core's DiffusionBlocks: EDM preconditioning D = c_skip·z + c_out·F, each block's σ drawn from
its own range of the partition (overlap γ), the label table shared and frozen by default, so
nothing crosses between blocks in training; each step trains one uniformly drawn block
(``training.Blockwise``). The family's DiffusionBlocks inference applies unchanged, since the
model is a :class:`~..blocks.DiffusionBlocks`: the chain over the σ grid, greedy by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import Adapter, DiffusionBlocks, TokenSpace
from ..training import Blockwise, blockwise_activation_bytes, matched_budget
from .noprop import image_path, label_path

WIDTH = 256  # NoProp's block width
COND = 128  # the noise embedding's width
LR = 1e-4  # the DiffusionBlocks paper's AdamW rate on this architecture


class CNNAdapter(Adapter):
    """A block's way in and out: NoProp's image path and label path, joined as one token, and a
    linear read-out of the joined path's last features into the label space."""

    def __init__(self, channels: int, size: int, embed: int, width: int = WIDTH):
        super().__init__()
        self.image = image_path(channels, size, width)
        self.label_in, self.label_skip = label_path(embed, width)
        self.read_out = nn.Linear(width // 2, embed)

    def encode(self, x: Tensor, z_in: Tensor) -> Tensor:
        h = self.label_in(z_in)
        return torch.cat([self.image(x), h + self.label_skip(h)], 1)[:, None]  # one token

    def decode(self, h: Tensor, c: Tensor) -> Tensor:
        return self.read_out(h[:, 0])


class Joined(nn.Module):
    """NoProp's joined path, (FC, BN, ReLU) × 2, with the noise level's embedding ``c`` added
    after the first FC (the block's noise conditioning)."""

    def __init__(self, width: int = WIDTH, cond_dim: int = COND):
        super().__init__()
        self.fc1, self.noise = nn.Linear(2 * width, width), nn.Linear(cond_dim, width)
        self.bn1, self.fc2 = nn.BatchNorm1d(width), nn.Linear(width, width // 2)
        self.bn2 = nn.BatchNorm1d(width // 2)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.fc1(h[:, 0]) + self.noise(c)))
        return F.relu(self.bn2(self.fc2(h)))[:, None]


# The peer-method interface the classification family calls (methods.peer).

ABOUT = ("DiffusionBlocks on NoProp's CNN (the paper's comparison with NoProp-DT): B blocks, each "
         "NoProp's block network conditioned on the noise level, trained alone; read by the same "
         "chain (its recipe: configs/cpu/dblocks_cnn_mnist.toml)")
CROSSES = "nothing (the label table frozen; co-trained: its gradients)"  # between its units in training
UNITS = "CNN blocks"  # what its training evaluations count
# the family's method flags that apply to it ("noise": every noise flag)
FLAGS = frozenset({"blocks", "shared_policy", "sampler", "decode", "readout", "grid", "sample_steps",
                   "noise"})


def build(cfg) -> DiffusionBlocks:
    """B = ``cfg.blocks`` NoProp CNN denoisers over ``cfg.noise``'s partition, the label table of
    ``cfg.vit.width`` dimensions shared (``cfg.shared_policy``)."""
    vit = cfg.vit
    shared = TokenSpace(vit.num_classes, vit.width)
    def adapter() -> CNNAdapter:
        return CNNAdapter(vit.channels, vit.image_size, vit.width)

    return DiffusionBlocks([Joined() for _ in range(cfg.blocks)], shared, adapter, cfg.blocks, cond_dim=COND,
                           noise=cfg.noise, shared_policy=cfg.shared_policy, checkpointing=cfg.checkpointing)


def trainer(model: DiffusionBlocks, cfg) -> Blockwise:
    return Blockwise(model, cfg.optim)


def budget(cfg) -> tuple[int, int]:
    """Total and warm-up steps: B× end to end's, as the family's DiffusionBlocks has (each step
    trains one block; ``cfg.match``)."""
    return matched_budget(cfg.steps, cfg.optim.warmup, cfg.blocks, cfg.match)


def activations(model: DiffusionBlocks, x: Tensor, y: Tensor) -> dict:
    """One block's saved activations (the mean over blocks); nothing crosses while the label
    table is frozen (co-trained: its gradients)."""
    shared = [p for p in model.shared.parameters() if p.requires_grad]
    return {**blockwise_activation_bytes(model, x, y, None),
            "traffic_bytes_per_step": sum(p.numel() * p.element_size() for p in shared)}
