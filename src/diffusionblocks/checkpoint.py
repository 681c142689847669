"""Checkpoints: one safetensors file per part (``shared``, ``block_k`` or ``model``), a JSON
config, and training state (optimizer per part, progress) readable with ``weights_only=True``.

A checkpoint is a directory written whole to a temporary sibling and then swapped in, so a
kill at any moment leaves either the old or the new checkpoint, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .training import Progress

CONFIG = "config.json"
PROGRESS = "progress.json"


def _previous(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def resolve(directory: str | Path) -> Path:
    """The checkpoint directory to read, recovering from a kill between the two renames."""
    directory = Path(directory)
    if (directory / CONFIG).exists():
        return directory
    if (_previous(directory) / CONFIG).exists():
        return _previous(directory)
    raise FileNotFoundError(
        f"no checkpoint at {directory} (expected {directory / CONFIG}); "
        "pass the checkpoint directory a training run wrote (OUT/checkpoint)"
    )


def save(
    directory: str | Path,
    parts: dict[str, nn.Module],
    config: dict,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write a checkpoint atomically: temp dir, then rename over the old one."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f"{directory.name}.tmp-*"):  # left by killed writers
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    for name, module in parts.items():
        tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(tensors, str(tmp / f"{name}.safetensors"))
    for name, opt in (optimizers or {}).items():
        torch.save(opt.state_dict(), tmp / f"{name}.optim.pt")
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    if progress is not None:
        (tmp / PROGRESS).write_text(json.dumps(asdict(progress)))
    for f in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = _previous(directory)
    if directory.exists():  # otherwise .old may be the only checkpoint left: keep it until now
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


@contextmanager
def exclusive(directory: str | Path) -> Iterator[None]:
    """Hold ``directory/.lock`` for the duration: a second run writing into the same folder (two
    block jobs given one --out) is refused instead of overwriting the first. A lock left by a
    dead process is taken over."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / ".lock"
    holder = lock.read_text().strip() if lock.exists() else ""
    if holder and not _alive(holder):
        lock.unlink(missing_ok=True)  # stale: its writer is gone
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = lock.read_text().strip() if lock.exists() else "?"
        raise ValueError(f"{directory} is in use by another run (pid {holder}); give this run "
                         "its own --out") from None
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_config(directory: str | Path) -> dict:
    """The run config stored with a checkpoint."""
    return json.loads((resolve(directory) / CONFIG).read_text())


def load_parts(directory: str | Path, parts: dict[str, nn.Module]) -> None:
    """Load each part's weights; every part must be present and match exactly."""
    directory = resolve(directory)
    for name, module in parts.items():
        path = directory / f"{name}.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {directory} has no {path.name}")
        stored, expected = load_file(str(path)), module.state_dict()
        missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match this model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}{', …' if max(len(missing), len(unexpected)) > 3 else ''}): it was "
                "written by a different version of the model; load it with the version that "
                "wrote it, or train anew"
            )
        module.load_state_dict(stored, strict=True)


def stored_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The parts a model is stored as: per block and shared when it has ``parts()``, else one."""
    return model.parts() if hasattr(model, "parts") else {"model": model}


def load_model(directory: str | Path, from_dict: Callable[[dict], object],
               build: Callable[[object], nn.Module], device: torch.device | str = "cpu"):
    """(model, config) of a checkpoint: the stored config read through ``from_dict``, the model
    ``build`` makes of it, every stored part loaded, in eval mode on ``device``."""
    directory = resolve(directory)  # one directory for every read, even beside a concurrent save
    cfg = from_dict(read_config(directory))
    model = build(cfg)
    load_parts(directory, stored_parts(model))
    return model.to(device).eval(), cfg


def read_progress(directory: str | Path) -> Progress:
    """The progress stored with a checkpoint (zero when it has none)."""
    path = resolve(directory) / PROGRESS
    return Progress(**json.loads(path.read_text())) if path.exists() else Progress()


def load_training_state(
    directory: str | Path, optimizers: dict[str, torch.optim.Optimizer]
) -> Progress:
    """Load each optimizer's state and return the run's progress."""
    directory = resolve(directory)
    for name, opt in optimizers.items():
        path = directory / f"{name}.optim.pt"
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {directory} has no optimizer state {path.name} (a merged "
                                    "model can be evaluated, not resumed); train into a fresh --out")
        opt.load_state_dict(torch.load(path, weights_only=True))
    return read_progress(directory)
