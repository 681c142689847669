"""Shared fixtures: the data directory, the embedded digits data, a tiny DiffusionBlocks ViT."""

import os
from pathlib import Path

import pytest
import torch

from diffusionblocks.data.images import load_images
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.tasks.classify import ClassifyConfig, build, resolve_config

REPO = Path(__file__).resolve().parents[1]

# The test machine has 2 cores and may share them with a training job; one intra-op thread
# avoids oversubscription, which made tiny-model steps 10x slower in practice.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """Feature networks and judges trained by tests are cached here, not in the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["XDG_CACHE_HOME"] = str(path)
    return path / "diffusionblocks"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("DIFFUSIONBLOCKS_DATA") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"data directory {path} is absent; set $DIFFUSIONBLOCKS_DATA to run this test")
    return path


@pytest.fixture(scope="session")
def digits():
    return load_images("digits")


def tiny_config(digits, **overrides) -> ClassifyConfig:
    cfg = ClassifyConfig(mode="dblocks", dataset="digits", blocks=3,
                         vit=ViTConfig(width=16, depth=6, heads=2), **overrides)
    return resolve_config(cfg, digits)


def killed_after_first_checkpoint(monkeypatch, train) -> None:
    """Run ``train()`` and kill it (KeyboardInterrupt) right after its first checkpoint."""
    from diffusionblocks import checkpoint

    real_save = checkpoint.save

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill after the first checkpoint")

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.undo()


@pytest.fixture
def tiny_cfg(digits) -> ClassifyConfig:
    return tiny_config(digits)


@pytest.fixture
def tiny_model(tiny_cfg):
    """A fresh DiffusionBlocks ViT: 6 AdaLN-Zero layers of width 16 in 3 blocks, on digits."""
    return build(tiny_cfg)


@pytest.fixture
def batch(digits):
    return digits.x_train[:8], digits.y_train[:8]
