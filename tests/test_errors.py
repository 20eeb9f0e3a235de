"""Every bad input gets a typed error that names the problem and the fix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import KnownModel
from onnx import TensorProto, helper

import fimaudit
import fimaudit.conformance
from fimaudit import CallableModel, InputSpec
from fimaudit.errors import AdapterNotFoundError, DataError, ModelError, OutputError, QueryError, UsageError


def _graph_model(path: Path, nodes: list, out_name: str = "out", k: int = 3) -> Path:
    """A one-input ONNX graph: input (N, 4) float32 -> nodes -> out (N, k)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, k], np.linspace(-1, 1, 4 * k).astype(np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["z"]), *nodes],
        "hostile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", k])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


X4 = np.random.default_rng(0).uniform(0, 1, (3, 4)).astype(np.float32)


def test_wrong_shape_names_the_expected_shape(mlp64: KnownModel) -> None:
    model = fimaudit.load_model(mlp64.path)
    with pytest.raises(DataError, match=r"\(n, 3, 8, 8\)") as info:
        fimaudit.audit(model, mlp64.x.reshape(20, -1))
    assert "reshape" in info.value.fix
    with pytest.raises(DataError, match="shape"):
        fimaudit.audit(model, np.zeros((2, 8, 8, 3)))


def test_single_input_without_batch_axis_is_accepted(mlp64: KnownModel) -> None:
    report = fimaudit.audit(fimaudit.load_model(mlp64.path), mlp64.x[0], directions=8)
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
        fimaudit.audit(fimaudit.load_model(mlp64.path), bad)


@pytest.mark.parametrize(
    "kwargs",
    [{"directions": 1}, {"scheme": "backward"}, {"estimator": "magic"}, {"tau": -1.0}, {"step": 0.0}, {"limit": 0}],
)
def test_bad_options(mlp64: KnownModel, kwargs: dict) -> None:
    with pytest.raises(UsageError):
        fimaudit.audit(fimaudit.load_model(mlp64.path), mlp64.x, **kwargs)


def test_logits_declared_as_probabilities(mlp64_logits: KnownModel) -> None:
    model = fimaudit.load_model(mlp64_logits.path, outputs="probabilities")
    with pytest.raises(OutputError) as info:
        fimaudit.audit(model, mlp64_logits.x[:2])
    assert "logits" in info.value.fix


def test_nan_outputs(tmp_path: Path) -> None:
    # sqrt(-(1 + |z|)) is NaN everywhere
    nodes = [
        helper.make_node("Abs", ["z"], ["a"]),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [1.0])),
        helper.make_node("Add", ["a", "one"], ["b"]),
        helper.make_node("Neg", ["b"], ["c"]),
        helper.make_node("Sqrt", ["c"], ["out"]),
    ]
    model = fimaudit.load_model(_graph_model(tmp_path / "nan.onnx", nodes), outputs="probabilities")
    with pytest.raises(OutputError, match="non-finite"):
        fimaudit.audit(model, X4)


def test_unnormalised_nonnegative_outputs(tmp_path: Path) -> None:
    nodes = [helper.make_node("Sigmoid", ["z"], ["out"])]  # one-vs-rest scores: rows do not sum to 1
    path = _graph_model(tmp_path / "sigmoid.onnx", nodes)
    with pytest.raises(OutputError, match="neither probabilities nor logits"):  # one-vs-rest scores are neither
        fimaudit.load_model(path)
    with pytest.raises(OutputError, match="sum to"):
        fimaudit.audit(fimaudit.load_model(path, outputs="probabilities"), X4)


def test_softmax_graph_detected_as_probabilities(tmp_path: Path) -> None:
    path = _graph_model(tmp_path / "soft.onnx", [helper.make_node("Softmax", ["z"], ["out"], axis=-1)])
    model = fimaudit.load_model(path)
    assert model.output_kind == "probabilities" and model.num_classes == 3
    fimaudit.conformance.check_model(model)


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


def test_missing_and_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        fimaudit.load_model(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match="cannot load"):
        fimaudit.load_model(corrupt)


def test_unknown_output_name(mlp64: KnownModel) -> None:
    with pytest.raises(UsageError, match="no output named"):
        fimaudit.load_model(mlp64.path, output_name="nope")


def test_conformance_suite_passes_and_catches_a_broken_model(mlp32: KnownModel, mlp64_batch1: KnownModel) -> None:
    fimaudit.conformance.check_model(fimaudit.load_model(mlp32.path))
    fimaudit.conformance.check_model(fimaudit.load_model(mlp64_batch1.path))
    rng = np.random.default_rng(0)

    def noisy_fn(batch: np.ndarray) -> np.ndarray:
        e = rng.normal(0, 1e-3, (len(batch), 1))
        return np.hstack([0.5 + e, 0.5 - e])  # valid probabilities, but never the same twice

    noisy = CallableModel(noisy_fn, InputSpec(shape=(4,), dtype="float64"), num_classes=2)
    with pytest.raises(fimaudit.conformance.ConformanceError):
        fimaudit.conformance.check_model(noisy)
