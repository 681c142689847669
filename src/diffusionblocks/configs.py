"""Experiments as files: a run config read from TOML (or a run's own config.json), checked key by
key against the task's config dataclass, and laid over the task's defaults.

A file mirrors ``config.json``: top-level fields, then one table per nested config (``[vit]``,
``[dit]``, ``[lm]``, ``[noise]``, ``[optim]``), and a top-level ``task`` naming the family::

    task = "classify"
    dataset = "cifar10"
    blocks = 3
    [vit]
    depth = 12
    width = 128
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path

TASKS = ("classify", "generate", "mdm", "ar", "recurrent")


def read_file(path: str | Path) -> dict:
    """The settings of a ``.toml`` file or a run's ``config.json``, as a dict."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--config {path} is a folder; give a .toml file or a run's config.json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--config {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--config {path} is not a text file (not UTF-8 at byte {e.start}); give a "
                         ".toml file or a run's config.json") from None
    try:
        d = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--config {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                         f"{e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"--config {path} must hold a table of settings")
    if "task" in d and d["task"] not in TASKS:
        raise ValueError(f"--config {path}: unknown task {d['task']!r}; choose one of {', '.join(TASKS)}")
    return d


def overlay(base, settings: dict, where: str = "config"):
    """``base`` (a config dataclass) with ``settings`` laid over it, nested tables over nested
    configs. A key the dataclass lacks, or a value of the wrong type, is refused in one line."""
    hints = typing.get_type_hints(type(base))
    names = {f.name for f in dataclasses.fields(base)}
    values = {}
    for key, value in settings.items():
        if key not in names:
            raise ValueError(f"{where}: {key!r} is not a setting here (settings: {', '.join(sorted(names))})")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {key!r} is a table of settings, got {value!r}")
            values[key] = overlay(current, value, f"{where}.{key}")
        else:
            values[key] = typed(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(base, **values)


def typed(value, hint, where: str):
    """``value`` checked against the type ``hint`` (int, float, str, bool, list[int], tuples,
    optional ones); ints are taken for floats and lists for tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        for kind in kinds:
            try:
                return typed(value, kind, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: expected {' or '.join(_name(k) for k in kinds)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and Ellipsis not in args and len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
        items = [typed(v, args[min(i, len(args) - 1)] if origin is tuple else args[0], where)
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(hint, True)
    if not ok:
        raise ValueError(f"{where}: expected {_name(hint)}, got {value!r}")
    return float(value) if hint is float else value


def _name(kind) -> str:
    return getattr(kind, "__name__", str(kind))


def dry_run(task: str, cfg) -> dict:
    """What ``train TASK`` would build, without training: the data (or why it is missing) and the
    model, with its parameters per block. Nothing is written."""
    from types import SimpleNamespace

    import torch

    from . import methods
    from .data.images import SHAPES, load_images
    from .tasks import ar, classify, generate, mdm, recurrent, text

    module = {"classify": classify, "generate": generate, "mdm": mdm, "ar": ar, "recurrent": recurrent}[task]
    report = {"task": task, "mode": cfg.mode}
    try:
        if task in ("classify", "generate"):
            data = (load_images(cfg.dataset, cfg.data_dir, size=cfg.image_size) if task == "classify"
                    else generate.load_data(cfg))
            report |= {"dataset": cfg.dataset, "train_examples": len(data.y_train),
                       "test_examples": len(data.y_test)}
        else:
            data = text.load_data(cfg)
            report |= {"dataset": cfg.data, "train_tokens": len(data.train), "test_tokens": len(data.test)}
    except (OSError, ValueError) as e:  # the model part still says what would train
        report |= {"dataset": getattr(cfg, "dataset", None) or cfg.data, "data_missing": str(e)}
        if task in ("classify", "generate"):
            shape, classes = SHAPES.get(cfg.dataset, ((3, 64, 64), 10))  # a folder: classes unknown
            if cfg.image_size and (cfg.dataset == "tinyimagenet" or cfg.dataset.startswith("folder:")):
                shape = (3, cfg.image_size, cfg.image_size)  # folders are resized
            data = SimpleNamespace(shape=shape, num_classes=classes, y_train=())
        else:
            vocab = 256 if cfg.tokenizer == "byte" else cfg.lm.vocab_size
            data = SimpleNamespace(tokenizer=SimpleNamespace(vocab_size=vocab, chars=cfg.vocab))
    if task in ("classify", "generate"):
        cfg = module.resolve_config(cfg, data)
    else:
        cfg = type(cfg).from_dict(text.resolved(cfg, data))
    with torch.device("meta"):  # shapes only: a paper-size model costs no memory or time
        model = methods.build(module.FAMILY, cfg) if hasattr(module, "FAMILY") else module.build(cfg)
    parts = model.parts() if hasattr(model, "parts") else {"model": model}
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    blocks = cfg.num_blocks if hasattr(cfg, "num_blocks") else getattr(model, "num_blocks", 1)
    layers = getattr(cfg, "layers_per_pass", None) or next(
        getattr(cfg, name).depth for name in ("vit", "dit", "lm") if hasattr(cfg, name))
    config = cfg.to_dict()
    if len(config.get("vocab") or "") > 200:  # a BPE's JSON: the line stays readable
        config["vocab"] = f"<the tokenizer's state: {len(config['vocab']):,} characters of JSON>"
    return report | {"blocks": blocks, "layers": layers, "parameters": count(model),
                     "parameters_per_block": {name: count(m) for name, m in parts.items()},
                     "steps": cfg.steps, "config": config}
