"""The audit report: pydantic models whose JSON Schema is published as docs/report.schema.json."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fimaudit.bounds import METHOD as BOUND_METHOD
from fimaudit.bounds import QUANTILES, epsilon_lower, inputs_needed, quantile_bounds
from fimaudit.adapter import ProbabilityModel
from fimaudit.errors import DataError
from fimaudit.estimators import SampleEstimate
from fimaudit.lipschitz_bound import ALL_INPUTS, Bound

SCHEMA_VERSION = "1.8"


# One line on each diagnostic flag a sample (or the model) can carry: printed after an audit, listed
# in the HTML page, and summarised in SampleResult.flags' description.
FLAG_MEANINGS: dict[str, str] = {
    "step_unconverged": "No two successive finite-difference steps agreed (kinks, ties, rounding): "
    "the interval is widened by their disagreement.",
    "step_nonlocal": "The step's L2 norm exceeds epsilon_tau/10: the estimate is a secant over a region where the model may not be linear.",
    "nondifferentiable": "The model has no derivative at the input (max-pool ties, ReLUs at exactly 0): "
    "the figure is the average one-sided slope's, and the interval spans both sides.",
    "batch_dependent": "An input's outputs depended on the other inputs of its batch (e.g. dynamic quantization): queried one input per request.",
    "below_resolution": "Nothing measurable above the output's rounding: lambda_max is that level, an upper bound.",
    "saturated": "The top probability is exactly 1 at the output precision; only the other classes' changes are seen.",
    "quantized_outputs": "Outputs are rounded or on a grid: differences below the grid step are invisible.",
    "nondeterministic": "The same input gave different outputs: their noise floor limits the estimate.",
    "zero_probabilities": "Some classes are reported as exactly 0 (e.g. top-k outputs): their share of F is bounded, not measured.",
    "radius_exceeds_input": "epsilon_tau is larger than the input's own L2 norm: no perturbation of the input's size "
    "reaches the KL budget, so the radius says little beyond 'insensitive here'.",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolInfo(_Model):
    name: str = "fimaudit"
    version: str


class ModelBound(_Model):
    """An upper bound on lambda_max(F) at every input, from the model's graph and weights (audit --bound;
    docs/math.md, "Bounds from the graph"). Schema 1.5."""

    value: float | None = Field(
        description="An upper bound on lambda_max(F(x)) at every input x in scope; null where the bound cannot be computed: "
        "an operator without a certified rule (named in unsupported_operator), or a graph that cannot be read. Never a guess."
    )
    scope: str = Field(description="Where value holds: 'all inputs', or a stated input domain such as 'inputs with ||x||_2 <= R'.")
    method: str = Field(description="How it was computed, and the last step's rule (1/2 L^2, or the last linear layer's row rule).")
    lipschitz: float | None = Field(default=None, description="The bound L on the logit map's Lipschitz constant (||J_z||_2) it came from.")
    unsupported_operator: str | None = Field(default=None, description="Where value is null: the first operator met that the bound cannot handle.")
    reason: str | None = Field(default=None, description="Where value is null: why, in words.")
    local: str = Field(description="What the samples' lambda_max_bound hold, or why they have none.")

    @classmethod
    def of(cls, bound: Bound, local: str) -> ModelBound:
        return cls(value=bound.value, scope=bound.scope, method=bound.describe(), lipschitz=bound.lipschitz,
                   unsupported_operator=bound.unsupported_op, reason=bound.reason, local=local)


class SampleBound(_Model):
    """An upper bound on lambda_max(F) around one audited input, from the model's graph and weights
    (audit --bound). Schema 1.5."""

    value: float | None = Field(
        description="An upper bound on lambda_max(F(x')) at every x' with ||x' - x||_2 <= radius, x this input: so on the "
        "true lambda_max(F(x)) that lambda_max estimates. Null where it cannot be computed (see unsupported_operator, reason)."
    )
    radius: float = Field(
        description="The L2 radius of the ball around the input where value holds: the sample's step_norm, the length of its "
        "finite-difference perturbations (0: at the input only)."
    )
    exact: bool = Field(default=False, description="True when value is lambda_max(F(x)) itself (radius 0, differentiable at x), not a bound.")
    method: str = Field(description="How it was computed.")
    unsupported_operator: str | None = Field(default=None, description="Where value is null: the operator the bound cannot handle.")
    reason: str | None = Field(default=None, description="Where value is null: why, in words.")

    @classmethod
    def of(cls, bound: Bound, radius: float) -> SampleBound:
        return cls(value=bound.value, radius=radius, exact=bound.exact, method=bound.describe(),
                   unsupported_operator=bound.unsupported_op, reason=bound.reason)


class ModelInfo(_Model):
    reference: str = Field(description="The model reference as given: file path or URL.")
    adapter: str
    sha256: str | None = Field(description="sha256 of the model file (or manifest); null for endpoints.")
    input_shape: list[int] = Field(description="Shape of one input, without the batch axis.")
    input_dtype: str
    classes: int
    provider: str | None = Field(description="Execution provider or server that ran the model.")
    output_kind: Literal["probabilities", "logits", "sigmoid"] = Field(
        description="What the model outputs; logits are softmaxed in float64 by fimaudit."
    )
    extra: dict[str, str] = Field(default_factory=dict)
    lambda_max_bound: ModelBound | None = Field(
        default=None, description="With audit --bound: an upper bound on lambda_max at every input, from the model's graph and "
        "weights; null when not asked for (and in reports before schema 1.5).",
    )

    @classmethod
    def of(cls, model: ProbabilityModel) -> ModelInfo:
        """What the report says about `model`: its identity and what it takes and returns."""
        ident = model.identity
        return cls(
            reference=ident.reference, adapter=ident.adapter, sha256=ident.sha256,
            input_shape=list(model.input_spec.shape), input_dtype=model.input_spec.dtype,
            classes=model.num_classes, provider=ident.provider, output_kind=model.output_kind, extra=dict(ident.extra),
        )


class SkippedInput(_Model):
    name: str = Field(description="The file, relative to the image folder.")
    reason: str = Field(description="Why it could not be read.")


class Selection(_Model):
    """Which rows of the data file were audited, when not all of them: the population the
    summary's figures (and their bounds) speak for is the whole file, through this rule."""

    rule: Literal["random", "first"] = Field(
        description="random: --sample N, drawn uniformly without replacement, committed by the seed and the file's "
        "digest; first: --limit N, the first N rows (not a random sample: bounds then assume the file's order is random)."
    )
    method: str = Field(description="How the rows were chosen, exactly enough to redo it.")
    population_size: int = Field(description="Rows in the whole data file (after unreadable images were skipped).")
    population_sha256: str = Field(description="sha256 of the whole data file's array, C-order bytes as loaded: it seeds the draw.")
    seed: int | None = Field(description="random: the audit seed that, with population_sha256, seeded the draw; null for first.")
    indices_sha256: str = Field(description="sha256 of the audited row indices in decimal, comma-separated, ascending.")
    indices: list[int] | None = Field(
        description="random: the audited rows, ascending (always listed: the report holds one sample per row "
        "anyway, so the list adds under 1% to its size); null for first (they are 0..N-1)."
    )


class ReproducedSample(_Model):
    index: int
    lambda_max: float = Field(description="As recorded in the reproduced report.")
    lambda_max_reproduced: float = Field(description="As re-computed from the model with the recorded configuration.")
    deviation: float = Field(description="|reproduced - recorded| / recorded: 0 when bit-identical.")
    tolerance: float = Field(description="The largest deviation accepted for this sample (see Reproduction.tolerance).")
    identical: bool = Field(description="Every figure of the sample re-computed equal (to 1e-9 relative), step and flags included.")
    matches: bool


class Reproduction(_Model):
    """A third party's re-computation of some of a report's samples (`fimaudit reproduce`)."""

    reproduced: bool = Field(description="True when every re-computed sample matches within its tolerance.")
    tolerance: str = Field(description="The rule each sample's lambda_max was held to.")
    samples: list[ReproducedSample] = Field(description="The re-computed samples, chosen at random from OS entropy.")
    population: int = Field(description="Samples in the report, of which these were chosen.")
    max_deviation: float = Field(description="The largest relative deviation of lambda_max over the re-computed samples.")
    identical: bool = Field(description="True when every re-computed sample was identical (this platform gave the same bits).")
    model_check: Literal["sha256", "fingerprint", "none"] = Field(
        description="How the model was identified as the audited one before any query: its file digest, an endpoint's "
        "answers on its recorded fingerprint probes, or not at all (a model held in memory: the re-computation is then the only check)."
    )
    original_sha256: str = Field(
        description="sha256 of what was reproduced: the DSSE payload (the signed statement's bytes) of a signed report, "
        "the file's bytes of an unsigned one, or the report's JSON when it was given as an object."
    )
    original_signers: list[str] = Field(default_factory=list, description="keyids whose signatures on the original were verified.")
    tool: ToolInfo = Field(description="The fimaudit that reproduced it.")
    platform: str = Field(description="Where it was reproduced: OS, machine, Python and numpy versions.")


class DataInfo(_Model):
    sha256: str = Field(description="sha256 of the audited array's C-order bytes, as loaded (the chosen rows only, with a selection).")
    shape: list[int]
    dtype: str
    source: str | None = None
    files: list[str] | None = Field(
        default=None, description="For an image folder: files[j] is the file of samples[j], relative to the folder "
        "(the sample with index j when the whole folder was audited).",
    )
    skipped: list[SkippedInput] | None = Field(
        default=None, description="Unreadable files left out by --skip-unreadable; null when none was skipped or asked to be."
    )
    selection: Selection | None = Field(
        default=None, description="How the audited rows were chosen from the data file (--sample, --limit); null when all were audited."
    )
    population: str | None = Field(
        default=None, description="What the summary's figures speak for: the inputs they are a sample of, in words."
    )


class AuditConfig(_Model):
    estimator: Literal["auto", "sketch", "exact"]
    directions: int
    step: float = Field(
        description="Finite-difference step h, in input units (RMS per coordinate): where each sample's step "
        "search starts, or the step every sample uses when it was given. Each sample records its own."
    )
    step_rule: str | None = Field(default=None, description="How each sample's step was chosen.")
    step_relative: float | None = Field(description="h divided by the data's standard deviation, when h was derived from it.")
    scheme: Literal["auto", "central", "forward", "richardson"] = Field(
        description="Finite differences asked for; auto: each sample chooses forward or central (SampleResult.scheme)."
    )
    seed: int
    tau: float = Field(description="KL budget (nats) defining epsilon_tau = sqrt(2 tau / lambda_max).")
    bootstrap: int
    confidence: float
    draws: Literal["rademacher", "gaussian"] = Field(
        default="gaussian",
        description="Law of the sketch's random directions where orthogonal groups do not apply: rademacher (random "
        "signs, the default since fimaudit 0.3) or gaussian (reports from earlier versions, which lack this field).",
    )
    generator: Literal["numpy", "counter"] = Field(
        default="numpy",
        description="Generator of the sign directions: numpy (PCG64 bits, inputs formed on the host; reports before "
        "schema 1.6) or counter (a counter hash, inputs formed where the model runs: fimaudit.perturbations). "
        "A report reproduces with its own generator on any machine.",
    )
    centred_forward: bool = Field(
        default=False,
        description="Whether forward-difference sketches (--scheme forward, or auto's forward samples) used their JVPs "
        "less their mean, which removes the mean of the even part that biases them (schema 1.7 on; earlier reports "
        "used them as measured, and reproduce that way).",
    )
    orthogonal_law: Literal["cosine", "haar"] = Field(
        default="haar",
        description="How orthogonal directions (where k >= d/16) were drawn: cosine (rows of a random-sign DCT basis, "
        "schema 1.8 on) or haar (Haar-distributed groups by CholeskyQR of Gaussian blocks: earlier reports, which "
        "lack this field and reproduce that way).",
    )
    interval_method: str
    input_space: str = Field(description="Units all figures are in: the model's own input space.")
    white_box: bool = Field(default=False, description="Whether white-box figures were computed beside the black-box ones.")


class StepTrial(_Model):
    step: float
    lambda_pilot: float = Field(description="lambda_max over the directions measured at this step (rough for a pilot of 3).")
    directions: int = Field(default=1, description="Directions measured at this step: the pilot's, or all d coordinates.")


class SchemeEvidence(_Model):
    """Why a sample's sketch used the scheme it did (--scheme auto; docs/math.md, "Forward or central")."""

    one_sided: float | None = Field(
        description="||D+ - D-|| / ||D+ + D-|| of the pilot's one-sided quotients at the step used: forward's relative JVP bias."
    )
    one_sided_spread: float | None = Field(
        default=None,
        description="The same with D+ - D- less its mean over the pilot's directions: the part centred forward JVPs keep "
        "(null in reports before schema 1.7).",
    )
    pilot_rank: float | None = Field(description="The pilot's stable rank (tr / lambda_max of its JVPs, at least 1) at that step.")
    forward_bias: float | None = Field(
        description="Bound on forward differences' relative upward bias of lambda_max here: one_sided_spread^2 * pilot_rank "
        "(one_sided^2 * pilot_rank before schema 1.7, whose forward JVPs were not centred)."
    )
    limit: float | None = Field(description="The largest forward_bias auto accepts: 0.25 / sqrt(directions budget).")
    reason: str = Field(description="The decision in words.")


class SampleResult(_Model):
    index: int
    predicted_class: int
    confidence: float
    lambda_max: float = Field(description="Estimated spectral norm of the input Fisher information.")
    lambda_max_ci: tuple[float, float]
    lambda_max_raw: float = Field(description="lambda_max before bias correction.")
    lambda_lower: float | None = Field(description="Rayleigh quotient along a witnessed direction: a lower bound.")
    lambda_lower_loose: bool | None = Field(description="True when the lower bound is under half the estimate.")
    trace: float = Field(description="Hutchinson (or exact) trace of F.")
    stable_rank: float | None
    epsilon_tau: float | None = Field(description="sqrt(2 tau / lambda_max); null when lambda_max is 0.")
    queries: int
    method: Literal["sketch", "exact"]
    directions: int
    directions_kind: Literal["orthogonal", "gaussian", "rademacher", "coordinate"]
    lambda_max_resolution: float = Field(
        description="Level below which lambda_max cannot be measured with this step and output resolution."
    )
    flags: list[str] = Field(
        description="What limited the measurement: nondeterministic, quantized_outputs, saturated, "
        "zero_probabilities, below_resolution (then lambda_max is that level, an upper bound), "
        "batch_dependent (the model's outputs depended on the rest of the batch: queried one input per request), "
        "step_unconverged (no two successive steps agreed: the interval is widened by their disagreement), "
        "step_nonlocal (the step's L2 norm exceeds epsilon_tau / 10), nondifferentiable (the one-sided difference "
        "quotients disagree at every step: max-pool ties or ReLUs at exactly 0; lambda_max is then that of the "
        "average one-sided slope, and the interval spans the disagreement), radius_exceeds_input (epsilon_tau is larger than "
        "the input's own L2 norm)."
    )
    step: float | None = Field(default=None, description="Finite-difference step this sample used (RMS per coordinate).")
    step_norm: float | None = Field(default=None, description="L2 norm of the step's perturbation, step * sqrt(d).")
    step_error: float | None = Field(
        default=None,
        description="Estimated relative error of the JVPs at this step, from the pilot (Richardson estimate when "
        "converged; the smallest disagreement between successive steps when not). lambda_max_ci includes it.",
    )
    step_kink: float | None = Field(
        default=None,
        description="Where flagged nondifferentiable: ||D+ - D-|| / ||D+ + D-|| of the one-sided quotients at the step used.",
    )
    step_trials: list[StepTrial] = Field(
        default_factory=list,
        description="Each step measured while choosing it, in order: the pilot's, then (coordinate mode) each full pass.",
    )
    step_check: list[StepTrial] = Field(
        default_factory=list,
        description="Where the sketch's witness is computed: the Rayleigh quotient (lambda_pilot) along its top "
        "direction at a quarter of the step, checking the step along the direction that decides lambda_max.",
    )

    scheme: Literal["central", "forward", "richardson"] | None = Field(
        default=None, description="Finite differences this sample's sketch used (with --scheme auto: its own choice)."
    )
    scheme_evidence: SchemeEvidence | None = Field(
        default=None, description="With --scheme auto: the pilot's evidence for the choice; null for a given scheme."
    )

    lambda_max_white_box: float | None = Field(
        default=None, description="lambda_max from the model's own derivatives (white-box mode), to check the estimate."
    )
    trace_white_box: float | None = Field(default=None, description="tr F from the model's own derivatives.")
    white_box_method: str | None = Field(
        default=None, description="How the white-box figures were computed: jacobian or lanczos (-float32 if not float64)."
    )
    lambda_max_bound: SampleBound | None = Field(
        default=None, description="With audit --bound, where the adapter computes one: an upper bound on lambda_max(F) on a "
        "ball around this input, from the model's graph and weights; null otherwise (and in reports before schema 1.5).",
    )

    @classmethod
    def from_estimate(
        cls, index: int, est: SampleEstimate, tau: float, model_flags: list[str], input_norm: float,
    ) -> SampleResult:
        """The report's row for one estimated sample; `model_flags` hold for the whole model."""
        eps = math.sqrt(2 * tau / est.lambda_max) if est.lambda_max > 0 else None
        # A radius beyond the input's own size is no robustness guarantee worth quoting: say so.
        size_flags = ["radius_exceeds_input"] if eps is not None and eps > input_norm else []
        return cls(
            index=index, predicted_class=est.predicted_class, confidence=est.confidence,
            lambda_max=est.lambda_max, lambda_max_ci=est.lambda_max_ci, lambda_max_raw=est.lambda_max_raw,
            lambda_lower=est.lambda_lower, lambda_lower_loose=est.lambda_lower_loose,
            trace=est.trace, stable_rank=est.stable_rank, epsilon_tau=eps, queries=est.queries,
            method=est.method, directions=est.directions, directions_kind=est.directions_kind,
            lambda_max_resolution=est.resolution, flags=list(est.flags) + model_flags + size_flags,
            step=est.step.step, step_norm=est.step_norm,
            step_error=est.step.error if math.isfinite(est.step.error) else None,
            step_kink=est.step.kink,
            step_trials=[StepTrial(step=h, lambda_pilot=lam, directions=n) for h, lam, n in est.step.trials],
            step_check=[StepTrial(step=h, lambda_pilot=lam, directions=1) for h, lam in (est.check.trials if est.check else ())],
            scheme=est.scheme.scheme if est.scheme else None, scheme_evidence=_scheme_evidence(est),
        )


def _scheme_evidence(est: SampleEstimate) -> SchemeEvidence | None:
    s = est.scheme
    if s is None or s.reason == "given":
        return None
    return SchemeEvidence(
        one_sided=s.one_sided, one_sided_spread=s.spread, pilot_rank=s.pilot_rank, forward_bias=s.bias, limit=s.limit,
        reason=s.reason,
    )


class Stats(_Model):
    median: float | None
    p90: float | None
    p99: float | None
    max: float | None
    min: float | None


class ClassSummary(_Model):
    n: int
    lambda_max_median: float
    epsilon_tau_median: float | None


class JournalInfo(_Model):
    resumed: int = Field(
        default=0, description="Samples taken from the journal of an interrupted run instead of computed by this one."
    )
    rechecked: int = Field(
        default=0,
        description="Of the resumed samples, how many were chosen at random, computed again and found equal to the "
        "journal before any counted (docs/security.md).",
    )


Bounds = dict[str, float | None]  # "p50", "p90", "p99" -> a bound, or null (see Summary.bound_notes)


class ClassBounds(_Model):
    """Population bounds over the inputs predicted as one class (null where the class has too few)."""

    n: int
    lambda_max_upper: Bounds
    epsilon_tau_lower: Bounds


class Summary(_Model):
    n: int
    lambda_max: Stats
    epsilon_tau: Stats
    per_class: dict[str, ClassSummary]
    flags: dict[str, int] = Field(description="How many samples carry each diagnostic flag.")
    queries: int
    wall_seconds: float
    queries_per_second: float
    journal: JournalInfo | None = Field(
        default=None, description="Where the audit resumed from a journal: how many samples came from it; null without one."
    )
    # Population bounds (schema 1.3); defaults keep 1.1 and 1.2 reports loading.
    lambda_max_upper: Bounds | None = Field(
        default=None,
        description="Upper confidence bounds (at bound_confidence) on the population quantiles p50, p90, p99 of lambda_max over "
        "inputs drawn like the audited ones, including each sample's estimation error; null where too few inputs (see "
        "bound_notes). The whole mapping is null in reports before schema 1.3.",
    )
    epsilon_tau_lower: Bounds | None = Field(
        default=None,
        description="Lower confidence bounds on epsilon_tau matching lambda_max_upper: with confidence bound_confidence, at "
        "least 50% / 90% / 99% of inputs have a radius of at least epsilon_tau_lower.p50 / p90 / p99 (sqrt(2 tau / the "
        "lambda_max bound)). p90 thus bounds the radius's 10th percentile, and so also, conservatively, its 90th.",
    )
    bound_confidence: float | None = Field(default=None, description="Confidence of the population bounds (the audit's --confidence).")
    bound_method: str | None = Field(default=None, description="How the bounds were computed, and what they assume.")
    bound_notes: dict[str, str] = Field(
        default_factory=dict, description="Why a bound is null, by quantile (p50, p90, p99), and the rule for per-class bounds."
    )
    per_class_bounds: dict[str, ClassBounds] = Field(
        default_factory=dict, description="The same bounds over the inputs of each predicted class; null where a class has too few."
    )


class AuditReport(_Model):
    schema_version: str = SCHEMA_VERSION
    tool: ToolInfo
    model: ModelInfo
    data: DataInfo
    config: AuditConfig
    samples: list[SampleResult]
    summary: Summary

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> AuditReport:
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, path: str | Path) -> AuditReport:
        try:
            return cls.from_json(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the report {path}: {exc}", "pass a report written by fimaudit") from exc


def describe_scheme(report: AuditReport) -> str:
    """The finite differences in words: under auto, how many samples took forward ones."""
    c = report.config
    if c.scheme != "auto":
        return f"{c.scheme} differences"
    forward = sum(s.scheme == "forward" for s in report.samples)
    centred = ", centred" if c.centred_forward else ""
    return f"auto differences (forward{centred} on {forward} of {len(report.samples)} samples, central on the rest)"


def stats(values: list[float | None] | np.ndarray) -> Stats:
    """Order statistics; None entries stand for +infinity (an unbounded radius)."""
    arr = np.array([np.inf if v is None else v for v in values], dtype=np.float64)
    if arr.size == 0:
        return Stats(median=None, p90=None, p99=None, max=None, min=None)
    # Interpolating towards +inf gives nan, so with unbounded values take order statistics as they are.
    finite = bool(np.isfinite(arr).all())
    q = np.quantile(arr, [0.5, 0.9, 0.99], method="linear" if finite else "inverted_cdf")
    pick = [q[0], q[1], q[2], arr.max(), arr.min()]
    out = [float(v) if np.isfinite(v) else None for v in pick]
    return Stats(median=out[0], p90=out[1], p99=out[2], max=out[3], min=out[4])


def summarize(
    samples: list[SampleResult], queries: int, wall_seconds: float, sent: int | None = None,
    journal: JournalInfo | None = None, *, confidence: float = 0.95, tau: float | None = None,
) -> Summary:
    """Summary figures. `queries` is the samples' total; `sent` what this run itself sent (the
    rate's numerator, which differs from `queries` when a run resumed from a journal).
    `confidence` is the audit's (its per-sample intervals' and its population bounds'); `tau` the
    audit's KL budget, taken from the samples' own epsilon_tau when not given."""
    per_class: dict[str, ClassSummary] = {}
    for cls in sorted({s.predicted_class for s in samples}):
        members = [s for s in samples if s.predicted_class == cls]
        per_class[str(cls)] = ClassSummary(
            n=len(members),
            lambda_max_median=float(np.median([s.lambda_max for s in members])),
            epsilon_tau_median=stats([s.epsilon_tau for s in members]).median,
        )
    return Summary(
        n=len(samples),
        lambda_max=stats([s.lambda_max for s in samples]),
        epsilon_tau=stats([s.epsilon_tau for s in samples]),
        per_class=per_class,
        flags=dict(sorted(Counter(f for s in samples for f in s.flags).items())),
        queries=queries,
        wall_seconds=wall_seconds,
        queries_per_second=(queries if sent is None else sent) / wall_seconds if wall_seconds > 0 else 0.0,
        journal=journal,
        **_population_bounds(samples, confidence, _tau_of(samples) if tau is None else tau),
    )


def _population_bounds(samples: list[SampleResult], confidence: float, tau: float | None) -> dict[str, Any]:
    """Summary's bound fields. Each sample contributes its interval's upper end: below_resolution
    samples report the resolution level as lambda_max, itself an upper bound, hence the max."""
    miss = 1.0 - confidence  # each interval's two-sided miss rate bounds its upper end's (docs/math.md)

    def bounds_of(members: list[SampleResult]) -> tuple[dict[str, Any], dict[str, str]]:
        found = quantile_bounds(np.array([max(s.lambda_max_ci[1], s.lambda_max) for s in members]), confidence, miss)
        upper = {name: b.value for name, b in found.items()}
        lower = {name: None if tau is None else epsilon_lower(v, tau) for name, v in upper.items()}
        notes = {name: b.note for name, b in found.items() if b.note is not None}
        notes.update({name: "unbounded: the lambda_max bound is 0" for name, v in upper.items() if v == 0.0})
        return {"lambda_max_upper": upper, "epsilon_tau_lower": lower}, notes

    overall, notes = bounds_of(samples)
    per_class = {}
    for cls in sorted({s.predicted_class for s in samples}):
        members = [s for s in samples if s.predicted_class == cls]
        per_class[str(cls)] = ClassBounds(n=len(members), **bounds_of(members)[0])
    if any(v is None for b in per_class.values() for v in b.lambda_max_upper.values()):
        needs = ", ".join(f"{name} {inputs_needed(q, confidence, miss)}" for name, q in QUANTILES.items())
        notes["per_class"] = f"a class's bound is null where the class has fewer inputs than it needs: {needs}"
    return dict(overall, bound_confidence=confidence, bound_method=BOUND_METHOD, bound_notes=notes, per_class_bounds=per_class)


def _tau_of(samples: list[SampleResult]) -> float | None:
    """The KL budget the samples' radii were computed with: epsilon_tau = sqrt(2 tau / lambda_max)."""
    for s in samples:
        if s.epsilon_tau is not None and s.lambda_max > 0:
            return s.epsilon_tau**2 * s.lambda_max / 2
    return None


def bound_at(sample: SampleResult, model_bound: ModelBound | None) -> float | None:
    """The least bound (audit --bound) that holds at the sample's input: its local one, or the model's
    where that holds at every input; None without either."""
    local = sample.lambda_max_bound.value if sample.lambda_max_bound is not None else None
    glob = model_bound.value if model_bound is not None and model_bound.scope == ALL_INPUTS else None
    found = [v for v in (local, glob) if v is not None]
    return min(found) if found else None


def estimates_above_bound(report: AuditReport) -> list[int]:
    """Indices of the samples whose interval lies wholly above a bound that holds at their input: there
    the estimate carries an error (finite differences, sampling) larger than its interval says."""
    out = []
    for s in report.samples:
        limit = bound_at(s, report.model.lambda_max_bound)
        if limit is not None and s.lambda_max_ci[0] > limit:
            out.append(s.index)
    return out


def json_schema() -> str:
    """The published schema text (docs/report.schema.json holds exactly this)."""
    return json.dumps(AuditReport.model_json_schema(), indent=2, sort_keys=True) + "\n"
