"""A newcomer's friction with the command line (issue 14), each reproduced as a user meets it:
a real subprocess on the bundled ONNX model and real files."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fimaudit.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
EXAMPLE_DATA = ROOT / "examples" / "digits_test.npy"
COMMANDS = ("audit", "keygen", "sign", "verify", "schema", "render", "compare", "reproduce")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "fimaudit.cli", *args], check=False, capture_output=True, text=True, env=env, timeout=300)


def audit(tmp_path: Path, *extra: str, out: Path | None = None) -> subprocess.CompletedProcess[str]:
    target = out or tmp_path / "report.json"
    return run("audit", str(EXAMPLE), "--data", str(EXAMPLE_DATA), "--limit", "3", "--directions", "16", "--out", str(target), "-q", *extra)


def test_option_the_adapter_does_not_take_is_a_usage_error(tmp_path: Path) -> None:
    res = audit(tmp_path, "--timeout", "5")
    assert res.returncode == 2, res.stderr
    assert "onnx" in res.stderr and "timeout" in res.stderr
    assert "TypeError" not in res.stderr and not (tmp_path / "report.json").exists()


@pytest.mark.parametrize(("option", "value", "named"), [("--scheme", "backward", "scheme"), ("--tau", "-1", "tau"),
                                                    ("--generator", "gpu", "generator")])
def test_bad_option_is_refused_before_the_model_loads(tmp_path: Path, option: str, value: str, named: str) -> None:
    """Checked before the model (here a missing file, which would be the error otherwise) and before any progress."""
    res = run("audit", str(tmp_path / "missing.onnx"), "--data", str(EXAMPLE_DATA), "--out", str(tmp_path / "r.json"), option, value)
    assert res.returncode == 2, res.stderr  # usage error
    assert named in res.stderr and "missing.onnx" not in res.stderr and "samples" not in res.stdout + res.stderr
    assert not list(tmp_path.iterdir())


def test_unwritable_out_is_refused_before_the_audit_and_names_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = audit(tmp_path, out=blocker / "report.json")
    assert res.returncode == 2, res.stderr
    assert "--out" in res.stderr and "journal" not in res.stderr.lower() and "--restart" not in res.stderr


def test_unwritable_journal_is_refused_before_the_audit_and_names_journal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = audit(tmp_path, "--journal", str(blocker / "j"))
    assert res.returncode == 2, res.stderr
    assert "--journal" in res.stderr
    assert not (tmp_path / "report.json").exists()


def test_k_means_key_everywhere_and_output_name_is_spelled_out(tmp_path: Path) -> None:
    assert audit(tmp_path, "-k", "16").returncode == 2  # -k is no longer --directions
    for command in ("sign", "verify", "render", "compare"):
        assert re.search(r"-k, --key KEY", run(command, "--help").stdout), command
    help_text = run("audit", "--help").stdout
    assert "--output-name NAME" in help_text and "--output " not in help_text.replace("--output-name", "")
    assert "--input NAME" in help_text


def test_help_shows_no_python_types_and_states_the_minimum_directions() -> None:
    for command in COMMANDS:
        options = run(command, "--help").stdout.split("Options:")[-1]
        assert not re.search(r"<(bool|list|int|float|str|path|int range)", options, re.I), (command, options)
    directions = " ".join(run("audit", "--help").stdout.split())
    assert re.search(r"--directions K .*at least 2\b", directions)


def test_exit_codes_are_written_once_and_agree_everywhere() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", readme, re.M))
    assert {int(k): v for k, v in rows.items()} == EXIT_CODES
    epilog = " ".join(run("--help").stdout.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {meaning.split(' (')[0]}" in epilog


def test_schema_command_is_documented_in_the_readme() -> None:
    assert "fimaudit schema" in (ROOT / "README.md").read_text()


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)


def test_skip_unreadable_records_files_and_skipped_ones_in_the_report(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        _write_png(folder / name, rng.integers(0, 256, (8, 8)))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "report.json"
    refused = run("audit", str(EXAMPLE), "--data", str(folder), "--directions", "16", "--out", str(out), "-q")
    assert refused.returncode == 3 and "b.png" in refused.stderr and "--skip-unreadable" in refused.stderr
    res = run("audit", str(EXAMPLE), "--data", str(folder), "--directions", "16", "--out", str(out), "-q", "--skip-unreadable")
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())["data"]
    assert data["files"] == ["a.png", "c.png"]
    assert [s["name"] for s in data["skipped"]] == ["b.png"] and data["skipped"][0]["reason"]


def test_skip_unreadable_is_refused_for_an_array_file(tmp_path: Path) -> None:
    res = audit(tmp_path, "--skip-unreadable")
    assert res.returncode == 2 and "--skip-unreadable" in res.stderr


def test_assurance_is_declared_at_audit_time_and_reproduced_cannot_be(tmp_path: Path) -> None:
    assert run("keygen", "--out", str(tmp_path / "k")).returncode == 0
    signed = tmp_path / "s.dsse.json"
    made = audit(tmp_path, "--sign", str(tmp_path / "k.key"), "--assurance", "third_party", out=signed)
    assert made.returncode == 0, made.stderr
    shown = run("verify", str(signed), "--key", str(tmp_path / "k.pub"))
    assert shown.returncode == 0 and re.search(r"assurance\s+third_party", shown.stdout), shown.stdout
    refused = audit(tmp_path, "--assurance", "reproduced")
    assert refused.returncode == 2 and "fimaudit reproduce" in refused.stderr
