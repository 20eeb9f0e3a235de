"""Policy files: pass/fail thresholds on a report's summary figures.

A policy is a TOML file holding one `[[check]]` table per threshold:

    [[check]]
    figure = "lambda_max.p90"   # a summary figure, see FIGURES
    op = "<="                   # one of <, <=, >, >=, ==
    value = 0.5                 # a finite number
    basis = "point"             # optional: judge the point statistic instead of its bound

A check of a lambda_max quantile (median, p90, p99) with < or <=, or of an epsilon_tau quantile
with > or >=, is judged by default on the report's population bound (summary.lambda_max_upper,
summary.epsilon_tau_lower; fimaudit/bounds.py): it passes only if the population quantile meets
the threshold with the report's confidence. A null bound (too few inputs) fails the check, with
the reason. `basis = "point"` opts back into the audited inputs' own statistic. Every other check
is judged on its point value. The verdict records each check's basis.

Only this one format is accepted, and anything else in the file is refused,
so a typo can never silently drop a check. Evaluation yields a PolicyResult
that is signed together with the report (see fimaudit.signing.attestation).

A missing figure (None in the summary) is decided explicitly, never by
Python's ordering of None: an epsilon_tau statistic is None when the radius is
unbounded (lambda_max = 0), so it counts as +infinity; any other None (only
possible for an empty audit) fails the check, since nothing was measured.
"""
from __future__ import annotations

import sys

import difflib
import hashlib
import math
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fimaudit.errors import PolicyError
from fimaudit.report import AuditReport, Summary, summarize

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the backport, when installed, reads the same files.
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

Comparator = Literal["<", "<=", ">", ">=", "=="]
Basis = Literal["point", "bound"]

_STATS = ("median", "p90", "p99", "max", "min")
FIGURES: tuple[str, ...] = (
    "n",
    "queries",
    *(f"lambda_max.{s}" for s in _STATS),
    *(f"epsilon_tau.{s}" for s in _STATS),
)
_UNBOUNDED_WHEN_NONE = "epsilon_tau."
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}
_CHECK_KEYS = ("figure", "op", "value")
_OPTIONAL_KEYS = ("basis",)
_BASES = ("point", "bound")
# The quantile statistics that have a population bound, and the bound's key in the summary.
_BOUND_KEYS = {"median": "p50", "p90": "p90", "p99": "p99"}
# A bound is one-sided: an upper bound judges "at most" on lambda_max, a lower bound "at least" on epsilon_tau.
_BOUND_OPS = {"lambda_max": ("<", "<="), "epsilon_tau": (">", ">=")}
_CHECK_HEADER = re.compile(r"^\s*\[\[\s*check\s*\]\]")
_FORMAT_HINT = 'each check is a [[check]] table with figure = "...", op = "<=", value = 0.5'


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyRule(_Model):
    """One threshold as written in the policy file."""

    figure: str
    op: Comparator
    value: float
    basis: Basis | None = Field(default=None, description="As written; None: the default for the figure and op (default_basis).")


class Policy(_Model):
    """A parsed policy file, with the identity of the bytes it came from."""

    source: str
    sha256: str
    rules: list[PolicyRule]

    def evaluate(self, report: AuditReport) -> PolicyResult:
        return evaluate(self, report.summary)


class PolicyCheck(_Model):
    figure: str = Field(description="Dotted path into the report's summary, e.g. lambda_max.p90.")
    comparator: Comparator
    threshold: float
    measured: float | None = Field(
        description="The figure's value; null means unbounded (+infinity) for epsilon_tau "
        "statistics, and 'not measured' (the check fails) for any other figure."
    )
    passed: bool
    # Verdicts before report schema 1.3 judged point values only, hence the default.
    basis: Basis = Field(
        default="point",
        description="What was judged: point, the audited inputs' own statistic; bound, the population bound at the "
        "report's bound_confidence (summary.lambda_max_upper or epsilon_tau_lower).",
    )
    note: str | None = Field(default=None, description="Why a check on a bound failed without a value (e.g. too few inputs).")


class PolicyResult(_Model):
    source: str = Field(description="The policy file as named on the command line.")
    sha256: str = Field(description="sha256 of the policy file's bytes.")
    checks: list[PolicyCheck]
    passed: bool = Field(description="True when every check passed.")

    def failed_checks(self) -> list[PolicyCheck]:
        return [c for c in self.checks if not c.passed]


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; every problem is a PolicyError (exit 2)."""
    path = Path(path)
    data = _read(path)
    document = _parse_toml(path, data)
    lines = _check_header_lines(data)
    tables = _check_tables(path, document)
    rules = [_parse_rule(path, i, table, lines) for i, table in enumerate(tables)]
    return Policy(source=str(path), sha256=hashlib.sha256(data).hexdigest(), rules=rules)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise PolicyError(f"policy file not found: {path}", "check the --policy path") from exc
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}",
                          "pass a readable TOML file") from exc


def _parse_toml(path: Path, data: bytes) -> dict[str, Any]:
    if tomllib is None:
        raise PolicyError("reading policy files needs Python 3.11+ (tomllib) or the tomli package",
                          "pip install tomli, or use Python 3.11 or newer")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path} is not UTF-8 text", "save the policy as UTF-8 TOML") from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already names the line and column.
        raise PolicyError(f"{path} is not valid TOML: {exc}", f"fix the syntax there; {_FORMAT_HINT}") from exc


def _check_header_lines(data: bytes) -> list[int]:
    """1-based line of each `[[check]]` header, to point errors at the right place."""
    text = data.decode("utf-8")
    return [n for n, line in enumerate(text.splitlines(), start=1) if _CHECK_HEADER.match(line)]


def _check_tables(path: Path, document: dict[str, Any]) -> list[Any]:
    extra = sorted(set(document) - {"check"})
    if extra:
        raise PolicyError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))}",
                          f"a policy holds only [[check]] tables; {_FORMAT_HINT}")
    tables = document.get("check")
    if not isinstance(tables, list) or not tables:
        # An empty policy would pass every report, which is never what anyone means.
        raise PolicyError(f"{path} defines no checks", _FORMAT_HINT)
    return tables


def _parse_rule(path: Path, index: int, table: Any, lines: list[int]) -> PolicyRule:
    where = _where(path, index, lines)
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: a check must be a table", _FORMAT_HINT)
    unknown = sorted(set(table) - set(_CHECK_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}",
                          f"a check has the keys {', '.join(_CHECK_KEYS)} (and optionally basis)")
    missing = [key for key in _CHECK_KEYS if key not in table]
    if missing:
        raise PolicyError(f"{where}: missing key(s) {', '.join(missing)}", _FORMAT_HINT)
    figure, op = _figure(where, table["figure"]), _op(where, table["op"])
    return PolicyRule(figure=figure, op=op, value=_value(where, table["value"]),
                      basis=_basis(where, table.get("basis"), figure, op))


def _where(path: Path, index: int, lines: list[int]) -> str:
    # Header lines only line up with tables when every check uses the [[check]] form.
    line = f" line {lines[index]}," if index < len(lines) else ""
    return f"{path}:{line} check #{index + 1}"


def _figure(where: str, figure: Any) -> str:
    if isinstance(figure, str) and figure in FIGURES:
        return figure
    close = difflib.get_close_matches(str(figure), FIGURES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise PolicyError(f"{where}: unknown figure {figure!r}",
                      f"{hint}figures are: {', '.join(FIGURES)}")


def _op(where: str, op: Any) -> Comparator:
    if isinstance(op, str) and op in _OPS:
        return op  # type: ignore[return-value]  # membership in _OPS is the Literal
    raise PolicyError(f"{where}: unknown op {op!r}", f"op is one of {', '.join(_OPS)} (as a quoted string)")


def _basis(where: str, basis: Any, figure: str, op: str) -> Basis | None:
    if basis is None or basis == "point":
        return basis  # None (the default) or "point"
    if basis != "bound":
        raise PolicyError(f"{where}: unknown basis {basis!r}", 'basis is "bound" (the default where one exists) or "point"')
    if not has_bound(figure, op):
        raise PolicyError(f"{where}: {figure} {op} has no population bound to judge",
                          "bounds exist for lambda_max.median/p90/p99 with < or <=, and epsilon_tau.median/p90/p99 "
                          'with > or >=; drop basis = "bound" to judge the point value')
    return "bound"


def _value(where: str, value: Any) -> float:
    # bool is an int subclass in Python; `value = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{where}: value {value!r} is not a number",
                          "write the threshold as a bare number, e.g. value = 0.5 (no quotes)")
    if not math.isfinite(value):
        raise PolicyError(f"{where}: value {value!r} is not finite", "use a finite threshold")
    return float(value)


# --------------------------------------------------------------------------- #
# evaluation
# --------------------------------------------------------------------------- #


def evaluate(policy: Policy, summary: Summary) -> PolicyResult:
    """Check every rule against `summary`; the verdict passes only if all do."""
    checks = [_check(rule, summary) for rule in policy.rules]
    return PolicyResult(source=policy.source, sha256=policy.sha256, checks=checks,
                        passed=all(c.passed for c in checks))


def _check(rule: PolicyRule, summary: Summary) -> PolicyCheck:
    basis = rule.basis or default_basis(rule.figure, rule.op)
    measured, note = basis_value(summary, rule.figure, basis)
    return PolicyCheck(figure=rule.figure, comparator=rule.op, threshold=rule.value, measured=measured,
                       passed=judge(rule.figure, measured, note, rule.op, rule.value), basis=basis, note=note)


def has_bound(figure: str, op: str) -> bool:
    """Whether `figure op threshold` can be judged on a population bound."""
    group, _, stat = figure.partition(".")
    return stat in _BOUND_KEYS and op in _BOUND_OPS.get(group, ())


def default_basis(figure: str, op: str) -> Basis:
    """bound wherever one exists for the figure and op (see the module docstring), else point."""
    return "bound" if has_bound(figure, op) else "point"


def basis_value(summary: Summary, figure: str, basis: Basis) -> tuple[float | None, str | None]:
    """(the value judged, why there is none): the point figure, or its population bound.

    A bound of None with no reason is an unbounded radius (the lambda_max bound is 0), read as
    +infinity like any epsilon_tau figure; with a reason, the check fails."""
    if basis == "point":
        return figure_value(summary, figure), None
    group, _, stat = figure.partition(".")
    key = _BOUND_KEYS[stat]
    bounds = summary.lambda_max_upper if group == "lambda_max" else summary.epsilon_tau_lower
    if bounds is None or summary.lambda_max_upper is None:
        return None, 'the report has no population bounds (report schema before 1.3): audit again, or set basis = "point"'
    value = bounds.get(key)
    if value is not None:
        return float(value), None
    if group == "epsilon_tau" and summary.lambda_max_upper.get(key) == 0.0:
        return None, None
    return None, summary.bound_notes.get(key, f"no bound on {key} in the report")


def judge(figure: str, measured: float | None, note: str | None, op: str, threshold: float) -> bool:
    """A check's outcome: a missing bound (a note) fails; else compare()."""
    return note is None and compare(figure, measured, op, threshold)


def recheck(check: PolicyCheck, summary: Summary) -> bool | None:
    """A recorded check's outcome on `summary`'s own figures, on its recorded basis; None for a
    figure or basis fimaudit does not know how to judge."""
    if check.figure not in FIGURES or (check.basis == "bound" and not has_bound(check.figure, check.comparator)):
        return None
    measured, note = basis_value(summary, check.figure, check.basis)
    return judge(check.figure, measured, note, check.comparator, check.threshold)


def figure_value(summary: Summary, figure: str) -> float | None:
    """The value of a dotted figure name in `summary` (None stays None)."""
    if figure not in FIGURES:
        raise PolicyError(f"unknown figure {figure!r}", f"figures are: {', '.join(FIGURES)}")
    value: Any = summary
    for part in figure.split("."):
        value = getattr(value, part)
    return None if value is None else float(value)


def compare(figure: str, measured: float | None, op: str, threshold: float) -> bool:
    """Apply `op`, reading None as +infinity for epsilon_tau and as a failure otherwise."""
    if measured is None:
        if not figure.startswith(_UNBOUNDED_WHEN_NONE):
            return False
        measured = math.inf
    return _OPS[op](measured, threshold)


def inconsistencies(result: PolicyResult, summary: Summary) -> list[str]:
    """Ways a recorded result disagrees with the summary it claims to judge.

    A verifier re-derives the verdict rather than trusting the recorded
    booleans, so a signer's bug (or a hand-edited predicate) cannot turn a
    failing figure into a passing verdict unnoticed.
    """
    problems = [] if result.checks else ["no checks recorded"]
    for check in result.checks:
        if check.figure not in FIGURES:
            problems.append(f"unknown figure {check.figure!r}")
            continue
        if check.basis == "bound" and not has_bound(check.figure, check.comparator):
            problems.append(f"{check.figure} {check.comparator} recorded on a bound, which it has none of")
            continue
        actual, note = basis_value(summary, check.figure, check.basis)
        if actual != check.measured:
            where = f"{check.figure} ({check.basis})"
            problems.append(f"{where} recorded as {check.measured}, the report says {actual}")
        if judge(check.figure, actual, note, check.comparator, check.threshold) != check.passed:
            problems.append(f"{check.figure} {check.comparator} {check.threshold:g} recorded as passed={check.passed}")
    if result.passed != all(c.passed for c in result.checks):
        problems.append(f"overall verdict recorded as passed={result.passed}")
    return problems


def bounds_problems(report: AuditReport) -> list[str]:
    """How the summary's population bounds disagree with its own samples, recomputed (empty: they
    agree). Policy checks judge the bounds, so a verifier recomputes them as it does the point
    statistics (signing's summary_problems); reports before schema 1.3 have none to check."""
    recorded = report.summary
    if recorded.lambda_max_upper is None:
        return []
    samples = report.samples
    actual = summarize(samples, sum(s.queries for s in samples), recorded.wall_seconds,
                       confidence=report.config.confidence, tau=report.config.tau)
    problems = []
    if recorded.bound_confidence != actual.bound_confidence:
        problems.append(f"summary.bound_confidence is {recorded.bound_confidence}, the audit's confidence is {actual.bound_confidence}")
    if set(recorded.per_class_bounds) != set(actual.per_class_bounds):
        problems.append("summary.per_class_bounds does not match the samples' predicted classes")
    problems += _bound_differences("summary.", recorded, actual)
    for key, theirs in actual.per_class_bounds.items():
        mine = recorded.per_class_bounds.get(key)
        if mine is not None:
            problems += _bound_differences(f"summary.per_class_bounds.{key}.", mine, theirs)
    return problems


def _bound_differences(prefix: str, recorded: Any, actual: Any) -> list[str]:
    """Differences in lambda_max_upper and epsilon_tau_lower between two Summary or ClassBounds."""
    problems = []
    for field in ("lambda_max_upper", "epsilon_tau_lower"):
        got, want = getattr(recorded, field) or {}, getattr(actual, field) or {}
        problems += [f"{prefix}{field}.{key} is {got.get(key)}, the samples give {want.get(key)}"
                     for key in sorted(set(got) | set(want)) if not _same(got.get(key), want.get(key))]
    return problems


def _same(a: float | None, b: float | None) -> bool:
    # The bounds are sample values and their square roots: another numpy may differ only in the last bits.
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300)
