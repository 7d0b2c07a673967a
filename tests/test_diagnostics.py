"""The collapse diagnostics on constructed embeddings whose answers are known."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslnb.evaluate import alignment, collapse_stats, collapsed as is_collapsed, mean_and_interval, rank_below_repeats, uniformity


def spread(n=2000, d=64, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def collapsed(n=2000, d=64):
    return torch.ones(n, d) + 1e-9 * spread(n, d)


def test_collapsed_embedding_gives_zero_std_rank_one_and_zero_uniformity():
    s = collapse_stats(collapsed())
    assert s["z_std"] < 1e-6 and s["z_std_ref"] == pytest.approx(1 / 8)
    assert uniformity(collapsed()) == pytest.approx(0.0, abs=1e-6)  # log E exp(0) = 0


def test_spread_embedding_gives_reference_std_and_high_rank():
    s = collapse_stats(spread())
    assert s["z_std"] == pytest.approx(1 / 8, rel=0.05)  # Gaussian directions: each coordinate ~ 1/sqrt(d)
    assert s["eff_rank"] > 50  # of at most 64


def test_a_projection_folded_onto_two_directions_is_dimensional_not_complete_collapse():
    # Points spread along 2 of 64 directions: on the sphere they are far apart (no complete collapse by
    # the std rule), yet they use 2 directions where the repeats use about 60.
    folded = spread(d=2) @ spread(n=2, d=64, seed=3)
    s = collapse_stats(folded)
    assert not is_collapsed(s) and s["eff_rank"] < 2.5
    repeats = [collapse_stats(spread(seed=k)) for k in (4, 5)]
    assert rank_below_repeats(s, repeats)
    assert not rank_below_repeats(repeats[0], [repeats[1], collapse_stats(folded)])  # below the lowest only
    with pytest.raises(ValueError):
        rank_below_repeats(s, [])


def test_uniformity_of_spread_points_is_near_minus_2t():
    # Random directions in 64-d are nearly orthogonal: ||x - y||^2 ~ 2, so log E exp(-2 * 2) ~ -4.
    u = uniformity(spread(), t=2.0)
    assert -4.1 < u < -3.7
    # A low-dimensional embedding is less uniform than a high-dimensional one.
    assert uniformity(spread(d=2)) > u


def test_alignment_is_zero_for_identical_views_and_four_for_opposite_ones():
    z = spread(500)
    assert alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-6)
    assert alignment(z, -z) == pytest.approx(4.0, rel=1e-5)  # ||u - (-u)||^2 = 4
    noisy = alignment(z, z + 0.1 * spread(500, seed=1))
    assert 0 < noisy < alignment(z, spread(500, seed=2))


def test_uniformity_matches_the_pairwise_definition():
    z = F.normalize(spread(40, 5), dim=1)
    total, pairs = 0.0, 0
    for i in range(40):
        for j in range(i + 1, 40):
            total += math.exp(-2 * float((z[i] - z[j]).pow(2).sum()))
            pairs += 1
    assert uniformity(z) == pytest.approx(math.log(total / pairs), rel=1e-5)


def test_mean_and_interval():
    r = mean_and_interval([63.37, 62.82, 63.53, 63.32, 63.14, 63.53, 63.75])  # the seed's seven tries
    assert r["mean"] == pytest.approx(63.35, abs=0.01) and r["std"] == pytest.approx(0.30, abs=0.01)
    assert r["ci_low"] < r["mean"] < r["ci_high"] and r["ci_high"] - r["ci_low"] == pytest.approx(2 * 2.447 * 0.30 / 7 ** 0.5, rel=0.03)
    assert math.isnan(mean_and_interval([1.0])["std"])


def test_recalibrate_batchnorm_averages_the_statistics_of_all_batches():
    from sslnb.evaluate import recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    batches = [torch.randn(8, 3, 5, 5) * (i + 1) + i for i in range(3)]
    recalibrate_batchnorm(net, batches)
    with torch.no_grad():
        per_batch = [net[0](x).mean(dim=(0, 2, 3)) for x in batches]
    assert not net.training
    assert torch.allclose(net[1].running_mean, torch.stack(per_batch).mean(0), atol=1e-5)
    assert net[1].momentum == 0.1  # restored
