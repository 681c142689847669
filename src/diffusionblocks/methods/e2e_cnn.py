"""End to end on NoProp's CNN: the backprop row beside NoProp-DT and DiffusionBlocks on the same
architecture (the DiffusionBlocks paper's Table 6). The network is the one a NoProp block is
built around, without its label input: NoProp's image path (:func:`.noprop.image_path`), then its
joined path (FC, BN, ReLU) × 2 and the class logits, trained with cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import activation_bytes
from ..training import EndToEnd
from .noprop import image_path

WIDTH = 256  # NoProp's block width
LR = 1e-3  # NoProp's AdamW rate, which its backprop baseline shares


class CNNClassifier(nn.Module):
    """Image path, (FC, BN, ReLU) × 2, logits."""

    def __init__(self, channels: int, size: int, classes: int, width: int = WIDTH):
        super().__init__()
        self.image = image_path(channels, size, width)
        self.head = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                                  nn.Linear(width, width // 2), nn.BatchNorm1d(width // 2), nn.ReLU(),
                                  nn.Linear(width // 2, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.image(x))


# The peer-method interface the classification family calls (methods.peer).

ABOUT = ("end to end on NoProp's CNN (its block network without the label input), the backprop row "
         "beside NoProp-DT and dblocks_cnn")
CROSSES = "gradients through the whole CNN (one unit)"  # between its units in training
UNITS = "CNN blocks"  # what its training evaluations count
FLAGS = frozenset()  # the family's method flags that apply to it


def build(cfg) -> CNNClassifier:
    return CNNClassifier(cfg.vit.channels, cfg.vit.image_size, cfg.vit.num_classes)


def trainer(model: CNNClassifier, cfg) -> EndToEnd:
    return EndToEnd(model, F.cross_entropy, cfg.optim, 1)  # a step: one evaluation of the network


def predict(model: CNNClassifier, x: Tensor, generator=None) -> Tensor:
    return model(x)


def activations(model: CNNClassifier, x: Tensor, y: Tensor) -> dict:
    return {"activation_bytes_per_step": activation_bytes(lambda: F.cross_entropy(model(x), y), model)}


def inference_layers(model: CNNClassifier) -> int:
    """One evaluation of the CNN, counted as one block's (NoProp's unit)."""
    return 1
