"""TritonModel: a classifier behind a Triton (or any KServe v2) endpoint, as a ProbabilityModel."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from fimaudit.adapter import InputSpec, ModelIdentity, OutputKind, ProbabilityModel, TransientQueryError
from fimaudit.errors import ModelError, UsageError
from fimaudit.adapter import detect_output_kind, run_in_fixed_batches, to_probabilities
from fimaudit_triton import fingerprint
from fimaudit_triton.endpoint import HEADER_ENV, Endpoint, headers_from_env, parse_url
from fimaudit_triton.transport import FAILURES, Transport, describe, query_error, status_of, transport_for

T = TypeVar("T")

_DTYPES = {"FP32": "float32", "FP64": "float64", "FP16": "float16"}
# Batch size for models that accept any batch and state no maximum: large enough to amortise a
# request's overhead, small enough (1 MiB of float32 at d=1024) to keep latency per request low.
DEFAULT_BATCH = 256
DEFAULT_TIMEOUT = 60.0
# Load-time probes are retried like the engine retries audit batches, so a flaky endpoint loads.
_LOAD_RETRIES = 3
_LOAD_BACKOFF = 0.25


@dataclass(frozen=True)
class _Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]


class TritonModel(ProbabilityModel):
    """A model served over the v2 inference protocol, queried with tritonclient.

    Everything is checked when it is built, before any audit work: the server answers, the model
    exists and is ready, its input and output are usable, and it answers a seeded probe batch
    (which also decides probabilities versus logits and becomes the endpoint's fingerprint).
    """

    def __init__(
        self,
        url: str,
        *,
        outputs: OutputKind | None = None,
        output_name: str | None = None,
        input_name: str | None = None,
        max_batch_size: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        header_env: str = HEADER_ENV,
        headers: dict[str, str] | None = None,
    ) -> None:
        if outputs not in (None, "probabilities", "logits"):
            raise UsageError(f"outputs must be 'probabilities' or 'logits' (got {outputs!r}).", "omit it to detect")
        self.endpoint = parse_url(url)
        sent = {**headers_from_env(header_env), **{k.lower(): v for k, v in (headers or {}).items()}}
        self._transport: Transport = transport_for(self.endpoint, sent, float(timeout))
        try:
            self._describe(input_name, output_name, max_batch_size)
            self._probe_and_fingerprint(outputs)
        except BaseException:
            self.close()
            raise

    # ---- loading -------------------------------------------------------------------------

    def _describe(self, input_name: str | None, output_name: str | None, max_batch_size: int | None) -> None:
        self._served_version = self.endpoint.version  # until a response names the version that answered
        self._server = self._server_metadata()
        metadata = self._model_metadata()
        self._config, self._config_note = self._model_config()
        self._input = _pick(metadata["inputs"], input_name, "input", self._where)
        self._output = _pick_output(metadata["outputs"], output_name, self._where)
        dtype = _DTYPES.get(self._input.datatype)
        if dtype is None:
            raise ModelError(
                f"{self._where} takes {self._input.datatype} input '{self._input.name}'; fimaudit perturbs floating-point inputs.",
                "audit a model whose input is FP32, FP64 or FP16",
            )
        self.output_dtype = _DTYPES.get(self._output.datatype, "float32")
        server_max = self._config.max_batch_size if self._config is not None else 0
        shape, self._fixed_batch = _split_batch(self._input, server_max, self._where)
        self.fixed_batch_size = self._fixed_batch
        self.input_spec = InputSpec(shape=shape, dtype=dtype)
        self.max_batch_size = _batch_size(server_max, self._fixed_batch, max_batch_size)
        self.num_classes = _classes(self._output)
        # From here on, answers are capped by what this output can be (see transport.output_cap).
        self._transport.expect_output(self.max_batch_size, self.num_classes)

    def _server_metadata(self) -> dict[str, Any]:
        """The first call: the one that tells an unreachable server from a missing model."""
        try:
            return self._transport.server_metadata()
        except FAILURES as exc:
            raise ModelError(
                f"the Triton server at {self.endpoint.address} did not answer over {self._protocol}: {describe(exc)}",
                _reach_fix(exc, self.endpoint),
            ) from exc

    def _model_metadata(self) -> dict[str, Any]:
        try:
            return self._transport.model_metadata()
        except FAILURES as exc:
            raise ModelError(f"{self._where} cannot be used: {describe(exc)}", self._model_fix(exc)) from exc

    def _model_config(self) -> tuple[Any, str]:
        """The model's configuration, or None and why: KServe servers have no config endpoint."""
        try:
            return self._transport.model_config(), "available"
        except FAILURES as exc:
            if status_of(exc) == "NETWORK":  # the server itself went away: nothing to degrade to
                raise ModelError(f"{self._where} stopped answering: {describe(exc)}", "check that the server is up") from exc
            return None, f"unavailable ({describe(exc)})"

    def _model_fix(self, exc: BaseException) -> str:
        if _refused(exc):
            return _CREDENTIALS_FIX
        try:
            names = self._transport.model_names()
        except FAILURES:  # the repository index is a Triton extension; other servers lack it
            return "check the model name and version in the URL"
        listed = ", ".join(sorted(names)) or "none"
        return f"check the model name and version in the URL; models in the server's repository: {listed}"

    def _probe_and_fingerprint(self, outputs: OutputKind | None) -> None:
        probes = fingerprint.probe_inputs(self.input_spec)
        raw = self._with_retries(lambda: self._query(probes))
        if self.num_classes == -1 and raw.ndim == 2:
            self.num_classes = int(raw.shape[1])
            self._transport.expect_output(self.max_batch_size, self.num_classes)  # tighten the open cap
        if raw.ndim != 2 or self.num_classes < 2:
            raise ModelError(
                f"{self._where} output '{self._output.name}' gave shape {raw.shape} for {len(probes)} inputs; "
                "a classifier output is (batch, classes).",
                "name the class-score output with output_name= (CLI: --output-name NAME)",
            )
        self.output_kind = outputs or detect_output_kind(raw)
        probabilities = to_probabilities(raw, len(probes), self.num_classes, self.output_kind)
        self._fingerprint = fingerprint.encode(self.input_spec, probes, probabilities)

    def _with_retries(self, call: Callable[[], T]) -> T:
        for attempt in range(_LOAD_RETRIES + 1):
            try:
                return call()
            except TransientQueryError:
                if attempt == _LOAD_RETRIES:
                    raise
                time.sleep(_LOAD_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    # ---- querying ------------------------------------------------------------------------

    def _raw_predict(self, batch: np.ndarray) -> np.ndarray:
        return self._query(np.ascontiguousarray(batch, dtype=self.input_spec.dtype))

    def _query(self, batch: np.ndarray) -> np.ndarray:
        """Outputs for any number of inputs, in requests of at most max_batch_size (fixed: padded)."""
        size = self.max_batch_size
        parts = [self._request(batch[i : i + size]) for i in range(0, len(batch), size)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _request(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if self._fixed_batch and n != self._fixed_batch:
            return run_in_fixed_batches(chunk, self._fixed_batch, self._request)
        try:
            out, version = self._transport.infer(chunk, self._input.name, self._input.datatype, self._output.name)
        except FAILURES as exc:
            raise query_error(exc, f"{self._where}: a request of {n} inputs", self._transport.timeout) from exc
        self._served_version = version or self._served_version
        return np.asarray(out)

    # ---- describing ----------------------------------------------------------------------

    @property
    def _protocol(self) -> str:
        return ("gRPC" if self.endpoint.protocol == "grpc" else "HTTP") + (" with TLS" if self.endpoint.ssl else "")

    @property
    def _where(self) -> str:
        version = f" version {self.endpoint.version}" if self.endpoint.version else ""
        return f"Triton model '{self.endpoint.model}'{version} at {self.endpoint.address}"

    @property
    def fingerprint(self) -> str:
        """Outputs on the seeded probes at load time (see fimaudit_triton.fingerprint)."""
        return self._fingerprint

    @property
    def config_sha256(self) -> str | None:
        """sha256 of the model configuration's deterministic protobuf bytes (same over HTTP and gRPC)."""
        if self._config is None:
            return None
        return hashlib.sha256(self._config.SerializeToString(deterministic=True)).hexdigest()

    @property
    def identity(self) -> ModelIdentity:
        server = f"{self._server.get('name', 'unknown')} {self._server.get('version', '')}".strip()
        extra = {
            "protocol": self.endpoint.protocol + ("s" if self.endpoint.ssl else ""),
            "server_name": str(self._server.get("name", "")),
            "server_version": str(self._server.get("version", "")),
            "model_name": self.endpoint.model,
            "model_version": self._served_version,
            "config_sha256": self.config_sha256 or "",
            "config": self._config_note,
            "input": self._input.name,
            "output": self._output.name,
            "output_dtype": self.output_dtype,
            "max_batch_size": str(self.max_batch_size),
            "fingerprint": self._fingerprint,
        }
        return ModelIdentity(
            reference=self.endpoint.url, adapter="triton", sha256=None, provider=server,
            output_kind=self.output_kind, extra=extra,
        )

    def close(self) -> None:
        self._transport.close()


def _pick(tensors: list[dict[str, Any]], name: str | None, kind: str, where: str) -> _Tensor:
    found = [_Tensor(t["name"], t["datatype"], tuple(t["shape"])) for t in tensors]
    if name is not None:
        for tensor in found:
            if tensor.name == name:
                return tensor
        raise UsageError(f"{where} has no {kind} named '{name}'.", f"choose one of {[t.name for t in found]}")
    if len(found) != 1:
        raise ModelError(
            f"{where} has {len(found)} {kind}s {[t.name for t in found]}.",
            f"name the one to audit with {kind}_name= (CLI: --{kind} NAME)",
        )
    return found[0]


def _pick_output(tensors: list[dict[str, Any]], name: str | None, where: str) -> _Tensor:
    """The named output, else the one float output, else the float output named like 'prob'."""
    if name is not None:
        return _pick(tensors, name, "output", where)
    floats = [t for t in tensors if t["datatype"] in _DTYPES]
    if not floats:
        raise ModelError(
            f"{where} has no floating-point output (outputs: {[(t['name'], t['datatype']) for t in tensors]}).",
            "serve the model with a (batch, classes) FP32 output of probabilities or logits",
        )
    named = [t for t in floats if "prob" in t["name"].lower()]
    if len(floats) > 1 and len(named) != 1:
        raise ModelError(
            f"{where} has {len(floats)} floating-point outputs {[t['name'] for t in floats]}.",
            "name the class-score output with output_name= (CLI: --output-name NAME)",
        )
    return _pick(named or floats, None, "output", where)


def _split_batch(tensor: _Tensor, server_max: int, where: str) -> tuple[tuple[int, ...], int | None]:
    """(shape of one input, fixed batch size or None) from the input's metadata shape.

    Metadata shapes always lead with the batch axis: -1 when the server batches (max_batch_size
    > 0) or the model takes any batch, a number when the model was exported for a fixed batch.
    """
    dims = tensor.shape
    rest = dims[1:]
    if not dims or not rest or any(v < 1 for v in rest):
        raise ModelError(
            f"{where} input '{tensor.name}' has shape {list(dims)}; fimaudit needs a batch axis followed by fixed sizes.",
            "serve the model with a fixed input shape (only the batch axis may vary)",
        )
    fixed = dims[0] if server_max == 0 and dims[0] > 0 else None
    return tuple(int(v) for v in rest), fixed


def _batch_size(server_max: int, fixed: int | None, wanted: int | None) -> int:
    if wanted is not None and wanted < 1:
        raise UsageError(f"max_batch_size must be >= 1 (got {wanted}).", "omit it to use the server's maximum")
    if fixed is not None:
        return fixed  # the model takes exactly this many rows; smaller batches are padded
    limit = server_max if server_max > 0 else None
    chosen = wanted or limit or DEFAULT_BATCH
    return min(chosen, limit) if limit else chosen


def _classes(tensor: _Tensor) -> int:
    """Classes from the output shape (batch, K); -1 when the server leaves K open (probed later)."""
    if len(tensor.shape) == 2:
        return int(tensor.shape[1])
    return -1


_CREDENTIALS_FIX = f"the server wants a header (token): put it in {HEADER_ENV} as a line 'Name: value'"


def _refused(exc: BaseException) -> bool:
    """A server that answered but refused for want of credentials. Triton's restricted APIs say
    'restricted' (HTTP 403; over gRPC as UNAVAILABLE); proxies answer 401/403 or gRPC's codes."""
    status = status_of(exc)
    return status in ("401", "403", "PERMISSION_DENIED", "UNAUTHENTICATED") or "restricted" in describe(exc).lower()


def _reach_fix(exc: BaseException, endpoint: Endpoint) -> str:
    if _refused(exc):
        return _CREDENTIALS_FIX
    other = "triton+grpc://…:8001" if endpoint.protocol == "http" else "triton://…:8000"
    return (
        f"check that the server is running and listening on {endpoint.address} for {endpoint.protocol.upper()} "
        f"(Triton's defaults: HTTP 8000, gRPC 8001; for the other protocol use {other})"
    )
