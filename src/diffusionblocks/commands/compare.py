"""``diffusionblocks compare``: a family's methods side by side on one budget (the main job)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from pathlib import Path

from .. import configs
from .flags import (
    CONFIG_HELP,
    TEXT_HELP,
    TEXT_TASKS,
    WANDB_HELP,
    add_fields,
    classify_args,
    generate_args,
    task_config,
    text_args,
    text_class,
    text_module,
    use_wandb,
)


def cmd_compare(args: argparse.Namespace) -> None:
    settings = configs.read_file(args.config) if args.config else {}
    task = args.task or settings.get("task", "classify")
    every = set().union(*args.applies.values())
    stray = sorted(k for k in every - args.applies[task]
                   if getattr(args, k, None) is not None and getattr(args, k) is not False)
    if stray:
        owners = [t for t, names in args.applies.items() if stray[0] in names]
        raise ValueError(f"--{stray[0].replace('_', '-')} does not apply to --task {task} "
                         f"(it is a setting of {', '.join(owners)})")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    cfg = task_config(args, task, mode="dblocks")  # compare runs both modes
    given_out = args.out or settings.get("out")  # else a folder of compare's own
    out = Path(cfg.out if given_out else "runs/compare" + ("" if task == "classify" else f"_{task}"))
    use_wandb(args, out.resolve().name)
    if task in TEXT_TASKS:
        compare = text_module(task).compare
    else:
        from ..tasks import classify, generate

        compare = generate.compare if task == "generate" else classify.compare
    from ..parallel import barrier, connect, main_process

    if getattr(cfg, "parallel", False):  # join the torchrun job before anything (a judge) is trained
        from ..checks import resolve_device

        connect(resolve_device(cfg.device))
    say = print if main_process() else (lambda text: None)  # under torchrun, rank 0 reports
    if args.modes is not None:
        chosen = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        known = getattr(type(cfg), "MODES", None) or __import__(
            f"diffusionblocks.tasks.{task}", fromlist=["MODES"]).MODES
        unknown = [m for m in chosen if m not in known]
        if unknown or not chosen:
            raise ValueError(f"--modes {args.modes!r}: {task} has the modes {', '.join(known)}")
        compare = functools.partial(compare, modes=chosen)
    if args.jobs is not None and (args.jobs < 1 or task != "classify"):
        raise ValueError(f"--jobs {args.jobs}: " + ("it must be at least 1" if args.jobs < 1 else
                         f"modes train side by side for --task classify only, not {task}"))
    if task == "classify":
        compare = functools.partial(compare, jobs=args.jobs or default_jobs(cfg, args.modes))
    if args.seeds == 1:
        say(compare(cfg, out, quick=args.quick, show=not args.quiet))
        return
    from ..report import seeds_report

    reports = {}
    for seed in range(cfg.seed, cfg.seed + args.seeds):  # each seed its own folder, resumable
        say(compare(dataclasses.replace(cfg, seed=seed), out / f"seed_{seed}", quick=args.quick,
                    show=not args.quiet))
        barrier()
        reports[seed] = json.loads((out / f"seed_{seed}" / "report.json").read_text())
    if main_process():
        say(seeds_report(out, reports))


def default_jobs(cfg, modes: str | None) -> int:
    """Side-by-side modes of a classification compare: on CPU as many as cores and modes allow
    (one thread each on two cores), on a GPU one."""
    from ..checks import resolve_device
    from ..tasks.classify import COMPARED

    if cfg.parallel or resolve_device(cfg.device).type != "cpu":
        return 1
    count = len(modes.split(",")) if modes else len(COMPARED)
    return max(1, min(os.cpu_count() or 1, count))


def add(sub, applies: dict) -> None:
    """Register the command(s) on the ``diffusionblocks`` subparsers."""
    cmp = sub.add_parser("compare", help="train end to end and DiffusionBlocks on the same "
                         "budget and print them side by side (the main job)")
    cmp.add_argument("--task", default=None, choices=("classify", "generate", *TEXT_TASKS),
                     help="which family to compare: classify (ViT, default), generate (DiT), mdm "
                     "(masked-diffusion LM), ar (autoregressive LM) or recurrent (recurrent depth)")
    cmp.add_argument("--config", default=None, help=CONFIG_HELP + "; its task is the one compared, "
                     "both modes from the same settings")
    cmp.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    cmp.add_argument("--seeds", type=int, default=1, help="run N seeds (--seed, --seed + 1, …) of "
                     "both modes, each in OUT/seed_S, and report mean ± sd and every seed's figure "
                     "(OUT/seeds.{json,md}; default: 1)")
    cmp.add_argument("--quiet", action="store_true", help="no progress bars")
    cmp.add_argument("--wandb", default=None, metavar="PROJECT[/GROUP]", help=WANDB_HELP + "; one "
                     "group per comparison")
    cmp.add_argument("--modes", default=None, help="comma-separated methods to train and report "
                     "(default: every mode of the task: e2e, dblocks and its controls)")
    cmp.add_argument("--jobs", type=int, default=None, help="classify: modes trained side by side, "
                     "each in its own process with an equal share of the cores (default: on CPU, as "
                     "many as there are cores and modes; on a GPU, 1)")
    classify_args(cmp, skip=("mode", "block", "member", "parallel", "sync_every", "init_from"))
    generate_only = argparse.ArgumentParser(add_help=False)  # flags classification lacks
    generate_args(generate_only, skip=("mode",))
    text_only = argparse.ArgumentParser(add_help=False)  # flags of the language models
    text_args(text_only, "mdm", skip=("mode",))
    for task in ("ar", "recurrent"):
        taken = ("mode", "init_from", *(a.dest for a in text_only._actions))
        add_fields(text_only, text_class(task), skip=taken, help=TEXT_HELP)
    groups = (("generate only", generate_only), ("language models (mdm, ar, recurrent)", text_only))
    for title, flags in groups:
        taken = {a.dest for a in cmp._actions}
        extra = cmp.add_argument_group(title)
        for action in flags._actions:
            if action.dest not in taken and action.dest != "help":
                extra._add_action(action)
    cmp.set_defaults(func=cmd_compare, applies=applies)
