"""Signed audit reports: attest a report about a model, co-sign it, verify it.

The signed predicate (predicateType v2) is an AuditPredicate: the report, its policy verdict (so a
verdict is covered by the same signatures as the figures it judges), and the sections a compliance
reviewer reads -- threat model, method, sample, harness, assurance level, non-claims, compliance
mapping (fimaudit.signing.predicate). v1 envelopes, `{"report", "policy"}` only, still verify
(AuditPredicateV1). The statement's subject is the
audited model: one entry for a model file, one per file for a model directory or for a model
file that references others (ONNX external data).
Envelope format and verification order: fimaudit.signing.dsse and docs/signing.md.
Key files: fimaudit.signing.keys, the one place keys are loaded.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fimaudit.adapter import directory_files, file_sha256, manifest_sha256
from fimaudit.errors import DataError, FimauditError, SignatureError, UsageError
from fimaudit.policy import Policy, PolicyResult, bounds_problems, inconsistencies
from fimaudit.registry import model_files
from fimaudit.report import AuditReport, ModelInfo, Reproduction, Stats, summarize
from fimaudit.signing.dsse import (
    PREDICATE_TYPE,
    PREDICATE_TYPE_V1,
    add_signature,
    canonical_json,
    envelope_from_bytes,
    make_statement,
    sign_envelope,
    verify_envelope,
)
from fimaudit.signing import predicate as sections
from fimaudit.signing.keys import keyid, load_public_key, load_signing_key
from fimaudit.signing.predicate import COMPLIANCE, Assurance, Compliance, Harness, Method, NonClaim, SampleInfo, ThreatModel

PathLike = str | os.PathLike[str]
PrivateKeyLike = Ed25519PrivateKey | PathLike
PublicKeyLike = Ed25519PublicKey | PathLike
EnvelopeLike = dict[str, Any] | PathLike

# Top-level fields of what `fimaudit audit` writes without --sign: a report, or with --policy
# a predicate. Recognising them turns "malformed envelope" into "this was never signed".
_REPORT_FIELDS = frozenset({"tool", "model", "data", "samples", "summary"})
_HOW_TO_SIGN = ("sign at audit time: fimaudit audit MODEL --data DATA --sign KEY "
                "(from Python, fimaudit.attest(report, key) signs a report you already have)")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subject(_Model):
    """One attested file: its name (relative path inside a model directory) and sha256."""

    name: str
    sha256: str

    def to_statement(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": self.sha256}}


class AuditPredicateV1(_Model):
    """The v1 predicate (https://fimaudit.dev/audit-report/v1): the report and its verdict, nothing else."""

    report: AuditReport
    # Required even when null, so every signed predicate states outright whether a policy was applied.
    policy: PolicyResult | None = Field(description="The --policy verdict on this report; null when no policy was applied.")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _every_field_required(schema: dict[str, Any]) -> None:
    # Python callers may leave sections to be derived, but every signed v2 predicate states them all
    # (verify refuses one that does not), and the published schema describes the signed form.
    schema["required"] = sorted(schema.get("properties", {}))


class AuditPredicate(AuditPredicateV1):
    """What fimaudit signs (predicateType v2): the report, its verdict, and what they do and do not show.

    threat_model, method and sample are derived from the report when not given (verify recomputes
    them); the harness is recorded by `build_predicate`, and null only in unsigned predicates.
    """

    model_config = ConfigDict(json_schema_extra=_every_field_required)

    assurance: Assurance = Field(
        default="self",
        description="Who stands behind the figures, as declared by the signer: self (the model's developer audited its own "
        "model), third_party (an independent party audited it), reproduced (an independent party re-computed recorded "
        "samples and they matched: see reproduction).",
    )
    reproduction: Reproduction | None = Field(default=None, description="The re-computation behind assurance = reproduced; null otherwise.")
    # Derived from the report (validated first, being declared first) when not given; verify recomputes them.
    threat_model: ThreatModel = Field(default_factory=lambda data: sections.threat_model(data["report"]),
                                      description="Which perturbations the figures are about.")
    method: Method = Field(default_factory=lambda data: sections.method(data["report"]), description="How lambda_max was estimated.")
    sample: SampleInfo = Field(default_factory=lambda data: sections.sample_info(data["report"]),
                               description="Which inputs were audited, and what they speak for.")
    harness: Harness | None = Field(
        default=None, description="The installation that signed (for audit --sign, the one that audited); null only unsigned."
    )
    non_claims: list[NonClaim] = Field(default_factory=sections.standard_non_claims, description="What the figures do not show.")
    compliance: Compliance = Field(default=COMPLIANCE, description="Provisions this is evidence for: identifiers; docs/compliance.md.")

    @model_validator(mode="after")
    def _reproduced_has_its_record(self) -> AuditPredicate:
        # "reproduced" is the one level with evidence of its own: without the record it is an empty claim.
        if self.assurance == "reproduced" and self.reproduction is None:
            raise ValueError("assurance 'reproduced' needs the reproduction record")
        return self

    @classmethod
    def from_json(cls, text: str | bytes) -> AuditPredicate:
        return cls.model_validate_json(text)


def build_predicate(
    report: AuditReport, policy: PolicyResult | None, *, assurance: Assurance = "self", reproduction: Reproduction | None = None,
) -> AuditPredicate:
    """The v2 predicate for `report`, with the harness digested from this installation now."""
    return AuditPredicate(report=report, policy=policy, assurance=assurance, reproduction=reproduction,
                          harness=sections.record_harness(report.model.adapter))


# The models that read each predicate type fimaudit signs or once signed.
_PREDICATE_MODELS: dict[str, type[AuditPredicateV1]] = {PREDICATE_TYPE: AuditPredicate, PREDICATE_TYPE_V1: AuditPredicateV1}


class VerificationResult(_Model):
    """Everything `verify` established; it is only ever returned for a valid envelope."""

    signers: list[str] = Field(description="keyids of the given keys, each of which signed.")
    unverified: list[str] = Field(description="keyids of other signatures, not checked.")
    subjects: list[Subject]
    subject_ok: bool | None = Field(description="True when --model matched the subject; None when not checked.")
    predicate: AuditPredicate | AuditPredicateV1
    predicate_type: str = Field(default=PREDICATE_TYPE, description="The statement's predicateType: v2, or v1 for older envelopes.")

    @property
    def policy_passed(self) -> bool | None:
        """The signed policy verdict; None when the report was signed without a policy."""
        return None if self.predicate.policy is None else self.predicate.policy.passed

    @property
    def assurance(self) -> Assurance | None:
        """The signed assurance level; None for a v1 predicate, which declares none."""
        return self.predicate.assurance if isinstance(self.predicate, AuditPredicate) else None


def predicate_json_schema() -> str:
    """The published schema text (docs/predicate.schema.json holds exactly this)."""
    return json.dumps(AuditPredicate.model_json_schema(), indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def attest(
    report: AuditReport,
    private_key: PrivateKeyLike,
    policy: PolicyResult | Policy | None = None,
    model_path: PathLike | None = None,
    *,
    assurance: Assurance = "self",
    reproduction: Reproduction | None = None,
) -> dict[str, Any]:
    """Sign `report` (and its policy verdict) as a statement about the audited model.

    `model_path` defaults to the report's model reference only for directories
    (whose per-file digests the report does not hold); for a model file the
    report's own sha256 is attested, after re-hashing `model_path` if given.
    `assurance` is the signer's declaration (docs/compliance.md); "reproduced"
    needs the `reproduction` record that backs it.
    """
    key = _private_key(private_key)
    if isinstance(policy, Policy):
        policy = policy.evaluate(report)
    subjects = report_subjects(report, model_path)
    predicate = build_predicate(report, policy, assurance=assurance, reproduction=reproduction).model_dump(mode="json")
    statement = make_statement([s.to_statement() for s in subjects], predicate)
    return sign_envelope(statement, key)


def sign(envelope: EnvelopeLike, private_key: PrivateKeyLike) -> dict[str, Any]:
    """Return a copy of `envelope` (a dict or a file path) co-signed by `private_key`.

    Only fimaudit audit predicates are co-signed: a co-signer endorses what
    the payload says, so it must at least be a report we can show them.
    """
    loaded = _signed_envelope(envelope, UsageError, "fimaudit sign only co-signs an envelope that is already signed",
                              f"{_HOW_TO_SIGN}, then co-sign that envelope")
    cosigned = add_signature(loaded, _private_key(private_key))
    _predicate_of(unverified_statement(cosigned))
    return cosigned


def verify(
    envelope: EnvelopeLike,
    public_keys: Sequence[PublicKeyLike] | PublicKeyLike,
    model_path: PathLike | None = None,
) -> VerificationResult:
    """Verify that every key in `public_keys` signed `envelope`, then check its content.

    Raises SignatureError (exit 5) on any failure, including a `model_path`
    whose files do not match the attested subject.
    """
    # One key is welcome on its own; iterating a path string would "verify" against its characters.
    key_list = list(public_keys) if isinstance(public_keys, (list, tuple)) else [cast(PublicKeyLike, public_keys)]
    keys = [_public_key(k) for k in key_list]
    _refuse_duplicate_keys(keys)
    loaded = _signed_envelope(envelope, SignatureError, "there is no signature to verify",
                              f"{_HOW_TO_SIGN}; fimaudit sign only co-signs an envelope that is already signed")
    verified = verify_envelope(loaded, keys)
    predicate = _predicate_of(verified.statement)
    _check_content(predicate)
    subjects = [Subject(name=s["name"], sha256=s["digest"]["sha256"]) for s in verified.statement["subject"]]
    _check_endpoint_subject(subjects, predicate.report.model)
    # The model on disk first: when both fail, "this file differs" is the more useful message.
    subject_ok = None if model_path is None else check_subjects(subjects, Path(model_path))
    _check_file_subject(subjects, predicate.report.model)
    _check_sections(predicate)
    return VerificationResult(signers=verified.signers, unverified=verified.unverified, subjects=subjects,
                              subject_ok=subject_ok, predicate=predicate, predicate_type=verified.statement["predicateType"])


# --------------------------------------------------------------------------- #
# subjects
# --------------------------------------------------------------------------- #


def require_attestable(sha256: str | None, reference: str, extra: Mapping[str, str] | None = None) -> str | None:
    """Refuse a model that no subject can name: neither file bytes (sha256) nor an endpoint
    fingerprint. Returns the file's sha256, or None for a fingerprinted endpoint."""
    if sha256 is None and not (extra or {}).get("fingerprint"):
        raise UsageError(
            f"{reference} cannot be attested: it has neither a file digest nor an endpoint fingerprint",
            "audit a model file, or an endpoint through an adapter that fingerprints it (triton://), or drop --sign",
        )
    return sha256


def endpoint_digest(model: ModelInfo) -> str:
    """sha256 of the RFC 8785 JSON of an endpoint's recorded identity (adapter, URL, server,
    model name and version, config digest, behavioural fingerprint): the subject of its report."""
    identity = {"adapter": model.adapter, "reference": model.reference, "extra": dict(model.extra)}
    return hashlib.sha256(canonical_json(identity)).hexdigest()


def report_subjects(report: AuditReport, model_path: PathLike | None = None) -> list[Subject]:
    """The subjects for `report`: see `attest` for how `model_path` is used."""
    audited = require_attestable(report.model.sha256, report.model.reference, report.model.extra)
    if audited is None:
        if model_path is not None:
            raise UsageError(
                f"{report.model.reference} is an endpoint: there is no model file to compare with {model_path}",
                "drop the model path; `fimaudit verify --endpoint URL` re-checks a live endpoint",
            )
        return [Subject(name=report.model.reference, sha256=endpoint_digest(report.model))]
    reference = Path(report.model.reference)
    # Per-file digests of a directory or of external data files are not in the report: take them now.
    if model_path is None and (reference.is_dir() or report.model.extra.get("external_data")):
        model_path = reference
    if model_path is None:
        return [Subject(name=PurePath(report.model.reference).name, sha256=audited)]
    path = Path(model_path)
    if path.is_dir():
        return directory_subjects(path)
    subjects = file_model_subjects(path)
    # One file: its own sha256 (what reports have always held); several: their manifest's.
    actual = subjects[0].sha256 if len(subjects) == 1 else manifest_sha256([(s.name, s.sha256) for s in subjects])
    if actual != audited:
        raise SignatureError(
            f"subject mismatch: {path} (with {len(subjects) - 1} external data file(s)) has sha256 {actual}, "
            f"but the report audited {audited}",
            "the model file or its external data changed after the audit; audit it again",
        )
    return subjects


def model_subjects(path: PathLike) -> list[Subject]:
    """Subjects describing the model at `path` as it is on disk now."""
    path = Path(path)
    if path.is_dir():
        return directory_subjects(path)
    return file_model_subjects(path)


def file_model_subjects(path: Path) -> list[Subject]:
    """The model file and every file it references (ONNX external data), named relative to its folder.

    For a self-contained file this is one subject named by the file name, as it always was.
    """
    if not path.is_file():
        raise DataError(f"model file not found: {path}", "check the --model path")
    files = model_files(path)
    return files_subjects(path.parent, files) if len(files) > 1 else [Subject(name=path.name, sha256=file_sha256(path))]


def _check_endpoint_subject(subjects: list[Subject], model: ModelInfo) -> None:
    """An endpoint's subject is derived from the signed report itself: they must agree."""
    if model.sha256 is not None:
        return
    expected = Subject(name=model.reference, sha256=endpoint_digest(model))
    if subjects != [expected]:
        raise SignatureError(
            f"the subject does not match the endpoint identity in the signed report ({model.reference})",
            "the envelope was not made by fimaudit attest; re-sign the report",
        )


def directory_subjects(root: Path) -> list[Subject]:
    """One subject per regular file under `root`, named by its relative POSIX path, sorted."""
    files = directory_files(root)
    if not files:
        raise UsageError(f"model directory {root} holds no files", "point at the model's file or a non-empty directory")
    return files_subjects(root, files)


def files_subjects(root: Path, files: list[Path]) -> list[Subject]:
    """One subject per file, named by its POSIX path relative to `root`, sorted by name."""
    named = sorted((p.relative_to(root).as_posix(), p) for p in files)
    return [Subject(name=name, sha256=file_sha256(p)) for name, p in named]


def check_subjects(subjects: list[Subject], path: Path) -> bool:
    """True when the files at `path` are exactly the attested subjects; else SignatureError."""
    if not path.exists():
        raise DataError(f"model path not found: {path}", "check the --model path")
    current = model_subjects(path)
    # A lone file is compared by digest only (renaming it does not change the model); a model
    # that now references external data no longer matches a one-file subject, since its weights
    # were never attested.
    if path.is_file() and len(subjects) == 1 and len(current) == 1:
        _compare_file(subjects[0], path)
        return True
    actual = {s.name: s.sha256 for s in current}
    expected = {s.name: s.sha256 for s in subjects}
    if actual != expected:
        raise SignatureError(f"subject mismatch: {_describe_difference(expected, actual, path)}",
                             "this is not the model the report is about; do not rely on the report for it")
    return True


def _compare_file(subject: Subject, path: Path) -> None:
    # Names are not compared: renaming a file does not change which model it is.
    actual = file_sha256(path)
    if actual != subject.sha256:
        raise SignatureError(
            f"subject mismatch: {path} has sha256 {actual}, the envelope attests {subject.name} with sha256 {subject.sha256}",
            "this is not the model the report is about; do not rely on the report for it",
        )


def _describe_difference(expected: dict[str, str], actual: dict[str, str], path: Path) -> str:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(name for name in set(expected) & set(actual) if expected[name] != actual[name])
    parts = [f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
             for label, names in (("missing", missing), ("not attested", extra), ("changed", changed)) if names]
    return f"{path} differs from the {len(expected)} attested file(s) ({'; '.join(parts)})"


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def load_envelope(path: PathLike) -> dict[str, Any]:
    """Read an envelope file; its shape is checked when it is signed or verified."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"envelope file not found: {path}", "check the path to the .dsse.json file") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}", "check that the path is a readable file") from exc
    return envelope_from_bytes(data)


def envelope_to_bytes(envelope: dict[str, Any]) -> bytes:
    """The file form of an envelope (the signed bytes are inside, base64, so layout is free)."""
    return (json.dumps(envelope, indent=2) + "\n").encode("utf-8")


def unverified_statement(envelope: dict[str, Any]) -> dict[str, Any]:
    """Decode a well-formed envelope's statement WITHOUT checking signatures (for display only)."""
    try:
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed envelope: cannot decode the payload: {exc}",
                             "pass the DSSE envelope exactly as fimaudit wrote it") from exc
    if not isinstance(statement, dict):
        raise SignatureError("malformed envelope: the payload is not a JSON object")
    return statement


def _predicate_of(statement: dict[str, Any]) -> AuditPredicate | AuditPredicateV1:
    """The predicate, read by the model of its predicateType (v2, or v1 for envelopes signed before v2)."""
    model = _PREDICATE_MODELS.get(statement.get("predicateType"))  # type: ignore[arg-type]
    if model is None:
        raise SignatureError(f"not a fimaudit report: predicateType is {statement.get('predicateType')!r}",
                             f"fimaudit handles only {PREDICATE_TYPE} and {PREDICATE_TYPE_V1} attestations")
    raw = statement.get("predicate")
    try:
        predicate = model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "predicate"
        raise SignatureError(f"the predicate is not a fimaudit audit report: {where}: {first['msg']}",
                             "it was written by another tool or another version of fimaudit") from exc
    _require_every_section(model, raw)
    return predicate


def _require_every_section(model: type[AuditPredicateV1], raw: Any) -> None:
    """A v2 predicate must state each section in its signed bytes: one left to be derived (or to a
    default) would be shown to a reader although nobody signed it."""
    missing = sorted(set(model.model_fields) - set(raw)) if isinstance(raw, dict) else []
    if missing:
        raise SignatureError(f"the predicate is not a fimaudit audit report: it lacks {', '.join(missing)}",
                             "every v2 predicate states all its sections; it was not made by fimaudit attest")


# --------------------------------------------------------------------------- #
# content checks: shared by verify (which refuses) and render (which shows them)
# --------------------------------------------------------------------------- #

_STAT_FIELDS = ("median", "p90", "p99", "max", "min")


def policy_problems(report: AuditReport, policy: PolicyResult | None) -> list[str]:
    """How a recorded policy verdict disagrees with the report it judges (empty: it agrees)."""
    return [] if policy is None else inconsistencies(policy, report.summary)


def summary_problems(report: AuditReport) -> list[str]:
    """How the report's summary disagrees with its own samples, recomputed with report.summarize.

    Policies judge the summary, so a summary edited apart from its samples would let a verdict
    rest on figures nobody measured.
    """
    samples, recorded = report.samples, report.summary
    actual = summarize(samples, sum(s.queries for s in samples), recorded.wall_seconds)
    problems = [f"summary.{name} is {getattr(recorded, name)}, the samples give {getattr(actual, name)}"
                for name in ("n", "queries", "flags") if getattr(recorded, name) != getattr(actual, name)]
    for name in ("lambda_max", "epsilon_tau"):
        problems += _stats_problems(f"summary.{name}", getattr(recorded, name), getattr(actual, name))
    if _per_class(recorded.per_class) != _per_class(actual.per_class):
        problems.append("summary.per_class does not match the samples' predicted classes")
    return problems + bounds_problems(report)


def section_problems(predicate: AuditPredicate) -> list[str]:
    """How a v2 predicate's readable sections disagree with its report or drop a non-claim (empty: they agree)."""
    report = predicate.report
    derived = {"threat_model": sections.threat_model(report), "method": sections.method(report), "sample": sections.sample_info(report)}
    problems = [f"{name} does not match what the report records" for name, value in derived.items()
                if getattr(predicate, name) != value]
    problems += [f"the non-claim {claim!r} is missing or reworded" for claim in sections.missing_non_claims(predicate.non_claims)]
    if predicate.harness is None:
        problems.append("no harness is recorded")
    return problems


def content_problems(report: AuditReport, policy: PolicyResult | None) -> list[str]:
    """Every way a report (and its recorded verdict) contradicts itself; render shows these, verify refuses."""
    return summary_problems(report) + policy_problems(report, policy)


def _stats_problems(where: str, recorded: Stats, actual: Stats) -> list[str]:
    return [f"{where}.{field} is {getattr(recorded, field)}, the samples give {getattr(actual, field)}"
            for field in _STAT_FIELDS if not _same(getattr(recorded, field), getattr(actual, field))]


def _per_class(per_class: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {k: (v.n, round(v.lambda_max_median, 12), v.epsilon_tau_median and round(v.epsilon_tau_median, 12))
            for k, v in per_class.items()}


def _same(a: float | None, b: float | None) -> bool:
    # Recomputed with the same numpy the figures agree exactly; another numpy may differ in the last bits.
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300)


def _check_sections(predicate: AuditPredicate | AuditPredicateV1) -> None:
    if not isinstance(predicate, AuditPredicate):
        return  # v1 had no sections beyond the report and verdict, checked already
    problems = section_problems(predicate)
    if problems:
        raise SignatureError(f"the signed predicate contradicts its own report: {'; '.join(problems)}",
                             "the predicate was not made by fimaudit attest, or was altered before signing; do not rely on it")


def _check_content(predicate: AuditPredicateV1) -> None:
    report, policy = predicate.report, predicate.policy
    problems = summary_problems(report)
    if problems:
        raise SignatureError(f"the signed summary contradicts the signed samples: {'; '.join(problems)}",
                             "the report was altered or written by a faulty tool; do not rely on it, audit again")
    problems = policy_problems(report, policy)
    if problems:
        raise SignatureError(f"the signed policy verdict contradicts the signed report: {'; '.join(problems)}",
                             "the signer recorded a wrong verdict; do not rely on it")


def _check_file_subject(subjects: list[Subject], model: ModelInfo) -> None:
    """A one-file model's subject must carry the digest the report audited, or the signature
    vouches for figures about one model while naming another."""
    if model.sha256 is None or len(subjects) != 1:
        return
    subject = subjects[0]
    # A directory holding a single file is identified by its one-line manifest instead.
    if model.sha256 not in (subject.sha256, manifest_sha256([(subject.name, subject.sha256)])):
        raise SignatureError(
            f"the subject {subject.name} has sha256 {subject.sha256}, but the signed report audited a model "
            f"with sha256 {model.sha256}",
            "the envelope was not made by fimaudit attest (or was made for another model); do not rely on it",
        )


def _refuse_duplicate_keys(keys: list[Ed25519PublicKey]) -> None:
    """Two copies of one key would silently count as one signer where the caller asked for two."""
    repeated = sorted(kid for kid, n in Counter(keyid(k) for k in keys).items() if n > 1)
    if repeated:
        raise UsageError(
            f"the same public key (keyid {repeated[0]}) was given more than once; it can only vouch for one signer",
            "pass each signer's public key once; to require two signers, pass two different keys",
        )


def _normalised_keyids(envelope: dict[str, Any]) -> dict[str, Any]:
    """A copy whose signature keyids are lowercase, as fimaudit.signing.keys.keyid writes them.

    keyids are hex digests, so case carries no meaning; left as is, an upper-case keyid would be
    listed as an unchecked signature by some other key. The keyid is not part of the signed
    bytes, so this changes nothing that is verified.
    """
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list):
        return envelope  # malformed: verify_envelope says how
    fixed = [{**sig, "keyid": sig["keyid"].lower()} if isinstance(sig, dict) and isinstance(sig.get("keyid"), str) else sig
             for sig in signatures]
    return {**envelope, "signatures": fixed}


def _signed_envelope(envelope: EnvelopeLike, error: type[FimauditError], why: str, fix: str) -> dict[str, Any]:
    """The envelope as a dict with normalised keyids; a bare report is refused as `error`, saying `why`.

    Without this, an unsigned report fails on its first missing envelope field
    ("malformed envelope: missing field 'payloadType'"), which hides the real mistake.
    """
    data = envelope if isinstance(envelope, dict) else load_envelope(envelope)
    kind = unsigned_kind(data)
    if kind is not None:
        name = "the given data" if isinstance(envelope, dict) else os.fsdecode(envelope)
        raise error(f"{name} is an unsigned fimaudit {kind}, not a signed envelope: {why}.", fix)
    return _normalised_keyids(data)


def unsigned_kind(data: Mapping[str, Any]) -> str | None:
    """What `data` is when `fimaudit audit` wrote it unsigned ("report" or "predicate ..."), else None."""
    if "payloadType" in data:
        return None
    if isinstance(data.get("report"), dict) and "policy" in data:
        return "predicate (a report with its policy verdict)"
    if _REPORT_FIELDS <= data.keys():
        return "report"
    return None


def _private_key(key: PrivateKeyLike) -> Ed25519PrivateKey:
    return key if isinstance(key, Ed25519PrivateKey) else load_signing_key(key)


def _public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    return key if isinstance(key, Ed25519PublicKey) else load_public_key(Path(key))
