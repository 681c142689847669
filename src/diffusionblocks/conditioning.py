"""Noise conditioning: sinusoidal embedding of c_noise, and AdaLN-Zero modulation (DiT)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
        """The conditioning vector (N, dim) of c_noise (N,)."""
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
        """``chunks`` modulation vectors, each (N, 1, width), from the conditioning c (N, cond_dim)."""
        return self.proj(c)[:, None].chunk(self.chunks, dim=-1)


class ModulatedLinear(torch.autograd.Function):
    """``(x̂·(1 + scale) + shift) Wᵀ + b`` with x̂ = LayerNorm(x) (no affine): AdaLN's modulated
    norm and the linear map it feeds, saving only x̂ and 1/std.

    That is what a plain LayerNorm saves. Apart, the two would also keep the modulated input for
    the weight's gradient (plain autograd: the input and x̂ too); backward recomputes it in one
    elementwise pass instead. LayerNorm's backward runs on x̂ (mean 0, 1/std 1), then is scaled
    by the true 1/std.

    Under autocast the norm runs in the input's precision and the linear map in autocast's
    (bf16/fp16); backward does its two matrix products in the gradient's precision and returns
    every gradient in its input's dtype.
    """

    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor, scale: Tensor, weight: Tensor, bias: Tensor | None,
                eps: float) -> Tensor:
        """The modulated norm's linear map; saves x̂ and 1/std."""
        # A unit affine: PyTorch's CPU kernel without one is about 2× slower (torch 2.13).
        ones = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
        xhat, _, rstd = torch.native_layer_norm(x, x.shape[-1:], ones, torch.zeros_like(ones), eps)
        ctx.save_for_backward(xhat, rstd, shift, scale, weight, bias)
        return F.linear(torch.addcmul(shift, xhat, 1 + scale), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        """Gradients of x, shift, scale, weight and bias, recomputing the modulated input."""
        xhat, rstd, shift, scale, weight, bias = ctx.saved_tensors
        flat_grad = grad.flatten(0, -2)
        modulated = torch.addcmul(shift, xhat, 1 + scale)
        grad_weight = (flat_grad.T @ modulated.flatten(0, -2).to(grad.dtype)).to(weight.dtype)
        grad_bias = flat_grad.sum(0).to(bias.dtype) if bias is not None else None
        grad_modulated = (flat_grad @ weight.to(grad.dtype)).view_as(xhat).to(xhat.dtype)
        grad_shift = grad_modulated.sum_to_size(shift.shape)
        grad_scale = torch.mul(grad_modulated, xhat, out=modulated).sum_to_size(scale.shape)
        grad_xhat = grad_modulated * (1 + scale)  # not in place: grad_shift may be grad_modulated
        grad_x = torch.ops.aten.native_layer_norm_backward(
            grad_xhat, xhat, xhat.shape[-1:], torch.zeros_like(rstd),
            torch.ones_like(rstd), None, None, [True, False, False],
        )[0].mul_(rstd)
        return grad_x, grad_shift, grad_scale, grad_weight, grad_bias, None


def modulated_linear(x: Tensor, shift: Tensor, scale: Tensor, linear: nn.Linear, eps: float = 1e-6) -> Tensor:
    """linear(LayerNorm(x)·(1 + scale) + shift), shift and scale broadcast over tokens (AdaLN)."""
    return ModulatedLinear.apply(x, shift, scale, linear.weight, linear.bias, eps)
