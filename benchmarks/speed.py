"""Seconds per training step and layer evaluations per second for the same rows as memory.py;
the variants' steps are interleaved in one process and each figure is a median.

The same as ``diffusionblocks bench speed``; writes speed.json and speed.md under --out.

    python benchmarks/speed.py --dataset mnist --data-dir ../shared/data --out docs/bench
"""

import sys

from diffusionblocks.cli import main

if __name__ == "__main__":
    main(["bench", "speed", *sys.argv[1:]])
