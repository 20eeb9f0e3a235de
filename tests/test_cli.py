"""The `fimaudit` command as a user runs it: a real subprocess, real files, documented exit codes."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from known_models import KnownModel

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits.onnx"
EXAMPLE_DATA = ROOT / "examples" / "digits_test.npy"
FRAMEWORKS = {"onnxruntime", "onnx", "torch", "tensorflow", "keras", "tritonclient", "jax"}


def test_audit_example_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    res = run("audit", str(EXAMPLE), "--data", str(EXAMPLE_DATA), "--out", str(out), "--limit", "10", "--directions", "32", "--seed", "4")
    assert res.returncode == 0, res.stderr
    assert "lambda_max" in res.stdout and "epsilon_tau" in res.stdout  # the summary table
    report = json.loads(out.read_text())
    assert report["summary"]["n"] == 10
    assert report["config"]["directions"] == 32 and report["config"]["seed"] == 4
    assert report["data"]["shape"] == [10, 1, 8, 8]


def test_npz_input_and_same_seed_same_report(tmp_path: Path, mlp64: KnownModel) -> None:
    np.savez(tmp_path / "x.npz", x=mlp64.x)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        res = run("audit", str(mlp64.path), "--data", str(tmp_path / "x.npz"), "--out", str(out), "--directions", "16", "-q")
        assert res.returncode == 0, res.stderr
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["samples"] == rb["samples"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["audit", "{model}", "--data", "{tmp}/missing.npy"], 3, "does not exist"),
        (["audit", "{tmp}/model.tflite", "--data", "{data}"], 4, "no installed adapter"),
        (["audit", "{model}", "--data", "{data}", "--directions", "1"], 2, "directions"),
        (["audit", "{model}", "--data", "{data}", "--outputs", "scores"], 2, "--outputs"),
        (["audit", "{model}", "--data", "{bad}"], 3, "shape"),
        (["audit", "{model}"], 2, "--data"),
    ],
)
def test_exit_codes(tmp_path: Path, mlp64: KnownModel, args: list[str], code: int, message: str) -> None:
    data, bad = tmp_path / "x.npy", tmp_path / "bad.npy"
    np.save(data, mlp64.x[:2])
    np.save(bad, mlp64.x[:2].reshape(2, -1)[:, :10])
    fill = {"model": str(mlp64.path), "tmp": str(tmp_path), "data": str(data), "bad": str(bad)}
    res = run(*(a.format(**fill) for a in args), "--out", str(tmp_path / "r.json"))
    assert res.returncode == code, res.stdout + res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert "auditing" not in res.stderr  # named alone: no progress bar had started
    assert not (tmp_path / "r.json").exists()


def test_the_progress_bar_shows_once_the_audit_runs(tmp_path: Path, mlp64: KnownModel) -> None:
    np.save(tmp_path / "x.npy", mlp64.x[:2])
    res = run("audit", str(mlp64.path), "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r.json"), "--directions", "16")
    assert res.returncode == 0, res.stderr
    assert "auditing" in res.stderr and "2/2 samples" in res.stderr


def test_help_and_version() -> None:
    res = run("--help")
    assert res.returncode == 0 and "audit" in res.stdout
    res = run("audit", "--help")
    assert res.returncode == 0 and "--directions" in res.stdout
    assert run("--version").stdout.startswith("fimaudit ")


def test_core_never_imports_an_ml_framework() -> None:
    code = (
        "import sys, fimaudit, fimaudit.cli, fimaudit.estimators, fimaudit.conformance;"
        "bad = [m for m in ('onnxruntime', 'onnx', 'torch', 'tensorflow', 'tritonclient', 'fimaudit_onnx') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    sources = sorted((ROOT / "fimaudit").rglob("*.py"))  # the subpackages too (cli/, signing/)
    assert any(s.parent.name == "cli" for s in sources)
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in FRAMEWORKS, f"{source.relative_to(ROOT)} imports {name}"


def test_verify_endpoint_refuses_non_reports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = run("verify", str(bad), "--endpoint", "triton://127.0.0.1:9/x")
    assert res.returncode == 2 and "not a fimaudit report" in res.stderr and "Traceback" not in res.stderr
    bad.write_text('{"samples": 3}')
    res = run("verify", str(bad), "--endpoint", "triton://127.0.0.1:9/x")
    assert res.returncode == 2 and "not a fimaudit report" in res.stderr
    res = run("verify", str(bad), "--endpoint", "triton://127.0.0.1:9/x", "--require-pass")
    assert res.returncode == 2 and "--require-pass" in res.stderr


def test_summary_names_the_step_and_explains_flags(tmp_path: Path) -> None:
    """The console says how the step was chosen, what each flag on the inputs means, and warns
    when too few directions make intervals unreliable."""
    out = tmp_path / "report.json"
    res = run("audit", str(EXAMPLE), "--data", str(EXAMPLE_DATA), "--out", str(out), "--limit", "6", "--directions", "32")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # the console wraps long lines
    assert "step chosen per input" in text
    assert "warning" in res.stderr and "--directions 128" in " ".join(res.stderr.split())
    report = json.loads(out.read_text())
    for flag, count in report["summary"]["flags"].items():
        assert f"{flag}: {count} of 6 inputs." in text
    fixed = run("audit", str(EXAMPLE), "--data", str(EXAMPLE_DATA), "--out", str(out), "--limit", "2", "--directions", "128", "--step", "0.5")
    assert fixed.returncode == 0, fixed.stderr
    assert "step fixed" in " ".join(fixed.stdout.split()) and "warning" not in fixed.stderr
    assert "step_nonlocal" in " ".join(fixed.stdout.split())  # a step of 0.5 per pixel is far from local
