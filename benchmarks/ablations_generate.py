"""Ablations of DiffusionBlocks for image generation (DiT): block count B, noise partition,
overlap γ, and the sampler, each against the same reference run.

Every training variant uses the same budget of layer evaluations (B = 1 is end to end) and is
measured with the same feature network, sample count and seed. Sampler variants re-sample the
reference model: Heun at half the steps makes as many denoiser calls as Euler.
Each run trains into OUT/runs/NAME and is skipped when its result exists, so an interrupted
sweep picks up where it stopped. Writes OUT/ablations.{json,md,png}.

    python benchmarks/ablations_generate.py --dataset mnist --data-dir ../shared/data \\
        --steps 1500 --num-samples 2000 --out docs/ablations_generate
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from diffusionblocks.models.dit import DiTConfig
from diffusionblocks.noise import NoiseConfig
from diffusionblocks.report import markdown_table
from diffusionblocks.tasks import generate
from diffusionblocks.tasks.generate import GenerateConfig

REFERENCE = "B=3 equiprob γ=0.05"
# name -> (mode, blocks, layers per block or None, noise overrides)
TRAINED = {
    "B=1 (end to end)": ("e2e", 1, None, {}),
    "B=2": ("dblocks", 2, None, {}),
    REFERENCE: ("dblocks", 3, None, {}),
    "B=4 (split 2-2-1-1)": ("dblocks", 4, [2, 2, 1, 1], {}),
    "B=3 uniform partition": ("dblocks", 3, None, {"partition": "uniform"}),
    "B=3 γ=0": ("dblocks", 3, None, {"gamma": 0.0}),
    "B=3 γ=0.1": ("dblocks", 3, None, {"gamma": 0.1}),
}


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=1500, help="end-to-end step budget of every variant")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="train only these variants")
    parser.add_argument("--out", default="docs/ablations_generate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    base = GenerateConfig(dataset=args.dataset, data_dir=args.data_dir, steps=args.steps,
                          num_samples=args.num_samples, sample_steps=args.sample_steps, dit=DiTConfig())
    data = generate.load_data(base)
    rows: dict[str, dict] = {}
    for name, (mode, blocks, split, noise) in TRAINED.items():
        if args.only is not None and name not in args.only:
            continue
        run = out / "runs" / slug(name)
        done = run / "result.json"
        if not done.exists():
            cfg = replace(base, mode=mode, blocks=blocks, split=split, out=str(run),
                          noise=replace(NoiseConfig(), **noise))
            generate.train(cfg, data)
        rows[name] = json.loads(done.read_text())

    ref_dir = out / "runs" / slug(REFERENCE)
    if (ref_dir / "checkpoint").exists():
        model, cfg = generate.load(ref_dir / "checkpoint")
        for name, sampler, steps, grid in [
            ("B=3, Heun, 25 steps", "heun", args.sample_steps // 2, "karras"),
            ("B=3, Euler, equiprob grid", "euler", args.sample_steps, "equiprob"),
        ]:
            where = out / "runs" / slug(name)
            done = where / "result.json"
            if not done.exists():
                variant = replace(cfg, sampler=sampler, sample_steps=steps, grid=grid)
                result = generate.evaluate_model(model, variant, data, where, show=True)
                result |= {"blocks": 3, "sampler": sampler, "sample_steps": steps, "grid": grid}
                where.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(result, indent=2))
            rows[name] = json.loads(done.read_text())
    write(rows, out, args)


def write(rows: dict[str, dict], out: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "ablations.json").write_text(json.dumps(
        {k: {f: v for f, v in r.items() if f != "history"} for k, r in rows.items()}, indent=2))
    header = ["variant", "FID test", "FID train", "class acc.", "sampler", "steps", "grid",
              "layer evals / sample", "ms / image"]
    table = markdown_table([[name, f"{r['fid_test']:.2f}", f"{r['fid_train']:.2f}",
                             f"{100 * r['class_accuracy']:.1f}%", r.get("sampler", "euler"),
                             str(r.get("sample_steps")), r.get("grid", "karras"),
                             str(r["layer_evals_per_sample"]),
                             f"{1000 * r['sample_seconds_per_image']:.2f}"] for name, r in rows.items()],
                           header)
    note = (f"\n{args.dataset}, DiT 6 layers × width 96, {args.steps} end-to-end steps' worth of layer "
            f"evaluations each (batch 64), {args.num_samples} samples, guidance 2.0.\n")
    (out / "ablations.md").write_text("# Image generation ablations\n\n" + table + note)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    names = list(rows)
    ax.barh(names, [rows[n]["fid_test"] for n in names], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("FID vs test split (CNN features; lower is better)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out / "ablations.png")
    plt.close(fig)
    print(table + note)


if __name__ == "__main__":
    main()
