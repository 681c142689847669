"""The API reference builds, and the check behind it finds an undocumented public name."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("pdoc")


def _api():
    path = Path(__file__).resolve().parents[1] / "docs" / "api.py"
    spec = importlib.util.spec_from_file_location("api_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_reference_builds_with_every_public_name_documented(tmp_path):
    assert _api().main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "diffusionblocks" / "convert.html").exists()
    assert "conditioned" in (tmp_path / "diffusionblocks.html").read_text()


def test_an_undocumented_public_name_is_named(monkeypatch):
    module = types.ModuleType("fake_public", "A documented module.")

    def helper():
        pass

    class Thing:
        """Documented."""

        def method(self):
            pass

    class Layer(torch.nn.Module):  # torch's docstrings do not count
        def forward(self, h):
            return h

    for obj in (helper, Thing, Layer):
        obj.__module__ = "fake_public"
        setattr(module, obj.__name__, obj)
    monkeypatch.setitem(sys.modules, "fake_public", module)
    assert _api().undocumented("fake_public") == ["fake_public.helper", "fake_public.Thing.method",
                                                  "fake_public.Layer", "fake_public.Layer.forward"]
