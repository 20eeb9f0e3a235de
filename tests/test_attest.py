"""The Python signing API: attest, co-sign, verify; subjects; the published predicate schema."""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

import fimaudit
from fimaudit.errors import DataError, UsageError
from fimaudit.policy import PolicyResult, load_policy
from fimaudit.report import AuditReport
from fimaudit.signing import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    AuditPredicate,
    KeyFileError,
    SignatureError,
    Subject,
    VerificationResult,
    attest,
    build_predicate,
    canonical_json,
    generate_keypair,
    keyid,
    load_public_key,
    load_signing_key,
    make_statement,
    predicate_json_schema,
    sign,
    sign_envelope,
    verify,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
GOLDEN_KEYID = "4170f4e4fef9fe19c89e04189f50eb29a3f6bb92088ba16121949cd0c96f12b7"
EXAMPLE = ROOT / "examples" / "digits.onnx"
EXAMPLE_DATA = ROOT / "examples" / "digits_test.npy"
MODEL_SHA256 = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()


def _key(label: str) -> Ed25519PrivateKey:
    """Deterministic keys keep failures reproducible."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


@pytest.fixture(scope="module")
def report() -> AuditReport:
    x = np.load(EXAMPLE_DATA)[:6]
    return fimaudit.audit(fimaudit.load_model(EXAMPLE), x, directions=16)


@pytest.fixture(scope="module")
def verdict(report: AuditReport, tmp_path_factory: pytest.TempPathFactory) -> PolicyResult:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text('[[check]]\nfigure = "n"\nop = ">="\nvalue = 100\n'
                    '[[check]]\nfigure = "lambda_max.max"\nop = "<"\nvalue = 1e9\n')
    return load_policy(path).evaluate(report)


def _payload(envelope: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(envelope["payload"]))


def _signed_statement(predicate: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """An authentic envelope whose content we choose: what a buggy or hostile signer could issue."""
    subject = [{"name": "digits.onnx", "digest": {"sha256": MODEL_SHA256}}]
    return sign_envelope(make_statement(subject, predicate), key)


# --------------------------------------------------------------------------- #
# the predicate and its schema
# --------------------------------------------------------------------------- #


def test_published_predicate_schema_matches_models() -> None:
    published = (ROOT / "docs" / "predicate.schema.json").read_text()
    assert published == predicate_json_schema(), "regenerate with: fimaudit schema --predicate > docs/predicate.schema.json"


def test_signed_predicate_validates_and_round_trips(report: AuditReport, verdict: PolicyResult) -> None:
    envelope = attest(report, _key("auditor"), verdict)
    statement = _payload(envelope)
    jsonschema.validate(statement["predicate"], json.loads(predicate_json_schema()))
    assert statement["predicateType"] == PREDICATE_TYPE == "https://fimaudit.dev/audit-report/v2"
    assert set(statement["predicate"]) == {"report", "policy", "assurance", "reproduction", "threat_model", "method", "sample",
                                           "harness", "non_claims", "compliance"}
    # Floats pass through RFC 8785 text and back without losing a bit.
    signed = AuditPredicate.model_validate(statement["predicate"])
    assert signed == build_predicate(report, verdict)
    assert signed.report == report and signed.policy == verdict
    assert base64.b64decode(envelope["payload"]) == canonical_json(statement)


def test_policy_is_explicitly_null_without_a_policy(report: AuditReport) -> None:
    statement = _payload(attest(report, _key("auditor")))
    assert "policy" in statement["predicate"] and statement["predicate"]["policy"] is None


def test_attest_is_deterministic(report: AuditReport, verdict: PolicyResult) -> None:
    assert attest(report, _key("auditor"), verdict) == attest(report, _key("auditor"), verdict)


def test_attest_evaluates_a_policy_it_is_given(report: AuditReport, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[[check]]\nfigure = "n"\nop = "=="\nvalue = 6\n')
    result = verify(attest(report, _key("auditor"), load_policy(path)), [_key("auditor").public_key()])
    assert result.policy_passed is True
    assert result.predicate.policy is not None and result.predicate.policy.checks[0].measured == 6.0


# --------------------------------------------------------------------------- #
# round trips
# --------------------------------------------------------------------------- #


def test_attest_cosign_verify(report: AuditReport, verdict: PolicyResult) -> None:
    auditor, owner = _key("auditor"), _key("owner")
    envelope = sign(attest(report, auditor, verdict), owner)
    result = verify(envelope, [auditor.public_key(), owner.public_key()], EXAMPLE)
    assert isinstance(result, VerificationResult)
    assert result.signers == [keyid(auditor.public_key()), keyid(owner.public_key())]
    assert result.unverified == []
    assert result.subjects == [Subject(name="digits.onnx", sha256=MODEL_SHA256)]
    assert result.subject_ok is True
    assert result.policy_passed is False  # n >= 100 fails on 6 inputs
    assert result.predicate.report == report


def test_without_model_path_the_subject_is_not_checked(report: AuditReport) -> None:
    result = verify(attest(report, _key("auditor")), [_key("auditor").public_key()])
    assert result.subject_ok is None and result.policy_passed is None


def test_only_the_named_keys_are_checked(report: AuditReport) -> None:
    auditor, owner = _key("auditor"), _key("owner")
    envelope = sign(attest(report, auditor), owner)
    result = verify(envelope, [auditor.public_key()])
    assert result.signers == [keyid(auditor.public_key())]
    assert result.unverified == [keyid(owner.public_key())]
    with pytest.raises(SignatureError, match=f"no signature by key {keyid(_key('stranger').public_key())}"):
        verify(envelope, [auditor.public_key(), _key("stranger").public_key()])


def test_api_accepts_paths(report: AuditReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain_key, plain_pub = generate_keypair(tmp_path / "plain")
    locked_key, locked_pub = generate_keypair(tmp_path / "locked", passphrase=b"s3cret")
    monkeypatch.setenv("FIMAUDIT_KEY_PASSPHRASE", "s3cret")
    # The env passphrase unlocks the encrypted key and is not forced on the plain one.
    envelope_path = tmp_path / "r.dsse.json"
    envelope_path.write_text(json.dumps(attest(report, locked_key)))
    envelope_path.write_text(json.dumps(sign(envelope_path, plain_key)))
    result = verify(envelope_path, [plain_pub, str(locked_pub)], str(EXAMPLE))
    assert len(result.signers) == 2 and result.subject_ok is True
    assert verify(envelope_path, str(plain_pub)).signers == [keyid(load_public_key(plain_pub))]


def test_signing_key_prompt_is_used_only_for_encrypted_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIMAUDIT_KEY_PASSPHRASE", raising=False)
    locked_key, locked_pub = generate_keypair(tmp_path / "locked", passphrase=b"s3cret")
    plain_key, plain_pub = generate_keypair(tmp_path / "plain")
    asked: list[Path] = []

    def prompt(path: Path) -> bytes:
        asked.append(path)
        return b"s3cret"

    assert keyid(load_signing_key(locked_key, prompt).public_key()) == keyid(load_public_key(locked_pub))
    assert keyid(load_signing_key(plain_key, prompt).public_key()) == keyid(load_public_key(plain_pub))
    assert asked == [locked_key]
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_signing_key(locked_key, lambda _: b"nope")
    with pytest.raises(KeyFileError, match="no passphrase"):
        load_signing_key(locked_key)


def test_securesystemslib_verifies_our_attestation(report: AuditReport, verdict: PolicyResult) -> None:
    auditor, owner = _key("auditor"), _key("owner")
    envelope = sign(attest(report, auditor, verdict), owner)
    keys = [SSlibKey.from_crypto(k.public_key(), keyid=keyid(k.public_key())) for k in (auditor, owner)]
    verified = Envelope.from_dict(copy.deepcopy(envelope)).verify(keys, threshold=2)
    assert set(verified) == {keyid(auditor.public_key()), keyid(owner.public_key())}


def test_we_verify_an_attestation_signed_by_securesystemslib(report: AuditReport, verdict: PolicyResult) -> None:
    auditor = _key("auditor")
    statement = _payload(attest(report, auditor, verdict))
    sslib = Envelope(payload=json.dumps(statement).encode(), payload_type=PAYLOAD_TYPE, signatures={})
    sslib.sign(CryptoSigner(auditor, SSlibKey.from_crypto(auditor.public_key(), keyid=keyid(auditor.public_key()))))
    result = verify(json.loads(json.dumps(sslib.to_dict())), [auditor.public_key()], EXAMPLE)
    assert result.predicate == build_predicate(report, verdict)


# --------------------------------------------------------------------------- #
# subjects
# --------------------------------------------------------------------------- #


def test_model_file_must_match_the_report_when_given(report: AuditReport, tmp_path: Path) -> None:
    other = tmp_path / "digits.onnx"
    other.write_bytes(EXAMPLE.read_bytes() + b"\0")
    with pytest.raises(SignatureError, match="subject mismatch: .* but the report audited"):
        attest(report, _key("auditor"), model_path=other)
    renamed = tmp_path / "renamed.onnx"
    shutil.copy(EXAMPLE, renamed)
    assert _payload(attest(report, _key("auditor"), model_path=renamed))["subject"][0]["name"] == "renamed.onnx"


def test_verify_detects_another_model_file(report: AuditReport, tmp_path: Path) -> None:
    envelope = attest(report, _key("auditor"))
    other = tmp_path / "digits.onnx"
    other.write_bytes(EXAMPLE.read_bytes()[:-1])
    with pytest.raises(SignatureError, match="subject mismatch") as caught:
        verify(envelope, [_key("auditor").public_key()], other)
    assert caught.value.exit_code == 5
    with pytest.raises(DataError, match="model path not found"):
        verify(envelope, [_key("auditor").public_key()], tmp_path / "missing.onnx")


def _endpoint(report: AuditReport, **extra: str) -> AuditReport:
    return report.model_copy(update={"model": report.model.model_copy(
        update={"reference": "triton://models.example:8000/digits/3", "adapter": "triton", "sha256": None, "extra": extra})})


def test_endpoints_without_fingerprint_cannot_be_attested(report: AuditReport) -> None:
    with pytest.raises(UsageError, match="neither a file digest nor an endpoint fingerprint"):
        attest(_endpoint(report), _key("auditor"))


def test_endpoint_subject_is_the_digest_of_its_identity(report: AuditReport) -> None:
    auditor = _key("auditor")
    endpoint = _endpoint(report, server_name="triton", model_version="3", config_sha256="ab" * 32, fingerprint="[[0.5, 0.5]]")
    envelope = attest(endpoint, auditor)
    keys = [SSlibKey.from_crypto(auditor.public_key(), keyid=keyid(auditor.public_key()))]
    assert Envelope.from_dict(copy.deepcopy(envelope)).verify(keys, threshold=1)  # independent verifier
    identity = {"adapter": "triton", "reference": endpoint.model.reference, "extra": dict(endpoint.model.extra)}
    expected = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert _payload(envelope)["subject"] == [{"name": endpoint.model.reference, "digest": {"sha256": expected}}]
    result = verify(envelope, [auditor.public_key()])
    assert result.subjects == [Subject(name=endpoint.model.reference, sha256=expected)]
    with pytest.raises(UsageError, match="is an endpoint"):
        attest(endpoint, auditor, model_path=EXAMPLE)


def test_endpoint_subject_must_match_the_signed_identity(report: AuditReport) -> None:
    """A validly signed statement whose subject names another endpoint identity is refused."""
    auditor = _key("auditor")
    endpoint = _endpoint(report, fingerprint="[[0.5, 0.5]]")
    statement = _payload(attest(endpoint, auditor))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    with pytest.raises(SignatureError, match="subject does not match the endpoint identity"):
        verify(sign_envelope(statement, auditor), [auditor.public_key()])


def _model_dir(root: Path) -> Path:
    (root / "weights").mkdir(parents=True)
    (root / "config.json").write_text('{"classes": 10}')
    (root / "weights" / "part-b.bin").write_bytes(b"\x01" * 100)
    (root / "weights" / "part-a.bin").write_bytes(b"\x02" * 100)
    return root


def test_directory_model_has_one_subject_per_file(report: AuditReport, tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path / "model")
    auditor = _key("auditor")
    envelope = attest(report, auditor, model_path=model_dir)
    subjects = _payload(envelope)["subject"]
    assert [s["name"] for s in subjects] == ["config.json", "weights/part-a.bin", "weights/part-b.bin"]
    assert subjects[1]["digest"]["sha256"] == hashlib.sha256(b"\x02" * 100).hexdigest()
    assert verify(envelope, [auditor.public_key()], model_dir).subject_ok is True


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda d: (d / "weights" / "part-a.bin").write_bytes(b"\x03" * 100), "changed: weights/part-a.bin"),
        (lambda d: (d / "extra.txt").write_text("x"), "not attested: extra.txt"),
        (lambda d: (d / "config.json").unlink(), "missing: config.json"),
    ],
)
def test_directory_changes_are_subject_mismatches(report: AuditReport, tmp_path: Path, change: Any, reason: str) -> None:
    model_dir = _model_dir(tmp_path / "model")
    envelope = attest(report, _key("auditor"), model_path=model_dir)
    change(model_dir)
    with pytest.raises(SignatureError, match=f"subject mismatch: .*{reason}"):
        verify(envelope, [_key("auditor").public_key()], model_dir)


def test_single_file_against_directory_subject(report: AuditReport, tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path / "model")
    envelope = attest(report, _key("auditor"), model_path=model_dir)
    with pytest.raises(SignatureError, match="subject mismatch"):
        verify(envelope, [_key("auditor").public_key()], model_dir / "config.json")


def test_empty_directory_is_refused(report: AuditReport, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no files"):
        attest(report, _key("auditor"), model_path=tmp_path / "empty")


# --------------------------------------------------------------------------- #
# authentic but unacceptable content
# --------------------------------------------------------------------------- #


def test_cosigning_refuses_a_foreign_predicate() -> None:
    envelope = _signed_statement({"verdict": "pass"}, _key("other tool"))
    with pytest.raises(SignatureError, match="not a fimaudit audit report"):
        sign(envelope, _key("owner"))


def test_verify_refuses_a_foreign_predicate() -> None:
    signer = _key("other tool")
    with pytest.raises(SignatureError, match="not a fimaudit audit report: report: Field required"):
        verify(_signed_statement({"verdict": "pass"}, signer), [signer.public_key()])


def test_verify_refuses_a_verdict_that_contradicts_the_report(report: AuditReport, verdict: PolicyResult) -> None:
    # A signer claiming "passed" for a failing check is caught even though the signature is valid.
    forged = verdict.model_copy(update={"passed": True, "checks": [c.model_copy(update={"passed": True}) for c in verdict.checks]})
    predicate = AuditPredicate(report=report, policy=forged).model_dump(mode="json")
    signer = _key("auditor")
    with pytest.raises(SignatureError, match="contradicts the signed report: n >= 100 recorded as passed=True"):
        verify(_signed_statement(predicate, signer), [signer.public_key()])


def test_public_api_is_exported() -> None:
    assert fimaudit.attest is attest and fimaudit.sign is sign and fimaudit.verify is verify
    for name in ("AuditPredicate", "VerificationResult", "PolicyResult", "PolicyCheck", "PolicyError",
                 "SignatureError", "KeyFileError", "load_policy"):
        assert name in fimaudit.__all__ and hasattr(fimaudit, name)


def test_signing_errors_are_the_ones_in_fimaudit_errors() -> None:
    # One class each: `except fimaudit.errors.KeyFileError` must catch what signing raises.
    import fimaudit.errors
    import fimaudit.signing

    assert fimaudit.signing.KeyFileError is fimaudit.errors.KeyFileError is fimaudit.KeyFileError
    assert fimaudit.signing.SignatureError is fimaudit.errors.SignatureError is fimaudit.SignatureError
    assert set(fimaudit.signing.__all__) <= set(dir(fimaudit.signing))


# --------------------------------------------------------------------------- #
# unsigned reports handed to verify or sign
# --------------------------------------------------------------------------- #


def test_verify_names_an_unsigned_report(report: AuditReport) -> None:
    with pytest.raises(SignatureError, match="the given data is an unsigned fimaudit report, not a signed envelope") as info:
        verify(report.model_dump(mode="json"), [_key("auditor").public_key()])
    assert "--sign KEY" in info.value.fix and "fimaudit.attest" in info.value.fix


def test_verify_names_an_unsigned_predicate(report: AuditReport, verdict: PolicyResult, tmp_path: Path) -> None:
    path = tmp_path / "predicate.json"
    path.write_text(AuditPredicate(report=report, policy=verdict).to_json())
    with pytest.raises(SignatureError, match=f"{path} is an unsigned fimaudit predicate"):
        verify(path, [_key("auditor").public_key()])


def test_cosigning_an_unsigned_report_is_a_usage_error(report: AuditReport) -> None:
    with pytest.raises(UsageError, match="unsigned fimaudit report.*only co-signs an envelope that is already signed") as info:
        sign(report.model_dump(mode="json"), _key("owner"))
    assert "fimaudit audit MODEL --data DATA --sign KEY" in info.value.fix


def test_other_json_without_payload_type_is_still_a_malformed_envelope() -> None:
    with pytest.raises(SignatureError, match="malformed envelope: missing field 'payloadType'"):
        verify({"payload": "", "signatures": []}, [_key("auditor").public_key()])


# --------------------------------------------------------------------------- #
# golden file: a report signed by fimaudit 0.2.0 (report schema 1.1) must keep verifying
# --------------------------------------------------------------------------- #


def test_golden_signed_report_still_verifies() -> None:
    result = verify(GOLDEN / "audit_report_v1.1.dsse.json", GOLDEN / "test_signer.pub", EXAMPLE)
    assert result.signers == [GOLDEN_KEYID] and result.unverified == []
    assert result.subjects == [Subject(name="digits.onnx", sha256=MODEL_SHA256)] and result.subject_ok is True
    assert result.predicate.report.schema_version == "1.1" and result.predicate.report.summary.n == 4
    assert result.policy_passed is False  # examples/policy.toml wants n >= 100


def test_golden_signed_report_verifies_with_securesystemslib() -> None:
    envelope = json.loads((GOLDEN / "audit_report_v1.1.dsse.json").read_text())
    public = load_public_key(GOLDEN / "test_signer.pub")
    key = SSlibKey.from_crypto(public, keyid=keyid(public))
    assert Envelope.from_dict(envelope).verify([key], threshold=1) == {GOLDEN_KEYID: key}


# --------------------------------------------------------------------------- #
# ONNX external data: part of the model's identity and of the subjects
# --------------------------------------------------------------------------- #


def _external_data_model(folder: Path, location: str = "weights.bin") -> Path:
    """The example model re-saved with every tensor in one external data file beside it."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(onnx.load(str(EXAMPLE)), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def _relocate_external_data(source: Path, target: Path, location: str) -> Path:
    """A copy of `source` whose external tensors all point at `location` (data left where it is)."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(target))
    return target


def test_onnx_external_data_is_part_of_identity_and_subjects(tmp_path: Path) -> None:
    path = _external_data_model(tmp_path / "m")
    model = fimaudit.load_model(path)
    ident = model.identity
    assert ident.extra["external_data"] == "weights.bin"
    assert ident.sha256 != hashlib.sha256(path.read_bytes()).hexdigest()
    audited = fimaudit.audit(model, np.load(EXAMPLE_DATA)[:2], directions=16)
    envelope = attest(audited, _key("auditor"))  # the report's path: per-file digests taken now
    names = [s["name"] for s in _payload(envelope)["subject"]]
    assert names == ["model.onnx", "weights.bin"]
    assert verify(envelope, [_key("auditor").public_key()], path).subject_ok is True
    weights = tmp_path / "m" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    with pytest.raises(SignatureError, match="subject mismatch: .*changed: weights.bin"):
        verify(envelope, [_key("auditor").public_key()], path)
    assert fimaudit.load_model(path).identity.sha256 != ident.sha256


def test_onnx_external_data_swapped_after_audit_is_not_signed(tmp_path: Path) -> None:
    path = _external_data_model(tmp_path / "m")
    audited = fimaudit.audit(fimaudit.load_model(path), np.load(EXAMPLE_DATA)[:2], directions=16)
    weights = tmp_path / "m" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    with pytest.raises(SignatureError, match="subject mismatch: .*external data"):
        attest(audited, _key("auditor"), model_path=path)


def test_one_file_subject_does_not_cover_external_data(report: AuditReport, tmp_path: Path) -> None:
    """An old-style envelope naming only the .onnx file must not vouch for weights beside it."""
    path = _external_data_model(tmp_path / "m")
    subject = [{"name": "model.onnx", "digest": {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}]
    predicate = AuditPredicate(report=report, policy=None).model_dump(mode="json")
    envelope = sign_envelope(make_statement(subject, predicate), _key("auditor"))
    with pytest.raises(SignatureError, match="not attested: weights.bin"):
        verify(envelope, [_key("auditor").public_key()], path)


@pytest.mark.parametrize("location", ["../x.bin", "/tmp/x.bin", "sub/../../x.bin"])
def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path: Path, location: str) -> None:
    source = _external_data_model(tmp_path, location="x.bin")
    escaping = _relocate_external_data(source, tmp_path / "inner" / "model.onnx", location)
    with pytest.raises(fimaudit.ModelError, match="outside the model's folder"):
        fimaudit.load_model(escaping)
    with pytest.raises(fimaudit.ModelError, match="outside the model's folder"):
        verify(attest(_report_of(source), _key("auditor")), [_key("auditor").public_key()], escaping)


def _report_of(path: Path) -> AuditReport:
    return fimaudit.audit(fimaudit.load_model(path), np.load(EXAMPLE_DATA)[:1], directions=16)
