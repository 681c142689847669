"""Classification end to end: measured memory, learning on digits, evaluation, CLI, MNIST."""

import json

import pytest
import torch
from torch import nn

from diffusionblocks import cli
from diffusionblocks.data.images import load_images
from diffusionblocks.memory import SavedTensors, activation_bytes
from diffusionblocks.models.vit import PatchStem, ViTConfig
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import OptimConfig

# --- measured memory --------------------------------------------------------------------------


def test_saved_tensors_counts_what_autograd_keeps():
    torch.manual_seed(0)
    linear = nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    # y = relu(x Wᵀ + b).sum(): addmm keeps x (for ∂W) and Wᵀ (for ∂x; a view of the parameter),
    # relu keeps its output (4×8), sum keeps only a size. Float32: x and the relu output are
    # 4·8·4 = 128 bytes each; Wᵀ is a parameter (8·8·4 = 256 bytes) and is excluded.
    with SavedTensors(exclude=linear.parameters()) as saved:
        torch.relu(linear(x)).sum()
    assert saved.bytes == 128 + 128
    assert len(saved.seen) == 2
    with SavedTensors() as everything:
        torch.relu(linear(x)).sum()
    assert everything.bytes == 128 + 256 + 128
    # without grad on x, autograd no longer needs Wᵀ; x and the relu output remain (128 + 128)
    assert activation_bytes(lambda: torch.relu(linear(x.detach())).sum(), linear) == 256


def test_saved_tensors_counts_a_view_by_its_own_bytes():
    torch.manual_seed(0)
    linear = nn.Linear(8, 8)
    base = torch.randn(1000, 8)  # 32,000 bytes of storage
    with SavedTensors(exclude=linear.parameters()) as saved:
        torch.relu(linear(base[10:14])).sum()
    assert saved.bytes == 128 + 128


# --- learning on digits -----------------------------------------------------------------------

# A small ViT that learns digits in a few CPU seconds, both modes on the same budget (150
# end-to-end steps = 450 block steps) at their default learning rates. Seeds 0-2 gave
# 0.70-0.79 end to end and 0.56-0.62 DiffusionBlocks; chance is 0.1.
SMALL = dict(dataset="digits", blocks=3, batch_size=64, evals=1, steps=150,
             vit=ViTConfig(width=32, depth=3, heads=2), optim=OptimConfig(lr=None, warmup=20))


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {
        "e2e": classify.train(ClassifyConfig(mode="e2e", out=str(out / "e2e"), **SMALL),
                              digits, show=False),
        "dblocks": classify.train(ClassifyConfig(mode="dblocks", out=str(out / "db"), **SMALL),
                                  digits, show=False),
    }


def test_end_to_end_learns_digits(runs):
    r = runs["e2e"]
    assert r["test_accuracy"] > 0.6, r["test_accuracy"]  # chance is 0.1
    assert r["steps"] == 150 and r["layer_evals"] == 150 * 3 and r["blocks"] == 1


def test_diffusion_blocks_learn_digits(runs):
    r = runs["dblocks"]
    assert r["test_accuracy"] > 0.45, r["test_accuracy"]  # chance is 0.1
    # equal layer evaluations: B× the steps, one block of L/B layers each
    assert r["steps"] == 150 * 3 and r["layer_evals"] == 150 * 3 and r["blocks"] == 3


def test_diffusion_blocks_save_activation_memory(runs):
    e2e, db = runs["e2e"]["activation_bytes_per_step"], runs["dblocks"]["activation_bytes_per_step"]
    # one of three layers needs activations (plus the shared stem and head): well under e2e
    assert 0 < db < 0.6 * e2e, (db, e2e)
    assert len(runs["dblocks"]["activation_bytes_per_block"]) == 3


def test_runs_report_every_test_example(runs):
    for r in runs.values():
        assert r["test_examples"] == 360
        assert r["step_seconds"] > 0 and r["train_seconds"] > 0


class Oracle(nn.Module):
    """Returns the true label's one-hot for every test image it was given: accuracy must be 1."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x.flatten(1), y
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        match = (x.flatten(1)[:, None] == self.x[None]).all(-1).float().argmax(1)
        return nn.functional.one_hot(self.y[match], 10).float()


@pytest.mark.parametrize("batch", [7, 1000])
def test_evaluate_counts_every_example(digits, batch):
    x, y = digits.x_test, digits.y_test
    assert len(y) == 360 and 360 % 7
    cfg = ClassifyConfig(mode="e2e")
    assert classify.evaluate(Oracle(x, y), x, y, cfg, batch=batch) == 1.0
    wrong = y.clone()
    wrong[-1] = (wrong[-1] + 1) % 10  # only the last example, in the last (partial) batch
    assert classify.evaluate(Oracle(x, y), x, wrong, cfg, batch=batch) == pytest.approx(359 / 360)


def test_patch_stem_is_a_strided_convolution_and_reads_conv_checkpoints():
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, channels=3, patch_size=2, width=16)
    stem, conv = PatchStem(cfg), nn.Conv2d(3, 16, kernel_size=2, stride=2)
    state = {**stem.state_dict(), "proj.weight": conv.weight.detach(), "proj.bias": conv.bias.detach()}
    stem.load_state_dict(state)  # a checkpoint of the earlier nn.Conv2d stem
    x, first = torch.randn(5, 3, 8, 8), torch.zeros(5, 16)
    expected = conv(x).flatten(2).transpose(1, 2) + stem.pos
    assert torch.allclose(stem(x, first)[:, 1:], expected, atol=1e-6)


# --- command line -----------------------------------------------------------------------------

TINY_FLAGS = ["--quick", "--quiet", "--width", "16", "--depth", "3", "--heads", "2"]


def test_cli_compare_writes_the_report(tmp_path, capsys):
    cli.main(["compare", "--out", str(tmp_path), *TINY_FLAGS])
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"e2e", "dblocks", "shallow", "ensemble"}  # the controls by default
    for mode, r in report.items():
        for key in ("test_accuracy", "val_accuracy", "activation_bytes_per_step", "step_seconds",
                    "layer_evals", "train_seconds"):
            assert key in r, (mode, key)
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1
        assert r["val_examples"] == 143  # a tenth of digits' 1,437 training images, by default
    assert {r["layer_evals"] for r in report.values()} == {30 * 3}  # every row, the same budget
    assert report["shallow"]["inference_layers"] == 1 and report["ensemble"]["inference_layers"] == 3
    assert "against its controls" in (tmp_path / "report.md").read_text()
    assert "| e2e |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "val_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the curve watches val
    assert "| dblocks |" in capsys.readouterr().out

    # eval of the saved checkpoint reproduces the reported accuracy on all 360 test images
    cli.main(["eval", str(tmp_path / "dblocks" / "checkpoint")])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_examples"] == 360
    assert evaluated["test_accuracy"] == report["dblocks"]["test_accuracy"]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--blocks", "7"], "cannot cut 3 layers into 7 blocks"),
        (["--gamma", "1.5"], "gamma must lie in [0, 1), got 1.5"),
        (["--steps", "0"], "steps must be at least 1, got 0"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--out", str(tmp_path), *TINY_FLAGS, *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("diffusionblocks: error: ") and words in err


def test_cli_unknown_choice_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--sampler", "nope"])  # a fixed set: argparse refuses it
    assert info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # datasets also take folder:PATH, so the config refuses
        cli.main(["compare", "--dataset", "nope"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "unknown dataset 'nope'" in err


# --- real data --------------------------------------------------------------------------------


def test_mnist_from_the_data_dir(data_dir):
    if not (data_dir / "mnist" / "mnist.npz").exists():
        pytest.skip(f"{data_dir / 'mnist' / 'mnist.npz'} is absent")
    data = load_images("mnist", data_dir)
    assert len(data.y_train) == 60000 and len(data.y_test) == 10000
    assert data.shape == (1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10
    # standardized with the training split's statistics
    assert abs(data.x_train.mean().item()) < 1e-3 and data.x_train.std().item() == pytest.approx(1, abs=1e-3)
    assert torch.bincount(data.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_label_error_centres_the_noise_on_a_wrong_class_and_keeps_the_true_target(monkeypatch):
    cfg = ClassifyConfig(mode="dblocks", blocks=2, vit=ViTConfig(width=16, depth=2, heads=2))
    model = classify.build(classify.resolve_config(cfg, classify.FAMILY.load_data(cfg)))
    x, y = torch.randn(400, 1, 8, 8), torch.randint(0, 10, (400,))
    seen = {}

    def spy(model, x, y, block, gen, centre=None):
        seen["centre"], seen["y"] = centre, y
        return torch.tensor(0.0)

    monkeypatch.setattr(classify, "blockwise_loss", spy)
    table = model.shared.embeddings()
    for p, wrong_share in ((1.0, (0.999, 1.0)), (0.3, (0.25, 0.35))):
        classify.wrong_estimate_loss(p, model, x, y, 1, torch.Generator().manual_seed(0))
        centred_on = (seen["centre"] @ table.T).argmax(-1)  # unit rows: the class each centre is
        assert torch.equal(seen["y"], y)  # the target stays the true label
        share = (centred_on != y).float().mean().item()
        assert wrong_share[0] <= share <= wrong_share[1]
    with pytest.raises(ValueError, match="label_error is a probability below 1"):
        ClassifyConfig(label_error=1.0)
    with pytest.raises(ValueError, match="needs --mode dblocks"):
        ClassifyConfig(mode="e2e", label_error=0.2)
