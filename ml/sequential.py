"""Statistics that stay valid when an experiment is looked at every hour.

An estimate `d` of a difference (treatment - control) with a known variance `V` (the
delta method's, on sessions) is treated as d ~ N(delta, V). A fixed-horizon z-test re-run at
every look rejects a true null far more often than alpha; the normal-mixture sequential
probability ratio test (mSPRT; Robbins 1970, Johari, Pekelis & Walsh 2017, "Always valid
inference") does not. Its statistic is the likelihood ratio of "delta ~ N(null, tau2)" against
"delta = null":

    LR = sqrt(V / (V + tau2)) * exp(tau2 (d - null)^2 / (2 V (V + tau2)))

a nonnegative martingale under the null in information time (1/V), so by Ville's inequality
P(LR ever >= 1/alpha) <= alpha. Hence the always-valid p-value min(1, 1/LR) (its running
minimum over looks is still valid) and the confidence sequence {null : LR < 1/alpha}
(Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences"),
an interval at every look that covers delta at all looks at once with probability 1 - alpha.

Decisions:
- The mixing variance tau2 is set by a look where the interval should be narrowest: the
  variance `V*` the estimate will have then (`tuned_mixture`). Minimising the half-width at
  V = V* over tau2 gives tau2 = r V* with r = 2 log(1/alpha) + log(1 + r) (r = 8.2 at
  alpha 0.05). Narrower earlier looks and wider later ones trade off slowly (the width grows
  like sqrt(log n) away from V*), so a rough guess is fine; any tau2 keeps validity.
- Variances are plug-in estimates (as in Johari et al.): validity is asymptotic, and holds
  in the simulations of tests/test_sequential.py and bench/experiments.py.
- Ratio metrics (clicks / exposures per session) are linearized first (delta method; Deng
  et al. 2018): a unit's value R + (x - R y) / mean(y) has mean R and the ratio's variance.
  CUPED (Deng et al. 2013) then subtracts theta (z - mean z) from that value, theta from the
  covariance pooled within arms (the OLS slope with one intercept per arm), so an effect of
  the treatment on the mean never leaks into theta.
- Sample ratio mismatch across periods: one chi-square per period against the weights in
  force in it, summed (df = sum of (k - 1)); a unit in a variant of weight 0 is a mismatch.

Libraries considered (pip --dry-run against our pins, pandas 2.3.3, numpy 2.4.6, scipy 1.17.1):
tea-tasting 1.14.0 installs cleanly (adds ibis-framework 12, atpublic, parsy, toolz) and
computes delta-method ratios, CUPED and SRM from aggregates in the warehouse through Ibis, but
it has no sequential inference (no mSPRT, no confidence sequences) and no stratification over
periods with different weights. spotify-confidence 4.1.0 fits the pins too but pulls ~30
packages (chartify, bokeh, ipython, selenium), works on in-memory pandas only, and its
sequential test is group-sequential with a planned final sample size, which an open-ended
hourly ramp does not have. So we wrote the ~150 lines here, each checked against an
independent computation; statistics need only per-session rows, which the warehouse marts give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def _tightest_ratio(alpha: float) -> float:
    """r = tau2 / V* solving r = 2 log(1/alpha) + log(1 + r) (a contraction: converges fast)."""
    r = 2 * math.log(1 / alpha)
    for _ in range(50):
        r = 2 * math.log(1 / alpha) + math.log1p(r)
    return r


def tuned_mixture(variance: float, alpha: float) -> float:
    """The mixing variance tau2 whose confidence sequence is narrowest at the look where the
    estimate's variance is `variance` (e.g. 2 sd^2 / n* for n* sessions per arm, 50/50)."""
    _check_alpha(alpha)
    if not variance > 0:
        raise ValueError(f"the variance at the tightest look must be positive, got {variance}")
    return _tightest_ratio(alpha) * variance


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def log_mixture_lr(estimate, variance, tau2: float, null: float = 0.0):
    """log LR of the normal mixture (see the module docstring); arrays broadcast."""
    v = np.asarray(variance, dtype=float)
    gap = np.asarray(estimate, dtype=float) - null
    return 0.5 * np.log(v / (v + tau2)) + tau2 * gap**2 / (2 * v * (v + tau2))


def mixture_lr(estimate, variance, tau2: float, null: float = 0.0):
    """The mixture likelihood ratio of "delta ~ N(null, tau2)" against "delta = null"."""
    return np.exp(log_mixture_lr(estimate, variance, tau2, null))


def always_valid_p(estimate, variance, tau2: float, null: float = 0.0):
    """The always-valid p-value of one look, min(1, 1/LR); NaN where the variance is not
    positive. Its running minimum over looks is valid too (`always_valid_p_values`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, np.exp(-log_mixture_lr(estimate, variance, tau2, null)))
    return np.where(np.asarray(variance, dtype=float) > 0, p, np.nan)


def always_valid_p_values(estimates, variances, tau2: float, null: float = 0.0) -> np.ndarray:
    """The always-valid p-value after each look of a sequence: the running minimum."""
    p = always_valid_p(estimates, variances, tau2, null)
    return np.fmin.accumulate(np.atleast_1d(p))


def confidence_sequence(estimate, variance, tau2: float, alpha: float):
    """(low, high) at one look (arrays broadcast): the nulls with LR < 1/alpha, i.e.
    estimate -+ sqrt(V (V + tau2) / tau2 * (2 log(1/alpha) + log((V + tau2) / V)))."""
    _check_alpha(alpha)
    v = np.asarray(variance, dtype=float)
    d = np.asarray(estimate, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log1p(tau2 / v)))
    return d - half, d + half


def fixed_interval(estimate, variance, alpha: float):
    """(low, high, two-sided p) of one z-test: valid at one pre-set look only."""
    from scipy.stats import norm

    _check_alpha(alpha)
    se = np.sqrt(np.asarray(variance, dtype=float))
    d = np.asarray(estimate, dtype=float)
    z = norm.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * norm.sf(np.abs(d) / se)
    return d - z * se, d + z * se, p


# --- the delta method and CUPED -----------------------------------------------------------------


def linearize(numerators, denominators) -> np.ndarray:
    """Per-unit values R + (x - R y) / mean(y), R = sum(x) / sum(y): their mean is R and their
    variance / n the delta-method variance of R (y = 1: the values themselves)."""
    x = np.asarray(numerators, dtype=float)
    y = np.asarray(denominators, dtype=float)
    if len(x) == 0 or y.sum() == 0:
        return np.full(len(x), np.nan)
    ratio = x.sum() / y.sum()
    return ratio + (x - ratio * y) / y.mean()


def ratio_from_sums(n, sx, sy, sxx, sxy, syy):
    """(R, variance of R) from an arm's sums over units of x, y, x^2, xy, y^2 (ddof 1), the
    same numbers as `linearize`; arrays broadcast, so cumulative sums give every look."""
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = sx / sy
        cxx = (sxx - sx * sx / n) / (n - 1)
        cxy = (sxy - sx * sy / n) / (n - 1)
        cyy = (syy - sy * sy / n) / (n - 1)
        variance = (cxx - 2 * ratio * cxy + ratio**2 * cyy) / (n * (sy / n) ** 2)
    return ratio, np.maximum(variance, 0.0)


@dataclass(frozen=True)
class Cuped:
    theta: np.ndarray  # one coefficient per covariate
    values: np.ndarray  # value - (z - mean z over all units) theta
    variance_reduction: float  # 1 - pooled within-arm variance after / before


def cuped(values, covariates, arms) -> Cuped:
    """CUPED on (linearized) unit values with pre-exposure covariates (n x k), theta from the
    covariance pooled within arms; a constant covariate gets theta 0."""
    y = np.asarray(values, dtype=float)
    z = np.asarray(covariates, dtype=float).reshape(len(y), -1)
    arms = np.asarray(arms)
    yc, zc = y.copy(), z.copy()
    for arm in np.unique(arms):
        mask = arms == arm
        yc[mask] -= y[mask].mean()
        zc[mask] -= z[mask].mean(axis=0)
    theta = np.linalg.lstsq(zc.T @ zc, zc.T @ yc, rcond=None)[0]
    adjusted = y - (z - z.mean(axis=0)) @ theta
    before = float(yc @ yc)
    after = float(((yc - zc @ theta) ** 2).sum())
    reduction = 1 - after / before if before > 0 else 0.0
    return Cuped(theta=theta, values=adjusted, variance_reduction=reduction)


def combine(estimates: Sequence[float], variances: Sequence[float]) -> tuple[float, float]:
    """Inverse-variance combination of independent strata (estimate, variance); strata with
    no positive finite variance are left out; (NaN, NaN) when none is left."""
    d = np.asarray(estimates, dtype=float)
    v = np.asarray(variances, dtype=float)
    usable = np.isfinite(d) & np.isfinite(v) & (v > 0)
    if not usable.any():
        return math.nan, math.nan
    w = 1 / v[usable]
    return float((w * d[usable]).sum() / w.sum()), float(1 / w.sum())


# --- sample ratio mismatch ----------------------------------------------------------------------


def sample_ratio_mismatch(
    periods: Sequence[tuple[Mapping[str, int], Mapping[str, float]]],
) -> tuple[float, int, float]:
    """(chi-square, df, p) of units per variant against the weights in force, summed over
    periods given as (units by variant, weights by variant). Variants of weight 0 leave the
    test, unless they got units: then the split is broken (statistic inf, p 0). A period
    without weights is skipped; p is NaN when no period has two variants with weight and
    units."""
    from scipy.stats import chi2

    statistic, df = 0.0, 0
    for observed, weights in periods:
        if not weights:  # nothing logged to test against
            continue
        if any(weights.get(v, 0) <= 0 and count > 0 for v, count in observed.items()):
            return math.inf, df, 0.0
        names = sorted(v for v, w in weights.items() if w > 0)
        counts = np.array([observed.get(v, 0) for v in names], dtype=float)
        if len(names) < 2 or counts.sum() == 0:
            continue
        shares = np.array([weights[v] for v in names], dtype=float)
        expected = counts.sum() * shares / shares.sum()
        statistic += float(((counts - expected) ** 2 / expected).sum())
        df += len(names) - 1
    if df == 0:
        return math.nan, 0, math.nan
    return statistic, df, float(chi2.sf(statistic, df))
