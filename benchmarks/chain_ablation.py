"""Does the chain add beyond averaging? One DiffusionBlocks classifier read two ways (docs/controls.md).

``chain``: the inference chain as trained and shipped: block b's call at σ_i sees the state the
previous calls handed it (the label estimate blended toward each D). ``independent``: the same
calls on the same σ grid, each given no estimate: the state replaced by the noise mean (z = 0)
or by fresh noise (z ~ N(0, σ_i² I)). Both read out by the run's read-out (the mean of the
calls' log-probabilities by default). If ``independent`` matches ``chain``, the blocks are
B classifiers that the read-out averages and the hand-over between them adds nothing.

    python benchmarks/chain_ablation.py runs/rows/cifar10_seeds/seed_0/dblocks --data-dir ../shared/data \
        --out docs/controls/chain_ablation_cifar10_seed0

Validation and test are both scored (the ablation chooses nothing), on every example.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffusionblocks.data.images import load_images
from diffusionblocks.tasks import classify as C


@torch.no_grad()
def independent_calls(model, x, cfg, start: str, gen: torch.Generator) -> list[tuple[int, torch.Tensor]]:
    """Every call of the σ grid, each on a state that carries no estimate (``zeros`` or ``noise``)."""
    calls, dim = [], model.shared.embed_dim
    for sigma in C.sigma_grid(cfg):
        z = torch.zeros(len(x), dim) if start == "zeros" else float(sigma) * torch.randn(len(x), dim,
                                                                                         generator=gen)
        calls.append((model.route(sigma), model.shared.logits(model.denoise(z, float(sigma), x))))
    return calls


def accuracy(model, x, y, cfg, read, batch: int = 1000) -> float:
    gen, correct = torch.Generator().manual_seed(cfg.seed + 999), 0
    for i in range(0, len(y), batch):
        logits = C.read_out(read(x[i : i + batch], gen), cfg)
        correct += (logits.argmax(-1) == y[i : i + batch]).sum().item()
    return correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a DiffusionBlocks classification run folder (RUN/checkpoint)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    model, cfg = C.load(Path(args.run) / "checkpoint")
    data = load_images(cfg.dataset, args.data_dir or cfg.data_dir, size=cfg.image_size)
    splits = {"test": (data.x_test, data.y_test)}
    if cfg.val_size:
        held = data.holdout(cfg.val_size)
        splits = {"val": (held.x_val, held.y_val)} | splits
    reads = {"chain": lambda xb, g: C.trace(model, xb, cfg, g),
             "independent, z = 0": lambda xb, g: independent_calls(model, xb, cfg, "zeros", g),
             "independent, z ~ N(0, σ²)": lambda xb, g: independent_calls(model, xb, cfg, "noise", g)}
    rows = {name: {split: accuracy(model, x, y, cfg, read) for split, (x, y) in splits.items()}
            for name, read in reads.items()}
    grid = [round(float(s), 4) for s in C.sigma_grid(cfg)]
    record = {"run": args.run, "readout": cfg.readout, "sigma_grid": grid, "accuracy": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [f"| read (σ grid {grid}, {cfg.readout} read-out) | " + " | ".join(splits) + " |",
             "|---|" + "---|" * len(splits)]
    lines += [f"| {name} | " + " | ".join(f"{100 * v:.2f}%" for v in r.values()) + " |"
              for name, r in rows.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
