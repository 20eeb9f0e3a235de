"""The audit journal: every finished sample is committed here before it counts.

SQLite in WAL mode with synchronous=FULL: a committed row survives a kill -9 or a power cut, and a
half-finished transaction is rolled back on the next open. The journal is bound to one audit (model
identity, data digest, configuration); opening it for another audit is refused.

Its rows are not trusted: `finished` checks their structure, and the runner re-computes a random
subset of them before any counts (docs/security.md). A sidecar lock file keeps two audits from
sharing one journal.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fimaudit.errors import UsageError
from fimaudit.fileio import refuse_special
from fimaudit.report import SampleResult

_SIDECARS = ("", "-wal", "-shm")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (idx INTEGER PRIMARY KEY, result TEXT NOT NULL);
"""


def audit_key(binding: dict[str, Any]) -> str:
    """A digest of everything that determines the audit's numbers."""
    return hashlib.sha256(json.dumps(binding, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class JournalLock:
    """An exclusive, non-blocking lock on `<journal>.lock`, so one journal serves one audit at a time.

    flock on a sidecar rather than on the database: SQLite's own locks are fcntl locks, and
    --restart deletes and recreates the database file, which would drop a lock held on it.
    """

    def __init__(self, journal: str | Path) -> None:
        self.journal = Path(journal)
        self.path = Path(f"{journal}.lock")
        self._fd: int | None = None

    def acquire(self) -> JournalLock:
        refuse_special(self.path, "journal lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = self._open()
            if _still_linked(fd, self.path):
                self._fd = fd
            else:  # the holder removed the file after we opened it: lock the new one instead
                os.close(fd)
        return self

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _unusable(self.journal, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UsageError(
                    f"another audit is using the journal {self.journal} (it holds {self.path}).",
                    "wait for that audit to finish, or give this one another --out or --journal path",
                ) from exc
            raise _unusable(self.journal, exc) from exc
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlinked while still held: a waiter that opened the old file sees it unlinked and retries.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> JournalLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _still_linked(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class Journal:
    """Finished samples of one audit, keyed by sample index.

    It takes the journal's lock itself unless given `lock`, one the caller already holds (the CLI
    holds it from before the audit until the journal is removed).
    """

    def __init__(
        self, path: str | Path, binding: dict[str, Any], *, restart: bool = False, lock: JournalLock | None = None,
    ) -> None:
        self.path = Path(path)
        for suffix in _SIDECARS:  # SQLite follows links and opens devices: its target would become a journal
            refuse_special(f"{self.path}{suffix}", "journal")
        self._own_lock = lock is None
        self._lock = JournalLock(self.path).acquire() if lock is None else lock
        try:
            self._open(binding, restart)
        except BaseException:
            self._release()
            raise

    def _open(self, binding: dict[str, Any], restart: bool) -> None:
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
        stored = self._db.execute("SELECT value FROM meta WHERE key = 'binding'").fetchone()
        if stored is None or stored[0] != json.dumps(binding, sort_keys=True):
            raise self._forged("its recorded audit description does not match its audit key")

    def _binding(self) -> dict[str, Any]:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'binding'").fetchone()
        return json.loads(row[0]) if row else {}

    def finished(self, n: int) -> dict[int, SampleResult]:
        """The journaled samples of an audit of `n` inputs, after checking the rows' structure.

        Their values are checked by re-computing some of them (runner.py): a row that merely
        parses proves nothing, since anyone who can write the file can write any row.
        """
        try:
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":  # bytes edited in place
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else 'no answer'}")
            rows = self._db.execute("SELECT idx, result FROM samples ORDER BY idx").fetchall()
            results = [(idx, SampleResult.model_validate_json(text)) for idx, text in rows]
        except (sqlite3.Error, ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise _unusable(self.path, exc) from exc
        return self._checked(results, n)

    def _checked(self, rows: list[tuple[Any, SampleResult]], n: int) -> dict[int, SampleResult]:
        found: dict[int, SampleResult] = {}
        for idx, sample in rows:
            # The table's primary key already makes idx unique, but the file is not trusted: a
            # table recreated without it, or a row whose index field names another sample, forges a sample.
            if type(idx) is not int or idx != sample.index:
                raise self._forged(f"a row stored as sample {idx!r} holds sample {sample.index}")
            if not 0 <= idx < n:
                raise self._forged(f"sample index {idx} is outside the audited data's 0..{n - 1}")
            if idx in found:
                raise self._forged(f"sample {idx} appears more than once")
            found[idx] = sample
        return found

    def _forged(self, problem: str) -> UsageError:
        return UsageError(
            f"the journal {self.path} was altered since it was written: {problem}.",
            "rerun with --restart to discard it and audit every sample afresh",
        )

    def commit(self, samples: Sequence[SampleResult]) -> None:
        """Commit finished samples in one transaction: every row is durable when this returns, or
        (killed before) none is. One fsync for a whole Ray shard instead of one per sample: with
        synchronous=FULL the fsync, not the insert, is what limited the driver."""
        rows = [(s.index, s.model_dump_json()) for s in samples]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._own_lock:
            self._lock.release()


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = _changed(old, new)
    return "it differs in: " + ", ".join(changed) if changed else "its key differs"


def _changed(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys whose values differ, dotted down into nested dicts (config.directions, not config)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def remove_journal(path: str | Path) -> None:
    """Delete a journal with its WAL and shared-memory files."""
    for suffix in _SIDECARS:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _unusable(path: Path, exc: Exception) -> UsageError:
    return UsageError(
        f"the journal {path} cannot be used: {type(exc).__name__}: {exc}",
        "rerun with --restart to discard it, or pass another --journal path",
    )
