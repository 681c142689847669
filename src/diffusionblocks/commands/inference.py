"""``eval``, ``generate`` (text) and ``sample`` (images): what a trained model does."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .flags import (
    CHOICES,
    GENERATE_HELP,
    HELP,
    IMAGE_SUFFIXES,
    TEXT_HELP,
    TEXT_TASKS,
    text_module,
)


def _inference_overrides(args: argparse.Namespace, names=("sampler", "grid", "sample_steps")) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def cmd_eval(args: argparse.Namespace) -> None:
    from .. import checkpoint
    from ..data.images import load_images
    from ..tasks import classify

    words = args.checkpoint
    fid = len(words) == 2 and words[0] == "fid"
    if len(words) != 1 + fid:
        raise ValueError("usage: diffusionblocks eval [fid] CHECKPOINT")
    args.checkpoint = words[-1]
    task = checkpoint.read_config(args.checkpoint).get("task")
    if args.judge and task not in ("ar", "recurrent"):
        raise ValueError(f"--judge scores sampled text under another next-token model: it applies to "
                         f"ar and recurrent checkpoints; {args.checkpoint} is a {task} checkpoint")
    if fid and task != "generate":
        raise ValueError(f"{args.checkpoint} is a {task} checkpoint; FID scores image generators "
                         "(`train generate`)")
    if task == "generate":
        return _eval_generate(args)
    if task in TEXT_TASKS:
        return _eval_text(args, task)
    if args.guidance is not None or args.num_samples is not None or args.inception_weights:
        raise ValueError("--guidance, --num-samples and --inception-weights apply to image "
                         "generation checkpoints")
    model, cfg = classify.load(args.checkpoint, averaged=not args.no_ema)
    names = ("sampler", "grid", "sample_steps", "decode", "readout")
    cfg = dataclasses.replace(cfg, **_inference_overrides(args, names))  # validated like any config
    data = load_images(cfg.dataset, args.data_dir or cfg.data_dir, size=cfg.image_size)
    print(json.dumps({"checkpoint": args.checkpoint, "dataset": cfg.dataset, "mode": cfg.mode,
                      **classify.score(model, data, cfg)}, indent=2))


def _eval_generate(args: argparse.Namespace) -> None:
    from .. import checkpoint
    from ..tasks import generate

    model, cfg = generate.load(args.checkpoint, device=args.device or "auto", averaged=not args.no_ema)
    names = ("sampler", "grid", "sample_steps", "guidance", "num_samples")
    cfg = dataclasses.replace(cfg, **_inference_overrides(args, names))
    if args.data_dir:
        cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
    out = Path(args.out or Path(args.checkpoint).parent / "eval")
    checkpoint.check_writable_folder(out)  # before minutes of sampling
    result = generate.evaluate_model(model, cfg, generate.load_data(cfg), out, show=True,
                                     inception_weights=args.inception_weights)
    result |= {"checkpoint": args.checkpoint, "dataset": cfg.dataset, "mode": cfg.mode,
               "sampler": cfg.sampler, "grid": cfg.grid, "sample_steps": cfg.sample_steps,
               "guidance": cfg.guidance, "samples_png": str(out / "samples.png")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _eval_text(args: argparse.Namespace, task: str) -> None:
    from .. import checkpoint
    from ..tasks.text import load_data

    module = text_module(task)
    model, cfg = module.load(args.checkpoint, device=args.device or "auto", averaged=not args.no_ema)
    if args.data_dir:
        cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
    judge = None
    if args.judge:  # an end-to-end model of the autoregressive or recurrent family
        judge_cfg = checkpoint.read_config(args.judge)
        judge_task = judge_cfg.get("task")
        if judge_task not in ("ar", "recurrent"):
            raise ValueError(f"--judge {args.judge} is a {judge_task} checkpoint; a judge is a "
                             "next-token model (`train ar|recurrent --mode e2e`)")
        if judge_cfg.get("mode") not in ("e2e", "baseline"):  # recurrent: its baseline
            raise ValueError(f"--judge {args.judge} is a {judge_cfg.get('mode')} checkpoint; a judge "
                             "scores every token in one pass: an end-to-end model (`train ar --mode e2e`)")
        judge, judged_cfg = text_module(judge_task).load(args.judge, device=args.device or "auto")
        if (judged_cfg.tokenizer, judged_cfg.vocab) != (cfg.tokenizer, cfg.vocab):
            raise ValueError(f"--judge {args.judge} reads another vocabulary ({judged_cfg.tokenizer} "
                             f"tokenizer) than {args.checkpoint} ({cfg.tokenizer}): a judge must "
                             "share the contestant's tokens")
    out = Path(args.out or Path(args.checkpoint).parent / "eval")
    checkpoint.check_writable_folder(out)
    extra = {"judges": {"judge": judge} if judge else None} if task != "mdm" else {}
    result = module.evaluate_model(model, cfg, load_data(cfg), out, **extra)
    result |= {"checkpoint": str(args.checkpoint), "task": task, "mode": cfg.mode, "data": cfg.data}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from .. import checkpoint
    from ..data.text import Tokenizer

    if args.length < 1 or args.num < 1:
        raise ValueError(f"--length and --num must be at least 1, got {args.length} and {args.num}")
    task = checkpoint.read_config(args.checkpoint).get("task")
    if task not in TEXT_TASKS:
        raise ValueError(f"{args.checkpoint} is a {task} checkpoint; `generate` continues text from "
                         "`train mdm|ar|recurrent` checkpoints (images: `diffusionblocks sample`)")
    module = text_module(task)
    model, cfg = module.load(args.checkpoint, device=args.device or "auto", averaged=not args.no_ema)
    given = {k: v for k, v in vars(args).items()
             if k in ("temperature", "sample_steps", "sampler", "grid", "decoding") and v is not None}
    if task == "recurrent" and "sample_steps" in given:
        given["depth_k"] = given.pop("sample_steps")  # K: core iterations
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cfg)})
    if unknown:
        raise ValueError(f"--{unknown[0].replace('_', '-')} does not apply to {task} models")
    cfg = dataclasses.replace(cfg, **given)
    tok = Tokenizer(cfg.tokenizer, cfg.vocab)
    device = next(model.parameters()).device
    prompt = tok.encode(args.prompt).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    if task != "mdm":
        if not len(prompt):
            raise ValueError("an autoregressive model needs a prompt of at least one character")
        if task == "recurrent":
            module.with_depth(model, cfg, cfg.depth_k)
        ids = module.generate(model, cfg, prompt.repeat(args.num, 1), args.length, gen, cfg.temperature)
    else:
        if args.length > cfg.lm.context:
            raise ValueError(f"a masked-diffusion sample has at most {cfg.lm.context} tokens (the "
                             f"context), prompt included; got --length {args.length}")
        if len(prompt) >= args.length:
            raise ValueError(f"the prompt is {len(prompt):,} tokens long; a masked-diffusion sample of "
                             f"--length {args.length} leaves room for at most {args.length - 1}")
        ids = module.sample(model, args.num, args.length, cfg.sample_steps, gen, cfg.temperature,
                            prompt if len(prompt) else None)
    for i, row in enumerate(ids.cpu()):
        print(("\n-----\n" if i else "") + tok.decode(row))


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .. import checkpoint
    from ..tasks import generate

    out = Path(args.out)
    if args.per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {args.per_class}")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {out}: give an image file name ending in {', '.join(IMAGE_SUFFIXES)}")
    task = checkpoint.read_config(args.checkpoint).get("task")
    if task != "generate":
        raise ValueError(f"{args.checkpoint} is a {task} checkpoint; `sample` draws images from "
                         "`train generate` checkpoints" + (" (text: `diffusionblocks generate`)"
                                                          if task in TEXT_TASKS else ""))
    checkpoint.check_writable_folder(out.parent)  # before the sampling
    model, cfg = generate.load(args.checkpoint, device=args.device or "auto", averaged=not args.no_ema)
    names = ("sampler", "grid", "sample_steps", "guidance", "seed")
    cfg = dataclasses.replace(cfg, **_inference_overrides(args, names))
    classes = cfg.dit.num_classes
    labels = generate.balanced_labels(classes * args.per_class, classes)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    images = generate.sample(model, labels.to(device), cfg, gen).cpu()
    generate.save_grid(images, out, rows=classes)
    print(json.dumps({"checkpoint": args.checkpoint, "png": str(out), "rows": "one per class",
                      "per_class": args.per_class, "sampler": cfg.sampler, "grid": cfg.grid,
                      "sample_steps": cfg.sample_steps, "guidance": cfg.guidance}, indent=2))


def add(sub) -> None:
    """Register the command(s) on the ``diffusionblocks`` subparsers."""
    ev = sub.add_parser("eval", help="test accuracy of a classifier, or FID and class accuracy "
                        "of a generator (`eval fid CHECKPOINT`)")
    ev.add_argument("checkpoint", nargs="+", metavar="[fid] CHECKPOINT",
                    help="checkpoint directory (OUT/checkpoint)")
    ev.add_argument("--data-dir", default=None, help=HELP["data_dir"])
    ev.add_argument("--sampler", default=None, choices=CHOICES["sampler"], help=HELP["sampler"])
    ev.add_argument("--grid", default=None, choices=CHOICES["grid"], help=HELP["grid"])
    for name in ("decode", "readout"):
        ev.add_argument(f"--{name}", default=None, choices=CHOICES[name], help="classify: " + HELP[name])
    ev.add_argument("--sample-steps", type=int, default=None, help="classify: " + HELP["sample_steps"]
                    + "; generate: " + GENERATE_HELP["sample_steps"])
    ev.add_argument("--guidance", type=float, default=None, help=GENERATE_HELP["guidance"])
    ev.add_argument("--num-samples", type=int, default=None, help=GENERATE_HELP["num_samples"])
    ev.add_argument("--inception-weights", default=None, help="generate: also report FID in "
                    "Inception-v3 features, from this local torch-fidelity weights file "
                    "(weights-inception-2015-12-05-6726825d.pth; needs pip install torch-fidelity)")
    ev.add_argument("--no-ema", action="store_true",
                    help="the raw weights, not their moving average (where the checkpoint has one)")
    ev.add_argument("--device", default=None, help="generate: auto (cuda when available), cpu or cuda")
    ev.add_argument("--out", default=None, help="generate, mdm, ar: folder for eval.json and "
                    "samples (default: beside the checkpoint, in eval/)")
    ev.add_argument("--judge", default=None, help="ar, recurrent: a next-token checkpoint (`train ar "
                    "--mode e2e`, for example a bigger model) that judges the samples: judge BPC and MAUVE")
    ev.set_defaults(func=cmd_eval)

    txt = sub.add_parser("generate", help="text from a language model (`train mdm|ar|recurrent`)")
    txt.add_argument("checkpoint", help="checkpoint directory (OUT/checkpoint)")
    txt.add_argument("--prompt", default="", help="text to continue (ar: required; mdm: a fixed "
                     "prefix of the sample)")
    txt.add_argument("--length", type=int, default=200, help="ar: characters to generate; mdm: "
                     "sample length, prompt included, at most the context (default: 200)")
    txt.add_argument("--num", type=int, default=1, help="samples (default: 1)")
    txt.add_argument("--temperature", type=float, default=None, help=TEXT_HELP["temperature"])
    txt.add_argument("--sample-steps", type=int, default=None, help=TEXT_HELP["sample_steps"]
                     + "; recurrent: K, the core iterations")
    txt.add_argument("--sampler", default=None, choices=CHOICES["sampler"], help="ar: " + HELP["sampler"])
    txt.add_argument("--grid", default=None, choices=CHOICES["grid"], help=TEXT_HELP["grid"])
    txt.add_argument("--decoding", default=None, choices=CHOICES["decoding"], help="ar, recurrent: "
                     + TEXT_HELP["decoding"])
    txt.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    txt.add_argument("--no-ema", action="store_true",
                    help="the raw weights, not their moving average (where the checkpoint has one)")
    txt.add_argument("--device", default=None, help="auto (cuda when available), cpu or cuda")
    txt.set_defaults(func=cmd_generate)

    smp = sub.add_parser("sample", help="a PNG grid of samples from a generator, one row per class")
    smp.add_argument("checkpoint", help="checkpoint directory (OUT/checkpoint of `train generate`)")
    smp.add_argument("--out", default="samples.png", help="PNG to write (default: samples.png)")
    smp.add_argument("--per-class", type=int, default=10, help="samples per class (default: 10)")
    smp.add_argument("--sampler", default=None, choices=CHOICES["sampler"], help=HELP["sampler"])
    smp.add_argument("--grid", default=None, choices=CHOICES["grid"], help=GENERATE_HELP["grid"])
    smp.add_argument("--sample-steps", type=int, default=None, help=GENERATE_HELP["sample_steps"])
    smp.add_argument("--guidance", type=float, default=None, help=GENERATE_HELP["guidance"])
    smp.add_argument("--seed", type=int, default=None, help="noise seed (default: the run's)")
    smp.add_argument("--no-ema", action="store_true",
                    help="the raw weights, not their moving average (where the checkpoint has one)")
    smp.add_argument("--device", default=None, help="auto (cuda when available), cpu or cuda")
    smp.set_defaults(func=cmd_sample)
