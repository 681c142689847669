"""The foundation's acceptance run, kept out of the default suite: python -m pytest -m slow."""

import json

import pytest

from diffusionblocks import cli


@pytest.mark.slow
def test_default_compare_on_digits(tmp_path):
    """`diffusionblocks compare` with defaults: both modes ≥ 90%, DiffusionBlocks within 2 points."""
    cli.main(["compare", "--quiet", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    e2e, db = report["e2e"]["test_accuracy"], report["dblocks"]["test_accuracy"]
    assert e2e >= 0.90 and db >= 0.90, (e2e, db)
    assert db >= e2e - 0.02, (e2e, db)
    assert report["e2e"]["layer_evals"] == report["dblocks"]["layer_evals"]
