"""What an audit through Triton costs over the inference it needs, measured on a real server.

Starts tritonserver (tests/triton_server.py) serving two models with the same input (1x8x8) and
output (10 classes), so the audit's own arithmetic is identical for both:
  digits: the example model (64-32-10), a few µs of inference a row: the worst case, where the
          estimators' arithmetic weighs as much as the inference;
  wide:   a 64-1024-1024-10 MLP, ~35 µs a row on one core: closer to a deployed model.
For each model, protocol and concurrency it times three ways of sending the same rows:
  audit:   fimaudit.audit(TritonModel), end to end (engine batching and estimators included);
  adapter: TritonModel.predict_proba on the audit's number of rows in full batches of the model's
           max_batch_size, the same number in flight: the adapter's own cost per request;
  raw:     the same batches with plain tritonclient, one client per thread;
and reports audit/raw (target <= 1.15), adapter/raw, and the requests the server counted for the
audit (its statistics API) against the minimum, ceil(rows / batch). Each time is the best of
--repeats runs, the three kinds interleaved so load from elsewhere hits them alike.

    .venv/bin/python benchmarks/triton_overhead.py [--samples 100] [--repeats 5] [--write]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "adapters" / "triton" / "tests"))  # the server helper the tests use

import fimaudit  # noqa: E402
from fimaudit_triton import load  # noqa: E402
from triton_server import EXAMPLES, TritonServer, build_repository, example_onnx  # noqa: E402

DOC = ROOT / "docs" / "benchmarks" / "triton_overhead.md"
TARGET = 1.15


@dataclass(frozen=True)
class Row:
    model: str
    protocol: str
    concurrency: int
    queries: int
    batch: int
    requests: int  # counted by the server during one audit
    audit_s: float
    adapter_s: float
    raw_s: float

    @property
    def ratio(self) -> float:
        return self.audit_s / self.raw_s


def wide_onnx(into: Path) -> Path:
    """A 64-1024-1024-10 tanh MLP with random weights: the digits interface, ~30x the work."""
    from fimaudit_onnx.build import mlp_to_onnx

    rng = np.random.default_rng(0)
    sizes = [64, 1024, 1024, 10]
    weights = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
    biases = [np.zeros(b, dtype=np.float32) for b in sizes[1:]]
    path = into / "wide.onnx"
    mlp_to_onnx(weights, biases, activation="tanh", input_shape=(1, 8, 8), path=path)
    return path


def server_requests(server: TritonServer, model: str) -> int:
    """Successful requests the server has counted for version 1 of `model` so far."""
    url = f"http://127.0.0.1:{server.http_port}/v2/models/{model}/versions/1/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.load(response)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def time_audit(server: TritonServer, model: str, protocol: str, x: np.ndarray, directions: int, concurrency: int) -> tuple[float, int, int, int]:
    """Seconds for one whole audit, the rows it sent, its batch size and its request count."""
    triton = load(server.url(model, protocol, "1"))
    try:
        before = server_requests(server, model)
        started = time.perf_counter()
        report = fimaudit.audit(triton, x, directions=directions, concurrency=concurrency)
        seconds = time.perf_counter() - started
        time.sleep(0.05)  # statistics are updated just after each response
        return seconds, report.summary.queries, triton.max_batch_size, server_requests(server, model) - before
    finally:
        triton.close()


def full_batches(queries: int, batch: int) -> list[np.ndarray]:
    rows = np.random.default_rng(0).uniform(0, 1, size=(batch, 1, 8, 8)).astype(np.float32)
    return [rows[: min(batch, queries - start)] for start in range(0, queries, batch)]


def in_flight(send: Callable[[np.ndarray], Any], batches: list[np.ndarray], concurrency: int) -> float:
    started = time.perf_counter()
    if concurrency == 1:
        for b in batches:
            send(b)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, batches))
    return time.perf_counter() - started


def time_adapter(server: TritonServer, model: str, protocol: str, batches: list[np.ndarray], concurrency: int) -> float:
    triton = load(server.url(model, protocol, "1"))
    try:
        return in_flight(triton.predict_proba, batches, concurrency)
    finally:
        triton.close()


def time_raw(server: TritonServer, model: str, protocol: str, batches: list[np.ndarray], concurrency: int) -> float:
    """The same batches with tritonclient alone: binary tensors over HTTP, one client per thread."""
    if protocol == "grpc":
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module
    port = server.grpc_port if protocol == "grpc" else server.http_port
    local = threading.local()
    clients: list[Any] = []

    def send(rows: np.ndarray) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = client_module.InferenceServerClient(f"127.0.0.1:{port}")
            clients.append(client)
        tensor = client_module.InferInput("input", list(rows.shape), "FP32")
        binary = {} if protocol == "grpc" else {"binary_data": True}
        tensor.set_data_from_numpy(rows, **binary)
        wanted = client_module.InferRequestedOutput("probabilities", **binary)
        client.infer(model, [tensor], "1", outputs=[wanted]).as_numpy("probabilities")

    try:
        return in_flight(send, batches, concurrency)
    finally:
        for client in clients:
            client.close()


def measure(server: TritonServer, model: str, protocol: str, x: np.ndarray, directions: int, concurrency: int, repeats: int) -> Row:
    audits, adapters, raws = [], [], []
    for _ in range(repeats):
        seconds, queries, batch, requests = time_audit(server, model, protocol, x, directions, concurrency)
        batches = full_batches(queries, batch)
        audits.append(seconds)
        adapters.append(time_adapter(server, model, protocol, batches, concurrency))
        raws.append(time_raw(server, model, protocol, batches, concurrency))
    return Row(model, protocol, concurrency, queries, batch, requests, min(audits), min(adapters), min(raws))


def table(rows: list[Row]) -> str:
    lines = [
        "| model | protocol | conc. | rows | requests (min) | audit s | adapter s | raw s | **audit/raw** | adapter/raw | audit rows/s | raw rows/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        least = math.ceil(r.queries / r.batch)
        lines.append(
            f"| {r.model} | {r.protocol} | {r.concurrency} | {r.queries} | {r.requests} ({least}) | {r.audit_s:.3f} | "
            f"{r.adapter_s:.3f} | {r.raw_s:.3f} | **{r.ratio:.2f}** | {r.adapter_s / r.raw_s:.2f} | "
            f"{r.queries / r.audit_s:,.0f} | {r.queries / r.raw_s:,.0f} |"
        )
    return "\n".join(lines)


def placements() -> dict[str, tuple[set[int], set[int]] | None]:
    """Where the server and the client run: sharing every core (the worst case, where any client
    arithmetic takes CPU from the server) and, with two or more cores, on separate cores, as when
    auditing an endpoint on another machine."""
    cores = sorted(os.sched_getaffinity(0))
    options: dict[str, tuple[set[int], set[int]] | None] = {"shared cores": None}
    if len(cores) >= 2:
        half = len(cores) // 2
        options["split cores"] = (set(cores[half:]), set(cores[:half]))
    return options


def run_placement(
    work: Path, models: dict[str, tuple[str, list[Path]]], x: np.ndarray, args: argparse.Namespace, cores: tuple[set[int], set[int]] | None,
) -> list[Row]:
    everything = os.sched_getaffinity(0)
    if cores is not None:
        os.sched_setaffinity(0, cores[0])  # the server inherits this set, then the client moves
    try:
        with TritonServer(build_repository(work, models), list(models), work) as server:
            if cores is not None:
                os.sched_setaffinity(0, cores[1])
            for name in models:
                time_audit(server, name, "http", x[:2], 8, 1)  # warm both sides up
            return [
                measure(server, m, p, x, args.directions, c, args.repeats)
                for m in models for p in ("http", "grpc") for c in (1, 8)
            ]
    finally:
        os.sched_setaffinity(0, everything)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100, help="inputs audited (from examples/digits_test.npy)")
    parser.add_argument("--directions", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help=f"write the table to {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    x = np.load(EXAMPLES / "digits_test.npy")[: args.samples]
    results: dict[str, list[Row]] = {}
    for placement, cores in placements().items():
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            # Both served with the digits config: same tensor names, shapes and max_batch_size 256.
            models = {"digits": ("digits.pbtxt", [example_onnx("probabilities", work)]), "wide": ("digits.pbtxt", [wide_onnx(work)])}
            rows = results[placement] = run_placement(work, models, x, args, cores)
        print(f"## {placement}\n{table(rows)}")
        for name in models:
            worst = max(r.ratio for r in rows if r.model == name)
            print(f"{name}: worst audit/raw {worst:.2f} (target <= {TARGET})")
    if args.write:
        write_doc(results, args)


def write_doc(results: dict[str, list[Row]], args: argparse.Namespace) -> None:
    load_average = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    sections = "".join(f"## {placement}\n\n{table(rows)}\n\n" for placement, rows in results.items())
    DOC.write_text(
        "# Triton overhead: an audit versus the raw inference it needs\n\n"
        "Written by `benchmarks/triton_overhead.py --write` (see its docstring for the method): a real\n"
        "tritonserver 2.51 (Python backend running onnxruntime, 2 CPU instances, max_batch_size 256) on\n"
        f"127.0.0.1; {args.samples} example inputs, {args.directions} directions (exact mode at d = 64); best of\n"
        f"{args.repeats} runs. Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, Python\n"
        f"{platform.python_version()}, load average at the end {load_average}. Two placements: *shared cores*,\n"
        "server and client on every core (the worst case), and *split cores*, the server pinned to half\n"
        "the cores and the client to the other half, as when the endpoint runs on another machine.\n\n"
        f"{sections}"
        "Reading it: *adapter/raw* is what the Triton adapter itself adds to each request (output checks,\n"
        "dtype conversion); *audit/raw* adds what the core does around the requests: the estimators'\n"
        "arithmetic (about 0.3 ms per sample here, ~0.03 s for the 100 samples), batching, and the\n"
        "audit's fixed steps (input scan, base queries). The engine keeps batches in flight on worker\n"
        "threads while that arithmetic runs, so it is hidden wherever the server has CPU of its own\n"
        "(*split cores*). With *shared cores* and 8 requests in flight the server already uses both\n"
        "cores, so every client cycle is taken from it and the arithmetic adds to the time. For\n"
        "`digits` the inference costs next to nothing (~2 µs a row), so the arithmetic weighs as much\n"
        "as the whole of it and no placement brings the ratio near 1: that is a property of auditing a\n"
        "trivially cheap model, not of the transport. On a machine shared with other work the timings\n"
        "scatter by tens of percent from run to run; compare rows of one run only.\n"
    )


if __name__ == "__main__":
    main()
