"""Reports are re-checked before they are shown or trusted: render re-evaluates any verdict, verify
checks the summary against the samples and the subject against the report, keyids are matched
without regard to case, duplicate keys are refused, rewritten files keep their mode, and HTML
neutralises bidi controls and very long strings."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import fimaudit
from fimaudit.errors import UsageError
from fimaudit.fileio import atomic_write
from fimaudit.policy import PolicyResult, load_policy
from fimaudit.render import MAX_TEXT, render_html
from fimaudit.report import AuditReport
from fimaudit.signing import (
    AuditPredicate,
    SignatureError,
    attest,
    content_problems,
    keyid,
    make_statement,
    sign_envelope,
    verify,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
DATA = ROOT / "examples" / "digits_test.npy"
MODEL_SHA256 = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
POLICY = '[[check]]\nfigure = "n"\nop = ">="\nvalue = 100\n'


def _key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


@pytest.fixture(scope="module")
def report() -> AuditReport:
    return fimaudit.audit(fimaudit.load_model(EXAMPLE), np.load(DATA)[:5], directions=16)


@pytest.fixture(scope="module")
def failing(report: AuditReport, tmp_path_factory: pytest.TempPathFactory) -> PolicyResult:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(POLICY)
    verdict = load_policy(path).evaluate(report)
    assert not verdict.passed  # n = 5 < 100
    return verdict


def forged_pass(verdict: PolicyResult) -> PolicyResult:
    """What a buggy or hostile writer could record: every check 'passed' whatever the figures say."""
    checks = [c.model_copy(update={"passed": True}) for c in verdict.checks]
    return verdict.model_copy(update={"passed": True, "checks": checks})


def signed(predicate: AuditPredicate, key: Ed25519PrivateKey, sha256: str = MODEL_SHA256) -> dict[str, Any]:
    subject = [{"name": "digits.onnx", "digest": {"sha256": sha256}}]
    return sign_envelope(make_statement(subject, predicate.model_dump(mode="json")), key)


def with_summary(report: AuditReport, **changes: Any) -> AuditReport:
    return report.model_copy(update={"summary": report.summary.model_copy(update=changes)})


# --------------------------------------------------------------------------- render re-checks verdicts


def test_render_shows_a_contradicted_unsigned_verdict_as_such(report: AuditReport, failing: PolicyResult) -> None:
    page = render_html(report, forged_pass(failing))
    assert "CONTRADICTED" in page
    assert "<span class='pass'>PASSED</span>" not in page
    assert "n &gt;= 100 recorded as passed=True" in page  # the same words verify refuses with


def test_render_shows_a_consistent_verdict_plainly(report: AuditReport, failing: PolicyResult) -> None:
    page = render_html(report, failing)
    assert "<span class='fail'>FAILED</span>" in page and "CONTRADICTED" not in page


def test_cli_render_of_a_forged_unsigned_predicate(report: AuditReport, failing: PolicyResult, tmp_path: Path) -> None:
    path = tmp_path / "forged.json"
    path.write_text(AuditPredicate(report=report, policy=forged_pass(failing)).to_json())
    done = subprocess.run([sys.executable, "-m", "fimaudit.cli", "render", str(path)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "forged.html").read_text()
    assert "CONTRADICTED" in page and "<span class='pass'>PASSED</span>" not in page


def test_render_flags_a_summary_that_contradicts_its_samples(report: AuditReport) -> None:
    page = render_html(with_summary(report, n=500))
    assert "contradicts itself" in page and "summary.n is 500, the samples give 5" in page
    assert "contradicts itself" not in render_html(report)


# --------------------------------------------------------------------------- verify checks content


@pytest.mark.parametrize(("changes", "message"), [
    ({"n": 500}, "summary.n is 500"),
    ({"queries": 1}, "summary.queries is 1"),
    ({"flags": {"saturated": 3}}, "summary.flags"),
])
def test_verify_refuses_a_summary_that_contradicts_the_samples(report: AuditReport, changes: dict[str, Any], message: str) -> None:
    key = _key("auditor")
    envelope = signed(AuditPredicate(report=with_summary(report, **changes), policy=None), key)
    with pytest.raises(SignatureError, match=f"summary contradicts the signed samples: .*{message}"):
        verify(envelope, key.public_key())


def test_verify_refuses_an_edited_median(report: AuditReport) -> None:
    key = _key("auditor")
    median = report.summary.lambda_max.median
    lam = report.summary.lambda_max.model_copy(update={"median": median / 10})
    envelope = signed(AuditPredicate(report=with_summary(report, lambda_max=lam), policy=None), key)
    with pytest.raises(SignatureError, match="summary.lambda_max.median"):
        verify(envelope, key.public_key())


def test_content_problems_empty_for_a_real_audit(report: AuditReport, failing: PolicyResult) -> None:
    assert content_problems(report, failing) == []


def test_verify_refuses_a_subject_other_than_the_audited_file(report: AuditReport) -> None:
    key = _key("auditor")
    envelope = signed(AuditPredicate(report=report, policy=None), key, sha256="ab" * 32)
    with pytest.raises(SignatureError, match=f"audited a model with sha256 {MODEL_SHA256}"):
        verify(envelope, key.public_key())


def test_verify_accepts_what_attest_made(report: AuditReport) -> None:
    key = _key("auditor")
    result = verify(attest(report, key), key.public_key(), EXAMPLE)
    assert result.signers == [keyid(key.public_key())] and result.subject_ok


# --------------------------------------------------------------------------- keyids


def test_upper_case_keyid_is_checked_not_listed_as_unverified(report: AuditReport) -> None:
    key = _key("auditor")
    envelope = attest(report, key)
    envelope["signatures"][0]["keyid"] = envelope["signatures"][0]["keyid"].upper()
    result = verify(envelope, key.public_key())
    assert result.signers == [keyid(key.public_key())] and result.unverified == []


def test_upper_and_lower_case_copies_of_one_keyid_are_refused(report: AuditReport) -> None:
    key = _key("auditor")
    envelope = attest(report, key)
    sig = envelope["signatures"][0]
    envelope["signatures"].append({**sig, "keyid": sig["keyid"].upper()})
    with pytest.raises(SignatureError, match="more than one signature by key"):
        verify(envelope, key.public_key())


def test_the_same_key_given_twice_is_refused_plainly(report: AuditReport) -> None:
    key = _key("auditor")
    with pytest.raises(UsageError, match="same public key .* given more than once"):
        verify(attest(report, key), [key.public_key(), _key("auditor").public_key()])


def test_verify_does_not_modify_the_callers_envelope(report: AuditReport) -> None:
    key = _key("auditor")
    envelope = attest(report, key)
    envelope["signatures"][0]["keyid"] = envelope["signatures"][0]["keyid"].upper()
    before = json.dumps(envelope)
    verify(envelope, key.public_key())
    assert json.dumps(envelope) == before


# --------------------------------------------------------------------------- file modes


def test_rewrite_keeps_the_mode_of_the_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "report.dsse.json"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_new_files_and_explicit_modes(tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(atomic_write(tmp_path / "new", b"x")).st_mode) == 0o644
    path = tmp_path / "explicit"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    assert stat.S_IMODE(os.stat(atomic_write(path, b"x", mode=0o600)).st_mode) == 0o600


# --------------------------------------------------------------------------- HTML text


def with_reference(report: AuditReport, reference: str) -> AuditReport:
    return report.model_copy(update={"model": report.model.model_copy(update={"reference": reference})})


@pytest.mark.parametrize("control", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"])
def test_bidi_controls_are_neutralised(report: AuditReport, control: str) -> None:
    page = render_html(with_reference(report, f"evil{control}xnno.model"))
    assert control not in page
    assert f"evil[U+{ord(control):04X}]xnno.model" in page


def test_very_long_strings_are_truncated(report: AuditReport) -> None:
    page = render_html(with_reference(report, "A" * 100_000))
    assert "A" * (MAX_TEXT + 1) not in page
    assert f"({100_000 - MAX_TEXT:,} more characters)" in page
    assert "overflow-wrap:anywhere" in page  # what remains wraps instead of widening the page


def test_payload_is_not_touched_by_keyid_normalisation(report: AuditReport) -> None:
    key = _key("auditor")
    envelope = attest(report, key)
    envelope["signatures"][0]["keyid"] = envelope["signatures"][0]["keyid"].upper()
    result = verify(envelope, key.public_key())
    assert result.predicate.report == AuditReport.model_validate(
        json.loads(base64.b64decode(envelope["payload"]))["predicate"]["report"])


def test_verify_refuses_an_edited_population_bound(report: AuditReport) -> None:
    # Policies judge the bounds by default, so a signed report whose bound was lowered after the
    # audit must not verify, however valid its signature.
    key = _key("auditor")
    upper = dict(report.summary.lambda_max_upper)
    assert upper["p50"] is not None, "the fixture needs enough inputs for a p50 bound"
    upper["p50"] = upper["p50"] / 10
    envelope = signed(AuditPredicate(report=with_summary(report, lambda_max_upper=upper), policy=None), key)
    with pytest.raises(SignatureError, match="lambda_max_upper"):
        verify(envelope, key.public_key())
