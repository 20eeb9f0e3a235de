"""Ed25519 key files: generate, load, and name them (keyid).

Private keys are PKCS#8 PEM (optionally passphrase-encrypted), public keys are
SubjectPublicKeyInfo PEM. Every load failure becomes a KeyFileError that says
what was wrong with the file and how to fix it, because a raw `cryptography`
traceback is not something an auditor should have to decode.

Every private key is read through one path (`_read_pem` then `_private_from_pem`),
whether the caller brings the passphrase (`load_private_key`) or lets the
environment or a prompt supply it (`load_signing_key`).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fimaudit.errors import KeyFileError
from fimaudit.fileio import atomic_write, refuse_special

PASSPHRASE_ENV = "FIMAUDIT_KEY_PASSPHRASE"
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_ENCRYPTED_MARKER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_PRIVATE_MARKER = b"PRIVATE KEY-----"
_PUBLIC_MARKER = b"-----BEGIN PUBLIC KEY-----"
_PEM_MARKER = b"-----BEGIN "
# Every "make a key" hint names the command, which is what a user of the CLI can run.
_KEYGEN_HINT = "fimaudit keygen --out PREFIX (writes PREFIX.key and PREFIX.pub)"

PassphrasePrompt = Callable[[Path], bytes]


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
    out_prefix: str | os.PathLike[str],
    passphrase: bytes | None = None,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Create `<prefix>.key` (0600) and `<prefix>.pub` (0644); return both paths.

    Each file is written by fimaudit.fileio.atomic_write: a temporary file
    created 0600 (so the key is never readable by others, even briefly),
    fsynced, then renamed into place, so a crash never leaves a half-written key.
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
    """Write the private key, then the public key, each atomically (fimaudit.fileio).

    The private key goes first so that a failure in between can be undone by
    deleting it: an unused new key is worth nothing, while a public key whose
    private half was never written would only mislead.
    """
    _require_directory(key_path)
    try:
        atomic_write(key_path, key_pem, mode=_PRIVATE_MODE)
    except OSError as exc:
        raise _write_failed(key_path, exc) from exc
    try:
        atomic_write(pub_path, pub_pem, mode=_PUBLIC_MODE)
    except OSError as exc:
        key_path.unlink(missing_ok=True)
        raise _write_failed(pub_path, exc) from exc


def _require_directory(key_path: Path) -> None:
    # atomic_write would create missing folders; a key should land only where the user meant.
    if not key_path.parent.is_dir():
        raise KeyFileError(
            f"could not write key files next to {key_path}: {key_path.parent} is not an existing directory",
            fix="create the output directory first, or choose another output prefix",
        )


def _write_failed(path: Path, exc: OSError) -> KeyFileError:
    return KeyFileError(
        f"could not write key files next to {path}: {exc.strerror or exc}",
        fix="check that the output directory is writable and has space; no new private key was left behind",
    )


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PKCS#8 PEM file, with the caller's passphrase."""
    path = Path(path)
    return _private_from_pem(path, _read_pem(path), passphrase)


def load_signing_key(path: str | os.PathLike[str], prompt: PassphrasePrompt | None = None) -> Ed25519PrivateKey:
    """Load a private key, unlocking it with FIMAUDIT_KEY_PASSPHRASE or else `prompt`.

    The passphrase is offered only to encrypted keys, so one exported
    FIMAUDIT_KEY_PASSPHRASE does not break signing with an unencrypted key.
    """
    path = Path(path)
    data = _read_pem(path)
    passphrase = _passphrase_for(path, prompt) if _ENCRYPTED_MARKER in data else None
    return _private_from_pem(path, data, passphrase)


def _passphrase_for(path: Path, prompt: PassphrasePrompt | None) -> bytes | None:
    passphrase = passphrase_from_env()
    if passphrase is None and prompt is not None:
        passphrase = prompt(path)
    return passphrase


def _private_from_pem(path: Path, data: bytes, passphrase: bytes | None) -> Ed25519PrivateKey:
    """The one place PEM bytes become a private key: every loader ends here."""
    if _PUBLIC_MARKER in data and _PRIVATE_MARKER not in data:
        raise KeyFileError(
            f"{path} is a public key; a private key is needed to sign",
            fix=f"pass the {PRIVATE_SUFFIX} file, not the {PUBLIC_SUFFIX} file",
        )
    return _require_ed25519_private(path, _parse_private(path, data, passphrase))


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
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
        return _private_from_pem(path, data, None).public_key()
    return _require_ed25519_public(path, _parse_public(path, data))


def _read_pem(path: Path) -> bytes:
    """Read the file and make sure it at least looks like PEM."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"key file not found: {path}",
            fix=f"check the path, or create a key pair: {_KEYGEN_HINT}",
        ) from exc
    except OSError as exc:
        raise KeyFileError(
            f"cannot read key file {path}: {exc.strerror or exc}",
            fix="check that the path is a readable file",
        ) from exc
    if _PEM_MARKER not in data:
        raise KeyFileError(
            f"{path} is not a PEM key file (no '-----BEGIN' line)",
            fix=f"pass a key file written by fimaudit keygen; to create one: {_KEYGEN_HINT}",
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
        fix=f"restore the key file from backup, or create a new pair: {_KEYGEN_HINT}",
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
        fix=f"use an Ed25519 key: {_KEYGEN_HINT}",
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
        fix=f"create an Ed25519 key pair: {_KEYGEN_HINT}",
    )
