"""The one training driver every family's run goes through (:func:`train_run`), and the check
that a resume is one."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import sys
from collections.abc import Callable, Set
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .progress import Progress

if TYPE_CHECKING:
    from .training import Method


def check_resumable(saved: dict, config: dict, resumable: set[str], where: Path) -> None:
    """Refuse to resume from a checkpoint whose config differs outside ``resumable`` fields."""
    saved, now = json.loads(json.dumps(saved)), json.loads(json.dumps(config))  # tuples as lists
    diff = []
    for k in now:
        if k in resumable or saved.get(k) == now[k]:
            continue
        if isinstance(now[k], dict) and isinstance(saved.get(k), dict):  # name the nested field
            diff += [(f"{k}.{j}", saved[k].get(j), v) for j, v in now[k].items() if saved[k].get(j) != v]
        else:
            diff.append((k, saved.get(k), now[k]))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, a, b in diff)
        raise ValueError(
            f"checkpoint {where} was written by a different config ({detail}); "
            "resume with the same flags or use a fresh --out"
        )


def announce_resume(where: Path, step: int, total: int, show: bool = True) -> None:
    """Say on stderr that a run continues from a checkpoint, and when it has nothing left to do
    (a finished run is reused as it is, whatever changed in the code since)."""
    if show:
        left = ("already finished: its results are reused; train into a fresh --out to train again"
                if step >= total else f"{total - step} steps to go")
        print(f"resuming from {where} at step {step} of {total} ({left})", file=sys.stderr, flush=True)


def restore(ckpt: Path, cfg, resumable: set[str], parts: dict, optimizers: dict):
    """Load a run's checkpoint at ``ckpt`` into ``parts`` and ``optimizers`` and return (its
    path, its progress), or None when there is none. What cannot be resumed exactly (no config
    or progress, a damaged file, another config outside ``resumable``) is refused, never
    restarted from step 0 over it."""
    from . import checkpoint

    if not checkpoint.exists(ckpt):
        return None
    try:
        # the config first: a run of other flags is told which, before any file it lacks
        saved = checkpoint.config_of(checkpoint.read(ckpt), type(cfg).from_dict).to_dict()
        check_resumable(saved, cfg.to_dict(), resumable, ckpt)
        snapshot = checkpoint.read(ckpt, parts=list(parts), optimizers=list(optimizers))
    except FileNotFoundError as e:
        why = (" (no optimizer state: a merged model can be evaluated, not resumed)"
               if str(e.filename).endswith(".optim.pt") else "")
        raise ValueError(f"{ckpt} cannot be resumed ({e.strerror or e}){why}; give a fresh --out, or "
                         f"move {ckpt} away to train anew here") from None
    if snapshot.progress is None:
        raise ValueError(f"{snapshot.path} has no {checkpoint.PROGRESS}: resuming would restart its "
                         "learning-rate schedule on trained weights; give a fresh --out")
    snapshot.load_parts(parts)
    snapshot.load_optimizers(optimizers)
    return snapshot.path, snapshot.progress


def drop_stale_offload(folder: Path, strategy) -> None:
    """Remove ``folder/offload`` left by a killed ``--offload disk`` run when this one keeps its
    blocks elsewhere (a disk-offloading run rewrites the files it needs)."""
    offload = getattr(strategy, "offload", None)
    if offload is None or offload.to != "disk":
        shutil.rmtree(folder / "offload", ignore_errors=True)


def json_line(record: dict) -> str:
    """One metrics.jsonl line: a NaN or infinite value (a diverged metric) is written as null,
    so every line stays valid JSON."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, (list, tuple)) else v
    return json.dumps(clean(record)) + "\n"


class MetricsLog:
    """A run's log: every 10th training step and every evaluation as a line of metrics.jsonl
    (written line by line), and with ``tensorboard`` every step and evaluation also as TensorBoard
    scalars under OUT/tensorboard: loss (overall and per block), learning rate, throughput and
    each evaluation metric; with ``wandb`` (a run of :func:`wandb_run`) the same to Weights &
    Biases, evaluations with the process's peak memory. ``start``: the step a resumed run
    continues from (later events of the interrupted run are dropped from the board)."""

    def __init__(self, out: Path, mode: str, total: int, tensorboard: bool = False, start: int = 0,
                 wandb=None):
        self.mode, self.total, self.wandb = mode, total, wandb
        self.board = tensorboard_writer(out / "tensorboard", start) if tensorboard else None
        self.file = (out / "metrics.jsonl").open("a", buffering=1)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        if self.board:
            self.board.close()
        if self.wandb:
            self.wandb.finish()

    def _scalar(self, name: str, value: float, step: int) -> None:
        if self.board:
            self.board.add_scalar(name, value, step)

    def step(self, record: dict) -> None:
        """A training step's record (step, lr, loss, seconds, layers, block if block-wise)."""
        if record["step"] % 10 == 1 or record["step"] == self.total:
            self.file.write(json_line({"mode": self.mode, **record}))
        if self.board or self.wandb:
            t, seconds = record["step"], max(record["seconds"], 1e-9)
            scalars = {"train/loss": record["loss"], "train/lr": record["lr"],
                       "throughput/steps_per_second": 1 / seconds,
                       "throughput/layer_evals_per_second": record["layers"] / seconds}
            if "block" in record:  # block-wise: the block this step trained
                scalars[f"train/loss_block_{record['block']}"] = record["loss"]
            for b, loss in enumerate(record.get("block_losses", ())):  # every block that stepped
                if loss is not None:
                    scalars[f"train/loss_block_{b}"] = loss
            for name, value in scalars.items():
                self._scalar(name, value, t)
            if self.wandb:
                self.wandb.log(scalars, step=t)

    def evaluation(self, record: dict) -> None:
        """An evaluation's record (step, layer_evals, train_seconds and the metrics)."""
        self.file.write(json_line(record))
        scalars = {f"eval/{name}": value for name, value in flat_numbers(record).items()
                   if name not in ("step", "layer_evals", "train_seconds")}
        for name, value in scalars.items():
            self._scalar(name, value, record["step"])
        if self.wandb:
            self.wandb.log(scalars | {"eval/layer_evals": record["layer_evals"],
                                      "memory/peak_mib": peak_memory_mib()}, step=record["step"])


WANDB_PROJECT = "DIFFUSIONBLOCKS_WANDB"  # the W&B project of this process's runs (--wandb)
WANDB_GROUP = "DIFFUSIONBLOCKS_WANDB_GROUP"  # the experiment that groups them (compare's OUT)


def peak_memory_mib() -> float:
    """The process's peak memory: CUDA's allocator peak when a GPU trains, else the peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def wandb_run(cfg, folder: Path, job_type: str):
    """A Weights & Biases run for the training run in ``folder`` when ``--wandb PROJECT`` asked
    for one (None otherwise): grouped by experiment, ``job_type`` the unit it trains (a block,
    a member, a mode), the config logged, resumed under the same id after an interruption, and
    offline (files under OUT/wandb, ``wandb sync`` later) unless a key or WANDB_MODE says otherwise."""
    project = os.environ.get(WANDB_PROJECT)
    if not project:
        return None
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs the wandb package: pip install 'diffusionblocks[wandb]'") from None
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    where = folder.resolve()
    group = os.environ.get(WANDB_GROUP) or Path(cfg.out).resolve().name
    run_id = hashlib.sha1(str(where).encode()).hexdigest()[:16]  # one folder, one run, resumed
    return wandb.init(project=project, group=group, job_type=job_type, name=f"{group}/{where.name}",
                      id=run_id, resume="allow", dir=str(where), config=cfg.to_dict(), mode=mode,
                      settings=wandb.Settings(silent=True, console="off"))


def job_type(cfg, job) -> str:
    """What a run trains, for grouping: ``block_k``, ``member_k``, ranks' blocks, or its mode."""
    if getattr(cfg, "member", None) is not None:
        return f"member_{cfg.member}"
    if job.blocks is not None:
        return "block_" + "_".join(map(str, job.blocks))
    return cfg.mode


def flat_numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) record, named by their path: ``block_accuracy/0``."""
    flat = {}
    for k, v in record.items():
        if isinstance(v, dict):
            flat |= flat_numbers(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            flat[f"{prefix}{k}"] = v
    return flat


def tensorboard_writer(folder: Path, start: int = 0):
    """A TensorBoard writer for ``folder``; one clear error when the optional package is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: "
                         "pip install 'diffusionblocks[tensorboard]'") from None
    return SummaryWriter(str(folder), purge_step=start + 1)  # drop what a killed or moved-away run left


def kept_metrics(path: Path, step: int) -> list[dict]:
    """Rewrite the metrics log ``path`` to the records up to ``step`` (what the checkpoint being
    resumed had seen; lines that are not JSON records, from a damaged log, are dropped), and
    return them."""
    kept = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(record)
    path.write_text("".join(map(json_line, kept)))
    return kept


def run_summary(progress, history: list[dict], step_times: list[float], model, device) -> dict:
    """What every task's result.json says of its training run (:func:`train_run`'s returns)."""
    return {"layer_evals": progress.layer_evals, "train_seconds": round(progress.train_seconds, 3),
            "step_seconds": statistics.median(step_times) if step_times else None,
            "parameters": sum(p.numel() for p in model.parameters()), "history": history,
            "device": str(device)}


@dataclass(frozen=True)
class Run:
    """The family's half of a training run: the ``parts`` its checkpoint stores, the batch of
    each step (``batches(t)``), what it records every ``total // cfg.evals`` steps
    (``evaluate(progress)``, a dict), the config fields a resume may change, and the progress
    bar's name. ``first``: evaluate and checkpoint at step 0 of a fresh run too (a converted
    model, before fine-tuning)."""

    parts: dict[str, nn.Module]
    batches: Callable[[int], tuple]
    evaluate: Callable[[Progress], dict]
    resumable: Set[str]
    desc: str = "train"
    first: bool = False


def train_run(cfg, run: Run, method: Method, job=None, show: bool = True):
    """The one training driver: any family's :class:`Run` trained by any :class:`~.training.Method`.
    Lock the run's folder, resume from its checkpoint (same config outside ``run.resumable``),
    log steps to metrics.jsonl, and every ``method.total // cfg.evals`` steps record
    ``run.evaluate(progress)`` and write a checkpoint atomically. ``job``
    (:class:`~.parallel.Job`): this process's share of a block job or a torchrun run, whose
    folder is its group's; only a group's leader writes, and ranks that average shared parts
    checkpoint on the same steps.

    Returns the final progress, the evaluation records and the measured step times (the
    latter two empty for a process that does not write).
    """
    from . import checkpoint, parallel
    from .training import adopt_averages, averaged, fit, stored_averages

    strategy, total, warmup, evaluate = method.strategy, method.total, method.warmup, run.evaluate
    job = job or parallel.Job()
    folder, writer = job.folder(cfg.out), job.writer
    parts = run.parts | stored_averages(strategy)
    with checkpoint.exclusive(folder) if writer else nullcontext():  # one writer per folder
        ckpt, metrics_path = folder / "checkpoint", folder / "metrics.jsonl"
        progress, history = Progress(), []
        restored = restore(ckpt, cfg, run.resumable, parts, strategy.states)
        if writer:  # only once this run may write here
            drop_stale_offload(folder, strategy)
            if restored is not None:
                announce_resume(restored[0], restored[1].step, total, show)
                history = [r for r in kept_metrics(metrics_path, restored[1].step) if "seconds" not in r]
            elif metrics_path.exists():
                metrics_path.unlink()
        if restored is not None:
            progress = restored[1]
        if job.syncing:
            parallel.same_step(strategy, progress.step)
        if job.parallel:
            parallel.barrier()  # every rank has read its checkpoint before any rank writes
        folder.mkdir(parents=True, exist_ok=True)
        if writer:
            (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

        def on_every(p: Progress) -> None:
            if job.syncing:
                parallel.barrier()  # groups checkpoint the same step, so a restart resumes them alike
            if not writer:
                return
            with strategy.gathered():  # with offload, every block comes in for these two
                with averaged(strategy):  # the weights a trained model is used with
                    scores = evaluate(p)
                record = {"mode": cfg.mode, "step": p.step, "layer_evals": p.layer_evals,
                          "train_seconds": round(p.train_seconds, 3), **scores}
                history.append(record)
                metrics.evaluation(record)
                checkpoint.save(ckpt, parts, cfg.to_dict(), strategy.states, p)

        mine = f" blocks {job.blocks}" if job.blocks is not None else ""
        try:
            logged = wandb_run(cfg, folder, job_type(cfg, job)) if writer else None
            with (MetricsLog(folder, cfg.mode, total, cfg.tensorboard, progress.step, logged) if writer
                  else nullcontext()) as metrics:
                if run.first and restored is None:
                    on_every(progress)
                every, log = max(1, total // cfg.evals), metrics.step if writer else None
                progress = fit(strategy, run.batches, total, warmup, cfg.seed, progress, every, on_every, log,
                               desc=run.desc + mine, show=show and writer)
        finally:
            if getattr(strategy, "offload", None):
                strategy.offload.close()
        adopt_averages(strategy)
        step_times = [r["seconds"] for r in map(json.loads, metrics_path.read_text().splitlines())
                      if "seconds" in r] if writer else []
    return progress, history, step_times


def side_by_side(task: str, configs: dict[str, object], jobs: int) -> dict[str, dict]:
    """Train each of ``configs`` (name -> a task's config) with ``tasks.<task>.train``, up to
    ``jobs`` at once in their own processes, the cores shared among them; returns their results.
    Each run is as resumable as it is alone (a finished one is read back)."""
    import os
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    threads = max(1, (os.cpu_count() or 1) // jobs)
    payload = {name: (task, cfg.to_dict(), threads) for name, cfg in configs.items()}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(_train_one, *args) for name, args in payload.items()}
        return {name: future.result() for name, future in futures.items()}


def _train_one(task: str, config: dict, threads: int) -> dict:
    import importlib

    torch.set_num_threads(threads)
    module = importlib.import_module(f"{__package__}.tasks.{task}")
    return module.train(module.FAMILY.config.from_dict(config), show=False)
