"""Black-box estimates against exact values computed another way (analytic Jacobians).

The models are known networks held in memory (KnownModel.model(), a CallableModel): the estimators
and the engine are the subject here, not a file format. adapters/onnx/tests checks that the ONNX
files of the same networks compute the same function.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import reference
from known_models import KnownModel, make_known

import fimaudit


def rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))


def step_queries(s: fimaudit.SampleResult, per_direction: int = 2) -> int:
    """What choosing the step spent (the pilot, and coordinate mode's passes), and the witness
    with its check: every query that is not the base pair or the sketch's k directions."""
    chosen = sum(t.directions for t in s.step_trials) * per_direction
    witness = per_direction * (1 + len(s.step_check)) if s.lambda_lower is not None else 0
    return chosen + witness


def lambdas(report: fimaudit.AuditReport) -> np.ndarray:
    return np.array([s.lambda_max for s in report.samples])


def test_softmax_linear_closed_form_exact_mode(linear64: KnownModel) -> None:
    report = fimaudit.audit(linear64.model(), linear64.x, directions=128, seed=0)
    W = linear64.weights[0].T  # (K, d)
    for s, x in zip(report.samples, linear64.x):
        p = reference.softmax(W @ x.reshape(-1) + linear64.biases[0])
        F = W.T @ (np.diag(p) - np.outer(p, p)) @ W  # the closed form of MATH.md
        evals = np.linalg.eigvalsh(F)
        assert s.method == "exact" and s.directions_kind == "coordinate"
        assert s.lambda_max == pytest.approx(evals[-1], rel=1e-4)
        assert s.trace == pytest.approx(np.trace(F), rel=1e-4)
        assert s.lambda_lower == pytest.approx(evals[-1], rel=1e-4)  # the witness is the top direction
        assert s.lambda_lower_loose is False


def test_exact_mode_matches_analytic_jacobian(mlp64: KnownModel) -> None:
    report = fimaudit.audit(mlp64.model(), mlp64.x[:5], estimator="exact", seed=0)
    lam, tr, p = mlp64.exact(mlp64.x[:5])
    assert np.all(rel(lambdas(report), lam) < 1e-4)
    assert np.all(rel([s.trace for s in report.samples], tr) < 1e-4)
    assert [s.predicted_class for s in report.samples] == list(np.argmax(p, axis=1))
    assert all(s.queries == 2 + step_queries(s) for s in report.samples)
    assert all(sum(t.directions == 192 for t in s.step_trials) >= 2 for s in report.samples)  # two passes at least


def test_sketch_error_and_interval_coverage(mlp64: KnownModel) -> None:
    report = fimaudit.audit(mlp64.model(), mlp64.x, directions=128, seed=3, estimator="sketch")
    lam, tr, _ = mlp64.exact()
    err = rel(lambdas(report), lam)
    # sqrt(2/k) = 12.5% is the non-adaptive floor's standard deviation at k = 128
    assert np.median(err) < 0.125
    covered = [lo <= t <= hi for (lo, hi), t in zip((s.lambda_max_ci for s in report.samples), lam)]
    assert sum(covered) >= 0.8 * len(covered)
    assert np.median(rel([s.trace for s in report.samples], tr)) < 0.2
    for s in report.samples:
        assert s.method == "sketch" and s.directions == (256 if s.scheme == "forward" else 128)  # auto: 2k forward
        assert s.lambda_max_ci[0] <= s.lambda_max <= s.lambda_max_ci[1]
        assert s.stable_rank == pytest.approx(s.trace / s.lambda_max)


def test_error_shrinks_with_directions(mlp64: KnownModel) -> None:
    model = mlp64.model()
    lam, _, _ = mlp64.exact()
    small = np.median(rel(lambdas(fimaudit.audit(model, mlp64.x, directions=16, estimator="sketch")), lam))
    large = np.median(rel(lambdas(fimaudit.audit(model, mlp64.x, directions=180, estimator="sketch")), lam))
    assert large < small


def test_witness_is_a_lower_bound(mlp64: KnownModel) -> None:
    report = fimaudit.audit(mlp64.model(), mlp64.x, directions=64, estimator="sketch")
    lam, _, _ = mlp64.exact()
    for s, exact in zip(report.samples, lam):
        assert s.lambda_lower is not None
        assert s.lambda_lower <= exact * (1 + 1e-6)
        assert s.lambda_lower_loose == (s.lambda_lower < 0.5 * s.lambda_max)


@pytest.mark.parametrize("scheme", ["central", "forward", "richardson"])
def test_schemes_in_exact_mode(mlp64: KnownModel, scheme: str) -> None:
    report = fimaudit.audit(mlp64.model(), mlp64.x[:4], estimator="exact", scheme=scheme)
    lam, _, _ = mlp64.exact(mlp64.x[:4])
    tolerance = {"central": 1e-6, "forward": 1e-3, "richardson": 1e-8}[scheme]
    assert np.all(rel(lambdas(report), lam) < tolerance)
    per_direction = {"central": 2, "forward": 1, "richardson": 4}[scheme]
    assert report.samples[0].queries == 2 + step_queries(report.samples[0], per_direction)


def test_float32_model_exact_mode(mlp32: KnownModel) -> None:
    report = fimaudit.audit(mlp32.model(), mlp32.x, estimator="exact")
    lam, _, _ = mlp32.exact()
    assert np.median(rel(lambdas(report), lam)) < 1e-3


def test_same_seed_same_numbers_regardless_of_batching(mlp64: KnownModel) -> None:
    """Given a model that answers each row the same in any batch, the engine's batching never changes a number."""
    a = fimaudit.audit(mlp64.model(rowwise=True), mlp64.x, directions=32, seed=7)
    b = fimaudit.audit(mlp64.model(max_batch_size=5, rowwise=True), mlp64.x, directions=32, seed=7)
    c = fimaudit.audit(mlp64.model(rowwise=True), mlp64.x, directions=32, seed=7, limit=3)
    other = fimaudit.audit(mlp64.model(rowwise=True), mlp64.x, directions=32, seed=8)
    assert a.samples == b.samples
    assert a.samples[:3] == c.samples
    assert a.samples != other.samples


def test_fixed_batch_one_model(mlp64: KnownModel, mlp64_batch1: KnownModel) -> None:
    """A model answering one input per request gives the numbers of one answering many."""
    single = mlp64_batch1.model()
    assert single.max_batch_size == single.fixed_batch_size == 1
    x = mlp64_batch1.x[:4]
    a = fimaudit.audit(single, x, directions=16, seed=1)
    b = fimaudit.audit(mlp64.model(), x, directions=16, seed=1)  # the same weights, batched
    # The same directions and steps; only rounding differs between one-row and batched products.
    assert [(s.queries, s.step, s.predicted_class) for s in a.samples] == [(s.queries, s.step, s.predicted_class) for s in b.samples]
    assert lambdas(a) == pytest.approx(lambdas(b), rel=1e-8)
    assert fimaudit.audit(single, x, directions=16, seed=1).samples == a.samples
    assert a.summary.queries == sum(s.queries for s in a.samples)
    lam, _, _ = mlp64_batch1.exact(x)
    exact = fimaudit.audit(single, x[:2], estimator="exact")
    assert np.all(rel(lambdas(exact), lam[:2]) < 1e-4)


def test_logit_outputs_softmaxed(mlp64_logits: KnownModel) -> None:
    report = fimaudit.audit(mlp64_logits.model(), mlp64_logits.x[:4], estimator="exact")
    assert report.model.output_kind == "logits"
    lam, _, p = mlp64_logits.exact(mlp64_logits.x[:4])
    assert np.all(rel(lambdas(report), lam) < 1e-4)
    assert np.allclose([s.confidence for s in report.samples], p.max(axis=1))


def test_query_accounting(mlp64: KnownModel) -> None:
    report = fimaudit.audit(mlp64.model(max_batch_size=7), mlp64.x, directions=20)
    # Whichever scheme auto took, the sketch costs the budget: 20 central directions or 40 forward ones.
    assert all(s.queries == 2 + step_queries(s) + 2 * 20 for s in report.samples)
    assert all(s.directions * (1 if s.scheme == "forward" else 2) == 2 * 20 for s in report.samples)
    assert report.summary.queries == sum(s.queries for s in report.samples)
    assert report.summary.n == len(mlp64.x)


def test_default_step_scales_with_the_data(models_dir: Path) -> None:
    # Same function on inputs scaled by 1000: weights / 1000, inputs * 1000, identical lambda * 1e-6.
    wide = make_known(models_dir, "wide", hidden=(16,), shape=(3, 8, 8), classes=6, scale=3.0, n=4)
    scaled = replace(wide, name="wide_scaled", weights=[wide.weights[0] / 1000, *wide.weights[1:]])
    r1 = fimaudit.audit(wide.model(), wide.x, directions=32, estimator="sketch")
    r2 = fimaudit.audit(scaled.model(), wide.x * 1000, directions=32, estimator="sketch")
    assert r2.config.step == pytest.approx(r1.config.step * 1000)
    assert np.allclose(lambdas(r2) * 1e6, lambdas(r1), rtol=1e-5)


@pytest.mark.parametrize("shape", [(300, 40), (64, 64), (500, 3)])
def test_orthonormal_rows_equal_householder_qr(shape: tuple[int, int]) -> None:
    from fimaudit.estimators import orthonormal_rows

    a = np.random.default_rng(shape[1]).standard_normal(shape)
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    got = orthonormal_rows(a).T
    assert got.T.flags.c_contiguous
    np.testing.assert_allclose(got, q, atol=1e-10)
    np.testing.assert_allclose(got.T @ got, np.eye(shape[1]), atol=1e-12)
    singular = a.copy()
    singular[:, -1] = singular[:, 0]  # rank-deficient: Cholesky fails and QR takes over
    fallback = orthonormal_rows(singular).T
    np.testing.assert_allclose(fallback.T @ fallback, np.eye(shape[1]), atol=1e-12)


@pytest.mark.parametrize("k, classes, form", [
    (300, 10, "RankRows"),  # dense r x r spectra
    (300, 100, "RankRows"),  # Lanczos in rank coordinates
    (60, 400, "GramRows"),  # Lanczos on the k x k Gram form
    pytest.param(400, 300, "GramRows", marks=pytest.mark.slow),
])
def test_sketch_rows_give_the_full_matrices_spectra(k: int, classes: int, form: str) -> None:
    """Jackknife, bootstrap and top vector, in whichever form sketch_rows picks, equal the K x K computations."""
    from fimaudit.estimators import bootstrap_lambdas, jackknife, resample_counts, sketch_rows

    y = np.random.default_rng(k).standard_normal((k, classes)) * np.linspace(2, 0.1, classes)
    full = np.linalg.eigvalsh(y.T @ y / k)[-1]
    rows, top, singular = sketch_rows(y)
    assert type(rows).__name__ == form
    assert abs(top @ (y.T @ y / k) @ top - full) < 1e-9 * full
    assert singular**2 / k == pytest.approx(full, rel=1e-9)
    groups = np.array_split(np.arange(k), 20)
    leave_out = [np.linalg.eigvalsh(np.delete(y, g, axis=0).T @ np.delete(y, g, axis=0) / (k - len(g)))[-1] for g in groups]
    assert jackknife(rows, full) == pytest.approx(20 * full - 19 * np.mean(leave_out), rel=1e-9)
    counts = resample_counts(k, 200, np.random.default_rng(5))
    direct = [np.linalg.eigvalsh(y.T @ (c[:, None] * y) / k)[-1] for c in counts]
    np.testing.assert_allclose(bootstrap_lambdas(rows, 200, np.random.default_rng(5)), direct, rtol=1e-9)


@pytest.mark.parametrize("spectrum", ["separated", "tied", "zero rows"])
def test_the_two_forms_agree(spectrum: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Gram form's weighted spectra equal the rank form's on the same rows, with a three-way tie at
    the top and with rows that are zero (a resample's zero weights make the same zeros)."""
    from fimaudit import estimators
    from fimaudit.estimators import GramRows, RankRows, _rank_coordinates, _top_pair, resample_counts

    rng = np.random.default_rng(3)
    k, classes = 120, 200
    scales = np.r_[np.full(3, 2.0), np.linspace(1.5, 0.1, classes - 3)] if spectrum == "tied" else np.linspace(3, 0.1, classes)
    y = rng.standard_normal((k, classes)) * scales
    if spectrum == "zero rows":
        y[::3] = 0.0
    weights = resample_counts(k, 70, rng) / k  # more than one Lanczos chunk
    rank = RankRows(_rank_coordinates(y)[0]).tops(weights, 1e-13)
    gram = GramRows(y @ y.T, _top_pair(y @ y.T)[1]).tops(weights, 1e-13)
    direct = np.array([np.linalg.eigvalsh(y.T @ (w[:, None] * y))[-1] for w in weights])
    np.testing.assert_allclose(rank, direct, rtol=1e-10)
    np.testing.assert_allclose(gram, direct, rtol=1e-10)
    monkeypatch.setattr(estimators, "LANCZOS_MAX_STEPS", 3)  # unconverged: ARPACK on the Gram form's operator
    np.testing.assert_allclose(GramRows(y @ y.T, _top_pair(y @ y.T)[1]).tops(weights[:4], 1e-13), direct[:4], rtol=1e-8)


def test_resample_counts_follow_the_multinomial_law() -> None:
    """Each resample draws k rows with replacement: counts sum to k, each row's count is
    Binomial(k, 1/k) (mean 1, variance 1 - 1/k), two rows' counts covary by -1/k."""
    from fimaudit.estimators import resample_counts

    k, reps = 40, 20_000
    counts = resample_counts(k, reps, np.random.default_rng(0))
    assert counts.shape == (reps, k) and (counts.sum(axis=1) == k).all()
    assert counts.mean() == pytest.approx(1.0, abs=0.01)
    assert counts.var(axis=0).mean() == pytest.approx(1 - 1 / k, rel=0.03)
    assert np.cov(counts[:, 0], counts[:, 1])[0, 1] == pytest.approx(-1 / k, abs=0.01)
    reference = np.random.default_rng(1).multinomial(k, np.full(k, 1.0 / k), size=reps)
    assert np.histogram(counts[:, 3], bins=range(8))[0] == pytest.approx(np.histogram(reference[:, 3], bins=range(8))[0], rel=0.1, abs=60)


@pytest.mark.parametrize("spectrum", ["separated", "tied", "crowded"])
def test_batched_lanczos_matches_full_spectra(spectrum: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bootstrap's top eigenvalues for r > DENSE_RANK (batched_top) equal eigvalsh's, for a separated
    top, a three-way tie and a crowded top; and the ARPACK fallback, forced by a step cap, agrees too."""
    from fimaudit import estimators
    from fimaudit.estimators import batched_top, resample_counts

    rng = np.random.default_rng(7)
    k, r = 300, 80
    scales = {"separated": np.linspace(3, 0.1, r), "tied": np.r_[np.full(3, 2.0), np.linspace(1.5, 0.1, r - 3)],
              "crowded": 1 + 1e-3 * rng.standard_normal(r)}[spectrum]
    us = rng.standard_normal((k, r)) * scales
    weights = resample_counts(k, 40, rng) / k
    direct = np.array([np.linalg.eigvalsh(us.T @ (w[:, None] * us))[-1] for w in weights])
    np.testing.assert_allclose(batched_top(us, weights), direct, rtol=1e-9)
    # The bootstrap's looser tolerance keeps every value well inside the journal re-check's 1e-9.
    np.testing.assert_allclose(batched_top(us, weights, tol=estimators.BOOTSTRAP_TOL), direct, rtol=2e-10)
    monkeypatch.setattr(estimators, "LANCZOS_MAX_STEPS", 3)
    np.testing.assert_allclose(batched_top(us, weights[:4]), direct[:4], rtol=1e-8)


def test_samples_in_flight_count_only_the_witness_that_is_formed() -> None:
    """A sample's memory counts the K x d witness only where it is formed (d K <= WITNESS_MAX_ENTRIES), so a
    1000-class model on 3x240x240 inputs is not held to two samples in flight by a witness it never makes."""
    from fimaudit.estimators import WITNESS_MAX_ENTRIES, EstimatorConfig, sample_memory

    cfg = EstimatorConfig(directions=256, step=1e-3)
    small, large = 3 * 32 * 32, 3 * 240 * 240
    assert sample_memory(small, 10, cfg) - sample_memory(small, 10, replace(cfg, witness=False)) == 8 * 10 * small
    assert large * 1000 > WITNESS_MAX_ENTRIES
    assert sample_memory(large, 1000, cfg) == sample_memory(large, 1000, replace(cfg, witness=False)) < 64 * 2**20
