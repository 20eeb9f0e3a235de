"""Signed audit reports: in-toto Statement v1 inside a DSSE v1 envelope.

Verification runs in a fixed order -- envelope shape, payloadType, signatures,
and only then the payload -- so that no byte of an unauthenticated payload is
ever parsed, and so that a tampered payload always reports "bad signature"
whatever the tampering did to its JSON.

Signatures are matched to trusted keys by keyid (see fimaudit.signing.keys.keyid);
a signature is only ever checked against the key its keyid names.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fimaudit.errors import SignatureError
from fimaudit.signing.keys import keyid

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
# v2 adds the sections a compliance reviewer reads (fimaudit.signing.predicate); v1 envelopes,
# {report, policy} only, are still verified, so reports signed before v2 keep their value.
PREDICATE_TYPE = "https://fimaudit.dev/audit-report/v2"
PREDICATE_TYPE_V1 = "https://fimaudit.dev/audit-report/v1"
PREDICATE_TYPES = (PREDICATE_TYPE, PREDICATE_TYPE_V1)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_STATEMENT_FIELDS = ("_type", "subject", "predicateType", "predicate")


@dataclass(frozen=True)
class VerifiedEnvelope:
    """The outcome of a successful verify_envelope call.

    `signers` are the keyids of the trusted keys that verified; `unverified`
    lists keyids of extra signatures made by keys nobody asked us to trust.
    """

    statement: dict[str, Any]
    signers: list[str]
    unverified: list[str] = field(default_factory=list)


class _Signature(NamedTuple):
    keyid: str
    sig: bytes


class _Envelope(NamedTuple):
    """An envelope whose shape and encodings are valid, nothing more."""

    payload_type: str
    payload: bytes
    signatures: list[_Signature]


# --------------------------------------------------------------------------- #
# encodings
# --------------------------------------------------------------------------- #


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of (payload_type, payload).

    Signing PAE rather than the bare payload binds the type to the bytes and
    the explicit lengths make the encoding unambiguous.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON, so equal data always signs to equal bytes."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise SignatureError(
            f"cannot canonicalise statement as JSON: {exc}",
            fix="use only JSON types; integers within +/-2**53 and finite floats",
        ) from exc


def envelope_from_bytes(data: bytes) -> dict[str, Any]:
    """Parse an envelope file's bytes into a dict (shape is checked on verify)."""
    parsed = _strict_json(data, what="envelope")
    if not isinstance(parsed, dict):
        raise _malformed("the envelope is not a JSON object")
    return parsed


def _strict_json(data: bytes, what: str) -> Any:
    """Parse UTF-8 JSON, rejecting duplicate keys and NaN/Infinity.

    Duplicate keys are refused because parsers disagree on which one wins,
    which would let two readers see different content under one signature.
    """
    try:
        parsed = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(
            f"{what} is not valid JSON: {exc}",
            fix=f"pass the {what} exactly as fimaudit wrote it",
        ) from exc
    except RecursionError as exc:  # e.g. 100,000 nested '[': no report nests anywhere near that deep
        raise SignatureError(
            f"{what} is nested too deeply to be a fimaudit {what}.",
            fix=f"pass the {what} exactly as fimaudit wrote it",
        ) from exc
    if has_lone_surrogate(parsed):
        # JSON's \ud800 escapes decode to text that cannot be written back as UTF-8: the report
        # would verify, then fail when rendered or re-signed. fimaudit never writes one.
        raise SignatureError(
            f"{what} holds a string with a lone surrogate escape (such as \\ud800), which is not valid Unicode.",
            fix=f"pass the {what} exactly as fimaudit wrote it",
        )
    return parsed


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) in parsed JSON holds an unpaired UTF-16 surrogate.

    Iterative, so data nested as deeply as the parser allowed cannot overflow the stack here.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate key {name!r}")
        result[name] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _b64decode(value: Any, what: str) -> bytes:
    """Strict standard base64: no URL-safe alphabet, no stray characters."""
    if not isinstance(value, str):
        raise _malformed(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise _malformed(f"{what} is not valid standard base64: {exc}") from exc


def _b64encode(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


def _malformed(reason: str) -> SignatureError:
    return SignatureError(
        f"malformed envelope: {reason}",
        fix="pass the DSSE envelope exactly as fimaudit wrote it",
    )


# --------------------------------------------------------------------------- #
# statements
# --------------------------------------------------------------------------- #


def make_statement(
    subjects: list[dict[str, Any]],
    predicate: dict[str, Any],
    predicate_type: str = PREDICATE_TYPE,
) -> dict[str, Any]:
    """Build an in-toto Statement v1 about `subjects` (validated first)."""
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [_copy_subject(s) for s in _as_list(subjects)],
        "predicateType": predicate_type,
        "predicate": predicate,
    }
    _validate_statement(statement, expected_predicate=None)
    return statement


def _as_list(subjects: Any) -> list[Any]:
    if not isinstance(subjects, list):
        raise _bad_statement("subject must be a list")
    return subjects


def _copy_subject(subject: Any) -> Any:
    """Copy so later edits to the caller's dicts cannot change a signed statement."""
    if isinstance(subject, dict) and isinstance(subject.get("digest"), dict):
        return {**subject, "digest": dict(subject["digest"])}
    return subject


def _validate_statement(statement: Any, expected_predicate: str | tuple[str, ...] | None) -> None:
    """Check a Statement v1; `expected_predicate` is the accepted predicateType (or types); None accepts any."""
    if not isinstance(statement, dict):
        raise _bad_statement("it is not a JSON object")
    missing = [name for name in _STATEMENT_FIELDS if name not in statement]
    if missing:
        raise _bad_statement(f"missing field(s) {', '.join(missing)}")
    if statement["_type"] != STATEMENT_TYPE:
        raise _bad_statement(f"_type is {statement['_type']!r}, expected {STATEMENT_TYPE!r}")
    _validate_subjects(statement["subject"])
    _validate_predicate(statement, expected_predicate)


def _validate_predicate(statement: dict[str, Any], expected: str | tuple[str, ...] | None) -> None:
    predicate_type = statement["predicateType"]
    if not isinstance(predicate_type, str) or not predicate_type:
        raise _bad_statement("predicateType must be a non-empty string")
    accepted = (expected,) if isinstance(expected, str) else expected
    if accepted is not None and predicate_type not in accepted:
        raise SignatureError(
            f"wrong predicateType {predicate_type!r} (expected {' or '.join(repr(t) for t in accepted)})",
            fix="this envelope holds some other kind of attestation, not a fimaudit report",
        )
    if not isinstance(statement["predicate"], dict):
        raise _bad_statement("predicate must be a JSON object")


def _validate_subjects(subjects: Any) -> None:
    """Non-empty list of {name, digest{sha256: lowercase hex}} with unique names."""
    if not isinstance(subjects, list) or not subjects:
        raise _bad_statement("subject must be a non-empty list")
    seen: set[str] = set()
    for index, subject in enumerate(subjects):
        name = _validate_subject(index, subject)
        if name in seen:
            raise _bad_statement(f"subject name {name!r} appears twice")
        seen.add(name)


def _validate_subject(index: int, subject: Any) -> str:
    if not isinstance(subject, dict):
        raise _bad_statement(f"subject[{index}] is not an object")
    name = subject.get("name")
    if not isinstance(name, str) or not name:
        raise _bad_statement(f"subject[{index}].name must be a non-empty string")
    digest = subject.get("digest")
    if not isinstance(digest, dict) or not all(isinstance(v, str) for v in digest.values()):
        raise _bad_statement(f"subject[{index}].digest must map algorithm names to strings")
    sha = digest.get("sha256")
    if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
        raise _bad_statement(
            f"subject[{index}].digest.sha256 must be 64 lowercase hex characters"
        )
    return name


def _bad_statement(reason: str) -> SignatureError:
    return SignatureError(
        f"payload is not an in-toto Statement v1: {reason}",
        fix="build statements with fimaudit.signing.make_statement",
    )


# --------------------------------------------------------------------------- #
# envelope shape
# --------------------------------------------------------------------------- #


def _parse_envelope(envelope: Any) -> _Envelope:
    """Check fields, types and base64; decode. Says nothing about authenticity."""
    if not isinstance(envelope, dict):
        raise _malformed("the envelope is not a JSON object")
    for name in ("payloadType", "payload", "signatures"):
        if name not in envelope:
            raise _malformed(f"missing field {name!r}")
    payload_type = envelope["payloadType"]
    if not isinstance(payload_type, str):
        raise _malformed("payloadType must be a string")
    payload = _b64decode(envelope["payload"], "payload")
    return _Envelope(payload_type, payload, _parse_signatures(envelope["signatures"]))


def _parse_signatures(raw: Any) -> list[_Signature]:
    if not isinstance(raw, list):
        raise _malformed("signatures must be a list")
    if not raw:
        raise _malformed("the envelope has no signatures")
    parsed = [_parse_signature(i, entry) for i, entry in enumerate(raw)]
    duplicates = sorted(k for k, n in Counter(s.keyid for s in parsed).items() if n > 1)
    if duplicates:
        # Two signatures under one keyid make "which one counts" ambiguous.
        raise _malformed(f"more than one signature by key {duplicates[0]}")
    return parsed


def _parse_signature(index: int, entry: Any) -> _Signature:
    if not isinstance(entry, dict):
        raise _malformed(f"signatures[{index}] is not an object")
    kid = entry.get("keyid")
    if not isinstance(kid, str):
        raise _malformed(f"signatures[{index}].keyid must be a string")
    return _Signature(kid, _b64decode(entry.get("sig"), f"signatures[{index}].sig"))


def _check_payload_type(parsed: _Envelope) -> None:
    if parsed.payload_type != PAYLOAD_TYPE:
        raise SignatureError(
            f"unsupported payloadType {parsed.payload_type!r} (expected {PAYLOAD_TYPE!r})",
            fix="this is not an in-toto attestation envelope",
        )


# --------------------------------------------------------------------------- #
# signing
# --------------------------------------------------------------------------- #


def sign_envelope(statement: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign the canonical JSON of `statement` into a fresh DSSE envelope."""
    _validate_statement(statement, expected_predicate=None)
    payload = canonical_json(statement)
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": _b64encode(payload),
        "signatures": [_sign(payload, key)],
    }


def add_signature(envelope: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a copy of `envelope` co-signed by `key`.

    The payload is checked first so nobody co-signs garbage; existing
    signatures are kept as they are (checking them needs their public keys).
    """
    parsed = _parse_envelope(envelope)
    _check_payload_type(parsed)
    _validate_statement(_strict_json(parsed.payload, "payload"), expected_predicate=None)
    new_kid = keyid(key.public_key())
    if any(sig.keyid == new_kid for sig in parsed.signatures):
        raise SignatureError(
            f"the envelope already has a signature by key {new_kid}",
            fix="co-sign with a different key",
        )
    signatures = [dict(entry) for entry in envelope["signatures"]]
    signatures.append(_sign(parsed.payload, key))
    return {**envelope, "signatures": signatures}


def _sign(payload: bytes, key: Ed25519PrivateKey) -> dict[str, str]:
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return {"keyid": keyid(key.public_key()), "sig": _b64encode(signature)}


# --------------------------------------------------------------------------- #
# verification
# --------------------------------------------------------------------------- #


def verify_envelope(
    envelope: dict[str, Any],
    keys: list[Ed25519PublicKey],
    predicate_type: str | tuple[str, ...] = PREDICATE_TYPES,
) -> VerifiedEnvelope:
    """Verify that EVERY key in `keys` signed `envelope`; return its statement.

    `predicate_type` is the predicateType accepted, or a tuple of them: by default fimaudit's v2
    and v1, so envelopes signed before v2 still verify.

    Order: shape -> payloadType -> signatures -> payload parse, so the payload
    is parsed only once it is known to be authentic.
    """
    trusted = _trusted_by_keyid(keys)
    parsed = _parse_envelope(envelope)
    _check_payload_type(parsed)
    signers = _check_signatures(parsed, trusted)
    statement = _strict_json(parsed.payload, "payload")
    _validate_statement(statement, expected_predicate=predicate_type)
    unverified = [s.keyid for s in parsed.signatures if s.keyid not in trusted]
    return VerifiedEnvelope(statement=statement, signers=signers, unverified=unverified)


def _trusted_by_keyid(keys: list[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    if not keys:
        # Verifying against nobody would accept anything; refuse outright.
        raise SignatureError(
            "no public keys given to verify against",
            fix="pass at least one trusted .pub file",
        )
    return {keyid(key): key for key in keys}


def _check_signatures(parsed: _Envelope, trusted: dict[str, Ed25519PublicKey]) -> list[str]:
    """Each trusted key must have exactly the signature its keyid names, valid."""
    by_keyid = {sig.keyid: sig.sig for sig in parsed.signatures}
    message = pae(parsed.payload_type, parsed.payload)
    for kid, key in trusted.items():
        if kid not in by_keyid:
            raise SignatureError(
                f"no signature by key {kid}",
                fix="the envelope was not signed by this key; check which .pub you passed",
            )
        try:
            key.verify(by_keyid[kid], message)
        except InvalidSignature as exc:
            raise SignatureError(
                f"bad signature by key {kid}",
                fix="the envelope was altered after signing; do not trust it",
            ) from exc
    return list(trusted)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def subject_digests(source: dict[str, Any] | VerifiedEnvelope) -> dict[str, str]:
    """Map subject name -> sha256 from a statement, envelope or VerifiedEnvelope.

    For a raw envelope this does NOT verify signatures: use it for display, or
    pass the VerifiedEnvelope returned by verify_envelope for anything that
    relies on the digests.
    """
    statement = _statement_of(source)
    _validate_statement(statement, expected_predicate=None)
    return {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}


def _statement_of(source: dict[str, Any] | VerifiedEnvelope) -> Any:
    if isinstance(source, VerifiedEnvelope):
        return source.statement
    if isinstance(source, dict) and "payloadType" in source:
        parsed = _parse_envelope(source)
        _check_payload_type(parsed)
        return _strict_json(parsed.payload, "payload")
    return source
