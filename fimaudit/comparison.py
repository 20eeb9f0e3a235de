"""Two audits of the same inputs, compared sample by sample (e.g. a model before and after
adversarial training, or two versions of a deployed endpoint).

The figure is the per-sample log ratio log10(λ_B / λ_A): pairing on the same inputs removes most
of the spread between inputs (λ_max varies over orders of magnitude with the input's confidence),
so a small, consistent change is visible. Its median gets a percentile-bootstrap interval over
samples; the verdict says "more robust" only when that whole interval lies below zero.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fimaudit.errors import UsageError
from fimaudit.report import AuditReport, SampleResult

Verdict = Literal["B more robust", "B less robust", "no clear difference"]


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
    verdict: Verdict


def compare(a: AuditReport, b: AuditReport, *, confidence: float = 0.95, bootstrap: int = 10_000, seed: int = 0) -> Comparison:
    """Compare report B with report A on the inputs they share; both must have audited the same data."""
    _check_comparable(a, b)
    pairs = _pairs(a, b)
    ratios = np.array([math.log10(y.lambda_max / x.lambda_max) for x, y in pairs])
    low, high = median_interval(ratios, confidence, bootstrap, seed)
    verdict: Verdict = "B more robust" if high < 0 else "B less robust" if low > 0 else "no clear difference"
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
        verdict=verdict,
    )


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
