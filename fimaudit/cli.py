"""The `fimaudit` command line.

Exit codes (also in README.md):
  0  success (and, with --policy, the policy passed)
  1  the audit ran but the policy failed
  2  usage error: bad arguments, options or policy file
  3  bad input data, or an unusable key file
  4  the model cannot be loaded, or its outputs are not valid probabilities/logits
  5  a query failed after retries, or a signature did not verify
  6  an estimate failed on a sample (a fimaudit bug; the message names the sample)
  130 interrupted (Ctrl-C)

`verify --require-pass` also exits 1 when the signed policy verdict failed or is absent.
"""
from __future__ import annotations

import getpass
import json
import os
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fimaudit.attestation import (
    AuditPredicate,
    VerificationResult,
    attest,
    envelope_to_bytes,
    load_envelope,
    load_signing_key,
    predicate_json_schema,
    require_attestable,
    sign,
    unverified_statement,
    verify,
)
from fimaudit.comparison import Comparison, compare
from fimaudit.data import load_inputs
from fimaudit.dsse import SignatureError, has_lone_surrogate
from fimaudit.errors import FimauditError, ModelError, UsageError
from fimaudit.fileio import atomic_write, refuse_special
from fimaudit.journal import JournalLock, remove_journal
from fimaudit.keys import (
    PASSPHRASE_ENV,
    PRIVATE_SUFFIX,
    PUBLIC_SUFFIX,
    KeyFileError,
    generate_keypair,
    keyid,
    load_public_key,
    passphrase_from_env,
)
from fimaudit.policy import PolicyCheck, PolicyResult, load_policy
from fimaudit.registry import adapter_for, load_model
from fimaudit.render import render_html
from fimaudit.report import AuditReport
from fimaudit.runner import audit as run_audit

app = typer.Typer(
    name="fimaudit",
    help="Audit a classifier's sensitivity to input perturbations from its probability outputs alone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()


def _print_version(value: bool) -> None:
    if value:
        from fimaudit import __version__

        out.print(f"fimaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    """Audit a classifier's sensitivity to input perturbations from its probability outputs alone.

    Start with: fimaudit audit model.onnx --data inputs.npy --out report.json
    """


@contextmanager
def _errors_to_exit_codes() -> Iterator[None]:
    """Every expected failure becomes one clear message and its documented exit code."""
    try:
        yield
    except FimauditError as exc:
        # Messages quote paths and policy syntax like [[check]]: never read them as markup.
        # soft_wrap: long keyids and paths stay on one line, whole for copy and grep.
        err.print(f"[bold red]error:[/] {escape(_printable(exc.message))}", soft_wrap=True)
        if exc.fix:
            err.print(f"[bold]fix:[/] {escape(_printable(exc.fix))}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def _printable(text: str) -> str:
    # A message quoting a non-UTF-8 path holds surrogates, which stderr cannot encode: show them as \\udcNN.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@app.command()
def audit(
    model: str = typer.Argument(..., help="Model file (e.g. model.onnx) or endpoint URL."),
    data: Path = typer.Option(..., "--data", "-d", help="Inputs: .npy, .npz (array 'x') or .csv, shape (n, *input shape), or a folder of images (PNG; others with Pillow) scaled to [0, 1]."),
    out_path: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="Where to write the result (default report.json, or report.dsse.json with --sign).",
    ),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Audit only the first N inputs."),
    directions: int = typer.Option(256, "--directions", "-k", help="Random directions per input (more: tighter estimate, more queries)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same report."),
    scheme: str = typer.Option("central", "--scheme", help="Finite differences: central (2 queries/direction), forward (1), richardson (4)."),
    step: Optional[float] = typer.Option(None, "--step", help="Fix the finite-difference step (input units, RMS per coordinate); default: chosen per input by a convergence search, and a fixed one is still checked."),
    estimator: str = typer.Option("auto", "--estimator", help="auto (exact when the input is small enough), sketch or exact."),
    tau: float = typer.Option(0.01, "--tau", help="KL budget in nats for the radius epsilon_tau = sqrt(2 tau / lambda_max)."),
    outputs: Optional[str] = typer.Option(None, "--outputs", help="Declare the model's outputs: probabilities, logits, or sigmoid (one probability of class 1 of a binary classifier); default: detected."),
    output_name: Optional[str] = typer.Option(None, "--output", help="Name of the model output to audit (default: detected)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Maximum inputs per model call (default: the model's)."),
    concurrency: int = typer.Option(1, "--concurrency", help="Batches in flight at once (useful for remote endpoints)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary table."),
    sign_key: Optional[Path] = typer.Option(
        None, "--sign", help="Private key: write a signed DSSE envelope instead of the bare report.",
    ),
    policy_path: Optional[Path] = typer.Option(
        None, "--policy", help="Policy TOML: record a pass/fail verdict; exit 1 when it fails.",
    ),
    journal: Optional[Path] = typer.Option(
        None, "--journal", help="Journal of finished samples (default: OUT.journal); rerunning resumes from it.",
    ),
    restart: bool = typer.Option(False, "--restart", help="Discard the journal and start the audit afresh."),
    header_env: Optional[str] = typer.Option(
        None, "--header-env", help="Environment variable holding extra request headers for endpoints (never logged).",
    ),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds allowed per request to an endpoint."),
    white_box: bool = typer.Option(
        False, "--white-box", help="Also compute lambda_max from the model's own gradients (PyTorch models), to check the estimate.",
    ),
    input_shape: Optional[str] = typer.Option(
        None, "--input-shape", help="Shape of one input, e.g. 3,32,32, for models that do not record it (TorchScript).",
    ),
) -> None:
    """Audit MODEL on the inputs in --data and write a JSON report.

    With --sign, --out gets a DSSE envelope whose signed predicate holds the report and,
    with --policy, the verdict. With --policy alone, --out gets that predicate unsigned.
    """
    with _errors_to_exit_codes():
        options = _model_options(outputs, output_name, batch_size, header_env=header_env, timeout=timeout)
        _require_utf8_path(model, "model")  # the report records it as text, after the whole audit
        if input_shape is not None:
            options["input_shape"] = _parse_shape(input_shape)
        # Policy and key problems surface before the audit spends any queries.
        policy = load_policy(policy_path) if policy_path is not None else None
        key = _signing_key(sign_key) if sign_key is not None else None
        # A bad data file is reported before any model is loaded; image folders need its input shape.
        x = None if data.is_dir() else load_inputs(data)
        target = out_path or Path("report.dsse.json" if key is not None else "report.json")
        book = journal or target.with_name(target.name + ".journal")
        refuse_special(target)  # before the model is loaded or queried: /dev/null must stay a device
        refuse_special(book, "journal")
        _require_writable_dir(target)  # a report that cannot be written must not cost an audit first
        _require_utf8_path(str(target), "--out")
        # Held until the journal is removed, so a second audit with the same --out fails at once
        # instead of resuming from (or deleting) a journal this one is still using.
        with JournalLock(book) as lock:
            loaded = _load_model(model, options)
            try:
                if key is not None:
                    require_attestable(loaded.identity.sha256, model, loaded.identity.extra)
                if x is None:
                    x = load_inputs(data, tuple(loaded.input_spec.shape))
                _warn_small_k(directions, estimator)
                with _progress(quiet) as progress:
                    report = run_audit(
                        loaded, x, directions=directions, seed=seed, scheme=scheme, step=step, estimator=estimator,
                        tau=tau, limit=limit, concurrency=concurrency, data_source=_path_text(data), progress=progress,
                        journal=book, restart=restart, white_box=white_box, journal_lock=lock,
                    )
            finally:
                loaded.close()
            verdict = policy.evaluate(report) if policy is not None else None
            atomic_write(target, _audit_output(report, verdict, key, model))
            remove_journal(book)  # the report now holds every sample; a rerun starts afresh
        _print_audit_result(report, verdict, target, signed=key is not None, quiet=quiet)
    if verdict is not None and not verdict.passed:
        raise typer.Exit(1)


# What an adapter's parsing raises on a malformed or hostile reply or file: bad JSON is a
# ValueError, a short body an IndexError or struct.error, 'null' where an object belongs a
# TypeError, absurd declared sizes a MemoryError, very deep JSON a RecursionError.
_ADAPTER_FAILURES = (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error, RecursionError, MemoryError)


def _load_model(model: str, options: dict[str, Any]) -> Any:
    """load_model, with an adapter's untyped failure turned into a ModelError (exit 4)."""
    try:
        return load_model(model, **options)
    except FimauditError:
        raise
    except _ADAPTER_FAILURES as exc:
        raise ModelError(
            f"cannot load the model {model}: the adapter failed with {type(exc).__name__}: {_one_line(exc)}",
            "check the model file, or that the URL points at a working model server; "
            "if both are fine, this is an adapter bug: report it with this message",
        ) from exc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    # A server's reply can be long or multi-line; the message must stay one greppable line.
    text = " ".join(str(exc).split()) or "(no message)"
    return text if len(text) <= limit else text[:limit] + "..."


def _path_text(path: Path) -> str:
    """A path as text for the report: undecodable bytes written as \\xNN, not a crash at the end."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _require_utf8_path(text: str, what: str) -> None:
    """Refuse, before any work, a path the report must record but UTF-8 cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"the {what} path {_path_text(Path(text))} is not valid UTF-8, so the report cannot record it.",
            "rename the file (or link to it) under a UTF-8 name",
        ) from None


def _require_writable_dir(target: Path) -> None:
    """The --out file's folder must be (or be creatable in) a writable directory."""
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # atomic_write creates the missing folders, in the nearest existing one
    if not folder.is_dir():
        raise UsageError(f"cannot write {_path_text(target)}: {_path_text(folder)} is not a directory.",
                         "pass --out a path inside an existing directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {_path_text(target)}: the directory {_path_text(folder)} is not writable.",
                         "pass --out a path in a directory you can write to")


# Below this the intervals may undercover: 90% at k = 16 in docs/math.md's simulation, and the
# earlier percentile interval covered 88-92.5% at k <= 64 on real models.
RELIABLE_INTERVAL_DIRECTIONS = 128


def _warn_small_k(directions: int, estimator: str) -> None:
    if directions < RELIABLE_INTERVAL_DIRECTIONS and estimator != "exact":
        err.print(
            f"[yellow]warning:[/] with {directions} directions the 95% intervals of sketched inputs are unreliable "
            f"(down to 90% coverage at k = 16 in our measurements); use --directions {RELIABLE_INTERVAL_DIRECTIONS} "
            "or more for intervals you can quote.", soft_wrap=True,
        )


def _audit_output(report: AuditReport, verdict: PolicyResult | None, key: Ed25519PrivateKey | None, model: str) -> bytes:
    """The bytes for --out: envelope when signing, predicate with a policy, else the bare report."""
    if key is not None:
        # A local model path is re-hashed, so a file swapped during the audit is never attested.
        model_path = model if Path(model).exists() else None
        return envelope_to_bytes(attest(report, key, verdict, model_path))
    if verdict is not None:
        return AuditPredicate(report=report, policy=verdict).to_json().encode()
    return report.to_json().encode()


def _print_audit_result(report: AuditReport, verdict: PolicyResult | None, target: Path, *, signed: bool, quiet: bool) -> None:
    if not quiet:
        print_summary(report)
        if verdict is not None:
            print_policy(verdict)
        what = "signed report" if signed else "report"
        out.print(f"{what} written to [bold]{escape(str(target))}[/]")
    if verdict is not None and not verdict.passed:
        # Said on stderr even with --quiet: exit code 1 alone does not say which check failed.
        for check in verdict.failed_checks():
            err.print(f"[bold red]policy failed:[/] {escape(_describe_check(check))}", soft_wrap=True)


@app.command()
def schema(
    predicate: bool = typer.Option(False, "--predicate", help="Print the signed predicate's schema instead."),
) -> None:
    """Print the JSON Schema of the report, or with --predicate of the signed predicate.

    Published as docs/report.schema.json and docs/predicate.schema.json.
    """
    from fimaudit.report import json_schema

    typer.echo(predicate_json_schema() if predicate else json_schema(), nl=False)


@app.command()
def keygen(
    out_prefix: Path = typer.Option(..., "--out", "-o", help="Prefix: writes PREFIX.key (mode 0600) and PREFIX.pub."),
    passphrase_env: Optional[str] = typer.Option(
        None, "--passphrase-env", metavar="VAR", help="Encrypt the private key with the passphrase in environment variable VAR.",
    ),
    encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt the private key with a passphrase typed at a prompt."),
    force: bool = typer.Option(False, "--force", help="Replace existing key files (the old key is lost for good)."),
) -> None:
    """Create an Ed25519 key pair for signing reports and print its keyid."""
    with _errors_to_exit_codes():
        if not force:
            _refuse_existing_keys(out_prefix)
        passphrase = _new_passphrase(passphrase_env, encrypt)
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
    envelope: Path = typer.Argument(..., help="A signed report (.dsse.json) to co-sign in place."),
    key_path: Path = typer.Option(..., "--key", "-k", help="Your private key."),
) -> None:
    """Add your signature to a signed report (e.g. the model owner's, next to the auditor's)."""
    with _errors_to_exit_codes():
        key = _signing_key(key_path)
        cosigned = sign(load_envelope(envelope), key)
        atomic_write(envelope, envelope_to_bytes(cosigned))
        statement = unverified_statement(cosigned)
    typer.echo(f"co-signed {envelope} with key {keyid(key.public_key())}")
    for subject in statement["subject"]:
        typer.echo(f"  subject  {subject['name']}  sha256:{subject['digest']['sha256']}")
    typer.echo(f"  signatures now: {len(cosigned['signatures'])}")


@app.command("verify")
def verify_cmd(
    envelope: Path = typer.Argument(..., help="The signed report (.dsse.json), or with --endpoint alone a plain report."),
    key_paths: List[Path] = typer.Option([], "--key", "-k", help="Public key that must have signed (repeat for each)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model file or directory that must match the subject."),
    require_pass: bool = typer.Option(False, "--require-pass", help="Exit 1 unless the signed policy verdict passed."),
    endpoint: Optional[str] = typer.Option(
        None, "--endpoint", help="Re-query this endpoint and check it still serves the audited model (its fingerprint).",
    ),
    tolerance: float = typer.Option(1e-5, "--tolerance", help="Largest probability difference accepted by --endpoint."),
) -> None:
    """Check that every --key signed ENVELOPE and, with --model, that it is about that model.

    With --endpoint, also re-query the endpoint on the report's fingerprint probes.
    Exit 0 when all checks pass, 5 with the reason when any fails.
    """
    with _errors_to_exit_codes():
        if key_paths:
            keys = [load_public_key(p) for p in key_paths]
            names = {keyid(k): p for k, p in zip(keys, key_paths)}
            result = verify(envelope, keys, model)
            _print_verification(envelope, result, names, model)
            report = result.predicate.report
        elif endpoint is not None:
            if require_pass:
                raise UsageError("--require-pass needs a signed verdict.", "pass --key to verify the signed report")
            report = _plain_report(envelope)
        else:
            raise UsageError("no --key given.", "name each public key that must have signed: --key auditor.pub")
        if endpoint is not None:
            _check_endpoint(report, endpoint, tolerance)
    if key_paths and require_pass and result.policy_passed is not True:
        err.print("[bold red]policy:[/] " + ("no policy verdict in the report" if result.policy_passed is None else "failed"))
        raise typer.Exit(1)


@app.command()
def render(
    report_path: Path = typer.Argument(..., help="A report, predicate or signed envelope (.dsse.json) from fimaudit audit."),
    key_paths: List[Path] = typer.Option([], "--key", "-k", help="Public key that must have signed the envelope (repeat for each)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: the report's name with .html)."),
) -> None:
    """Write the report as one self-contained HTML page with plots (no scripts, no network)."""
    with _errors_to_exit_codes():
        report, policy, signers = _read_report(report_path, key_paths)
        target = out_path or report_path.with_name(report_path.name.split(".")[0] + ".html")
        atomic_write(target, render_html(report, policy, signers).encode())
        out.print(f"HTML written to [bold]{escape(str(target))}[/]")


@app.command("compare")
def compare_cmd(
    report_a: Path = typer.Argument(..., help="Report A (the reference, e.g. the current model)."),
    report_b: Path = typer.Argument(..., help="Report B, audited on the same data (e.g. the candidate)."),
    key_paths: List[Path] = typer.Option([], "--key", "-k", help="Public key that must have signed both (for envelopes)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison as JSON here."),
) -> None:
    """Compare two audits of the same inputs sample by sample: is B more or less robust than A?"""
    with _errors_to_exit_codes():
        a, _, _ = _read_report(report_a, key_paths)
        b, _, _ = _read_report(report_b, key_paths)
        result = compare(a, b)
        if json_out is not None:
            atomic_write(json_out, result.model_dump_json(indent=2).encode())
        _print_comparison(result)


def _print_comparison(c: Comparison) -> None:
    table = Table(title=f"B = {c.b}  vs  A = {c.a}  ({c.n} shared inputs)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    low, high = c.median_log10_ratio_ci
    table.add_row("median lambda_B / lambda_A", f"{10**c.median_log10_ratio:.3g}  ({c.confidence:.0%} CI {10**low:.3g} to {10**high:.3g})")
    table.add_row("inputs where B is less sensitive", f"{c.fraction_b_lower:.1%}")
    table.add_row("intervals apart: B lower / B higher", f"{c.separated_b_lower} / {c.separated_b_higher}")
    table.add_row("same predicted class", f"{c.same_prediction:.1%}")
    out.print(table)
    out.print(f"verdict: [bold]{c.verdict}[/]")


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise UsageError(f"--input-shape {text!r} is not a shape.", "give positive sizes separated by commas, e.g. 3,32,32")
    return shape


def _plain_report(path: Path) -> AuditReport:
    return _plain_predicate(path)[0]


def _plain_predicate(path: Path) -> tuple[AuditReport, PolicyResult | None]:
    """An unsigned report or predicate; a signed envelope must be verified with --key first."""
    not_a_report = UsageError(f"{path} is not a fimaudit report.", "pass the JSON report written by fimaudit audit")
    try:
        data = json.loads(path.read_bytes()) if path.is_file() else None
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise not_a_report from exc
    if not isinstance(data, dict):
        raise not_a_report
    if has_lone_surrogate(data):
        # A \ud800 escape parses, but the text cannot be written out again as UTF-8 HTML or JSON.
        raise UsageError(f"{path} holds a string with a lone surrogate escape (such as \\ud800), which is not valid Unicode.",
                         "pass the report exactly as fimaudit audit wrote it")
    if "payloadType" in data:
        raise UsageError(f"{path} is a signed envelope.", "pass --key to verify its signatures as well")
    try:
        if "report" in data:
            predicate = AuditPredicate.model_validate(data)
            return predicate.report, predicate.policy
        return AuditReport.model_validate(data), None
    except ValueError as exc:  # pydantic's ValidationError
        raise not_a_report from exc


def _read_report(path: Path, key_paths: list[Path]) -> tuple[AuditReport, PolicyResult | None, list[str]]:
    """(report, policy verdict, signers): a signed envelope verified against every key, else plain."""
    if not key_paths:
        report, policy = _plain_predicate(path)
        return report, policy, []
    keys = [load_public_key(p) for p in key_paths]
    names = {keyid(k): p for k, p in zip(keys, key_paths)}
    result = verify(path, keys)
    return result.predicate.report, result.predicate.policy, [f"{kid} ({names[kid]})" for kid in result.signers]


def _check_endpoint(report: AuditReport, url: str, tolerance: float) -> None:
    recorded = report.model.extra.get("fingerprint")
    if recorded is None:
        raise UsageError("the report holds no endpoint fingerprint.", "--endpoint checks reports of endpoint audits")
    adapter = adapter_for(url)
    check = getattr(adapter, "check_fingerprint", None)
    if check is None:
        raise UsageError(f"the {adapter.name} adapter cannot re-check fingerprints.", "verify the model file with --model instead")
    outcome = check(url, recorded, tolerance)
    if not outcome.matches:
        raise SignatureError(
            f"the endpoint {url} no longer serves the audited model: {outcome.reason}",
            "re-audit the endpoint, or find the model version that was audited",
        )
    typer.echo(f"  endpoint    {url} matches the audited fingerprint (max difference {outcome.max_abs_difference:.3g} <= {tolerance:g})")


def _print_verification(envelope: Path, result: VerificationResult, names: dict[str, Path], model: Path | None) -> None:
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
    typer.echo(f"  policy      {_verdict_line(result.predicate.policy)}")


def _verdict_line(verdict: PolicyResult | None) -> str:
    if verdict is None:
        return "none (signed without --policy)"
    passed = sum(c.passed for c in verdict.checks)
    state = "PASSED" if verdict.passed else "FAILED"
    lines = [f"{state} ({passed} of {len(verdict.checks)} checks; {verdict.source} sha256:{verdict.sha256})"]
    lines += [f"    {'ok  ' if c.passed else 'FAIL'} {_describe_check(c)}" for c in verdict.checks]
    return "\n".join(lines)


def _describe_check(check: PolicyCheck) -> str:
    measured = "unbounded" if check.measured is None else f"{check.measured:.6g}"
    return f"{check.figure} {check.comparator} {check.threshold:g} (measured {measured})"


def _signing_key(path: Path) -> Ed25519PrivateKey:
    """Load a private key; prompt for its passphrase only when a person can answer."""
    prompt = _prompt_passphrase if sys.stdin.isatty() else None
    return load_signing_key(path, prompt)


def _prompt_passphrase(path: Path) -> bytes:
    return getpass.getpass(f"passphrase for {path}: ").encode("utf-8")


def _refuse_existing_keys(prefix: Path) -> None:
    # Checked here, before any prompt, and with the CLI's own way out (--force).
    for suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX):
        path = prefix.with_name(prefix.name + suffix)
        refuse_special(path, "key")  # a device, FIFO or link is a usage error, not an old key
        if path.exists():
            raise KeyFileError(f"refusing to overwrite existing key file {path}",
                               "choose another --out prefix, or pass --force (the old key is lost for good)")


def _new_passphrase(env_var: str | None, encrypt: bool) -> bytes | None:
    """The passphrase for a new key: from --passphrase-env, a prompt (--encrypt), or none."""
    if env_var is not None and encrypt:
        raise UsageError("--passphrase-env and --encrypt are alternatives", "pass only one of them")
    if env_var is not None:
        passphrase = passphrase_from_env(env_var)
        if passphrase is None:
            raise UsageError(f"environment variable {env_var} is unset or empty", f"export {env_var}=<passphrase> first")
        return passphrase
    return _prompt_new_passphrase() if encrypt else None


def _prompt_new_passphrase() -> bytes:
    if not sys.stdin.isatty():
        raise UsageError("--encrypt asks for the passphrase at a prompt, but stdin is not a terminal",
                         "use --passphrase-env VAR instead")
    first = getpass.getpass("new passphrase: ")
    if not first:
        raise UsageError("the passphrase is empty", "type a passphrase, or drop --encrypt")
    if getpass.getpass("repeat passphrase: ") != first:
        raise UsageError("the passphrases differ", "run keygen again")
    return first.encode("utf-8")


def _model_options(
    outputs: str | None, output_name: str | None, batch_size: int | None, *, header_env: str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    if outputs not in (None, "probabilities", "logits", "sigmoid"):
        raise UsageError(
            f"--outputs must be 'probabilities', 'logits' or 'sigmoid' (got {outputs!r}).", "omit it to detect automatically"
        )
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1 (got {batch_size}).", "omit it to use the model's own maximum")
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds (got {timeout}).", "omit it for the adapter's default")
    options: dict[str, Any] = {
        "outputs": outputs, "output_name": output_name, "max_batch_size": batch_size,
        "header_env": header_env, "timeout": timeout,
    }
    return {k: v for k, v in options.items() if v is not None}


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[int, int, int], None] | None]:
    if quiet:
        yield None
        return
    columns = (
        TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
        TextColumn("{task.fields[rate]:>8.0f} queries/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("audit", total=None, rate=0.0)
        started = bar.get_time()

        def update(done: int, total: int, queries: int) -> None:
            elapsed = max(bar.get_time() - started, 1e-9)
            bar.update(task, completed=done, total=total, rate=queries / elapsed)

        yield update


def print_summary(report: AuditReport) -> None:
    """The end-of-audit table: distribution of lambda_max and of the radius epsilon_tau."""
    s = report.summary
    table = Table(title=f"fimaudit: {report.model.reference} ({s.n} inputs)")
    table.add_column("figure")
    for col in ("median", "p90", "p99", "min", "max"):
        table.add_column(col, justify="right")
    for name, st in (("lambda_max", s.lambda_max), (f"epsilon_tau (tau={report.config.tau:g})", s.epsilon_tau)):
        table.add_row(name, *(_fmt(getattr(st, c)) for c in ("median", "p90", "p99", "min", "max")))
    out.print(table)
    out.print(
        f"{s.queries} queries in {s.wall_seconds:.2f} s ({s.queries_per_second:,.0f}/s) on "
        f"{report.model.provider or report.model.adapter}; estimator {report.config.estimator}, "
        f"{report.config.directions} directions, {report.config.scheme} differences, {_step_summary(report)}"
    )
    for flag, count in s.flags.items():
        out.print(f"[yellow]{flag}[/]: {count} of {s.n} inputs. {FLAG_MEANINGS.get(flag, '')}", soft_wrap=True)


FLAG_MEANINGS = {
    "step_unconverged": "No two successive finite-difference steps agreed (kinks, ties, rounding): the interval is widened by their disagreement.",
    "step_nonlocal": "The step's L2 norm exceeds epsilon_tau/10: the estimate is a secant over a region where the model may not be linear.",
    "nondifferentiable": "The model has no derivative at the input (max-pool ties, ReLUs at exactly 0): the figure is the average one-sided slope's, and the interval spans both sides.",
    "batch_dependent": "An input's outputs depended on the other inputs of its batch (e.g. dynamic quantization): queried one input per request.",
    "below_resolution": "Nothing measurable above the output's rounding: lambda_max is that level, an upper bound.",
    "saturated": "The top probability is exactly 1 at the output precision; only the other classes' changes are seen.",
    "quantized_outputs": "Outputs are rounded or on a grid: differences below the grid step are invisible.",
    "nondeterministic": "The same input gave different outputs: their noise floor limits the estimate.",
    "zero_probabilities": "Some classes are reported as exactly 0 (e.g. top-k outputs): their share of F is bounded, not measured.",
}


def _step_summary(report: AuditReport) -> str:
    steps = [x.step for x in report.samples if x.step is not None]
    norms = [x.step_norm for x in report.samples if x.step_norm is not None]
    if not steps or not norms:
        return f"step {report.config.step:.3g}"
    how = "fixed" if report.config.step_rule and report.config.step_rule.startswith("fixed") else "chosen per input"
    return f"step {how}: median {float(np.median(steps)):.3g} (L2 norm {float(np.median(norms)):.3g})"


def print_policy(verdict: PolicyResult) -> None:
    """One row per check, so a failed verdict says exactly which threshold was missed."""
    table = Table(title=f"policy {verdict.source}: {'PASSED' if verdict.passed else 'FAILED'}")
    for col in ("figure", "check", "measured", "result"):
        table.add_column(col)
    for c in verdict.checks:
        table.add_row(c.figure, f"{c.comparator} {c.threshold:g}", _fmt(c.measured), "ok" if c.passed else "[bold red]FAIL[/]")
    out.print(table)


def _fmt(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4g}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
