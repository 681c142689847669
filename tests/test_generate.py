"""Image generation with a DiT: the EDM loss, guidance, samplers over blocks, training, CLI."""

import json

import pytest
import torch

from diffusionblocks import cli
from diffusionblocks.data.images import load_images
from diffusionblocks.models.dit import DiTConfig
from diffusionblocks.models.vit import patchify, unpatchify
from diffusionblocks.noise import loss_weight
from diffusionblocks.tasks import generate
from diffusionblocks.tasks.generate import GenerateConfig
from diffusionblocks.training import Blockwise, step_generator


@pytest.fixture(scope="module")
def pixels():
    return load_images("digits", scaling="symmetric")


def tiny(pixels, mode="dblocks", **overrides) -> GenerateConfig:
    fields = dict(mode=mode, dataset="digits", blocks=3, batch_size=32, sample_steps=6,
                  dit=DiTConfig(width=32, depth=3, heads=2)) | overrides
    return generate.resolve_config(GenerateConfig(**fields), pixels)


def trained(cfg, pixels, steps=20):
    """A model after ``steps`` block steps, so that every block's output is non-zero."""
    model = generate.build(cfg)
    strategy = Blockwise(model, cfg.optim)
    batch_at = generate.training_batches(cfg, pixels, torch.device("cpu"))
    for t in range(steps):
        strategy.step(*batch_at(t), step_generator(cfg.seed, t))
    return model.eval()


def test_symmetric_scaling_maps_pixels_to_plus_minus_one(pixels):
    assert pixels.x_train.min() == -1 and pixels.x_train.max() == 1
    with pytest.raises(ValueError, match="unknown image scaling"):
        load_images("digits", scaling="zscore")


def test_patchify_round_trip_and_order():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 4, 12)
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].flatten())  # 2nd patch: top right
    assert torch.equal(unpatchify(tokens, 2, 3), x)


def test_edm_l2_loss_at_a_known_sigma(pixels):
    """A fresh DiT outputs F = 0, so D = c_skip·z. At σ = 1, σ_data = 0.5: c_skip = 0.2 and
    λ = (1 + 0.25)/0.25 = 5. With y = 0.5 and ε = 1: z = 1.5, D = 0.3, λ·(D − y)² = 5·0.04 = 0.2."""
    model = generate.build(tiny(pixels))
    y = torch.full((2, 1, 8, 8), 0.5)
    z = y + 1.0 * torch.ones_like(y)
    labels = torch.tensor([3, 7])
    denoised = model.denoise(z, torch.tensor([1.0, 1.0]), labels, block=1)
    assert torch.allclose(denoised, torch.full_like(y, 0.3))
    weighted = loss_weight(torch.tensor([1.0, 1.0]), 0.5) * model.shared.example_loss(denoised, y)
    assert torch.allclose(weighted, torch.tensor([0.2, 0.2]))


def test_guidance_scale_one_is_the_conditional_prediction(pixels):
    cfg = tiny(pixels)
    model = trained(cfg, pixels)
    z, labels, sigma = 2 * torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), torch.tensor(1.5)
    null = torch.full_like(labels, cfg.dit.null_class)
    with torch.no_grad():
        cond, uncond = model.denoise(z, sigma, labels), model.denoise(z, sigma, null)
        assert torch.equal(generate.guided(model, labels, 1.0, cfg.dit.null_class)(z, sigma), cond)
        guided = generate.guided(model, labels, 2.5, cfg.dit.null_class)(z, sigma)
        assert torch.allclose(guided, uncond + 2.5 * (cond - uncond), atol=1e-5)
        assert torch.allclose(generate.guided(model, labels, 0.0, cfg.dit.null_class)(z, sigma), uncond,
                              atol=1e-6)
    assert not torch.allclose(cond, uncond)  # the label matters after training


def test_each_sampling_step_runs_exactly_one_block_the_owner(pixels):
    cfg = tiny(pixels, sample_steps=12, guidance=1.0)
    model = generate.build(cfg)
    called: list[int] = []
    for b, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, b=b: called.append(b))
    generate.sample(model, torch.arange(4), cfg, torch.Generator().manual_seed(0))
    grid = generate.sigma_grid(cfg)
    assert called == [model.route(float(s)) for s in grid[:-1]]
    assert len(called) == 12 and set(called) == {0, 1, 2}  # every block takes its turn
    assert called == sorted(called)  # from the input end (highest noise) to the last block


def test_heun_calls_the_owner_of_both_noise_levels(pixels):
    cfg = tiny(pixels, sample_steps=6, guidance=1.0, sampler="heun")
    model = generate.build(cfg)
    called: list[int] = []
    for b, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, b=b: called.append(b))
    generate.sample(model, torch.arange(2), cfg, torch.Generator().manual_seed(0))
    grid = generate.sigma_grid(cfg).tolist()
    expected = [model.route(s) for pair in zip(grid[:-1], grid[1:]) for s in pair]
    assert called == expected


def test_seeded_sampling_is_deterministic_and_costs_one_block_per_step(pixels):
    cfg = tiny(pixels)
    model = trained(cfg, pixels)
    a, labels_a, cost = generate.generate_set(model, cfg, 30, batch=16)
    b, labels_b, _ = generate.generate_set(model, cfg, 30, batch=16)
    assert torch.equal(a, b) and torch.equal(labels_a, labels_b)
    assert a.shape == (30, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(labels_a, torch.arange(30) % 10)
    # 6 steps, each through one block of 1 layer, twice for guidance (conditional + null class)
    assert cost["denoiser_calls_per_sample"] == 6 and cost["layer_evals_per_sample"] == 2 * 6 * 1
    e2e = trained(tiny(pixels, mode="e2e"), pixels, steps=2)
    assert generate.generate_set(e2e, tiny(pixels, mode="e2e"), 4)[2]["layer_evals_per_sample"] == 2 * 6 * 3


def test_end_to_end_is_one_block_over_the_whole_noise_range(pixels):
    model = generate.build(tiny(pixels, mode="e2e"))
    assert model.num_blocks == 1 and model.sizes == [3]
    assert model.ranges == [(0.002, 80.0)]


def test_class_dropout_is_reproducible_and_about_the_asked_rate(pixels):
    cfg = tiny(pixels, batch_size=512, dit=DiTConfig(width=32, depth=3, heads=2, class_dropout=0.25))
    batch_at = generate.training_batches(cfg, pixels, torch.device("cpu"))
    labels, images = batch_at(1)
    again, _ = batch_at(1)
    assert torch.equal(labels, again)
    dropped = (labels == cfg.dit.null_class).float().mean().item()
    assert 0.18 < dropped < 0.32
    assert images.shape == (512, 1, 8, 8)


def test_training_lowers_the_held_out_loss(pixels):
    cfg = tiny(pixels)
    model = generate.build(cfg)
    x, y = pixels.x_test[:200], pixels.y_test[:200]
    before = generate.test_loss(model, x, y)
    model = trained(cfg, pixels, steps=90)
    after = generate.test_loss(model, x, y)
    assert after < 0.8 * before


def test_bad_generate_configs_name_the_problem():
    with pytest.raises(ValueError, match="guidance"):
        GenerateConfig(guidance=-1)
    with pytest.raises(ValueError, match="class_dropout"):
        DiTConfig(class_dropout=1.0)
    with pytest.raises(ValueError, match="needs --mode dblocks"):
        GenerateConfig(mode="e2e", offload="cpu")
    with pytest.raises(ValueError, match="do not split evenly"):
        GenerateConfig(blocks=4)
    with pytest.raises(ValueError, match="patch_size"):
        DiTConfig(image_size=28, patch_size=3)


def test_resume_continues_where_it_stopped(pixels, tmp_path):
    base = dict(mode="dblocks", dataset="digits", blocks=3, batch_size=32, evals=2,
                dit=DiTConfig(width=32, depth=3, heads=2))
    straight = generate.train(GenerateConfig(**base, steps=8, out=str(tmp_path / "a")), pixels,
                              show=False, evaluate=False)
    generate.train(GenerateConfig(**base, steps=4, out=str(tmp_path / "b")), pixels, show=False,
                   evaluate=False)
    resumed = generate.train(GenerateConfig(**base, steps=8, out=str(tmp_path / "b")), pixels,
                             show=False, evaluate=False)
    assert resumed["layer_evals"] == straight["layer_evals"] == 24
    a, _ = generate.load(tmp_path / "a" / "checkpoint")
    b, _ = generate.load(tmp_path / "b" / "checkpoint")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="different config"):
        generate.train(GenerateConfig(**base | {"blocks": 1}, steps=8, out=str(tmp_path / "b")), pixels,
                       show=False, evaluate=False)


def test_compare_generate_quick_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "cmp"
    cli.main(["compare", "--task", "generate", "--quick", "--quiet", "--out", str(out),
              "--width", "32", "--depth", "3", "--heads", "2", "--batch-size", "32"])
    report = json.loads((out / "report.json").read_text())
    keys = {"fid_train", "fid_test", "class_accuracy", "sample_seconds_per_image",
            "layer_evals_per_sample", "num_samples"}
    assert set(report) == {"e2e", "dblocks", "shallow"}  # the shallow control by default
    for mode in report:
        assert keys <= report[mode].keys()
        assert report[mode]["fid_test"] > 0 and (out / mode / "samples.png").exists()
    assert len({r["layer_evals"] for r in report.values()}) == 1  # equal budgets
    assert report["shallow"]["layer_evals_per_sample"] == report["dblocks"]["layer_evals_per_sample"]
    assert report["e2e"]["layer_evals_per_sample"] == 3 * report["dblocks"]["layer_evals_per_sample"]
    assert "FID dblocks / e2e" in capsys.readouterr().out
    assert all(report[m]["grid"] == "equiprob" for m in ("e2e", "dblocks"))  # the paper's, by default
    assert "equiprob grid" in (out / "report.md").read_text()

    cli.main(["sample", str(out / "dblocks" / "checkpoint"), "--out", str(tmp_path / "grid.png"),
              "--per-class", "2", "--sample-steps", "4"])
    assert (tmp_path / "grid.png").stat().st_size > 0
    cli.main(["eval", "fid", str(out / "dblocks" / "checkpoint"), "--num-samples", "40",
              "--sample-steps", "4", "--out", str(tmp_path / "ev")])
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["num_samples"] == 40 and result["layer_evals_per_sample"] == 2 * 4 * 1
