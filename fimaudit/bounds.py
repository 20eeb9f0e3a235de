"""Distribution-free confidence bounds on population quantiles of lambda_max (docs/math.md).

The audited inputs are taken as an i.i.d. sample of a population. For a quantile level q, a
bound is an order statistic of the samples' interval upper ends: the (R+1)-th largest, R the most
exceedances the binomial law allows. Each sample's own estimation error is folded in by raising
q to q* = q + (1 - q) * miss, where `miss` bounds the probability that a sample's interval upper
end falls below its true lambda_max (the per-sample intervals' two-sided miss rate, 1 - their
confidence, so no symmetry of their tails is assumed). The argument is in docs/math.md,
"Population bounds"; tests/test_bounds.py and benchmarks/population_bounds.py check it.

Pure numpy and scipy.special: no model, no report types.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

# The population quantiles the report bounds, by name.
QUANTILES: dict[str, float] = {"p50": 0.5, "p90": 0.9, "p99": 0.99}

METHOD = (
    "order statistic of the per-sample interval upper ends (distribution-free binomial bound): the (R+1)-th "
    "largest, R the largest count with P(Binomial(n, 1 - q*) <= R) <= 1 - confidence, where q* = q + (1 - q)(1 - c) "
    "folds in each sample's interval missing its true lambda_max with probability at most 1 - c (c the per-sample "
    "intervals' confidence); epsilon_tau bounds are sqrt(2 tau / bound). Assumes the audited inputs are an i.i.d. "
    "sample of the population (docs/math.md, Population bounds)"
)


@dataclass(frozen=True)
class QuantileBound:
    """One bound: `value` is None exactly when `note` says why."""

    value: float | None
    exceedances: int | None  # samples whose upper end lies above the bound (R); None without a bound
    needed: int  # the fewest inputs for which a bound exists (R = 0)
    note: str | None


def effective_level(q: float, miss: float) -> float:
    """q* = q + (1 - q) * miss: the level the samples' upper ends must be counted at.

    P(U < t_q) <= P(lambda < t_q) + P(U < lambda, lambda >= t_q) <= q + miss * (1 - q) for the
    q-quantile t_q, when each sample's upper end U misses its lambda with probability <= miss."""
    _check_level("quantile", q)
    if not 0.0 <= miss < 1.0:
        raise ValueError(f"miss must be in [0, 1) (got {miss!r})")
    return q + (1.0 - q) * miss


def binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(X = j) for j = 0..n, X ~ Binomial(n, p), from log-gamma (exact to rounding for any n)."""
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    if p <= 0.0 or p >= 1.0:  # degenerate: all the mass at 0 or at n
        out = np.zeros(n + 1)
        out[0 if p <= 0.0 else n] = 1.0
        return out
    j = np.arange(n + 1, dtype=np.float64)
    log_choose = gammaln(n + 1.0) - gammaln(j + 1.0) - gammaln(n - j + 1.0)
    return np.exp(log_choose + j * math.log(p) + (n - j) * math.log1p(-p))


def binomial_cdf(n: int, p: float) -> np.ndarray:
    """P(X <= r) for r = 0..n."""
    return np.minimum(np.cumsum(binomial_pmf(n, p)), 1.0)


def allowed_exceedances(n: int, q: float, confidence: float, miss: float) -> int | None:
    """The largest R with P(Binomial(n, 1 - q*) <= R) <= 1 - confidence; None when not even R = 0.

    The bound is then the (R+1)-th largest upper end: it lies below the q-quantile only if at least
    n - R upper ends do, an event of probability <= P(Binomial(n, q*) >= n - R), the same number."""
    _check_level("confidence", confidence)
    if n < 1:
        return None
    tail = 1.0 - effective_level(q, miss)  # the chance an upper end lies above the quantile, at least
    ok = np.flatnonzero(binomial_cdf(n, tail) <= 1.0 - confidence)
    return int(ok[-1]) if ok.size else None


def inputs_needed(q: float, confidence: float, miss: float, exceedances: int = 0) -> int:
    """The fewest inputs n whose bound at level q allows `exceedances` upper ends above it."""
    if exceedances < 0:
        raise ValueError(f"exceedances must be >= 0 (got {exceedances})")

    def enough(n: int) -> bool:
        r = allowed_exceedances(n, q, confidence, miss)
        return r is not None and r >= exceedances

    # P(Binomial(n, s) <= R) falls as n grows, so search by doubling, then bisect.
    high = exceedances + 1
    while not enough(high):
        high *= 2
    low = high // 2  # not enough (or below the start)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def quantile_bound(upper_ends: np.ndarray, name: str, confidence: float, miss: float) -> QuantileBound:
    """The upper confidence bound on the population quantile QUANTILES[name] of lambda_max."""
    q = QUANTILES[name]
    ends = np.asarray(upper_ends, dtype=np.float64)
    needed = inputs_needed(q, confidence, miss)
    r = allowed_exceedances(len(ends), q, confidence, miss)
    if r is None:
        note = f"too few inputs to bound {name} at {_percent(confidence)}: {len(ends)} audited, {needed} needed"
        return QuantileBound(None, None, needed, note)
    value = float(np.sort(ends)[len(ends) - 1 - r])
    if not math.isfinite(value):
        return QuantileBound(None, r, needed, f"the order statistic that bounds {name} is not finite")
    return QuantileBound(value, r, needed, None)


def quantile_bounds(upper_ends: np.ndarray, confidence: float, miss: float) -> dict[str, QuantileBound]:
    """quantile_bound for every name in QUANTILES."""
    return {name: quantile_bound(upper_ends, name, confidence, miss) for name in QUANTILES}


def epsilon_lower(lambda_upper: float | None, tau: float) -> float | None:
    """sqrt(2 tau / U): epsilon_tau is decreasing in lambda_max, so a bound maps through it. None
    when there is no bound, and when U = 0 (the radius is unbounded: policy.py reads that case
    from lambda_max_upper)."""
    if lambda_upper is None or lambda_upper <= 0.0:
        return None
    return math.sqrt(2.0 * tau / lambda_upper)


def _check_level(what: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{what} must be in (0, 1) (got {value!r})")


def _percent(confidence: float) -> str:
    return f"{confidence * 100:.4g}%"
