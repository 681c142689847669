"""Pretrained conversion (docs/results.md, "Pretrained conversion").

(a) end to end for N steps; (b) DiffusionBlocks from scratch for the same layer evaluations;
(c) (a)'s model converted (``--init-from``: each block a copy of its layers, the stem and the
head) and fine-tuned block-wise for N/2 end-to-end steps' worth, scored on validation right
after conversion (step 0) and during fine-tuning. Test is scored once per run at the end.
Every run trains into OUT/NAME and is reused when finished.

    python benchmarks/pretrained_conversion.py --task classify --dataset mnist --steps 1000 \\
        --data-dir ../shared/data --out runs/conversion_mnist --report docs/bench/conversion
    python benchmarks/pretrained_conversion.py --task ar --data-dir ../shared/data --precision bf16 \\
        --num-samples 256 --out runs/conversion_ar --report docs/bench/conversion/ar1200

Images: validation is a tenth of the training images (the default split). Text (Tiny
Shakespeare, the documented CPU scale of the autoregressive family): validation is the 5%
split after training; every run's 128-character continuations are judged by the independent
judge (judge BPC, MAUVE; tasks/judge.py) and by (a).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from diffusionblocks.tasks import ar, classify
from diffusionblocks.tasks.judge import independent_judge
from diffusionblocks.tasks.text import load_data, resolved

ROWS = (("a", "(a) end to end"), ("b", "(b) DiffusionBlocks from scratch"),
        ("c", "(c) (a) converted, fine-tuned"))


def in_precision(cfg, args: argparse.Namespace):
    """``cfg`` trained in ``--precision`` (the judge trains in it too)."""
    return replace(cfg, optim=replace(cfg.optim, precision=args.precision))


def images(args: argparse.Namespace, out: Path) -> tuple[dict, str, list[str]]:
    from diffusionblocks.data.images import load_images

    data = load_images(args.dataset, args.data_dir)

    def run(name: str, **settings) -> dict:
        cfg = classify.ClassifyConfig(dataset=args.dataset, data_dir=args.data_dir, seed=args.seed,
                                      out=str(out / name), **settings)
        return classify.train(in_precision(cfg, args), data)

    a = run("a_e2e", mode="e2e", steps=args.steps)
    b = run("b_scratch", steps=a["steps"])
    c = run("c_converted", steps=a["steps"] // 2, init_from=str(out / "a_e2e" / "checkpoint"))
    return {"a": a, "b": b, "c": c}, "val_accuracy", ["val_accuracy", "test_accuracy"]


def text(args: argparse.Namespace, out: Path) -> tuple[dict, str, list[str]]:
    def config(name: str, **settings) -> ar.ARConfig:
        given = {"steps": args.steps, "num_samples": args.num_samples}
        cfg = ar.ARConfig(data_dir=args.data_dir, seed=args.seed, out=str(out / name), device="cpu",
                          **{k: v for k, v in given.items() if v} | settings)
        return in_precision(cfg, args)

    a_cfg = config("a_e2e", mode="e2e")
    data = load_data(a_cfg)
    judges, _ = independent_judge(data, ar.ARConfig.from_dict(resolved(a_cfg, data)))
    a = ar.train(a_cfg, data, judges=judges)
    judges["e2e_judge"], _ = ar.load(out / "a_e2e" / "checkpoint")
    b = ar.train(config("b_scratch"), data, judges=judges)
    c = ar.train(config("c_converted", steps=a_cfg.steps // 2, init_from=str(out / "a_e2e" / "checkpoint")),
                 data, judges=judges)
    a["teacher_forced_accuracy"] = a["next_char_accuracy"]  # an end-to-end model's is the argmax
    return ({"a": a, "b": b, "c": c}, "val_teacher_forced_accuracy",
            ["teacher_forced_accuracy", "sampled_accuracy", "judge_bpc", "mauve", "e2e_judge_bpc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("classify", "ar"), default="classify")
    parser.add_argument("--dataset", default="mnist", help="classify: the image dataset")
    parser.add_argument("--data-dir")
    parser.add_argument("--steps", type=int, default=None, help="N (default: the task's budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=None, help="ar: test prompts to continue, judge")
    parser.add_argument("--precision", default="auto", help="auto (fp32 on the CPU), fp32, bf16 or fp16")
    parser.add_argument("--out", default="runs/conversion")
    parser.add_argument("--report", default="docs/bench/conversion")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs, curve_key, shown = (images if args.task == "classify" else text)(args, Path(args.out))
    name = args.dataset if args.task == "classify" else "tinyshakespeare_ar"
    curve = [(r["layer_evals"], r[curve_key]) for r in runs["c"]["history"] if curve_key in r]
    record = {
        "task": args.task, "data": name, "seed": args.seed, "steps": runs["a"]["steps"],
        "runs": {k: {f: r.get(f) for f in ("mode", "steps", "layer_evals", *shown)} for k, r in runs.items()},
        "c_validation_curve": curve,  # the first point is the converted model, before fine-tuning
    }
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / f"{name}.json").write_text(json.dumps(record, indent=2))
    lines = [f"Pretrained conversion, {name}, N = {record['steps']} end-to-end steps, seed {args.seed}", "",
             "| run | layer evaluations | " + " | ".join(shown) + " |", "|---" * (2 + len(shown)) + "|"]
    for key, label in ROWS:
        r = runs[key]
        cells = [f"{r[f]:.4f}" if isinstance(r.get(f), float) else "–" for f in shown]
        lines.append(f"| {label} | {r['layer_evals']:,} | " + " | ".join(cells) + " |")
    lines += ["", f"(c) {curve_key} by layer evaluations of fine-tuning (0: as converted): "
              + ", ".join(f"{n:,}: {v:.4f}" for n, v in curve)]
    (report / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
