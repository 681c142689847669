"""The DiT beside its shallow control (docs/controls.md): FID test and class accuracy, e2e and
DiffusionBlocks from their committed records, the shallow control from its run folders. The
3,000-step arm (both σ grids, MNIST and Fashion-MNIST) writes docs/controls/dit_3k.json; the
12,000-step arm (4× it, MNIST, Karras grid; the shallow run's checkpoint halfway too) writes
docs/controls/dit_12k.json (`rows` tables for `python -m diffusionblocks.docs`).

    python benchmarks/dit_controls_table.py --runs runs/rows --out docs/controls/dit_3k.json
    python benchmarks/dit_controls_table.py --arm 12k --runs runs/rows --out docs/controls/dit_12k.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# End to end and DiffusionBlocks on MNIST, 3,000-step constant-rate EMA arm, as docs/results.md
# ("Both grids on the same checkpoints", 2026-12-02) records them; the checkpoints are gone.
MNIST_RECORDED = {"e2e": {"karras": (21.97, 0.707), "equiprob": (25.62, 0.689)},
                  "dblocks": {"karras": (16.99, 0.897), "equiprob": (18.33, 0.894)}}


def arm_12k(runs: Path) -> dict:
    """MNIST at 12,000 end-to-end steps (72,000 training layer evaluations at batch 64, cosine
    schedule): e2e and DiffusionBlocks from docs/generate/mnist_report.json, the shallow control
    at the end and halfway (its checkpoint copied at step 18,000 of 36,000, before the learning
    rate has decayed: a point on the way, not a run of half the budget)."""
    recorded = json.loads(Path("docs/generate/mnist_report.json").read_text())
    rows = [["mnist", mode, f"{recorded[mode]['fid_test']:.2f}", "–",
             f"{100 * recorded[mode]['class_accuracy']:.1f}%", "72,000", str(layers)]
            for mode, layers in (("e2e", 600), ("dblocks", 200))]
    folder = runs / "dit_mnist_12k"
    for halfway in sorted(folder.glob("shallow_at_*.karras")):
        step = int(halfway.name.split("_")[-1].split(".")[0])
        karras = json.loads((halfway / "eval.json").read_text())
        equi = json.loads((folder / f"shallow_at_{step}.equiprob" / "eval.json").read_text())
        rows.append(["mnist", f"shallow, step {step:,} of 36,000", f"{karras['fid_test']:.2f}",
                     f"{equi['fid_test']:.2f}", f"{100 * karras['class_accuracy']:.1f}%",
                     f"{2 * step:,}", "200"])
    karras = json.loads((folder / "shallow" / "karras" / "eval.json").read_text())
    equi = json.loads((folder / "shallow" / "result.json").read_text())
    rows.append(["mnist", "shallow", f"{karras['fid_test']:.2f}",
                 f"{equi['fid_test']:.2f}" if equi.get("grid") == "equiprob" else "–",
                 f"{100 * karras['class_accuracy']:.1f}%", "72,000", "200"])
    return {"columns": ["dataset", "mode", "FID test, Karras", "FID test, equal probability",
                        "class accuracy (Karras)", "layer evals (train, ×batch 64)", "layer evals / sample"],
            "rows": rows,
            "sources": {"e2e, dblocks": "docs/generate/mnist_report.json (5,000 samples, Karras grid)",
                        "shallow": f"{folder}/shallow{{,_at_*}}/ (eval fid --grid karras|equiprob)"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/rows")
    ap.add_argument("--arm", choices=("3k", "12k"), default="3k")
    ap.add_argument("--out", default=None, help="default: docs/controls/dit_{arm}.json")
    args = ap.parse_args()
    runs = Path(args.runs)
    args.out = args.out or f"docs/controls/dit_{args.arm}.json"
    if args.arm == "12k":
        table = arm_12k(runs)
        Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
        print(json.dumps(table["rows"], indent=1))
        return
    fmnist = json.loads(Path("docs/generate/fmnist_grids_3k.json").read_text())["records"]
    recorded = {"mnist": MNIST_RECORDED,
                "fashion_mnist": {m: {g: (fmnist[m][g]["fid_test"], fmnist[m][g]["class_accuracy"])
                                      for g in ("karras", "equiprob")} for m in ("e2e", "dblocks")}}
    layers = {"e2e": 600, "dblocks": 200, "shallow": 200}
    rows = []
    for dataset, folder in (("mnist", "dit_mnist_3k"), ("fashion_mnist", "dit_fmnist_3k")):
        equi = json.loads((runs / folder / "shallow" / "result.json").read_text())
        karras = json.loads((runs / folder / "shallow" / "karras" / "eval.json").read_text())
        shallow = {"karras": (karras["fid_test"], karras["class_accuracy"]),
                   "equiprob": (equi["fid_test"], equi["class_accuracy"])}
        figures = dict(recorded[dataset]) | {"shallow": shallow}
        for mode, grids in figures.items():
            rows.append([dataset, mode, f"{grids['karras'][0]:.2f}", f"{grids['equiprob'][0]:.2f}",
                         f"{100 * grids['equiprob'][1]:.1f}%", "18,000", str(layers[mode])])
    table = {"columns": ["dataset", "mode", "FID test, Karras", "FID test, equal probability",
                         "class accuracy (equal probability)", "layer evals (train, ×batch 64)",
                         "layer evals / sample"],
             "rows": rows,
             "sources": {"e2e, dblocks, mnist": "docs/results.md (2026-12-02)",
                         "e2e, dblocks, fashion_mnist": "docs/generate/fmnist_grids_3k.json",
                         "shallow": f"{runs}/dit_*_3k/shallow/{{result.json,karras/eval.json}}"}}
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(table["rows"], indent=1))


if __name__ == "__main__":
    main()
