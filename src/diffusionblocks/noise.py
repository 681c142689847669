"""Noise levels: the EDM training distribution, its partition into blocks, σ grids, scalings.

Everything here follows METHOD.md §2-4 and §8 and Karras et al. (2022). σ ranges are kept
ascending (low noise first); the *first* block of a network owns the *highest* range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from .checks import check_numbers

_N = NormalDist()
PARTITIONS = ("equiprob", "uniform")


@dataclass
class NoiseConfig:
    """Noise levels and the loss weight; defaults are EDM's (METHOD.md §2)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    gamma: float = 0.05
    partition: str = "equiprob"
    max_weight: float | None = None

    def __post_init__(self) -> None:
        check_numbers(self)
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}; pick sigma_min below sigma_max (EDM: 0.002 and 80)"
            )
        if self.p_std <= 0 or self.sigma_data <= 0:
            raise ValueError(
                f"p_std and sigma_data must be positive, got {self.p_std} and {self.sigma_data}"
            )
        if not 0 <= self.gamma < 1:
            raise ValueError(
                f"overlap gamma must lie in [0, 1), got {self.gamma}; "
                "use 0 for no overlap (paper: 0.05 for images, 0.1 for text)"
            )
        if self.partition not in PARTITIONS:
            raise ValueError(
                f"unknown partition {self.partition!r}; choose one of {', '.join(PARTITIONS)}"
            )
        if self.max_weight is not None and self.max_weight <= 0:
            raise ValueError(f"max_weight must be positive or None, got {self.max_weight}")

    def quantile(self, sigma: float) -> float:
        """Φ((ln σ − P_mean)/P_std): the training CDF at σ."""
        return _N.cdf((math.log(sigma) - self.p_mean) / self.p_std)

    def sigma_at(self, q: float) -> float:
        """Inverse of :meth:`quantile`."""
        return math.exp(self.p_mean + self.p_std * _N.inv_cdf(q))


# --- partitions ------------------------------------------------------------------------------


def partition(noise: NoiseConfig, blocks: int) -> list[float]:
    """B+1 ascending boundaries σ_0 = σ_min < … < σ_B = σ_max.

    ``equiprob``: each interval holds equal mass of the training log-normal (METHOD §3).
    ``uniform``: equal intervals in log σ (the paper's ablation).
    """
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    lo, hi = noise.sigma_min, noise.sigma_max
    if noise.partition == "uniform":
        inner = [math.exp(math.log(lo) + b / blocks * math.log(hi / lo)) for b in range(1, blocks)]
    else:
        q_lo, q_hi = noise.quantile(lo), noise.quantile(hi)
        inner = [noise.sigma_at(q_lo + b / blocks * (q_hi - q_lo)) for b in range(1, blocks)]
    return [lo, *inner, hi]


def widen(
    lo: float, hi: float, gamma: float, sigma_min: float, sigma_max: float
) -> tuple[float, float]:
    """Overlap: widen [lo, hi] by γ of its log-width on each side, clamped (METHOD §4)."""
    alpha = (hi / lo) ** gamma
    return max(lo / alpha, sigma_min), min(hi * alpha, sigma_max)


def block_ranges(noise: NoiseConfig, blocks: int) -> list[tuple[float, float]]:
    """Training σ range of each block in *network order*: block 0 gets the highest noise."""
    bounds = partition(noise, blocks)
    ranges = [
        widen(bounds[i], bounds[i + 1], noise.gamma, noise.sigma_min, noise.sigma_max)
        for i in range(blocks)
    ]
    return ranges[::-1]


def route(sigma: float | Tensor, bounds: list[float]) -> int:
    """Block (network order) that owns σ under the un-widened boundaries ``bounds``.

    A σ exactly on a boundary goes to the lower-noise block, the one whose interval an Euler
    step from there descends into. σ outside [σ_min, σ_max] goes to the nearest end block.
    """
    s = float(sigma.flatten()[0]) if isinstance(sigma, Tensor) else float(sigma)
    ascending = sum(1 for b in bounds[1:-1] if s > b)
    return len(bounds) - 2 - ascending


# --- sampling σ for training -----------------------------------------------------------------


def sample_sigma(
    noise: NoiseConfig,
    n: int,
    lo: float | None = None,
    hi: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """n per-example σ from the training log-normal truncated to [lo, hi] (METHOD §5.2)."""
    lo = noise.sigma_min if lo is None else lo
    hi = noise.sigma_max if hi is None else hi
    q_lo, q_hi = noise.quantile(lo), noise.quantile(hi)
    device = generator.device if generator is not None else None  # drawn where the generator lives
    u = q_lo + (q_hi - q_lo) * torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    sigma = torch.exp(noise.p_mean + noise.p_std * torch.special.ndtri(u))
    return sigma.clamp(lo, hi).float()


# --- EDM preconditioning and weight ----------------------------------------------------------


def scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM c_skip, c_out, c_in, c_noise for σ (METHOD §5.4)."""
    sd2 = sigma_data**2
    total = sigma**2 + sd2
    c_skip = sd2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: Tensor, sigma_data: float, max_weight: float | None = None) -> Tensor:
    """λ(σ) = (σ² + σ_d²)/(σ·σ_d)², optionally clamped (it reaches 2.5e5 at σ = 0.002)."""
    w = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return w if max_weight is None else w.clamp(max=max_weight)


# --- inference grids (descending) ------------------------------------------------------------


def sigmas_equiprob(noise: NoiseConfig, n: int) -> Tensor:
    """n σ from σ_max down to σ_min, equally spaced in the training CDF."""
    if n < 2:
        raise ValueError(f"a σ grid needs at least 2 points, got {n}")
    q_lo, q_hi = noise.quantile(noise.sigma_min), noise.quantile(noise.sigma_max)
    grid = [noise.sigma_at(q_hi - i / (n - 1) * (q_hi - q_lo)) for i in range(n)]
    grid[0], grid[-1] = noise.sigma_max, noise.sigma_min
    return torch.tensor(grid, dtype=torch.float64)


def sigmas_karras(noise: NoiseConfig, n: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) grid: n σ from σ_max to σ_min, uniform in σ^(1/ρ)."""
    if n < 2:
        raise ValueError(f"a σ grid needs at least 2 points, got {n}")
    a, b = noise.sigma_max ** (1 / rho), noise.sigma_min ** (1 / rho)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (a + ramp * (b - a)) ** rho


def sigmas_uniform(noise: NoiseConfig, n: int) -> Tensor:
    """n σ from σ_max down to σ_min, equally spaced in log σ: under the uniform partition, each
    block gets an equal share of the steps."""
    if n < 2:
        raise ValueError(f"a σ grid needs at least 2 points, got {n}")
    lo, hi = math.log(noise.sigma_min), math.log(noise.sigma_max)
    grid = torch.linspace(hi, lo, n, dtype=torch.float64).exp()
    grid[0], grid[-1] = noise.sigma_max, noise.sigma_min
    return grid


GRIDS = {"equiprob": sigmas_equiprob, "karras": sigmas_karras, "uniform": sigmas_uniform}
