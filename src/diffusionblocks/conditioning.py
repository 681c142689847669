"""Noise conditioning: sinusoidal embedding of c_noise, and AdaLN-Zero modulation (DiT)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def sinusoidal(c: Tensor, dim: int, scale: float = 10.0, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of a scalar per example: (N,) -> (N, dim).

    c_noise = ln(σ)/4 spans only about [-1.6, 1.1]. ``scale`` sets the fastest frequency: large
    values give features that jump between nearby σ and extrapolate badly to σ rarely seen in
    training (σ_max = 80 lies far in the tail of the training log-normal).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=c.device) / half)
    args = scale * c.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """c_noise -> sinusoidal features -> MLP -> conditioning vector of size ``dim``."""

    def __init__(self, dim: int, features: int = 128):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(sinusoidal(c_noise, self.features))


class AdaLNZero(nn.Module):
    """Per-layer modulation: conditioning -> ``chunks`` vectors of size ``width``.

    Zero-initialized, so every gate starts at 0 and a fresh layer is the identity.
    """

    def __init__(self, cond_dim: int, width: int, chunks: int = 6):
        super().__init__()
        self.chunks = chunks
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, chunks * width))
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        return self.proj(c)[:, None].chunk(self.chunks, dim=-1)


class ModulatedNorm(torch.autograd.Function):
    """LayerNorm (no affine) then ``x̂·(1 + scale) + shift``, saving only the input
    and its per-token statistics.

    Plain autograd would also keep x̂ for the scale's gradient; recomputing it in backward is
    cheap, and makes an AdaLN layer save no more than a plain pre-norm layer does here.
    """

    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
        xhat, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, eps)
        ctx.save_for_backward(x, mean, rstd, scale)
        ctx.shift_shape = shift.shape
        return torch.addcmul(shift, xhat, 1 + scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, mean, rstd, scale = ctx.saved_tensors
        shape = x.shape[-1:]
        dx = torch.ops.aten.native_layer_norm_backward(
            grad * (1 + scale), x, shape, mean, rstd, None, None, [True, False, False]
        )[0]
        xhat = (x - mean).mul_(rstd)
        return dx, grad.sum_to_size(ctx.shift_shape), (grad * xhat).sum_to_size(scale.shape), None


def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """AdaLN: LayerNorm(x)·(1 + scale) + shift, with shift/scale broadcast over tokens."""
    return ModulatedNorm.apply(x, shift, scale, eps)
