"""An independent judge of generated text, and MAUVE.

Judging samples with one of the two contestants favours that contestant's own samples. The
judge here is a third model: an end-to-end causal LM twice the contestants' width, trained on
the same training split with its own seed, and cached like FID's feature network (under
``~/.cache/diffusionblocks``, keyed by the text, the tokenizer and the judge's settings). It
scores text in bits per character (every model's samples, and the test split itself: the
reference figure) and gives the features MAUVE compares (Pillutla et al., 2021): the mean of
its final hidden states over a continuation, read with the prompt as context.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import checkpoint
from ..checks import resolve_device
from ..data.text import TextData, Windows
from ..metrics.fid import default_cache_dir, write_atomic
from ..models.lm import CausalLM, LMConfig, next_token_loss
from ..training import EndToEnd, OptimConfig, Progress, fit
from .text import LN2, batched, per_character
from .text import windows as split_windows

MAUVE_SCALING = 5.0  # the package's default scaling factor c of exp(-c·KL)
MAUVE_SEEDS = 10  # k-means quantisations averaged


@dataclass(frozen=True)
class JudgeConfig:
    """The judge's shape and training; :func:`judge_config` derives it from the contestants'."""

    width: int = 256
    depth: int = 8
    heads: int = 8
    context: int = 128
    steps: int = 4000  # at most: training stops once its validation bits stop improving
    patience: int = 3  # evaluations (every twentieth of the steps) without a better validation score
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 1234  # its own, never a contestant's
    precision: str = "auto"  # of its training, as the contestants' (OptimConfig.precision)


def judge_config(lm: LMConfig, steps: int, precision: str = "auto") -> JudgeConfig:
    """Twice the contestants' width (and heads, so the head size stays), their depth, context
    and training precision."""
    return JudgeConfig(width=2 * lm.width, depth=lm.depth, heads=2 * lm.heads, context=lm.context,
                       steps=steps, precision=precision)


def _key(data: TextData, cfg: JudgeConfig) -> str:
    digest = hashlib.sha256(json.dumps([data.tokenizer.kind, data.tokenizer.chars, asdict(cfg)]).encode())
    digest.update(data.train.numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_train(data: TextData, cfg: JudgeConfig, cache_dir: str | Path | None = None,
                  show: bool = True, device: torch.device | str = "cpu") -> tuple[CausalLM, dict]:
    """The judge of ``data`` on ``device`` and what it is (``test_bpc``, ``parameters``, its
    settings): from the cache when one with the same text and settings is there, else trained
    there and cached; a training that was killed resumes from its last checkpoint there (every
    twentieth of the steps). An unwritable cache folder only skips caching.

    Training is early-stopped on the validation split: scored at every checkpoint, it stops
    once ``patience`` of them bring no better score, and the judge is the weights of its best
    (``val_bpc`` at ``best_step``; ``trained_steps`` says where it stopped)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _key(data, cfg)
    weights, meta_path = folder / f"judge_{key}.safetensors", folder / f"judge_{key}.json"
    lm = LMConfig(vocab_size=data.tokenizer.vocab_size, context=cfg.context, width=cfg.width,
                  depth=cfg.depth, heads=cfg.heads)
    with torch.random.fork_rng(devices=[]):  # its own seed, without moving the caller's
        torch.manual_seed(cfg.seed)
        model = CausalLM(lm)
    try:
        info = json.loads(meta_path.read_text())
        model.load_state_dict(load_file(str(weights)), strict=True)
        return model.to(device).eval(), info
    except Exception:  # absent, unreadable or corrupt: train afresh
        pass
    model.to(device)
    best = copy.deepcopy(model)
    windows = Windows(data.train, cfg.batch_size, cfg.context + 1, cfg.seed, device)
    optim = OptimConfig(lr=cfg.lr, weight_decay=0.1, warmup=cfg.steps // 20, precision=cfg.precision)
    strategy = EndToEnd(model, next_token_loss, optim, cfg.depth)
    every = max(50, cfg.steps // 20)

    def batch_at(t: int) -> tuple[Tensor, Tensor]:
        w = windows(t)
        return w[:, :-1], w[:, 1:]

    partial = folder / f"judge_{key}.partial"  # a killed training resumes here, bit for bit
    progress, record = _resume(partial, {"model": model, "best": best}, strategy.states)
    if progress is not None and show:
        print(f"resuming the judge from {partial} at step {progress.step} of {cfg.steps}", file=sys.stderr)

    def keep(p: Progress) -> bool:
        model.eval()
        bits = text_bpc(model, data.val)
        model.train()
        if bits < record["val_bpc"]:
            best.load_state_dict(model.state_dict())
            record.update(val_bpc=bits, best_step=p.step)
        stop = p.step - record["best_step"] >= cfg.patience * every
        if p.step < cfg.steps and not stop:
            try:
                checkpoint.save(partial, {"model": model, "best": best}, asdict(cfg) | {"best": record},
                                strategy.states, p)
            except OSError:  # an unwritable cache only loses resumability
                pass
        return stop

    progress = fit(strategy, batch_at, cfg.steps, optim.warmup, cfg.seed, progress, every=every,
                   on_every=keep, desc="judge", show=show)
    if progress.step < cfg.steps and show:
        print(f"the judge stopped early at step {progress.step} of {cfg.steps}: its best validation "
              f"score was at step {record['best_step']}", file=sys.stderr)
    model.load_state_dict(best.state_dict())
    model.eval()
    scores = {"test_bpc": text_bpc(model, data.test)}
    info = {"parameters": sum(p.numel() for p in model.parameters()), **asdict(cfg), "key": key,
            **per_character(scores, data), "trained_steps": progress.step, "best_step": record["best_step"],
            **per_character({"val_bpc": record["val_bpc"]}, data, "val")}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        write_atomic(weights, lambda p: save_file(tensors, p))
        write_atomic(meta_path, lambda p: Path(p).write_text(json.dumps(info, indent=2)))
        shutil.rmtree(partial, ignore_errors=True)
    except OSError:
        pass
    return model, info


def _resume(partial: Path, parts: dict[str, CausalLM], optimizers: dict) -> tuple[Progress | None, dict]:
    """Load a judge's partial training from ``partial`` into ``parts`` and ``optimizers``:
    its progress (None when there is none, or it is damaged: training then starts afresh) and
    the record of its best validation score. Its name holds the judge's key, so what it holds
    is this judge's."""
    fresh = {"val_bpc": math.inf, "best_step": 0}
    try:
        snapshot = checkpoint.read(partial, parts=list(parts), optimizers=list(optimizers))
        record = snapshot.config["best"]
    except (OSError, ValueError, KeyError):
        return None, fresh
    if snapshot.progress is None:
        return None, fresh
    snapshot.load_parts(parts)
    snapshot.load_optimizers(optimizers)
    return snapshot.progress, record


@torch.no_grad()
def text_bpc(judge: CausalLM, ids: Tensor, batch: int = 64) -> float:
    """Bits per token of a whole split under ``judge`` (windows of its context overlapping by one)."""
    nats = count = 0.0
    device = next(judge.parameters()).device
    pieces = [w for w in split_windows(ids, judge.cfg.context + 1, overlap=1) if len(w) > 1]
    for w in batched(pieces, batch):
        w = w.to(device)
        nats += next_token_loss(judge(w[:, :-1]), w[:, 1:]).item() * w[:, 1:].numel()
        count += w[:, 1:].numel()
    return nats / count / LN2


@torch.no_grad()
def judge_bpc(judge: CausalLM, ids: Tensor, prompt_length: int) -> float:
    """Bits per token of the generated part of ``ids`` (N, P + new) under ``judge``. Windows of
    ``context`` tokens every ``context // 2`` each score the tokens the ones before them did
    not: every token is read with all of the text before it while that fits the context, and
    with at least half a context once it does not (strided evaluation, two passes per
    context's worth of text instead of one per token)."""
    judge.eval()
    device = next(judge.parameters()).device
    context, ids = judge.cfg.context, ids.to(device)
    stride, scored, nats = max(1, context // 2), prompt_length, []
    for start in range(0, ids.shape[1], stride):
        end = min(start + context, ids.shape[1])
        if end > scored:  # positions scored .. end - 1, each predicted from the one before it
            logits = judge(ids[:, start:end])[:, scored - 1 - start : end - 1 - start]
            nats.append(next_token_loss(logits, ids[:, scored:end]) * (end - scored))
            scored = end
        if end == ids.shape[1]:
            break
    return (sum(nats) / (ids.shape[1] - prompt_length)).item() / LN2


@torch.no_grad()
def features(judge: CausalLM, ids: Tensor, prompt_length: int) -> Tensor:
    """(N, width) MAUVE features of continuations: the judge's final hidden states averaged
    over the tokens after the prompt, the prompt (what fits of it) read as context."""
    total = ids.shape[1]
    keep = min(total, judge.cfg.context)
    start = max(0, prompt_length - (total - keep))
    h = judge.hidden(ids[:, total - keep :].to(next(judge.parameters()).device))
    return h[:, start:].mean(1).double().cpu()


def judged(ids: Tensor, real: Tensor, prompt_length: int, judges: dict[str, CausalLM],
           data: TextData | None = None) -> dict:
    """Samples ``ids`` (prompt included) scored by every judge (``NAME_bpc``: bits per character
    of the generated part; where ``data``'s tokens are subwords, the total bits over the
    characters the generated tokens decode to, with ``NAME_bits_per_token`` beside) and, by the
    independent one (``judge``), MAUVE against ``real``, the real continuations of the same
    prompts (:func:`mauve`: a mean over k-means seeds, ``mauve_sd`` beside; None, with
    ``mauve_skipped``, when it cannot run)."""
    per_token = {name: judge_bpc(model, ids, prompt_length) for name, model in judges.items()}
    result = {f"{name}_bpc": bits for name, bits in per_token.items()}
    if data is not None and data.characters is not None:
        characters = sum(len(data.tokenizer.decode(row[prompt_length:])) for row in ids)
        tokens_per_char = ids[:, prompt_length:].numel() / max(1, characters)
        result = ({f"{name}_bpc": bits * tokens_per_char for name, bits in per_token.items()}
                  | {f"{name}_bits_per_token": bits for name, bits in per_token.items()})
    if "judge" not in judges:
        return result | {"mauve": None, "mauve_skipped": "no independent judge (--judge-steps 0)"}
    judge = judges["judge"]
    scores = mauve(features(judge, real, prompt_length), features(judge, ids, prompt_length))
    return result | scores | {"mauve_samples": [len(real), len(ids)]}


def independent_judge(data: TextData, cfg, show: bool = True) -> tuple[dict[str, CausalLM], dict | None]:
    """``({"judge": model}, what it is)`` for a run config ``cfg`` (its ``lm`` and
    ``judge_steps``), or ``({}, None)`` with ``judge_steps`` 0."""
    if not cfg.judge_steps:
        return {}, None
    from ..parallel import barrier, main_process

    if not main_process():  # under torchrun rank 0 trains and caches it; the others read the cache
        barrier()
    settings = judge_config(cfg.lm, cfg.judge_steps, cfg.optim.precision)
    device = resolve_device(cfg.device)
    model, info = load_or_train(data, settings, show=show and main_process(), device=device)
    if main_process():
        barrier()
    return {"judge": model}, info


def mauve(real: Tensor, generated: Tensor, seeds: int = MAUVE_SEEDS) -> dict:
    """MAUVE between real and generated continuations' features, ``{"mauve": mean, "mauve_sd":
    sd}`` over ``seeds`` k-means quantisations (one seed's figure moves by ±0.05 at a few hundred
    samples); ``{"mauve": None, "mauve_skipped": why}`` when it cannot run (the ``mauve-text``
    package, the ``judge`` extra, missing)."""
    try:
        import mauve as mauve_text
    except ImportError:
        return {"mauve": None, "mauve_skipped": "the mauve-text package is not installed (pip install "
                "'diffusionblocks[judge]')"}
    buckets = max(2, min((len(real) + len(generated)) // 10, len(real)))  # the package's n/10
    p, q = real.numpy(), generated.numpy()
    scores = [mauve_text.compute_mauve(p_features=p, q_features=q, num_buckets=buckets, seed=seed,
                                       mauve_scaling_factor=MAUVE_SCALING, verbose=False).mauve
              for seed in range(seeds)]
    if not all(math.isfinite(x) for x in scores):
        return {"mauve": None, "mauve_skipped": "MAUVE was not finite"}
    return {"mauve": statistics.mean(scores), "mauve_sd": statistics.stdev(scores) if seeds > 1 else 0.0}
