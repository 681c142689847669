"""Models shared the way the ecosystem shares them: ``save_pretrained`` writes a run's model as a
folder (``config.json``, one safetensors file per part and its weight average, a manifest, and a
model card ``README.md`` with the run's metrics and the command that reproduces it; no optimizer
state, nothing pickled), ``from_pretrained`` loads a folder or a Hub repository of any family,
``push_to_hub`` uploads one. A block job's checkpoint is shared alone the same way (in a
subfolder of the repository), and ``merge`` takes Hub sources too.

Hub sources read ``hf:ORG/NAME[/SUBFOLDER][@REVISION]``; everything works offline from local
folders, and a Hub source without network is one clear error.

    save_pretrained("runs/mnist/checkpoint", "shared/mnist-dblocks")
    model, cfg = from_pretrained("shared/mnist-dblocks")          # or "hf:org/mnist-dblocks"
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from . import checkpoint

PREFIX = "hf:"
CARD = "README.md"
METRICS = ("val_accuracy", "test_accuracy", "fid_test", "fid_train", "class_accuracy", "test_bpc",
           "test_bpc_bound", "next_char_accuracy", "judge_bpc", "mauve", "layer_evals", "steps",
           "parameters", "activation_bytes_per_step", "inference_layers", "train_seconds")


def _family(task: str):
    from .tasks import ar, classify, generate, mdm, recurrent

    return {"classify": classify, "generate": generate, "mdm": mdm, "ar": ar, "recurrent": recurrent}[task]


def parse(source: str) -> tuple[str, str | None, str | None]:
    """(repository id, subfolder, revision) of ``hf:ORG/NAME[/SUB][@REV]``."""
    body = source[len(PREFIX):]
    body, _, revision = body.partition("@")
    parts = body.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"{source}: a Hub source reads hf:ORG/NAME[/SUBFOLDER][@REVISION]")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None


def resolve(source: str | Path, token: str | None = None) -> Path:
    """The local folder of ``source``: itself, or a Hub repository's (sub)folder, downloaded
    (or found in the cache)."""
    if not str(source).startswith(PREFIX):
        return Path(source)
    repo, sub, revision = parse(str(source))
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{source} needs the `huggingface_hub` package: pip install "
                         "huggingface_hub") from None
    try:
        folder = snapshot_download(repo_id=repo, revision=revision, token=token,
                                   allow_patterns=[f"{sub}/*"] if sub else None)
    except Exception as e:  # noqa: BLE001 - offline, unknown repository, no access: one line
        raise ValueError(f"could not fetch {source} from the Hub ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}); give a local folder instead") from None
    return Path(folder) / sub if sub else Path(folder)


def model_card(config: dict, result: dict | None, progress=None) -> str:
    """A model card: what the model is, its metrics, how to load it and how to train it again."""
    task, mode = config.get("task"), config.get("mode")
    data = config.get("dataset") or config.get("data")
    block = f", block {config['block']} only (a block job: merge it with the others)" \
        if config.get("block") is not None else ""
    rows = [(k, result[k]) for k in METRICS if result and isinstance(result.get(k), (int, float))]
    table = "\n".join(["| metric | value |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in rows)]) \
        if rows else "No metrics were recorded with this checkpoint."
    trained = (f"\nTrained {progress.step:,} steps ({progress.layer_evals:,} layer evaluations, "
               f"{progress.train_seconds:,.0f} s).\n" if progress else "")
    return f"""---
library_name: diffusionblocks
tags: [diffusionblocks, {task}, {mode}]
{f"datasets: [{data}]" if data else ""}
---

# {task} · {mode} · {data}{block}

A `diffusionblocks` model: task `{task}`, training method `{mode}`, {config.get('blocks', 1)} blocks.
{trained}
## Metrics

{table}

## Use

```python
from diffusionblocks.hub import from_pretrained
model, cfg = from_pretrained("THIS_FOLDER_OR_hf:ORG/NAME")
```

## Train it again

`config.json` holds every setting of the run:

```bash
diffusionblocks train {task} --config config.json
```
"""


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def save_pretrained(source: str | Path, folder: str | Path, result: dict | None = None) -> Path:
    """Write the checkpoint at ``source`` (a run's ``OUT/checkpoint``, or ``OUT``) as a shared
    model in ``folder``, its card holding ``result`` (by default the run's ``result.json``)."""
    source = Path(source)
    if (source / "checkpoint" / "config.json").is_file():
        source = source / "checkpoint"  # the run folder given
    snapshot = checkpoint.read(source, parts=None)
    if result is None and (source.parent / "result.json").is_file():
        result = json.loads((source.parent / "result.json").read_text())
    card = model_card(snapshot.config, result, snapshot.progress)
    return checkpoint.export(source, folder, {CARD: card})


def from_pretrained(source: str | Path, device: str = "cpu", averaged: bool = True,
                    token: str | None = None) -> tuple[nn.Module, object]:
    """(model, config) of a folder written by :func:`save_pretrained`, a run's checkpoint, or
    a Hub source ``hf:ORG/NAME[/SUBFOLDER][@REVISION]``, whatever its family."""
    folder = resolve(source, token)
    task = checkpoint.read_config(folder).get("task")
    if task not in ("classify", "generate", "mdm", "ar", "recurrent"):
        raise ValueError(f"{source} holds no model of a known task (config.json says {task!r})")
    return _family(task).load(folder, device=device, averaged=averaged)


def push_to_hub(folder: str | Path, repo_id: str, subfolder: str | None = None,
                revision: str | None = None, token: str | None = None, private: bool = False) -> str:
    """Upload a :func:`save_pretrained` folder to ``repo_id`` (into ``subfolder``: one block of
    a model trained as block jobs), creating the repository when needed; returns its URL."""
    from huggingface_hub import HfApi

    checkpoint.read(folder, parts=None)  # only a complete, verified folder leaves the machine
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, path_in_repo=subfolder or "",
                             revision=revision, commit_message="diffusionblocks save_pretrained")
    return str(info)
