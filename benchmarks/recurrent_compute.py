"""Quality against inference compute for a recorded recurrent-depth comparison.

    python benchmarks/recurrent_compute.py docs/lm/recurrent_report.json --out docs/lm/recurrent_compute.md

Reads a `compare --task recurrent` report.json (from before layer evaluations per token were
recorded, or after) and prints its K sweep as accuracy against layer evaluations per generated
token (tasks/recurrent.py: inference_layer_evals; DiffusionBlocks' prelude counted once per
sequence, which leaves its outputs unchanged), and each mode's training cost in forward +
backward layer evaluations (the baseline's depths replayed from its step generators).
"""

import argparse
import json
from pathlib import Path

from diffusionblocks.tasks import recurrent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="a recurrent compare's report.json")
    parser.add_argument("--seed", type=int, default=0, help="the comparison's --seed (default: 0)")
    parser.add_argument("--out", help="also write the Markdown here, and the plot beside it (.png)")
    args = parser.parse_args()
    results = {m: r for m, r in json.loads(Path(args.report).read_text()).items() if m in recurrent.MODES}
    lines = []
    for mode, r in results.items():
        cfg = recurrent.RecurrentConfig(mode=mode, seed=args.seed)
        for k, s in r["k_sweep"].items():
            s["layer_evals_per_token"] = recurrent.inference_layer_evals(cfg, int(k))
        passes = recurrent.training_layer_evals(cfg, r["steps"])
        per_step = sum(passes.values()) / r["steps"]
        lines.append(f"- {mode}: {passes['forward']:,} forward + {passes['backward']:,} backward layer "
                     f"evaluations in {r['steps']:,} steps ({per_step:.1f} per step; recorded forward: "
                     f"{r['layer_evals']:,})")
    text = recurrent.sweep_table(results) + "\n" + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        recurrent.plot_sweep(results, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
