"""Two audits of the same inputs, compared sample by sample (e.g. a model before and after
adversarial training, or two versions of a deployed endpoint).

The figure is the per-sample log ratio log10(λ_B / λ_A): pairing on the same inputs removes most
of the spread between inputs (λ_max varies over orders of magnitude with the input's confidence),
so a small, consistent change is visible. Its median gets a percentile-bootstrap interval over
samples; the verdict names a difference only when that whole interval lies on one side of zero,
and it says what was measured -- sensitivity (λ_max), not robustness: λ_max rises with doubt, so
two models calibrated differently can be ranked against their attack distances (docs/benchmarks.md
section 1). A caveat says so whenever the paired inputs' confidences differ materially
(the threshold and its grounds: docs/compliance.md, "Comparing two models").
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fimaudit.errors import UsageError
from fimaudit.report import AuditReport, SampleResult

Verdict = Literal["B less sensitive: lower lambda_max", "B more sensitive: higher lambda_max", "no clear difference in lambda_max"]

# Doubt (1 - top probability) below this is confidence 1 at any output precision fimaudit reads;
# clipping keeps the log ratio of two saturated inputs at 0 instead of undefined.
DOUBT_FLOOR = 1e-12
# A paired median doubt ratio beyond 2 (either way) is material: in the benchmark's paired audits
# log10(λ_B/λ_A) followed log10 of the doubt ratio with slope 1.00-1.05, so a factor 2 in doubt
# alone moves λ_max by about 2 and ε_τ by about 1.4 -- as much as adversarial training moved the
# attack distance on digits (x1.38) and more than on breast_cancer (x1.07). docs/compliance.md.
MATERIAL_LOG10_DOUBT_RATIO = math.log10(2.0)


class Caveat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    risk: Literal["calibration"] = Field(description="calibration: a less confident model has higher lambda_max regardless of robustness.")
    message: str


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    a: str = Field(description="Model reference of report A.")
    b: str = Field(description="Model reference of report B.")
    data_sha256: str
    n: int = Field(description="Samples audited in both reports (paired by index).")
    median_log10_ratio: float = Field(description="Median over samples of log10(lambda_B / lambda_A).")
    median_log10_ratio_ci: tuple[float, float]
    confidence: float
    fraction_b_lower: float = Field(description="Share of samples where lambda_B < lambda_A.")
    separated_b_lower: int = Field(description="Samples whose intervals do not overlap, B's below A's.")
    separated_b_higher: int = Field(description="Samples whose intervals do not overlap, B's above A's.")
    same_prediction: float = Field(description="Share of samples with the same predicted class.")
    median_log10_doubt_ratio: float = Field(
        description="Median over samples of log10((1 - p_B) / (1 - p_A)), p the top probability (doubt under 1e-12 counts as 1e-12): "
        "positive when B is less confident on the same inputs."
    )
    median_log10_doubt_ratio_ci: tuple[float, float]
    verdict: Verdict = Field(description="What was measured: a difference in sensitivity (lambda_max), not in robustness.")
    caveats: list[Caveat] = Field(default_factory=list, description="Reasons the verdict may not rank robustness.")


def compare(a: AuditReport, b: AuditReport, *, confidence: float = 0.95, bootstrap: int = 10_000, seed: int = 0) -> Comparison:
    """Compare report B with report A on the inputs they share; both must have audited the same data."""
    _check_comparable(a, b)
    pairs = _pairs(a, b)
    ratios = np.array([math.log10(y.lambda_max / x.lambda_max) for x, y in pairs])
    low, high = median_interval(ratios, confidence, bootstrap, seed)
    verdict = _verdict(low, high)
    doubts = np.array([math.log10(_doubt(y) / _doubt(x)) for x, y in pairs])
    doubt_median = float(np.median(doubts))
    return Comparison(
        a=a.model.reference,
        b=b.model.reference,
        data_sha256=a.data.sha256,
        n=len(pairs),
        median_log10_ratio=float(np.median(ratios)),
        median_log10_ratio_ci=(low, high),
        confidence=confidence,
        fraction_b_lower=float(np.mean(ratios < 0)),
        separated_b_lower=sum(y.lambda_max_ci[1] < x.lambda_max_ci[0] for x, y in pairs),
        separated_b_higher=sum(y.lambda_max_ci[0] > x.lambda_max_ci[1] for x, y in pairs),
        same_prediction=float(np.mean([x.predicted_class == y.predicted_class for x, y in pairs])),
        median_log10_doubt_ratio=doubt_median,
        median_log10_doubt_ratio_ci=median_interval(doubts, confidence, bootstrap, seed + 1),
        verdict=verdict,
        caveats=calibration_caveats(doubt_median, verdict),
    )


def _verdict(low: float, high: float) -> Verdict:
    if high < 0:
        return "B less sensitive: lower lambda_max"
    if low > 0:
        return "B more sensitive: higher lambda_max"
    return "no clear difference in lambda_max"


def _doubt(sample: SampleResult) -> float:
    return max(1.0 - sample.confidence, DOUBT_FLOOR)


def calibration_caveats(median_log10_doubt_ratio: float, verdict: Verdict) -> list[Caveat]:
    """The calibration caveat when B's and A's confidences on the same inputs differ materially."""
    shift = median_log10_doubt_ratio
    if abs(shift) < MATERIAL_LOG10_DOUBT_RATIO:
        return []
    side = "less" if shift > 0 else "more"
    who = f"B is {side} confident than A on the same inputs (median paired ratio of doubt 1 - p: {10**shift:.3g})"
    return [Caveat(risk="calibration", message=f"{who}. {_consequence(shift, verdict)}")]


def _consequence(shift: float, verdict: Verdict) -> str:
    """What the calibration difference means for this verdict: it can fake, hide or oppose it."""
    risk = ("A less confident model has a higher lambda_max regardless of robustness: in docs/benchmarks.md section 1, "
            "paired lambda_max ratios followed doubt ratios about 1:1 (slope 1.00-1.05), and two adversarially trained models were ranked more sensitive "
            "while minimal attacks found them more robust.")
    if verdict.startswith("no clear"):
        return f"{risk} The calibration difference may hide a real difference in sensitivity; compare attack distances."
    b_higher = verdict.startswith("B more")
    if b_higher == (shift > 0):
        return f"{risk} This lambda_max difference points the way calibration alone pushes it: do not read it as a robustness ranking."
    return (f"{risk} Here lambda_max moved against the calibration difference, which therefore does not explain it; "
            "it is still a difference in sensitivity, not in attack distance.")


def median_interval(values: np.ndarray, confidence: float, reps: int, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median, resampling whole samples."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(reps, len(values)))
    medians = np.median(values[picks], axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(medians, [alpha, 1 - alpha])
    return float(low), float(high)


def _check_comparable(a: AuditReport, b: AuditReport) -> None:
    if a.data.sha256 != b.data.sha256:
        raise UsageError(
            "the two reports audited different inputs (their data sha256 differ), so no sample can be paired.",
            "audit both models on the same data file",
        )
    if a.config.tau != b.config.tau or a.model.input_shape != b.model.input_shape:
        raise UsageError("the two reports use different input shapes or tau.", "audit both models with the same settings")


def _pairs(a: AuditReport, b: AuditReport) -> list[tuple[SampleResult, SampleResult]]:
    by_index = {s.index: s for s in b.samples}
    pairs = [(s, by_index[s.index]) for s in a.samples if s.index in by_index]
    # A zero lambda (a constant model) has no finite ratio: such samples say nothing here.
    pairs = [(x, y) for x, y in pairs if x.lambda_max > 0 and y.lambda_max > 0]
    if len(pairs) < 2:
        raise UsageError(
            f"only {len(pairs)} sample(s) were audited, with lambda_max > 0, in both reports.",
            "audit at least two shared inputs (same data file, overlapping --limit)",
        )
    return pairs
