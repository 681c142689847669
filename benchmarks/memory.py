"""Memory per training step: activations saved for backward, device-resident training state
(parameters, gradients, optimizer state) and peak memory, for end to end, end to end +
activation checkpointing, DiffusionBlocks, + checkpointing and + offload, at each B. Every row
runs in a fresh process.

The same as ``diffusionblocks bench memory``; writes memory.json and memory.md under --out.

    python benchmarks/memory.py --dataset mnist --data-dir ../shared/data --out docs/bench
"""

import sys

from diffusionblocks.cli import main

if __name__ == "__main__":
    main(["bench", "memory", *sys.argv[1:]])
