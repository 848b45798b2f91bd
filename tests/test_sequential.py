"""ml.sequential against values computed another way: numerical integration, root finding,
least squares, the chi-square distribution by hand, and simulations of repeated looks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from ml import sequential as seq


def _normal(x: float, mean: float, variance: float) -> float:
    return math.exp(-((x - mean) ** 2) / (2 * variance)) / math.sqrt(2 * math.pi * variance)


@pytest.mark.parametrize(
    "estimate, variance, tau2, null",
    [(0.01, 1e-4, 4e-4, 0.0), (-0.3, 0.04, 0.01, 0.1), (0.0, 2.0, 5.0, 0.0), (0.2, 0.01, 0.5, 0)],
)
def test_mixture_lr_is_the_integral_of_the_likelihood_ratio_over_the_prior(
    estimate, variance, tau2, null
):
    sd = math.sqrt(tau2)
    integral, _ = integrate.quad(
        lambda delta: _normal(estimate, delta, variance) * _normal(delta, null, tau2),
        null - 12 * sd,
        null + 12 * sd,
        points=[estimate],
        epsabs=0,
        epsrel=1e-11,
        limit=200,
    )
    expected = integral / _normal(estimate, null, variance)
    assert seq.mixture_lr(estimate, variance, tau2, null) == pytest.approx(expected, rel=1e-8)
    p = seq.always_valid_p(estimate, variance, tau2, null)
    assert p == pytest.approx(min(1.0, 1 / expected), rel=1e-8)


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_confidence_sequence_bounds_solve_lr_equal_one_over_alpha(alpha):
    estimate, variance, tau2 = 0.03, 2.5e-4, 1e-3
    low, high = seq.confidence_sequence(estimate, variance, tau2, alpha)

    def gap(null: float) -> float:
        return math.log(seq.mixture_lr(estimate, variance, tau2, null)) - math.log(1 / alpha)

    far = 0.2
    assert low == pytest.approx(optimize.brentq(gap, estimate - far, estimate), abs=1e-12)
    assert high == pytest.approx(optimize.brentq(gap, estimate, estimate + far), abs=1e-12)
    # wider than the fixed-horizon interval at the same level
    fixed_low, fixed_high, _ = seq.fixed_interval(estimate, variance, alpha)
    assert low < fixed_low and fixed_high < high


def test_the_tuned_mixture_gives_the_narrowest_interval_at_the_chosen_variance():
    alpha, variance = 0.05, 3e-4

    def width(log_tau2: float) -> float:
        low, high = seq.confidence_sequence(0.0, variance, math.exp(log_tau2), alpha)
        return float(high - low)

    best = optimize.minimize_scalar(
        width, bounds=(-20, 5), method="bounded", options={"xatol": 1e-10}
    )
    assert seq.tuned_mixture(variance, alpha) == pytest.approx(math.exp(best.x), rel=1e-4)
    assert seq.tuned_mixture(variance, alpha) / variance == pytest.approx(8.2, abs=0.05)
    with pytest.raises(ValueError, match="alpha"):
        seq.tuned_mixture(variance, 1.5)


def _running_estimates(rng, runs: int, looks: np.ndarray, sd: float):
    """Difference of two arms' running means of N(0, sd^2) units, n per arm at each look."""
    n_max = int(looks[-1])
    totals = np.zeros((runs, len(looks)))
    for sign in (1, -1):
        units = rng.normal(0, sd, (runs, n_max))
        totals += sign * np.cumsum(units, axis=1)[:, looks - 1]
    return totals / looks, 2 * sd**2 / looks


def test_under_the_null_repeated_looks_keep_the_error_rate():
    """2,000 A/A experiments looked at 200 times: the always-valid p-value ever falls below
    alpha in at most alpha of them; a z-test at every look does so far more often."""
    rng = np.random.default_rng(12)
    alpha, runs, sd = 0.05, 2000, 1.0
    looks = np.linspace(50, 20_000, 200).astype(int)
    estimates, variances = _running_estimates(rng, runs, looks, sd)
    tau2 = seq.tuned_mixture(2 * sd**2 / 5000, alpha)
    running = np.vstack([seq.always_valid_p_values(e, variances, tau2) for e in estimates])
    assert np.all(np.diff(running, axis=1) <= 0)  # a running minimum
    sequential_rate = float((running[:, -1] <= alpha).mean())
    fixed_rate = float((seq.fixed_interval(estimates, variances, alpha)[2] <= alpha).any(1).mean())
    assert sequential_rate <= alpha
    assert fixed_rate > 4 * alpha  # about 0.3 with 200 looks
    # the confidence sequence misses 0 exactly where the p-value is below alpha
    low, high = seq.confidence_sequence(estimates, variances, tau2, alpha)
    p = seq.always_valid_p(estimates, variances, tau2)
    np.testing.assert_array_equal((low > 0) | (high < 0), p < alpha)


def test_a_real_effect_is_found_and_covered():
    rng = np.random.default_rng(5)
    alpha, runs, sd, effect = 0.05, 500, 1.0, 0.05
    looks = np.linspace(100, 20_000, 100).astype(int)
    estimates, variances = _running_estimates(rng, runs, looks, sd)
    estimates += effect
    low, high = seq.confidence_sequence(estimates, variances, seq.tuned_mixture(4e-4, alpha), alpha)
    assert ((low <= effect) & (effect <= high)).all(axis=1).mean() >= 1 - alpha  # all looks
    assert (low[:, -1] > 0).mean() > 0.8  # power at 20,000 per arm (z = 3.5)


def test_linearized_ratio_matches_the_delta_method_from_sums():
    rng = np.random.default_rng(1)
    y = rng.integers(1, 9, 500).astype(float)
    x = rng.binomial(y.astype(int), rng.beta(1, 9, 500)).astype(float)
    values = seq.linearize(x, y)
    ratio, variance = seq.ratio_from_sums(500, x.sum(), y.sum(), x @ x, x @ y, y @ y)
    assert values.mean() == pytest.approx(x.sum() / y.sum(), rel=1e-12) == ratio
    assert values.var(ddof=1) / 500 == pytest.approx(variance, rel=1e-10)
    # a proportion: the textbook p (1 - p) / (n - 1) with ddof 1
    p = np.array([1.0] * 30 + [0.0] * 70)
    _, v = seq.ratio_from_sums(100, p.sum(), 100, p.sum(), p.sum(), 100)
    assert v == pytest.approx(0.3 * 0.7 / 99)


def test_cuped_theta_is_the_least_squares_slope_with_an_intercept_per_arm():
    rng = np.random.default_rng(2)
    n = 4000
    arms = rng.integers(0, 2, n)
    z = np.column_stack([rng.poisson(6, n), rng.poisson(1, n), np.full(n, 3.0)])
    y = 0.5 * arms + 0.08 * z[:, 0] - 0.2 * z[:, 1] + rng.normal(0, 0.5, n)
    adjusted = seq.cuped(y, z, arms)
    design = np.column_stack([arms == 0, arms == 1, z[:, :2]]).astype(float)
    ols = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(adjusted.theta[:2], ols[2:], rtol=1e-9)
    assert adjusted.theta[2] == pytest.approx(0, abs=1e-12)  # a constant covariate
    residual = y - design @ ols
    demeaned = np.concatenate([y[arms == a] - y[arms == a].mean() for a in (0, 1)])
    assert adjusted.variance_reduction == pytest.approx(
        1 - residual @ residual / (demeaned @ demeaned), rel=1e-9
    )
    # the treatment effect survives the adjustment
    effect = adjusted.values[arms == 1].mean() - adjusted.values[arms == 0].mean()
    assert effect == pytest.approx(0.5, abs=0.05)


def test_combine_is_inverse_variance_weighting():
    estimate, variance = seq.combine([1.0, 2.0, 5.0], [1.0, 4.0, math.nan])
    assert estimate == pytest.approx((1 / 1 + 2 / 4) / (1 + 1 / 4))
    assert variance == pytest.approx(1 / (1 + 1 / 4))
    assert all(math.isnan(v) for v in seq.combine([1.0], [0.0]))


def test_sample_ratio_mismatch_sums_periods_with_their_own_weights():
    periods = [
        ({"champion": 990, "challenger": 10}, {"champion": 0.99, "challenger": 0.01}),
        ({"champion": 900, "challenger": 130}, {"champion": 0.9, "challenger": 0.1}),
    ]
    # by hand: sum (O - E)^2 / E per period, 1 df each
    first = (990 - 990) ** 2 / 990 + (10 - 10) ** 2 / 10
    second = (900 - 927) ** 2 / 927 + (130 - 103) ** 2 / 103
    statistic, df, p = seq.sample_ratio_mismatch(periods)
    assert (statistic, df) == (pytest.approx(first + second, rel=1e-12), 2)
    assert p == pytest.approx(math.exp(-(first + second) / 2), rel=1e-12)  # chi2 with 2 df
    assert p == pytest.approx(stats.chi2.sf(first + second, 2), rel=1e-12)
    # the same sessions pooled against the latest weights: a false alarm
    pooled = ({"champion": 1890, "challenger": 140}, {"champion": 0.9, "challenger": 0.1})
    assert seq.sample_ratio_mismatch([pooled])[2] < 1e-4
    # a shadow period (champion alone) adds nothing; units in a weight-0 variant break it
    shadow = ({"champion": 500}, {"champion": 1.0, "challenger": 0.0})
    assert seq.sample_ratio_mismatch([shadow, *periods])[:2] == (pytest.approx(statistic), 2)
    leak = ({"champion": 500, "challenger": 1}, {"champion": 1.0, "challenger": 0.0})
    assert seq.sample_ratio_mismatch([leak])[2] == 0.0
    assert math.isnan(seq.sample_ratio_mismatch([shadow])[2])
