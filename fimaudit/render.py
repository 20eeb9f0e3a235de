"""A report as one self-contained HTML page: what was audited, the summary, the policy verdict and
signers when known, two plots (inline SVG, no scripts, no network) and the per-sample table.

Every string from the report is escaped: a model reference or policy text cannot inject markup.
Bidirectional-text controls are shown as visible [U+XXXX] marks, so a reference cannot display
reversed (".onnx" that is really "xnno."), and long strings are truncated and wrapped.

A policy verdict is shown only after it is re-checked against the report with the code `verify`
uses (fimaudit.signing.content_problems): an unsigned predicate's "PASSED" that its own
figures contradict is shown as CONTRADICTED, never as a pass.

Every page says what the figures do not claim. For a v2 predicate it shows the signed assurance
level, harness and non-claims; for a bare report or a v1 predicate, which declare none, it says so
and lists this fimaudit's non-claims as such, not as part of the report.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from html import escape

from fimaudit.signing import ASSURANCE_MEANINGS, NON_CLAIMS, AuditPredicate, NonClaim, content_problems, section_problems, summary_problems
from fimaudit.signing.predicate import COMPLIANCE, harness_names, sample_info, threat_model
from fimaudit.policy import PolicyCheck, PolicyResult, recheck
from fimaudit.lipschitz_bound import ALL_INPUTS
from fimaudit.report import FLAG_MEANINGS, AuditConfig, AuditReport, ModelBound, SampleBound, SampleResult, Stats, describe_scheme, estimates_above_bound

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
svg{border:1px solid #ddd;margin:0.5em 1em 0.5em 0;vertical-align:top}
td,th,h1,h2,p{overflow-wrap:anywhere}
.contradiction{border:2px solid #b00020;padding:0.5em 1em;background:#fff4f4}
tr.flagged td{background:#fff8e6}dt{font-family:monospace;margin-top:0.4em}dd{margin-left:1.5em}
"""


def _text(value: object, limit: int = MAX_TEXT) -> str:
    """`value` as safe HTML text: truncated to `limit` characters, bidi controls made visible, escaped."""
    text = str(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit:,} more characters)"
    return escape("".join(f"[U+{ord(c):04X}]" if ord(c) in _BIDI else c for c in text))


def render_html(
    report: AuditReport, policy: PolicyResult | None = None, signers: Sequence[str] = (), predicate: AuditPredicate | None = None,
) -> str:
    """The page for `report`; `signers` only when the caller verified them. A `policy` verdict is
    re-checked against `report` here, whoever passes it, and shown as contradicted if it does not hold.
    `predicate`, a v2 predicate holding `report`, adds its assurance level, harness and non-claims."""
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fimaudit report: {_text(report.model.reference, 120)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>fimaudit report</h1>{_provenance(report, signers)}",
        _summary_contradiction(report),
        f"<h2>What was claimed, by whom</h2>{_claims(report, predicate, signed=bool(signers))}",
        f"<h2>What this report does not claim</h2>{_non_claims(predicate)}",
        f"<h2>Summary</h2>{_summary(report)}{_bounds(report)}",
        _graph_bound(report),
        _policy(policy, report) if policy is not None else "",
        "<h2>Plots</h2>",
        _scatter(report.samples, report.config.confidence, _plotted_global_bound(report)),
        _histogram([s.epsilon_tau for s in report.samples if s.epsilon_tau is not None], report.config.tau),
        _plot_notes(report.samples),
        f"<h2>Samples</h2>{_flag_glossary(report.samples)}{_samples(report.samples, bounded=_any_local(report.samples))}",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _claims(report: AuditReport, predicate: AuditPredicate | None, *, signed: bool) -> str:
    """Assurance level, threat model, sample and harness: what a reviewer weighs the figures by."""
    threat, sample = threat_model(report), sample_info(report)
    # An unsigned predicate's level is only what its writer typed: nobody vouches for it.
    unsigned = "" if signed or predicate is None else " (unsigned here: nobody's signature vouches for this declaration)"
    rows = [
        ("assurance", _assurance(predicate) + unsigned),
        ("threat model", f"{threat.norm} perturbations of {threat.space}; tau = {threat.tau:g} nats ({threat.quantity})"),
        ("preprocessing", threat.preprocessing),
        ("sample", f"{sample.n} inputs, selection: {sample.selection}, of {sample.population_size} rows"),
        ("population", sample.population),
        *[("harness", line) for line in _harness(predicate)],
        *_compliance(predicate),
    ]
    problems = section_problems(predicate) if predicate is not None else []
    warning = f"<div class='contradiction'><p class='fail'>The predicate's sections contradict its report:</p>{_problem_list(problems)}</div>"
    return (warning if problems else "") + _rows(rows)


def _assurance(predicate: AuditPredicate | None) -> str:
    if predicate is None:
        return "not declared: a bare report or a v1 predicate states no assurance level"
    return f"{predicate.assurance}: {ASSURANCE_MEANINGS[predicate.assurance]}"


def _compliance(predicate: AuditPredicate | None) -> list[tuple[str, str]]:
    """The mapping's identifiers, one row each; for a report without a v2 predicate, this fimaudit's own."""
    compliance = predicate.compliance if predicate is not None else COMPLIANCE
    note = compliance.note if predicate is not None else f"{compliance.note} (not part of this report)"
    rows = [("compliance", f"{m.framework}: {m.provision}") for m in compliance.mapping]
    return [*rows, ("compliance note", f"{note} See {compliance.document}.")]


def _harness(predicate: AuditPredicate | None) -> list[str]:
    if predicate is None or predicate.harness is None:
        return ["not recorded (only signed v2 predicates record the installation that produced them)"]
    h = predicate.harness
    return [f"fimaudit {h.version} on Python {h.python}", *harness_names(h), *([h.adapter_note] if h.adapter_note else [])]


def _non_claims(predicate: AuditPredicate | None) -> str:
    """The signed non-claims of a v2 predicate; otherwise this fimaudit's, marked as not the report's own."""
    claims: Sequence[NonClaim] = predicate.non_claims if predicate is not None else NON_CLAIMS
    intro = ("<p>Signed with the figures:</p>" if predicate is not None else
             "<p class='note'>This report carries no non-claims of its own (a bare report or a v1 predicate); these are the "
             "limits this version of fimaudit states for every report.</p>")
    items = "".join(f"<li class='non-claim'><b>{_text(c.id)}</b>: {_text(c.statement, 1000)} <span class='note'>({_text(c.evidence)})</span></li>"
                    for c in claims)
    return f"{intro}<ul>{items}</ul>"


def _bounds(report: AuditReport) -> str:
    """Population bounds, when the report has them (summary.lambda_max_upper / epsilon_tau_lower)."""
    s = report.summary
    upper, lower = getattr(s, "lambda_max_upper", None), getattr(s, "epsilon_tau_lower", None)
    if upper is None and lower is None:
        return ""
    reasons = getattr(s, "bound_notes", None) or {}
    head = "<tr><th>population bound</th>" + "".join(f"<th>{q}</th>" for q in _QUANTILES) + "</tr>"
    rows = "".join(f"<tr><td>{name}</td>" + "".join(f"<td>{_bound_cell(values.get(q), reasons.get(q))}</td>" for q in _QUANTILES) + "</tr>"
                   for name, values in (("λ_max upper bound", upper), ("ε_τ lower bound", lower)) if values is not None)
    return f"<table class='bounds'>{head}{rows}</table><p class='note'>{_text(_bounds_note(s), 1000)}</p>"


_QUANTILES = ("p50", "p90", "p99")


def _graph_bound(report: AuditReport) -> str:
    """With audit --bound: the model's bound from its graph beside the estimates, the samples' local
    bounds, and the samples whose interval lies above their bound."""
    b = report.model.lambda_max_bound
    if b is None:
        return ""
    estimates = report.summary.lambda_max
    rows = [
        ("λ_max bound", _model_bound_text(b)),
        ("holds on", b.scope),
        ("method", b.method),
        ("estimated λ_max (for comparison)", f"median {_fmt(estimates.median)}, max {_fmt(estimates.max)}"),
        ("per-sample bounds", b.local),
    ]
    if b.lipschitz is not None:
        rows.insert(2, ("Lipschitz bound L of the logits", _fmt(b.lipschitz)))
    local = [s.lambda_max_bound.value for s in report.samples if s.lambda_max_bound is not None and s.lambda_max_bound.value is not None]
    if local:
        rows.append(("local bounds", f"median {_fmt(_median(local))}, max {_fmt(max(local))} (column 'bound' below)"))
    above = estimates_above_bound(report)
    warning = ""
    if above:
        listed = ", ".join(str(i) for i in above[:20]) + (", …" if len(above) > 20 else "")
        warning = (f"<p class='fail'>{len(above)} of {len(report.samples)} samples have an interval wholly above a bound that holds "
                   f"at their input (indices {_text(listed)}): their estimates carry an error larger than the interval says.</p>")
    return f"<h2>Bound from the graph</h2>{_rows(rows, 1000)}{warning}"


def _model_bound_text(b: ModelBound) -> str:
    if b.value is not None:
        return _fmt(b.value)
    op = f"operator {b.unsupported_operator}: " if b.unsupported_operator else ""
    return f"none ({op}{b.reason or 'not computed'})"


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _bound_cell(value: float | None, reason: str | None) -> str:
    # A null bound is a finding (too few inputs, or an unbounded radius): its reason is shown, not a blank.
    if value is not None:
        return _fmt(value)
    return f"none: {_text(reason)}" if reason else "none"


def _bounds_note(summary: object) -> str:
    confidence, method = getattr(summary, "bound_confidence", None), getattr(summary, "bound_method", None)
    parts = ["One-sided bounds on the quantiles of the population the inputs were drawn from (see population above)."]
    if confidence is not None:
        parts.append(f"Confidence {confidence:.0%}.")
    if method:
        parts.append(f"Method: {method}")
    return " ".join(parts)


def _rows(pairs: Sequence[tuple[str, str]], limit: int = MAX_TEXT) -> str:
    return "<table class='meta'>" + "".join(f"<tr><th>{_text(k)}</th><td>{_text(v, limit)}</td></tr>" for k, v in pairs) + "</table>"


def _provenance(report: AuditReport, signers: Sequence[str]) -> str:
    m, d = report.model, report.data
    signed = ", ".join(signers) if signers else "not verified here (render --key checks the signatures)"
    return _rows([
        ("model", m.reference), ("model sha256", m.sha256 or "endpoint (no file): see identity below"),
        ("adapter / provider", f"{m.adapter} / {m.provider or '-'}"),
        ("input", f"{m.input_shape} {m.input_dtype}, {m.classes} classes, outputs {m.output_kind}"),
        ("data", f"{d.source or '-'}: shape {d.shape}, {d.dtype}, sha256 {d.sha256}"),
        ("method", _method(report)),
        ("tool", f"{report.tool.name} {report.tool.version}"), ("signed by", signed),
        *[(f"identity: {k}", v) for k, v in sorted(m.extra.items()) if k != "fingerprint"],
    ])


def _method(report: AuditReport) -> str:
    c = report.config
    laws = f"{c.orthogonal_law} rows where orthogonal, {c.draws} elsewhere, {c.generator} generator"
    return (f"{c.estimator}, {c.directions} directions ({laws}), "
            f"{describe_scheme(report)}, {_step_rule(c)}, {c.confidence:.0%} interval: {c.interval_method}")


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
    return recheck(check, report.summary)


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


def _samples(samples: list[SampleResult], bounded: bool = False) -> str:
    names = ("index", "class", "confidence", "λ_max", "interval", *(("bound",) if bounded else ()), "ε_τ", "step (L2)", "method", "flags")
    head = "".join(f"<th>{h}</th>" for h in names)
    rows = "".join(_sample_row(s, bounded) for s in samples[:MAX_ROWS])
    more = f"<p class='note'>First {MAX_ROWS} of {len(samples)} samples; the JSON report holds all.</p>" if len(samples) > MAX_ROWS else ""
    note = ("<p class='note'>bound: an upper bound on λ_max from the model's graph over the L2 ball around the input whose radius is "
            "the step (L2) column (hover for the method); exact: λ_max at the input itself; -: none computed.</p>") if bounded else ""
    return f"{note}<table><tr>{head}</tr>{rows}</table>{more}"


def _sample_row(s: SampleResult, bounded: bool = False) -> str:
    """One sample's row, tinted when it carries a flag."""
    opening = "<tr class='flagged'>" if s.flags else "<tr>"
    bound = f"<td class='bound'>{_sample_bound(s.lambda_max_bound)}</td>" if bounded else ""
    return (
        f"{opening}<td>{s.index}</td><td>{s.predicted_class}</td><td>{_confidence(s.confidence)}</td><td>{_fmt(s.lambda_max)}</td>"
        f"<td>[{_fmt(s.lambda_max_ci[0])}, {_fmt(s.lambda_max_ci[1])}]</td>{bound}<td>{_fmt(s.epsilon_tau)}</td>"
        f"<td>{'-' if s.step_norm is None else _fmt(s.step_norm)}</td>"
        f"<td>{_text(s.method)}</td><td>{_text(', '.join(s.flags))}</td></tr>"
    )


def _sample_bound(b: SampleBound | None) -> str:
    """A sample's local bound, with where it holds (hover for the method); '-' where none was computed."""
    if b is None:
        return "-"
    if b.value is None:
        op = f"{b.unsupported_operator}: " if b.unsupported_operator else ""
        return f"<span title='{_text(b.method)}'>none ({_text(op + (b.reason or ''), 120)})</span>"
    where = "exact at x" if b.exact else f"on the ball of radius {b.radius:.4g}"
    return f"<span title='{_text(where + ': ' + b.method)}'>{_fmt(b.value)}</span>" + (" <span class='note'>(exact)</span>" if b.exact else "")


def _confidence(p: float) -> str:
    """The top probability, written so that one under 1 never reads as 1.0000."""
    if p >= 1:
        return "1 exactly"
    return f"{p:.4f}" if 1 - p >= 1e-4 else f"1 − {1 - p:.2g}"


def _flag_glossary(samples: list[SampleResult]) -> str:
    """What each flag that some sample carries means, and how many carry it."""
    counts = Counter(f for s in samples for f in s.flags)
    if not counts:
        return "<p class='note'>No sample carries a flag.</p>"
    items = "".join(
        f"<dt>{_text(flag)} ({n} of {len(samples)})</dt><dd>{_text(FLAG_MEANINGS.get(flag, 'not described by this version'))}</dd>"
        for flag, n in sorted(counts.items())
    )
    return f"<p>Flagged rows are tinted. What the flags mean:</p><dl>{items}</dl>"


def _plot_notes(samples: list[SampleResult]) -> str:
    """What the plots cannot show by position alone: inputs at the floor, and unbounded radii."""
    notes = ["Hover a point for its figures, a bar for its count."]
    floored = sum(_floored(s) for s in samples)
    if floored:
        notes.append(
            f"{floored} of {len(samples)} inputs have confidence 1.0 at the output's precision: 1 − p is 0 (or under "
            f"{FLOOR:g}), which a log axis cannot place, so they are drawn open at 0, left of the break in the x axis."
        )
    unbounded = sum(s.epsilon_tau is None for s in samples)
    if unbounded:
        notes.append(f"{unbounded} inputs with λ_max = 0 have no finite ε_τ and are not in the histogram.")
    return f"<p class='note'>{' '.join(notes)}</p>"


# --------------------------------------------------------------------------- plots (SVG)

RIGHT = 24  # pixels right of the plot area: room for the last x tick label, centred on the plot's edge
TOP, BOTTOM = MARGIN / 2, HEIGHT - MARGIN  # the plot area's top and bottom
FLOOR = 1e-12  # 1 − p below this is confidence 1.0 at the output's precision: drawn open at 0, off the log axis
STRIP, STRIP_AT = 36, 10  # pixels: the width of the strip at 0 left of the log axis, and where in it the points go
MIN_BAR = 10.0  # pixels: a shorter interval is drawn this long, centred, so it shows past its dot
CAP = 3.0  # pixels: half the width of an interval bar's end caps
TICK_GAP = 34.0  # pixels: the least distance between two x tick labels; decades between go unlabelled
LEGEND_ROW = 16
BOUND_COLOUR = "#444"
GLOBAL_SPAN = 100.0  # the global bound is drawn when at most this many times the largest interval end or local bound
COLOURS = {"clean": "#1f5fa8", "below_resolution": "#b00020", "flagged": "#d97706"}
LEGEND_TEXT = {
    "clean": "no flag",
    "below_resolution": "below_resolution (λ_max is an upper bound)",
    "flagged": "other flags (see the table)",
}
Tick = tuple[float, str]  # a tick's pixel and its label ("" for a gridline alone)


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

    def ticks(self) -> list[Tick]:
        """A gridline at every decade; labels at every one, or every n-th where they would collide."""
        every = max(1, math.ceil(TICK_GAP * (self.high - self.low) / abs(self.stop - self.start)))
        return [(self(10.0**e), f"1e{e}" if (e - self.low) % every == 0 else "") for e in range(self.low, self.high + 1)]


def _frame(title: str, xlabel: str, ylabel: str, xticks: list[Tick], yticks: list[Tick], height: int = HEIGHT) -> list[str]:
    """An SVG's opening, titles, gridlines, tick labels and axes; the caller adds marks and closes it."""
    size = f"width='{WIDTH}' height='{height}' viewBox='0 0 {WIDTH} {height}'"
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' {size} role='img' aria-label='{escape(title)}'>",
        f"<text x='{WIDTH / 2}' y='16' text-anchor='middle' font-size='13'>{escape(title)}</text>",
        f"<text x='{WIDTH / 2}' y='{HEIGHT - 6}' text-anchor='middle' font-size='12'>{escape(xlabel)}</text>",
        f"<text x='12' y='{HEIGHT / 2}' transform='rotate(-90 12 {HEIGHT / 2})' text-anchor='middle' font-size='12'>{escape(ylabel)}</text>",
    ]
    for px, label in xticks:
        out.append(f"<line x1='{px:.1f}' y1='{TOP}' x2='{px:.1f}' y2='{BOTTOM}' stroke='#eee'/>")
        if label:
            out.append(f"<text class='xtick' x='{px:.1f}' y='{BOTTOM + 16}' text-anchor='middle' font-size='11'>{label}</text>")
    for py, label in yticks:
        out.append(f"<line x1='{MARGIN}' y1='{py:.1f}' x2='{WIDTH - RIGHT}' y2='{py:.1f}' stroke='#eee'/>")
        if label:
            out.append(f"<text class='ytick' x='{MARGIN - 4}' y='{py + 4:.1f}' text-anchor='end' font-size='11'>{label}</text>")
    out.append(f"<path class='axis' d='M{MARGIN} {TOP}V{BOTTOM}H{WIDTH - RIGHT}' fill='none' stroke='#999'/>")
    return out


def _kind(s: SampleResult) -> str:
    """How a sample's point is coloured: by its flags, below_resolution first."""
    if "below_resolution" in s.flags:
        return "below_resolution"
    return "flagged" if s.flags else "clean"


def _floored(s: SampleResult) -> bool:
    return 1 - s.confidence < FLOOR


def _plotted_global_bound(report: AuditReport) -> float | None:
    """The model's bound from its graph where it holds at every input and lies within GLOBAL_SPAN of the
    largest estimate (further up, a line would squash the points into the bottom of the plot)."""
    b = report.model.lambda_max_bound
    top = max([s.lambda_max_ci[1] for s in report.samples] + _local_bounds(report.samples), default=0.0)
    if b is None or b.value is None or b.scope != ALL_INPUTS or not top > 0 or b.value > GLOBAL_SPAN * top:
        return None
    return b.value


def _scatter(samples: list[SampleResult], confidence: float, global_bound: float | None = None) -> str:
    """λ_max (with its interval) against 1 − top probability: how much sensitivity is confidence.
    Inputs whose 1 − p is under FLOOR (confidence 1.0) have no place on a log axis: they are drawn
    open in a strip at 0, left of a break in the axis, so that they do not stretch it."""
    floored = any(_floored(s) for s in samples)
    x = _LogAxis([1 - s.confidence for s in samples if not _floored(s)], MARGIN + (STRIP if floored else 0), WIDTH - RIGHT)
    lams = [s.lambda_max for s in samples] + [s.lambda_max_ci[1] for s in samples] + [s.lambda_max_ci[0] for s in samples]
    y = _LogAxis(lams + _local_bounds(samples) + ([global_bound] if global_bound is not None else []), BOTTOM, TOP)
    legend = _legend_entries(samples, confidence)
    if global_bound is not None:
        legend.append(("global", f"bound at every input from the graph: {_fmt(global_bound)}"))
    xticks = [(MARGIN + STRIP_AT, "0"), *x.ticks()] if floored else x.ticks()
    out = _frame("λ_max per input (bars: interval)", "1 − top probability", "λ_max", xticks, y.ticks(),
                 HEIGHT + 6 + LEGEND_ROW * len(legend))
    if floored:
        out.append(_axis_break(MARGIN + (STRIP + STRIP_AT) / 2))
    if global_bound is not None:
        out.append(f"<line class='global-bound' x1='{MARGIN}' y1='{y(global_bound):.1f}' x2='{WIDTH - RIGHT}' y2='{y(global_bound):.1f}' "
                   f"stroke='{BOUND_COLOUR}' stroke-dasharray='5 3'/>")
    for s in samples:
        out += _point(s, MARGIN + STRIP_AT if _floored(s) else x(1 - s.confidence), y)
    out.append(_legend(legend))
    return "".join(out) + "</svg>"


def _axis_break(px: float) -> str:
    """Two slashes across the x axis: the strip at 0 is not on the log scale."""
    return (f"<rect x='{px - 5:.1f}' y='{BOTTOM - 6}' width='10' height='12' fill='white'/>"
            f"<path class='axis-break' d='M{px - 5:.1f} {BOTTOM + 5}l4 -10M{px + 1:.1f} {BOTTOM + 5}l4 -10' stroke='#999'/>")


def _point(s: SampleResult, px: float, y: _LogAxis) -> list[str]:
    """One sample: its interval bar, its local bound (audit --bound) if any, then its dot (open when
    its confidence is at the floor)."""
    colour = COLOURS[_kind(s)]
    low, high = s.lambda_max_ci
    bound = _local_bound(s)
    tip = (f"input {s.index}: λ_max {_fmt(s.lambda_max)} [{_fmt(low)}, {_fmt(high)}]"
           + (f", bound {_fmt(bound)}" if bound is not None else "")
           + f", confidence {_confidence(s.confidence)}, flags: {', '.join(s.flags) or 'none'}")
    dot = (f"<circle class='sample' cx='{px:.1f}' cy='{y(s.lambda_max):.1f}' r='2.5' "
           f"fill='{'white' if _floored(s) else colour}' stroke='{colour}'><title>{_text(tip)}</title></circle>")
    marks = [] if bound is None else [_bound_mark(px, y(bound))]
    return [*_bar(px, y(low), y(high), colour), *marks, dot]


def _any_local(samples: Sequence[SampleResult]) -> bool:
    """Whether some sample has a local bound (computed, or null with its reason): the table's bound column."""
    return any(s.lambda_max_bound is not None for s in samples)


def _local_bound(s: SampleResult) -> float | None:
    return s.lambda_max_bound.value if s.lambda_max_bound is not None else None


def _local_bounds(samples: Sequence[SampleResult]) -> list[float]:
    return [v for s in samples if (v := _local_bound(s)) is not None]


def _bound_mark(px: float, py: float) -> str:
    """A sample's local bound: a small downward triangle whose flat top sits at the bound (a ceiling)."""
    return (f"<path class='bound' d='M{px - 4:.1f} {py:.1f}H{px + 4:.1f}L{px:.1f} {py + 5:.1f}Z' "
            f"fill='none' stroke='{BOUND_COLOUR}'/>")


def _bar(px: float, bottom: float, top: float, colour: str) -> list[str]:
    """An interval bar with end caps, drawn at least MIN_BAR long (centred) so a narrow one stays visible."""
    if bottom - top < MIN_BAR:
        middle = (bottom + top) / 2
        bottom, top = middle + MIN_BAR / 2, middle - MIN_BAR / 2
    caps = "".join(f"M{px - CAP:.1f} {py:.1f}H{px + CAP:.1f}" for py in (bottom, top))
    style = f"stroke='{colour}' stroke-opacity='0.6'"
    return [
        f"<line class='ci' x1='{px:.1f}' y1='{bottom:.1f}' x2='{px:.1f}' y2='{top:.1f}' {style}/>",
        f"<path class='ci-cap' d='{caps}' {style}/>",
    ]


def _legend_entries(samples: list[SampleResult], confidence: float) -> list[tuple[str, str]]:
    """(marker kind, text) for each kind of point drawn, the floor if used, and the interval bars."""
    kinds = {_kind(s) for s in samples}
    entries = [(kind, LEGEND_TEXT[kind]) for kind in COLOURS if kind in kinds]
    if any(_floored(s) for s in samples):
        entries.append(("floored", f"open, at 0: confidence 1.0 (1 − p under {FLOOR:g})"))
    entries.append(("interval", f"{confidence:.0%} interval (drawn at least {MIN_BAR:g} px long)"))
    if _local_bounds(samples):
        entries.append(("bound", "local upper bound on λ_max from the graph (audit --bound)"))
    return entries


def _marker(kind: str, x: float, y: float) -> str:
    if kind == "global":
        return f"<path d='M{x - 6} {y}H{x + 6}' stroke='{BOUND_COLOUR}' stroke-dasharray='5 3'/>"
    if kind == "bound":
        return _bound_mark(x, y - 3)
    if kind == "interval":
        return f"<path d='M{x - CAP} {y - 5}H{x + CAP}M{x} {y - 5}V{y + 5}M{x - CAP} {y + 5}H{x + CAP}' stroke='#555'/>"
    colour = COLOURS.get(kind, "#555")
    fill = "white" if kind == "floored" else colour
    return f"<circle cx='{x}' cy='{y}' r='3' fill='{fill}' stroke='{colour}'/>"


def _legend(entries: list[tuple[str, str]]) -> str:
    rows = []
    for i, (kind, text) in enumerate(entries):
        y = HEIGHT + 6 + LEGEND_ROW * i
        rows.append(f"{_marker(kind, MARGIN + 4, y)}<text x='{MARGIN + 14}' y='{y + 4}' font-size='11'>{escape(text)}</text>")
    return f"<g class='legend'>{''.join(rows)}</g>"


def _count_step(top: int) -> int:
    """The least of 1, 2, 5, 10, 20, 50, ... that spans `top` in at most 5 steps."""
    for power in itertools.count():
        for mantissa in (1, 2, 5):
            if math.ceil(top / (mantissa * 10**power)) <= 5:
                return mantissa * 10**power
    raise AssertionError("unreachable")


def _count_ticks(top: int) -> list[int]:
    """0 and at least two more evenly spaced counts, the last at or above `top`."""
    step = _count_step(top)
    return [i * step for i in range(max(math.ceil(top / step), 2) + 1)]


def _histogram(radii: list[float], tau: float, bins: int = 30) -> str:
    """How many inputs have each certified radius ε_τ (log-spaced bins)."""
    x = _LogAxis(radii, MARGIN, WIDTH - RIGHT)
    edges = [10 ** (x.low + (x.high - x.low) * i / bins) for i in range(bins + 1)]
    counts = [sum(lo <= r < hi or (i == bins - 1 and r == hi) for r in radii) for i, (lo, hi) in enumerate(itertools.pairwise(edges))]
    ticks = _count_ticks(max(counts, default=0))
    scale = (BOTTOM - TOP) / ticks[-1]
    yticks = [(BOTTOM - t * scale, str(t)) for t in ticks]
    out = _frame(f"ε_τ per input (τ = {tau:g})", "ε_τ (input units, L2)", "inputs", x.ticks(), yticks)
    for (lo, hi), n in zip(itertools.pairwise(edges), counts):
        height = n * scale
        out.append(f"<rect class='bin' x='{x(lo):.1f}' y='{BOTTOM - height:.1f}' width='{max(x(hi) - x(lo) - 1, 1):.1f}' "
                   f"height='{height:.1f}' fill='#4c8c4a'><title>{n} inputs: ε_τ in [{lo:.3g}, {hi:.3g})</title></rect>")
    return "".join(out) + "</svg>"
