"""Command line: ``diffusionblocks train|eval|sample|compare|merge|bench``.

Every flag maps to a field of a config dataclass; a run saves its whole config with its outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

from . import configs
from .blocks import SHARED_POLICIES
from .data.images import DATASETS
from .methods import ABOUT
from .methods.ensemble import COMBINES
from .models.vit import ViTConfig
from .noise import GRIDS, PARTITIONS, NoiseConfig
from .offload import OFFLOAD_TARGETS
from .sampling import SAMPLERS
from .tasks.classify import DECODES, MODES, READOUTS
from .tasks.text import DECODINGS
from .training import PRECISIONS, SCHEDULES, OptimConfig

HELP = {
    # run
    "mode": "the training method: " + "; ".join(f"{m}: {a}" for m, a in ABOUT.items()),
    "dataset": f"dataset name: {', '.join(DATASETS)} (digits is embedded, the rest read --data-dir), "
    "or folder:PATH, an image folder (PATH/train/CLASS/*.jpg, PATH/val/CLASS/…)",
    "image_size": "image folders (folder:PATH, tinyimagenet): resize to this side (default 64)",
    "data_dir": "folder holding the dataset files (default: $DIFFUSIONBLOCKS_DATA, else ./data)",
    "blocks": "number of blocks B the layers are cut into",
    "split": "explicit layers per block when depth is not divisible by B, e.g. --split 3 2 2",
    "patch_size": "ViT patch size (default: 2 for digits, 4 otherwise)",
    "shared_policy": "frozen: the label table (and logit scale) stay at their random init, so "
    "blocks share nothing that moves (default); cotrained: every block's step updates them (paper)",
    "steps": "end-to-end training steps, the budget (default per dataset: digits 500, mnist and "
    "fashion_mnist 4000, cifar10 and cifar100 10000, cifar10_exact 2000)",
    "match": "layers: DiffusionBlocks gets B× the steps (equal layer evaluations); steps: the same",
    "batch_size": "training batch size",
    "val_size": "hold this many training examples out as a validation split (a fixed random "
    "choice): the curve watches it and defaults are chosen on it; test is scored once, at the end "
    "(default: a tenth of the training set; 0: none, the curve watches test)",
    "seed": "random seed (initialization, data order, blocks, noise)",
    "augment": "training augmentation for both modes, comma-separated: flip (random horizontal "
    "flip), crop (random crop after 4 pixels of zero padding), randaugment (2 of 14 operations per "
    "image at magnitude 9, as Cubuk et al.); drawn on the device, seeded per step",
    "sampler": "ODE sampler at inference: euler (paper) or heun",
    "readout": "mean: the prediction averages the log-probabilities of every denoiser call of the "
    "chain (each block's estimate alike); last: the final call's, at σ_min (the ODE's answer)",
    "decode": "greedy: start the sampler at the noise mean, one deterministic path (a prediction); "
    "draw: start from noise, which returns a draw from the model",
    "grid": "inference σ grid: uniform (equal log σ steps, as the default partition), equiprob (equal "
    "training mass) or karras (ρ = 7)",
    "sample_steps": "points on the inference σ grid (default: B, one denoiser call per block)",
    "evals": "test-set evaluations (and checkpoints) during training",
    "device": "auto (cuda when available), cpu or cuda",
    "tensorboard": "also log loss per block, learning rate, throughput and evaluations to "
    "OUT/tensorboard (needs the tensorboard extra)",
    "checkpointing": "activation checkpointing: each layer keeps only its input for backward "
    "and recomputes the rest (less memory, more time)",
    "offload": "dblocks only: keep inactive blocks' weights and optimizer state in host memory "
    "(cpu) or in files under OUT/offload (disk); only the sampled block is on the device",
    "block": "train only block k (0 = the input end, highest noise) as an independent job; "
    "assemble the jobs with `diffusionblocks merge`",
    "member": "ensemble: train only member k (an end-to-end network of block k's depth, seed "
    "seed·B + k, in OUT/member_k) as an independent job; assemble the members with `diffusionblocks "
    "merge` (or rerun without --member where their folders are)",
    "combine": "ensemble: how members' predictions combine: logprob (mean log-probability) or prob "
    "(log of the mean probability); the result reports both on validation",
    "label_error": "dblocks: the chance a training input's noisy label is centred on a wrong class "
    "(the target stays the true one), so a block learns to correct an estimate instead of copying "
    "it; matters only where σ lets the label show (--sigma-min below ~1). Default 0",
    "parallel": "block-parallel run under torchrun: ranks split into one group per block (DDP "
    "inside a group, nothing across groups); rank 0 merges the groups into OUT/checkpoint",
    "sync_every": "--parallel with --shared-policy cotrained: average the shared parts over all "
    "ranks every N steps",
    "init_from": "dblocks: start from this end-to-end checkpoint (same model flags), then train "
    "block-wise (pretrained conversion): each block starts as the end-to-end model cut to its own "
    "layers (a copy of the stem, its layers, exact under AdaLN at every σ, and the head); "
    "validation is scored once before fine-tuning (step 0)",
    "out": "output folder: checkpoint, metrics.jsonl, result.json; an existing checkpoint resumes",
    # model
    "width": "transformer width",
    "depth": "number of transformer layers L",
    "heads": "attention heads",
    "mlp_ratio": "MLP hidden width / width",
    # noise
    "sigma_min": "lowest noise level σ_min",
    "sigma_max": "highest noise level σ_max",
    "p_mean": "mean of log σ in training (EDM P_mean)",
    "p_std": "std of log σ in training (EDM P_std)",
    "sigma_data": "data standard deviation σ_data of the preconditioning",
    "gamma": "overlap γ in [0, 1): each block trains on its range widened by γ of its log-width",
    "partition": "uniform: equal log σ widths (default for classification, measured better); "
    "equiprob: equal training mass per block (the paper's default)",
    "max_weight": "clamp the loss weight λ(σ) at this value (default: no clamp, as the paper)",
    # optim
    "lr": "peak learning rate (AdamW; default 3e-3 end to end, 5e-3 DiffusionBlocks)",
    "weight_decay": "AdamW weight decay (matrices only)",
    "warmup": "end-to-end warm-up steps (stretched by B for DiffusionBlocks)",
    "schedule": "learning rate after the warm-up: cosine (decay to 0 at the last step, the "
    "default) or constant (the peak rate to the end, as EDM and DiT train with an EMA)",
    "clip": "gradient-norm clip (0: off)",
    "ema": "decay of an exponential moving average of the weights, kept per block and updated "
           "when that block trains (warm-up: min(decay, (1+n)/(10+n))); eval, sample and FID use "
           "it (--no-ema: the raw weights). 0: off (default: 0; generate: 0.999)",
    "compile": "torch.compile every block (end to end: the model) for training and sampling; "
               "the first steps then take longer",
    "precision": "forward pass under autocast: fp32, bf16 or fp16 (gradient scaling per block); "
                 "auto: bf16 on CUDA where supported, fp32 otherwise (default: auto)",
}

# Where a generation run means something else, or has fields classification does not.
GENERATE_HELP = {
    "dataset": f"dataset name: {', '.join(DATASETS)} (digits is embedded, the rest read --data-dir), "
    "or folder:PATH, an image folder (PATH/train/CLASS/*.jpg, PATH/val/CLASS/…)",
    "image_size": "image folders (folder:PATH, tinyimagenet): resize to this side (default 64)",
    "patch_size": "DiT patch size (default: 2 for digits, 4 otherwise)",
    "steps": "end-to-end training steps, the budget (default per dataset: digits 1500, mnist and "
    "fashion_mnist 12000, cifar10 and cifar100 20000, cifar10_exact 4000)",
    "sample_steps": "sampler steps from σ_max to σ_min (the σ grid has one point more)",
    "grid": "inference σ grid: equiprob (equal training mass, so each block gets an equal share of "
    "the steps: the paper's, default) or karras (ρ = 7)",
    "guidance": "classifier-free guidance scale (1: conditional only, 0: unconditional)",
    "num_samples": "class-balanced samples generated to measure FID and class accuracy",
    "evals": "held-out loss evaluations (and checkpoints) during training",
    "feature_steps": "training steps (batch 128) of the CNN whose features FID uses; it is trained "
    "once per dataset and setting and cached under ~/.cache/diffusionblocks",
    "class_dropout": "probability a training label is replaced by the null class (for guidance)",
    "partition": "equiprob: equal training mass per block (the paper's, default); uniform: equal "
    "log σ widths",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay (matrices only)",
}

# Language models (train / compare --task mdm|ar|recurrent): their own fields and meanings.
TEXT_HELP = {
    "data": "text to train on: a UTF-8 file path, tinyshakespeare (DATA/tinyshakespeare/input.txt "
    "under --data-dir), text8 (DATA/text8/text8: 90M/5M/5M characters), or hf:NAME[:CONFIG] (a "
    "Hugging Face `datasets` set with a text column); split 90/5/5 in order",
    "tokenizer": "char: the text's characters (default); byte: UTF-8 bytes (256 tokens); bpe: "
    "byte-level subwords learned from the training split (--bpe-vocab of them; needs the bpe extra); "
    "or the path of a tokenizer.json. Bits per character stay per character (bits per token beside)",
    "bpe_vocab": "subwords a bpe tokenizer learns (default: 4096)",
    "context": "context length in tokens (the training window)",
    "steps": "end-to-end training steps, the budget",
    "evals": "validation evaluations (and checkpoints) during training",
    "bound_passes": "mdm: passes over the test set for the ELBO (one t per sequence and pass, "
    "stratified); the standard error comes from their spread",
    "num_samples": "samples generated (ar, recurrent: evenly spaced test prompts, each continued "
    "--continuations times)",
    "sample_length": "characters per sample (ar: generated after the prompt)",
    "prompt_length": "ar: prompt characters taken from the test split",
    "sample_steps": "mdm: unmasking steps; ar: σ grid points per token (default B: one per block)",
    "temperature": "sampling temperature (0: greedy). A next-token model draws from its softmax at it; "
    "DiffusionBlocks draws once, its start noise scaled by it, and reads the argmax",
    "decoding": "sample (temperature draws; the default) or paper (the paper's: end to end with "
    "top-p 0.95, DiffusionBlocks with B steps and the argmax read-out)",
    "judge_steps": "training steps of the independent judge that scores samples (judge BPC, "
    "MAUVE): an end-to-end model of twice the width, cached under ~/.cache/diffusionblocks; 0: none",
    "continuations": "samples per prompt (MAUVE compares them with the prompts' real continuations)",
    "grid": "ar: σ grid per token: equiprob (equal training mass, default) or karras (ρ = 7)",
    "partition": "ar: uniform: equal log σ widths (default); equiprob: equal training mass",
    "gamma": "ar: overlap γ of the blocks' σ ranges (default 0.1, the paper's for text)",
    "shared_policy": "ar: frozen: the token table stays at its random init (default); cotrained: "
    "every block's step updates it",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay (matrices only)",
    "prelude": "recurrent: prelude layers (embed the prompt)",
    "core": "recurrent: layers of the recurrent core",
    "coda": "recurrent: coda layers (read out)",
    "mean_depth": "recurrent baseline: mean core iterations per training step (random, as Huginn)",
    "backprop_depth": "recurrent baseline: backpropagate through the last N iterations only",
    "depth_k": "recurrent: core iterations K at inference (DiffusionBlocks: a K-point σ grid)",
    "k_sweep": "recurrent: the K values at which test accuracy is also reported and plotted",
}
TEXT_TASKS = ("mdm", "ar", "recurrent")
MERGING = ("classify", "generate", "ar", "mdm")  # the tasks whose blocks can train as separate jobs
CONFIG_HELP = ("settings from a TOML file (configs/) or a run's config.json; flags given beside it "
               "override it")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what `sample --out` can write

_TYPES = {"int": int, "float": float, "str": str}
CHOICES = {  # the registries the configs validate against, so the two cannot drift apart
    "mode": MODES, "sampler": tuple(SAMPLERS), "grid": tuple(GRIDS),
    "decode": DECODES, "readout": READOUTS, "decoding": DECODINGS,
    "match": ("layers", "steps"), "shared_policy": SHARED_POLICIES, "partition": PARTITIONS,
    "offload": OFFLOAD_TARGETS, "precision": PRECISIONS, "schedule": SCHEDULES, "combine": COMBINES,
}


def _add_fields(parser: argparse.ArgumentParser, cls, skip=(), title: str | None = None,
                help: dict | None = None) -> None:
    help = HELP | (help or {})
    choices = CHOICES | {"mode": getattr(cls, "MODES", CHOICES["mode"])}
    group = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name not in help:
            continue
        base = str(f.type).split(" | ")[0]
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        if base.startswith("list["):
            group.add_argument(flag, type=int, nargs="+", default=None, help=help[f.name])
        elif base == "bool":
            group.add_argument(flag, action="store_true", default=None, help=help[f.name])
        else:
            shown = "" if default is None or "default" in help[f.name] else f" (default: {default})"
            group.add_argument(flag, type=_TYPES[base], default=None, choices=choices.get(f.name),
                               help=help[f.name] + shown)


MODEL_DERIVED = ("image_size", "channels", "patch_size", "num_classes")  # ViT, DiT: set from the data


def _filled(cls, args: argparse.Namespace, skip=(), base=None, **extra):
    """``cls`` from the flags given; the rest from ``base`` (a task's defaults) or ``cls``'s."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.name not in skip and getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **values, **extra) if base is not None else cls(**values, **extra)


def _classify_args(parser: argparse.ArgumentParser, skip=()) -> None:
    from .tasks.classify import ClassifyConfig

    _add_fields(parser, ClassifyConfig, skip=skip)
    _add_fields(parser, ViTConfig, skip=MODEL_DERIVED, title="model")
    _add_fields(parser, NoiseConfig, title="noise (DiffusionBlocks)")
    _add_fields(parser, OptimConfig, skip=("betas",), title="optimizer")


def _image_config(args: argparse.Namespace, base, model: str, **extra):
    """An image task's config (``base``: its defaults or a file's) with the flags given, ``model``
    naming its nested model config (vit, dit)."""
    shape = getattr(base, model)
    return _filled(type(base), args, base=base,
                   **{model: _filled(type(shape), args, skip=MODEL_DERIVED, base=shape)},
                   noise=_filled(NoiseConfig, args, base=base.noise),
                   optim=_filled(OptimConfig, args, base=base.optim), **extra)


def _generate_args(parser: argparse.ArgumentParser, skip=()) -> None:
    from .models.dit import DiTConfig
    from .tasks.generate import GenerateConfig

    _add_fields(parser, GenerateConfig, skip=skip, help=GENERATE_HELP)
    _add_fields(parser, DiTConfig, skip=MODEL_DERIVED, title="model", help=GENERATE_HELP)
    _add_fields(parser, NoiseConfig, title="noise", help=GENERATE_HELP)
    _add_fields(parser, OptimConfig, skip=("betas",), title="optimizer", help=GENERATE_HELP)


def _text_args(parser: argparse.ArgumentParser, task: str, skip=()) -> None:
    from .models.lm import LMConfig

    cls = _text_class(task)
    layered = task == "recurrent"  # prelude / core / coda instead of blocks of a depth
    _add_fields(parser, cls, skip=(*skip, "blocks", "split", "match") if layered else skip, help=TEXT_HELP)
    _add_fields(parser, LMConfig, skip=("vocab_size", "depth") if layered else ("vocab_size",),
                title="model", help=TEXT_HELP)
    if task != "mdm":
        _add_fields(parser, NoiseConfig, title="noise", help=TEXT_HELP)
    _add_fields(parser, OptimConfig, skip=("betas",), title="optimizer", help=TEXT_HELP)


def _text_class(task: str):
    names = {"mdm": "MDMConfig", "ar": "ARConfig", "recurrent": "RecurrentConfig"}
    return getattr(_text_module(task), names[task])


def _text_config(args: argparse.Namespace, task: str, base=None, **extra):
    from .models.lm import LMConfig

    cls = _text_class(task)
    base = base or cls()
    nested = {"lm": _filled(LMConfig, args, skip=("vocab_size",), base=base.lm),
              "optim": _filled(OptimConfig, args, base=base.optim)}
    if task != "mdm":
        nested["noise"] = _filled(NoiseConfig, args, base=base.noise)
    return _filled(cls, args, base=base, **nested, **extra)


def _config_class(task: str):
    if task in TEXT_TASKS:
        return _text_class(task)
    from .tasks.classify import ClassifyConfig
    from .tasks.generate import GenerateConfig

    return {"classify": ClassifyConfig, "generate": GenerateConfig}[task]


def _task_config(args: argparse.Namespace, task: str, **extra):
    """The run config of ``task``: the task's defaults, then ``--config FILE``, then the flags."""
    base = None
    if getattr(args, "config", None):
        settings = configs.read_file(args.config)
        named = settings.pop("task", task)
        if named != task:
            raise ValueError(f"--config {args.config} is a {named} config, not {task}")
        base = configs.overlay(_config_class(task)(), settings, where=f"--config {args.config}")
        if task in TEXT_TASKS and any(getattr(args, k, None) is not None for k in ("data", "tokenizer",
                                                                                  "bpe_vocab")):
            base = dataclasses.replace(base, vocab=None)  # a run's vocabulary belongs to its text
    if task in TEXT_TASKS:
        return _text_config(args, task, base, **extra)
    return _image_config(args, base or _config_class(task)(), "dit" if task == "generate" else "vit", **extra)


def _text_module(task: str):
    from .tasks import ar, mdm, recurrent

    return {"mdm": mdm, "ar": ar, "recurrent": recurrent}[task]


WANDB_HELP = ("also log to Weights & Biases project PROJECT (the wandb extra): config, loss per block, "
              "throughput, evaluations and memory, in group GROUP (default: the name of --out; give "
              "block jobs one), one job type per block or member; offline (OUT/wandb, `wandb sync` "
              "later) without WANDB_API_KEY or WANDB_MODE")


def _wandb(args: argparse.Namespace, group: str | None = None) -> None:
    """Ask :func:`runs.wandb_run` for W&B runs in this process and those it starts."""
    from .runs import WANDB_GROUP, WANDB_PROJECT

    if getattr(args, "wandb", None):
        project, _, named = args.wandb.partition("/")
        os.environ[WANDB_PROJECT] = project
        if named or group:
            os.environ[WANDB_GROUP] = named or group


def cmd_train(args: argparse.Namespace) -> None:
    cfg = _task_config(args, args.task)
    _wandb(args)
    if args.dry_run:  # one JSON object, the last line of stdout
        print(json.dumps(configs.dry_run(args.task, cfg)))
        return
    if args.task in TEXT_TASKS:
        result = _text_module(args.task).train(cfg, show=not args.quiet)
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
        return
    if args.task == "generate":
        from .tasks import generate

        result = generate.train(cfg, show=not args.quiet)
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
        return
    from .tasks import classify

    result = classify.train(cfg, show=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports the merged model
        print(json.dumps({k: v for k, v in result.items() if k not in ("history", "groups_results")},
                         indent=2))


def _inference_overrides(args: argparse.Namespace, names=("sampler", "grid", "sample_steps")) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def cmd_eval(args: argparse.Namespace) -> None:
    from . import checkpoint
    from .data.images import load_images
    from .tasks import classify

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
    from . import checkpoint
    from .tasks import generate

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
    from . import checkpoint
    from .tasks.text import load_data

    module = _text_module(task)
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
        judge, judged_cfg = _text_module(judge_task).load(args.judge, device=args.device or "auto")
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

    from . import checkpoint
    from .data.text import Tokenizer

    if args.length < 1 or args.num < 1:
        raise ValueError(f"--length and --num must be at least 1, got {args.length} and {args.num}")
    task = checkpoint.read_config(args.checkpoint).get("task")
    if task not in TEXT_TASKS:
        raise ValueError(f"{args.checkpoint} is a {task} checkpoint; `generate` continues text from "
                         "`train mdm|ar|recurrent` checkpoints (images: `diffusionblocks sample`)")
    module = _text_module(task)
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

    from . import checkpoint
    from .tasks import generate

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
    cfg = _task_config(args, task, mode="dblocks")  # compare runs both modes
    given_out = args.out or settings.get("out")  # else a folder of compare's own
    out = Path(cfg.out if given_out else "runs/compare" + ("" if task == "classify" else f"_{task}"))
    _wandb(args, out.resolve().name)
    if task in TEXT_TASKS:
        compare = _text_module(task).compare
    else:
        from .tasks import classify, generate

        compare = generate.compare if task == "generate" else classify.compare
    from .parallel import barrier, connect, main_process

    if getattr(cfg, "parallel", False):  # join the torchrun job before anything (a judge) is trained
        from .runs import resolve_device

        connect(resolve_device(cfg.device))
    say = print if main_process() else (lambda text: None)  # under torchrun, rank 0 reports
    if args.modes is not None:
        chosen = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        known = getattr(type(cfg), "MODES", None) or __import__(
            f"{__package__}.tasks.{task}", fromlist=["MODES"]).MODES
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
    from .report import seeds_report

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
    from .runs import resolve_device
    from .tasks.classify import COMPARED

    if cfg.parallel or resolve_device(cfg.device).type != "cpu":
        return 1
    count = len(modes.split(",")) if modes else len(COMPARED)
    return max(1, min(os.cpu_count() or 1, count))


def cmd_merge(args: argparse.Namespace) -> None:
    import importlib

    from . import checkpoint
    from .hub import resolve

    args.checkpoints = [resolve(c) for c in args.checkpoints]  # folders, or hf:ORG/NAME[/SUB][@REV]
    task = checkpoint.read_config(args.checkpoints[0]).get("task")
    if task not in MERGING:
        raise ValueError(f"{args.checkpoints[0]} is a {task} checkpoint; merge assembles block jobs of "
                         f"{', '.join(MERGING)} (a recurrent-depth model is one block)")
    module = importlib.import_module(f".tasks.{task}", __package__)
    where = module.merge(args.checkpoints, args.out, average_shared=args.average_shared)
    print(json.dumps({"merged": [str(c) for c in args.checkpoints], "checkpoint": str(where)}, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    from . import hub

    folder = hub.save_pretrained(args.checkpoint, args.folder)
    report = {"checkpoint": str(args.checkpoint), "folder": str(folder)}
    if args.push_to_hub:
        report["hub"] = hub.push_to_hub(folder, args.push_to_hub, args.subfolder, args.revision)
    print(json.dumps(report, indent=2))


def cmd_launch(args: argparse.Namespace) -> None:
    from .launch import Resources, launch

    train = args.train[1:] if args.train[:1] == ["--"] else args.train
    if train[:1] != ["train"] or len(train) < 2:
        raise ValueError("launch takes the run after --: diffusionblocks launch [options] -- train "
                         "TASK ...")
    run = args.parser.parse_args(train)
    cfg = _task_config(run, run.task)
    if getattr(cfg, "mode", "dblocks") != "dblocks" or not hasattr(cfg, "block"):
        raise ValueError(f"launch cuts a DiffusionBlocks run into block jobs; `{' '.join(train[:2])}` "
                         f"trains {getattr(cfg, 'mode', '?')} (give --mode dblocks)")
    if cfg.block is not None or cfg.parallel:
        raise ValueError("launch gives each job its --block; leave --block and --parallel out")
    resources = Resources(args.partition, args.timeout_min, args.gpus_per_block, args.cpus_per_block,
                          args.mem_gb, args.max_parallel)
    print(json.dumps(launch(train, cfg.blocks, cfg.out, args.cluster, resources, args.wait), indent=2))


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import BenchConfig, run

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
    from .bench import TASKS, BenchConfig

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="diffusionblocks",
        description="Block-wise training of residual networks as diffusion denoisers "
        "(DiffusionBlocks, ICLR 2026), beside end-to-end backprop.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
            _text_args(task_parser, task)
        else:
            (_classify_args if task == "classify" else _generate_args)(task_parser)
        applies[task] = {a.dest for a in task_parser._actions}
        task_parser.add_argument("--config", default=None, help=CONFIG_HELP)
        task_parser.add_argument("--dry-run", action="store_true", help="build the data and the model, "
                                 "print them as one JSON line (parameters per block; data missing or "
                                 "not) and exit without training")
        task_parser.add_argument("--quiet", action="store_true", help="no progress bar")
        task_parser.add_argument("--wandb", default=None, metavar="PROJECT[/GROUP]", help=WANDB_HELP)
        task_parser.set_defaults(func=cmd_train)

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
    _classify_args(cmp, skip=("mode", "block", "member", "parallel", "sync_every", "init_from"))
    generate_only = argparse.ArgumentParser(add_help=False)  # flags classification lacks
    _generate_args(generate_only, skip=("mode",))
    text_only = argparse.ArgumentParser(add_help=False)  # flags of the language models
    _text_args(text_only, "mdm", skip=("mode",))
    for task in ("ar", "recurrent"):
        taken = ("mode", "init_from", *(a.dest for a in text_only._actions))
        _add_fields(text_only, _text_class(task), skip=taken, help=TEXT_HELP)
    groups = (("generate only", generate_only), ("language models (mdm, ar, recurrent)", text_only))
    for title, flags in groups:
        taken = {a.dest for a in cmp._actions}
        extra = cmp.add_argument_group(title)
        for action in flags._actions:
            if action.dest not in taken and action.dest != "help":
                extra._add_action(action)
    cmp.set_defaults(func=cmd_compare, applies=applies)

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

    bench = sub.add_parser("bench", help="measure memory or speed per training step")
    _bench_args(bench)
    bench.set_defaults(func=cmd_bench)

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

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # bad input, missing or unwritable files: one line
        print(f"diffusionblocks: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
