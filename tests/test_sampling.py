"""Committed sampling (`audit --sample N`): a draw fixed by the seed and the data's digest, recorded in
the report, identical on resume, and reading a memory-mapped file only at the drawn rows."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import fimaudit
from fimaudit.cli import app
from fimaudit.data import SAMPLE_RULE, draw_sample, indices_sha256
from fimaudit.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
EXAMPLE_DATA = ROOT / "examples" / "digits_test.npy"
X = np.load(EXAMPLE_DATA)
QUICK: dict[str, Any] = {"directions": 16, "estimator": "sketch", "bootstrap": 100}


def cli(*args: Any) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout + res.stderr


def sha256_of(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def floyd_from_the_documented_rule(population: int, n: int, seed: int, digest: str) -> list[int]:
    """SAMPLE_RULE's words, implemented again here without fimaudit: the draw must be redoable by anyone."""
    chosen: set[int] = set()
    for j in range(population - n, population):
        message = b"fimaudit-sample/1\0" + str(seed).encode() + b"\0" + bytes.fromhex(digest) + j.to_bytes(8, "big")
        t = int.from_bytes(hashlib.sha256(message).digest(), "big") % (j + 1)
        chosen.add(j if t in chosen else t)
    return sorted(chosen)


def timing_free(report: fimaudit.AuditReport) -> dict[str, Any]:
    dump = report.model_dump()
    dump["summary"] = {k: v for k, v in dump["summary"].items() if k not in ("wall_seconds", "queries_per_second", "journal")}
    return dump


def test_the_draw_is_the_documented_one_and_depends_on_seed_and_digest() -> None:
    digest = hashlib.sha256(b"data").hexdigest()
    drawn = draw_sample(1000, 50, 7, digest)
    assert drawn == floyd_from_the_documented_rule(1000, 50, 7, digest) == draw_sample(1000, 50, 7, digest)
    assert len(set(drawn)) == 50 and drawn == sorted(drawn) and 0 <= drawn[0] and drawn[-1] < 1000
    assert draw_sample(1000, 50, 8, digest) != drawn
    assert draw_sample(1000, 50, 7, hashlib.sha256(b"date").hexdigest()) != drawn
    assert draw_sample(5, 5, 0, digest) == [0, 1, 2, 3, 4]
    assert "Floyd" in SAMPLE_RULE and "sha256" in SAMPLE_RULE
    assert indices_sha256([3, 1, 2]) == hashlib.sha256(b"1,2,3").hexdigest() == indices_sha256(range(1, 4))


def test_the_draw_is_uniform() -> None:
    # 3 of 10 rows, over 4000 digests: each row is drawn with probability 0.3 (sd 0.0072 over 4000 draws).
    counts = np.zeros(10)
    for k in range(4000):
        counts[draw_sample(10, 3, 0, hashlib.sha256(str(k).encode()).hexdigest())] += 1
    assert np.all(np.abs(counts / 4000 - 0.3) < 0.03), counts / 4000


def test_sample_audits_the_drawn_rows_with_the_numbers_a_full_audit_gives_them() -> None:
    model = fimaudit.load_model(EXAMPLE)
    report = fimaudit.audit(model, X, sample=6, seed=3, **QUICK)
    selection = report.data.selection
    assert selection is not None and selection.rule == "random" and selection.seed == 3
    expected = draw_sample(len(X), 6, 3, sha256_of(X))
    assert selection.indices == expected == [s.index for s in report.samples]
    assert selection.population_size == len(X) and selection.population_sha256 == sha256_of(X)
    assert selection.indices_sha256 == hashlib.sha256(",".join(map(str, expected)).encode()).hexdigest()
    # data.sha256 names the audited array: the drawn rows, in order
    assert report.data.sha256 == sha256_of(X[expected]) and report.data.shape == [6, 1, 8, 8]
    assert "6 drawn uniformly without replacement" in (report.data.population or "")
    # Each sample is what a full audit records at that row: sampling changes which, never how.
    full = fimaudit.audit(model, X, seed=3, **QUICK)
    assert [full.samples[i] for i in expected] == report.samples


def test_limit_records_its_selection_and_neither_can_be_given_with_the_other() -> None:
    model = fimaudit.load_model(EXAMPLE)
    report = fimaudit.audit(model, X, limit=4, **QUICK)
    selection = report.data.selection
    assert selection is not None and selection.rule == "first" and selection.indices is None
    assert selection.indices_sha256 == hashlib.sha256(b"0,1,2,3").hexdigest() and selection.population_sha256 == sha256_of(X)
    assert "not a random sample" in (report.data.population or "")
    assert fimaudit.audit(model, X[:3], **QUICK).data.selection is None
    with pytest.raises(UsageError, match="limit and sample"):
        fimaudit.audit(model, X, limit=4, sample=4, **QUICK)
    with pytest.raises(UsageError, match="more inputs than the data holds"):
        fimaudit.audit(model, X[:5], sample=6, **QUICK)
    with pytest.raises(UsageError, match="sample must be"):
        fimaudit.audit(model, X, sample=0, **QUICK)


def test_cli_sample_and_one_changed_byte_changes_the_draw(tmp_path: Path) -> None:
    data = tmp_path / "x.npy"
    np.save(data, X)
    code, text = cli("audit", EXAMPLE, "--data", data, "--sample", "5", "--limit", "5", "--out", tmp_path / "no.json", "-q")
    assert code == 2 and "--limit and --sample" in text
    code, text = cli("audit", EXAMPLE, "--data", data, "--sample", "5", "--directions", "16", "--out", tmp_path / "a.json", "-q")
    assert code == 0, text
    first = json.loads((tmp_path / "a.json").read_text())["data"]["selection"]
    changed = X.copy()
    changed.view(np.uint8).reshape(-1)[12345] ^= 1  # one byte of one input
    np.save(data, changed)
    code, text = cli("audit", EXAMPLE, "--data", data, "--sample", "5", "--directions", "16", "--out", tmp_path / "b.json", "-q")
    assert code == 0, text
    second = json.loads((tmp_path / "b.json").read_text())["data"]["selection"]
    assert second["population_sha256"] != first["population_sha256"]
    assert second["indices"] != first["indices"]  # the same seed, another draw: it follows the data


def test_sample_of_an_image_folder_names_the_drawn_files(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((X[i, 0] * 255).astype(np.uint8), mode="L").save(folder / f"img{i:02d}.png")
    out = tmp_path / "r.json"
    code, text = cli("audit", EXAMPLE, "--data", folder, "--sample", "4", "--directions", "16", "--out", out, "-q")
    assert code == 0, text
    data = json.loads(out.read_text())["data"]
    assert data["files"] == [f"img{i:02d}.png" for i in data["selection"]["indices"]]
    assert data["selection"]["population_size"] == 12


def test_resume_with_sample_gives_the_uninterrupted_report(tmp_path: Path) -> None:
    model = fimaudit.load_model(EXAMPLE)
    reference = fimaudit.audit(model, X, sample=10, seed=1, **QUICK)
    journal = tmp_path / "j.sqlite"

    def stop_after_four(done: int, total: int, queries: int) -> None:
        assert total == 10
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fimaudit.audit(model, X, sample=10, seed=1, journal=journal, progress=stop_after_four, **QUICK)
    resumed = fimaudit.audit(model, X, sample=10, seed=1, journal=journal, **QUICK)
    assert resumed.summary.journal is not None and resumed.summary.journal.resumed >= 4
    assert timing_free(resumed) == timing_free(reference)
    # Another draw from the same journal: the journaled rows it shares are reused, the rest computed.
    other = fimaudit.audit(model, X, sample=12, seed=1, journal=journal, **QUICK)
    assert timing_free(other) == timing_free(fimaudit.audit(model, X, sample=12, seed=1, **QUICK))


_RSS = """
import resource, sys
import numpy as np
import fimaudit
x = np.load(sys.argv[1], mmap_mode="r")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = fimaudit.audit(fimaudit.load_model(sys.argv[2]), x, sample=5, directions=8, estimator="sketch", bootstrap=100)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(after - before, report.data.selection.population_size, report.data.shape[0])
"""


def test_sample_of_a_memory_mapped_file_reads_only_the_drawn_rows(tmp_path: Path) -> None:
    rows = 400_000  # x 1x8x8 float32 = 98 MiB
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(rows, 1, 8, 8))
    for start in range(0, rows, 100_000):
        big[start : start + 100_000] = np.random.default_rng(start).uniform(0, 1, (100_000, 1, 8, 8))
    big.flush()
    del big
    res = subprocess.run([sys.executable, "-c", _RSS, str(tmp_path / "big.npy"), str(EXAMPLE)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    growth_kib, population, audited = map(int, res.stdout.split())
    assert (population, audited) == (rows, 5)
    assert growth_kib < 30 * 1024, f"peak RSS grew {growth_kib / 1024:.0f} MiB auditing 5 rows of a 98 MiB file"
