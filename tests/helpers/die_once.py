"""A torchrun worker that dies once: rank 1 exits hard right after its first checkpoint (the
marker file records that it happened), then the restarted worker runs normally."""

import os
import sys
from pathlib import Path

from diffusionblocks import checkpoint, cli

marker = Path(os.environ["DIE_ONCE_MARKER"])
if os.environ.get("RANK") == "1" and not marker.exists():
    real_save = checkpoint.save

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        marker.write_text("died after the first checkpoint\n")
        os._exit(1)

    checkpoint.save = save_then_die

cli.main(sys.argv[1:])
