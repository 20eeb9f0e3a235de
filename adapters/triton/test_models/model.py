"""A Triton Python-backend model that runs one ONNX file with onnxruntime.

Used by the Triton adapter's tests and benchmark to serve real models from a real
tritonserver (the pip-installable server has no onnxruntime backend, only the Python one).
It runs inside the server's own environment (numpy<2), never in fimaudit's.

Copied as `<repository>/<model>/1/model.py` next to `model.onnx`. Parameters read from
`config.pbtxt` (all optional):
  onnx_file     file name of the ONNX model in the version folder (default model.onnx)
  fail_every    every N-th request fails with UNAVAILABLE, the others succeed: a transient fault
                the client is expected to retry (deterministic when requests come one at a time)
  fail_always   every request fails with this message (INTERNAL): a permanent fault
  delay_ms      requests whose first input value is negative are answered after this delay, so a
                test can time one request out while the load-time probes (in [0, 1)) answer at once
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    entry = config.get("parameters", {}).get(key)
    return str(entry["string_value"]) if entry else default


class TritonPythonModel:
    """One onnxruntime session per model instance; each request runs on its own."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        # One thread per instance: the server already runs instances side by side, and a
        # fixed thread count keeps every float sum in the same order (bitwise repeatable).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = os.path.join(folder, _parameter(config, "onnx_file", "model.onnx"))
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.fail_every = int(_parameter(config, "fail_every", "0"))
        self.fail_always = _parameter(config, "fail_always", "")
        self.delay = float(_parameter(config, "delay_ms", "0")) / 1000.0
        self.seen = 0
        self.lock = threading.Lock()

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._answer(request) for request in requests]

    def _answer(self, request: Any) -> Any:
        fault = self._fault()
        if fault is not None:
            return pb_utils.InferenceResponse(output_tensors=[], error=fault)
        x = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
        if self.delay and x.size and x.flat[0] < 0:
            time.sleep(self.delay)
        (y,) = self.session.run([self.output_name], {self.input_name: x})
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(y))])

    def _fault(self) -> Any:
        """The injected error for this request, or None to answer it normally."""
        if self.fail_always:
            return pb_utils.TritonError(self.fail_always, pb_utils.TritonError.INTERNAL)
        if not self.fail_every:
            return None
        with self.lock:  # instances are single-threaded, but the count must not depend on that
            self.seen += 1
            seen = self.seen
        if seen % self.fail_every:
            return None
        return pb_utils.TritonError(f"injected transient fault at request {seen}", pb_utils.TritonError.UNAVAILABLE)
