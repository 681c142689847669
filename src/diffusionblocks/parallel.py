"""Block-parallel training: blocks train at the same time in separate processes.

Blocks exchange no activations and no gradients, so B blocks can train on B devices (or
machines) with no pipeline. Under ``torchrun`` the ranks are split into groups, one per block
(or, with fewer ranks than blocks, several blocks per rank); inside a group the block is data
parallel with DDP on that group's process group only. Nothing else crosses groups, except an
optional periodic average of shared parts that train (``cotrained`` policy): an all-reduce of
those few tensors.

Without ``torchrun``, ``train ... --block k`` trains one block as an independent job and
:func:`merge` assembles the blocks' checkpoints into one model.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Placement:
    """What this process trains: its blocks, its group, and its place in the group."""

    blocks: list[int]
    group: int
    groups: int
    rank: int = 0
    world: int = 1
    members: tuple[int, ...] = (0,)  # global ranks of this process's group

    @property
    def index(self) -> int:
        """This process's position inside its group (0 is the group's leader)."""
        return self.members.index(self.rank)

    @property
    def leader(self) -> bool:
        return self.index == 0


@dataclass
class Job:
    """This process's share of a run: every block (no ``placement``), one ``--block`` job's, or
    one ``--parallel`` torchrun rank's (with its group's ``process_group`` for DDP, and
    ``syncing`` when co-trained shared parts are averaged across groups). ``whole``: an
    end-to-end run under torchrun, the whole model in DDP over every rank, in OUT itself."""

    placement: Placement | None = None
    parallel: bool = False
    process_group: dist.ProcessGroup | None = field(default=None, repr=False)
    syncing: bool = False
    whole: bool = False

    @property
    def blocks(self) -> list[int] | None:
        """The blocks this process trains; None: all of them."""
        return self.placement.blocks if self.placement and not self.whole else None

    @property
    def writer(self) -> bool:
        """Whether this process writes (checkpoints, metrics): DDP replicas of a group do not."""
        return self.placement is None or self.placement.leader

    @property
    def seed_offset(self) -> int:
        """Added to the data seed, so that a group's replicas see other batches."""
        return 1000 * self.placement.index if self.placement else 0

    def batch(self, size: int) -> int:
        """This rank's share of a step's batch: a group of k ranks splits ``size`` k ways, so a
        group step is one step of the run's batch (the same work as one process doing it)."""
        ranks = len(self.placement.members) if self.parallel else 1
        if size % ranks:
            raise ValueError(f"--batch-size {size} cannot be split evenly over the {ranks} ranks of a "
                             f"group; use a multiple of {ranks}")
        return size // ranks

    def folder(self, out: str | Path) -> Path:
        """Where this process's run lives: ``out``, or its group's ``out/group_g``."""
        return Path(out) / f"group_{self.placement.group}" if self.parallel and not self.whole else Path(out)


def join(num_blocks: int, block: int | None, parallel: bool, device: torch.device,
         whole: bool = False) -> tuple[Job, torch.device]:
    """This process's job and device: all blocks, the block job ``block``, or its torchrun
    rank's blocks (joining the process group; on CUDA taking the GPU of its local rank).
    ``whole``: an end-to-end model, data parallel over every rank."""
    if parallel:
        placement, group_pg = init(1 if whole else num_blocks, device)
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            if local >= torch.cuda.device_count():
                raise ValueError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); "
                                 "start at most one process per GPU on each machine")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        return Job(placement, True, group_pg, whole=whole), device
    if launched() and int(os.environ["WORLD_SIZE"]) > 1:
        raise ValueError(f"launched by torchrun with {os.environ['WORLD_SIZE']} processes but without "
                         "--parallel: every rank would train the same model into the same folder; "
                         "add --parallel")
    if block is not None:
        return Job(Placement([block], block, num_blocks)), device
    return Job(), device


def distribute(job: Job, model: nn.Module, strategy, shared: nn.Module | None, cotrained: bool,
               sync_every: int, device: torch.device) -> None:
    """A parallel rank's blocks in DDP over its group, and co-trained ``shared`` parts averaged
    over every rank each ``sync_every`` steps (the one thing groups exchange). End to end
    (``job.whole``), the model in DDP over every rank (its one block, or the whole network)."""
    if not job.parallel:
        return
    if job.whole:
        if len(job.placement.members) > 1:
            if hasattr(model, "blocks"):  # one block over the whole noise range
                model.blocks[0] = data_parallel(model.blocks[0], job.process_group, device)
            else:
                strategy.model = data_parallel(model, job.process_group, device)
        return
    if len(job.placement.members) > 1:
        for b in job.blocks:
            model.blocks[b] = data_parallel(model.blocks[b], job.process_group, device)
    if cotrained and shared is not None and any(p.requires_grad for p in shared.parameters()):
        sync_shared(strategy, shared, sync_every, job.placement, job.process_group)
        job.syncing = True


def place(num_blocks: int, rank: int, world: int) -> Placement:
    """Ranks to blocks. world ≥ B: B groups of world/B ranks, group g trains block g (world
    must be a multiple of B). world < B: one group per rank, rank r trains blocks r, r+world, …
    (world must divide B, so that every rank has the same number of steps)."""
    if world >= num_blocks:
        if world % num_blocks:
            raise ValueError(
                f"{world} processes cannot be split evenly over {num_blocks} blocks; use a multiple "
                f"of {num_blocks} processes, or a number of processes dividing {num_blocks}"
            )
        size = world // num_blocks
        group = rank // size
        members = tuple(range(group * size, (group + 1) * size))
        return Placement([group], group, num_blocks, rank, world, members)
    if num_blocks % world:
        raise ValueError(
            f"{num_blocks} blocks cannot be split evenly over {world} processes; use a number of "
            f"processes dividing {num_blocks} or a multiple of it"
        )
    blocks = list(range(rank, num_blocks, world))
    return Placement(blocks, rank, world, rank, world, (rank,))


def main_process() -> bool:
    """True unless this is a torchrun rank other than 0 (which leaves reports to rank 0)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def launched() -> bool:
    """True inside a ``torchrun`` worker (the launcher sets WORLD_SIZE and RANK)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(num_blocks: int, device: torch.device) -> tuple[Placement, dist.ProcessGroup | None]:
    """Join the ``torchrun`` job (gloo on CPU, nccl on CUDA); this rank's placement and, when
    its group has several ranks, the group's process group for DDP."""
    connect(device)
    placement = place(num_blocks, dist.get_rank(), dist.get_world_size())
    process_group = None
    for g in range(placement.groups):  # every rank must create every group, in the same order
        members = [r for r in range(placement.world) if place(num_blocks, r, placement.world).group == g]
        pg = dist.new_group(members) if len(members) > 1 else None
        if g == placement.group:
            process_group = pg
    return placement, process_group


def connect(device: torch.device) -> None:
    """Join the ``torchrun`` job's process group once per process (gloo on CPU, nccl on CUDA);
    it is kept for every run the process makes (``compare`` trains two) and left at exit."""
    if not launched():
        raise ValueError("--parallel needs torchrun, e.g. torchrun --nproc-per-node 3 -m diffusionblocks ...")
    if not dist.is_initialized():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=_store(rank, world),
                                rank=rank, world_size=world)
        atexit.register(finish_group)


def _store(rank: int, world: int) -> dist.Store:
    """The rendezvous store, with keys prefixed by torchrun's restart count: a restarted worker
    group must not read the addresses its killed predecessors left there (gloo then fails to
    connect)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun hosts the store
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent and rank == 0)
    return dist.PrefixStore(f"diffusionblocks/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}",
                            store)


def data_parallel(block: nn.Module, process_group, device: torch.device) -> nn.Module:
    """Wrap a block in DDP over its group's ranks only. Buffers are not broadcast at each
    forward (they do not train), so a group's leader can evaluate alone."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(block, device_ids=ids, process_group=process_group,
                                   broadcast_buffers=False)


@torch.no_grad()
def average(module: nn.Module) -> None:
    """Average a module's trainable tensors over every rank (the shared parts' sync)."""
    world = dist.get_world_size()
    for p in module.parameters():
        if p.requires_grad:
            dist.all_reduce(p.data)
            p.data /= world


def average_gradients(module: nn.Module, process_group, size: int) -> None:
    """Average a module's gradients over a DDP group as they arrive (hooks), so that replicas
    of a block see the same shared gradients, clip alike and stay identical."""

    def hook(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad, group=process_group)
        p.grad /= size

    for p in module.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(hook)


def sync_shared(strategy, shared: nn.Module, every: int, placement: Placement, process_group) -> None:
    """Co-trained shared parts: average them over every rank each ``every`` steps (counted from
    the run's start, so resumed runs sync on the same steps), and average their gradients inside
    a DDP group so that its replicas clip alike and stay identical."""
    if len(placement.members) > 1:
        average_gradients(shared, process_group, len(placement.members))
    step = strategy.step
    strategy.done = 0

    def step_and_sync(*args) -> dict:
        record = step(*args)
        strategy.done += 1
        if strategy.done % every == 0:
            average(shared)
        return record

    strategy.step = step_and_sync


def same_step(strategy, step: int) -> None:
    """Start the sync count at a resumed run's step; refuse to go on when ranks resumed from
    different steps (their syncs would not pair up)."""
    strategy.done = step
    t = torch.tensor([step, -step])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != -int(t[1]):
        raise RuntimeError(
            f"ranks resumed from different steps ({-int(t[1])} to {int(t[0])}): the co-trained shared "
            "parts are synchronized on the step; restart from group checkpoints of one step"
        )


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def finish_group() -> None:
    """Leave the torchrun job's process group (when one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# --- assembling block jobs ----------------------------------------------------------------------


def merge(sources: list[str | Path], out: str | Path, task: str, from_dict: Callable[[dict], object],
          build: Callable[[object], nn.Module], mergeable: set[str], average_shared: bool = False,
          fresh: bool = True) -> Path:
    """Assemble block checkpoints of ``task`` (block jobs, parallel groups) into one model at
    OUT/checkpoint.

    The sources must come from one config (up to the ``mergeable`` fields), hold every block
    exactly once and agree bit for bit on the shared parts, where the model has any
    (``average_shared``: average them instead, for blocks trained with ``--shared-policy
    cotrained``). OUT must be a new or empty folder (``fresh=False``: the parallel run's own
    folder, which holds its groups). Each block's weight average travels with it.
    """
    from . import checkpoint
    from .progress import Progress
    from .training import Averages

    out = Path(out)
    if fresh and out.exists() and (not out.is_dir() or any(out.iterdir())):
        _not_empty(out)
    snaps = [checkpoint.read(s, parts=None) for s in sources]
    dirs, configs = [s.path for s in snaps], [s.config for s in snaps]
    for d, c in zip(dirs, configs):
        if c.get("task") != task or c.get("mode") != "dblocks":
            raise ValueError(f"{d} is a {c.get('task')} {c.get('mode')} checkpoint; merge takes "
                             f"DiffusionBlocks block checkpoints of one task (train {task} --mode dblocks "
                             "--block k, or a --parallel run's group checkpoints)")
    base = configs[0]
    for d, c in zip(dirs[1:], configs[1:]):
        diff = [k for k in base if k not in mergeable and c.get(k) != base[k]]
        if diff:
            detail = ", ".join(f"{k}: {base.get(k)!r} vs {c.get(k)!r}" for k in diff)
            raise ValueError(f"cannot merge {dirs[0]} and {d}: their configs differ ({detail}); "
                             "train every block with the same flags")
    cfg = from_dict(base | {"block": None, "parallel": False, "out": str(out)})
    owner: dict[int, checkpoint.Snapshot] = {}
    for snap in snaps:
        for name in sorted(snap.files):
            if not (match := re.fullmatch(r"block_(\d+)\.safetensors", name)):
                continue  # not a block's weights (its average, the shared parts, …)
            b = int(match[1])
            if b in owner:
                raise ValueError(f"block {b} is in both {owner[b].path} and {snap.path}; give each "
                                 "block once")
            owner[b] = snap
    missing = [b for b in range(cfg.blocks) if b not in owner]
    if missing:
        raise ValueError(f"no checkpoint holds block(s) {missing}; train them (--block k) and "
                         f"pass their checkpoints too")
    model = build(cfg)
    parts = model.parts()
    with_average = {f"block_{b}": model.blocks[b] for b, s in owner.items()
                    if f"block_{b}.ema.safetensors" in s.files}
    if "shared" in parts:
        _merge_shared(model.shared, snaps, average_shared)
        if all("shared.ema.safetensors" in s.files for s in snaps):
            with_average["shared"] = model.shared
    averages = Averages(with_average, cfg.optim.ema)
    for b, snap in owner.items():
        snap.load_parts({f"block_{b}": model.blocks[b]})
        if f"block_{b}" in with_average:
            snap.load_parts({f"block_{b}.ema": averages.shadows[f"block_{b}"]})
    if "shared" in with_average:
        means = [s.tensors("shared.ema") for s in snaps]
        averages.shadows["shared"].load_state_dict(
            {k: torch.stack([m[k] for m in means]).mean(0) if means[0][k].is_floating_point()
             else means[0][k] for k in means[0]})
    runs = [s.progress or Progress() for s in snaps]
    progress = Progress(*(sum(getattr(r, f) for r in runs) for f in ("step", "layer_evals", "train_seconds")))
    with checkpoint.exclusive(out):
        if fresh and any(p.name != ".lock" for p in out.iterdir()):  # filled while we read
            _not_empty(out)
        return checkpoint.save(out / "checkpoint", parts | averages.stored(), cfg.to_dict(),
                               progress=progress)


def _merge_shared(shared: nn.Module, snaps: list, average: bool) -> None:
    """The shared parts every source holds: identical (frozen), or averaged when ``average``."""
    tensors = [s.tensors("shared") for s in snaps]
    differ = [s for s, t in zip(snaps, tensors) if not all(torch.equal(t[k], tensors[0][k]) for k in t)]
    if differ and not average:
        raise ValueError(f"shared parts differ between {snaps[0].path} and {differ[0].path}: blocks trained "
                         "apart must keep them frozen (--shared-policy frozen, the default), or merge with "
                         "--average-shared")
    same = not differ
    shared.load_state_dict(tensors[0] if same else
                           {k: torch.stack([t[k] for t in tensors]).mean(0) for k in tensors[0]})


def _not_empty(out: Path):
    raise ValueError(f"--out {out} is not an empty folder; merge into a fresh one (nothing in {out} "
                     "was touched)")


def conclude(cfg, job: Job, result: dict, model: nn.Module, score: Callable[[nn.Module, object], dict] | None,
             load: Callable[[Path], tuple[nn.Module, object]],
             merge_groups: Callable[[list[Path], Path], Path]) -> dict:
    """The end of every task's training run: the writer of a whole model scores it
    (``score(model, cfg)``; nothing for a block job, or when ``score`` is None) and writes
    result.json; a ``--parallel`` run then merges its groups and scores the merged model
    (``load(checkpoint)`` gives it back with its config; :func:`finish`)."""
    if score and job.blocks is None and job.writer:
        result |= score(model, cfg)
    if job.writer:
        (job.folder(cfg.out) / "result.json").write_text(json.dumps(result, indent=2))
    if not cfg.parallel:
        return result

    def score_merged(ckpt: Path) -> dict:
        merged, merged_cfg = load(ckpt)
        return score(merged, merged_cfg) if score else {}

    return finish(cfg, job, result, merge_groups, score_merged)


def finish(cfg, job: Job, result: dict, merge_groups: Callable[[list[Path], Path], Path],
           score: Callable[[Path], dict]) -> dict:
    """The end of a ``--parallel`` run: rank 0 merges the groups' checkpoints into
    OUT/checkpoint (``merge_groups(sources, out)``), scores the whole model (``score(checkpoint)``)
    and writes OUT/result.json; every rank waits for it and returns that result."""
    barrier()
    out = Path(cfg.out)
    if job.whole:  # one model, written and scored by rank 0 as it trained
        result = result | {"parallel": True, "processes": job.placement.world}
        if job.writer:
            (out / "result.json").write_text(json.dumps(result, indent=2))
        return _from_rank_0(result)
    if job.placement.rank == 0:
        groups = [out / f"group_{g}" / "checkpoint" for g in range(job.placement.groups)]
        merge_groups(groups, out)
        totals = [json.loads((g.parent / "result.json").read_text()) for g in groups]
        result = {
            **{k: result[k] for k in ("task", "dataset", "data") if k in result},
            "mode": "dblocks", "blocks": cfg.blocks, "parallel": True,
            "processes": job.placement.world, "groups": job.placement.groups,
            **score(out / "checkpoint"),
            "layer_evals": sum(r["layer_evals"] for r in totals),
            "train_seconds": max(r["train_seconds"] for r in totals),  # wall time: groups overlap
            "steps": sum(r["steps"] for r in totals),
            "step_seconds": statistics.median([r["step_seconds"] for r in totals if r["step_seconds"]]),
            "activation_bytes_per_step": max(r["activation_bytes_per_step"] for r in totals),
            "groups_results": totals,
        }
        (out / "result.json").write_text(json.dumps(result, indent=2))
    return _from_rank_0(result)


def _from_rank_0(result: dict) -> dict:
    """Rank 0's result on every rank (so that a comparison under torchrun sees both modes whole)."""
    box = [result]
    dist.broadcast_object_list(box, src=0)
    return box[0]
