"""Bring your own layers: any residual layer ``f(h, *args) -> h`` conditioned on the noise level.

:class:`Conditioned` wraps a layer so that it is called as the blocks call theirs, ``layer(h, c,
*args)``: each of the layer's own normalisation layers (found by type: ``nn.LayerNorm``,
``nn.RMSNorm``, and any class named ``…LayerNorm`` or ``…RMSNorm``, as Hugging Face's) is followed
by an AdaLN modulation ``n·(1 + scale(c)) + shift(c)``; a layer without one has its input
modulated instead. The modulations start at zero, so **at initialisation the wrapped layer
computes exactly what the original did**, which is what lets pretrained layers be converted.
A layer that returns a tuple (as Hugging Face layers do) gives its first item.

The wrapped layer is the one given, not a copy: wrap ``copy.deepcopy(layer)`` to keep the
original untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from .conditioning import AdaLNZero

NORM_TYPES = (nn.LayerNorm, nn.RMSNorm)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's, or one named like Hugging Face's (``GPT2``'s LayerNorm,
    ``LlamaRMSNorm``)."""
    name = type(module).__name__
    return isinstance(module, NORM_TYPES) or name.endswith("LayerNorm") or name.endswith("RMSNorm")


def _width(norm: nn.Module) -> int:
    for attr in ("normalized_shape", "weight"):
        value = getattr(norm, attr, None)
        if value is not None:
            return int(value[-1] if attr == "normalized_shape" else value.shape[-1])
    raise ValueError(f"cannot tell the width of {type(norm).__name__}; give it a weight or normalized_shape")


def _broadcast(v: Tensor, like: Tensor) -> Tensor:
    """(N, 1, D) modulation shaped to act on ``like`` (N, …, D)."""
    return v.reshape(v.shape[0], *[1] * (like.dim() - 2), v.shape[-1])


class _Modulate:
    """The forward hook of norm ``k`` of ``owner``: an object, not a closure, so that a deep copy
    of the wrapped layer modulates with the copy's own parameters."""

    def __init__(self, owner: Conditioned, k: int):
        self.owner, self.k = owner, k

    def __call__(self, module: nn.Module, inputs, out: Tensor) -> Tensor:
        c = self.owner._c
        if c is None:  # called outside the wrapper: left as it is
            return out
        shift, scale = self.owner.mods[self.k](c)
        return out * (1 + _broadcast(scale, out)) + _broadcast(shift, out)


class Conditioned(nn.Module):
    """``layer`` called as ``(h, c, *args)``, every normalisation inside it AdaLN-modulated by
    ``c`` (or its input, where it has none); identical to ``layer(h, *args)`` at initialisation."""

    def __init__(self, layer: nn.Module, cond_dim: int, norms: Iterable[nn.Module] | None = None,
                 width: int | None = None):
        super().__init__()
        self.layer = layer
        found = list(norms) if norms is not None else [m for m in layer.modules() if is_norm(m)]
        self._norms = found  # not registered twice: they live inside ``layer``
        if found:
            self.mods = nn.ModuleList(AdaLNZero(cond_dim, _width(n), chunks=2) for n in found)
            for k, n in enumerate(found):
                n.register_forward_hook(_Modulate(self, k))
        elif width is None:
            raise ValueError(f"{type(layer).__name__} has no normalisation layer to modulate; give "
                             "width= (its hidden size) to modulate its input instead")
        else:
            self.mods = nn.ModuleList([AdaLNZero(cond_dim, width, chunks=2)])
        self._c: Tensor | None = None

    def forward(self, h: Tensor, c: Tensor, *args, queries: int | None = None, **kwargs) -> Tensor:
        """``layer(h, *args, **kwargs)`` modulated by ``c``; ``queries``: keep only the first that
        many tokens (the blocks ask it of a last layer whose read-out needs no others)."""
        if not self._norms:
            shift, scale = self.mods[0](c)
            h = h * (1 + _broadcast(scale, h)) + _broadcast(shift, h)
        self._c = c
        try:
            out = self.layer(h, *args, **kwargs)
        finally:
            self._c = None
        out = out[0] if isinstance(out, tuple) else out
        return out if queries is None else out[:, :queries]


def conditioned(layers: Iterable[nn.Module], cond_dim: int, width: int | None = None) -> list[Conditioned]:
    """Every layer of ``layers`` wrapped by :class:`Conditioned`."""
    return [Conditioned(layer, cond_dim, width=width) for layer in layers]
