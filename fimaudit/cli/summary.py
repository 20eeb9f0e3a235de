"""The console tables printed after an audit, a policy verdict or a comparison."""
from __future__ import annotations

import numpy as np
from rich.markup import escape
from rich.table import Table

from fimaudit.cli.app import out
from fimaudit.comparison import Comparison
from fimaudit.policy import PolicyCheck, PolicyResult
from fimaudit.report import FLAG_MEANINGS, AuditReport, Summary, describe_scheme, estimates_above_bound


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
    print_bounds(s)
    print_graph_bound(report)
    out.print(
        f"{s.queries} queries in {s.wall_seconds:.2f} s ({s.queries_per_second:,.0f}/s) on "
        f"{escape(report.model.provider or report.model.adapter)}; estimator {report.config.estimator}, "
        f"{report.config.directions} directions, {describe_scheme(report)}, {step_summary(report)}"
    )
    for flag, count in s.flags.items():
        out.print(f"[yellow]{flag}[/]: {count} of {s.n} inputs. {FLAG_MEANINGS.get(flag, '')}", soft_wrap=True)
    if report.data.skipped:
        out.print(f"[yellow]skipped[/]: {len(report.data.skipped)} unreadable files (listed in the report's data.skipped).")


def print_bounds(s: Summary) -> None:
    """The population bounds in words: epsilon's p90 bound is the radius 90% of inputs reach (docs/math.md),
    not a bound on the table's p90 column, so they get a line of their own."""
    if s.lambda_max_upper is None or s.epsilon_tau_lower is None or s.bound_confidence is None:
        return
    shares = {"p50": "50%", "p90": "90%", "p99": "99%"}
    lam = ", ".join(f"{bound_text(s.lambda_max_upper, k, s.bound_notes)} for {v}" for k, v in shares.items())
    eps = ", ".join(f"{bound_text(s.epsilon_tau_lower, k, s.bound_notes)} for {v}" for k, v in shares.items())
    out.print(f"population bounds at {s.bound_confidence:.0%} confidence: lambda_max at most {lam} of inputs; "
              f"epsilon_tau at least {eps}.", soft_wrap=True)
    for key, note in s.bound_notes.items():
        if key in shares:
            out.print(f"[yellow]{key}[/]: {escape(note)}", soft_wrap=True)


def print_graph_bound(report: AuditReport) -> None:
    """With --bound: the model's bound from its graph (or the operator that prevented one), the samples'
    local bounds, and any estimate whose interval lies above its sample's bound (an estimation error)."""
    b = report.model.lambda_max_bound
    if b is None:
        return
    if b.value is not None:
        out.print(f"lambda_max bound from the graph ({escape(b.scope)}): {b.value:.4g}", soft_wrap=True)
    else:
        what = f"unsupported operator {escape(b.unsupported_operator)}: " if b.unsupported_operator else ""
        out.print(f"[yellow]lambda_max bound from the graph: none[/] ({what}{escape(b.reason or 'not computed')})", soft_wrap=True)
    local = [s.lambda_max_bound.value for s in report.samples if s.lambda_max_bound is not None and s.lambda_max_bound.value is not None]
    if local:
        out.print(f"local bounds ({len(local)} of {report.summary.n} inputs, on the ball of each input's step): "
                  f"median {float(np.median(local)):.4g}, max {max(local):.4g}", soft_wrap=True)
    above = len(estimates_above_bound(report))
    if above:
        out.print(f"[yellow]above the bound[/]: {above} of {report.summary.n} inputs have an interval whose lower end exceeds "
                  "their bound: the estimate there carries a finite-difference or sampling error larger than its interval.", soft_wrap=True)


def bound_text(bounds: dict[str, float | None], key: str, notes: dict[str, str]) -> str:
    value = bounds.get(key)
    if value is not None:
        return f"{value:.4g}"
    return "inf" if notes.get(key, "").startswith("unbounded") else "none"


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
    for col in ("figure", "check", "judged on", "value", "result"):
        table.add_column(col)
    for c in verdict.checks:
        table.add_row(c.figure, f"{c.comparator} {c.threshold:g}", basis_text(c), fmt(c.measured) if c.note is None else "none",
                      "ok" if c.passed else "[bold red]FAIL[/]")
    out.print(table)
    for c in verdict.checks:
        if c.note is not None:
            out.print(f"[yellow]{escape(c.figure)}[/]: {escape(c.note)}", soft_wrap=True)


def basis_text(check: PolicyCheck) -> str:
    """What a check judged: the population bound (upper for lambda_max, lower for epsilon_tau) or the point statistic."""
    if check.basis == "point":
        return "point (these inputs)"
    return "upper bound" if check.figure.startswith("lambda_max") else "lower bound"


def print_comparison(c: Comparison) -> None:
    table = Table(title=f"B = {escape(c.b)}  vs  A = {escape(c.a)}  ({c.n} shared inputs)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    low, high = c.median_log10_ratio_ci
    table.add_row("median lambda_B / lambda_A", f"{10**c.median_log10_ratio:.3g}  ({c.confidence:.0%} CI {10**low:.3g} to {10**high:.3g})")
    table.add_row("inputs where B is less sensitive", f"{c.fraction_b_lower:.1%}")
    table.add_row("intervals apart: B lower / B higher", f"{c.separated_b_lower} / {c.separated_b_higher}")
    table.add_row("same predicted class", f"{c.same_prediction:.1%}")
    dlow, dhigh = c.median_log10_doubt_ratio_ci
    table.add_row("median doubt (1 - p) ratio B / A", f"{10**c.median_log10_doubt_ratio:.3g}  ({c.confidence:.0%} CI {10**dlow:.3g} to {10**dhigh:.3g})")
    out.print(table)
    # The verdict names what was measured; the caveats say why it may not rank robustness.
    out.print(f"verdict: [bold]{escape(c.verdict)}[/] (sensitivity, not robustness: lambda_max is not an attack distance)")
    for caveat in c.caveats:
        out.print(f"[yellow]caveat ({caveat.risk}):[/] {escape(caveat.message)}", soft_wrap=True)


def verdict_line(verdict: PolicyResult | None) -> str:
    if verdict is None:
        return "none (signed without --policy)"
    passed = sum(c.passed for c in verdict.checks)
    state = "PASSED" if verdict.passed else "FAILED"
    lines = [f"{state} ({passed} of {len(verdict.checks)} checks; {verdict.source} sha256:{verdict.sha256})"]
    lines += [f"    {'ok  ' if c.passed else 'FAIL'} {describe_check(c)}" for c in verdict.checks]
    return "\n".join(lines)


def describe_check(check: PolicyCheck) -> str:
    if check.note is not None:
        return f"{check.figure} {check.comparator} {check.threshold:g} (no population bound: {check.note})"
    measured = "unbounded" if check.measured is None else f"{check.measured:.6g}"
    what = "measured" if check.basis == "point" else f"population {basis_text(check)}"
    return f"{check.figure} {check.comparator} {check.threshold:g} ({what} {measured})"


def fmt(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4g}"
