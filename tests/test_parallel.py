"""Block-parallel training: placement of ranks, block jobs and merge, torchrun with DDP groups,
a killed worker's restart, and the parallel benchmark."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from diffusionblocks import checkpoint, cli
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.parallel import place
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import Blockwise, OptimConfig, step_generator

HELPERS = Path(__file__).parent / "helpers"

# --- placement --------------------------------------------------------------------------------


def test_ranks_split_into_one_group_per_block():
    assert [place(3, r, 3).blocks for r in range(3)] == [[0], [1], [2]]
    six = [place(3, r, 6) for r in range(6)]
    assert [p.blocks for p in six] == [[0], [0], [1], [1], [2], [2]]
    assert [p.members for p in six] == [(0, 1), (0, 1), (2, 3), (2, 3), (4, 5), (4, 5)]
    assert [p.leader for p in six] == [True, False] * 3
    assert [place(4, r, 2).blocks for r in range(2)] == [[0, 2], [1, 3]]


@pytest.mark.parametrize("blocks, world, words", [
    (3, 4, "4 processes cannot be split evenly over 3 blocks"),
    (3, 2, "3 blocks cannot be split evenly over 2 processes"),
])
def test_uneven_placement_is_refused(blocks, world, words):
    with pytest.raises(ValueError, match=words):
        place(blocks, 0, world)


# --- block jobs and merge ---------------------------------------------------------------------

JOB = dict(dataset="digits", mode="dblocks", blocks=3, batch_size=64, evals=1, steps=150,
           vit=ViTConfig(width=32, depth=3, heads=2), optim=OptimConfig(lr=None, warmup=20))


@pytest.fixture(scope="module")
def jobs(digits, tmp_path_factory):
    """Three independent block jobs, as three machines would run them."""
    root = tmp_path_factory.mktemp("jobs")
    results = [classify.train(ClassifyConfig(block=k, out=str(root / f"b{k}"), **JOB), digits, show=False)
               for k in range(3)]
    return root, results


def test_a_block_job_trains_and_stores_only_its_block(jobs, digits):
    root, results = jobs
    for k, result in enumerate(results):
        files = {f.name for f in (root / f"b{k}" / "checkpoint").glob("*.safetensors")}
        assert files == {"shared.safetensors", f"block_{k}.safetensors"}
        assert result["steps"] == 150  # its share of the 3 × 150 block steps
        assert result["block_accuracy"][k] > 0.5  # its own denoiser, on noisy labels
    # the job's block moved away from its initialization (the seed gives every job the same one)
    fresh = classify.build(classify.resolve_config(ClassifyConfig(**JOB), digits))
    trained = load_file(str(root / "b1" / "checkpoint" / "block_1.safetensors"))
    assert not all(torch.equal(v, fresh.blocks[1].state_dict()[k]) for k, v in trained.items())


def test_a_subset_strategy_never_moves_the_other_blocks(digits, batch):
    cfg = tiny_config(digits)
    model = classify.build(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = Blockwise(model, cfg.optim, blocks=[1])
    assert set(strategy.optimizers) == {"block_1"}  # the frozen shared parts have none
    assert {strategy.step(*batch, step_generator(0, t))["block"] for t in range(5)} == {1}
    after = model.state_dict()
    moved = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"1"}


def test_merged_block_jobs_make_a_working_classifier(jobs, digits, tmp_path, capsys):
    root, _ = jobs
    cli.main(["merge", *(str(root / f"b{k}" / "checkpoint") for k in range(3)), "--out", str(tmp_path)])
    assert json.loads(capsys.readouterr().out)["checkpoint"].endswith("checkpoint")
    model, cfg = classify.load(tmp_path / "checkpoint")
    assert cfg.block is None
    accuracy = classify.evaluate(model, digits.x_test, digits.y_test, cfg)
    assert accuracy > 0.4  # chance is 0.1
    for k in range(3):
        job = load_file(str(root / f"b{k}" / "checkpoint" / f"block_{k}.safetensors"))
        assert all(torch.equal(v, model.blocks[k].state_dict()[name]) for name, v in job.items())
    assert checkpoint.read_progress(tmp_path / "checkpoint").layer_evals == 3 * 150
    with pytest.raises(ValueError, match="assemble the blocks first with `diffusionblocks merge`"):
        classify.load(root / "b0" / "checkpoint")  # one block alone is not a classifier
    with pytest.raises(ValueError, match="can be evaluated, not resumed"):
        classify.train(ClassifyConfig(out=str(tmp_path), **JOB), digits, show=False)


def test_merge_refuses_missing_duplicate_and_mismatched_blocks(jobs, digits, tmp_path):
    root, _ = jobs
    b = [root / f"b{k}" / "checkpoint" for k in range(3)]
    with pytest.raises(ValueError, match=r"no checkpoint holds block\(s\) \[2\]"):
        classify.merge(b[:2], tmp_path / "m")
    with pytest.raises(ValueError, match="block 1 is in both"):
        classify.merge([b[0], b[1], b[1], b[2]], tmp_path / "m")
    other = dict(JOB, vit=ViTConfig(width=16, depth=3, heads=2), steps=2)
    classify.train(ClassifyConfig(block=2, out=str(tmp_path / "w16"), **other), digits, show=False)
    with pytest.raises(ValueError, match=r"configs differ \(vit: "):
        classify.merge([b[0], b[1], tmp_path / "w16" / "checkpoint"], tmp_path / "m")
    # co-trained shared parts move in each job: refused, unless averaging is asked for
    cot = dict(JOB, shared_policy="cotrained", steps=2)
    for k in range(3):
        classify.train(ClassifyConfig(block=k, out=str(tmp_path / f"c{k}"), **cot), digits, show=False)
    cots = [tmp_path / f"c{k}" / "checkpoint" for k in range(3)]
    with pytest.raises(ValueError, match="shared parts differ .* --average-shared"):
        classify.merge(cots, tmp_path / "m")
    classify.merge(cots, tmp_path / "avg", average_shared=True)
    shared = [load_file(str(c / "shared.safetensors")) for c in cots]
    merged = load_file(str(tmp_path / "avg" / "checkpoint" / "shared.safetensors"))
    expected = (shared[0]["table.weight"] + shared[1]["table.weight"] + shared[2]["table.weight"]) / 3
    assert torch.allclose(merged["table.weight"], expected)


def test_block_and_parallel_config_errors():
    with pytest.raises(ValueError, match="block 3 does not exist: blocks are numbered 0 to 2"):
        ClassifyConfig(block=3)
    with pytest.raises(ValueError, match="needs --mode dblocks"):
        ClassifyConfig(mode="e2e", block=0)
    ClassifyConfig(mode="e2e", parallel=True)  # end to end under torchrun: data parallel
    with pytest.raises(ValueError, match="use one or the other"):
        ClassifyConfig(block=0, parallel=True)
    with pytest.raises(ValueError, match="needs torchrun"):
        classify.train(ClassifyConfig(parallel=True, steps=1), show=False)


# --- torchrun ---------------------------------------------------------------------------------

TINY = ["train", "classify", "--dataset", "digits", "--width", "32", "--depth", "2", "--heads", "2",
        "--batch-size", "32", "--warmup", "5", "--quiet"]


def torchrun(nproc: int, args: list[str], script: list[str] | None = None, env: dict | None = None,
             restarts: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", f"--max-restarts={restarts}",
               *(script or ["-m", "diffusionblocks"]), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchrun_block_parallel_with_ddp_groups(tmp_path):
    # 4 ranks, 2 blocks: two groups of two ranks, DDP inside each group; the co-trained label
    # table is averaged over all ranks every 7 steps (so the last step is not a sync step)
    torchrun(4, [*TINY, "--blocks", "2", "--steps", "100", "--evals", "2", "--parallel",
                 "--shared-policy", "cotrained", "--sync-every", "7", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["processes"] == 4 and result["groups"] == 2
    assert result["test_accuracy"] > 0.2  # chance is 0.1; one process gets 0.34 on this budget
    for g in range(2):
        files = {f.name for f in (tmp_path / f"group_{g}" / "checkpoint").glob("*.safetensors")}
        assert files == {"shared.safetensors", f"block_{g}.safetensors"}  # each group: its block only
        merged = load_file(str(tmp_path / "checkpoint" / f"block_{g}.safetensors"))
        group = load_file(str(tmp_path / f"group_{g}" / "checkpoint" / f"block_{g}.safetensors"))
        assert all(torch.equal(merged[k], group[k]) for k in group)


def test_a_killed_worker_restarts_from_its_own_checkpoint(tmp_path):
    marker = tmp_path / "died"
    out = tmp_path / "run"
    torchrun(2, [*TINY, "--blocks", "2", "--steps", "40", "--evals", "4", "--parallel", "--out", str(out)],
             script=[str(HELPERS / "die_once.py")], env={"DIE_ONCE_MARKER": str(marker)}, restarts=1)
    assert marker.exists()  # rank 1 did die once, after its first checkpoint (step 10)
    log = [json.loads(line) for line in (out / "group_1" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # resumed, nothing repeated
    assert [r["step"] for r in log if "block_accuracy" in r] == [10, 20, 30, 40]
    assert checkpoint.read_progress(out / "group_1" / "checkpoint").step == 40
    assert json.loads((out / "result.json").read_text())["test_examples"] == 360  # merged, evaluated


@pytest.mark.parametrize("task", [[], ["--task", "generate"], ["--task", "mdm"]])
def test_bench_parallel_writes_the_throughput_ratio(task, tmp_path):  # on the default data: digits
    cli.main(["bench", "parallel", *task, "--depth", "2", "--width", "16",
              "--blocks", "2", "--steps", "4", "--warmup", "1", "--repeats", "1", "--quiet",
              "--out", str(tmp_path)])
    record = json.loads((tmp_path / "parallel.json").read_text())
    assert record["processes"] == 2 and record["assignment"] == [[0], [1]]
    assert record["throughput_ratio"] > 0 and record["task"] == (task[1] if task else "classify")


# --- every family ---------------------------------------------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog. " * 120
TINY_TEXT = ["--width", "32", "--depth", "4", "--heads", "2", "--context", "16", "--batch-size", "8",
             "--device", "cpu", "--quiet", "--evals", "1"]
FAMILY = {  # family -> flags of a tiny run (text data is added by the test)
    "generate": ["--dataset", "digits", "--width", "32", "--depth", "4", "--heads", "2", "--steps", "20",
                 "--evals", "1", "--device", "cpu", "--quiet"],
    "ar": [*TINY_TEXT, "--steps", "20", "--num-samples", "2", "--sample-length", "8", "--prompt-length", "4",
           "--judge-steps", "0"],
    "mdm": [*TINY_TEXT, "--steps", "20", "--num-samples", "2", "--bound-passes", "2", "--sample-steps", "4"],
}


@pytest.mark.parametrize("task", ["generate", "ar", "mdm"])
def test_block_jobs_of_every_family_merge_into_one_model(task, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    flags = [*FAMILY[task], *(["--data", str(corpus)] if task != "generate" else []), "--blocks", "2"]
    module = __import__(f"diffusionblocks.tasks.{task}", fromlist=["load"])
    for b in (0, 1):
        cli.main(["train", task, *flags, "--block", str(b), "--out", str(tmp_path / f"job{b}")])
        job = json.loads((tmp_path / f"job{b}" / "result.json").read_text())
        assert job["trained_blocks"] == [b] and job["steps"] == 20  # its share of 2 × 20 block steps
        weights = {f.name for f in (tmp_path / f"job{b}" / "checkpoint").glob("block_*.safetensors")}
        assert weights - {f"block_{b}.ema.safetensors"} == {f"block_{b}.safetensors"}
        with pytest.raises(ValueError, match="holds only part of a model"):
            module.load(tmp_path / f"job{b}" / "checkpoint")
    with pytest.raises(SystemExit) as refused:  # a block twice, none of the other
        cli.main(["merge", str(tmp_path / "job0" / "checkpoint"), str(tmp_path / "job0" / "checkpoint"),
                  "--out", str(tmp_path / "twice")])
    assert refused.value.code == 2 and "block 0 is in both" in capsys.readouterr().err
    jobs = [str(tmp_path / f"job{b}" / "checkpoint") for b in (0, 1)]
    cli.main(["merge", *jobs, "--out", str(tmp_path / "m")])
    model, cfg = module.load(tmp_path / "m" / "checkpoint", averaged=False)  # the raw weights, as stored
    assert cfg.block is None and checkpoint.read_progress(tmp_path / "m" / "checkpoint").step == 40
    for b in (0, 1):
        stored = load_file(str(tmp_path / f"job{b}" / "checkpoint" / f"block_{b}.safetensors"))
        assert all(torch.equal(model.blocks[b].state_dict()[k], stored[k]) for k in stored)


def test_merge_refuses_blocks_of_another_task(tmp_path, capsys):
    cli.main(["train", "generate", *FAMILY["generate"], "--blocks", "2", "--block", "0",
              "--out", str(tmp_path / "g")])
    cli.main(["train", "classify", "--dataset", "digits", "--width", "16", "--depth", "2", "--heads", "2",
              "--blocks", "2", "--steps", "4", "--evals", "1", "--quiet", "--block", "1",
              "--out", str(tmp_path / "c")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        cli.main(["merge", str(tmp_path / "g" / "checkpoint"), str(tmp_path / "c" / "checkpoint"),
                  "--out", str(tmp_path / "m")])
    assert refused.value.code == 2 and "is a classify dblocks checkpoint" in capsys.readouterr().err


def test_torchrun_end_to_end_is_data_parallel_over_every_rank(tmp_path):
    torchrun(2, [*TINY, "--mode", "e2e", "--steps", "30", "--evals", "1", "--parallel",
                 "--out", str(tmp_path)])
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["parallel"] and result["processes"] == 2 and result["test_accuracy"] > 0.15
    assert not list(tmp_path.glob("group_*"))  # one model, in OUT itself
    model, cfg = classify.load(tmp_path / "checkpoint")  # a whole model: it loads
    assert cfg.mode == "e2e" and classify.evaluate(model, *_digits_test(), cfg) == result["test_accuracy"]


def _digits_test():
    from diffusionblocks.data.images import load_images

    data = load_images("digits")
    return data.x_test, data.y_test


def test_torchrun_block_parallel_language_model(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    torchrun(2, ["train", "ar", *FAMILY["ar"], "--data", str(corpus), "--blocks", "2", "--parallel",
                 "--out", str(tmp_path / "run")])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["processes"] == 2 and result["groups"] == 2 and result["steps"] == 40
    assert 0 < result["teacher_forced_accuracy"] <= 1  # the merged model, scored on test
    for g in range(2):
        group = json.loads((tmp_path / "run" / f"group_{g}" / "result.json").read_text())
        assert group["trained_blocks"] == [g] and "block_val_loss" in group["history"][-1]


def test_a_killed_language_model_worker_resumes_to_the_model_of_a_run_without_the_fault(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    flags = ["train", "mdm", *FAMILY["mdm"], "--data", str(corpus), "--blocks", "2", "--evals", "4",
             "--parallel"]
    torchrun(2, [*flags, "--out", str(tmp_path / "clean")])
    marker = tmp_path / "died"
    torchrun(2, [*flags, "--out", str(tmp_path / "faulty")], script=[str(HELPERS / "die_once.py")],
             env={"DIE_ONCE_MARKER": str(marker)}, restarts=1)
    assert marker.exists()  # rank 1 died after its first checkpoint and was restarted
    for name in ("block_0", "block_1"):
        clean = load_file(str(tmp_path / "clean" / "checkpoint" / f"{name}.safetensors"))
        faulty = load_file(str(tmp_path / "faulty" / "checkpoint" / f"{name}.safetensors"))
        assert all(torch.equal(clean[k], faulty[k]) for k in clean), name  # bit for bit


def test_torchrun_compare_puts_both_modes_on_the_same_processes(tmp_path):
    torchrun(2, ["compare", "--dataset", "digits", "--width", "32", "--depth", "2", "--heads", "2",
                 "--batch-size", "32", "--warmup", "5", "--quiet", "--blocks", "2", "--steps", "20",
                 "--evals", "1", "--parallel", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["e2e"]["parallel"] and report["e2e"]["processes"] == 2  # DDP over both ranks
    assert report["dblocks"]["parallel"] and report["dblocks"]["groups"] == 2  # a block per rank
    assert report["e2e"]["layer_evals"] == report["dblocks"]["layer_evals"]
    assert all(report[m]["test_examples"] == 360 for m in ("e2e", "dblocks"))
