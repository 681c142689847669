"""``merge``, ``export`` and ``launch``: blocks trained apart, assembled, shared, scheduled."""

from __future__ import annotations

import argparse
import json

from .flags import (
    MERGING,
    task_config,
)


def cmd_merge(args: argparse.Namespace) -> None:
    import importlib

    from .. import checkpoint
    from ..hub import resolve

    args.checkpoints = [resolve(c) for c in args.checkpoints]  # folders, or hf:ORG/NAME[/SUB][@REV]
    task = checkpoint.read_config(args.checkpoints[0]).get("task")
    if task not in MERGING:
        raise ValueError(f"{args.checkpoints[0]} is a {task} checkpoint; merge assembles block jobs of "
                         f"{', '.join(MERGING)} (a recurrent-depth model is one block)")
    module = importlib.import_module(f"..tasks.{task}", __package__)
    where = module.merge(args.checkpoints, args.out, average_shared=args.average_shared)
    print(json.dumps({"merged": [str(c) for c in args.checkpoints], "checkpoint": str(where)}, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    from .. import hub

    folder = hub.save_pretrained(args.checkpoint, args.folder)
    report = {"checkpoint": str(args.checkpoint), "folder": str(folder)}
    if args.push_to_hub:
        report["hub"] = hub.push_to_hub(folder, args.push_to_hub, args.subfolder, args.revision)
    print(json.dumps(report, indent=2))


def cmd_launch(args: argparse.Namespace) -> None:
    from ..launch import Resources, launch

    train = args.train[1:] if args.train[:1] == ["--"] else args.train
    if train[:1] != ["train"] or len(train) < 2:
        raise ValueError("launch takes the run after --: diffusionblocks launch [options] -- train "
                         "TASK ...")
    run = args.parser.parse_args(train)
    cfg = task_config(run, run.task)
    if getattr(cfg, "mode", "dblocks") != "dblocks" or not hasattr(cfg, "block"):
        raise ValueError(f"launch cuts a DiffusionBlocks run into block jobs; `{' '.join(train[:2])}` "
                         f"trains {getattr(cfg, 'mode', '?')} (give --mode dblocks)")
    if cfg.block is not None or cfg.parallel:
        raise ValueError("launch gives each job its --block; leave --block and --parallel out")
    resources = Resources(args.partition, args.timeout_min, args.gpus_per_block, args.cpus_per_block,
                          args.mem_gb, args.max_parallel)
    print(json.dumps(launch(train, cfg.blocks, cfg.out, args.cluster, resources, args.wait), indent=2))


def add(sub, parser) -> None:
    """Register the command(s) on the ``diffusionblocks`` subparsers."""
    merge = sub.add_parser("merge", help="assemble separately trained blocks into one model")
    merge.add_argument("checkpoints", nargs="+", help="checkpoint directories of block jobs "
                       "(OUT/checkpoint of each `train ... --block k`, or their exported folders, "
                       "or Hub sources hf:ORG/NAME[/SUBFOLDER][@REVISION])")
    merge.add_argument("--out", required=True, help="folder for the merged model (OUT/checkpoint)")
    merge.add_argument("--average-shared", action="store_true",
                       help="average shared parts that differ (co-trained) instead of refusing")
    merge.set_defaults(func=cmd_merge)

    export = sub.add_parser("export", help="write a run's model as a shared folder (save_pretrained: "
                            "config, safetensors, model card), and optionally push it to the Hub")
    export.add_argument("checkpoint", help="a run's OUT/checkpoint (a block job's too)")
    export.add_argument("folder", help="the folder to write (from_pretrained reads it)")
    export.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                        help="upload the folder to this Hub repository (needs a token and network)")
    export.add_argument("--subfolder", default=None, help="--push-to-hub into this subfolder (one "
                        "block of a model trained as block jobs: block_k)")
    export.add_argument("--revision", default=None, help="--push-to-hub onto this branch")
    export.set_defaults(func=cmd_export)

    launch = sub.add_parser("launch", help="train every block as a task of one Slurm array, then merge "
                            "them in a job that waits for all (submitit; the slurm extra)")
    launch.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                        help="slurm: submit and return; local: run the jobs here and wait (a dry run)")
    launch.add_argument("--partition", default=None, help="Slurm partition of the block tasks")
    launch.add_argument("--timeout-min", type=int, default=60, help="wall time of each task (a "
                        "task that runs out is requeued and resumes from its checkpoint)")
    launch.add_argument("--gpus-per-block", type=int, default=0, help="GPUs of each block task")
    launch.add_argument("--cpus-per-block", type=int, default=2, help="CPU cores of each block task")
    launch.add_argument("--mem-gb", type=int, default=None, help="memory of each block task")
    launch.add_argument("--max-parallel", type=int, default=None, help="at most this many blocks at once")
    launch.add_argument("--wait", action="store_true", help="wait for the merge before returning")
    launch.add_argument("train", nargs=argparse.REMAINDER, help="-- train TASK ... --out OUT: the "
                        "run to cut into block jobs (each gets --block k --out OUT/block_k)")
    launch.set_defaults(func=cmd_launch, parser=parser)
