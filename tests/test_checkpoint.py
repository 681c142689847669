"""Checkpoints: per-part safetensors, atomic swaps, exact resume, config checks; data errors."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import killed_after_first_checkpoint, tiny_config
from safetensors.torch import load_file, save_file

from diffusionblocks import checkpoint, training
from diffusionblocks.data.images import load_images
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import Blockwise, OptimConfig, Progress, step_generator


def trained_tiny(digits, seed=0, steps=3):
    cfg = tiny_config(digits, seed=seed, shared_policy="cotrained")  # a shared optimizer too
    model = classify.build(cfg)
    strategy = Blockwise(model, OptimConfig())
    for t in range(steps):
        strategy.step(digits.x_train[:16], digits.y_train[:16], step_generator(seed, t))
    return cfg, model, strategy


def test_round_trip_is_bit_exact_one_file_per_part(digits, tmp_path):
    cfg, model, strategy = trained_tiny(digits)
    where = checkpoint.save(tmp_path / "ckpt", model.parts(), cfg.to_dict(), strategy.optimizers,
                            Progress(step=3, layer_evals=6, train_seconds=0.5))
    names = sorted(p.name for p in where.iterdir())
    parts = ["shared", "block_0", "block_1", "block_2"]
    assert names == sorted([f"{p}.safetensors" for p in parts] + [f"{p}.optim.pt" for p in parts]
                           + ["config.json", "progress.json", "manifest.json"])
    manifest = json.loads((where / "manifest.json").read_text())["files"]
    assert set(manifest) == set(names) - {"manifest.json"}
    assert manifest["config.json"]["bytes"] == (where / "config.json").stat().st_size
    # each safetensors file holds exactly its part
    assert set(load_file(str(where / "block_1.safetensors"))) == set(model.blocks[1].state_dict())

    fresh_cfg, fresh, fresh_strategy = trained_tiny(digits, seed=1, steps=0)
    qkv = [m.blocks[0].layers[0].attn.qkv.weight for m in (model, fresh)]
    assert not torch.equal(*qkv)
    checkpoint.load_parts(where, fresh.parts())
    for name, part in model.parts().items():
        want, got = part.state_dict(), fresh.parts()[name].state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name

    # training state: plain tensors and containers, loadable with weights_only=True
    for part in parts:
        state = torch.load(where / f"{part}.optim.pt", weights_only=True)
        assert {"state", "param_groups"} <= state.keys()
    progress = checkpoint.load_training_state(where, fresh_strategy.optimizers)
    assert progress == Progress(step=3, layer_evals=6, train_seconds=0.5)
    for name, opt in strategy.optimizers.items():
        a, b = opt.state_dict()["state"], fresh_strategy.optimizers[name].state_dict()["state"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
    assert checkpoint.read_config(where) == json.loads(json.dumps(cfg.to_dict()))


def test_weights_of_another_model_version_get_one_readable_error(tiny_model, tiny_cfg, tmp_path):
    where = checkpoint.save(tmp_path / "ckpt", tiny_model.parts(), tiny_cfg.to_dict())
    (where / "manifest.json").unlink()  # as written by a version before manifests
    path = str(where / "block_0.safetensors")
    save_file({k.replace("read_out", "head"): v for k, v in load_file(path).items()}, path)
    with pytest.raises(ValueError, match=r"missing \['adapter.read_out.bias', 'adapter.read_out.weight'\], "
                                         r"unexpected \['adapter.head.bias'.*different version"):
        checkpoint.load_parts(where, tiny_model.parts())


def test_save_leaves_no_temporary_or_old_directories(tiny_model, tiny_cfg, tmp_path):
    for _ in range(2):  # the second save swaps over the first
        checkpoint.save(tmp_path / "ckpt", tiny_model.parts(), tiny_cfg.to_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_resolve_recovers_from_a_kill_between_the_renames(tiny_model, tiny_cfg, tmp_path):
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, tiny_model.parts(), tiny_cfg.to_dict())
    ckpt.rename(tmp_path / "ckpt.old")  # killed after "current -> .old", before "tmp -> current"
    assert checkpoint.resolve(ckpt) == tmp_path / "ckpt.old"
    checkpoint.load_parts(ckpt, tiny_model.parts())
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.resolve(tmp_path / "elsewhere")


def test_a_kill_while_saving_over_a_recovered_checkpoint_keeps_one(tiny_model, tiny_cfg, tmp_path,
                                                                  monkeypatch):
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, tiny_model.parts(), tiny_cfg.to_dict())
    ckpt.rename(tmp_path / "ckpt.old")  # an earlier kill between the renames
    real_rename = Path.rename

    def killed(self, target):
        if self.name.startswith("ckpt.tmp-"):
            raise KeyboardInterrupt("killed before the new checkpoint was published")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(ckpt, tiny_model.parts(), tiny_cfg.to_dict())
    monkeypatch.undo()
    assert checkpoint.resolve(ckpt)  # raises FileNotFoundError: neither ckpt nor ckpt.old exists


def resume_config(out):
    return ClassifyConfig(dataset="digits", mode="dblocks", steps=20, evals=2, batch_size=32,
                          vit=ViTConfig(width=16, depth=3, heads=2), out=str(out))


def final_weights(out):
    ckpt = Path(out) / "checkpoint"
    return {f.name: load_file(str(f)) for f in sorted(ckpt.glob("*.safetensors"))}


def test_rerunning_a_finished_run_says_it_reuses_it(digits, tmp_path, capsys):
    first = classify.train(resume_config(tmp_path), digits, show=False)
    assert "resuming" not in capsys.readouterr().err
    again = classify.train(resume_config(tmp_path), digits, show=True)
    err = capsys.readouterr().err
    assert "at step 60 of 60" in err and "already finished" in err and "fresh --out" in err
    assert again["history"] == first["history"]


def test_a_checkpoint_older_than_a_config_field_resumes_with_its_default(digits, tmp_path, capsys):
    old = classify.replace(resume_config(tmp_path), val_size=0)  # before validation splits: none
    first = classify.train(old, digits, show=False)
    config_file = tmp_path / "checkpoint" / "config.json"
    older = {k: v for k, v in json.loads(config_file.read_text()).items() if k not in ("augment", "val_size")}
    config_file.write_text(json.dumps(older))  # as written before those fields (and manifests) existed
    (tmp_path / "checkpoint" / "manifest.json").unlink()
    again = classify.train(old, digits, show=True)
    assert "already finished" in capsys.readouterr().err
    assert again["history"] == first["history"]
    with pytest.raises(ValueError, match="augment: checkpoint '' vs now 'flip'"):
        classify.train(classify.replace(old, augment="flip"), digits, show=False)
    with pytest.raises(ValueError, match="val_size: checkpoint 0 vs now 143"):  # today's default: a tenth
        classify.train(resume_config(tmp_path), digits, show=False)


def test_resume_after_interruption_is_bit_identical(digits, tmp_path, monkeypatch):
    straight = classify.train(resume_config(tmp_path / "straight"), digits, show=False)
    assert straight["steps"] == 60  # 20 end-to-end steps × B=3, equal layer evaluations
    assert straight["layer_evals"] == 60

    killed_after_first_checkpoint(
        monkeypatch, lambda: classify.train(resume_config(tmp_path / "resumed"), digits, show=False))
    progress = json.loads((tmp_path / "resumed" / "checkpoint" / "progress.json").read_text())
    assert progress["step"] == 30

    steps_run = []
    real_step = training.Blockwise.step
    monkeypatch.setattr(training.Blockwise, "step",
                        lambda self, *a: steps_run.append(1) or real_step(self, *a))
    resumed = classify.train(resume_config(tmp_path / "resumed"), digits, show=False)
    assert len(steps_run) == 30  # only the steps after the checkpoint are run again

    assert resumed["steps"] == straight["steps"]
    assert resumed["layer_evals"] == straight["layer_evals"]
    assert [h["step"] for h in resumed["history"]] == [30, 60]
    assert ([h["val_accuracy"] for h in resumed["history"]]
            == [h["val_accuracy"] for h in straight["history"]])
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() == {"shared.safetensors", "block_0.safetensors",
                                    "block_1.safetensors", "block_2.safetensors"}
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    steps_logged = [json.loads(line)["step"]
                    for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(steps_logged)  # records after the checkpoint were not duplicated

    # a different model is refused, naming the field that differs
    other = resume_config(tmp_path / "resumed")
    other.vit = ViTConfig(width=32, depth=3, heads=2)
    with pytest.raises(ValueError, match=r"different config \(vit.width: checkpoint 16 vs now 32\)"):
        classify.train(other, digits, show=False)


def test_missing_data_file_names_the_path_and_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_images("mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mnist" / "mnist.npz") in message
    assert "--data-dir" in message


def test_unknown_dataset_is_a_value_error():
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; choose one of digits, mnist"):
        load_images("nope")


def test_a_second_run_into_the_same_folder_is_refused(digits, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    holder = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
              "f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(60)")
    sleeper = subprocess.Popen([sys.executable, "-c", holder, str(out / ".lock")], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert sleeper.stdout.readline().strip() == "held"  # a live run holds the folder
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {sleeper.pid}\)"):
            classify.train(resume_config(out), digits, show=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone and the kernel dropped its lock: the file it left is no obstacle, nor is
    # a pid that now belongs to an unrelated live process (after a reboot)
    assert (out / ".lock").exists()
    (out / ".lock").write_text(str(os.getppid()))
    result = classify.train(resume_config(out), digits, show=False)
    assert result["steps"] == 60 and not (out / ".lock").exists()


def test_two_runs_racing_for_a_dead_runs_lock_never_both_hold_it(tmp_path):
    # flock belongs to an open file description, so threads opening the lock race as processes do
    import threading

    out = tmp_path / "run"
    out.mkdir()
    for _ in range(40):
        (out / ".lock").write_text("999999")  # a dead run's lock
        start, guard, count = threading.Barrier(4), threading.Lock(), {"inside": 0, "most": 0}
        threads = [threading.Thread(target=_hold_briefly, args=(out, start, guard, count)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert count["most"] == 1  # somebody got it, and never two at once


def _hold_briefly(out, start, guard, count):
    import time

    start.wait()
    try:
        with checkpoint.exclusive(out):
            with guard:
                count["inside"] += 1
                count["most"] = max(count["most"], count["inside"])
            time.sleep(0.005)
            with guard:
                count["inside"] -= 1
    except ValueError:
        pass  # refused: another holds it
