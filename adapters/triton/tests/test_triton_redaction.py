"""Secrets never reach error messages, and endpoint responses are capped (Triton adapter).

A real HTTP server on 127.0.0.1 (http.server in a thread) stands in for a hostile or broken
v2 endpoint: it echoes the request's headers in a 500, or answers with an oversized body.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# Skipped only where the Triton client itself is absent; a broken adapter must fail, not skip.
pytest.importorskip("tritonclient.http", reason="tritonclient[http,grpc] is installed by adapters/triton/install.sh")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] is installed by adapters/triton/install.sh")

from fimaudit_triton.endpoint import parse_url, redact_url  # noqa: E402
from fimaudit_triton.model import TritonModel  # noqa: E402
from fimaudit_triton.transport import METADATA_CAP, Redactor, ResponseTooLargeError, output_cap  # noqa: E402

from fimaudit.errors import FimauditError, UsageError  # noqa: E402

TOKEN = "s3cr3t-T0ken-4f9a2c"
API_KEY = "k3y-from-env-77b1"
CLASSES = 3

METADATA = {
    "name": "m", "versions": ["1"], "platform": "onnxruntime_onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "p", "datatype": "FP32", "shape": [-1, CLASSES]}],
}
CONFIG = {"name": "m", "max_batch_size": 8}


class FakeServer(ThreadingHTTPServer):
    """Serves one behaviour, chosen by `mode`: 'echo' (500 echoing headers), 'big-metadata',
    'big-infer' (declared length), 'big-infer-chunked' (no length: must be counted while read)."""

    daemon_threads = True
    mode = "echo"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, *args: Any) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self) -> None:
        mode = self.server.mode
        if mode == "echo":
            echoed = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
            return self._send(500, json.dumps({"error": f"backend failed; request was:\n{echoed}"}).encode())
        if mode == "echo-text":  # not JSON: tritonclient puts the raw body in its message and details
            return self._send(500, f"proxy error, headers {dict(self.headers)}".encode())
        if mode == "big-metadata":
            return self._send(200, b" " * (METADATA_CAP + 1))
        if self.command == "GET":
            body = CONFIG if self.path.endswith("/config") else METADATA if "/models/" in self.path else {"name": "fake", "version": "0"}
            return self._send(200, json.dumps(body).encode())
        if mode == "big-infer":
            return self._send_declared(200, 10**9)
        self._send_chunked(4 << 20)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_declared(self, code: int, length: int) -> None:
        # Declares a gigabyte and sends only the start: a capped client never waits for the rest.
        self.send_response(code)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(b"{" + b" " * 1023)
        self.close_connection = True

    def _send_chunked(self, total: int) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b" " * 65536
        try:
            for _ in range(total // len(chunk)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: as intended
            pass
        self.close_connection = True


@pytest.fixture()
def server() -> Iterator[FakeServer]:
    httpd = FakeServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def url(server: FakeServer) -> str:
    return f"triton://127.0.0.1:{server.server_address[1]}/m"


def all_text(exc: BaseException) -> str:
    """Everything a user could be shown: the message, the fix, and every chained exception."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), str(getattr(seen, "fix", ""))]
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return "\n".join(parts)


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize("mode", ["echo", "echo-text"])
def test_bearer_token_echoed_by_a_500_is_redacted(server: FakeServer, mode: str) -> None:
    server.mode = mode
    with pytest.raises(FimauditError) as caught:
        TritonModel(url(server), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    text = all_text(caught.value)
    # The server's failure is still reported (its status, not a port that happens to hold "500") ...
    assert "did not answer over HTTP: 500: " in caught.value.message
    assert TOKEN not in text  # ... without the credential it echoed
    assert "authorization" in caught.value.message.lower() and "***" in caught.value.message


def test_header_from_env_echoed_by_a_500_is_redacted(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_HEADERS", f"X-Api-Key: {API_KEY}\nAuthorization: Bearer {TOKEN}")
    server.mode = "echo"
    with pytest.raises(FimauditError) as caught:
        TritonModel(url(server), header_env="MY_HEADERS", timeout=10)
    text = all_text(caught.value)
    # Both headers reached the server and came back in its answer, each masked.
    assert "x-api-key: ***" in caught.value.message and "authorization: ***" in caught.value.message
    assert API_KEY not in text and TOKEN not in text


def test_redactor_covers_value_credential_and_any_authorization_echo() -> None:
    redact = Redactor({"authorization": f"Bearer {TOKEN}", "x-short": "on"})
    assert redact(f"got Bearer {TOKEN}") == "got ***"
    assert redact(f"token={TOKEN}") == "token=***"
    # An Authorization value we did not send (e.g. a proxy's) is still not repeated.
    assert redact('{"Authorization": "Basic dXNlcjpwdw=="}') == '{"Authorization": ***}'
    assert redact("turn it on") == "turn it on"  # short values are not credentials: not searched for


@pytest.mark.parametrize("reference", [
    "triton://alice:hunter2-pass@host:8000/m",
    "http://alice:hunter2-pass@host:8000/m",  # refused for its scheme: the message still repeats the URL
    "triton://alice:hunter2-pass@host:notaport/m",
    "triton://alice:p@ss:hunter2-pass@host/m",
])
def test_url_password_is_not_repeated(reference: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_url(reference)
    assert "hunter2-pass" not in str(caught.value)
    assert "***" in str(caught.value)


def test_redact_url_keeps_urls_without_password() -> None:
    assert redact_url("triton://host:8000/m/1") == "triton://host:8000/m/1"
    assert redact_url("triton://user@host/m") == "triton://user@host/m"
    assert redact_url("triton://u:pw@host/m") == "triton://u:***@host/m"


# --------------------------------------------------------------------------- response caps


def test_oversized_metadata_is_refused(server: FakeServer) -> None:
    server.mode = "big-metadata"
    with pytest.raises(ResponseTooLargeError, match="the cap is"):
        TritonModel(url(server), timeout=10)


@pytest.mark.parametrize("mode", ["big-infer", "big-infer-chunked"])
def test_oversized_inference_answer_is_refused(server: FakeServer, mode: str) -> None:
    server.mode = mode
    with pytest.raises(ResponseTooLargeError) as caught:
        TritonModel(url(server), timeout=10)
    assert caught.value.exit_code == 5
    assert "POST" in caught.value.message and "infer" in caught.value.message


def test_output_cap_follows_the_declared_output() -> None:
    assert output_cap(8, 3) == 8 * 3 * 8 * 4 + (1 << 20)
    assert output_cap(256, 1000) < 16 << 20 < output_cap(256, 100_000)
    assert output_cap(8, -1) > output_cap(8, 1000)  # an open class count is sized generously until probed
