"""Classification inference and data: greedy vs draw decoding, the per-block chain report,
the validation split, and augmentation."""

import pytest
import torch

from diffusionblocks.data.images import Batches, augment, parse_augment
from diffusionblocks.noise import NoiseConfig, partition, route, sigmas_uniform
from diffusionblocks.tasks import classify


def test_uniform_grid_is_equal_in_log_sigma_and_calls_each_block_once(digits, tiny_model, tiny_cfg):
    grid = sigmas_uniform(NoiseConfig(), 3)
    assert grid.tolist() == pytest.approx([80, (80 * 0.002) ** 0.5, 0.002], rel=1e-12)
    assert sigmas_uniform(NoiseConfig(), 7).log().diff().tolist() == pytest.approx([-1.76611] * 6, rel=1e-5)
    # under the uniform partition B points give each block exactly one call, in order
    for blocks in (2, 3, 6):
        noise = NoiseConfig(partition="uniform")
        bounds = partition(noise, blocks)
        assert [route(s, bounds) for s in sigmas_uniform(noise, blocks).tolist()] == list(range(blocks))


def test_greedy_decoding_is_deterministic_and_draws_depend_on_the_noise(digits, tiny_model, tiny_cfg):
    torch.manual_seed(0)
    for p in tiny_model.parameters():  # a fresh model is the identity: give it something to say
        p.data += 0.1 * torch.randn_like(p)
    x = digits.x_test[:16]
    greedy = [classify.predict(tiny_model, x, tiny_cfg, torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert torch.equal(greedy[0], greedy[1])
    draw_cfg = classify.replace(tiny_cfg, decode="draw")
    draws = [classify.predict(tiny_model, x, draw_cfg, torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not torch.allclose(draws[0], draws[1])
    with pytest.raises(ValueError, match="unknown decode 'mean'; choose one of greedy, draw"):
        classify.replace(tiny_cfg, decode="mean")


def test_chain_report_reads_each_block_and_ends_at_the_prediction(digits, tiny_model, tiny_cfg):
    torch.manual_seed(0)
    for p in tiny_model.parameters():
        p.data += 0.1 * torch.randn_like(p)
    x, y = digits.x_test[:50], digits.y_test[:50]
    calls = classify.trace(tiny_model, x, tiny_cfg)
    assert [b for b, _ in calls] == [0, 1, 2]  # B grid points, then the final call at σ_min
    chain = classify.chain_accuracy(tiny_model, x, y, tiny_cfg, batch=16)
    def accuracy(logits):
        return (logits.argmax(-1) == y).float().mean().item()

    for b, (block, logits) in enumerate(calls):
        mean = torch.stack([lg.log_softmax(-1) for _, lg in calls[: b + 1]]).mean(0)
        assert chain[b]["block"] == block
        assert chain[b]["given_previous"] == pytest.approx(accuracy(logits))
        assert chain[b]["chain_after"] == pytest.approx(accuracy(mean))  # the default read-out
    assert chain[-1]["chain_after"] == pytest.approx(classify.evaluate(tiny_model, x, y, tiny_cfg))
    last = classify.replace(tiny_cfg, readout="last")
    assert torch.equal(classify.predict(tiny_model, x, last), calls[-1][1])
    after_1 = classify.chain_accuracy(tiny_model, x, y, last)[1]["chain_after"]
    assert after_1 == pytest.approx(accuracy(calls[1][1]))
    # with more steps a block's first and last calls differ, and every block is still read
    longer = classify.chain_accuracy(tiny_model, x, y, classify.replace(tiny_cfg, sample_steps=12))
    assert all(c["given_previous"] is not None for c in longer)


def test_validation_split_is_held_out_of_train_and_fixed(digits):
    held = digits.holdout(100)
    assert len(held.y_train) == len(digits.y_train) - 100 and len(held.y_val) == 100
    assert torch.equal(held.x_test, digits.x_test)
    rows = {tuple(r.tolist()) for r in held.x_train.flatten(1)}
    assert not any(tuple(r.tolist()) in rows for r in held.x_val.flatten(1))
    assert torch.equal(digits.holdout(100).y_val, held.y_val)  # the same choice every time
    with pytest.raises(ValueError, match="validation split needs"):
        digits.holdout(len(digits.y_train))


def test_flip_mirrors_and_crop_shifts_within_the_padding():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    flipped = augment(x, ("flip",), torch.Generator().manual_seed(0))
    for a, b in zip(flipped, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    crops = augment(x, ("crop",), torch.Generator().manual_seed(3), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for c, p in zip(crops, padded):  # each crop is an 8×8 window of its padded image
        windows = [p[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(c, w) for w in windows)
    assert parse_augment("flip, crop") == ("flip", "crop") and parse_augment("none") == ()
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        parse_augment("flip,rotate")


def test_augmented_batches_are_rebuilt_exactly_from_their_step(digits):
    a = Batches(digits.x_train, digits.y_train, 32, seed=0, augment=("flip", "crop"))
    b = Batches(digits.x_train, digits.y_train, 32, seed=0, augment=("flip", "crop"))
    plain = Batches(digits.x_train, digits.y_train, 32, seed=0)
    assert torch.equal(a(57)[0], b(57)[0])  # resume: the same batch, the same draws
    assert not torch.equal(a(57)[0], plain(57)[0]) and torch.equal(a(57)[1], plain(57)[1])
    assert not torch.equal(a(57)[0], a(58 + a.per_epoch)[0])


def test_randaugment_operations_are_exact_at_zero_strength_and_shift_by_whole_pixels():
    from diffusionblocks.data.images import RANDAUGMENT_OPS

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 16, 16), generator=g).float() / 255  # 8-bit pixels
    zero = torch.zeros(4)
    for name in ("identity", "rotate", "solarize", "color", "posterize", "contrast", "brightness",
                 "sharpness", "shear_x", "shear_y", "translate_x", "translate_y"):
        assert torch.allclose(RANDAUGMENT_OPS[name](x, zero), x, atol=1e-6), name
    s = torch.full((4,), 2 * 4 / (16 * 0.9))  # 4 of 16 pixels
    moved = RANDAUGMENT_OPS["translate_x"](x, s)
    assert torch.allclose(moved[..., :12], x[..., 4:]) and torch.all(moved[..., 12:] == 0.5)
    solar = RANDAUGMENT_OPS["solarize"](x, torch.full((4,), 0.5))
    assert torch.equal(solar, torch.where(x * 255 >= 128, 1 - x, x))
    assert torch.allclose(RANDAUGMENT_OPS["brightness"](x, torch.full((4,), -0.5)), 0.55 * x)


def test_randaugment_batches_are_standardized_images_rebuilt_from_their_step():
    from diffusionblocks.data.images import load_images, randaugment

    data = load_images("digits")
    assert data.pixels is not None and data.holdout(100).pixels is data.pixels
    a = Batches(data.x_train, data.y_train, 64, seed=0, augment=("randaugment",), pixels=data.pixels)
    plain = Batches(data.x_train, data.y_train, 64, seed=0)
    x, y = a(3)
    assert torch.equal(x, a(3)[0]) and torch.equal(y, plain(3)[1])
    changed = (x - plain(3)[0]).flatten(1).abs().amax(1) > 1e-4
    assert 0.5 < changed.float().mean() < 1  # two ops per image, identity among 14 choices
    mean, std = data.pixels
    assert torch.all(x * std + mean >= -1e-5) and torch.all(x * std + mean <= 1 + 1e-5)
    with pytest.raises(ValueError, match="pixel scale"):
        Batches(data.x_train, data.y_train, 64, seed=0, augment=("randaugment",))(0)
    pixels = torch.rand(8, 1, 8, 8)
    assert torch.equal(randaugment(pixels, torch.Generator().manual_seed(1)),
                       randaugment(pixels, torch.Generator().manual_seed(1)))
