"""`fimaudit schema`, `render` and `compare`: what can be done with a report once written."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.markup import escape

from fimaudit.cli.app import app, errors_to_exit_codes, out
from fimaudit.cli.signing import KEY_HELP
from fimaudit.cli.summary import print_comparison
from fimaudit.comparison import compare
from fimaudit.fileio import atomic_write
from fimaudit.reading import ReadReport, read_report
from fimaudit.render import render_html
from fimaudit.report import json_schema
from fimaudit.signing import AuditPredicate, keyid, load_public_key, predicate_json_schema, verify


@app.command()
def schema(
    predicate: bool = typer.Option(False, "--predicate", help="Print the signed predicate's schema instead."),
) -> None:
    """Print the JSON Schema of the report, or with --predicate of the signed predicate.

    Published as docs/report.schema.json and docs/predicate.schema.json.
    """
    typer.echo(predicate_json_schema() if predicate else json_schema(), nl=False)


@app.command()
def render(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="A report, predicate or signed envelope (.dsse.json) from fimaudit audit."),
    key_paths: List[Path] = typer.Option([], "--key", "-k", metavar="KEY", help=KEY_HELP),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE", help="HTML file to write (default: the report's name with .html)."),
) -> None:
    """Write the report as one self-contained HTML page with plots (no scripts, no network)."""
    with errors_to_exit_codes():
        read, predicate = read_for_render(report_path, key_paths)
        target = out_path or report_path.with_name(report_path.name.split(".")[0] + ".html")
        atomic_write(target, render_html(read.report, read.policy, read.signers, predicate).encode())
        out.print(f"HTML written to [bold]{escape(str(target))}[/]")


def read_for_render(path: Path, key_paths: list[Path]) -> tuple[ReadReport, AuditPredicate | None]:
    """The report as read_with_keys gives it, and its v2 predicate when it has one (for the
    assurance level, harness and non-claims); None for a bare report or a v1 predicate."""
    if not key_paths:
        return read_with_keys(path, key_paths), plain_predicate(path)
    keys = [load_public_key(p) for p in key_paths]
    result = verify(path, keys)  # what read_report does with keys, keeping the predicate
    read = ReadReport(result.predicate.report, result.predicate.policy, signer_names(result.signers, keys, key_paths))
    return read, result.predicate if isinstance(result.predicate, AuditPredicate) else None


def plain_predicate(path: Path) -> AuditPredicate | None:
    """An unsigned v2 predicate's sections; None for a bare report (read_plain has checked the file)."""
    data = json.loads(path.read_bytes())
    if "report" not in data or "threat_model" not in data:
        return None  # a bare report, or an unsigned predicate written before v2
    return AuditPredicate.model_validate(data)


@app.command("compare")
def compare_cmd(
    report_a: Path = typer.Argument(..., metavar="A", help="Report A (the reference, e.g. the current model)."),
    report_b: Path = typer.Argument(..., metavar="B", help="Report B, audited on the same data (e.g. the candidate)."),
    key_paths: List[Path] = typer.Option([], "--key", "-k", metavar="KEY", help="Public key that must have signed both (for envelopes)."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Also write the comparison as JSON here."),
) -> None:
    """Compare two audits of the same inputs sample by sample: is B more or less sensitive (lambda_max) than A?

    Sensitivity is not robustness: when A's and B's confidences differ materially, a caveat says so."""
    with errors_to_exit_codes():
        a = read_with_keys(report_a, key_paths).report
        b = read_with_keys(report_b, key_paths).report
        result = compare(a, b)
        if json_out is not None:
            atomic_write(json_out, result.model_dump_json(indent=2).encode())
        print_comparison(result)


def read_with_keys(path: Path, key_paths: list[Path]) -> ReadReport:
    """read_report, with each signer named by keyid and the key file it was checked with."""
    keys = [load_public_key(p) for p in key_paths]
    read = read_report(path, keys)
    return ReadReport(read.report, read.policy, signer_names(read.signers, keys, key_paths))


def signer_names(signers: list[str], keys: list[Ed25519PublicKey], key_paths: list[Path]) -> list[str]:
    """Each signer's keyid with the key file it was checked with."""
    names = {keyid(k): p for k, p in zip(keys, key_paths)}
    return [f"{kid} ({names[kid]})" for kid in signers]
