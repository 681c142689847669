"""Pretrained conversion on an image dataset (docs/results.md, "Pretrained conversion").

(a) end to end for N steps; (b) DiffusionBlocks from scratch for the same layer evaluations;
(c) (a)'s model converted (``--init-from``: each block a copy of its layers, the stem and the
head) and fine-tuned block-wise for N/2 end-to-end steps' worth. Defaults are chosen on the
validation split the runs hold out (a tenth of the training images); test is scored once per
run. (c) is also scored on validation right after conversion (step 0), before fine-tuning.
Every run trains into OUT/NAME and is reused when finished.

    python benchmarks/pretrained_conversion.py --dataset mnist --data-dir ../shared/data \\
        --out runs/conversion --report docs/bench/conversion
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffusionblocks.data.images import load_images
from diffusionblocks.tasks import classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--steps", type=int, default=None, help="N (default: the dataset's budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/conversion")
    parser.add_argument("--report", default="docs/bench/conversion")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_images(args.dataset, args.data_dir)
    out = Path(args.out)

    def config(name: str, **settings) -> classify.ClassifyConfig:
        cfg = classify.ClassifyConfig(dataset=args.dataset, data_dir=args.data_dir, seed=args.seed,
                                      out=str(out / name), **settings)
        return classify.resolve_config(cfg, data)

    a = classify.train(config("a_e2e", mode="e2e", steps=args.steps), data)
    steps = a["steps"]
    b = classify.train(config("b_scratch", steps=steps), data)
    c = classify.train(config("c_converted", steps=steps // 2, init_from=str(out / "a_e2e" / "checkpoint")),
                       data)
    rows = [("(a) end to end", a), ("(b) DiffusionBlocks from scratch", b),
            ("(c) (a) converted, fine-tuned", c)]
    record = {
        "dataset": args.dataset, "seed": args.seed, "steps": steps,
        "runs": {k: {f: r[f] for f in ("mode", "steps", "layer_evals", "val_accuracy", "test_accuracy")}
                 for k, r in zip(("a", "b", "c"), (a, b, c))},
        "c_val_at_conversion": c["history"][0]["val_accuracy"],  # step 0, before fine-tuning
        "c_val_curve": [(r["layer_evals"], r["val_accuracy"]) for r in c["history"]],
    }
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / f"{args.dataset}.json").write_text(json.dumps(record, indent=2))
    lines = [f"Pretrained conversion, {args.dataset}, N = {steps} end-to-end steps, seed {args.seed}", "",
             "| run | layer evaluations | validation | test |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['layer_evals']:,} | {100 * r['val_accuracy']:.2f}% "
              f"| {100 * r['test_accuracy']:.2f}% |" for name, r in rows]
    lines += ["", "(c) on validation, by layer evaluations of fine-tuning: "
              + ", ".join(f"{n:,}: {100 * v:.2f}%" for n, v in record["c_val_curve"])]
    (report / f"{args.dataset}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
