"""The law of the sketch's random directions: random signs by default, Gaussian on request and for
reports made before signs existed (which must still reproduce)."""
from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import run

import fimaudit
from fimaudit import CallableModel, InputSpec
from fimaudit.report import AuditConfig

D, CLASSES = 8192, 4  # k <= 256 < d / 16: i.i.d. directions, not orthogonal groups
RNG = np.random.default_rng(0)
W = RNG.standard_normal((D, CLASSES)) / np.sqrt(D)


def predict(x: np.ndarray) -> np.ndarray:
    z = np.tanh(np.asarray(x, np.float64) @ W * 3)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def exact(x: np.ndarray) -> np.ndarray:
    out = []
    for row in x:
        t = np.tanh(row @ W * 3)
        jac = (3 * (1 - t * t))[:, None] * W.T  # K x d Jacobian of the logits
        p = predict(row[None])[0]
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
