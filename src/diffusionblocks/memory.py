"""Memory: what a training step keeps (activations saved for backward, training state,
peak process or CUDA memory), and activation checkpointing of a run of layers."""

from __future__ import annotations

import functools
import mmap
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


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
        """Bytes of the distinct tensors saved for backward."""
        return sum(self.seen.values())


def activation_bytes(loss_fn: Callable[[], Tensor], model: nn.Module) -> int:
    """Bytes saved for backward by one forward pass of ``loss_fn`` (gradients not computed). The
    model's buffers (BatchNorm's running statistics) are put back as they were."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with SavedTensors(exclude=model.parameters()) as saved:
        loss = loss_fn()
    del loss
    with torch.no_grad():
        for b, kept in buffers:
            b.copy_(kept)
    return saved.bytes


def run_layers(layers: Iterable[nn.Module], h: Tensor, *args, checkpointing: bool = False,
               queries: int | None = None) -> Tensor:
    """``h = layer(h, *args)`` for each layer; with ``checkpointing`` each layer keeps only its
    input for backward and recomputes the rest (``torch.utils.checkpoint``). ``queries``: the
    last layer computes only the first that many tokens (a read-out that needs no others)."""
    recompute = checkpointing and torch.is_grad_enabled()
    layers = list(layers)
    for i, layer in enumerate(layers):
        last = {"queries": queries} if queries is not None and i == len(layers) - 1 else {}
        if recompute:
            h = checkpoint(layer, h, *args, use_reentrant=False, **last)
        else:
            h = layer(h, *args, **last)
    return h


def _unique_bytes(tensors: Iterable[Tensor], device: torch.device | None) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if t.numel() and (device is None or t.device == device):
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def state_bytes(
    parts: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    device: torch.device | str | None = None,
) -> dict[str, dict[str, int]]:
    """Training-state bytes per part: parameters, gradients and optimizer state (on ``device``
    when given; offloaded tensors are empty and count 0)."""
    device = None if device is None else torch.device(device)
    out = {}
    for name, module in parts.items():
        params = list(module.parameters())
        opt = optimizers.get(name)
        states = opt.state.values() if opt else ()
        opt_state = [v for s in states for v in s.values() if isinstance(v, Tensor)]
        out[name] = {
            "params": _unique_bytes(params, device),
            "grads": _unique_bytes((p.grad for p in params if p.grad is not None), device),
            "optimizer": _unique_bytes(opt_state, device),
        }
    return out


class PeakMemory:
    """Peak memory over a ``with`` block: CUDA allocated bytes on a CUDA device, otherwise the
    process's resident set (Linux: the high-water mark reset at entry; where it cannot be reset,
    or the kernel ignores the reset, the lifetime peak, ``exact`` False). ``peak`` is absolute;
    ``above_start`` is the rise from entry."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.exact = True

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.exact = _hwm_resets() and _reset_hwm()
            self.start = _rss()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _hwm() if self.exact else _max_rss()
        self.above_start = self.peak - self.start


def touch_fresh_pages(size: int) -> None:
    """Make ``size`` bytes of new anonymous pages resident, then release them: a transient no
    allocator can serve from memory already resident."""
    with mmap.mmap(-1, size) as pages:
        for i in range(0, size, mmap.PAGESIZE):
            pages[i] = 1


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        return True
    except OSError:
        return False


@functools.cache
def _hwm_resets() -> bool:
    """Whether this kernel really resets and tracks VmHWM (a sandbox may accept the write to
    ``clear_refs`` and ignore it): with the mark raised 8 MiB above the resident set by a
    transient, a reset must bring it down to the resident set, and a second transient up again."""
    size = 8 * 2**20
    if _status("VmHWM") is None:
        return False
    touch_fresh_pages(size)  # the mark now stands above the resident set, whatever came before
    if not _reset_hwm() or _hwm() - _rss() > size // 8:  # not reset: still the earlier peak
        return False
    start = _rss()
    touch_fresh_pages(size)
    return _hwm() - start >= size * 3 // 4


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _max_rss() -> int:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _rss() -> int:
    return _status("VmRSS") or _max_rss()


def _hwm() -> int:
    return _status("VmHWM") or _max_rss()
