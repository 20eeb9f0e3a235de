"""Real ONNX models built from known weights, so every figure has an independent exact reference."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import os

import numpy as np
import pytest
from hypothesis import settings
from fimaudit_onnx.build import mlp_to_onnx

import reference

# CI replays the same examples every run (a red CI blocks landing); locally they vary.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@dataclass(frozen=True)
class KnownModel:
    """An ONNX file plus the weights it was built from and a few inputs."""

    path: Path
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activation: str
    x: np.ndarray

    def exact(self, x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lambda_max, trace, p) per input, from the analytic Jacobian."""
        return reference.exact_mlp_fisher(self.weights, self.biases, self.activation, self.x if x is None else x)


def make_known(
    directory: Path, name: str, *, hidden: tuple[int, ...], shape: tuple[int, ...], classes: int,
    dtype: type = np.float64, activation: str = "tanh", output: str = "probabilities",
    batch: int | None = None, n: int = 12, seed: int = 0, scale: float = 1.0,
) -> KnownModel:
    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(shape)), *hidden, classes]
    weights = [(rng.standard_normal((a, b)) * scale / np.sqrt(a)).astype(dtype) for a, b in zip(sizes, sizes[1:])]
    biases = [(0.1 * rng.standard_normal(b)).astype(dtype) for b in sizes[1:]]
    path = directory / f"{name}.onnx"
    mlp_to_onnx(weights, biases, activation=activation, output=output, input_shape=shape, dtype=dtype, batch=batch, path=path)
    x = rng.uniform(0, 1, size=(n, *shape)).astype(dtype)
    return KnownModel(path, weights, biases, activation, x)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def linear64(models_dir: Path) -> KnownModel:
    """p = softmax(W x + b): F = W^T (diag p - p p^T) W in closed form; d = 24."""
    return make_known(models_dir, "linear64", hidden=(), shape=(2, 3, 4), classes=5, scale=3.0)


@pytest.fixture(scope="session")
def mlp64(models_dir: Path) -> KnownModel:
    """A float64 tanh MLP with d = 192 > the directions used, so the sketch is exercised."""
    return make_known(models_dir, "mlp64", hidden=(16,), shape=(3, 8, 8), classes=6, scale=3.0, n=20)


@pytest.fixture(scope="session")
def mlp32(models_dir: Path) -> KnownModel:
    return make_known(models_dir, "mlp32", hidden=(16,), shape=(3, 8, 8), classes=6, dtype=np.float32, scale=3.0)


@pytest.fixture(scope="session")
def mlp64_batch1(models_dir: Path) -> KnownModel:
    return make_known(models_dir, "mlp64_b1", hidden=(16,), shape=(3, 8, 8), classes=6, scale=3.0, n=20, batch=1)


@pytest.fixture(scope="session")
def mlp64_logits(models_dir: Path) -> KnownModel:
    return make_known(models_dir, "mlp64_logits", hidden=(16,), shape=(3, 8, 8), classes=6, scale=3.0, n=20, output="logits")
