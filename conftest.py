"""Settings and fixtures shared by every test folder: the core's tests/ and each adapter's
adapters/<name>/tests/ (pyproject's testpaths lists them all).

It sits at the repository root so that pytest loads it for every one of those folders. The
known-answer models themselves are in tests/known_models.py, a plain module (pyproject puts tests/
on sys.path), so a test imports what it needs (`from known_models import KnownModel`) instead of
importing this file. The fixtures below build them once per session; `model()` gives the in-memory
CallableModel, and `.path` writes the ONNX file only when a test asks for it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from known_models import KnownModel, make_known

# CI replays the same examples every run (a red CI blocks landing); locally they vary.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


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
