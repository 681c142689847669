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
PEERS = ("noprop", "dblocks_cnn", "e2e_cnn", "local", "cff", "cwcomp")
ABOUT = {
    "e2e": "plain backprop through the whole network",
    "dblocks": "DiffusionBlocks: B blocks, each a denoiser of its own noise range, trained alone",
    "shallow": "control: one end-to-end network of one block's depth, B× the steps (the same "
               "training layer evaluations, one block's activation memory)",
    "ensemble": "control: B end-to-end networks of one block's depth, each its own seed and the "
                "end-to-end step budget, predicting by their mean log-probability (train one with "
                "--member k, assemble with merge)",
    "local": "peer: greedy local learning (decoupled), the network cut into the --blocks blocks, "
             "each with its own head and cross-entropy on the detached output of the block before "
             "(activations cross forward, never gradients)",
    "cff": "peer: Contrastive Forward-Forward (Aghagolzadeh & Ezoji 2025), every layer trained alone "
           "with a marginal supervised contrastive loss on two views, then a linear head on the "
           "frozen features (its recipe: configs/cpu/cff_mnist.toml)",
    "cwcomp": "peer: channel-wise competitive Forward-Forward (Papachristodoulou et al. 2024), the "
              "paper's CFSE CNN, each layer trained alone on the cross-entropy of its class-wise "
              "channel goodness, no negative data (its recipe: configs/cpu/cwcomp_mnist.toml)",
    "dblocks_cnn": "DiffusionBlocks on NoProp's CNN (the paper's comparison with NoProp-DT): B blocks, "
                   "each NoProp's block network conditioned on the noise level, trained alone; read "
                   "by the same chain (its recipe: configs/cpu/dblocks_cnn_mnist.toml)",
    "e2e_cnn": "end to end on NoProp's CNN (its block network without the label input), the "
               "backprop row beside NoProp-DT and dblocks_cnn",
    "noprop": "peer: NoProp-DT (Li et al. 2025), T = --blocks separately parameterised CNN blocks, "
              "each denoising a noisy label embedding sampled from q, no forward chain in training "
              "(its paper's recipe: configs/cpu/noprop_mnist.toml)",
}


def peer(mode: str):
    """The module of a peer method (``build(cfg)``, ``trainer(model, cfg)``, ``activations(model,
    x, y)``, its default ``LR``; ``predict(model, x, generator)`` and ``inference_layers(model)``
    unless it builds a :class:`~..blocks.DiffusionBlocks`, which the family reads by its chain;
    optionally ``budget(cfg)``, its total steps), or None for a native mode or a control. A peer
    is one file: adding one touches this tuple."""
    if mode not in PEERS:
        return None
    import importlib

    return importlib.import_module(f".{mode}", __name__)


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
