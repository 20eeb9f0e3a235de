"""Audits sharded over Ray actors: the driver schedules, workers compute, the driver alone records.

Each sample's result depends only on (seed, index) and its input (estimators.py), so a sample
computed on any worker equals the one a local run computes. A worker loads the model once, then
computes shards of a few samples with the same code a local run uses (runner.recompute). Finished
shards stream back; the driver commits each sample to the journal, builds the report and signs
it, so keys and the journal never leave it. Ray is imported only here, and only when asked for.
"""
from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fimaudit.adapter import ProbabilityModel
from fimaudit.errors import FimauditError, QueryError, UsageError
from fimaudit.estimators import EstimatorConfig
from fimaudit.threads import single_threaded_blas
from fimaudit.report import SampleResult

# Shards in flight per worker: one computing, one queued, so a worker never waits on the driver.
IN_FLIGHT_PER_WORKER = 2
# Samples per shard at most: small enough that a lost worker costs little, and that a worker holds
# only a few inputs at once (memory bounded per worker whatever the data's size).
MAX_SHARD = 8
# Tries per shard before the audit gives up (a worker killed mid-shard is restarted by Ray, and
# the shard sent again; a shard that kills every worker it meets is a fault of its own).
MAX_TRIES = 4
# Restarts Ray grants each actor before it is gone for good.
MAX_RESTARTS = 4
# A shard sent to an actor that Ray is still restarting comes back at once as unavailable: that is
# not a new death, so it waits this long and goes to another worker, up to RESTART_WAITS times,
# without spending one of its tries (under load a restart took long enough to use up all four).
RESTART_WAIT_S = 0.5
RESTART_WAITS = 240
# Keeps a local Ray instance on the loopback interface (Ray binds the host's address otherwise).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

Accept = Callable[[list[SampleResult]], None]  # a shard's finished samples, committed together


@dataclass(frozen=True)
class RayOptions:
    """Where and how widely to shard: `address` "auto" starts a local instance, else a cluster's address.

    `model_source` (reference, options) is how workers load the model (fimaudit.load_model); when
    None the model object itself is pickled to them (a CallableModel; a live session or client is not).
    """

    address: str = "auto"
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    model_source: tuple[str, dict[str, Any]] | None = None
    shard: int | None = None

    def check(self) -> None:
        problems = [
            (not isinstance(self.workers, int) or self.workers < 1, f"workers must be an integer >= 1 (got {self.workers!r})"),
            (not self.gpus_per_worker >= 0, f"gpus per worker must be >= 0 (got {self.gpus_per_worker!r})"),
            (not self.cpus_per_worker >= 0, f"cpus per worker must be >= 0 (got {self.cpus_per_worker!r})"),
            (self.shard is not None and self.shard < 1, f"shard must be >= 1 (got {self.shard!r})"),
        ]
        for bad, message in problems:
            if bad:
                raise UsageError(message, "see `fimaudit audit --help` for the accepted values")


@dataclass(frozen=True)
class MappedFile:
    """An array file the workers map themselves (same machine): only indices travel, never rows."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, ...]


class ShardRows:
    """The inputs of one shard, read by global index: what runner.recompute needs of an array."""

    def __init__(self, rows: np.ndarray, indices: Sequence[int]) -> None:
        self._rows = rows
        self._where = {int(i): j for j, i in enumerate(indices)}
        self.shape = (len(indices), *rows.shape[1:])
        self.dtype = rows.dtype

    def __getitem__(self, index: int) -> np.ndarray:
        return self._rows[self._where[int(index)]]


def _import_ray(address: str) -> Any:
    if address == "auto":
        # Ray reads this once, when imported: set it first, so a local instance binds loopback only
        # (a driver that imported Ray itself must set it in its environment before doing so).
        os.environ.update(LOOPBACK_ENV)
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--ray needs Ray, which is not installed.", "pip install 'fimaudit[ray]'") from exc
    return ray


def mapped_file(arr: np.ndarray) -> MappedFile | None:
    """The file `arr` maps, when it is the whole of a C-contiguous memory-mapped file; else None."""
    base: Any = arr
    while base is not None and not (isinstance(base, np.memmap) and base.filename):
        base = getattr(base, "base", None)
    if base is None or not arr.flags.c_contiguous or base.shape != arr.shape or base.dtype != arr.dtype:
        return None
    if base.__array_interface__["data"][0] != arr.__array_interface__["data"][0]:
        return None  # a view of part of the file: ship rows instead
    return MappedFile(str(base.filename), int(base.offset), base.dtype.str, tuple(int(v) for v in base.shape))


class _Worker:
    """One Ray actor: loads the model once, then computes the shards it is sent."""

    def __init__(self, model_blob: bytes | None, source: tuple[str, dict[str, Any]] | None, cfg: EstimatorConfig, tau: float) -> None:
        self.model = _load_worker_model(model_blob, source)
        self.cfg = cfg
        self.tau = tau
        self._maps: dict[str, np.ndarray] = {}

    def pid(self) -> int:
        return os.getpid()

    def compute(self, indices: list[int], rows: np.ndarray | MappedFile) -> list[SampleResult]:
        from fimaudit.runner import recompute  # the runner imports this module lazily; no cycle at import

        # Copy only this shard's rows out of the map: the worker's memory stays that of one shard.
        data = np.array(self._open(rows)[np.asarray(indices, dtype=np.intp)]) if isinstance(rows, MappedFile) else rows
        view: Any = ShardRows(data, indices)  # duck-typed: recompute reads arr[i] and arr.shape only
        # Each actor has its share of the cores (cpus_per_worker); numpy's BLAS would start a thread per
        # core in every one of them, beside the model's own (fimaudit.threads).
        with single_threaded_blas():
            found = recompute(self.model, view, indices, self.cfg, self.tau)
        return [found[i] for i in indices]

    def _open(self, f: MappedFile) -> np.ndarray:
        if f.path not in self._maps:
            self._maps[f.path] = np.memmap(f.path, dtype=np.dtype(f.dtype), mode="r", offset=f.offset, shape=f.shape)
        return self._maps[f.path]


def _load_worker_model(model_blob: bytes | None, source: tuple[str, dict[str, Any]] | None) -> ProbabilityModel:
    if source is not None:
        from fimaudit.registry import load_model

        reference, options = source
        return load_model(reference, **options)
    assert model_blob is not None
    model: ProbabilityModel = pickle.loads(model_blob)  # noqa: S301  (the driver's own object, via Ray)
    return model


def model_blob(model: ProbabilityModel, source: tuple[str, dict[str, Any]] | None) -> bytes | None:
    """The model pickled for the workers, unless they load it by reference."""
    if source is not None:
        return None
    import cloudpickle  # Ray's own dependency: pickles functions defined in code, lambdas included

    try:
        blob: bytes = cloudpickle.dumps(model)
    except Exception as exc:  # any pickling failure of third-party objects
        raise UsageError(
            f"the model cannot be sent to Ray workers ({type(exc).__name__}: {exc}).",
            "pass the model by reference (a file path or URL) so each worker loads it itself",
        ) from exc
    return blob


def shard_size(n: int, workers: int, given: int | None) -> int:
    """Samples per shard: several shards per worker for balance, at most MAX_SHARD."""
    return given if given is not None else max(1, min(MAX_SHARD, math.ceil(n / (4 * workers))))


def run_on_ray(
    model: ProbabilityModel, arr: np.ndarray, pending: Sequence[int], cfg: EstimatorConfig, tau: float,
    options: RayOptions, accept: Accept,
) -> None:
    """Compute the samples at `pending` on Ray workers, handing each finished shard to `accept`."""
    options.check()
    if not pending:
        return
    ray = _import_ray(options.address)
    started = _connect(ray, options)
    try:
        _schedule(ray, model, arr, list(pending), cfg, tau, options, accept)
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, options: RayOptions) -> bool:
    """Connect to the cluster (or start a local one for "auto"); True when this call started Ray."""
    if ray.is_initialized():
        return False
    if options.address == "auto":
        ray.init(
            address="local", num_cpus=max(options.workers, os.cpu_count() or 1), include_dashboard=False,
            log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1",
        )
    else:
        ray.init(address=options.address, log_to_driver=False, configure_logging=False)
    return True


def _same_machine(ray: Any) -> bool:
    """Whether every node of the cluster is this machine, so a file path means the same file there."""
    here = ray.util.get_node_ip_address()
    return all(node["NodeManagerAddress"] == here for node in ray.nodes() if node.get("Alive"))


def _schedule(
    ray: Any, model: ProbabilityModel, arr: np.ndarray, pending: list[int], cfg: EstimatorConfig, tau: float,
    options: RayOptions, accept: Accept,
) -> None:
    actor = ray.remote(
        num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker, max_restarts=MAX_RESTARTS, max_task_retries=0,
    )(_Worker)
    # Held here until the audit ends: Ray restarts a killed actor from these same arguments.
    blob = ray.put(model_blob(model, options.model_source))
    shared = mapped_file(arr) if _same_machine(ray) else None
    size = shard_size(len(pending), options.workers, options.shard)
    queue = [(pending[k:k + size], 0) for k in range(0, len(pending), size)]  # (shard, tries so far)
    workers = [actor.remote(blob, options.model_source, cfg, tau) for _ in range(options.workers)]
    inflight: dict[Any, tuple[int, list[int], int]] = {}  # ref -> (worker, shard, tries so far)
    load = [0] * len(workers)
    waits = [0]  # shards sent back by a restarting actor, over the audit

    def send(shard: list[int], tries: int, avoid: int | None = None) -> None:
        # The least busy worker, and not the one that just failed this shard when there is another.
        w = min(range(len(workers)), key=lambda i: (i == avoid, load[i]))
        # Rows travel through the object store only when the workers cannot map the file themselves.
        rows = shared if shared is not None else np.ascontiguousarray(arr[np.asarray(shard, dtype=np.intp)])
        inflight[workers[w].compute.remote(shard, rows)] = (w, shard, tries)
        load[w] += 1

    try:
        while queue or inflight:
            while queue and len(inflight) < IN_FLIGHT_PER_WORKER * len(workers):
                send(*queue.pop(0))
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            w, shard, tries = inflight.pop(ref)
            load[w] -= 1
            results, counted = _fetch(ray, ref, shard, tries, waits)
            if results is None:
                send(shard, tries + counted, avoid=w)  # its worker died or is restarting: again, elsewhere
                continue
            accept(results)  # the driver's accept drops a sample it already has: none is doubled
    finally:
        for handle in workers:
            ray.kill(handle)


def _fetch(ray: Any, ref: Any, shard: list[int], tries: int, waits: list[int]) -> tuple[list[SampleResult] | None, int]:
    """(a shard's results, 0), or (None, tries it spent) when its worker died before answering or was
    still restarting: the shard must be resent."""
    try:
        results: list[SampleResult] = ray.get(ref)
        return results, 0
    except ray.exceptions.ActorUnavailableError as exc:
        waits[0] += 1
        if waits[0] > RESTART_WAITS:
            raise QueryError(f"Ray workers stayed unavailable (restarting) for {RESTART_WAITS * RESTART_WAIT_S:g} s ({exc}).",
                             "check the workers' logs; rerun to resume from the journal") from exc
        time.sleep(RESTART_WAIT_S)
        return None, 0
    except ray.exceptions.RayActorError as exc:
        if tries + 1 >= MAX_TRIES:
            raise QueryError(
                f"Ray workers died {MAX_TRIES} times computing samples {shard[0]}..{shard[-1]} ({exc}).",
                "check the workers' logs (out of memory? a crashing model?); rerun to resume from the journal",
            ) from exc
        return None, 1
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, FimauditError):
            raise cause from None  # the worker's own error, as a local run would raise it
        raise QueryError(f"a Ray worker failed computing samples {shard[0]}..{shard[-1]}: {cause!r}", "see the worker's traceback above") from exc
