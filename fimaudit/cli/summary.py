"""The console tables printed after an audit, a policy verdict or a comparison."""
from __future__ import annotations

import numpy as np
from rich.markup import escape
from rich.table import Table

from fimaudit.cli.app import out
from fimaudit.comparison import Comparison
from fimaudit.policy import PolicyCheck, PolicyResult
from fimaudit.report import FLAG_MEANINGS, AuditReport


def print_summary(report: AuditReport) -> None:
    """The end-of-audit table: distribution of lambda_max and of the radius epsilon_tau, then each flag."""
    s = report.summary
    table = Table(title=f"fimaudit: {escape(report.model.reference)} ({s.n} inputs)")
    table.add_column("figure")
    for col in ("median", "p90", "p99", "min", "max"):
        table.add_column(col, justify="right")
    for name, st in (("lambda_max", s.lambda_max), (f"epsilon_tau (tau={report.config.tau:g})", s.epsilon_tau)):
        table.add_row(name, *(fmt(getattr(st, c)) for c in ("median", "p90", "p99", "min", "max")))
    out.print(table)
    out.print(
        f"{s.queries} queries in {s.wall_seconds:.2f} s ({s.queries_per_second:,.0f}/s) on "
        f"{escape(report.model.provider or report.model.adapter)}; estimator {report.config.estimator}, "
        f"{report.config.directions} directions, {report.config.scheme} differences, {step_summary(report)}"
    )
    for flag, count in s.flags.items():
        out.print(f"[yellow]{flag}[/]: {count} of {s.n} inputs. {FLAG_MEANINGS.get(flag, '')}", soft_wrap=True)
    if report.data.skipped:
        out.print(f"[yellow]skipped[/]: {len(report.data.skipped)} unreadable files (listed in the report's data.skipped).")


def step_summary(report: AuditReport) -> str:
    steps = [x.step for x in report.samples if x.step is not None]
    norms = [x.step_norm for x in report.samples if x.step_norm is not None]
    if not steps or not norms:
        return f"step {report.config.step:.3g}"
    how = "fixed" if report.config.step_rule and report.config.step_rule.startswith("fixed") else "chosen per input"
    return f"step {how}: median {float(np.median(steps)):.3g} (L2 norm {float(np.median(norms)):.3g})"


def print_policy(verdict: PolicyResult) -> None:
    """One row per check, so a failed verdict says exactly which threshold was missed."""
    table = Table(title=f"policy {escape(verdict.source)}: {'PASSED' if verdict.passed else 'FAILED'}")
    for col in ("figure", "check", "measured", "result"):
        table.add_column(col)
    for c in verdict.checks:
        table.add_row(c.figure, f"{c.comparator} {c.threshold:g}", fmt(c.measured), "ok" if c.passed else "[bold red]FAIL[/]")
    out.print(table)


def print_comparison(c: Comparison) -> None:
    table = Table(title=f"B = {escape(c.b)}  vs  A = {escape(c.a)}  ({c.n} shared inputs)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    low, high = c.median_log10_ratio_ci
    table.add_row("median lambda_B / lambda_A", f"{10**c.median_log10_ratio:.3g}  ({c.confidence:.0%} CI {10**low:.3g} to {10**high:.3g})")
    table.add_row("inputs where B is less sensitive", f"{c.fraction_b_lower:.1%}")
    table.add_row("intervals apart: B lower / B higher", f"{c.separated_b_lower} / {c.separated_b_higher}")
    table.add_row("same predicted class", f"{c.same_prediction:.1%}")
    out.print(table)
    out.print(f"verdict: [bold]{c.verdict}[/]")


def verdict_line(verdict: PolicyResult | None) -> str:
    if verdict is None:
        return "none (signed without --policy)"
    passed = sum(c.passed for c in verdict.checks)
    state = "PASSED" if verdict.passed else "FAILED"
    lines = [f"{state} ({passed} of {len(verdict.checks)} checks; {verdict.source} sha256:{verdict.sha256})"]
    lines += [f"    {'ok  ' if c.passed else 'FAIL'} {describe_check(c)}" for c in verdict.checks]
    return "\n".join(lines)


def describe_check(check: PolicyCheck) -> str:
    measured = "unbounded" if check.measured is None else f"{check.measured:.6g}"
    return f"{check.figure} {check.comparator} {check.threshold:g} (measured {measured})"


def fmt(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4g}"
