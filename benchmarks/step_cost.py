"""Per-step time and activation memory, end to end vs DiffusionBlocks, measured in one run.

Steps of the two modes are interleaved (e2e, dblocks, e2e, ...) so that machine noise hits both
alike; each figure is the median over rounds. Writes JSON and a Markdown table.

    python benchmarks/step_cost.py --dataset mnist --blocks 3 --out docs/bench
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusionblocks.data.images import Batches, load_images
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.report import human_bytes, markdown_table
from diffusionblocks.tasks.classify import (
    ClassifyConfig,
    build,
    measure_activations,
    resolve_config,
)
from diffusionblocks.training import Blockwise, EndToEnd, step_generator


def measure(dataset: str, blocks: int, rounds: int, batch_size: int, data_dir: str | None,
            width: int, depth: int) -> dict:
    data = load_images(dataset, data_dir)
    batches = Batches(data.x_train, data.y_train, batch_size, 0)
    strategies, acts = {}, {}
    for mode in ("e2e", "dblocks"):
        cfg = resolve_config(ClassifyConfig(mode=mode, dataset=dataset, blocks=blocks,
                                            vit=ViTConfig(width=width, depth=depth)), data)
        model = build(cfg)
        strategies[mode] = (Blockwise(model, cfg.optim) if mode == "dblocks"
                            else EndToEnd(model, F.cross_entropy, cfg.optim, depth))
        acts[mode] = measure_activations(model, batches(0), cfg)["activation_bytes_per_step"]
    times = {m: [] for m in strategies}
    for t in range(rounds + 5):
        x, y = batches(t)
        for mode, strategy in strategies.items():
            start = time.perf_counter()
            strategy.step(x, y, step_generator(0, t))
            if t >= 5:  # warm-up rounds are not timed
                times[mode].append(time.perf_counter() - start)
    e2e, db = statistics.median(times["e2e"]), statistics.median(times["dblocks"])
    return {
        "dataset": dataset, "blocks": blocks, "depth": depth, "width": width,
        "batch_size": batch_size, "rounds": rounds,
        "e2e_step_seconds": e2e, "dblocks_step_seconds": db,
        "step_time_ratio": db * blocks / e2e,
        "e2e_activation_bytes": acts["e2e"], "dblocks_activation_bytes": acts["dblocks"],
        "activation_ratio": acts["e2e"] / acts["dblocks"],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--blocks", type=int, nargs="+", default=[3])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--out", default="docs/bench")
    args = p.parse_args()
    rows = [measure(args.dataset, b, args.rounds, args.batch_size, args.data_dir, args.width, args.depth)
            for b in args.blocks]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_cost_{args.dataset}.json").write_text(json.dumps(rows, indent=2))
    table = markdown_table([[
        str(r["blocks"]), f"{r['e2e_step_seconds'] * 1e3:.1f} ms",
        f"{r['dblocks_step_seconds'] * 1e3:.1f} ms",
        f"{r['step_time_ratio']:.3f}", human_bytes(r["e2e_activation_bytes"]),
        human_bytes(r["dblocks_activation_bytes"]), f"{r['activation_ratio']:.2f}×",
    ] for r in rows], ["B", "e2e s/step", "dblocks s/step", "dblocks×B / e2e", "e2e activations",
                       "dblocks activations", "e2e / dblocks"])
    (out / f"step_cost_{args.dataset}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
