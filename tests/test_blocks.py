"""The block-wise model: layer split, preconditioning, AdaLN-Zero, one training step, samplers."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn

from diffusionblocks.adapters import ImageToLabel
from diffusionblocks.blocks import DiffusionBlocks, split_layers
from diffusionblocks.conditioning import ModulatedLinear, modulated_linear
from diffusionblocks.models.vit import ViTConfig, make_layers
from diffusionblocks.noise import NoiseConfig, loss_weight, scalings, sigmas_equiprob, sigmas_uniform
from diffusionblocks.sampling import sample_euler, sample_heun
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import LabelSpace, build
from diffusionblocks.training import Blockwise, OptimConfig, blockwise_loss, step_generator


def make_model(blocks=3, depth=6, split=None, shared_policy="cotrained", width=16):
    torch.manual_seed(0)
    vit = ViTConfig(image_size=8, channels=1, patch_size=2, width=width, depth=depth, heads=2)
    return DiffusionBlocks(make_layers(vit, cond_dim=width), LabelSpace(10, width),
                           lambda: ImageToLabel(vit, width), blocks, cond_dim=width, split=split,
                           shared_policy=shared_policy)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- split ------------------------------------------------------------------------------------


def test_split_even():
    assert split_layers(12, 3) == [4, 4, 4]
    assert split_layers(6, 1) == [6]
    assert split_layers(6, 6) == [1] * 6


def test_split_more_blocks_than_layers_raises_with_the_counts():
    with pytest.raises(ValueError, match=r"cannot cut 3 layers into 4 blocks"):
        split_layers(3, 4)


def test_split_uneven_raises_and_suggests_a_split():
    # no layer may be silently dropped (METHOD §10)
    with pytest.raises(ValueError, match=r"7 layers do not split evenly into 3 blocks.*\[3, 2, 2\]"):
        split_layers(7, 3)


@pytest.mark.parametrize("split", [[3, 2], [3, 3, 2], [4, 3, 0]])
def test_split_explicit_must_fit(split):
    with pytest.raises(ValueError, match="must have 3 positive layer counts summing to 7"):
        split_layers(7, 3, split)


def test_explicit_uneven_split_puts_every_layer_in_exactly_one_block():
    torch.manual_seed(0)
    vit = ViTConfig(width=16, depth=7, heads=2)
    layers = make_layers(vit, cond_dim=16)
    model = DiffusionBlocks(layers, LabelSpace(10, 16), lambda: ImageToLabel(vit, 16), 3, cond_dim=16,
                            split=[3, 2, 2])
    assert model.sizes == [3, 2, 2]
    assert [len(b.layers) for b in model.blocks] == [3, 2, 2]
    in_blocks = [layer for block in model.blocks for layer in block.layers]
    assert [id(m) for m in in_blocks] == [id(m) for m in layers]  # contiguous, in order, once each

    def count(mods):
        return sum(p.numel() for m in mods for p in m.parameters())

    assert count(in_blocks) == count(layers)
    assert {n for n in model.parts()} == {"shared", "block_0", "block_1", "block_2"}


# --- preconditioning and AdaLN-Zero -----------------------------------------------------------


def test_one_block_is_a_plain_edm_denoiser(digits):
    model = make_model(blocks=1, depth=2)
    # give the gates non-zero values so the layers actually contribute
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = digits.x_test[:5]
    z = torch.randn(5, 16) * 2
    sigma = torch.tensor([0.003, 0.1, 0.5, 3.0, 60.0])
    c_skip, c_out, c_in, c_noise = scalings(sigma, 0.5)
    with torch.no_grad():
        block = model.blocks[0]
        c = block.noise_embed(c_noise)
        h = block.adapter.encode(x, c_in[:, None] * z)
        for layer in block.layers:
            h = layer(h, c)
        expected = c_skip[:, None] * z + c_out[:, None] * block.adapter.decode(h, c)
        got = model.denoise(z, sigma, x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, c_skip[:, None] * z)  # the network term is not negligible


def test_fresh_block_is_identity_on_its_residual_stream(tiny_model):
    h = torch.randn(4, 17, 16)
    c_noise = torch.log(torch.tensor([0.01, 0.3, 2.0, 80.0])) / 4

    def residual_stream(block):
        out, c = h, block.noise_embed(c_noise)
        for layer in block.layers:
            out = layer(out, c)
        return out

    for block in tiny_model.blocks:
        with torch.no_grad():
            assert torch.equal(residual_stream(block), h)
    # a layer with non-zero gates is not
    with torch.no_grad():
        tiny_model.blocks[0].layers[0].ada.proj[1].bias.fill_(0.1)
        assert not torch.allclose(residual_stream(tiny_model.blocks[0]), h)


@pytest.mark.parametrize("shape", [(3, 5, 8), (2, 1, 8)])
def test_modulated_linear_gradcheck_and_value(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(shape[0], 1, shape[2], dtype=torch.float64, requires_grad=True)
    scale = torch.randn(shape[0], 1, shape[2], dtype=torch.float64, requires_grad=True)
    linear = nn.Linear(shape[2], 6, dtype=torch.float64)
    args = (x, shift, scale, linear.weight, linear.bias)
    assert torch.autograd.gradcheck(lambda *a: ModulatedLinear.apply(*a, 1e-6), args)
    expected = linear(F.layer_norm(x, shape[-1:], eps=1e-6) * (1 + scale) + shift)
    assert torch.allclose(modulated_linear(x, shift, scale, linear), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cond_dim", [None, 8])
def test_a_layer_computing_only_the_first_token_equals_the_full_layer(cond_dim):
    torch.manual_seed(0)
    layer = make_layers(ViTConfig(width=8, heads=2, depth=1), cond_dim)[0].double()
    for p in layer.parameters():  # off the zero init, so every branch counts
        nn.init.normal_(p, std=0.3)
    h = torch.randn(3, 6, 8, dtype=torch.float64, requires_grad=True)
    c = None if cond_dim is None else torch.randn(3, 8, dtype=torch.float64)
    full, first = layer(h, c)[:, :1], layer(h, c, queries=1)
    assert first.shape == (3, 1, 8) and torch.allclose(first, full, atol=1e-12)
    grads = [torch.autograd.grad(out.pow(2).sum(), h)[0] for out in (full, first)]
    assert torch.allclose(*grads, atol=1e-12)


def test_vit_last_layers_compute_only_the_cls_token(tiny_model, tiny_cfg, digits):
    e2e = classify.build(dataclasses.replace(tiny_cfg, mode="e2e"))
    tokens = []
    for layer in (tiny_model.blocks[0].layers[0], tiny_model.blocks[0].layers[-1], e2e.layers[-1]):
        layer.register_forward_hook(lambda m, args, out: tokens.append(out.shape[1]))
    x = digits.x_test[:2]
    tiny_model.denoise(torch.randn(2, tiny_model.shared.embed_dim), 1.0, x, block=0)
    e2e(x)
    assert tokens[0] == 1 + tiny_model.blocks[0].adapter.stem.pos.shape[1] and tokens[1:] == [1, 1]


# --- training one block -----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["cotrained", "frozen"])
def test_blockwise_step_touches_only_the_sampled_block(digits, policy):
    cfg = tiny_config(digits, shared_policy=policy)
    model = classify.build(cfg)
    strategy = Blockwise(model, OptimConfig())
    assert ("shared" in strategy.optimizers) == (policy == "cotrained")
    before = {name: snapshot(part) for name, part in model.parts().items()}
    x, y = digits.x_train[:16], digits.y_train[:16]
    record = strategy.step(x, y, step_generator(0, 0))
    b = record["block"]
    assert record["layers"] == 2 and math.isfinite(record["loss"])
    for name, part in model.parts().items():
        after = part.state_dict()
        same = [torch.equal(after[k], v) for k, v in before[name].items()]
        if name == f"block_{b}" or (name == "shared" and policy == "cotrained"):
            assert not all(same), f"{name} should have been updated"
            assert any(p.grad is not None for p in part.parameters())
        else:
            assert all(same), f"{name} changed although block {b} was sampled"
            assert all(p.grad is None for p in part.parameters()), f"{name} has a gradient"


def test_only_the_last_sampled_block_holds_gradients(tiny_model, batch):
    strategy = Blockwise(tiny_model, OptimConfig())
    sampled = []
    for t in range(12):
        sampled.append(b := strategy.step(*batch, step_generator(0, t))["block"])
        holding = {name for name, part in tiny_model.parts().items()
                   if any(p.grad is not None for p in part.parameters())}
        assert holding <= {f"block_{b}", "shared"}, (t, b, holding)
    assert len(set(sampled)) > 1


def test_blockwise_steps_visit_every_block(tiny_model, batch):
    strategy = Blockwise(tiny_model, OptimConfig())
    seen = {strategy.step(*batch, step_generator(0, t))["block"] for t in range(12)}
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("max_weight", [None, 50.0])
def test_blockwise_loss_weights_each_example(digits, batch, max_weight):
    x, y = batch
    # EDM's whole range (the classification default starts at σ = 1, where λ is nearly flat)
    tiny_model = build(tiny_config(digits, noise=NoiseConfig(partition="uniform", max_weight=max_weight)))
    with torch.no_grad():  # break the symmetry of a fresh model so ℓ varies across examples
        for p in tiny_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    block = 1  # the middle block (σ from 0.07 to 2.3 under the uniform partition): λ(σ) varies
    with torch.no_grad():
        loss = blockwise_loss(tiny_model, x, y, block, torch.Generator().manual_seed(7))
        gen = torch.Generator().manual_seed(7)
        target = tiny_model.shared.target(y)
        sigma = tiny_model.sample_sigma(block, len(y), gen)
        eps = torch.randn(target.shape, generator=gen)
        denoised = tiny_model.denoise(z=target + sigma[:, None] * eps, sigma=sigma, x=x, block=block)
        ell = tiny_model.shared.example_loss(denoised, y)
        w = loss_weight(sigma, 0.5, max_weight)
    assert ell.shape == (8,) and w.shape == (8,)
    assert loss.item() == pytest.approx((w * ell).mean().item(), rel=1e-5)
    # not the broadcast pitfall of METHOD §5: mean(w)·mean(ℓ) is a different number here
    assert loss.item() != pytest.approx((w.mean() * ell.mean()).item(), rel=1e-3)


# --- sampling ---------------------------------------------------------------------------------


def test_euler_step_matches_hand_computation():
    z0 = torch.tensor([[1.0, -2.0, 0.5]])
    sigmas = torch.tensor([2.0, 0.5, 0.1], dtype=torch.float64)
    calls = []

    def denoiser(z, sigma):
        calls.append(float(sigma))
        return 0.3 * z

    z1 = sample_euler(denoiser, z0, sigmas[:2])
    assert torch.allclose(z1, z0 + (0.5 - 2.0) * (z0 - 0.3 * z0) / 2.0)
    # EDM sign: the step moves z toward D, here shrinking it
    assert z1.abs().sum() < z0.abs().sum()
    # two steps: z2 = z1 · (1 + (σ2 − σ1)·0.7/σ1)
    z2 = sample_euler(denoiser, z0, sigmas)
    assert torch.allclose(z2, z1 * (1 + (0.1 - 0.5) * 0.7 / 0.5))
    assert calls == pytest.approx([2.0, 2.0, 0.5])


def test_heun_makes_two_calls_per_step_and_matches_hand_computation():
    z0 = torch.tensor([[1.0, -2.0]])
    calls = []

    def denoiser(z, sigma):
        calls.append(float(sigma))
        return 0.3 * z

    z1 = sample_heun(denoiser, z0, torch.tensor([2.0, 0.5, 0.1], dtype=torch.float64))
    assert calls == pytest.approx([2.0, 0.5, 0.5, 0.1])
    # D = 0.3·z, so the slope (z − D)/σ is k·z/σ with k = 0.7; replay EDM's Heun step by hand.
    k = 0.7
    z = z0
    for s, s2 in [(2.0, 0.5), (0.5, 0.1)]:
        d = k * z / s
        zp = z + (s2 - s) * d
        z = z + (s2 - s) * (d + k * zp / s2) / 2
    assert torch.allclose(z1, z)


def block_call_log(model):
    log = []
    for b, block in enumerate(model.blocks):
        block.register_forward_hook(lambda mod, args, out, b=b: log.append(b))
    return log


def test_routed_sampling_uses_each_block_once_in_order(tiny_model, tiny_cfg, digits):
    log = block_call_log(tiny_model)
    x = digits.x_test[:4]
    z = 80 * torch.randn(4, 16)
    sigmas = sigmas_uniform(tiny_model.noise, 3)  # the default grid of the default partition
    sample_euler(tiny_model.denoiser(x), z, sigmas)
    assert log == [0, 1]  # steps at σ = 80 and √160 ≈ 12.6; the final call at σ_min = 2 is the caller's
    log.clear()
    logits = classify.predict(tiny_model, x, tiny_cfg, torch.Generator().manual_seed(0))
    assert logits.shape == (4, 10)
    assert log == [0, 1, 2]


def test_routed_heun_calls_two_blocks_per_step(tiny_model, digits):
    log = block_call_log(tiny_model)
    x = digits.x_test[:4]
    sample_heun(tiny_model.denoiser(x), 80 * torch.randn(4, 16), sigmas_uniform(tiny_model.noise, 3))
    assert log == [0, 1, 1, 2]


def test_sampler_routes_grid_points_like_route(digits):
    # With B+1 equi-probability points, the interior grid points are exactly the boundaries of
    # the equi-probability partition.
    tiny_model = build(tiny_config(digits, noise=NoiseConfig(partition="equiprob")))
    log = block_call_log(tiny_model)
    sigmas = sigmas_equiprob(tiny_model.noise, 4)
    assert sigmas[1:3].tolist() == tiny_model.bounds[1:3][::-1]
    sample_euler(tiny_model.denoiser(digits.x_test[:2]), 80 * torch.randn(2, 16), sigmas)
    # each Euler step is taken by the block whose interval it descends through, so every block
    # takes exactly one step (a float32-rounded σ once sent the middle step to block 2)
    assert log == [0, 1, 2]
