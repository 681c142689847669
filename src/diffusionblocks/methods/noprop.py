"""NoProp-DT (Li, Teh & Pascanu 2025, arXiv 2503.24322): T separately parameterised blocks,
each trained alone to denoise a noisy label embedding, with no forward chain in training.

Time runs from noise to label: ``z_0`` is pure noise and ``z_T`` the clean end, with
``q(z_t | y) = N(√ᾱ_t·u_y, (1 − ᾱ_t)·I)``, ``u_y = W_embed[y]`` and ᾱ_0 < ᾱ_1 < … < ᾱ_T a
cosine schedule. Block t predicts ``û_t(z_{t−1}, x) = softmax(logits_t)·W_embed`` from the image
and a *sample of q* at t − 1 (never another block's output), so no activation or gradient
crosses between blocks. The loss is the paper's Eq. 8:

    L = E_q(z_T|y)[−log p̂(y | z_T)] + KL(q(z_0 | y) ‖ N(0, I))
        + (T/2)·η·E_{t∼U{1..T}}[(SNR(t) − SNR(t−1))·‖û_t(z_{t−1}, x) − u_y‖²],

with ``SNR(t) = ᾱ_t / (1 − ᾱ_t)`` (SNR(0) = 0 when ᾱ_0 = 0) and the expectation over t taken
exactly (every block on every batch: (η/2)·Σ_t). The label embedding and the output classifier
train jointly with the blocks (one AdamW, as the paper). Inference runs the chain
``z_t = a_t·û_t(z_{t−1}, x) + b_t·z_{t−1} + √c_t·ε`` from ``z_0 ∼ N(0, I)``, the Gaussian posterior
q(z_t | z_{t−1}, y) with u_y replaced by its prediction, and reads ``p̂(y | z_T)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training import EndToEnd

ETA = 0.1  # the paper's η
DROPOUT = 0.2
SNR_MAX = 100.0  # ᾱ_T of the cosine schedule is 1 (an infinite SNR); capped, as reproductions do


def alpha_bar(steps: int, s: float = 0.008) -> Tensor:
    """ᾱ_0 … ᾱ_T of the cosine schedule (Nichol & Dhariwal) read from the label end:
    ᾱ_t = f((T − t)/T) / f(0), f(τ) = cos²(π/2 · (τ + s)/(1 + s)); so ᾱ_0 = 0 (z_0 is pure
    noise, SNR(0) = 0) and ᾱ_T, which would be 1, is capped at SNR_MAX."""
    tau = torch.arange(steps, -1, -1, dtype=torch.float64) / steps
    f = torch.cos((tau + s) / (1 + s) * math.pi / 2) ** 2
    abar = (f / f[-1]).clamp(0.0, SNR_MAX / (1 + SNR_MAX))
    abar[0] = 0.0  # cos(π/2), exactly
    return abar


def snr(abar: Tensor) -> Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t)."""
    return abar / (1 - abar)


def posterior(abar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(a_t, b_t, c_t) for t = 1..T: q(z_t | z_{t−1}, y) = N(a_t·u_y + b_t·z_{t−1}, c_t·I), where
    the noising step is z_{t−1} = √α_{t−1}·z_t + √(1 − α_{t−1})·ε and α_{t−1} = ᾱ_{t−1}/ᾱ_t."""
    now, before = abar[1:], abar[:-1]
    alpha = before / now
    a = now.sqrt() * (1 - alpha) / (1 - before)
    b = alpha.sqrt() * (1 - now) / (1 - before)
    c = (1 - now) * (1 - alpha) / (1 - before)
    return a, b, c


def image_path(channels: int, size: int, width: int) -> nn.Sequential:
    """The paper's image path: conv 32 → 64 → 128 with max-pooling and dropout, FC + BN."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(DROPOUT),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Dropout(DROPOUT),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(DROPOUT),
        nn.Flatten(), nn.Linear(128 * (size // 4) ** 2, width), nn.BatchNorm1d(width))


def label_path(embed: int, width: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The paper's label path: FC + BN + ReLU, then (FC, BN, ReLU, FC, BN) added back."""
    return (nn.Sequential(nn.Linear(embed, width), nn.BatchNorm1d(width), nn.ReLU()),
            nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                          nn.Linear(width, width), nn.BatchNorm1d(width)))


class NoPropBlock(nn.Module):
    """The paper's block û_t(z, x): the image path and the label path, joined and read through
    (FC, BN, ReLU) × 2 to class logits; û = softmax(logits)·W_embed."""

    def __init__(self, channels: int, size: int, classes: int, embed: int, width: int = 256):
        super().__init__()
        self.image = image_path(channels, size, width)
        self.label_in, self.label_skip = label_path(embed, width)
        self.joined = nn.Sequential(nn.Linear(2 * width, width), nn.BatchNorm1d(width), nn.ReLU(),
                                    nn.Linear(width, width // 2), nn.BatchNorm1d(width // 2), nn.ReLU(),
                                    nn.Linear(width // 2, classes))

    def logits(self, z: Tensor, x: Tensor) -> Tensor:
        h = self.label_in(z)
        return self.joined(torch.cat([self.image(x), h + self.label_skip(h)], dim=1))

    def forward(self, z: Tensor, x: Tensor, table: Tensor) -> Tensor:
        """û = softmax(logits)·W_embed: a point of the embeddings' hull (one softmax, here)."""
        return self.logits(z, x).softmax(-1) @ table


class NoPropDT(nn.Module):
    """T blocks, the label embedding W_embed (classes × embed, orthogonal at init) and the
    output classifier p̂(y | z_T) (a linear layer)."""

    def __init__(self, channels: int, size: int, classes: int, steps: int = 10, embed: int | None = None):
        super().__init__()
        embed = embed or classes
        self.blocks = nn.ModuleList(NoPropBlock(channels, size, classes, embed) for _ in range(steps))
        self.embed = nn.Embedding(classes, embed)
        if embed >= classes:
            nn.init.orthogonal_(self.embed.weight)
        self.out = nn.Linear(embed, classes)
        self.register_buffer("abar", alpha_bar(steps).float(), persistent=False)

    @property
    def num_blocks(self) -> int:
        """T, the number of blocks."""
        return len(self.blocks)

    def sample(self, y: Tensor, t: int, gen: torch.Generator) -> Tensor:
        """z_t ∼ q(z_t | y) = N(√ᾱ_t·u_y, (1 − ᾱ_t)·I)."""
        u = self.embed(y)
        eps = torch.randn(u.shape, generator=gen, device=gen.device).to(u.device)
        return self.abar[t].sqrt() * u + (1 - self.abar[t]).sqrt() * eps

    def terms(self, x: Tensor, y: Tensor, gen: torch.Generator, eta: float = ETA) -> dict[str, Tensor]:
        """The three terms of Eq. 8 (batch means) and each block's denoising term."""
        u, table, ratio = self.embed(y), self.embed.weight, snr(self.abar)
        steps = self.num_blocks
        denoise = [(steps / 2) * eta * (ratio[t] - ratio[t - 1]) / steps
                   * (self.blocks[t - 1](self.sample(y, t - 1, gen), x, table) - u).pow(2).sum(1).mean()
                   for t in range(1, steps + 1)]  # E_t over U{1..T}: a mean over every t
        ce = F.cross_entropy(self.out(self.sample(y, steps, gen)), y)
        a0 = self.abar[0]
        dim = u.shape[1]  # KL(N(√ᾱ_0·u, (1 − ᾱ_0)I) ‖ N(0, I))
        kl = 0.5 * (a0 * u.pow(2).sum(1) + dim * (1 - a0) - dim - dim * torch.log(1 - a0)).mean()
        return {"ce": ce, "kl": kl, "denoise": torch.stack(denoise)}

    def loss(self, x: Tensor, y: Tensor, gen: torch.Generator, eta: float = ETA) -> Tensor:
        t = self.terms(x, y, gen, eta)
        return t["ce"] + t["kl"] + t["denoise"].sum()

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Logits of p̂(y | z_T) after the T-step chain from z_0 ∼ N(0, I)."""
        a, b, c = (v.to(x.device) for v in posterior(self.abar.double()))
        table = self.embed.weight
        shape, gen = (x.shape[0], table.shape[1]), generator

        def noise() -> Tensor:
            return torch.randn(shape, generator=gen, device=gen.device if gen else None).to(x.device)

        z = noise()
        for t, block in enumerate(self.blocks):
            z = float(a[t]) * block(z, x, table) + float(b[t]) * z + float(c[t].sqrt()) * noise()
        return self.out(z)


class NoPropTrainer(EndToEnd):
    """One AdamW over blocks, embedding and classifier (the paper's), stepping Eq. 8 on each
    batch; a step evaluates every block once (``layers``: T block evaluations)."""

    def __init__(self, model: NoPropDT, cfg, eta: float = ETA):
        super().__init__(model, None, cfg, model.num_blocks)
        self.eta = eta

    def objective(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        return self.model.loss(x, y, gen, self.eta)


# The peer-method interface the classification family calls (methods.peer).

ABOUT = ("peer: NoProp-DT (Li et al. 2025), T = --blocks separately parameterised CNN blocks, each "
         "denoising a noisy label embedding sampled from q, no forward chain in training (its "
         "paper's recipe: configs/cpu/noprop_mnist.toml)")
CROSSES = "gradients of W_embed and the classifier"  # between its units in training
UNITS = "CNN blocks"  # what its training evaluations count
FLAGS = frozenset({"blocks"})  # the family's method flags that apply to it

LR = 1e-3  # the paper's AdamW rate


def build(cfg) -> NoPropDT:
    """The paper's CNN blocks for ``cfg``'s images (T = ``cfg.blocks``), not the family's ViT."""
    return NoPropDT(cfg.vit.channels, cfg.vit.image_size, cfg.vit.num_classes, cfg.blocks)


def trainer(model: NoPropDT, cfg) -> NoPropTrainer:
    return NoPropTrainer(model, cfg.optim)


def predict(model: NoPropDT, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The chain from z_0 ∼ N(0, I), as the paper infers."""
    return model(x, generator)


def activations(model: NoPropDT, x: Tensor, y: Tensor) -> dict:
    """Saved activations of one step (every block's), and what a run with a block per device
    would exchange each step: the gradients of the shared W_embed and classifier (no activation
    crosses: each block's input is a sample of q)."""
    from ..memory import activation_bytes

    shared = [*model.embed.parameters(), *model.out.parameters()]
    return {"activation_bytes_per_step": activation_bytes(
                lambda: model.loss(x, y, torch.Generator(x.device).manual_seed(0)), model),
            "traffic_bytes_per_step": sum(p.numel() * p.element_size() for p in shared)}


def inference_layers(model: NoPropDT) -> int:
    """Blocks, not layers: one call of each."""
    return model.num_blocks
