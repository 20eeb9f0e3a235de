"""--scheme auto: forward differences where the pilot finds them unbiased, central ones elsewhere."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fimaudit
from fimaudit.data import check_inputs
from fimaudit.diagnostics import ResolutionProbe
from fimaudit.differences import FORWARD_BIAS_SHARE, FiniteDifferences, StepChoice, decide_scheme
from fimaudit.engine import QueryEngine
from fimaudit.estimators import EstimatorConfig, SampleEstimate, _measure, estimate_sample
from fimaudit.perturbations import Perturbations, SignBits
from fimaudit.report import AuditReport, describe_scheme
from fimaudit.reproduction import config_of

Predict = Callable[[np.ndarray], np.ndarray]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def smooth_model(d: int = 48, hidden: int = 16, classes: int = 6) -> tuple[Predict, Callable[[np.ndarray], float]]:
    """A float64 tanh network and its exact lambda_max (analytic Jacobian)."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((hidden, d)) / np.sqrt(d), rng.standard_normal((classes, hidden))

    def predict(x: np.ndarray) -> np.ndarray:
        return softmax(np.tanh(x @ w1.T) @ w2.T)

    def exact(x: np.ndarray) -> float:
        jac = w2 @ ((1 - np.tanh(w1 @ x) ** 2)[:, None] * w1)
        p = predict(x[None])[0]
        return float(np.linalg.eigvalsh(jac.T @ (np.diag(p) - np.outer(p, p)) @ jac)[-1])

    return predict, exact


def test_auto_takes_forward_on_a_smooth_model_with_twice_the_directions() -> None:
    predict, exact = smooth_model()
    x = np.random.default_rng(2).standard_normal((6, 48))
    model = fimaudit.CallableModel(predict, fimaudit.InputSpec(shape=(48,)), num_classes=6)
    auto = fimaudit.audit(model, x, directions=128, seed=0, estimator="sketch", scheme="auto")
    central = fimaudit.audit(model, x, directions=128, seed=0, estimator="sketch", scheme="central")
    assert auto.config.scheme == "auto"
    for a, c, row in zip(auto.samples, central.samples, x):
        assert a.scheme == "forward" and a.directions == 256
        ev = a.scheme_evidence
        assert ev is not None and ev.forward_bias is not None and ev.limit == pytest.approx(FORWARD_BIAS_SHARE / np.sqrt(128))
        assert ev.one_sided_spread is not None and ev.one_sided is not None
        assert ev.forward_bias <= ev.limit and ev.forward_bias == pytest.approx(ev.one_sided_spread**2 * ev.pilot_rank)
        assert a.queries <= c.queries  # the same budget: 2k forward queries for k central directions
        assert a.lambda_max_ci[0] <= exact(row) <= a.lambda_max_ci[1]
        assert c.scheme == "central" and c.scheme_evidence is None  # a given scheme records no evidence


def test_auto_keeps_central_differences_at_max_pool_ties() -> None:
    """At a tie the even part |g.v| of a forward quotient varies with v: centring cannot remove its
    variance, the bias bound is large, and those inputs stay central."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 16))

    def predict(x: np.ndarray) -> np.ndarray:
        return softmax(np.maximum(x[:, 0::2], x[:, 1::2]) @ w.T)

    model = fimaudit.CallableModel(predict, fimaudit.InputSpec(shape=(32,)), num_classes=5)
    tied = np.repeat(rng.uniform(0, 1, size=(3, 16)), 2, axis=1)
    untied = tied + rng.uniform(0.05, 0.1, size=tied.shape) * np.tile([1.0, 0.0], 16)
    for x, scheme in ((tied, "central"), (untied, "forward")):
        report = fimaudit.audit(model, x, directions=128, seed=0, estimator="sketch", scheme="auto")
        for s in report.samples:
            assert s.scheme == scheme, s.scheme_evidence
            assert s.scheme_evidence is not None and s.scheme_evidence.reason
            assert s.directions == (256 if scheme == "forward" else 128)


SAME = object()  # _choice's default spread: the disagreement itself (an even part with no mean)


def _choice(
    one_sided: float | None, rank: float | None = 1.0, kink: float | None = None, spread: object = SAME
) -> StepChoice:
    spread_value = one_sided if spread is SAME else spread
    assert spread_value is None or isinstance(spread_value, float)
    return StepChoice(1e-3, True, 0.0, ((1e-3, 1.0, 3),), 6, True, kink, one_sided, rank, spread_value)


@pytest.mark.parametrize(
    ("choice", "resolves", "exact", "scheme"),
    [
        (_choice(0.01), True, False, "forward"),
        (_choice(0.01, rank=1e4), True, False, "central"),  # spread^2 * rank over the limit
        (_choice(0.5, spread=0.01), True, False, "forward"),  # a large even part, nearly constant: centring removes it
        (_choice(0.3, kink=0.3, spread=0.01), True, False, "forward"),  # a kink is judged by the same bound
        (_choice(0.3, kink=0.3, spread=0.2), True, False, "central"),
        (_choice(None), True, False, "central"),
        (_choice(0.01, spread=None), True, False, "central"),
        (_choice(0.01), False, False, "central"),  # forward would drown in output rounding
        (_choice(0.01), True, True, "central"),
    ],
)
def test_decide_scheme_rules(choice: StepChoice, resolves: bool, exact: bool, scheme: str) -> None:
    decision = decide_scheme("auto", choice, 256, forward_resolves=resolves, exact=exact)
    assert decision.scheme == scheme and decision.directions == (512 if scheme == "forward" else 256)


def test_uncentred_decision_weighs_the_whole_even_part() -> None:
    """Reports before schema 1.7 (centred_forward false) judged forward by one_sided itself."""
    choice = _choice(0.5, spread=0.01)
    assert decide_scheme("auto", choice, 256, forward_resolves=True, exact=False, centred=False).scheme == "central"
    assert decide_scheme("auto", choice, 256, forward_resolves=True, exact=False, centred=True).scheme == "forward"
    kinked = _choice(0.001, kink=0.3, spread=0.001)  # and kept every kink central
    assert decide_scheme("auto", kinked, 256, forward_resolves=True, exact=False, centred=False).scheme == "central"
    assert decide_scheme("auto", kinked, 256, forward_resolves=True, exact=False, centred=True).scheme == "forward"


def quadratic_model(d: int, classes: int) -> tuple[Predict, Callable[[np.ndarray], float]]:
    """Logits W x + c ||x||^2: along any direction of length sqrt(d) the second-order term of a
    one-sided quotient is c h d, the same for every direction: the even part is all mean."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((classes, d)) / np.sqrt(d)
    c = np.linspace(0.6, -0.4, classes)

    def predict(x: np.ndarray) -> np.ndarray:
        return softmax(x @ w.T + np.sum(x * x, axis=1, keepdims=True) * c)

    def exact(x: np.ndarray) -> float:
        jac = w + 2 * c[:, None] * x[None, :]
        p = predict(x[None])[0]
        return float(np.linalg.eigvalsh(jac.T @ (np.diag(p) - np.outer(p, p)) @ jac)[-1])

    return predict, exact


def _forward_estimates(model: fimaudit.ProbabilityModel, x: np.ndarray, centred: bool) -> list[SampleEstimate]:
    cfg = EstimatorConfig(
        directions=512, step=0.04, scheme="forward", estimator="sketch", adaptive_step=False, output_dtype="float64",
        centred_forward=centred,
    )
    found: dict[int, SampleEstimate] = {}
    engine = QueryEngine(model)
    engine.run(((i, estimate_sample(x[i], i, cfg)) for i in range(len(x))), found.__setitem__, max_active=4)
    engine.close()
    return [found[i] for i in range(len(x))]


def test_centred_forward_differences_drop_the_mean_even_part() -> None:
    """At d = 64 and k = 512 orthogonal directions the sketch is exact up to finite differences, so what
    is left is the even part's bias: 6-15% high as measured, under 2% once centred."""
    d = 64
    predict, exact = quadratic_model(d, 4)
    model = fimaudit.CallableModel(predict, fimaudit.InputSpec(shape=(d,)), num_classes=4)
    x = np.random.default_rng(4).standard_normal((4, d)) * 0.5
    truth = np.array([exact(row) for row in x])
    centred = np.array([e.lambda_max for e in _forward_estimates(model, x, True)]) / truth - 1
    measured = np.array([e.lambda_max for e in _forward_estimates(model, x, False)]) / truth - 1
    assert np.all(np.abs(centred) < 0.02), centred
    assert np.all(measured > 0.04), measured


def test_reports_before_schema_1_7_reproduce_uncentred() -> None:
    predict, _ = quadratic_model(16, 3)
    model = fimaudit.CallableModel(predict, fimaudit.InputSpec(shape=(16,)), num_classes=3)
    x = np.random.default_rng(5).standard_normal((2, 16)) * 0.5
    report = fimaudit.audit(model, x, directions=64, seed=0, estimator="sketch", scheme="forward")
    assert report.config.centred_forward is True
    doc = json.loads(report.to_json())
    del doc["config"]["centred_forward"]  # as a schema 1.6 report was written
    old = AuditReport.model_validate(doc)
    assert old.config.centred_forward is False
    _, stats = check_inputs(x, model.input_spec)
    assert config_of(old, model, stats).centred_forward is False and config_of(report, model, stats).centred_forward is True


def test_given_scheme_passes_through() -> None:
    for scheme in ("central", "forward", "richardson"):
        decision = decide_scheme(scheme, _choice(0.5, kink=0.5), 64, forward_resolves=False, exact=False)  # type: ignore[arg-type]
        assert decision.scheme == scheme and decision.directions == 64 and decision.reason == "given"


def test_unknown_scheme_is_refused() -> None:
    model = fimaudit.CallableModel(lambda x: softmax(x[:, :3]), fimaudit.InputSpec(shape=(4,)), num_classes=3)
    with pytest.raises(fimaudit.errors.UsageError, match="auto, central, forward or richardson"):
        fimaudit.audit(model, np.zeros((1, 4)), scheme="backward")


def test_html_and_summary_say_how_many_samples_took_forward() -> None:
    from fimaudit.render import render_html

    predict, _ = smooth_model()
    model = fimaudit.CallableModel(predict, fimaudit.InputSpec(shape=(48,)), num_classes=6)
    x = np.random.default_rng(2).standard_normal((3, 48))
    auto = fimaudit.audit(model, x, directions=64, seed=0, estimator="sketch", bootstrap=100)  # auto: the default
    forward = sum(s.scheme == "forward" for s in auto.samples)
    said = f"auto differences (forward, centred on {forward} of 3 samples, central on the rest)"
    assert auto.config.scheme == "auto" and forward == 3 and said == describe_scheme(auto) and said in render_html(auto)
    central = fimaudit.audit(model, x, directions=64, seed=0, estimator="sketch", bootstrap=100, scheme="central")
    assert describe_scheme(central) == "central differences"


def _drive(task: Any, predict: Predict) -> Any:
    """Runs an estimator generator against `predict`, forming its requests here."""
    try:
        request = next(task)
        while True:
            x = request.materialize() if isinstance(request, Perturbations) else np.asarray(request)
            request = task.send(predict(x.reshape(len(x), -1)))
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("kind", ["gaussian", "signs"])
def test_centred_witness_combines_the_directions_with_the_centred_rows(kind: str) -> None:
    d = 40
    predict, _ = quadratic_model(d, 3)
    x = np.random.default_rng(6).standard_normal(d) * 0.5
    p = predict(x[None])[0]
    fd = FiniteDifferences(x, (d,), p, 0.05, "forward", ResolutionProbe(p, "float64"))
    rng = np.random.default_rng(7)
    omega = rng.standard_normal((24, d)) if kind == "gaussian" else 1.0 - 2.0 * rng.integers(0, 2, (24, d))
    blocks = [omega[:10], omega[10:]] if kind == "gaussian" else [SignBits(omega[:10] < 0), SignBits(omega[10:] < 0)]
    y, witness = _drive(_measure(fd, iter(blocks), d, centre=True), predict)
    raw, _ = _drive(_measure(fd, iter(blocks), d, centre=False), predict)
    assert np.allclose(y, (raw - raw.mean(axis=0)) * np.sqrt(24 / 23))
    u = np.random.default_rng(8).standard_normal(3)
    expected = (y @ u) @ omega  # sum_j (u . y_j) omega_j over the centred rows
    got = witness(u)
    assert np.allclose(got / np.linalg.norm(got), expected / np.linalg.norm(expected), atol=1e-6)
