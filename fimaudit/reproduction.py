"""fimaudit.reproduce: re-audit a random few of a report's samples and say whether they match.

A sample's figures depend only on its input, its index and the audit's configuration (runner.py),
so any one of them can be computed again, by anyone holding the model and the data. Which ones
are re-computed comes from the OS's entropy, never from the report: an auditor who forged some
samples cannot know which will be checked. Before any query, the model and the data are
checked against the report's digests, so a mismatch is never mistaken for a bad measurement.
"""
from __future__ import annotations

import base64
import hashlib
import math
import os
import platform
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fimaudit._version import __version__
from fimaudit.adapter import FingerprintChecker, ProbabilityModel
from fimaudit.data import DataStats, check_inputs, digest, draw_sample, indices_sha256, rows_digest
from fimaudit.differences import KINK_WIDENING
from fimaudit.errors import DataError, ReproductionError, UsageError
from fimaudit.estimators import EstimatorConfig
from fimaudit.model import check_batch_independence
from fimaudit.policy import PolicyResult
from fimaudit.reading import read_plain
from fimaudit.registry import adapter_for
from fimaudit.report import AuditReport, ModelInfo, ReproducedSample, Reproduction, SampleResult, ToolInfo
from fimaudit.runner import RECHECK_RTOL, estimator_config, first_difference, recompute
from fimaudit.signing import AuditPredicate, attest, build_predicate, load_envelope, summary_problems, verify
from fimaudit.signing.attestation import PublicKeyLike

# Re-computed samples unless told otherwise: if a fraction f of the samples were forged, all 20
# miss them with probability (1 - f)^20, 4% for f = 15%. Each costs what it cost the audit.
DEFAULT_SAMPLES = 20
# A relative JVP error e moves lambda_max by a factor within (1 ± e)^2 (differences.widen, which widens
# the interval by the same e); the recorded and the re-computed figure each carry it, so they may differ
# by about 4e. e is the step's error plus the output rounding's share, sqrt(resolution level / lambda_max):
# re-computed on an H200 (CUDA float32) from CPU audits of two torch models, 60 samples moved by up to
# 0.4x this tolerance, where the step's error alone would have refused 6 of them (by up to 2.2x).
STEP_ERROR_FACTOR = 4.0
FINGERPRINT_TOLERANCE = 1e-5  # as `fimaudit verify --endpoint`
TOLERANCE_RULE = (
    "a sample reproduces when |lambda_max reproduced - recorded| / recorded is at most its tolerance, "
    f"{STEP_ERROR_FACTOR:g} e: e is the relative error of its JVPs that its interval was widened by (step_error, or "
    f"{KINK_WIDENING:g} x step_kink where larger, plus sqrt(lambda_max_resolution / lambda_max) for the output's "
    "rounding); lambda_max is quadratic in the JVPs and both figures carry e. Without a step_error: the interval's "
    f"relative half-width. Never below {RECHECK_RTOL:g}. For a nondeterministic model: when the two intervals overlap "
    "(tolerance: the recorded interval's relative width). On the platform that made the report the figures are bit-identical."
)
# Computed beside the estimate on request (--white-box, --bound), never part of what is reproduced.
_BESIDE_FIELDS = frozenset({"lambda_max_white_box", "trace_white_box", "white_box_method", "lambda_max_bound"})


@dataclass(frozen=True)
class OriginalReport:
    """A report as read for reproduction: with its verdict, the digest of what was read, and who signed it."""

    report: AuditReport
    policy: PolicyResult | None
    sha256: str  # the DSSE payload of a signed report, the file's bytes of a plain one
    signers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReproductionResult:
    """What `reproduce` found; `record` is what a signed reproduction carries."""

    report: AuditReport
    policy: PolicyResult | None
    record: Reproduction

    @property
    def reproduced(self) -> bool:
        return self.record.reproduced

    @property
    def differing(self) -> list[ReproducedSample]:
        return [s for s in self.record.samples if not s.matches]

    def predicate(self) -> AuditPredicate:
        """The same report and verdict, with the assurance that a third party reproduced them (and the
        harness of this installation, which did)."""
        return build_predicate(self.report, self.policy, assurance="reproduced", reproduction=self.record)


def load_original(source: AuditReport | OriginalReport | str | os.PathLike[str], keys: Sequence[PublicKeyLike] = ()) -> OriginalReport:
    """The report to reproduce. A signed one is verified against every key first, and its digest
    is that of the payload just verified, read once (not the file read again)."""
    if isinstance(source, OriginalReport):
        return source
    if isinstance(source, AuditReport):
        return OriginalReport(source, None, hashlib.sha256(source.to_json().encode()).hexdigest())
    path = Path(source)
    if keys:
        envelope = load_envelope(path)
        result = verify(envelope, list(keys))
        payload = base64.b64decode(envelope["payload"], validate=True)  # valid: it just verified
        return OriginalReport(result.predicate.report, result.predicate.policy, hashlib.sha256(payload).hexdigest(), list(result.signers))
    read = read_plain(path)
    return OriginalReport(read.report, read.policy, hashlib.sha256(path.read_bytes()).hexdigest())


def reproduce(
    report: AuditReport | OriginalReport | str | os.PathLike[str],
    model: ProbabilityModel,
    x: Any,
    *,
    samples: int | None = DEFAULT_SAMPLES,
    keys: Sequence[PublicKeyLike] = (),
    concurrency: int = 1,
    fingerprint_tolerance: float = FINGERPRINT_TOLERANCE,
    endpoint_options: Mapping[str, Any] | None = None,
) -> ReproductionResult:
    """Re-audit `samples` of the report's samples (all with None), chosen from OS entropy, on `model`
    and the data `x` (the whole data file the audit read, even under --sample or --limit).

    `report` is a report, or a path to one (signed: verified against every one of `keys` first).
    Raises ReproductionError when the model is not the audited one, DataError when `x` is not the
    audited data; returns a result whose `reproduced` says whether every sample matched.
    """
    if samples is not None and (not isinstance(samples, int) or samples < 1):
        raise UsageError(f"samples must be an integer >= 1 (got {samples!r}).", "omit it to re-audit 20 samples, or pass None for all")
    original = load_original(report, keys)
    audited = original.report
    _refuse_inconsistent(audited)
    model_check = check_model(audited.model, model, fingerprint_tolerance, endpoint_options or {})
    check_batch_independence(model)  # the audit probed too: a batch-dependent model's flag must come back
    arr, stats = audited_rows(audited, model, x)
    recorded = {s.index: s for s in audited.samples}
    count = len(recorded) if samples is None else min(samples, len(recorded))
    chosen = sorted(random.SystemRandom().sample(sorted(recorded), count))
    again = recompute(model, arr, chosen, config_of(audited, model, stats), audited.config.tau, concurrency)
    checked = [judge(recorded[i], again[i]) for i in chosen]
    record = Reproduction(
        reproduced=all(s.matches for s in checked), tolerance=TOLERANCE_RULE, samples=checked, population=len(recorded),
        max_deviation=max(s.deviation for s in checked), identical=all(s.identical for s in checked),
        model_check=model_check, original_sha256=original.sha256, original_signers=original.signers,
        tool=ToolInfo(version=__version__), platform=_platform(),
    )
    return ReproductionResult(audited, original.policy, record)


def _refuse_inconsistent(report: AuditReport) -> None:
    """A report whose summary contradicts its samples cannot be vouched for, whatever they give
    (the check `verify` makes on signed reports)."""
    problems = summary_problems(report)
    if problems:
        raise ReproductionError(f"the report contradicts itself: {'; '.join(problems)}",
                                "it was altered after the audit; ask the auditor for the report as written")


def check_model(recorded: ModelInfo, model: ProbabilityModel, tolerance: float, options: Mapping[str, Any]) -> Literal["sha256", "fingerprint", "none"]:
    """How `model` was identified as the audited one; ReproductionError when it is not that model."""
    ident = model.identity
    described = (list(model.input_spec.shape), model.input_spec.dtype, model.num_classes, model.output_kind)
    expected = (recorded.input_shape, recorded.input_dtype, recorded.classes, recorded.output_kind)
    if described != expected:
        raise ReproductionError(
            f"the model takes {described[0]} {described[1]} inputs to {described[2]} classes ({described[3]}), "
            f"but the report audited one taking {expected[0]} {expected[1]} to {expected[2]} ({expected[3]}).",
            "pass the audited model (and --outputs, --input or --output-name as the audit did)",
        )
    if recorded.sha256 is not None:
        if ident.sha256 != recorded.sha256:
            raise ReproductionError(
                f"the model {ident.reference} has sha256 {ident.sha256}, but the report audited a model with sha256 {recorded.sha256}: "
                "it is another model, so its figures say nothing about the report's.",
                "pass the model file the report names (model.reference), byte for byte",
            )
        return "sha256"
    fingerprint = recorded.extra.get("fingerprint")
    if fingerprint:
        _check_fingerprint(ident.reference, fingerprint, tolerance, options)
        return "fingerprint"
    return "none"  # a model held in memory: the re-computation is the only check, and the record says so


def _check_fingerprint(url: str, fingerprint: str, tolerance: float, options: Mapping[str, Any]) -> None:
    adapter = adapter_for(url)
    if not isinstance(adapter, FingerprintChecker):
        raise UsageError(f"the {adapter.name} adapter cannot re-check endpoint fingerprints.", "reproduce through the adapter that audited it")
    outcome = adapter.check_fingerprint(url, fingerprint, tolerance, **options)
    if not outcome.matches:
        raise ReproductionError(f"the endpoint {url} does not serve the audited model: {outcome.reason}",
                                "point --model at the endpoint and model version that was audited")


def audited_rows(report: AuditReport, model: ProbabilityModel, x: Any) -> tuple[np.ndarray, DataStats]:
    """The whole data (its rows indexed as the audit indexed them) and its statistics, once
    `x` is found to hold exactly the audited inputs at the report's sample indices."""
    arr, stats = check_inputs(x, model.input_spec)
    rows = _rows(report, arr, stats)
    if [s.index for s in report.samples] != list(rows):
        raise ReproductionError("the report's samples are not the rows its selection names.",
                                "it was altered after the audit; ask the auditor for the report as written")
    actual = rows_digest(arr, rows)
    if actual != report.data.sha256:
        raise ReproductionError(f"the audited rows of the data hash to {actual}, not to the report's data.sha256 "
                                f"{report.data.sha256}.", "the report was altered after the audit, or made from other data")
    return arr, stats


def _rows(report: AuditReport, arr: np.ndarray, stats: DataStats) -> Sequence[int]:
    """The rows the audit read: its selection redone from the data, or all of it."""
    n, selection = report.data.shape[0], report.data.selection
    if selection is None:
        if stats.sha256 == report.data.sha256:
            return range(len(arr))
        if len(arr) > n and digest(arr[:n]) == report.data.sha256:
            return range(n)  # a --limit audit from before selections were recorded
        raise _other_data(stats.sha256, report.data.sha256)
    if stats.sha256 != selection.population_sha256:
        raise _other_data(stats.sha256, selection.population_sha256)
    if selection.rule == "first":
        rows: Sequence[int] = range(n)
    elif selection.seed != report.config.seed:
        raise ReproductionError(f"the selection was drawn with seed {selection.seed}, the audit ran with {report.config.seed}.",
                                "the report was altered after the audit; ask the auditor for the report as written")
    else:
        rows = draw_sample(len(arr), n, report.config.seed, stats.sha256)
    if indices_sha256(rows) != selection.indices_sha256 or (selection.indices is not None and list(rows) != selection.indices):
        raise ReproductionError("the report's selection is not what its rule draws from this data.",
                                "the report was altered after the audit; ask the auditor for the report as written")
    return rows


def _other_data(actual: str, audited: str) -> DataError:
    return DataError(f"the data has sha256 {actual}, but the audit read data with sha256 {audited}.",
                     "pass the whole data file the audit read (under --sample or --limit too), unchanged")


def config_of(report: AuditReport, model: ProbabilityModel, stats: DataStats) -> EstimatorConfig:
    """The estimator configuration the audit ran with, rebuilt as the runner builds it: the recorded
    start step, and the step floor from the same data."""
    c = report.config
    # Not recorded, but visible: a witness gives a lower bound, and without one no sample has one.
    witness = any(s.lambda_lower is not None for s in report.samples)
    cfg, _ = estimator_config(
        model, stats, directions=c.directions, step=c.step, scheme=c.scheme, estimator=c.estimator, seed=c.seed,
        bootstrap=c.bootstrap, confidence=c.confidence, witness=witness, tau=c.tau, draws=c.draws,
        generator=c.generator, centred_forward=c.centred_forward, orthogonal_law=c.orthogonal_law,
    )
    return replace(cfg, adaptive_step=c.step_relative is not None)  # the audit searched from c.step


def judge(recorded: SampleResult, again: SampleResult) -> ReproducedSample:
    """How far the re-computed lambda_max is from the recorded one, against the sample's tolerance."""
    lam, new = recorded.lambda_max, again.lambda_max
    scale = max(abs(lam), recorded.lambda_max_resolution, 1e-300)
    deviation = abs(new - lam) / scale
    if "nondeterministic" in recorded.flags or "nondeterministic" in again.flags:
        # The model's own noise moves every figure: only intervals that miss each other disagree.
        (low, high), (low2, high2) = recorded.lambda_max_ci, again.lambda_max_ci
        tolerance, matches = (high - low) / scale, low2 <= high and low <= high2
    else:
        tolerance = sample_tolerance(recorded)
        matches = deviation <= tolerance
    return ReproducedSample(
        index=recorded.index, lambda_max=lam, lambda_max_reproduced=new, deviation=deviation, tolerance=tolerance,
        identical=_same_figures(recorded, again), matches=matches,
    )


def sample_tolerance(recorded: SampleResult) -> float:
    """The relative deviation of lambda_max a sample is allowed (TOLERANCE_RULE)."""
    lam = recorded.lambda_max
    scale = max(abs(lam), 1e-300)
    if recorded.step_error is not None and math.isfinite(recorded.step_error):
        # The error differences.widen put in the interval, so a figure and its re-computation meet the same standard.
        e = max(recorded.step_error, KINK_WIDENING * (recorded.step_kink or 0.0)) + math.sqrt(recorded.lambda_max_resolution / scale)
        rel = STEP_ERROR_FACTOR * e
    else:
        low, high = recorded.lambda_max_ci
        rel = max(high - lam, lam - low) / scale
    return max(rel, RECHECK_RTOL)


def _same_figures(recorded: SampleResult, again: SampleResult) -> bool:
    """Every figure equal, as the journal re-check compares them (to 1e-9 relative)."""

    def figures(s: SampleResult) -> dict[str, Any]:
        return {k: v for k, v in s.model_dump().items() if k not in _BESIDE_FIELDS}

    return first_difference(figures(recorded), figures(again)) is None


def _platform() -> str:
    return f"{platform.platform()}, {platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}"


def sign_reproduction(result: ReproductionResult, key: Ed25519PrivateKey, model_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A new envelope, signed by `key`, whose predicate is the reproduced report with its record.

    Only a reproduced result is signed: a signature over a failed reproduction would read as assurance.
    The subject is the audited model, as `attest` names it (a local `model_path` is hashed again).
    """
    if not result.reproduced:
        raise ReproductionError(f"{len(result.differing)} sample(s) did not reproduce: nothing to sign.", "see the differing samples")
    return attest(result.report, key, result.policy, model_path, assurance="reproduced", reproduction=result.record)


def describe_differences(result: ReproductionResult) -> str:
    """One line per differing sample, for messages."""
    return "; ".join(
        f"sample {s.index}: lambda_max {s.lambda_max:.6g} recorded, {s.lambda_max_reproduced:.6g} reproduced "
        f"(deviation {s.deviation:.3g} > tolerance {s.tolerance:.3g})"
        for s in result.differing
    )
