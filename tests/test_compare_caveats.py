"""`compare` names what it measured (sensitivity) and warns when the two models' confidences on the
same inputs differ materially: a less confident model has a higher lambda_max whatever its robustness."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fimaudit
from fimaudit.comparison import MATERIAL_LOG10_DOUBT_RATIO, Comparison, compare
from fimaudit.report import AuditReport

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
DATA = ROOT / "examples" / "digits_test.npy"
BENCHMARK = ROOT / "docs" / "benchmarks" / "robustness.json"
SAME_WAY = "points the way calibration alone pushes it"


@pytest.fixture(scope="module")
def template() -> AuditReport:
    return fimaudit.audit(fimaudit.load_model(EXAMPLE), np.load(DATA)[:2], directions=16)


def audited(template: AuditReport, confidence: np.ndarray, lam: np.ndarray) -> AuditReport:
    """A report of the same inputs with the given per-sample top probabilities and lambda_max."""
    first = template.samples[0]
    samples = [first.model_copy(update={"index": i, "confidence": float(p), "lambda_max": float(v),
                                        "lambda_max_ci": (0.9 * float(v), 1.1 * float(v))})
               for i, (p, v) in enumerate(zip(confidence, lam))]
    return template.model_copy(update={"samples": samples})


def pair(template: AuditReport, doubt_factor: np.ndarray | float, lam_factor: float, n: int = 60) -> Comparison:
    """A against B, where B's doubt 1 - p is A's times `doubt_factor` and its lambda_max A's times `lam_factor`."""
    rng = np.random.default_rng(0)
    doubt = 10 ** rng.uniform(-4, -1, n)
    lam = 10 ** rng.uniform(-2, 1, n)
    a = audited(template, 1 - doubt, lam)
    b = audited(template, 1 - np.minimum(doubt * doubt_factor, 0.9), lam * lam_factor)
    return compare(a, b)


def test_a_less_confident_and_more_sensitive_b_gets_the_calibration_caveat(template: AuditReport) -> None:
    result = pair(template, 10.0, 5.0)
    assert result.verdict == "B more sensitive: higher lambda_max"
    assert result.median_log10_doubt_ratio == pytest.approx(1.0)
    [caveat] = result.caveats
    assert caveat.risk == "calibration" and "B is less confident than A" in caveat.message
    assert "higher lambda_max regardless of robustness" in caveat.message and SAME_WAY in caveat.message


def test_a_more_confident_and_less_sensitive_b_gets_it_too(template: AuditReport) -> None:
    [caveat] = pair(template, 0.1, 0.2).caveats
    assert "B is more confident than A" in caveat.message and SAME_WAY in caveat.message


def test_sensitivity_against_the_calibration_difference_is_said_to_be_unexplained_by_it(template: AuditReport) -> None:
    result = pair(template, 10.0, 0.1)
    assert result.verdict == "B less sensitive: lower lambda_max"
    [caveat] = result.caveats
    assert "moved against the calibration difference" in caveat.message and SAME_WAY not in caveat.message


def test_no_caveat_for_matched_confidences(template: AuditReport) -> None:
    jitter = np.exp(np.random.default_rng(1).normal(0, 0.3, 60))  # per-input noise, no shift
    result = pair(template, jitter, 5.0)
    assert result.verdict == "B more sensitive: higher lambda_max"
    assert abs(result.median_log10_doubt_ratio) < MATERIAL_LOG10_DOUBT_RATIO and result.caveats == []


@pytest.mark.parametrize("factor, fires", [(1.9, False), (1 / 1.9, False), (2.1, True), (1 / 2.1, True)])
def test_the_threshold_is_a_factor_two_in_median_doubt(template: AuditReport, factor: float, fires: bool) -> None:
    assert bool(pair(template, factor, 1.0).caveats) is fires


def test_no_clear_difference_can_still_hide_one(template: AuditReport) -> None:
    result = pair(template, 10.0, 1.0)
    assert result.verdict == "no clear difference in lambda_max"
    assert "may hide a real difference in sensitivity" in result.caveats[0].message


def _benchmark_pair(template: AuditReport, name: str) -> Comparison:
    models = json.loads(BENCHMARK.read_text())["models"]
    a, b = models[f"{name}/standard"]["samples"], models[f"{name}/adversarial"]["samples"]
    return compare(audited(template, np.array(a["top_p"]), np.array(a["lambda_black_box"])),
                   audited(template, np.array(b["top_p"]), np.array(b["lambda_black_box"])))


@pytest.mark.parametrize("name, verdict, same_way", [
    # docs/benchmarks.md section 1: the attacks found every adversarially trained model more robust.
    ("fashion", "B less sensitive: lower lambda_max", False),  # lambda_max agreed with the attacks
    ("digits", "B more sensitive: higher lambda_max", True),  # lambda_max contradicted them ...
    ("cancer", "B more sensitive: higher lambda_max", True),  # ... here too
])
def test_the_benchmark_pairs_are_flagged_where_the_ranking_failed(template: AuditReport, name: str, verdict: str, same_way: bool) -> None:
    result = _benchmark_pair(template, name)
    assert result.verdict == verdict and len(result.caveats) == 1
    assert (SAME_WAY in result.caveats[0].message) is same_way


def test_cli_prints_the_caveat_and_writes_it(template: AuditReport, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    doubt, lam = 10 ** rng.uniform(-4, -1, 20), 10 ** rng.uniform(-2, 1, 20)
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(audited(template, 1 - doubt, lam).to_json())
    paths[1].write_text(audited(template, 1 - 10 * doubt, 10 * lam).to_json())
    done = subprocess.run([sys.executable, "-m", "fimaudit.cli", "compare", *map(str, paths), "--json", str(tmp_path / "c.json")],
                          check=False, capture_output=True, text=True, timeout=300)
    said = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stderr
    assert "verdict: B more sensitive: higher lambda_max" in said and "caveat (calibration): B is less confident than A" in said
    written = json.loads((tmp_path / "c.json").read_text())
    assert written["caveats"][0]["risk"] == "calibration" and written["median_log10_doubt_ratio"] == pytest.approx(1.0)
