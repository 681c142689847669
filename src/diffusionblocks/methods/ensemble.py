"""The ensemble control: B end-to-end networks of one block's depth, averaged.

Units: member k is an end-to-end network of ``split[k]`` layers (L/B each for an even split),
seed ``seed·B + k`` (so no two ensembles of different seeds share a member), trained alone for
the end-to-end step budget with the end-to-end recipe: the members' layer evaluations add up to
end to end's, each step holds one block's activations, and a prediction runs Σ split = L layers,
as the DiffusionBlocks chain of one call per block does. Nothing crosses between members, in
training or otherwise; each is an ordinary end-to-end run in ``OUT/member_k`` (train one alone
with ``member = k``, on any machine). Inference: the mean of the members' log-probabilities
(``combine = "logprob"``) or the log of their mean probability (``"prob"``); the result reports
both on validation. The assembled model is ``OUT/checkpoint`` (one ``member_k`` part each).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import torch
from torch import Tensor, nn

from .family import Family, unit_depths, with_depth

ABOUT = ("control: B end-to-end networks of one block's depth, each its own seed and the end-to-end "
         "step budget, predicting by their mean log-probability (train one with --member k, "
         "assemble with merge)")

COMBINES = ("logprob", "prob")


class Ensemble(nn.Module):
    """Members called alike; the output is a log-probability per class (usable as logits):
    the mean of the members' log-softmax (``logprob``) or the log of their mean softmax
    (``prob``)."""

    def __init__(self, members: list[nn.Module], combine: str = "logprob"):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"unknown ensemble combine {combine!r}; choose one of {', '.join(COMBINES)}")
        self.members, self.combine = nn.ModuleList(members), combine

    def parts(self) -> dict[str, nn.Module]:
        """Each member stored on its own (``member_k``)."""
        return {f"member_{k}": m for k, m in enumerate(self.members)}

    def forward(self, *args, **kwargs) -> Tensor:
        logp = torch.stack([m(*args, **kwargs).float().log_softmax(-1) for m in self.members])
        if self.combine == "prob":
            return logp.logsumexp(0) - math.log(len(self.members))
        return logp.mean(0)


def check(cfg) -> None:
    """The ensemble fields of a config (``member``, ``combine``) make sense for its mode."""
    if cfg.combine not in COMBINES:
        raise ValueError(f"unknown ensemble combine {cfg.combine!r}; choose one of {', '.join(COMBINES)}")
    if cfg.member is not None and cfg.mode != "ensemble":
        raise ValueError("--member trains one member of an ensemble as its own job: it needs "
                         "--mode ensemble")
    if cfg.member is not None and not 0 <= cfg.member < cfg.blocks:
        raise ValueError(f"member {cfg.member} does not exist: members are numbered 0 to {cfg.blocks - 1}")
    if cfg.mode == "ensemble" and cfg.parallel:
        raise ValueError("--parallel with --mode ensemble is not supported: members share "
                         "nothing, so train each as its own job (--member k) and merge them")


def member_config(family: Family, cfg, k: int):
    """Member k's end-to-end config (its folder ``OUT/member_k``)."""
    depths = unit_depths(family, cfg)
    return with_depth(family, cfg, depths[k], mode="e2e", seed=cfg.seed * len(depths) + k, member=None,
                      out=str(Path(cfg.out) / f"member_{k}"))


def build(family: Family, cfg) -> Ensemble:
    """The ensemble of an (assembled) ensemble config, its members built by the family."""
    return Ensemble([family.build(member_config(family, cfg, k)) for k in range(cfg.blocks)], cfg.combine)


def train(family: Family, cfg, data=None, show: bool = True, **kw) -> dict:
    """Train every member (or only ``cfg.member``), each resumable in ``OUT/member_k``; then
    assemble them into ``OUT/checkpoint`` and score the ensemble."""
    data = data if data is not None else family.load_data(cfg)
    cfg = family.resolve(cfg, data)
    ks = range(cfg.blocks) if cfg.member is None else [cfg.member]
    members = {k: family.train(member_config(family, cfg, k), data, show, **kw) for k in ks}
    if cfg.member is not None:
        return members[cfg.member] | {"mode": "ensemble", "member": cfg.member}
    out = Path(cfg.out)
    ckpt = assemble(family, cfg, [out / f"member_{k}" / "checkpoint" for k in ks], out)
    return conclude(family, cfg, ckpt, data, [members[k] for k in ks], **kw)


def assemble(family: Family, cfg, sources: list[Path], out: Path) -> Path:
    """Write ``OUT/checkpoint``: the members' weights (and weight averages) of ``sources``, in
    order, under the ensemble's config. Each source must be member k's checkpoint."""
    from .. import checkpoint
    from ..progress import Progress

    raw, averaged, progress = build(family, cfg), build(family, cfg), Progress()
    parts = {}
    for k, src in enumerate(sources):
        snap = checkpoint.read(src, parts=None)
        snap.load_parts({"model": raw.members[k]})
        parts[f"member_{k}"] = raw.members[k]
        if "model.ema.safetensors" in snap.files:
            snap.load_parts({"model": averaged.members[k]}, averaged=True)
            parts[f"member_{k}.ema"] = averaged.members[k]
        done = snap.progress or Progress()
        progress = Progress(max(progress.step, done.step), progress.layer_evals + done.layer_evals,
                            progress.train_seconds + done.train_seconds)
    config = cfg.to_dict() | {"member": None, "out": str(out)}
    return checkpoint.save(out / "checkpoint", parts, config, None, progress)


def conclude(family: Family, cfg, ckpt: Path, data, members: list[dict], **kw) -> dict:
    """The ensemble's result (OUT/result.json): test figures of the assembled model under
    ``cfg.combine``, validation under both rules, a curve of the ensembles of the first k
    members against their layer evaluations, and the budget columns summed over members.
    ``kw`` goes to the family's ``score`` (a language model's judges)."""
    from .. import checkpoint
    from ..parallel import main_process

    model = checkpoint.load_model(ckpt, type(cfg).from_dict, lambda c: build(family, c))[0]
    validate = family.validate or (lambda m, d, c: {})
    by_rule = {}
    for rule in COMBINES:
        model.combine = rule
        by_rule[rule] = validate(model, data, cfg)
    model.combine = cfg.combine
    history, evals = [], 0
    for k, r in enumerate(members):
        evals += r["layer_evals"]
        first = Ensemble(list(model.members[: k + 1]), cfg.combine)
        history.append({"mode": "ensemble", "members": k + 1, "step": r["steps"], "layer_evals": evals,
                        **validate(first, data, cfg)})
    times = [r["step_seconds"] for r in members if r.get("step_seconds")]
    result = {
        "mode": "ensemble", "dataset": getattr(cfg, "dataset", None) or getattr(cfg, "data", None),
        "blocks": len(members), "steps": members[0]["steps"],
        "layer_evals": evals, "train_seconds": round(sum(r["train_seconds"] for r in members), 3),
        "step_seconds": statistics.mean(times) if times else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "activation_bytes_per_step": max(r["activation_bytes_per_step"] for r in members),
        "activation_mib": max(r["activation_bytes_per_step"] for r in members) / 2**20,
        "traffic_bytes_per_step": 0,  # members never exchange anything
        "inference_layers": sum(unit_depths(family, cfg)), "history": history,
        **by_rule[cfg.combine], "validation_by_combine": by_rule,
        "members": [{k: r.get(k) for k in ("seed", "steps", "layer_evals", "parameters",
                                           "val_accuracy", "test_accuracy", "test_bpc",
                                           "next_char_accuracy") if k in r}
                    | {"member": i, "seed": cfg.seed * len(members) + i}
                    for i, r in enumerate(members)],
    }
    if family.score:
        result |= family.score(model, data, cfg, **kw)
    if main_process():
        (Path(cfg.out) / "result.json").write_text(json.dumps(result, indent=2))
        (Path(cfg.out) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return result


def merge(family: Family, sources: list[str | Path], out: str | Path) -> Path:
    """Assemble end-to-end checkpoints trained as members (``member = k`` jobs, on any machines)
    into an ensemble at OUT/checkpoint. The ensemble's config is read back from the members:
    their seeds must be ``s·B + k`` and every member must be member k of that ensemble."""
    from .. import checkpoint

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"merge --out {out} is not empty; merge into a fresh folder")
    configs = [checkpoint.config_of(checkpoint.read(s), family.config.from_dict) for s in sources]
    size, first = configs[0].blocks, min(c.seed for c in configs)  # a member keeps its ensemble's B
    members: dict[int, tuple[Path, object]] = {}
    for src, c in zip(sources, configs):
        k = c.seed - first // size * size
        if not 0 <= k < size or k in members:
            raise ValueError(f"{src} (seed {c.seed}) is not a member of one ensemble with the others: "
                             f"member k of the ensemble of seed s has seed s·{size} + k, each once")
        members[k] = (Path(src), c)
    missing = [k for k in range(size) if k not in members]
    if missing:
        raise ValueError(f"no checkpoint holds member(s) {missing} of the ensemble of seed {first // size}; "
                         "train them (--member k) and pass their checkpoints too")
    sources, configs = [members[k][0] for k in range(size)], [members[k][1] for k in range(size)]
    base = configs[0]  # members keep their ensemble's blocks and split; the depth is theirs
    depth = sum(base.split) if base.split else size * getattr(base, family.model).depth
    cfg = with_depth(family, base, depth, mode="ensemble", seed=first // size, member=None,
                     parallel=False, out=str(out))
    for k, (src, c) in enumerate(zip(sources, configs)):
        want = member_config(family, cfg, k).to_dict()
        have = c.to_dict()
        diff = [key for key in want if key not in family.mergeable | {"out"} and want[key] != have.get(key)]
        if diff:
            detail = ", ".join(f"{key}: {have.get(key)!r}, member {k} of this ensemble has {want[key]!r}"
                               for key in diff)
            raise ValueError(f"{src} is not member {k} of one ensemble with the others ({detail}); "
                             f"merge takes the members' checkpoints, seeds s·B + k, one config")
    steps = max(c.steps for c in configs)
    cfg = dataclasses.replace(cfg, steps=steps)
    return assemble(family, cfg, sources, out)

