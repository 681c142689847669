"""The language models beside their controls at every budget measured (docs/controls.md):
masked diffusion (test BPC bound) and autoregressive (next-character accuracy, sampled accuracy,
test BPC) on Tiny Shakespeare, e2e, DiffusionBlocks, the shallow network and (ar) the ensemble.
Figures come from the run folders under ``--runs`` where a run is there
(``RUNS/{family}_ts{steps}/{mode}/result.json``, steps the end-to-end budget), else from the
table this script wrote before (runs are gone between sessions, their figures stay), else from
the committed record of that budget (``RECORDED``). Writes OUT_mdm.json and OUT_ar.json
(``rows`` for ``python -m diffusionblocks.docs``; ``points``, every mode's figures with its
headline ``figure``, which budget_curves.py and controls_summary.py read).

    python benchmarks/lm_controls_table.py --runs runs/rows --out docs/controls/lm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

README_STEPS = {"mdm": 1500, "ar": 1200}  # configs/cpu/{mdm,ar}_tinyshakespeare.toml
DEPTH, BLOCKS = {"mdm": 6, "ar": 8}, {"mdm": 3, "ar": 4}
MODES = {"mdm": ("e2e", "dblocks", "shallow"), "ar": ("e2e", "dblocks", "shallow", "ensemble")}
KEYS = ("test_bpc", "bpc_stderr", "next_char_accuracy", "teacher_forced_accuracy", "sampled_accuracy",
        "activation_mib", "layer_evals", "steps", "train_seconds")

# Committed records whose runs are gone: (family, end-to-end steps, mode) -> (file, key in it or
# None for the whole file, precision, note).
RECORDED = {
    ("mdm", 1500, "e2e"): ("docs/lm/mdm_report.json", "e2e", "fp32", "docs/results.md, 2026-12-01"),
    ("mdm", 1500, "dblocks"): ("docs/lm/mdm_report.json", "dblocks", "fp32", "docs/results.md, 2026-12-01"),
    ("mdm", 1500, "shallow"): ("docs/controls/lm_shallow.json", "mdm", "fp32",
                               "`--mode e2e --depth 2 --steps 4500`, 2026-12-06 (the issue's)"),
    ("ar", 600, "e2e"): ("docs/lm/ar_600_report.json", "e2e", "fp32", "docs/results.md"),
    ("ar", 600, "dblocks"): ("docs/lm/ar_600_report.json", "dblocks", "fp32", "docs/results.md"),
    ("ar", 1200, "e2e"): ("docs/lm/ar_report.json", "e2e", "fp32", "docs/results.md"),
    ("ar", 1200, "dblocks"): ("docs/lm/ar_report.json", "dblocks", "fp32", "docs/results.md"),
    ("ar", 1200, "shallow"): ("docs/controls/lm_shallow.json", "ar", "fp32",
                              "`--mode e2e --depth 2 --steps 4800`, 2026-12-06 (the issue's)"),
    ("ar", 1200, "ensemble"): ("docs/controls/ar_ensemble_ts1200.json", None, "fp32", "2026-12-07"),
}


def from_run(folder: Path) -> dict | None:
    """The figures of a finished run folder, or None."""
    try:
        result = json.loads((folder / "result.json").read_text())
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    precision = config.get("optim", {}).get("precision", "auto")
    return {k: result[k] for k in KEYS if result.get(k) is not None} | {
        "precision": "fp32" if precision == "auto" else precision, "source": str(folder)}


def from_record(family: str, steps: int, mode: str) -> dict | None:
    if (family, steps, mode) not in RECORDED:
        return None
    path, key, precision, note = RECORDED[family, steps, mode]
    record = json.loads(Path(path).read_text())
    record = record[key] if key else record
    return {k: record[k] for k in KEYS if record.get(k) is not None} | {
        "precision": precision, "source": f"{path} ({note})"}


def accuracy(figures: dict) -> float | None:
    """Next-character accuracy: the argmax of a next-token model, DiffusionBlocks' greedy chain."""
    return figures.get("next_char_accuracy", figures.get("teacher_forced_accuracy"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/rows")
    ap.add_argument("--out", default="docs/controls/lm", help="writes OUT_mdm.json and OUT_ar.json")
    args = ap.parse_args()
    runs = Path(args.runs)
    for family, modes in MODES.items():
        out = Path(f"{args.out}_{family}.json")
        kept = json.loads(out.read_text())["points"] if out.exists() else {}
        budgets = sorted({s for (f, s, _) in RECORDED if f == family} | {int(s) for s in kept}
                         | {int(p.name.split("_ts")[1]) for p in runs.glob(f"{family}_ts*")})
        points, rows = {}, []
        for steps in budgets:
            point = {}
            for mode in modes:
                figures = (from_run(runs / f"{family}_ts{steps}" / mode) or kept.get(str(steps), {}).get(mode)
                           or from_record(family, steps, mode))
                if figures:  # its headline figure: the bound (mdm), next-character accuracy (ar)
                    headline = figures["test_bpc"] if family == "mdm" else accuracy(figures)
                    point[mode] = figures | {"figure": headline}
            points[str(steps)] = point
            for mode, f in point.items():
                if family == "mdm":
                    figures = [f"{f['test_bpc']:.3f} ± {f['bpc_stderr']:.3f}"]
                else:
                    figures = [f"{accuracy(f):.3f} ({f['sampled_accuracy']:.3f})",
                               f"{f['test_bpc']:.3f}" if "test_bpc" in f else "— (no likelihood)"]
                rows.append([f"{steps:,} ({steps / README_STEPS[family]:g}×)", f"{DEPTH[family] * steps:,}",
                             mode, *figures, f"{f['activation_mib']:.1f} MiB", f["precision"], f["source"]])
        metric = (["test BPC bound ± s.e. (lower is better)"] if family == "mdm"
                  else ["next-character accuracy (sampled)", "test BPC"])
        about = (f"{family} on Tiny Shakespeare ({DEPTH[family]} layers, B = {BLOCKS[family]}), test split, "
                 "one seed per row. Steps are the end-to-end budget: DiffusionBlocks and the shallow "
                 "network train B× as many steps of one block's depth, each ensemble member the budget; "
                 "within a budget every row has the same training layer evaluations.")
        table = {"about": about,
                 "columns": ["end-to-end steps (× the README's)", "layer evaluations in training", "mode",
                             *metric, "activations / step", "precision", "source"],
                 "rows": rows, "points": points,
                 "command": f"python benchmarks/lm_controls_table.py --runs {args.runs} --out {args.out}"}
        out.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
        print("\n".join(" | ".join(r) for r in rows))


if __name__ == "__main__":
    main()
