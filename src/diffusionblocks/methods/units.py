"""What the peer methods that train many units on every batch share (greedy local learning,
Forward-Forward): one optimizer per unit, each stepping on its own loss right after the unit's
forward pass, its graph freed before the next unit runs, so no gradient crosses a unit."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from ..training import Averages, OptimConfig, Precision, make_optimizer


class PerUnit:
    """A strategy's optimizers (one per unit, on the run's schedule; ``unscheduled`` ones keep
    their own rate), precision and weight averages (of ``averaged``, else the units)."""

    def __init__(self, model: nn.Module, cfg: OptimConfig, units: dict[str, nn.Module],
                 averaged: dict[str, nn.Module] | None = None,
                 unscheduled: dict[str, torch.optim.Optimizer] | None = None):
        self.model, self.cfg = model, cfg
        self.optimizers = {name: make_optimizer(unit, cfg) for name, unit in units.items()}
        self.unscheduled = unscheduled or {}
        self.precision = Precision(cfg.precision, [*units, *self.unscheduled])
        self.precision.bind(next(model.parameters()).device)
        self.averages = Averages(units if averaged is None else averaged, cfg.ema) if cfg.ema else None

    @property
    def states(self) -> dict:
        return self.optimizers | self.unscheduled | self.precision.states()

    def gathered(self) -> AbstractContextManager:
        return nullcontext()  # nothing is sharded

    def update(self, name: str, unit: nn.Module, loss: Tensor) -> float:
        """Step unit ``name`` on its own ``loss`` (computed under ``precision.autocast()``)."""
        opt = (self.optimizers | self.unscheduled)[name]
        opt.zero_grad(set_to_none=True)
        self.precision.backward_and_step(loss, name, [opt], unit.parameters(), self.cfg.clip)
        return loss.item()
