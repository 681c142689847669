"""FID and class accuracy against the classifier-free guidance scale, for trained DiT checkpoints.

Guidance trades diversity for class fidelity: FID usually has a minimum near a small scale while
class accuracy keeps rising. Every checkpoint is sampled at every scale with the same seed and
the same class-balanced labels, and measured with the dataset's cached feature CNN (the one
`diffusionblocks eval fid` uses). Writes OUT/guidance.{json,md,png}.

    python benchmarks/guidance_generate.py runs/gen/e2e/checkpoint runs/gen/dblocks/checkpoint \
        --data-dir ../shared/data --scales 1 1.5 2 3 4 --num-samples 2000 --out docs/generate
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import replace
from pathlib import Path

import torch

from diffusionblocks.report import markdown_table
from diffusionblocks.tasks import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint directories (OUT/checkpoint)")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="docs/generate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    for path in args.checkpoints:
        model, cfg = generate.load(path)
        cfg = replace(cfg, data_dir=args.data_dir or cfg.data_dir, num_samples=args.num_samples)
        data = generate.load_data(cfg)
        for scale in args.scales:
            run = replace(cfg, guidance=scale)
            images, labels, cost = generate.generate_set(model, run, run.num_samples)
            quality = generate.quality(images, labels, data, run)
            records.append({"checkpoint": str(path), "mode": cfg.mode, "blocks": cfg.num_blocks,
                            "dataset": cfg.dataset, "guidance": scale, **cost, **quality})
            r = records[-1]
            print(f"{cfg.mode} guidance {scale}: FID test {r['fid_test']:.2f}, class accuracy "
                  f"{100 * r['class_accuracy']:.1f}%", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "num_samples": args.num_samples}
    (out / "guidance.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    table = markdown_table(
        [[r["mode"], str(r["blocks"]), f"{r['guidance']:g}", f"{r['fid_train']:.2f}", f"{r['fid_test']:.2f}",
          f"{100 * r['class_accuracy']:.1f}%"] for r in records],
        ["mode", "B", "guidance", "FID train", "FID test", "class acc."])
    note = (f"\n{args.num_samples:,} class-balanced samples per row ({records[0]['dataset']}), the same "
            f"seed for every row; features and classes from a CNN with "
            f"{100 * records[0]['feature_net_test_accuracy']:.2f}% test accuracy.\n")
    (out / "guidance.md").write_text("# FID and class accuracy against the guidance scale\n\n" + table + note)
    plot(records, out / "guidance.png")
    print(table + note)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for mode in dict.fromkeys(r["mode"] for r in records):
        rs = [r for r in records if r["mode"] == mode]
        label = f"{mode} (B={rs[0]['blocks']})"
        scales = [r["guidance"] for r in rs]
        left.plot(scales, [r["fid_test"] for r in rs], marker="o", label=label)
        right.plot(scales, [100 * r["class_accuracy"] for r in rs], marker="o", label=label)
    left.set(xlabel="guidance scale", ylabel="FID (test, CNN features)")
    right.set(xlabel="guidance scale", ylabel="class accuracy (%)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
