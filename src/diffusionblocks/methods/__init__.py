"""Training methods, one axis beside the families (DESIGN.md, "methods as one axis").

A *family* (a module of ``tasks``) says what the backbone, data, target space and metrics are,
and trains its own network natively in two ways: ``e2e`` (backprop through all L layers) and
``dblocks`` (DiffusionBlocks). A *method* says what units it trains, what crosses between them
and how they combine at inference. Besides the two native ones, the controls a reviewer asks
for first are methods made of the family's end-to-end training, each one module here:

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

from torch import nn

from .family import Family, depth_of, unit_depths, with_depth  # noqa: F401 - the methods' API

NATIVE = ("e2e", "dblocks")
CONTROLS = ("shallow", "ensemble")
ABOUT = {
    "e2e": "plain backprop through the whole network",
    "dblocks": "DiffusionBlocks: B blocks, each a denoiser of its own noise range, trained alone",
    "shallow": "control: one end-to-end network of one block's depth, B× the steps (the same training "
               "layer evaluations, one block's activation memory)",
    "ensemble": "control: B end-to-end networks of one block's depth, each its own seed and the "
                "end-to-end step budget, predicting by their mean log-probability (train one with "
                "--member k, assemble with merge)",
}


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
ABOUT |= {name: module.ABOUT for name, module in _PEERS.items()}


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


def train(family: Family, cfg, data=None, show: bool = True, **kw) -> dict:
    """Train ``cfg`` by its method (``cfg.mode``): natively, or as one of the controls."""
    if cfg.mode not in CONTROLS:  # native, or a peer the family builds (its model's own module)
        return family.train(cfg, data, show, **kw)
    from . import ensemble, shallow

    return {"shallow": shallow, "ensemble": ensemble}[cfg.mode].train(family, cfg, data, show, **kw)


def build(family: Family, cfg) -> nn.Module:
    """The model of a config, whatever its method (an ensemble: its members; the shallow control:
    its one network of a block's depth)."""
    if cfg.mode == "ensemble":
        from .ensemble import build as build_ensemble

        return build_ensemble(family, cfg)
    if cfg.mode == "shallow":
        from .shallow import unit

        return family.build(unit(family, cfg, cfg.steps))
    return family.build(cfg)


def merge(family: Family, sources: list, out, blocks: Callable[[], object]):
    """Assemble ``sources``: end-to-end checkpoints of ensemble members into their ensemble, else
    block jobs by the family's ``blocks()`` (its :func:`.parallel.merge`)."""
    from .. import checkpoint

    if all(checkpoint.read_config(s).get("mode") == "e2e" for s in sources):
        from .ensemble import merge as merge_members

        return merge_members(family, sources, out)
    return blocks()
