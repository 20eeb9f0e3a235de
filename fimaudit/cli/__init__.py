"""The `fimaudit` command line: one module per command group, all registered on one Typer app.

app.py      the Typer app, the consoles, and the mapping of errors to exit codes
audit.py    `audit`: options, input loading, the audit itself, and the file it writes
summary.py  the console tables printed after an audit or a comparison
signing.py  `keygen`, `sign`, `verify`
reports.py  `schema`, `render`, `compare`
"""
from __future__ import annotations

from fimaudit.cli import audit, reports, signing  # noqa: F401  (importing a module registers its commands)
from fimaudit.cli.app import app, main

__all__ = ["app", "main"]
