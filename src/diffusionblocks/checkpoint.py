"""Checkpoints: one safetensors file per part (``shared``, ``block_k`` or ``model``), a JSON
config, and training state (optimizer per part, progress) readable with ``weights_only=True``.

A checkpoint is a directory written whole to a temporary sibling and then swapped in, so a
kill at any moment leaves either the old or the new checkpoint, never a mix. Its last file,
``manifest.json``, holds the size and SHA-256 of every other file: a read checks what it read
against it, so a damaged file is named instead of loaded, and a read that overlapped a save
(files of two checkpoints) is retried instead of mixed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file
from torch import nn

from .progress import Progress

try:  # advisory locks die with their process: no stale lock can outlive a run
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CONFIG = "config.json"
PROGRESS = "progress.json"
MANIFEST = "manifest.json"



def file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask

def _previous(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def resolve(directory: str | Path) -> Path:
    """The checkpoint directory to read, recovering from a kill between the two renames."""
    directory = Path(directory)
    if (directory / CONFIG).is_file():
        return directory
    if (_previous(directory) / CONFIG).is_file():
        return _previous(directory)
    raise FileNotFoundError(
        f"no checkpoint at {directory} (expected {directory / CONFIG}); "
        "pass the checkpoint directory a training run wrote (OUT/checkpoint)"
    )


def exists(directory: str | Path) -> bool:
    """Whether anything stands where a checkpoint would be (a damaged one counts)."""
    directory = Path(directory)
    return directory.exists() or _previous(directory).exists()


# --- writing ---------------------------------------------------------------------------------


def save(
    directory: str | Path,
    parts: dict[str, nn.Module],
    config: dict,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write a checkpoint atomically: temp dir (manifest last), then rename over the old one.
    A failed write (a full disk) removes its temp dir and leaves the old checkpoint."""
    def write(tmp: Path) -> None:
        for name, module in parts.items():
            tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(tensors, str(tmp / f"{name}.safetensors"))
        for name, opt in (optimizers or {}).items():
            torch.save(opt.state_dict(), tmp / f"{name}.optim.pt")
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        if progress is not None:
            (tmp / PROGRESS).write_text(json.dumps(asdict(progress)))

    return _publish(Path(directory), write)


def export(source: str | Path, directory: str | Path, extra: dict[str, str] | None = None) -> Path:
    """A shareable copy of the checkpoint at ``source`` in ``directory``: its weights (and
    their averages), config and progress, checked against its manifest, with ``extra`` text
    files (a model card) added, and no optimizer state (nothing pickled leaves the run). It
    loads as the checkpoint does, partial ones (a block job's) included."""
    snapshot = read(source, parts=None)
    keep = {n: b for n, b in snapshot.files.items()
            if n.endswith(".safetensors") or n in (CONFIG, PROGRESS)}
    if not any(n.endswith(".safetensors") for n in keep):
        raise ValueError(f"{source} holds no weights; give a run's OUT/checkpoint")

    def write(tmp: Path) -> None:
        for name, data in keep.items():
            (tmp / name).write_bytes(data)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return _publish(Path(directory), write)


def _publish(directory: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` into a temp dir beside ``directory``, add the manifest, give every file the
    umask's mode, make it durable, then rename it over ``directory``."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f"{directory.name}.tmp-*"):  # left by killed writers
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        files = {f.name: _digest(f.read_bytes()) for f in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
        mode = file_mode()
        for f in tmp.iterdir():  # one mode for every file; durable before the rename publishes them
            f.chmod(mode)  # safetensors writes its files 0600, whatever the umask
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except Exception as e:  # a full disk also surfaces as safetensors' or torch's own errors
        shutil.rmtree(tmp, ignore_errors=True)
        why = e.strerror if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        raise OSError(getattr(e, "errno", None), f"could not write checkpoint {directory} ({why}); "
                      "free space or give another --out", str(directory)) from None
    old = _previous(directory)
    if directory.exists():  # otherwise .old may be the only checkpoint left: keep it until now
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _digest(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@contextmanager
def exclusive(directory: str | Path) -> Iterator[None]:
    """Hold ``directory/.lock`` for the duration: a second run writing into the same folder (two
    block jobs given one --out) is refused instead of overwriting the first. The lock is an
    advisory ``flock``, released by the kernel when its process dies, so a dead run's lock (or
    one whose pid a reboot gave to another process) never blocks. Also refuses a ``directory``
    that is a file, a checkpoint itself (``RUN/checkpoint`` given as ``--out``) or unwritable."""
    directory = Path(directory)
    check_writable_folder(directory)
    lock = directory / ".lock"
    fd = _acquire(lock)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: a waiter then retries on a new file
        os.close(fd)


def check_writable_folder(directory: Path) -> None:
    """Refuse an output folder that cannot hold a run: a file, a checkpoint, unwritable."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--out {directory} is a file; give a folder")
    if (directory / CONFIG).is_file() and any(directory.glob("*.safetensors")):
        raise ValueError(f"--out {directory} is a checkpoint (it holds {CONFIG} and weights), not a "
                         f"run folder; to resume that run give its folder ({directory.parent}), "
                         "otherwise a fresh folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to --out {directory} ({e.strerror or e}); give a writable "
                         "folder") from None


def _acquire(lock: Path) -> int:
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        if fcntl is None:  # pragma: no cover - Windows: exclusive creation, stale pids taken over
            os.close(fd)
            return _acquire_by_pid(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"{lock.parent} is in use by another run (pid {holder}); give this run "
                             "its own --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder unlinked while we opened it
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _acquire_by_pid(lock: Path) -> int:  # pragma: no cover - Windows
    holder = lock.read_text().strip() if lock.exists() else ""
    if holder and not _alive(holder):
        lock.unlink(missing_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise ValueError(f"{lock.parent} is in use by another run (pid {holder or '?'}); give this "
                         "run its own --out") from None
    os.write(fd, str(os.getpid()).encode())
    return fd


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ---------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Files of one checkpoint, read together and checked against its manifest."""

    path: Path
    files: dict[str, bytes]

    @property
    def config(self) -> dict:
        """The run config the checkpoint was written with (``config.json``)."""
        return _json(self, CONFIG, dict)

    @property
    def progress(self) -> Progress | None:
        """Steps, layer evaluations and seconds trained so far; None when not recorded."""
        if PROGRESS not in self.files:
            return None
        d = _json(self, PROGRESS, dict)
        names = {f.name for f in fields(Progress)}
        if set(d) != names or not all(isinstance(v, (int, float)) for v in d.values()):
            raise ValueError(f"{self.path / PROGRESS} is damaged (expected the numbers "
                             f"{', '.join(sorted(names))}); restore it or train into a fresh --out")
        return Progress(**d)

    def tensors(self, part: str) -> dict[str, torch.Tensor]:
        """The stored weights of ``part``."""
        path = self.path / f"{part}.safetensors"
        if path.name not in self.files:
            raise FileNotFoundError(f"checkpoint {self.path} has no {path.name}")
        try:
            return load_tensors(self.files[path.name])
        except Exception as e:  # safetensors raises its own error types on a bad file
            raise ValueError(f"{path} is damaged ({e}); restore it or train anew") from None

    def load_parts(self, parts: dict[str, nn.Module], averaged: bool = False) -> None:
        """Load each part's weights; every part must be present and match exactly.
        ``averaged``: a part's weight average (``NAME.ema``) instead, where the checkpoint has one."""
        for name, module in parts.items():
            if averaged and f"{name}.ema.safetensors" in self.files:
                name = f"{name}.ema"
            path = self.path / f"{name}.safetensors"
            stored, expected = self.tensors(name), module.state_dict()
            if name.endswith(".ema") and "ema_updates" not in expected:
                stored.pop("ema_updates", None)  # the average's counter, not a weight
            missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
            if missing or unexpected:
                raise ValueError(
                    f"{path} does not match this model (missing {missing[:3]}, unexpected "
                    f"{unexpected[:3]}{', …' if max(len(missing), len(unexpected)) > 3 else ''}): it "
                    "was written by a different version of the model; load it with the version that "
                    "wrote it, or train anew"
                )
            try:
                module.load_state_dict(stored, strict=True)
            except RuntimeError as e:
                raise ValueError(f"{path} does not fit this model ({str(e).splitlines()[-1].strip()}); "
                                 "it was written with another config") from None

    def load_optimizers(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Load each named optimizer's state from its ``NAME.optim.pt`` (weights-only unpickling)."""
        for name, opt in optimizers.items():
            path = self.path / f"{name}.optim.pt"
            try:
                opt.load_state_dict(torch.load(io.BytesIO(self.files[path.name]), weights_only=True))
            except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
                raise ValueError(f"{path} is damaged or belongs to another model ({e}); restore "
                                 "it or train into a fresh --out") from None


def _json(snapshot: Snapshot, name: str, kind: type):
    path = snapshot.path / name
    try:
        value = json.loads(snapshot.files[name])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it or train anew") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path} is damaged (a JSON {kind.__name__} expected)")
    return value


def read(directory: str | Path, parts: Iterable[str] | None = (), optimizers: Iterable[str] = (),
         attempts: int = 5) -> Snapshot:
    """Read the config, progress and the named parts' weights (``parts=None``: every part) and
    optimizer states of the checkpoint at ``directory`` in one go, through one directory handle,
    and check them against the manifest. All files so come from one checkpoint even beside a
    concurrent save (a read whose directory a save removed under it is retried); a file that
    disagrees with the manifest is an error naming it."""
    for attempt in range(attempts):
        try:
            where = resolve(directory)
            files = _read_files(where, parts, optimizers)
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise  # really missing, not just removed under us by a concurrent save
            continue
        manifest = files.pop(MANIFEST, None)
        if manifest is None and where == _previous(Path(directory)) and attempt < attempts - 1:
            continue  # the previous checkpoint, being removed by a save that just finished
        if manifest is None:  # written before manifests: nothing to check against
            return Snapshot(where, files)
        try:
            listed = json.loads(manifest)["files"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ValueError(f"{where / MANIFEST} is damaged; restore the checkpoint or train "
                             "anew") from None
        bad = [n for n, data in files.items() if listed.get(n) != _digest(data)]
        if bad:
            raise ValueError(f"checkpoint {where} is damaged: {', '.join(bad)} "
                             f"{'does' if len(bad) == 1 else 'do'} not match its manifest (size or "
                             "SHA-256); restore it or train anew")
        return Snapshot(where, files)
    raise AssertionError("unreachable")


def _read_files(where: Path, parts: Iterable[str] | None, optimizers: Iterable[str]) -> dict[str, bytes]:
    dfd = os.open(where, os.O_RDONLY)
    try:
        present = set(os.listdir(dfd))
        weights = (sorted(n for n in present if n.endswith(".safetensors")) if parts is None
                   else [f"{p}.safetensors" for p in parts])
        wanted = [CONFIG, *weights, *(f"{o}.optim.pt" for o in optimizers)]
        missing = [n for n in wanted if n not in present]
        if missing:
            raise FileNotFoundError(errno.ENOENT, f"checkpoint {where} has no {missing[0]}", missing[0])
        files = {}
        for name in [*wanted, *(n for n in (PROGRESS, MANIFEST) if n in present)]:
            with os.fdopen(os.open(name, os.O_RDONLY, dir_fd=dfd), "rb") as f:
                files[name] = f.read()
        return files
    finally:
        os.close(dfd)


def read_config(directory: str | Path) -> dict:
    """The run config stored with a checkpoint."""
    return read(directory).config


def load_parts(directory: str | Path, parts: dict[str, nn.Module]) -> None:
    """Load each part's weights; every part must be present and match exactly."""
    read(directory, parts=parts).load_parts(parts)


def stored_parts(model: nn.Module, blocks: list[int] | None = None) -> dict[str, nn.Module]:
    """The parts a model is stored as: per block and shared when it has ``parts()``, else one.
    ``blocks``: only the shared parts and these blocks (a block job's, a parallel rank's)."""
    parts = model.parts() if hasattr(model, "parts") else {"model": model}
    if blocks is None:
        return parts
    keep = {"shared", *(f"block_{b}" for b in blocks)}
    return {k: v for k, v in parts.items() if k in keep}


def load_model(directory: str | Path, from_dict: Callable[[dict], object],
               build: Callable[[object], nn.Module], device: torch.device | str = "cpu",
               averaged: bool = True, task: str | None = None):
    """(model, config) of a checkpoint: the stored config read through ``from_dict``, the model
    ``build`` makes of it, every stored part loaded (config and weights from one read; a part's
    weight average where it has one, unless ``averaged`` is False), in eval mode on ``device``."""
    snapshot = read(directory, parts=None)
    stored = snapshot.config.get("task")
    if task and stored and stored != task:
        raise ValueError(f"{directory} holds a checkpoint of `train {stored}`; this needs one of "
                         f"`train {task}`")
    cfg = config_of(snapshot, from_dict)
    partial_job = getattr(cfg, "parallel", False) and getattr(cfg, "mode", None) == "dblocks"
    if getattr(cfg, "block", None) is not None or partial_job:
        raise ValueError(f"checkpoint {directory} holds only part of a model (a --block or --parallel "
                         "group checkpoint); assemble the blocks first with `diffusionblocks merge`")
    model = build(cfg)
    snapshot.load_parts(stored_parts(model), averaged)
    return model.to(device).eval(), cfg


def config_of(snapshot: Snapshot, from_dict: Callable[[dict], object]):
    """``from_dict`` of a snapshot's config; a config of the wrong shape is one error naming it."""
    try:
        return from_dict(snapshot.config)
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        raise ValueError(f"{snapshot.path / CONFIG} is damaged or of another version ({e}); restore "
                         "it or train anew") from None


def read_progress(directory: str | Path) -> Progress:
    """The progress stored with a checkpoint (zero when it has none)."""
    return read(directory).progress or Progress()


def load_training_state(
    directory: str | Path, optimizers: dict[str, torch.optim.Optimizer]
) -> Progress:
    """Load each optimizer's state and return the run's progress; a checkpoint without either
    cannot be resumed (a merged model can be evaluated, not resumed)."""
    try:
        snapshot = read(directory, optimizers=optimizers)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e.strerror}: no optimizer state (a merged model can be evaluated, "
                                "not resumed); train into a fresh --out") from None
    snapshot.load_optimizers(optimizers)
    if snapshot.progress is None:
        raise ValueError(f"checkpoint {snapshot.path} has no {PROGRESS}: it cannot be resumed "
                         "(its learning-rate schedule would restart); train into a fresh --out")
    return snapshot.progress
