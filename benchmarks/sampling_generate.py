"""Sampling cost of a DiT, end to end vs DiffusionBlocks, at equal sampler steps.

Each DiffusionBlocks step runs only the block that owns its σ (L/B layers), so sampling should
be about B× cheaper. Time does not depend on the weights, so fresh models are timed: one batch
of images per measurement, the variants interleaved, the median of --repeats reported.
Writes OUT/sampling.{json,md}.

    python benchmarks/sampling_generate.py --out docs/bench
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from diffusionblocks.data.images import load_images
from diffusionblocks.report import markdown_table
from diffusionblocks.tasks import generate
from diffusionblocks.tasks.generate import GenerateConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 3, 6])
    parser.add_argument("--batch", type=int, default=250, help="images per measurement")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digits = load_images("digits", scaling="symmetric")
    # MNIST's shape (28×28×1, patch 4: 49 tokens) without needing its files
    shape = replace(digits, x_train=torch.zeros(64, 1, 28, 28), x_test=torch.zeros(1, 1, 28, 28))
    base = GenerateConfig(dataset="mnist", sample_steps=args.sample_steps)
    variants = {"e2e": generate.resolve_config(replace(base, mode="e2e"), shape)}
    for b in args.blocks:
        variants[f"dblocks B={b}"] = generate.resolve_config(replace(base, blocks=b), shape)
    models = {name: generate.build(cfg).eval() for name, cfg in variants.items()}
    labels = generate.balanced_labels(args.batch, 10)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, cfg in variants.items():
            start = time.perf_counter()
            generate.sample(models[name], labels, cfg, torch.Generator().manual_seed(r))
            if r:
                times[name].append((time.perf_counter() - start) / args.batch)
    e2e = statistics.median(times["e2e"])
    records = []
    for name, cfg in variants.items():
        calls: list[int] = []
        generate.sample(models[name], labels[:2], cfg, None, calls)
        per_image = statistics.median(times[name])
        records.append({"variant": name, "blocks": cfg.num_blocks, "depth": cfg.dit.depth,
                        "sample_steps": cfg.sample_steps, "guidance": cfg.guidance,
                        "layer_evals_per_sample": 2 * sum(models[name].sizes[b] for b in calls),
                        "seconds_per_image": per_image, "speedup_vs_e2e": e2e / per_image,
                        "all_seconds": times[name]})
    meta = {"threads": args.threads, "batch": args.batch, "repeats": args.repeats,
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "device": "cpu"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampling.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    table = markdown_table([[r["variant"], str(r["blocks"]), str(r["layer_evals_per_sample"]),
                             f"{1000 * r['seconds_per_image']:.2f}", f"{r['speedup_vs_e2e']:.2f}×",
                             f"{r['speedup_vs_e2e'] / r['blocks']:.2f}"] for r in records],
                           ["variant", "B", "layer evals / sample", "ms / image", "e2e / this",
                            "(e2e / this) / B"])
    note = (f"\nDiT 6 layers × width 96 on 28×28 images (49 tokens), {args.sample_steps} Euler steps "
            f"with guidance (two passes per step), batch {args.batch}, {args.threads} CPU threads, "
            f"median of {args.repeats}.\n")
    (out / "sampling.md").write_text("# Sampling cost per image\n\n" + table + note)
    print(table + note)


if __name__ == "__main__":
    main()
