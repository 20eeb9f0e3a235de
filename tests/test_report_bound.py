"""`audit --bound` in the core: the report's lambda_max_bound fields (schema 1.5), what the runner asks
a BoundedModel for, signing, reproduction and the HTML page, on a model held in memory.

The core imports no framework, so the model here bounds itself in numpy: a linear softmax classifier
p = softmax(W x + b), for which lambda_max(F(x)) <= 1/4 max_ab ||W_a - W_b||^2 at every x (Popoviciu;
docs/math.md, "Bounds from the graph"), and lambda_max(F(x)) itself at radius 0. The torch and ONNX
adapters' own bounds, and signed reports that carry them, are tested beside them (adapters/*/tests)."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from known_models import KnownModel

import fimaudit
from fimaudit.adapter import BoundedModel, InputSpec
from fimaudit.errors import UsageError
from fimaudit.lipschitz_bound import ALL_INPUTS, Bound, ball_scope
from fimaudit.model import CallableModel, check_batch_independence
from fimaudit.render import render_html
from fimaudit.report import AuditReport, SampleBound, estimates_above_bound, json_schema
from fimaudit.signing import verify

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
EXAMPLE = ROOT / "examples" / "digits.onnx"


class BoundedLinear(CallableModel):
    """p = softmax(W x + b) with its own bounds: the row rule everywhere, exact at radius 0."""

    def __init__(self, known: KnownModel, unsupported: str | None = None, local: bool = True) -> None:
        (w,), (b,) = known.weights, known.biases
        self.known, self.w, self.unsupported, self.local = known, w, unsupported, local

        def forward(batch: np.ndarray) -> np.ndarray:
            z = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1) @ w + b
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        super().__init__(forward, InputSpec(shape=known.shape, dtype="float64"), known.classes, name="bounded-linear")

    def row_rule(self) -> float:
        cols = self.w.T  # W_a, one row per class
        gaps = np.linalg.norm(cols[:, None, :] - cols[None, :, :], axis=-1)
        return 0.25 * float(gaps.max()) ** 2 * (1 + 1e-9)

    def lambda_max_bound(self) -> Bound:
        if self.unsupported is not None:
            return Bound(None, "graph-lipschitz", unsupported_op=self.unsupported, reason="no Lipschitz rule for this operator")
        return Bound(self.row_rule(), "graph-lipschitz", details={"final_rule": "1/4 max_ab ||W_a - W_b||^2"})

    def local_lambda_max_bound(self, x: np.ndarray, radius: float) -> Bound | None:
        if not self.local:
            return None
        if self.unsupported is not None:
            return Bound(None, "graph-lipschitz-local", ball_scope(radius), self.unsupported, "no Lipschitz rule", radius=radius)
        if radius == 0:
            lam = float(self.known.exact(x[None])[0][0])
            return Bound(lam, "exact at x", ball_scope(radius), radius=radius, exact=True)
        return Bound(self.row_rule(), "row differences on the ball", ball_scope(radius), radius=radius)


@pytest.fixture(scope="module")
def bounded(linear64: KnownModel) -> tuple[BoundedLinear, AuditReport]:
    model = BoundedLinear(linear64)
    return model, fimaudit.audit(model, linear64.x, directions=16, bound=True)


def test_bounds_are_recorded_and_hold_at_every_input(linear64: KnownModel, bounded: tuple[BoundedLinear, AuditReport]) -> None:
    model, report = bounded
    assert isinstance(model, BoundedModel) and not isinstance(linear64.model(), BoundedModel)
    exact = linear64.exact()[0]
    b = report.model.lambda_max_bound
    assert b is not None and b.value == model.row_rule() and b.scope == ALL_INPUTS and b.unsupported_operator is None
    assert "last step: 1/4 max_ab" in b.method and b.local.startswith(f"{len(exact)} of {len(exact)} samples bounded")
    for s, lam in zip(report.samples, exact):
        local = s.lambda_max_bound
        assert local is not None and local.value is not None and local.radius == s.step_norm and local.radius > 0
        assert local.value >= lam and b.value >= lam
    assert estimates_above_bound(report) == []


def test_report_with_bounds_validates_and_round_trips(bounded: tuple[BoundedLinear, AuditReport]) -> None:
    _, report = bounded
    doc = json.loads(report.to_json())
    jsonschema.validate(doc, json.loads(json_schema()))
    assert doc["schema_version"] == "1.8"
    assert doc["model"]["lambda_max_bound"]["value"] == report.model.lambda_max_bound.value  # type: ignore[union-attr]
    assert set(doc["samples"][0]["lambda_max_bound"]) == {"value", "radius", "exact", "method", "unsupported_operator", "reason"}
    assert AuditReport.from_json(report.to_json()) == report


def test_without_bound_the_fields_are_null(linear64: KnownModel) -> None:
    report = fimaudit.audit(BoundedLinear(linear64), linear64.x[:3], directions=16)
    assert report.model.lambda_max_bound is None and all(s.lambda_max_bound is None for s in report.samples)
    assert "Bound from the graph" not in render_html(report)


def test_a_model_without_bounds_is_refused_before_any_query(linear64: KnownModel) -> None:
    calls = []
    plain = linear64.model()
    counted = CallableModel(lambda b: calls.append(len(b)) or plain.predict_proba(b), plain.input_spec, plain.num_classes)
    check_batch_independence(counted)  # the probe an audit makes first; then not one query more
    calls.clear()
    with pytest.raises(UsageError, match="the 'callable' adapter computes no bound") as err:
        fimaudit.audit(counted, linear64.x, directions=16, bound=True)
    assert "drop --bound" in (err.value.fix or "") and calls == []


def test_an_unsupported_operator_gives_null_with_the_operator_named(linear64: KnownModel) -> None:
    report = fimaudit.audit(BoundedLinear(linear64, unsupported="Resize"), linear64.x[:3], directions=16, bound=True)
    b = report.model.lambda_max_bound
    assert b is not None and b.value is None and b.unsupported_operator == "Resize" and b.reason
    assert json.loads(report.to_json())["model"]["lambda_max_bound"]["value"] is None
    for s in report.samples:
        assert s.lambda_max_bound is not None and s.lambda_max_bound.value is None and s.lambda_max_bound.unsupported_operator == "Resize"
    assert b.local.startswith("0 of 3 samples bounded") and b.local.endswith("; 3 null, each with its reason")
    page = render_html(report)
    assert "none (operator Resize: no Lipschitz rule for this operator)" in page and "none (Resize: no Lipschitz rule)" in page


def test_an_adapter_without_local_bounds_says_so(linear64: KnownModel) -> None:
    report = fimaudit.audit(BoundedLinear(linear64, local=False), linear64.x[:3], directions=16, bound=True)
    b = report.model.lambda_max_bound
    assert b is not None and b.value is not None and b.local.startswith("none: the 'callable' adapter computes no local bound")
    assert all(s.lambda_max_bound is None for s in report.samples)


def test_html_shows_estimate_interval_and_bound_together(bounded: tuple[BoundedLinear, AuditReport]) -> None:
    _, report = bounded
    page = render_html(report)
    assert "<h2>Bound from the graph</h2>" in page and f"{report.model.lambda_max_bound.value:.4g}" in page  # type: ignore[union-attr]
    header = page[page.index("<th>index</th>"):]
    assert header.index("<th>interval</th>") < header.index("<th>bound</th>") < header.index("<th>ε_τ</th>")
    assert page.count("<td class='bound'>") == len(report.samples)
    assert page.count("class='bound'") >= 2 * len(report.samples)  # a table cell and a plot marker each
    assert "local upper bound on λ_max from the graph" in page and "class='global-bound'" in page


def test_an_interval_above_its_bound_is_pointed_out(bounded: tuple[BoundedLinear, AuditReport]) -> None:
    _, report = bounded
    first = report.samples[0]
    low = SampleBound(value=first.lambda_max_ci[0] / 2, radius=0.0, exact=False, method="a bound that an estimate exceeds")
    altered = report.model_copy(update={"samples": [first.model_copy(update={"lambda_max_bound": low}), *report.samples[1:]]})
    assert estimates_above_bound(altered) == [first.index]
    assert f"1 of {len(report.samples)} samples have an interval wholly above a bound" in render_html(altered)


def test_reproduction_leaves_the_bounds_aside(linear64: KnownModel, bounded: tuple[BoundedLinear, AuditReport]) -> None:
    model, report = bounded
    result = fimaudit.reproduce(report, model, linear64.x, samples=None)
    assert result.reproduced and result.record.identical


@pytest.mark.parametrize("name", ["audit_report_v1.1.dsse.json", "audit_report_v2.dsse.json"])
def test_reports_before_schema_1_5_still_verify_without_bounds(name: str) -> None:
    result = verify(GOLDEN / name, GOLDEN / "test_signer.pub", EXAMPLE)
    report = result.predicate.report
    assert report.schema_version < "1.5" and report.model.lambda_max_bound is None
    assert all(s.lambda_max_bound is None for s in report.samples)
    assert "Bound from the graph" not in render_html(report)
