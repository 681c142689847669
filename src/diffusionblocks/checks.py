"""Checks of user input, shared by every config and model: ground floor, imports nothing of
the package. Each raises ``ValueError`` with one line that names the field and the fix."""

from __future__ import annotations

import math
from dataclasses import fields

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu`` or ``cuda[:N]``, refusing CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
    return torch.device(name)


def check_device_name(name: str) -> None:
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda[:N]")


def check_numbers(obj) -> None:
    """Refuse NaN or infinity in any number field of the config dataclass ``obj`` (its own
    fields; nested configs check theirs)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if any(isinstance(v, float) and not math.isfinite(v)
               for v in (value if isinstance(value, (tuple, list)) else (value,))):
            raise ValueError(f"{f.name} must be a finite number, got {value}")


def check_choice(kind: str, value, choices) -> None:
    """Refuse ``value`` outside ``choices``, listing them: "unknown sampler 'x'; choose one of …"."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(map(str, choices))}")


def check_block_job(cfg) -> None:
    """The block-job fields a DiffusionBlocks config has (``block``, ``parallel``, and where
    it has them ``sync_every`` and ``offload``): one block job or a torchrun run, of a real
    block, in DiffusionBlocks mode."""
    if cfg.block is not None and cfg.mode != "dblocks":
        raise ValueError("--block trains one block as its own job: it needs --mode dblocks (end to end, "
                         "--parallel trains the whole model data-parallel over every rank)")
    if cfg.block is not None and not 0 <= cfg.block < cfg.blocks:
        raise ValueError(f"block {cfg.block} does not exist: blocks are numbered 0 to {cfg.blocks - 1}")
    if cfg.block is not None and cfg.parallel:
        raise ValueError("--block trains one block as its own job; --parallel places blocks on "
                         "torchrun ranks: use one or the other")
    if cfg.parallel and getattr(cfg, "offload", None):
        raise ValueError("--offload with --parallel is not supported; give each block a process")
    if getattr(cfg, "sync_every", 1) < 1:
        raise ValueError(f"sync_every must be at least 1, got {cfg.sync_every}")


def check_at_least_one(obj, names) -> None:
    """Refuse any of the integer fields ``names`` of ``obj`` below 1 (None means unset)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def config_from_dict(cls, d: dict, nested: dict[str, type]):
    """A run config dataclass from its JSON form (``to_dict``), sub-configs rebuilt; keys the
    dataclasses do not have (a later version's fields) are ignored, missing ones default."""
    d = dict(d)
    for key, kind in nested.items():
        sub = _known(kind, d.get(key) or {})
        if "betas" in sub:
            sub["betas"] = tuple(sub["betas"])  # JSON turns the AdamW tuple into a list
        d[key] = kind(**sub)
    return cls(**_known(cls, d))


def _known(cls, d) -> dict:
    if not isinstance(d, dict):
        raise TypeError(f"expected a JSON object for {cls.__name__}, got {d!r}")
    return {f.name: d[f.name] for f in fields(cls) if f.name in d}
