"""Command line: ``diffusionblocks train|eval|generate|sample|compare|merge|export|launch|bench``.

Every flag maps to a field of a config dataclass (:mod:`.commands.flags`); a run saves its whole
config with its outputs. Each command lives in its own module of :mod:`.commands`.
"""

from __future__ import annotations

import argparse
import sys

from .commands import bench, compare, inference, share, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="diffusionblocks",
        description="Block-wise training of residual networks as diffusion denoisers "
        "(DiffusionBlocks, ICLR 2026), beside end-to-end backprop.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    applies = train.add(sub)  # task -> the settings its runs have (compare refuses the others)
    inference.add(sub)
    compare.add(sub, applies)
    share.add(sub, parser)
    bench.add(sub)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # bad input, missing or unwritable files: one line
        print(f"diffusionblocks: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
