"""Pretrained conversion: train a ViT end to end, convert it into DiffusionBlocks and fine-tune
it block by block; beside it, DiffusionBlocks trained from scratch.

    python examples/pretrained_to_blocks.py [--quick] [--out DIR]

(a) end to end for N steps; (b) DiffusionBlocks from scratch for the same layer evaluations;
(c) (a) converted (``classify.init_from``: each block a copy of its layers, the stem and the
head) and fine-tuned block-wise for N/2 end-to-end steps' worth. The command line does the same
with ``diffusionblocks train classify --mode dblocks --init-from RUN/checkpoint``.
Prints one JSON line: test accuracies, and (c)'s validation accuracy at conversion (step 0) and
during fine-tuning.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from diffusionblocks.data.images import load_images
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.tasks import classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    parser.add_argument("--out", help="keep the three runs here (default: a temporary folder)")
    args = parser.parse_args()
    start = time.perf_counter()
    steps = 150 if args.quick else 1000
    data = load_images("digits")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)

        def run(name: str, **settings) -> dict:
            cfg = classify.ClassifyConfig(dataset="digits", vit=ViTConfig(width=32 if args.quick else 64),
                                          evals=5, out=str(out / name), **settings)
            return classify.train(cfg, data, show=False)

        a = run("a_e2e", mode="e2e", steps=steps)
        b = run("b_scratch", mode="dblocks", steps=steps)
        c = run("c_converted", mode="dblocks", steps=steps // 2, init_from=str(out / "a_e2e" / "checkpoint"))
    print(json.dumps({
        "example": "pretrained_to_blocks", "steps": steps,
        "test_accuracy": {"a_e2e": a["test_accuracy"], "b_scratch": b["test_accuracy"],
                          "c_converted": c["test_accuracy"]},
        "c_val_accuracy": [r["val_accuracy"] for r in c["history"]],  # the first at step 0
        "a_val_accuracy": a["val_accuracy"],
        "seconds": round(time.perf_counter() - start, 1),
    }))


if __name__ == "__main__":
    main()
