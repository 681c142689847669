"""Step time with and without ``--compile`` (torch.compile of every block, or of the end-to-end
model), the same model, data and steps; losses compared step by step.

    python benchmarks/compile_speed.py --out docs/bench [--width 64 --depth 6 --steps 40 --threads 1]

Writes OUT/compile.json and OUT/compile.md: per mode, the median step time of each (after the
compiling warm-up steps), their ratio, the compile time and the largest loss difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from diffusionblocks import methods
from diffusionblocks.data.images import Batches, load_images
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.report import markdown_table
from diffusionblocks.tasks import classify
from diffusionblocks.training import step_generator


def run(mode: str, compiled: bool, args, data) -> dict:
    cfg = classify.ClassifyConfig(mode=mode, dataset="digits", batch_size=args.batch_size,
                                  vit=ViTConfig(width=args.width, depth=args.depth, heads=4))
    cfg = classify.resolve_config(cfg, data)
    cfg = replace(cfg, optim=replace(cfg.optim, compile=compiled))
    torch.manual_seed(0)
    model = classify.build(cfg)
    strategy = methods.method(classify.FAMILY, cfg, model).strategy
    batch_at = Batches(data.x_train, data.y_train, cfg.batch_size, 0)
    losses, times = [], []
    for t in range(args.warmup + args.steps):
        start = time.perf_counter()
        losses.append(strategy.step(*batch_at(t), step_generator(0, t))["loss"])
        times.append(time.perf_counter() - start)
    return {"losses": losses, "step_seconds": statistics.median(times[args.warmup:]),
            "warmup_seconds": sum(times[: args.warmup])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps (every block compiled)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_images("digits")
    records = []
    for mode in ("e2e", "dblocks"):
        eager, compiled = run(mode, False, args, data), run(mode, True, args, data)
        records.append({
            "mode": mode, "eager_step_seconds": eager["step_seconds"],
            "compiled_step_seconds": compiled["step_seconds"],
            "compiled_over_eager": compiled["step_seconds"] / eager["step_seconds"],
            "compile_warmup_seconds": compiled["warmup_seconds"],
            "max_loss_difference": max(abs(a - b) for a, b in zip(eager["losses"], compiled["losses"])),
            "width": args.width, "depth": args.depth, "batch_size": args.batch_size,
            "steps": args.steps, "threads": args.threads, "torch": torch.__version__,
        })
        print(json.dumps(records[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile.json").write_text(json.dumps(records, indent=2))
    table = markdown_table(
        [[r["mode"], f"{r['eager_step_seconds'] * 1e3:.1f}", f"{r['compiled_step_seconds'] * 1e3:.1f}",
          f"{r['compiled_over_eager']:.2f}", f"{r['compile_warmup_seconds']:.0f}",
          f"{r['max_loss_difference']:.1e}"] for r in records],
        ["mode", "eager ms / step", "compiled ms / step", "compiled / eager", "first steps (s)",
         "largest loss difference"])
    header = (f"`--compile` on the CPU: ViT {args.depth}×{args.width}, digits, batch {args.batch_size}, "
              f"{args.threads} thread(s), median of {args.steps} steps after {args.warmup}; torch "
              f"{torch.__version__}. `python benchmarks/compile_speed.py --out {args.out}`\n\n")
    (out / "compile.md").write_text(header + table)


if __name__ == "__main__":
    main()
