"""Training methods, one axis beside the families (DEVELOPERS.md, "methods/").

A *family* (a module of ``tasks``) says what the backbone, data, target space and metrics are;
a *method* says what units it trains, each unit's loss and budget, what crosses between them
and how they combine at inference. Each method is one module here:

- :mod:`.e2e` (backprop through all L layers) and :mod:`.dblocks` (DiffusionBlocks), which
  every family with blocks trains through :func:`method`;
- :mod:`.shallow`: one end-to-end network of one block's depth, given the same training layer
  evaluations (B× the steps);
- :mod:`.ensemble`: B end-to-end networks of one block's depth, each trained alone on the
  end-to-end step budget, predicting by the mean of their log-probabilities.

Peer methods bring their own network, which the family builds and trains through its one
driver (:func:`peer`): :mod:`.noprop` (NoProp-DT: its CNN blocks, its loss, its inference
chain) and :mod:`.local` (greedy local learning: the ViT's blocks, each with its own head and
cross-entropy on the detached output of the block before) and :mod:`.cff` (Contrastive
Forward-Forward: every layer with its own contrastive loss, then a head on frozen features) and
:mod:`.cwcomp` (channel-wise competitive Forward-Forward on its own CNN); and
:mod:`.dblocks_cnn` and :mod:`.e2e_cnn`, DiffusionBlocks and end to end on NoProp's CNN (the
paper's comparison with it).

A family describes itself to the methods with a :class:`Family` and routes its ``train``
through :func:`train`. This package imports no task.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint, parallel
from ..checks import resolve_device
from ..training import Method
from . import dblocks, e2e, ensemble, shallow
from .family import Family, depth_of, unit_depths, with_depth  # noqa: F401 - the methods' API

NATIVE = ("e2e", "dblocks")
CONTROLS = ("shallow", "ensemble")
_OWN = {"e2e": e2e, "dblocks": dblocks, "shallow": shallow, "ensemble": ensemble}


def _peers() -> dict:
    """Every module of this package that is a peer method: one that defines its own ``trainer``,
    by name. Adding a method adds a file; nothing here changes."""
    import importlib
    import pkgutil

    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f".{info.name}", __name__)
        if getattr(getattr(module, "trainer", None), "__module__", None) == module.__name__:
            found[info.name] = module
    return found


_PEERS = _peers()
PEERS = tuple(_PEERS)
ABOUT = {name: module.ABOUT for name, module in (_OWN | _PEERS).items()}


def peer(mode: str):
    """The module of a peer method, or None for a native mode or a control. A peer module has
    ``build(cfg)`` (its network), ``trainer(model, cfg)`` (its strategy), ``activations(model, x,
    y)`` (saved bytes, and ``traffic_bytes_per_step``), its default ``LR`` (None: the family's),
    ``ABOUT`` (for --help), ``CROSSES`` and ``UNITS`` (for tables) and ``FLAGS`` (the family's
    method flags that apply to it); ``predict(model, x, generator)`` and
    ``inference_layers(model)`` unless it builds a :class:`~..blocks.DiffusionBlocks`, which the
    family reads by its chain; optionally ``budget(cfg)`` (its total and warm-up steps) and
    ``TWO_VIEWS``."""
    return _PEERS.get(mode)


def method(family: Family, cfg, model: nn.Module, blocks: list[int] | None = None,
           offload_dir: str | Path | None = None, views: Callable | None = None) -> Method:
    """How ``cfg.mode`` trains the family's ``model`` built for it: the strategy (its units, each
    unit's loss and optimizer), total steps and warm-up. ``blocks``: train only these (a block
    job, a parallel rank), with their share of the budget. ``views(x, generator)``: an augmented
    view of a raw batch, for a peer that sees two (``TWO_VIEWS``)."""
    if p := peer(cfg.mode):
        extra = {"views": views} if getattr(p, "TWO_VIEWS", False) else {}
        total, warmup = p.budget(cfg) if hasattr(p, "budget") else (cfg.steps, cfg.optim.warmup)
        return Method(p.trainer(model, cfg, **extra), total, warmup)
    if cfg.mode not in NATIVE:
        raise ValueError(f"--mode {cfg.mode} is a control: it trains end-to-end networks, not one model")
    return _OWN[cfg.mode].method(family, cfg, model, blocks, offload_dir)


def place(family: Family, cfg, num_blocks: int, init: Callable[[nn.Module], None] | None = None,
          views: Callable | None = None) -> tuple[parallel.Job, torch.device, Path, nn.Module, Method]:
    """A network's run set up: this process's job (its blocks, its group's folder) and device;
    the model, built from ``cfg.seed``, started by ``init(model)`` on a fresh run (a resume has
    its weights) before any optimizer sees it, on its device; and the method that trains it."""
    job, device = parallel.join(num_blocks, cfg.block, cfg.parallel, resolve_device(cfg.device),
                                whole=cfg.mode == "e2e")
    folder = job.folder(cfg.out)
    model = family.build(cfg)
    if init is not None and not checkpoint.exists(folder / "checkpoint"):
        init(model)
    model = model.to(device)
    return job, device, folder, model, method(family, cfg, model, job.blocks, folder / "offload", views)


def train(family: Family, cfg, data=None, show: bool = True, **kw) -> dict:
    """Train ``cfg`` by its method (``cfg.mode``): one network through the family's run, or one
    of the controls, which train the family's end-to-end networks."""
    if cfg.mode not in CONTROLS:  # one network: e2e, dblocks, or a peer the family builds
        return family.train(cfg, data, show, **kw)
    return _OWN[cfg.mode].train(family, cfg, data, show, **kw)


def build(family: Family, cfg) -> nn.Module:
    """The model of a config, whatever its method (an ensemble: its members; the shallow control:
    its one network of a block's depth)."""
    if cfg.mode == "ensemble":
        return ensemble.build(family, cfg)
    if cfg.mode == "shallow":
        return family.build(shallow.unit(family, cfg, cfg.steps))
    return family.build(cfg)


def merge(family: Family, sources: list, out, average_shared: bool = False, fresh: bool = True) -> Path:
    """Assemble ``sources`` into one model at OUT/checkpoint: end-to-end checkpoints of ensemble
    members into their ensemble (a family that scores one), else block jobs
    (:func:`.parallel.merge`; the family's ``mergeable`` fields may differ)."""
    if family.score is not None and all(checkpoint.read_config(s).get("mode") == "e2e" for s in sources):
        return ensemble.merge(family, sources, out)
    return parallel.merge(sources, out, family.name, family.config.from_dict, family.build, family.mergeable,
                          average_shared, fresh)
