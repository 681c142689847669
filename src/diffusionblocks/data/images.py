"""Image datasets from local files, and the embedded default (scikit-learn's digits).

| name            | where                                                          |
|-----------------|----------------------------------------------------------------|
| digits          | embedded in scikit-learn, no file needed (8×8, 1797 images)    |
| mnist           | DATA/mnist/mnist.npz (Keras layout)                            |
| fashion_mnist   | DATA/fashion_mnist/fashion_mnist.npz (Keras layout)            |
| cifar10         | DATA/cifar10/cifar10_jpeg_q75.npz, or the python pickle folder |
|                 | DATA/cifar10/cifar-10-batches-py (data_batch_1..5, test_batch) |
| cifar10_exact   | DATA/cifar10/cifar10_exact_subset.npz (lossless 5,085/1,017)   |
| cifar100        | DATA/cifar100/cifar-100-python (train, test; fine labels)      |
| tinyimagenet    | DATA/tinyimagenet/tiny-imagenet-200 (train/, val/ labelled)    |
| folder:PATH     | PATH/train/CLASS/… and PATH/val/CLASS/… (or test/), any images |

Image folders are resized to ``size`` (default 64) and decoded once into a cache.

DATA is ``--data-dir``, else ``$DIFFUSIONBLOCKS_DATA``, else ``./data``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar10_exact", "cifar100", "tinyimagenet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# (channels, height, width) and classes of each, known before its files are read (--dry-run)
SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
          "cifar10": ((3, 32, 32), 10), "cifar10_exact": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100),
          "tinyimagenet": ((3, 64, 64), 200)}


def check_dataset(name: str) -> None:
    """A known dataset name, or ``folder:PATH`` (an image folder in class-subfolder layout)."""
    if name not in DATASETS and not (name.startswith("folder:") and len(name) > 7):
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or "
                         "folder:PATH for an image folder (PATH/train/CLASS/*.jpg, PATH/val/CLASS/…)")


def dataset_kind(name: str) -> str:
    """The key of per-dataset defaults: the name, or ``folder`` for any image folder."""
    return "folder" if name.startswith("folder:") else name


@dataclass
class ImageData:
    """Normalized float images (N, C, H, W) and integer labels, split into train and test, and
    a validation split held out of train when asked for (:meth:`holdout`)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    pixels: tuple[Tensor, Tensor] | None = None  # (mean, std): x = (pixel - mean) / std, pixels in [0, 1]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def holdout(self, n: int, seed: int = 0) -> ImageData:
        """The same data with ``n`` training examples (a fixed random choice of ``seed``) moved
        to a validation split, to choose settings on without looking at test."""
        if not 0 < n < len(self.y_train):
            raise ValueError(f"a validation split needs 0 < n < {len(self.y_train)} training "
                             f"examples, got {n}")
        perm = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(seed))
        keep, held = perm[:-n], perm[-n:]
        return replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep],
                       x_val=self.x_train[held], y_val=self.y_train[held])


def data_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("DIFFUSIONBLOCKS_DATA") or "data")


def _require(path: Path, name: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {name!r} needs {path}, which does not exist; point --data-dir (or "
            f"$DIFFUSIONBLOCKS_DATA) at the folder holding it, or use --dataset digits (no files)"
        )
    return path


def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255 / 16)).round().astype(np.uint8)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))  # fixed split: 1437 train / 360 test
    x, y = x[perm], y[perm]
    return x[:1437], y[:1437], x[1437:], y[1437:]


def _npz(path: Path) -> tuple[np.ndarray, ...]:
    d = np.load(path)
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def _decode_jpegs(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(
            "the JPEG CIFAR-10 file needs Pillow to decode: pip install 'diffusionblocks[cifar]'"
        ) from None

    return np.stack([
        np.asarray(Image.open(io.BytesIO(buf[a:b].tobytes())).convert("RGB"))
        for a, b in zip(offsets[:-1], offsets[1:])
    ])


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR batch holds (dicts, lists, bytes, NumPy arrays) and nothing else:
    any other class or function in the file (code to run) is refused."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _cifar_batch(path: Path, labels: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) and ``labels`` of one batch file of a CIFAR python folder."""
    name = "CIFAR-10" if labels == b"labels" else "CIFAR-100"
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        x, y = np.asarray(d[b"data"]), np.asarray(d[labels], dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),):
            raise ValueError(f"data {x.dtype} {x.shape} and labels {y.shape}, not N×3072 bytes and N labels")
    except FileNotFoundError:
        files = "data_batch_1…5 and test_batch" if name == "CIFAR-10" else "train and test"
        raise FileNotFoundError(f"{path} is missing: the {name} python folder needs {files}") from None
    except Exception as e:  # noqa: BLE001 - a malformed file can fail in any unpickling step
        fallback = " or remove the folder to use cifar10_jpeg_q75.npz" if name == "CIFAR-10" else ""
        raise ValueError(f"{path} is not a {name} batch ({e}); replace it with the original file"
                         f"{fallback}") from None
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def _cifar10(root: Path) -> tuple[np.ndarray, ...]:
    folder = root / "cifar10" / "cifar-10-batches-py"
    if folder.exists():
        train = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
        x_test, y_test = _cifar_batch(folder / "test_batch")
        return (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                x_test, y_test)
    path = _require(root / "cifar10" / "cifar10_jpeg_q75.npz", "cifar10")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffusionblocks"
    cached = cache / "cifar10_jpeg_q75.decoded.npz"
    if cached.exists() and cached.stat().st_mtime >= path.stat().st_mtime:
        return _npz(cached)
    d = np.load(path)
    arrays = (_decode_jpegs(d["train_jpeg"], d["train_offsets"]), d["y_train"],
              _decode_jpegs(d["test_jpeg"], d["test_offsets"]), d["y_test"])
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
        tmp.replace(cached)
    except OSError:
        pass
    return arrays


def _cifar100(root: Path) -> tuple[np.ndarray, ...]:
    folder = _require(root / "cifar100" / "cifar-100-python", "cifar100")
    return (*_cifar_batch(folder / "train", b"fine_labels"), *_cifar_batch(folder / "test", b"fine_labels"))


def _image_folder(path: Path, size: int) -> tuple[np.ndarray, ...]:
    """Images of ``path``'s train/ and val/ (or test/) class subfolders, searched recursively,
    RGB, resized to size×size; Tiny-ImageNet's val/images with val_annotations.txt too. Decoded
    once per folder and size into the cache."""
    train = path / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"image folder {path} needs train/CLASS/ subfolders (and val/ or test/)")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    held = next((path / s for s in ("val", "test") if (path / s).is_dir()), None)
    if not classes or held is None:
        raise FileNotFoundError(f"image folder {path} needs class subfolders in train/ and a val/ or test/")

    def listed(folder: Path) -> list[tuple[Path, int]]:
        notes = folder / "val_annotations.txt"  # Tiny-ImageNet: file<TAB>class<TAB>box
        if notes.exists():
            rows = [line.split("\t") for line in notes.read_text().splitlines() if line.strip()]
            if any(len(r) < 2 for r in rows):
                raise ValueError(f"{notes}: every line must be FILE<TAB>CLASS…")
            return [(folder / "images" / r[0], index[r[1]]) for r in rows if r[1] in index]
        return [(f, index[c.name]) for c in sorted(folder.iterdir()) if c.name in index
                for f in sorted(c.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]

    items = listed(train), listed(held)
    stamp = hashlib.sha256(f"{path.resolve()}|{size}".encode())
    for f, c in (*items[0], *items[1]):  # any image added, removed, replaced or relabelled
        st = f.stat()
        stamp.update(f"{f}|{c}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffusionblocks"
    cached = cache / f"folder_{stamp.hexdigest()[:16]}.npz"
    if cached.exists():
        try:
            return _npz(cached)
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt from the images
            cached.unlink(missing_ok=True)
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("image folders need Pillow to decode: "
                         "pip install 'diffusionblocks[cifar]'") from None

    def read(items: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        if not items:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
        x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC))
                      for f, _ in items])
        return x, np.array([c for _, c in items], dtype=np.int64)

    arrays = (*read(items[0]), *read(items[1]))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")  # ranks decoding at once do not collide
        np.savez(tmp, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
        tmp.replace(cached)
    except OSError:
        pass
    return arrays


SCALINGS = ("standard", "symmetric")


def load_images(name: str, root: str | Path | None = None, scaling: str = "standard",
                size: int | None = None) -> ImageData:
    """Load a dataset by name. ``standard``: pixels standardized per channel with the training
    split's statistics (classification); ``symmetric``: pixels mapped to [-1, 1] (generation).
    ``size``: the side image folders are resized to (default 64)."""
    if scaling not in SCALINGS:
        raise ValueError(f"unknown image scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    check_dataset(name)
    root = data_dir(root)
    if name.startswith("folder:"):
        arrays = _image_folder(Path(name[7:]), size or 64)
    elif name == "tinyimagenet":
        arrays = _image_folder(_require(root / "tinyimagenet" / "tiny-imagenet-200", name), size or 64)
    elif name == "digits":
        arrays = _digits()
    elif name == "mnist":
        arrays = _npz(_require(root / "mnist" / "mnist.npz", name))
    elif name == "fashion_mnist":
        arrays = _npz(_require(root / "fashion_mnist" / "fashion_mnist.npz", name))
    elif name == "cifar10":
        arrays = _cifar10(root)
    elif name == "cifar100":
        arrays = _cifar100(root)
    else:
        arrays = _npz(_require(root / "cifar10" / "cifar10_exact_subset.npz", name))
    x_train, y_train, x_test, y_test = arrays

    def images(x: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(x)).float() / 255
        return x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()

    xtr, xte = images(x_train), images(x_test)
    ytr = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    yte = torch.from_numpy(np.asarray(y_test, dtype=np.int64))
    if scaling == "symmetric":
        half = torch.full((1, xtr.shape[1], 1, 1), 0.5)
        return ImageData(2 * xtr - 1, ytr, 2 * xte - 1, yte, int(ytr.max()) + 1, pixels=(half, half))
    mean = xtr.mean(dim=(0, 2, 3), keepdim=True)
    std = xtr.std(dim=(0, 2, 3), keepdim=True)
    return ImageData((xtr - mean) / std, ytr, (xte - mean) / std, yte, int(ytr.max()) + 1,
                     pixels=(mean, std))


def on_device(tensors: tuple[Tensor, ...], device, share: float = 0.25) -> tuple[Tensor, ...]:
    """A dataset's tensors where training reads them: all moved to an accelerator once when
    together they take at most ``share`` of its free memory, else all left on the host (each batch
    is gathered there and copied over); on the CPU, as they are."""
    device = torch.device(device)
    if device.type == "cpu":
        return tensors
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if sum(t.numel() * t.element_size() for t in tensors) > share * free:
            return tensors
    return tuple(t.to(device) for t in tensors)


AUGMENTATIONS = ("flip", "crop", "randaugment")


def parse_augment(spec: str) -> tuple[str, ...]:
    """``"flip,crop"`` -> ("flip", "crop"); ``""`` or ``"none"``: no augmentation."""
    names = tuple(n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(AUGMENTATIONS)} "
                         "(comma-separated, e.g. flip,crop) or none")
    return names


def augment(x: Tensor, ops: tuple[str, ...], generator: torch.Generator, pad: int = 4,
            pixels: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Random horizontal flip, random crop and RandAugment of a batch (N, C, H, W), one draw per
    image, on the batch's device, in that order. The crop pads ``pad`` zeros on every side (the
    mean pixel, for standardized images) and cuts an H×W window at a random offset, as
    torchvision's RandomCrop(padding=4). RandAugment (:func:`randaugment`) works on pixels in
    [0, 1]: ``pixels`` = (mean, std) of the standardization undoes it and redoes it."""
    n, _, h, w = x.shape
    if "flip" in ops:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if "crop" in ops:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded.gather(2, rows.expand(n, x.shape[1], h, w + 2 * pad)).gather(
            3, cols.expand(n, x.shape[1], h, w))
    if "randaugment" in ops:
        if pixels is None:
            raise ValueError("randaugment needs the images' pixel scale (ImageData.pixels)")
        mean, std = (t.to(x.device) for t in pixels)
        x = (randaugment((x * std + mean).clamp(0, 1), generator) - mean) / std
    return x


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: b + factor·(a − b), clipped to [0, 1] (factor 1: a itself)."""
    return (b + factor * (a - b)).clamp(0, 1)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample each image through its 2×3 affine map (normalized coordinates), nearest pixel,
    filling outside with grey (0.5), as the RandAugment reference fills with a constant."""
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    inside = torch.nn.functional.grid_sample(torch.ones_like(x[:, :1]), grid, mode="nearest",
                                             align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="nearest", align_corners=False)
    return out * inside + 0.5 * (1 - inside)


def _equalize(x: Tensor) -> Tensor:
    """Histogram equalization per image and channel over 256 grey levels."""
    n, c, h, w = x.shape
    levels = (x * 255).round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device, dtype=x.dtype)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=x.dtype))
    cdf = hist.cumsum(1)
    lo = cdf.gather(1, levels.min(1, keepdim=True).values)  # the cdf at the darkest level present
    mapped = (cdf - lo) / (h * w - lo).clamp(min=1)
    return mapped.gather(1, levels).view(n, c, h, w).clamp(0, 1)


def _factor(s: Tensor) -> Tensor:
    return (1 + 0.9 * s).view(-1, 1, 1, 1)  # an enhancement factor in [0.1, 1.9]


def _shift(i: int, j: int, scale: float):
    """A shear (off-diagonal) or translation (last column) of the affine map by scale·s."""
    def op(x: Tensor, s: Tensor) -> Tensor:
        theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(len(x), 1, 1)
        theta[:, i, j] = scale * s
        return _affine(x, theta)
    return op


def _rotate(x: Tensor, s: Tensor) -> Tensor:
    a = s * (30 * torch.pi / 180)
    zero = torch.zeros_like(a)
    return _affine(x, torch.stack([torch.stack([a.cos(), -a.sin(), zero], 1),
                                   torch.stack([a.sin(), a.cos(), zero], 1)], 1))


def _autocontrast(x: Tensor, s: Tensor) -> Tensor:
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)


def _posterize(x: Tensor, s: Tensor) -> Tensor:
    step = 2 ** (4 * s.abs()).round().view(-1, 1, 1, 1)  # keep 8 - round(4|s|) bits
    return ((x * 255).floor() / step).floor() * step / 255


def _sharpness(x: Tensor, s: Tensor) -> Tensor:
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device, dtype=x.dtype) / 13
    smooth = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"),
                                        kernel.expand(x.shape[1], 1, 3, 3), groups=x.shape[1])
    return _blend(x, smooth, _factor(s))


# RandAugment's 14 operations (Cubuk et al., 2020) on images in [0, 1], each at a signed strength
# s ∈ {-m, m} per image (m = magnitude / 30), with the reference implementation's ranges.
RANDAUGMENT_OPS = {
    "identity": lambda x, s: x,
    "autocontrast": _autocontrast,
    "equalize": lambda x, s: _equalize(x),
    "rotate": _rotate,  # ±30° at m = 1
    "solarize": lambda x, s: torch.where(x * 255 >= 256 * (1 - s.abs().view(-1, 1, 1, 1)), 1 - x, x),
    "color": lambda x, s: _blend(x, _gray(x), _factor(s)),
    "posterize": _posterize,  # 4 to 8 bits
    "contrast": lambda x, s: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), _factor(s)),
    "brightness": lambda x, s: _blend(x, torch.zeros_like(x), _factor(s)),
    "sharpness": _sharpness,
    "shear_x": _shift(0, 1, 0.3),
    "shear_y": _shift(1, 0, 0.3),
    "translate_x": _shift(0, 2, 0.9),  # up to 45% of the side (coordinates span 2)
    "translate_y": _shift(1, 2, 0.9),
}


def randaugment(x: Tensor, generator: torch.Generator, n_ops: int = 2, magnitude: float = 9) -> Tensor:
    """RandAugment of a batch of images in [0, 1]: ``n_ops`` operations in turn, each chosen
    uniformly per image among :data:`RANDAUGMENT_OPS` (identity included) at strength
    ``magnitude``/30 with a random sign, all drawn from ``generator`` on the batch's device."""
    ops = list(RANDAUGMENT_OPS.values())
    for _ in range(n_ops):
        choice = torch.randint(len(ops), (len(x),), generator=generator, device=x.device)
        sign = torch.randint(2, (len(x),), generator=generator, device=x.device) * 2 - 1
        strength = sign.to(x.dtype) * (magnitude / 30)
        out = x.clone()
        for k, op in enumerate(ops):
            idx = (choice == k).nonzero().flatten()
            if len(idx):
                out[idx] = op(x[idx], strength[idx])
        x = out
    return x


class Batches:
    """Shuffled training batches addressed by step: batch t of epoch t // (N // batch_size).

    Each epoch's order comes from (seed, epoch), and batch t's augmentation from (seed, t), so
    any step's batch can be rebuilt on resume. The last partial batch of an epoch is dropped in
    training only. The images live on ``device`` when they fit (:func:`on_device`), and the
    augmentation is drawn there.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int, device="cpu",
                 augment: tuple[str, ...] = (), pixels: tuple[Tensor, Tensor] | None = None):
        if batch_size > len(y):
            raise ValueError(f"batch size {batch_size} exceeds the {len(y)} training examples")
        self.x, self.y = on_device((x, y), device)
        self.batch_size, self.seed, self.device, self.augment = batch_size, seed, device, augment
        self.pixels = pixels
        self.per_epoch = len(y) // batch_size
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            perm = torch.randperm(len(self.y), generator=g)
            self._epoch, self._perm = epoch, perm.to(self.x.device)
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.x[idx].to(self.device)
        y = self.y[idx].to(self.device)
        if self.augment:
            g = torch.Generator(x.device).manual_seed(self.seed * 1_000_033 + step)
            x = augment(x, self.augment, g, pixels=self.pixels)
        return x, y
