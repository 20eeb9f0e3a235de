"""Run a real Triton Inference Server for the Triton adapter's tests and benchmark.

The server is the tritonserver 2.51 binary from the `nvidia-pytriton` wheel, installed by
adapters/triton/install.sh into a venv of its own (numpy<2). It serves a model repository built
in a temporary folder from the real files in adapters/triton/test_models/: a `config.pbtxt` per
model and one Python-backend `model.py` that runs an ONNX file with onnxruntime.

Everything listens on 127.0.0.1 only, on ports the OS reported free. The server runs in its own
session; `stop()` sends SIGINT (clean shutdown of the backend stubs), then SIGKILL to the whole
process group if it has not exited, so nothing outlives the tests.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]  # adapters/triton/tests/ -> the repository
TEST_MODELS = ROOT / "adapters" / "triton" / "test_models"
EXAMPLES = ROOT / "examples"
SERVER_VENV_ENV = "FIMAUDIT_TRITON_SERVER_VENV"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class ServerInstall:
    """Where install.sh put the server: its venv, the wheel's files, the interpreter's libdir."""

    venv: Path
    site_packages: Path
    libdir: Path
    python_version: str

    @property
    def wheel(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    def environment(self) -> dict[str, str]:
        """The server's environment: without these the backend stub loads the system libpython
        (or cannot find the bundled libcudart) and the models never become ready."""
        libs = [str(self.libdir), str(self.site_packages / "nvidia_pytriton.libs")]
        old = os.environ.get("LD_LIBRARY_PATH")
        return {
            **os.environ,
            "LD_LIBRARY_PATH": ":".join(libs + ([old] if old else [])),
            # The stub runs the first python3 on PATH: it must be the server venv's (numpy<2).
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
        }

    def backend_directory(self, into: Path) -> Path:
        """A --backend-directory holding python/ with the backend library, its utilities and
        the stub for this interpreter version (links into the wheel, so nothing is copied)."""
        python = into / "python"
        python.mkdir(parents=True, exist_ok=True)
        sources = [
            self.wheel / "backends" / "python" / "libtriton_python.so",
            self.wheel / "backends" / "python" / "triton_python_backend_utils.py",
            self.wheel / "python_backend_stubs" / self.python_version / "triton_python_backend_stub",
        ]
        for source in sources:
            target = python / source.name
            if not target.exists():
                target.symlink_to(source)
        return into


@lru_cache(maxsize=1)
def locate_install() -> ServerInstall:
    """The server venv, checked; a clear message when install.sh has not run."""
    venv = Path(os.environ.get(SERVER_VENV_ENV, ROOT / ".venv-triton"))
    python = venv / "bin" / "python"
    if not python.exists():
        raise RuntimeError(
            f"no Triton server venv at {venv}: run `make setup` or `bash adapters/triton/install.sh {ROOT / '.venv'}`"
        )
    code = (
        "import json, site, sys, sysconfig;"
        "print(json.dumps([site.getsitepackages()[0], sysconfig.get_config_var('LIBDIR'),"
        " f'{sys.version_info[0]}.{sys.version_info[1]}']))"
    )
    site_packages, libdir, version = json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)
    install = ServerInstall(venv, Path(site_packages), Path(libdir), version)
    if not (install.wheel / "bin" / "tritonserver").exists():
        raise RuntimeError(f"{venv} has no nvidia-pytriton: run bash adapters/triton/install.sh again")
    return install


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example_onnx(kind: str, into: Path) -> Path:
    """The example digits model as ONNX: 'probabilities' (the shipped file), 'logits' (the same
    weights without the softmax), 'fixed4' (probabilities, exported for a batch of exactly 4) or
    'retrained' (output weights 5% larger: the same architecture, different answers)."""
    path = into / f"digits_{kind}.onnx"
    if kind == "probabilities":
        shutil.copyfile(EXAMPLES / "digits.onnx", path)
        return path
    from fimaudit_onnx.build import mlp_to_onnx

    w = np.load(EXAMPLES / "digits_weights.npz")
    last = w["W1"] * np.float32(1.05) if kind == "retrained" else w["W1"]
    output = "logits" if kind == "logits" else "probabilities"
    batch = 4 if kind == "fixed4" else None
    mlp_to_onnx([w["W0"], last], [w["b0"], w["b1"]], activation=str(w["activation"]), output=output,
                input_shape=tuple(int(v) for v in w["input_shape"]), batch=batch, path=path)
    return path


def build_repository(root: Path, models: dict[str, tuple[str, list[Path]]]) -> Path:
    """A model repository: for each name, (config file in test_models/, ONNX file of each version)."""
    repository = root / "models"
    for name, (config, versions) in models.items():
        (repository / name).mkdir(parents=True)
        shutil.copyfile(TEST_MODELS / config, repository / name / "config.pbtxt")
        for number, onnx_path in enumerate(versions, start=1):
            version = repository / name / str(number)
            version.mkdir()
            shutil.copyfile(TEST_MODELS / "model.py", version / "model.py")
            shutil.copyfile(onnx_path, version / "model.onnx")
    return repository


@dataclass
class TritonServer:
    """One tritonserver process serving `repository` on loopback ports chosen at start."""

    repository: Path
    models: list[str]
    workdir: Path
    # Triton's restricted APIs: each rule (API groups, header name, value) makes those groups
    # answer only requests that carry the header (over gRPC: named triton-grpc-protocol-<name>).
    restricted: list[tuple[list[str], str, str]] = field(default_factory=list)
    http_port: int = 0
    grpc_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "tritonserver.log"

    def start(self) -> TritonServer:
        install = locate_install()
        self.http_port, self.grpc_port = free_port(), free_port()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self._command(install), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=install.environment(), cwd=self.workdir, start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self, install: ServerInstall) -> list[str]:
        args = [
            str(install.wheel / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={install.backend_directory(self.workdir / 'backends')}",
            f"--cache-directory={install.wheel / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false", "--exit-timeout-secs=5", "--log-verbose=0",
            # Explicit control: a model that fails to load is an error for that model alone.
            "--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models),
        ]
        for apis, key, value in self.restricted:
            rule = f"{','.join(apis)}:{key}={value}"
            args += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        return args

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited before it was ready:\n{self.log_tail()}")
            if all(self._ready(f"/v2/models/{m}/ready") for m in self.models) and self._ready("/v2/health/ready"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"tritonserver not ready after {READY_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def _ready(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def url(self, model: str, protocol: str = "http", version: str = "") -> str:
        port = self.grpc_port if protocol == "grpc" else self.http_port
        scheme = "triton+grpc" if protocol == "grpc" else "triton"
        return f"{scheme}://127.0.0.1:{port}/{model}" + (f"/{version}" if version else "")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """Stop at once, as a crash would: SIGKILL to the server and its backend stubs.

        A killed server cannot remove the shared-memory regions its stubs used, so they are
        looked up first (each stub names its region on its command line) and removed after."""
        if self.process is None or self.process.poll() is not None:
            return
        regions = _shm_regions(self.process.pid)
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for region in regions:
            (Path("/dev/shm") / region).unlink(missing_ok=True)

    def stop(self) -> None:
        """Clean shutdown (SIGINT), then SIGKILL to the whole group for anything left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        try:  # the group is the server's own session: its stubs, and nothing of anyone else's
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _shm_regions(group: int) -> list[str]:
    """Names of the Python-backend shared-memory regions used by processes of `group`."""
    names = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.getpgid(int(proc.name)) != group:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ProcessLookupError):  # exited meanwhile, or not ours to read
            continue
        names += [a.decode() for a in argv if a.startswith(b"triton_python_backend_shm_region_")]
    return names
