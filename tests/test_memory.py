"""Memory: training-state and checkpointed-activation counts by hand, the gated residual,
offload (bit-exact round trips and training), peak memory, and the bench command."""

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from torch import nn

from diffusionblocks import bench, checkpoint, cli
from diffusionblocks.conditioning import modulated_linear
from diffusionblocks.memory import PeakMemory, SavedTensors, run_layers, state_bytes, touch_fresh_pages
from diffusionblocks.models.vit import TransformerLayer, ViTConfig
from diffusionblocks.offload import Offload, pack, unpack
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig, build
from diffusionblocks.training import Blockwise, blockwise_loss, step_generator

# --- counted by hand --------------------------------------------------------------------------


def test_state_bytes_counts_parameters_gradients_and_adamw_state():
    linear = nn.Linear(8, 8)  # 64 + 8 = 72 floats = 288 bytes
    opt = torch.optim.AdamW(linear.parameters())
    assert state_bytes({"l": linear}, {"l": opt}) == {"l": {"params": 288, "grads": 0, "optimizer": 0}}
    linear(torch.randn(2, 8)).sum().backward()
    opt.step()
    # AdamW: exp_avg and exp_avg_sq per parameter (288 each) and a float32 step counter per
    # parameter tensor (2 × 4 bytes)
    assert state_bytes({"l": linear}, {"l": opt}) == {"l": {"params": 288, "grads": 288, "optimizer": 584}}


def test_checkpointed_layers_keep_only_their_inputs():
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8)) for _ in range(3)]
    params = [p for layer in layers for p in layer.parameters()]
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensors(exclude=params) as plain:
        run_layers(layers, x)
    # per layer: its input (4·8), the ReLU output kept by ReLU and by the second Linear (one
    # tensor, 4·32); float32 -> 3 · (128 + 512) bytes
    assert plain.bytes == 3 * (128 + 512)
    with SavedTensors(exclude=params) as ckpt:
        out = run_layers(layers, x, checkpointing=True)
    assert ckpt.bytes == 3 * 128  # each layer's input, nothing else
    out.sum().backward()  # and backward still works through the recomputation
    assert x.grad is not None and all(p.grad is not None for p in params)


def test_modulated_linear_keeps_only_the_normalized_input_and_its_statistics():
    linear = nn.Linear(4, 5)
    x = torch.randn(2, 3, 4, requires_grad=True)
    shift, scale = torch.randn(2, 1, 4, requires_grad=True), torch.randn(2, 1, 4, requires_grad=True)
    with SavedTensors(exclude=linear.parameters()) as saved:
        modulated_linear(x, shift, scale, linear)
    # x̂ (2, 3, 4), 1/std (2, 3, 1), shift and scale (2, 1, 4); not x, nor the modulated input
    assert saved.bytes == (2 * 3 * 4 + 2 * 3 + 2 * 2 * 4) * 4


def test_an_adaln_layer_saves_no_more_than_a_plain_one_plus_its_modulation():
    torch.manual_seed(0)
    n, t, w = 4, 10, 16
    h, c = torch.randn(n, t, w, requires_grad=True), torch.randn(n, w)
    plain, adaln = TransformerLayer(w, 2), TransformerLayer(w, 2, cond_dim=w)
    with SavedTensors(exclude=plain.parameters()) as a:
        plain(h)
    with SavedTensors(exclude=adaln.parameters()) as b:
        adaln(h, c)
    # extra: the conditioning c and its SiLU output (n·w each), the chunked (n, 1, 6w)
    # modulation rows the branches keep (shifts, scales, gates)
    assert b.bytes - a.bytes <= (2 * n * w + n * 6 * w) * 4


# --- offload ----------------------------------------------------------------------------------


def snapshot(model, strategy):
    params = {k: v.clone() for k, v in model.state_dict().items()}
    optim = {n: {k: v.clone() for s in o.state.values() for k, v in s.items() if torch.is_tensor(v)}
             for n, o in strategy.optimizers.items()}
    return params, [sorted((k, v.tolist()) for k, v in d.items()) for d in optim.values()]


def test_pack_keeps_every_tensor_bit_exactly_in_one_flat_tensor_per_dtype():
    tensors = {"w": torch.randn(3, 4), "step": torch.tensor(7.0), "ids": torch.arange(5),
               "b": torch.randn(2, 1, 3), "half": torch.randn(4).half()}
    flat, layout = pack(tensors)
    assert {k: v.shape for k, v in flat.items()} == {
        "torch.float32": (12 + 1 + 6,), "torch.int64": (5,), "torch.float16": (4,)}
    back = unpack(flat, layout)
    assert list(back) == list(tensors)
    assert all(back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t)
               for k, t in tensors.items())


@pytest.mark.parametrize("to", ["cpu", "disk"])
def test_offload_round_trips_weights_and_optimizer_state_bit_exactly(digits, batch, to, tmp_path):
    cfg = tiny_config(digits)
    model = build(cfg)
    strategy = Blockwise(model, cfg.optim)
    for t in range(6):  # give every block optimizer state
        strategy.step(*batch, step_generator(0, t))
    before = snapshot(model, strategy)
    blocks = {f"block_{b}": blk for b, blk in enumerate(model.blocks)}
    offload = Offload(blocks, strategy.optimizers, to, tmp_path / "store")
    offload.fetch("block_1")
    assert offload.resident == ["block_1"]
    for name in ("block_0", "block_2"):
        assert all(p.numel() == 0 and p.grad is None for p in blocks[name].parameters()), name
        assert state_bytes({name: blocks[name]}, strategy.optimizers)[name] == {
            "params": 0, "grads": 0, "optimizer": 0}
    if to == "disk":
        assert sorted(f.name for f in (tmp_path / "store").iterdir()) == [
            "block_0.safetensors", "block_2.safetensors"]
    with offload.gathered():
        during = snapshot(model, strategy)
    assert offload.resident == ["block_1"]
    offload.fetch("block_2")
    offload.close()
    after = snapshot(model, strategy)
    for got in (during, after):
        assert got[1] == before[1]
        assert all(torch.equal(before[0][k], got[0][k]) for k in before[0])


@pytest.mark.parametrize("to", ["cpu", "disk"])
def test_blockwise_training_with_offload_equals_training_without(digits, batch, to, tmp_path):
    finals = []
    for offload in (None, to):
        cfg = tiny_config(digits)
        model = build(cfg)
        strategy = Blockwise(model, cfg.optim, offload=offload, offload_dir=tmp_path / "store")
        seen = set()
        for t in range(12):
            seen.add(strategy.step(*batch, step_generator(0, t))["block"])
            if offload:
                resident = state_bytes(model.parts(), strategy.optimizers)
                assert sum(sum(resident[f"block_{b}"].values()) > 0 for b in range(3)) == 1
        with strategy.gathered():
            finals.append({k: v.clone() for k, v in model.state_dict().items()})
    assert seen == {0, 1, 2}
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_offload_and_checkpointing_resume_bit_identically(digits, tmp_path, monkeypatch):
    def config(out, **extra):
        return ClassifyConfig(dataset="digits", mode="dblocks", steps=10, evals=2, batch_size=32,
                              vit=ViTConfig(width=16, depth=3, heads=2), out=str(out), **extra)

    straight = classify.train(config(tmp_path / "straight"), digits, show=False)
    real_save = checkpoint.save

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill after the first checkpoint")

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    lean = dict(offload="disk", checkpointing=True)
    with pytest.raises(KeyboardInterrupt):
        classify.train(config(tmp_path / "resumed", **lean), digits, show=False)
    monkeypatch.undo()
    resumed = classify.train(config(tmp_path / "resumed", **lean), digits, show=False)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert not (tmp_path / "resumed" / "offload").exists()  # the store is cleaned up
    for name in ("shared", "block_0", "block_1", "block_2"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "resumed" / "checkpoint" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_activation_checkpointing_gives_the_same_gradients(digits, batch):
    grads = []
    for ckpt in (False, True):
        model = build(tiny_config(digits, checkpointing=ckpt))
        blockwise_loss(model, *batch, 1, torch.Generator().manual_seed(0)).backward()
        grads.append([p.grad for p in model.blocks[1].parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_offload_config_errors():
    with pytest.raises(ValueError, match="needs --mode dblocks"):
        ClassifyConfig(mode="e2e", offload="cpu")
    with pytest.raises(ValueError, match="unknown offload target 'gpu'"):
        ClassifyConfig(offload="gpu")
    with pytest.raises(ValueError, match="unknown offload target"):
        Offload({}, {}, "tape")


# --- peak memory and the bench command --------------------------------------------------------


def test_peak_memory_sees_a_transient_allocation():
    with PeakMemory() as outer:
        pass
    with PeakMemory() as peak:
        touch_fresh_pages(64 * 2**20)
    if not peak.exact:
        pytest.skip("no resettable high-water mark on this platform")
    assert 60 * 2**20 <= peak.above_start < 80 * 2**20
    assert outer.above_start < 16 * 2**20


def test_a_high_water_mark_reset_that_the_kernel_ignores_is_not_trusted(monkeypatch):
    from diffusionblocks import memory

    if not memory._hwm_resets():
        pytest.skip("no resettable high-water mark on this platform")
    monkeypatch.setattr(memory, "_reset_hwm", lambda: True)  # accepted, and nothing happens
    assert not memory._hwm_resets.__wrapped__()


def test_bench_memory_and_speed_write_their_records(tmp_path, capsys):
    small = ["--dataset", "digits", "--depth", "2", "--width", "16", "--batch-size", "16",
             "--blocks", "2", "--steps", "2", "--warmup", "1", "--threads", "1", "--quiet",
             "--out", str(tmp_path)]
    cli.main(["bench", "memory", *small])
    records = json.loads((tmp_path / "memory.json").read_text())
    assert [(r["mode"], r["blocks"]) for r in records] == [
        ("e2e", 1), ("e2e_ckpt", 1), ("dblocks", 2), ("dblocks_ckpt", 2), ("dblocks_offload", 2)]
    for r in records:
        assert {"activation_bytes", "resident_bytes", "peak_bytes", "step_seconds"} <= r.keys()
        assert r["activation_bytes"] > 0 and r["resident_bytes"] > r["activation_bytes"]
    by = {r["mode"]: r for r in records}
    assert by["e2e"]["activation_bytes"] > 1.5 * by["dblocks"]["activation_bytes"]
    assert by["e2e_ckpt"]["activation_bytes"] < by["e2e"]["activation_bytes"] / 2
    assert by["dblocks_offload"]["state_bytes"] < by["dblocks"]["state_bytes"]
    assert (tmp_path / "memory.md").exists() and (tmp_path / "memory.png").exists()

    cli.main(["bench", "speed", *small])
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert {r["mode"] for r in speed} == {"e2e", "e2e_ckpt", "dblocks", "dblocks_ckpt", "dblocks_offload"}
    assert all(r["step_seconds"] > 0 for r in speed)
    for r in speed:  # the round-by-round ratio: quartiles in order; e2e against itself is 1
        q1, q2, q3 = r["relative_paired_quartiles"]
        assert q1 <= q2 <= q3 and (r["mode"] != "e2e" or q1 == q3 == 1.0)
    assert "dblocks_offload" in capsys.readouterr().out
    assert all(r["precision"] == "fp32" for r in speed)


def test_bench_rows_train_at_the_asked_precision_without_weight_averages(digits):
    from diffusionblocks.bench import BenchConfig, _run_config

    for task in ("classify", "generate"):
        run = _run_config(BenchConfig(task=task, dataset="digits", precision="bf16"), "dblocks", 2, digits)
        assert run.optim.precision == "bf16" and run.optim.ema == 0.0


def test_bench_refuses_blocks_that_do_not_divide_the_depth(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "memory", "--blocks", "5", "--depth", "12"])
    assert e.value.code == 2
    assert "blocks 5 must divide depth 12" in capsys.readouterr().err



@pytest.mark.slow  # ten fresh processes (about 45 s); bench parallel --task generate covers the DiT in bench
def test_bench_memory_measures_the_dit_with_task_generate(tmp_path):
    cli.main(["bench", "memory", "--task", "generate", "--dataset", "digits", "--depth", "2",
              "--width", "16", "--batch-size", "16", "--blocks", "2", "--steps", "1", "--warmup", "1",
              "--threads", "1", "--quiet", "--out", str(tmp_path)])
    by = {r["mode"]: r for r in json.loads((tmp_path / "memory.json").read_text())}
    assert set(by) == {"e2e", "e2e_ckpt", "dblocks", "dblocks_ckpt", "dblocks_offload"}
    assert {r["task"] for r in by.values()} == {"generate"}
    assert by["e2e"]["activation_bytes"] > 1.5 * by["dblocks"]["activation_bytes"]
    assert by["dblocks_offload"]["state_bytes"] < by["dblocks"]["state_bytes"]
    assert "generate on digits: DiT depth 2" in (tmp_path / "memory.md").read_text()


def test_bench_refuses_a_task_it_does_not_measure(tmp_path):
    with pytest.raises(ValueError, match="--task mdm is for bench parallel"):
        bench.run("memory", bench.BenchConfig(task="mdm", out=str(tmp_path)))
    with pytest.raises(ValueError, match="--train-steps trains classification"):
        bench.run("parallel", bench.BenchConfig(task="generate", dataset="digits", out=str(tmp_path)),
                  train_steps=10)
