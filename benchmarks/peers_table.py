"""The peers table (docs/peers.md): every method on one dataset at one budget in examples seen,
over the seeds that finished. Reads RUNS/seed_S/MODE/{result.json,checkpoint}; measures train
accuracy on the first 10,000 training images each run trained on (NoProp is known to overfit);
writes OUT.json (a `rows` table for `python -m diffusionblocks.docs`, with every seed's figures).
Step times are measured here, every method in this one process one after another (one thread,
``--time-steps`` steps each after two of warm-up, the median), so that they compare; a run's own
step time depends on what ran beside it.

    python benchmarks/peers_table.py --runs runs/rows/peers_mnist --data-dir ../shared/data \
        --out docs/peers/mnist.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time
from pathlib import Path

import torch

from diffusionblocks import methods
from diffusionblocks.configs import overlay, read_file
from diffusionblocks.data.images import augment, parse_augment
from diffusionblocks.data.images import load_images as _load_images
from diffusionblocks.methods import shallow
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import matched_budget, step_generator

MODES = ("e2e", "dblocks", "shallow", "ensemble", *methods.PEERS)
CROSSES = {  # what crosses between the units in training (a block per device)
    "e2e": "gradients through every layer (one unit)",
    "dblocks": "nothing (the label table is frozen)",
    "shallow": "gradients through its layers (one unit)",
    "ensemble": "nothing (independent members)",
    **{name: methods.peer(name).CROSSES for name in methods.PEERS},
}
UNITS = {name: methods.peer(name).UNITS for name in methods.PEERS}  # the rest: layers
PER_SEED = ("test_accuracy", "val_accuracy", "train_accuracy")
load_images = functools.cache(_load_images)  # one dataset, read once for every method


def pct(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}% (1 seed)"
    mean, sd = 100 * statistics.mean(values), 100 * statistics.stdev(values)
    return f"{mean:.2f} ± {sd:.2f}% ({len(values)} seeds)"


def measure(runs: Path, mode: str, data_dir: str | None, n: int) -> dict | None:
    """The record of MODE over the seeds under RUNS that finished (None: no seed did)."""
    found = sorted(runs.glob(f"seed_*/{mode}/result.json"))
    if not found:
        return None
    results = [json.loads(p.read_text()) for p in found]
    train, data = [], None
    for path in found:
        model, cfg = classify.load(path.parent / "checkpoint")
        data = data or load_images(cfg.dataset, data_dir)
        seen = data.holdout(cfg.val_size) if cfg.val_size else data
        train.append(classify.evaluate(model, seen.x_train[:n], seen.y_train[:n], cfg))
    first, cfg = results[0], json.loads((found[0].parent / "config.json").read_text())
    examples = first["steps"] * cfg["batch_size"]
    return {
        "seeds": [p.parts[-3] for p in found], "test_accuracy": [r["test_accuracy"] for r in results],
        "val_accuracy": [r.get("val_accuracy") for r in results], "train_accuracy": train,
        "steps": first["steps"], "batch_size": cfg["batch_size"],
        "epochs": examples / (len(data.y_train) - cfg["val_size"]),
        "evaluations": first["layer_evals"],
        "step_seconds": statistics.median(r.get("step_seconds") or math.nan for r in results),
        "activation_bytes_per_step": first["activation_bytes_per_step"],
        "traffic_bytes_per_step": first.get("traffic_bytes_per_step"),
        "parameters": first["parameters"]}


def config_of(runs: Path, mode: str, dataset: str, controls: str | None = None) -> ClassifyConfig:
    """The config of MODE's first run under RUNS, else its recipe ``configs/cpu/MODE_DATASET.toml``
    (a mode kept from an earlier table, whose runs are gone), else ``controls`` in that mode."""
    found = sorted(runs.glob(f"seed_*/{mode}/config.json"))
    if found:
        return ClassifyConfig.from_dict(json.loads(found[0].read_text()))
    recipe = Path(f"configs/cpu/{mode}_{dataset}.toml")
    settings = read_file(recipe if recipe.exists() or controls is None else controls)
    return overlay(ClassifyConfig(), {k: v for k, v in settings.items() if k != "task"} | {"mode": mode})


def from_controls(path: str, config: str, data_dir: str | None) -> dict:
    """The ViT rows of a controls table (benchmarks/controls_table.py or ``compare --seeds``; its
    runs may be gone), trained by ``config``: test and validation accuracy per seed and, where
    the table holds it, the budget; train accuracy was not measured there."""
    table = json.loads(Path(path).read_text())
    cfg = overlay(ClassifyConfig(), {k: v for k, v in read_file(config).items() if k != "task"})
    data = load_images(cfg.dataset, data_dir)
    cfg = classify.resolve_config(cfg, data)
    records, images = {}, len(data.y_train) - cfg.val_size

    def per_seed(figure: dict) -> list[float]:
        return list(figure["seeds"].values()) if isinstance(figure["seeds"], dict) else figure["seeds"]

    for mode, r in table["modes"].items():
        blocks = cfg.blocks if mode in ("dblocks", "shallow") else 1  # ensemble: per member
        steps = matched_budget(cfg.steps, 0, blocks, cfg.match)[0]
        budget, seeds = r.get("budget", {}), [f"seed_{s}" for s in table["seeds"]]
        records[mode] = {
            "seeds": seeds, "test_accuracy": per_seed(r["test_accuracy"]),
            "val_accuracy": per_seed(r["val_accuracy"]), "train_accuracy": [None] * len(seeds),
            "steps": steps, "batch_size": cfg.batch_size, "epochs": steps * cfg.batch_size / images,
            "evaluations": budget.get("layer_evals"), "step_seconds": None,
            "activation_bytes_per_step": budget.get("activation_bytes_per_step"),
            "traffic_bytes_per_step": None, "parameters": budget.get("parameters"), "from": path}
    return records


def step_seconds(cfg: ClassifyConfig, data_dir: str | None, steps: int) -> float:
    """The median time of one training step of ``cfg``'s method (a fresh model, the first batch
    of its training images), after two steps of warm-up."""
    data = load_images(cfg.dataset, data_dir)
    cfg = classify.resolve_config(cfg, data)
    if cfg.mode in ("shallow", "ensemble"):  # a step of the one 2-layer end-to-end network either trains
        cfg = shallow.unit(classify.FAMILY, cfg, cfg.steps)
    ops = parse_augment(cfg.augment)
    model = classify.build(cfg)

    def views(x, g):
        return augment(x, ops, g, pixels=data.pixels) if ops else x

    method = methods.method(classify.FAMILY, cfg, model, views=views)
    x, y = data.x_train[: cfg.batch_size], data.y_train[: cfg.batch_size]
    times = []
    for t in range(steps + 2):
        start = time.perf_counter()
        method.strategy.step(x, y, step_generator(cfg.seed, t))
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def combine(kept: dict | None, new: dict | None) -> dict | None:
    """Seeds measured now over the seeds of an earlier table (whose runs may be gone)."""
    if kept is None or new is None:
        return new or kept
    seeds = {s: [kept[k][i] for k in PER_SEED] for i, s in enumerate(kept["seeds"])}
    seeds |= {s: [new[k][i] for k in PER_SEED] for i, s in enumerate(new["seeds"])}
    order = sorted(seeds, key=lambda s: int(s.split("_")[-1]))
    return new | {"seeds": order} | {k: [seeds[s][j] for s in order] for j, k in enumerate(PER_SEED)}


def shown(value, spec: str) -> str:
    """``value`` formatted by ``spec`` ("–" when unknown: a row kept from a table without it)."""
    return "–" if value is None else spec.format(value)


def row(mode: str, r: dict) -> list[str]:
    traffic, saved, seconds = r["traffic_bytes_per_step"], r["activation_bytes_per_step"], r["step_seconds"]
    return [mode, pct(r["test_accuracy"]), pct(r["train_accuracy"]), f"{r['epochs']:.2f}",
            shown(r["evaluations"], "{:,} " + UNITS.get(mode, "layers")),
            shown(saved and saved / 2**20, "{:.1f} MiB"), shown(seconds and seconds * 1000, "{:.0f} ms"),
            shown(r["parameters"], "{:,}"),
            CROSSES[mode] + (f", {per_step(traffic)}" if traffic else "")]


def per_step(size: int) -> str:
    return f"{size / 2**20:.2f} MiB/step" if size >= 2**14 else f"{size:,} bytes/step"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-examples", type=int, default=10_000)
    ap.add_argument("--keep", default=None, help="an earlier table: its seeds stay unless re-run")
    ap.add_argument("--controls", nargs=2, metavar=("JSON", "CONFIG"), default=None,
                    help="the ViT rows of a controls table and the config that trained them")
    ap.add_argument("--time-steps", type=int, default=10, help="steps timed per method (0: the runs' own)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = Path(args.runs)
    kept = json.loads(Path(args.keep).read_text())["records"] if args.keep else {}
    controls = args.controls[1] if args.controls else None
    if args.controls:
        kept = from_controls(*args.controls, args.data_dir) | kept
    records = {}
    dataset = json.loads(next(runs.glob("seed_*/*/config.json")).read_text())["dataset"]
    for mode in MODES:
        record = combine(kept.get(mode), measure(runs, mode, args.data_dir, args.train_examples))
        if record is not None:
            if args.time_steps:
                cfg = config_of(runs, mode, dataset, controls)
                record["step_seconds"] = step_seconds(cfg, args.data_dir, args.time_steps)
                record["step_seconds_from"] = f"timed here, {args.time_steps} steps, one thread"
            records[mode] = record
    seen = f"train accuracy ({args.train_examples:,} seen)"
    command = f"python benchmarks/peers_table.py --runs {runs} --out {args.out}"
    table = {"columns": ["method", "test accuracy", seen, "epochs",
                         "evaluations in training", "activations / step", "step time (1 thread)",
                         "parameters", "crosses between units in training"],
             "rows": [row(m, r) for m, r in records.items()], "records": records,
             "command": command + (f" --keep {args.keep}" if args.keep else "")
             + (" --controls " + " ".join(args.controls) if args.controls else "")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(table["rows"], indent=1))


if __name__ == "__main__":
    main()
