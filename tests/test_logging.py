"""Logging: metrics.jsonl for every run, and with --tensorboard the same run as TensorBoard scalars."""

import json
import sys

import pytest
from conftest import tiny_config

from diffusionblocks import cli
from diffusionblocks.runs import flat_numbers
from diffusionblocks.tasks import classify, mdm

TEXT = "to be or not to be, that is the question. " * 60


def board(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar written under ``folder``: tag -> [(step, value)]."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_flat_numbers_name_nested_metrics_by_path():
    record = {"step": 3, "block_accuracy": {"0": 0.5, "2": 0.75}, "fid": float("nan"), "mode": "e2e",
              "ok": True}
    assert flat_numbers(record) == {"step": 3, "block_accuracy/0": 0.5, "block_accuracy/2": 0.75}


def test_blockwise_classification_writes_loss_per_block_lr_throughput_and_accuracy(digits, tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    cfg = tiny_config(digits, steps=8, evals=2, tensorboard=True, out=str(tmp_path / "run"))
    classify.train(cfg, data=digits, show=False)
    scalars = board(tmp_path / "run" / "tensorboard")
    assert [t for t, _ in scalars["train/loss"]] == list(range(1, 25))  # every step (B × 8)
    per_block = sum(len(scalars.get(f"train/loss_block_{b}", [])) for b in range(3))
    assert per_block == 24 and len(scalars["train/lr"]) == 24
    assert all(v > 0 for _, v in scalars["throughput/layer_evals_per_second"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    evaluations = [r for r in map(json.loads, lines) if "loss" not in r]
    name = next(k for k in evaluations[0] if k.endswith("_accuracy"))
    assert len(evaluations) == 2
    assert scalars[f"eval/{name}"] == [(r["step"], pytest.approx(r[name])) for r in evaluations]


def test_a_text_run_logs_its_evaluations_and_a_resume_continues_the_board(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    from diffusionblocks.models.lm import LMConfig

    base = dict(data=str(path), device="cpu", batch_size=4, evals=2, blocks=2, bound_passes=2,
                lm=LMConfig(vocab_size=1, context=16, width=16, depth=2, heads=2), tensorboard=True,
                out=str(tmp_path / "run"))
    mdm.train(mdm.MDMConfig(steps=2, **base), show=False, evaluate=False)
    mdm.train(mdm.MDMConfig(steps=4, **base), show=False, evaluate=False)
    scalars = board(tmp_path / "run" / "tensorboard")
    assert [t for t, _ in scalars["train/loss"]] == list(range(1, 9))  # resumed at 4, no repeats
    assert [t for t, _ in scalars["eval/val_bpc"]] == [2, 4, 8]  # every 2 steps of 4, then of 8


def test_tensorboard_without_the_package_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "classify", "--dataset", "digits", "--steps", "2", "--tensorboard",
                  "--quiet", "--out", str(tmp_path / "run")])
    code = exit_.value.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'diffusionblocks[tensorboard]'" in err[0]
