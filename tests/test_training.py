"""The learning-rate schedule, budget matching (METHOD.md §5: schedules stretched by B), and where
training draws its randomness and data."""

import json
import math

import pytest
import torch

from diffusionblocks import cli
from diffusionblocks.data.images import Batches, on_device
from diffusionblocks.data.text import Windows
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.noise import NoiseConfig, sample_sigma
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import OptimConfig, lr_factor, matched_budget, step_generator


def test_lr_factor_warms_up_linearly_then_decays_by_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_lr_factor_constant_schedule_keeps_the_peak_after_warm_up():
    assert lr_factor(4, 100, 10, "constant") == pytest.approx(0.5)
    assert [lr_factor(t, 100, 10, "constant") for t in (9, 50, 99)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        OptimConfig(schedule="linear")


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


def test_training_draws_are_pinned_to_seed_and_step():
    """σ, ε and training windows come from (seed, step) on the training device; on the CPU they
    are the numbers runs drew before the draws moved to the device, so old runs resume exactly."""
    gen = step_generator(0, 7, "cpu")
    assert gen.device == torch.device("cpu")
    sigma = sample_sigma(NoiseConfig(), 3, 1.0, 10.0, gen)
    eps = torch.randn(2, generator=gen, device=gen.device)
    assert sigma.tolist() == pytest.approx([1.2732065, 1.2662143, 3.2734776], abs=1e-6)
    assert eps.tolist() == pytest.approx([-1.2514001, -1.8840676], abs=1e-6)
    windows = Windows(torch.arange(100), 2, 3, 5)
    assert windows(4).tolist() == [[91, 92, 93], [11, 12, 13]]
    assert windows(4).device == torch.device("cpu")


def test_on_device_keeps_cpu_tensors_in_place():
    x = torch.arange(6)
    assert on_device(x, "cpu") is x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_data_and_draws_live_on_the_accelerator():
    x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 10
    batches = Batches(x, y, 16, 0, "cuda", ("flip", "crop"))
    assert batches.x.is_cuda and batches.y.is_cuda  # moved once
    xb, yb = batches(3)
    assert xb.is_cuda and yb.is_cuda
    gen = step_generator(0, 3, "cuda")
    assert sample_sigma(NoiseConfig(), 4, 1.0, 10.0, gen).is_cuda
    assert Windows(torch.arange(500), 4, 8, 0, "cuda")(2).is_cuda
