"""Probes of DiffusionBlocks classification on a validation split (docs/cifar10.md).

Each probe trains one variant on the training split less a fixed 5,000-image validation split
(``ImageData.holdout(args.val_size)``, the same choice as ``--val-size 5000``) and scores it on that
validation split only: the test split is never read. A DiffusionBlocks probe then reads the
chain every way the question needs, from the one checkpoint:

- ``chain``: per call of the default grid, (block, accuracy of that call's logits);
- ``alone``: each block on its own, started at the noise mean at the top of its range;
- ``last`` / ``mean``: the two read-outs on the uniform grid at 3, 6 and 12 points;
- ``draw_last``: the same from noise (a draw), last read-out;
- ``oracle``: each block given the noisy *true* label from its training range.

``--only K`` trains block K alone (a block job) and scores it alone. Every run trains into
OUT/NAME and is reused when finished, so an interrupted sweep picks up where it stopped; each
probe writes OUT/NAME/probe.json. Variants are named on the command line with ``--set`` (JSON
overrides of ClassifyConfig; nested ``vit``, ``noise``, ``optim``):

    python benchmarks/probes_classify.py d_min2.0 --set '{"noise": {"sigma_min": 2.0}}'
    python benchmarks/probes_classify.py e_2L --mode e2e --set '{"vit": {"depth": 2}}'
    python benchmarks/probes_classify.py b0_w1 --only 0 --set '{"noise": {"max_weight": 1}}'
    python benchmarks/probes_classify.py ens --mode ensemble    # the controls score validation only

(1,000 end-to-end steps' worth by default, one thread: two probes side by side use both cores.)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from diffusionblocks import checkpoint
from diffusionblocks.data.images import ImageData, load_images
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.noise import NoiseConfig
from diffusionblocks.tasks import classify as C
from diffusionblocks.training import OptimConfig

NESTED = {"vit": ViTConfig, "noise": NoiseConfig, "optim": OptimConfig}


def config(args: argparse.Namespace) -> C.ClassifyConfig:
    base = C.ClassifyConfig(mode=args.mode, dataset=args.dataset, data_dir=args.data_dir,
                            steps=args.steps, evals=args.evals, out=str(Path(args.out) / args.name),
                            block=args.only)
    overrides = {k: replace(getattr(base, k), **v) if k in NESTED else v
                 for k, v in json.loads(args.set).items()}
    return replace(base, **overrides)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return round((logits.argmax(-1) == y).float().mean().item(), 4)


@torch.no_grad()
def read_chain(model, cfg: C.ClassifyConfig, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Every reading of a trained chain listed in the module docstring."""
    model.eval()
    blocks, dim = model.num_blocks, model.shared.embed_dim
    greedy = replace(cfg, decode="greedy", grid="uniform")
    out = {"chain": [(b, accuracy(lg, y)) for b, lg in C.trace(model, x, replace(greedy, sample_steps=None))]}
    out["alone"] = [accuracy(model.shared.logits(model.denoise(torch.zeros(len(y), dim), model.ranges[b][1],
                                                               x, b)), y) for b in range(blocks)]
    for readout in ("last", "mean"):
        out[readout] = {n: round(C.evaluate(model, x, y, replace(greedy, readout=readout, sample_steps=n)), 4)
                        for n in (blocks, 6, 12)}
    draw = replace(cfg, decode="draw", grid="uniform", readout="last")
    out["draw_last"] = {n: round(C.evaluate(model, x, y, replace(draw, sample_steps=n)), 4)
                        for n in (blocks, 12)}
    out["oracle"] = [round(C.block_accuracy(model, x, y, cfg, b), 4) for b in range(blocks)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--set", default="{}", help="JSON overrides of ClassifyConfig")
    p.add_argument("--mode", default="dblocks", choices=C.MODES)
    p.add_argument("--only", type=int, default=None, help="train only this block, score it alone")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--steps", type=int, default=1000, help="end-to-end budget (DiffusionBlocks: B×)")
    p.add_argument("--evals", type=int, default=5)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/probes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    full = load_images(args.dataset, args.data_dir).holdout(args.val_size)
    data = ImageData(full.x_train, full.y_train, full.x_val, full.y_val, full.num_classes)  # val as "test"
    x, y = data.x_test, data.y_test
    cfg = config(args)
    start = time.time()
    result = C.train(cfg, data, show=False)
    out = {"name": args.name, "set": json.loads(args.set), "mode": args.mode, "steps": args.steps,
           "train_seconds": result["train_seconds"],
           "curve": [(h["layer_evals"], h.get("test_accuracy")) for h in result["history"]]}
    if args.only is not None:
        cfg = C.resolve_config(cfg, data)
        model = C.build(cfg)
        checkpoint.load_parts(Path(cfg.out) / "checkpoint", checkpoint.stored_parts(model, [args.only]))
        model.eval()
        with torch.no_grad():
            z, top = torch.zeros(len(y), model.shared.embed_dim), model.ranges[args.only][1]
            out["alone"] = accuracy(model.shared.logits(model.denoise(z, top, x, args.only)), y)
        out["oracle"] = round(C.block_accuracy(model, x, y, cfg, args.only), 4)
    else:
        if args.mode == "dblocks":
            model, cfg = C.load(Path(cfg.out) / "checkpoint")
        out |= {"val": result["test_accuracy"]} if args.mode != "dblocks" else read_chain(model, cfg, x, y)
    out["seconds"] = round(time.time() - start)
    Path(cfg.out, "probe.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
