"""The `fimaudit` command line: one module per command group, all registered on one Typer app.

app.py      the Typer app, the consoles, and the mapping of errors to exit codes
audit.py    `audit`: options, input loading, the audit itself, and the file it writes
summary.py  the console tables printed after an audit or a comparison
signing.py  `keygen`, `sign`, `verify`
reports.py  `schema`, `render`, `compare`
plan.py     `plan`: inputs needed to bound a population quantile, and their query cost
reproduce.py  `reproduce`: re-audit a random few of a report's samples, co-sign what reproduced
"""
from __future__ import annotations

from fimaudit.cli import audit, plan, reports, reproduce, signing  # noqa: F401  (importing a module registers its commands)
from fimaudit.cli.app import app, main

__all__ = ["app", "main"]
