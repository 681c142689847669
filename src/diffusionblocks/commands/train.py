"""``diffusionblocks train TASK``: one run of any family and method."""

from __future__ import annotations

import argparse
import json
import os

from .. import configs
from ..methods import ABOUT, PEERS, peer
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


NOISE = ("sigma_min", "sigma_max", "p_mean", "p_std", "sigma_data", "gamma", "partition", "max_weight")
# Flags that only some methods have, per task (a flag not listed applies to every method);
# `train TASK --mode M --help` lists M's flags only.
ONLY = {"classify": {
    **dict.fromkeys(("shared_policy", "label_error", "offload", "block", "sync_every", "init_from",
                     "sampler", "decode", "readout", "grid", "sample_steps", "match", *NOISE),
                    {"dblocks"}),
    "member": {"ensemble"}, "combine": {"ensemble"}, "parallel": {"e2e", "dblocks"},
    "split": {"dblocks", "shallow", "ensemble"},
    "blocks": {"dblocks", "shallow", "ensemble"},
}}
for _name in PEERS:  # and each peer method's own (its FLAGS; "noise": every noise flag)
    for _flag in (f for g in peer(_name).FLAGS for f in (NOISE if g == "noise" else (g,))):
        if _flag not in ONLY["classify"]:
            raise ValueError(f"methods/{_name}.py: FLAGS names {_flag!r}, not a method flag of classify "
                             f"({', '.join(ONLY['classify'])})")
        ONLY["classify"][_flag] = ONLY["classify"][_flag] | {_name}
# The sections of a task's own settings in --help (the model, noise and optimizer have theirs).
SECTIONS = {
    "method": ("mode", "blocks", "split", "shared_policy", "match", "label_error", "member", "combine"),
    "data": ("dataset", "data_dir", "image_size", "patch_size", "augment", "val_size", "batch_size"),
    "inference (DiffusionBlocks)": ("sampler", "decode", "readout", "grid", "sample_steps"),
    "run": ("steps", "seed", "evals", "device", "out", "checkpointing", "tensorboard", "offload",
            "block", "parallel", "sync_every", "init_from"),
}


class MethodHelp(argparse.Action):
    """``--help`` that lists the flags of the chosen ``--mode`` (given before it, or the default)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        task = parser.prog.split()[-1]
        mode = getattr(namespace, "mode", None) or "dblocks"  # --mode before --help, or the default
        for action in parser._actions:
            if mode not in ONLY.get(task, {}).get(action.dest, {mode}):
                action.help = argparse.SUPPRESS
            elif action.dest == "mode" and mode in ABOUT:
                action.help = f"the training method ({', '.join(action.choices)}); {mode}: {ABOUT[mode]}"
        parser.print_help()
        parser.exit()


def sections(parser: argparse.ArgumentParser) -> None:
    """Move the task's own flags from the general list into :data:`SECTIONS`."""
    general = parser._optionals
    for title, names in SECTIONS.items():
        moving = [a for a in general._group_actions if a.dest in names]
        if moving:
            group = parser.add_argument_group(title)
            for action in moving:
                general._group_actions.remove(action)
                group._group_actions.append(action)


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
        task_parser = train_tasks.add_parser(
            task, help=about, add_help=False, usage=f"diffusionblocks train {task} [--mode M] [options]",
            description=f"Train: {about}. The flags below are those of --mode M (default dblocks).")
        task_parser.add_argument("-h", "--help", action=MethodHelp, help="this list, for --mode M")
        if task in TEXT_TASKS:
            text_args(task_parser, task)
        else:
            (classify_args if task == "classify" else generate_args)(task_parser)
        sections(task_parser)
        applies[task] = {a.dest for a in task_parser._actions}
        task_parser.add_argument("--config", default=None, help=CONFIG_HELP)
        task_parser.add_argument("--dry-run", action="store_true", help="build the data and the model, "
                                 "print them as one JSON line and exit without training")
        task_parser.add_argument("--quiet", action="store_true", help="no progress bar")
        task_parser.add_argument("--wandb", default=None, metavar="P[/G]", help=WANDB_HELP)
        task_parser.set_defaults(func=cmd_train)
    return applies
