"""The Triton adapter against a real tritonserver (see triton_server.py beside this file), over HTTP and gRPC.

One server serves every model for the session. Its inference, metadata and config APIs only
answer requests carrying a secret header, so every test here also proves the header from
FIMAUDIT_TRITON_HEADERS reaches the server, and the tests that look for the secret in reports
and logs prove it goes nowhere else.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Skipped only where the Triton client itself is absent; a broken adapter must fail, not skip.
pytest.importorskip("tritonclient.http", reason="tritonclient[http,grpc] is installed by adapters/triton/install.sh")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] is installed by adapters/triton/install.sh")

from fimaudit_onnx import OnnxModel  # noqa: E402
from fimaudit_triton import HEADER_ENV, check_fingerprint, headers_from_env, load, parse_url  # noqa: E402
from triton_server import EXAMPLES, TritonServer, build_repository, example_onnx, free_port  # noqa: E402

import fimaudit  # noqa: E402
from fimaudit.conformance import check_model  # noqa: E402
from fimaudit.engine import TransientQueryError  # noqa: E402
from fimaudit.errors import ModelError, QueryError, UsageError  # noqa: E402

SECRET = secrets.token_hex(16)
CONFIG_SECRET = secrets.token_hex(16)
RULES = [(["inference", "metadata"], "fimaudit-token", SECRET), (["model-config"], "fimaudit-config", CONFIG_SECRET)]


def header_lines(rules: list[tuple[list[str], str, str]]) -> str:
    """The FIMAUDIT_TRITON_HEADERS value that satisfies `rules` over both protocols
    (Triton checks a restricted gRPC call for the key prefixed with triton-grpc-protocol-)."""
    return "\n".join(f"{prefix}{key}: {value}" for _, key, value in rules for prefix in ("", "triton-grpc-protocol-"))


HEADERS = header_lines(RULES)
PROTOCOLS = ["http", "grpc"]
DIRECTIONS = 32  # < d = 64, so the sketch estimator (the one with random directions) is used
X = np.load(EXAMPLES / "digits_test.npy")[:12]


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("triton")
    onnx = {kind: example_onnx(kind, work) for kind in ("probabilities", "logits", "fixed4", "retrained")}
    models = {
        "digits": ("digits.pbtxt", [onnx["probabilities"], onnx["retrained"]]),
        "digits_logits": ("digits_logits.pbtxt", [onnx["logits"]]),
        "digits_fixed": ("digits_fixed.pbtxt", [onnx["fixed4"]]),
        "flaky": ("flaky.pbtxt", [onnx["probabilities"]]),
        "broken": ("broken.pbtxt", [onnx["probabilities"]]),
        "slow": ("slow.pbtxt", [onnx["probabilities"]]),
    }
    with TritonServer(build_repository(work, models), list(models), work, RULES) as server:
        yield server


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HEADER_ENV, HEADERS)


def lambdas(report: fimaudit.AuditReport) -> np.ndarray:
    return np.array([s.lambda_max for s in report.samples])


def audit(model: fimaudit.ProbabilityModel, x: np.ndarray = X, **options: Any) -> fimaudit.AuditReport:
    try:
        return fimaudit.audit(model, x, directions=DIRECTIONS, seed=3, **options)
    finally:
        model.close()


# ---- the model contract and the numbers ---------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["digits/1", "digits_logits", "digits_fixed"])
def test_conformance(triton: TritonServer, protocol: str, name: str) -> None:
    model = load(triton.url(*name.split("/")[:1], protocol, *name.split("/")[1:]))
    try:
        check_model(model)
        assert model.input_spec.shape == (1, 8, 8) and model.input_spec.dtype == "float32"
        assert model.num_classes == 10
        assert model.max_batch_size == (4 if name == "digits_fixed" else 256)  # from the config
    finally:
        model.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_audit_equals_local_onnx(triton: TritonServer, protocol: str) -> None:
    """The same ONNX file audited locally and through the server gives the same numbers."""
    local = audit(OnnxModel(EXAMPLES / "digits.onnx", max_batch_size=256, providers=["CPUExecutionProvider"]))
    remote = audit(load(triton.url("digits", protocol, "1")))
    np.testing.assert_allclose(lambdas(remote), lambdas(local), rtol=1e-6)
    for a, b in zip(remote.samples, local.samples):
        np.testing.assert_allclose(a.lambda_max_ci, b.lambda_max_ci, rtol=1e-6)
        np.testing.assert_allclose(a.trace, b.trace, rtol=1e-6)
        assert a.predicted_class == b.predicted_class and a.queries == b.queries
    assert remote.summary.queries == local.summary.queries


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_concurrency_8_identical_to_1(triton: TritonServer, protocol: str) -> None:
    model = load(triton.url("digits", protocol, "1"))
    try:
        one = fimaudit.audit(model, X, directions=DIRECTIONS, seed=3, concurrency=1)
        for _ in range(2):  # the same model audited again, by new engine threads
            eight = fimaudit.audit(model, X, directions=DIRECTIONS, seed=3, concurrency=8)
            assert [s.model_dump() for s in eight.samples] == [s.model_dump() for s in one.samples]
    finally:
        model.close()
    assert model._transport.open_clients == 0


def test_clients_of_finished_threads_are_closed(triton: TritonServer) -> None:
    """One client per thread, and none kept for threads that have ended (each audit's engine
    starts new ones), so a model audited many times does not pile up connections."""
    model = load(triton.url("digits", "grpc", "1"))
    try:
        for _ in range(5):
            worker = threading.Thread(target=model.predict_proba, args=(X[:2],))
            worker.start()
            worker.join()
        assert model._transport.open_clients == 2  # this thread's (from loading) and the last worker's
    finally:
        model.close()


def test_logits_detected_and_softmaxed(triton: TritonServer) -> None:
    model = load(triton.url("digits_logits"))
    assert model.output_kind == "logits"
    assert model.identity.extra["output"] == "logits"
    logits = audit(model)
    probabilities = audit(load(triton.url("digits", "http", "1")))
    assert logits.model.output_kind == "logits"
    # Softmax in float64 here versus in float32 in the graph: equal to float32 precision.
    np.testing.assert_allclose(lambdas(logits), lambdas(probabilities), rtol=1e-3)


def test_declared_output_kind_wins(triton: TritonServer) -> None:
    """Declared, the kind is not detected; a wrong declaration fails at load, before any work."""
    model = load(triton.url("digits", "grpc", "1"), outputs="logits")
    model.close()
    assert model.output_kind == "logits"
    with pytest.raises(fimaudit.OutputError, match="negative values"):
        load(triton.url("digits_logits", "grpc"), outputs="probabilities")


def test_fixed_batch_model_is_padded(triton: TritonServer) -> None:
    """A model exported for batches of exactly 4 gets 4-row requests, the last one padded."""
    fixed = audit(load(triton.url("digits_fixed")), X[:5])
    dynamic = audit(load(triton.url("digits", "http", "1")), X[:5])
    np.testing.assert_allclose(lambdas(fixed), lambdas(dynamic), rtol=1e-5)


# ---- failures before any work -------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_server_is_a_model_error(protocol: str) -> None:
    scheme = "triton+grpc" if protocol == "grpc" else "triton"
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ModelError, match=f"127.0.0.1:{port} did not answer") as caught:
        load(f"{scheme}://127.0.0.1:{port}/digits")
    assert time.monotonic() - started < 5
    assert "server is running" in caught.value.fix


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model_or_version_is_a_model_error(triton: TritonServer, protocol: str) -> None:
    with pytest.raises(ModelError, match="'nope'.*not found") as caught:
        load(triton.url("nope", protocol))
    assert "digits" in caught.value.fix and "digits_logits" in caught.value.fix  # the repository index
    with pytest.raises(ModelError, match="version 9"):
        load(triton.url("digits", protocol, "9"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_missing_credentials_are_named(triton: TritonServer, protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HEADER_ENV)
    with pytest.raises(ModelError, match="restricted") as caught:
        load(triton.url("digits", protocol))
    assert HEADER_ENV in caught.value.fix
    assert SECRET not in str(caught.value)


def test_header_env_can_be_renamed(triton: TritonServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HEADER_ENV)
    monkeypatch.setenv("MY_TRITON_AUTH", HEADERS)
    model = load(triton.url("digits"), header_env="MY_TRITON_AUTH")
    model.close()


def test_permanent_failure_is_a_query_error(triton: TritonServer) -> None:
    """Every request fails with INTERNAL (HTTP 500): retried, then reported with the server's words."""
    started = time.monotonic()
    with pytest.raises(QueryError, match="'broken'.*injected permanent fault: weights missing"):
        load(triton.url("broken", "grpc"))
    assert time.monotonic() - started > 1.5  # the load-time retries waited 0.25 + 0.5 + 1 s


# ---- failures during the audit ------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_transient_faults_are_retried(triton: TritonServer, protocol: str) -> None:
    """Every 4th request to 'flaky' fails with UNAVAILABLE; the audit still equals the clean one."""
    model = load(triton.url("flaky", protocol))
    try:
        outcomes = []
        for _ in range(4):  # four requests in a row: exactly one is refused
            try:
                model.predict_proba(X[:2])
                outcomes.append("ok")
            except TransientQueryError as exc:
                assert "injected transient fault" in exc.message
                outcomes.append("fault")
        assert outcomes.count("fault") == 1
    finally:
        model.close()
    flaky = audit(load(triton.url("flaky", protocol)))
    clean = audit(load(triton.url("digits", protocol, "1")))
    assert [s.model_dump() for s in flaky.samples] == [s.model_dump() for s in clean.samples]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_timeout(triton: TritonServer, protocol: str) -> None:
    """'slow' answers inputs starting below 0 after 2 s; a 0.5 s timeout gives up at 0.5 s."""
    model = load(triton.url("slow", protocol), timeout=0.5)
    try:
        x = X[:2].copy()
        x[0, 0, 0, 0] = -1.0
        started = time.monotonic()
        with pytest.raises(TransientQueryError, match="no answer within the 0.5 s timeout"):
            model.predict_proba(x)
        assert time.monotonic() - started < 1.5
    finally:
        model.close()


def test_server_killed_mid_audit(tmp_path: Path) -> None:
    """The audit stops with a QueryError naming the endpoint; no report with missing samples."""
    models = {"digits": ("digits.pbtxt", [example_onnx("probabilities", tmp_path)])}
    server = TritonServer(build_repository(tmp_path, models), ["digits"], tmp_path).start()
    try:
        model = load(server.url("digits"))

        def kill_after_first(done: int, total: int, queries: int) -> None:
            server.kill()

        x = np.load(EXAMPLES / "digits_test.npy")[:40]
        with pytest.raises(QueryError, match=f"'digits' at 127.0.0.1:{server.http_port}.*failed") as caught:
            audit(model, x, progress=kill_after_first)
        assert isinstance(caught.value, TransientQueryError)  # refused connections were retried
    finally:
        server.stop()


# ---- identity and fingerprint -------------------------------------------------------------

def test_identity_of_an_endpoint(triton: TritonServer) -> None:
    http, grpc = load(triton.url("digits", "http", "1")), load(triton.url("digits", "grpc", "1"))
    newest, logits = load(triton.url("digits")), load(triton.url("digits_logits"))
    try:
        extra = http.identity.extra
        assert (extra["server_name"], extra["server_version"]) == ("triton", "2.51.0")
        assert (extra["model_name"], extra["model_version"]) == ("digits", "1")
        assert newest.identity.extra["model_version"] == "2"  # what answered, not what was asked
        assert http.identity.reference == triton.url("digits", "http", "1")
        assert http.identity.provider == "triton 2.51.0" and http.identity.sha256 is None
        # The config hash is protocol independent and tells models apart.
        assert len(extra["config_sha256"]) == 64
        assert grpc.identity.extra["config_sha256"] == extra["config_sha256"]
        assert logits.identity.extra["config_sha256"] != extra["config_sha256"]
        assert grpc.identity.extra["fingerprint"] == extra["fingerprint"]
        assert newest.identity.extra["fingerprint"] != extra["fingerprint"]
        for model in (http, grpc, newest, logits):
            assert SECRET not in json.dumps(model.identity.extra)
    finally:
        for model in (http, grpc, newest, logits):
            model.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_config_endpoint_missing_degrades(triton: TritonServer, protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused the config API (KServe servers have none), metadata alone describes the model."""
    monkeypatch.setenv(HEADER_ENV, header_lines(RULES[:1]))
    model = load(triton.url("digits", protocol, "1"))
    assert model.config_sha256 is None and model.identity.extra["config"].startswith("unavailable")
    assert model.max_batch_size == 256  # the adapter's default for a dynamic batch axis
    degraded = audit(model)
    monkeypatch.setenv(HEADER_ENV, HEADERS)
    full = audit(load(triton.url("digits", protocol, "1")))
    assert full.model.extra["config"] == "available"
    assert [s.model_dump() for s in degraded.samples] == [s.model_dump() for s in full.samples]


def test_check_fingerprint(triton: TritonServer) -> None:
    v1 = load(triton.url("digits", "http", "1"))
    recorded = v1.identity.extra["fingerprint"]
    v1.close()
    same = check_fingerprint(triton.url("digits", "grpc", "1"), recorded)
    assert same.matches and same.max_abs_difference <= 1e-6 and "same outputs" in same.reason
    changed = check_fingerprint(triton.url("digits"), recorded)  # now serves version 2
    assert not changed.matches and changed.max_abs_difference > 1e-3
    assert changed.now["model_version"] == "2"
    wider = check_fingerprint(triton.url("digits"), recorded, tol=1.0)
    assert wider.matches
    (entry,) = entry_points(group="fimaudit.adapters", name="triton")  # as `verify --endpoint` will find it
    adapter = entry.load()
    assert adapter.handles(triton.url("digits", "grpc"))
    assert adapter.check_fingerprint(triton.url("digits", "http", "1"), json.loads(recorded)).matches
    with pytest.raises(UsageError, match="fingerprint cannot be read"):
        check_fingerprint(triton.url("digits"), '{"format": "other"}')


# ---- the command line ---------------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run([sys.executable, "-m", "fimaudit.cli", *args], capture_output=True, text=True, env=environment, timeout=300)


def test_cli_audits_over_http_and_grpc(triton: TritonServer, tmp_path: Path) -> None:
    data = tmp_path / "x.npy"
    np.save(data, X)
    http_out, grpc_out = tmp_path / "http.json", tmp_path / "grpc.json"
    common = ["--data", str(data), "--directions", str(DIRECTIONS), "--seed", "3"]
    res = run_cli("audit", triton.url("digits", "http", "1"), *common, "--out", str(http_out))
    assert res.returncode == 0, res.stderr
    res = run_cli("audit", triton.url("digits", "grpc", "1"), *common, "--concurrency", "8", "--out", str(grpc_out), "-q")
    assert res.returncode == 0, res.stderr
    http_report, grpc_report = json.loads(http_out.read_text()), json.loads(grpc_out.read_text())
    assert http_report["samples"] == grpc_report["samples"]
    assert http_report["model"]["adapter"] == "triton" and http_report["model"]["extra"]["protocol"] == "http"
    assert grpc_report["model"]["extra"]["protocol"] == "grpc"
    for text in (http_out.read_text(), grpc_out.read_text(), res.stdout, res.stderr):
        assert SECRET not in text


def test_cli_verify_endpoint_fingerprint(triton: TritonServer, tmp_path: Path) -> None:
    data, out = tmp_path / "x.npy", tmp_path / "r.json"
    np.save(data, X[:2])
    assert run_cli("audit", triton.url("digits", "http", "1"), "--data", str(data), "--directions", "8", "--out", str(out), "-q").returncode == 0
    same = run_cli("verify", str(out), "--endpoint", triton.url("digits", "grpc", "1"))
    assert same.returncode == 0, same.stderr
    assert "matches the audited fingerprint" in same.stdout
    moved = run_cli("verify", str(out), "--endpoint", triton.url("digits", "http", "2"))
    assert moved.returncode == 5 and "no longer serves the audited model" in moved.stderr
    loose = run_cli("verify", str(out), "--endpoint", triton.url("digits", "http", "2"), "--tolerance", "1")
    assert loose.returncode == 0


def test_cli_signs_an_endpoint_report(triton: TritonServer, tmp_path: Path) -> None:
    data, out, key = tmp_path / "x.npy", tmp_path / "r.dsse.json", tmp_path / "auditor"
    np.save(data, X[:2])
    assert run_cli("keygen", "--out", str(key)).returncode == 0
    url = triton.url("digits", "grpc", "1")
    made = run_cli("audit", url, "--data", str(data), "--directions", "8", "--sign", str(key) + ".key", "--out", str(out), "-q")
    assert made.returncode == 0, made.stderr
    checked = run_cli("verify", str(out), "--key", str(key) + ".pub", "--endpoint", triton.url("digits", "http", "1"))
    assert checked.returncode == 0, checked.stderr
    assert f"subject     {url}" in checked.stdout and "matches the audited fingerprint" in checked.stdout
    moved = run_cli("verify", str(out), "--key", str(key) + ".pub", "--endpoint", triton.url("digits", "http", "2"))
    assert moved.returncode == 5 and "no longer serves the audited model" in moved.stderr


def test_cli_unversioned_url(triton: TritonServer, tmp_path: Path) -> None:
    data, out = tmp_path / "x.npy", tmp_path / "r.json"
    np.save(data, X[:3])
    res = run_cli("audit", triton.url("digits"), "--data", str(data), "--out", str(out), "--directions", "8")
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["model"]["extra"]["model_version"] == "2"


@pytest.mark.parametrize(
    "model, env, code, message",
    [
        ("digits", {HEADER_ENV: ""}, 4, HEADER_ENV),
        ("nope", {}, 4, "not found"),
        ("broken", {}, 5, "injected permanent fault"),
    ],
)
def test_cli_failures(triton: TritonServer, tmp_path: Path, model: str, env: dict[str, str], code: int, message: str) -> None:
    data, out = tmp_path / "x.npy", tmp_path / "r.json"
    np.save(data, X[:2])
    res = run_cli("audit", triton.url(model), "--data", str(data), "--out", str(out), env=env)
    assert res.returncode == code, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


# ---- URLs and headers (no server) -----------------------------------------------------------

def test_parse_url() -> None:
    ep = parse_url("triton+grpc://models.example:9001/resnet/3")
    assert (ep.protocol, ep.ssl, ep.address, ep.model, ep.version) == ("grpc", False, "models.example:9001", "resnet", "3")
    assert parse_url("triton://h/m").url == "triton://h:8000/m"
    assert parse_url("triton+grpcs://h/m").ssl and parse_url("triton+grpcs://h/m").port == 443
    assert parse_url("triton+https://[::1]:8443/m").address == "[::1]:8443"
    for bad, why in [
        ("triton://user:pw@h/m", "credentials"),
        ("triton://h/m/latest", "whole number"),
        ("triton://h/", "model name"),
        ("triton://h/m/1/extra", "model name"),
        ("triton://h/m?output=p", "query"),
        ("http://h/m", "scheme"),
    ]:
        with pytest.raises(UsageError, match=why):
            parse_url(bad)


def test_headers_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H", "Authorization: Bearer a:b\n\nX-Team:  audit ")
    assert headers_from_env("H") == {"authorization": "Bearer a:b", "x-team": "audit"}
    monkeypatch.setenv("H", "Authorization Bearer s3cr3t")
    with pytest.raises(UsageError, match="line 1 of the environment variable H") as caught:
        headers_from_env("H")
    assert "s3cr3t" not in str(caught.value)
    monkeypatch.delenv("H")
    assert headers_from_env("H") == {}
