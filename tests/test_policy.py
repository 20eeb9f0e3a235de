"""Policy files: parsing, every comparator, unbounded figures, and each way a file can be wrong."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

import fimaudit
from fimaudit.errors import PolicyError
from fimaudit.policy import FIGURES, PolicyResult, compare, evaluate, figure_value, inconsistencies, load_policy
from fimaudit.report import AuditReport

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
EXAMPLE_DATA = ROOT / "examples" / "digits_test.npy"

BRIEF_POLICY = """\
[[check]]
figure = "lambda_max.p90"
op = "<="
value = 0.5

[[check]]
figure = "epsilon_tau.median"
op = ">="
value = 0.05

[[check]]
figure = "n"
op = ">="
value = 100
"""


@pytest.fixture(scope="module")
def report() -> AuditReport:
    x = np.load(EXAMPLE_DATA)[:12]
    return fimaudit.audit(fimaudit.load_model(EXAMPLE), x, directions=16)


def _write(tmp_path: Path, text: str | bytes, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _check_toml(figure: str, op: str, value: float) -> str:
    return f'[[check]]\nfigure = "{figure}"\nop = "{op}"\nvalue = {value!r}\n'


# --------------------------------------------------------------------------- #
# loading and evaluating
# --------------------------------------------------------------------------- #


def test_load_records_rules_source_and_file_hash(tmp_path: Path) -> None:
    path = _write(tmp_path, BRIEF_POLICY)
    policy = load_policy(path)
    assert [(r.figure, r.op, r.value) for r in policy.rules] == [
        ("lambda_max.p90", "<=", 0.5), ("epsilon_tau.median", ">=", 0.05), ("n", ">=", 100.0)]
    assert policy.source == str(path)
    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_figure_reads_the_summary(report: AuditReport) -> None:
    s = report.summary
    expected = {"n": s.n, "queries": s.queries}
    for group in ("lambda_max", "epsilon_tau"):
        for stat in ("median", "p90", "p99", "max", "min"):
            expected[f"{group}.{stat}"] = getattr(getattr(s, group), stat)
    assert set(FIGURES) == set(expected)
    for figure, value in expected.items():
        assert figure_value(s, figure) == value


def test_evaluate_records_measured_values_and_verdict(tmp_path: Path, report: AuditReport) -> None:
    median = report.summary.lambda_max.median
    assert median is not None
    text = _check_toml("lambda_max.median", "<=", median * 2) + _check_toml("n", ">=", 1000)
    result = load_policy(_write(tmp_path, text)).evaluate(report)
    assert [(c.figure, c.measured, c.passed) for c in result.checks] == [
        ("lambda_max.median", median, True), ("n", 12.0, False)]
    assert result.passed is False
    assert result.failed_checks() == [result.checks[1]]
    assert inconsistencies(result, report.summary) == []


@pytest.mark.parametrize(
    "op, below, equal, above",
    [("<", True, False, False), ("<=", True, True, False), (">", False, False, True),
     (">=", False, True, True), ("==", False, True, False)],
)
def test_each_comparator_at_the_boundary(tmp_path: Path, report: AuditReport,
                                         op: str, below: bool, equal: bool, above: bool) -> None:
    measured = report.summary.lambda_max.p90
    assert measured is not None
    # The measured value is below / equal to / above each threshold in turn.
    thresholds = (measured * 1.5, measured, measured * 0.5)
    text = "".join(_check_toml("lambda_max.p90", op, t) for t in thresholds)
    result = load_policy(_write(tmp_path, text)).evaluate(report)
    assert [c.passed for c in result.checks] == [below, equal, above]


@pytest.mark.parametrize("op, passes", [(">=", True), (">", True), ("<=", False), ("<", False), ("==", False)])
def test_unbounded_epsilon_counts_as_infinity(tmp_path: Path, report: AuditReport, op: str, passes: bool) -> None:
    # epsilon_tau is None exactly when lambda_max is 0: the radius is unbounded.
    stats = report.summary.epsilon_tau.model_copy(update={"median": None})
    summary = report.summary.model_copy(update={"epsilon_tau": stats})
    result = evaluate(load_policy(_write(tmp_path, _check_toml("epsilon_tau.median", op, 1e9))), summary)
    assert result.checks[0].measured is None
    assert result.checks[0].passed is passes and result.passed is passes


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "=="])
def test_missing_non_epsilon_figure_always_fails(op: str) -> None:
    # Only an empty audit has no lambda_max statistic; nothing measured never passes.
    assert compare("lambda_max.median", None, op, 0.0) is False
    assert compare("lambda_max.median", None, op, -math.inf if op.startswith(">") else math.inf) is False


def test_inconsistencies_catch_edited_results(report: AuditReport, tmp_path: Path) -> None:
    text = _check_toml("n", ">=", 1) + _check_toml("lambda_max.max", "<", 1e12)
    good = load_policy(_write(tmp_path, text)).evaluate(report)
    assert good.passed and inconsistencies(good, report.summary) == []
    lied_measured = good.model_copy(update={"checks": [good.checks[0].model_copy(update={"measured": 5000.0}), good.checks[1]]})
    assert any("recorded as 5000" in p for p in inconsistencies(lied_measured, report.summary))
    flipped = good.model_copy(update={"checks": [good.checks[0], good.checks[1].model_copy(update={"passed": False})]})
    problems = inconsistencies(flipped, report.summary)
    assert any("lambda_max.max < 1e+12 recorded as passed=False" in p for p in problems)
    assert any("overall verdict" in p for p in problems)
    empty = PolicyResult(source="x", sha256="0" * 64, checks=[], passed=True)
    assert inconsistencies(empty, report.summary) == ["no checks recorded"]


# --------------------------------------------------------------------------- #
# bad policy files
# --------------------------------------------------------------------------- #

_GOOD = _check_toml("n", ">=", 1)


@pytest.mark.parametrize(
    "text, message, fix",
    [
        ('[[check]]\nfigure = "n"\nop = ">="\nvalue = \n', "line 4", "fix the syntax"),
        (_GOOD + _check_toml("lambda.p90", "<=", 1.0), "line 5, check #2: unknown figure 'lambda.p90'", "did you mean 'lambda_max.p90'"),
        (_check_toml("n", "=", 1), "line 1, check #1: unknown op '='", "<, <=, >, >=, =="),
        ('[[check]]\nfigure = "n"\nop = ">="\nvalue = "100"\n', "value '100' is not a number", "no quotes"),
        ('[[check]]\nfigure = "n"\nop = ">="\nvalue = true\n', "value True is not a number", "bare number"),
        ('[[check]]\nfigure = "n"\nop = ">="\nvalue = nan\n', "is not finite", "finite"),
        ('[[check]]\nfigure = "n"\nop = ">="\n', "missing key(s) value", "[[check]] table"),
        (_GOOD.replace("value", "valeu"), "unknown key(s) 'valeu'", "figure, op, value"),
        ('[thresholds]\n"n" = ">= 1"\n', "unknown top-level key(s) 'thresholds'", "only [[check]] tables"),
        ('check = "n >= 1"\n', "defines no checks", "[[check]] table"),
        ("", "defines no checks", "[[check]] table"),
        ("check = [1]\n", "check #1: a check must be a table", "[[check]] table"),
    ],
)
def test_bad_policy_files_name_the_place_and_the_fix(tmp_path: Path, text: str, message: str, fix: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert message in caught.value.message
    assert fix in caught.value.fix
    assert caught.value.exit_code == 2


def test_unreadable_policy_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(_write(tmp_path, b"\xff\xfe[[check]]"))
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path)


def test_figure_value_refuses_unknown_figures(report: AuditReport) -> None:
    with pytest.raises(PolicyError, match="unknown figure 'wall_seconds'"):
        figure_value(report.summary, "wall_seconds")


def test_policy_result_is_signed_data(report: AuditReport, tmp_path: Path) -> None:
    # The verdict must survive a JSON round trip unchanged, since it is signed and re-read.
    result = load_policy(_write(tmp_path, BRIEF_POLICY)).evaluate(report)
    assert PolicyResult.model_validate_json(result.model_dump_json()) == result
