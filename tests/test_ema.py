"""Weight averages (EMA): one per block, moved only when its block trains, warmed up, stored
beside the raw weights, used by evaluation, and resumed bit for bit."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import killed_after_first_checkpoint, tiny_config
from safetensors.torch import load_file

from diffusionblocks import training
from diffusionblocks.tasks import classify
from diffusionblocks.training import Averages, Blockwise, step_generator


def test_each_block_has_its_own_average_moved_only_when_it_trains(digits, batch):
    cfg = tiny_config(digits, optim=replace(tiny_config(digits).optim, ema=0.9))
    model = classify.build(cfg)
    strategy = Blockwise(model, cfg.optim)
    shadows = strategy.averages.shadows
    assert set(shadows) == {"block_0", "block_1", "block_2"}  # the frozen shared parts have none
    before = {n: [w.clone() for w in training._weights(s)] for n, s in shadows.items()}
    trained = []
    for t in range(4):
        trained.append(strategy.step(*batch, step_generator(0, t))["block"])
        for b in range(3):
            moved = any(not torch.equal(w, v) for w, v in zip(training._weights(shadows[f"block_{b}"]),
                                                             before[f"block_{b}"]))
            assert moved == (b in trained) and int(shadows[f"block_{b}"].ema_updates) == trained.count(b)


def test_the_decay_warms_up_as_one_plus_n_over_ten_plus_n():
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    averages = Averages({"p": layer}, decay=0.999)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 4.0]):
        with torch.no_grad():
            layer.weight.fill_(value)
        averages.update(["p"])
        decay = min(0.999, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
        assert float(averages.shadows["p"].weight) == pytest.approx(expected, rel=1e-6)


def ema_config(out, **kw):
    from diffusionblocks.models.vit import ViTConfig
    from diffusionblocks.tasks.classify import ClassifyConfig
    from diffusionblocks.training import OptimConfig

    return ClassifyConfig(dataset="digits", mode="dblocks", steps=20, evals=2, batch_size=32,
                          vit=ViTConfig(width=16, depth=3, heads=2), out=str(out),
                          optim=OptimConfig(lr=None, ema=0.99), **kw)


def test_averages_are_stored_used_by_default_and_resume_bit_for_bit(digits, tmp_path, monkeypatch):
    straight = classify.train(ema_config(tmp_path / "straight"), digits, show=False)
    ckpt = tmp_path / "straight" / "checkpoint"
    names = {p.name for p in ckpt.glob("*.safetensors")}
    assert {f"block_{b}.ema.safetensors" for b in range(3)} <= names and "shared.ema.safetensors" not in names
    ema, _ = classify.load(ckpt)
    raw, _ = classify.load(ckpt, averaged=False)
    stored = load_file(str(ckpt / "block_1.ema.safetensors"))
    assert all(torch.equal(v, ema.blocks[1].state_dict()[k]) for k, v in stored.items() if k != "ema_updates")
    assert not all(torch.equal(a, b) for a, b in zip(ema.blocks[1].parameters(), raw.blocks[1].parameters()))
    # the run's own final score is the average's
    assert straight["test_accuracy"] == classify.score(ema, digits, straight_cfg(ckpt))["test_accuracy"]

    killed_after_first_checkpoint(
        monkeypatch, lambda: classify.train(ema_config(tmp_path / "resumed"), digits, show=False))
    resumed = classify.train(ema_config(tmp_path / "resumed"), digits, show=False)
    scores = [[h["val_accuracy"] for h in r["history"]] for r in (resumed, straight)]
    assert scores[0] == scores[1]
    for f in sorted(ckpt.glob("*.safetensors")):
        a, b = load_file(str(f)), load_file(str(tmp_path / "resumed" / "checkpoint" / f.name))
        assert all(torch.equal(a[k], b[k]) for k in a), f.name


def straight_cfg(ckpt):
    from diffusionblocks.tasks.classify import ClassifyConfig

    return ClassifyConfig.from_dict(json.loads((ckpt / "config.json").read_text()))


def test_merged_blocks_keep_their_averages(digits, tmp_path):
    for b in range(3):
        classify.train(ema_config(tmp_path / f"b{b}", block=b), digits, show=False)
    classify.merge([tmp_path / f"b{b}" / "checkpoint" for b in range(3)], tmp_path / "merged")
    merged = tmp_path / "merged" / "checkpoint"
    for b in range(3):
        job = load_file(str(tmp_path / f"b{b}" / "checkpoint" / f"block_{b}.ema.safetensors"))
        kept = load_file(str(merged / f"block_{b}.ema.safetensors"))
        assert all(torch.equal(job[k], kept[k]) for k in job)


def test_an_ema_outside_0_1_is_refused():
    from diffusionblocks.training import OptimConfig

    with pytest.raises(ValueError, match=r"ema must lie in \[0, 1\)"):
        OptimConfig(ema=1.0)


@pytest.mark.parametrize("offload,checkpointing", [("disk", False), ("cpu", True)])
def test_bf16_and_averages_with_offload_and_checkpointing_resume_bit_for_bit(
        digits, tmp_path, monkeypatch, offload, checkpointing):
    def cfg(out):
        base = ema_config(out, offload=offload, checkpointing=checkpointing)
        return replace(base, optim=replace(base.optim, precision="bf16"))

    straight = classify.train(cfg(tmp_path / "straight"), digits, show=False)
    killed_after_first_checkpoint(monkeypatch, lambda: classify.train(cfg(tmp_path / "resumed"), digits,
                                                                      show=False))
    resumed = classify.train(cfg(tmp_path / "resumed"), digits, show=False)
    scores = [[h["val_accuracy"] for h in r["history"]] for r in (resumed, straight)]
    assert scores[0] == scores[1]
    ckpt = tmp_path / "straight" / "checkpoint"
    assert {f"block_{b}.ema.safetensors" for b in range(3)} <= {p.name for p in ckpt.glob("*.safetensors")}
    for f in sorted(ckpt.glob("*.safetensors")):
        a, b = load_file(str(f)), load_file(str(tmp_path / "resumed" / "checkpoint" / f.name))
        assert all(torch.equal(a[k], b[k]) for k in a), f.name
