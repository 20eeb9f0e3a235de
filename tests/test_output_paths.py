"""Outputs never replace a device, FIFO, socket, directory or symlink: usage error (exit 2) before any query."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from known_models import KnownModel

from fimaudit.errors import UsageError
from fimaudit.fileio import atomic_write


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "fimaudit.cli", *args], check=False, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture()
def data(tmp_path: Path, mlp64: KnownModel) -> Path:
    np.save(tmp_path / "x.npy", mlp64.x)
    return tmp_path / "x.npy"


def _audit(model: str, data: Path, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("audit", model, "--data", str(data), "--out", out, "--directions", "16", "-q", *extra)


def test_out_dev_null_is_refused_and_stays_a_device(data: Path, mlp64: KnownModel) -> None:
    res = _audit(str(mlp64.path), data, "/dev/null")
    assert res.returncode == 2, res.stderr
    assert "/dev/null" in res.stderr and "character device" in res.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not os.path.exists("/dev/null.journal")


def test_refused_before_the_model_is_even_loaded(tmp_path: Path, data: Path) -> None:
    # A missing model would exit 4: exit 2 shows the output was checked first, so no query was spent.
    res = _audit(str(tmp_path / "missing.onnx"), data, "/dev/null")
    assert res.returncode == 2 and "/dev/null" in res.stderr


def test_out_fifo_is_refused(tmp_path: Path, data: Path, mlp64: KnownModel) -> None:
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    res = _audit(str(mlp64.path), data, str(fifo))
    assert res.returncode == 2 and "FIFO" in res.stderr and str(fifo) in res.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_out_symlink_is_refused(tmp_path: Path, data: Path, mlp64: KnownModel) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("precious")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    res = _audit(str(mlp64.path), data, str(link))
    assert res.returncode == 2 and "symbolic link" in res.stderr and str(link) in res.stderr
    assert link.is_symlink() and target.read_text() == "precious"


def test_journal_symlink_is_refused(tmp_path: Path, data: Path, mlp64: KnownModel) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    link = tmp_path / "j.journal"
    link.symlink_to(target)
    res = _audit(str(mlp64.path), data, str(tmp_path / "r.json"), "--journal", str(link))
    assert res.returncode == 2 and "symbolic link" in res.stderr
    assert target.read_text() == "precious" and not (tmp_path / "r.json").exists()


def test_keygen_refuses_a_fifo_even_with_force(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "k.pub")
    for extra in ((), ("--force",)):
        res = cli("keygen", "--out", str(tmp_path / "k"), *extra)
        assert res.returncode == 2 and "FIFO" in res.stderr, res.stderr
        assert stat.S_ISFIFO(os.lstat(tmp_path / "k.pub").st_mode) and not (tmp_path / "k.key").exists()


def test_atomic_write_refuses_special_targets(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    for path in (Path("/dev/null"), tmp_path / "fifo", tmp_path / "link", tmp_path):
        with pytest.raises(UsageError, match="not a regular file|symbolic link"):
            atomic_write(path, b"x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and not (tmp_path / "file").exists()
    assert atomic_write(tmp_path / "plain", b"x").read_bytes() == b"x"
