"""Checks of the numpy reference math (reference.py).

The reference is the ground truth for estimator tests, so it is verified
independently: Jacobians against finite differences, the eigen shortcut
against a dense eigendecomposition. The ONNX graphs built from the same
weights are checked against it in adapters/onnx/tests/test_onnx_build.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import (
    exact_mlp_fisher,
    fisher_from_logit_jacobian,
    fisher_top_eig,
    mlp_forward,
    mlp_logit_jacobian,
    softmax,
)

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
