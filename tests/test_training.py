"""The learning-rate schedule and budget matching (METHOD.md §5: schedules stretched by B)."""

import json
import math

import pytest

from diffusionblocks import cli
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import OptimConfig, lr_factor, matched_budget


def test_lr_factor_warms_up_linearly_then_decays_by_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_matched_budget_gives_b_times_the_steps_and_warmup():
    assert matched_budget(1000, 100, 3) == (3000, 300)
    assert matched_budget(1000, 100, 3, match="steps") == (1000, 100)
    with pytest.raises(ValueError, match="unknown budget match 'flops'"):
        matched_budget(1000, 100, 3, match="flops")


def test_training_uses_the_stretched_warmup(digits, tmp_path):
    cfg = ClassifyConfig(mode="dblocks", dataset="digits", blocks=3, steps=2, evals=1, batch_size=32,
                         vit=ViTConfig(width=16, depth=3, heads=2), out=str(tmp_path),
                         optim=OptimConfig(lr=6e-3, warmup=5))
    result = classify.train(cfg, digits, show=False)
    assert result["steps"] == 6
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    assert first["lr"] == pytest.approx(6e-3 / (5 * 3))  # warm-up of 5 e2e steps lasts 15 block steps


def test_eval_cli_overrides_sampler_and_grid(digits, tmp_path, capsys):
    cfg = ClassifyConfig(mode="dblocks", dataset="digits", blocks=3, steps=5, evals=1, batch_size=32,
                         vit=ViTConfig(width=16, depth=3, heads=2), out=str(tmp_path))
    classify.train(cfg, digits, show=False)
    capsys.readouterr()
    cli.main(["eval", str(tmp_path / "checkpoint"), "--sampler", "heun", "--grid", "karras",
              "--sample-steps", "7"])
    report = json.loads(capsys.readouterr().out)
    assert report["test_examples"] == 360 and 0 <= report["test_accuracy"] <= 1
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", str(tmp_path / "checkpoint"), "--sample-steps", "1"])
    assert info.value.code == 2
    assert "sample_steps must be at least 2" in capsys.readouterr().err


def test_refused_resume_leaves_the_run_config_alone(digits, tmp_path):
    small = dict(mode="dblocks", dataset="digits", blocks=3, steps=2, evals=1, batch_size=32,
                 out=str(tmp_path))
    classify.train(ClassifyConfig(vit=ViTConfig(width=16, depth=3, heads=2), **small), digits, show=False)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="different config"):
        classify.train(ClassifyConfig(vit=ViTConfig(width=32, depth=3, heads=2), **small), digits,
                       show=False)
    assert (tmp_path / "config.json").read_text() == before
