"""Signed audit reports: key files, DSSE envelopes, and attestations about audited models.

Three layers, each importing only the ones above it:

- `keys`: Ed25519 key files (generate, load, keyid); the one place keys are read.
- `dsse`: in-toto Statement v1 in a DSSE v1 envelope; sign and verify bytes, nothing about reports.
- `attestation`: what fimaudit signs (an AuditPredicate about the model's files or endpoint),
  and the checks `verify` makes on it beyond the signatures.

Format and threat model: docs/signing.md.
"""
from __future__ import annotations

# The errors live with all the others; they are re-exported so signing code needs one import.
from fimaudit.errors import KeyFileError, SignatureError
from fimaudit.signing.attestation import (
    AuditPredicate,
    Subject,
    VerificationResult,
    attest,
    check_subjects,
    content_problems,
    directory_subjects,
    endpoint_digest,
    envelope_to_bytes,
    load_envelope,
    model_subjects,
    policy_problems,
    predicate_json_schema,
    report_subjects,
    require_attestable,
    sign,
    summary_problems,
    unsigned_kind,
    unverified_statement,
    verify,
)
from fimaudit.signing.dsse import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    VerifiedEnvelope,
    add_signature,
    canonical_json,
    envelope_from_bytes,
    has_lone_surrogate,
    make_statement,
    pae,
    sign_envelope,
    subject_digests,
    verify_envelope,
)
from fimaudit.signing.keys import (
    PASSPHRASE_ENV,
    PRIVATE_SUFFIX,
    PUBLIC_SUFFIX,
    generate_keypair,
    keyid,
    load_private_key,
    load_public_key,
    load_signing_key,
    passphrase_from_env,
)

__all__ = [
    "PASSPHRASE_ENV",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "PRIVATE_SUFFIX",
    "PUBLIC_SUFFIX",
    "STATEMENT_TYPE",
    "AuditPredicate",
    "KeyFileError",
    "SignatureError",
    "Subject",
    "VerificationResult",
    "VerifiedEnvelope",
    "add_signature",
    "attest",
    "canonical_json",
    "check_subjects",
    "content_problems",
    "directory_subjects",
    "endpoint_digest",
    "envelope_from_bytes",
    "envelope_to_bytes",
    "generate_keypair",
    "has_lone_surrogate",
    "keyid",
    "load_envelope",
    "load_private_key",
    "load_public_key",
    "load_signing_key",
    "make_statement",
    "model_subjects",
    "pae",
    "passphrase_from_env",
    "policy_problems",
    "predicate_json_schema",
    "report_subjects",
    "require_attestable",
    "sign",
    "sign_envelope",
    "subject_digests",
    "summary_problems",
    "unsigned_kind",
    "unverified_statement",
    "verify",
    "verify_envelope",
]
