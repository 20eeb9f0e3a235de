"""A journal is not trusted: forged rows are refused on resume, links are not followed, one audit at a time.

docs/security.md says what these checks protect against and what they do not.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from known_models import KnownModel

import fimaudit
from fimaudit.errors import UsageError
from fimaudit.journal import Journal, JournalLock
from fimaudit.report import JournalInfo
from fimaudit.runner import recheck_count

AUDIT = {"directions": 16, "seed": 3}


def _journaled(tmp_path: Path, known: KnownModel, n: int = 6) -> Path:
    """A journal holding samples 0..n-1, as an interrupted audit leaves it."""
    journal = tmp_path / "audit.journal"
    fimaudit.audit(known.model(), known.x, limit=n, journal=journal, **AUDIT)
    return journal


def _resume(known: KnownModel, journal: Path) -> fimaudit.AuditReport:
    return fimaudit.audit(known.model(), known.x, journal=journal, **AUDIT)


def _edit_rows(journal: Path, edit: Callable[[dict], dict]) -> None:
    with sqlite3.connect(journal) as db:
        for idx, text in db.execute("SELECT idx, result FROM samples").fetchall():
            db.execute("UPDATE samples SET result = ? WHERE idx = ?", (json.dumps(edit(json.loads(text))), idx))


def _insert(journal: Path, idx: int, row: dict) -> None:
    with sqlite3.connect(journal) as db:
        db.execute("INSERT INTO samples VALUES (?, ?)", (idx, json.dumps(row)))


def _row(journal: Path, idx: int) -> dict:
    with sqlite3.connect(journal) as db:
        return json.loads(db.execute("SELECT result FROM samples WHERE idx = ?", (idx,)).fetchone()[0])


# --- A: the rows' values are re-checked, their structure validated ---------------------------------


def test_forged_lambda_max_is_refused(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    # Every row forged, so whichever rows the re-check draws, it meets a forged one.
    _edit_rows(journal, lambda r: {**r, "lambda_max": r["lambda_max"] / 1000})
    with pytest.raises(UsageError, match=r"does not match a re-computation of sample \d+ \(lambda_max") as info:
        _resume(mlp64, journal)
    assert "--restart" in info.value.fix


def test_bytes_edited_in_place_are_refused(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    raw = bytearray(journal.read_bytes())
    start, edited = 0, 0
    while (at := raw.find(b'"lambda_max":', start)) >= 0:
        digit = at + len(b'"lambda_max":')
        raw[digit] = ord("1") if raw[digit] != ord("1") else ord("2")  # same length: the file stays valid SQLite
        start, edited = digit, edited + 1
    assert edited == 6
    journal.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match="does not match a re-computation|cannot be used"):
        _resume(mlp64, journal)


def test_row_for_index_minus_one_is_refused(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    _insert(journal, -1, {**_row(journal, 0), "index": -1})
    with pytest.raises(UsageError, match="sample index -1 is outside the audited data's 0..19"):
        _resume(mlp64, journal)


def test_row_beyond_the_data_is_refused(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    _insert(journal, 20, {**_row(journal, 0), "index": 20})
    with pytest.raises(UsageError, match="sample index 20 is outside"):
        _resume(mlp64, journal)


def test_duplicated_index_is_refused(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    _insert(journal, 7, _row(journal, 2))  # sample 2 a second time, stored under another key
    with pytest.raises(UsageError, match="stored as sample 7 holds sample 2"):
        _resume(mlp64, journal)


def test_duplicated_index_in_a_table_without_its_key_is_refused(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    with sqlite3.connect(journal) as db:  # the table recreated without its primary key
        db.execute("ALTER TABLE samples RENAME TO old")
        db.execute("CREATE TABLE samples (idx INTEGER, result TEXT NOT NULL)")
        db.execute("INSERT INTO samples SELECT * FROM old")
        db.execute("INSERT INTO samples SELECT * FROM old WHERE idx = 2")
        db.execute("DROP TABLE old")
    with pytest.raises(UsageError, match="sample 2 appears more than once"):
        _resume(mlp64, journal)


def test_row_that_is_not_a_sample_is_refused(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    _insert(journal, 9, {"index": 9, "lambda_max": 0.0})
    with pytest.raises(UsageError, match="cannot be used"):
        _resume(mlp64, journal)


def test_altered_audit_description_is_refused(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    with sqlite3.connect(journal) as db:
        db.execute("UPDATE meta SET value = '{}' WHERE key = 'binding'")
    with pytest.raises(UsageError, match="does not match its audit key"):
        _resume(mlp64, journal)


def test_honest_resume_reports_its_counts(tmp_path: Path, mlp64: KnownModel) -> None:
    journal = _journaled(tmp_path, mlp64)
    first = fimaudit.audit(mlp64.model(), mlp64.x, limit=6, **AUDIT)
    resumed = _resume(mlp64, journal)
    assert resumed.samples[:6] == first.samples
    assert resumed.summary.n == 20
    assert resumed.summary.journal == JournalInfo(resumed=6, rechecked=2)
    assert first.summary.journal is None  # no journal: nothing to report
    fresh = fimaudit.audit(mlp64.model(), mlp64.x, journal=tmp_path / "new.journal", **AUDIT)
    assert fresh.summary.journal == JournalInfo(resumed=0, rechecked=0)
    assert [s.model_dump() for s in fresh.samples] == [s.model_dump() for s in resumed.samples]


def test_recheck_count_is_five_percent_and_at_least_two() -> None:
    assert [recheck_count(n) for n in (0, 1, 2, 3, 40, 41, 400)] == [0, 1, 2, 2, 2, 3, 20]


# --- C: journal links are refused, and one audit holds a journal at a time ------------------------

BINDING = {"tool": "test", "config": {"seed": 1}}


def test_symlinked_journal_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    link = tmp_path / "audit.journal"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="is a symbolic link"):
        Journal(link, BINDING)
    assert target.read_text() == "precious" and link.is_symlink()


def test_symlinked_wal_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    Path(f"{tmp_path / 'audit.journal'}-wal").symlink_to(target)
    with pytest.raises(UsageError, match="is a symbolic link"):
        Journal(tmp_path / "audit.journal", BINDING)
    assert target.read_text() == "precious"


def test_second_journal_on_the_same_path_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "audit.journal"
    first = Journal(path, BINDING)
    try:
        with pytest.raises(UsageError, match=f"another audit is using the journal {path}"):
            Journal(path, BINDING)
    finally:
        first.close()
    assert not Path(f"{path}.lock").exists()  # released and removed on close
    Journal(path, BINDING).close()  # free again


def test_second_cli_audit_on_the_same_out_fails_fast(tmp_path: Path, mlp64: KnownModel) -> None:
    np.save(tmp_path / "x.npy", mlp64.x)
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "fimaudit.cli", "audit", str(mlp64.path), "--data", str(tmp_path / "x.npy"),
           "--out", str(out), "--directions", "16", "-q"]
    with JournalLock(tmp_path / "report.json.journal"):  # as a first audit, still running, holds it
        second = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr
    assert "another audit is using the journal" in second.stderr and not out.exists()
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not os.path.exists(f"{out}.journal.lock")
