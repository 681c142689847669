"""The README's summary of DiffusionBlocks beside its controls: one row per family, every cell
read from the committed JSON of its runs (docs/controls.md has their commands), the best of each
row in bold. Writes OUT.json, a ``rows`` table for ``python -m diffusionblocks.docs``.

    python benchmarks/controls_summary.py --out docs/controls/summary.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = ["model (test)", "end to end", "DiffusionBlocks", "ensemble of B networks of a block's depth",
           "one network of a block's depth, B× the steps"]
MODES = ("e2e", "dblocks", "ensemble", "shallow")


def load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def seeds(path: str) -> dict[str, list[float]]:
    """Test accuracy of every seed, per mode, of a seeds table (compare --seeds, controls_table)."""
    modes = load(path)["modes"]
    out = {}
    for mode in MODES:
        if mode in modes:
            per_seed = modes[mode]["test_accuracy"]["seeds"]
            out[mode] = list(per_seed.values()) if isinstance(per_seed, dict) else per_seed
    return out


def dit(path: str, dataset: str, column: int) -> dict[str, list[float]]:
    return {r[1]: [float(r[column])] for r in load(path)["rows"] if r[0] == dataset and r[1] in MODES}


def lm(family: str) -> dict[str, list[float]]:
    """A language model's headline figure at the README's budget, every mode from
    docs/controls/lm_{family}.json (benchmarks/lm_controls_table.py)."""
    steps = {"mdm": "1500", "ar": "1200"}[family]  # configs/cpu/{mdm,ar}_tinyshakespeare.toml
    return {m: [f["figure"]] for m, f in load(f"docs/controls/lm_{family}.json")["points"][steps].items()}


ROWS = [  # label, figures per mode, higher is better, format
    ("digits, 3 seeds, accuracy", lambda: seeds("docs/bench/seeds/digits_controls/seeds.json"), True, "pct"),
    ("MNIST, 3 seeds, accuracy", lambda: seeds("docs/controls/mnist2k_seeds.json"), True, "pct"),
    ("Fashion-MNIST, 3 seeds, accuracy", lambda: seeds("docs/controls/fmnist4k_seeds.json"), True, "pct"),
    ("CIFAR-10, 3 seeds, accuracy", lambda: seeds("docs/controls/cifar10_seeds.json"), True, "pct"),
    ("DiT, MNIST, 3,000-step arm, FID test (Karras grid; lower is better)",
     lambda: dit("docs/controls/dit_3k.json", "mnist", 2), False, "f2"),
    ("DiT, MNIST, 12,000-step arm, FID test (Karras grid)",
     lambda: dit("docs/controls/dit_12k.json", "mnist", 2), False, "f2"),
    ("DiT, Fashion-MNIST, 3,000-step arm, FID test (equal-probability grid)",
     lambda: dit("docs/controls/dit_3k.json", "fashion_mnist", 3), False, "f2"),
    ("Tiny Shakespeare, masked diffusion, test BPC bound (lower is better)",
     lambda: lm("mdm"), False, "f3"),
    ("Tiny Shakespeare, autoregressive, next-character accuracy",
     lambda: lm("ar"), True, "f3"),
]


def cell(values: list[float] | None, fmt: str) -> str:
    if not values:
        return "—"
    mean = statistics.mean(values)
    if fmt == "pct":
        sd = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{100 * mean:.2f}{sd}%"
    return f"{mean:.{fmt[1]}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/controls/summary.json")
    args = ap.parse_args()
    rows = []
    for label, read, higher, fmt in ROWS:
        figures = read()
        means = {m: statistics.mean(v) for m, v in figures.items()}
        best = (max if higher else min)(means, key=means.get)
        cells = [cell(figures.get(m), fmt) for m in MODES]
        rows.append([label, *(f"**{c}**" if m == best else c for m, c in zip(MODES, cells, strict=True))])
    command = f"python benchmarks/controls_summary.py --out {args.out}"
    table = {"columns": COLUMNS, "rows": rows, "command": command}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    print("\n".join(" | ".join(r) for r in rows))


if __name__ == "__main__":
    main()
