"""`fimaudit keygen`, `sign` and `verify`: keys, co-signing, and checking a signed report."""
from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import List, Optional

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fimaudit.adapter import FingerprintChecker
from fimaudit.cli.app import app, err, errors_to_exit_codes
from fimaudit.cli.summary import verdict_line
from fimaudit.errors import KeyFileError, SignatureError, UsageError
from fimaudit.fileio import atomic_write, refuse_special
from fimaudit.reading import read_plain
from fimaudit.registry import adapter_for
from fimaudit.report import AuditReport
from fimaudit.signing import (
    ASSURANCE_MEANINGS,
    PASSPHRASE_ENV,
    PRIVATE_SUFFIX,
    PUBLIC_SUFFIX,
    Assurance,
    VerificationResult,
    envelope_to_bytes,
    generate_keypair,
    keyid,
    load_public_key,
    load_signing_key,
    passphrase_from_env,
    sign,
    unverified_statement,
    verify,
)

KEY_HELP = "Public key that must have signed (repeat for each)."
ASSURANCE_HELP = (
    "Who you are to this model, signed into the predicate with --sign: self (its developer or owner, the default) or "
    "third_party (independent of its developer). 'reproduced' is recorded only by fimaudit reproduce."
)
DECLARABLE = ("self", "third_party")


def declared_assurance(value: str) -> Assurance:
    """An --assurance value an auditor may declare. 'reproduced' is refused: it stands on a
    re-computation, which only `fimaudit reproduce` records, never on a flag."""
    if value == "reproduced":
        raise UsageError("--assurance reproduced cannot be declared.", "fimaudit reproduce records it, with the re-computation behind it")
    if value not in DECLARABLE:
        raise UsageError(f"--assurance must be self or third_party (got {value!r}).", "omit it to declare self")
    return "self" if value == "self" else "third_party"


@app.command()
def keygen(
    out_prefix: Path = typer.Option(..., "--out", "-o", metavar="PREFIX", help="Prefix: writes PREFIX.key (mode 0600) and PREFIX.pub."),
    passphrase_env: Optional[str] = typer.Option(
        None, "--passphrase-env", metavar="VAR", help="Encrypt the private key with the passphrase in environment variable VAR.",
    ),
    encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt the private key with a passphrase typed at a prompt."),
    force: bool = typer.Option(False, "--force", help="Replace existing key files (the old key is lost for good)."),
) -> None:
    """Create an Ed25519 key pair for signing reports and print its keyid."""
    with errors_to_exit_codes():
        if not force:
            refuse_existing_keys(out_prefix)
        passphrase = new_passphrase(passphrase_env, encrypt)
        key_path, pub_path = generate_keypair(out_prefix, passphrase, overwrite=force)
        kid = keyid(load_public_key(pub_path))
    state = "encrypted" if passphrase else "not encrypted"
    typer.echo(f"private key: {key_path} (mode 0600, {state})")
    typer.echo(f"public key:  {pub_path}")
    typer.echo(f"keyid: {kid}")
    if passphrase is None and passphrase_from_env() is not None:
        err.print(f"note: {PASSPHRASE_ENV} is set but this key is not encrypted; "
                  f"use --passphrase-env {PASSPHRASE_ENV} to encrypt it")


@app.command("sign")
def sign_cmd(
    envelope: Path = typer.Argument(..., metavar="ENVELOPE", help="A signed report (.dsse.json) to co-sign in place."),
    key_path: Path = typer.Option(..., "--key", "-k", metavar="KEY", help="Your private key."),
) -> None:
    """Add your signature to a signed report (e.g. the model owner's, next to the auditor's)."""
    with errors_to_exit_codes():
        key = signing_key(key_path)
        cosigned = sign(envelope, key)
        atomic_write(envelope, envelope_to_bytes(cosigned))
        statement = unverified_statement(cosigned)
    typer.echo(f"co-signed {envelope} with key {keyid(key.public_key())}")
    for subject in statement["subject"]:
        typer.echo(f"  subject  {subject['name']}  sha256:{subject['digest']['sha256']}")
    typer.echo(f"  signatures now: {len(cosigned['signatures'])}")


@app.command("verify")
def verify_cmd(
    envelope: Path = typer.Argument(..., metavar="ENVELOPE", help="The signed report (.dsse.json), or with --endpoint alone a plain report."),
    key_paths: List[Path] = typer.Option([], "--key", "-k", metavar="KEY", help=KEY_HELP),
    model: Optional[Path] = typer.Option(None, "--model", "-m", metavar="PATH", help="Model file or directory that must match the subject."),
    require_pass: bool = typer.Option(False, "--require-pass", help="Exit 1 unless the signed policy verdict passed."),
    endpoint: Optional[str] = typer.Option(
        None, "--endpoint", metavar="URL", help="Re-query this endpoint and check it still serves the audited model (its fingerprint).",
    ),
    tolerance: float = typer.Option(1e-5, "--tolerance", metavar="P", help="Largest probability difference accepted by --endpoint."),
) -> None:
    """Check that every --key signed ENVELOPE and, with --model, that it is about that model.

    With --endpoint, also re-query the endpoint on the report's fingerprint probes.
    Exit 0 when all checks pass, 5 with the reason when any fails.
    """
    result: VerificationResult | None = None
    with errors_to_exit_codes():
        if key_paths:
            keys = [load_public_key(p) for p in key_paths]
            names = {keyid(k): p for k, p in zip(keys, key_paths)}
            result = verify(envelope, keys, model)
            print_verification(envelope, result, names, model)
            report = result.predicate.report
        elif endpoint is not None:
            if require_pass:
                raise UsageError("--require-pass needs a signed verdict.", "pass --key to verify the signed report")
            report = read_plain(envelope).report
        else:
            raise UsageError("no --key given.", "name each public key that must have signed: --key auditor.pub")
        if endpoint is not None:
            check_endpoint(report, endpoint, tolerance)
    if result is not None and require_pass and result.policy_passed is not True:
        err.print("[bold red]policy:[/] " + ("no policy verdict in the report" if result.policy_passed is None else "failed"))
        raise typer.Exit(1)


def check_endpoint(report: AuditReport, url: str, tolerance: float) -> None:
    recorded = report.model.extra.get("fingerprint")
    if recorded is None:
        raise UsageError("the report holds no endpoint fingerprint.", "--endpoint checks reports of endpoint audits")
    adapter = adapter_for(url)
    if not isinstance(adapter, FingerprintChecker):
        raise UsageError(f"the {adapter.name} adapter cannot re-check fingerprints.", "verify the model file with --model instead")
    outcome = adapter.check_fingerprint(url, recorded, tolerance)
    if not outcome.matches:
        raise SignatureError(
            f"the endpoint {url} no longer serves the audited model: {outcome.reason}",
            "re-audit the endpoint, or find the model version that was audited",
        )
    typer.echo(f"  endpoint    {url} matches the audited fingerprint (max difference {outcome.max_abs_difference:.3g} <= {tolerance:g})")


def print_verification(envelope: Path, result: VerificationResult, names: dict[str, Path], model: Path | None) -> None:
    typer.echo(f"verified: {envelope}")
    for kid in result.signers:
        typer.echo(f"  signed by   {kid}  ({names[kid]})")
    for kid in result.unverified:
        typer.echo(f"  also signed {kid}  (not checked: no key given)")
    for subject in result.subjects:
        typer.echo(f"  subject     {subject.name}  sha256:{subject.sha256}")
    if model is not None:
        typer.echo(f"  model       {model} matches the subject")
    report = result.predicate.report
    typer.echo(f"  report      {report.summary.n} inputs, fimaudit {report.tool.version}, data sha256:{report.data.sha256}")
    typer.echo(f"  assurance   {assurance_line(result)}")
    typer.echo(f"  policy      {verdict_line(result.predicate.policy)}")


def assurance_line(result: VerificationResult) -> str:
    """The signed assurance level and what it rests on; v1 predicates declared none."""
    if result.assurance is None:
        return f"not declared (predicate {result.predicate_type}, before assurance levels were signed)"
    return f"{result.assurance}: {ASSURANCE_MEANINGS[result.assurance]}"


def signing_key(path: Path) -> Ed25519PrivateKey:
    """Load a private key; prompt for its passphrase only when a person can answer."""
    prompt = prompt_passphrase if sys.stdin.isatty() else None
    return load_signing_key(path, prompt)


def prompt_passphrase(path: Path) -> bytes:
    return getpass.getpass(f"passphrase for {path}: ").encode("utf-8")


def refuse_existing_keys(prefix: Path) -> None:
    # Checked here, before any prompt, and with the CLI's own way out (--force).
    for suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX):
        path = prefix.with_name(prefix.name + suffix)
        refuse_special(path, "key")  # a device, FIFO or link is a usage error, not an old key
        if path.exists():
            raise KeyFileError(f"refusing to overwrite existing key file {path}",
                               "choose another --out prefix, or pass --force (the old key is lost for good)")


def new_passphrase(env_var: str | None, encrypt: bool) -> bytes | None:
    """The passphrase for a new key: from --passphrase-env, a prompt (--encrypt), or none."""
    if env_var is not None and encrypt:
        raise UsageError("--passphrase-env and --encrypt are alternatives", "pass only one of them")
    if env_var is not None:
        passphrase = passphrase_from_env(env_var)
        if passphrase is None:
            raise UsageError(f"environment variable {env_var} is unset or empty", f"export {env_var}=<passphrase> first")
        return passphrase
    return prompt_new_passphrase() if encrypt else None


def prompt_new_passphrase() -> bytes:
    if not sys.stdin.isatty():
        raise UsageError("--encrypt asks for the passphrase at a prompt, but stdin is not a terminal",
                         "use --passphrase-env VAR instead")
    first = getpass.getpass("new passphrase: ")
    if not first:
        raise UsageError("the passphrase is empty", "type a passphrase, or drop --encrypt")
    if getpass.getpass("repeat passphrase: ") != first:
        raise UsageError("the passphrases differ", "run keygen again")
    return first.encode("utf-8")
