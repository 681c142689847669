"""Class-conditional image generation with a DiT, end to end or as DiffusionBlocks (METHOD.md §9).

The target y is the image itself, in [-1, 1]; the conditioning input x is its class label,
replaced by the null class with probability ``class_dropout`` in training so that one model
gives both terms of classifier-free guidance. End to end is plain EDM training of the whole DiT,
which is DiffusionBlocks with B = 1 (one block, the whole noise range); DiffusionBlocks cuts the
same layers into B blocks. Sampling runs the probability-flow ODE, each step through the block
that owns its σ, so a step costs L/B layers.

Quality is a Fréchet distance in the features of a small CNN trained on the dataset (cached,
its test accuracy reported), against the train and the test split, and the accuracy with which
that CNN recognizes the requested class in the samples.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from .. import checkpoint, methods, parallel
from ..blocks import DiffusionBlocks, SharedParts, split_layers
from ..checks import (
    check_at_least_one,
    check_block_job,
    check_choice,
    check_device_name,
    check_numbers,
    config_from_dict,
    resolve_device,
)
from ..data.images import Batches, ImageData, check_dataset, dataset_kind, load_images
from ..models.dit import DiTAdapter, DiTConfig, make_layers
from ..noise import GRIDS, NoiseConfig, loss_weight, sample_sigma
from ..offload import OFFLOAD_TARGETS
from ..runs import Run, run_summary, train_run
from ..sampling import SAMPLERS, Denoiser, initial_noise
from ..training import (
    OptimConfig,
    block_losses,
    blockwise_activation_bytes,
    blockwise_loss,
)

MODES = ("e2e", "dblocks", "shallow")  # methods.ABOUT says what each trains
# Per-dataset defaults: patch size and end-to-end training steps at batch 64.
DATASET_DEFAULTS = {
    "digits": {"patch_size": 2, "steps": 1500},
    "mnist": {"patch_size": 4, "steps": 12000},
    "fashion_mnist": {"patch_size": 4, "steps": 12000},
    "cifar10": {"patch_size": 4, "steps": 20000},
    "cifar100": {"patch_size": 4, "steps": 20000},
    "tinyimagenet": {"patch_size": 8, "steps": 20000},
    "folder": {"patch_size": 8, "steps": 20000},
    "cifar10_exact": {"patch_size": 4, "steps": 4000},
}


@dataclass
class GenerateConfig:
    """One generation run. ``steps`` is the end-to-end budget; DiffusionBlocks gets the same
    number of layer evaluations (B× the steps) unless ``match='steps'``."""

    mode: str = "dblocks"
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None  # image folders: resized to this (default 64)
    blocks: int = 3
    split: list[int] | None = None
    patch_size: int | None = None
    steps: int | None = None
    match: str = "layers"
    batch_size: int = 64
    seed: int = 0
    sampler: str = "euler"
    grid: str = "equiprob"  # the paper's: each block an equal share of the steps (Karras: 34/4/12)
    sample_steps: int = 50
    guidance: float = 2.0
    num_samples: int = 5000
    feature_steps: int = 1400  # 3 epochs of MNIST
    evals: int = 5
    device: str = "auto"
    checkpointing: bool = False
    tensorboard: bool = False  # also log to OUT/tensorboard
    offload: str | None = None
    block: int | None = None  # train only this block (a block job; `merge` assembles them)
    parallel: bool = False  # one torchrun rank of a block-parallel run
    out: str = "runs/generate"
    dit: DiTConfig = field(default_factory=DiTConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # the paper's equi-probability partition
    # weights averaged with decay 0.999 (EDM, DiT): samples and FID come from the average
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0, ema=0.999))

    def __post_init__(self) -> None:
        check_numbers(self)
        check_dataset(self.dataset)
        check_choice("mode", self.mode, MODES)
        check_at_least_one(self, ("steps", "batch_size", "evals", "num_samples", "sample_steps", "image_size",
                                  "feature_steps", "patch_size"))
        if self.guidance < 0:
            raise ValueError(f"guidance scale must be ≥ 0 (1: conditional, 0: unconditional), "
                             f"got {self.guidance}")
        check_device_name(self.device)
        if self.mode != "e2e":  # the shallow control is one block's depth
            split_layers(self.dit.depth, self.blocks, self.split)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("grid", self.grid, GRIDS)
        check_choice("budget match", self.match, ("layers", "steps"))
        if self.offload is not None:
            check_choice("offload target", self.offload, OFFLOAD_TARGETS)
            if self.mode != "dblocks":
                raise ValueError("offload keeps inactive blocks off the device: it needs --mode dblocks")
        check_block_job(self)

    @property
    def num_blocks(self) -> int:
        """B of the model: 1 end to end (the whole network is one denoiser)."""
        return self.blocks if self.mode == "dblocks" else 1

    def to_dict(self) -> dict:
        return {"task": "generate", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> GenerateConfig:
        return config_from_dict(cls, d, {"dit": DiTConfig, "noise": NoiseConfig, "optim": OptimConfig})


# Fields a resumed run may change (inference and bookkeeping); everything else must match.
RESUMABLE = {"steps", "evals", "device", "out", "data_dir", "sampler", "grid", "sample_steps",
             "guidance", "num_samples", "feature_steps", "checkpointing", "tensorboard", "offload"}
MERGEABLE = RESUMABLE | {"block", "parallel"}  # block jobs that may be merged into one model


def load_data(cfg: GenerateConfig) -> ImageData:
    return load_images(cfg.dataset, cfg.data_dir, scaling="symmetric", size=cfg.image_size)


def resolve_config(cfg: GenerateConfig, data: ImageData) -> GenerateConfig:
    """Fill in what the data decides: image shape, classes, patch size and step defaults."""
    channels, size, _ = data.shape
    defaults = DATASET_DEFAULTS[dataset_kind(cfg.dataset)]
    patch = defaults["patch_size"] if cfg.patch_size is None else cfg.patch_size
    dit = asdict(cfg.dit) | {"image_size": size, "channels": channels, "patch_size": patch,
                             "num_classes": data.num_classes}
    steps = defaults["steps"] if cfg.steps is None else cfg.steps
    return GenerateConfig.from_dict(asdict(cfg) | {"dit": dit, "patch_size": patch, "steps": steps})


class PixelSpace(SharedParts):
    """The image itself as the target, squared error averaged over pixels (so one example's loss
    reads like EDM's per-pixel loss whatever the resolution). Nothing to share: no parameters."""

    def example_loss(self, denoised: Tensor, y: Tensor) -> Tensor:
        return (denoised - y).flatten(1).pow(2).mean(1)


def build(cfg: GenerateConfig) -> DiffusionBlocks:
    """The DiT of ``cfg``, as B blocks (one block end to end), initialized from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return DiffusionBlocks(
        make_layers(cfg.dit), PixelSpace(), lambda: DiTAdapter(cfg.dit), cfg.num_blocks,
        cond_dim=cfg.dit.width, noise=cfg.noise, split=cfg.split if cfg.mode == "dblocks" else None,
        checkpointing=cfg.checkpointing,
    )


def training_batches(cfg: GenerateConfig, data: ImageData, device: torch.device, seed: int | None = None,
                     size: int | None = None):
    """Step t's batch as (labels, images), each label dropped to the null class with
    probability ``class_dropout`` (classifier-free guidance), reproducibly per step from
    ``seed`` (default: the run's); ``size`` examples (default: the run's batch)."""
    seed = cfg.seed if seed is None else seed
    batches = Batches(data.x_train, data.y_train, size or cfg.batch_size, seed, device)

    def batch_at(t: int) -> tuple[Tensor, Tensor]:
        images, labels = batches(t)
        g = torch.Generator(labels.device).manual_seed(seed * 7_919 + t + 1)
        drop = torch.rand(len(labels), generator=g, device=labels.device) < cfg.dit.class_dropout
        return labels.masked_fill(drop, cfg.dit.null_class), images

    return batch_at


# --- sampling --------------------------------------------------------------------------------


def guided(model: DiffusionBlocks, labels: Tensor, scale: float, null_class: int) -> Denoiser:
    """Classifier-free guidance: D = D(z | ∅) + s·(D(z | y) − D(z | ∅)); s = 1 is conditional."""
    if scale == 1:
        return lambda z, sigma: model.denoise(z, sigma, labels)
    null = torch.full_like(labels, null_class)

    def denoiser(z: Tensor, sigma: Tensor) -> Tensor:
        cond, uncond = model.denoise(torch.cat([z, z]), sigma, torch.cat([labels, null])).chunk(2)
        return uncond + scale * (cond - uncond)

    return denoiser


def sigma_grid(cfg: GenerateConfig) -> Tensor:
    """``sample_steps`` + 1 noise levels from σ_max to σ_min: one step between neighbours."""
    return GRIDS[cfg.grid](cfg.noise, cfg.sample_steps + 1)


def counted(model: DiffusionBlocks, denoiser: Denoiser, calls: list[int]) -> Denoiser:
    """``denoiser`` that appends the block each call runs to ``calls``."""
    def wrapped(z: Tensor, sigma: Tensor) -> Tensor:
        calls.append(model.route(float(sigma)))
        return denoiser(z, sigma)
    return wrapped


@torch.no_grad()
def sample(
    model: DiffusionBlocks, labels: Tensor, cfg: GenerateConfig, generator: torch.Generator | None = None,
    calls: list[int] | None = None,
) -> Tensor:
    """Images of the given classes, in [-1, 1]: the ODE from σ_max down to σ_min."""
    c, size = cfg.dit.channels, cfg.dit.image_size
    z = initial_noise((len(labels), c, size, size), cfg.noise.sigma_max, generator, labels.device)
    denoiser = guided(model, labels, cfg.guidance, cfg.dit.null_class)
    if calls is not None:
        denoiser = counted(model, denoiser, calls)
    return SAMPLERS[cfg.sampler](denoiser, z, sigma_grid(cfg)).clamp(-1, 1)


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """n labels cycling through the classes: as equal a share of each as n allows."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def generate_set(model: DiffusionBlocks, cfg: GenerateConfig, n: int, batch: int = 500,
                 show: bool = False) -> tuple[Tensor, Tensor, dict]:
    """n class-balanced samples, their labels, and the sampling cost (seconds per image,
    layer evaluations per sample)."""
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    labels = balanced_labels(n, cfg.dit.num_classes)
    gen = torch.Generator().manual_seed(cfg.seed + 2024)
    images, calls, seconds = [], [], 0.0
    for i in tqdm(range(0, n, batch), desc=f"sample {cfg.mode}", disable=not show, dynamic_ncols=True):
        start = time.perf_counter()
        images.append(sample(model, labels[i : i + batch].to(device), cfg, gen, calls).cpu())
        seconds += time.perf_counter() - start
    per_batch = calls[: len(calls) // len(images)]  # every batch walks the same grid
    passes = 1 if cfg.guidance == 1 else 2  # guidance runs the block on the null class too
    cost = {"sample_seconds_per_image": seconds / n,
            "layer_evals_per_sample": passes * sum(model.sizes[b] for b in per_batch),
            "denoiser_calls_per_sample": len(per_batch), "num_samples": n}
    return torch.cat(images), labels, cost


def save_grid(images: Tensor, path: Path, rows: int) -> None:
    """A PNG of ``images`` in ``rows`` rows (one per class for :func:`balanced_labels` order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = len(images) // rows
    # balanced_labels cycles classes, so image k·rows + r has class r: row r gathers class r.
    grid = images[: rows * per_row].view(per_row, rows, *images.shape[1:]).transpose(0, 1)
    c, h, w = images.shape[1:]
    tiled = grid.permute(0, 3, 1, 4, 2).reshape(rows * h, per_row * w, c)
    tiled = ((tiled + 1) / 2).clamp(0, 1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, tiled[..., 0] if c == 1 else tiled, cmap="gray" if c == 1 else None)


# --- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def test_loss(model: DiffusionBlocks, images: Tensor, labels: Tensor, seed: int = 0) -> float:
    """Mean weighted denoising loss on held-out images, σ from the whole training law and each
    example through the block that owns its σ: the EDM training objective of the whole chain."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    noise = model.noise
    sigma = sample_sigma(noise, len(images), noise.sigma_min, noise.sigma_max, gen)
    eps = torch.randn(images.shape, generator=gen)
    owner = torch.tensor([model.route(s) for s in sigma.tolist()])
    total = 0.0
    for b in owner.unique().tolist():
        idx = (owner == b).nonzero().flatten()
        y, s = images[idx].to(device), sigma[idx].to(device)
        z = y + s.view(-1, 1, 1, 1) * eps[idx].to(device)
        denoised = model.denoise(z, s, labels[idx].to(device), block=b)
        weight = loss_weight(s, noise.sigma_data, noise.max_weight)
        total += (weight * model.shared.example_loss(denoised, y)).sum().item()
    model.train(was_training)
    return total / len(images)


def quality(images: Tensor, labels: Tensor, data: ImageData, cfg: GenerateConfig, cache_dir=None,
            show: bool = False, inception_weights: str | Path | None = None) -> dict:
    """FID against the train and test splits and class accuracy, in the features of the
    dataset's cached CNN (its own test accuracy reported beside them). With
    ``inception_weights`` (a local torch-fidelity Inception-v3 file) the FIDs also come in
    Inception features, as ``fid_train_inception`` and ``fid_test_inception``."""
    from ..metrics.fid import classify, feature_net, frechet_distance, inception_extractor, stats_of

    epochs = max(1, math.ceil(cfg.feature_steps * 128 / len(data.y_train)))
    net, net_accuracy = feature_net(cfg.dataset, data.x_train, data.y_train, data.x_test,
                                    data.y_test, cache_dir=cache_dir, epochs=epochs, show=show)
    result = {"class_accuracy": (classify(net, images) == labels).float().mean().item(),
              "feature_net_test_accuracy": net_accuracy}
    extractors = {"": net}
    if inception_weights is not None:
        extractors["_inception"] = inception_extractor(inception_weights)
    for suffix, extractor in extractors.items():
        fake = stats_of(extractor, images)
        for split, real in (("train", data.x_train), ("test", data.x_test)):
            result[f"fid_{split}{suffix}"] = frechet_distance(*fake, *stats_of(extractor, real))
    return result


# --- training ----------------------------------------------------------------------------------


def measure_activations(model: DiffusionBlocks, batch: tuple[Tensor, Tensor],
                        cfg: GenerateConfig | None = None, blocks: list[int] | None = None) -> dict:
    """Activation bytes saved for backward in one training step (mean over the trained blocks).
    ``cfg`` is unused: the signature is classify's, so that ``bench`` can call either."""
    return blockwise_activation_bytes(model, *batch, blocks)


def train(cfg: GenerateConfig, data: ImageData | None = None, show: bool = True,
          evaluate: bool = True) -> dict:
    """Train one mode (a method: :data:`MODES`; :func:`train_network` trains e2e and dblocks)."""
    return methods.train(FAMILY, cfg, data, show, evaluate=evaluate)


def train_network(cfg: GenerateConfig, data: ImageData | None = None, show: bool = True,
                  evaluate: bool = True) -> dict:
    """Train one network (resuming from OUT/checkpoint), then sample and measure its quality.

    With ``cfg.block`` only that block trains (an independent job; :func:`merge` assembles the
    jobs); with ``cfg.parallel`` this is one torchrun rank of a block-parallel run (its group
    writes OUT/group_g; rank 0 merges them into OUT/checkpoint and measures the whole model).
    """
    data = data or load_data(cfg)
    cfg = resolve_config(cfg, data)
    job, device, out, model, method = methods.place(FAMILY, cfg, cfg.num_blocks)
    parallel.distribute(job, model, method.strategy, None, False, 1, device)  # pixels: nothing shared trains
    batch_at = training_batches(cfg, data, device, cfg.seed + job.seed_offset, job.batch(cfg.batch_size))
    held_out = data.x_test[:1000], data.y_test[:1000]

    def on_eval(p) -> dict:
        if job.blocks is None:
            return {"test_loss": test_loss(model, *held_out, seed=cfg.seed)}
        labels, images = held_out[1][:256].to(device), held_out[0][:256].to(device)
        return {"block_test_loss": block_losses(blockwise_loss, model, labels, images, job.blocks, cfg.seed)}

    run = Run(checkpoint.stored_parts(model, job.blocks), batch_at, on_eval, RESUMABLE,
              desc=f"{cfg.mode} {cfg.dataset}")
    progress, history, step_times = train_run(cfg, run, method, job, show)
    activations = measure_activations(model, batch_at(0), blocks=job.blocks)
    result = {
        "mode": cfg.mode, "dataset": cfg.dataset, "blocks": cfg.num_blocks, "trained_blocks": job.blocks,
        "steps": method.total, **run_summary(progress, history, step_times, model, device),
        "activation_bytes_per_step": activations["activation_bytes_per_step"],
        "sampler": cfg.sampler, "grid": cfg.grid, "sample_steps": cfg.sample_steps,
        "guidance": cfg.guidance,
    }
    score = (lambda m, c: evaluate_model(m, c, data, Path(cfg.out), show)) if evaluate else None
    return parallel.conclude(cfg, job, result, model, score, partial(load, device=str(device)),
                             partial(merge, fresh=False))


def merge(sources: list[str | Path], out: str | Path, average_shared: bool = False,
          fresh: bool = True) -> Path:
    """Assemble generation block checkpoints into one model at OUT/checkpoint
    (:func:`.methods.merge`)."""
    return methods.merge(FAMILY, sources, out, average_shared, fresh)


def evaluate_model(model: DiffusionBlocks, cfg: GenerateConfig, data: ImageData, out: Path,
                   show: bool = False, inception_weights: str | Path | None = None) -> dict:
    """Sample ``num_samples`` images, measure FID, class accuracy and cost; save a grid."""
    images, labels, cost = generate_set(model, cfg, cfg.num_samples, show=show)
    save_grid(images[: 10 * cfg.dit.num_classes], out / "samples.png", rows=cfg.dit.num_classes)
    return cost | quality(images, labels, data, cfg, show=show, inception_weights=inception_weights)


def load(path: str | Path, device: str = "cpu",
         averaged: bool = True) -> tuple[DiffusionBlocks, GenerateConfig]:
    """A trained model and its config from a checkpoint directory."""
    return checkpoint.load_model(path, GenerateConfig.from_dict, build, resolve_device(device), averaged,
                                 task="generate")


# --- side by side ------------------------------------------------------------------------------


def report_table(results: dict[str, dict]) -> str:
    """Markdown table of a generation comparison, plus the ratios that matter."""
    from ..report import human_bytes, markdown_table

    header = ["mode", "blocks", "FID train", "FID test", "class acc.", "train time (s)", "s / step",
              "layer evals (train)", "s / image (sampling)", "layer evals / sample", "parameters",
              "activations / step"]
    rows = [[mode, str(r["blocks"]), f"{r['fid_train']:.2f}", f"{r['fid_test']:.2f}",
             f"{100 * r['class_accuracy']:.1f}%", f"{r['train_seconds']:.0f}",
             f"{r['step_seconds'] * 1000:.1f} ms", f"{r['layer_evals']:,}",
             f"{r['sample_seconds_per_image'] * 1000:.2f} ms", f"{r['layer_evals_per_sample']:,}",
             f"{r['parameters']:,}", human_bytes(r["activation_bytes_per_step"])]
            for mode, r in results.items()]
    table = markdown_table(rows, header)
    if "shallow" in results and "dblocks" in results:
        s, d = results["shallow"], results["dblocks"]
        table += (f"\nDiffusionBlocks against the shallow control ({s['depth']} layers, "
                  f"{s['layer_evals_per_sample']:,} layer evaluations per sample as DiffusionBlocks' "
                  f"{d['layer_evals_per_sample']:,}): FID test {d['fid_test']:.2f} vs {s['fid_test']:.2f} "
                  f"({'ahead' if d['fid_test'] < s['fid_test'] else 'behind'}).\n")
    if not {"e2e", "dblocks"} <= results.keys():
        return table
    e, d = results["e2e"], results["dblocks"]
    table += (
        f"\n{e['num_samples']:,} samples each ({e['sampler']}, {e['sample_steps']} steps, {e['grid']} grid, "
        f"guidance {e['guidance']}); features: a CNN with {100 * e['feature_net_test_accuracy']:.2f}% "
        f"test accuracy. FID dblocks / e2e: {d['fid_test'] / e['fid_test']:.3f} (test), "
        f"{d['fid_train'] / e['fid_train']:.3f} (train). Sampling time per image, e2e / dblocks: "
        f"{e['sample_seconds_per_image'] / d['sample_seconds_per_image']:.2f}× (B = {d['blocks']}). "
        f"Activation memory per step, e2e / dblocks: "
        f"{e['activation_bytes_per_step'] / d['activation_bytes_per_step']:.2f}×.\n"
    )
    return table


def plot_history(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for mode, r in results.items():
        h = r["history"]
        ax.plot([p["layer_evals"] for p in h], [p["test_loss"] for p in h], marker="o", ms=3,
                label=f"{mode} (B={r['blocks']})")
    ax.set_xlabel("layer evaluations (training)")
    ax.set_ylabel("test denoising loss (EDM-weighted)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def compare(cfg: GenerateConfig, out: Path, quick: bool = False, show: bool = True,
            modes: tuple[str, ...] = MODES) -> str:
    """Train ``modes`` (end to end, DiffusionBlocks and the shallow control by default) on the
    same budget, sample each; write OUT/report.{json,md}, a loss plot and each mode's sample
    grid (OUT/MODE/samples.png)."""
    modes = {m: replace(cfg, mode=m, **({} if m == "dblocks" else {"offload": None})) for m in modes}
    data = load_data(cfg)
    if quick:
        modes = {m: replace(c, steps=min(c.steps or 30, 30), evals=1, num_samples=min(c.num_samples, 100),
                            sample_steps=min(c.sample_steps, 12), feature_steps=min(c.feature_steps, 30))
                 for m, c in modes.items()}
    results = {m: train(replace(c, out=str(out / m)), data, show) for m, c in modes.items()}
    return write_comparison(out, results)


def write_comparison(out: Path, results: dict[str, dict]) -> str:
    """OUT/report.{json,md} and OUT/test_loss.png from the two modes' results (the
    ``result.json`` each training run writes); returns the Markdown table."""
    table = report_table(results)
    if not parallel.main_process():  # under torchrun rank 0 writes the report
        return table
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    e, d = results["e2e"], results["dblocks"]
    match = "layer evaluations" if e["layer_evals"] == d["layer_evals"] else "steps"
    title = f"{d['dataset']}: end to end vs DiffusionBlocks (B={d['blocks']}), equal {match}"
    (out / "report.md").write_text(f"# {title}\n\n{table}")
    plot_history(results, out / "test_loss.png")
    return table


FAMILY = methods.Family(
    name="generate", config=GenerateConfig, model="dit", train=train_network, build=build,
    resolve=resolve_config, load_data=load_data, mergeable=frozenset(MERGEABLE))
