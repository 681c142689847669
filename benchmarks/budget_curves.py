"""Quality against training budget (docs/controls.md): DiffusionBlocks and its controls at every
budget measured with one protocol per family, read from the committed JSON of those runs (nothing
is trained here). Writes OUT.json (a ``rows`` table for ``python -m diffusionblocks.docs``) and
OUT.png (one panel per family measured at two budgets or more).

    python benchmarks/budget_curves.py --out docs/controls/budget_curves
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

MODES = ("e2e", "dblocks", "shallow", "ensemble")
# family (and metric): higher is better?, then (training layer evaluations, source, its kind)
FAMILIES = {
    "digits (test accuracy)": (True, [
        (3_000, "docs/bench/main_job/report.json", "compare"),
        (6_000, "docs/bench/seeds/digits_controls/seeds.json", "seeds")]),
    "MNIST (test accuracy)": (True, [
        (6_000, "docs/peers/mnist.json", "records"),
        (12_000, "docs/controls/mnist2k_seeds.json", "seeds")]),
    "Fashion-MNIST (test accuracy)": (True, [
        (24_000, "docs/controls/fmnist4k_seeds.json", "seeds")]),
    "CIFAR-10 (test accuracy)": (True, [
        (18_000, "docs/controls/cifar10_seeds.json", "seeds")]),
    "DiT MNIST (FID test, Karras; lower is better)": (False, [
        (18_000, "docs/controls/dit_3k.json", "dit"),
        (72_000, "docs/controls/dit_12k.json", "dit")]),
    # the language models: one table each (benchmarks/lm_controls_table.py), a point per budget
    "masked diffusion LM (test BPC bound; lower is better)": (False, [
        (9_000, "docs/controls/lm_mdm.json", "lm:1500"),
        (18_000, "docs/controls/lm_mdm.json", "lm:3000")]),
    "autoregressive LM (next-character accuracy)": (True, [
        (4_800, "docs/controls/lm_ar.json", "lm:600"),
        (9_600, "docs/controls/lm_ar.json", "lm:1200"),
        (38_400, "docs/controls/lm_ar.json", "lm:4800")]),
}


def read(path: str, kind: str) -> dict[str, list[float]]:
    """Per mode, the figure of every seed in ``path``."""
    d = json.loads(Path(path).read_text())
    if kind == "compare":  # one seed
        return {m: [d[m]["test_accuracy"]] for m in MODES if m in d}
    if kind == "seeds":
        seeds = {m: d["modes"][m]["test_accuracy"]["seeds"] for m in MODES if m in d["modes"]}
        return {m: list(v.values()) if isinstance(v, dict) else v for m, v in seeds.items()}
    if kind == "records":
        return {m: d["records"][m]["test_accuracy"] for m in MODES if m in d["records"]}
    if kind.startswith("lm:"):  # a budget's headline figures (benchmarks/lm_controls_table.py)
        return {m: [f["figure"]] for m, f in d["points"][kind[3:]].items()}
    return {r[1]: [float(r[2])] for r in d["rows"] if r[0] == "mnist" and r[1] in MODES}  # dit


def cell(values: list[float] | None, accuracy: bool) -> str:
    if not values:
        return "–"
    if not accuracy:  # FID or bits per character
        return f"{statistics.mean(values):.{3 if values[0] < 5 else 2}f}"
    scale, unit = 100, "%"
    mean = scale * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.2f}{unit}"
    return f"{mean:.2f} ± {scale * statistics.stdev(values):.2f}{unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/controls/budget_curves")
    args = ap.parse_args()
    rows, curves = [], {}
    for family, (accuracy, points) in FAMILIES.items():
        curves[family] = []
        for evals, path, kind in points:
            figures = read(path, kind)
            means = {m: statistics.mean(v) for m, v in figures.items()}
            best = (max if accuracy else min)((m for m in means if m != "dblocks"), key=means.get)
            lead = (means["dblocks"] - means[best]) * (100 if accuracy else -1)  # > 0: dblocks ahead
            places = 3 if not accuracy and means["dblocks"] < 5 else 2  # bits per character: 3
            seeds = max(len(v) for v in figures.values())
            rows.append([family, f"{evals:,}", str(seeds), *(cell(figures.get(m), accuracy) for m in MODES),
                         f"{lead:+.{places}f} ({best})"])
            curves[family].append({"layer_evals": evals, "source": path, "means": means, "seeds": seeds,
                                   "best_other": best, "behind": round(-lead, 4)})  # < 0: ahead
    table = {"columns": ["family", "layer evaluations in training", "seeds", *MODES,
                         "DiffusionBlocks ahead of the best other row (points / FID / bits)"],
             "rows": rows, "curves": curves,
             "command": f"python benchmarks/budget_curves.py --out {args.out}"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(table, indent=2) + "\n")
    plot({f: points for f, points in curves.items() if len(points) > 1}, out.with_suffix(".png"))
    print(json.dumps(rows, indent=1))


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4))
    for ax, (family, points) in zip(axes, curves.items(), strict=True):
        for mode in MODES:
            xs = [p["layer_evals"] for p in points if mode in p["means"]]
            scale = 100 if "accuracy" in family else 1
            ys = [scale * p["means"][mode] for p in points if mode in p["means"]]
            ax.plot(xs, ys, marker="o", label=mode, lw=2.5 if mode == "dblocks" else 1.2)
        ax.set_xscale("log")
        ax.set_xticks([p["layer_evals"] for p in points], [f"{p['layer_evals']:,}" for p in points])
        ax.minorticks_off()
        ax.set_title(family, fontsize=9)
        ax.set_xlabel("layer evaluations in training")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
