"""Hostile or huge inputs through the real CLI: each ends in a documented exit code and a one-line
message, never a traceback, and big data costs memory in proportion to what is audited."""
from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from known_models import KnownModel

# Runs the CLI and reports its own peak RSS (KiB on Linux) on the last stderr line.
_RSS_PROBE = """
import resource, sys
from fimaudit.cli import main
sys.argv = ["fimaudit", *sys.argv[1:]]
try:
    main()
finally:
    print("maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _clean_failure(res: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    """Exit `code`, no traceback, and exactly one 'error:' line that mentions `words`."""
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words.lower() in errors[0].lower(), res.stderr


def _peak_rss_kib(*args: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    res = subprocess.run([sys.executable, "-c", _RSS_PROBE, *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "120"})
    return int(res.stderr.strip().splitlines()[-1].split()[1]), res


# --- 7. --limit on a large memory-mapped .npy -----------------------------------------------------


def test_limit_on_large_memmap_costs_memory_of_the_audited_rows(tmp_path: Path, mlp32: KnownModel) -> None:
    rows = 70_000  # 70,000 x 3x8x8 float32 = 54 MB
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(rows, 3, 8, 8))
    for start in range(0, rows, 10_000):  # written by chunks: the test itself stays small
        big[start : start + 10_000] = np.random.default_rng(start).standard_normal((10_000, 3, 8, 8))
    big.flush()
    file_mib = big.nbytes / 2**20
    del big
    np.save(tmp_path / "small.npy", mlp32.x[:10].astype(np.float32))
    common = ("--limit", "5", "--directions", "16", "-q", "--step", "0.01")
    base, res = _peak_rss_kib("audit", str(mlp32.path), "--data", str(tmp_path / "small.npy"), "--out", str(tmp_path / "a.json"), *common)
    assert res.returncode == 0, res.stderr
    started = time.monotonic()
    peak, res = _peak_rss_kib("audit", str(mlp32.path), "--data", str(tmp_path / "big.npy"), "--out", str(tmp_path / "b.json"), *common)
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    growth_mib = (peak - base) / 1024
    assert growth_mib < file_mib / 4, f"peak RSS grew {growth_mib:.1f} MiB for a {file_mib:.0f} MiB file"
    assert elapsed < 120
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["data"]["shape"] == [5, 3, 8, 8]


# --- 9a. deeply nested JSON -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, mlp64: KnownModel) -> tuple[Path, Path, Path]:
    """(signed envelope, private key, public key) of a small audit."""
    d = tmp_path_factory.mktemp("signed")
    np.save(d / "x.npy", mlp64.x[:2])
    assert run("keygen", "--out", str(d / "k")).returncode == 0
    res = run("audit", str(mlp64.path), "--data", str(d / "x.npy"), "--out", str(d / "r.dsse.json"),
              "--sign", str(d / "k.key"), "--directions", "16", "-q")
    assert res.returncode == 0, res.stderr
    return d / "r.dsse.json", d / "k.key", d / "k.pub"


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_refused(tmp_path: Path, signed: tuple[Path, Path, Path], opener: str) -> None:
    _, key, pub = signed
    deep = tmp_path / "deep.json"
    closer = "]" if opener == "[" else "}"
    deep.write_text(opener * 100_000 + ("" if opener == "[" else "1") + closer * 100_000)
    _clean_failure(run("verify", str(deep), "--key", str(pub)), 5, "nested too deeply")
    _clean_failure(run("sign", str(deep), "--key", str(key)), 5, "nested too deeply")
    _clean_failure(run("render", str(deep), "--key", str(pub)), 5, "nested too deeply")
    _clean_failure(run("render", str(deep)), 2, "not a fimaudit report")


def test_deeply_nested_payload_is_refused(tmp_path: Path, signed: tuple[Path, Path, Path]) -> None:
    envelope_path, key, _ = signed
    envelope = json.loads(envelope_path.read_text())
    envelope["payload"] = base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    hostile = tmp_path / "deep.dsse.json"
    hostile.write_text(json.dumps(envelope))
    _clean_failure(run("sign", str(hostile), "--key", str(key)), 5, "nested too deeply")


# --- 9b. malformed replies from an endpoint while loading -----------------------------------------


@pytest.fixture()
def garbage_server() -> Iterator[tuple[str, list[bytes]]]:
    """A local HTTP server answering every request with the body in the list (replaceable)."""
    body = [b"[[["]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body[0])))
            self.end_headers()
            self.wfile.write(body[0])

        do_GET = do_POST = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"triton://127.0.0.1:{server.server_address[1]}/m", body
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("reply", [b"[[[", b"null", b'{"ready": tru'])
def test_malformed_endpoint_reply_is_a_model_error(
    tmp_path: Path, mlp64: KnownModel, garbage_server: tuple[str, list[bytes]], reply: bytes,
) -> None:
    pytest.importorskip("fimaudit_triton")
    pytest.importorskip("tritonclient.http")
    url, body = garbage_server
    body[0] = reply
    np.save(tmp_path / "x.npy", mlp64.x[:2])
    res = run("audit", url, "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r.json"), "-q", "--timeout", "10")
    assert res.returncode == 4, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("error:")]) == 1, res.stderr


# --- 9c. a --data or model path that is not UTF-8 -------------------------------------------------


def _non_utf8(folder: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def test_non_utf8_data_path_is_recorded_escaped(tmp_path: Path, mlp64: KnownModel) -> None:
    data = _non_utf8(tmp_path, b"x\xff.npy")
    np.save(data, mlp64.x[:2])
    out = tmp_path / "r.json"
    res = run("audit", str(mlp64.path), "--data", str(data), "--out", str(out), "--directions", "16", "-q")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert json.loads(out.read_text())["data"]["source"].endswith("x\\xff.npy")


def test_non_utf8_model_path_is_refused_before_the_audit(tmp_path: Path, mlp64: KnownModel) -> None:
    model = _non_utf8(tmp_path, b"m\xff.onnx")
    model.write_bytes(mlp64.path.read_bytes())
    np.save(tmp_path / "x.npy", mlp64.x[:2])
    res = run("audit", str(model), "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r.json"), "-q")
    _clean_failure(res, 2, "not valid UTF-8")
    assert not (tmp_path / "r.json.journal").exists()


# --- 9d. --out that cannot be written: refused before the model is even loaded -------------------


def test_out_directory_is_refused_before_the_audit(tmp_path: Path, mlp64: KnownModel) -> None:
    np.save(tmp_path / "x.npy", mlp64.x[:2])
    (tmp_path / "outdir").mkdir()
    (tmp_path / "file").write_text("")
    missing_model = str(tmp_path / "missing.onnx")  # exit 4 if it were loaded: 2 proves it was not
    for out, words in ((tmp_path / "outdir", "directory"), (tmp_path / "file" / "r.json", "not a directory")):
        res = run("audit", missing_model, "--data", str(tmp_path / "x.npy"), "--out", str(out), "-q")
        _clean_failure(res, 2, words)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_read_only_directory_is_refused_before_the_audit(tmp_path: Path, mlp64: KnownModel) -> None:
    np.save(tmp_path / "x.npy", mlp64.x[:2])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        res = run("audit", str(tmp_path / "missing.onnx"), "--data", str(tmp_path / "x.npy"), "--out", str(locked / "r.json"), "-q")
    finally:
        locked.chmod(0o700)
    _clean_failure(res, 2, "not writable")


# --- 9e. an ONNX input declared absurdly large: adapters/onnx/tests/test_onnx_adapter.py ---------


# --- 9f. lone surrogates in a report ---------------------------------------------------------------


def test_lone_surrogate_in_plain_report_is_refused(tmp_path: Path, signed: tuple[Path, Path, Path], mlp64: KnownModel) -> None:
    np.save(tmp_path / "x.npy", mlp64.x[:2])
    report = tmp_path / "r.json"
    assert run("audit", str(mlp64.path), "--data", str(tmp_path / "x.npy"), "--out", str(report), "--directions", "16", "-q").returncode == 0
    data = json.loads(report.read_text())
    data["model"]["reference"] = "model\ud800.onnx"
    report.write_text(json.dumps(data))  # ensure_ascii: written as the escape \ud800
    _clean_failure(run("render", str(report), "--out", str(tmp_path / "r.html")), 2, "lone surrogate")
    assert not (tmp_path / "r.html").exists()


def test_lone_surrogate_in_signed_payload_is_refused(tmp_path: Path, signed: tuple[Path, Path, Path]) -> None:
    from fimaudit.signing import PAYLOAD_TYPE, load_signing_key, pae

    envelope_path, key_path, pub = signed
    envelope = json.loads(envelope_path.read_text())
    payload = base64.b64decode(envelope["payload"])
    statement = json.loads(payload)
    statement["predicate"]["report"]["model"]["reference"] = "model\ud800.onnx"
    payload = json.dumps(statement).encode()  # validly signed, but holding the escape \ud800
    key = load_signing_key(key_path)
    envelope["payload"] = base64.b64encode(payload).decode()
    envelope["signatures"] = [{"keyid": envelope["signatures"][0]["keyid"],
                               "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode()}]
    hostile = tmp_path / "s.dsse.json"
    hostile.write_text(json.dumps(envelope))
    _clean_failure(run("render", str(hostile), "--key", str(pub), "--out", str(tmp_path / "s.html")), 5, "lone surrogate")
    _clean_failure(run("verify", str(hostile), "--key", str(pub)), 5, "lone surrogate")
