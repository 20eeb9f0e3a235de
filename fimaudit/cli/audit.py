"""`fimaudit audit`: options, input loading, the audit itself, and the file it writes."""
from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fimaudit.cli.app import (
    app,
    err,
    errors_to_exit_codes,
    out,
    path_text,
    require_utf8_path,
    require_writable_dir,
)
from fimaudit.adapter import one_line
from fimaudit.cli.signing import ASSURANCE_HELP, declared_assurance, signing_key
from fimaudit.cli.summary import describe_check, print_policy, print_summary
from fimaudit.data import InputSet, fit_to_spec, load_input_set
from fimaudit.distributed import RayOptions
from fimaudit.errors import FimauditError, ModelError, UsageError
from fimaudit.fileio import atomic_write, refuse_special
from fimaudit.journal import JournalLock, remove_journal
from fimaudit.adapter import ProbabilityModel
from fimaudit.policy import PolicyResult, load_policy
from fimaudit.registry import load_model
from fimaudit.report import AuditReport, SkippedInput
from fimaudit.runner import audit as run_audit
from fimaudit.runner import check_options
from fimaudit.signing import Assurance, attest, build_predicate, envelope_to_bytes, require_attestable

# The runner refuses fewer; below RELIABLE_INTERVAL_DIRECTIONS the intervals may undercover: 90%
# at k = 16 in docs/math.md's simulation, 88-92.5% at k <= 64 on real models with the old interval.
MIN_DIRECTIONS = 2
RELIABLE_INTERVAL_DIRECTIONS = 128
OUTPUT_KINDS = ("probabilities", "logits", "sigmoid")


@app.command()
def audit(
    model: str = typer.Argument(..., metavar="MODEL", help="Model file (e.g. model.onnx) or endpoint URL."),
    data: Path = typer.Option(
        ..., "--data", "-d", metavar="PATH",
        help="Inputs: .npy, .npz (array 'x') or .csv, shape (n, *input shape) or one flattened input a row, or a "
        "folder of images (PNG; others with Pillow) scaled to [0, 1].",
    ),
    out_path: Optional[Path] = typer.Option(
        None, "--out", "-o", metavar="FILE", help="Where to write the result (default report.json, or report.dsse.json with --sign).",
    ),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", metavar="N", min=1, help="Audit only the first N inputs."),
    sample: Optional[int] = typer.Option(
        None, "--sample", metavar="N", min=1,
        help="Audit N inputs drawn at random without replacement, the draw fixed by --seed and the data's digest "
        "(recorded in the report's data.selection); not with --limit.",
    ),
    directions: int = typer.Option(
        256, "--directions", metavar="K", min=MIN_DIRECTIONS,
        help=f"Budget per input: 2K queries, on K central or 2K forward directions (see --scheme); at least {MIN_DIRECTIONS} "
        f"({RELIABLE_INTERVAL_DIRECTIONS} or more for intervals you can quote). More: tighter estimate, more queries.",
    ),
    seed: int = typer.Option(0, "--seed", metavar="SEED", help="Seed: the same seed gives the same report."),
    scheme: str = typer.Option(
        "auto", "--scheme", metavar="SCHEME",
        help="Finite differences: auto (2K queries per input, spent on 2K forward directions where a pilot finds forward "
        "unbiased there, else on K central ones), central (2 queries/direction), forward (1) or richardson (4).",
    ),
    step: Optional[float] = typer.Option(
        None, "--step", metavar="H",
        help="Fix the finite-difference step (input units, RMS per coordinate); default: chosen per input by a "
        "convergence search, and a fixed one is still checked.",
    ),
    estimator: str = typer.Option("auto", "--estimator", metavar="NAME", help="auto (exact when the input is small enough), sketch or exact."),
    draws: str = typer.Option(
        "rademacher", "--draws", metavar="LAW",
        help="Law of the random directions: rademacher (random signs, cheap) or gaussian (fimaudit 0.2's); same accuracy.",
    ),
    generator: str = typer.Option(
        "auto", "--generator", metavar="NAME",
        help="Where sign directions come from: numpy, counter (formed on the model's device), or auto (counter for a "
        "model on a GPU); same accuracy, recorded in the report.",
    ),
    tau: float = typer.Option(0.01, "--tau", metavar="NATS", help="KL budget in nats for the radius epsilon_tau = sqrt(2 tau / lambda_max)."),
    outputs: Optional[str] = typer.Option(
        None, "--outputs", metavar="KIND",
        help="Declare what the model outputs: probabilities, logits, or sigmoid (one probability of class 1 of a "
        "binary classifier); default: detected.",
    ),
    output_name: Optional[str] = typer.Option(
        None, "--output-name", metavar="NAME",
        help="Name of the model output to audit, for models with several (default: detected).",
    ),
    input_name: Optional[str] = typer.Option(None, "--input", metavar="NAME", help="Name of the model input to perturb, for models with several."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", metavar="N", min=1, help="Maximum inputs per model call (default: the model's)."),
    concurrency: int = typer.Option(1, "--concurrency", metavar="N", min=1, help="Batches in flight at once (useful for remote endpoints)."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Shard the samples over Ray workers: a cluster's address, or 'auto' for a local instance (pip install 'fimaudit[ray]').",
    ),
    workers: int = typer.Option(2, "--workers", metavar="N", min=1, help="With --ray: Ray workers, each loading the model once."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", metavar="G", min=0.0, help="With --ray: GPUs each worker reserves."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary table."),
    sign_key: Optional[Path] = typer.Option(None, "--sign", metavar="KEY", help="Private key: write a signed DSSE envelope instead of the bare report."),
    policy_path: Optional[Path] = typer.Option(None, "--policy", metavar="TOML", help="Policy TOML: record a pass/fail verdict; exit 1 when it fails."),
    journal: Optional[Path] = typer.Option(
        None, "--journal", metavar="FILE",
        help="Journal of finished samples (default: OUT.journal); rerunning resumes from it.",
    ),
    restart: bool = typer.Option(False, "--restart", help="Discard the journal and start the audit afresh."),
    header_env: Optional[str] = typer.Option(
        None, "--header-env", metavar="VAR",
        help="Environment variable holding extra request headers for endpoints (never logged).",
    ),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Seconds allowed per request to an endpoint."),
    white_box: bool = typer.Option(
        False, "--white-box",
        help="Also compute lambda_max from the model's own gradients (PyTorch models), to check the estimate.",
    ),
    bound: bool = typer.Option(
        False, "--bound",
        help="Also bound lambda_max from the model's graph and weights (PyTorch and ONNX files): at every input, and on "
        "the ball of each input's step where the adapter can (PyTorch); null with the operator named where it cannot.",
    ),
    input_shape: Optional[str] = typer.Option(
        None, "--input-shape", metavar="SHAPE",
        help="Shape of one input, e.g. 3,32,32, for models that do not record it (default: taken from --data).",
    ),
    assurance: str = typer.Option("self", "--assurance", metavar="LEVEL", help=ASSURANCE_HELP),
    skip_unreadable: bool = typer.Option(
        False, "--skip-unreadable",
        help="With an image folder: skip files that cannot be decoded (corrupt, truncated, multipage) and list "
        "them in the report.",
    ),
) -> None:
    """Audit MODEL on the inputs in --data and write a JSON report.

    With --sign, --out gets a DSSE envelope whose signed predicate holds the report and,
    with --policy, the verdict. With --policy alone, --out gets that predicate unsigned.
    """
    with errors_to_exit_codes():
        require_utf8_path(model, "model")  # the report records it as text, after the whole audit
        if limit is not None and sample is not None:
            raise UsageError("--limit and --sample both choose which inputs to audit.", "give one of them")
        # Every option is checked before the model loads and the progress bar starts.
        check_options(directions, scheme, estimator, tau, limit, step, seed, concurrency, sample, draws, generator)
        level = declared_assurance(assurance)
        if skip_unreadable and not data.is_dir():
            raise UsageError("--skip-unreadable applies to a folder of images only.", "drop it, or pass --data a folder")
        options = model_options(outputs, output_name, input_name, batch_size, header_env=header_env, timeout=timeout)
        # Policy and key problems surface before the audit spends any queries.
        policy = load_policy(policy_path) if policy_path is not None else None
        key = signing_key(sign_key) if sign_key is not None else None
        # A bad data file is reported before any model is loaded; image folders need its input shape.
        inputs = None if data.is_dir() else load_input_set(data)
        options.update(shape_options(input_shape, inputs))
        target = out_path or Path("report.dsse.json" if key is not None else "report.json")
        book = journal or target.with_name(target.name + ".journal")
        check_output_paths(target, book)
        # Held until the journal is removed, so a second audit with the same --out fails at once
        # instead of resuming from (or deleting) a journal this one is still using.
        with JournalLock(book) as lock:
            loaded = load_model_or_explain(model, options)
            try:
                if key is not None:
                    require_attestable(loaded.identity.sha256, model, loaded.identity.extra)
                inputs = fitted_inputs(inputs, data, loaded, skip_unreadable)
                warn_small_k(directions, estimator)
                with progress_bar(quiet) as progress:
                    report = run_audit(
                        loaded, inputs.x, directions=directions, seed=seed, scheme=scheme, step=step, estimator=estimator,
                        draws=draws, generator=generator, tau=tau, limit=limit, sample=sample, concurrency=concurrency,
                        data_source=path_text(data), progress=progress,
                        journal=book, restart=restart, white_box=white_box, journal_lock=lock, bound=bound,
                        ray=ray_options(ray_address, workers, gpus_per_worker, model, options),
                    )
            finally:
                loaded.close()
            report = with_files(report, inputs, skip_unreadable)
            verdict = policy.evaluate(report) if policy is not None else None
            atomic_write(target, audit_output(report, verdict, key, model, level))
            remove_journal(book)  # the report now holds every sample; a rerun starts afresh
        print_audit_result(report, verdict, target, signed=key is not None, quiet=quiet)
    if verdict is not None and not verdict.passed:
        raise typer.Exit(1)


def ray_options(address: str | None, workers: int, gpus: float, model: str, options: dict[str, Any]) -> RayOptions | None:
    """How to shard over Ray, if at all: workers load the model by the same reference and options."""
    if address is None:
        return None
    local = Path(model)
    # A worker's working directory is not the driver's: a relative file path must not be read from it.
    reference = str(local.resolve()) if local.exists() else model
    return RayOptions(address=address, workers=workers, gpus_per_worker=gpus, model_source=(reference, dict(options)))


def check_output_paths(target: Path, book: Path) -> None:
    """Every place the audit writes is checked before the model is loaded or queried: an audit
    whose report (or journal) cannot be written must not cost its queries first."""
    require_writable_dir(target, "--out")
    require_writable_dir(book, "--journal")
    refuse_special(target)  # /dev/null must stay a device
    refuse_special(book, "journal")
    require_utf8_path(str(target), "--out")


def shape_options(input_shape: str | None, inputs: InputSet | None) -> dict[str, Any]:
    """--input-shape when given; else, for an array file, the shape its rows have (used only by
    adapters whose model does not record its shape: ONNX dynamic axes, TorchScript)."""
    if input_shape is not None:
        return {"input_shape": parse_shape(input_shape)}
    if inputs is not None and inputs.x.ndim >= 3:
        # (n, d) rows may be flattened inputs: they say nothing about the model's shape.
        return {"data_shape": tuple(int(v) for v in inputs.x.shape[1:])}
    return {}


def fitted_inputs(inputs: InputSet | None, data: Path, model: ProbabilityModel, skip_unreadable: bool) -> InputSet:
    """The inputs arranged to the model's input shape: image folders read to it, flattened rows reshaped."""
    shape = tuple(model.input_spec.shape)
    if inputs is None:
        return load_input_set(data, shape, skip_unreadable=skip_unreadable)
    return InputSet(fit_to_spec(inputs.x, model.input_spec), inputs.names, inputs.skipped)


def with_files(report: AuditReport, inputs: InputSet, skip_unreadable: bool) -> AuditReport:
    """Record which file each sample came from (image folders), and the files skipped."""
    if inputs.names is None:
        return report
    skipped = [SkippedInput(name=s.name, reason=s.reason) for s in inputs.skipped] if skip_unreadable else None
    # A sample's index is its row in the folder (also under --sample): files[j] names samples[j]'s file.
    files = [inputs.names[s.index] for s in report.samples]
    data = report.data.model_copy(update={"files": files, "skipped": skipped or None})
    return report.model_copy(update={"data": data})


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise UsageError(f"--input-shape {text!r} is not a shape.", "give positive sizes separated by commas, e.g. 3,32,32")
    return shape


def model_options(
    outputs: str | None, output_name: str | None, input_name: str | None, batch_size: int | None, *,
    header_env: str | None = None, timeout: float | None = None,
) -> dict[str, Any]:
    """The options given, under the names adapters declare; the adapter refuses those it does not take."""
    if outputs not in (None, *OUTPUT_KINDS):
        raise UsageError(f"--outputs must be one of {', '.join(OUTPUT_KINDS)} (got {outputs!r}).", "omit it to detect automatically")
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds (got {timeout}).", "omit it for the adapter's default")
    options: dict[str, Any] = {
        "outputs": outputs, "output_name": output_name, "input_name": input_name, "max_batch_size": batch_size,
        "header_env": header_env, "timeout": timeout,
    }
    return {k: v for k, v in options.items() if v is not None}


# What an adapter's parsing raises on a malformed or hostile reply or file: bad JSON is a
# ValueError, a short body an IndexError or struct.error, 'null' where an object belongs a
# TypeError, absurd declared sizes a MemoryError, very deep JSON a RecursionError.
ADAPTER_FAILURES = (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error, RecursionError, MemoryError)


def load_model_or_explain(model: str, options: dict[str, Any]) -> ProbabilityModel:
    """load_model, with an adapter's untyped failure turned into a ModelError (exit 4)."""
    try:
        return load_model(model, **options)
    except FimauditError:
        raise
    except ADAPTER_FAILURES as exc:
        raise ModelError(
            f"cannot load the model {model}: the adapter failed with {type(exc).__name__}: {one_line(exc)}",
            "check the model file, or that the URL points at a working model server; "
            "if both are fine, this is an adapter bug: report it with this message",
        ) from exc


def warn_small_k(directions: int, estimator: str) -> None:
    if directions < RELIABLE_INTERVAL_DIRECTIONS and estimator != "exact":
        err.print(
            f"[yellow]warning:[/] with {directions} directions the 95% intervals of sketched inputs are unreliable "
            f"(down to 90% coverage at k = 16 in our measurements); use --directions {RELIABLE_INTERVAL_DIRECTIONS} "
            "or more for intervals you can quote.", soft_wrap=True,
        )


def audit_output(
    report: AuditReport, verdict: PolicyResult | None, key: Ed25519PrivateKey | None, model: str, assurance: Assurance,
) -> bytes:
    """The bytes for --out: envelope when signing, predicate with a policy, else the bare report."""
    if key is not None:
        # A local model path is re-hashed, so a file swapped during the audit is never attested.
        model_path = model if Path(model).exists() else None
        return envelope_to_bytes(attest(report, key, verdict, model_path, assurance=assurance))
    if verdict is not None:
        return build_predicate(report, verdict, assurance=assurance).to_json().encode()
    return report.to_json().encode()


def print_audit_result(report: AuditReport, verdict: PolicyResult | None, target: Path, *, signed: bool, quiet: bool) -> None:
    if not quiet:
        print_summary(report)
        if verdict is not None:
            print_policy(verdict)
        what = "signed report" if signed else "report"
        out.print(f"{what} written to [bold]{escape(str(target))}[/]")
    if verdict is not None and not verdict.passed:
        # Said on stderr even with --quiet: exit code 1 alone does not say which check failed.
        for check in verdict.failed_checks():
            err.print(f"[bold red]policy failed:[/] {escape(describe_check(check))}", soft_wrap=True)


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Callable[[int, int, int], None] | None]:
    """A progress callback whose bar starts at its first call, once the audit has checked its inputs: a
    wrong data shape is then named alone, not after an empty bar."""
    if quiet:
        yield None
        return
    columns = (
        TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
        TextColumn("{task.fields[rate]:>8.0f} queries/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=err, transient=False)
    task, started = None, 0.0

    def update(done: int, total: int, queries: int) -> None:
        nonlocal task, started
        if task is None:
            bar.start()
            task, started = bar.add_task("audit", total=None, rate=0.0), bar.get_time()
        elapsed = max(bar.get_time() - started, 1e-9)
        bar.update(task, completed=done, total=total, rate=queries / elapsed)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()
