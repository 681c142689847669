"""The progress record of a run (ground floor: the loop writes it, checkpoints store it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """What a run has done so far; saved with every checkpoint."""

    step: int = 0
    layer_evals: int = 0
    train_seconds: float = 0.0
