"""The sections of the v2 predicate that a compliance reviewer reads before the figures.

Beside the report and its verdict, a v2 predicate states the threat model, the method, the sample,
the harness that produced it, the assurance level, what it does not claim, and which provisions of
which frameworks it is evidence for (docs/compliance.md explains each).

The threat model, method and sample are derived from the signed report by the functions here, and
`verify` recomputes them: a readable section can never say more than the figures it sits beside.
Those derivations and the non-claims are frozen with predicateType v2 -- changing what they produce
needs a new predicate type, or envelopes signed today would stop verifying.
"""
from __future__ import annotations

import importlib.util
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fimaudit._version import __version__
from fimaudit.adapter import ENTRY_POINT_GROUP, directory_files, file_sha256, manifest_sha256
from fimaudit.report import AuditReport

Assurance = Literal["self", "third_party", "reproduced"]
ASSURANCE_MEANINGS: dict[str, str] = {
    "self": "declared by the signer: the model's developer or owner audited its own model",
    "third_party": "declared by the signer: a party independent of the model's developer ran and signed the audit",
    "reproduced": "an independent party re-computed recorded samples and they matched (see reproduction)",
}
# The adapter name fimaudit.model.CallableModel records: a Python function run by the core itself.
CALLABLE_ADAPTER = "callable"
DIGEST_RULE = (
    "sha256 of the sha256sum-format manifest ('<sha256>  <name>' and a newline per file, sorted by name) of every "
    "regular file of the distribution's import package except __pycache__/ and *.pyc, each named by its POSIX path "
    "from the package's parent directory (docs/compliance.md)"
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThreatModel(_Section):
    """Which perturbations the figures are about."""

    norm: Literal["L2"] = Field(default="L2", description="Perturbations are measured by their Euclidean (L2) norm.")
    space: str = Field(description="Where the perturbation is applied: the report's config.input_space.")
    tau: float = Field(description="The KL budget (nats) that defines epsilon_tau = sqrt(2 tau / lambda_max).")
    quantity: str = Field(
        default="KL(p(x) || p(x + delta)) to second order, 1/2 delta^T F(x) delta; lambda_max is F's largest eigenvalue",
        description="What is measured about a perturbation delta.",
    )
    preprocessing: str = Field(description="What was done to the data before the perturbed tensor, as far as fimaudit knows.")
    preprocessing_known: bool = Field(description="False when the inputs arrived already preprocessed, by steps fimaudit cannot see.")


class Method(_Section):
    """How lambda_max was estimated (the report's config and samples hold every detail)."""

    access: str = Field(description="What of the model was used.")
    estimator: str = Field(description="The estimator asked for (config.estimator).")
    estimators_used: dict[str, int] = Field(description="How many inputs each estimator measured.")
    directions: int = Field(description="Directions asked for per input (config.directions).")
    directions_kind: dict[str, int] = Field(description="How many inputs used each kind of direction.")
    scheme: str = Field(description="Finite-difference scheme.")
    step_rule: str = Field(description="How each input's finite-difference step was chosen.")
    interval: str = Field(description="How each lambda_max interval was made, at which confidence.")
    seed: int = Field(description="Seed of the random directions: the same seed gives the same figures.")


class SampleInfo(_Section):
    """Which inputs were audited: report.data holds the detail (digests, every selected row)."""

    n: int = Field(description="Inputs audited.")
    data_sha256: str = Field(description="The report's data.sha256: the audited array.")
    data_source: str | None = Field(description="The data file or folder, as given.")
    selection: Literal["none_recorded", "first", "random"] = Field(
        description="none_recorded: the report records no selection, so every row of the data as loaded was audited "
        "(reports written before selections were recorded did not record --limit either); first: the first n rows "
        "(--limit); random: a committed random draw (--sample), recorded in report.data.selection."
    )
    population_size: int = Field(description="Rows of the data the audited inputs were chosen from (as loaded, when none_recorded).")
    indices_sha256: str | None = Field(description="report.data.selection.indices_sha256, when the rows were chosen.")
    population: str = Field(description="What the figures speak for, in words.")
    details: Literal["report.data"] = Field(default="report.data", description="Where the full record is.")


class DistributionDigest(_Section):
    """One installed distribution whose code produced the figures."""

    name: str = Field(description="Distribution name, as importlib.metadata knows it.")
    version: str
    package: str = Field(description="The import package that was digested.")
    files: int = Field(description="Files the digest covers.")
    sha256: str = Field(description="Digest of the package's installed files by harness.digest_rule.")


class Harness(_Section):
    """The fimaudit installation that signed the predicate (for `audit --sign`, the one that ran the audit)."""

    tool: Literal["fimaudit"] = "fimaudit"
    version: str = Field(description="fimaudit's own version (fimaudit.__version__).")
    python: str = Field(description="Python version.")
    core: DistributionDigest
    adapter: DistributionDigest | None = Field(description="The adapter distribution registered under the report's model.adapter.")
    adapter_note: str | None = Field(description="Why adapter is null, when it is.")
    digest_rule: str = Field(default=DIGEST_RULE, description="How each sha256 here is computed.")


class NonClaim(_Section):
    id: str
    statement: str
    evidence: str = Field(description="Where the limit is shown or explained.")


class ComplianceRef(_Section):
    framework: str
    provision: str


class Compliance(_Section):
    """Identifiers only: docs/compliance.md says how the evidence relates to each."""

    note: str
    document: str
    mapping: list[ComplianceRef]


# --------------------------------------------------------------------------- #
# what every v2 predicate says: frozen with the predicate type
# --------------------------------------------------------------------------- #

NON_CLAIMS: tuple[NonClaim, ...] = (
    NonClaim(id="local", evidence="docs/math.md; docs/benchmarks.md section 1b",
             statement="lambda_max is local: it describes how fast the output distribution moves under small perturbations "
             "at each audited input, not what larger perturbations do, nor any input that was not audited."),
    NonClaim(id="not_a_certified_radius", evidence="docs/benchmarks.md section 1b",
             statement="epsilon_tau = sqrt(2 tau / lambda_max) is not a certified radius: no perturbation inside it is proven "
             "to keep the KL divergence under tau or the prediction unchanged; on the benchmark models the worst "
             "perturbation reached KL = tau 10-60% inside epsilon_tau, and on saturated inputs the quadratic model fails."),
    NonClaim(id="not_an_attack_evaluation", evidence="docs/benchmarks.md section 1",
             statement="No adversarial attack was run: the figures measure sensitivity, not the minimal adversarial "
             "distance, accuracy under attack or resistance to any attack."),
    NonClaim(id="no_ranking_across_calibrations", evidence="docs/benchmarks.md section 1; docs/compliance.md",
             statement="Sensitivity rankings across differently calibrated models can contradict attack distances: a less "
             "confident model has a higher lambda_max whatever its robustness, and on two of three standard versus "
             "adversarially trained pairs the model with the higher lambda_max was the one minimal attacks found more robust."),
    NonClaim(id="threat_model_only", evidence="threat_model",
             statement="Only L2 perturbations of the model's input tensor, after the stated preprocessing, are covered: not "
             "other norms, not changes to raw data before preprocessing, not semantic or physical changes, not "
             "distribution shift, not faults elsewhere in the system."),
    NonClaim(id="audited_inputs_only", evidence="sample; report.data",
             statement="The figures describe the audited inputs; they speak for a population only for inputs drawn as these "
             "were (sample.selection), and for no other data."),
    NonClaim(id="estimates_with_error", evidence="report.config.interval_method; report.samples[].flags",
             statement="Each lambda_max is an estimate from black-box queries with a stated interval; intervals can "
             "undercover (fewer than 128 directions, flagged inputs), and a flagged input's figure is a bound or an "
             "approximation as its flags say."),
    NonClaim(id="this_model_only", evidence="subject",
             statement="The report is about the attested model files or endpoint identity only: not another version, "
             "another runtime, or what an endpoint serves later."),
    NonClaim(id="declared_assurance", evidence="assurance",
             statement="The assurance level is declared by the signer: fimaudit cannot check who ran the audit, so the level "
             "weighs what the signing key's owner is trusted for."),
    NonClaim(id="not_a_conformity_assessment", evidence="docs/compliance.md",
             statement="This is not a conformity assessment nor legal advice: the compliance mapping names provisions this "
             "evidence relates to, and does not state that any requirement is met."),
)

_EU_AI_ACT = "EU AI Act (Regulation (EU) 2024/1689)"
_NIST = "NIST AI RMF 1.0 (NIST AI 100-1)"
COMPLIANCE = Compliance(
    note="Indicative mapping, not legal advice: the provisions this evidence relates to, not a finding that they are met.",
    document="docs/compliance.md",
    mapping=[
        ComplianceRef(framework=_EU_AI_ACT, provision="Art. 15(1)"),
        ComplianceRef(framework=_EU_AI_ACT, provision="Art. 15(3)"),
        ComplianceRef(framework="ISO/IEC TR 24029-1:2021", provision="statistical methods"),
        ComplianceRef(framework=_NIST, provision="MEASURE 2.5"),
        ComplianceRef(framework=_NIST, provision="MEASURE 2.7"),
    ],
)


def standard_non_claims() -> list[NonClaim]:
    return list(NON_CLAIMS)


def missing_non_claims(given: list[NonClaim]) -> list[str]:
    """The ids of v2's non-claims that `given` drops or rewords (a signer may add more, never fewer)."""
    return [claim.id for claim in NON_CLAIMS if claim not in given]


# --------------------------------------------------------------------------- #
# sections derived from the report
# --------------------------------------------------------------------------- #


def threat_model(report: AuditReport) -> ThreatModel:
    known = report.data.files is not None
    return ThreatModel(space=report.config.input_space, tau=report.config.tau,
                       preprocessing=_preprocessing(known), preprocessing_known=known)


def _preprocessing(from_images: bool) -> str:
    # Only an image folder passes through fimaudit's own decoding; arrays arrive as the caller made them.
    if from_images:
        return ("image files decoded by fimaudit to float32 in [0, 1] and arranged to the model's input (channels "
                "converted); perturbations apply to that tensor, before anything the model's own graph does")
    return ("unknown to fimaudit: the inputs arrived as arrays in the model's input space, and any preprocessing "
            "applied before (resizing, normalisation) is not recorded; perturbations apply after it")


def method(report: AuditReport) -> Method:
    c = report.config
    access = "black box: output probabilities only" + (", and the model's gradients to check them" if c.white_box else "")
    if report.model.lambda_max_bound is not None:  # audit --bound: the graph was read as well
        access += ", and the model's graph and weights to bound lambda_max"
    return Method(
        access=access, estimator=c.estimator, estimators_used=_counts(s.method for s in report.samples),
        directions=c.directions, directions_kind=_counts(s.directions_kind for s in report.samples), scheme=c.scheme,
        # Reports before schema 1.1 used one step for every input and recorded no rule.
        step_rule=c.step_rule or f"one fixed step {c.step:g} for every input",
        interval=f"{c.confidence:.0%}: {c.interval_method}", seed=c.seed,
    )


def _counts(values: Iterable[object]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))


def sample_info(report: AuditReport) -> SampleInfo:
    data, selection = report.data, report.data.selection
    rows = data.shape[0] if data.shape else report.summary.n
    return SampleInfo(
        n=report.summary.n, data_sha256=data.sha256, data_source=data.source,
        selection="none_recorded" if selection is None else selection.rule,
        population_size=rows if selection is None else selection.population_size,
        indices_sha256=None if selection is None else selection.indices_sha256,
        population=data.population or _default_population(selection is None),
    )


def _default_population(whole: bool) -> str:
    if whole:
        return "the audited inputs themselves: no selection was recorded, so figures extend beyond them only by assumption"
    return "the rows of the data file, through the recorded selection (report.data.selection)"


# --------------------------------------------------------------------------- #
# the harness
# --------------------------------------------------------------------------- #


def record_harness(adapter: str) -> Harness:
    """Digest the installed fimaudit and the adapter registered as `adapter`, as they are now."""
    entry, note = _adapter_digest(adapter)
    return Harness(version=__version__, python=platform.python_version(),
                   core=_distribution_digest("fimaudit", _distribution("fimaudit")), adapter=entry, adapter_note=note)


def package_digest(location: Path) -> tuple[str, int]:
    """(sha256, files) of an import package directory, or of a one-file module, by DIGEST_RULE.

    The files themselves are hashed, not the RECORD that lists them: an editable install's RECORD
    names only an import hook, and any RECORD says what was installed, not what is there now.
    """
    if location.is_file():
        return manifest_sha256([(location.name, file_sha256(location))]), 1
    files = [p for p in directory_files(location) if not _is_bytecode(p.relative_to(location))]
    base = location.parent
    return manifest_sha256((p.relative_to(base).as_posix(), file_sha256(p)) for p in files), len(files)


def _is_bytecode(relative: Path) -> bool:
    # Python writes these on import: a digest including them would change with what has been run.
    return "__pycache__" in relative.parts or relative.suffix == ".pyc"


def _adapter_digest(adapter: str) -> tuple[DistributionDigest | None, str | None]:
    if adapter == CALLABLE_ADAPTER:
        return None, "the model was a Python callable run by fimaudit's core: no adapter distribution took part"
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == adapter:
            return _distribution_digest(ep.module.split(".")[0], ep.dist), None
    return None, f"no installed adapter is registered as {adapter!r}, so its code could not be digested"


def _distribution(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return None


def _distribution_digest(package: str, dist: metadata.Distribution | None) -> DistributionDigest:
    location = _package_location(package)
    sha256, files = package_digest(location)
    name = dist.metadata["Name"] if dist is not None else package
    version = dist.version if dist is not None else "unknown"
    return DistributionDigest(name=name, version=version, package=package, files=files, sha256=sha256)


def _package_location(package: str) -> Path:
    """Where `package` is imported from, found without importing it (an adapter may pull in a framework)."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec is not None and spec.origin:
        return Path(spec.origin)
    raise ModuleNotFoundError(f"cannot locate the installed package {package}")


def harness_names(harness: Harness) -> list[str]:
    """One line per digested distribution, for the console and the HTML page."""
    entries = [harness.core] + ([harness.adapter] if harness.adapter is not None else [])
    return [f"{e.name} {e.version} ({e.package}/: {e.files} files, sha256 {e.sha256})" for e in entries]


__all__ = [
    "ASSURANCE_MEANINGS", "COMPLIANCE", "DIGEST_RULE", "NON_CLAIMS", "Assurance", "Compliance", "ComplianceRef",
    "DistributionDigest", "Harness", "Method", "NonClaim", "SampleInfo", "ThreatModel", "harness_names",
    "method", "missing_non_claims", "package_digest", "record_harness", "sample_info", "standard_non_claims",
    "threat_model",
]
