"""Policy files: parsing, every comparator, unbounded figures, and each way a file can be wrong."""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pytest

from known_models import KnownModel

import fimaudit
from fimaudit.errors import PolicyError
from fimaudit.policy import (
    FIGURES,
    PolicyCheck,
    PolicyResult,
    bounds_problems,
    compare,
    default_basis,
    evaluate,
    figure_value,
    inconsistencies,
    load_policy,
    recheck,
)
from fimaudit.report import AuditReport, SampleResult, Summary, summarize

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
def report(mlp64: KnownModel) -> AuditReport:
    return fimaudit.audit(mlp64.model(), mlp64.x[:12], directions=16)


def _write(tmp_path: Path, text: str | bytes, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _check_toml(figure: str, op: str, value: float, basis: str | None = None) -> str:
    extra = f'basis = "{basis}"\n' if basis is not None else ""
    return f'[[check]]\nfigure = "{figure}"\nop = "{op}"\nvalue = {value!r}\n{extra}'


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
    text = _check_toml("lambda_max.median", "<=", median * 2, basis="point") + _check_toml("n", ">=", 1000)
    result = load_policy(_write(tmp_path, text)).evaluate(report)
    assert [(c.figure, c.measured, c.passed, c.basis) for c in result.checks] == [
        ("lambda_max.median", median, True, "point"), ("n", 12.0, False, "point")]
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
    text = "".join(_check_toml("lambda_max.p90", op, t, basis="point") for t in thresholds)
    result = load_policy(_write(tmp_path, text)).evaluate(report)
    assert [c.passed for c in result.checks] == [below, equal, above]


@pytest.mark.parametrize("op, passes", [(">=", True), (">", True), ("<=", False), ("<", False), ("==", False)])
def test_unbounded_epsilon_counts_as_infinity(tmp_path: Path, report: AuditReport, op: str, passes: bool) -> None:
    # epsilon_tau is None exactly when lambda_max is 0: the radius is unbounded.
    stats = report.summary.epsilon_tau.model_copy(update={"median": None})
    summary = report.summary.model_copy(update={"epsilon_tau": stats})
    result = evaluate(load_policy(_write(tmp_path, _check_toml("epsilon_tau.median", op, 1e9, basis="point"))), summary)
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
    # The whole problem, not a substring ("recorded as 5000" is in "recorded as 50000").
    [problem] = inconsistencies(lied_measured, report.summary)
    assert re.fullmatch(r"n \(\w+\) recorded as 5000\.0, the report says 12\.0", problem), problem
    flipped = good.model_copy(update={"checks": [good.checks[0], good.checks[1].model_copy(update={"passed": False})]})
    assert inconsistencies(flipped, report.summary) == [
        "lambda_max.max < 1e+12 recorded as passed=False", "overall verdict recorded as passed=True"]
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


# --------------------------------------------------------------------------- #
# population bounds: which checks use them, and what a missing bound does
# --------------------------------------------------------------------------- #


def _bounded_summary(n: int = 60, scale: float = 1.0) -> Summary:
    """A summary from n made-up samples: lambda_max i+1 with interval upper end 2(i+1), times scale."""
    samples = [
        SampleResult(
            index=i, predicted_class=0, confidence=0.9, lambda_max=scale * (i + 1), lambda_max_ci=(0.0, scale * 2 * (i + 1)),
            lambda_max_raw=scale * (i + 1), lambda_lower=None, lambda_lower_loose=None, trace=1.0, stable_rank=1.0,
            epsilon_tau=math.sqrt(0.02 / (scale * (i + 1))) if scale > 0 else None, queries=1, method="sketch",
            directions=16, directions_kind="gaussian", lambda_max_resolution=0.0, flags=[],
        )
        for i in range(n)
    ]
    return summarize(samples, n, 1.0, tau=0.01)


@pytest.mark.parametrize("figure, op, basis", [
    ("lambda_max.median", "<=", "bound"), ("lambda_max.p90", "<", "bound"), ("lambda_max.p99", "<=", "bound"),
    ("epsilon_tau.median", ">=", "bound"), ("epsilon_tau.p90", ">", "bound"),
    ("lambda_max.p90", ">=", "point"), ("epsilon_tau.median", "<=", "point"), ("lambda_max.max", "<=", "point"),
    ("epsilon_tau.min", ">=", "point"), ("n", ">=", "point"), ("lambda_max.median", "==", "point"),
])
def test_default_basis(figure: str, op: str, basis: str) -> None:
    assert default_basis(figure, op) == basis


def test_bound_checks_judge_the_bounds(tmp_path: Path) -> None:
    summary = _bounded_summary()
    assert summary.lambda_max_upper is not None and summary.epsilon_tau_lower is not None
    upper, lower = summary.lambda_max_upper["p90"], summary.epsilon_tau_lower["p50"]
    point = summary.lambda_max.p90
    assert upper is not None and lower is not None and point is not None and point < upper
    # Between the point value and the bound: passes on the point, fails on the bound.
    between = (point + upper) / 2
    text = (_check_toml("lambda_max.p90", "<=", between) + _check_toml("lambda_max.p90", "<=", between, basis="point")
            + _check_toml("epsilon_tau.median", ">=", lower * 0.99))
    result = evaluate(load_policy(_write(tmp_path, text)), summary)
    assert [(c.basis, c.measured, c.passed, c.note) for c in result.checks] == [
        ("bound", upper, False, None), ("point", point, True, None), ("bound", lower, True, None)]
    assert inconsistencies(result, summary) == []
    assert [recheck(c, summary) for c in result.checks] == [False, True, True]


def test_a_missing_bound_fails_with_the_reason(tmp_path: Path, report: AuditReport) -> None:
    # 12 inputs bound the median but not p90.
    text = _check_toml("lambda_max.p90", "<=", 1e12) + _check_toml("lambda_max.p90", "<=", 1e12, basis="point")
    result = load_policy(_write(tmp_path, text)).evaluate(report)
    bound, point = result.checks
    assert (bound.basis, bound.measured, bound.passed) == ("bound", None, False)
    assert bound.note == "too few inputs to bound p90 at 95%: 12 audited, 31 needed"
    assert (point.basis, point.passed, point.note) == ("point", True, None)
    assert not result.passed and inconsistencies(result, report.summary) == []


def test_reports_without_bounds_fail_bound_checks_and_keep_point_ones(tmp_path: Path, report: AuditReport) -> None:
    old = report.summary.model_copy(update={"lambda_max_upper": None, "epsilon_tau_lower": None, "bound_notes": {}})
    text = _check_toml("lambda_max.median", "<=", 1e12) + _check_toml("lambda_max.median", "<=", 1e12, basis="point")
    bound, point = evaluate(load_policy(_write(tmp_path, text)), old).checks
    assert not bound.passed and bound.note is not None and "no population bounds" in bound.note
    assert point.passed


def test_unbounded_radius_bound_passes_at_least_checks(tmp_path: Path) -> None:
    summary = _bounded_summary(scale=0.0)  # every lambda_max and upper end is 0
    assert summary.lambda_max_upper is not None and summary.lambda_max_upper["p50"] == 0.0
    result = evaluate(load_policy(_write(tmp_path, _check_toml("epsilon_tau.median", ">=", 1e9))), summary)
    assert (result.checks[0].basis, result.checks[0].measured, result.checks[0].passed) == ("bound", None, True)


@pytest.mark.parametrize("text, message", [
    (_check_toml("n", ">=", 1, basis="bound"), "n >= has no population bound"),
    (_check_toml("lambda_max.p90", ">=", 1, basis="bound"), "lambda_max.p90 >= has no population bound"),
    (_check_toml("lambda_max.max", "<=", 1, basis="bound"), "lambda_max.max <= has no population bound"),
    (_check_toml("lambda_max.p90", "<=", 1, basis="upper"), "unknown basis 'upper'"),
])
def test_bad_basis(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(_write(tmp_path, text))
    assert message in caught.value.message


def test_explicit_bound_basis_is_accepted(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, _check_toml("lambda_max.p90", "<=", 1, basis="bound")))
    assert policy.rules[0].basis == "bound"


def test_inconsistencies_catch_edited_bound_verdicts(tmp_path: Path) -> None:
    summary = _bounded_summary()
    good = evaluate(load_policy(_write(tmp_path, _check_toml("lambda_max.p90", "<=", 1e6))), summary)
    check = good.checks[0]
    assert good.passed and check.basis == "bound"
    # Claiming the point value was judged while recording the bound, or moving the bound, is caught.
    as_point = good.model_copy(update={"checks": [check.model_copy(update={"basis": "point"})]})
    assert any("(point) recorded as" in p for p in inconsistencies(as_point, summary))
    moved = good.model_copy(update={"checks": [check.model_copy(update={"measured": 1.0})]})
    assert any("(bound) recorded as 1.0" in p for p in inconsistencies(moved, summary))
    # A bound that is null in the report cannot pass.
    few = _bounded_summary(n=12)
    passed = good.model_copy(update={"checks": [check.model_copy(update={"measured": None})]})
    assert any("recorded as passed=True" in p for p in inconsistencies(passed, few))
    # A basis no figure has is refused.
    odd = good.model_copy(update={"checks": [check.model_copy(update={"figure": "n", "comparator": ">="})]})
    assert any("recorded on a bound" in p for p in inconsistencies(odd, summary))


def test_verdicts_before_bounds_read_as_point() -> None:
    # A 1.1/1.2 verdict has no basis: it judged point values, and must still re-derive.
    old = PolicyCheck.model_validate({"figure": "lambda_max.p90", "comparator": "<=", "threshold": 1.0, "measured": 0.5, "passed": True})
    assert old.basis == "point" and old.note is None


def test_bounds_problems_recompute_the_bounds(report: AuditReport) -> None:
    assert bounds_problems(report) == []
    s = report.summary
    assert s.lambda_max_upper is not None and s.lambda_max_upper["p50"] is not None
    edited = s.model_copy(update={"lambda_max_upper": {**s.lambda_max_upper, "p50": s.lambda_max_upper["p50"] / 10}})
    problems = bounds_problems(report.model_copy(update={"summary": edited}))
    assert len(problems) == 1 and problems[0].startswith("summary.lambda_max_upper.p50 is ")
    cls, bounds = next(iter(s.per_class_bounds.items()))
    moved = bounds.model_copy(update={"epsilon_tau_lower": {**bounds.epsilon_tau_lower, "p50": 1e9}})
    edited = s.model_copy(update={"per_class_bounds": {**s.per_class_bounds, cls: moved}})
    assert any(f"per_class_bounds.{cls}.epsilon_tau_lower.p50" in p for p in bounds_problems(report.model_copy(update={"summary": edited})))
    # A report before schema 1.3 has no bounds to check.
    old = s.model_copy(update={"lambda_max_upper": None, "epsilon_tau_lower": None, "per_class_bounds": {}})
    assert bounds_problems(report.model_copy(update={"summary": old})) == []
