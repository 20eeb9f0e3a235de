"""The report: its published schema, its JSON round trip, its summary statistics."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from known_models import KnownModel

import fimaudit
from fimaudit.report import AuditReport, json_schema, stats

ROOT = Path(__file__).resolve().parents[1]


def test_published_schema_matches_models() -> None:
    published = (ROOT / "docs" / "report.schema.json").read_text()
    assert published == json_schema(), "regenerate with: fimaudit schema > docs/report.schema.json"


def test_report_validates_and_round_trips(mlp64: KnownModel) -> None:
    report = fimaudit.audit(mlp64.model(), mlp64.x[:5], directions=16)
    doc = json.loads(report.to_json())
    jsonschema.validate(doc, json.loads(json_schema()))
    assert AuditReport.from_json(report.to_json()) == report
    for name in ("schema_version", "tool", "model", "data", "config", "samples", "summary"):
        assert name in doc
    for name in ("index", "predicted_class", "confidence", "lambda_max", "lambda_max_ci", "lambda_lower",
                 "trace", "stable_rank", "epsilon_tau", "queries"):
        assert name in doc["samples"][0]
    # What the report names is the model's identity (a file's digest for adapters: adapters/onnx/tests).
    assert (doc["model"]["reference"], doc["model"]["adapter"], doc["model"]["sha256"]) == ("mlp64", "callable", None)
    assert doc["data"]["shape"] == [5, 3, 8, 8]
    assert "input" not in json.dumps(doc["samples"])  # raw inputs never appear in a report


def test_summary_statistics_and_epsilon(mlp64: KnownModel) -> None:
    report = fimaudit.audit(mlp64.model(), mlp64.x, directions=16, tau=0.02)
    lam = np.array([s.lambda_max for s in report.samples])
    assert report.summary.lambda_max.median == pytest.approx(np.median(lam))
    assert report.summary.lambda_max.p90 == pytest.approx(np.quantile(lam, 0.9))
    assert report.summary.lambda_max.max == pytest.approx(lam.max())
    for s in report.samples:
        assert s.epsilon_tau == pytest.approx(np.sqrt(2 * 0.02 / s.lambda_max))
    assert sum(c.n for c in report.summary.per_class.values()) == report.summary.n
    assert report.summary.queries_per_second > 0


def test_stats_treat_missing_radius_as_unbounded() -> None:
    s = stats([0.1, None, 0.3])
    assert s.median == pytest.approx(0.3) and s.max is None and s.min == pytest.approx(0.1)


def test_summary_carries_population_bounds(mlp64: KnownModel) -> None:
    report = fimaudit.audit(mlp64.model(), mlp64.x, directions=16, tau=0.02, confidence=0.9)
    s = report.summary
    assert report.schema_version == "1.8" and s.bound_confidence == 0.9
    assert s.lambda_max_upper is not None and s.epsilon_tau_lower is not None
    upper = s.lambda_max_upper["p50"]
    assert upper is not None and s.lambda_max.median is not None and upper >= s.lambda_max.median
    # Each upper bound is one of the samples' interval upper ends, and epsilon maps through it.
    assert upper in [max(x.lambda_max_ci[1], x.lambda_max) for x in report.samples]
    assert s.epsilon_tau_lower["p50"] == pytest.approx(np.sqrt(2 * 0.02 / upper))
    # 20 inputs: p90 at 90% needs 25 (ln 0.1 / ln 0.91 = 24.4, q* = 0.9 + 0.1 x 0.1), so it is null, with the reason.
    assert s.lambda_max_upper["p90"] is None and s.bound_notes["p90"] == "too few inputs to bound p90 at 90%: 20 audited, 25 needed"
    assert sum(c.n for c in s.per_class_bounds.values()) == s.n
