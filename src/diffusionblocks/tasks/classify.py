"""Image classification with a ViT, end to end or as DiffusionBlocks (METHOD.md §6-8).

The target y of DiffusionBlocks is the label's embedding normalized to unit length (as the paper);
the noisy target takes the [CLS] slot of each block's own patch stem.
Logits are read out of D against the same normalized table, and at inference the denoised
estimate is softmax(logits) @ table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checkpoint, methods, parallel
from ..adapters import ImageToLabel
from ..blocks import SHARED_POLICIES, DiffusionBlocks, TokenSpace, split_layers
from ..checks import (
    check_at_least_one,
    check_block_job,
    check_choice,
    check_device_name,
    check_numbers,
    config_from_dict,
)
from ..data.images import (
    Batches,
    ImageData,
    augment,
    check_dataset,
    dataset_kind,
    load_images,
    parse_augment,
)
from ..memory import activation_bytes
from ..methods.ensemble import check as check_ensemble
from ..models.vit import ViTClassifier, ViTConfig, make_layers
from ..noise import GRIDS, NoiseConfig
from ..offload import OFFLOAD_TARGETS
from ..runs import Run, run_summary, side_by_side, train_run
from ..sampling import SAMPLERS, initial_noise
from ..training import (
    OptimConfig,
    Progress,
    blockwise_activation_bytes,
    blockwise_loss,
)

ViTAdapter = ImageToLabel  # its earlier name
MODES = (*methods.NATIVE, *methods.CONTROLS, *methods.PEERS)  # methods.ABOUT says what each trains
COMPARED = ("e2e", "dblocks", "shallow", "ensemble")  # compare's default; peers when asked for
# How the label is decoded: greedy starts the sampler at the noise mean, draw from noise.
DECODES = ("greedy", "draw")
# How the prediction is read from the chain's denoiser calls (see read_out).
READOUTS = ("mean", "last")
# Peak learning rate per mode, each the better of {3e-3, 5e-3} on MNIST at 600 steps (e2e
# 95.05% vs 94.19%; the first block trained alone 87.6% vs 89.9%): AdaLN-Zero blocks start as
# the identity and open their gates faster with the larger rate.
MODE_LR = {"e2e": 3e-3, "dblocks": 5e-3}  # the controls train with e2e's; a peer with its module's LR
# Noise levels of a label (docs/cifar10.md). A unit-length label is hidden from its noisy copy
# above σ ≈ 2 and readable below σ ≈ 0.2: a block trained below that learns mostly to copy the
# label, and the chain's answer is then that of whichever block owns σ ≈ 0.5-2. So the blocks
# share σ ∈ [2, 80] (EDM's σ_min = 0.002 is for images), cut in equal log widths: every block
# learns to classify from the image, and the mean read-out combines them. CIFAR-10, 1,000 steps,
# validation, 2 seeds: 56.97% (σ_min = 1: 56.70%; EDM's range: 53.6%, one seed; end to end
# with 2 layers 56.3%, with 6 layers 58.9%).
PARTITION = "uniform"
SIGMA_MIN = 2.0
# Per-dataset defaults: patch size and end-to-end training steps at batch 128. Digits (the main
# job, four modes): validation accuracy stops rising by step 500 of 1,000 (e2e 99.3%, docs/controls.md).
DATASET_DEFAULTS = {
    "digits": {"patch_size": 2, "steps": 500},
    "mnist": {"patch_size": 4, "steps": 4000},
    "fashion_mnist": {"patch_size": 4, "steps": 4000},
    "cifar10": {"patch_size": 4, "steps": 10000},
    "cifar100": {"patch_size": 4, "steps": 10000},
    "tinyimagenet": {"patch_size": 8, "steps": 10000},
    "folder": {"patch_size": 8, "steps": 10000},
    "cifar10_exact": {"patch_size": 4, "steps": 2000},
}


@dataclass
class ClassifyConfig:
    """One classification run. ``steps`` is the end-to-end budget; DiffusionBlocks gets the
    same number of layer evaluations (B× the steps) unless ``match='steps'``."""

    mode: str = "dblocks"
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None  # image folders: resized to this (default 64)
    blocks: int = 3
    split: list[int] | None = None
    patch_size: int | None = None
    shared_policy: str = "frozen"
    steps: int | None = None
    match: str = "layers"
    batch_size: int = 128
    augment: str = ""
    val_size: int | None = None  # None: a tenth of the training set; 0: no validation split
    seed: int = 0
    sampler: str = "euler"
    decode: str = "greedy"
    readout: str = "mean"
    grid: str = "uniform"  # log-uniform, as the partition: each block gets its share of the steps
    sample_steps: int | None = None
    evals: int = 10
    device: str = "auto"
    checkpointing: bool = False
    tensorboard: bool = False  # also log to OUT/tensorboard
    offload: str | None = None
    block: int | None = None
    member: int | None = None  # ensemble: train only this member (an independent job)
    combine: str = "logprob"  # ensemble: mean log-probability, or "prob": log of the mean probability
    label_error: float = 0.0  # dblocks: chance a training input is centred on a wrong class
    parallel: bool = False
    sync_every: int = 100
    init_from: str | None = None  # an end-to-end checkpoint DiffusionBlocks starts from
    out: str = "runs/classify"
    vit: ViTConfig = field(default_factory=ViTConfig)
    noise: NoiseConfig = field(default_factory=lambda: NoiseConfig(sigma_min=SIGMA_MIN, partition=PARTITION))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=None))  # None: MODE_LR

    def __post_init__(self) -> None:
        check_numbers(self)
        check_dataset(self.dataset)
        check_at_least_one(self, ("steps", "batch_size", "evals", "patch_size", "image_size"))
        if self.val_size is not None and self.val_size < 0:
            raise ValueError(f"val_size must be 0 (no validation split) or more, got {self.val_size}")
        if self.sample_steps is not None and self.sample_steps < 2:
            raise ValueError(f"sample_steps must be at least 2 (σ_max and σ_min), got {self.sample_steps}")
        check_device_name(self.device)
        if self.mode in ("dblocks", "shallow", "ensemble", "local"):  # units of the blocks' depths
            split_layers(self.vit.depth, self.blocks, self.split)
        if self.shared_policy not in SHARED_POLICIES:
            raise ValueError(
                f"unknown shared policy {self.shared_policy!r}; "
                f"choose one of {', '.join(SHARED_POLICIES)}"
            )
        check_choice("mode", self.mode, MODES)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("decode", self.decode, DECODES)
        check_choice("readout", self.readout, READOUTS)
        parse_augment(self.augment)
        check_choice("grid", self.grid, GRIDS)
        check_choice("budget match", self.match, ("layers", "steps"))
        if self.offload is not None:
            check_choice("offload target", self.offload, OFFLOAD_TARGETS)
            if self.mode != "dblocks":
                raise ValueError("offload keeps inactive blocks off the device: it needs --mode dblocks")
        check_block_job(self)
        if self.parallel and methods.peer(self.mode):
            raise ValueError(f"--parallel places DiffusionBlocks' blocks (or an end-to-end model's "
                             f"replicas) on torchrun ranks; --mode {self.mode} trains in one process")
        check_ensemble(self)
        if not 0 <= self.label_error < 1:
            raise ValueError(f"label_error is a probability below 1, got {self.label_error}")
        if self.label_error and self.mode != "dblocks":
            raise ValueError("--label-error changes how DiffusionBlocks' blocks train: it needs "
                             "--mode dblocks")
        if self.init_from and self.mode != "dblocks":
            raise ValueError("--init-from converts an end-to-end model into DiffusionBlocks: it "
                             "needs --mode dblocks")

    def to_dict(self) -> dict:
        """The config as JSON-ready data (``config.json``), with its task named."""
        return {"task": "classify", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> ClassifyConfig:
        """The config of :meth:`to_dict`'s data (a run's ``config.json``)."""
        d = {"val_size": 0, **d}  # a run from before validation splits had none
        return config_from_dict(cls, d, {"vit": ViTConfig, "noise": NoiseConfig, "optim": OptimConfig})


# Fields a resumed run may change; everything else must match the checkpoint.
RESUMABLE = {"steps", "evals", "device", "out", "data_dir", "sampler", "decode", "readout", "grid",
             "sample_steps", "checkpointing", "tensorboard", "offload", "init_from", "combine"}
# Fields block jobs may differ in and still be merged into one model.
MERGEABLE = RESUMABLE | {"block", "parallel"}  # budgets may differ: a block can train longer


class LabelSpace(TokenSpace):
    """The label table shared by all blocks (unit-length embeddings; see :class:`TokenSpace`).

    Unit length hides the label from the noisy input for σ ≳ 0.5, so the first block learns to
    classify from the image over its whole range. (Scaled up to per-coordinate RMS σ_data, the
    label stays readable up to σ ≈ 3 and the first block mostly learns to copy it: MNIST 85.8%
    vs 92.2% halfway through a budget.)
    """


def resolve_config(cfg: ClassifyConfig, data: ImageData) -> ClassifyConfig:
    """Fill in what the data decides: image shape, classes, patch size and step defaults."""
    channels, size, _ = data.shape
    defaults = DATASET_DEFAULTS[dataset_kind(cfg.dataset)]
    patch = defaults["patch_size"] if cfg.patch_size is None else cfg.patch_size
    vit = asdict(cfg.vit) | {"image_size": size, "channels": channels, "patch_size": patch,
                             "num_classes": data.num_classes}
    peer = methods.peer(cfg.mode)
    default = (peer.LR if peer else None) or MODE_LR.get(cfg.mode, MODE_LR["e2e"])
    lr = default if cfg.optim.lr is None else cfg.optim.lr
    optim = asdict(cfg.optim) | {"lr": lr}
    val_size = len(data.y_train) // 10 if cfg.val_size is None else cfg.val_size
    cfg_dict = asdict(cfg) | {"vit": vit, "patch_size": patch, "optim": optim, "val_size": val_size}
    if cfg.steps is None:
        cfg_dict["steps"] = defaults["steps"]
    return ClassifyConfig.from_dict(cfg_dict)


def build(cfg: ClassifyConfig) -> nn.Module:
    """The model of ``cfg.mode``, initialized from ``cfg.seed`` (this seeds torch's global RNG)."""
    torch.manual_seed(cfg.seed)
    if cfg.mode == "e2e":
        return ViTClassifier(cfg.vit, cfg.checkpointing)
    if peer := methods.peer(cfg.mode):  # a peer method builds its own network
        return peer.build(cfg)
    layers = make_layers(cfg.vit, cond_dim=cfg.vit.width)
    shared = LabelSpace(cfg.vit.num_classes, cfg.vit.width)
    return DiffusionBlocks(
        layers, shared, lambda: ImageToLabel(cfg.vit, shared.embed_dim), cfg.blocks,
        cond_dim=cfg.vit.width, noise=cfg.noise, split=cfg.split, shared_policy=cfg.shared_policy,
        checkpointing=cfg.checkpointing,
    )


@torch.no_grad()
def init_from(model: DiffusionBlocks, e2e: ViTClassifier) -> None:
    """Start DiffusionBlocks from a trained end-to-end ViT (pretrained conversion).

    Each block takes a copy of its own layers (made to compute what they did, for any σ: see
    :meth:`TransformerLayer.adopt`), of the patch stem, the [CLS] token and the final norm, and a
    read-out F that, through the label table, gives the head's logits at its σ from the noise
    mean (:meth:`TokenSpace.read_out_of`). The noisy label enters
    with zero weight. So block b starts as the end-to-end model cut to its own layers (stem,
    layers of b, head); fine-tuning teaches it to work without the layers before it.
    """
    def adapter(a: ImageToLabel) -> None:
        a.stem.load_state_dict(e2e.stem.state_dict())
        a.read_in.weight.zero_()
        a.read_in.bias.copy_(e2e.cls[0])
        a.norm.load_state_dict(e2e.norm.state_dict())

    model.adopt(e2e.layers, e2e.head, adapter)


def pretrained(cfg: ClassifyConfig) -> ViTClassifier:
    """The end-to-end model of ``cfg.init_from`` (its weight average when it has one), checked
    to have ``cfg``'s backbone."""
    e2e, e2e_cfg = load(cfg.init_from)
    if e2e_cfg.mode != "e2e":
        raise ValueError(f"--init-from {cfg.init_from} holds a {e2e_cfg.mode} model; it takes an "
                         "end-to-end classification checkpoint (train classify --mode e2e)")
    if e2e_cfg.vit != cfg.vit:
        diff = ", ".join(f"{k}: {v!r} vs {getattr(cfg.vit, k)!r}" for k, v in asdict(e2e_cfg.vit).items()
                         if getattr(cfg.vit, k) != v)
        raise ValueError(f"--init-from {cfg.init_from} has another backbone ({diff}); give this run "
                         "the same model flags")
    return e2e


def wrong_estimate_loss(p: float, model: DiffusionBlocks, x: Tensor, y: Tensor, block: int,
                        gen: torch.Generator) -> Tensor:
    """The blocks' loss with the noisy label centred, with probability ``p``, on a uniformly
    drawn wrong class: a block learns to correct an estimate, not to copy it (built from the
    data alone, so blocks stay independent). The target stays the true label."""
    classes = model.shared.table.num_embeddings
    draw = dict(generator=gen, device=gen.device)
    wrong = torch.rand(y.shape, **draw).to(y.device) < p
    other = (y + torch.randint(1, classes, y.shape, **draw).to(y.device)) % classes
    centre = model.shared.target(torch.where(wrong, other, y))
    return blockwise_loss(model, x, y, block, gen, centre=centre)


def block_loss(cfg: ClassifyConfig):
    """How one block trains, when not by the blocks' own loss: ``--label-error`` (else None)."""
    return partial(wrong_estimate_loss, cfg.label_error) if cfg.label_error else None


def sigma_grid(cfg: ClassifyConfig) -> Tensor:
    """The inference grid: by default B points, one denoiser call per block."""
    n = max(cfg.blocks, 2) if cfg.sample_steps is None else cfg.sample_steps
    return GRIDS[cfg.grid](cfg.noise, n)


def initial_state(shape: tuple[int, ...], cfg: ClassifyConfig, generator=None, device=None) -> Tensor:
    """The sampler's start at σ_max. ``greedy``: the noise's mean (z = 0), one deterministic
    path, the counterpart of an argmax. ``draw``: z ~ N(0, σ_max² I), which the deterministic
    sampler turns into a draw from the model: its argmax is right about as often as the model
    gives the right label probability mass (CIFAR-10, one checkpoint: 61.1% greedy, 55.3% draw)."""
    if cfg.decode == "greedy":
        return torch.zeros(shape, device=device)
    return initial_noise(shape, cfg.noise.sigma_max, generator, device)


@torch.no_grad()
def trace(model: DiffusionBlocks, x: Tensor, cfg: ClassifyConfig, generator=None) -> list[tuple[int, Tensor]]:
    """Every denoiser call of the inference chain, in order: (block, logits read out of its D).
    The last is the final call at σ_min, whose logits are the prediction."""
    shared, calls = model.shared, []

    def denoiser(z: Tensor, sigma) -> Tensor:
        logits = shared.logits(model.denoise(z, float(sigma), x))
        calls.append((model.route(sigma), logits))
        return logits.softmax(-1) @ shared.embeddings()  # shared.estimate of the same D

    sigmas = sigma_grid(cfg)
    z = initial_state((x.shape[0], shared.embed_dim), cfg, generator, x.device)
    denoiser(SAMPLERS[cfg.sampler](denoiser, z, sigmas), sigmas[-1])
    return calls


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, cfg: ClassifyConfig, generator=None) -> Tensor:
    """Logits for a batch. DiffusionBlocks: run the label embedding from σ_max to σ_min, block
    by block (greedy by default, see :func:`initial_state`), and read the prediction out of the
    denoiser calls (:func:`read_out`)."""
    if isinstance(model, DiffusionBlocks):  # whichever method built it
        return read_out(trace(model, x, cfg, generator), cfg)
    if peer := methods.peer(cfg.mode):
        return peer.predict(model, x, generator)
    return model(x)


def read_out(calls: list[tuple[int, Tensor]], cfg: ClassifyConfig) -> Tensor:
    """The prediction from a chain's calls. ``last``: the logits of the final call at σ_min (the
    ODE's answer). ``mean``: the mean of every call's log-probabilities, each block's estimate
    weighed alike (an ensemble of the blocks, at no extra layer evaluations)."""
    if cfg.readout == "last":
        return calls[-1][1]
    return torch.stack([logits.log_softmax(-1) for _, logits in calls]).mean(0)


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, logits_of, seed: int, batch: int) -> float:
    """Share of correct argmax over every example of (x, y), batch by batch, in eval mode;
    ``logits_of(xb, yb, generator)`` gives a batch's logits."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        correct += (logits_of(xb, yb, gen).argmax(-1) == yb).sum().item()
    model.train(was_training)
    return correct / len(y)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, cfg: ClassifyConfig, batch: int = 1000) -> float:
    """Accuracy over every example of (x, y); no example is dropped."""
    return _accuracy(model, x, y, lambda xb, yb, gen: predict(model, xb, cfg, gen), cfg.seed + 12345, batch)


@torch.no_grad()
def chain_accuracy(model: DiffusionBlocks, x: Tensor, y: Tensor, cfg: ClassifyConfig,
                   batch: int = 1000) -> list[dict]:
    """What each block contributes to the inference chain, over every example of (x, y).

    Per block: ``given_previous``, the accuracy of its first call on the state the chain hands
    it (the previous blocks' estimate, never the true label), and ``chain_after``, the accuracy
    of the read-out (:func:`read_out`) of the calls up to its last (for the last block, the
    prediction). None for a block the σ grid never calls.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    device = next(model.parameters()).device
    first, last = torch.zeros(model.num_blocks), torch.zeros(model.num_blocks)
    called = set()
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        calls = trace(model, xb, cfg, gen)
        for b in {b for b, _ in calls}:
            mine = [i for i, (c, _) in enumerate(calls) if c == b]
            first[b] += (calls[mine[0]][1].argmax(-1) == yb).sum().item()
            last[b] += (read_out(calls[: mine[-1] + 1], cfg).argmax(-1) == yb).sum().item()
            called.add(b)
    model.train(was_training)
    return [{"block": b, "given_previous": first[b].item() / len(y) if b in called else None,
             "chain_after": last[b].item() / len(y) if b in called else None}
            for b in range(model.num_blocks)]


def block_accuracy(model: DiffusionBlocks, x: Tensor, y: Tensor, cfg: ClassifyConfig, block: int,
                   batch: int = 1000) -> float:
    """One block on its own, given the *true* label: accuracy of the logits read from
    D_b(y + σε, σ) with σ drawn from the block's training range (what a block job can measure
    before the blocks are merged; blocks whose range shows the label read it off the input)."""

    def logits_of(xb: Tensor, yb: Tensor, gen: torch.Generator) -> Tensor:
        target = model.shared.target(yb)
        sigma = model.sample_sigma(block, len(yb), gen).to(xb.device)
        z = target + sigma[:, None] * torch.randn(target.shape, generator=gen).to(xb.device)
        return model.shared.logits(model.denoise(z, sigma, xb, block))

    return _accuracy(model, x, y, logits_of, cfg.seed + 54321, batch)


def measure_activations(model: nn.Module, batch: tuple[Tensor, Tensor], cfg: ClassifyConfig,
                        blocks: list[int] | None = None) -> dict:
    """Activation bytes saved for backward in one training step (dblocks: mean over the trained
    blocks, since each is sampled with equal probability)."""
    x, y = batch
    if peer := methods.peer(cfg.mode):
        return peer.activations(model, x, y)
    if not isinstance(model, DiffusionBlocks):
        return {"activation_bytes_per_step": activation_bytes(lambda: F.cross_entropy(model(x), y), model)}
    return blockwise_activation_bytes(model, x, y, blocks)


def train(cfg: ClassifyConfig, data: ImageData | None = None, show: bool = True) -> dict:
    """Train one mode (a method: :data:`MODES`), resuming from its checkpoint when it exists;
    return its results (:func:`train_network` for e2e and dblocks, :mod:`.methods` the controls)."""
    return methods.train(FAMILY, cfg, data, show)


def train_network(cfg: ClassifyConfig, data: ImageData | None = None, show: bool = True) -> dict:
    """Train the network of ``cfg`` end to end or as DiffusionBlocks, resuming from its
    checkpoint when it exists; return its results.

    With ``cfg.block`` only that block trains (an independent job; merge the jobs with
    :func:`merge`); with ``cfg.parallel`` this is one ``torchrun`` rank of a block-parallel run
    (its group writes ``OUT/group_g``; rank 0 merges them into ``OUT/checkpoint`` at the end).
    """
    data = data or load_images(cfg.dataset, cfg.data_dir, size=cfg.image_size)
    cfg = resolve_config(cfg, data)
    if cfg.val_size:
        data = data.holdout(cfg.val_size)
    split = "val" if cfg.val_size else "test"  # what the curve watches; test is scored once at the end
    x_watch, y_watch = (data.x_val, data.y_val) if cfg.val_size else (data.x_test, data.y_test)
    ops = parse_augment(cfg.augment)
    two_views = getattr(methods.peer(cfg.mode), "TWO_VIEWS", False)  # the method augments twice

    def views(x: Tensor, gen: torch.Generator) -> Tensor:
        return augment(x, ops, gen, pixels=data.pixels) if ops else x

    init = (lambda model: init_from(model, pretrained(cfg))) if cfg.init_from else None
    job, device, folder, model, method = methods.place(FAMILY, cfg, cfg.blocks, init, views)
    strategy = method.strategy
    cotrained = cfg.shared_policy == "cotrained"
    parallel.distribute(job, model, strategy, getattr(model, "shared", None), cotrained, cfg.sync_every,
                        device)
    seed = cfg.seed + job.seed_offset  # a group's replicas see other batches
    batches = Batches(data.x_train, data.y_train, job.batch(cfg.batch_size), seed, device,
                      () if two_views else ops, data.pixels)

    def on_eval(p: Progress) -> dict:
        if job.blocks is None:
            return {f"{split}_accuracy": evaluate(model, x_watch, y_watch, cfg)}
        return {"block_accuracy": {b: block_accuracy(model, x_watch, y_watch, cfg, b) for b in job.blocks}}

    run = Run(checkpoint.stored_parts(model, job.blocks), batches, on_eval, RESUMABLE,
              desc=f"{cfg.mode} {cfg.dataset}", first=bool(cfg.init_from))
    progress, history, step_times = train_run(cfg, run, method, job, show)
    result = {
        "mode": cfg.mode,
        "dataset": cfg.dataset,
        "blocks": getattr(model, "num_blocks", 1),  # units trained apart (a peer's, DiffusionBlocks')
        "trained_blocks": job.blocks,
        "steps": method.total,
        **run_summary(progress, history, step_times, model, device),
        **measure_activations(model, batches(0), cfg, job.blocks),
    }
    if cfg.mode == "dblocks" and not cotrained:  # nothing crosses: each block trains on data alone
        result["traffic_bytes_per_step"] = 0
    if job.blocks is None and cfg.val_size and history:
        result |= {"val_accuracy": history[-1]["val_accuracy"], "val_examples": cfg.val_size}
    elif job.blocks is not None and history:
        result["block_accuracy"] = history[-1]["block_accuracy"]
    merge_groups = partial(merge, average_shared=cotrained, fresh=False)
    return parallel.conclude(cfg, job, result, model, lambda m, c: score(m, data, c),
                             partial(load, device=str(device)), merge_groups)


def score(model: nn.Module, data: ImageData, cfg: ClassifyConfig) -> dict:
    """Test accuracy over the whole test split, and for DiffusionBlocks what each block of the
    chain contributes (:func:`chain_accuracy`)."""
    if not isinstance(model, DiffusionBlocks):
        return {"test_accuracy": evaluate(model, data.x_test, data.y_test, cfg),
                "test_examples": len(data.y_test), "inference_layers": inference_layers(model, cfg)}
    chain = chain_accuracy(model, data.x_test, data.y_test, cfg)
    return {"test_accuracy": chain[-1]["chain_after"], "test_examples": len(data.y_test), "chain": chain,
            "inference_layers": inference_layers(model, cfg)}


def inference_layers(model: nn.Module, cfg: ClassifyConfig) -> int:
    """Layer evaluations of one prediction: every layer of a network (of each member of an
    ensemble); DiffusionBlocks: the layers of the block each call of the σ grid routes to."""
    if isinstance(model, DiffusionBlocks):
        return sum(model.sizes[model.route(s)] for s in sigma_grid(cfg))
    if peer := methods.peer(cfg.mode):
        return peer.inference_layers(model)
    return sum(len(unit.layers) for unit in model.modules() if isinstance(unit, ViTClassifier))


def validate(model: nn.Module, data: ImageData, cfg: ClassifyConfig) -> dict:
    """Accuracy on the validation split of ``cfg`` (the fixed hold-out every mode trains
    without); {} when the run has none."""
    if not cfg.val_size:
        return {}
    held = data.holdout(cfg.val_size)
    return {"val_accuracy": evaluate(model, held.x_val, held.y_val, cfg), "val_examples": cfg.val_size}


def load(path: str | Path, device: str = "cpu", averaged: bool = True) -> tuple[nn.Module, ClassifyConfig]:
    """A trained model and its config from a checkpoint directory."""
    return checkpoint.load_model(path, ClassifyConfig.from_dict, partial(methods.build, FAMILY), device,
                                 averaged, task="classify")


def merge(sources: list[str | Path], out: str | Path, average_shared: bool = False,
          fresh: bool = True) -> Path:
    """Assemble classification block checkpoints into one model at OUT/checkpoint, or ensemble members
    into their ensemble (:func:`.methods.merge`)."""
    return methods.merge(FAMILY, sources, out, average_shared, fresh)


def compare(cfg: ClassifyConfig, out: Path, quick: bool = False, show: bool = True,
            modes: tuple[str, ...] | None = None, jobs: int = 1) -> str:
    """Train ``modes`` (end to end, DiffusionBlocks and its controls by default; under
    ``--parallel`` no ensemble, whose members train as separate jobs) on the same budget, up to
    ``jobs`` side by side (:func:`.runs.side_by_side`); write OUT/report.{json,md} and a plot."""
    from ..report import write_report

    if modes is None:
        modes = tuple(m for m in COMPARED if not (cfg.parallel and m == "ensemble"))

    modes = {m: replace(cfg, mode=m, **({} if m == "dblocks" else {"offload": None})) for m in modes}
    data = load_images(cfg.dataset, cfg.data_dir, size=cfg.image_size)  # both configs validated first
    if quick:
        modes = {m: replace(c, steps=min(c.steps or 30, 30), evals=2) for m, c in modes.items()}
    modes = {m: replace(c, out=str(out / m)) for m, c in modes.items()}
    if jobs > 1 and not cfg.parallel:
        results = side_by_side("classify", modes, jobs)
    else:
        results = {mode: train(mode_cfg, data, show) for mode, mode_cfg in modes.items()}
    title = (f"{cfg.dataset}: end to end vs DiffusionBlocks (B={cfg.blocks}) and its controls, "
             f"equal {'layer evaluations' if cfg.match == 'layers' else 'steps'}")
    return write_report(out, results, title=title)


FAMILY = methods.Family(
    name="classify", config=ClassifyConfig, model="vit", train=train_network, build=build,
    loss=F.cross_entropy, block_loss=block_loss, resolve=resolve_config,
    load_data=lambda cfg: load_images(cfg.dataset, cfg.data_dir, size=cfg.image_size),
    score=score, validate=validate, mergeable=frozenset(MERGEABLE))
