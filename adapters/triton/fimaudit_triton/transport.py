"""Talking to a v2-protocol server over HTTP or gRPC with tritonclient, one client per thread.

Both transports answer in the same plain shapes (dicts of Python ints and strings, numpy arrays)
so the model code above them never branches on the protocol, and every failure leaves here as a
fimaudit error: TransientQueryError for what a retry may cure, QueryError for the rest.

Two guards sit between the server and the rest of fimaudit, because the server is not trusted:
- every failure leaving a Transport has the request's header values (bearer tokens, API keys)
  replaced by "***", since error bodies that echo the request would otherwise put them on stderr;
- every response is read against a byte cap (ResponseTooLargeError), so a broken or hostile
  server cannot make fimaudit buffer gigabytes: metadata gets METADATA_CAP, inference gets what
  a (batch, classes) float64 output can take, times a generous factor, plus overhead.
"""
from __future__ import annotations

import functools
import http.client
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from fimaudit.adapter import TransientQueryError
from fimaudit.errors import QueryError
from fimaudit_triton.endpoint import REDACTED, Endpoint

F = TypeVar("F", bound=Callable[..., Any])

# Metadata, model config and repository index answers are kilobytes; 16 MiB leaves room for huge
# ensembles without letting a server stream an unbounded body into memory.
METADATA_CAP = 16 << 20
# An inference answer for n inputs of K classes: n*K values of at most 8 bytes (FP64); a factor of
# 4 covers servers that answer JSON text instead of binary data; 1 MiB covers the JSON header.
BYTES_PER_VALUE = 8
CAP_FACTOR = 4
CAP_OVERHEAD = 1 << 20
# Until the probe answers, a model that leaves its class count open is assumed to have at most this.
UNDECLARED_CLASSES = 65_536
_READ_CHUNK = 1 << 16
# Header values shorter than this are not searched for: redacting every "1" or "on" in a message
# would garble it, and such values are not credentials.
_MIN_SECRET = 4
# `Authorization: <anything>` as echoed in text or JSON, whether or not its value was one we sent.
_AUTH_ECHO = re.compile(r"""(?i)((?:proxy-)?authorization["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\r\n,;}]+)""")

# Statuses a retry may cure: overload, restarts, timeouts. Triton also answers 500 / INTERNAL for
# a backend's own failures; those are retried too, so a briefly broken instance does not end an
# audit, and a permanently broken one ends it after the engine's retries with the server's words.
_TRANSIENT = {
    "429", "500", "502", "503", "504",
    "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED",
}
# Raised by the sockets under both clients when a connection is refused, reset or times out.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError,)
try:  # geventhttpclient can also time out with gevent's Timeout, which is a BaseException
    import gevent

    _NETWORK_ERRORS += (gevent.Timeout,)
    _TIMEOUTS += (gevent.Timeout,)
except ImportError:  # the HTTP extra is not installed: only gRPC is usable
    pass


# Everything a request can fail with that is the server's or the network's doing.
FAILURES: tuple[type[BaseException], ...] = (InferenceServerException, *_NETWORK_ERRORS)


def status_of(exc: BaseException) -> str:
    """The protocol status of a failure: '503' over HTTP, 'UNAVAILABLE' over gRPC, 'NETWORK'."""
    if isinstance(exc, InferenceServerException):
        return str(exc.status() or "").replace("StatusCode.", "")
    return "NETWORK"


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _NETWORK_ERRORS) or status_of(exc) in _TRANSIENT


def timed_out(exc: BaseException) -> bool:
    return isinstance(exc, _TIMEOUTS) or status_of(exc) == "DEADLINE_EXCEEDED"


def describe(exc: BaseException, timeout: float | None = None) -> str:
    """A one-line account of a failure that never includes request headers."""
    if timeout is not None and timed_out(exc):
        return f"no answer within the {timeout:g} s timeout"
    if isinstance(exc, InferenceServerException):
        status = status_of(exc)
        return f"{status}: {exc.message()}" if status else str(exc.message())
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def query_error(exc: BaseException, what: str, timeout: float) -> QueryError:
    """The fimaudit error for a failed inference request, transient or not."""
    if is_transient(exc):
        fix = "check the server and its log; transient faults (timeouts, 5xx, resets) are retried with backoff first"
        if timed_out(exc):
            fix = "raise the per-request timeout (timeout=, in seconds) or lower the batch size"
        return TransientQueryError(f"{what} failed: {describe(exc, timeout)}", fix)
    return QueryError(f"{what} failed: {describe(exc)}", "check the server's log and the model's input contract")


class ResponseTooLargeError(QueryError):
    """A response bigger than the model's declared output can be: never retried, never buffered."""

    def __init__(self, address: str, size: int | None, cap: int, what: str) -> None:
        got = "of unknown size (compressed)" if size is None else f"of at least {size:,} bytes"
        super().__init__(
            f"the server at {address} sent a response {got} for {what}; the cap is {cap:,} bytes",
            "check that the URL names the audited classifier and that no proxy rewrites its answers; "
            "fimaudit refuses oversized responses so a broken or hostile server cannot exhaust memory",
        )


def output_cap(rows: int, classes: int) -> int:
    """The most bytes an answer of `rows` inputs of `classes` scores may take (see CAP_FACTOR)."""
    width = classes if classes > 0 else UNDECLARED_CLASSES
    return max(rows, 1) * width * BYTES_PER_VALUE * CAP_FACTOR + CAP_OVERHEAD


class Redactor:
    """Replaces the values of the headers a request carried by "***" in any text."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        # Longest first, so a full "Bearer xyz" goes before its "xyz" part.
        self._secrets = sorted(_secret_forms(headers.values()), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return _AUTH_ECHO.sub(lambda m: m.group(1) + REDACTED, text)

    def exception(self, exc: BaseException) -> BaseException:
        """`exc` with every header value redacted from its text (a new exception where needed)."""
        if isinstance(exc, InferenceServerException):
            details = exc.debug_details()
            return InferenceServerException(
                self(str(exc.message() or "")), exc.status(), None if details is None else self(str(details))
            )
        text = str(exc)
        clean = self(text)
        if clean == text:
            return exc
        try:
            return type(exc)(clean)
        except (TypeError, ValueError):  # an exception type with another constructor: still a network failure
            return ConnectionError(clean)


def _secret_forms(values: Iterable[str]) -> set[str]:
    """Each value, and its credential without the scheme ("Bearer xyz" -> "xyz"): servers echo either."""
    forms = set()
    for value in values:
        forms.add(value)
        forms.add(value.split()[-1] if value.split() else value)
    return {f for f in forms if len(f) >= _MIN_SECRET}


def _guarded(method: F) -> F:
    """Transport methods: failures leave redacted; an oversized answer also drops the connection."""

    @functools.wraps(method)
    def wrapper(self: Transport, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ResponseTooLargeError:
            self._discard_client()  # the rest of that body is still on the socket
            raise
        except FAILURES as exc:
            if _grpc_too_large(exc):
                self._discard_client()
                raise ResponseTooLargeError(self.endpoint.address, None, self.receive_limit, method.__name__) from None
            # `from None`: the original, with the secret in it, must not be printed as the cause.
            raise self.redact.exception(exc) from None

    return wrapper  # type: ignore[return-value]


def _grpc_too_large(exc: BaseException) -> bool:
    # gRPC enforces the channel's receive limit itself and reports it as RESOURCE_EXHAUSTED.
    if not isinstance(exc, InferenceServerException) or status_of(exc) != "RESOURCE_EXHAUSTED":
        return False
    return "larger than max" in str(exc.message() or "")


class Transport:
    """The calls fimaudit needs from a v2 server; subclasses bind them to one protocol."""

    def __init__(self, endpoint: Endpoint, headers: dict[str, str], timeout: float) -> None:
        self.endpoint = endpoint
        self.headers = headers
        self.timeout = timeout
        self.redact = Redactor(headers)
        self._output: tuple[int, int] = (1, -1)  # (rows per request, classes) until the model is described
        self._local = threading.local()
        self._clients: list[tuple[threading.Thread, Any]] = []
        self._lock = threading.Lock()

    def expect_output(self, max_rows: int, classes: int) -> None:
        """Size the response caps for requests of up to `max_rows` inputs with `classes` scores each."""
        self._output = (max_rows, classes)

    @property
    def receive_limit(self) -> int:
        """The largest response accepted on any call: metadata's cap or the biggest inference answer."""
        return max(METADATA_CAP, output_cap(*self._output))

    def infer_limit(self, rows: int) -> int:
        return output_cap(rows, self._output[1])

    def _discard_client(self) -> None:
        """Close this thread's client, so the next call starts on a clean connection."""
        found = getattr(self._local, "client", None)
        self._local.client = None
        if found is None:
            return
        with self._lock:
            self._clients = [(t, c) for t, c in self._clients if c is not found]
        found.close()

    def client(self) -> Any:
        """This thread's client: tritonclient's HTTP client is gevent based and not thread-safe."""
        found = getattr(self._local, "client", None)
        if found is None:
            found = self._new_client()
            self._local.client = found
            with self._lock:
                # Each audit's engine starts fresh worker threads: close the clients of those gone,
                # so a model audited many times keeps one connection per live thread.
                gone = [c for t, c in self._clients if not t.is_alive()]
                self._clients = [(t, c) for t, c in self._clients if t.is_alive()]
                self._clients.append((threading.current_thread(), found))
            for client in gone:
                client.close()
        return found

    @property
    def open_clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for _, client in clients:
            client.close()
        self._local = threading.local()

    def _new_client(self) -> Any:
        raise NotImplementedError

    def server_ready(self) -> bool:
        raise NotImplementedError

    def server_metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    def model_metadata(self) -> dict[str, Any]:
        """{'name', 'versions', 'inputs', 'outputs'}; tensors as {'name', 'datatype', 'shape': [int]}."""
        raise NotImplementedError

    def model_config(self) -> model_config_pb2.ModelConfig:
        raise NotImplementedError

    def model_names(self) -> list[str]:
        raise NotImplementedError

    def infer(self, batch: np.ndarray, input_name: str, datatype: str, output_name: str) -> tuple[np.ndarray, str]:
        """The named output for `batch`, and the model version that answered."""
        raise NotImplementedError


class _BufferedResponse:
    """A fully read HTTP response: what tritonclient uses of geventhttpclient's (status, headers, read)."""

    def __init__(self, response: Any, body: bytes) -> None:
        self.status_code = response.status_code
        self._headers = response
        self._body = body
        self._offset = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self._headers.get(key, default)

    def read(self, length: int | None = -1) -> bytes:
        end = len(self._body) if length is None or length < 0 else self._offset + length
        chunk = self._body[self._offset : end]
        self._offset += len(chunk)
        return chunk


def _read_capped(response: Any, cap: int, address: str, what: str) -> _BufferedResponse:
    """The whole body, refused as soon as it (or its declared length) passes `cap`."""
    declared = response.content_length
    if declared is not None and declared > cap:
        raise ResponseTooLargeError(address, declared, cap, what)
    encoding = str(response.get("Content-Encoding") or "identity").lower()
    if encoding != "identity":
        # fimaudit never asks for compression; a compressed body's real size is unknown until inflated.
        raise ResponseTooLargeError(address, None, cap, what)
    chunks, total = [], 0
    while chunk := response.read(_READ_CHUNK):
        total += len(chunk)
        if total > cap:
            raise ResponseTooLargeError(address, total, cap, what)
        chunks.append(chunk)
    return _BufferedResponse(response, b"".join(chunks))


@functools.lru_cache(maxsize=1)
def _capped_http_client() -> type:
    """tritonclient's HTTP client, reading every response through _read_capped before parsing it."""
    import tritonclient.http as httpclient

    class CappedClient(httpclient.InferenceServerClient):
        # Set by HttpTransport before each call; each thread has its own client, so no race.
        response_limit: int = METADATA_CAP
        address: str = ""

        def _get(self, request_uri: str, headers: Any, query_params: Any) -> _BufferedResponse:
            response = super()._get(request_uri, headers, query_params)
            return _read_capped(response, self.response_limit, self.address, f"GET {request_uri}")

        def _post(self, request_uri: str, request_body: Any, headers: Any, query_params: Any) -> _BufferedResponse:
            response = super()._post(request_uri, request_body, headers, query_params)
            return _read_capped(response, self.response_limit, self.address, f"POST {request_uri}")

    return CappedClient


class HttpTransport(Transport):
    def _new_client(self) -> Any:
        # concurrency=1: each thread has its own client, so one connection each is enough.
        client = _capped_http_client()(
            self.endpoint.address, ssl=self.endpoint.ssl, connection_timeout=self.timeout, network_timeout=self.timeout
        )
        client.address = self.endpoint.address
        return client

    def _capped(self, limit: int = METADATA_CAP) -> Any:
        client = self.client()
        client.response_limit = limit
        return client

    @_guarded
    def server_ready(self) -> bool:
        return bool(self._capped().is_server_ready(headers=self.headers))

    @_guarded
    def server_metadata(self) -> dict[str, Any]:
        return dict(self._capped().get_server_metadata(headers=self.headers))

    @_guarded
    def model_metadata(self) -> dict[str, Any]:
        ep = self.endpoint
        return _plain_metadata(self._capped().get_model_metadata(ep.model, ep.version, headers=self.headers))

    @_guarded
    def model_config(self) -> model_config_pb2.ModelConfig:
        ep = self.endpoint
        raw = self._capped().get_model_config(ep.model, ep.version, headers=self.headers)
        # Parsed into the protobuf message gRPC returns, so both protocols hash the same bytes.
        return json_format.ParseDict(raw, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)

    @_guarded
    def model_names(self) -> list[str]:
        return [str(m["name"]) for m in self._capped().get_model_repository_index(headers=self.headers)]

    @_guarded
    def infer(self, batch: np.ndarray, input_name: str, datatype: str, output_name: str) -> tuple[np.ndarray, str]:
        import tritonclient.http as httpclient

        tensor = httpclient.InferInput(input_name, list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch, binary_data=True)  # raw bytes, not a JSON list of floats
        wanted = httpclient.InferRequestedOutput(output_name, binary_data=True)
        ep = self.endpoint
        client = self._capped(self.infer_limit(len(batch)))
        result = client.infer(ep.model, [tensor], ep.version, outputs=[wanted], headers=self.headers)
        return result.as_numpy(output_name), str(result.get_response().get("model_version", ""))


class GrpcTransport(Transport):
    def _new_client(self) -> Any:
        import tritonclient.grpc as grpcclient

        # gRPC enforces the receive cap itself; tritonclient's default is 2 GiB.
        defaults = grpcclient.KeepAliveOptions()
        options = [
            ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", self.receive_limit),
            ("grpc.keepalive_time_ms", defaults.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", defaults.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", defaults.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", defaults.http2_max_pings_without_data),
        ]
        return grpcclient.InferenceServerClient(self.endpoint.address, ssl=self.endpoint.ssl, channel_args=options)

    def expect_output(self, max_rows: int, classes: int) -> None:
        before = self.receive_limit
        super().expect_output(max_rows, classes)
        if self.receive_limit != before:
            self.close()  # a channel's receive limit is fixed when it opens: reopen with the new one

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.client(), method)(*args, headers=self.headers, client_timeout=self.timeout, **kwargs)

    @_guarded
    def server_ready(self) -> bool:
        return bool(self._call("is_server_ready"))

    @_guarded
    def server_metadata(self) -> dict[str, Any]:
        return dict(self._call("get_server_metadata", as_json=True))

    @_guarded
    def model_metadata(self) -> dict[str, Any]:
        ep = self.endpoint
        return _plain_metadata(self._call("get_model_metadata", ep.model, ep.version, as_json=True))

    @_guarded
    def model_config(self) -> model_config_pb2.ModelConfig:
        ep = self.endpoint
        return self._call("get_model_config", ep.model, ep.version).config

    @_guarded
    def model_names(self) -> list[str]:
        index = self._call("get_model_repository_index", as_json=True)
        return [str(m["name"]) for m in index.get("models", [])]

    @_guarded
    def infer(self, batch: np.ndarray, input_name: str, datatype: str, output_name: str) -> tuple[np.ndarray, str]:
        import tritonclient.grpc as grpcclient

        tensor = grpcclient.InferInput(input_name, list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch)
        wanted = grpcclient.InferRequestedOutput(output_name)
        ep = self.endpoint
        result = self._call("infer", ep.model, [tensor], ep.version, outputs=[wanted])
        return result.as_numpy(output_name), str(result.get_response().model_version)


def _plain_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """Model metadata with shapes as ints: gRPC's JSON writes int64 values as strings."""
    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": t["name"], "datatype": t["datatype"], "shape": [int(v) for v in t.get("shape", [])]} for t in items]

    return {
        "name": raw.get("name", ""),
        "versions": [str(v) for v in raw.get("versions", [])],
        "inputs": tensors(raw.get("inputs", [])),
        "outputs": tensors(raw.get("outputs", [])),
    }


def transport_for(endpoint: Endpoint, headers: dict[str, str], timeout: float) -> Transport:
    cls = GrpcTransport if endpoint.protocol == "grpc" else HttpTransport
    return cls(endpoint, headers, timeout)
