"""DSSE envelopes: format, tampering, interop with securesystemslib, golden files."""
from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from fimaudit.errors import FimauditError
from fimaudit.signing import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    SignatureError,
    VerifiedEnvelope,
    add_signature,
    canonical_json,
    envelope_from_bytes,
    keyid,
    load_private_key,
    load_public_key,
    make_statement,
    pae,
    sign_envelope,
    subject_digests,
    verify_envelope,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_KEYID = "4170f4e4fef9fe19c89e04189f50eb29a3f6bb92088ba16121949cd0c96f12b7"
TAMPER_ROUNDS = 200

Envelope_ = dict[str, Any]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _key(label: str) -> Ed25519PrivateKey:
    """Deterministic keys keep failures reproducible."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def _kid(key: Ed25519PrivateKey) -> str:
    return keyid(key.public_key())


def _statement(extra: Any = None) -> dict[str, Any]:
    digest = hashlib.sha256(b"model weights").hexdigest()
    return make_statement(
        [{"name": "model.bin", "digest": {"sha256": digest}}],
        {"verdict": "pass", "score": 0.93, "extra": extra},
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _payload(envelope: Envelope_) -> bytes:
    return base64.b64decode(envelope["payload"])


def _with_payload(envelope: Envelope_, payload: bytes) -> Envelope_:
    return {**envelope, "payload": _b64(payload)}


def _sign_raw(
    payload: bytes, key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE
) -> Envelope_:
    """A correctly signed envelope around arbitrary bytes, bypassing our validation."""
    sig = key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": _b64(payload),
        "signatures": [{"keyid": _kid(key), "sig": _b64(sig)}],
    }


def _fails(envelope: Any, keys: list[Ed25519PrivateKey], reason: str) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        verify_envelope(envelope, [k.public_key() for k in keys])
    assert reason in info.value.message, info.value.message
    return info.value


def _flip(data: bytes, rng: random.Random) -> bytes:
    """Return `data` with one byte XORed by a non-zero mask at a random position."""
    pos = rng.randrange(len(data))
    mutated = bytearray(data)
    mutated[pos] ^= rng.randrange(1, 256)
    return bytes(mutated)


@pytest.fixture()
def alice() -> Ed25519PrivateKey:
    return _key("alice")


@pytest.fixture()
def bob() -> Ed25519PrivateKey:
    return _key("bob")


@pytest.fixture()
def signed(alice: Ed25519PrivateKey) -> Envelope_:
    return sign_envelope(_statement(), alice)


@pytest.fixture()
def cosigned(signed: Envelope_, bob: Ed25519PrivateKey) -> Envelope_:
    return add_signature(signed, bob)


# --------------------------------------------------------------------------- #
# PAE and canonical JSON
# --------------------------------------------------------------------------- #


def test_pae_matches_spec_example() -> None:
    # The worked example in the DSSE v1 protocol description.
    expected = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("http://example.com/HelloWorld", b"hello world") == expected


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("é", b"") == b"DSSEv1 2 \xc3\xa9 0 "


@given(st.text(max_size=20), st.binary(max_size=40))
def test_pae_agrees_with_securesystemslib(payload_type: str, payload: bytes) -> None:
    assert pae(payload_type, payload) == Envelope(payload, payload_type, {}).pae()


@given(st.text(max_size=8), st.binary(max_size=8), st.text(max_size=8), st.binary(max_size=8))
def test_pae_is_injective(t1: str, p1: bytes, t2: str, p2: bytes) -> None:
    if (t1, p1) != (t2, p2):
        assert pae(t1, p1) != pae(t2, p2)


def test_canonical_json_ignores_key_order() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": "é"}, "c": 0.5}
    b = {"c": 0.5, "a": {"x": "é", "y": [1, 2]}, "b": 1}
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a) == '{"a":{"x":"é","y":[1,2]},"b":1,"c":0.5}'.encode()


_json_leaf = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()


@settings(max_examples=200)
@given(st.dictionaries(st.text(), _json_leaf, max_size=12), st.randoms())
def test_canonical_json_key_order_property(obj: dict[str, Any], rng: random.Random) -> None:
    items = list(obj.items())
    rng.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(obj)


def test_same_statement_any_key_order_signs_identically(alice: Ed25519PrivateKey) -> None:
    statement = _statement({"k1": 1, "k2": 2})
    reordered = dict(reversed(list(statement.items())))
    reordered["predicate"] = dict(reversed(list(statement["predicate"].items())))
    assert sign_envelope(reordered, alice) == sign_envelope(statement, alice)


def test_canonical_json_rejects_non_json() -> None:
    with pytest.raises(SignatureError, match="cannot canonicalise"):
        canonical_json({"x": float("nan")})
    with pytest.raises(SignatureError, match="cannot canonicalise"):
        canonical_json({"x": object()})


# --------------------------------------------------------------------------- #
# statements
# --------------------------------------------------------------------------- #


def test_make_statement_shape() -> None:
    digest = "a" * 64
    statement = make_statement([{"name": "m", "digest": {"sha256": digest}}], {"k": 1})
    assert statement == {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "m", "digest": {"sha256": digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"k": 1},
    }


def test_make_statement_copies_subjects() -> None:
    subject = {"name": "m", "digest": {"sha256": "a" * 64}}
    statement = make_statement([subject], {})
    subject["digest"]["sha256"] = "b" * 64
    assert statement["subject"][0]["digest"]["sha256"] == "a" * 64


@pytest.mark.parametrize(
    ("subjects", "reason"),
    [
        ([], "non-empty list"),
        ("model", "must be a list"),
        (["model"], "is not an object"),
        ([{"digest": {"sha256": "a" * 64}}], "name must be"),
        ([{"name": "", "digest": {"sha256": "a" * 64}}], "name must be"),
        ([{"name": "m"}], "digest must map"),
        ([{"name": "m", "digest": {"sha512": "a" * 128}}], "sha256 must be"),
        ([{"name": "m", "digest": {"sha256": "A" * 64}}], "sha256 must be"),
        ([{"name": "m", "digest": {"sha256": "a" * 63}}], "sha256 must be"),
        ([{"name": "m", "digest": {"sha256": "g" * 64}}], "sha256 must be"),
        ([{"name": "m", "digest": {"sha256": "a" * 64 + "\n"}}], "sha256 must be"),
        ([{"name": "m", "digest": {"sha256": 5}}], "digest must map"),
        (
            [{"name": "m", "digest": {"sha256": "a" * 64}}] * 2,
            "appears twice",
        ),
    ],
)
def test_make_statement_rejects_bad_subjects(subjects: Any, reason: str) -> None:
    with pytest.raises(SignatureError, match="not an in-toto Statement v1") as info:
        make_statement(subjects, {})
    assert reason in info.value.message


def test_make_statement_rejects_non_object_predicate() -> None:
    with pytest.raises(SignatureError, match="predicate must be a JSON object"):
        subjects = [{"name": "m", "digest": {"sha256": "a" * 64}}]
        make_statement(subjects, [1, 2])  # type: ignore[arg-type]


def test_sign_refuses_invalid_statement(alice: Ed25519PrivateKey) -> None:
    statement = _statement()
    statement["subject"] = []
    with pytest.raises(SignatureError, match="non-empty list"):
        sign_envelope(statement, alice)


# --------------------------------------------------------------------------- #
# sign / verify round trips
# --------------------------------------------------------------------------- #


def test_sign_verify_round_trip(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    assert set(signed) == {"payloadType", "payload", "signatures"}
    assert signed["payloadType"] == PAYLOAD_TYPE
    assert _payload(signed) == canonical_json(_statement())
    result = verify_envelope(signed, [alice.public_key()])
    assert result == VerifiedEnvelope(_statement(), [_kid(alice)], [])


def test_verified_envelope_is_frozen(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    result = verify_envelope(signed, [alice.public_key()])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.signers = []  # type: ignore[misc]


def test_signatures_are_deterministic(alice: Ed25519PrivateKey) -> None:
    assert sign_envelope(_statement(), alice) == sign_envelope(_statement(), alice)


def test_cosigned_needs_and_reports_both(
    cosigned: Envelope_, alice: Ed25519PrivateKey, bob: Ed25519PrivateKey
) -> None:
    both = verify_envelope(cosigned, [alice.public_key(), bob.public_key()])
    assert both.signers == [_kid(alice), _kid(bob)] and both.unverified == []
    only_alice = verify_envelope(cosigned, [alice.public_key()])
    assert only_alice.signers == [_kid(alice)]
    assert only_alice.unverified == [_kid(bob)]


def test_add_signature_does_not_mutate(signed: Envelope_, bob: Ed25519PrivateKey) -> None:
    before = copy.deepcopy(signed)
    add_signature(signed, bob)
    assert signed == before


def test_add_signature_refuses_duplicate_keyid(
    signed: Envelope_, alice: Ed25519PrivateKey
) -> None:
    with pytest.raises(SignatureError, match="already has a signature by key " + _kid(alice)):
        add_signature(signed, alice)


def test_add_signature_refuses_malformed_payload(
    alice: Ed25519PrivateKey, bob: Ed25519PrivateKey
) -> None:
    with pytest.raises(SignatureError, match="not valid JSON"):
        add_signature(_sign_raw(b"not json", alice), bob)
    with pytest.raises(SignatureError, match="not an in-toto Statement v1"):
        add_signature(_sign_raw(b'{"_type": "x"}', alice), bob)
    with pytest.raises(SignatureError, match="unsupported payloadType"):
        add_signature(_sign_raw(canonical_json(_statement()), alice, "text/plain"), bob)


def test_duplicate_trusted_keys_count_once(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    result = verify_envelope(signed, [alice.public_key(), alice.public_key()])
    assert result.signers == [_kid(alice)]


def test_no_keys_is_refused(signed: Envelope_) -> None:
    with pytest.raises(SignatureError, match="no public keys"):
        verify_envelope(signed, [])


def test_error_is_a_fimaudit_error_with_exit_code_5(signed: Envelope_) -> None:
    error = _fails(signed, [_key("mallory")], "no signature by key")
    assert isinstance(error, FimauditError)
    assert error.exit_code == 5 and error.fix


# --------------------------------------------------------------------------- #
# tampering (seeded loops over many positions)
# --------------------------------------------------------------------------- #


def test_tamper_payload_byte(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    rng = random.Random(1)
    for _ in range(TAMPER_ROUNDS):
        tampered = _with_payload(signed, _flip(_payload(signed), rng))
        _fails(tampered, [alice], f"bad signature by key {_kid(alice)}")


def test_tamper_payload_into_invalid_json_still_bad_signature(
    signed: Envelope_, alice: Ed25519PrivateKey
) -> None:
    # The signature is checked before the payload is parsed.
    broken = b"X" + _payload(signed)[1:]
    _fails(_with_payload(signed, broken), [alice], "bad signature by key")


def test_tamper_signature_byte(cosigned: Envelope_, alice: Ed25519PrivateKey,
                               bob: Ed25519PrivateKey) -> None:
    rng = random.Random(2)
    for _ in range(TAMPER_ROUNDS):
        index = rng.randrange(2)
        victim = [alice, bob][index]
        tampered = copy.deepcopy(cosigned)
        sig = base64.b64decode(tampered["signatures"][index]["sig"])
        tampered["signatures"][index]["sig"] = _b64(_flip(sig, rng))
        _fails(tampered, [alice, bob], f"bad signature by key {_kid(victim)}")


def test_truncated_or_extended_signature(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    sig = base64.b64decode(signed["signatures"][0]["sig"])
    for wrong in (sig[:-1], sig + b"\x00", b"", sig * 2):
        tampered = copy.deepcopy(signed)
        tampered["signatures"][0]["sig"] = _b64(wrong)
        _fails(tampered, [alice], "bad signature by key")


def test_tamper_payload_type(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    rng = random.Random(3)
    for _ in range(TAMPER_ROUNDS):
        chars = list(PAYLOAD_TYPE)
        pos = rng.randrange(len(chars))
        chars[pos] = rng.choice([c for c in "abcXYZ+/.-_ 0é" if c != chars[pos]])
        tampered = {**signed, "payloadType": "".join(chars)}
        _fails(tampered, [alice], "unsupported payloadType")


def test_correctly_signed_other_payload_type_is_rejected(alice: Ed25519PrivateKey) -> None:
    for payload_type in ("application/json", "application/vnd.in-toto+json ", ""):
        envelope = _sign_raw(canonical_json(_statement()), alice, payload_type)
        _fails(envelope, [alice], "unsupported payloadType")


def test_drop_cosignature(alice: Ed25519PrivateKey, bob: Ed25519PrivateKey) -> None:
    rng = random.Random(4)
    for round_ in range(TAMPER_ROUNDS):
        envelope = add_signature(sign_envelope(_statement(round_), alice), bob)
        dropped = rng.randrange(2)
        tampered = {**envelope, "signatures": [envelope["signatures"][1 - dropped]]}
        _fails(tampered, [alice, bob], f"no signature by key {_kid([alice, bob][dropped])}")


def test_resign_with_other_key(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    rng = random.Random(5)
    for round_ in range(TAMPER_ROUNDS):
        mallory = _key(f"mallory-{rng.random()}")
        forged = sign_envelope(_statement({"forged": round_}), mallory)
        error = _fails(forged, [alice], f"no signature by key {_kid(alice)}")
        assert _kid(mallory) not in error.message


def test_signature_relabelled_with_trusted_keyid(
    alice: Ed25519PrivateKey, bob: Ed25519PrivateKey
) -> None:
    forged = sign_envelope(_statement(), bob)
    forged["signatures"][0]["keyid"] = _kid(alice)
    _fails(forged, [alice], f"bad signature by key {_kid(alice)}")


_BAD_B64_CHARS = "!*-_ .\n@#$%é="


def _corrupt_b64(text: str, rng: random.Random) -> str:
    """Insert a non-alphabet character or delete one, breaking strict base64."""
    pos = rng.randrange(len(text))
    if rng.random() < 0.25:
        return text[:pos] + text[pos + 1:]
    return text[:pos] + rng.choice(_BAD_B64_CHARS) + text[pos:]


def test_bad_base64(cosigned: Envelope_, alice: Ed25519PrivateKey,
                    bob: Ed25519PrivateKey) -> None:
    rng = random.Random(6)
    for _ in range(TAMPER_ROUNDS):
        tampered = copy.deepcopy(cosigned)
        target = rng.choice(["payload", 0, 1])
        if target == "payload":
            tampered["payload"] = _corrupt_b64(tampered["payload"], rng)
        else:
            entry = tampered["signatures"][target]
            entry["sig"] = _corrupt_b64(entry["sig"], rng)
        _fails(tampered, [alice, bob], "not valid standard base64")


def test_url_safe_base64_is_rejected(alice: Ed25519PrivateKey) -> None:
    # Find a payload whose standard encoding contains '+' or '/'.
    payload = bytes([0xFB, 0xFF]) * 3
    envelope = _sign_raw(payload, alice)
    envelope["payload"] = base64.urlsafe_b64encode(payload).decode()
    assert envelope["payload"] != _b64(payload)
    _fails(envelope, [alice], "not valid standard base64")


# --------------------------------------------------------------------------- #
# malformed envelopes and payloads
# --------------------------------------------------------------------------- #


def _mutations() -> list[tuple[str, Callable[[Envelope_], Any], str]]:
    return [
        ("not a dict", lambda e: [e], "not a JSON object"),
        ("no payloadType", lambda e: _without(e, "payloadType"), "missing field 'payloadType'"),
        ("no payload", lambda e: _without(e, "payload"), "missing field 'payload'"),
        ("no signatures", lambda e: _without(e, "signatures"), "missing field 'signatures'"),
        ("payloadType int", lambda e: {**e, "payloadType": 1}, "payloadType must be a string"),
        ("payload int", lambda e: {**e, "payload": 7}, "payload must be a base64 string"),
        ("signatures dict", lambda e: {**e, "signatures": {}}, "signatures must be a list"),
        ("signatures empty", lambda e: {**e, "signatures": []}, "has no signatures"),
        ("signature str", lambda e: {**e, "signatures": ["x"]}, "is not an object"),
        ("keyid missing", lambda e: _sig_without(e, "keyid"), "keyid must be a string"),
        ("sig missing", lambda e: _sig_without(e, "sig"), "sig must be a base64 string"),
        ("keyid int", lambda e: _sig_with(e, keyid=5), "keyid must be a string"),
        ("sig bytes", lambda e: _sig_with(e, sig=b"AAAA"), "sig must be a base64 string"),
        ("non-ascii b64", lambda e: {**e, "payload": "ＡＡＡＡ"}, "not valid standard base64"),
        (
            "duplicate keyid",
            lambda e: {**e, "signatures": e["signatures"] * 2},
            "more than one signature by key",
        ),
    ]


def _without(envelope: Envelope_, name: str) -> Envelope_:
    return {k: v for k, v in envelope.items() if k != name}


def _sig_without(envelope: Envelope_, name: str) -> Envelope_:
    entry = {k: v for k, v in envelope["signatures"][0].items() if k != name}
    return {**envelope, "signatures": [entry]}


def _sig_with(envelope: Envelope_, **fields: Any) -> Envelope_:
    return {**envelope, "signatures": [{**envelope["signatures"][0], **fields}]}


@pytest.mark.parametrize(
    ("case", "mutate", "reason"), _mutations(), ids=[m[0] for m in _mutations()]
)
def test_malformed_envelope(signed: Envelope_, alice: Ed25519PrivateKey, case: str,
                            mutate: Callable[[Envelope_], Any], reason: str) -> None:
    error = _fails(mutate(signed), [alice], reason)
    assert error.message.startswith("malformed envelope"), case


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not utf-8", "payload is not valid JSON"),
        (b"{not json", "payload is not valid JSON"),
        (b'{"a": NaN}', "payload is not valid JSON"),
        (b'{"_type": 1, "_type": 2}', "duplicate key"),
        (b"[1, 2]", "not an in-toto Statement v1: it is not a JSON object"),
        (b'{"_type": "https://in-toto.io/Statement/v1"}', "missing field(s) subject"),
    ],
)
def test_authentic_but_unparsable_payload(
    alice: Ed25519PrivateKey, payload: bytes, reason: str
) -> None:
    _fails(_sign_raw(payload, alice), [alice], reason)


def _statement_bytes(**changes: Any) -> bytes:
    return json.dumps({**_statement(), **changes}).encode()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"_type": "https://in-toto.io/Statement/v0.1"}, "_type is"),
        ({"subject": []}, "subject must be a non-empty list"),
        ({"subject": [{"name": "m", "digest": {"sha256": "XY"}}]}, "sha256 must be"),
        ({"predicateType": "https://slsa.dev/provenance/v1"}, "wrong predicateType"),
        ({"predicateType": 3}, "predicateType must be a non-empty string"),
        ({"predicate": "text"}, "predicate must be a JSON object"),
    ],
)
def test_authentic_but_wrong_statement(
    alice: Ed25519PrivateKey, changes: dict[str, Any], reason: str
) -> None:
    _fails(_sign_raw(_statement_bytes(**changes), alice), [alice], reason)


def test_other_predicate_type_can_be_requested(alice: Ed25519PrivateKey) -> None:
    other = "https://example.com/other/v1"
    envelope = _sign_raw(_statement_bytes(predicateType=other), alice)
    result = verify_envelope(envelope, [alice.public_key()], predicate_type=other)
    assert result.statement["predicateType"] == other


# --------------------------------------------------------------------------- #
# envelope_from_bytes and subject_digests
# --------------------------------------------------------------------------- #


def test_envelope_from_bytes_round_trip(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    parsed = envelope_from_bytes(json.dumps(signed, indent=2).encode())
    assert parsed == signed
    verify_envelope(parsed, [alice.public_key()])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "envelope is not valid JSON"),
        (b"{", "envelope is not valid JSON"),
        (b"\xff", "envelope is not valid JSON"),
        (b'{"payload": 1, "payload": 2}', "duplicate key"),
        (b"[]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
    ],
)
def test_envelope_from_bytes_errors(data: bytes, reason: str) -> None:
    with pytest.raises(SignatureError) as info:
        envelope_from_bytes(data)
    assert reason in info.value.message


def test_subject_digests_from_each_source(signed: Envelope_, alice: Ed25519PrivateKey) -> None:
    expected = {"model.bin": hashlib.sha256(b"model weights").hexdigest()}
    assert subject_digests(_statement()) == expected
    assert subject_digests(signed) == expected
    assert subject_digests(verify_envelope(signed, [alice.public_key()])) == expected


def test_subject_digests_rejects_bad_input() -> None:
    with pytest.raises(SignatureError, match="not an in-toto Statement v1"):
        subject_digests({"subject": []})
    with pytest.raises(SignatureError, match="unsupported payloadType"):
        envelope = {"payloadType": "x", "payload": "", "signatures": [{"keyid": "", "sig": ""}]}
        subject_digests(envelope)


# --------------------------------------------------------------------------- #
# securesystemslib interop
# --------------------------------------------------------------------------- #


def _sslib_key(key: Ed25519PrivateKey) -> SSlibKey:
    """securesystemslib's default keyid differs from ours; give it ours."""
    return SSlibKey.from_crypto(key.public_key(), keyid=_kid(key))


def _sslib_verify(envelope: Envelope_, keys: list[Ed25519PrivateKey], threshold: int) -> set[str]:
    # Envelope.from_dict consumes the signature dicts it is given: pass a copy.
    sslib_envelope = Envelope.from_dict(copy.deepcopy(envelope))
    return set(sslib_envelope.verify([_sslib_key(k) for k in keys], threshold))


def test_securesystemslib_verifies_ours(cosigned: Envelope_, alice: Ed25519PrivateKey,
                                        bob: Ed25519PrivateKey) -> None:
    assert _sslib_verify(cosigned, [alice, bob], 2) == {_kid(alice), _kid(bob)}
    assert _sslib_verify(cosigned, [alice], 1) == {_kid(alice)}


def test_securesystemslib_rejects_our_tampered(signed: Envelope_,
                                               alice: Ed25519PrivateKey) -> None:
    tampered = _with_payload(signed, _payload(signed).replace(b"pass", b"fail"))
    with pytest.raises(VerificationError):
        _sslib_verify(tampered, [alice], 1)


def _sslib_sign(payload: bytes, signers: list[CryptoSigner]) -> Envelope_:
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    for signer in signers:
        envelope.sign(signer)
    # Go through JSON text, as a file from another tool would.
    return envelope_from_bytes(json.dumps(envelope.to_dict()).encode())


def test_we_verify_securesystemslib_envelopes(alice: Ed25519PrivateKey,
                                              bob: Ed25519PrivateKey) -> None:
    # Non-canonical JSON on purpose: we verify the bytes, not a re-serialisation.
    payload = json.dumps(_statement(), indent=1).encode()
    signers = [CryptoSigner(k, _sslib_key(k)) for k in (alice, bob)]
    envelope = _sslib_sign(payload, signers)
    result = verify_envelope(envelope, [alice.public_key(), bob.public_key()])
    assert result.statement == _statement()
    assert result.signers == [_kid(alice), _kid(bob)]


def test_securesystemslib_default_keyid_is_not_matched(alice: Ed25519PrivateKey) -> None:
    signer = CryptoSigner(alice)  # default (securesystemslib) keyid
    assert signer.public_key.keyid != _kid(alice)
    envelope = _sslib_sign(canonical_json(_statement()), [signer])
    _fails(envelope, [alice], f"no signature by key {_kid(alice)}")


def test_foreign_keyid_cosignature_is_reported_unverified(alice: Ed25519PrivateKey,
                                                         bob: Ed25519PrivateKey) -> None:
    foreign = CryptoSigner(bob)  # keyid computed by securesystemslib
    envelope = _sslib_sign(canonical_json(_statement()),
                           [CryptoSigner(alice, _sslib_key(alice)), foreign])
    result = verify_envelope(envelope, [alice.public_key()])
    assert result.unverified == [foreign.public_key.keyid]


def test_securesystemslib_tampered_envelope_fails_here(alice: Ed25519PrivateKey) -> None:
    envelope = _sslib_sign(canonical_json(_statement()), [CryptoSigner(alice, _sslib_key(alice))])
    rng = random.Random(7)
    for _ in range(TAMPER_ROUNDS // 4):
        tampered = _with_payload(envelope, _flip(_payload(envelope), rng))
        _fails(tampered, [alice], "bad signature by key")


# --------------------------------------------------------------------------- #
# golden files: old signatures must keep verifying
# --------------------------------------------------------------------------- #


def _golden_envelope() -> Envelope_:
    return envelope_from_bytes((GOLDEN / "envelope_v1.dsse.json").read_bytes())


def test_golden_envelope_still_verifies() -> None:
    public = load_public_key(GOLDEN / "test_signer.pub")
    assert keyid(public) == GOLDEN_KEYID
    result = verify_envelope(_golden_envelope(), [public])
    assert result.signers == [GOLDEN_KEYID] and result.unverified == []
    assert result.statement["predicate"]["note"] == "café ✓"
    assert set(subject_digests(result)) == {"model.onnx", "holdout.csv"}


def test_golden_envelope_resigns_to_identical_bytes() -> None:
    key = load_private_key(GOLDEN / "test_signer.key")
    envelope = _golden_envelope()
    statement = verify_envelope(envelope, [key.public_key()]).statement
    assert canonical_json(statement) == _payload(envelope)
    assert sign_envelope(statement, key) == envelope


def test_golden_envelope_verifies_with_securesystemslib() -> None:
    key = load_private_key(GOLDEN / "test_signer.key")
    assert _sslib_verify(_golden_envelope(), [key], 1) == {GOLDEN_KEYID}
