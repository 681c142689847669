"""Mixed precision: every task and mode trains under bf16 autocast on the CPU, with the loss of a
step within 2% of fp32's; fp16 scales its gradients and keeps the scaler in the checkpoint."""

import json

import pytest
import torch
import torch.nn.functional as F

from diffusionblocks import cli, methods, training
from diffusionblocks.conditioning import modulated_linear
from diffusionblocks.models.vit import scaled_dot_products
from diffusionblocks.tasks import classify
from diffusionblocks.training import OptimConfig, step_generator

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(80))
IMAGES = ["--dataset", "digits", "--width", "32", "--depth", "3", "--heads", "2", "--batch-size", "32"]
SHAPES = {
    "classify": IMAGES,
    "generate": IMAGES,
    "mdm": ["--width", "32", "--depth", "3", "--heads", "2", "--context", "16", "--batch-size", "8"],
    "ar": ["--width", "32", "--depth", "3", "--heads", "2", "--context", "16", "--batch-size", "8",
           "--prompt-length", "4"],
    "recurrent": ["--width", "32", "--heads", "2", "--context", "16", "--batch-size", "8",
                  "--prompt-length", "4"],
}


class FirstStep(Exception):
    def __init__(self, loss: float):
        self.loss = loss


def one_step(strategy, batch_at, total, warmup, seed, *args, **kwargs):
    """Stands in for ``fit``: one training step of the run as built, then stop."""
    x, y = batch_at(0)
    raise FirstStep(strategy.step(x, y, step_generator(seed, 0))["loss"])


def first_loss(task, mode, precision, tmp_path, monkeypatch) -> float:
    monkeypatch.setattr(training, "fit", one_step)
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT)
    data = ["--data", str(text)] if task in ("mdm", "ar", "recurrent") else []
    blocks = ["--blocks", "3"] if task != "recurrent" else []
    if task == "recurrent" and mode == "e2e":
        mode = "baseline"  # the recurrent family's end-to-end model
    with pytest.raises(FirstStep) as info:
        cli.main(["train", task, "--mode", mode, *SHAPES[task], *blocks, *data, "--steps", "5",
                  "--precision", precision, "--device", "cpu", "--quiet",
                  "--out", str(tmp_path / f"{task}_{mode}_{precision}")])
    return info.value.loss


@pytest.mark.parametrize("task", ["classify", "generate", "mdm", "ar", "recurrent"])
@pytest.mark.parametrize("mode", ["e2e", "dblocks"])
def test_bf16_trains_every_task_and_mode_within_2_percent_of_fp32(task, mode, tmp_path, monkeypatch):
    fp32 = first_loss(task, mode, "fp32", tmp_path, monkeypatch)
    bf16 = first_loss(task, mode, "bf16", tmp_path, monkeypatch)
    assert fp32 > 0 and abs(bf16 - fp32) <= 0.02 * fp32, (fp32, bf16)


def test_auto_precision_is_fp32_on_the_cpu_and_bf16_on_cuda():
    assert training.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert training.resolve_precision("fp16", torch.device("cpu")) == "fp16"
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16"):
        OptimConfig(precision="fp8")


def test_modulated_linear_under_autocast_gives_fp32_gradients_close_to_fp32():
    torch.manual_seed(0)
    x, shift, scale = (torch.randn(4, 5, 16, requires_grad=True), torch.randn(4, 1, 16, requires_grad=True),
                       torch.randn(4, 1, 16, requires_grad=True))
    linear = torch.nn.Linear(16, 8)
    leaves = (x, shift, scale, linear.weight, linear.bias)

    def grads(enabled):
        for t in leaves:
            t.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = modulated_linear(x, shift, scale, linear)
        (out.float() ** 2).sum().backward()
        return out.dtype, [t.grad.clone() for t in leaves]

    (full_dtype, full), (low_dtype, low) = grads(False), grads(True)
    assert full_dtype == torch.float32 and low_dtype == torch.bfloat16
    for a, b in zip(full, low):
        assert b.dtype == torch.float32 and (a - b).norm() <= 0.02 * a.norm()


def test_attention_under_cpu_autocast_runs_its_scaled_dot_products_in_fp32():
    """The bf16 kernel's backward on CPU is slower than fp32's; the products stay fp32 there."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = scaled_dot_products(q, k, v, causal)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=causal)
    assert a.dtype == torch.float32 and torch.equal(a, expected)
    a.sum().backward()
    assert q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0
    assert scaled_dot_products(q, k, v, causal).dtype == torch.bfloat16  # outside autocast: as given


def test_fp16_keeps_a_scaler_per_block_in_the_checkpoint_and_resumes(tmp_path):
    args = ["train", "classify", *SHAPES["classify"], "--blocks", "3", "--steps", "10", "--evals", "1",
            "--precision", "fp16", "--quiet", "--out", str(tmp_path)]
    cli.main(args)
    ckpt = tmp_path / "checkpoint"
    assert {f"block_{b}.scaler.optim.pt" for b in range(3)} <= {p.name for p in ckpt.iterdir()}
    scaler = torch.load(ckpt / "block_0.scaler.optim.pt", weights_only=True)
    assert scaler["scale"] > 0
    cli.main(args)  # finished: resumed from the checkpoint, scalers included, and reused
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 30 and records[-1]["val_accuracy"] > 0


def test_bench_gpu_refuses_without_cuda_and_measures_every_row_on_a_given_device(tmp_path, capsys):
    from diffusionblocks.bench import bench_gpu

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as info:
            cli.main(["bench", "gpu", "--out", str(tmp_path / "gpu")])
        assert info.value.code == 2 and "needs a CUDA device" in capsys.readouterr().err
    tiny = {"vit": ("classify", {"depth": 2, "width": 16, "heads": 2, "patch_size": 8}),
            "dit": ("generate", {"depth": 2, "width": 16, "heads": 2, "patch_size": 8})}
    rows = bench_gpu(tmp_path / "cpu", torch.device("cpu"), tiny, blocks=(1, 2), steps=2, warmup=1,
                     batch_size=4, show=False)
    assert [(r["model"], r["precision"], r["blocks"]) for r in rows] == [
        (m, p, b) for m in tiny for p in ("fp32", "bf16") for b in (1, 2)]
    for r in rows:
        assert r["peak_bytes"] > 0 and r["step_seconds"] > 0 and r["activation_bytes"] > 0
        assert r["blocks"] > 1 or r["peak_vs_e2e"] == 1.0
    two = [r for r in rows if r["blocks"] == 2]
    assert all(r["activations_vs_e2e"] > 1.2 for r in two)  # one block of two saves less
    fp32, bf16 = ([r["activation_bytes"] for r in rows if r["precision"] == p] for p in ("fp32", "bf16"))
    assert all(b < f for b, f in zip(bf16, fp32))  # autocast keeps bf16 copies for backward
    assert json.loads((tmp_path / "cpu" / "gpu.json").read_text()) == rows
    assert "| dit | bf16 | 2 |" in (tmp_path / "cpu" / "gpu.md").read_text()


def test_fp16_skips_an_overflowing_step_for_the_block_and_the_shared_parts_alike(digits, batch):
    from dataclasses import replace

    from conftest import tiny_config

    from diffusionblocks.training import Blockwise, blockwise_loss

    cfg = tiny_config(digits, shared_policy="cotrained")
    cfg = replace(cfg, optim=replace(cfg.optim, precision="fp16", ema=0.9))
    model = classify.build(cfg)
    overflow = lambda *args: blockwise_loss(*args) * 1e30  # noqa: E731 - gradients become inf
    strategy = Blockwise(model, cfg.optim, loss=overflow)
    assert "shared" in strategy.optimizers  # co-trained: the block and the shared parts step together
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = strategy.step(*batch, step_generator(0, 0))
    scaler = strategy.precision.scalers[f"block_{record['block']}"]
    assert scaler.get_scale() < 65536.0  # the scale backed off
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nobody stepped
    assert all(int(s.ema_updates) == 0 for s in strategy.averages.shadows.values())


@pytest.mark.slow  # compiling three blocks takes one to two minutes on two cores
def test_compile_gives_the_eager_losses_and_keeps_the_checkpoint_keys(digits, batch):
    from dataclasses import replace

    from conftest import tiny_config

    losses = {}
    for compiled in (False, True):
        cfg = tiny_config(digits)
        cfg = replace(cfg, optim=replace(cfg.optim, compile=compiled))
        torch.manual_seed(0)
        model = classify.build(cfg)
        strategy = methods.method(classify.FAMILY, cfg, model).strategy
        losses[compiled] = [strategy.step(*batch, step_generator(0, t))["loss"] for t in range(6)]
        keys = set(model.state_dict())
        assert not any("_orig_mod" in k for k in keys)  # compiled in place: same checkpoint keys
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
