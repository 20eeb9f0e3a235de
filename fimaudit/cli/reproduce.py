"""`fimaudit reproduce`: re-audit a random few of a report's samples, and co-sign what reproduced."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fimaudit.cli.app import app, err, errors_to_exit_codes, out, path_text, require_writable_dir
from fimaudit.cli.audit import fitted_inputs, load_model_or_explain, model_options, shape_options
from fimaudit.cli.signing import signing_key
from fimaudit.data import load_input_set
from fimaudit.errors import ReproductionError
from fimaudit.fileio import atomic_write, refuse_special
from fimaudit.reproduction import (
    DEFAULT_SAMPLES,
    FINGERPRINT_TOLERANCE,
    ReproductionResult,
    describe_differences,
    load_original,
    reproduce,
    sign_reproduction,
)
from fimaudit.signing import envelope_to_bytes, load_public_key

DEFAULT_OUT = "reproduced.dsse.json"


@app.command("reproduce")
def reproduce_cmd(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="The report to reproduce: plain JSON, or a signed envelope with --key."),
    model: str = typer.Option(..., "--model", "-m", metavar="MODEL", help="The audited model file or endpoint URL."),
    data: Path = typer.Option(
        ..., "--data", "-d", metavar="PATH", help="The data the audit read: the whole file, also when it ran with --sample or --limit.",
    ),
    samples: int = typer.Option(
        DEFAULT_SAMPLES, "--samples", "-n", metavar="N", min=1,
        help="How many of the report's samples to re-audit, chosen at random from the OS's entropy (all when N is larger).",
    ),
    key_paths: List[Path] = typer.Option([], "--key", "-k", metavar="KEY", help="Public key that must have signed REPORT (repeatable)."),
    sign_key: Optional[Path] = typer.Option(
        None, "--sign", metavar="KEY", help="When it reproduces: sign a new envelope (assurance 'reproduced') with this private key.",
    ),
    out_path: Optional[Path] = typer.Option(
        None, "--out", "-o", metavar="FILE",
        help=f"Where to write the reproduced predicate when it reproduces (signed with --sign; default {DEFAULT_OUT} then).",
    ),
    concurrency: int = typer.Option(1, "--concurrency", metavar="N", min=1, help="Requests in flight (endpoints)."),
    outputs: Optional[str] = typer.Option(None, "--outputs", metavar="KIND", help="Declare the outputs as the audit did: probabilities, logits or sigmoid."),
    output_name: Optional[str] = typer.Option(None, "--output-name", metavar="NAME", help="Model output to audit, as the audit did."),
    input_name: Optional[str] = typer.Option(None, "--input", metavar="NAME", help="Model input to perturb, as the audit did."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", metavar="SHAPE", help="Shape of one input, as the audit was given it."),
    skip_unreadable: bool = typer.Option(False, "--skip-unreadable", help="With an image folder: skip unreadable files, as the audit did."),
    header_env: Optional[str] = typer.Option(None, "--header-env", metavar="VAR", help="Environment variable holding extra request headers for endpoints."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Seconds allowed per request to an endpoint."),
    tolerance: float = typer.Option(
        FINGERPRINT_TOLERANCE, "--fingerprint-tolerance", metavar="P", help="Largest probability difference accepted on an endpoint's fingerprint probes.",
    ),
) -> None:
    """Re-audit a random subset of REPORT's samples with its recorded configuration and compare.

    The model's digest (an endpoint's fingerprint) and the data's digest are checked first. Exit 0
    when every re-audited lambda_max matches within its tolerance, 5 naming the samples that differ.
    """
    with errors_to_exit_codes():
        keys = [load_public_key(p) for p in key_paths]
        original = load_original(report_path, keys)  # signatures first: nothing unverified is read
        key = signing_key(sign_key) if sign_key is not None else None
        target = out_path or (Path(DEFAULT_OUT) if key is not None else None)
        if target is not None:
            require_writable_dir(target, "--out")
            refuse_special(target)
        # An endpoint's fingerprint is re-checked through a connection opened with the same options.
        endpoint = model_options(outputs, output_name, input_name, None, header_env=header_env, timeout=timeout)
        inputs = None if data.is_dir() else load_input_set(data)
        options = {**endpoint, **shape_options(input_shape, inputs)}
        loaded = load_model_or_explain(model, options)
        try:
            inputs = fitted_inputs(inputs, data, loaded, skip_unreadable)
            result = reproduce(original, loaded, inputs.x, samples=samples, concurrency=concurrency,
                               fingerprint_tolerance=tolerance, endpoint_options=endpoint)
        finally:
            loaded.close()
        print_result(result, report_path)
        if not result.reproduced:
            raise ReproductionError(f"not reproduced: {len(result.differing)} of {len(result.record.samples)} samples differ: "
                                    f"{describe_differences(result)}",
                                    "the report does not hold for this model and data; ask its auditor why")
        if target is not None:
            model_path = model if Path(model).exists() else None  # a local file is hashed again for the subject
            written = envelope_to_bytes(sign_reproduction(result, key, model_path)) if key is not None else result.predicate().to_json().encode()
            atomic_write(target, written)
            out.print(f"{'signed ' if key is not None else ''}reproduction written to [bold]{escape(path_text(target))}[/]")


def print_result(result: ReproductionResult, report_path: Path) -> None:
    record = result.record
    table = Table(title=f"reproducing {escape(path_text(report_path))}", title_justify="left")
    for name in ("sample", "λ_max recorded", "reproduced", "deviation", "tolerance", ""):
        table.add_column(name, justify="right")
    for s in record.samples:
        verdict = "identical" if s.identical else ("matches" if s.matches else "[bold red]DIFFERS[/]")
        table.add_row(str(s.index), f"{s.lambda_max:.6g}", f"{s.lambda_max_reproduced:.6g}", f"{s.deviation:.2g}", f"{s.tolerance:.2g}", verdict)
    out.print(table)
    model = {
        "sha256": "model sha256 matches", "fingerprint": "endpoint answers its fingerprint",
        "none": "no model identity recorded (only the re-computation checks it)",
    }
    out.print(f"{model[record.model_check]}; data sha256 matches; {len(record.samples)} of {record.population} samples re-audited")
    if result.report.tool.version != record.tool.version:
        err.print(f"[yellow]note:[/] the report was made by fimaudit {escape(result.report.tool.version)}, this is "
                  f"{escape(record.tool.version)}: an estimator changed in between would show as differences.", soft_wrap=True)
    if record.reproduced:
        if record.identical:
            how = "bit-identical" if record.max_deviation == 0.0 else "every figure identical to 1e-9"
        else:
            how = f"within tolerance (max deviation {record.max_deviation:.3g})"
        out.print(f"[bold green]reproduced[/]: {how}")

