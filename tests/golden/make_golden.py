"""Regenerate the golden signing fixtures in this directory.

Run from the repository root:  PYTHONPATH=. python tests/golden/make_golden.py

The key is derived from a fixed seed and Ed25519 signatures are
deterministic, so rerunning this script rewrites byte-identical files.
If it ever produces different files, the signing format has changed and
old reports may no longer verify: that is what tests/test_dsse.py guards.

audit_report_v1.1.dsse.json is NOT made here and must never be regenerated: it is a
real report (examples/digits.onnx, 4 inputs, examples/policy.toml) that fimaudit 0.2.0
(report schema 1.1) signed with test_signer.key, kept so that tests/test_attest.py proves
old signed reports still verify. Remaking it would only prove that new ones do.

THE PRIVATE KEY HERE IS PUBLIC. It exists only for tests; never trust it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fimaudit.signing import PREDICATE_TYPE_V1, make_statement, sign_envelope

GOLDEN_DIR = Path(__file__).resolve().parent
SEED_LABEL = b"fimaudit golden test signer v1"
KEY_FILE = GOLDEN_DIR / "test_signer.key"
PUB_FILE = GOLDEN_DIR / "test_signer.pub"
ENVELOPE_FILE = GOLDEN_DIR / "envelope_v1.dsse.json"


def golden_private_key() -> Ed25519PrivateKey:
    """The fixed test key: its 32-byte seed is sha256 of a constant label."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(SEED_LABEL).digest())


def golden_statement() -> dict[str, Any]:
    """A small statement that still exercises floats and non-ASCII text."""
    model_digest = hashlib.sha256(b"golden model bytes").hexdigest()
    data_digest = hashlib.sha256(b"golden dataset bytes").hexdigest()
    return make_statement(
        subjects=[
            {"name": "model.onnx", "digest": {"sha256": model_digest}},
            {"name": "holdout.csv", "digest": {"sha256": data_digest}},
        ],
        predicate={
            "verdict": "pass",
            "metrics": {"accuracy": 0.875, "ece": 0.1, "n": 1000},
            "note": "café ✓",
        },
        # Pinned: this file was signed as v1, and make_statement's default moved on to v2.
        predicate_type=PREDICATE_TYPE_V1,
    )


def envelope_text(envelope: dict[str, Any]) -> str:
    """The on-disk form: indented for review; whitespace is not signed."""
    return json.dumps(envelope, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    key = golden_private_key()
    KEY_FILE.write_bytes(
        key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
    )
    PUB_FILE.write_bytes(
        key.public_key().public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    envelope = sign_envelope(golden_statement(), key)
    ENVELOPE_FILE.write_text(envelope_text(envelope), encoding="utf-8")


if __name__ == "__main__":
    main()
