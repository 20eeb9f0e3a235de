"""The `fimaudit` command line.

Exit codes (also in docs/cli.md):
  0  success (and, with --policy, the policy passed)
  1  the audit ran but the policy failed
  2  usage error: bad arguments, options or policy file
  3  bad input data, or an unusable key file
  4  the model cannot be loaded, or its outputs are not valid probabilities/logits
  5  a query failed after retries, or a signature did not verify
  130 interrupted (Ctrl-C)
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fimaudit.data import load_inputs
from fimaudit.errors import FimauditError, UsageError
from fimaudit.fileio import atomic_write
from fimaudit.registry import load_model
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
        err.print(f"[bold red]error:[/] {exc.message}")
        if exc.fix:
            err.print(f"[bold]fix:[/] {exc.fix}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


@app.command()
def audit(
    model: str = typer.Argument(..., help="Model file (e.g. model.onnx) or endpoint URL."),
    data: Path = typer.Option(..., "--data", "-d", help="Inputs: .npy, .npz (array 'x') or .csv, shape (n, *input shape)."),
    out_path: Path = typer.Option(Path("report.json"), "--out", "-o", help="Where to write the JSON report."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Audit only the first N inputs."),
    directions: int = typer.Option(256, "--directions", "-k", help="Random directions per input (more: tighter estimate, more queries)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same report."),
    scheme: str = typer.Option("central", "--scheme", help="Finite differences: central (2 queries/direction), forward (1), richardson (4)."),
    step: Optional[float] = typer.Option(None, "--step", help="Finite-difference step in input units (default: relative to the data's spread)."),
    estimator: str = typer.Option("auto", "--estimator", help="auto (exact when the input is small enough), sketch or exact."),
    tau: float = typer.Option(0.01, "--tau", help="KL budget in nats for the radius epsilon_tau = sqrt(2 tau / lambda_max)."),
    outputs: Optional[str] = typer.Option(None, "--outputs", help="Declare the model's outputs: probabilities or logits (default: detected)."),
    output_name: Optional[str] = typer.Option(None, "--output", help="Name of the model output to audit (default: detected)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Maximum inputs per model call (default: the model's)."),
    concurrency: int = typer.Option(1, "--concurrency", help="Batches in flight at once (useful for remote endpoints)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary table."),
) -> None:
    """Audit MODEL on the inputs in --data and write a JSON report."""
    with _errors_to_exit_codes():
        options = _model_options(outputs, output_name, batch_size)
        x = load_inputs(data)
        loaded = load_model(model, **options)
        try:
            with _progress(quiet) as progress:
                report = run_audit(
                    loaded, x, directions=directions, seed=seed, scheme=scheme, step=step, estimator=estimator,
                    tau=tau, limit=limit, concurrency=concurrency, data_source=str(data), progress=progress,
                )
        finally:
            loaded.close()
        atomic_write(out_path, report.to_json().encode())
        if not quiet:
            print_summary(report)
            out.print(f"report written to [bold]{out_path}[/]")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the audit report (published as docs/report.schema.json)."""
    from fimaudit.report import json_schema

    typer.echo(json_schema(), nl=False)


def _model_options(outputs: str | None, output_name: str | None, batch_size: int | None) -> dict[str, Any]:
    if outputs not in (None, "probabilities", "logits"):
        raise UsageError(f"--outputs must be 'probabilities' or 'logits' (got {outputs!r}).", "omit it to detect automatically")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1 (got {batch_size}).", "omit it to use the model's own maximum")
    options: dict[str, Any] = {"outputs": outputs, "output_name": output_name, "max_batch_size": batch_size}
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
        f"{report.config.directions} directions, {report.config.scheme} differences, step {report.config.step:.3g}"
    )


def _fmt(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4g}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
