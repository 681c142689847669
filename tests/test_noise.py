"""Noise levels: partition, overlap, truncated sampling, EDM scalings, grids and routing."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy import stats

from diffusionblocks.noise import (
    NoiseConfig,
    block_ranges,
    loss_weight,
    partition,
    route,
    sample_sigma,
    scalings,
    sigmas_equiprob,
    sigmas_karras,
)

# METHOD.md §3, ascending, 4 significant digits.
PARTITIONS = {
    1: [0.002, 80],
    2: [0.002, 0.3012, 80],
    3: [0.002, 0.1796, 0.5050, 80],
    4: [0.002, 0.1341, 0.3012, 0.6766, 80],
    6: [0.002, 0.0943, 0.1796, 0.3012, 0.5050, 0.9617, 80],
}


@pytest.mark.parametrize("blocks", sorted(PARTITIONS))
def test_equiprob_partition_matches_method_vectors(blocks):
    assert partition(NoiseConfig(), blocks) == pytest.approx(PARTITIONS[blocks], rel=5e-4)


def test_equiprob_partition_nests_and_holds_equal_mass():
    noise = NoiseConfig()
    # B=4's middle boundary is B=2's only one (the median of the truncated log-normal).
    assert partition(noise, 4)[2] == pytest.approx(partition(noise, 2)[1], rel=1e-12)
    assert partition(noise, 2)[1] == pytest.approx(0.3012, rel=5e-4)
    masses = [noise.quantile(b) for b in partition(noise, 5)]
    gaps = [hi - lo for lo, hi in pairwise(masses)]
    assert gaps == pytest.approx([gaps[0]] * 5, rel=1e-9)


def test_uniform_partition_is_equal_in_log_sigma():
    noise = NoiseConfig(partition="uniform")
    bounds = partition(noise, 4)
    assert bounds[0] == 0.002 and bounds[-1] == 80
    logs = [math.log(b) for b in bounds]
    widths = [b - a for a, b in pairwise(logs)]
    assert widths == pytest.approx([math.log(80 / 0.002) / 4] * 4, rel=1e-9)
    assert bounds != pytest.approx(partition(NoiseConfig(), 4), rel=1e-2)


def test_overlap_ranges_match_method_vectors_in_network_order():
    ranges = block_ranges(NoiseConfig(gamma=0.05), 3)
    # METHOD §4 lists them ascending; block 0 (the input end) owns the highest range.
    expected = [(0.3920, 80), (0.1706, 0.5318), (0.002, 0.2249)]
    assert len(ranges) == 3
    for got, want in zip(ranges, expected, strict=True):
        assert got == pytest.approx(want, rel=5e-4)


def test_zero_overlap_is_exactly_the_partition():
    noise = NoiseConfig(gamma=0.0)
    bounds = partition(noise, 4)
    ascending = list(pairwise(bounds))
    assert block_ranges(noise, 4) == ascending[::-1]


@pytest.mark.parametrize("block", [0, 1, 2])
def test_sample_sigma_is_truncated_lognormal_on_the_widened_range(block):
    noise = NoiseConfig()
    lo, hi = block_ranges(noise, 3)[block]
    gen = torch.Generator().manual_seed(1234 + block)
    sigma = sample_sigma(noise, 20_000, lo, hi, generator=gen).double()
    assert sigma.shape == (20_000,)
    assert lo <= sigma.min().item() and sigma.max().item() <= hi

    log_sigma = stats.norm(noise.p_mean, noise.p_std)
    a, b = log_sigma.cdf(math.log(lo)), log_sigma.cdf(math.log(hi))

    def cdf(s):  # the training log-normal conditioned on [lo, hi]
        return (log_sigma.cdf(np.log(s)) - a) / (b - a)

    result = stats.kstest(sigma.numpy(), cdf)
    assert result.pvalue > 1e-3, result
    # and it is not merely uniform on the range: the training density is far from flat.
    assert stats.kstest(sigma.numpy(), stats.uniform(lo, hi - lo).cdf).pvalue < 1e-6


def test_sample_sigma_is_reproducible_with_a_generator():
    noise = NoiseConfig()
    a = sample_sigma(noise, 100, 0.1, 1.0, torch.Generator().manual_seed(0))
    b = sample_sigma(noise, 100, 0.1, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_scalings_at_sigma_data():
    sd = 0.5
    c_skip, c_out, c_in, c_noise = scalings(torch.tensor([0.5], dtype=torch.float64), sd)
    # σ = σ_d: c_skip = σd²/(2σd²) = 1/2, c_out = σd²/(√2 σd) = σd/√2, c_in = 1/(√2 σd).
    assert c_skip.item() == pytest.approx(0.5, rel=1e-12)
    assert c_out.item() == pytest.approx(0.5 / math.sqrt(2), rel=1e-12)
    assert c_in.item() == pytest.approx(1 / (math.sqrt(2) * 0.5), rel=1e-12)
    assert c_noise.item() == pytest.approx(math.log(0.5) / 4, rel=1e-12)
    # λ(σd) = 2σd²/σd⁴ = 2/σd² = 8, and λ·c_out² = 1 for every σ (EDM's unit effective weight).
    assert loss_weight(torch.tensor(0.5), sd).item() == pytest.approx(8.0, rel=1e-6)
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=torch.float64)
    _, c_out, _, _ = scalings(sigma, sd)
    assert (loss_weight(sigma, sd) * c_out**2).tolist() == pytest.approx([1.0] * 4, rel=1e-12)


def test_loss_weight_at_sigma_min_and_clamp():
    w = loss_weight(torch.tensor(0.002, dtype=torch.float64), 0.5)
    assert w.item() == pytest.approx(2.5e5, rel=1e-3)
    sigma = torch.tensor([0.002, 0.5, 10.0], dtype=torch.float64)
    clamped = loss_weight(sigma, 0.5, max_weight=100.0)
    assert clamped.tolist() == pytest.approx([100.0, 8.0, (100 + 0.25) / 25], rel=1e-9)


def test_equiprob_grid_for_three_blocks():
    grid = sigmas_equiprob(NoiseConfig(), 3)
    assert grid.dtype == torch.float64
    assert grid.tolist() == pytest.approx([80, 0.3012, 0.002], rel=5e-4)
    assert grid[0].item() == 80 and grid[-1].item() == 0.002


def test_karras_grid_endpoints_and_monotonic():
    grid = sigmas_karras(NoiseConfig(), 50)
    assert grid.shape == (50,)
    assert grid[0].item() == pytest.approx(80, rel=1e-9)
    assert grid[-1].item() == pytest.approx(0.002, rel=1e-9)
    assert bool((grid[1:] < grid[:-1]).all())
    # uniform in σ^(1/ρ), ρ = 7
    root = grid ** (1 / 7)
    assert torch.allclose(root.diff(), root.diff()[0].expand(49), rtol=1e-9)


def test_grids_reject_fewer_than_two_points():
    with pytest.raises(ValueError, match="at least 2"):
        sigmas_equiprob(NoiseConfig(), 1)
    with pytest.raises(ValueError, match="at least 2"):
        sigmas_karras(NoiseConfig(), 1)


def test_route_three_blocks():
    bounds = partition(NoiseConfig(), 3)
    assert route(80.0, bounds) == 0
    assert route(0.3012, bounds) == 1
    assert route(0.002, bounds) == 2
    assert route(torch.tensor([0.3012, 0.3012]), bounds) == 1
    # outside [σ_min, σ_max]: the nearest end block
    assert route(500.0, bounds) == 0 and route(1e-5, bounds) == 2
    # exactly on an interior boundary: the lower-noise block, whose interval a step descends into
    assert route(bounds[1], bounds) == 2
    assert route(bounds[2], bounds) == 1
    # just above a boundary: the higher-noise block
    assert route(bounds[1] * (1 + 1e-9), bounds) == 1


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"sigma_min": 80.0, "sigma_max": 80.0}, r"sigma_min=80\.0, sigma_max=80\.0"),
        ({"sigma_min": 1.0, "sigma_max": 0.5}, r"sigma_min=1\.0, sigma_max=0\.5"),
        ({"gamma": 1.0}, r"gamma must lie in \[0, 1\), got 1\.0"),
        ({"gamma": -0.1}, r"gamma must lie in \[0, 1\), got -0\.1"),
        ({"partition": "linear"}, r"unknown partition 'linear'; choose one of equiprob, uniform"),
        ({"max_weight": 0.0}, r"max_weight must be positive"),
        ({"p_std": 0.0}, r"p_std and sigma_data must be positive"),
    ],
)
def test_noise_config_rejects_bad_values_naming_the_problem(kwargs, words):
    with pytest.raises(ValueError, match=words):
        NoiseConfig(**kwargs)
