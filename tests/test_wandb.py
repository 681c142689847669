"""--wandb writes offline runs whose config, group, job type and per-block losses read back."""

import pytest

from diffusionblocks import cli

pytest.importorskip("wandb")
from helpers.wandb_file import summary  # noqa: E402

TINY = ["train", "classify", "--width", "16", "--depth", "3", "--heads", "2", "--steps", "6",
        "--evals", "2", "--batch-size", "32", "--quiet", "--wandb", "dbtests"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "DIFFUSIONBLOCKS_WANDB_GROUP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIFFUSIONBLOCKS_WANDB", "")  # restored after the test, whatever --wandb sets


def run_file(folder):
    files = list(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return summary(files[0])


def test_block_jobs_log_one_group_a_job_type_each_and_their_own_losses(tmp_path, capsys):
    for b in (0, 1):  # two jobs, as on two machines: one group named for both
        cli.main([*TINY, "--block", str(b), "--wandb", "dbtests/exp", "--out", str(tmp_path / f"job{b}")])
    capsys.readouterr()
    for b in (0, 1):
        run = run_file(tmp_path / f"job{b}")
        assert run["group"] == "exp" and run["job_type"] == f"block_{b}"
        assert run["config"]["mode"] == "dblocks" and run["config"]["block"] == b
        losses = [h for h in run["history"] if "train/loss" in h]
        assert len(losses) == 6 and all(f"train/loss_block_{b}" in h for h in losses)
        assert not any(f"train/loss_block_{1 - b}" in h for h in losses)
        evals = [h for h in run["history"] if "eval/block_accuracy/" + str(b) in h]
        assert evals and all(h["memory/peak_mib"] > 0 for h in evals)
        assert all("throughput/layer_evals_per_second" in h for h in losses)


def test_a_method_that_trains_every_block_logs_each_blocks_loss(tmp_path, capsys):
    cli.main([*TINY, "--mode", "local", "--out", str(tmp_path / "loc")])
    capsys.readouterr()
    run = run_file(tmp_path / "loc")
    assert run["job_type"] == "local" and run["group"] == "loc"  # the group: --out's name
    step = next(h for h in run["history"] if "train/loss" in h)
    assert {f"train/loss_block_{b}" for b in range(3)} <= step.keys()
