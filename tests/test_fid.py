"""Fréchet distance against closed forms, Gaussian statistics, the feature net and its cache."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from diffusionblocks.metrics import fid as fidmod
from diffusionblocks.metrics.fid import (
    FeatureNet,
    classify,
    extract,
    feature_net,
    fid,
    frechet_distance,
    gaussian_stats,
    inception_extractor,
    stats_of,
    train_feature_net,
)

F64 = torch.float64


def _closed_form(mu1, a, mu2, b) -> float:
    """FD of N(μ₁, Q diag(a) Qᵀ) and N(μ₂, Q diag(b) Qᵀ): ‖μ₁ − μ₂‖² + Σᵢ (√aᵢ − √bᵢ)²."""
    return float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())


def _rotation(d: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q


def test_distance_of_a_set_to_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g) @ torch.randn(16, 16, generator=g) * 3 + 5
    mu, cov = gaussian_stats(x)
    scale = float(cov.trace())
    assert frechet_distance(mu, cov, mu, cov) < 1e-9 * scale
    # rank-deficient covariance (fewer samples than dimensions): still ~0, never negative
    mu, cov = gaussian_stats(torch.randn(10, 64, generator=g))
    assert 0 <= frechet_distance(mu, cov, mu, cov) < 1e-9 * float(cov.trace())


def test_diagonal_gaussians_match_closed_form():
    g = torch.Generator().manual_seed(1)
    d = 12
    mu1, mu2 = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    a = torch.rand(d, generator=g, dtype=F64) * 4 + 0.1
    b = torch.rand(d, generator=g, dtype=F64) * 4 + 0.1
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(_closed_form(mu1, a, mu2, b), rel=1e-10)
    assert got > 0.1  # not trivially zero


def test_rotated_commuting_covariances_match_closed_form():
    g = torch.Generator().manual_seed(2)
    d = 20
    q = _rotation(d, g)
    mu1, mu2 = torch.randn(d, generator=g, dtype=F64), torch.zeros(d, dtype=F64)
    a = torch.rand(d, generator=g, dtype=F64) * 9 + 0.01
    b = torch.rand(d, generator=g, dtype=F64) * 9 + 0.01
    cov1, cov2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    expected = _closed_form(mu1, a, mu2, b)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(expected, rel=1e-10)  # symmetric
    # a singular covariance is allowed; √ of eigenvalues rounded to ~1e-15 costs ~1e-7 absolute
    b[:3] = 0
    cov2 = q @ torch.diag(b) @ q.T
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(_closed_form(mu1, a, mu2, b), abs=1e-5)


def test_non_commuting_covariances_against_an_independent_square_root():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(3)
    d = 8
    m1, m2 = torch.randn(d, d, generator=g, dtype=F64), torch.randn(d, d, generator=g, dtype=F64)
    cov1, cov2 = m1 @ m1.T, m2 @ m2.T
    tr_sqrt = scipy_linalg.sqrtm((cov1 @ cov2).numpy()).real.trace()
    expected = float(cov1.trace() + cov2.trace()) - 2 * tr_sqrt
    zero = torch.zeros(d, dtype=F64)
    assert frechet_distance(zero, cov1, zero, cov2) == pytest.approx(expected, rel=1e-8)


def test_gaussian_stats_recovers_a_known_gaussian():
    g = torch.Generator().manual_seed(4)
    d, n = 6, 200_000
    mu = torch.linspace(-2, 3, d, dtype=F64)
    q = _rotation(d, g)
    cov = q @ torch.diag(torch.linspace(0.5, 4, d, dtype=F64)) @ q.T
    x = mu + torch.randn(n, d, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    m, c = gaussian_stats(x.float())
    assert m.dtype == c.dtype == torch.float64
    assert torch.allclose(m, mu, atol=0.02)
    assert torch.allclose(c, cov, atol=0.05)
    assert torch.allclose(c, c.T)


def test_gaussian_stats_is_unbiased():
    x = torch.tensor([[1.0], [3.0]])
    _, cov = gaussian_stats(x)
    assert cov.item() == pytest.approx(2.0)  # Σ(x − 2)² / (N − 1)
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(torch.zeros(1, 3))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_feature_net_shapes(shape):
    torch.manual_seed(0)
    net = FeatureNet(shape[0], num_classes=10)
    x = torch.rand(5, *shape) * 2 - 1
    assert net.features(x).shape == (5, 128)
    assert net(x).shape == (5, 10)
    assert extract(net, x, batch_size=2).shape == (5, 128)
    preds = classify(net, x, batch_size=2)
    assert preds.shape == (5,) and preds.dtype == torch.int64
    assert torch.equal(preds, net.eval()(x).argmax(dim=1))


def test_feature_net_is_deterministic_given_the_seed():
    torch.manual_seed(7)
    a = FeatureNet(1, 10)
    torch.manual_seed(7)
    b = FeatureNet(1, 10)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_extract_batches_and_restores_the_training_mode():
    torch.manual_seed(0)
    net = FeatureNet(1, 10, feature_dim=32).train()
    x = torch.rand(23, 1, 8, 8) * 2 - 1
    whole = net.eval().features(x)
    net.train()
    assert torch.allclose(extract(net, x, batch_size=5), whole, atol=1e-6)
    assert net.training


def test_fid_helpers_agree_and_separate_shifted_images():
    torch.manual_seed(0)
    net = FeatureNet(1, 10)
    g = torch.Generator().manual_seed(0)
    real = torch.rand(300, 1, 8, 8, generator=g) * 2 - 1
    stats = stats_of(net, real)
    assert fid(net, real, stats) < 1e-8
    other = torch.rand(300, 1, 8, 8, generator=g) * 2 - 1
    shifted = (other * 0.3 + 0.6).clamp(-1, 1)
    assert fid(net, other, stats) < fid(net, shifted, stats)


def _tiny_data(n: int = 200, classes: int = 4):
    """n random 8×8 images, 3/4 for training; every class in the training labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    y = torch.arange(n) % classes
    k = 3 * n // 4
    return x[:k], y[:k], x[k:], y[k:]


def test_feature_net_cache_loads_bit_exactly_and_retrains_on_mismatch(tmp_path, monkeypatch):
    x_tr, y_tr, x_te, y_te = _tiny_data()
    net1, acc1 = feature_net("tiny", x_tr, y_tr, x_te, y_te, cache_dir=tmp_path, epochs=1, show=False)
    meta = json.loads((tmp_path / "featnet_tiny.json").read_text())
    assert meta == {"name": "tiny", "channels": 1, "num_classes": 4, "feature_dim": 128, "epochs": 1,
                    "test_accuracy": acc1, "train_examples": 150}
    # nothing else left behind: the temporary files were renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["featnet_tiny.json", "featnet_tiny.safetensors"]

    real_train = fidmod.train_feature_net

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(fidmod, "train_feature_net", no_training)
    net2, acc2 = feature_net("tiny", x_tr, y_tr, x_te, y_te, cache_dir=tmp_path, epochs=1, show=False)
    assert acc2 == acc1 and not net2.training
    assert torch.equal(extract(net1, x_te), extract(net2, x_te))

    # a stale cache (different num_classes) is retrained, then overwritten
    calls = []
    monkeypatch.setattr(fidmod, "train_feature_net", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    meta["num_classes"] = 7
    (tmp_path / "featnet_tiny.json").write_text(json.dumps(meta))
    feature_net("tiny", x_tr, y_tr, x_te, y_te, cache_dir=tmp_path, epochs=1, show=False)
    assert calls == [1]
    assert json.loads((tmp_path / "featnet_tiny.json").read_text())["num_classes"] == 4
    # and a different epoch count is a different net too
    feature_net("tiny", x_tr, y_tr, x_te, y_te, cache_dir=tmp_path, epochs=2, show=False)
    assert calls == [1, 1]
    # a corrupt weights file is retrained, not an error
    (tmp_path / "featnet_tiny.safetensors").write_bytes(b"not safetensors")
    feature_net("tiny", x_tr, y_tr, x_te, y_te, cache_dir=tmp_path, epochs=2, show=False)
    assert calls == [1, 1, 1]


def test_feature_net_default_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    x_tr, y_tr, x_te, y_te = _tiny_data(60)
    feature_net("xdg", x_tr, y_tr, x_te, y_te, epochs=1, show=False)
    assert (tmp_path / "diffusionblocks" / "featnet_xdg.json").is_file()


def test_feature_net_without_a_writable_cache_still_trains(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    x_tr, y_tr, x_te, y_te = _tiny_data(60)
    net, acc = feature_net("nocache", x_tr, y_tr, x_te, y_te, cache_dir=blocker / "sub", epochs=1, show=False)
    assert isinstance(net, FeatureNet) and 0 <= acc <= 1


def test_train_feature_net_learns_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.from_numpy(digits.images).float().div(8).sub(1).unsqueeze(1)  # 0..16 -> [-1, 1]
    y = torch.from_numpy(digits.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    net, acc = train_feature_net(x[train], y[train], x[test], y[test], epochs=3, batch_size=64, show=False)
    assert not net.training
    assert acc >= 0.9, acc  # chance is 0.1; ~0.97 in practice
    assert acc == pytest.approx((classify(net, x[test]) == y[test]).double().mean().item())


def test_train_feature_net_is_deterministic_given_the_seed():
    x_tr, y_tr, x_te, y_te = _tiny_data()
    nets = []
    for global_seed, seed in [(100, 3), (200, 3), (100, 4)]:
        torch.manual_seed(global_seed)  # must not matter
        rng = torch.get_rng_state()
        net, _ = train_feature_net(x_tr, y_tr, x_te, y_te, epochs=1, batch_size=32, seed=seed, show=False)
        nets.append(net)
        assert torch.equal(torch.get_rng_state(), rng)  # the global generator is left alone
    assert torch.equal(extract(nets[0], x_te), extract(nets[1], x_te))
    assert not torch.equal(extract(nets[0], x_te), extract(nets[2], x_te))


def test_inception_extractor_without_torch_fidelity_says_what_to_install(tmp_path):
    if importlib.util.find_spec("torch_fidelity") is not None:
        pytest.skip("torch-fidelity is installed")
    with pytest.raises(ValueError, match=r"pip install torch-fidelity.*offline"):
        inception_extractor(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
