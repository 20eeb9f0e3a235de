"""The ONNX graph builder (fimaudit_onnx.build) against the numpy reference (tests/reference.py):
the graphs it writes, run by a real onnxruntime session, compute the reference's function.

These graphs are the known-answer models of the core's tests (tests/known_models.py), so they are
checked here, beside the adapter that ships the builder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is installed with fimaudit-onnx (adapters/onnx)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is installed with fimaudit-onnx (adapters/onnx)")

from fimaudit_onnx import build  # noqa: E402
from reference import mlp_forward, softmax  # noqa: E402

Params = tuple[list[np.ndarray], list[np.ndarray]]


def _random_mlp(sizes: list[int], seed: int) -> Params:
    """Random weights scaled so tanh units are neither saturated nor linear."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(a, b)) / np.sqrt(a) * 1.5 for a, b in zip(sizes, sizes[1:])]
    biases = [rng.normal(scale=0.3, size=b) for b in sizes[1:]]
    return weights, biases


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """Run a single-output model on CPU (the GPU build also ships this provider)."""
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _ref_probs(params: Params, act: str, x: np.ndarray) -> np.ndarray:
    weights, biases = params
    return softmax(mlp_forward(weights, biases, act, x.reshape(x.shape[0], -1)))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_onnx_float64_matches_reference(activation: str, tmp_path: Path) -> None:
    params = _random_mlp([6, 8, 5, 4], seed=3)
    path = tmp_path / "mlp.onnx"
    build.mlp_to_onnx(*params, activation=activation, input_shape=(2, 3), dtype=np.float64, path=path)
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.onnx"]  # single file
    x = np.random.default_rng(4).normal(size=(10, 2, 3))
    got = _run(path, x)
    assert got.shape == (10, 4) and got.dtype == np.float64
    np.testing.assert_allclose(got, _ref_probs(params, activation, x), rtol=0, atol=1e-12)


def test_onnx_fixed_batch_one() -> None:
    params = _random_mlp([6, 8, 4], seed=8)
    model = build.mlp_to_onnx(*params, activation="tanh", input_shape=(6,), dtype=np.float64, batch=1)
    for value_info in (model.graph.input[0], model.graph.output[0]):
        dim0 = value_info.type.tensor_type.shape.dim[0]
        assert dim0.dim_value == 1 and not dim0.dim_param
    x = np.random.default_rng(9).normal(size=(1, 6))
    np.testing.assert_allclose(_run(model, x), _ref_probs(params, "tanh", x), rtol=0, atol=1e-12)


def test_onnx_logits_output() -> None:
    weights, biases = _random_mlp([6, 8, 4], seed=10)
    model = build.mlp_to_onnx(weights, biases, activation="relu", output="logits", input_shape=(6,), dtype=np.float64)
    assert [o.name for o in model.graph.output] == ["logits"]
    x = np.random.default_rng(11).normal(size=(7, 6))
    expected = mlp_forward(weights, biases, "relu", x)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-12, atol=1e-12)


def test_onnx_float32_matches_reference() -> None:
    params = _random_mlp([12, 16, 5], seed=12)
    model = build.mlp_to_onnx(*params, activation="tanh", input_shape=(1, 3, 4), dtype=np.float32)
    x = np.random.default_rng(13).uniform(size=(20, 1, 3, 4)).astype(np.float32)
    got = _run(model, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _ref_probs(params, "tanh", x), rtol=0, atol=1e-5)


def test_softmax_linear_onnx_matches_closed_form() -> None:
    rng = np.random.default_rng(14)
    W, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    model = build.softmax_linear_to_onnx(W, b, (2, 2), np.float64)
    x = rng.normal(size=(5, 2, 2))
    expected = softmax(x.reshape(5, -1) @ W.T + b)
    np.testing.assert_allclose(_run(model, x), expected, rtol=0, atol=1e-12)


def test_model_metadata() -> None:
    model = build.mlp_to_onnx(*_random_mlp([4, 3], seed=15), input_shape=(4,))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == 8
    assert model.doc_string == "" and model.graph.doc_string == ""
    assert all(n.doc_string == "" for n in model.graph.node)
    assert model.graph.input[0].name == "input"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (5,)}, r"weights\[0\] has shape \(4, 3\); expected \(5, out\)"),  # d does not match weights[0]
        ({"input_shape": (4,), "activation": "gelu"}, r"activation must be one of \['relu', 'tanh'\]"),
        ({"input_shape": (4,), "output": "scores"}, "output must be one of"),
        ({"input_shape": (4,), "dtype": np.float16}, "float32 or float64"),
    ],
)
def test_builder_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build.mlp_to_onnx(*_random_mlp([4, 3], seed=16), **kwargs)
