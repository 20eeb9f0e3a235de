"""Audits sharded over Ray actors, on a real local Ray cluster this module starts on 127.0.0.1.

The cluster is a `ray start --head` with its own port, temp dir and 2 CPUs (not Ray's local mode),
stopped when the module ends. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it on loopback; the
tests check that none of its processes listens anywhere else.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Loopback only; and token authentication with this run's own token, passed by the environment to
# the cluster and every driver, so no test reads or writes the shared ~/.ray/auth_token.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
os.environ.update(LOOPBACK)  # before Ray is imported: it reads this once, and the drivers here start in-process
ray = pytest.importorskip("ray")
cloudpickle = pytest.importorskip("cloudpickle")

import fimaudit  # noqa: E402
from fimaudit import CallableModel, InputSpec, RayOptions  # noqa: E402
from fimaudit.distributed import mapped_file  # noqa: E402
from fimaudit.report import AuditReport  # noqa: E402
from fimaudit.runner import first_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
# The models below are defined in this module, which workers cannot import: pickle them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

W = np.random.default_rng(0).normal(size=(8, 3))
SETTINGS = {"directions": 16, "seed": 5, "estimator": "sketch"}


def softmax_of(batch: np.ndarray) -> np.ndarray:
    z = batch.reshape(len(batch), -1) @ W
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def small_model(pids: Path | None = None, latency: float = 0.0) -> CallableModel:
    """A 3-class softmax on 8 inputs; with `pids`, each process that queries it leaves its PID there."""

    def fn(batch: np.ndarray) -> np.ndarray:
        if pids is not None:
            (pids / str(os.getpid())).touch()
        time.sleep(latency)
        return softmax_of(batch)

    return CallableModel(fn, InputSpec(shape=(8,), dtype="float64"), 3, max_batch_size=64)


def inputs(n: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TEMP_DIRS: dict[str, str] = {}  # cluster address -> its temp dir


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a 2-CPU Ray head started for this module, stopped (and checked) at its end."""
    temp = tempfile.mkdtemp(prefix="fimray", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, client_port = _free_port(), _free_port()
    env = {**os.environ, **LOOPBACK}
    subprocess.run(
        [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--temp-dir={temp}", "--disable-usage-stats", f"--ray-client-server-port={client_port}"],
        check=True, env=env, capture_output=True, timeout=120,
    )
    TEMP_DIRS[f"127.0.0.1:{port}"] = temp
    # The client server names the GCS address, not the session folder: find it by that.
    temp = f"{temp}/session_|--address=127.0.0.1:{port} "
    try:
        yield f"127.0.0.1:{port}"
        assert not _non_loopback_listeners(temp)
    finally:
        stop_cluster(temp)


def stop_cluster(temp: str) -> None:
    """End this cluster's processes by PID (`ray stop` would end every Ray cluster of this user)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _cluster_pids(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while _cluster_pids(temp) and time.monotonic() < deadline:
            time.sleep(0.2)


def _cluster_pids(markers: str, roots: tuple[int, ...] = ()) -> set[int]:
    """This cluster's processes: this user's whose command line holds one of the `|`-separated
    markers (its session folder, its GCS address: never a shell running this test), `roots`, and
    the descendants of both."""
    parents: dict[int, int] = {}
    ours: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
            if any(m in command for m in markers.split("|")) and int(proc.name) not in (os.getpid(), os.getppid()):
                ours.add(int(proc.name))
        except OSError:
            continue  # the process ended while we looked
    ours |= set(roots)
    grown = True
    while grown:
        more = {pid for pid, ppid in parents.items() if ppid in ours} - ours
        ours |= more
        grown = bool(more)
    return ours


def _non_loopback_listeners(markers: str, roots: tuple[int, ...] = ()) -> list[str]:
    """`ss -tlnp` lines of this cluster's processes listening on an address other than loopback."""
    pids = _cluster_pids(markers, roots)
    out = subprocess.run(["ss", "-tlnp"], capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines()[1:]:
        local = line.split()[3]
        owned = any(f"pid={pid}," in line for pid in pids)
        if owned and not local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")):
            bad.append(line)
    return bad


def assert_same_samples(local: AuditReport, sharded: AuditReport) -> None:
    assert [s.index for s in sharded.samples] == [s.index for s in local.samples]
    for a, b in zip(local.samples, sharded.samples):
        assert first_difference(a.model_dump(), b.model_dump()) is None
    assert sharded.data == local.data and sharded.config == local.config


def test_the_cluster_listens_on_loopback_only(cluster: str) -> None:
    markers = f"{TEMP_DIRS[cluster]}/session_|--address={cluster} "
    assert _cluster_pids(markers), "the cluster's processes were not found"
    assert not _non_loopback_listeners(markers)


def test_ray_auto_starts_a_loopback_instance_and_ends_it(cluster: str) -> None:
    seen: list[list[str]] = []

    def look(done: int, total: int, queries: int) -> None:
        if not seen:  # while the local instance runs: its processes are this test's descendants
            seen.append(_non_loopback_listeners("--no-marker--", roots=(os.getpid(),)))

    x = inputs(6)
    sharded = fimaudit.audit(small_model(), x, ray="auto", workers=2, progress=look, **SETTINGS)  # type: ignore[arg-type]
    assert seen == [[]]
    assert not ray.is_initialized()  # the instance it started is shut down
    assert_same_samples(fimaudit.audit(small_model(), x, **SETTINGS), sharded)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["memory", "mapped file"])
def test_ray_report_equals_the_local_one(cluster: str, tmp_path: Path, where: str) -> None:
    x = inputs(10)
    if where == "mapped file":
        np.save(tmp_path / "x.npy", x)
        x = np.load(tmp_path / "x.npy", mmap_mode="r")
        assert mapped_file(np.asarray(x)) is not None  # the workers map it: only indices travel
    local = fimaudit.audit(small_model(), x, **SETTINGS)  # type: ignore[arg-type]
    sharded = fimaudit.audit(small_model(), x, ray=cluster, workers=2, **SETTINGS)  # type: ignore[arg-type]
    assert_same_samples(local, sharded)
    assert sharded.summary.queries == local.summary.queries


def test_workers_hold_numpys_blas_to_one_thread_while_they_compute(cluster: str, tmp_path: Path) -> None:
    """An actor with 2 CPUs gets OMP_NUM_THREADS=2 from Ray: numpy's BLAS would then start 2 threads
    beside the model's own; while it computes the estimators it holds them to one (fimaudit.threads)."""
    seen = tmp_path / "blas"
    seen.mkdir()

    def fn(batch: np.ndarray) -> np.ndarray:
        from fimaudit.threads import blas_thread_counts

        (seen / f"{os.getpid()}-{secrets.token_hex(4)}").write_text(json.dumps(blas_thread_counts()))
        return softmax_of(batch)

    model = CallableModel(fn, InputSpec(shape=(8,), dtype="float64"), 3, max_batch_size=64)
    options = RayOptions(address=cluster, workers=1, cpus_per_worker=2)
    fimaudit.audit(model, inputs(3), ray=options, **SETTINGS)  # type: ignore[arg-type]
    counts = [json.loads(f.read_text()) for f in seen.iterdir() if not f.name.startswith(f"{os.getpid()}-")]
    assert counts and all(c and set(c) == {1} for c in counts), counts


def test_mapped_file_only_for_a_whole_file(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", inputs(4))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    found = mapped_file(np.asarray(mapped))
    assert found is not None and found.path == str(tmp_path / "x.npy") and found.shape == (4, 8)
    assert mapped_file(np.asarray(mapped)[1:]) is None  # a part of it: rows go by the object store
    assert mapped_file(inputs(4)) is None


def test_a_killed_worker_loses_and_doubles_no_sample(cluster: str, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    killed: list[int] = []

    def kill_one_worker(done: int, total: int, queries: int) -> None:
        workers = [int(p.name) for p in pids.iterdir() if int(p.name) != os.getpid()]
        if not killed and workers:
            killed.append(workers[0])
            os.kill(workers[0], signal.SIGKILL)

    x = inputs(12)
    journal = tmp_path / "audit.journal"
    opts = RayOptions(address=cluster, workers=2, shard=2)
    sharded = fimaudit.audit(
        small_model(pids, latency=0.05), x, ray=opts, journal=journal, progress=kill_one_worker, **SETTINGS,  # type: ignore[arg-type]
    )
    assert killed, "no worker was killed"
    assert_same_samples(fimaudit.audit(small_model(), x, **SETTINGS), sharded)  # type: ignore[arg-type]
    with sqlite3.connect(journal) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        rows = max(db.execute(f"select count(*) from {t}").fetchone()[0] for t in tables)  # noqa: S608
    assert rows == 12  # each sample committed exactly once


DRIVER = '''
import sys, time, numpy as np, fimaudit
from fimaudit import CallableModel, InputSpec
from fimaudit.fileio import atomic_write
from pathlib import Path
LATENCY = float(sys.argv[4])  # a global, so the pickled function carries its value to the workers
W = np.random.default_rng(0).normal(size=(8, 3))
def fn(batch):
    time.sleep(LATENCY)
    z = batch.reshape(len(batch), -1) @ W
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
model = CallableModel(fn, InputSpec(shape=(8,), dtype="float64"), 3, max_batch_size=64)
x = np.random.default_rng(1).normal(size=(16, 8))
opts = fimaudit.RayOptions(address=sys.argv[1], workers=2, shard=1)
report = fimaudit.audit(model, x, directions=16, seed=5, estimator="sketch", ray=opts, journal=sys.argv[2])
atomic_write(Path(sys.argv[3]), report.to_json().encode())
'''


def _journaled(journal: Path) -> int:
    try:
        with sqlite3.connect(journal) as db:
            tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
            return max((db.execute(f"select count(*) from {t}").fetchone()[0] for t in tables), default=0)  # noqa: S608
    except sqlite3.Error:
        return 0


def test_a_killed_driver_resumes_from_its_journal(cluster: str, tmp_path: Path) -> None:
    script, journal, out = tmp_path / "driver.py", tmp_path / "audit.journal", tmp_path / "report.json"
    script.write_text(DRIVER)
    env = {**os.environ, **LOOPBACK}
    first = subprocess.Popen([sys.executable, str(script), cluster, str(journal), str(out), "0.3"], env=env)
    deadline = time.monotonic() + 60
    while _journaled(journal) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert not out.exists() and _journaled(journal) >= 3
    subprocess.run([sys.executable, str(script), cluster, str(journal), str(out), "0"], env=env, check=True, timeout=120)
    resumed = AuditReport.model_validate(json.loads(out.read_text()))
    assert resumed.summary.journal is not None and resumed.summary.journal.resumed >= 3
    local = fimaudit.audit(small_model(), inputs(16), **SETTINGS)  # type: ignore[arg-type]
    assert_same_samples(local, resumed)


def test_cli_ray_audit_equals_the_local_one(cluster: str, tmp_path: Path) -> None:
    """With --bound too: the model's bound is computed on the driver, the same either way."""
    args = [str(ROOT / "examples" / "digits.onnx"), "--data", str(ROOT / "examples" / "digits_test.npy"),
            "--limit", "6", "--directions", "16", "--quiet", "--bound"]
    cli = [str(Path(sys.executable).with_name("fimaudit")), "audit"]
    env = {**os.environ, **LOOPBACK}
    subprocess.run([*cli, *args, "--out", str(tmp_path / "local.json")], check=True, env=env, timeout=120)
    subprocess.run(
        [*cli, *args, "--ray", cluster, "--workers", "2", "--out", str(tmp_path / "ray.json")], check=True, env=env, timeout=120,
    )
    local, sharded = (AuditReport.model_validate(json.loads((tmp_path / f).read_text())) for f in ("local.json", "ray.json"))
    assert_same_samples(local, sharded)
    assert local.model.lambda_max_bound is not None and local.model.lambda_max_bound == sharded.model.lambda_max_bound


def test_importing_fimaudit_does_not_import_ray() -> None:
    code = "import sys, fimaudit, fimaudit.cli, fimaudit.distributed; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
