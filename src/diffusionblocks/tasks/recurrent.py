"""Recurrent-depth language models: unrolled with truncated backprop vs one denoiser (METHOD §9.3).

Both models are a prelude, a recurrent core and a coda of transformer layers on characters.

The **baseline** (as Huginn trains) embeds the prompt with the prelude, starts a latent state at
zero, applies the core a random number of times per step (Poisson-log-normal, mean
``mean_depth``), each time injecting the prelude's output, backpropagates through the last
``backprop_depth`` iterations only, and decodes with the coda. At inference the core runs K times.

**DiffusionBlocks** reads the K iterations as K denoising steps: the latent state becomes the
noisy embedding of the next token, and the model one denoiser D(z, σ; prompt) of the same shape
(:class:`LatentAdapter`): prelude on the clean tokens, the core (AdaLN-conditioned on σ) on the
injected state, coda and read-out. It trains on σ from the whole training distribution, one
pass per step and no unrolling; inference runs the core K times, as the Euler steps of a K-point
σ grid, every position's state at once, as the baseline iterates its states.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import checkpoint
from ..blocks import Adapter, DiffusionBlocks, TokenSpace
from ..checks import check_at_least_one, config_from_dict, resolve_device
from ..data.text import TextData, Windows
from ..memory import activation_bytes, run_layers
from ..models.lm import LMConfig, TokenStem, causal_mask, make_layers, next_token_loss
from ..noise import NoiseConfig
from ..runs import Run, run_summary, train_run
from ..training import Blockwise, EndToEnd, Method, OptimConfig, blockwise_loss, step_generator
from . import ar
from .judge import independent_judge, judged
from .text import TextConfig, check_sampling, load_data, per_character, resolved, write_comparison

MODES = ("baseline", "dblocks")
RESUMABLE = ar.RESUMABLE | {"depth_k", "k_sweep"}


@dataclass
class RecurrentConfig(TextConfig):
    """One recurrent-depth run. ``steps`` is the run's own step count (``compare`` gives
    DiffusionBlocks the steps that take the baseline's wall-clock time)."""

    MODES: ClassVar[tuple[str, ...]] = MODES

    mode: str = "dblocks"
    blocks: int = 1  # one denoiser: the core, over the whole σ range
    prelude: int = 2
    core: int = 4
    coda: int = 2
    mean_depth: int = 8
    backprop_depth: int = 4
    depth_k: int = 8  # K: core iterations at inference (DiffusionBlocks: σ grid points)
    k_sweep: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    sampler: str = "euler"
    grid: str = "equiprob"
    num_samples: int = 64  # prompts from the test split
    continuations: int = 2  # samples per prompt (MAUVE compares them with the real continuations)
    prompt_length: int = 32
    sample_length: int = 128
    temperature: float = 1.0
    decoding: str = "sample"  # or "paper": the baseline with top-p 0.95 (DiffusionBlocks: as sample)
    judge_steps: int = 4000  # training steps of the independent judge (tasks/judge.py); 0: none
    out: str = "runs/recurrent"
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.1))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sampling(self, next_token=True)
        if self.blocks != 1:
            raise ValueError("a recurrent-depth model is one denoiser (--blocks 1); its depth at "
                             "inference is --depth-k")
        check_at_least_one(self, ("prelude", "core", "coda", "mean_depth", "backprop_depth", "depth_k",
                                  "num_samples", "continuations", "prompt_length", "sample_length"))
        if self.mean_depth < 2:
            raise ValueError(f"mean_depth must be at least 2 (one core pass plus the random rest), "
                             f"got {self.mean_depth}")
        if not self.k_sweep or min(self.k_sweep) < 1:
            raise ValueError(f"k_sweep must list depths of at least 1, got {self.k_sweep}")

    @property
    def sample_steps(self) -> int:
        """σ grid points at inference: K, one core pass each (K = 1: one pass at σ_max)."""
        return self.depth_k

    @property
    def layers_per_pass(self) -> int:
        return self.prelude + self.core + self.coda

    def to_dict(self) -> dict:
        return {"task": "recurrent", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> RecurrentConfig:
        return config_from_dict(cls, d, {"lm": LMConfig, "noise": NoiseConfig, "optim": OptimConfig})


def plain_layers(cfg: LMConfig, n: int) -> nn.ModuleList:
    return nn.ModuleList(make_layers(LMConfig(**(asdict(cfg) | {"depth": n}))))


# --- the baseline ------------------------------------------------------------------------------


class RecurrentLM(nn.Module):
    """Prelude → core × depth (state plus injected prelude output) → coda → next-token logits."""

    def __init__(self, cfg: RecurrentConfig):
        super().__init__()
        lm = cfg.lm
        self.cfg, self.depth = lm, cfg.depth_k
        self.stem = TokenStem(lm.vocab_size, lm.width, lm.context)
        self.prelude = plain_layers(lm, cfg.prelude)
        self.inject = nn.Linear(2 * lm.width, lm.width)
        self.core = plain_layers(lm, cfg.core)
        self.coda = plain_layers(lm, cfg.coda)
        self.norm = nn.LayerNorm(lm.width, eps=1e-6)
        self.head = nn.Linear(lm.width, lm.vocab_size)

    def forward(self, ids: Tensor, depth: int | None = None, backprop: int | None = None) -> Tensor:
        """Logits (N, T, V). ``depth`` core iterations (default: K); gradients only through the
        last ``backprop`` of them (default: all)."""
        depth = depth or self.depth
        mask = causal_mask(ids.shape[1], ids.device)
        e = run_layers(self.prelude, self.stem(ids), None, mask)
        s = torch.zeros_like(e)
        for k in range(depth):
            tracked = backprop is None or k >= depth - backprop
            with torch.set_grad_enabled(torch.is_grad_enabled() and tracked):
                s = run_layers(self.core, self.inject(torch.cat([s, e], dim=-1)), None, mask)
        return self.head(self.norm(run_layers(self.coda, s, None, mask)))


def draw_depth(mean: int, gen: torch.Generator) -> int:
    """Huginn's recurrence depth: 1 + Poisson(λ), log λ ~ N(log(mean − 1) − ½·0.5², 0.5)."""
    log_mean = torch.tensor(float(mean - 1)).log()
    tau = torch.randn((), generator=gen, device=gen.device) * 0.5 + log_mean - 0.125
    return 1 + int(torch.poisson(tau.exp().reshape(1), generator=gen))


class Unrolled(EndToEnd):
    """One baseline step: a random depth, truncated backprop through the last iterations."""

    def __init__(self, model: RecurrentLM, cfg: RecurrentConfig):
        super().__init__(model, next_token_loss, cfg.optim, cfg.layers_per_pass)
        self.run_cfg = cfg

    def step(self, x: Tensor, y: Tensor, gen: torch.Generator) -> dict:
        c = self.run_cfg
        depth = draw_depth(c.mean_depth, gen)
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = next_token_loss(self.model(x, depth, c.backprop_depth), y).float()
        stepped = self.precision.backward_and_step(loss, "model", [opt], self.model.parameters(),
                                                   self.cfg.clip)
        if self.averages and stepped:
            self.averages.update(["model"])
        return {"loss": loss.item(), "depth": depth, "layers": c.prelude + c.core * depth + c.coda}


# --- DiffusionBlocks: one denoiser, the core as its layers --------------------------------------


class LatentAdapter(Adapter):
    """The baseline's shape with its latent state in target space.

    The prelude encodes the clean prefix (e, causal); the core's input at position i is
    ``inject([z_i, e_i])``, where z_i is the c_in-scaled noisy embedding of token i + 1, exactly
    where the baseline injects its state s_i; the coda and a read-out give F in target space.
    Attention is causal over one sequence of T positions, as the baseline's: position i sees
    z_j for j ≤ i, and z_j (j < i) is a noisy copy of token j + 1 ≤ i, already in the clean
    prefix, so nothing about token i + 1 leaks (a test pins this). One σ per sequence.
    """

    def __init__(self, cfg: RecurrentConfig, embed_dim: int):
        super().__init__()
        lm = cfg.lm
        self.stem = TokenStem(lm.vocab_size, lm.width, lm.context)
        self.prelude = plain_layers(lm, cfg.prelude)
        self.inject = nn.Linear(embed_dim + lm.width, lm.width)
        self.coda = plain_layers(lm, cfg.coda)
        self.norm = nn.LayerNorm(lm.width, eps=1e-6)
        self.read_out = nn.Linear(lm.width, embed_dim)

    def attention_mask(self, x: Tensor) -> Tensor:
        return causal_mask(x.shape[1], x.device)

    _kept: tuple[Tensor, int, Tensor] | None = None  # (x, its version, the prelude's e)

    def encode(self, x: Tensor, z_in: Tensor) -> Tensor:
        return self.inject(torch.cat([z_in, self.context(x)], dim=-1))

    def context(self, x: Tensor) -> Tensor:
        """The prelude's encoding e of the clean prefix. It does not depend on σ, so in inference
        (no gradients) it is computed once per sequence: kept while the same ``x`` comes back."""
        if torch.is_grad_enabled():
            self._kept = None
            return run_layers(self.prelude, self.stem(x), None, self.attention_mask(x))
        kept = self._kept
        if kept is None or kept[0] is not x or kept[1] != x._version:
            e = run_layers(self.prelude, self.stem(x), None, self.attention_mask(x))
            self._kept = kept = (x, x._version, e)
        return kept[2]

    def decode(self, h: Tensor, c: Tensor) -> Tensor:
        h = run_layers(self.coda, h, None, causal_mask(h.shape[1], h.device))
        return self.read_out(self.norm(h))


class OnePass(Blockwise):
    """Block-wise training of the single block, counting prelude and coda as layers too."""

    def __init__(self, model: DiffusionBlocks, cfg: RecurrentConfig):
        super().__init__(model, cfg.optim)
        self.layers = cfg.layers_per_pass

    def layers_per_step(self, block: int) -> int:
        return self.layers


def build(cfg: RecurrentConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.mode == "baseline":
        return RecurrentLM(cfg)
    width = cfg.lm.width
    core = make_layers(LMConfig(**(asdict(cfg.lm) | {"depth": cfg.core})), cond_dim=width)
    shared = TokenSpace(cfg.lm.vocab_size, width)
    return DiffusionBlocks(core, shared, lambda: LatentAdapter(cfg, width), 1, cond_dim=width,
                           noise=cfg.noise, checkpointing=cfg.checkpointing)


def make_strategy(model: nn.Module, cfg: RecurrentConfig):
    return Unrolled(model, cfg) if cfg.mode == "baseline" else OnePass(model, cfg)


def inference_layer_evals(cfg: RecurrentConfig, k: int) -> int:
    """Layer evaluations per generated token at K = k. The baseline: prelude, k core passes,
    coda. DiffusionBlocks: the prelude once (it does not depend on σ), then k denoiser calls
    (the k grid points' Euler steps and the final read-out), each a core pass and the coda."""
    if cfg.mode == "baseline":
        return cfg.prelude + k * cfg.core + cfg.coda
    return cfg.prelude + k * (cfg.core + cfg.coda)


def training_layer_evals(cfg: RecurrentConfig, steps: int, device: torch.device | str = "cpu") -> dict:
    """Forward and backward layer evaluations of ``steps`` training steps. DiffusionBlocks runs
    prelude, core and coda once each way. The baseline's depths are replayed from the step
    generators (as drawn in training); its backward covers the coda, the last
    ``backprop_depth`` core passes and the prelude (injected into each of them)."""
    if cfg.mode == "dblocks":
        return {"forward": steps * cfg.layers_per_pass, "backward": steps * cfg.layers_per_pass}
    depths = [draw_depth(cfg.mean_depth, step_generator(cfg.seed, t, device)) for t in range(steps)]
    return {"forward": sum(cfg.prelude + cfg.core * d + cfg.coda for d in depths),
            "backward": sum(cfg.prelude + cfg.core * min(d, cfg.backprop_depth) + cfg.coda for d in depths)}


def with_depth(model: nn.Module, cfg: RecurrentConfig, k: int) -> RecurrentConfig:
    """``cfg`` with K = k at inference (and the baseline model set to run k iterations)."""
    if isinstance(model, RecurrentLM):
        model.depth = k
    return variant(cfg, depth_k=k)


# --- training and evaluation -------------------------------------------------------------------


def train(cfg: RecurrentConfig, data: TextData | None = None, show: bool = True, evaluate: bool = True,
          judges: dict[str, nn.Module] | None = None) -> dict:
    """Train one mode (resuming from OUT/checkpoint), then score it, sweep K and sample."""
    data = data or load_data(cfg)
    cfg = RecurrentConfig.from_dict(resolved(cfg, data))
    device = resolve_device(cfg.device)
    model = build(cfg).to(device)
    strategy = make_strategy(model, cfg)
    parts = model.parts() if isinstance(model, DiffusionBlocks) else {"model": model}
    train_windows = Windows(data.train, cfg.batch_size, cfg.lm.context + 1, cfg.seed, device)
    val = ar.test_windows(data.val, cfg.lm.context)[:64]

    def batch_at(t: int) -> tuple[Tensor, Tensor]:
        w = train_windows(t)
        return w[:, :-1], w[:, 1:]

    def on_eval(p) -> dict:
        return per_character({f"val_{k}": v for k, v in ar.scores(model, val, cfg).items()}, data, "val",
                             "val_test_bpc")

    run = Run(parts, batch_at, on_eval, RESUMABLE, desc=f"recurrent {cfg.mode}")
    progress, history, step_times = train_run(cfg, run, Method(strategy, cfg.steps, cfg.optim.warmup),
                                              show=show)
    x, y = batch_at(0)
    if isinstance(model, DiffusionBlocks):
        act = activation_bytes(lambda: blockwise_loss(model, x, y, 0, torch.Generator()), model)
    else:  # at the mean depth, as trained: the last backprop_depth iterations keep activations
        depth, tracked = cfg.mean_depth, cfg.backprop_depth
        act = activation_bytes(lambda: next_token_loss(model(x, depth, tracked), y), model)
    result = {
        "task": "recurrent", "mode": cfg.mode, "data": cfg.data, "steps": cfg.steps,
        **run_summary(progress, history, step_times, model, device),
        "layer_evals_per_step": progress.layer_evals / cfg.steps,
        "activation_bytes_per_step": act, "activation_mib": act / 2**20, "depth_k": cfg.depth_k,
        "train_layer_evals": (passes := training_layer_evals(cfg, progress.step, device)),
        "train_layer_evals_fwd_bwd_per_step": sum(passes.values()) / max(1, progress.step),
    }
    if evaluate:
        result |= evaluate_model(model, cfg, data, Path(cfg.out), judges)
    (Path(cfg.out) / "result.json").write_text(json.dumps(result, indent=2))
    return result


def evaluate_model(model: nn.Module, cfg: RecurrentConfig, data: TextData, out: Path,
                   judges: dict[str, nn.Module] | None = None) -> dict:
    """The autoregressive family's metrics at K = ``depth_k`` (every test character), the same
    scores for each K of ``k_sweep`` on the first 16k test characters, and samples, judged as
    :func:`.ar.evaluate_model` judges them."""
    pieces = ar.test_windows(data.test, cfg.lm.context)
    result = per_character(ar.scores(model, pieces, cfg), data)
    sweep = {}
    for k in cfg.k_sweep:
        sweep[k] = per_character(ar.scores(model, pieces[:128], with_depth(model, cfg, k)), data)
        sweep[k]["layer_evals_per_token"] = inference_layer_evals(cfg, k)
    with_depth(model, cfg, cfg.depth_k)
    result["k_sweep"] = sweep
    result["layer_evals_per_token"] = inference_layer_evals(cfg, cfg.depth_k)
    gen = torch.Generator().manual_seed(cfg.seed + 2024)
    prompts = ar.prompts(data, cfg).repeat_interleave(cfg.continuations, dim=0)
    ids = generate(model, cfg, prompts.to(next(model.parameters()).device), cfg.sample_length, gen,
                   cfg.temperature).cpu()
    result["samples"] = ar.write_samples(ids, cfg, data, out / "samples.txt")
    judges = ar._with_self(model, judges)
    return result | judged(ids, ar.real_continuations(data, cfg), cfg.prompt_length, judges, data)


@torch.no_grad()
def generate(model: nn.Module, cfg: RecurrentConfig, prompt: Tensor, new: int, gen: torch.Generator,
             temperature: float = 1.0) -> Tensor:
    """``prompt`` (N, P) followed by ``new`` tokens, each read at the last position of the
    window (the last ``context`` tokens) after K core iterations over the whole window; as in
    :func:`.ar.generate`, DiffusionBlocks' draw is its start noise and the token its argmax."""
    if not isinstance(model, DiffusionBlocks):
        return ar.generate(model, cfg, prompt, new, gen, temperature)
    model.eval()
    ids = prompt
    for _ in range(new):
        logits = ar.predict(model, ids[:, -cfg.lm.context :], cfg, gen, temperature)[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def load(path: str | Path, device: str = "cpu", averaged: bool = True) -> tuple[nn.Module, RecurrentConfig]:
    """A trained model and its config from a checkpoint directory."""
    return checkpoint.load_model(path, RecurrentConfig.from_dict, build, resolve_device(device), averaged,
                                 task="recurrent")


def seconds_per_step(cfg: RecurrentConfig, data: TextData, steps: int = 12) -> float:
    """Mean time of a training step of ``cfg.mode`` (a throwaway model, after 3 untimed)."""
    cfg = RecurrentConfig.from_dict(resolved(cfg, data))
    model = build(cfg).to(resolve_device(cfg.device))
    strategy = make_strategy(model, cfg)
    device = next(model.parameters()).device
    windows = Windows(data.train, cfg.batch_size, cfg.lm.context + 1, cfg.seed, device)
    times = []
    for t in range(steps + 3):
        w = windows(t)
        start = time.perf_counter()
        strategy.step(w[:, :-1], w[:, 1:], step_generator(cfg.seed, t, device))
        times.append(time.perf_counter() - start)
    return statistics.mean(times[3:])  # the baseline's depth varies step to step


def variant(cfg: RecurrentConfig, **changes) -> RecurrentConfig:
    return RecurrentConfig.from_dict(cfg.to_dict() | changes)


def compare(cfg: RecurrentConfig, out: Path, quick: bool = False, show: bool = True) -> str:
    """The baseline for ``steps``, then DiffusionBlocks for the steps that take the same
    wall-clock time (step times measured side by side first); samples are scored by the
    independent judge and by the baseline."""
    if quick:
        cfg = variant(cfg, steps=20, evals=1, num_samples=4, sample_length=8, k_sweep=[1, 2],
                      judge_steps=min(cfg.judge_steps, 30))
    data = load_data(cfg)
    judge, about = independent_judge(data, RecurrentConfig.from_dict(resolved(cfg, data)), show)
    baseline_step, dblocks_step = (seconds_per_step(variant(cfg, mode=m), data) for m in MODES)
    ratio = baseline_step / dblocks_step
    base = variant(cfg, mode="baseline", out=str(out / "baseline"))
    results = {"baseline": train(base, data, show=show, judges=judge)}
    rival, _ = load(Path(base.out) / "checkpoint", base.device)
    run = variant(cfg, mode="dblocks", steps=max(1, round(cfg.steps * ratio)), out=str(out / "dblocks"))
    results["dblocks"] = train(run, data, show=show, judges=judge | {"e2e_judge": rival})
    for r in results.values():
        r["step_time_ratio"] = ratio
    plot_sweep(results, out / "quality_vs_layer_evals.png")
    table = write_comparison(out, results, ROWS, judge=about)
    sweep = ("\nQuality against inference compute (first 16k test characters; DiffusionBlocks runs "
             "its prelude once per sequence):\n\n" + sweep_table(results))
    with open(out / "report.md", "a") as report:
        report.write(sweep)
    return table + sweep


def _sweep(result: dict) -> dict[int, dict]:
    return {int(k): v for k, v in sorted(result.get("k_sweep", {}).items(), key=lambda kv: int(kv[0]))}


def _accuracy_key(mode: str) -> str:
    return "next_char_accuracy" if mode == "baseline" else "teacher_forced_accuracy"


def sweep_table(results: dict[str, dict]) -> str:
    """Markdown: quality against inference layer evaluations per generated token, every K of
    the sweep for both models."""
    lines = ["| model | K | layer evals / token | accuracy, greedy | sampled accuracy | BPC |",
             "|---|---|---|---|---|---|"]
    for mode, r in results.items():
        for k, s in _sweep(r).items():
            bpc = f"{s['test_bpc']:.3f}" if "test_bpc" in s else "—"
            lines.append(f"| {mode} | {k} | {s['layer_evals_per_token']} | {s[_accuracy_key(mode)]:.4f} | "
                         f"{s['sampled_accuracy']:.4f} | {bpc} |")
    return "\n".join(lines) + "\n"


def plot_sweep(results: dict[str, dict], path: Path) -> None:
    """Accuracy against inference layer evaluations per generated token, for both models:
    greedy (solid) and of a draw (dashed), one point per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for mode, r in results.items():
        sweep, key = _sweep(r), _accuracy_key(mode)
        cost = [s["layer_evals_per_token"] for s in sweep.values()]
        (line,) = ax.plot(cost, [s[key] for s in sweep.values()], marker="o",
                          label=f"{mode} ({key.replace('_', ' ')})")
        ax.plot(cost, [s["sampled_accuracy"] for s in sweep.values()], marker="o", linestyle="--",
                color=line.get_color(), label=f"{mode} (sampled accuracy)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("layer evaluations per generated token (inference)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


ROWS = [  # (label, result key, format) of report.md
    ("test BPC (baseline)", "test_bpc", ".3f"),
    ("next-token accuracy (baseline)", "next_char_accuracy", ".4f"),
    ("teacher-forced accuracy, greedy (dblocks)", "teacher_forced_accuracy", ".4f"),
    ("sampled accuracy (temperature 1)", "sampled_accuracy", ".4f"),
    ("judge BPC of samples (independent judge)", "judge_bpc", ".3f"),
    ("MAUVE vs the real continuations (independent judge's features, 10 k-means seeds)", "mauve", ".3f"),
    ("MAUVE, sd over the 10 k-means seeds", "mauve_sd", ".3f"),
    ("judge BPC of samples (the baseline as judge)", "e2e_judge_bpc", ".3f"),
    ("training steps", "steps", "d"),
    ("layer evaluations per step (forward)", "layer_evals_per_step", ".1f"),
    ("layer evaluations per step (forward + backward)", "train_layer_evals_fwd_bwd_per_step", ".1f"),
    ("layer evaluations per generated token (at depth_k)", "layer_evals_per_token", "d"),
    ("train seconds", "train_seconds", ".0f"),
    ("seconds / step", "step_seconds", ".4f"),
    ("activation MiB / step", "activation_mib", ".1f"),
    ("parameters", "parameters", "d"),
]
