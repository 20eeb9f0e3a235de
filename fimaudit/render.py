"""A report as one self-contained HTML page: what was audited, the summary, the policy verdict and
signers when known, two plots (inline SVG, no scripts, no network) and the per-sample table.

Every string from the report is escaped: a model reference or policy text cannot inject markup.
Bidirectional-text controls are shown as visible [U+XXXX] marks, so a reference cannot display
reversed (".onnx" that is really "xnno."), and long strings are truncated and wrapped.

A policy verdict is shown only after it is re-checked against the report with the code `verify`
uses (fimaudit.attestation.content_problems): an unsigned predicate's "PASSED" that its own
figures contradict is shown as CONTRADICTED, never as a pass.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from fimaudit.attestation import content_problems, summary_problems
from fimaudit.policy import FIGURES, PolicyCheck, PolicyResult, compare, figure_value
from fimaudit.report import AuditConfig, AuditReport, SampleResult, Stats

WIDTH, HEIGHT, MARGIN = 540, 320, 56
MAX_ROWS = 1000  # the table lists this many samples; the plots show all of them
MAX_TEXT = 300  # characters of any one string from the report; the JSON holds the rest
# Embeddings, overrides and isolates (U+202A-202E, U+2066-2069), the LRM/RLM marks and Arabic letter mark.
_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1140px;color:#222}
.meta td{text-align:left}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#17692d;font-weight:bold}.fail{color:#b00020;font-weight:bold}.note{color:#666}
svg{border:1px solid #ddd;margin:0.5em 1em 0.5em 0}
td,th,h1,h2,p{overflow-wrap:anywhere}
.contradiction{border:2px solid #b00020;padding:0.5em 1em;background:#fff4f4}
"""


def _text(value: object, limit: int = MAX_TEXT) -> str:
    """`value` as safe HTML text: truncated to `limit` characters, bidi controls made visible, escaped."""
    text = str(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit:,} more characters)"
    return escape("".join(f"[U+{ord(c):04X}]" if ord(c) in _BIDI else c for c in text))


def render_html(report: AuditReport, policy: PolicyResult | None = None, signers: Sequence[str] = ()) -> str:
    """The page for `report`; `signers` only when the caller verified them. A `policy` verdict is
    re-checked against `report` here, whoever passes it, and shown as contradicted if it does not hold."""
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fimaudit report: {_text(report.model.reference, 120)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>fimaudit report</h1>{_provenance(report, signers)}",
        _summary_contradiction(report),
        f"<h2>Summary</h2>{_summary(report)}",
        _policy(policy, report) if policy is not None else "",
        "<h2>Plots</h2>",
        _scatter(report.samples),
        _histogram([s.epsilon_tau for s in report.samples if s.epsilon_tau is not None], report.config.tau),
        f"<h2>Samples</h2>{_samples(report.samples)}",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _rows(pairs: Sequence[tuple[str, str]]) -> str:
    return "<table class='meta'>" + "".join(f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in pairs) + "</table>"


def _provenance(report: AuditReport, signers: Sequence[str]) -> str:
    m, d, c = report.model, report.data, report.config
    signed = ", ".join(signers) if signers else "not verified here (render --key checks the signatures)"
    return _rows([
        ("model", m.reference), ("model sha256", m.sha256 or "endpoint (no file): see identity below"),
        ("adapter / provider", f"{m.adapter} / {m.provider or '-'}"),
        ("input", f"{m.input_shape} {m.input_dtype}, {m.classes} classes, outputs {m.output_kind}"),
        ("data", f"{d.source or '-'}: shape {d.shape}, {d.dtype}, sha256 {d.sha256}"),
        ("method", f"{c.estimator}, {c.directions} directions, {c.scheme} differences, {_step_rule(c)}, "
                   f"{c.confidence:.0%} interval: {c.interval_method}"),
        ("tool", f"{report.tool.name} {report.tool.version}"), ("signed by", signed),
        *[(f"identity: {k}", v) for k, v in sorted(m.extra.items()) if k != "fingerprint"],
    ])


def _fmt(value: float | None) -> str:
    return "∞" if value is None else f"{value:.4g}"


def _summary(report: AuditReport) -> str:
    s = report.summary
    head = "<tr><th>figure</th>" + "".join(f"<th>{c}</th>" for c in ("median", "p90", "p99", "min", "max")) + "</tr>"

    def line(name: str, st: Stats) -> str:
        return f"<tr><td>{_text(name)}</td>" + "".join(f"<td>{_fmt(getattr(st, c))}</td>" for c in ("median", "p90", "p99", "min", "max")) + "</tr>"

    flags = ", ".join(f"{_text(k)}: {v}" for k, v in s.flags.items()) or "none"
    return (
        f"<table>{head}{line('lambda_max', s.lambda_max)}{line(f'epsilon_tau (tau = {report.config.tau:g})', s.epsilon_tau)}</table>"
        f"<p>{s.n} inputs, {s.queries:,} queries in {s.wall_seconds:.2f} s. Flags: {flags}.</p>"
        "<p class='note'>ε_τ = √(2τ/λ_max): the L2 perturbation (in the model's input units) that moves the "
        "prediction by τ nats of KL to second order.</p>"
    )


def _summary_contradiction(report: AuditReport) -> str:
    problems = summary_problems(report)
    if not problems:
        return ""
    warning = ("This report contradicts itself: its summary does not match its own samples. "
               "Do not rely on its summary figures or on any verdict drawn from them.")
    return f"<div class='contradiction'><p class='fail'>{warning}</p>{_problem_list(problems)}</div>"


def _problem_list(problems: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_text(p)}</li>" for p in problems) + "</ul>"


def _recheck(check: PolicyCheck, report: AuditReport) -> bool | None:
    """The check's outcome on this report's own figures; None for a figure fimaudit does not know."""
    if check.figure not in FIGURES:
        return None
    return compare(check.figure, figure_value(report.summary, check.figure), check.comparator, check.threshold)


def _outcome(result: bool | None) -> str:
    if result is None:
        return "<td class='fail'>unknown figure</td>"
    return f"<td class='{'pass' if result else 'fail'}'>{'ok' if result else 'FAIL'}</td>"


def _policy(policy: PolicyResult, report: AuditReport) -> str:
    problems = content_problems(report, policy)
    recorded = "PASSED" if policy.passed else "FAILED"
    if problems:
        verdict = f"<span class='fail'>CONTRADICTED</span> (recorded as {recorded}; the report's own figures disagree)"
    else:
        verdict = "<span class='pass'>PASSED</span>" if policy.passed else "<span class='fail'>FAILED</span>"
    rows = "".join(
        f"<tr><td>{_text(c.figure)}</td><td>{_text(c.comparator)} {c.threshold:g}</td><td>{_fmt(c.measured)}</td>"
        f"{_outcome(c.passed)}{_outcome(_recheck(c, report))}</tr>"
        for c in policy.checks
    )
    head = "<tr><th>figure</th><th>check</th><th>measured (recorded)</th><th>result (recorded)</th><th>result (re-checked)</th></tr>"
    warning = f"<div class='contradiction'>{_problem_list(problems)}</div>" if problems else ""
    return f"<h2>Policy {_text(policy.source)}: {verdict}</h2>{warning}<table>{head}{rows}</table>"


def _step_rule(c: AuditConfig) -> str:
    """Reports before 1.1 had one step for every input; since, each input records its own."""
    if c.step_rule is None:
        return f"step {c.step:.3g}"
    if c.step_rule.startswith("fixed"):
        return f"step {c.step:.3g} given (checked per input)"
    return f"step chosen per input (search from {c.step:.3g})"


def _samples(samples: list[SampleResult]) -> str:
    head = "".join(
        f"<th>{h}</th>" for h in ("index", "class", "confidence", "λ_max", "interval", "ε_τ", "step (L2)", "method", "flags")
    )
    rows = "".join(
        f"<tr><td>{s.index}</td><td>{s.predicted_class}</td><td>{s.confidence:.4f}</td><td>{_fmt(s.lambda_max)}</td>"
        f"<td>[{_fmt(s.lambda_max_ci[0])}, {_fmt(s.lambda_max_ci[1])}]</td><td>{_fmt(s.epsilon_tau)}</td>"
        f"<td>{'-' if s.step_norm is None else _fmt(s.step_norm)}</td>"
        f"<td>{_text(s.method)}</td><td>{_text(', '.join(s.flags))}</td></tr>"
        for s in samples[:MAX_ROWS]
    )
    more = f"<p class='note'>First {MAX_ROWS} of {len(samples)} samples; the JSON report holds all.</p>" if len(samples) > MAX_ROWS else ""
    return f"<table><tr>{head}</tr>{rows}</table>{more}"


# --------------------------------------------------------------------------- plots (SVG)


class _LogAxis:
    """Maps positive values to pixels on a log10 scale spanning whole decades."""

    def __init__(self, values: Sequence[float], start: float, stop: float) -> None:
        logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)] or [0.0]
        self.low, self.high = math.floor(min(logs)), math.ceil(max(logs))
        if self.high == self.low:
            self.high += 1
        self.start, self.stop = start, stop

    def __call__(self, value: float) -> float:
        t = (math.log10(max(value, 10.0**self.low)) - self.low) / (self.high - self.low)
        return self.start + t * (self.stop - self.start)

    def decades(self) -> range:
        return range(self.low, self.high + 1)


def _frame(title: str, xlabel: str, ylabel: str, x: _LogAxis, y: _LogAxis | None) -> list[str]:
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' role='img' aria-label='{escape(title)}'>",
        f"<text x='{WIDTH / 2}' y='16' text-anchor='middle' font-size='13'>{escape(title)}</text>",
        f"<text x='{WIDTH / 2}' y='{HEIGHT - 6}' text-anchor='middle' font-size='12'>{escape(xlabel)}</text>",
        f"<text x='14' y='{HEIGHT / 2}' transform='rotate(-90 14 {HEIGHT / 2})' text-anchor='middle' font-size='12'>{escape(ylabel)}</text>",
    ]
    for e in x.decades():
        px = x(10.0**e)
        out.append(f"<line x1='{px:.1f}' y1='{MARGIN / 2}' x2='{px:.1f}' y2='{HEIGHT - MARGIN}' stroke='#eee'/>")
        out.append(f"<text x='{px:.1f}' y='{HEIGHT - MARGIN + 16}' text-anchor='middle' font-size='11'>1e{e}</text>")
    for e in y.decades() if y is not None else ():
        py = y(10.0**e)  # type: ignore[misc]
        out.append(f"<line x1='{MARGIN}' y1='{py:.1f}' x2='{WIDTH - 10}' y2='{py:.1f}' stroke='#eee'/>")
        out.append(f"<text x='{MARGIN - 4}' y='{py + 4:.1f}' text-anchor='end' font-size='11'>1e{e}</text>")
    return out


def _scatter(samples: list[SampleResult]) -> str:
    """λ_max (with its interval) against 1 − top probability: how much sensitivity is confidence."""
    doubt = [max(1 - s.confidence, 1e-12) for s in samples]
    lams = [s.lambda_max for s in samples] + [s.lambda_max_ci[1] for s in samples] + [s.lambda_max_ci[0] for s in samples]
    x = _LogAxis(doubt, MARGIN, WIDTH - 10)
    y = _LogAxis(lams, HEIGHT - MARGIN, MARGIN / 2)
    out = _frame("λ_max per input (bars: interval)", "1 − top probability", "λ_max", x, y)
    for s, q in zip(samples, doubt):
        px = x(q)
        colour = "#b00020" if "below_resolution" in s.flags else "#1f5fa8"
        if s.lambda_max_ci[0] > 0:
            out.append(f"<line class='ci' x1='{px:.1f}' y1='{y(s.lambda_max_ci[0]):.1f}' x2='{px:.1f}' y2='{y(s.lambda_max_ci[1]):.1f}' stroke='{colour}' stroke-opacity='0.35'/>")
        out.append(f"<circle class='sample' cx='{px:.1f}' cy='{y(s.lambda_max):.1f}' r='2.5' fill='{colour}'/>")
    return "".join(out) + "</svg>"


def _histogram(radii: list[float], tau: float, bins: int = 30) -> str:
    """How many inputs have each certified radius ε_τ (log-spaced bins)."""
    x = _LogAxis(radii, MARGIN, WIDTH - 10)
    out = _frame(f"ε_τ per input (τ = {tau:g})", "ε_τ (input units, L2)", "inputs", x, None)
    edges = [10 ** (x.low + (x.high - x.low) * i / bins) for i in range(bins + 1)]
    counts = [sum(lo <= r < hi or (i == bins - 1 and r == hi) for r in radii) for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]
    top = max(counts, default=0) or 1
    for lo, hi, n in zip(edges, edges[1:], counts):
        height = (HEIGHT - 2 * MARGIN) * n / top
        out.append(f"<rect class='bin' x='{x(lo):.1f}' y='{HEIGHT - MARGIN - height:.1f}' width='{max(x(hi) - x(lo) - 1, 1):.1f}' height='{height:.1f}' fill='#4c8c4a'><title>{n}</title></rect>")
    out.append(f"<text x='{MARGIN - 4}' y='{MARGIN + 4:.1f}' text-anchor='end' font-size='11'>{top}</text>")
    return "".join(out) + "</svg>"
