"""Channel-wise competitive learning, CwComp (Papachristodoulou et al., AAAI 2024, arXiv
2312.12668): a Forward-Forward variant with no negative data. Each convolutional layer is its own
unit; its output channels are split into one group per class, the *goodness* of class c is the
mean squared activation of group c, and the layer's loss is the cross-entropy of the class
goodnesses against the label (their ``CwC_CE``). Every layer trains on the detached output of the
layer before, with its own Adam (lr 0.01).

The paper's CFSE network: 3×3 convolutions of 20, 80, 240 and 480 channels, each conv → ReLU →
(max-pool 2 on layers 1 and 3) → BatchNorm; layers 1 and 3 are grouped convolutions with one
group per class (the channel-wise feature separator). Interleaved layer training (their "Acc"
schedule): layer k trains during the first ILT[k] of the run (MNIST: epochs 2, 3, 4, 5 of 5;
CIFAR-10's 11, 16, 21, 25 of 25 are within 0.04 of it) and only runs forward after. The
prediction is the goodness argmax of the last layer (their GA predictor; the paper's second,
a softmax layer on the flattened last features, is not built here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import activation_bytes
from .units import PerUnit

LR = 0.01
CHANNELS = (20, 80, 240, 480)
ILT = (0.4, 0.6, 0.8, 1.0)  # share of the run each layer trains (MNIST's "Acc": 2, 3, 4, 5 of 5 epochs)


def goodness(y: Tensor, classes: int) -> Tensor:
    """(N, classes): the mean squared activation of each class's channel group."""
    n, c, h, w = y.shape
    return y.reshape(n, classes, c // classes, h, w).pow(2).mean((2, 3, 4))


class CwCLayer(nn.Module):
    """conv 3×3 (grouped on separator layers) → ReLU → optional max-pool 2 → BatchNorm."""

    def __init__(self, cin: int, cout: int, groups: int = 1, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm = nn.BatchNorm2d(cout, eps=1e-4)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.pool(F.relu(self.conv(x))))


class Steps(nn.Module):
    """The run's step count, stored with the weights so a resume knows which layers still train."""

    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


class CwCompNet(nn.Module):
    """The CFSE network; ``forward`` gives the last layer's class goodnesses (argmax: the class)."""

    def __init__(self, channels: int, classes: int, widths: tuple[int, ...] = CHANNELS):
        super().__init__()
        if any(w % classes for w in widths):
            raise ValueError(f"CwComp splits each layer's channels into one group per class: "
                             f"{list(widths)} channels do not divide into {classes} classes")
        self.classes = classes
        cins = [channels, *widths[:-1]]
        self.layers = nn.ModuleList(
            CwCLayer(cin, cout, groups=classes if k % 2 == 1 else 1, pool=k % 2 == 1)
            for k, (cin, cout) in enumerate(zip(cins, widths)))
        self.steps = Steps()

    @property
    def num_blocks(self) -> int:
        return len(self.layers)

    def parts(self) -> dict[str, nn.Module]:
        return {f"block_{k}": layer for k, layer in enumerate(self.layers)} | {"steps": self.steps}

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return goodness(x, self.classes)


def layer_loss(y: Tensor, labels: Tensor, classes: int) -> Tensor:
    """CwC_CE: cross-entropy of the class goodnesses."""
    return F.cross_entropy(goodness(y.float(), classes), labels)


class CwCompTrainer(PerUnit):
    """Each step: every layer whose ILT window is open trains on the detached output of the one
    before (one Adam each); the others only run forward."""

    def __init__(self, model: CwCompNet, cfg, total: int, ilt: tuple[float, ...] = ILT):
        layers = {f"block_{k}": layer for k, layer in enumerate(model.layers)}
        weights = {n: p for n, p in model.parts().items() if n != "steps"}
        super().__init__(model, cfg, layers, averaged=weights)
        self.total, self.ilt = total, ilt

    def training(self, step: int) -> list[int]:
        """The layers that train at ``step``."""
        return [k for k, share in enumerate(self.ilt) if step < max(1, round(share * self.total))]

    def step(self, x: Tensor, y: Tensor, gen: torch.Generator) -> dict:
        model = self.model
        active = self.training(int(model.steps.count))
        h, losses = x, {}
        for k, layer in enumerate(model.layers):
            if k not in active:
                with torch.no_grad():
                    h = layer(h)
                continue
            with self.precision.autocast():
                out = layer(h.detach())
                loss = layer_loss(out, y, model.classes)
            losses[k] = self.update(f"block_{k}", layer, loss)
            h = out.detach()
        if self.averages:
            self.averages.update(f"block_{k}" for k in active)
        model.steps.count += 1
        every = [losses.get(k) for k in range(model.num_blocks)]  # None: a layer past its window
        return {"loss": losses[max(losses)], "block_losses": every, "layers": model.num_blocks}


# The peer-method interface the classification family calls (methods.peer).

ABOUT = ("peer: channel-wise competitive Forward-Forward (Papachristodoulou et al. 2024), the "
         "paper's CFSE CNN, each layer trained alone on the cross-entropy of its class-wise "
         "channel goodness, no negative data (its recipe: configs/cpu/cwcomp_mnist.toml)")
CROSSES = "activations forward"  # between its units in training
UNITS = "conv layers"  # what its training evaluations count
FLAGS = frozenset()  # the family's method flags that apply to it

def build(cfg) -> CwCompNet:
    return CwCompNet(cfg.vit.channels, cfg.vit.num_classes)


def trainer(model: CwCompNet, cfg) -> CwCompTrainer:
    return CwCompTrainer(model, cfg.optim, cfg.steps)


def predict(model: CwCompNet, x: Tensor, generator=None) -> Tensor:
    return model(x)


def activations(model: CwCompNet, x: Tensor, y: Tensor) -> dict:
    """The largest layer's saved activations (layers' graphs are freed in turn) and the bytes
    that cross layer boundaries forward; no gradient crosses."""
    inputs, h = [], x
    with torch.no_grad():
        for layer in model.layers:
            inputs.append(h)
            h = layer(h)
    per_layer = [activation_bytes(lambda k=k: layer_loss(model.layers[k](inputs[k]), y, model.classes), model)
                 for k in range(model.num_blocks)]
    return {"activation_bytes_per_step": max(per_layer), "activation_bytes_per_block": per_layer,
            "traffic_bytes_per_step": sum(t.numel() * t.element_size() for t in inputs[1:])}


def inference_layers(model: CwCompNet) -> int:
    return model.num_blocks
