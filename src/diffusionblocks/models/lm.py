"""Small character-level transformers: shape, token stems, attention masks, a KV cache, and
the plain causal LM (the autoregressive end-to-end baseline). The layers are the ViT's
pre-norm transformer layers (AdaLN-Zero when noise-conditioned)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_at_least_one, check_numbers
from ..memory import run_layers
from .vit import TransformerLayer


@dataclass
class LMConfig:
    """Model shape; ``vocab_size`` is set from the tokenizer by the task."""

    vocab_size: int = 65
    context: int = 128
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    rope: bool = False  # rotary positions in attention, beside the learned ones

    def __post_init__(self) -> None:
        check_numbers(self)
        check_at_least_one(self, ("vocab_size", "context", "width", "depth", "heads"))
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.width % self.heads:
            raise ValueError(f"heads {self.heads} must divide width {self.width}")


def make_layers(cfg: LMConfig, cond_dim: int | None = None) -> list[TransformerLayer]:
    """The language model's ``depth`` layers (AdaLN-Zero with ``cond_dim``; rotary positions
    with ``cfg.rope``)."""
    return [TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cond_dim, cfg.rope)
            for _ in range(cfg.depth)]


class TokenStem(nn.Module):
    """Token ids -> embeddings plus learned positions (``positions`` of them)."""

    def __init__(self, num_tokens: int, width: int, positions: int):
        super().__init__()
        self.tokens = nn.Embedding(num_tokens, width)
        self.pos = nn.Parameter(torch.randn(positions, width) * 0.02)
        nn.init.normal_(self.tokens.weight, std=0.02)

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        """Token plus position embeddings of ``ids`` (N, T) at positions start, start + 1, …"""
        return self.tokens(ids) + self.pos[start : start + ids.shape[1]]


# --- attention masks (True: the query may attend to the key) ----------------------------------


def causal_mask(t: int, device=None) -> Tensor:
    """Each position sees itself and the positions before it."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def denoising_mask(t: int, device=None) -> Tensor:
    """The (2T, 2T) mask of a clean sequence followed by its noisy copy (METHOD §9.2).

    Clean k sees clean ≤ k; noisy k, which denoises the token *after* clean k, sees clean ≤ k
    and itself only: never its own answer, never another noisy slot.
    """
    causal = causal_mask(t, device)
    mask = torch.zeros(2 * t, 2 * t, dtype=torch.bool, device=device)
    mask[:t, :t] = causal
    mask[t:, :t] = causal
    mask[t:, t:] = torch.eye(t, dtype=torch.bool, device=device)
    return mask


class KVCache:
    """One layer's keys and values of a prefix. New queries see the whole prefix and, among
    themselves, causally. With ``keep`` False (a noisy slot) the new keys are not stored."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.keep = True

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The cached keys and values with ``k``, ``v`` appended (kept for later calls when
        ``keep``), and the mask of the new queries over all of them."""
        past, new = len(self), k.shape[2]
        if past:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        mask = torch.ones(new, past + new, dtype=torch.bool, device=k.device)
        mask[:, past:] = causal_mask(new, k.device)
        if self.keep:
            self.k, self.v = k, v
        return k, v, mask


def run_cached(layers, h: Tensor, c: Tensor | None, caches: list[KVCache], keep: bool) -> Tensor:
    """Run ``layers`` on new tokens ``h`` against their caches (extended only if ``keep``)."""
    for layer, cache in zip(layers, caches):
        cache.keep = keep
        h = layer(h, c, None, cache)
    return h


# --- the autoregressive end-to-end baseline ---------------------------------------------------


class CausalLM(nn.Module):
    """A plain GPT-style next-token model on the same layers: ordinary backprop training."""

    def __init__(self, cfg: LMConfig, checkpointing: bool = False):
        super().__init__()
        self.cfg, self.checkpointing = cfg, checkpointing
        self.stem = TokenStem(cfg.vocab_size, cfg.width, cfg.context)
        self.layers = nn.ModuleList(make_layers(cfg))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, cfg.vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits (N, T, V): position k predicts token k + 1."""
        return self.head(self.hidden(ids))

    def hidden(self, ids: Tensor) -> Tensor:
        """The final hidden states (N, T, width), after the last norm."""
        mask = causal_mask(ids.shape[1], ids.device)
        h = run_layers(self.layers, self.stem(ids), None, mask, checkpointing=self.checkpointing)
        return self.norm(h)

    def extend(self, ids: Tensor, caches: list[KVCache]) -> Tensor:
        """Logits (N, V) of the token after ``ids`` (N, T), new tokens after the prefix whose
        keys and values ``caches`` (one per layer) hold; the caches are extended by them."""
        h = run_cached(self.layers, self.stem(ids, start=len(caches[0])), None, caches, keep=True)
        return self.head(self.norm(h[:, -1]))


def next_token_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy (nats) of logits (N, T, V) against targets (N, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
