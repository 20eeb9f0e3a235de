"""The `fimaudit` command as a user runs it: a subprocess of this interpreter, output captured.

A plain module (pyproject puts tests/ on sys.path), so test files share it by `from cli_helpers
import run` rather than importing one another.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`fimaudit ARGS...`, with a console wide enough that messages are not wrapped mid-word."""
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "fimaudit.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
