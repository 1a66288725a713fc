"""The SBC machinery on ranks whose distribution is known (numpy only, no model)."""
import numpy as np
import pytest
from scipy import stats

from dgmlang.testing import SBCResult, ks_uniformity, rank_statistics
from dgmlang.testing.sbc import normalised_ranks

L = 99


def _gaussian_sbc(num_simulations, *, sd_factor=1.0, shift=0.0, seed=0):
    """SBC of a conjugate model: theta ~ N(0, 1), y ~ N(theta, 1), posterior N(y/2, 1/2);
    the "inference" draws from N(y/2 + shift * sd, (sd_factor * sd)^2)."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(num_simulations)
    y = theta + rng.standard_normal(num_simulations)
    sd = np.sqrt(0.5)
    draws = y / 2 + shift * sd + sd_factor * sd * rng.standard_normal((L, num_simulations))
    return rank_statistics(theta, draws, rng=rng)


def test_ranks_count_draws_below_and_break_ties_at_random():
    draws = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    assert rank_statistics(np.array([1.5, 5.0]), draws).tolist() == [2, 3]
    # A discrete truth equal to every draw: the rank is spread over 0..3.
    tied = [rank_statistics(np.array([1.0]), np.ones((3, 1)), rng=np.random.default_rng(s))[0]
            for s in range(400)]
    assert set(tied) == {0, 1, 2, 3}
    assert abs(np.mean(tied) - 1.5) < 0.15


def test_normalised_ranks_are_uniform_when_ranks_are():
    ranks = np.random.default_rng(1).integers(0, L + 1, size=100_000)
    u = normalised_ranks(ranks, L)
    assert 0 <= u.min() and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 0.01


def test_exact_inference_passes_at_its_nominal_rate():
    rejections = [not SBCResult({"theta": _gaussian_sbc(300, seed=s)[:, None]}, L).passed(0.05)
                  for s in range(100)]
    # KS at level 0.05 on exact ranks: about 5 of 100 reject (binomial 99.9% bound: 13).
    assert sum(rejections) <= 13


@pytest.mark.parametrize(
    "kind, options, reading",
    [
        ("too narrow", dict(sd_factor=0.5), "too narrow"),
        ("too wide", dict(sd_factor=2.0), "too wide"),
        ("shifted up", dict(shift=1.0), "the draws lie above the truth"),
        ("shifted down", dict(shift=-1.0), "the draws lie below the truth"),
    ],
)
def test_broken_inference_fails_and_says_how(kind, options, reading):
    ranks = _gaussian_sbc(300, **options)
    result = SBCResult({"theta": ranks}, L)
    assert not result.passed()
    (line,) = result.failures()
    assert line.startswith("theta: KS p = ") and reading in line
    with pytest.raises(AssertionError, match="simulation-based calibration failed"):
        result.assert_calibrated()


def test_vector_latents_are_tested_per_coordinate_with_bonferroni():
    rng = np.random.default_rng(3)
    good = rng.integers(0, L + 1, size=(400, 3))
    bad = good.copy()
    bad[:, 2] = _gaussian_sbc(400, sd_factor=0.5)
    test = ks_uniformity(bad, L)
    assert len(test.p_values) == 3 and test.worst == 2
    assert test.p_value == pytest.approx(min(1.0, 3 * min(test.p_values)))
    result = SBCResult({"z": bad}, L)
    assert "worst coordinate z[2]" in result.failures()[0]
    assert "z" in result.summary() and "400 simulations" in result.summary()


def test_rank_histogram_png(tmp_path):
    result = SBCResult({"z": np.stack([_gaussian_sbc(500), _gaussian_sbc(500, sd_factor=0.5)], 1)}, L)
    path = result.plot(tmp_path / "ranks.png", bins=20)
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 150 and image.shape[1] > 300  # two panels side by side
    # The 99% band of Binomial(500, 1/20) holds bar heights 14..37 or so.
    lo, hi = stats.binom.ppf([0.005, 0.995], 500, 1 / 20)
    assert 10 < lo < 25 < hi < 40


def test_bars_outside_the_band_count_about_one_percent_when_exact():
    exact = SBCResult({"theta": np.stack([_gaussian_sbc(1000, seed=s) for s in range(10)], 1)}, L)
    outside, total = exact.outside_band("theta")
    assert total == 200 and outside <= 8  # expected about 2
    narrow = SBCResult({"theta": _gaussian_sbc(1000, sd_factor=0.7)}, L)
    assert narrow.outside_band("theta")[0] >= 2  # at least both end bars
    assert "bars outside 99% band" in narrow.summary()
