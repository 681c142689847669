"""Samplers of the probability-flow ODE, as free functions with one signature.

``denoiser(z, σ) -> D`` is any callable; :meth:`DiffusionBlocks.denoiser` routes each σ to the
block that owns it, so a step costs one block. ``sigmas`` is descending; the samplers return the
state at ``sigmas[-1]`` (a final denoiser call there gives the clean estimate).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]


def initial_noise(
    shape: tuple[int, ...], sigma_max: float, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """z₀ ~ N(0, σ_max² I)."""
    return sigma_max * torch.randn(shape, generator=generator).to(device)


@torch.no_grad()
def sample_euler(denoiser: Denoiser, z: Tensor, sigmas: Tensor) -> Tensor:
    """Euler steps z ← z + (σ_{i+1} − σ_i)·(z − D(z, σ_i))/σ_i (METHOD §8, the EDM sign)."""
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        d = (z - denoiser(z, torch.tensor(s, dtype=torch.float64))) / s
        z = z + (s_next - s) * d
    return z


@torch.no_grad()
def sample_heun(denoiser: Denoiser, z: Tensor, sigmas: Tensor) -> Tensor:
    """Heun's second-order method (EDM Algorithm 1 without churn): 2 calls per step.

    The corrector at σ_{i+1} uses the block that owns σ_{i+1}.
    """
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        d = (z - denoiser(z, torch.tensor(s, dtype=torch.float64))) / s
        z_pred = z + (s_next - s) * d
        d_next = (z_pred - denoiser(z_pred, torch.tensor(s_next, dtype=torch.float64))) / s_next
        z = z + (s_next - s) * (d + d_next) / 2
    return z


SAMPLERS: dict[str, Callable[[Denoiser, Tensor, Tensor], Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
}
