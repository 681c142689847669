"""Your own residual MLP as DiffusionBlocks: 6 layers cut into 3 blocks that learn to generate
points on two interleaved half-moons (a toy 2-D distribution), then sample it.

    python examples/residual_mlp.py [--quick]

Prints one JSON line: the loss before and after, and how close the samples lie to the moons.
"""

import argparse
import json
import math
import time

import torch
from torch import nn

from diffusionblocks import (
    Adapter,
    Blockwise,
    DiffusionBlocks,
    OptimConfig,
    SharedParts,
    conditioned,
    fit,
    initial_noise,
    sample_euler,
    sigmas_equiprob,
)


class ResidualMLP(nn.Module):
    """A plain pre-norm residual layer, written with no knowledge of this library."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.f = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h):
        return h + self.f(self.norm(h))


class Points(Adapter):
    """A block's way in (the noisy point) and out (F, a 2-D vector)."""

    def __init__(self, width: int):
        super().__init__()
        self.inp, self.out = nn.Linear(2, width), nn.Linear(width, 2)

    def encode(self, x, z_in):
        return self.inp(z_in)

    def decode(self, h, c):
        return self.out(h)


def moons(n: int, generator: torch.Generator) -> torch.Tensor:
    """Two interleaved half-circles of radius 1, centred, without noise."""
    t = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, t.cos(), 1 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    return torch.stack([x - 0.5, y - 0.25], dim=1)


def distance_to_moons(points: torch.Tensor) -> torch.Tensor:
    """Each point's distance to the nearest point of the moons (a dense reference set)."""
    reference = moons(20_000, torch.Generator().manual_seed(1))
    return torch.cdist(points, reference).min(dim=1).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    width, steps = 64, 600 if args.quick else 4000
    layers = conditioned([ResidualMLP(width) for _ in range(6)], cond_dim=width)
    model = DiffusionBlocks(layers, SharedParts(), lambda: Points(width), blocks=3, cond_dim=width)
    strategy = Blockwise(model, OptimConfig(lr=3e-3))

    def batch_at(t: int):
        return torch.zeros(256, 0), moons(256, torch.Generator().manual_seed(t))

    history = []
    fit(strategy, batch_at, total=steps, warmup=steps // 10, seed=0, log=history.append, show=False)
    with torch.no_grad():
        n = 2000
        z0 = initial_noise((n, 2), model.noise.sigma_max, torch.Generator().manual_seed(2))
        samples = sample_euler(model.denoiser(torch.zeros(n, 0)), z0, sigmas_equiprob(model.noise, 30))
        noise = initial_noise((n, 2), 1.0, torch.Generator().manual_seed(3))  # a reference: no model
    first, last = history[0]["loss"], sum(r["loss"] for r in history[-50:]) / len(history[-50:])
    print(json.dumps({
        "example": "residual_mlp", "steps": steps, "loss_first": round(first, 4), "loss_last": round(last, 4),
        "median_distance_to_moons": round(distance_to_moons(samples).median().item(), 4),
        "median_distance_of_gaussian_noise": round(distance_to_moons(noise).median().item(), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }))


if __name__ == "__main__":
    main()
