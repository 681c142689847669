"""The DiT beside its shallow control at the 3,000-step arm (docs/controls.md): FID test on both
σ grids and class accuracy, e2e and DiffusionBlocks from their committed records, the shallow
control from its run folders. Writes docs/controls/dit_3k.json (a `rows` table for
`python -m diffusionblocks.docs`).

    python benchmarks/dit_controls_table.py --runs runs/rows --out docs/controls/dit_3k.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# End to end and DiffusionBlocks on MNIST, 3,000-step constant-rate EMA arm, as docs/results.md
# ("Both grids on the same checkpoints", 2026-12-02) records them; the checkpoints are gone.
MNIST_RECORDED = {"e2e": {"karras": (21.97, 0.707), "equiprob": (25.62, 0.689)},
                  "dblocks": {"karras": (16.99, 0.897), "equiprob": (18.33, 0.894)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/rows")
    ap.add_argument("--out", default="docs/controls/dit_3k.json")
    args = ap.parse_args()
    runs = Path(args.runs)
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
