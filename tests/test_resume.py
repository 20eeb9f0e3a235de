"""Audits survive kill -9: resume from the journal gives the uninterrupted run's report."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from known_models import KnownModel, make_known

import fimaudit
from fimaudit.errors import UsageError
from fimaudit.runner import recheck_count

DRIVER = Path(__file__).with_name("resume_driver.py")


def _timing_free(report: dict) -> dict:
    # The journal counts say how this run got its samples, not what they are.
    summary = {k: v for k, v in report["summary"].items() if k not in ("wall_seconds", "queries_per_second", "journal")}
    return {**report, "summary": summary}


@pytest.fixture(scope="module")
def slow_audit(models_dir: Path) -> tuple[KnownModel, Path]:
    known = make_known(models_dir, "resume32", hidden=(32,), shape=(3, 8, 8), classes=8, dtype=np.float32, scale=3.0, n=400)
    data = models_dir / "resume_x.npy"
    np.save(data, known.x)
    return known, data


def _start(known: KnownModel, data: Path, journal: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(DRIVER), str(known.path), str(data), str(journal), str(out)])


def _committed(journal: Path) -> int:
    if not journal.exists():
        return 0
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def _kill_after(proc: subprocess.Popen[bytes], journal: Path, target: int, extra_delay: float) -> bool:
    """SIGKILL once `target` samples are committed (plus a random delay); False if it finished first."""
    while proc.poll() is None and _committed(journal) < target:
        time.sleep(0.002)
    time.sleep(extra_delay)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return True


@pytest.mark.slow  # about 60 s: 22 audits of 400 inputs in subprocesses
def test_kill_9_at_20_random_moments(tmp_path: Path, slow_audit: tuple[KnownModel, Path]) -> None:
    known, data = slow_audit
    reference_out = tmp_path / "reference.json"
    assert _start(known, data, tmp_path / "ref.sqlite", reference_out).wait(timeout=600) == 0
    journal, out = tmp_path / "audit.sqlite", tmp_path / "report.json"
    rng = np.random.default_rng(2024)
    kills = 0
    for _ in range(20):
        # kill at a random point of progress: after 3-25 more committed samples, plus 0-5 ms
        target = _committed(journal) + int(rng.integers(3, 25))
        kills += _kill_after(_start(known, data, journal, out), journal, target, float(rng.uniform(0, 0.005)))
        assert not out.exists()  # killed runs never leave a report, not even a partial one
    assert kills == 20
    assert _start(known, data, journal, out).wait(timeout=600) == 0
    ours, theirs = json.loads(out.read_text()), json.loads(reference_out.read_text())
    assert [s["index"] for s in ours["samples"]] == list(range(400))  # none lost or counted twice
    assert _timing_free(ours) == _timing_free(theirs)


def test_resume_skips_finished_samples_and_refuses_another_audit(tmp_path: Path, mlp64: KnownModel) -> None:
    model = mlp64.model()
    journal = tmp_path / "j.sqlite"
    first = fimaudit.audit(model, mlp64.x, directions=16, limit=5, journal=journal)
    more = fimaudit.audit(model, mlp64.x, directions=16, journal=journal)
    assert more.samples[:5] == first.samples
    assert more.summary.n == len(mlp64.x)
    with pytest.raises(UsageError, match="belongs to another audit") as info:
        fimaudit.audit(model, mlp64.x, directions=32, journal=journal)
    assert "config.directions" in info.value.message and "--restart" in info.value.fix
    with pytest.raises(UsageError, match="data"):
        fimaudit.audit(model, mlp64.x[::-1], directions=16, journal=journal)
    fresh = fimaudit.audit(model, mlp64.x, directions=32, journal=journal, restart=True)
    assert fresh.config.directions == 32


def _cli(known: KnownModel, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fimaudit.cli", "audit", str(known.path), "--data", str(data), "--out", str(out),
            "--directions", "64", "--estimator", "sketch", "-q", "--limit", "120", *extra]


@pytest.mark.slow  # about 20 s: five CLI audits
def test_cli_resumes_the_same_command_and_refuses_a_changed_one(tmp_path: Path, slow_audit: tuple[KnownModel, Path]) -> None:
    known, data = slow_audit
    reference, out = tmp_path / "reference.json", tmp_path / "report.json"
    assert subprocess.run(_cli(known, data, reference), capture_output=True).returncode == 0
    journal = tmp_path / "report.json.journal"
    assert _kill_after(subprocess.Popen(_cli(known, data, out)), journal, 40, 0.0)
    changed = subprocess.run(_cli(known, data, out, "--seed", "5"), capture_output=True, text=True)
    assert changed.returncode == 2 and "belongs to another audit" in changed.stderr and "--restart" in changed.stderr
    resumed = subprocess.run(_cli(known, data, out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not journal.exists()  # removed once the report holds every sample
    ours, theirs = json.loads(out.read_text()), json.loads(reference.read_text())
    assert _timing_free(ours) == _timing_free(theirs)
    resumed_count = ours["summary"]["journal"]["resumed"]
    assert resumed_count >= 40 and ours["summary"]["journal"]["rechecked"] == recheck_count(resumed_count)
    assert theirs["summary"]["journal"] == {"resumed": 0, "rechecked": 0}
    assert _kill_after(subprocess.Popen(_cli(known, data, out, "--seed", "5")), journal, 10, 0.0)
    fresh = subprocess.run(_cli(known, data, out, "--restart"), capture_output=True, text=True)
    assert fresh.returncode == 0 and json.loads(out.read_text())["config"]["seed"] == 0


def test_unusable_journal_is_a_typed_error(tmp_path: Path, mlp64: KnownModel) -> None:
    model = mlp64.model()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(UsageError, match="cannot be used") as info:
        fimaudit.audit(model, mlp64.x, directions=8, journal=garbage)
    assert "--restart" in info.value.fix
    assert fimaudit.audit(model, mlp64.x, directions=8, journal=garbage, restart=True).summary.n == len(mlp64.x)
    with pytest.raises(UsageError, match="is a directory, not a regular file"):
        fimaudit.audit(model, mlp64.x, directions=8, journal=tmp_path)


def test_cli_refuses_a_journal_forged_after_a_kill(tmp_path: Path, slow_audit: tuple[KnownModel, Path]) -> None:
    known, data = slow_audit
    out, journal = tmp_path / "report.json", tmp_path / "report.json.journal"
    assert _kill_after(subprocess.Popen(_cli(known, data, out)), journal, 30, 0.0)
    with sqlite3.connect(journal) as db:  # every committed sample made to look 100x less sensitive
        for idx, text in db.execute("SELECT idx, result FROM samples").fetchall():
            row = json.loads(text)
            db.execute("UPDATE samples SET result = ? WHERE idx = ?", (json.dumps({**row, "lambda_max": row["lambda_max"] / 100}), idx))
    resumed = subprocess.run(_cli(known, data, out), capture_output=True, text=True)
    assert resumed.returncode == 2, resumed.stderr
    assert "does not match a re-computation of sample" in resumed.stderr and "--restart" in resumed.stderr
    assert not out.exists()
    fresh = subprocess.run(_cli(known, data, out, "--restart"), capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr
