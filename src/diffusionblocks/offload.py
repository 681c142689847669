"""Offload: keep inactive blocks' parameters and optimizer state off the training device.

A block-wise step needs one block. :class:`Offload` holds every other block's weights and
AdamW state in host memory (``"cpu"``) or in safetensors files (``"disk"``) and brings a block
in only when it is sampled, so the device holds the training state of one block plus the
shared parts instead of all B. Parameters keep their identity (only ``.data`` is swapped), so
optimizers, clipping and hooks are unaffected, and every move is an exact copy: training with
offload gives bit-identical parameters to training without.

The saving holds during training steps. :meth:`Offload.gathered` (evaluation, checkpoints)
brings every block and its optimizer state back for its duration, so those moments peak as
high as training without offload does.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

OFFLOAD_TARGETS = ("cpu", "disk")
Layout = list[tuple[str, torch.dtype, torch.Size]]


def pack(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], Layout]:
    """One flat tensor per dtype, and where each tensor lies in it. A block has a few hundred
    small tensors, and safetensors' per-tensor work dominated writing them one by one (11 of
    14 ms per swap, 12-layer ViT at B = 4)."""
    flat: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors.values():
        flat.setdefault(t.dtype, []).append(t.reshape(-1))
    layout = [(key, t.dtype, t.shape) for key, t in tensors.items()]
    return {str(dtype): torch.cat(parts) for dtype, parts in flat.items()}, layout


def unpack(flat: dict[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """The inverse of :func:`pack`: views into the flat tensors."""
    out, offset = {}, dict.fromkeys(flat, 0)
    for key, dtype, shape in layout:
        start, n = offset[str(dtype)], shape.numel()
        out[key] = flat[str(dtype)][start : start + n].view(shape)
        offset[str(dtype)] = start + n
    return out


class Offload:
    """Moves named parts (with their optimizers) between their device and a store.

    Nothing moves until the first :meth:`fetch`, so a checkpoint can be loaded into the full
    model first. From then on one part is resident: :meth:`fetch` evicts the others and brings
    its part in, and costs nothing when that part is already resident (consecutive steps on one
    block). ``directory`` holds the ``"disk"`` store (default: a temporary folder that
    :meth:`close` removes).
    """

    def __init__(
        self,
        parts: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        to: str = "cpu",
        directory: str | Path | None = None,
    ):
        if to not in OFFLOAD_TARGETS:
            raise ValueError(f"unknown offload target {to!r}; choose one of {', '.join(OFFLOAD_TARGETS)}")
        self.parts, self.optimizers, self.to = parts, optimizers, to
        self._own_dir = to == "disk" and directory is None
        if to == "disk":
            self.directory = Path(directory or tempfile.mkdtemp(prefix="dblocks-offload-"))
            self.directory.mkdir(parents=True, exist_ok=True)
        self.host: dict[str, dict[str, Tensor]] = {}  # evicted parts (empty dicts for "disk")
        self.where: dict[str, dict[str, torch.device]] = {}  # each tensor's device when resident
        self.layout: dict[str, Layout] = {}  # how a part's tensors lie in its "disk" file

    def _tensors(self, name: str) -> Iterator[tuple[str, Tensor, dict | None, str | None]]:
        """(key, tensor, owner, attr) for every parameter, buffer and optimizer-state tensor of a
        part; ``owner[attr]`` is the optimizer-state slot, or None for a module tensor."""
        module, opt = self.parts[name], self.optimizers.get(name)
        for key, t in module.named_parameters():
            yield f"param.{key}", t, None, None
        for key, t in module.named_buffers():
            yield f"buffer.{key}", t, None, None
        if opt is not None:
            index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
            for p, state in opt.state.items():
                for attr, value in state.items():
                    if isinstance(value, Tensor):
                        yield f"optim.{index[id(p)]}.{attr}", value, state, attr

    def _evict(self, name: str) -> None:
        stored, where, slots = {}, {}, []
        for key, t, owner, attr in self._tensors(name):
            stored[key], where[key] = t.detach().to("cpu"), t.device  # the storage itself on CPU
            if owner is None:
                t.grad = None
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)
            else:
                slots.append((owner, attr))
        for owner, attr in slots:
            owner[attr] = torch.empty(0)  # placeholder until the part comes back
        if self.to == "disk":
            flat, self.layout[name] = pack(stored)
            save_file(flat, str(self.directory / f"{name}.safetensors"))
            stored = {}
        self.host[name], self.where[name] = stored, where

    def _bring(self, name: str) -> None:
        stored = self.host.pop(name)
        if self.to == "disk":
            stored = unpack(load_file(str(self.directory / f"{name}.safetensors")), self.layout.pop(name))
        where = self.where.pop(name)
        for key, t, owner, attr in list(self._tensors(name)):
            value = stored[key].to(where[key])  # AdamW's ``step`` counter stays on the host
            if owner is None:
                t.data = value
            else:
                owner[attr] = value

    def fetch(self, name: str) -> None:
        """Make ``name`` the one resident part (weights and optimizer state on its device)."""
        for other in self.parts:
            if other != name and other not in self.host:
                self._evict(other)
        if name in self.host:
            self._bring(name)

    @property
    def resident(self) -> list[str]:
        """Names of the parts on the device now."""
        return [n for n in self.parts if n not in self.host]

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Every part resident for the duration (evaluation, checkpointing); evicted again after."""
        away = list(self.host)
        for name in away:
            self._bring(name)
        try:
            yield
        finally:
            for name in away:
                self._evict(name)

    def close(self) -> None:
        """Bring every part back and remove the store's files."""
        for name in list(self.host):
            self._bring(name)
        if self.to == "disk":
            for name in self.parts:
                (self.directory / f"{name}.safetensors").unlink(missing_ok=True)
            if self._own_dir or not any(self.directory.iterdir()):
                shutil.rmtree(self.directory, ignore_errors=True)
