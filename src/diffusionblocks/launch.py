"""Block jobs on a cluster scheduler (submitit): one Slurm array with a task per block, then one
merge job that starts when every block has finished (``afterok``).

    diffusionblocks launch --partition gpu --gpus-per-block 1 -- \
        train classify --config configs/cpu/cifar10.toml --out runs/c10

Each task runs ``diffusionblocks train ... --block k --out OUT/block_k`` in its own process; a
task that Slurm pre-empts or times out is requeued (submitit's checkpointing) and resumes from
its checkpoint, since every run does. The merge job assembles ``OUT/block_k/checkpoint`` into
``OUT/merged/checkpoint``; the scheduler's logs go to ``OUT/launch``. ``--cluster local`` runs
the same jobs as processes on this machine (what the tests use) and waits for them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:  # optional: the slurm extra
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover - refused in launch() with one line
    Checkpointable = object


def _finished(job, logs: Path) -> str:
    """A job's output once it has finished; a failed job is one line naming it and its logs."""
    try:
        return job.result()
    except Exception as e:  # noqa: BLE001 - submitit wraps the job's error with its traceback
        last = next((ln for ln in reversed(str(e).splitlines()) if "failed (" in ln), str(e).splitlines()[-1])
        raise ValueError(f"job {job.job_id} failed: {last.strip()} (logs in {logs})") from None


class Command(Checkpointable):
    """A CLI command run in a child process; on pre-emption or timeout submitit requeues it with
    the same arguments, and the command resumes from its checkpoint."""

    def __call__(self, argv: list[str]) -> str:
        done = subprocess.run([sys.executable, "-m", "diffusionblocks", *argv], capture_output=True,
                              text=True)
        if done.returncode:
            raise RuntimeError(f"`diffusionblocks {' '.join(argv)}` failed ({done.returncode}): "
                               f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
        return done.stdout


@dataclass
class Resources:
    """What each block task asks of the scheduler."""

    partition: str | None = None
    timeout_min: int = 60
    gpus_per_block: int = 0
    cpus_per_block: int = 2
    mem_gb: int | None = None
    max_parallel: int | None = None  # at most this many blocks at once (the array's %)
    extra: dict = field(default_factory=dict)  # further sbatch settings, e.g. {"account": "lab"}

    def parameters(self, cluster: str) -> dict:
        if cluster == "local":
            return {"timeout_min": self.timeout_min}
        p = {"timeout_min": self.timeout_min, "slurm_partition": self.partition,
             "gpus_per_node": self.gpus_per_block, "cpus_per_task": self.cpus_per_block,
             "slurm_array_parallelism": self.max_parallel, "mem_gb": self.mem_gb,
             "slurm_additional_parameters": dict(self.extra)}
        return {k: v for k, v in p.items() if v not in (None, {})}


def block_commands(train: list[str], blocks: int, out: Path) -> list[list[str]]:
    """The train command of each block task: ``train`` with ``--block k --out OUT/block_k``."""
    return [[*train, "--block", str(b), "--out", str(out / f"block_{b}")] for b in range(blocks)]


def merge_command(blocks: int, out: Path) -> list[str]:
    return ["merge", *(str(out / f"block_{b}" / "checkpoint") for b in range(blocks)), "--out",
            str(out / "merged")]


def launch(train: list[str], blocks: int, out: str | Path, cluster: str = "slurm",
           resources: Resources | None = None, wait: bool = False) -> dict:
    """Submit the block tasks of ``train`` (a ``train TASK ...`` argument list without ``--out``)
    as one array and the merge as a job depending on all of them; returns the job ids. With
    ``cluster='local'`` (or ``wait``) the jobs run to the end before it returns."""
    try:
        import submitit
    except ImportError:
        raise ValueError("launch needs the submitit package: pip install "
                         "'diffusionblocks[slurm]'") from None
    out, resources = Path(out), resources or Resources()
    logs = out / "launch"
    logs.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=str(logs), cluster=cluster)
    executor.update_parameters(name="dblocks-block", **resources.parameters(cluster))
    jobs = executor.map_array(Command(), block_commands(train, blocks, out))
    report = {"blocks": [j.job_id for j in jobs], "out": str(out), "cluster": cluster}
    if cluster == "local":  # no scheduler to hold the merge back: wait for the blocks here
        for j in jobs:
            _finished(j, logs)
        merge_params = {}
    else:
        array = jobs[0].job_id.split("_")[0]
        extra = {**resources.parameters(cluster).get("slurm_additional_parameters", {}),
                 "dependency": f"afterok:{array}"}
        merge_params = {"slurm_additional_parameters": extra, "slurm_array_parallelism": None,
                        "gpus_per_node": 0}
    executor.update_parameters(name="dblocks-merge", **{k: v for k, v in merge_params.items()
                                                        if v is not None})
    merge = executor.submit(Command(), merge_command(blocks, out))
    report["merge"] = merge.job_id
    if wait or cluster == "local":
        if wait:
            for j in jobs:
                _finished(j, logs)
        report["merged"] = json.loads(_finished(merge, logs))["checkpoint"]
    (logs / "jobs.json").write_text(json.dumps(report, indent=2))
    return report
