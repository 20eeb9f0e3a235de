"""Key files: permissions, round trips, and every load failure's message."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import fimaudit.signing.keys as keys_module
from fimaudit.errors import FimauditError
from fimaudit.signing import (
    KeyFileError,
    generate_keypair,
    keyid,
    load_private_key,
    load_public_key,
    passphrase_from_env,
)

PASSPHRASE = b"correct horse battery staple"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raises_keyfile(match: str) -> pytest.RaisesExc[KeyFileError]:
    return pytest.raises(KeyFileError, match=match)


@pytest.fixture()
def plain_pair(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "signer")


@pytest.fixture()
def encrypted_pair(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "locked", passphrase=PASSPHRASE)


# --------------------------------------------------------------------------- #
# generation
# --------------------------------------------------------------------------- #


def test_generate_writes_key_0600_and_pub_readable(plain_pair: tuple[Path, Path]) -> None:
    key_path, pub_path = plain_pair
    assert key_path.name == "signer.key" and pub_path.name == "signer.pub"
    # fileio.atomic_write sets the mode explicitly (fchmod), so the umask does not change it.
    assert _mode(key_path) == 0o600
    assert _mode(pub_path) == 0o644
    assert b"BEGIN PRIVATE KEY" in key_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub_path.read_bytes()


def test_generate_keeps_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key_path, _ = generate_keypair(tmp_path / "signer")
    finally:
        os.umask(old)
    assert _mode(key_path) == 0o600


def test_failed_public_write_leaves_no_private_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = keys_module.atomic_write

    def fail_on_pub(path: Path, data: bytes, mode: int | None = None) -> Path:
        if Path(path).suffix == ".pub":
            raise OSError(28, "No space left on device")
        return real_write(path, data, mode)

    monkeypatch.setattr(keys_module, "atomic_write", fail_on_pub)
    with _raises_keyfile("No space left on device") as info:
        generate_keypair(tmp_path / "signer")
    assert "no new private key was left behind" in info.value.fix
    assert list(tmp_path.iterdir()) == []


def test_generate_leaves_no_temp_files(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "signer", passphrase=PASSPHRASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signer.key", "signer.pub"]


def test_generated_pair_round_trips(plain_pair: tuple[Path, Path]) -> None:
    key_path, pub_path = plain_pair
    private = load_private_key(key_path)
    public = load_public_key(pub_path)
    assert keyid(private.public_key()) == keyid(public)
    public.verify(private.sign(b"message"), b"message")


def test_encrypted_key_is_encrypted_and_loads(encrypted_pair: tuple[Path, Path]) -> None:
    key_path, pub_path = encrypted_pair
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key_path.read_bytes()
    assert _mode(key_path) == 0o600
    # The PEM label alone proves nothing: the key must really be unreadable without the passphrase.
    with _raises_keyfile("no passphrase was given"):
        load_private_key(key_path)
    with pytest.raises(TypeError, match="Password was not given but private key is encrypted"):
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)  # by cryptography itself
    private = load_private_key(key_path, PASSPHRASE)
    assert _raw(private.public_key()) == _raw(load_public_key(pub_path))


def test_refuses_to_overwrite(plain_pair: tuple[Path, Path], tmp_path: Path) -> None:
    key_path, _ = plain_pair
    before = key_path.read_bytes()
    with _raises_keyfile("refusing to overwrite") as info:
        generate_keypair(tmp_path / "signer")
    assert "overwrite=True" in info.value.fix
    assert key_path.read_bytes() == before


def test_refuses_when_only_pub_exists(tmp_path: Path) -> None:
    (tmp_path / "signer.pub").write_text("keep me")
    with _raises_keyfile("signer.pub"):
        generate_keypair(tmp_path / "signer")
    assert not (tmp_path / "signer.key").exists()


def test_overwrite_true_replaces_both(plain_pair: tuple[Path, Path], tmp_path: Path) -> None:
    old_id = keyid(load_public_key(plain_pair[1]))
    key_path, pub_path = generate_keypair(tmp_path / "signer", overwrite=True)
    assert keyid(load_public_key(pub_path)) != old_id
    assert keyid(load_private_key(key_path).public_key()) == keyid(load_public_key(pub_path))
    assert _mode(key_path) == 0o600


def test_prefix_with_dot_keeps_full_name(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "team.prod")
    assert (key_path.name, pub_path.name) == ("team.prod.key", "team.prod.pub")


def test_missing_output_dir_is_keyfile_error(tmp_path: Path) -> None:
    with _raises_keyfile("could not write key files"):
        generate_keypair(tmp_path / "no-such-dir" / "signer")


def test_empty_passphrase_refused(tmp_path: Path) -> None:
    with _raises_keyfile("passphrase is empty"):
        generate_keypair(tmp_path / "signer", passphrase=b"")


# --------------------------------------------------------------------------- #
# load_private_key failures
# --------------------------------------------------------------------------- #


def test_missing_file(tmp_path: Path) -> None:
    with _raises_keyfile("key file not found") as info:
        load_private_key(tmp_path / "absent.key")
    # The hint names the command a user can run, not a Python function.
    assert "fimaudit keygen --out PREFIX" in info.value.fix
    assert info.value.exit_code == 3
    assert isinstance(info.value, FimauditError)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with _raises_keyfile("cannot read key file"):
        load_private_key(tmp_path)


def test_not_pem(tmp_path: Path) -> None:
    path = tmp_path / "junk.key"
    path.write_bytes(b"this is not a key\n")
    with _raises_keyfile("not a PEM key file") as info:
        load_private_key(path)
    assert "fimaudit keygen --out PREFIX" in info.value.fix


def test_corrupt_pem_body(plain_pair: tuple[Path, Path]) -> None:
    key_path, _ = plain_pair
    lines = key_path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:10] + b"!!!!" + lines[1][14:]
    key_path.write_bytes(b"".join(lines))
    with _raises_keyfile("is corrupt"):
        load_private_key(key_path)


def test_truncated_pem(plain_pair: tuple[Path, Path]) -> None:
    key_path, _ = plain_pair
    key_path.write_bytes(key_path.read_bytes()[:40])
    with _raises_keyfile("is corrupt"):
        load_private_key(key_path)


def test_public_key_where_private_needed(plain_pair: tuple[Path, Path]) -> None:
    _, pub_path = plain_pair
    with _raises_keyfile("is a public key") as info:
        load_private_key(pub_path)
    assert ".key file" in info.value.fix


def test_encrypted_without_passphrase(encrypted_pair: tuple[Path, Path]) -> None:
    with _raises_keyfile("no passphrase was given") as info:
        load_private_key(encrypted_pair[0])
    assert "FIMAUDIT_KEY_PASSPHRASE" in info.value.fix


def test_wrong_passphrase(encrypted_pair: tuple[Path, Path]) -> None:
    with _raises_keyfile("wrong passphrase"):
        load_private_key(encrypted_pair[0], b"not the passphrase")


def test_passphrase_for_unencrypted_key(plain_pair: tuple[Path, Path]) -> None:
    with _raises_keyfile("not encrypted"):
        load_private_key(plain_pair[0], PASSPHRASE)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_non_ed25519_private_key(tmp_path: Path, kind: str) -> None:
    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    path = tmp_path / f"{kind}.key"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with _raises_keyfile("only with Ed25519") as info:
        load_private_key(path)
    assert "fimaudit keygen --out PREFIX" in info.value.fix
    with _raises_keyfile("only with Ed25519"):
        load_public_key(path)


# --------------------------------------------------------------------------- #
# load_public_key
# --------------------------------------------------------------------------- #


def test_public_from_unencrypted_private(plain_pair: tuple[Path, Path]) -> None:
    key_path, pub_path = plain_pair
    assert keyid(load_public_key(key_path)) == keyid(load_public_key(pub_path))


def test_public_from_encrypted_private_is_refused(encrypted_pair: tuple[Path, Path]) -> None:
    with _raises_keyfile("encrypted private key") as info:
        load_public_key(encrypted_pair[0])
    assert ".pub" in info.value.fix


def test_corrupt_public_key(plain_pair: tuple[Path, Path]) -> None:
    _, pub_path = plain_pair
    text = pub_path.read_bytes()
    pub_path.write_bytes(text.replace(b"MCow", b"XXXX"))
    with _raises_keyfile("is corrupt"):
        load_public_key(pub_path)


def test_public_missing_file(tmp_path: Path) -> None:
    with _raises_keyfile("key file not found"):
        load_public_key(tmp_path / "absent.pub")


# --------------------------------------------------------------------------- #
# keyid and passphrase
# --------------------------------------------------------------------------- #


def test_keyid_is_sha256_of_raw_public_key() -> None:
    seed = bytes(range(32))
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert keyid(public) == hashlib.sha256(raw).hexdigest()
    assert keyid(public) == keyid(public).lower() and len(keyid(public)) == 64


def test_keyid_is_stable_across_releases() -> None:
    """Pinned literal: changing the keyid rule would orphan every old envelope.

    The key is RFC 8032 section 7.1 test 1, so the raw bytes are independently known.
    """
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert keyid(public) == "21fe31dfa154a261626bf854046fd2271b7bed4b6abe45aa58877ef47f9721b9"


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIMAUDIT_KEY_PASSPHRASE", "pässword")
    assert passphrase_from_env() == "pässword".encode()
    monkeypatch.setenv("OTHER_VAR", "x")
    assert passphrase_from_env("OTHER_VAR") == b"x"


def test_passphrase_from_env_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIMAUDIT_KEY_PASSPHRASE", raising=False)
    assert passphrase_from_env() is None
    monkeypatch.setenv("FIMAUDIT_KEY_PASSPHRASE", "")
    assert passphrase_from_env() is None


def test_env_passphrase_unlocks_key(
    encrypted_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_path, pub_path = encrypted_pair
    monkeypatch.delenv("FIMAUDIT_KEY_PASSPHRASE", raising=False)
    with _raises_keyfile("no passphrase was given"):  # the file really needs it
        load_private_key(key_path, passphrase_from_env())
    monkeypatch.setenv("FIMAUDIT_KEY_PASSPHRASE", "not the passphrase")
    with _raises_keyfile("wrong passphrase"):
        load_private_key(key_path, passphrase_from_env())
    monkeypatch.setenv("FIMAUDIT_KEY_PASSPHRASE", PASSPHRASE.decode())
    private = load_private_key(key_path, passphrase_from_env())
    assert _raw(private.public_key()) == _raw(load_public_key(pub_path))  # the pair's own key, unlocked
