"""The audit journal: every finished sample is committed here before it counts.

SQLite in WAL mode with synchronous=FULL: a committed row survives a kill -9 or a power cut, and a
half-finished transaction is rolled back on the next open. The journal is bound to one audit (model
identity, data digest, configuration); opening it for another audit is refused.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from fimaudit.errors import UsageError
from fimaudit.report import SampleResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (idx INTEGER PRIMARY KEY, result TEXT NOT NULL);
"""


def audit_key(binding: dict[str, Any]) -> str:
    """A digest of everything that determines the audit's numbers."""
    return hashlib.sha256(json.dumps(binding, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Journal:
    """Finished samples of one audit, keyed by sample index."""

    def __init__(self, path: str | Path, binding: dict[str, Any], *, restart: bool = False) -> None:
        self.path = Path(path)
        if restart:
            remove_journal(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise _unusable(self.path, exc) from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._bind(binding)
        except sqlite3.Error as exc:
            self._db.close()
            raise _unusable(self.path, exc) from exc
        except BaseException:
            self._db.close()
            raise

    def _bind(self, binding: dict[str, Any]) -> None:
        key = audit_key(binding)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'audit'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('audit', ?), ('binding', ?)", (key, json.dumps(binding, sort_keys=True)))
            return
        if row[0] != key:
            raise UsageError(
                f"the journal {self.path} belongs to another audit ({_difference(self._binding(), binding)}).",
                "rerun with --restart to discard it, or pass a different --journal path",
            )

    def _binding(self) -> dict[str, Any]:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'binding'").fetchone()
        return json.loads(row[0]) if row else {}

    def finished(self) -> dict[int, SampleResult]:
        try:
            rows = self._db.execute("SELECT idx, result FROM samples ORDER BY idx").fetchall()
            return {int(i): SampleResult.model_validate_json(text) for i, text in rows}
        except (sqlite3.Error, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise _unusable(self.path, exc) from exc

    def commit(self, sample: SampleResult) -> None:
        # One transaction per sample: the row is durable when this returns.
        self._db.execute("INSERT OR REPLACE INTO samples VALUES (?, ?)", (sample.index, sample.model_dump_json()))

    def close(self) -> None:
        self._db.close()


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "it differs in: " + ", ".join(changed) if changed else "its key differs"


def remove_journal(path: str | Path) -> None:
    """Delete a journal with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _unusable(path: Path, exc: Exception) -> UsageError:
    return UsageError(
        f"the journal {path} cannot be used: {type(exc).__name__}: {exc}",
        "rerun with --restart to discard it, or pass another --journal path",
    )
