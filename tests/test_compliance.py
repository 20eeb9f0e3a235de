"""The v2 predicate a compliance reviewer reads: its sections are signed and checked against the
report, the harness digest is reproducible, old envelopes still verify, and verify and render show
the assurance level and the non-claims."""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

import fimaudit
from fimaudit.cli.signing import declared_assurance
from fimaudit.errors import UsageError
from fimaudit.render import render_html
from fimaudit.report import AuditReport
from fimaudit.signing import (
    NON_CLAIMS,
    PREDICATE_TYPE,
    PREDICATE_TYPE_V1,
    AuditPredicate,
    AuditPredicateV1,
    SignatureError,
    attest,
    build_predicate,
    envelope_from_bytes,
    keyid,
    load_public_key,
    make_statement,
    package_digest,
    record_harness,
    sign_envelope,
    verify,
    verify_envelope,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
GOLDEN_PUB = GOLDEN / "test_signer.pub"
EXAMPLE = ROOT / "examples" / "digits.onnx"
DATA = ROOT / "examples" / "digits_test.npy"
MODEL_SHA256 = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
V2_FIELDS = {"report", "policy", "assurance", "reproduction", "threat_model", "method", "sample", "harness", "non_claims", "compliance"}


def _key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


@pytest.fixture(scope="module")
def report() -> AuditReport:
    return fimaudit.audit(fimaudit.load_model(EXAMPLE), np.load(DATA)[:6], directions=16)


def _statement(envelope: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(envelope["payload"]))


def _resign(predicate: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """An authentic envelope around a predicate we chose: what a faulty or hostile signer could issue."""
    return sign_envelope(make_statement([{"name": "digits.onnx", "digest": {"sha256": MODEL_SHA256}}], predicate), key)


def _sslib_verifies(envelope: dict[str, Any]) -> bool:
    public = load_public_key(GOLDEN_PUB)
    key = SSlibKey.from_crypto(public, keyid=keyid(public))
    return Envelope.from_dict(copy.deepcopy(envelope)).verify([key], threshold=1) == {keyid(public): key}


# --------------------------------------------------------------------------- the predicate's sections


def test_every_section_is_signed_and_read_back(report: AuditReport) -> None:
    key = _key("auditor")
    envelope = attest(report, key, assurance="third_party")
    statement = _statement(envelope)
    assert statement["predicateType"] == PREDICATE_TYPE == "https://fimaudit.dev/audit-report/v2"
    predicate = statement["predicate"]
    assert set(predicate) == V2_FIELDS and predicate["assurance"] == "third_party" and predicate["reproduction"] is None
    threat = predicate["threat_model"]
    assert threat["norm"] == "L2" and threat["tau"] == report.config.tau and threat["space"] == report.config.input_space
    assert threat["preprocessing_known"] is False and "unknown to fimaudit" in threat["preprocessing"]
    assert predicate["method"]["directions"] == 16 and predicate["method"]["scheme"] == report.config.scheme
    assert predicate["method"]["estimators_used"] == {"sketch": 6} and predicate["method"]["step_rule"] == report.config.step_rule
    assert predicate["sample"]["n"] == 6 and predicate["sample"]["data_sha256"] == report.data.sha256
    assert predicate["sample"]["details"] == "report.data"
    assert [c["id"] for c in predicate["non_claims"]] == [c.id for c in NON_CLAIMS]
    assert {"not_a_certified_radius", "local", "no_ranking_across_calibrations"} <= {c["id"] for c in predicate["non_claims"]}
    provisions = {(m["framework"].split(" (")[0], m["provision"]) for m in predicate["compliance"]["mapping"]}
    assert provisions == {("EU AI Act", "Art. 15(1)"), ("EU AI Act", "Art. 15(3)"), ("ISO/IEC TR 24029-1:2021", "statistical methods"),
                          ("NIST AI RMF 1.0", "MEASURE 2.5"), ("NIST AI RMF 1.0", "MEASURE 2.7")}
    assert "not legal advice" in predicate["compliance"]["note"]
    harness = predicate["harness"]
    assert harness["version"] == fimaudit.__version__ and harness["core"]["package"] == "fimaudit"
    assert harness["adapter"]["name"] == "fimaudit-onnx" and len(harness["adapter"]["sha256"]) == 64
    result = verify(envelope, key.public_key(), EXAMPLE)
    assert result.assurance == "third_party" and result.predicate_type == PREDICATE_TYPE
    assert isinstance(result.predicate, AuditPredicate) and result.predicate.harness is not None


def test_a_python_model_records_that_no_adapter_took_part() -> None:
    weights = np.random.default_rng(1).normal(size=(4, 3))
    model = fimaudit.CallableModel(lambda x: x.reshape(len(x), -1) @ weights, fimaudit.InputSpec((4,)), 3, outputs="logits")
    audited = fimaudit.audit(model, np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), directions=8)
    harness = build_predicate(audited, None).harness
    assert harness is not None and harness.adapter is None and "Python callable" in (harness.adapter_note or "")


@pytest.mark.parametrize("change, message", [
    (lambda p: p["threat_model"].update(tau=1.0), "threat_model does not match"),
    (lambda p: p["method"].update(directions=4096), "method does not match"),
    (lambda p: p["sample"].update(n=10_000), "sample does not match"),
    (lambda p: p.update(non_claims=[c for c in p["non_claims"] if c["id"] != "not_a_certified_radius"]), "'not_a_certified_radius' is missing"),
    (lambda p: p["non_claims"][0].update(statement="lambda_max bounds every perturbation."), "'local' is missing or reworded"),
    (lambda p: p.update(harness=None), "no harness is recorded"),
])
def test_verify_refuses_sections_that_say_more_than_the_report(report: AuditReport, change: Any, message: str) -> None:
    key = _key("auditor")
    predicate = _statement(attest(report, key))["predicate"]
    change(predicate)
    with pytest.raises(SignatureError, match=f"contradicts its own report: .*{message}"):
        verify(_resign(predicate, key), key.public_key())


def test_a_v2_predicate_must_state_every_section(report: AuditReport) -> None:
    key = _key("auditor")
    predicate = _statement(attest(report, key))["predicate"]
    del predicate["non_claims"]
    with pytest.raises(SignatureError, match="it lacks non_claims"):
        verify(_resign(predicate, key), key.public_key())


def test_extra_non_claims_are_welcome(report: AuditReport) -> None:
    key = _key("auditor")
    predicate = _statement(attest(report, key))["predicate"]
    predicate["non_claims"].append({"id": "no_text_models", "statement": "Not audited on text inputs.", "evidence": "scope"})
    verified = verify(_resign(predicate, key), key.public_key()).predicate
    assert isinstance(verified, AuditPredicate) and len(verified.non_claims) == len(NON_CLAIMS) + 1


def test_reproduced_needs_its_record(report: AuditReport) -> None:
    with pytest.raises(ValueError, match="needs the reproduction record"):
        attest(report, _key("auditor"), assurance="reproduced")
    key = _key("auditor")
    predicate = _statement(attest(report, key))["predicate"]
    predicate["assurance"] = "reproduced"
    with pytest.raises(SignatureError, match="needs the reproduction record"):
        verify(_resign(predicate, key), key.public_key())


def test_the_cli_declares_self_or_third_party_only() -> None:
    assert declared_assurance("self") == "self" and declared_assurance("third_party") == "third_party"
    with pytest.raises(UsageError, match="cannot be declared"):
        declared_assurance("reproduced")
    with pytest.raises(UsageError, match="must be self or third_party"):
        declared_assurance("independent")


def test_an_unsigned_predicate_derives_its_sections_from_the_report(report: AuditReport) -> None:
    predicate = AuditPredicate(report=report, policy=None)
    assert predicate.assurance == "self" and predicate.harness is None
    assert predicate.threat_model == build_predicate(report, None).threat_model
    assert AuditPredicate.from_json(predicate.to_json()) == predicate


# --------------------------------------------------------------------------- the harness digest


def _manifest_digest(package_dir: Path) -> str:
    """DIGEST_RULE, recomputed here independently: sha256sum lines of every file but bytecode."""
    named = sorted((p.relative_to(package_dir.parent).as_posix(), p) for p in package_dir.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {name}\n" for name, p in named)
    return hashlib.sha256(lines.encode()).hexdigest()


def test_harness_digest_is_reproducible_and_follows_its_rule(tmp_path: Path) -> None:
    installed = Path(fimaudit.__file__).parent
    digest, files = package_digest(installed)
    assert record_harness("onnx").core.sha256 == digest == _manifest_digest(installed)
    assert files == sum(1 for p in installed.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    copy_dir = Path(shutil.copytree(installed, tmp_path / "fimaudit"))
    assert package_digest(copy_dir) == (digest, files)  # the same files anywhere give the same digest
    (copy_dir / "__pycache__").mkdir(exist_ok=True)
    (copy_dir / "__pycache__" / "stray.cpython-311.pyc").write_bytes(b"bytecode")
    assert package_digest(copy_dir)[0] == digest  # what Python caches on import does not count


@pytest.mark.parametrize("change", [
    lambda d: (d / "signing" / "dsse.py").write_bytes((d / "signing" / "dsse.py").read_bytes() + b"\n# edited\n"),
    lambda d: (d / "extra_module.py").write_text("x = 1\n"),
    lambda d: (d / "report.py").unlink(),
])
def test_harness_digest_changes_with_any_installed_file(tmp_path: Path, change: Any) -> None:
    installed = Path(fimaudit.__file__).parent
    copy_dir = Path(shutil.copytree(installed, tmp_path / "fimaudit"))
    change(copy_dir)
    assert package_digest(copy_dir)[0] != package_digest(installed)[0]


# --------------------------------------------------------------------------- golden envelopes


def test_golden_v1_envelope_still_verifies_under_the_new_default_types() -> None:
    envelope = envelope_from_bytes((GOLDEN / "envelope_v1.dsse.json").read_bytes())
    result = verify_envelope(envelope, [load_public_key(GOLDEN_PUB)])
    assert result.statement["predicateType"] == PREDICATE_TYPE_V1 and _sslib_verifies(envelope)
    with pytest.raises(SignatureError, match="wrong predicateType"):
        verify_envelope(envelope, [load_public_key(GOLDEN_PUB)], predicate_type=PREDICATE_TYPE)


def test_golden_v1_1_report_still_verifies_and_declares_no_assurance() -> None:
    path = GOLDEN / "audit_report_v1.1.dsse.json"
    result = verify(path, GOLDEN_PUB, EXAMPLE)
    assert result.predicate_type == PREDICATE_TYPE_V1 and type(result.predicate) is AuditPredicateV1
    assert result.assurance is None and result.predicate.report.schema_version == "1.1"
    assert _sslib_verifies(json.loads(path.read_text()))


def test_golden_v2_report_verifies() -> None:
    path = GOLDEN / "audit_report_v2.dsse.json"
    result = verify(path, GOLDEN_PUB, EXAMPLE)
    assert result.predicate_type == PREDICATE_TYPE and result.assurance == "third_party"
    assert isinstance(result.predicate, AuditPredicate) and result.predicate.harness is not None
    assert result.predicate.harness.adapter is not None and result.predicate.harness.adapter.name == "fimaudit-onnx"
    assert result.policy_passed is False and result.subject_ok is True
    assert _sslib_verifies(json.loads(path.read_text()))


def test_golden_v1_generator_still_writes_the_same_bytes() -> None:
    sys.path.insert(0, str(GOLDEN))
    try:
        import make_golden  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(GOLDEN))
    envelope = sign_envelope(make_golden.golden_statement(), make_golden.golden_private_key())
    assert make_golden.envelope_text(envelope) == (GOLDEN / "envelope_v1.dsse.json").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- verify and render show it


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fimaudit.cli", *map(str, args)], check=False, capture_output=True, text=True, timeout=300)


def test_verify_prints_the_assurance_level(report: AuditReport, tmp_path: Path) -> None:
    key_path, pub_path = fimaudit.signing.generate_keypair(tmp_path / "auditor")
    envelope = tmp_path / "r.dsse.json"
    envelope.write_text(json.dumps(attest(report, key_path, assurance="third_party")))
    done = _cli("verify", envelope, "--key", pub_path)
    assert done.returncode == 0, done.stderr
    assert "assurance   third_party: declared by the signer: a party independent" in done.stdout
    old = _cli("verify", GOLDEN / "audit_report_v1.1.dsse.json", "--key", GOLDEN_PUB)
    assert old.returncode == 0 and f"assurance   not declared (predicate {PREDICATE_TYPE_V1}" in old.stdout


def test_render_shows_assurance_non_claims_and_harness(report: AuditReport, tmp_path: Path) -> None:
    key_path, pub_path = fimaudit.signing.generate_keypair(tmp_path / "auditor")
    envelope = tmp_path / "r.dsse.json"
    envelope.write_text(json.dumps(attest(report, key_path, assurance="third_party")))
    done = _cli("render", envelope, "--key", pub_path, "--out", tmp_path / "r.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text()
    assert "third_party: declared by the signer" in page and "unsigned here" not in page
    assert page.count("<li class='non-claim'>") == len(NON_CLAIMS) and "Signed with the figures" in page
    assert "is not a certified radius" in page and "fimaudit-onnx" in page
    assert record_harness("onnx").core.sha256 in page and "MEASURE 2.7" in page and "not legal advice" in page


def test_render_of_a_bare_report_says_nothing_was_declared(report: AuditReport) -> None:
    page = render_html(report)
    assert "not declared: a bare report or a v1 predicate states no assurance level" in page
    assert "carries no non-claims of its own" in page and page.count("<li class='non-claim'>") == len(NON_CLAIMS)
    unsigned = render_html(report, predicate=AuditPredicate(report=report, policy=None, assurance="third_party"))
    assert "third_party: declared by the signer" in unsigned and "unsigned here" in unsigned


def test_render_shows_population_bounds_when_the_report_has_them(report: AuditReport) -> None:
    if getattr(report.summary, "lambda_max_upper", None) is None:
        pytest.skip("this report carries no population bounds")
    page = render_html(report)
    assert "λ_max upper bound" in page and "ε_τ lower bound" in page and "none: " in page  # 6 inputs bound no quantile
    bare = report.model_copy(update={"summary": report.summary.model_copy(update={"lambda_max_upper": None, "epsilon_tau_lower": None})})
    assert "λ_max upper bound" not in render_html(bare)
