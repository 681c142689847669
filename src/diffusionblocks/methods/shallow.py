"""The shallow control: one end-to-end network of one block's depth.

Unit: one network of d = max(split) layers (L/B for an even split), trained end to end with the
end-to-end recipe for ⌈steps·L/d⌉ steps and a warm-up stretched alike, so that its training
layer evaluations equal end to end's and DiffusionBlocks' (``match = "steps"``: the end-to-end
step count instead). Its activations per step are one block's, and each prediction (or
sampling step) runs d layers, as one DiffusionBlocks denoiser call does. Nothing crosses
between units: there is one. The run is an end-to-end run in every file it writes
(``config.json`` says ``e2e``); its result says ``shallow``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .family import Family, depth_of, unit_depths, with_depth

ABOUT = ("control: one end-to-end network of one block's depth, B× the steps (the same training "
         "layer evaluations, one block's activation memory)")


def unit(family: Family, cfg, steps: int):
    """The end-to-end config the control trains, given the end-to-end budget ``steps``."""
    depth = max(unit_depths(family, cfg))
    scale = depth_of(family, cfg) / depth if cfg.match == "layers" else 1
    optim = dataclasses.replace(cfg.optim, warmup=math.ceil(cfg.optim.warmup * scale))
    return with_depth(family, cfg, depth, mode="e2e", steps=math.ceil(steps * scale), optim=optim)


def train(family: Family, cfg, data=None, show: bool = True, **kw) -> dict:
    """Train the control in ``cfg.out`` (resuming as any end-to-end run) and return its result."""
    from ..parallel import main_process

    data = data if data is not None else family.load_data(cfg)
    steps = family.resolve(cfg, data).steps  # the end-to-end budget, as the data decides it
    run = unit(family, cfg, steps)
    result = family.train(run, data, show, **kw) | {
        "mode": "shallow", "depth": depth_of(family, run), "e2e_steps": steps}
    if main_process():
        (Path(cfg.out) / "result.json").write_text(json.dumps(result, indent=2))
    return result
