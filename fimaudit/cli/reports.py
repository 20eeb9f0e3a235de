"""`fimaudit schema`, `render` and `compare`: what can be done with a report once written."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from fimaudit.cli.app import app, errors_to_exit_codes, out
from fimaudit.cli.signing import KEY_HELP
from fimaudit.cli.summary import print_comparison
from fimaudit.comparison import compare
from fimaudit.fileio import atomic_write
from fimaudit.reading import ReadReport, read_report
from fimaudit.render import render_html
from fimaudit.report import json_schema
from fimaudit.signing import keyid, load_public_key, predicate_json_schema


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
        read = read_with_keys(report_path, key_paths)
        target = out_path or report_path.with_name(report_path.name.split(".")[0] + ".html")
        atomic_write(target, render_html(read.report, read.policy, read.signers).encode())
        out.print(f"HTML written to [bold]{escape(str(target))}[/]")


@app.command("compare")
def compare_cmd(
    report_a: Path = typer.Argument(..., metavar="A", help="Report A (the reference, e.g. the current model)."),
    report_b: Path = typer.Argument(..., metavar="B", help="Report B, audited on the same data (e.g. the candidate)."),
    key_paths: List[Path] = typer.Option([], "--key", "-k", metavar="KEY", help="Public key that must have signed both (for envelopes)."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Also write the comparison as JSON here."),
) -> None:
    """Compare two audits of the same inputs sample by sample: is B more or less robust than A?"""
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
    names = {keyid(k): p for k, p in zip(keys, key_paths)}
    return ReadReport(read.report, read.policy, [f"{kid} ({names[kid]})" for kid in read.signers])
