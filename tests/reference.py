"""Exact input-Fisher quantities for MLP classifiers, in plain float64 numpy.

This module is deliberately independent of onnx and of fimaudit itself: it is
the ground truth that the black-box estimators are tested and benchmarked
against, so it must not share code paths with them.

Conventions (scikit-learn's): weights[l] has shape (in, out), hidden layers
apply the activation, the last layer is linear and softmax gives p.
The input Fisher information of a categorical output is
    F(x) = J_z^T (diag p - p p^T) J_z,   J_z = d logits / d x.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "softmax",
    "mlp_forward",
    "mlp_logit_jacobian",
    "fisher_from_logit_jacobian",
    "fisher_top_eig",
    "exact_mlp_fisher",
]

Weights = Sequence[np.ndarray]


def _as64(arrays: Weights) -> list[np.ndarray]:
    """Upcast parameters so float32 models still get float64 references."""
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _act(activation: str, a: np.ndarray) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(a)
    if activation == "relu":
        return np.maximum(a, 0.0)
    raise ValueError(f"unknown activation {activation!r}")


def _act_grad(activation: str, a: np.ndarray) -> np.ndarray:
    """Elementwise derivative. ReLU takes 0 at a == 0, the same convention as
    PyTorch/JAX autodiff, so references agree with gradient-based tools."""
    if activation == "tanh":
        t = np.tanh(a)
        return 1.0 - t * t
    if activation == "relu":
        return (a > 0.0).astype(np.float64)
    raise ValueError(f"unknown activation {activation!r}")


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, shifted by the max to avoid overflow."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mlp_forward(
    weights: Weights, biases: Weights, activation: str, x_flat: np.ndarray
) -> np.ndarray:
    """Logits (n, K) for flattened inputs x_flat (n, d)."""
    ws, bs = _as64(weights), _as64(biases)
    h = np.asarray(x_flat, dtype=np.float64)
    for w, b in zip(ws[:-1], bs[:-1]):
        h = _act(activation, h @ w + b)
    return h @ ws[-1] + bs[-1]


def mlp_logit_jacobian(
    weights: Weights, biases: Weights, activation: str, x_flat_single: np.ndarray
) -> np.ndarray:
    """Analytic d logits / d x, shape (K, d), for one flattened input (d,).

    Chain rule J_z = W_L^T diag(s'(a_{L-1})) W_{L-1}^T ... diag(s'(a_1)) W_1^T,
    accumulated from the input side so each step is a (h_l, d) matrix.
    """
    ws, bs = _as64(weights), _as64(biases)
    h = np.asarray(x_flat_single, dtype=np.float64).reshape(-1)
    jac = ws[0].T  # d a_1 / d x
    a = h @ ws[0] + bs[0]
    for w, b in zip(ws[1:], bs[1:]):
        jac = w.T @ (_act_grad(activation, a)[:, None] * jac)
        a = _act(activation, a) @ w + b
    return jac


def fisher_from_logit_jacobian(J_z: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Explicit d x d Fisher matrix J_z^T (diag p - p p^T) J_z (for tests)."""
    J_z = np.asarray(J_z, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    cov = np.diag(p) - np.outer(p, p)
    return J_z.T @ cov @ J_z


def _score_rows(J_z: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A = diag(sqrt p) (J_z - 1 p^T J_z); row k is sqrt(p_k) grad log p_k.

    A^T A = F because sum(p) = 1 cancels the cross terms, so F's spectrum can
    be read off the small K x K Gram matrix A A^T.
    """
    J_z = np.asarray(J_z, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    centred = J_z - (p @ J_z)[None, :]
    return np.sqrt(p)[:, None] * centred


def fisher_top_eig(J_z: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(lambda_max, trace) of F without forming the d x d matrix."""
    A = _score_rows(J_z, p)
    gram = A @ A.T
    lam_max = float(np.linalg.eigvalsh(gram)[-1])
    trace = float(np.sum(A * A))
    return lam_max, trace


def exact_mlp_fisher(
    weights: Weights, biases: Weights, activation: str, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample (lambda_max (n,), trace (n,), p (n, K)) for x of shape (n, *shape)."""
    x = np.asarray(x, dtype=np.float64)
    x_flat = x.reshape(x.shape[0], -1)
    p = softmax(mlp_forward(weights, biases, activation, x_flat))
    lam = np.empty(x.shape[0])
    tr = np.empty(x.shape[0])
    for i, xi in enumerate(x_flat):
        J_z = mlp_logit_jacobian(weights, biases, activation, xi)
        lam[i], tr[i] = fisher_top_eig(J_z, p[i])
    return lam, tr, p
