"""Throughput of audits sharded over Ray workers, on a local Ray cluster started on 127.0.0.1.

Two models, both CallableModel on --samples inputs of 64 values, 3 classes, k = 32 directions (sketch), seed 0:
  io:   an endpoint-like model whose cost is a fixed latency per request (IO_FIXED_S plus IO_ROW_S a
        row, batches of at most IO_BATCH rows), so that workers overlap waiting the way they would
        on a remote server or GPU; 1, 2, 4 and 8 workers, each reserving 1/4 CPU.
  cpu:  a numpy MLP (64 -> 2048 -> 2048 -> 3, one BLAS thread) whose cost is arithmetic; 1 worker
        up to the machine's cores, each reserving one CPU.
Each point is one audit, timed from the call to the report (actor start and model load included;
the driver connects to the cluster once, before), and its steady rate: samples per second over
the last three quarters of the samples, once the workers run (shards of SHARD samples). The baseline is the same audit without Ray.
Every Ray report is compared, sample by sample, to the baseline's (FIGURES). It also times the driver's
own cost per sample (committing to the journal), the ceiling of any number of workers.

    .venv/bin/python benchmarks/ray_scaling.py [--samples 128] [--workers 1,2,4,8]
Writes docs/benchmarks/ray_scaling.json; docs/benchmarks/ray_scaling.md quotes it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: keep it on loopback
# Token authentication with this run's own token (never the shared ~/.ray/auth_token).
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # one BLAS thread a process: workers, not threads, are what is measured

import numpy as np  # noqa: E402
import ray  # noqa: E402

import fimaudit  # noqa: E402
from fimaudit import CallableModel, InputSpec, RayOptions  # noqa: E402
from fimaudit.journal import Journal  # noqa: E402
from fimaudit.runner import first_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "ray_scaling.json"
IO_FIXED_S, IO_ROW_S, IO_BATCH = 0.040, 0.0005, 16
SETTINGS: dict[str, Any] = {"directions": 32, "seed": 0, "estimator": "sketch"}
D, HIDDEN = 64, 2048
SHARD = 2  # samples per shard: small, so that samples finish evenly and the steady rate is measurable
# The figures compared between a Ray report and the local one. step_error and scheme_evidence are
# estimates of rounding noise themselves: BLAS rounds a row differently in a batch of another size,
# which moves them (as any change of batching does locally); the estimates stay within ~1e-11.
FIGURES = ("lambda_max", "lambda_max_ci", "trace", "epsilon_tau", "lambda_lower", "stable_rank", "predicted_class")


def io_model() -> CallableModel:
    w = np.random.default_rng(0).normal(size=(D, 3)) / 8

    def fn(batch: np.ndarray) -> np.ndarray:
        time.sleep(IO_FIXED_S + IO_ROW_S * len(batch))  # the endpoint's latency: no CPU spent
        return _softmax(batch @ w)

    return CallableModel(fn, InputSpec(shape=(D,), dtype="float64"), 3, max_batch_size=IO_BATCH, name="io-latency")


def cpu_model() -> CallableModel:
    rng = np.random.default_rng(0)
    w1, w2, w3 = rng.normal(size=(D, HIDDEN)) / 8, rng.normal(size=(HIDDEN, HIDDEN)) / 32, rng.normal(size=(HIDDEN, 3)) / 32

    def fn(batch: np.ndarray) -> np.ndarray:
        h = np.tanh(np.tanh(batch @ w1) @ w2)
        return _softmax(h @ w3)

    return CallableModel(fn, InputSpec(shape=(D,), dtype="float64"), 3, max_batch_size=256, name="cpu-mlp")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def start_cluster(cpus: int) -> tuple[str, str]:
    temp = tempfile.mkdtemp(prefix="fimbench", dir="/tmp")
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        port, client = a.getsockname()[1], b.getsockname()[1]
    subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}", f"--num-cpus={cpus}",
         "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats", f"--ray-client-server-port={client}"],
        check=True, capture_output=True, timeout=120,
    )
    return f"127.0.0.1:{port}", temp


def stop_cluster(address: str, temp: str) -> None:
    """End this cluster's processes by PID (`ray stop` would end every Ray cluster of this user)."""
    markers = (f"{temp}/session_", f"--address={address} ")
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
            if proc.name.isdigit() and any(m in command for m in markers) and int(proc.name) != os.getpid():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def listeners_off_loopback() -> list[str]:
    out = subprocess.run(["ss", "-tlnp"], capture_output=True, text=True, check=True).stdout
    return [ln for ln in out.splitlines()[1:] if ("ray" in ln or "gcs_server" in ln or "raylet" in ln)
            and not ln.split()[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))]


def timed(model: CallableModel, x: np.ndarray, opts: RayOptions | None) -> tuple[float, float, fimaudit.AuditReport]:
    """(wall seconds, steady samples/s, report): the steady rate is that of the last three quarters
    of the samples, after the workers have started and loaded the model."""
    stamps: list[float] = []
    start = time.perf_counter()
    report = fimaudit.audit(model, x, ray=opts, progress=lambda done, total, q: stamps.append(time.perf_counter()), **SETTINGS)
    wall = time.perf_counter() - start
    first = len(stamps) // 4
    return wall, (len(stamps) - 1 - first) / max(stamps[-1] - stamps[first], 1e-9), report


def max_relative_difference(a: fimaudit.AuditReport, b: fimaudit.AuditReport) -> float:
    worst = 0.0
    for p, q in zip(a.samples, b.samples):
        for name in FIGURES:
            u, v = np.ravel(np.asarray(getattr(p, name), dtype=float)), np.ravel(np.asarray(getattr(q, name), dtype=float))
            worst = max(worst, float(np.max(np.abs(u - v) / np.maximum(np.abs(u), 1e-300))))
    return worst


def sweep(name: str, model: CallableModel, x: np.ndarray, address: str, counts: list[int], cpus: float) -> dict[str, Any]:
    base_s, base_rate, base = timed(model, x, None)
    points = []
    for n in counts:
        wall, rate, report = timed(model, x, RayOptions(address=address, workers=n, cpus_per_worker=cpus, shard=SHARD))
        identical = all(first_difference(a.model_dump(), b.model_dump()) is None for a, b in zip(base.samples, report.samples))
        points.append({
            "workers": n, "wall_s": round(wall, 3), "samples_per_s": round(len(x) / wall, 3), "steady_samples_per_s": round(rate, 3),
            "speedup_vs_local": round(base_s / wall, 3), "all_samples": [s.index for s in report.samples] == list(range(len(x))),
            "identical_to_local": identical, "max_relative_difference": max_relative_difference(base, report),
        })
        print(name, points[-1], flush=True)
    one = points[0]["steady_samples_per_s"]
    for p in points:
        p["steady_efficiency_vs_1_worker"] = round(p["steady_samples_per_s"] / (one * p["workers"]), 3)
    return {"model": name, "local_wall_s": round(base_s, 3), "local_samples_per_s": round(len(x) / base_s, 3),
            "local_steady_samples_per_s": round(base_rate, 3), "queries": base.summary.queries, "points": points}


def driver_commit_cost(report: fimaudit.AuditReport) -> float:
    """Seconds the driver spends committing one finished sample to a journal (its serial part)."""
    with tempfile.TemporaryDirectory() as tmp:
        book = Journal(Path(tmp) / "j", {"bench": 1})
        sample = report.samples[0]
        start = time.perf_counter()
        for i in range(500):
            book.commit(sample.model_copy(update={"index": i}))
        elapsed = time.perf_counter() - start
        book.close()
    return elapsed / 500


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--workers", default="1,2,4,8")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    x = np.random.default_rng(1).normal(size=(args.samples, D))
    address, temp = start_cluster(cores)
    try:
        ray.init(address=address, log_to_driver=False)  # once: connecting is not part of the audit's time
        exposed = listeners_off_loopback()
        io = sweep("io", io_model(), x, address, [int(v) for v in args.workers.split(",")], cpus=cores / 8)
        cpu = sweep("cpu", cpu_model(), x, address, [n for n in (1, 2, 4, 8) if n <= cores], cpus=1.0)
        commit = driver_commit_cost(fimaudit.audit(io_model(), x[:1], **SETTINGS))
    finally:
        ray.shutdown()
        stop_cluster(address, temp)
    result = {
        "machine": {"cores": cores, "python": platform.python_version(), "ray": ray.__version__, "numpy": np.__version__},
        "samples": args.samples, "settings": SETTINGS, "io_latency": {"fixed_s": IO_FIXED_S, "per_row_s": IO_ROW_S, "batch": IO_BATCH},
        "listeners_off_loopback": exposed, "io": io, "cpu": cpu, "driver_commit_s_per_sample": round(commit, 6),
        "date": time.strftime("%Y-%m-%d"),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
