"""The law of the sketch's random directions: random signs by default, Gaussian on request and for
reports made before signs existed (which must still reproduce)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from cli_helpers import run

import fimaudit
from fimaudit import CallableModel, InputSpec
from fimaudit.diagnostics import ResolutionProbe
from fimaudit.differences import FiniteDifferences, binary_step
from fimaudit.perturbations import Perturbations
from fimaudit.report import AuditConfig

D, CLASSES = 8192, 4  # k <= 256 < d / 16: i.i.d. directions, not orthogonal groups
RNG = np.random.default_rng(0)
W = RNG.standard_normal((D, CLASSES)) / np.sqrt(D)


def predict(x: np.ndarray, w: np.ndarray = W) -> np.ndarray:
    z = np.tanh(np.asarray(x, np.float64) @ w * 3)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def exact(x: np.ndarray, w: np.ndarray = W) -> np.ndarray:
    out = []
    for row in x:
        t = np.tanh(row @ w * 3)
        jac = (3 * (1 - t * t))[:, None] * w.T  # K x d Jacobian of the logits
        p = predict(row[None], w)[0]
        vals, vecs = np.linalg.eigh(np.diag(p) - np.outer(p, p))
        root = vecs * np.sqrt(np.clip(vals, 0, None)) @ vecs.T  # F = J^T C J shares its top with C^1/2 J J^T C^1/2
        out.append(np.linalg.eigvalsh(root @ jac @ jac.T @ root)[-1])
    return np.array(out)


MODEL = CallableModel(predict, InputSpec((D,), "float64"), CLASSES, name="tanh-numpy")
X = RNG.uniform(-1, 1, (6, D))


@pytest.mark.parametrize("draws", ["rademacher", "gaussian"])
def test_each_law_is_recorded_and_estimates_lambda_max(draws: str) -> None:
    report = fimaudit.audit(MODEL, X, directions=256, seed=0, draws=draws)
    assert report.config.draws == draws
    truth = exact(X)
    for s, t in zip(report.samples, truth):
        assert s.directions_kind == draws
        assert abs(s.lambda_max / t - 1) < 0.35  # k = 256: sqrt(2/k) = 8.8% per sample, 4 sigma
    errors = np.abs([s.lambda_max / t - 1 for s, t in zip(report.samples, truth)])
    assert np.median(errors) < 0.15
    assert sum(s.lambda_max_ci[0] <= t <= s.lambda_max_ci[1] for s, t in zip(report.samples, truth)) >= 5


def test_the_default_is_signs_and_the_laws_give_different_directions() -> None:
    signs = fimaudit.audit(MODEL, X[:2], directions=32, seed=0)
    normal = fimaudit.audit(MODEL, X[:2], directions=32, seed=0, draws="gaussian")
    assert signs.config.draws == "rademacher" and signs.samples[0].directions_kind == "rademacher"
    assert signs.samples[0].lambda_max != normal.samples[0].lambda_max


def test_a_report_without_draws_is_read_as_gaussian_and_reproduces() -> None:
    """Reports from fimaudit 0.2 have no `draws`: they used Gaussian directions, and reproduce with them."""
    report = fimaudit.audit(MODEL, X[:3], directions=32, seed=0, draws="gaussian")
    config = report.config.model_dump()
    del config["draws"]
    assert AuditConfig.model_validate(config).draws == "gaussian"
    legacy = report.model_copy(update={"config": AuditConfig.model_validate(config)})
    result = fimaudit.reproduce(legacy, MODEL, X, samples=None)
    assert result.reproduced and result.record.identical


def test_an_unknown_law_is_a_usage_error() -> None:
    with pytest.raises(fimaudit.errors.UsageError, match="draws must be rademacher or gaussian"):
        fimaudit.audit(MODEL, X[:1], directions=32, draws="sobol")


def test_the_cli_takes_draws(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples"
    onnx = next(example.glob("*.onnx"))
    data = next(p for p in example.glob("*.npy"))
    out = tmp_path / "r.json"
    done = run("audit", str(onnx), "--data", str(data), "--limit", "1", "--directions", "8", "--draws", "gaussian",
               "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert fimaudit.AuditReport.model_validate_json(out.read_text()).config.draws == "gaussian"
    bad = run("audit", str(onnx), "--data", str(data), "--limit", "1", "--draws", "sobol", "--out", str(tmp_path / "b.json"), "--quiet")
    assert bad.returncode == 2 and "draws must be rademacher or gaussian" in bad.stderr + bad.stdout


def _jvps(fd: FiniteDifferences, directions: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    task = fd.jvp(directions)
    batch = next(task)
    assert isinstance(batch, Perturbations)  # formed by the engine (or the model), into the batch it is sent in
    try:
        task.send(predict_fn(batch.materialize()))
    except StopIteration as stop:
        return np.asarray(stop.value)
    raise AssertionError("the JVP generator asked for a second batch")


def test_sign_steps_are_powers_of_two_so_perturbed_inputs_are_exact() -> None:
    """With signs every coordinate moves by exactly h; float32 rounds x + h by the same relative amount
    on every coordinate of a binade, so a step of ~10 ulps biases the JVPs by a few percent (not noise).
    A power-of-two step is a whole number of ulps: the JVPs of a linear-logit model match A v."""
    rng = np.random.default_rng(1)
    d, k = 4096, 64
    w = rng.standard_normal((CLASSES, d)) / np.sqrt(d)

    def linear(x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, np.float64).reshape(len(x), -1) @ w.T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    x = rng.uniform(1.0, 2.0, d).astype(np.float32)  # one binade: ulp 1.19e-7 everywhere
    p = linear(x[None])[0]
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=(k, d))
    logits = signs @ w.T  # J v of the logits; of log p: minus their p-weighted mean
    exact = (logits - (logits @ p)[:, None]) * np.sqrt(p)
    assert binary_step(2.2e-6) == 2.0**-19 and binary_step(2.0**-19) == 2.0**-19
    for h, tolerance in ((2.2e-6, None), (binary_step(2.2e-6), 2e-3)):
        fd = FiniteDifferences(x.astype(np.float64), (d,), p, h, "central", ResolutionProbe(p, "float32"), "float32")
        got = _jvps(fd, signs, linear)
        scale = float(np.sum(got * exact) / np.sum(exact * exact))  # the common factor the rounding applied
        if tolerance is None:
            assert abs(scale - 1) > 0.01  # 2.2e-6 is 18.5 ulps: every coordinate moved by 18 or 19 of them
        else:
            assert abs(scale - 1) < tolerance
            assert np.linalg.norm(got - exact) < 1e-2 * np.linalg.norm(exact)


def test_adaptive_steps_with_signs_are_powers_of_two() -> None:
    report = fimaudit.audit(MODEL, X[:3].astype(np.float32), directions=64, seed=0)
    for s in report.samples:
        assert s.directions_kind == "rademacher"
        assert s.step is not None and np.log2(s.step) == np.floor(np.log2(s.step))


# -- orthogonal directions (k >= d / 16): random-sign cosine rows, and Haar groups for older reports --------
D_SMALL = 256
W_SMALL = np.random.default_rng(1).standard_normal((D_SMALL, CLASSES)) / np.sqrt(D_SMALL)


SMALL = CallableModel(lambda x: predict(x, W_SMALL), InputSpec((D_SMALL,), "float64"), CLASSES, name="tanh-small")
X_SMALL = np.random.default_rng(2).uniform(-1, 1, (4, D_SMALL))


def test_cosine_rows_are_orthogonal_of_length_sqrt_d_and_unbiased() -> None:
    """Rows across blocks are exactly orthogonal with length sqrt(d); over draws E[v v^T] = I."""
    from fimaudit.estimators import _cosine_blocks

    d = 40
    rows = np.concatenate(list(_cosine_blocks(np.random.default_rng(0), d, d, 7)))
    assert rows.shape == (d, d)
    np.testing.assert_allclose(rows @ rows.T, d * np.eye(d), atol=1e-11)
    second = np.concatenate(list(_cosine_blocks(np.random.default_rng(0), d, 2 * d + 3, 16)))
    assert len(second) == 2 * d + 3  # groups of d: a new sign vector and frequencies for each
    total, n = np.zeros((d, d)), 0
    for seed in range(2000):
        block = np.concatenate(list(_cosine_blocks(np.random.default_rng(seed), d, 10, 10)))
        total += block.T @ block
        n += len(block)
    assert np.abs(total / n - np.eye(d)).max() < 0.06  # 20,000 rows: entries' noise ~0.007 (diagonal exact in mean)


def test_a_whole_cosine_group_has_a_spread_mean() -> None:
    """The sum of a whole cosine basis peaks at one coordinate; the rows' own random signs spread a group's
    mean as an i.i.d. mean is spread (centred forward sketches subtract it). Without them the top coordinate
    holds nearly all of it; with them about 3.5% (the largest of 200 draws: 7.7%)."""
    from fimaudit.estimators import _cosine_blocks

    d = 256
    for seed in range(20):
        mean = np.concatenate(list(_cosine_blocks(np.random.default_rng(seed), d, d, 64))).mean(axis=0)
        assert (mean**2).max() / (mean**2).sum() < 0.15


def test_a_cosine_sketch_of_all_d_rows_is_exact() -> None:
    """k = d cosine directions give V^T V = d I: the sketch's Y^T Y / d is A A^T exactly, for any d."""
    from fimaudit.estimators import _cosine_blocks

    d = 300  # above the Haar groups' cap of ORTHOGONAL_GROUP would not matter here, nor a power of two
    a = np.random.default_rng(3).standard_normal((5, d))
    v = np.concatenate(list(_cosine_blocks(np.random.default_rng(4), d, d, 64)))
    y = v @ a.T
    np.testing.assert_allclose(y.T @ y / d, a @ a.T, rtol=1e-10, atol=1e-10)


def test_orthogonal_audits_record_the_cosine_law_and_estimate_lambda_max() -> None:
    from fimaudit.render import render_html

    report = fimaudit.audit(SMALL, X_SMALL, directions=64, seed=0, scheme="central")
    assert report.config.orthogonal_law == "cosine" and "cosine rows where orthogonal" in render_html(report)
    truth = exact(X_SMALL, W_SMALL)
    for s, t in zip(report.samples, truth):
        assert s.directions_kind == "orthogonal"
        assert abs(s.lambda_max / t - 1) < 0.3  # k = 64 of d = 256: about 15% per sample, 2 sigma with the factor
    assert sum(s.lambda_max_ci[0] <= t <= s.lambda_max_ci[1] for s, t in zip(report.samples, truth)) >= 3


def test_a_report_without_orthogonal_law_reads_as_haar_and_reproduces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports before schema 1.8 drew Haar groups: without the field they read so, and reproduce bit-identically."""
    import fimaudit.runner as runner

    made = runner.estimator_config
    monkeypatch.setattr(runner, "estimator_config", lambda *a, **kw: made(*a, **{**kw, "orthogonal_law": "haar"}))
    haar = fimaudit.audit(SMALL, X_SMALL[:2], directions=64, seed=0)
    monkeypatch.undo()
    cosine = fimaudit.audit(SMALL, X_SMALL[:2], directions=64, seed=0)
    assert haar.config.orthogonal_law == "haar" and haar.samples[0].lambda_max != cosine.samples[0].lambda_max
    config = haar.config.model_dump()
    del config["orthogonal_law"]
    legacy = haar.model_copy(update={"config": AuditConfig.model_validate(config)})
    assert legacy.config.orthogonal_law == "haar"
    result = fimaudit.reproduce(legacy, SMALL, X_SMALL[:2], samples=None)
    assert result.reproduced and result.record.identical

