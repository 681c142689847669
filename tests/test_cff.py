"""Contrastive Forward-Forward (methods/cff.py): the marginal contrastive loss by hand, the
margins, the two stages, and that no gradient crosses a layer."""

import math

import torch

from diffusionblocks.methods import cff
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import OptimConfig

VIT = ViTConfig(image_size=8, channels=1, patch_size=2, width=16, depth=3, heads=2, num_classes=3)


def tiny() -> cff.CFFViT:
    torch.manual_seed(0)
    return cff.CFFViT(VIT)


def test_margins_fall_linearly_from_the_papers_first_to_last():
    assert all(abs(a - b) < 1e-12 for a, b in zip(cff.margins(4), [0.4, 0.3, 0.2, 0.1], strict=True))
    assert cff.margins(1) == [0.4]


def test_contrastive_loss_by_hand():
    gen = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    y = torch.tensor([0, 1, 0])
    m, tau = 0.3, 0.15
    z = torch.nn.functional.normalize(torch.cat([f1, f2]), dim=1).tolist()
    labels = [0, 1, 0, 0, 1, 0]
    total = 0.0
    for i in range(6):
        def s(a, b=i):
            dot = sum(p * q for p, q in zip(z[b], z[a]))
            return min(dot + m, 1.0) if labels[a] == labels[b] else dot
        denominator = sum(math.exp(s(a) / tau) for a in range(6) if a != i)
        positives = [p for p in range(6) if p != i and labels[p] == labels[i]]
        total += -sum(math.log(math.exp(s(p) / tau) / denominator) for p in positives) / len(positives)
    assert abs(cff.contrastive_loss(f1, f2, y, m, tau).item() - total / 6) < 1e-5


def test_stage_one_trains_each_layer_on_its_own_loss_and_two_views():
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    seen = []

    def views(batch, gen):
        seen.append(torch.randn((), generator=gen).item())
        return batch + 0.1 * torch.randn(batch.shape, generator=gen)

    one, two = tiny(), tiny()
    with torch.no_grad():  # a later layer differs: no earlier layer may notice
        for p in two.units[2].parameters():
            p.add_(0.5)
    head = [p.clone() for p in one.head.parameters()]
    cfg = OptimConfig(lr=1e-2, warmup=0)
    record = cff.CFFTrainer(one, cfg, stage1=1, views=views).step(x, y, torch.Generator().manual_seed(0))
    cff.CFFTrainer(two, cfg, stage1=1, views=views).step(x, y, torch.Generator().manual_seed(0))
    assert len(seen) == 4 and seen[0] != seen[1]  # two different views per step
    assert record["layers"] == 2 * 3 and len(record["block_losses"]) == 3
    for k in (0, 1):
        for p, q in zip(one.units[k].parameters(), two.units[k].parameters()):
            assert torch.equal(p, q)
    assert all(torch.equal(p, q) for p, q in zip(one.head.parameters(), head))  # the head waits
    assert int(one.head.trained_steps) == 1


def test_stage_two_trains_the_head_alone():
    model = tiny()
    trainer = cff.CFFTrainer(model, OptimConfig(lr=1e-2, warmup=0), stage1=0, views=lambda x, g: x)
    units = [p.clone() for p in model.units.parameters()]
    head = [p.clone() for p in model.head.parameters()]
    record = trainer.step(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]), torch.Generator())
    assert record["stage"] == 2 and record["layers"] == 3
    assert all(torch.equal(p, q) for p, q in zip(model.units.parameters(), units))
    assert any(not torch.equal(p, q) for p, q in zip(model.head.parameters(), head))
    lr = trainer.unscheduled["head"].param_groups[0]["lr"]
    assert abs(lr - 1e-2 * 5e-4 / 4e-3) < 1e-12


def test_cff_trains_through_the_driver_and_stores_its_stage(tmp_path):
    cfg = ClassifyConfig(mode="cff", dataset="digits", steps=4, evals=2, batch_size=16, augment="flip",
                         out=str(tmp_path))
    result = classify.train(cfg, show=False)
    assert result["steps"] == 4 + 2 and result["blocks"] == 6 and result["inference_layers"] == 6
    assert result["layer_evals"] == 4 * 12 + 2 * 6 and result["traffic_bytes_per_step"] > 0
    model, stored = classify.load(tmp_path / "checkpoint")
    assert isinstance(model, cff.CFFViT) and int(model.head.trained_steps) == 6
    assert classify.train(cfg, show=False)["test_accuracy"] == result["test_accuracy"]  # read back
