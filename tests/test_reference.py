"""Checks that the numpy reference math and the ONNX graph builder agree.

The reference is the ground truth for estimator tests, so it is verified
independently: Jacobians against finite differences, the eigen shortcut
against a dense eigendecomposition, and the exported graphs against the
numpy forward pass through a real onnxruntime session.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.reference import (
    exact_mlp_fisher,
    fisher_from_logit_jacobian,
    fisher_top_eig,
    mlp_forward,
    mlp_logit_jacobian,
    softmax,
)

if TYPE_CHECKING:  # only for annotations; see the lazy imports below
    import onnx

Params = tuple[list[np.ndarray], list[np.ndarray]]


def _random_mlp(sizes: list[int], seed: int) -> Params:
    """Random weights scaled so tanh units are neither saturated nor linear."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(a, b)) / np.sqrt(a) * 1.5 for a, b in zip(sizes, sizes[1:])]
    biases = [rng.normal(scale=0.3, size=b) for b in sizes[1:]]
    return weights, biases


def _central_diff_jacobian(
    weights: list[np.ndarray], biases: list[np.ndarray], activation: str, x: np.ndarray, h: float
) -> np.ndarray:
    """(K, d) Jacobian of the logits by central differences, one column per input."""
    d = x.size
    cols = []
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        plus = mlp_forward(weights, biases, activation, (x + e)[None])[0]
        minus = mlp_forward(weights, biases, activation, (x - e)[None])[0]
        cols.append((plus - minus) / (2 * h))
    return np.stack(cols, axis=1)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_jacobian_matches_finite_differences(activation: str) -> None:
    weights, biases = _random_mlp([6, 8, 5, 4], seed=1)
    rng = np.random.default_rng(2)
    for _ in range(5):
        x = rng.normal(size=6)
        J = mlp_logit_jacobian(weights, biases, activation, x)
        assert J.shape == (4, 6) and J.dtype == np.float64
        # h = 1e-5 balances O(h^2) truncation against eps/h round-off (~1e-11).
        J_fd = _central_diff_jacobian(weights, biases, activation, x, h=1e-5)
        assert _rel_err(J, J_fd) < 1e-7


def test_relu_derivative_is_zero_at_kink() -> None:
    # One hidden unit sitting exactly at a = 0 must not pass gradient through.
    weights = [np.array([[1.0, 2.0]]), np.array([[3.0], [5.0]])]
    biases = [np.array([0.0, 1.0]), np.array([0.0])]
    J = mlp_logit_jacobian(weights, biases, "relu", np.array([0.0]))
    np.testing.assert_array_equal(J, [[10.0]])


def test_softmax_is_stable_and_normalised() -> None:
    z = np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]])
    p = softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_eig_matches_dense_fisher(seed: int) -> None:
    weights, biases = _random_mlp([6, 8, 4], seed=seed)
    x = np.random.default_rng(seed + 10).normal(size=6)
    J = mlp_logit_jacobian(weights, biases, "tanh", x)
    p = softmax(mlp_forward(weights, biases, "tanh", x[None]))[0]
    F = fisher_from_logit_jacobian(J, p)
    eigs = np.linalg.eigvalsh(F)
    lam, tr = fisher_top_eig(J, p)
    assert abs(lam - eigs[-1]) <= 1e-10 * abs(eigs[-1])
    assert abs(tr - np.trace(F)) <= 1e-10 * abs(np.trace(F))
    # F is a covariance of score vectors, so it must be PSD of rank <= K - 1.
    assert eigs[0] > -1e-12 * eigs[-1]
    assert np.sum(eigs > 1e-10 * eigs[-1]) <= 3


def test_exact_mlp_fisher_matches_per_sample_dense() -> None:
    weights, biases = _random_mlp([6, 7, 3], seed=5)
    x = np.random.default_rng(6).normal(size=(4, 2, 3))
    lam, tr, p = exact_mlp_fisher(weights, biases, "tanh", x)
    assert lam.shape == tr.shape == (4,) and p.shape == (4, 3)
    for i in range(4):
        J = mlp_logit_jacobian(weights, biases, "tanh", x[i].reshape(-1))
        eigs = np.linalg.eigvalsh(fisher_from_logit_jacobian(J, p[i]))
        np.testing.assert_allclose([lam[i], tr[i]], [eigs[-1], eigs.sum()], rtol=1e-10)


def test_softmax_linear_fisher_closed_form() -> None:
    rng = np.random.default_rng(7)
    W = rng.normal(size=(5, 9))  # (K, d)
    b = rng.normal(size=5)
    x = rng.normal(size=9)
    # A softmax-linear model is a one-layer MLP in the (in, out) convention.
    J = mlp_logit_jacobian([W.T], [b], "tanh", x)
    np.testing.assert_array_equal(J, W)
    p = softmax(W @ x + b)
    closed = W.T @ (np.diag(p) - np.outer(p, p)) @ W
    F = fisher_from_logit_jacobian(J, p)
    np.testing.assert_allclose(F, closed, rtol=1e-12, atol=1e-14)
    lam, tr = fisher_top_eig(J, p)
    expected = [np.linalg.eigvalsh(closed)[-1], np.trace(closed)]
    np.testing.assert_allclose([lam, tr], expected, rtol=1e-10)


# --- ONNX graphs built by fimaudit_onnx.build, executed by onnxruntime ------
# onnx/onnxruntime are imported lazily (fixture, helper) so the pure-numpy
# tests above still run, rather than the whole module being skipped, where
# they are not installed.


@pytest.fixture
def build() -> ModuleType:
    pytest.importorskip("onnx")
    return pytest.importorskip("fimaudit_onnx.build")


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """Run a single-output model on CPU (the GPU build also ships this provider)."""
    ort = pytest.importorskip("onnxruntime")
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _ref_probs(params: Params, act: str, x: np.ndarray) -> np.ndarray:
    weights, biases = params
    return softmax(mlp_forward(weights, biases, act, x.reshape(x.shape[0], -1)))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_onnx_float64_matches_reference(
    activation: str, tmp_path: Path, build: ModuleType
) -> None:
    params = _random_mlp([6, 8, 5, 4], seed=3)
    path = tmp_path / "mlp.onnx"
    build.mlp_to_onnx(
        *params, activation=activation, input_shape=(2, 3), dtype=np.float64, path=path
    )
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.onnx"]  # single file
    x = np.random.default_rng(4).normal(size=(10, 2, 3))
    got = _run(path, x)
    assert got.shape == (10, 4) and got.dtype == np.float64
    np.testing.assert_allclose(got, _ref_probs(params, activation, x), rtol=0, atol=1e-12)


def test_onnx_fixed_batch_one(build: ModuleType) -> None:
    params = _random_mlp([6, 8, 4], seed=8)
    model = build.mlp_to_onnx(
        *params, activation="tanh", input_shape=(6,), dtype=np.float64, batch=1
    )
    for value_info in (model.graph.input[0], model.graph.output[0]):
        dim0 = value_info.type.tensor_type.shape.dim[0]
        assert dim0.dim_value == 1 and not dim0.dim_param
    x = np.random.default_rng(9).normal(size=(1, 6))
    np.testing.assert_allclose(_run(model, x), _ref_probs(params, "tanh", x), rtol=0, atol=1e-12)


def test_onnx_logits_output(build: ModuleType) -> None:
    weights, biases = _random_mlp([6, 8, 4], seed=10)
    model = build.mlp_to_onnx(
        weights, biases, activation="relu", output="logits", input_shape=(6,), dtype=np.float64
    )
    assert [o.name for o in model.graph.output] == ["logits"]
    x = np.random.default_rng(11).normal(size=(7, 6))
    expected = mlp_forward(weights, biases, "relu", x)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-12, atol=1e-12)


def test_onnx_float32_matches_reference(build: ModuleType) -> None:
    params = _random_mlp([12, 16, 5], seed=12)
    model = build.mlp_to_onnx(
        *params, activation="tanh", input_shape=(1, 3, 4), dtype=np.float32
    )
    x = np.random.default_rng(13).uniform(size=(20, 1, 3, 4)).astype(np.float32)
    got = _run(model, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _ref_probs(params, "tanh", x), rtol=0, atol=1e-5)


def test_softmax_linear_onnx_matches_closed_form(build: ModuleType) -> None:
    rng = np.random.default_rng(14)
    W, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    model = build.softmax_linear_to_onnx(W, b, (2, 2), np.float64)
    x = rng.normal(size=(5, 2, 2))
    expected = softmax(x.reshape(5, -1) @ W.T + b)
    np.testing.assert_allclose(_run(model, x), expected, rtol=0, atol=1e-12)


def test_model_metadata(build: ModuleType) -> None:
    import onnx

    model = build.mlp_to_onnx(*_random_mlp([4, 3], seed=15), input_shape=(4,))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == 8
    assert model.doc_string == "" and model.graph.doc_string == ""
    assert all(n.doc_string == "" for n in model.graph.node)
    assert model.graph.input[0].name == "input"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_builder_rejects_bad_arguments(build: ModuleType) -> None:
    params = _random_mlp([4, 3], seed=16)
    bad_kwargs = [
        {"input_shape": (5,)},  # d does not match weights[0]
        {"input_shape": (4,), "activation": "gelu"},
        {"input_shape": (4,), "output": "scores"},
        {"input_shape": (4,), "dtype": np.float16},
    ]
    for kwargs in bad_kwargs:
        with pytest.raises(ValueError):
            build.mlp_to_onnx(*params, **kwargs)
