"""Make audit_report_v2.dsse.json: the first v2 predicate fimaudit signed, kept so that every later
version proves it still verifies one.

Run once, from the repository root:  PYTHONPATH=. .venv/bin/python tests/golden/make_golden_v2.py

It takes the real report inside audit_report_v1.1.dsse.json (examples/digits.onnx, 4 inputs,
examples/policy.toml's verdict), wraps it in a v2 predicate declared `third_party`, records the
harness of the installation running this script, and signs it with test_signer.key. The harness
digests the installed fimaudit and fimaudit-onnx files, so a rerun after any change to them writes
a different file: like audit_report_v1.1.dsse.json, the committed file must never be regenerated
(remaking it would only prove that new envelopes verify). The script refuses to overwrite it.

THE PRIVATE KEY HERE IS PUBLIC. It exists only for tests; never trust it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fimaudit.signing import (
    AuditPredicateV1,
    build_predicate,
    load_private_key,
    make_statement,
    sign_envelope,
    unverified_statement,
)

GOLDEN_DIR = Path(__file__).resolve().parent
SOURCE = GOLDEN_DIR / "audit_report_v1.1.dsse.json"
TARGET = GOLDEN_DIR / "audit_report_v2.dsse.json"


def golden_statement() -> dict[str, Any]:
    """The v1.1 envelope's subject and report, restated as a v2 predicate (read, not verified: the
    tests verify both files)."""
    old = unverified_statement(json.loads(SOURCE.read_text()))
    predicate = AuditPredicateV1.model_validate(old["predicate"])
    signed = build_predicate(predicate.report, predicate.policy, assurance="third_party")
    return make_statement(old["subject"], signed.model_dump(mode="json"))


def main() -> None:
    if TARGET.exists():
        sys.exit(f"{TARGET} exists and must never be regenerated (see this script's docstring)")
    envelope = sign_envelope(golden_statement(), load_private_key(GOLDEN_DIR / "test_signer.key"))
    TARGET.write_text(json.dumps(envelope, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
