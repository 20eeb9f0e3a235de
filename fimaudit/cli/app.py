"""The Typer app every command registers on, its consoles, and errors turned into exit codes."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from fimaudit._version import __version__
from fimaudit.errors import EXIT_CODES, FimauditError, UsageError

EXIT_CODE_HELP = "Exit codes: " + "; ".join(f"{code} {meaning.split(' (')[0]}" for code, meaning in EXIT_CODES.items()) + "."

app = typer.Typer(
    name="fimaudit",
    help="Audit a classifier's sensitivity to input perturbations from its probability outputs alone.",
    epilog=EXIT_CODE_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich mode prints a type such as <bool> beside every flag.
    rich_markup_mode=None,
)
err = Console(stderr=True)
out = Console()


def _print_version(value: bool) -> None:
    if value:
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
def errors_to_exit_codes() -> Iterator[None]:
    """Every expected failure becomes one clear message and its documented exit code."""
    try:
        yield
    except FimauditError as exc:
        # Messages quote paths and policy syntax like [[check]]: never read them as markup.
        # soft_wrap: long keyids and paths stay on one line, whole for copy and grep.
        err.print(f"[bold red]error:[/] {escape(printable(exc.message))}", soft_wrap=True)
        if exc.fix:
            err.print(f"[bold]fix:[/] {escape(printable(exc.fix))}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def printable(text: str) -> str:
    # A message quoting a non-UTF-8 path holds surrogates, which stderr cannot encode: show them as \\udcNN.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def path_text(path: Path) -> str:
    """A path as text for the report: undecodable bytes written as \\xNN, not a crash at the end."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def require_utf8_path(text: str, what: str) -> None:
    """Refuse, before any work, a path the report must record but UTF-8 cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"the {what} path {path_text(Path(text))} is not valid UTF-8, so the report cannot record it.",
            "rename the file (or link to it) under a UTF-8 name",
        ) from None


def require_writable_dir(target: Path, option: str) -> None:
    """`target`'s folder must be (or be creatable in) a writable directory; `option` names the flag to change."""
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # atomic_write creates the missing folders, in the nearest existing one
    if not folder.is_dir():
        raise UsageError(f"cannot write {path_text(target)}: {path_text(folder)} is not a directory.",
                         f"pass {option} a path inside an existing directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path_text(target)}: the directory {path_text(folder)} is not writable.",
                         f"pass {option} a path in a directory you can write to")


def main() -> None:
    app()
