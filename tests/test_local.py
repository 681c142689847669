"""Greedy local learning (methods/local.py): the network it starts from, each block's loss by
hand, that no gradient crosses a block boundary, what does cross, and a run that resumes."""

import pytest
import torch
import torch.nn.functional as F

from diffusionblocks.memory import run_layers
from diffusionblocks.methods import local
from diffusionblocks.models.vit import ViTClassifier, ViTConfig
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import OptimConfig

VIT = ViTConfig(image_size=8, channels=1, patch_size=2, width=16, depth=6, heads=2, num_classes=4)


def tiny(blocks: int = 3, split=None) -> local.LocalViT:
    torch.manual_seed(0)
    return local.LocalViT(VIT, blocks, split).eval()


def batch(n: int = 5):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(4, (n,), generator=gen)


def test_starts_as_the_end_to_end_network_of_the_same_seed():
    x, _ = batch()
    torch.manual_seed(0)
    e2e = ViTClassifier(VIT).eval()
    model = tiny()
    assert model.sizes == [2, 2, 2]
    assert torch.equal(model(x), e2e(x))  # same layers, same initial weights, the last head its head
    assert local.inference_layers(model) == 6
    assert tiny(3, [3, 2, 1]).sizes == [3, 2, 1]


def test_each_block_loss_by_hand():
    model = tiny()
    x, y = batch()
    b0, b1, b2 = model.blocks
    h = b0.stem(x, b0.cls.expand(len(x), -1))
    h0 = run_layers(b0.layers, h)
    h1 = run_layers(b1.layers, h0)
    h2 = run_layers(b2.layers, h1)
    by_hand = [F.cross_entropy(b.head(b.norm(t[:, 0])), y) for b, t in ((b0, h0), (b1, h1), (b2, h2))]
    losses = local.block_losses(model, x, y)
    for mine, ref in zip(losses, by_hand):
        assert torch.allclose(mine, ref, atol=1e-6)


def test_no_gradient_crosses_a_block_boundary():
    model = tiny()
    x, y = batch()
    for b, loss in enumerate(local.block_losses(model, x, y)):
        model.zero_grad(set_to_none=True)
        loss.backward()
        for k, block in enumerate(model.blocks):
            grads = [p.grad for p in block.parameters()]
            if k == b:
                assert all(g is not None for g in grads)
            else:
                assert all(g is None for g in grads), (b, k)


def test_a_step_trains_every_block_and_each_update_ignores_the_later_blocks():
    x, y = batch(8)
    cfg = OptimConfig(lr=1e-2, warmup=0)
    one, two = tiny(), tiny()
    with torch.no_grad():  # a later block's weights differ: no earlier block may notice
        two.blocks[2].head.weight.add_(1.0)
    before = [p.clone() for p in one.parameters()]
    record = local.LocalTrainer(one.train(), cfg).step(x, y, torch.Generator().manual_seed(0))
    local.LocalTrainer(two.train(), cfg).step(x, y, torch.Generator().manual_seed(0))
    assert record["layers"] == 6 and len(record["block_losses"]) == 3
    assert record["loss"] == record["block_losses"][-1]
    assert all(not torch.equal(p, q) for p, q in zip(one.parameters(), before) if p.dim() > 1)
    for k in (0, 1):
        for p, q in zip(one.blocks[k].parameters(), two.blocks[k].parameters()):
            assert torch.equal(p, q)


def test_activations_are_one_blocks_and_traffic_is_the_boundary_tokens():
    model = tiny()
    x, y = batch(4)
    measured = local.activations(model, x, y)
    assert measured["activation_bytes_per_step"] == max(measured["activation_bytes_per_block"])
    tokens = (8 // 2) ** 2 + 1
    assert measured["traffic_bytes_per_step"] == 2 * 4 * tokens * 16 * 4  # B − 1 boundaries, fp32


def test_local_trains_from_the_cli_config_resumes_and_is_refused_where_it_does_not_apply(tmp_path):
    cfg = ClassifyConfig(mode="local", dataset="digits", steps=6, evals=2, batch_size=16, out=str(tmp_path))
    first = classify.train(cfg, show=False)
    assert first["mode"] == "local" and first["blocks"] == 3 and first["inference_layers"] == 6
    assert first["layer_evals"] == 6 * 6 and first["traffic_bytes_per_step"] > 0
    longer = classify.train(ClassifyConfig(**{**cfg.__dict__, "steps": 8}), show=False)  # resumes
    assert longer["steps"] == 8 and longer["layer_evals"] == 8 * 6
    model, stored = classify.load(tmp_path / "checkpoint")
    assert isinstance(model, local.LocalViT) and stored.mode == "local"
    with pytest.raises(ValueError, match="needs --mode dblocks"):
        ClassifyConfig(mode="local", block=0)
    with pytest.raises(ValueError, match="trains in one process"):
        ClassifyConfig(mode="local", parallel=True)
