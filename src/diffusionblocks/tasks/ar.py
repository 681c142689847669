"""Autoregressive language model, end to end or as DiffusionBlocks (METHOD §9.2).

End to end is an ordinary causal transformer trained on next-character cross-entropy.

DiffusionBlocks denoises each next token: the target of position k is the unit-length embedding
of token k + 1 (:class:`~diffusionblocks.blocks.TokenSpace`), noised with one σ per sequence.
A block sees the clean tokens and a noisy copy side by side (2T positions): clean k attends to
clean ≤ k; the noisy slot for token k + 1 attends to clean ≤ k and to itself only, and takes
position index k + 1, the place its token will occupy. The answer never leaks through the mask
(tests pin this). Each block has its own token stem and read-in/read-out; the token table is the
shared target space. To generate, every new token runs the B-step sampler of METHOD §8 on one
noisy slot against the clean prefix, whose keys and values are cached per σ of the grid (the
clean tokens are conditioned on σ too, so each grid point has its own cache). Started from
pure noise the sampler draws a token; started from the noise's mean it decodes greedily, which
is how teacher-forced accuracy is read (:func:`initial_state`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import checkpoint, methods, parallel
from ..adapters import TokensToNextToken
from ..blocks import SHARED_POLICIES, DiffusionBlocks, TokenSpace
from ..checks import check_at_least_one, check_block_job, check_choice, config_from_dict, resolve_device
from ..data.text import TextData, Windows
from ..memory import activation_bytes
from ..methods.ensemble import Ensemble
from ..methods.ensemble import check as check_ensemble
from ..models.lm import (
    CausalLM,
    KVCache,
    LMConfig,
    make_layers,
    next_token_loss,
    run_cached,
)
from ..noise import GRIDS, NoiseConfig, scalings
from ..runs import Run, run_summary, train_run
from ..sampling import SAMPLERS, initial_noise
from ..training import (
    OptimConfig,
    block_losses,
    blockwise_loss,
)
from .judge import independent_judge, judged
from .text import (
    LN2,
    TOP_P,
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
RESUMABLE = {"steps", "evals", "device", "out", "data_dir", "checkpointing", "tensorboard", "sampler", "grid",
             "sample_steps", "num_samples", "continuations", "prompt_length", "sample_length", "temperature",
             "judge_steps", "decoding", "init_from", "combine"}
MERGEABLE = RESUMABLE | {"block", "parallel"}  # block jobs that may be merged into one model


@dataclass
class ARConfig(TextConfig):
    """One autoregressive run. The noise partition is equal log-widths, as for classification
    (a discrete target read from context; see tasks/classify.py), with the paper's γ = 0.1."""

    MODES: ClassVar[tuple[str, ...]] = (*TextConfig.MODES, "ensemble")

    blocks: int = 4
    shared_policy: str = "frozen"
    sampler: str = "euler"
    grid: str = "equiprob"
    sample_steps: int | None = None  # grid points; default B, one denoiser call per block
    num_samples: int = 64  # prompts from the test split
    continuations: int = 2  # samples per prompt (MAUVE compares them with the real continuations)
    prompt_length: int = 32
    sample_length: int = 128
    temperature: float = 1.0
    decoding: str = "sample"  # or "paper": end to end with top-p 0.95, DiffusionBlocks with B steps
    judge_steps: int = 4000  # training steps of the independent judge (tasks/judge.py); 0: none
    init_from: str | None = None  # an end-to-end checkpoint DiffusionBlocks starts from
    block: int | None = None  # train only this block (a block job; `merge` assembles them)
    member: int | None = None  # ensemble: train only this member (an independent job)
    combine: str = "logprob"  # ensemble, per token: mean log-probability, or "prob": of the probability
    parallel: bool = False  # one torchrun rank of a block-parallel run
    sync_every: int = 100  # --parallel, co-trained token table: average it every N steps
    out: str = "runs/ar"
    lm: LMConfig = field(default_factory=lambda: LMConfig(depth=8))
    noise: NoiseConfig = field(default_factory=lambda: NoiseConfig(gamma=0.1, partition="uniform"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.1))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sampling(self, next_token=True)
        check_choice("shared policy", self.shared_policy, SHARED_POLICIES)
        check_at_least_one(self, ("num_samples", "continuations", "prompt_length", "sample_length"))
        if self.sample_steps is not None and self.sample_steps < 2:
            raise ValueError(f"sample_steps must be at least 2 (σ_max and σ_min), got {self.sample_steps}")
        if self.decoding == "paper" and self.sample_steps not in (None, self.blocks):
            raise ValueError(f"--decoding paper takes B = {self.blocks} steps; leave --sample-steps out")
        if self.init_from and self.mode != "dblocks":
            raise ValueError("--init-from converts an end-to-end model into DiffusionBlocks: it "
                             "needs --mode dblocks")
        check_block_job(self)
        check_ensemble(self)

    def to_dict(self) -> dict:
        return {"task": "ar", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> ARConfig:
        return config_from_dict(cls, d, {"lm": LMConfig, "noise": NoiseConfig, "optim": OptimConfig})


# --- the DiffusionBlocks model -----------------------------------------------------------------


ARAdapter = TokensToNextToken  # the autoregressive block's adapter (see adapters.py)


def build(cfg: ARConfig) -> nn.Module:
    """The model of ``cfg.mode``, initialized from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    if cfg.mode == "e2e":
        return CausalLM(cfg.lm, cfg.checkpointing)
    width = cfg.lm.width
    shared = TokenSpace(cfg.lm.vocab_size, width)
    return DiffusionBlocks(
        make_layers(cfg.lm, cond_dim=width), shared, lambda: ARAdapter(cfg.lm, width), cfg.blocks,
        cond_dim=width, noise=cfg.noise, split=cfg.split, shared_policy=cfg.shared_policy,
        checkpointing=cfg.checkpointing,
    )


@torch.no_grad()
def init_from(model: DiffusionBlocks, e2e: CausalLM) -> None:
    """Start DiffusionBlocks from a trained end-to-end language model (pretrained conversion).

    Each block takes a copy of its own layers (exact under AdaLN at every σ: see
    :meth:`TransformerLayer.adopt`), of the token and position embeddings (the noisy slots'
    extra last position takes the last one), of the final norm, and a read-out that gives the
    head's logits through the token table at the block's σ (:meth:`TokenSpace.read_out_of`).
    The clean stream of block b is then the end-to-end model cut to its layers; the noisy
    slots, read in with zero weight, start without a token of their own.
    """
    def adapter(a: TokensToNextToken) -> None:
        a.stem.tokens.load_state_dict(e2e.stem.tokens.state_dict())
        n = len(e2e.stem.pos)
        a.stem.pos[:n] = e2e.stem.pos
        a.stem.pos[n:] = e2e.stem.pos[-1]
        a.read_in.weight.zero_()
        a.read_in.bias.zero_()
        a.norm.load_state_dict(e2e.norm.state_dict())

    model.adopt(e2e.layers, e2e.head, adapter)


def pretrained(cfg: ARConfig) -> CausalLM:
    """The end-to-end model of ``cfg.init_from`` (its weight average when it has one), checked
    to have ``cfg``'s backbone and vocabulary."""
    e2e, e2e_cfg = load(cfg.init_from)
    if e2e_cfg.mode != "e2e":
        raise ValueError(f"--init-from {cfg.init_from} holds a {e2e_cfg.mode} model; it takes an "
                         "end-to-end autoregressive checkpoint (train ar --mode e2e)")
    if e2e_cfg.lm != cfg.lm or e2e_cfg.vocab != cfg.vocab:
        diff = ", ".join(f"{k}: {v!r} vs {getattr(cfg.lm, k)!r}" for k, v in asdict(e2e_cfg.lm).items()
                         if getattr(cfg.lm, k) != v) or "the vocabulary"
        raise ValueError(f"--init-from {cfg.init_from} has another backbone ({diff}); give this run "
                         "the same model flags and data")
    return e2e


def sigma_grid(cfg: ARConfig) -> Tensor:
    """The inference grid: by default B points, one denoiser call per block. One point is
    σ_max alone: a single call, from pure noise."""
    n = cfg.sample_steps or max(cfg.blocks, 2)
    if n == 1:
        return torch.tensor([cfg.noise.sigma_max], dtype=torch.float64)
    return GRIDS[cfg.grid](cfg.noise, n)


def initial_state(shape: tuple[int, ...], cfg: ARConfig, temperature: float, generator=None,
                  device=None) -> Tensor:
    """The sampler's start at σ_max: N(0, (temperature·σ_max)² I).

    At temperature 1 the deterministic sampler turns the noise into a *draw* from the model
    (its argmax is right with the probability the model gives the right token, as a
    temperature-1 sample of a next-token model). At 0 it starts from the noise's mean and
    follows one deterministic path: greedy decoding, the counterpart of an argmax.
    """
    return temperature * initial_noise(shape, cfg.noise.sigma_max, generator, device)


@torch.no_grad()
def predict(model: DiffusionBlocks, x: Tensor, cfg: ARConfig, generator=None,
            temperature: float = 0.0) -> Tensor:
    """Teacher-forced logits (N, T, V) for the token after each position of ``x``: every slot
    runs the sampler against its own clean prefix, greedy by default (see :func:`initial_state`)."""
    z = initial_state((*x.shape, model.shared.embed_dim), cfg, temperature, generator, x.device)
    sigmas = sigma_grid(cfg)
    z = SAMPLERS[cfg.sampler](model.denoiser(x), z, sigmas)
    return model.shared.logits(model.denoise(z, float(sigmas[-1]), x))


# --- generation --------------------------------------------------------------------------------


def pick(logits: Tensor, temperature: float, gen: torch.Generator, top_p: float = 1.0) -> Tensor:
    """(N, V) logits -> (N, 1) tokens: argmax at temperature 0, else a draw from the softmax at
    ``temperature``, restricted to the smallest set of most likely tokens whose mass reaches
    ``top_p`` (nucleus sampling; 1: every token)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = nucleus((logits.float() / temperature).softmax(-1).cpu(), top_p)
    return torch.multinomial(probs, 1, generator=gen).to(logits.device)


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """``probs`` (…, V) kept on the smallest set of most likely tokens whose mass reaches
    ``top_p`` and zero elsewhere (not renormalised); unchanged at 1."""
    if top_p >= 1:
        return probs
    ranked, order = probs.sort(-1, descending=True)
    ranked = ranked * (ranked.cumsum(-1) - ranked < top_p)  # the mass before a token is < p
    return torch.zeros_like(probs).scatter(-1, order, ranked)


def top_p(cfg) -> float:
    """The nucleus of a next-token model's draws: the paper's 0.95 under ``decoding='paper'``."""
    return TOP_P if cfg.decoding == "paper" else 1.0


class NextSlot:
    """The noisy slot after a clean prefix, with the prefix's keys and values cached per grid σ.

    ``denoise(z, σ)`` runs the block owning σ on the slot alone; ``append`` extends every cache
    by new clean tokens. With ``cached`` False both recompute from the whole prefix instead
    (the reference the cached path must equal).
    """

    def __init__(self, model: DiffusionBlocks, sigmas: Tensor, prefix: Tensor, cached: bool = True):
        self.model, self.cached = model, cached
        self.index = {float(s): i for i, s in enumerate(sigmas)}
        self.owner = [model.route(float(s)) for s in sigmas]
        device = prefix.device
        c_noise = scalings(sigmas.float(), model.noise.sigma_data)[3].to(device)
        self.cond = [model.blocks[b].noise_embed(c_noise[i : i + 1]) for i, b in enumerate(self.owner)]
        self.caches = [[KVCache() for _ in model.blocks[b].layers] for b in self.owner]
        self.prefix = prefix[:, :0]
        self.append(prefix)

    def append(self, tokens: Tensor) -> None:
        if self.cached:
            for i, b in enumerate(self.owner):
                block = self.model.blocks[b]
                h = block.adapter.stem(tokens, start=self.prefix.shape[1])
                run_cached(block.layers, h, self.cond[i], self.caches[i], keep=True)
        self.prefix = torch.cat([self.prefix, tokens], dim=1)

    def denoise(self, z: Tensor, sigma: Tensor) -> Tensor:
        """D(z, σ) of the slot, z (N, 1, d)."""
        if not self.cached:
            rest = z.new_zeros(z.shape[0], self.prefix.shape[1] - 1, z.shape[2])
            return self.model.denoise(torch.cat([rest, z], dim=1), sigma, self.prefix)[:, -1:]
        i = self.index[float(sigma)]
        block = self.model.blocks[self.owner[i]]
        s = torch.as_tensor(float(sigma), dtype=z.dtype, device=z.device)
        c_skip, c_out, c_in, _ = scalings(s, self.model.noise.sigma_data)
        h = block.adapter.slots(c_in * z, self.prefix.shape[1])
        h = run_cached(block.layers, h, self.cond[i], self.caches[i], keep=False)
        return c_skip * z + c_out * block.adapter.read(h)


@torch.no_grad()
def generate(model: nn.Module, cfg: ARConfig, prompt: Tensor, new: int, gen: torch.Generator,
             temperature: float = 1.0, cached: bool = True) -> Tensor:
    """``prompt`` (N, P) followed by ``new`` generated tokens, read with at most ``context``
    tokens before each. A next-token model reads them cached while the whole text fits, then
    through a window sliding over the last ``context`` (recomputed per token), and draws from
    its softmax at ``temperature`` (:func:`pick`, with the paper's top-p under
    ``decoding='paper'``). DiffusionBlocks, when its context fills, restarts from the last half
    (caches refilled); it draws once: its draw is the sampler's start noise, scaled by
    ``temperature`` (0: greedy, :func:`initial_state`); the token is then the argmax of the
    final denoise's logits."""
    model.eval()
    ids, start = prompt, max(0, prompt.shape[1] - cfg.lm.context)
    if not isinstance(model, DiffusionBlocks):  # a next-token model (CausalLM, RecurrentLM)
        caches = [KVCache() for _ in model.layers] if cached and isinstance(model, CausalLM) else None
        for _ in range(new):
            if caches is not None and ids.shape[1] <= cfg.lm.context:  # the whole text fits
                logits = model.extend(ids[:, len(caches[0]) :], caches)
            else:  # a window sliding over the last ``context`` tokens
                logits = model(ids[:, -cfg.lm.context :])[:, -1]
            ids = torch.cat([ids, pick(logits, temperature, gen, top_p(cfg))], dim=1)
        return ids
    sigmas, shared = sigma_grid(cfg), model.shared
    slot = NextSlot(model, sigmas, ids[:, start:], cached)

    def estimate(z: Tensor, sigma: Tensor) -> Tensor:
        return shared.estimate(slot.denoise(z, sigma))

    for _ in range(new):
        z = initial_state((ids.shape[0], 1, shared.embed_dim), cfg, temperature, gen, ids.device)
        z = SAMPLERS[cfg.sampler](estimate, z, sigmas)
        token = shared.logits(slot.denoise(z, sigmas[-1]))[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        if slot.prefix.shape[1] < cfg.lm.context:
            slot.append(token)
        else:
            start = ids.shape[1] - cfg.lm.context // 2
            slot = NextSlot(model, sigmas, ids[:, start:], cached)
    return ids


# --- evaluation --------------------------------------------------------------------------------


def test_windows(ids: Tensor, context: int) -> list[Tensor]:
    """Windows of context + 1 tokens overlapping by one: every token but the first is a target."""
    return [w for w in windows(ids, context + 1, overlap=1) if len(w) > 1]


@torch.no_grad()
def scores(model: nn.Module, pieces: list[Tensor], cfg: ARConfig, batch: int = 64) -> dict:
    """Accuracy over every target of ``pieces``, of the mode and of a draw.

    A next-token model (end to end): ``next_char_accuracy`` of the argmax, ``sampled_accuracy``
    = the mean probability of the right token (how often a temperature-1 draw is right), and
    bits per character. DiffusionBlocks, teacher-forced from the true prefix:
    ``teacher_forced_accuracy`` of the greedy sampler's final denoise (the argmax's counterpart)
    and ``sampled_accuracy`` of one temperature-1 run of the sampler per target.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed + 777)
    correct = drawn = nats = count = 0.0
    for w in batched(pieces, batch):
        w = w.to(device)
        x, y = w[:, :-1], w[:, 1:]
        if isinstance(model, DiffusionBlocks):
            logits = predict(model, x, cfg)
            drawn += (predict(model, x, cfg, gen, temperature=1.0).argmax(-1) == y).sum().item()
        else:  # a likelihood only a next-token model has
            logits = model(x)
            drawn += logits.softmax(-1).gather(-1, y[..., None]).sum().item()
            nats += next_token_loss(logits, y).item() * y.numel()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    result = {"sampled_accuracy": drawn / count}
    if not isinstance(model, DiffusionBlocks):
        return {"test_bpc": nats / count / LN2, "next_char_accuracy": correct / count, **result}
    return {"teacher_forced_accuracy": correct / count, **result}


def _starts(data: TextData, cfg: ARConfig) -> list[int]:
    """Where the prompts start: evenly spaced over the test split, each with room for its
    prompt and a whole real continuation after it."""
    room = len(data.test) - cfg.prompt_length - cfg.sample_length
    if room < 0:
        raise ValueError(f"the test split ({len(data.test)} tokens) is shorter than --prompt-length + "
                         f"--sample-length ({cfg.prompt_length + cfg.sample_length})")
    return torch.linspace(0, room, cfg.num_samples).long().tolist()


def prompts(data: TextData, cfg: ARConfig) -> Tensor:
    """``num_samples`` prompts: evenly spaced windows of the test split."""
    return torch.stack([data.test[s : s + cfg.prompt_length] for s in _starts(data, cfg)])


def real_continuations(data: TextData, cfg: ARConfig) -> Tensor:
    """The test split's own continuation of each of :func:`prompts`, as long as a generated one
    (prompt included)."""
    length = cfg.prompt_length + cfg.sample_length
    return torch.stack([data.test[s : s + length] for s in _starts(data, cfg)])


def samples(model: nn.Module, cfg: ARConfig, data: TextData) -> Tensor:
    """``continuations`` continuations of each of :func:`prompts` (token ids, prompt included,
    prompt by prompt)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed + 2024)
    prompt = prompts(data, cfg).repeat_interleave(cfg.continuations, dim=0).to(device)
    return generate(model, cfg, prompt, cfg.sample_length, gen, cfg.temperature).cpu()


def write_samples(ids: Tensor, cfg: ARConfig, data: TextData, path: Path) -> list[str]:
    decode, p = data.tokenizer.decode, cfg.prompt_length
    texts = [decode(s[:p]) + " ⟨⟩ " + decode(s[p:]) for s in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n-----\n\n".join(texts) + "\n")
    return texts


# --- training ----------------------------------------------------------------------------------


def train(cfg: ARConfig, data: TextData | None = None, show: bool = True, evaluate: bool = True,
          judges: dict[str, CausalLM] | None = None) -> dict:
    """Train one mode (a method: e2e, dblocks or the shallow control; :func:`train_network`
    trains the first two)."""
    return methods.train(FAMILY, cfg, data, show, evaluate=evaluate, judges=judges)


def train_network(cfg: ARConfig, data: TextData | None = None, show: bool = True, evaluate: bool = True,
                  judges: dict[str, CausalLM] | None = None) -> dict:
    """Train one network (resuming from OUT/checkpoint), then score it and sample; ``judges`` score
    the samples (:func:`.judge.judged`). ``cfg.block`` and ``cfg.parallel`` train some blocks
    only, as :func:`.generate.train` does."""
    data = data or load_data(cfg)
    cfg = ARConfig.from_dict(resolved(cfg, data))
    init = (lambda model: init_from(model, pretrained(cfg))) if cfg.init_from else None
    job, device, out, model, method = methods.place(FAMILY, cfg, cfg.num_blocks, init)
    strategy = method.strategy
    shared, cotrained = getattr(model, "shared", None), cfg.shared_policy == "cotrained"
    parallel.distribute(job, model, strategy, shared, cotrained, cfg.sync_every, device)
    seed = cfg.seed + job.seed_offset  # a group's replicas see other windows
    train_windows = Windows(data.train, job.batch(cfg.batch_size), cfg.lm.context + 1, seed, device)
    val = test_windows(data.val, cfg.lm.context)[:64]

    def batch_at(t: int) -> tuple[Tensor, Tensor]:
        w = train_windows(t)
        return w[:, :-1], w[:, 1:]

    def on_eval(p) -> dict:
        if job.blocks is None:
            return per_character({f"val_{k}": v for k, v in scores(model, val, cfg).items()}, data, "val",
                                 "val_test_bpc")
        w = torch.stack([v for v in val if len(v) == len(val[0])][:32]).to(device)
        losses = block_losses(blockwise_loss, model, w[:, :-1], w[:, 1:], job.blocks, cfg.seed)
        return {"block_val_loss": losses}

    run = Run(checkpoint.stored_parts(model, job.blocks), batch_at, on_eval, RESUMABLE,
              desc=f"ar {cfg.mode}", first=bool(cfg.init_from))
    progress, history, step_times = train_run(cfg, run, method, job, show)
    x, y = batch_at(0)
    if isinstance(model, DiffusionBlocks):
        per_block = [activation_bytes(lambda b=b: blockwise_loss(model, x, y, b, torch.Generator()), model)
                     for b in (job.blocks or range(model.num_blocks))]
    else:
        per_block = [activation_bytes(lambda: next_token_loss(model(x), y), model)]
    result = {
        "task": "ar", "mode": cfg.mode, "data": cfg.data, "blocks": cfg.num_blocks,
        "trained_blocks": job.blocks, "steps": method.total,
        **run_summary(progress, history, step_times, model, device),
        "tokens_per_layer_eval": cfg.batch_size * cfg.lm.context * (2 if cfg.mode == "dblocks" else 1),
        "activation_bytes_per_step": round(statistics.mean(per_block)),
        "activation_mib": statistics.mean(per_block) / 2**20,
        "inference_layers": inference_layers(model, cfg),
    }
    score = (lambda m, c: evaluate_model(m, c, data, Path(cfg.out), judges)) if evaluate else None
    merge_groups = partial(merge, average_shared=cfg.shared_policy == "cotrained", fresh=False)
    return parallel.conclude(cfg, job, result, model, score, partial(load, device=str(device)), merge_groups)


def inference_layers(model: nn.Module, cfg: ARConfig) -> int:
    """Layers evaluated per predicted token: the chain's calls on the σ grid, or the network's."""
    if isinstance(model, DiffusionBlocks):
        return sum(model.sizes[model.route(s)] for s in sigma_grid(cfg))
    return cfg.lm.depth


def merge(sources: list[str | Path], out: str | Path, average_shared: bool = False,
          fresh: bool = True) -> Path:
    """Assemble autoregressive block checkpoints into one model at OUT/checkpoint, or ensemble members
    into their ensemble (:func:`.methods.merge`)."""
    return methods.merge(FAMILY, sources, out, average_shared, fresh)


def evaluate_model(model: nn.Module, cfg: ARConfig, data: TextData, out: Path,
                   judges: dict[str, CausalLM] | None = None) -> dict:
    """Scores on every test character; samples, judged by ``judges`` (an end-to-end model also
    by itself, as ``e2e_judge``) and, with a ``judge``, compared with the real text by MAUVE."""
    result = per_character(scores(model, test_windows(data.test, cfg.lm.context), cfg), data)
    ids = samples(model, cfg, data)
    result["samples"] = write_samples(ids, cfg, data, out / "samples.txt")
    judges = _with_self(model, judges)
    return result | judged(ids, real_continuations(data, cfg), cfg.prompt_length, judges, data)


def _with_self(model: nn.Module, judges: dict | None) -> dict:
    """``judges``, and a next-token network as its own ``e2e_judge`` when none is given (an
    ensemble is judged by others only)."""
    judges = dict(judges or {})
    if not isinstance(model, (DiffusionBlocks, Ensemble)):
        judges.setdefault("e2e_judge", model)
    return judges


def load(path: str | Path, device: str = "cpu", averaged: bool = True) -> tuple[nn.Module, ARConfig]:
    """A trained model and its config from a checkpoint directory."""
    return checkpoint.load_model(path, ARConfig.from_dict, partial(methods.build, FAMILY),
                                 resolve_device(device), averaged, task="ar")


def validate(model: nn.Module, data: TextData, cfg: ARConfig) -> dict:
    """Scores on the first 64 validation windows (what the training curve watches)."""
    val = test_windows(data.val, cfg.lm.context)[:64]
    return per_character({f"val_{k}": v for k, v in scores(model, val, cfg).items()}, data, "val",
                         "val_test_bpc")


def score(model: nn.Module, data: TextData, cfg: ARConfig, evaluate: bool = True,
          judges: dict[str, CausalLM] | None = None) -> dict:
    """A whole model's test figures and judged samples (:func:`evaluate_model`)."""
    return evaluate_model(model, cfg, data, Path(cfg.out), judges) if evaluate else {}


def compare(cfg: ARConfig, out: Path, quick: bool = False, show: bool = True,
            modes: tuple[str, ...] | None = None) -> str:
    """``modes`` (e2e, dblocks and both controls by default; under ``--parallel`` no ensemble,
    whose members train as separate jobs) on the same budget, their
    samples scored by the independent judge (trained first, or read from the cache) and, where
    e2e is among them, by the end-to-end model (trained first)."""
    if quick:
        quick_settings = {"steps": 30, "evals": 1, "num_samples": 4, "sample_length": 16,
                          "judge_steps": min(cfg.judge_steps, 30)}
        cfg = ARConfig.from_dict(cfg.to_dict() | quick_settings)
    if modes is None:
        modes = tuple(m for m in ARConfig.MODES if not (cfg.parallel and m == "ensemble"))
    data = load_data(cfg)
    judge, about = independent_judge(data, ARConfig.from_dict(resolved(cfg, data)), show)
    results, rivals = {}, {}
    for mode in sorted(modes, key=lambda m: m != "e2e"):  # e2e first: it judges the others too
        run = ARConfig.from_dict(cfg.to_dict() | {"mode": mode, "out": str(out / mode)})
        results[mode] = train(run, data, show=show, judges=judge | rivals)
        if mode == "e2e":
            rivals = {"e2e_judge": load(Path(run.out) / "checkpoint", run.device)[0]}
    return write_comparison(out, results, ROWS, judge=about)


ROWS = [  # (label, result key, format) of report.md
    ("test BPC", "test_bpc", ".3f"),
    ("next-token accuracy (a character, or a subword under BPE)", "next_char_accuracy", ".4f"),
    ("teacher-forced accuracy, greedy (dblocks)", "teacher_forced_accuracy", ".4f"),
    ("sampled accuracy (temperature 1)", "sampled_accuracy", ".4f"),
    ("judge BPC of samples (independent judge)", "judge_bpc", ".3f"),
    ("MAUVE vs the real continuations (independent judge's features, 10 k-means seeds)", "mauve", ".3f"),
    ("MAUVE, sd over the 10 k-means seeds", "mauve_sd", ".3f"),
    ("judge BPC of samples (the end-to-end contestant as judge)", "e2e_judge_bpc", ".3f"),
    ("blocks", "blocks", "d"),
    ("training steps", "steps", "d"),
    ("layer evaluations", "layer_evals", "d"),
    ("layers per predicted token", "inference_layers", "d"),
    ("tokens per layer evaluation", "tokens_per_layer_eval", "d"),
    ("train seconds", "train_seconds", ".0f"),
    ("seconds / step", "step_seconds", ".4f"),
    ("activation MiB / step", "activation_mib", ".1f"),
    ("parameters", "parameters", "d"),
]


FAMILY = methods.Family(
    name="ar", config=ARConfig, model="lm", train=train_network, build=build, loss=next_token_loss,
    resolve=lambda cfg, data: ARConfig.from_dict(resolved(cfg, data)), load_data=load_data,
    score=score, validate=validate, mergeable=frozenset(MERGEABLE))
