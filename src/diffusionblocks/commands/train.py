"""``diffusionblocks train TASK``: one run of any family and method."""

from __future__ import annotations

import argparse
import json
import os

from .. import configs
from .flags import (
    CONFIG_HELP,
    TEXT_TASKS,
    WANDB_HELP,
    classify_args,
    generate_args,
    task_config,
    text_args,
    text_module,
    use_wandb,
)


def cmd_train(args: argparse.Namespace) -> None:
    cfg = task_config(args, args.task)
    use_wandb(args)
    if args.dry_run:  # one JSON object, the last line of stdout
        print(json.dumps(configs.dry_run(args.task, cfg)))
        return
    if args.task in TEXT_TASKS:
        result = text_module(args.task).train(cfg, show=not args.quiet)
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
        return
    if args.task == "generate":
        from ..tasks import generate

        result = generate.train(cfg, show=not args.quiet)
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
        return
    from ..tasks import classify

    result = classify.train(cfg, show=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports the merged model
        print(json.dumps({k: v for k, v in result.items() if k not in ("history", "groups_results")},
                         indent=2))


def add(sub) -> None:
    """Register the command(s) on the ``diffusionblocks`` subparsers."""
    train = sub.add_parser("train", help="train one model (resumes from OUT/checkpoint)")
    train_tasks = train.add_subparsers(dest="task", required=True)
    applies = {}  # task -> the settings its runs have (compare refuses the others)
    for task, about in (("classify", "image classification with a ViT"),
                        ("generate", "class-conditional image generation with a DiT"),
                        ("mdm", "masked-diffusion language model (MD4-style)"),
                        ("ar", "autoregressive language model"),
                        ("recurrent", "recurrent-depth language model (unrolled baseline or one denoiser)")):
        task_parser = train_tasks.add_parser(task, help=about)
        if task in TEXT_TASKS:
            text_args(task_parser, task)
        else:
            (classify_args if task == "classify" else generate_args)(task_parser)
        applies[task] = {a.dest for a in task_parser._actions}
        task_parser.add_argument("--config", default=None, help=CONFIG_HELP)
        task_parser.add_argument("--dry-run", action="store_true", help="build the data and the model, "
                                 "print them as one JSON line (parameters per block; data missing or "
                                 "not) and exit without training")
        task_parser.add_argument("--quiet", action="store_true", help="no progress bar")
        task_parser.add_argument("--wandb", default=None, metavar="PROJECT[/GROUP]", help=WANDB_HELP)
        task_parser.set_defaults(func=cmd_train)
    return applies
