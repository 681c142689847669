"""The one training driver (`runs.train_run`) runs any family's `Run` with any `Method`: here a
family the package has never seen (least squares on a fixed batch), trained by the end-to-end
method, checkpointed, interrupted and resumed to the same weights bit for bit."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusionblocks import checkpoint
from diffusionblocks.runs import Run, train_run
from diffusionblocks.training import EndToEnd, Method, OptimConfig


@dataclass
class ToyConfig:
    out: str
    steps: int = 12
    evals: int = 3
    seed: int = 0
    mode: str = "e2e"
    tensorboard: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ToyConfig:
        return cls(**d)


def toy(cfg: ToyConfig, stop_after: int | None = None):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    strategy = EndToEnd(model, F.mse_loss, OptimConfig(lr=0.5, warmup=0), layers=1)
    seen = []

    def evaluate(p) -> dict:
        seen.append(p.step)
        if stop_after is not None and p.step >= stop_after:
            raise KeyboardInterrupt  # killed right after a checkpoint
        return {"val_loss": F.mse_loss(model(x), y).item()}

    run = Run({"model": model}, lambda t: (x, y), evaluate, {"steps"}, desc="toy")
    return model, run, Method(strategy, cfg.steps), seen


def test_the_driver_trains_a_family_it_has_never_seen(tmp_path):
    cfg = ToyConfig(out=str(tmp_path / "run"))
    model, run, method, seen = toy(cfg)
    before = F.mse_loss(model(run.batches(0)[0]), run.batches(0)[1]).item()
    progress, history, step_times = train_run(cfg, run, method, show=False)
    assert progress.step == 12 and seen == [4, 8, 12] and len(step_times) > 0
    assert history[-1]["val_loss"] < before / 4  # it learnt
    assert checkpoint.read_progress(tmp_path / "run" / "checkpoint").step == 12
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved == cfg.to_dict()


def test_an_interrupted_toy_run_resumes_bit_exact(tmp_path):
    whole, run, method, _ = toy(ToyConfig(out=str(tmp_path / "whole")))
    train_run(ToyConfig(out=str(tmp_path / "whole")), run, method, show=False)

    cfg = ToyConfig(out=str(tmp_path / "cut"))
    model, run, method, _ = toy(cfg, stop_after=8)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, run, method, show=False)
    model, run, method, _ = toy(cfg)  # a fresh process: new model, same config
    progress, _, _ = train_run(cfg, run, method, show=False)
    assert progress.step == 12
    for a, b in zip(whole.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_driver_refuses_to_resume_another_config(tmp_path):
    cfg = ToyConfig(out=str(tmp_path / "run"))
    train_run(cfg, *toy(cfg)[1:3], show=False)
    other = ToyConfig(out=cfg.out, seed=1)
    with pytest.raises(ValueError, match="seed"):
        train_run(other, *toy(other)[1:3], show=False)
