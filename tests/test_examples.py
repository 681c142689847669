"""Every script in examples/ runs with --quick and ends with one JSON line that shows it worked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # as the suite's own threads (conftest.py)
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", *args], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines, f"{name} printed nothing"
    return json.loads(lines[-1])


def test_every_example_is_tested():
    tested = {"residual_mlp.py", "torch_transformer.py", "pretrained_to_blocks.py", "hf_gpt2.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_residual_mlp_samples_lie_on_the_moons():
    summary = run_example("residual_mlp.py")
    assert summary["loss_last"] < summary["loss_first"]
    assert summary["median_distance_to_moons"] < summary["median_distance_of_gaussian_noise"] / 5


def test_a_torch_transformer_encoder_classifies_digits():
    assert run_example("torch_transformer.py")["test_accuracy"] > 0.6  # chance: 0.1


def test_a_converted_model_fine_tunes_block_wise():
    summary = run_example("pretrained_to_blocks.py")
    assert min(summary["test_accuracy"].values()) > 0.5
    assert summary["c_val_accuracy"][-1] > summary["c_val_accuracy"][0]


def test_a_hugging_face_gpt2_learns_tiny_shakespeare_block_wise(data_dir):
    summary = run_example("hf_gpt2.py", "--data-dir", str(data_dir))
    if "skipped" in summary:  # no transformers or no text here; CI has both
        assert not os.environ.get("CI"), summary["skipped"]
        pytest.skip(summary["skipped"])
    assert summary["teacher_forced_accuracy"] > summary["chance"] + 0.05
