"""What every task's training run needs: its device, and the check that a resume is one."""

from __future__ import annotations

import json
from pathlib import Path

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


def check_resumable(saved: dict, config: dict, resumable: set[str], where: Path) -> None:
    """Refuse to resume from a checkpoint whose config differs outside ``resumable`` fields."""
    now = json.loads(json.dumps(config))
    diff = [k for k in now if k not in resumable and saved.get(k) != now[k]]
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in diff)
        raise ValueError(
            f"checkpoint {where} was written by a different config ({detail}); "
            "resume with the same flags or use a fresh --out"
        )
