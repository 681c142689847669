"""DiffusionBlocks on NoProp's CNN (methods/dblocks_cnn.py): the core's DiffusionBlocks over
NoProp's block network; the loss by hand, no gradient across blocks, the noise level reaches
the block, and it trains far above chance from a config through the family's driver."""

import torch
import torch.nn.functional as F

from diffusionblocks.blocks import DiffusionBlocks
from diffusionblocks.methods import dblocks_cnn
from diffusionblocks.noise import loss_weight, scalings
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import Blockwise, OptimConfig, blockwise_loss


def tiny() -> DiffusionBlocks:
    cfg = ClassifyConfig(mode="dblocks_cnn", dataset="digits", blocks=3)
    cfg = classify.resolve_config(cfg, classify.load_images("digits"))
    torch.manual_seed(0)
    return dblocks_cnn.build(cfg)


def test_it_is_the_cores_diffusion_blocks_of_noprop_blocks():
    model = tiny()
    assert isinstance(model, DiffusionBlocks) and model.num_blocks == 3 and model.sizes == [1, 1, 1]
    assert model.noise.gamma == 0.05  # the family's; the config file sets the paper's 0.1
    assert not any(p.requires_grad for p in model.shared.parameters())  # frozen: nothing crosses
    x = torch.randn(4, 1, 8, 8)
    assert model.blocks[0].adapter.encode(x, torch.randn(4, 64)).shape == (4, 1, 2 * dblocks_cnn.WIDTH)


def test_the_loss_by_hand_on_a_tiny_batch():
    model = tiny().eval()  # eval: no dropout, batch-norm statistics fixed
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 9])
    loss = blockwise_loss(model, x, y, 1, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # the same draws, in the same order, by hand
    target = F.normalize(model.shared.table.weight, dim=1)[y]
    sigma = model.sample_sigma(1, 5, gen)
    z = target + sigma[:, None] * torch.randn(target.shape, generator=gen)
    c_skip, c_out, c_in, c_noise = (s[:, None] for s in scalings(sigma, 0.5))
    block = model.blocks[1]
    h = block.adapter.encode(x, c_in * z)
    h = block.layers[0](h, block.noise_embed(c_noise.flatten()))
    denoised = c_skip * z + c_out * block.adapter.read_out(h[:, 0])
    logits = denoised @ F.normalize(model.shared.table.weight, dim=1).T * 10.0  # logit scale e^{ln 10}
    by_hand = (loss_weight(sigma, 0.5) * F.cross_entropy(logits, y, reduction="none")).mean()
    assert torch.allclose(loss, by_hand, rtol=1e-5)


def test_the_noise_level_reaches_the_block():
    model = tiny().eval()
    x, z = torch.randn(3, 1, 8, 8), torch.randn(3, 64)
    a = model.denoise(z, torch.full((3,), 30.0), x, block=0)
    b = model.denoise(z, torch.full((3,), 40.0), x, block=0)
    raw_a = (a - scalings(torch.tensor(30.0), 0.5)[0] * z) / scalings(torch.tensor(30.0), 0.5)[1]
    raw_b = (b - scalings(torch.tensor(40.0), 0.5)[0] * z) / scalings(torch.tensor(40.0), 0.5)[1]
    assert not torch.allclose(raw_a, raw_b, atol=1e-4)  # F itself depends on σ, not only D's scalings


def test_no_gradient_crosses_between_blocks():
    model = tiny().train()
    strategy = Blockwise(model, OptimConfig(lr=1e-3, warmup=0), blocks=[2])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    strategy.step(x, y, torch.Generator().manual_seed(0))
    changed = {n.split(".")[1] for n, p in model.named_parameters()
               if n.startswith("blocks.") and not torch.equal(p, before[n])}
    assert changed == {"2"}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith("shared."))


def test_it_trains_from_a_config_far_above_chance(tmp_path):
    cfg = ClassifyConfig(mode="dblocks_cnn", dataset="digits", blocks=3, steps=60, evals=1, batch_size=32,
                         optim=OptimConfig(lr=3e-3, warmup=0), out=str(tmp_path))  # short: a larger rate
    result = classify.train(cfg, show=False)
    assert result["mode"] == "dblocks_cnn" and result["blocks"] == 3 and result["steps"] == 180
    assert result["inference_layers"] == 3 and result["traffic_bytes_per_step"] == 0
    assert [c["block"] for c in result["chain"]] == [0, 1, 2]
    assert result["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    again = classify.train(cfg, show=False)  # finished: read back
    assert again["test_accuracy"] == result["test_accuracy"]


def test_end_to_end_on_the_same_cnn_shares_noprops_image_path_and_trains(tmp_path):
    from diffusionblocks.methods import e2e_cnn, noprop

    model = e2e_cnn.CNNClassifier(1, 8, 10)
    block = noprop.NoPropBlock(1, 8, 10, 10)
    shapes = [p.shape for p in model.image.parameters()]
    assert shapes == [p.shape for p in block.image.parameters()]  # the same image path
    cfg = ClassifyConfig(mode="e2e_cnn", dataset="digits", steps=100, evals=1, batch_size=32,
                         out=str(tmp_path))
    result = classify.train(cfg, show=False)
    assert result["mode"] == "e2e_cnn" and result["inference_layers"] == 1 and result["steps"] == 100
    assert result["test_accuracy"] > 0.5  # ten classes: chance is 0.1
