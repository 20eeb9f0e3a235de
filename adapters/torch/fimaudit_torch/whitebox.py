"""The white-box reference: λ_max(F) and tr F from a model's own derivatives (MATH.md, estimator 5).

With logits z(x) (K) and p = softmax(z), F = J_zᵀ (diag p − ppᵀ) J_z = AᵀA where
A = M J_z and M = diag(√p)(I − 1pᵀ). Row i of A is the vector-Jacobian product of J_z with the
cotangent M[i], so A costs K VJPs (batched with torch.func.vmap), and λ_max(F) = λ_max(AAᵀ) is a
K×K eigenproblem. For many classes the K×d matrix A gets large; Lanczos (ARPACK's eigsh) then needs
only products F v = J_zᵀ (p ⊙ u − p (pᵀu)) with u = J_z v: one JVP and one VJP each.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from fimaudit.errors import UsageError

# Past this many classes the K×d matrix A is avoided and λ_max comes from Lanczos.
LANCZOS_MIN_CLASSES = 65
# Rows of A computed at once when only their squared norms are needed (the trace).
TRACE_CHUNK = 32
Logits = Callable[[torch.Tensor], torch.Tensor]


class WhiteBoxFisher(NamedTuple):
    """One input's exact figures. `method` says how λ_max was obtained ("jacobian" or "lanczos",
    suffixed "-float32" when the model could not run in float64); the trace is exact either way."""

    lambda_max: float
    trace: float
    method: str


def exact_fisher(logits: Logits, x: torch.Tensor, *, method: str = "auto", precision: str = "float64") -> WhiteBoxFisher:
    """λ_max(F) and tr F at the flat input `x` (d,), for `logits`: flat input -> (K,) logits."""
    z, vjp_fn = _vjp(logits, x)
    p = torch.softmax(z.detach(), dim=0)
    chosen = _resolve(method, p.numel())
    if chosen == "jacobian":
        a = _score_rows(vjp_fn, p, 0, p.numel())
        gram = (a @ a.T).to(torch.float64)
        lam = float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0))
        trace = float(torch.trace(gram))
    else:
        lam = _lanczos_top(logits, x, p, vjp_fn)
        trace = _trace(vjp_fn, p)
    suffix = "" if precision == "float64" else f"-{precision}"
    return WhiteBoxFisher(lam, trace, chosen + suffix)


def _resolve(method: str, classes: int) -> str:
    if method == "auto":
        return "lanczos" if classes >= LANCZOS_MIN_CLASSES else "jacobian"
    if method not in ("jacobian", "lanczos"):
        raise UsageError(f"method must be auto, jacobian or lanczos (got {method!r}).", "omit it for auto")
    return method


def _score_rows(vjp_fn: Callable, p: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of A = diag(√p)(I − 1pᵀ) J_z, one batched VJP per row."""
    k = p.numel()
    eye = torch.eye(k, dtype=p.dtype, device=p.device)[start:stop]
    cotangents = p[start:stop].sqrt()[:, None] * (eye - p[None, :])
    (rows,) = torch.func.vmap(vjp_fn)(cotangents)
    return rows.detach().reshape(stop - start, -1)


def _trace(vjp_fn: Callable, p: torch.Tensor) -> float:
    """tr F = ‖A‖_F², accumulated over chunks of rows so A is never held whole."""
    total = 0.0
    for start in range(0, p.numel(), TRACE_CHUNK):
        rows = _score_rows(vjp_fn, p, start, min(p.numel(), start + TRACE_CHUNK))
        total += float((rows.to(torch.float64) ** 2).sum())
    return total


def _lanczos_top(logits: Logits, x: torch.Tensor, p: torch.Tensor, vjp_fn: Callable) -> float:
    """The largest eigenvalue of F by ARPACK on the matrix-free operator v -> F v."""
    d = x.numel()

    def matvec(v: np.ndarray) -> np.ndarray:
        tangent = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(x.device, x.dtype)
        u = torch.func.jvp(logits, (x,), (tangent,))[1]
        w = p * u - p * (p @ u)
        (fv,) = vjp_fn(w.to(p.dtype))
        return fv.detach().to("cpu", torch.float64).numpy().reshape(-1)

    operator = LinearOperator((d, d), matvec=matvec, dtype=np.float64)
    # A fixed start vector: ARPACK's own is random, and the same input must give the same figure.
    start = np.random.default_rng(0).standard_normal(d)
    top = eigsh(operator, k=1, which="LA", v0=start, return_eigenvectors=False)
    return max(float(top[0]), 0.0)


def _vjp(fn: Logits, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], tuple[torch.Tensor, ...]]]:
    # torch.func.vjp returns (output, vjp_fn) without has_aux; its annotation also allows the
    # three-tuple of has_aux=True, which is never asked for here.
    result = torch.func.vjp(fn, x)
    return result[0], result[1]
