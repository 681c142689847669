"""NoProp-DT (methods/noprop.py): the schedule, Eq. 8 by hand, the traps a port must avoid, and
that no gradient crosses between blocks."""

import math

import pytest
import torch

from diffusionblocks.methods import noprop
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig


def tiny(steps: int = 3) -> noprop.NoPropDT:
    torch.manual_seed(0)
    return noprop.NoPropDT(channels=1, size=8, classes=4, steps=steps).eval()  # eval: no dropout


def test_schedule_runs_from_pure_noise_to_the_label_with_the_t1_boundary():
    abar = noprop.alpha_bar(10)
    assert abar[0] == 0 and abs(abar[-1] - 100 / 101) < 1e-9  # z_0 noise; ᾱ_T capped at SNR 100
    assert torch.all(abar[1:] > abar[:-1])
    s = 0.008
    f = [math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2 for tau in (0.7, 0.0)]  # t = 3 of T = 10
    assert abs(abar[3].item() - f[0] / f[1]) < 1e-12
    a, b, c = noprop.posterior(abar)
    assert abs(a[0] - abar[1].sqrt()) < 1e-12 and abs(b[0]) < 1e-12 and abs(c[0] - (1 - abar[1])) < 1e-12
    t = 5  # a_t, b_t, c_t by hand at t = 5 (index 4)
    alpha = abar[t - 1] / abar[t]
    assert abs(a[t - 1] - abar[t].sqrt() * (1 - alpha) / (1 - abar[t - 1])) < 1e-12
    assert abs(b[t - 1] - alpha.sqrt() * (1 - abar[t]) / (1 - abar[t - 1])) < 1e-12
    assert abs(c[t - 1] - (1 - abar[t]) * (1 - alpha) / (1 - abar[t - 1])) < 1e-12


def test_q_has_mean_sqrt_alpha_bar_times_the_embedding():
    model = tiny()
    y = torch.zeros(20000, dtype=torch.long)
    z = model.sample(y, 2, torch.Generator().manual_seed(1))
    u = model.embed.weight[0]
    assert torch.allclose(z.mean(0), model.abar[2].sqrt() * u, atol=0.03)  # √ᾱ·u_y, not ᾱ·u_y
    assert torch.allclose(z.var(0), (1 - model.abar[2]).expand(4), atol=0.03)


def test_eq8_by_hand_on_a_tiny_batch():
    model = tiny()
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 1])
    terms = model.terms(x, y, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # the same draws, in the same order, by hand
    u, table, abar = model.embed.weight[y], model.embed.weight, model.abar.double()
    snr = abar / (1 - abar)
    denoise = []
    for t in (1, 2, 3):
        z = abar[t - 1].sqrt() * u + (1 - abar[t - 1]).sqrt() * torch.randn(u.shape, generator=gen)
        probs = model.blocks[t - 1].logits(z.float(), x).softmax(-1)  # one softmax, then the table
        err = ((probs @ table - u) ** 2).sum(1).mean()
        denoise.append(3 / 2 * 0.1 * (snr[t] - snr[t - 1]) * err / 3)
    zT = abar[3].sqrt() * u + (1 - abar[3]).sqrt() * torch.randn(u.shape, generator=gen)
    ce = torch.nn.functional.cross_entropy(model.out(zT.float()), y)
    assert torch.allclose(terms["denoise"].double(), torch.stack(denoise), rtol=1e-5)
    assert torch.allclose(terms["ce"], ce, rtol=1e-5)
    assert abs(terms["kl"].item()) < 1e-6  # ᾱ_0 = 0: q(z_0 | y) is N(0, I) itself
    assert terms["denoise"][0] > 0 and snr[0] == 0  # t = 1 weighs SNR(1) − SNR(0) = SNR(1)


def test_no_gradient_crosses_between_blocks():
    model = tiny().train()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    terms = model.terms(x, y, torch.Generator().manual_seed(0))
    terms["denoise"][1].backward()  # block 2's term alone
    for t, block in enumerate(model.blocks):
        grads = [p.grad for p in block.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert bool(grads) == (t == 1)
    assert model.embed.weight.grad is not None and model.out.weight.grad is None  # shared parts only


def test_inference_starts_from_noise_and_each_block_sees_the_state_before_it(monkeypatch):
    model = tiny()
    seen = []
    for t, block in enumerate(model.blocks):
        original = block.forward
        def spy(z, x, table, t=t, f=original):
            seen.append((t, z))
            return f(z, x, table)

        monkeypatch.setattr(block, "forward", spy)
    model(torch.randn(4, 1, 8, 8), torch.Generator().manual_seed(0))
    assert [t for t, _ in seen] == [0, 1, 2]
    assert abs(seen[0][1].std().item() - 1) < 0.6  # z_0 ~ N(0, I)


def test_noprop_trains_from_a_config_and_resumes(tmp_path):
    cfg = ClassifyConfig(mode="noprop", dataset="digits", blocks=3, steps=6, evals=2, batch_size=16,
                         out=str(tmp_path))
    first = classify.train(cfg, show=False)
    assert first["mode"] == "noprop" and first["blocks"] == 3 and first["inference_layers"] == 3
    assert first["layer_evals"] == 6 * 3 and first["activation_bytes_per_step"] > 0
    again = classify.train(cfg, show=False)  # finished: read back
    assert again["test_accuracy"] == first["test_accuracy"]
    with pytest.raises(ValueError, match="needs --mode dblocks"):
        ClassifyConfig(mode="noprop", offload="cpu")
