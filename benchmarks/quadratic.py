"""Section 1b of benchmarks/robustness.py: is KL(p(x) ‖ p(x+εu)) ≈ ½ε²·uᵀF(x)u, and up to which ε?

All computations use a float64 copy of the network, so that KL values down to ~1e-12 are resolved
(at ε = 0.01·ε_τ the quadratic KL is 1e-4·τ = 1e-6). Perturbations are not clipped to the input box:
this is a check of the local geometry that λ_max describes, not of valid images.

For each sample: along ±v (v the white-box top eigenvector of F) and a few random unit directions r,
KL on a log-spaced grid of ε/ε_τ; where the ratio KL / (½ε²·uᵀFu) stays in [0.5, 2]; the ε at which
KL along ±v first reaches τ; and the ε at which the *worst* direction reaches τ,
ε* = min{ε : max_{‖δ‖≤ε} KL(p(x) ‖ p(x+δ)) ≥ τ}, found by projected gradient ascent on the sphere
(started from ±εv) inside a bisection on ε. ε* is what a certificate "no L2 perturbation below ε
moves the prediction by more than τ nats" would have to get right; PGD finds a lower bound on the
max KL, so the ε* found is an upper bound on the true one (a too-generous reference, if anything).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

RATIO_BAND = (0.5, 2.0)


def kl_batch(net64: nn.Module, x: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
    """KL(p(x) ‖ p(xp)) row by row (x broadcast against xp), float64."""
    lp = torch.log_softmax(net64(x), dim=-1)
    lq = torch.log_softmax(net64(xp), dim=-1)
    return (lp.exp() * (lp - lq)).sum(dim=-1)


def kl_curves(net64: nn.Module, x: np.ndarray, dirs: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """KL at x + ε·u for each direction u (rows of dirs) and each ε: shape (len(dirs), len(eps))."""
    xt = torch.from_numpy(x.astype(np.float64))[None]
    pts = x[None, None, :] + eps[None, :, None] * dirs[:, None, :]
    with torch.no_grad():
        kl = kl_batch(net64, xt, torch.from_numpy(pts.reshape(-1, x.size)))
    return kl.numpy().reshape(len(dirs), len(eps))


def holds_up_to(ratio: np.ndarray, grid: np.ndarray) -> float:
    """The largest grid value g such that the ratio is within RATIO_BAND at every grid point ≤ g
    (0 when it already fails at the first point)."""
    ok = (ratio >= RATIO_BAND[0]) & (ratio <= RATIO_BAND[1])
    bad = np.flatnonzero(~ok)
    if len(bad) == 0:
        return float(grid[-1])
    return float(grid[bad[0] - 1]) if bad[0] > 0 else 0.0


def crossing_along(net64: nn.Module, x: np.ndarray, u: np.ndarray, tau: float, start: float) -> float | None:
    """The smallest ε on a fine log grid (then bisected) where KL(x, x+εu) reaches τ; None if it
    does not within 1000·start."""
    grid = start * np.logspace(-3, 3, 241)
    kl = kl_curves(net64, x, u[None], grid)[0]
    hit = np.flatnonzero(kl >= tau)
    if len(hit) == 0:
        return None
    if hit[0] == 0:
        return float(grid[0])
    lo, hi = grid[hit[0] - 1], grid[hit[0]]
    for _ in range(30):
        mid = np.sqrt(lo * hi)
        if kl_curves(net64, x, u[None], np.array([mid]))[0, 0] >= tau:
            hi = mid
        else:
            lo = mid
    return float(np.sqrt(lo * hi))


def max_kl_on_sphere(net64: nn.Module, x: torch.Tensor, v: torch.Tensor, eps: torch.Tensor, steps: int = 40) -> torch.Tensor:
    """max over ‖δ‖ = ε of KL(p(x) ‖ p(x+δ)), per row, by normalized-gradient ascent projected on the
    sphere, from the better of ±εv; returns the best value seen (a lower bound on the max)."""
    with torch.no_grad():
        starts = [s * v * eps[:, None] for s in (1.0, -1.0)]
        vals = [kl_batch(net64, x, x + d) for d in starts]
        delta = torch.where((vals[0] >= vals[1])[:, None], starts[0], starts[1])
        best = torch.maximum(vals[0], vals[1])
    for t in range(steps):
        delta = delta.detach().requires_grad_(True)
        kl = kl_batch(net64, x, x + delta)
        (grad,) = torch.autograd.grad(kl.sum(), delta)
        with torch.no_grad():
            best = torch.maximum(best, kl.detach())
            step = 0.3 * eps * (1 - t / steps)  # a decaying step, relative to the radius
            delta = delta + step[:, None] * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            delta = delta * (eps / delta.norm(dim=1).clamp_min(1e-300))[:, None]
    with torch.no_grad():
        return torch.maximum(best, kl_batch(net64, x, x + delta))


def worst_case_radius(net64: nn.Module, x: np.ndarray, v: np.ndarray, upper: np.ndarray, tau: float, iters: int = 20) -> np.ndarray:
    """ε* per row: bisection (in log ε) between upper/1e6 and upper, where `upper` is the ε at which
    KL along ±v reaches τ (so the worst direction reaches τ there or sooner). The wide bracket matters:
    on saturated inputs the worst direction can reach τ 100 times sooner than ±v."""
    xt, vt = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(v.astype(np.float64))
    lo, hi = np.log(upper / 1e6), np.log(upper)
    for _ in range(iters):
        mid = (lo + hi) / 2
        reached = max_kl_on_sphere(net64, xt, vt, torch.from_numpy(np.exp(mid))).numpy() >= tau
        hi = np.where(reached, mid, hi)
        lo = np.where(reached, lo, mid)
    return np.exp((lo + hi) / 2)


def analyse(net64: nn.Module, x: np.ndarray, a: np.ndarray, lam: np.ndarray, vtop: np.ndarray, tau: float,
            grid: np.ndarray, randoms: int, seed: int) -> dict:
    """Section 1b for one model: x (n, d), A matrices (n, K, d), white-box λ_max and top eigenvectors."""
    rng = np.random.default_rng(seed)
    eps_tau = np.sqrt(2 * tau / lam)
    curves_top, curves_rand, holds_top, holds_rand, along_v = [], [], [], [], []
    for i in range(len(x)):
        r = rng.standard_normal((randoms, x.shape[1]))
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        dirs = np.vstack([vtop[i], -vtop[i], r])
        quad_lam = ((a[i] @ dirs.T) ** 2).sum(axis=0)  # uᵀFu = ‖Au‖²
        eps = grid * eps_tau[i]
        kl = kl_curves(net64, x[i], dirs, eps)
        ratio = kl / (0.5 * eps[None, :] ** 2 * quad_lam[:, None])
        curves_top.append({"kl": kl[:2].tolist(), "ratio": ratio[:2].tolist()})
        curves_rand.append({"kl": kl[2:].tolist(), "ratio": ratio[2:].tolist(), "lambda_rel": (quad_lam[2:] / lam[i]).tolist()})
        holds_top += [holds_up_to(ratio[j], grid) for j in range(2)]
        holds_rand += [holds_up_to(ratio[j], grid) for j in range(2, len(dirs))]
        hits = [crossing_along(net64, x[i], s * vtop[i], tau, eps_tau[i]) for s in (1.0, -1.0)]
        along_v.append(min(h for h in hits if h is not None) if any(h is not None for h in hits) else np.nan)
    along_v = np.array(along_v)
    ok = np.isfinite(along_v)
    worst = np.full(len(x), np.nan)
    if ok.any():
        worst[ok] = worst_case_radius(net64, x[ok], vtop[ok], along_v[ok], tau)
    return {
        "grid": grid.tolist(), "eps_tau_white_box": eps_tau.tolist(), "curves_top": curves_top, "curves_random": curves_rand,
        "holds_top": holds_top, "holds_random": holds_rand, "eps_star_along_v": along_v.tolist(), "eps_star_worst": worst.tolist(),
    }
