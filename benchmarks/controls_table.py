"""One table of a family's modes over seeds: end to end and DiffusionBlocks beside their controls
(docs/controls.md). Reads each seed's ``RUNS/seed_S/MODE/result.json`` for the modes trained
here, and the committed seed summary (``--summary``: a ``compare --seeds`` seeds.json) for modes
trained earlier; writes OUT.json (mean ± sd and every seed's figure, with the budget columns) and
OUT.md.

    python benchmarks/controls_table.py --runs runs/rows/cifar10_seeds --modes ensemble shallow \
        --summary docs/bench/seeds/cifar10_3k/seeds.json --budget e2e=docs/cifar10/default_3000.json \
        --budget dblocks=docs/cifar10/default_3000.json --out docs/controls/cifar10_seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

FIGURES = ("val_accuracy", "test_accuracy")
BUDGET = ("layer_evals", "inference_layers", "parameters", "activation_bytes_per_step")


def count(n) -> str:
    return "–" if n is None else f"{n:,}"


def summary(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder of seed_S/MODE runs")
    ap.add_argument("--modes", nargs="+", required=True, help="modes read from --runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--summary", default=None, help="a seeds.json of earlier modes (their figures)")
    ap.add_argument("--budget", nargs="*", default=[], help="MODE=REPORT.json: a report whose MODE "
                    "row gives that mode's budget columns (a run of the same model and budget)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    table: dict[str, dict] = {}
    if args.summary:
        earlier = json.loads(Path(args.summary).read_text())
        for mode, figures in earlier["modes"].items():
            table[mode] = {k: summary(list(v["seeds"].values())) for k, v in figures.items() if k in FIGURES}
    for item in args.budget:
        mode, report = item.split("=", 1)
        row = json.loads(Path(report).read_text())[mode]
        table.setdefault(mode, {})["budget"] = {k: row.get(k) for k in BUDGET} | {"from": report}
    for mode in args.modes:
        results = [json.loads((Path(args.runs) / f"seed_{s}" / mode / "result.json").read_text())
                   for s in args.seeds]
        table[mode] = {k: summary([r[k] for r in results]) for k in FIGURES}
        table[mode]["budget"] = {k: results[0].get(k) for k in BUDGET}
        if mode == "ensemble":
            table[mode]["validation_by_combine"] = {
                rule: summary([r["validation_by_combine"][rule]["val_accuracy"] for r in results])
                for rule in results[0]["validation_by_combine"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"seeds": args.seeds, "modes": table}, indent=2))
    pct = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['sd']:.2f}"  # noqa: E731
    lines = ["| mode | validation | test | test, seeds " + ", ".join(map(str, args.seeds))
             + " | layer evals (train) | layers / prediction | parameters | activations / step |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, row in table.items():
        b = row.get("budget", {})
        act = b.get("activation_bytes_per_step")
        mib = f"{act / 2**20:.1f} MiB" if act else "–"
        lines.append(f"| {mode} | {pct(row['val_accuracy'])}% | {pct(row['test_accuracy'])}% | "
                     + ", ".join(f"{100 * v:.2f}" for v in row["test_accuracy"]["seeds"])
                     + f" | {count(b.get('layer_evals'))} | {count(b.get('inference_layers'))} | "
                     f"{count(b.get('parameters'))} | {mib} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
