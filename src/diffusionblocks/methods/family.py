"""What a method needs of a family, and the depth helpers the controls share (imports nothing
of the package above ``blocks``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ..blocks import split_layers


@dataclass(frozen=True)
class Family:
    """What a method needs of a family. ``config``: its config dataclass;
    ``train(cfg, data, show, **kw)`` trains a native (``e2e``/``dblocks``) config and returns
    its result; ``build(cfg)`` makes its model; ``model`` names the nested config holding
    ``depth`` (``vit``, ``dit``, ``lm``); ``loss(output, target)`` is its end-to-end loss (None:
    its end-to-end network is one denoiser over the whole noise range, trained as one block);
    ``block_loss(cfg)`` how one block trains, when not by the model's own loss (None);
    ``resolve(cfg, data)`` fills in what the data decides
    (steps included); the rest serve the ensemble: ``load_data(cfg)``, ``score(model, data,
    cfg)`` (test figures of a whole model), ``validate(model, data, cfg)`` (validation figures,
    {} without a split) and ``mergeable`` (fields its members may differ in)."""

    name: str
    config: type
    model: str
    train: Callable[..., dict]
    build: Callable[[object], nn.Module]
    resolve: Callable[[object, object], object]
    load_data: Callable[[object], object]
    loss: Callable[[Tensor, Tensor], Tensor] | None = None
    block_loss: Callable[[object], Callable | None] | None = None
    score: Callable[[nn.Module, object, object], dict] | None = None
    validate: Callable[[nn.Module, object, object], dict] | None = None
    mergeable: frozenset[str] = frozenset()


def depth_of(family: Family, cfg) -> int:
    """The layers L of ``cfg``'s network."""
    return getattr(cfg, family.model).depth


def with_depth(family: Family, cfg, depth: int, **changes):
    """``cfg`` with its network ``depth`` layers deep (and other fields changed)."""
    model = dataclasses.replace(getattr(cfg, family.model), depth=depth)
    return dataclasses.replace(cfg, **{family.model: model}, **changes)


def unit_depths(family: Family, cfg) -> list[int]:
    """The layers of each of the B blocks (``split``, else even): the depth of each control unit."""
    return split_layers(depth_of(family, cfg), cfg.blocks, cfg.split)
