"""`fimaudit plan`: how many inputs an audit needs to bound a population quantile, and what it costs.

The numbers come from the same functions the report's bounds use (fimaudit/bounds.py); the query
cost from the estimators' own constants, as a range per input: the step pilot stops early or late,
the exact mode takes 1 to 3 passes, and the witness is measured only where it can say something.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import typer
from rich.markup import escape

from fimaudit.bounds import QUANTILES, allowed_exceedances, effective_level, inputs_needed
from fimaudit.cli.app import app, errors_to_exit_codes, out
from fimaudit.cli.audit import load_model_or_explain, model_options, parse_shape
from fimaudit.differences import PILOT_DIRECTIONS, PILOT_STEPS, SCHEME_OPTIONS
from fimaudit.errors import UsageError
from fimaudit.estimators import COORDINATE_PASSES, ESTIMATOR_NAMES, WITNESS_MAX_ENTRIES, WITNESS_MIN_RATIO, EstimatorConfig

BASE_QUERIES = 2  # the input itself, twice (estimators.estimate_sample)


@dataclass(frozen=True)
class QueryCost:
    """Queries one input costs, as the estimator spends them: [low, high]."""

    method: str
    directions: int
    low: int
    high: int
    witness: bool


def queries_per_input(d: int, classes: int, *, directions: int, scheme: str = "auto", estimator: str = "auto") -> QueryCost:
    """The range of queries estimators.estimate_sample spends on one input of d coordinates (auto's forward
    samples spend 2K queries on 2K directions, as its central ones do on K: the same)."""
    cfg = EstimatorConfig(directions=directions, step=1.0, scheme=scheme, estimator=estimator)  # type: ignore[arg-type]
    per = cfg.queries_per_direction()
    method = cfg.resolve(d)
    k = d if method == "exact" else directions
    # The pilot measures its directions at 1 step (nothing smaller resolves) up to PILOT_STEPS.
    pilot = (PILOT_DIRECTIONS * per, PILOT_DIRECTIONS * per * PILOT_STEPS)
    body = (d * per, d * per * COORDINATE_PASSES) if method == "exact" else (k * per, k * per)
    witness = d * classes <= WITNESS_MAX_ENTRIES and k * WITNESS_MIN_RATIO >= d
    check = (per, 2 * per) if witness else (0, 0)  # the witness direction, and its check at h/4 when it resolves
    low = BASE_QUERIES + pilot[0] + body[0] + check[0]
    high = BASE_QUERIES + pilot[1] + body[1] + check[1]
    return QueryCost(method, k, low, high, witness)


def _quantile_name(q: float) -> str:
    named = {v: k for k, v in QUANTILES.items()}
    return named.get(q, f"the {q:g}-quantile")


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _percent(x: float) -> str:
    return f"{x * 100:.4g}%"


def describe_sample_size(q: float, confidence: float, exceedances: int) -> tuple[int, list[str]]:
    """(inputs needed, the lines that explain it)."""
    miss = 1.0 - confidence
    n = inputs_needed(q, confidence, miss, exceedances)
    exact = inputs_needed(q, confidence, 0.0, exceedances)
    r = allowed_exceedances(n, q, confidence, miss)
    name = _quantile_name(q)
    order = "the largest" if r == 0 else f"the {_ordinal(int(r or 0) + 1)} largest"
    return n, [
        f"To bound {name} of lambda_max (and the matching epsilon_tau) at {_percent(confidence)} confidence"
        f"{'' if exceedances == 0 else f' with {exceedances} inputs allowed above the bound'}:",
        f"  inputs needed: {n}  (drawn at random from the population the bound is about)",
        f"  the bound is then {order} of the {n} inputs' interval upper ends.",
        f"  {exact} would do if each lambda_max were known exactly; each input's {_percent(confidence)} interval may miss "
        f"its own value with probability up to {_percent(miss)}, which raises the level counted from {q:g} to "
        f"{effective_level(q, miss):.6g} (docs/math.md, Population bounds).",
    ]


def describe_cost(n: int, reference: str, d: int, classes: int, cost: QueryCost) -> list[str]:
    mode = ("exact coordinate mode" if cost.method == "exact" else f"sketch, {cost.directions} directions")
    witness = "with" if cost.witness else "without"
    return [
        f"Model {reference}: d = {d}, {classes} classes; {mode}, {witness} the witness direction.",
        f"  queries per input: {cost.low} to {cost.high}",
        f"  for {n} inputs: {n * cost.low:,} to {n * cost.high:,} queries",
    ]


@app.command()
def plan(
    quantile: float = typer.Option(0.9, "--quantile", metavar="Q", help="Population quantile to bound, in (0, 1): 0.5, 0.9, 0.99 are in every report."),
    confidence: float = typer.Option(
        0.95, "--confidence", metavar="C", help="Confidence of the bound (the audit's; its per-input intervals use the same).",
    ),
    exceedances: int = typer.Option(
        0, "--exceedances", metavar="R", min=0,
        help="Inputs allowed above the bound: more inputs, but a bound less driven by the single worst one.",
    ),
    model: Optional[str] = typer.Option(None, "--model", metavar="MODEL", help="Model file or endpoint: also print the expected query cost."),
    directions: int = typer.Option(256, "--directions", metavar="K", min=2, help="Directions per input, as given to audit."),
    scheme: str = typer.Option("auto", "--scheme", metavar="SCHEME", help="auto, central, forward or richardson, as given to audit."),
    estimator: str = typer.Option("auto", "--estimator", metavar="NAME", help="auto, sketch or exact, as given to audit."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", metavar="SHAPE", help="Shape of one input, for models that do not record it."),
) -> None:
    """Print the number of inputs an audit needs to bound a quantile of lambda_max, and with --model its query cost."""
    with errors_to_exit_codes():
        _check(quantile, confidence, scheme, estimator)
        n, lines = describe_sample_size(quantile, confidence, exceedances)
        if model is not None:
            options = model_options(None, None, None, None)
            if input_shape is not None:
                options["input_shape"] = parse_shape(input_shape)
            loaded = load_model_or_explain(model, options)
            try:
                d, classes = loaded.input_spec.size, loaded.num_classes
            finally:
                loaded.close()
            cost = queries_per_input(d, classes, directions=directions, scheme=scheme, estimator=estimator)
            lines += describe_cost(n, model, d, classes, cost)
        for line in lines:
            out.print(escape(line), soft_wrap=True)


def _check(quantile: float, confidence: float, scheme: str, estimator: str) -> None:
    problems = [
        (not 0 < quantile < 1, f"--quantile must be in (0, 1) (got {quantile!r})", "e.g. --quantile 0.9 for p90"),
        (not 0.5 <= confidence < 1, f"--confidence must be in [0.5, 1) (got {confidence!r})", "e.g. --confidence 0.95"),
        (scheme not in SCHEME_OPTIONS, f"unknown --scheme {scheme!r}", "auto, central, forward or richardson"),
        (estimator not in ESTIMATOR_NAMES, f"unknown --estimator {estimator!r}", "auto, sketch or exact"),
    ]
    for bad, message, fix in problems:
        if bad:
            raise UsageError(message, fix)
