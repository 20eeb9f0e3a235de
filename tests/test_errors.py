"""Every bad input gets a typed error that names the problem and the fix.

Models are held in memory (CallableModel): these are the core's errors. What the ONNX adapter
refuses when it opens a file is tested in adapters/onnx/tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from known_models import KnownModel

import fimaudit
import fimaudit.conformance
from fimaudit import CallableModel, InputSpec
from fimaudit.errors import AdapterNotFoundError, DataError, OutputError, QueryError, UsageError
from fimaudit.outputs import output_form

X4 = np.random.default_rng(0).uniform(0, 1, (3, 4)).astype(np.float32)
SPEC4 = InputSpec(shape=(4,), dtype="float32")
W4 = np.linspace(-1, 1, 12).astype(np.float32).reshape(4, 3)  # input (n, 4) -> 3 outputs


def one_vs_rest(batch: np.ndarray) -> np.ndarray:
    """Independent per-class sigmoid scores: each in [0, 1], rows not summing to 1."""
    return 1 / (1 + np.exp(-(batch @ W4)))


def test_wrong_shape_names_the_expected_shape(mlp64: KnownModel) -> None:
    model = mlp64.model()
    with pytest.raises(DataError, match=r"\(n, 3, 8, 8\)") as info:
        fimaudit.audit(model, mlp64.x.reshape(20, -1))
    assert "reshape" in info.value.fix
    with pytest.raises(DataError, match="shape"):
        fimaudit.audit(model, np.zeros((2, 8, 8, 3)))


def test_single_input_without_batch_axis_is_accepted(mlp64: KnownModel) -> None:
    report = fimaudit.audit(mlp64.model(), mlp64.x[0], directions=8)
    assert report.summary.n == 1


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (np.full((2, 3, 8, 8), np.nan), "NaN or infinite"),
        (np.full((2, 3, 8, 8), np.inf), "NaN or infinite"),
        (np.zeros((0, 3, 8, 8)), "empty"),
        (np.array([["a"] * 192]).reshape(1, 3, 8, 8), "not numbers"),
    ],
)
def test_bad_data_values(mlp64: KnownModel, bad: np.ndarray, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        fimaudit.audit(mlp64.model(), bad)


@pytest.mark.parametrize(
    "kwargs",
    [{"directions": 1}, {"scheme": "backward"}, {"estimator": "magic"}, {"tau": -1.0}, {"step": 0.0}, {"limit": 0}],
)
def test_bad_options(mlp64: KnownModel, kwargs: dict) -> None:
    with pytest.raises(UsageError):
        fimaudit.audit(mlp64.model(), mlp64.x, **kwargs)


def test_logits_declared_as_probabilities(mlp64_logits: KnownModel) -> None:
    model = mlp64_logits.model(outputs="probabilities")
    with pytest.raises(OutputError) as info:
        fimaudit.audit(model, mlp64_logits.x[:2])
    assert "logits" in info.value.fix


def test_nan_outputs() -> None:
    model = CallableModel(lambda b: np.full((len(b), 3), np.nan, np.float32), SPEC4, 3, output_dtype="float32")
    with pytest.raises(OutputError, match="non-finite"):
        fimaudit.audit(model, X4)


def test_unnormalised_nonnegative_outputs() -> None:
    # What an adapter asks when no output kind is declared: one-vs-rest scores are neither kind.
    with pytest.raises(OutputError, match="neither probabilities nor logits"):
        output_form(3, None, lambda: one_vs_rest(X4))
    declared = CallableModel(one_vs_rest, SPEC4, 3, outputs="probabilities", output_dtype="float32")
    with pytest.raises(OutputError, match="sum to"):
        fimaudit.audit(declared, X4)


def test_outputs_of_wrong_shape_and_negative_values() -> None:
    spec = InputSpec(shape=(4,), dtype="float64")
    wrong_k = CallableModel(lambda b: np.full((len(b), 5), 0.2), spec, num_classes=3)
    with pytest.raises(OutputError, match=r"shape \(\d+, 5\); expected \(\d+, 3\)"):
        fimaudit.audit(wrong_k, X4)
    negative = CallableModel(lambda b: np.tile([1.5, -0.5], (len(b), 1)), spec, num_classes=2)
    with pytest.raises(OutputError, match="negative"):
        fimaudit.audit(negative, X4)


def test_adapter_exception_becomes_query_error() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    model = CallableModel(broken, InputSpec(shape=(4,), dtype="float64"), num_classes=2)
    with pytest.raises(QueryError, match="device lost"):
        fimaudit.audit(model, X4)


def test_no_adapter_lists_installed_and_suggests_package(tmp_path: Path) -> None:
    with pytest.raises(AdapterNotFoundError) as info:
        fimaudit.load_model(tmp_path / "model.tflite")
    assert "onnx (.onnx)" in info.value.message
    # which distribution to install, for references whose adapter may be missing
    from fimaudit.registry import _install_hint

    assert "fimaudit-torch" in _install_hint("net.pt2")
    assert "fimaudit-triton" in _install_hint("triton+grpc://127.0.0.1:8001/digits")


def test_conformance_suite_passes_and_catches_a_broken_model(mlp32: KnownModel, mlp64_batch1: KnownModel) -> None:
    # Real files pass it too: adapters/onnx/tests runs it on the ONNX files of these networks.
    fimaudit.conformance.check_model(mlp32.model())
    fimaudit.conformance.check_model(mlp64_batch1.model())
    rng = np.random.default_rng(0)

    def noisy_fn(batch: np.ndarray) -> np.ndarray:
        e = rng.normal(0, 1e-3, (len(batch), 1))
        return np.hstack([0.5 + e, 0.5 - e])  # valid probabilities, but never the same twice

    noisy = CallableModel(noisy_fn, InputSpec(shape=(4,), dtype="float64"), num_classes=2)
    with pytest.raises(fimaudit.conformance.ConformanceError):
        fimaudit.conformance.check_model(noisy)
