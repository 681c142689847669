"""Training loops: block-wise (METHOD.md §5) and end to end, under one driver.

A *strategy* owns the optimizers and does one step; :func:`fit` drives any strategy with a
learning-rate schedule, progress bar, periodic evaluation and checkpoints. Randomness of step
t (batch, block, σ, ε) comes from a generator seeded by (seed, t), so a resumed run draws
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .blocks import DiffusionBlocks
from .checks import check_numbers
from .memory import activation_bytes
from .noise import loss_weight
from .offload import Offload
from .progress import Progress

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")
_LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class OptimConfig:
    """How parameters are trained: AdamW, its schedule and clipping, the precision and
    compilation of the forward pass, and a moving average of the weights. A task may leave
    ``lr`` None to pick its default for the mode."""

    lr: float | None = 3e-3
    weight_decay: float = 0.05
    warmup: int = 100
    schedule: str = "cosine"  # after the warm-up: cosine decay to 0, or constant (EDM, DiT)
    clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    precision: str = "auto"  # fp32 on CPU, bf16 on CUDA where supported
    ema: float = 0.0  # decay of the weights' exponential moving average; 0: none
    compile: bool = False  # torch.compile each block (end to end: the model), in place

    def __post_init__(self) -> None:
        check_numbers(self)
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must lie in [0, 1) (a decay such as 0.999; 0: off), got {self.ema}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("weight_decay", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.clip < 0:
            raise ValueError(f"clip must be ≥ 0 (a gradient-norm bound; 0: no clipping), got {self.clip}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")


def matched_budget(steps: int, warmup: int, blocks: int, match: str = "layers") -> tuple[int, int]:
    """Steps and warm-up for DiffusionBlocks given an end-to-end budget.

    ``layers``: equal layer evaluations, so B× the steps and a B× longer warm-up (the default);
    ``steps``: the same number of steps.
    """
    if match == "layers":
        return steps * blocks, warmup * blocks
    if match == "steps":
        return steps, warmup
    raise ValueError(f"unknown budget match {match!r}; choose 'layers' or 'steps'")


def block_share(total: int, warmup: int, blocks: list[int] | None, num_blocks: int) -> tuple[int, int]:
    """Steps and warm-up of a process that trains only ``blocks`` (a block job, a parallel
    rank) of a run of ``total`` steps over ``num_blocks``: its share of both (None: all)."""
    if blocks is None:
        return total, warmup
    share = len(blocks) / num_blocks
    return math.ceil(total * share), math.ceil(warmup * share)


@torch.no_grad()
def block_losses(loss: Callable, model: nn.Module, x: Tensor, y: Tensor, blocks: list[int],
                 seed: int = 0) -> dict[int, float]:
    """Each of ``blocks``' training loss ``loss(model, x, y, b, generator)`` on held-out data,
    with fixed draws: what a process that trains only these blocks can watch."""
    was_training = model.training
    model.eval()
    result = {b: loss(model, x, y, b, torch.Generator(y.device).manual_seed(seed + b)).item() for b in blocks}
    model.train(was_training)
    return result


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up, then cosine decay to 0 (or, ``constant``, the peak rate to the end)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW | None:
    """AdamW with weight decay on tensors of 2+ dimensions only; None when nothing trains."""
    if cfg.lr is None:
        raise ValueError("OptimConfig.lr is None; set a learning rate (e.g. --lr 3e-3)")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return None
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel: one pass over all tensors instead of a Python loop (CPU and CUDA).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that supports it, fp32 otherwise."""
    if precision != "auto":
        return precision
    native = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)  # Ampere on
    return "bf16" if native else "fp32"


class Precision:
    """The forward pass of a training step under ``torch.autocast`` (bf16/fp16: matrix products
    in low precision, reductions, losses and the optimizer's weights in fp32), and for fp16 one
    gradient scaler per trained unit (a block, or the whole model), saved with the checkpoint."""

    def __init__(self, precision: str, units: list[str]):
        self.precision, self.device_type = precision, "cpu"
        self.scalers = {u: torch.amp.GradScaler("cpu") for u in units} if precision == "fp16" else {}

    def bind(self, device: torch.device) -> None:
        """Resolve ``auto`` and place the scalers once the training device is known."""
        self.precision, self.device_type = resolve_precision(self.precision, device), device.type
        if self.precision == "fp16" and device.type != "cpu":
            self.scalers = {u: torch.amp.GradScaler(device.type) for u in self.scalers}

    def autocast(self) -> AbstractContextManager:
        """The autocast context of the chosen precision (none for fp32)."""
        if self.precision in _LOW:
            return torch.autocast(self.device_type, dtype=_LOW[self.precision])
        return nullcontext()

    def states(self) -> dict:
        """Scaler states to checkpoint beside the optimizers (none outside fp16)."""
        return {f"{u}.scaler": s for u, s in self.scalers.items()}

    def backward_and_step(self, loss: Tensor, unit: str, optimizers: list, params, clip: float) -> bool:
        """Backward, clip the gradient norm (of unscaled gradients) and step ``optimizers``. With
        fp16, a step whose gradients overflowed is skipped by every optimizer at once (a block and
        the shared parts it trains with) and lowers the scale; returns whether it stepped."""
        scaler = self.scalers.get(unit)
        if scaler is None:
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(params, clip)
            for opt in optimizers:
                opt.step()
            return True
        scaler.scale(loss).backward()
        for opt in optimizers:
            scaler.unscale_(opt)
        params = [p for p in params if p.grad is not None]
        finite = bool(torch.stack([p.grad.isfinite().all() for p in params]).all()) if params else True
        if finite:
            if clip:
                nn.utils.clip_grad_norm_(params, clip)
            for opt in optimizers:
                scaler.step(opt)
        scaler.update()
        return finite


class Averages:
    """Exponential moving averages of trained parts' weights (EDM, DiT): one per part, updated
    only when that part trains, with the decay warmed up over the part's own updates n as
    min(decay, (1 + n) / (10 + n)). Each average is a frozen copy of its part (with an
    ``ema_updates`` buffer), stored in checkpoints as ``NAME.ema``; on the host with offload."""

    def __init__(self, parts: dict[str, nn.Module], decay: float, device: str | None = None):
        self.parts, self.decay, self.device = parts, decay, device
        self.shadows = {n: _shadow(m, device) for n, m in parts.items()}

    def stored(self) -> dict[str, nn.Module]:
        """The averages as checkpoint parts, each named ``NAME.ema``."""
        return {f"{n}.ema": s for n, s in self.shadows.items()}

    @torch.no_grad()
    def update(self, names) -> None:
        """Move the averages of ``names`` (the parts that just stepped) toward their weights,
        with the decay warmed up as min(decay, (1 + n)/(10 + n)) after n updates."""
        for name in names:
            shadow = self.shadows[name]
            n = int(shadow.ema_updates)
            decay = min(self.decay, (1 + n) / (10 + n))
            averaged, current = _weights(shadow), _weights(self.parts[name])
            for a, c in zip(averaged, current):
                if a.is_floating_point():
                    a.lerp_(c.to(a.device), 1 - decay)
                else:
                    a.copy_(c)
            shadow.ema_updates += 1

    @torch.no_grad()
    def adopt(self) -> None:
        """Put the averages into the parts (the end of training: the model is its average)."""
        for name, shadow in self.shadows.items():
            for a, c in zip(_weights(shadow), _weights(self.parts[name])):
                c.copy_(a)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averages in the parts for the duration (an evaluation), the raw weights after."""
        raw = {n: [w.detach().to(self.device, copy=True) if self.device else w.detach().clone()
                   for w in _weights(p)] for n, p in self.parts.items()}
        self.adopt()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.parts.items():
                    for w, r in zip(_weights(p), raw[n]):
                        w.copy_(r.to(w.device))


def _shadow(module: nn.Module, device: str | None) -> nn.Module:
    shadow = copy.deepcopy(module).requires_grad_(False)
    if device is not None:
        shadow.to(device)
    shadow.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
    return shadow


def _weights(module: nn.Module) -> list[Tensor]:
    """A part's parameters and buffers in state-dict order (not the averages' counter)."""
    return [t for k, t in module.state_dict(keep_vars=True).items() if k != "ema_updates"]


def averaged(strategy) -> AbstractContextManager:
    """``strategy``'s weight averages applied for the duration, when it keeps any."""
    averages = getattr(strategy, "averages", None)
    return averages.applied() if averages else nullcontext()


def stored_averages(strategy) -> dict:
    """The weight averages a strategy keeps, as checkpoint parts (``NAME.ema``)."""
    averages = getattr(strategy, "averages", None)
    return averages.stored() if averages else {}


def adopt_averages(strategy) -> None:
    """After training: the model takes its weight averages, for every evaluation that follows."""
    if getattr(strategy, "averages", None):
        strategy.averages.adopt()


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for everything random in training step ``step``, on the training device:
    σ, ε, masks and the block are drawn there, so nothing random crosses the bus."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + step)


class Blockwise:
    """One step: a uniformly random block, trained alone on its noise range.

    ``model`` is a :class:`DiffusionBlocks` or any module with ``parts()``, ``num_blocks`` and
    ``sizes`` (layers per block) when ``loss`` says how one block trains (masked diffusion).
    """

    def __init__(
        self,
        model: DiffusionBlocks | nn.Module,
        cfg: OptimConfig,
        blocks: list[int] | None = None,
        offload: str | None = None,
        offload_dir: str | None = None,
        loss: Callable[..., Tensor] | None = None,
    ):
        self.model, self.cfg = model, cfg
        self.loss = loss or blockwise_loss  # loss(model, x, y, block, generator)
        self.trainable = blocks if blocks is not None else list(range(model.num_blocks))
        parts = model.parts()
        names = [n for n in ["shared", *(f"block_{b}" for b in self.trainable)] if n in parts]
        self.optimizers = {n: o for n in names if (o := make_optimizer(parts[n], cfg)) is not None}
        blocks_only = {n: m for n, m in parts.items() if n != "shared"}
        self.offload = Offload(blocks_only, self.optimizers, offload, offload_dir) if offload else None
        self._stale = list(self.optimizers.values())  # those whose parameters may hold gradients
        self.precision = Precision(cfg.precision, [f"block_{b}" for b in self.trainable])
        self.precision.bind(next(model.parameters()).device)
        trained = {n: parts[n] for n in self.optimizers}
        self.averages = Averages(trained, cfg.ema, "cpu" if offload else None) if cfg.ema else None
        if cfg.compile:  # in place: parameters, state-dict keys and offload are untouched
            for name, part in parts.items():
                if name != "shared":
                    part.compile()

    @property
    def states(self) -> dict:
        """Everything a checkpoint keeps to resume exactly: optimizers and fp16 scalers."""
        return self.optimizers | self.precision.states()

    def gathered(self) -> AbstractContextManager:
        """The whole model resident (evaluation, checkpoints), whether or not blocks offload."""
        return self.offload.gathered() if self.offload else nullcontext()

    def layers_per_step(self, block: int) -> int:
        """Layer evaluations of one training step of ``block``."""
        return self.model.sizes[block]

    def step(self, x: Tensor, y: Tensor, gen: torch.Generator) -> dict:
        """Train one uniformly drawn block (and the shared parts, if they train) on a batch."""
        model = self.model
        b = self.trainable[int(torch.randint(len(self.trainable), (1,), generator=gen, device=gen.device))]
        if self.offload:
            self.offload.fetch(f"block_{b}")
        with self.precision.autocast():
            loss = self.loss(model, x, y, b, gen).float()
        active = [o for n, o in self.optimizers.items() if n in ("shared", f"block_{b}")]
        for opt in self._stale:  # the last step's gradients; no other part has any
            opt.zero_grad(set_to_none=True)
        self._stale = active
        params = [p for o in active for g in o.param_groups for p in g["params"]]
        stepped = self.precision.backward_and_step(loss, f"block_{b}", active, params, self.cfg.clip)
        if self.averages and stepped:
            self.averages.update(n for n in self.optimizers if n in ("shared", f"block_{b}"))
        return {"loss": loss.item(), "block": b, "layers": self.layers_per_step(b)}


def blockwise_loss(
    model: DiffusionBlocks, x: Tensor, y: Tensor, block: int, gen: torch.Generator,
    centre: Tensor | None = None,
) -> Tensor:
    """Denoising score matching for one block: mean over examples of λ(σ)·ℓ(D_b(y + σε, σ), y).
    ``centre``: the point the noise is added to, if not the target (a wrong estimate to correct)."""
    target = model.shared.target(y) if centre is None else centre
    sigma = model.sample_sigma(block, target.shape[0], gen).to(target.device)
    eps = torch.randn(target.shape, generator=gen, device=gen.device).to(target.device)
    z = target + sigma.view(-1, *[1] * (target.dim() - 1)) * eps
    denoised = model.denoise(z, sigma, x, block)
    weight = loss_weight(sigma, model.noise.sigma_data, model.noise.max_weight)
    return (weight * model.shared.example_loss(denoised, y)).mean()


def blockwise_activation_bytes(model: DiffusionBlocks, x: Tensor, y: Tensor,
                               blocks: list[int] | None = None) -> dict:
    """Activation bytes one block-wise step saves for backward: the mean over ``blocks`` (all by
    default), each sampled with equal probability, and each block's own figure."""
    def step_loss(b: int) -> Tensor:
        return blockwise_loss(model, x, y, b, torch.Generator().manual_seed(0))

    per_block = [activation_bytes(lambda b=b: step_loss(b), model)
                 for b in (range(model.num_blocks) if blocks is None else blocks)]
    return {"activation_bytes_per_step": round(statistics.mean(per_block)),
            "activation_bytes_per_block": per_block}


class EndToEnd:
    """Plain backprop through the whole network."""

    def __init__(
        self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], cfg: OptimConfig, layers: int
    ):
        self.model, self.loss_fn, self.cfg, self.layers = model, loss_fn, cfg, layers
        self.optimizers = {"model": make_optimizer(model, cfg)}
        self.precision = Precision(cfg.precision, ["model"])
        self.precision.bind(next(model.parameters()).device)
        self.averages = Averages({"model": model}, cfg.ema) if cfg.ema else None
        if cfg.compile:
            model.compile()

    @property
    def states(self) -> dict:
        """Everything a checkpoint keeps to resume exactly: the optimizer and fp16 scalers."""
        return self.optimizers | self.precision.states()

    def step(self, x: Tensor, y: Tensor, gen: torch.Generator) -> dict:
        """One backprop step through the whole model."""
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = self.objective(x, y, gen).float()
        stepped = self.precision.backward_and_step(loss, "model", [opt], self.model.parameters(),
                                                   self.cfg.clip)
        if self.averages and stepped:
            self.averages.update(["model"])
        return {"loss": loss.item(), "layers": self.layers}

    def objective(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """The loss a step descends: ``loss_fn(model(x), y)`` (a method with its own, e.g.
        NoProp's, overrides this)."""
        return self.loss_fn(self.model(x), y)

    def gathered(self) -> AbstractContextManager:
        """The whole model resident (always, end to end)."""
        return nullcontext()


class Strategy(Protocol):
    """What :func:`fit` drives: named optimizers, their config, and one training step."""

    cfg: OptimConfig
    optimizers: dict[str, torch.optim.Optimizer]
    states: dict  # optimizers and anything else a checkpoint must keep (fp16 scalers)

    def step(self, x: Tensor, y: Tensor, gen: torch.Generator) -> dict:
        """One optimizer step on the batch (x, y), every draw from ``gen``; returns at least
        ``loss`` and ``layers`` (the step's layer evaluations)."""
        ...


@dataclass(frozen=True)
class Method:
    """The method's half of a training run: its strategy (the units it trains, each unit's loss
    and optimizer) and the steps it takes, ``warmup`` of them warming up."""

    strategy: Strategy
    total: int
    warmup: int = 0


def fit(
    strategy: Strategy,
    batch_at: Callable[[int], tuple[Tensor, Tensor]],
    total: int,
    warmup: int,
    seed: int,
    progress: Progress | None = None,
    every: int = 0,
    on_every: Callable[[Progress], bool | None] | None = None,
    log: Callable[[dict], None] | None = None,
    desc: str = "train",
    show: bool = True,
) -> Progress:
    """Run ``strategy`` from ``progress.step`` to ``total`` steps.

    ``on_every`` (evaluation, checkpoint) runs every ``every`` steps and at the end; its time
    is not counted in ``train_seconds``. When it returns True, training stops there (an early
    stop).
    """
    progress = progress or Progress()
    bar = tqdm(total=total, initial=progress.step, desc=desc, disable=not show, dynamic_ncols=True)
    while progress.step < total:
        t = progress.step
        factor = lr_factor(t, total, warmup, strategy.cfg.schedule)
        for opt in strategy.optimizers.values():
            for g in opt.param_groups:
                g["lr"] = strategy.cfg.lr * factor
        start = time.perf_counter()
        x, y = batch_at(t)
        record = strategy.step(x, y, step_generator(seed, t, y.device))
        record["seconds"] = time.perf_counter() - start
        if not math.isfinite(record["loss"]):  # stop before anything is logged or checkpointed
            raise ValueError(f"the loss became {record['loss']} at step {t + 1}: training diverged; "
                             "lower --lr or keep --clip on (the last checkpoint is kept)")
        progress.train_seconds += record["seconds"]
        progress.step += 1
        progress.layer_evals += record["layers"]
        bar.update(1)
        if log is not None:
            log({"step": progress.step, "lr": factor * strategy.cfg.lr, **record})
        if on_every is not None and ((every and progress.step % every == 0) or progress.step == total):
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if on_every(progress):
                break
    bar.close()
    return progress
