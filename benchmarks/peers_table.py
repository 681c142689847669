"""The peers table (docs/peers.md): every method on one dataset at one budget in examples seen,
over the seeds that finished. Reads RUNS/seed_S/MODE/{result.json,checkpoint}; measures train
accuracy on the first 10,000 training images each run trained on (NoProp is known to overfit);
writes OUT.json (a `rows` table for `python -m diffusionblocks.docs`, with every seed's figures).

    python benchmarks/peers_table.py --runs runs/rows/peers_mnist --data-dir ../shared/data \
        --out docs/peers/mnist.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from diffusionblocks.data.images import load_images
from diffusionblocks.tasks import classify

MODES = ("e2e", "dblocks", "local", "cff", "cwcomp", "noprop")
CROSSES = {  # what crosses between the units in training (a block per device)
    "e2e": "gradients through every layer (one unit)",
    "dblocks": "nothing (the label table is frozen)",
    "local": "activations forward",
    "cff": "activations forward (two views)",
    "cwcomp": "activations forward",
    "noprop": "gradients of W_embed and the classifier",
}
UNITS = {"e2e": "layers", "dblocks": "layers", "local": "layers", "cff": "layers",
         "cwcomp": "conv layers", "noprop": "CNN blocks"}


def pct(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}% (1 seed)"
    mean, sd = 100 * statistics.mean(values), 100 * statistics.stdev(values)
    return f"{mean:.2f} ± {sd:.2f}% ({len(values)} seeds)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-examples", type=int, default=10_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = Path(args.runs)
    rows, records = [], {}
    data = None
    for mode in MODES:
        found = sorted(p for p in runs.glob(f"seed_*/{mode}/result.json"))
        results = [json.loads(p.read_text()) for p in found]
        if not results:
            continue
        train = []
        for path in found:
            model, cfg = classify.load(path.parent / "checkpoint")
            data = data or load_images(cfg.dataset, args.data_dir)
            seen = data.holdout(cfg.val_size) if cfg.val_size else data
            n = args.train_examples
            train.append(classify.evaluate(model, seen.x_train[:n], seen.y_train[:n], cfg))
        first = results[0]
        cfg = json.loads((found[0].parent / "config.json").read_text())
        examples = first["steps"] * cfg["batch_size"]
        epochs = examples / (len(data.y_train) - cfg["val_size"])
        act = first["activation_bytes_per_step"] / 2**20
        step_ms = statistics.median(r["step_seconds"] for r in results) * 1000
        traffic = first.get("traffic_bytes_per_step")
        records[mode] = {
            "seeds": [p.parts[-3] for p in found], "test_accuracy": [r["test_accuracy"] for r in results],
            "val_accuracy": [r.get("val_accuracy") for r in results], "train_accuracy": train,
            "steps": first["steps"], "batch_size": cfg["batch_size"], "epochs": epochs,
            "evaluations": first["layer_evals"], "step_seconds": step_ms / 1000,
            "activation_bytes_per_step": first["activation_bytes_per_step"],
            "traffic_bytes_per_step": traffic, "parameters": first["parameters"]}
        rows.append([mode, pct(records[mode]["test_accuracy"]), pct(train), f"{epochs:.2f}",
                     f"{first['layer_evals']:,} {UNITS[mode]}", f"{act:.1f} MiB", f"{step_ms:.0f} ms",
                     f"{first['parameters']:,}", CROSSES[mode]
                     + (f", {traffic / 2**20:.2f} MiB/step" if traffic else "")])
    seen = f"train accuracy ({args.train_examples:,} seen)"
    table = {"columns": ["method", "test accuracy", seen, "epochs",
                         "evaluations in training", "activations / step", "step time (1 thread)",
                         "parameters", "crosses between units in training"],
             "rows": rows, "records": records,
             "command": f"python benchmarks/peers_table.py --runs {runs} --out {args.out}"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
