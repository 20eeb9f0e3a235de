"""Population bounds (fimaudit/bounds.py): the binomial arithmetic against scipy.stats, the
coverage of the bounds in simulation (a CI-sized run; the full one is benchmarks/population_bounds.py),
and the report fields summarize() fills in."""
from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from known_models import KnownModel
from scipy import stats as sps

import fimaudit
from fimaudit.bounds import (
    QUANTILES,
    allowed_exceedances,
    binomial_cdf,
    binomial_pmf,
    effective_level,
    epsilon_lower,
    inputs_needed,
    quantile_bound,
)
from fimaudit.cli.plan import queries_per_input
from fimaudit.estimators import EstimatorConfig, sketch_statistics
from fimaudit.report import AuditReport, SampleResult, summarize

CONFIDENCE = 0.95
MISS = 1 - CONFIDENCE


# --------------------------------------------------------------------------- #
# exact binomial arithmetic, checked against scipy.stats (an independent implementation)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n", [1, 2, 7, 30, 299, 2000, 20000])
@pytest.mark.parametrize("p", [1e-4, 0.01, 0.095, 0.5, 0.9, 0.99])
def test_pmf_and_cdf_match_scipy(n: int, p: float) -> None:
    j = np.arange(n + 1)
    np.testing.assert_allclose(binomial_pmf(n, p), sps.binom.pmf(j, n, p), rtol=1e-9, atol=1e-300)
    # The lower tail is what the bounds compare with alpha: it must be right in relative terms where small.
    expected = sps.binom.cdf(j, n, p)
    np.testing.assert_allclose(binomial_cdf(n, p), expected, rtol=1e-9, atol=1e-12)


def test_degenerate_probabilities() -> None:
    assert binomial_pmf(3, 0.0).tolist() == [1, 0, 0, 0]
    assert binomial_pmf(3, 1.0).tolist() == [0, 0, 0, 1]


def _scipy_exceedances(n: int, q: float, confidence: float, miss: float) -> int | None:
    """The same definition written with scipy: the largest R with P(Bin(n, 1 - q*) <= R) <= alpha."""
    s = 1 - (q + (1 - q) * miss)
    ok = [r for r in range(n + 1) if sps.binom.cdf(r, n, s) <= 1 - confidence]
    return max(ok) if ok else None


@pytest.mark.parametrize("q", list(QUANTILES.values()))
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("miss", [0.0, 0.05])
def test_exceedances_match_scipy(q: float, confidence: float, miss: float) -> None:
    for n in (1, 5, 6, 28, 29, 30, 31, 100, 298, 299, 313, 314, 1000, 2000):
        assert allowed_exceedances(n, q, confidence, miss) == _scipy_exceedances(n, q, confidence, miss), n


def test_exceedances_give_the_order_statistic_property() -> None:
    # The (R+1)-th largest of n lies below the q*-quantile with probability P(Bin(n, q*) >= n - R) <= alpha,
    # and allowing one more exceedance would break that.
    for n in (40, 100, 700):
        r = allowed_exceedances(n, 0.9, CONFIDENCE, MISS)
        assert r is not None
        q_star = effective_level(0.9, MISS)
        assert sps.binom.sf(n - r - 1, n, q_star) <= 1 - CONFIDENCE < sps.binom.sf(n - r - 2, n, q_star)


@pytest.mark.parametrize("q, confidence, miss, expected", [
    (0.9, 0.95, 0.0, 29), (0.99, 0.95, 0.0, 299), (0.5, 0.95, 0.0, 5),  # the textbook ln(1-g)/ln(q)
    (0.9, 0.95, 0.05, 31), (0.99, 0.95, 0.05, 314), (0.5, 0.95, 0.05, 5),  # with the per-sample miss folded in
])
def test_inputs_needed_for_zero_exceedances(q: float, confidence: float, miss: float, expected: int) -> None:
    assert inputs_needed(q, confidence, miss) == expected
    q_star = effective_level(q, miss)
    assert expected == math.ceil(math.log(1 - confidence) / math.log(q_star))


@pytest.mark.parametrize("exceedances", [1, 3, 10])
def test_inputs_needed_with_exceedances_is_the_first_n_that_allows_them(exceedances: int) -> None:
    n = inputs_needed(0.9, CONFIDENCE, MISS, exceedances)
    assert (_scipy_exceedances(n, 0.9, CONFIDENCE, MISS) or -1) >= exceedances
    assert (_scipy_exceedances(n - 1, 0.9, CONFIDENCE, MISS) or -1) < exceedances


def test_bound_is_the_right_order_statistic_and_null_says_why() -> None:
    ends = np.arange(1.0, 101.0)[::-1]  # order must not matter
    r = allowed_exceedances(100, 0.9, CONFIDENCE, MISS)
    assert r is not None
    bound = quantile_bound(ends, "p90", CONFIDENCE, MISS)
    assert (bound.value, bound.exceedances, bound.note) == (100.0 - r, r, None)
    few = quantile_bound(ends[:12], "p90", CONFIDENCE, MISS)
    assert few.value is None and few.note == "too few inputs to bound p90 at 95%: 12 audited, 31 needed"


def test_epsilon_maps_through_the_bound() -> None:
    assert epsilon_lower(4.0, 0.02) == pytest.approx(0.1)
    assert epsilon_lower(None, 0.01) is None and epsilon_lower(0.0, 0.01) is None


# --------------------------------------------------------------------------- #
# coverage in simulation (CI size: a few seconds)
# --------------------------------------------------------------------------- #

Noise = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _lognormal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return np.exp(rng.normal(0.0, 2.0, size=shape))


def _lognormal_quantile(q: float) -> float:
    return float(np.exp(2.0 * sps.norm.ppf(q)))


def _floor_mixture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """60% of inputs at the resolution floor 0.01 (an atom: the population median sits on it), 40% lognormal."""
    return np.where(rng.random(shape) < 0.6, 0.01, np.exp(rng.normal(1.0, 1.0, size=shape)))


def _floor_mixture_quantile(q: float) -> float:
    return 0.01 if q <= 0.6 else float(np.exp(1.0 + sps.norm.ppf((q - 0.6) / 0.4)))


def _worst_case(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intervals as tight as can be that still miss at the allowed rate, as badly as possible:
    U = lambda, except with probability MISS, U = 0. The bound's argument is tight for these."""
    return np.where(rng.random(lam.shape) < MISS, 0.0, lam)


def _chi2_intervals(lam: np.ndarray, rng: np.random.Generator, k: int = 256) -> np.ndarray:
    """lambda_hat = lambda chi2_k / k (the sketch's sqrt(2/k) spread) and the exact scale interval's upper end."""
    hat = lam * rng.chisquare(k, size=lam.shape) / k
    return hat * k / sps.chi2.ppf((1 - CONFIDENCE) / 2, k)


def _sketch_pool(rng: np.random.Generator, k: int = 64, draws: int = 120) -> np.ndarray:
    """Upper ends U / lambda of the estimator's own interval (sketch_statistics, exact JVPs) for top
    spectra from a separated to a tied one: the interval scales with lambda, so a pool of ratios
    is the per-sample noise of any population."""
    cfg = EstimatorConfig(directions=k, step=1e-3, bootstrap=200)
    ratios = []
    for spectrum in ((1, 0.3, 0.1, 0.01), (1, 0.9, 0.5, 0.1), (1, 1, 1, 0.5)):
        for i in range(draws):
            s = sketch_statistics(rng.standard_normal((k, 4)) * np.sqrt(spectrum), exact=False, cfg=cfg, index=i)
            ratios.append(max(s.ci[1], s.lambda_max))
    return np.array(ratios)


def _coverage(draw: Callable[[np.random.Generator, tuple[int, int]], np.ndarray], truth: float, noise: Noise,
              n: int, q: float, reps: int, rng: np.random.Generator, floor: float | None = None) -> float:
    """Fraction of reps whose bound (from n samples) is at least the true quantile."""
    lam = draw(rng, (reps, n))
    ends = noise(lam, rng)
    if floor is not None:  # inputs at the floor report the floor itself (below_resolution): no noise
        ends = np.where(lam == floor, floor, ends)
    r = allowed_exceedances(n, q, CONFIDENCE, MISS)
    assert r is not None
    bounds = np.partition(ends, n - 1 - r, axis=1)[:, n - 1 - r]
    return float(np.mean(bounds >= truth))


def _exact_worst_case_coverage(n: int, q: float) -> float:
    r = allowed_exceedances(n, q, CONFIDENCE, MISS)
    assert r is not None
    return float(1 - sps.binom.sf(n - r - 1, n, effective_level(q, MISS)))


REPS = 3000


@pytest.mark.parametrize("n, name", [(31, "p50"), (31, "p90"), (120, "p50"), (120, "p90"), (400, "p90"), (400, "p99")])
def test_worst_case_noise_covers_exactly_as_computed(n: int, name: str) -> None:
    rng = np.random.default_rng([7, n])
    q = QUANTILES[name]
    observed = _coverage(_lognormal, _lognormal_quantile(q), _worst_case, n, q, REPS, rng)
    exact = _exact_worst_case_coverage(n, q)
    assert exact >= CONFIDENCE
    assert abs(observed - exact) < 4 * math.sqrt(exact * (1 - exact) / REPS)


def test_without_folding_the_miss_in_the_worst_case_undercovers() -> None:
    # The same intervals, bounded as if each lambda_max were known exactly: the fold is needed.
    # The median at n = 1000 shows it most: the misses shift the count of upper ends above it by 2.5%.
    rng = np.random.default_rng(3)
    n, q = 1000, 0.5
    ends = _worst_case(_lognormal(rng, (REPS, n)), rng)
    r = allowed_exceedances(n, q, CONFIDENCE, 0.0)
    assert r is not None
    naive = np.partition(ends, n - 1 - r, axis=1)[:, n - 1 - r]
    assert float(np.mean(naive >= _lognormal_quantile(q))) < 0.7


@pytest.mark.parametrize("population", ["lognormal", "floor_mixture"])
def test_coverage_with_sketch_shaped_noise(population: str) -> None:
    rng = np.random.default_rng(11)
    pool = _sketch_pool(rng)
    draw, quantile = ((_lognormal, _lognormal_quantile) if population == "lognormal"
                      else (_floor_mixture, _floor_mixture_quantile))
    floor = 0.01 if population == "floor_mixture" else None

    def pooled(lam: np.ndarray, g: np.random.Generator) -> np.ndarray:
        return lam * g.choice(pool, size=lam.shape)

    for noise in (pooled, _chi2_intervals):
        for n, name in ((31, "p50"), (31, "p90"), (200, "p50"), (200, "p90"), (400, "p99")):
            q = QUANTILES[name]
            covered = _coverage(draw, quantile(q), noise, n, q, 1000, rng, floor)
            assert covered >= CONFIDENCE - 3 * math.sqrt(CONFIDENCE * (1 - CONFIDENCE) / 1000), (noise, n, name, covered)


def test_the_estimators_upper_end_misses_within_the_allowance() -> None:
    # The fold assumes P(U < lambda) <= 1 - confidence per sample, not (1 - confidence) / 2: the
    # sketch's interval misses mostly above (about 4% for a separated top eigenvalue).
    rng = np.random.default_rng(5)
    pool = _sketch_pool(rng, draws=200)
    assert float(np.mean(pool < 1.0)) <= MISS


# --------------------------------------------------------------------------- #
# the report fields
# --------------------------------------------------------------------------- #


def _sample(index: int, lam: float, hi: float, cls: int = 0, flags: tuple[str, ...] = (), tau: float = 0.01) -> SampleResult:
    return SampleResult(
        index=index, predicted_class=cls, confidence=0.9, lambda_max=lam, lambda_max_ci=(lam / 2, hi),
        lambda_max_raw=lam, lambda_lower=None, lambda_lower_loose=None, trace=lam, stable_rank=1.0,
        epsilon_tau=math.sqrt(2 * tau / lam), queries=10, method="sketch", directions=16, directions_kind="gaussian",
        lambda_max_resolution=1e-9, flags=list(flags),
    )


def test_summary_bounds_use_interval_upper_ends() -> None:
    samples = [_sample(i, 1.0 + i, 2.0 * (1.0 + i), cls=i % 2) for i in range(60)]
    s = summarize(samples, 600, 1.0, tau=0.01)
    r = allowed_exceedances(60, 0.9, CONFIDENCE, MISS)
    assert r is not None
    assert s.lambda_max_upper is not None and s.epsilon_tau_lower is not None
    assert s.lambda_max_upper["p90"] == sorted(2.0 * (1.0 + i) for i in range(60))[59 - r]
    assert s.lambda_max_upper["p99"] is None and s.epsilon_tau_lower["p99"] is None
    assert s.bound_notes["p99"] == "too few inputs to bound p99 at 95%: 60 audited, 314 needed"
    assert s.epsilon_tau_lower["p90"] == pytest.approx(math.sqrt(0.02 / s.lambda_max_upper["p90"]))
    assert s.bound_confidence == CONFIDENCE and s.bound_method and "i.i.d." in s.bound_method
    # Per class: 30 inputs each, enough for p50, not for p90 (31).
    assert set(s.per_class_bounds) == {"0", "1"}
    assert s.per_class_bounds["0"].n == 30 and s.per_class_bounds["0"].lambda_max_upper["p50"] is not None
    assert s.per_class_bounds["0"].lambda_max_upper["p90"] is None
    assert "p90 31" in s.bound_notes["per_class"]


def test_summary_tau_defaults_to_the_samples_own() -> None:
    samples = [_sample(i, 1.0 + i, 3.0 + i, tau=0.05) for i in range(40)]
    given, inferred = summarize(samples, 1, 1.0, tau=0.05), summarize(samples, 1, 1.0)
    assert given.epsilon_tau_lower is not None and inferred.epsilon_tau_lower is not None
    assert inferred.epsilon_tau_lower["p50"] == pytest.approx(given.epsilon_tau_lower["p50"], rel=1e-12)


def test_below_resolution_samples_count_at_their_level() -> None:
    # Their lambda_max is the resolution level (an upper bound) and their interval (0, level).
    samples = [_sample(i, 0.5, 0.5, flags=("below_resolution",)) for i in range(40)]
    s = summarize(samples, 1, 1.0, tau=0.01)
    assert s.lambda_max_upper is not None and s.lambda_max_upper["p90"] == 0.5


def test_confidence_changes_the_bounds() -> None:
    samples = [_sample(i, 1.0 + i, 2.0 + 2 * i) for i in range(100)]
    loose, strict = summarize(samples, 1, 1.0, confidence=0.9), summarize(samples, 1, 1.0, confidence=0.99)
    assert loose.lambda_max_upper is not None and strict.lambda_max_upper is not None
    assert strict.bound_confidence == 0.99 and loose.lambda_max_upper["p50"] < strict.lambda_max_upper["p50"]  # type: ignore[operator]


def test_reports_without_bounds_still_load() -> None:
    # A schema 1.2 report's summary has none of the bound fields: they default to null / empty.
    report = AuditReport.model_validate_json(_old_report_json())
    assert report.summary.lambda_max_upper is None and report.summary.bound_notes == {}
    assert report.summary.per_class_bounds == {}


def _old_report_json() -> str:
    """The report inside tests/golden's signed schema 1.1 envelope."""
    envelope = json.loads((Path(__file__).parent / "golden" / "audit_report_v1.1.dsse.json").read_text())
    return json.dumps(json.loads(base64.b64decode(envelope["payload"]))["predicate"]["report"])


# --------------------------------------------------------------------------- #
# fimaudit plan
# --------------------------------------------------------------------------- #


def test_plan_prints_the_inputs_needed() -> None:
    res = run("plan", "--quantile", "0.9", "--confidence", "0.95")
    assert res.returncode == 0, res.stderr
    assert "inputs needed: 31" in res.stdout and "29 would do if each lambda_max were known exactly" in res.stdout
    res = run("plan", "--quantile", "0.99", "--exceedances", "2")
    assert "inputs needed: 661" in res.stdout and "3rd largest" in res.stdout
    assert inputs_needed(0.99, 0.95, 0.05, 2) == 661


def test_plan_refuses_bad_levels() -> None:
    res = run("plan", "--quantile", "1")
    assert res.returncode == 2 and "--quantile must be in (0, 1)" in res.stderr


@pytest.mark.parametrize("directions, method", [(16, "sketch"), (400, "exact")])
def test_plan_query_range_holds_what_an_audit_spends(mlp64: KnownModel, directions: int, method: str) -> None:
    model = mlp64.model()
    d = model.input_spec.size
    cost = queries_per_input(d, model.num_classes, directions=directions)
    assert cost.method == method
    report = fimaudit.audit(model, mlp64.x[:4], directions=directions, bootstrap=100)
    assert all(cost.low <= s.queries <= cost.high for s in report.samples), ([s.queries for s in report.samples], cost)


def test_plan_with_a_model_prints_the_cost() -> None:
    pytest.importorskip("fimaudit_onnx")  # the core's tests run without adapters
    digits = Path(__file__).resolve().parents[1] / "examples" / "digits.onnx"
    res = run("plan", "--quantile", "0.5", "--model", str(digits), "--directions", "64")
    assert res.returncode == 0, res.stderr
    assert "d = 64, 10 classes; sketch, 64 directions" in res.stdout and "for 5 inputs:" in res.stdout
