"""Masked-diffusion language model (MD4-style), end to end or as DiffusionBlocks (METHOD §9.1).

Each token of a clean sequence is replaced by [MASK] with probability t (the linear schedule
α(t) = 1 − t). The model predicts the masked tokens, and the negative ELBO per sequence is

    ∫₀¹ (1/t) · E[Σ_{masked i} −log p(x_i | x_t)] dt.

End to end, one network of L layers learns the whole integral. DiffusionBlocks cuts the layers
into B blocks; block b (network order, block 0 at the input end) owns t ∈ [1 − (b+1)/B, 1 − b/B]
(equal drops in α, so equal training mass) and is trained alone on its interval. The bound of
the whole chain is the sum of the per-interval integrals, each evaluated with its own block.
Sampling unmasks from t = 1 down to 0, each step with the block that owns its t.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checkpoint, methods, parallel
from ..adapters import TokensToTokens
from ..blocks import Block, split_layers
from ..checks import check_at_least_one, check_block_job, config_from_dict, resolve_device
from ..data.text import TextData, Windows
from ..memory import activation_bytes
from ..models.lm import LMConfig, make_layers
from ..runs import Run, run_summary, train_run
from ..training import OptimConfig, block_losses
from .text import (
    LN2,
    TextConfig,
    batched,
    check_sampling,
    load_data,
    per_character,
    resolved,
    windows,
    write_comparison,
)

# Fields a resumed run may change; everything else must match the checkpoint.
RESUMABLE = {"steps", "evals", "device", "out", "data_dir", "checkpointing", "tensorboard", "sample_steps",
             "bound_passes", "num_samples", "sample_length", "temperature"}
MERGEABLE = RESUMABLE | {"block", "parallel"}  # block jobs that may be merged into one model


@dataclass
class MDMConfig(TextConfig):
    """One masked-diffusion run."""

    sample_steps: int = 128
    bound_passes: int = 32
    num_samples: int = 4
    sample_length: int | None = None  # default: the context
    temperature: float = 1.0
    block: int | None = None  # train only this block (a block job; `merge` assembles them)
    parallel: bool = False  # one torchrun rank of a block-parallel run
    out: str = "runs/mdm"
    # Rotary positions: a masked token sees its context only through attention, and learned
    # absolute positions alone left it near the unigram plateau (4 layers × 64, 300 steps:
    # bound 4.66 vs 4.37 bits per character with RoPE).
    lm: LMConfig = field(default_factory=lambda: LMConfig(rope=True))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.1))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least_one(self, ("sample_steps", "bound_passes", "num_samples", "sample_length"))
        if self.bound_passes < 2:
            raise ValueError(f"bound_passes must be at least 2 (for an error bar), got {self.bound_passes}")
        if self.sample_length is not None and self.sample_length > self.lm.context:
            raise ValueError(f"sample_length {self.sample_length} exceeds the context {self.lm.context}")
        check_sampling(self)
        check_block_job(self)

    def to_dict(self) -> dict:
        return {"task": "mdm", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> MDMConfig:
        return config_from_dict(cls, d, {"lm": LMConfig, "optim": OptimConfig})


# --- the model ---------------------------------------------------------------------------------


MaskedAdapter = TokensToTokens  # the masked-diffusion block's adapter (see adapters.py)


class MaskedDiffusion(nn.Module):
    """B bidirectional denoisers of masked text, one per interval of t; B = 1 is end to end.

    Blocks share nothing: the target (the clean tokens) is fixed, so each block has its own
    embeddings and head and can be trained anywhere.
    """

    def __init__(self, cfg: LMConfig, blocks: int = 1, split=None, checkpointing: bool = False):
        super().__init__()
        layers = make_layers(cfg, cond_dim=cfg.width)
        self.sizes = split_layers(len(layers), blocks, split)
        starts = [sum(self.sizes[:b]) for b in range(blocks)]
        self.blocks = nn.ModuleList(
            Block(layers[s : s + n], cfg.width, MaskedAdapter(cfg), checkpointing)
            for s, n in zip(starts, self.sizes)
        )
        self.mask_id = cfg.vocab_size

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def interval(self, block: int) -> tuple[float, float]:
        """The t-interval of ``block`` (network order: block 0 has the most masking)."""
        b = self.num_blocks
        return 1 - (block + 1) / b, 1 - block / b

    def route(self, t: float) -> int:
        """The block owning t ∈ (lo, hi]; a boundary goes to the less-masked block below it."""
        b = self.num_blocks
        ascending = min(max(math.ceil(t * b) - 1, 0), b - 1)
        return b - 1 - ascending

    def logits(self, x_t: Tensor, t: Tensor, block: int) -> Tensor:
        """Logits (N, T, V) over the clean tokens of every position of ``x_t`` at times ``t``."""
        return self.blocks[block](x_t, None, t.to(x_t.device).float())

    def parts(self) -> dict[str, nn.Module]:
        return {f"block_{b}": blk for b, blk in enumerate(self.blocks)}


def mask_tokens(y: Tensor, t: Tensor, mask_id: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """x_t: each token masked with probability t (per sequence); and where the masks are."""
    masked = torch.rand(y.shape, generator=gen, device=gen.device) < t[:, None].to(gen.device)
    masked = masked.to(y.device)
    return y.masked_fill(masked, mask_id), masked


def integrand(model: MaskedDiffusion, y: Tensor, t: Tensor, block: int, gen: torch.Generator) -> Tensor:
    """Per sequence: (1/t)·Σ_{masked i} CE, the ELBO integrand at t (nats), one sample of masks."""
    x_t, masked = mask_tokens(y, t, model.mask_id, gen)
    return masked_nats(model, y, x_t, masked, t, block)


def masked_nats(model: MaskedDiffusion, y: Tensor, x_t: Tensor, masked: Tensor, t: Tensor,
                block: int) -> Tensor:
    """(1/t)·Σ_{masked i} −log p(y_i | x_t) per sequence, with ``block`` as the denoiser."""
    logits = model.logits(x_t, t, block)
    ce = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
    return (ce * masked).sum(1) / t.to(y.device)


def stratified(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    """n times in [lo, hi], one in each of n equal strata, in random order (low variance)."""
    u = (torch.arange(n, device=gen.device) + torch.rand(n, generator=gen, device=gen.device)) / n
    t = lo + (hi - lo) * u[torch.randperm(n, generator=gen, device=gen.device)]
    return t.clamp_min(1e-6)


def masked_loss(model: MaskedDiffusion, x: Tensor, y: Tensor, block: int, gen: torch.Generator) -> Tensor:
    """One block's training loss: the ELBO integrand per token over its own t-interval."""
    t = stratified(len(y), *model.interval(block), gen)
    return (integrand(model, y, t, block, gen) / y.shape[1]).mean()


@torch.no_grad()
def bound(model: MaskedDiffusion, pieces: list[Tensor], passes: int, seed: int = 0,
          batch: int = 64) -> tuple[float, float]:
    """Bits per character from the negative ELBO of ``pieces`` (every token counted once), and
    its Monte-Carlo standard error.

    Each pass draws one t per piece, stratified over [0, 1] across the pieces, and evaluates the
    integrand with the block owning t: an unbiased estimate of the bound (for B > 1, the sum of
    each block's integral over its own interval). The result is the mean over passes; the error
    is their standard deviation / √passes.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = sum(len(p) for p in pieces)
    gen = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(passes):
        times = stratified(len(pieces), 0.0, 1.0, gen)
        nats, start = 0.0, 0
        for y in batched(pieces, batch):
            t = times[start : start + len(y)]
            start += len(y)
            y = y.to(device)
            x_t, masked = mask_tokens(y, t, model.mask_id, gen)  # masks drawn before routing
            owner = torch.tensor([model.route(float(s)) for s in t])
            for b in owner.unique().tolist():
                i = (owner == b).nonzero().flatten().to(device)
                nats += masked_nats(model, y[i], x_t[i], masked[i], t[i.cpu()], b).sum().item()
        estimates.append(nats / tokens / LN2)
    model.train(was_training)
    return statistics.mean(estimates), statistics.stdev(estimates) / passes**0.5


@torch.no_grad()
def sample(model: MaskedDiffusion, n: int, length: int, steps: int, gen: torch.Generator,
           temperature: float = 1.0, prompt: Tensor | None = None) -> Tensor:
    """n sequences of ``length`` tokens (the first ones fixed to ``prompt``), unmasked from
    t = 1 to 0 in ``steps`` steps: from t to s each masked token is revealed with probability
    (t − s)/t, drawn from the model at t (the block that owns t)."""
    device = next(model.parameters()).device
    x = torch.full((n, length), model.mask_id, dtype=torch.long, device=device)
    if prompt is not None:
        x[:, : len(prompt)] = prompt.to(device)
    times = torch.linspace(1, 0, steps + 1).tolist()
    for t, s in zip(times[:-1], times[1:]):
        logits = model.logits(x, torch.full((n,), t), model.route(t))
        if temperature == 0:
            tokens = logits.argmax(-1)
        else:
            probs = (logits / temperature).softmax(-1).cpu()
            tokens = torch.multinomial(probs.flatten(0, 1), 1, generator=gen).view(n, length).to(device)
        reveal = (torch.rand((n, length), generator=gen) < (t - s) / t).to(device)
        x = torch.where((x == model.mask_id) & reveal, tokens, x)
    return x


# --- training and evaluation -------------------------------------------------------------------


def build(cfg: MDMConfig) -> MaskedDiffusion:
    torch.manual_seed(cfg.seed)
    return MaskedDiffusion(cfg.lm, cfg.num_blocks, cfg.split if cfg.mode == "dblocks" else None,
                           cfg.checkpointing)


def train(cfg: MDMConfig, data: TextData | None = None, show: bool = True, evaluate: bool = True) -> dict:
    """Train one mode (a method: e2e, dblocks or the shallow control; :func:`train_network`
    trains the first two)."""
    return methods.train(FAMILY, cfg, data, show, evaluate=evaluate)


def train_network(cfg: MDMConfig, data: TextData | None = None, show: bool = True,
                  evaluate: bool = True) -> dict:
    """Train one network (resuming from OUT/checkpoint), then measure its test bound and sample.
    ``cfg.block`` and ``cfg.parallel`` train some blocks (t-intervals) only, as
    :func:`.generate.train` does."""
    data = data or load_data(cfg)
    cfg = MDMConfig.from_dict(resolved(cfg, data))
    job, device, _, model, method = methods.place(FAMILY, cfg, cfg.num_blocks)
    parallel.distribute(job, model, method.strategy, None, False, 1, device)  # blocks share nothing
    seed = cfg.seed + job.seed_offset  # a group's replicas see other windows
    train_windows = Windows(data.train, job.batch(cfg.batch_size), cfg.lm.context, seed, device)
    val = windows(data.val, cfg.lm.context)

    def batch_at(t: int) -> tuple[Tensor, Tensor]:
        w = train_windows(t)
        return w, w

    def on_eval(p) -> dict:
        if job.blocks is None:
            return per_character({"val_bpc": bound(model, val, passes=4, seed=cfg.seed)[0]}, data, "val")
        w = torch.stack([v for v in val if len(v) == len(val[0])][:32]).to(device)
        return {"block_val_loss": block_losses(masked_loss, model, w, w, job.blocks, cfg.seed)}

    run = Run(checkpoint.stored_parts(model, job.blocks), batch_at, on_eval, RESUMABLE,
              desc=f"mdm {cfg.mode}")
    progress, history, step_times = train_run(cfg, run, method, job, show)
    y = train_windows(0)
    per_block = [activation_bytes(lambda b=b: masked_loss(model, y, y, b, torch.Generator()), model)
                 for b in (job.blocks or range(model.num_blocks))]
    result = {
        "task": "mdm", "mode": cfg.mode, "data": cfg.data, "blocks": cfg.num_blocks,
        "trained_blocks": job.blocks, "steps": method.total,
        **run_summary(progress, history, step_times, model, device),
        "activation_bytes_per_step": round(statistics.mean(per_block)),
        "activation_mib": statistics.mean(per_block) / 2**20,
        "inference_layers": max(model.sizes),  # a denoising step runs one block
    }
    score = (lambda m, c: evaluate_model(m, c, data, Path(cfg.out))) if evaluate else None
    return parallel.conclude(cfg, job, result, model, score, partial(load, device=str(device)),
                             partial(merge, fresh=False))


def merge(sources: list[str | Path], out: str | Path, average_shared: bool = False,
          fresh: bool = True) -> Path:
    """Assemble masked-diffusion block checkpoints into one model at OUT/checkpoint
    (:func:`.methods.merge`)."""
    return methods.merge(FAMILY, sources, out, average_shared, fresh)


def evaluate_model(model: MaskedDiffusion, cfg: MDMConfig, data: TextData, out: Path) -> dict:
    """Test bits per character (every test character, with its standard error) and samples."""
    bpc, stderr = bound(model, windows(data.test, cfg.lm.context), cfg.bound_passes, cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 2024)
    ids = sample(model, cfg.num_samples, cfg.sample_length or cfg.lm.context, cfg.sample_steps, gen,
                 cfg.temperature)
    texts = [data.tokenizer.decode(s) for s in ids]
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.txt").write_text("\n\n-----\n\n".join(texts) + "\n")
    scale = data.chars_per_token("test")
    return per_character({"test_bpc": bpc, "bpc_stderr": stderr / scale, "bound_passes": cfg.bound_passes,
                          "test_characters": round(len(data.test) * scale), "samples": texts}, data)


def compare(cfg: MDMConfig, out: Path, quick: bool = False, show: bool = True,
            modes: tuple[str, ...] = MDMConfig.MODES) -> str:
    """``modes`` (e2e, dblocks and the shallow control by default) on the same budget;
    report.json, report.md and samples under ``out``."""
    if quick:
        cfg = MDMConfig.from_dict(cfg.to_dict() | {"steps": 30, "evals": 1, "bound_passes": 2,
                                                   "sample_steps": 8, "num_samples": 1,
                                                   "sample_length": min(32, cfg.lm.context)})
    results = {}
    for mode in modes:
        run = MDMConfig.from_dict(cfg.to_dict() | {"mode": mode, "out": str(out / mode)})
        results[mode] = train(run, show=show)
    return write_comparison(out, results, ROWS)


ROWS = [  # (label, result key, format) of report.md
    ("test BPC (ELBO bound)", "test_bpc", ".3f"),
    ("± standard error", "bpc_stderr", ".3f"),
    ("blocks", "blocks", "d"),
    ("training steps", "steps", "d"),
    ("layer evaluations", "layer_evals", "d"),
    ("layers per denoising step", "inference_layers", "d"),
    ("train seconds", "train_seconds", ".0f"),
    ("seconds / step", "step_seconds", ".4f"),
    ("activation MiB / step", "activation_mib", ".1f"),
    ("parameters", "parameters", "d"),
]


def load(path: str | Path, device: str = "cpu", averaged: bool = True) -> tuple[MaskedDiffusion, MDMConfig]:
    """A trained model and its config from a checkpoint directory."""
    return checkpoint.load_model(path, MDMConfig.from_dict, build, resolve_device(device), averaged,
                                 task="mdm")


FAMILY = methods.Family(
    name="mdm", config=MDMConfig, model="lm", train=train_network, build=build,
    block_loss=lambda cfg: masked_loss,
    resolve=lambda cfg, data: MDMConfig.from_dict(resolved(cfg, data)), load_data=load_data,
    mergeable=frozenset(MERGEABLE))
