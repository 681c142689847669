"""A small Vision Transformer: patch stem, pre-norm layers (plain or AdaLN-Zero), classifier."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_at_least_one, check_numbers
from ..conditioning import AdaLNZero, modulated_linear
from ..memory import run_layers

# Integer shape fields every transformer config here validates (each at least 1).
SHAPE_FIELDS = ("image_size", "channels", "patch_size", "width", "depth", "heads", "num_classes")


@dataclass
class ViTConfig:
    """Backbone shape. The first four fields are set from the data by the task."""

    image_size: int = 8
    channels: int = 1
    patch_size: int = 2
    width: int = 64
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_numbers(self)
        check_at_least_one(self, SHAPE_FIELDS)
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size {self.patch_size} must divide image_size {self.image_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"heads {self.heads} must divide width {self.width}")

    @property
    def num_patches(self) -> int:
        """Patches per image."""
        return (self.image_size // self.patch_size) ** 2


def rotary(x: Tensor, start: int = 0) -> Tensor:
    """Rotary position embedding (RoPE) of queries or keys (N, heads, T, d) at positions
    start, start + 1, …: each pair of channels rotated by position × its frequency."""
    half = x.shape[-1] // 2
    freqs = 10_000 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angle = torch.arange(start, start + x.shape[2], device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], dim=-1)


def scaled_dot_products(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """``F.scaled_dot_product_attention``, kept in fp32 on CPU under bf16/fp16 autocast: there the
    low-precision kernel's backward is several times slower than fp32's and would take back what
    the matrix products gain (docs/results.md, "Mixed precision on CPU")."""
    if q.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.autocast("cpu", enabled=False):
        mask = mask.float() if mask is not None and mask.is_floating_point() else mask
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)


class Attention(nn.Module):
    """Multi-head self-attention (optionally with rotary positions): qkv projection, scaled dot
    products, output projection."""

    def __init__(self, width: int, heads: int, rope: bool = False):
        super().__init__()
        self.heads, self.rope = heads, rope
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def mix(self, qkv: Tensor, mask: Tensor | None = None, cache=None,
            queries: int | None = None) -> Tensor:
        """Multi-head attention of projected queries, keys and values (N, T, 3·width), before
        the output projection. ``cache`` (a KV cache, see models/lm.py) prepends a prefix's keys
        and values and supplies the mask. ``queries``: only the first that many tokens attend."""
        n, t, w = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = qkv.view(n, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if self.rope:  # token i at position i (after a cached prefix, at len(cache) + i)
            start = len(cache) if cache is not None else 0
            q, k = rotary(q, start), rotary(k, start)
        if cache is not None:
            k, v, mask = cache.extend(k, v)
        if queries is not None:
            q, t = q[:, :, :queries], min(queries, t)
            mask = None if mask is None else mask[:queries]
        a = scaled_dot_products(q, k, v, mask)
        return a.transpose(1, 2).reshape(n, t, w)

    def forward(self, h: Tensor, mask: Tensor | None = None, cache=None,
                queries: int | None = None) -> Tensor:
        """Attention of ``h`` (N, T, width) over itself, projected; arguments as :meth:`mix`."""
        return self.out(self.mix(self.qkv(h), mask, cache, queries))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer. With ``cond_dim`` it is AdaLN-Zero conditioned (DiT):
    shift/scale/gate of both branches come from the conditioning vector, gates start at 0.
    Through :func:`modulated_linear` it saves for backward what the plain layer saves, plus the
    (N, 6·width) modulation rows."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, cond_dim: int | None = None,
                 rope: bool = False):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.attn = Attention(width, heads, rope)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)
        )
        if cond_dim:
            self.ada = AdaLNZero(cond_dim, width)
        else:
            self.norm1 = nn.LayerNorm(width, eps=1e-6)
            self.norm2 = nn.LayerNorm(width, eps=1e-6)

    def forward(self, h: Tensor, c: Tensor | None = None, mask: Tensor | None = None, cache=None,
                queries: int | None = None) -> Tensor:
        """``mask`` (T, T), True where a query may attend to a key; None: every token.
        ``cache``: attend to a cached prefix too (generation; see models/lm.py). ``queries``:
        compute only the first that many output tokens (all tokens still serve as keys and
        values), for a last layer whose read-out needs only those."""
        first = h if queries is None else h[:, :queries]
        if c is None:
            h = first + self.attn(self.norm1(h), mask, cache, queries)
            return h + self.mlp(self.norm2(h))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)
        mixed = self.attn.mix(modulated_linear(h, shift1, scale1, self.attn.qkv), mask, cache, queries)
        h = torch.addcmul(first, gate1, self.attn.out(mixed))
        hidden = self.mlp[1](modulated_linear(h, shift2, scale2, self.mlp[0]))
        return torch.addcmul(h, gate2, self.mlp[2](hidden))

    @torch.no_grad()
    def adopt(self, plain: TransformerLayer) -> None:
        """Take a plain layer's weights so that this AdaLN-Zero layer computes exactly what the
        plain one does, whatever its conditioning (pretrained conversion): the modulation's
        weight stays zero and its bias carries the norms' affine maps (shift β, scale γ - 1) and
        opens both gates. Fine-tuning then learns how σ should change them."""
        if not hasattr(self, "ada") or hasattr(plain, "ada"):
            raise ValueError("adopt copies a plain layer into a conditioned one")
        self.attn.load_state_dict(plain.attn.state_dict())
        self.mlp.load_state_dict(plain.mlp.state_dict())
        gate = torch.ones_like(plain.norm1.weight)
        self.ada.proj[1].weight.zero_()
        self.ada.proj[1].bias.copy_(torch.cat([plain.norm1.bias, plain.norm1.weight - 1, gate,
                                               plain.norm2.bias, plain.norm2.weight - 1, gate]))


def make_layers(cfg: ViTConfig, cond_dim: int | None = None) -> list[TransformerLayer]:
    """The ViT's ``depth`` layers: plain pre-norm, or AdaLN-Zero conditioned with ``cond_dim``."""
    return [TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cond_dim) for _ in range(cfg.depth)]


def patchify(x: Tensor, p: int) -> Tensor:
    """(N, C, H, W) -> (N, (H/p)(W/p), C·p·p), patches in row-major order."""
    n, c, h, w = x.shape
    patches = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Tensor, p: int, channels: int) -> Tensor:
    """Inverse of :func:`patchify` for square images."""
    n, t, _ = tokens.shape
    g = math.isqrt(t)
    return tokens.view(n, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, channels, g * p, g * p)


def _conv_stem_weights(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    """Read checkpoints of the earlier ``nn.Conv2d`` stem: its (width, C, p, p) weight is the
    linear stem's (width, C·p·p)."""
    weight = state_dict.get(prefix + "proj.weight")
    if weight is not None and weight.dim() == 4:
        state_dict[prefix + "proj.weight"] = weight.flatten(1)


class PatchStem(nn.Module):
    """Image -> patch tokens with learned positions; ``slot`` is the position of token 0."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        p = cfg.patch_size
        self.patch_size = p
        # A linear map of flattened patches (a strided convolution's maths, and its initial
        # weights; ~4× faster than nn.Conv2d's CPU kernel on MNIST, forward and backward).
        self.proj = nn.Linear(cfg.channels * p * p, cfg.width)
        self.pos = nn.Parameter(torch.randn(1, cfg.num_patches, cfg.width) * 0.02)
        self.slot = nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02)
        self.register_load_state_dict_pre_hook(_conv_stem_weights)

    def forward(self, x: Tensor, first: Tensor) -> Tensor:
        """Prepend ``first`` (N, width) — the [CLS] token or the noisy target — to the patches."""
        patches = self.proj(patchify(x, self.patch_size)) + self.pos
        return torch.cat([first[:, None] + self.slot, patches], dim=1)


class ViTClassifier(nn.Module):
    """The end-to-end baseline: a plain ViT classifier on the same layers and stem."""

    def __init__(self, cfg: ViTConfig, checkpointing: bool = False):
        super().__init__()
        self.checkpointing = checkpointing  # activation checkpointing of each layer
        self.stem = PatchStem(cfg)
        self.cls = nn.Parameter(torch.zeros(1, cfg.width))
        self.layers = nn.ModuleList(make_layers(cfg))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, cfg.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, classes) of images (N, C, H, W), read from the final [CLS] token."""
        h = self.stem(x, self.cls.expand(x.shape[0], -1))
        h = run_layers(self.layers, h, checkpointing=self.checkpointing, queries=1)
        return self.head(self.norm(h[:, 0]))
