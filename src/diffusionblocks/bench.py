"""Memory and speed of one training step: end to end and DiffusionBlocks, each with and without
activation checkpointing, and DiffusionBlocks with inactive blocks offloaded.

``diffusionblocks bench memory`` runs every (variant, B) in a fresh process, so that its peak
memory is its own, and writes ``memory.json``, ``memory.md`` and ``memory.png``.
``diffusionblocks bench speed`` interleaves the variants' steps in one process (machine noise
hits all alike), takes medians, and writes ``speed.json`` and ``speed.md``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import platform
import queue
import shutil
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from . import methods
from .checkpoint import stored_parts
from .checks import check_at_least_one, check_numbers, resolve_device
from .memory import PeakMemory, state_bytes
from .report import human_bytes, markdown_table
from .training import step_generator

VARIANTS = ("e2e", "e2e_ckpt", "dblocks", "dblocks_ckpt", "dblocks_offload")
TASKS = ("classify", "generate", "mdm")  # ViT classification, DiT generation, masked diffusion (parallel)
TEXT_CONTEXT, TEXT_VOCAB = 128, 65  # masked diffusion's throughput windows: Tiny Shakespeare's shape


@dataclass
class BenchConfig:
    """What to measure. The default is the paper's ViT shape (12 layers, divisible by every B)
    on MNIST; ``task="generate"`` measures a DiT of the same depth and width instead."""

    task: str = "classify"
    dataset: str = "mnist"
    data_dir: str | None = None
    blocks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 6])
    depth: int = 12
    width: int = 64
    batch_size: int = 128
    steps: int = 20  # timed steps per row (memory) or rounds (speed), after ``warmup``
    warmup: int = 5
    device: str = "auto"
    offload: str | None = None  # default: "disk" on CPU, "cpu" on CUDA
    threads: int | None = None
    precision: str = "fp32"  # of the training steps measured (memory, speed, parallel)
    out: str = "docs/bench"

    def __post_init__(self) -> None:
        check_numbers(self)
        check_at_least_one(self, ("depth", "width", "batch_size", "threads"))
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} for bench; choose one of {', '.join(TASKS)}")
        for b in self.blocks:
            if b < 1 or self.depth % b:
                raise ValueError(f"blocks {b} must divide depth {self.depth}; pass --blocks dividing it")
        from .training import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError(f"steps must be ≥ 1 and warmup ≥ 0, got {self.steps} and {self.warmup}")


def _device(cfg: BenchConfig) -> torch.device:
    return resolve_device(cfg.device)


def _task(run):
    """The task module (``tasks.classify`` or ``tasks.generate``) of a run config."""
    from importlib import import_module

    return import_module(f".tasks.{run.to_dict()['task']}", __package__)


def _run_config(cfg: BenchConfig, variant: str, blocks: int, data):
    device = _device(cfg)
    offload = None
    if variant.endswith("offload"):
        offload = cfg.offload or ("cpu" if device.type == "cuda" else "disk")
    common = {"mode": variant.split("_")[0], "dataset": cfg.dataset, "blocks": blocks,
              "batch_size": cfg.batch_size, "checkpointing": variant.endswith("ckpt"),
              "offload": offload, "device": str(device)}
    measured = {"precision": cfg.precision, "ema": 0.0}  # no weight average: the tables never had one
    if cfg.task == "mdm":
        from .tasks.mdm import MDMConfig

        del common["dataset"], common["offload"]
        lm = replace(MDMConfig().lm, width=cfg.width, depth=cfg.depth, vocab_size=TEXT_VOCAB,
                     context=TEXT_CONTEXT)
        return MDMConfig(**common, lm=lm, optim=replace(MDMConfig().optim, **measured))
    if cfg.task == "generate":
        from .models.dit import DiTConfig
        from .tasks.generate import GenerateConfig, resolve_config

        optim = replace(GenerateConfig().optim, **measured)
        return resolve_config(GenerateConfig(**common, dit=DiTConfig(width=cfg.width, depth=cfg.depth),
                                             optim=optim), data)
    from .models.vit import ViTConfig
    from .tasks.classify import ClassifyConfig, resolve_config

    optim = replace(ClassifyConfig().optim, **measured)
    return resolve_config(ClassifyConfig(**common, vit=ViTConfig(width=cfg.width, depth=cfg.depth),
                                         optim=optim), data)


def _batches(cfg: BenchConfig, n: int, device: torch.device):
    """n training batches, then the dataset is released (it must not count in peak memory).
    Classification trains on (images, labels); generation on (labels, images in [-1, 1])."""
    from .data.images import Batches, load_images

    if cfg.task == "mdm":  # throughput only: random windows of the shape (content does not change speed)
        gen = torch.Generator().manual_seed(0)
        windows = [torch.randint(TEXT_VOCAB, (cfg.batch_size, TEXT_CONTEXT), generator=gen).to(device)
                   for _ in range(n)]
        return [(w, w) for w in windows], None
    generate = cfg.task == "generate"
    data = load_images(cfg.dataset, cfg.data_dir, scaling="symmetric" if generate else "standard")
    batch_at = Batches(data.x_train, data.y_train, cfg.batch_size, 0, device)
    batches = [(x.clone(), y.clone()) for x, y in map(batch_at, range(n))]  # own storage, not the dataset's
    if generate:
        batches = [(labels, images) for images, labels in batches]
    meta = replace(data, x_train=data.x_train[:1].clone(), y_train=data.y_train[:1].clone(),
                   x_test=data.x_test[:1].clone(), y_test=data.y_test[:1].clone())
    del data, batch_at
    _trim()
    return batches, meta


def _resident(strategy, model, device) -> int:
    """Parameter, gradient and optimizer-state bytes on the training device right now."""
    per_part = state_bytes(stored_parts(model), strategy.optimizers, device)
    return sum(sum(v.values()) for v in per_part.values())


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS starts low
    except (OSError, AttributeError):
        pass


def _close(strategy) -> None:
    if getattr(strategy, "offload", None):
        strategy.offload.close()


def _build(run, device: torch.device, blocks: list[int] | None = None):
    """The model of ``run`` on ``device`` and its training strategy (for ``blocks`` only)."""
    task = _task(run)
    model = task.build(run).to(device)
    return model, methods.method(task.FAMILY, run, model, blocks).strategy


def _timed_step(strategy, x, y, t: int, device: torch.device) -> tuple[float, dict]:
    """Seconds for training step ``t`` (CUDA synchronized) and its record."""
    start = time.perf_counter()
    record = strategy.step(x, y, step_generator(0, t, device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, record


def _steps(run, batches: list, warmup: int, device: torch.device) -> dict:
    """Build the model of ``run`` and train it on ``batches``; times, layers and peak state."""
    model, strategy = _build(run, device)
    times, layers, resident = [], [], 0
    for t, (x, y) in enumerate(batches):
        seconds, record = _timed_step(strategy, x, y, t, device)
        if t >= warmup:
            times.append(seconds)
            layers.append(record["layers"])
        resident = max(resident, _resident(strategy, model, device))
    return {"model": model, "strategy": strategy, "times": times, "layers": layers, "resident": resident}


def _exact_heap() -> bool:
    """Make freed tensor memory go back to the OS at once (glibc: a fixed 128 KiB mmap
    threshold), so that resident memory follows live tensors. Otherwise the heap keeps freed
    chunks and fragmentation adds tens of MiB that differ from variant to variant."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024) == 1  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def measure_memory(cfg: BenchConfig, variant: str, blocks: int, part: str) -> dict:
    """One row's ``part``, in this (fresh) process: "time" takes ``warmup + steps`` steps with
    the default allocator and records time and training state; "peak" runs a fresh model's first
    steps (every block visited) inside :class:`PeakMemory`, on CPU with :func:`_exact_heap`,
    after a throw-away run (lazy initialization of kernels and optimizer code must not count).
    The baseline of the peak is the idle process with the batches loaded."""
    device = _device(cfg)
    exact = device.type == "cuda" or (part == "peak" and _exact_heap())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    batches, meta = _batches(cfg, cfg.warmup + cfg.steps, device)
    run = _run_config(cfg, variant, blocks, meta)
    if part == "time":
        timed = _steps(run, batches, cfg.warmup, device)
        model, strategy = timed["model"], timed["strategy"]
        with strategy.gathered():
            activations = _task(run).measure_activations(model, batches[0], run)["activation_bytes_per_step"]
            parameters = sum(p.numel() for p in model.parameters())
        _close(strategy)
        step = statistics.median(timed["times"])
        return {
            "mode": variant, "blocks": blocks if run.mode == "dblocks" else 1,
            "activation_bytes": activations, "state_bytes": timed["resident"],
            "resident_bytes": timed["resident"] + activations,
            "step_seconds": step, "layer_evals_per_second": statistics.mean(timed["layers"]) / step,
            "parameters": parameters, "offload": run.offload, "checkpointing": run.checkpointing,
            **_machine(cfg, device),
        }
    warm = _steps(run, batches[:2], 2, device)
    _close(warm["strategy"])
    del warm
    _trim()
    with PeakMemory(device) as peak:
        result = _steps(run, batches[: max(4, 3 * blocks)], 0, device)
    _close(result["strategy"])
    kind = "cuda_allocated" if device.type == "cuda" else ("rss_hwm" if peak.exact else "rss_max")
    return {"peak_bytes": peak.above_start, "peak_process_bytes": peak.peak,
            "peak_kind": kind + ("" if exact else "_fragmented_heap")}


def _machine(cfg: BenchConfig, device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    return {"task": cfg.task, "dataset": cfg.dataset, "depth": cfg.depth, "width": cfg.width,
            "batch_size": cfg.batch_size, "device": str(device), "device_name": name,
            "threads": torch.get_num_threads(), "precision": cfg.precision, "torch": torch.__version__}


def _rows(cfg: BenchConfig) -> list[tuple[str, int]]:
    rows = [("e2e", 1), ("e2e_ckpt", 1)]
    for b in cfg.blocks:
        rows += [("dblocks", b), ("dblocks_ckpt", b)] + ([("dblocks_offload", b)] if b > 1 else [])
    return rows


def bench_memory(cfg: BenchConfig, show: bool = True) -> list[dict]:
    """Every row's time and peak in fresh processes (spawned), so each is measured from a clean
    start."""
    records = []
    for variant, blocks in _rows(cfg):
        record = {}
        for part in ("time", "peak"):  # each in a fresh process
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                record |= pool.submit(measure_memory, cfg, variant, blocks, part).result()
        records.append(record)
        if show:
            r = records[-1]
            print(f"{variant:16s} B={r['blocks']}  activations {human_bytes(r['activation_bytes'])}"
                  f"  resident {human_bytes(r['resident_bytes'])}  peak {human_bytes(r['peak_bytes'])}"
                  f"  {r['step_seconds'] * 1e3:.1f} ms/step", flush=True)
    return records


def bench_speed(cfg: BenchConfig, show: bool = True) -> list[dict]:
    """Per B, one step of every variant per round, interleaved; medians over rounds."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg)
    batches, meta = _batches(cfg, cfg.warmup + cfg.steps, device)
    records = []
    for b in cfg.blocks:
        variants = [v for v in VARIANTS if not (b == 1 and v == "dblocks_offload")]
        strategies = {v: _build(_run_config(cfg, v, b, meta), device)[1] for v in variants}
        times = {v: [] for v in variants}
        layers = {v: [] for v in variants}
        for t, (x, y) in enumerate(batches):
            for v, strategy in strategies.items():
                seconds, record = _timed_step(strategy, x, y, t, device)
                if t >= cfg.warmup:
                    times[v].append(seconds)
                    layers[v].append(record["layers"])
        for s in strategies.values():
            _close(s)
        med = {v: statistics.median(ts) for v, ts in times.items()}
        for v in variants:
            blocks = b if v.startswith("dblocks") else 1
            # the same ratio round by round (steps next to each other in time), its quartiles
            ratios = [t * blocks / e for t, e in zip(times[v], times["e2e"])]
            paired = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
            records.append({
                "mode": v, "blocks": blocks, "for_blocks": b, "step_seconds": med[v],
                "layer_evals_per_second": statistics.mean(layers[v]) / med[v],
                # cost of the whole network's worth of layers, relative to one end-to-end step
                "relative_to_e2e": med[v] * blocks / med["e2e"],
                "relative_paired_quartiles": paired,
                "rounds": cfg.steps, **_machine(cfg, device),
            })
        if show:
            print(f"B={b}: " + "  ".join(f"{v} {med[v] * 1e3:.1f} ms" for v in variants), flush=True)
    return records


def memory_table(records: list[dict]) -> str:
    e2e = next(r for r in records if r["mode"] == "e2e")
    rows = []
    for r in records:
        rows.append([
            r["mode"], str(r["blocks"]), human_bytes(r["activation_bytes"]),
            f"{e2e['activation_bytes'] / r['activation_bytes']:.2f}×", human_bytes(r["state_bytes"]),
            human_bytes(r["resident_bytes"]), f"{e2e['resident_bytes'] / r['resident_bytes']:.2f}×",
            human_bytes(r["peak_bytes"]), f"{r['step_seconds'] * 1e3:.1f} ms",
            f"{r['layer_evals_per_second']:.1f}",
        ])
    return markdown_table(rows, [
        "variant", "B", "activations / step", "e2e / this", "state (p+g+opt)", "resident",
        "e2e / this", "peak", "s / step", "layer evals / s",
    ])


def speed_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        q1, q2, q3 = r.get("relative_paired_quartiles") or (math.nan,) * 3
        rows.append([str(r["for_blocks"]), r["mode"], f"{r['step_seconds'] * 1e3:.1f} ms",
                     f"{r['relative_to_e2e']:.3f}", f"{q2:.3f} ({q1:.3f}–{q3:.3f})",
                     f"{r['layer_evals_per_second']:.1f}"])
    return markdown_table(rows, ["B", "variant", "s / step (median)",
                                 "× B / e2e step (dblocks) or / e2e step",
                                 "the same, round by round: median (quartiles)", "layer evals / s"])


def plot_memory(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = sorted({r["blocks"] for r in records if r["mode"].startswith("dblocks")})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "activation_bytes", "activations saved per step"),
                           (axes[1], "peak_bytes", "peak memory (above start)")):
        width = 0.8 / 5
        for i, variant in enumerate(VARIANTS):
            if variant.startswith("e2e"):
                r = next(r for r in records if r["mode"] == variant)
                xs, ys = [-1], [r[key]]
            else:
                rs = [r for r in records if r["mode"] == variant]
                xs, ys = [blocks.index(r["blocks"]) for r in rs], [r[key] for r in rs]
            ax.bar([x + (i - 2) * width for x in xs], [y / 2**20 for y in ys], width, label=variant)
        ax.set_xticks(range(-1, len(blocks)), ["e2e"] + [f"B={b}" for b in blocks])
        ax.set_ylabel("MiB")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(kind: str, records: list[dict], cfg: BenchConfig) -> str:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{kind}.json").write_text(json.dumps(records, indent=2))
    table = memory_table(records) if kind == "memory" else speed_table(records)
    backbone = "DiT" if cfg.task == "generate" else "ViT"
    header = (f"{cfg.task} on {cfg.dataset}: {backbone} depth {cfg.depth}, width {cfg.width}, batch "
              f"{cfg.batch_size}; {records[0]['device_name']} ({records[0]['device']}, "
              f"{records[0]['threads']} threads), torch {records[0]['torch']}\n\n")
    (out / f"{kind}.md").write_text(header + table)
    if kind == "memory":
        plot_memory(records, out / "memory.png")
    return header + table


# --- bench gpu: the paper's shapes on one CUDA device ------------------------------------------

GPU_MODELS = {  # name: (task, backbone shape); 32×32×3 inputs, 10 classes, batch 128
    "ViT-12x128/4": ("classify", {"depth": 12, "width": 128, "heads": 4, "patch_size": 4}),
    "ViT-12x384/4": ("classify", {"depth": 12, "width": 384, "heads": 6, "patch_size": 4}),
    "DiT-S/2": ("generate", {"depth": 12, "width": 384, "heads": 6, "patch_size": 2}),
}
GPU_BLOCKS = (1, 2, 3, 4, 6)  # 1: end to end


def _synthetic_run(task: str, shape: dict, blocks: int, precision: str, batch_size: int,
                   device: torch.device):
    """The run config of one ``bench gpu`` row, resolved against random 32×32×3 data."""
    from .data.images import ImageData

    x, y = torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    data = ImageData(x, y, x, y, num_classes=10)
    common = {"mode": "e2e" if blocks == 1 else "dblocks", "blocks": max(blocks, 1), "dataset": "cifar10",
              "batch_size": batch_size, "device": str(device), "patch_size": shape["patch_size"]}
    backbone = {k: v for k, v in shape.items() if k != "patch_size"}
    if task == "generate":
        from .models.dit import DiTConfig
        from .tasks.generate import GenerateConfig, resolve_config

        base = GenerateConfig().optim
        return resolve_config(GenerateConfig(**common, dit=DiTConfig(**backbone),
                                             optim=replace(base, precision=precision, ema=0.0)), data)
    from .models.vit import ViTConfig
    from .tasks.classify import ClassifyConfig, resolve_config

    optim = replace(ClassifyConfig().optim, precision=precision)
    return resolve_config(ClassifyConfig(**common, vit=ViTConfig(**backbone), optim=optim), data)


def measure_gpu_row(name: str, blocks: int, precision: str, device: torch.device, steps: int = 20,
                    warmup: int = 5, batch_size: int = 128, models: dict | None = None) -> dict:
    """Peak allocated memory over ``steps`` training steps (after ``warmup``: optimizer state
    made, kernels chosen), the activations' share of it, and the median step time."""
    task, shape = (models or GPU_MODELS)[name]
    run = _synthetic_run(task, shape, blocks, precision, batch_size, device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32, generator=gen).to(device)
    labels = torch.randint(10, (batch_size,), generator=gen).to(device)
    batch = (labels, images.clamp(-1, 1)) if task == "generate" else (images, labels)
    model, strategy = _build(run, device)
    for t in range(warmup):
        strategy.step(*batch, step_generator(0, t, device))
    times = []
    with PeakMemory(device) as peak:
        for t in range(warmup, warmup + steps):
            times.append(_timed_step(strategy, *batch, t, device)[0])
    with strategy.precision.autocast():
        activations = _task(run).measure_activations(model, batch, run)["activation_bytes_per_step"]
    row = {"model": name, "task": task, "blocks": blocks, "precision": strategy.precision.precision,
           "peak_bytes": peak.peak, "activation_bytes": activations,
           "activation_share": activations / peak.peak if peak.peak else None,
           "step_seconds": statistics.median(times), "steps": steps, "batch_size": batch_size,
           "parameters": sum(p.numel() for p in model.parameters()),
           "peak_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_rss",
           **{k: v for k, v in _machine(BenchConfig(), device).items()
              if k in ("device", "device_name", "torch")}}
    del model, strategy, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_gpu(out: Path, device: torch.device | None = None, models: dict | None = None,
              blocks: tuple[int, ...] = GPU_BLOCKS, precisions: tuple[str, ...] = ("fp32", "bf16"),
              steps: int = 20, warmup: int = 5, batch_size: int = 128, show: bool = True) -> list[dict]:
    """Every (model, B, precision) row on one CUDA device, with ratios against end to end;
    writes OUT/gpu.json and OUT/gpu.md. ``device`` other than CUDA is for tests only."""
    if device is None:
        if not torch.cuda.is_available():
            raise ValueError("bench gpu needs a CUDA device and none is available here; on the CPU "
                             "use bench memory or bench speed")
        device = torch.device("cuda")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in models or GPU_MODELS:
        for precision in precisions:
            for b in blocks:
                row = measure_gpu_row(name, b, precision, device, steps, warmup, batch_size, models)
                base = next((r for r in rows if r["model"] == name and r["precision"] == row["precision"]
                             and r["blocks"] == 1), row)
                row |= {"peak_vs_e2e": base["peak_bytes"] / row["peak_bytes"],
                        "activations_vs_e2e": base["activation_bytes"] / row["activation_bytes"],
                        "step_vs_e2e": row["step_seconds"] / base["step_seconds"]}
                rows.append(row)
                if show:
                    print(f"{name} B={b} {row['precision']}: peak {human_bytes(row['peak_bytes'])}, "
                          f"step {row['step_seconds'] * 1e3:.1f} ms", flush=True)
    (out / "gpu.json").write_text(json.dumps(rows, indent=2))
    table = markdown_table(
        [[r["model"], r["precision"], str(r["blocks"]), human_bytes(r["peak_bytes"]),
          f"{human_bytes(r['activation_bytes'])} ({r['activation_share']:.0%})",
          f"{r['peak_vs_e2e']:.2f}×", f"{r['step_seconds'] * 1e3:.1f}", f"{r['step_vs_e2e']:.2f}"]
         for r in rows],
        ["model", "precision", "B", "peak memory", "activations (share)", "e2e peak / peak",
         "step ms", "step / e2e step"])
    header = (f"One training step, batch {batch_size}, 32×32 inputs; {rows[0]['device_name']}, torch "
              f"{rows[0]['torch']}; median of {steps} steps after {warmup}. `diffusionblocks bench gpu`\n\n")
    (out / "gpu.md").write_text(header + table)
    return rows


def _block_steps(cfg: BenchConfig, blocks: int, mine: list[int], threads: int, start, times) -> None:
    """A worker: train ``mine`` of ``blocks`` blocks for warmup + steps steps; report the time of
    the timed steps (all workers start them together, at ``start``), or its error as a string."""
    try:
        torch.set_num_threads(threads)
        device = _device(cfg)
        batches, meta = _batches(cfg, cfg.warmup + cfg.steps, device)
        _, strategy = _build(_run_config(cfg, "dblocks", blocks, meta), device, mine)
        for t, (x, y) in enumerate(batches[: cfg.warmup]):
            strategy.step(x, y, step_generator(0, t, device))
        start.wait()
        begin = time.perf_counter()
        for t, (x, y) in enumerate(batches[cfg.warmup :], cfg.warmup):
            strategy.step(x, y, step_generator(0, t, device))
        times.put(time.perf_counter() - begin)
    except threading.BrokenBarrierError:
        pass  # another worker failed and says why
    except Exception as e:  # the parent reports it: a spawned worker's traceback reaches no one
        start.abort()
        times.put(str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}")


def _timed(cfg: BenchConfig, blocks: int, assignment: list[list[int]], threads: int) -> float:
    """Wall seconds for every worker of ``assignment`` to do its steps, all at once."""
    ctx = get_context("spawn")
    start, times = ctx.Barrier(len(assignment)), ctx.Queue()
    workers = [ctx.Process(target=_block_steps, args=(cfg, blocks, mine, threads, start, times))
               for mine in assignment]
    for w in workers:
        w.start()
    seconds = []
    while len(seconds) < len(workers):
        try:
            got = times.get(timeout=5)
        except queue.Empty:
            got = "died without a word (killed, or out of memory?)" if any(
                w.exitcode not in (None, 0) for w in workers) else None
        if isinstance(got, str):
            for w in workers:
                w.kill()
            raise ValueError(f"a benchmark worker failed: {got}")
        if got is not None:
            seconds.append(got)
    for w in workers:
        w.join()
    return max(seconds)


def bench_parallel(cfg: BenchConfig, processes: int = 2, train_steps: int | None = None,
                   show: bool = True, repeats: int = 3) -> dict:
    """Throughput of ``processes`` block-parallel workers (one thread each, no communication)
    against one process training every block in turn (one thread), at equal per-process work:
    each does ``steps`` steps. With ``train_steps``, also train to the end both ways (torchrun
    ``--parallel``, and one process) and compare the merged model's test accuracy."""
    from .parallel import place

    if repeats < 1 or processes < 1:
        raise ValueError(f"repeats and processes must be at least 1, got {repeats} and {processes}")
    from .data.images import load_images

    if cfg.task != "mdm":
        load_images(cfg.dataset, cfg.data_dir)  # a missing dataset is said here, before any worker
    blocks = cfg.blocks[0]
    assignment = [place(blocks, r, processes).blocks for r in range(processes)]
    runs = []
    for _ in range(repeats):  # the three set-ups in turn, each figure a median over repeats
        runs.append((_timed(cfg, blocks, [list(range(blocks))], 1),
                     _timed(cfg, blocks, [list(range(blocks))], processes),
                     _timed(cfg, blocks, assignment, 1)))
    single, single_two_threads, parallel_wall = (statistics.median(r[i] for r in runs) for i in range(3))
    record = {
        "processes": processes, "blocks": blocks, "assignment": assignment, "steps": cfg.steps,
        "repeats": repeats,
        "single_process_seconds": single, "parallel_seconds": parallel_wall,
        "single_process_steps_per_second": cfg.steps / single,
        "parallel_steps_per_second": processes * cfg.steps / parallel_wall,
        "throughput_ratio": processes * cfg.steps / parallel_wall / (cfg.steps / single),
        # the same single process given every core instead: the alternative on this machine
        "single_process_all_threads_steps_per_second": cfg.steps / single_two_threads,
        "throughput_ratio_vs_all_threads": processes * single_two_threads / parallel_wall,
        **_machine(cfg, _device(cfg)), "threads": 1,  # per worker (and the single process)
    }
    if show:
        print(f"{processes} processes: {record['throughput_ratio']:.2f}× the steps per second of one "
              f"(1 thread each; {record['throughput_ratio_vs_all_threads']:.2f}× one process with "
              f"{processes} threads)", flush=True)
    if train_steps:
        record |= _train_both(cfg, blocks, processes, train_steps, show)
    return record


def _launch(argv: list[str], env: dict) -> None:
    """Run a training command; if it fails, raise its own error line (a worker's under torchrun)."""
    import subprocess

    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        lines = done.stderr.splitlines()
        said = [ln for ln in lines if "diffusionblocks: error:" in ln or "Error:" in ln]
        raise ValueError(f"a benchmark training run failed: {(said or lines or ['no output'])[-1].strip()}")


def _train_both(cfg: BenchConfig, blocks: int, processes: int, steps: int, show: bool) -> dict:
    """Train to the end block-parallel (torchrun) and in one process; both merged and tested."""
    import os
    import sys

    out = Path(cfg.out) / "parallel_runs"
    shutil.rmtree(out, ignore_errors=True)  # fresh runs: a finished checkpoint would resume
    common = ["train", "classify", "--mode", "dblocks", "--dataset", cfg.dataset, "--blocks",
              str(blocks), "--depth", str(cfg.depth), "--width", str(cfg.width), "--batch-size",
              str(cfg.batch_size), "--steps", str(steps), "--quiet"]
    common += ["--data-dir", cfg.data_dir] if cfg.data_dir else []
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
             "-m", "diffusionblocks", *common, "--parallel", "--out", str(out / "parallel")], env)
    parallel_wall = time.perf_counter() - started
    started = time.perf_counter()
    _launch([sys.executable, "-m", "diffusionblocks", *common, "--out", str(out / "single")], env)
    single_wall = time.perf_counter() - started
    par = json.loads((out / "parallel" / "result.json").read_text())
    one = json.loads((out / "single" / "result.json").read_text())
    if show:
        print(f"merged {par['test_accuracy']:.4f} vs one process {one['test_accuracy']:.4f}", flush=True)
    return {"train_steps": steps, "merged_test_accuracy": par["test_accuracy"],
            "single_process_test_accuracy": one["test_accuracy"],
            "parallel_train_wall_seconds": parallel_wall, "single_train_wall_seconds": single_wall,
            "test_examples": one["test_examples"]}


def run(kind: str, cfg: BenchConfig, show: bool = True, processes: int = 2,
        train_steps: int | None = None, repeats: int = 3) -> str:
    """Measure and write ``kind`` (memory, speed or parallel) under ``cfg.out``; return a summary."""
    from .checkpoint import check_writable_folder

    check_writable_folder(Path(cfg.out))  # before minutes of measuring
    if kind == "gpu":
        rows = bench_gpu(Path(cfg.out), show=show)
        return (Path(cfg.out) / "gpu.md").read_text() if rows else ""
    if kind == "parallel":
        if train_steps and cfg.task != "classify":
            raise ValueError(f"bench parallel --train-steps trains classification; drop --task {cfg.task}")
        record = bench_parallel(cfg, processes, train_steps, show, repeats)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "parallel.json").write_text(json.dumps(record, indent=2))
        return json.dumps(record, indent=2)
    if cfg.task == "mdm":
        raise ValueError(f"bench {kind} measures classify and generate; --task mdm is for bench parallel")
    records = bench_memory(cfg, show) if kind == "memory" else bench_speed(cfg, show)
    return write(kind, records, cfg)


