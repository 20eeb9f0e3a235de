"""Ed25519 key files: generate, load, and name them (keyid).

Private keys are PKCS#8 PEM (optionally passphrase-encrypted), public keys are
SubjectPublicKeyInfo PEM. Every load failure becomes a KeyFileError that says
what was wrong with the file and how to fix it, because a raw `cryptography`
traceback is not something an auditor should have to decode.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fimaudit.errors import FimauditError
from fimaudit.fileio import refuse_special

PASSPHRASE_ENV = "FIMAUDIT_KEY_PASSPHRASE"
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_ENCRYPTED_MARKER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_PRIVATE_MARKER = b"PRIVATE KEY-----"
_PUBLIC_MARKER = b"-----BEGIN PUBLIC KEY-----"
_PEM_MARKER = b"-----BEGIN "


class KeyFileError(FimauditError):
    """A key file is missing, unreadable, of the wrong kind, or locked."""

    exit_code = 3


# --------------------------------------------------------------------------- #
# keyid
# --------------------------------------------------------------------------- #


def keyid(public_key: Ed25519PublicKey) -> str:
    """Return the keyid: lowercase hex SHA-256 of the raw 32-byte public key.

    The raw bytes (not the PEM/DER wrapping) are hashed so the id depends only
    on the key itself and any tool can recompute it from the key material.
    """
    raw = public_key.public_bytes(
        encoding=serialization.Encoding.Raw,
        format=serialization.PublicFormat.Raw,
    )
    return hashlib.sha256(raw).hexdigest()


# --------------------------------------------------------------------------- #
# passphrase
# --------------------------------------------------------------------------- #


def passphrase_from_env(var: str = PASSPHRASE_ENV) -> bytes | None:
    """Return the passphrase held in environment variable `var`, or None.

    An empty value counts as unset: an empty passphrase cannot encrypt a key,
    and treating "" as a real passphrase would only produce a confusing error.
    """
    value = os.environ.get(var, "")
    return value.encode("utf-8") if value else None


# --------------------------------------------------------------------------- #
# generation
# --------------------------------------------------------------------------- #


def generate_keypair(
    out_prefix: Path,
    passphrase: bytes | None = None,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Create `<prefix>.key` (0600) and `<prefix>.pub` (0644); return both paths.

    Both files are written to temporary names first and renamed into place
    only once both are complete, so a crash never leaves a half-written key.
    """
    key_path, pub_path = _keypair_paths(Path(out_prefix))
    for path in (key_path, pub_path):
        refuse_special(path, "key")  # even with overwrite: a device or link is never "an old key"
    if not overwrite:
        _refuse_existing(key_path, pub_path)
    private_key = Ed25519PrivateKey.generate()
    private_pem = _private_pem(private_key, passphrase)
    public_pem = _public_pem(private_key.public_key())
    _write_pair(key_path, private_pem, pub_path, public_pem)
    return key_path, pub_path


def _keypair_paths(prefix: Path) -> tuple[Path, Path]:
    """Append the suffixes rather than replacing one, so "a.b" stays "a.b.key"."""
    return (
        prefix.with_name(prefix.name + PRIVATE_SUFFIX),
        prefix.with_name(prefix.name + PUBLIC_SUFFIX),
    )


def _refuse_existing(*paths: Path) -> None:
    """Raise before writing anything if a target already exists."""
    for path in paths:
        if path.exists():
            raise KeyFileError(
                f"refusing to overwrite existing key file {path}",
                fix="choose another output prefix, delete the old files, "
                "or pass overwrite=True (losing the old key for good)",
            )


def _private_pem(key: Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    """Serialize as PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption
    if passphrase is None:
        encryption = serialization.NoEncryption()
    elif not passphrase:
        raise KeyFileError(
            "the passphrase is empty",
            fix=f"use a non-empty passphrase, or none at all (unset {PASSPHRASE_ENV})",
        )
    else:
        encryption = serialization.BestAvailableEncryption(passphrase)
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=encryption,
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _write_pair(key_path: Path, key_pem: bytes, pub_path: Path, pub_pem: bytes) -> None:
    """Write both temp files, then rename both; clean temps up on any failure."""
    temps: list[Path] = []
    try:
        temps.append(_write_temp(key_path, key_pem, _PRIVATE_MODE))
        temps.append(_write_temp(pub_path, pub_pem, _PUBLIC_MODE))
        os.replace(temps[0], key_path)
        os.replace(temps[1], pub_path)
        temps.clear()
        _fsync_dir(key_path.parent)
    except OSError as exc:
        raise KeyFileError(
            f"could not write key files next to {key_path}: {exc.strerror or exc}",
            fix="check that the output directory exists and is writable",
        ) from exc
    finally:
        for leftover in temps:
            leftover.unlink(missing_ok=True)


def _write_temp(final: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a fresh temp file beside `final` and fsync it.

    The mode is passed to os.open so the file is never, even briefly, more
    readable than intended (a chmod afterwards would leave a window open).
    O_EXCL guarantees we never write into a file someone else planted.
    """
    temp = final.with_name(f".{final.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _fsync_dir(directory: Path) -> None:
    """Persist the renames themselves; best effort where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PKCS#8 PEM file."""
    path = Path(path)
    data = _read_pem(path)
    if _PUBLIC_MARKER in data and _PRIVATE_MARKER not in data:
        raise KeyFileError(
            f"{path} is a public key; a private key is needed to sign",
            fix=f"pass the {PRIVATE_SUFFIX} file, not the {PUBLIC_SUFFIX} file",
        )
    key = _parse_private(path, data, passphrase)
    return _require_ed25519_private(path, key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key; an unencrypted private key file also works.

    Deriving the public half from an unencrypted private key is harmless and
    saves users a step; an encrypted one is refused rather than prompting for
    a passphrase just to verify.
    """
    path = Path(path)
    data = _read_pem(path)
    if _ENCRYPTED_MARKER in data:
        raise KeyFileError(
            f"{path} is an encrypted private key; verification needs the public key",
            fix=f"pass the matching {PUBLIC_SUFFIX} file",
        )
    if _PRIVATE_MARKER in data:
        return load_private_key(path).public_key()
    return _require_ed25519_public(path, _parse_public(path, data))


def _read_pem(path: Path) -> bytes:
    """Read the file and make sure it at least looks like PEM."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"key file not found: {path}",
            fix="check the path, or generate a key pair (fimaudit.keys.generate_keypair)",
        ) from exc
    except OSError as exc:
        raise KeyFileError(
            f"cannot read key file {path}: {exc.strerror or exc}",
            fix="check that the path is a readable file",
        ) from exc
    if _PEM_MARKER not in data:
        raise KeyFileError(
            f"{path} is not a PEM key file (no '-----BEGIN' line)",
            fix="pass the PEM file written by fimaudit.keys.generate_keypair",
        )
    return data


def _parse_private(path: Path, data: bytes, passphrase: bytes | None) -> object:
    """Map each `cryptography` failure to an actionable KeyFileError."""
    encrypted = _ENCRYPTED_MARKER in data
    if encrypted and passphrase is None:
        raise KeyFileError(
            f"{path} is encrypted and no passphrase was given",
            fix=f"set {PASSPHRASE_ENV} or pass the passphrase explicitly",
        )
    if not encrypted and passphrase is not None:
        raise KeyFileError(
            f"{path} is not encrypted but a passphrase was given",
            fix=f"unset {PASSPHRASE_ENV} (or do not pass a passphrase) for this key",
        )
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except UnsupportedAlgorithm as exc:
        raise _unsupported(path) from exc
    except (ValueError, TypeError) as exc:
        raise _unparsable_private(path, encrypted) from exc


def _unparsable_private(path: Path, encrypted: bool) -> KeyFileError:
    if encrypted:
        return KeyFileError(
            f"could not decrypt {path}: wrong passphrase (or the file is corrupt)",
            fix=f"check the passphrase in {PASSPHRASE_ENV}",
        )
    return KeyFileError(
        f"{path} is corrupt: its PEM content could not be parsed",
        fix="restore the key file from backup or generate a new key pair",
    )


def _parse_public(path: Path, data: bytes) -> object:
    try:
        return serialization.load_pem_public_key(data)
    except UnsupportedAlgorithm as exc:
        raise _unsupported(path) from exc
    except ValueError as exc:
        raise KeyFileError(
            f"{path} is corrupt: its PEM content could not be parsed as a public key",
            fix=f"restore the {PUBLIC_SUFFIX} file or re-export it from the private key",
        ) from exc


def _unsupported(path: Path) -> KeyFileError:
    return KeyFileError(
        f"{path} uses a key algorithm this system cannot load",
        fix="use an Ed25519 key (fimaudit.keys.generate_keypair)",
    )


def _require_ed25519_private(path: Path, key: object) -> Ed25519PrivateKey:
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong_type(path, key)
    return key


def _require_ed25519_public(path: Path, key: object) -> Ed25519PublicKey:
    if not isinstance(key, Ed25519PublicKey):
        raise _wrong_type(path, key)
    return key


def _wrong_type(path: Path, key: object) -> KeyFileError:
    return KeyFileError(
        f"{path} holds a {type(key).__name__.lstrip('_')} key; fimaudit signs only with Ed25519",
        fix="generate an Ed25519 key pair (fimaudit.keys.generate_keypair)",
    )
