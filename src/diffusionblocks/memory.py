"""Measured memory: the bytes autograd saves for backward during a training step."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


class SavedTensors:
    """Context manager that records every tensor autograd saves for backward.

    Parameters are excluded (they are resident anyway), a view counts its own bytes rather than
    its base storage, and tensors that occupy the same memory count once.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()):
        self.exclude = {p.data_ptr() for p in exclude}
        self.seen: dict[tuple, int] = {}

    def _pack(self, t: Tensor) -> Tensor:
        if t.data_ptr() not in self.exclude and t.numel():
            key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            self.seen[key] = t.numel() * t.element_size()
        return t

    def __enter__(self) -> SavedTensors:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())


def activation_bytes(loss_fn: Callable[[], Tensor], model: nn.Module) -> int:
    """Bytes saved for backward by one forward pass of ``loss_fn`` (gradients not computed)."""
    with SavedTensors(exclude=model.parameters()) as saved:
        loss = loss_fn()
    del loss
    return saved.bytes
