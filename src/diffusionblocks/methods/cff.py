"""Contrastive Forward-Forward (Aghagolzadeh & Ezoji 2025, arXiv 2502.00571): the
Forward-Forward algorithm on a ViT with a supervised contrastive loss after every layer.

Stage 1: every layer is its own unit (the first also owns the patch stem and [CLS]). A batch is
seen in two augmented views; layer l runs on the *detached* output of layer l − 1 for both, its
features are the mean over tokens, and its loss is the marginal supervised contrastive loss

    ℓ_l = −mean_i 1/|P(i)| Σ_{p∈P(i)} log( exp(min(s_ip + m_l, 1)/τ) / Σ_{a≠i} exp(s'_ia/τ) ),

with s the cosine similarity of normalised features over the 2N views, P(i) the other views of
i's class, s' = s with the margin added on positives (capped at 1), τ = 0.15 and margins m_l
falling linearly from 0.4 to 0.1 over the layers (the paper's). Each layer steps its own AdamW
right after its forward pass, so no gradient crosses a layer and a step holds one layer's
activations (for two views). Stage 2 (after the run's ``steps``, half as many more: see
:data:`HEAD_SHARE`): the layers frozen, a LayerNorm + linear head trained with cross-entropy on
the mean-pooled last features (AdamW at an eighth of the layers' rate: 5e-4 beside 4e-3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import activation_bytes
from ..models.vit import PatchStem, make_layers
from ..training import make_optimizer
from .units import PerUnit

LR = 4e-3  # stage 1, the paper's
HEAD_LR_RATIO = 5e-4 / 4e-3  # stage 2's rate beside stage 1's
TEMPERATURE = 0.15
MARGINS = (0.4, 0.1)  # m_0 and m_{L-1}, linear between
# Stage 2 runs steps // HEAD_SHARE head steps after stage 1. The paper's 50 epochs after 600 train
# the head to convergence; at a few epochs' budget a twelfth leaves it far from it (digits,
# 300 contrastive steps: validation 41.3% after 25 head steps, 97.9% after 150). A head step runs
# the frozen layers forward on one view, about a sixth of a contrastive step.
HEAD_SHARE = 2


def margins(layers: int, first: float = MARGINS[0], last: float = MARGINS[1]) -> list[float]:
    """m_l, linear from ``first`` to ``last`` over ``layers`` layers."""
    if layers == 1:
        return [first]
    return [first + (last - first) * i / (layers - 1) for i in range(layers)]


def contrastive_loss(f1: Tensor, f2: Tensor, y: Tensor, margin: float,
                     temperature: float = TEMPERATURE) -> Tensor:
    """The marginal supervised contrastive loss of the two views' features (N, D) each."""
    z = F.normalize(torch.cat([f1, f2]).float(), dim=1)
    labels = y.repeat(2)
    itself = torch.eye(len(z), dtype=torch.bool, device=z.device)
    positive = (labels[:, None] == labels[None]) & ~itself
    sim = z @ z.T
    sim = torch.where(positive, (sim + margin).clamp(max=1.0), sim) / temperature
    log_prob = sim - sim.masked_fill(itself, float("-inf")).logsumexp(1, keepdim=True)
    per_anchor = (log_prob * positive).sum(1) / positive.sum(1).clamp(min=1)
    return -per_anchor.mean()


class CFFLayer(nn.Module):
    """One unit: a transformer layer (the first with the patch stem and [CLS] in front)."""

    def __init__(self, layer: nn.Module, stem: PatchStem | None = None, cls: nn.Parameter | None = None):
        super().__init__()
        self.stem, self.cls, self.layer = stem, cls, layer

    def forward(self, h: Tensor) -> Tensor:
        if self.stem is not None:
            h = self.stem(h, self.cls.expand(h.shape[0], -1))
        return self.layer(h)


class CFFHead(nn.Module):
    """LayerNorm + linear on the mean-pooled last features, and the run's step count (so a
    resumed run knows its stage)."""

    def __init__(self, width: int, classes: int):
        super().__init__()
        self.norm, self.linear = nn.LayerNorm(width), nn.Linear(width, classes)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.norm(features))


class CFFViT(nn.Module):
    """The family's ViT as L units and a read-out head on the mean of the last tokens."""

    def __init__(self, vit_cfg):
        super().__init__()
        stem, cls = PatchStem(vit_cfg), nn.Parameter(torch.zeros(1, vit_cfg.width))
        layers = make_layers(vit_cfg)
        self.units = nn.ModuleList(CFFLayer(layer, *((stem, cls) if i == 0 else ()))
                                   for i, layer in enumerate(layers))
        self.head = CFFHead(vit_cfg.width, vit_cfg.num_classes)

    @property
    def num_blocks(self) -> int:
        return len(self.units)

    def parts(self) -> dict[str, nn.Module]:
        return {f"block_{i}": u for i, u in enumerate(self.units)} | {"head": self.head}

    def features(self, x: Tensor) -> Tensor:
        for unit in self.units:
            x = unit(x)
        return x.mean(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class CFFTrainer(PerUnit):
    """Stage 1 for ``stage1`` steps (every layer on every batch, two views, one AdamW each),
    then stage 2 (the head on frozen features). ``views(x, generator)``: one augmented view of
    the raw batch (identity without augmentation)."""

    def __init__(self, model: CFFViT, cfg, stage1: int, views: Callable[[Tensor, torch.Generator], Tensor]):
        parts = model.parts()
        head = make_optimizer(model.head, cfg)  # its own rate: not on fit's schedule
        for g in head.param_groups:
            g["lr"] = cfg.lr * HEAD_LR_RATIO
        layers = {n: p for n, p in parts.items() if n != "head"}
        super().__init__(model, cfg, layers, averaged=parts, unscheduled={"head": head})
        self.stage1, self.views = stage1, views
        self.margins = margins(model.num_blocks)

    def step(self, x: Tensor, y: Tensor, gen: torch.Generator) -> dict:
        model = self.model
        if int(model.head.trained_steps) < self.stage1:
            record = self._contrastive_step(x, y, gen)
        else:
            record = self._head_step(x, y)
        model.head.trained_steps += 1
        return record

    def _contrastive_step(self, x: Tensor, y: Tensor, gen: torch.Generator) -> dict:
        h1, h2 = self.views(x, gen), self.views(x, gen)
        losses = []
        for i, unit in enumerate(self.model.units):
            with self.precision.autocast():
                h1, h2 = unit(h1.detach()), unit(h2.detach())
                loss = contrastive_loss(h1.mean(1), h2.mean(1), y, self.margins[i])
            losses.append(self.update(f"block_{i}", unit, loss))
        if self.averages:
            self.averages.update(self.optimizers)
        return {"loss": losses[-1], "block_losses": losses, "layers": 2 * self.model.num_blocks}

    def _head_step(self, x: Tensor, y: Tensor) -> dict:
        model = self.model
        with torch.no_grad():
            was = model.units.training
            model.units.eval()
            features = model.features(x)
            model.units.train(was)
        with self.precision.autocast():
            loss = F.cross_entropy(model.head(features).float(), y)
        value = self.update("head", model.head, loss)
        if self.averages:
            self.averages.update(["head"])
        return {"loss": value, "stage": 2, "layers": model.num_blocks}


# The peer-method interface the classification family calls (methods.peer).

ABOUT = ("peer: Contrastive Forward-Forward (Aghagolzadeh & Ezoji 2025), every layer trained alone "
         "with a marginal supervised contrastive loss on two views, then a linear head on the "
         "frozen features (its recipe: configs/cpu/cff_mnist.toml)")
CROSSES = "activations forward (two views)"  # between its units in training
UNITS = "layers"  # what its training evaluations count
FLAGS = frozenset()  # the family's method flags that apply to it

TWO_VIEWS = True  # the family hands the raw batch and a view maker


def build(cfg) -> CFFViT:
    return CFFViT(cfg.vit)


def budget(cfg) -> tuple[int, int]:
    """Total and warm-up steps of a run of ``cfg.steps`` contrastive steps: stage 2 added after them."""
    return cfg.steps + max(1, cfg.steps // HEAD_SHARE), cfg.optim.warmup


def trainer(model: CFFViT, cfg, views=None) -> CFFTrainer:
    return CFFTrainer(model, cfg.optim, cfg.steps, views or (lambda x, gen: x))


def predict(model: CFFViT, x: Tensor, generator=None) -> Tensor:
    return model(x)


def activations(model: CFFViT, x: Tensor, y: Tensor) -> dict:
    """A stage-1 step's peak (the largest unit's saved activations, two views) and the bytes
    crossing layer boundaries forward (both views' tokens); no gradient crosses."""
    inputs, h = [], x
    with torch.no_grad():
        for unit in model.units:
            inputs.append(h)
            h = unit(h)
    margin = margins(model.num_blocks)

    def loss(i: int) -> Tensor:
        out = model.units[i](torch.cat([inputs[i], inputs[i]]))
        return contrastive_loss(*out.mean(1).chunk(2), y, margin[i])

    per_unit = [activation_bytes(lambda i=i: loss(i), model) for i in range(model.num_blocks)]
    crossing = sum(2 * t.numel() * t.element_size() for t in inputs[1:])
    return {"activation_bytes_per_step": max(per_unit), "activation_bytes_per_block": per_unit,
            "traffic_bytes_per_step": crossing}


def inference_layers(model: CFFViT) -> int:
    return model.num_blocks
