"""``diffusionblocks bench``: memory and speed per training step."""

from __future__ import annotations

import argparse
import dataclasses

from .. import configs
from ..data.images import DATASETS
from ..offload import OFFLOAD_TARGETS
from ..training import PRECISIONS
from .flags import (
    HELP,
)


def cmd_bench(args: argparse.Namespace) -> None:
    from ..bench import BenchConfig, run

    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    settings = configs.read_file(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.kind == "parallel" and "blocks" not in given | settings:
        given["blocks"] = [args.processes]  # one block per process
    if args.kind == "parallel" and "dataset" not in given | settings:
        given["dataset"] = "digits"  # embedded: runs anywhere (memory and speed keep MNIST)
    base = configs.overlay(BenchConfig(), settings, where=f"--config {args.config}")
    cfg = dataclasses.replace(base, **given)
    print(run(args.kind, cfg, show=not args.quiet, processes=args.processes,
              train_steps=args.train_steps, repeats=args.repeats))


def _bench_args(parser: argparse.ArgumentParser) -> None:
    from ..bench import TASKS, BenchConfig

    d = BenchConfig()
    parser.add_argument("kind", choices=("memory", "speed", "parallel", "gpu"),
                        help="memory: activations, training state and peak memory per step (a "
                        "process per row); speed: seconds per step, variants interleaved; "
                        "parallel: block-parallel throughput vs one process (B: the first --blocks "
                        "value, default one block per process); gpu: the paper's ViT and DiT-S/2 "
                        "shapes at B = 1, 2, 3, 4, 6 in fp32 and bf16 on one CUDA device "
                        "(peak memory, step time; only --out applies)")
    parser.add_argument("--config", default=None, help="benchmark settings from a TOML file (the "
                        "flags' names, with _ for -); flags given beside it override it")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help=f"family (default: {d.task}; mdm: bench parallel only)")
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help=f"default: {d.dataset} (parallel: digits)")
    parser.add_argument("--data-dir", default=None, help=HELP["data_dir"])
    parser.add_argument("--blocks", type=int, nargs="+", default=None,
                        help=f"block counts B to measure (default: {' '.join(map(str, d.blocks))})")
    parser.add_argument("--depth", type=int, default=None, help=f"layers L (default: {d.depth})")
    parser.add_argument("--width", type=int, default=None, help=f"width (default: {d.width})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default: {d.batch_size}")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per row / rounds (default: {d.steps})")
    parser.add_argument("--warmup", type=int, default=None, help=f"untimed steps first (default: {d.warmup})")
    parser.add_argument("--device", default=None, help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--offload", choices=OFFLOAD_TARGETS, default=None,
                        help="where offloaded blocks go (default: disk on CPU, cpu on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="precision of the measured training steps (default: fp32)")
    parser.add_argument("--out", default=None, help=f"output folder (default: {d.out})")
    parser.add_argument("--processes", type=int, default=2, help="parallel: worker processes")
    parser.add_argument("--repeats", type=int, default=3,
                        help="parallel: measurements of each set-up; the medians are reported")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="parallel: also train to the end (this end-to-end step budget) "
                        "block-parallel and in one process, and compare test accuracy")
    parser.add_argument("--quiet", action="store_true", help="no per-row lines")


def add(sub) -> None:
    """Register the command(s) on the ``diffusionblocks`` subparsers."""
    bench = sub.add_parser("bench", help="measure memory or speed per training step")
    _bench_args(bench)
    bench.set_defaults(func=cmd_bench)
