"""CwComp (methods/cwcomp.py): goodness and its loss by hand, the CFSE layers, interleaved layer
training, and that no gradient crosses a layer."""

import torch
import torch.nn.functional as F

from diffusionblocks.methods import cwcomp
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import OptimConfig


def tiny() -> cwcomp.CwCompNet:
    torch.manual_seed(0)
    return cwcomp.CwCompNet(1, 2, widths=(4, 4, 6, 8))


def test_goodness_and_the_cwc_loss_by_hand():
    y = torch.arange(2 * 4 * 1 * 1, dtype=torch.float).reshape(2, 4, 1, 1)  # 2 classes, 2 channels each
    by_hand = torch.tensor([[(0 + 1) / 2, (4 + 9) / 2], [(16 + 25) / 2, (36 + 49) / 2]])
    assert torch.equal(cwcomp.goodness(y, 2), by_hand)
    labels = torch.tensor([1, 0])
    assert torch.allclose(cwcomp.layer_loss(y, labels, 2), F.cross_entropy(by_hand, labels))


def test_the_cfse_network_groups_and_pools_every_other_layer():
    net = cwcomp.CwCompNet(1, 10)
    assert [layer.conv.out_channels for layer in net.layers] == [20, 80, 240, 480]
    assert [layer.conv.groups for layer in net.layers] == [1, 10, 1, 10]
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_layers_train_in_their_windows_and_no_gradient_crosses():
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 0, 1, 0, 1])
    one, two = tiny(), tiny()
    with torch.no_grad():  # a later layer differs: no earlier layer may notice
        two.layers[3].conv.weight.add_(1.0)
    cfg = OptimConfig(lr=1e-2, warmup=0, weight_decay=0.0)
    a, b = cwcomp.CwCompTrainer(one, cfg, total=10), cwcomp.CwCompTrainer(two, cfg, total=10)
    assert a.training(0) == [0, 1, 2, 3] and a.training(4) == [1, 2, 3] and a.training(9) == [3]
    record = a.step(x, y, torch.Generator())
    b.step(x, y, torch.Generator())
    assert record["layers"] == 4 and None not in record["block_losses"]
    for k in (0, 1, 2):
        assert all(torch.equal(p, q) for p, q in zip(one.layers[k].parameters(), two.layers[k].parameters()))
    one.steps.count.fill_(4)  # past layer 0's window: it no longer changes
    before = [p.clone() for p in one.layers[0].parameters()]
    record = a.step(x, y, torch.Generator())
    assert record["block_losses"][0] is None
    assert all(torch.equal(p, q) for p, q in zip(one.layers[0].parameters(), before))


def test_cwcomp_trains_through_the_driver_resumes_and_stores_its_step(tmp_path):
    cfg = ClassifyConfig(mode="cwcomp", dataset="digits", steps=4, evals=2, batch_size=16, out=str(tmp_path))
    result = classify.train(cfg, show=False)
    assert result["blocks"] == 4 and result["inference_layers"] == 4 and result["traffic_bytes_per_step"] > 0
    model, _ = classify.load(tmp_path / "checkpoint")
    assert int(model.steps.count) == 4
    again = classify.train(ClassifyConfig(**{**cfg.__dict__, "steps": 6}), show=False)
    assert again["steps"] == 6 and int(classify.load(tmp_path / "checkpoint")[0].steps.count) == 6
