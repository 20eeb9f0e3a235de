"""The audit report: pydantic models whose JSON Schema is published as docs/report.schema.json."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fimaudit.errors import DataError

SCHEMA_VERSION = "1.2"


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


class SkippedInput(_Model):
    name: str = Field(description="The file, relative to the image folder.")
    reason: str = Field(description="Why it could not be read.")


class DataInfo(_Model):
    sha256: str = Field(description="sha256 of the audited array's C-order bytes, as loaded.")
    shape: list[int]
    dtype: str
    source: str | None = None
    files: list[str] | None = Field(
        default=None, description="For an image folder: files[i] is the file of the sample with index i, relative to the folder."
    )
    skipped: list[SkippedInput] | None = Field(
        default=None, description="Unreadable files left out by --skip-unreadable; null when none was skipped or asked to be."
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
    scheme: Literal["central", "forward", "richardson"]
    seed: int
    tau: float = Field(description="KL budget (nats) defining epsilon_tau = sqrt(2 tau / lambda_max).")
    bootstrap: int
    confidence: float
    interval_method: str
    input_space: str = Field(description="Units all figures are in: the model's own input space.")
    white_box: bool = Field(default=False, description="Whether white-box figures were computed beside the black-box ones.")


class StepTrial(_Model):
    step: float
    lambda_pilot: float = Field(description="lambda_max over the directions measured at this step (rough for a pilot of 3).")
    directions: int = Field(default=1, description="Directions measured at this step: the pilot's, or all d coordinates.")


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
    directions_kind: Literal["orthogonal", "gaussian", "coordinate"]
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

    lambda_max_white_box: float | None = Field(
        default=None, description="lambda_max from the model's own derivatives (white-box mode), to check the estimate."
    )
    trace_white_box: float | None = Field(default=None, description="tr F from the model's own derivatives.")
    white_box_method: str | None = Field(
        default=None, description="How the white-box figures were computed: jacobian or lanczos (-float32 if not float64)."
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
    journal: JournalInfo | None = None,
) -> Summary:
    """Summary figures. `queries` is the samples' total; `sent` what this run itself sent (the
    rate's numerator, which differs from `queries` when a run resumed from a journal)."""
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
    )


def json_schema() -> str:
    """The published schema text (docs/report.schema.json holds exactly this)."""
    return json.dumps(AuditReport.model_json_schema(), indent=2, sort_keys=True) + "\n"
