"""keygen, audit --sign/--policy, sign, verify as a user runs them: real keys, files and signatures.

The round trips run `python -m fimaudit.cli` in subprocesses, as a user would. The many
failure cases call the same typer app in-process (typer's CliRunner), which keeps the
tamper loops fast; they check the same exit codes and stderr.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import random
import re
import select
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from typer.testing import CliRunner

from fimaudit.cli import app
from fimaudit.signing import (
    PAYLOAD_TYPE,
    AuditPredicate,
    keyid,
    load_private_key,
    load_public_key,
    pae,
    verify,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
EXAMPLE_DATA = ROOT / "examples" / "digits_test.npy"
MODEL_SHA256 = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
TINY = ("--limit", "5", "--directions", "16", "-q")
PASSING_POLICY = '[[check]]\nfigure = "n"\nop = ">="\nvalue = 5\n[[check]]\nfigure = "lambda_max.median"\nop = "<="\nvalue = 1e6\n'
FAILING_POLICY = '[[check]]\nfigure = "n"\nop = ">="\nvalue = 1000\n[[check]]\nfigure = "lambda_max.median"\nop = "<="\nvalue = 1e6\n'
TAMPER_ROUNDS = 20


def _env(**extra: str) -> dict[str, str]:
    # No passphrase leaks in from the developer's shell; COLUMNS keeps tables unwrapped.
    env = {k: v for k, v in os.environ.items() if k != "FIMAUDIT_KEY_PASSPHRASE"}
    return {**env, "COLUMNS": "200", **extra}


def _argv(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "fimaudit.cli", *map(str, args)]


def run(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(args), capture_output=True, text=True, env=env or _env(),
                          stdin=subprocess.DEVNULL, timeout=300, check=False)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def invoke(*args: Any, env: dict[str, str] | None = None) -> Result:
    """The CLI in-process: same app, same exit codes and messages, no interpreter start-up."""
    # None unsets: the developer's own passphrase must not leak into the test.
    overrides: dict[str, str | None] = {"FIMAUDIT_KEY_PASSPHRASE": None, "COLUMNS": "200", **(env or {})}
    res = CliRunner().invoke(app, [str(a) for a in args], env=overrides)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Result(res.exit_code, res.stdout, res.stderr)


@dataclass(frozen=True)
class Pair:
    key: Path
    pub: Path
    keyid: str


def _keygen(prefix: Path, *extra: str, env: dict[str, str] | None = None, in_subprocess: bool = False) -> Pair:
    args = ("keygen", "--out", prefix, *extra)
    res = run(*args, env=_env(**(env or {}))) if in_subprocess else invoke(*args, env=env)
    assert res.returncode == 0, res.stderr
    found = re.search(r"keyid: ([0-9a-f]{64})", res.stdout)
    assert found, res.stdout
    return Pair(prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub"), found.group(1))


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def auditor(keydir: Path) -> Pair:
    return _keygen(keydir / "auditor")


@pytest.fixture(scope="module")
def owner(keydir: Path) -> Pair:
    return _keygen(keydir / "owner")


@pytest.fixture(scope="module")
def stranger(keydir: Path) -> Pair:
    return _keygen(keydir / "stranger")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, auditor: Pair) -> Path:
    """A report signed by the auditor alone, with a passing policy."""
    work = tmp_path_factory.mktemp("signed")
    policy = work / "policy.toml"
    policy.write_text(PASSING_POLICY)
    out = work / "report.dsse.json"
    res = run("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--sign", auditor.key, "--policy", policy, "--out", out)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def cosigned(tmp_path_factory: pytest.TempPathFactory, signed: Path, owner: Pair) -> Path:
    out = tmp_path_factory.mktemp("cosigned") / "report.dsse.json"
    shutil.copy(signed, out)
    res = run("sign", out, "--key", owner.key)
    assert res.returncode == 0, res.stderr
    assert owner.keyid in res.stdout
    return out


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _save(envelope: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(envelope))
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _fails_with_5(res: Result | subprocess.CompletedProcess[str], reason: str) -> None:
    assert res.returncode == 5, res.stdout + res.stderr
    assert reason in res.stderr
    assert "Traceback" not in res.stderr
    assert "verified" not in res.stdout


# --------------------------------------------------------------------------- #
# keys
# --------------------------------------------------------------------------- #


def test_keygen_modes_and_keyid(tmp_path: Path) -> None:
    pair = _keygen(tmp_path / "auditor", in_subprocess=True)
    assert _mode(pair.key) == 0o600
    assert _mode(pair.pub) & 0o777 == 0o644 & ~_umask()
    assert pair.keyid == keyid(load_public_key(pair.pub))
    assert b"BEGIN PRIVATE KEY" in pair.key.read_bytes()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = _keygen(tmp_path / "k")
    res = invoke("keygen", "--out", tmp_path / "k")
    assert res.returncode == 3 and "refusing to overwrite" in res.stderr and "--force" in res.stderr
    assert keyid(load_public_key(first.pub)) == first.keyid
    second = _keygen(tmp_path / "k", "--force")
    assert second.keyid != first.keyid and _mode(second.key) == 0o600


def test_encrypted_key_from_env(tmp_path: Path) -> None:
    pair = _keygen(tmp_path / "locked", "--passphrase-env", "MY_PASS", env={"MY_PASS": "hunter2"})
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in pair.key.read_bytes() and _mode(pair.key) == 0o600
    out = tmp_path / "r.dsse.json"
    args = ("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--sign", pair.key, "--out", out)
    res = invoke(*args, env={"FIMAUDIT_KEY_PASSPHRASE": "wrong"})
    assert res.returncode == 3 and "wrong passphrase" in res.stderr and not out.exists()
    res = invoke(*args)
    assert res.returncode == 3 and "no passphrase was given" in res.stderr and not out.exists()
    res = run(*args, env=_env(FIMAUDIT_KEY_PASSPHRASE="hunter2"))
    assert res.returncode == 0, res.stderr
    assert invoke("verify", out, "--key", pair.pub).returncode == 0


def test_keygen_passphrase_options_misused(tmp_path: Path) -> None:
    res = invoke("keygen", "--out", tmp_path / "a", "--passphrase-env", "UNSET_FOR_SURE")
    assert res.returncode == 2 and "UNSET_FOR_SURE is unset or empty" in res.stderr
    res = invoke("keygen", "--out", tmp_path / "b", "--encrypt")
    assert res.returncode == 2 and "not a terminal" in res.stderr
    assert not list(tmp_path.iterdir())


def test_public_key_where_private_key_is_needed(tmp_path: Path, auditor: Pair, signed: Path) -> None:
    out = tmp_path / "r.dsse.json"
    res = invoke("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--sign", auditor.pub, "--out", out)
    assert res.returncode == 3 and "is a public key" in res.stderr and not out.exists()
    copy_ = Path(shutil.copy(signed, tmp_path / "s.dsse.json"))
    res = invoke("sign", copy_, "--key", auditor.pub)
    assert res.returncode == 3 and "is a public key" in res.stderr
    assert copy_.read_bytes() == signed.read_bytes()


def _run_with_tty(args: tuple[Any, ...], answers: list[bytes]) -> tuple[int, str]:
    """Run with a pseudo-terminal as stdin, typing each answer once its prompt has appeared."""
    master, slave = os.openpty()
    # A new session has no controlling terminal, so getpass reads the pty on stdin.
    proc = subprocess.Popen(_argv(args), stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(), start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        for count, answer in enumerate(answers, start=1):
            seen = _read_until(proc, seen, count)
            os.write(master, answer + b"\n")
        _, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, (seen + err).decode()


def _read_until(proc: subprocess.Popen[bytes], seen: bytes, prompts: int) -> bytes:
    # Typing before the prompt is lost: getpass flushes pending input when it turns echo off.
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while seen.count(b"passphrase") < prompts:
        assert time.monotonic() < deadline, f"no passphrase prompt; stderr so far: {seen!r}"
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, f"process ended before prompting: {seen!r}"
            seen += chunk
    return seen


def test_passphrase_prompts_on_a_terminal(tmp_path: Path, signed: Path) -> None:
    code, err = _run_with_tty(("keygen", "--out", tmp_path / "locked", "--encrypt"), [b"tty secret", b"tty secret"])
    assert code == 0, err
    key = tmp_path / "locked.key"
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key.read_bytes()
    envelope = Path(shutil.copy(signed, tmp_path / "r.dsse.json"))
    code, err = _run_with_tty(("sign", envelope, "--key", key), [b"not it"])
    assert code == 3 and "wrong passphrase" in err
    assert len(_load(envelope)["signatures"]) == 1
    code, err = _run_with_tty(("sign", envelope, "--key", key), [b"tty secret"])
    assert code == 0, err
    assert len(_load(envelope)["signatures"]) == 2
    assert invoke("verify", envelope, "--key", tmp_path / "locked.pub").returncode == 0


# --------------------------------------------------------------------------- #
# the round trip
# --------------------------------------------------------------------------- #


def test_end_to_end_verify_with_both_keys_and_model(cosigned: Path, auditor: Pair, owner: Pair) -> None:
    res = run("verify", cosigned, "--key", auditor.pub, "--key", owner.pub, "--model", EXAMPLE)
    assert res.returncode == 0, res.stderr
    for text in (auditor.keyid, owner.keyid, f"digits.onnx  sha256:{MODEL_SHA256}", "matches the subject", "PASSED"):
        assert text in res.stdout


def test_securesystemslib_verifies_the_cli_envelope(cosigned: Path, auditor: Pair, owner: Pair) -> None:
    keys = [SSlibKey.from_crypto(load_public_key(p.pub), keyid=p.keyid) for p in (auditor, owner)]
    envelope = Envelope.from_dict(copy.deepcopy(_load(cosigned)))
    assert set(envelope.verify(keys, threshold=2)) == {auditor.keyid, owner.keyid}
    statement = json.loads(envelope.payload)
    assert statement["subject"] == [{"name": "digits.onnx", "digest": {"sha256": MODEL_SHA256}}]
    assert AuditPredicate.model_validate(statement["predicate"]).policy is not None


def test_sign_in_place_keeps_the_payload(signed: Path, cosigned: Path, owner: Pair, tmp_path: Path) -> None:
    before, after = _load(signed), _load(cosigned)
    assert after["payload"] == before["payload"] and after["signatures"][0] == before["signatures"][0]
    assert [s["keyid"] for s in after["signatures"]][1] == owner.keyid
    again = Path(shutil.copy(cosigned, tmp_path / "again.dsse.json"))
    res = invoke("sign", again, "--key", owner.key)
    assert res.returncode == 5 and "already has a signature" in res.stderr
    assert again.read_bytes() == cosigned.read_bytes()


def test_unchecked_signers_are_listed(cosigned: Path, auditor: Pair, owner: Pair) -> None:
    res = invoke("verify", cosigned, "--key", auditor.pub)
    assert res.returncode == 0, res.stderr
    assert f"also signed {owner.keyid}" in res.stdout


# --------------------------------------------------------------------------- #
# verification failures: exit 5 with the reason
# --------------------------------------------------------------------------- #


def test_tampered_payload_bytes(cosigned: Path, auditor: Pair, owner: Pair, tmp_path: Path) -> None:
    envelope = _load(cosigned)
    payload = base64.b64decode(envelope["payload"])
    rng = random.Random(2024)
    positions = rng.sample(range(len(payload)), TAMPER_ROUNDS)
    for i, position in enumerate(positions):
        data = bytearray(payload)
        data[position] ^= rng.randrange(1, 256)
        tampered = _save({**envelope, "payload": base64.b64encode(bytes(data)).decode()}, tmp_path / f"t{i}.json")
        res = invoke("verify", tampered, "--key", auditor.pub, "--key", owner.pub)
        _fails_with_5(res, f"bad signature by key {auditor.keyid}")
    # And once as a user would meet it, through the installed entry point.
    _fails_with_5(run("verify", tampered, "--key", auditor.pub), f"bad signature by key {auditor.keyid}")


def test_tampered_signature_bytes(cosigned: Path, auditor: Pair, owner: Pair, tmp_path: Path) -> None:
    envelope = _load(cosigned)
    rng = random.Random(99)
    for i in range(TAMPER_ROUNDS):
        signatures = copy.deepcopy(envelope["signatures"])
        sig = bytearray(base64.b64decode(signatures[1]["sig"]))
        sig[rng.randrange(len(sig))] ^= rng.randrange(1, 256)
        signatures[1]["sig"] = base64.b64encode(bytes(sig)).decode()
        tampered = _save({**envelope, "signatures": signatures}, tmp_path / f"s{i}.json")
        res = invoke("verify", tampered, "--key", auditor.pub, "--key", owner.pub)
        _fails_with_5(res, f"bad signature by key {owner.keyid}")


def test_missing_cosignature_for_a_named_key(signed: Path, auditor: Pair, owner: Pair) -> None:
    _fails_with_5(invoke("verify", signed, "--key", auditor.pub, "--key", owner.pub), f"no signature by key {owner.keyid}")


def test_unknown_key(cosigned: Path, stranger: Pair) -> None:
    _fails_with_5(invoke("verify", cosigned, "--key", stranger.pub), f"no signature by key {stranger.keyid}")


def test_signature_by_another_key_under_the_auditors_keyid(signed: Path, auditor: Pair, stranger: Pair, tmp_path: Path) -> None:
    envelope = _load(signed)
    forger = load_private_key(stranger.key)
    sig = forger.sign(pae(PAYLOAD_TYPE, base64.b64decode(envelope["payload"])))
    forged = {**envelope, "signatures": [{"keyid": auditor.keyid, "sig": base64.b64encode(sig).decode()}]}
    _fails_with_5(invoke("verify", _save(forged, tmp_path / "f.json"), "--key", auditor.pub), f"bad signature by key {auditor.keyid}")


def test_subject_mismatch(cosigned: Path, auditor: Pair) -> None:
    _fails_with_5(invoke("verify", cosigned, "--key", auditor.pub, "--model", EXAMPLE_DATA), "subject mismatch")


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "envelope is not valid JSON"),
        ('{"payloadType": "application/vnd.in-toto+json", "payload": ""}', "malformed envelope: missing field 'signatures'"),
        ("[]", "malformed envelope"),
    ],
)
def test_malformed_envelope_files(tmp_path: Path, auditor: Pair, content: str, reason: str) -> None:
    path = tmp_path / "bad.dsse.json"
    path.write_text(content)
    _fails_with_5(invoke("verify", path, "--key", auditor.pub), reason)


def test_unsupported_payload_type(signed: Path, auditor: Pair, tmp_path: Path) -> None:
    envelope = {**_load(signed), "payloadType": "application/json"}
    _fails_with_5(invoke("verify", _save(envelope, tmp_path / "t.json"), "--key", auditor.pub),
                  "unsupported payloadType 'application/json'")


def test_missing_envelope_file_is_a_data_error(tmp_path: Path, auditor: Pair) -> None:
    res = invoke("verify", tmp_path / "nope.dsse.json", "--key", auditor.pub)
    assert res.returncode == 3 and "envelope file not found" in res.stderr


# --------------------------------------------------------------------------- #
# unsigned reports and missing keys: messages that say what to do
# --------------------------------------------------------------------------- #


def _unsigned(signed: Path, tmp_path: Path, kind: str) -> Path:
    """What `fimaudit audit` writes without --sign: the report, or with --policy the predicate."""
    predicate = _statement(signed)["predicate"]
    return _save(predicate["report"] if kind == "report" else predicate, tmp_path / f"{kind}.json")


@pytest.mark.parametrize("kind", ["report", "predicate"])
def test_verify_of_an_unsigned_file_says_it_is_unsigned(signed: Path, auditor: Pair, tmp_path: Path, kind: str) -> None:
    path = _unsigned(signed, tmp_path, kind)
    res = invoke("verify", path, "--key", auditor.pub)
    _fails_with_5(res, f"{path} is an unsigned fimaudit {kind}")
    assert "not a signed envelope: there is no signature to verify" in res.stderr
    assert "fimaudit audit MODEL --data DATA --sign KEY" in res.stderr
    assert "malformed envelope" not in res.stderr


def test_cosigning_an_unsigned_report_says_it_is_unsigned(signed: Path, owner: Pair, tmp_path: Path) -> None:
    path = _unsigned(signed, tmp_path, "report")
    before = path.read_bytes()
    res = invoke("sign", path, "--key", owner.key)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "is an unsigned fimaudit report" in res.stderr and "only co-signs an envelope that is already signed" in res.stderr
    assert "malformed envelope" not in res.stderr and path.read_bytes() == before


@pytest.mark.parametrize("command", ["verify", "audit"])
def test_missing_key_file_names_the_keygen_command(signed: Path, tmp_path: Path, command: str) -> None:
    missing = tmp_path / "absent.pub"
    args = (("verify", signed, "--key", missing) if command == "verify"
            else ("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--sign", missing, "--out", tmp_path / "r.dsse.json"))
    res = invoke(*args)
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"key file not found: {missing}" in res.stderr
    assert "fimaudit keygen --out PREFIX" in res.stderr and "generate_keypair" not in res.stderr


# --------------------------------------------------------------------------- #
# policies
# --------------------------------------------------------------------------- #


def test_failing_policy_exits_1_and_is_signed(tmp_path: Path, auditor: Pair) -> None:
    policy, out = tmp_path / "strict.toml", tmp_path / "r.dsse.json"
    policy.write_text(FAILING_POLICY)
    res = run("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--sign", auditor.key, "--policy", policy, "--out", out)
    assert res.returncode == 1, res.stderr
    assert "policy failed: n >= 1000 (measured 5)" in res.stderr
    result = verify(out, [auditor.pub], EXAMPLE)
    recorded = result.predicate.policy
    assert recorded is not None and recorded.passed is False and result.policy_passed is False
    assert (recorded.checks[0].figure, recorded.checks[0].measured, recorded.checks[0].passed) == ("n", 5.0, False)
    assert recorded.sha256 == hashlib.sha256(policy.read_bytes()).hexdigest()
    res = invoke("verify", out, "--key", auditor.pub)
    assert res.returncode == 0 and "FAILED" in res.stdout
    res = invoke("verify", out, "--key", auditor.pub, "--require-pass")
    assert res.returncode == 1 and "failed" in res.stderr


def test_require_pass(signed: Path, auditor: Pair, tmp_path: Path) -> None:
    assert invoke("verify", signed, "--key", auditor.pub, "--require-pass").returncode == 0
    out = tmp_path / "nopolicy.dsse.json"
    res = invoke("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--sign", auditor.key, "--out", out)
    assert res.returncode == 0, res.stderr
    res = invoke("verify", out, "--key", auditor.pub, "--require-pass")
    assert res.returncode == 1 and "no policy verdict" in res.stderr


def test_policy_without_signing_writes_the_unsigned_predicate(tmp_path: Path) -> None:
    policy, out = tmp_path / "p.toml", tmp_path / "r.json"
    policy.write_text(PASSING_POLICY)
    res = invoke("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--policy", policy, "--out", out)
    assert res.returncode == 0, res.stderr
    predicate = AuditPredicate.from_json(out.read_text())
    assert predicate.policy is not None and predicate.policy.passed is True
    assert predicate.report.summary.n == 5
    policy.write_text(FAILING_POLICY)
    assert invoke("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--policy", policy, "--out", out).returncode == 1
    assert AuditPredicate.from_json(out.read_text()).policy.passed is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[check]\n", "is not valid TOML"),
        ('[[check]]\nfigure = "lambda_max.p95"\nop = "<="\nvalue = 1\n', "line 1, check #1: unknown figure 'lambda_max.p95'"),
        ('[[check]]\nfigure = "n"\nop = "=>"\nvalue = 1\n', "unknown op '=>'"),
        ('[[check]]\nfigure = "n"\nop = ">="\nvalue = "ten"\n', "value 'ten' is not a number"),
    ],
)
def test_bad_policy_files_exit_2_before_auditing(tmp_path: Path, auditor: Pair, text: str, message: str) -> None:
    policy, out = tmp_path / "bad.toml", tmp_path / "r.dsse.json"
    policy.write_text(text)
    res = invoke("audit", EXAMPLE, "--data", EXAMPLE_DATA, *TINY, "--sign", auditor.key, "--policy", policy, "--out", out)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "fix:" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_demo_sequence_passes_on_the_full_example(tmp_path: Path) -> None:
    # The commands of `make demo`, on the whole example set with the shipped policy.
    pair = _keygen(tmp_path / "auditor")
    out = tmp_path / "report.dsse.json"
    res = run("audit", EXAMPLE, "--data", EXAMPLE_DATA, "--sign", pair.key,
              "--policy", ROOT / "examples" / "policy.toml", "--out", out)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run("verify", out, "--key", pair.pub, "--model", EXAMPLE)
    assert res.returncode == 0 and "PASSED (4 of 4 checks" in res.stdout, res.stdout + res.stderr


def test_verify_model_rehashes_onnx_external_data(tmp_path: Path, auditor: Pair) -> None:
    """Swapping the external weights after signing changes every prediction: verify must say so."""
    import onnx

    model = tmp_path / "model.onnx"
    onnx.save_model(onnx.load(str(EXAMPLE)), str(model), save_as_external_data=True, location="weights.bin", size_threshold=0)
    out = tmp_path / "report.dsse.json"
    res = invoke("audit", model, "--data", EXAMPLE_DATA, *TINY, "--sign", auditor.key, "--out", out)
    assert res.returncode == 0, res.stderr
    assert [s["name"] for s in _statement(out)["subject"]] == ["model.onnx", "weights.bin"]
    assert invoke("verify", out, "--key", auditor.pub, "--model", model).returncode == 0
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(b ^ 0x01 for b in weights.read_bytes()))
    _fails_with_5(invoke("verify", out, "--key", auditor.pub, "--model", model), "changed: weights.bin")


def _statement(path: Path) -> dict[str, Any]:
    return json.loads(base64.b64decode(_load(path)["payload"]))
