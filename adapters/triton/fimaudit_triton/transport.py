"""Talking to a v2-protocol server over HTTP or gRPC with tritonclient, one client per thread.

Both transports answer in the same plain shapes (dicts of Python ints and strings, numpy arrays)
so the model code above them never branches on the protocol, and every failure leaves here as a
fimaudit error: TransientQueryError for what a retry may cure, QueryError for the rest.
"""
from __future__ import annotations

import http.client
import threading
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from fimaudit.engine import TransientQueryError
from fimaudit.errors import QueryError

from fimaudit_triton.endpoint import Endpoint

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


class Transport:
    """The calls fimaudit needs from a v2 server; subclasses bind them to one protocol."""

    def __init__(self, endpoint: Endpoint, headers: dict[str, str], timeout: float) -> None:
        self.endpoint = endpoint
        self.headers = headers
        self.timeout = timeout
        self._local = threading.local()
        self._clients: list[tuple[threading.Thread, Any]] = []
        self._lock = threading.Lock()

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


class HttpTransport(Transport):
    def _new_client(self) -> Any:
        import tritonclient.http as httpclient

        # concurrency=1: each thread has its own client, so one connection each is enough.
        return httpclient.InferenceServerClient(
            self.endpoint.address, ssl=self.endpoint.ssl, connection_timeout=self.timeout, network_timeout=self.timeout
        )

    def server_ready(self) -> bool:
        return bool(self.client().is_server_ready(headers=self.headers))

    def server_metadata(self) -> dict[str, Any]:
        return dict(self.client().get_server_metadata(headers=self.headers))

    def model_metadata(self) -> dict[str, Any]:
        ep = self.endpoint
        return _plain_metadata(self.client().get_model_metadata(ep.model, ep.version, headers=self.headers))

    def model_config(self) -> model_config_pb2.ModelConfig:
        ep = self.endpoint
        raw = self.client().get_model_config(ep.model, ep.version, headers=self.headers)
        # Parsed into the protobuf message gRPC returns, so both protocols hash the same bytes.
        return json_format.ParseDict(raw, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)

    def model_names(self) -> list[str]:
        return [str(m["name"]) for m in self.client().get_model_repository_index(headers=self.headers)]

    def infer(self, batch: np.ndarray, input_name: str, datatype: str, output_name: str) -> tuple[np.ndarray, str]:
        import tritonclient.http as httpclient

        tensor = httpclient.InferInput(input_name, list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch, binary_data=True)  # raw bytes, not a JSON list of floats
        wanted = httpclient.InferRequestedOutput(output_name, binary_data=True)
        ep = self.endpoint
        result = self.client().infer(ep.model, [tensor], ep.version, outputs=[wanted], headers=self.headers)
        return result.as_numpy(output_name), str(result.get_response().get("model_version", ""))


class GrpcTransport(Transport):
    def _new_client(self) -> Any:
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.endpoint.address, ssl=self.endpoint.ssl)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.client(), method)(*args, headers=self.headers, client_timeout=self.timeout, **kwargs)

    def server_ready(self) -> bool:
        return bool(self._call("is_server_ready"))

    def server_metadata(self) -> dict[str, Any]:
        return dict(self._call("get_server_metadata", as_json=True))

    def model_metadata(self) -> dict[str, Any]:
        ep = self.endpoint
        return _plain_metadata(self._call("get_model_metadata", ep.model, ep.version, as_json=True))

    def model_config(self) -> model_config_pb2.ModelConfig:
        ep = self.endpoint
        return self._call("get_model_config", ep.model, ep.version).config

    def model_names(self) -> list[str]:
        index = self._call("get_model_repository_index", as_json=True)
        return [str(m["name"]) for m in index.get("models", [])]

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
