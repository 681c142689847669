"""The Slurm launcher (launch.py): block jobs as one array and a merge that depends on it; with
submitit's local executor, three block jobs train and merge for real."""

import json

import pytest
import torch

from diffusionblocks import checkpoint, cli, launch
from diffusionblocks.tasks import classify

pytest.importorskip("submitit")

TRAIN = ["train", "classify", "--width", "16", "--depth", "3", "--heads", "2", "--steps", "3",
         "--evals", "1", "--batch-size", "32", "--quiet"]


def test_local_executor_trains_three_block_jobs_and_merges_them(tmp_path, capsys):
    out = tmp_path / "run"
    cli.main(["launch", "--cluster", "local", "--", *TRAIN, "--out", str(out)])
    report = json.loads(capsys.readouterr().out)
    assert len(report["blocks"]) == 3 and report["merged"] == str(out / "merged" / "checkpoint")
    merged, cfg = classify.load(out / "merged" / "checkpoint")
    assert cfg.block is None and cfg.mode == "dblocks"
    for b in range(3):  # each block as its job trained it
        trained = checkpoint.read(out / f"block_{b}" / "checkpoint", parts=None).tensors(f"block_{b}")
        mine = merged.parts()[f"block_{b}"].state_dict()
        assert all(torch.equal(trained[k], mine[k]) for k in trained)


class FakeJob:
    def __init__(self, job_id):
        self.job_id = job_id


class FakeExecutor:
    made = []

    def __init__(self, folder, cluster):
        self.folder, self.cluster, self.params, self.calls = folder, cluster, [], []
        FakeExecutor.made.append(self)

    def update_parameters(self, **kw):
        self.params.append(kw)

    def map_array(self, fn, argvs):
        self.calls.append(("array", argvs))
        return [FakeJob(f"777_{i}") for i in range(len(argvs))]

    def submit(self, fn, argv):
        self.calls.append(("merge", argv))
        return FakeJob("778")


def test_slurm_submits_an_array_and_a_merge_that_waits_for_it(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    resources = launch.Resources(partition="gpu", gpus_per_block=1, timeout_min=30, max_parallel=2,
                                 extra={"account": "lab"})
    report = launch.launch([*TRAIN, "--out", "x"], 3, tmp_path, "slurm", resources)
    ex = FakeExecutor.made[-1]
    (kind, argvs), (mkind, merge) = ex.calls
    assert kind == "array"
    jobs = [["--block", str(b), "--out", str(tmp_path / f"block_{b}")] for b in range(3)]
    assert [a[-4:] for a in argvs] == jobs
    block_params, merge_params = ex.params[0], ex.params[1]
    assert block_params["slurm_partition"] == "gpu" and block_params["gpus_per_node"] == 1
    assert block_params["slurm_array_parallelism"] == 2 and block_params["timeout_min"] == 30
    assert merge_params["slurm_additional_parameters"] == {"account": "lab", "dependency": "afterok:777"}
    assert merge_params["gpus_per_node"] == 0
    assert mkind == "merge" and merge[0] == "merge" and merge[-1] == str(tmp_path / "merged")
    assert report == {"blocks": ["777_0", "777_1", "777_2"], "out": str(tmp_path), "cluster": "slurm",
                      "merge": "778"}


def test_a_preempted_task_is_requeued_with_the_same_command():
    from submitit.helpers import DelayedSubmission

    again = launch.Command().checkpoint(["train", "classify", "--block", "1"])
    assert isinstance(again, DelayedSubmission) and again.args == (["train", "classify", "--block", "1"],)


@pytest.mark.parametrize("argv, words", [
    (["--", *TRAIN, "--mode", "e2e"], "cuts a DiffusionBlocks run into block jobs"),
    (["--", *TRAIN, "--block", "0"], "leave --block and --parallel out"),
    (["eval", "x"], "launch takes the run after --"),
])
def test_launch_refuses_what_it_cannot_cut(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["launch", "--cluster", "local", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and words in err
