"""Flags of every config field, their help, and the configs they build (shared by the commands)."""

from __future__ import annotations

import argparse
import dataclasses
import os

from .. import configs
from ..blocks import SHARED_POLICIES
from ..data.images import DATASETS
from ..methods import ABOUT
from ..methods.ensemble import COMBINES
from ..models.vit import ViTConfig
from ..noise import GRIDS, PARTITIONS, NoiseConfig
from ..offload import OFFLOAD_TARGETS
from ..sampling import SAMPLERS
from ..tasks.classify import DECODES, MODES, READOUTS
from ..tasks.text import DECODINGS
from ..training import PRECISIONS, SCHEDULES, OptimConfig

HELP = {
    # run
    "mode": f"the training method: {', '.join(ABOUT)} (--mode M --help says what M trains)",
    "dataset": "digits (embedded), mnist, fashion_mnist, cifar10, cifar10_exact, cifar100, tinyimagenet or "
    "folder:PATH",
    "image_size": "image folders (folder:PATH, tinyimagenet): resize to this side (default 64)",
    "data_dir": "folder holding the dataset files (default: $DIFFUSIONBLOCKS_DATA, else ./data)",
    "blocks": "number of blocks B (default: 3)",
    "split": "layers per block, e.g. --split 3 2 2 (default: even)",
    "patch_size": "ViT patch size (default: 2 for digits, 4 otherwise)",
    "shared_policy": "frozen (default): the label table stays random; cotrained: every block updates it "
    "(paper)",
    "steps": "end-to-end training steps, the budget (default: digits 500, mnist 4000, cifar10 10000)",
    "match": "layers: B× the steps for DiffusionBlocks (equal layer evaluations, default); steps: the same",
    "batch_size": "training batch size",
    "val_size": "training examples held out for validation, where defaults are chosen (default: a tenth; 0: "
    "none, the curve watches test)",
    "seed": "seed of init, data order, blocks and noise (default: 0)",
    "augment": "training augmentation, comma-separated: flip, crop (4-pixel padding), randaugment (2 ops, "
    "magnitude 9)",
    "sampler": "ODE sampler at inference: euler (paper) or heun",
    "readout": "mean: average the log-probabilities of every denoiser call (default); last: the final call "
    "at σ_min",
    "decode": "greedy: start the sampler at the noise mean (default); draw: from noise, a draw from the "
    "model",
    "grid": "inference σ grid: uniform (equal log steps), equiprob (equal training mass) or karras (ρ = 7)",
    "sample_steps": "points on the inference σ grid (default: B, one denoiser call per block)",
    "evals": "evaluations and checkpoints per run (default: 10)",
    "device": "auto (default), cpu, cuda or cuda:N",
    "tensorboard": "also log losses, learning rate, throughput and evaluations to OUT/tensorboard",
    "checkpointing": "activation checkpointing: each layer keeps only its input and recomputes the rest",
    "offload": "keep inactive blocks (weights, optimizer) in host memory (cpu) or in OUT/offload (disk)",
    "block": "train only block k (0: the highest noise) as its own job; `diffusionblocks merge` assembles "
    "them",
    "member": "train only member k (block k's depth, seed seed·B + k, in OUT/member_k) as its own job; merge "
    "assembles them",
    "combine": "how members combine: logprob (mean log-probability, default) or prob (mean probability)",
    "label_error": "chance a training input's noisy label is centred on a wrong class, so blocks learn to "
    "correct (default 0)",
    "parallel": "under torchrun: one rank group per block (DDP inside a group); rank 0 merges into "
    "OUT/checkpoint",
    "sync_every": "--parallel, cotrained: average the shared parts over all ranks every N steps",
    "init_from": "start from this end-to-end checkpoint, each block the network cut to its layers "
    "(pretrained conversion)",
    "out": "output folder; a checkpoint there resumes",
    "width": "transformer width",
    "depth": "number of transformer layers L",
    "heads": "attention heads",
    "mlp_ratio": "MLP hidden width / width",
    # noise
    "sigma_min": "lowest noise level σ_min",
    "sigma_max": "highest noise level σ_max",
    "p_mean": "mean of log σ in training (EDM P_mean)",
    "p_std": "std of log σ in training (EDM P_std)",
    "sigma_data": "σ_data of the preconditioning (default: 0.5)",
    "gamma": "overlap γ: each block's range widened by γ of its log-width (default: 0.05)",
    "partition": "uniform: equal log σ widths (default here); equiprob: equal training mass per block "
    "(paper)",
    "max_weight": "clamp λ(σ) at this value (default: none, as the paper)",
    "lr": "peak learning rate (AdamW; default 3e-3 end to end, 5e-3 DiffusionBlocks)",
    "weight_decay": "AdamW weight decay (matrices only)",
    "warmup": "end-to-end warm-up steps (stretched by B for DiffusionBlocks)",
    "schedule": "after the warm-up: cosine decay to 0 (default) or constant (as EDM and DiT, with an EMA)",
    "clip": "gradient-norm clip (0: off)",
    "ema": "decay of a moving average of the weights, per block; eval and sample use it (0: off)",
    "compile": "torch.compile every block (end to end: the model); the first steps take longer",
    "precision": "autocast: fp32, bf16 or fp16; auto: bf16 on CUDA where supported, else fp32 (default)",
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
_METAVAR = {"int": "N", "float": "X", "str": "S"}  # short, so most help starts on the flag's line
METAVARS = {"dataset": "NAME", "data_dir": "DIR", "out": "DIR", "augment": "OPS", "init_from": "CKPT",
            "device": "DEV", "data": "TEXT", "tokenizer": "KIND"}
CHOICES = {  # the registries the configs validate against, so the two cannot drift apart
    "mode": MODES, "sampler": tuple(SAMPLERS), "grid": tuple(GRIDS),
    "decode": DECODES, "readout": READOUTS, "decoding": DECODINGS,
    "match": ("layers", "steps"), "shared_policy": SHARED_POLICIES, "partition": PARTITIONS,
    "offload": OFFLOAD_TARGETS, "precision": PRECISIONS, "schedule": SCHEDULES, "combine": COMBINES,
}


def add_fields(parser: argparse.ArgumentParser, cls, skip=(), title: str | None = None,
                help: dict | None = None, defaults=None) -> None:
    """Flags for ``cls``'s fields that have a help line; ``defaults``: the instance whose values
    the help shows (a family's own noise settings), else the fields' defaults."""
    help = HELP | (help or {})
    choices = CHOICES | {"mode": getattr(cls, "MODES", CHOICES["mode"])}
    group = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name not in help:
            continue
        base = str(f.type).split(" | ")[0]
        default = f.default if f.default is not dataclasses.MISSING else None
        default = getattr(defaults, f.name) if defaults is not None else default
        flag = "--" + f.name.replace("_", "-")
        if base.startswith("list["):
            group.add_argument(flag, type=int, nargs="+", default=None, metavar="N", help=help[f.name])
        elif base == "bool":
            group.add_argument(flag, action="store_true", default=None, help=help[f.name])
        else:
            shown = "" if default in (None, "") or "default" in help[f.name] else f" (default: {default})"
            options = choices.get(f.name)
            short = options is not None and len(",".join(map(str, options))) <= 10
            metavar = None if short else METAVARS.get(f.name, _METAVAR[base] if options is None else "M")
            group.add_argument(flag, type=_TYPES[base], default=None, choices=choices.get(f.name),
                               metavar=metavar, help=help[f.name] + shown)


MODEL_DERIVED = ("image_size", "channels", "patch_size", "num_classes")  # ViT, DiT: set from the data


def _filled(cls, args: argparse.Namespace, skip=(), base=None, **extra):
    """``cls`` from the flags given; the rest from ``base`` (a task's defaults) or ``cls``'s."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.name not in skip and getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **values, **extra) if base is not None else cls(**values, **extra)


def classify_args(parser: argparse.ArgumentParser, skip=()) -> None:
    from ..tasks.classify import ClassifyConfig

    own = ClassifyConfig()  # the family's defaults, which --help shows
    add_fields(parser, ClassifyConfig, skip=skip)
    add_fields(parser, ViTConfig, skip=MODEL_DERIVED, title="model", defaults=own.vit)
    add_fields(parser, NoiseConfig, title="noise (DiffusionBlocks)", defaults=own.noise)
    add_fields(parser, OptimConfig, skip=("betas",), title="optimizer", defaults=own.optim)


def _image_config(args: argparse.Namespace, base, model: str, **extra):
    """An image task's config (``base``: its defaults or a file's) with the flags given, ``model``
    naming its nested model config (vit, dit)."""
    shape = getattr(base, model)
    return _filled(type(base), args, base=base,
                   **{model: _filled(type(shape), args, skip=MODEL_DERIVED, base=shape)},
                   noise=_filled(NoiseConfig, args, base=base.noise),
                   optim=_filled(OptimConfig, args, base=base.optim), **extra)


def generate_args(parser: argparse.ArgumentParser, skip=()) -> None:
    from ..models.dit import DiTConfig
    from ..tasks.generate import GenerateConfig

    own = GenerateConfig()
    add_fields(parser, GenerateConfig, skip=skip, help=GENERATE_HELP)
    add_fields(parser, DiTConfig, skip=MODEL_DERIVED, title="model", help=GENERATE_HELP, defaults=own.dit)
    add_fields(parser, NoiseConfig, title="noise", help=GENERATE_HELP, defaults=own.noise)
    add_fields(parser, OptimConfig, skip=("betas",), title="optimizer", help=GENERATE_HELP,
               defaults=own.optim)


def text_args(parser: argparse.ArgumentParser, task: str, skip=()) -> None:
    from ..models.lm import LMConfig

    cls = text_class(task)
    own = cls()
    layered = task == "recurrent"  # prelude / core / coda instead of blocks of a depth
    add_fields(parser, cls, skip=(*skip, "blocks", "split", "match") if layered else skip, help=TEXT_HELP)
    add_fields(parser, LMConfig, skip=("vocab_size", "depth") if layered else ("vocab_size",),
                title="model", help=TEXT_HELP, defaults=own.lm)
    if task != "mdm":
        add_fields(parser, NoiseConfig, title="noise", help=TEXT_HELP, defaults=own.noise)
    add_fields(parser, OptimConfig, skip=("betas",), title="optimizer", help=TEXT_HELP, defaults=own.optim)


def text_class(task: str):
    names = {"mdm": "MDMConfig", "ar": "ARConfig", "recurrent": "RecurrentConfig"}
    return getattr(text_module(task), names[task])


def _text_config(args: argparse.Namespace, task: str, base=None, **extra):
    from ..models.lm import LMConfig

    cls = text_class(task)
    base = base or cls()
    nested = {"lm": _filled(LMConfig, args, skip=("vocab_size",), base=base.lm),
              "optim": _filled(OptimConfig, args, base=base.optim)}
    if task != "mdm":
        nested["noise"] = _filled(NoiseConfig, args, base=base.noise)
    return _filled(cls, args, base=base, **nested, **extra)


def _config_class(task: str):
    if task in TEXT_TASKS:
        return text_class(task)
    from ..tasks.classify import ClassifyConfig
    from ..tasks.generate import GenerateConfig

    return {"classify": ClassifyConfig, "generate": GenerateConfig}[task]


def task_config(args: argparse.Namespace, task: str, **extra):
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


def text_module(task: str):
    from ..tasks import ar, mdm, recurrent

    return {"mdm": mdm, "ar": ar, "recurrent": recurrent}[task]


WANDB_HELP = ("also log to Weights & Biases project P, group G (default: --out's name): config, "
              "losses per block, throughput, evaluations, memory; offline without WANDB_API_KEY")


def use_wandb(args: argparse.Namespace, group: str | None = None) -> None:
    """Ask :func:`runs.wandb_run` for W&B runs in this process and those it starts."""
    from ..runs import WANDB_GROUP, WANDB_PROJECT

    if getattr(args, "wandb", None):
        project, _, named = args.wandb.partition("/")
        os.environ[WANDB_PROJECT] = project
        if named or group:
            os.environ[WANDB_GROUP] = named or group


