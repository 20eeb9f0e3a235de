"""Certified Lipschitz constants of the pieces a classifier is built from (docs/math.md, "Bounds from the graph").

Everything here is an UPPER bound computed in closed form or by an exact finite computation in
float64, never an iterative estimate that approaches the norm from below:

- activations: the supremum of |σ'| over ℝ (global) or over an interval (local), from the points
  where |σ'| can peak (kinks, zeros of σ''), which are known in closed form or found by bisection;
- convolutions: the largest singular value of the kernel's Fourier transform on a grid where the
  zero-padded convolution embeds in a circular one, with the stride's aliasing taken exactly;
- linear maps: the exact spectral norm (SVD), nonnegative averaging maps: √(‖A‖₁‖A‖∞).

Computed norms are multiplied by (1 + fimaudit.lipschitz_bound.SAFETY) to absorb float64 rounding.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fimaudit.lipschitz_bound import SELU_ALPHA, SELU_SCALE
from fimaudit.lipschitz_bound import up as _up

Tensor = torch.Tensor


# ── activations ──────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Activation:
    """An elementwise σ. `slope(t)` = |σ'(t)| (either one-sided value at a kink); `peaks` lists
    every t where |σ'| can have a local maximum (kinks with their larger one-sided |σ'|, extrema
    of σ'), so that sup over [lo, hi] = max(|σ'(lo)|, |σ'(hi)|, peaks inside). `kinks` are the
    points where σ' jumps (the Jacobian is constant between them when σ is piecewise linear).
    |σ(t)| ≤ min(grow·|t| + offset, cap) bounds its output's size."""

    name: str
    lipschitz: float
    slope: Callable[[Tensor], Tensor]
    peaks: tuple[tuple[float, float], ...]
    kinks: tuple[float, ...] = ()
    piecewise_linear: bool = False
    grow: float = 1.0
    offset: float = 0.0
    cap: float = math.inf
    nonnegative_slopes: bool = False  # σ' ≥ 0 everywhere: two slopes differ by at most the larger

    def local_slope(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Elementwise sup of |σ'| over [lo, hi]."""
        best = torch.maximum(self.slope(lo), self.slope(hi))
        for t, value in self.peaks:
            inside = (lo <= t) & (t <= hi)
            best = torch.where(inside, torch.clamp(best, min=value), best)
        return best

    def crosses_kink(self, lo: Tensor, hi: Tensor) -> bool:
        """True when some element's interval touches a kink: the Jacobian may change inside."""
        return any(bool(((lo <= t) & (t <= hi)).any()) for t in self.kinks)


def _normal_pdf(t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _normal_cdf(t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


def _gelu_slope(t: Tensor) -> Tensor:
    return (_normal_cdf(t) + t * _normal_pdf(t)).abs()


def _silu_slope(t: Tensor) -> Tensor:
    s = torch.sigmoid(t)
    return (s * (1 + t * (1 - s))).abs()


def _bisect(f: Callable[[float], float], lo: float, hi: float) -> float:
    """A root of f on [lo, hi] (f changes sign there) to float64 resolution."""
    flo = f(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if (f(mid) > 0) == (flo > 0):
            lo, flo = mid, f(mid)
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _extrema_of_slope(derivative: Callable[[Tensor], Tensor], span: float = 12.0) -> list[float]:
    """Zeros of σ'' (where σ' has its extrema) on [−span, span], from sign changes on a fine grid
    refined by bisection. σ' is monotone beyond the span for the activations this is used for."""
    grid = torch.linspace(-span, span, 240001, dtype=torch.float64)
    t = grid.clone().requires_grad_(True)
    (second,) = torch.autograd.grad(derivative(t).sum(), t)
    second = second.detach()
    changes = torch.nonzero((second[:-1] > 0) != (second[1:] > 0)).flatten().tolist()

    def f(x: float) -> float:
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(derivative(xt), xt)
        return float(g)

    return [_bisect(f, float(grid[i]), float(grid[i + 1])) for i in changes]


def _smooth(name: str, signed_slope: Callable[[Tensor], Tensor], grow: float = 1.0, offset: float = 0.0, cap: float = math.inf) -> Activation:
    """A smooth activation: peaks of |σ'| at the extrema of σ' (and the tails, by monotonicity)."""
    peaks = tuple((t, float(signed_slope(torch.tensor(t, dtype=torch.float64)).abs())) for t in _extrema_of_slope(signed_slope))
    tails = [float(signed_slope(torch.tensor(s, dtype=torch.float64)).abs()) for s in (-60.0, 60.0)]
    lipschitz = _up(max([v for _, v in peaks] + tails))
    # The peaks' values get the same margin: they are computed at a float64 estimate of the argmax.
    peaks = tuple((t, _up(v) + 1e-12) for t, v in peaks)
    return Activation(name, lipschitz + 1e-12, lambda t: signed_slope(t).abs(), peaks, grow=grow, offset=offset, cap=cap)


def _tanh_gelu_slope(t: Tensor) -> Tensor:
    c = math.sqrt(2 / math.pi)
    u = c * (t + 0.044715 * t**3)
    th = torch.tanh(u)
    return 0.5 * (1 + th) + 0.5 * t * (1 - th * th) * c * (1 + 3 * 0.044715 * t * t)


def _mish_slope(t: Tensor) -> Tensor:
    sp = torch.nn.functional.softplus(t)
    th = torch.tanh(sp)
    return th + t * (1 - th * th) * torch.sigmoid(t)


def gelu() -> Activation:
    # σ'(t) = Φ(t) + tφ(t), σ''(t) = φ(t)(2 − t²): the extrema of σ' are at ±√2 exactly, and
    # sup|σ'| = Φ(√2) + √2·φ(√2) ≈ 1.1289 (the value at −√2 is ≈ −0.129).
    r2 = math.sqrt(2.0)
    top = _up(float(_gelu_slope(torch.tensor(r2, dtype=torch.float64)))) + 1e-15
    low = _up(float(_gelu_slope(torch.tensor(-r2, dtype=torch.float64)))) + 1e-15
    return Activation("gelu", top, _gelu_slope, ((r2, top), (-r2, low)))


def silu() -> Activation:
    # σ'(t) = s(1 + t(1 − s)), σ'' = s(1 − s)(2 + t(1 − 2s)): its zeros ±t* solve t(2s(t) − 1) = 2
    # (t* ≈ 2.3994, by bisection); σ'(t*) ≈ 1.0998 and σ'(−t*) = 1 − σ'(t*) ≈ −0.0998.
    def g(t: float) -> float:
        return t * (2.0 / (1.0 + math.exp(-t)) - 1.0) - 2.0

    star = _bisect(g, 1.0, 4.0)
    top = _up(float(_silu_slope(torch.tensor(star, dtype=torch.float64)))) + 1e-12
    low = _up(float(_silu_slope(torch.tensor(-star, dtype=torch.float64)))) + 1e-12
    return Activation("silu", top, _silu_slope, ((star, top), (-star, low)))


def _pl(name: str, pieces: Sequence[tuple[float, float]], last: float, grow: float = 1.0, offset: float = 0.0, cap: float = math.inf,
        signed: bool = True) -> Activation:
    """A piecewise-linear σ: |σ'| = pieces[i][1] left of the kink pieces[i][0], `last` after the last
    (`signed`: those are the slopes themselves, all ≥ 0)."""
    kinks = tuple(k for k, _ in pieces)
    values = [v for _, v in pieces] + [last]
    lipschitz = max(values)

    def slope(t: Tensor) -> Tensor:
        out = torch.full_like(t, last, dtype=torch.float64)
        for k, v in reversed(pieces):
            out = torch.where(t < k, torch.full_like(out, v), out)
        return out

    peaks = tuple((k, max(values[i], values[i + 1])) for i, k in enumerate(kinks))
    return Activation(name, lipschitz, slope, peaks, kinks, True, grow, offset, cap, nonnegative_slopes=signed)


def leaky_relu(alpha: float) -> Activation:
    return _pl("leaky_relu", [(0.0, abs(alpha))], 1.0, grow=max(1.0, abs(alpha)), signed=alpha >= 0)


def clip(low: float, high: float) -> Activation:
    """clamp(t, low, high), either end possibly infinite (hardtanh, ReLU6, clamp(min=0))."""
    if not low < high:
        level = max(abs(low), abs(high))
        return _pl("clip", [], 0.0, 0.0, level, level)
    pieces = ([(low, 0.0)] if math.isfinite(low) else []) + ([(high, 1.0)] if math.isfinite(high) else [])
    last = 0.0 if math.isfinite(high) else 1.0
    # |clip(t)| ≤ |t| when low ≤ 0 ≤ high; otherwise the clipped end adds at most its distance to 0.
    offset = max(0.0, low, -high)
    cap = max(abs(low), abs(high)) if math.isfinite(low) and math.isfinite(high) else math.inf
    return _pl("clip", pieces, last, 1.0, offset, cap)


def elu(alpha: float, scale: float = 1.0, name: str = "elu") -> Activation:
    # σ'(t) = scale·α·e^t for t < 0 (increasing towards scale·α), scale for t > 0.
    a = abs(alpha) * scale

    def slope(t: Tensor) -> Tensor:
        return torch.where(t < 0, a * torch.exp(torch.clamp(t, max=0.0)), torch.full_like(t, scale, dtype=torch.float64))

    top = max(a, scale)
    return Activation(name, top, slope, ((0.0, top),), (0.0,), False, grow=top)


def celu(alpha: float) -> Activation:
    # σ'(t) = e^{t/α} for t < 0 (≤ 1), 1 for t > 0: 1-Lipschitz, |σ(t)| ≤ |t|.
    a = abs(alpha) if alpha else 1.0

    def slope(t: Tensor) -> Tensor:
        return torch.where(t < 0, torch.exp(torch.clamp(t, max=0.0) / a), torch.ones_like(t, dtype=torch.float64))

    return Activation("celu", 1.0, slope, ((0.0, 1.0),))


def softplus(beta: float) -> Activation:
    # σ'(t) = sigmoid(βt) ∈ (0, 1), increasing: no interior peak; softplus(t) ≤ |t| + log(2)/β.
    b = float(beta)
    return Activation("softplus", 1.0, lambda t: torch.sigmoid(b * t), (), offset=math.log(2.0) / b)


def _hardswish_slope(t: Tensor) -> Tensor:
    inside = (2 * t + 3).abs() / 6
    return torch.where(t >= 3, torch.ones_like(t, dtype=torch.float64), torch.where(t > -3, inside, torch.zeros_like(t, dtype=torch.float64)))


def _constant_table() -> dict[str, Activation]:
    relu = _pl("relu", [(0.0, 0.0)], 1.0)
    sigmoid = Activation("sigmoid", 0.25, lambda t: torch.sigmoid(t) * (1 - torch.sigmoid(t)), ((0.0, 0.25),), grow=0.0, offset=1.0, cap=1.0)
    tanh = Activation("tanh", 1.0, lambda t: 1 - torch.tanh(t) ** 2, ((0.0, 1.0),), grow=0.0, offset=1.0, cap=1.0)
    return {
        "relu": relu,
        "relu6": clip(0.0, 6.0),
        "sigmoid": sigmoid,
        "tanh": tanh,
        "gelu": gelu(),
        "gelu_tanh": _smooth("gelu_tanh", _tanh_gelu_slope),
        "silu": silu(),
        "mish": _smooth("mish", _mish_slope),
        # σ' = (2t + 3)/6 on (−3, 3): it reaches 1.5 as t → 3, so hardswish is 1.5-Lipschitz, not 1.
        "hardswish": Activation(
            "hardswish", 1.5, _hardswish_slope, ((-3.0, 0.5), (3.0, 1.5)), (-3.0, 3.0), False),
        "hardsigmoid": _pl("hardsigmoid", [(-3.0, 0.0), (3.0, 1 / 6)], 0.0, 0.0, 1.0, 1.0),
        "softsign": Activation("softsign", 1.0, lambda t: 1 / (1 + t.abs()) ** 2, ((0.0, 1.0),), grow=0.0, offset=1.0, cap=1.0),
        "logsigmoid": Activation("logsigmoid", 1.0, lambda t: torch.sigmoid(-t), (), offset=math.log(2.0)),
        "tanhshrink": Activation("tanhshrink", 1.0, lambda t: torch.tanh(t) ** 2, ()),
        "selu": elu(SELU_ALPHA, SELU_SCALE, "selu"),
    }


_TABLE: dict[str, Activation] | None = None


def activation(name: str, **params: float) -> Activation:
    """The named activation's certified constants; parameters (LeakyReLU's slope, ELU's α,
    hardtanh's range) build it on the spot."""
    global _TABLE
    if name == "leaky_relu":
        return leaky_relu(params.get("alpha", 0.01))
    if name in ("hardtanh", "clip"):
        return clip(params.get("low", -1.0), params.get("high", 1.0))
    if name == "elu":
        return elu(params.get("alpha", 1.0))
    if name == "celu":
        return celu(params.get("alpha", 1.0))
    if name == "softplus":
        return softplus(params.get("beta", 1.0))
    if name == "softshrink":
        lam = params.get("lambd", 0.5)
        return _pl("softshrink", [(-lam, 1.0), (lam, 0.0)], 1.0)
    if _TABLE is None:
        _TABLE = _constant_table()
    return _TABLE[name]


def lipschitz_constants() -> dict[str, float]:
    """The global constants, for documentation and tests."""
    names = ["relu", "relu6", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "mish", "hardswish", "hardsigmoid", "softplus", "softsign", "selu"]
    return {n: activation(n).lipschitz for n in names}


# ── linear operators ─────────────────────────────────────────────────────────────────────────


def spectral_norm(matrix: Tensor) -> float:
    """‖W‖₂ (batched: the largest over the leading axes), by SVD in float64."""
    w = matrix.detach().to("cpu", torch.float64)
    if w.numel() == 0:
        return 0.0
    return _up(float(torch.linalg.matrix_norm(w, ord=2).max()))


def conv_norm(weight: Tensor, size: Sequence[int], stride: Sequence[int], dilation: Sequence[int], groups: int) -> float:
    """An upper bound on ‖conv‖₂ for a zero-padded convolution of inputs of spatial size `size`.

    Any zero-padded convolution's output is a sub-array of the full linear convolution, which equals
    a circular convolution on a grid of N ≥ n + k_eff − 1 per axis (no wrap-around). A circular
    convolution is block-diagonalised by the DFT: at frequency ω it is the (out × in) matrix K̂(ω)
    (Sedghi, Gupta and Long, ICLR 2019). Subsampling by the stride s folds the s^dims frequencies
    ω' + jN/s onto one, so the strided operator's norm² is max_ω' λ_max(Σ_j K̂_j K̂_jᴴ) / s^dims,
    which never exceeds max_ω ‖K̂(ω)‖² (it is an average) and is exact for patchify (stride = kernel).
    Groups are independent blocks: the largest of their norms.
    """
    w = weight.detach().to("cpu", torch.float64)
    out_c, in_g = w.shape[:2]
    per_group = out_c // groups
    if all(k == 1 for k in w.shape[2:]):
        # A 1×1 kernel has the constant spectrum W at every frequency: the norm is ‖W‖ per group
        # (aliases average W Wᴴ over the stride's frequencies to itself).
        return spectral_norm(w.reshape(groups, per_group, in_g))
    kernel = _dilate(w, dilation)
    grid = [_round_up(n + k - 1, s) for n, k, s in zip(size, kernel.shape[2:], stride)]
    blocks = kernel.reshape(groups, per_group, in_g, *kernel.shape[2:])
    chunk = max(1, int(2e7 // max(1, per_group * in_g * math.prod(grid))))
    best = 0.0
    for start in range(0, groups, chunk):
        best = max(best, _strided_fourier_norm(blocks[start:start + chunk], grid, list(stride)))
    return _up(best)


def _dilate(w: Tensor, dilation: Sequence[int]) -> Tensor:
    if all(d == 1 for d in dilation):
        return w
    spatial = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dilation)]
    out = torch.zeros(*w.shape[:2], *spatial, dtype=w.dtype)
    out[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dilation)] = w
    return out


def _round_up(n: int, s: int) -> int:
    return -(-n // s) * s


def _strided_fourier_norm(blocks: Tensor, grid: list[int], stride: list[int]) -> float:
    """max over coarse frequencies of √(λ_max(Σ_aliases K̂K̂ᴴ)/Πs) for (groups, out, in, *k) blocks."""
    dims = len(grid)
    axes = tuple(range(3, 3 + dims))
    spectrum = torch.fft.fftn(blocks, s=grid, dim=axes)  # (g, out, in, *grid)
    # Split each axis N into (s, N/s): frequency ω = j·(N/s) + ω', j the alias index.
    shape = list(spectrum.shape[:3])
    for n, s in zip(grid, stride):
        shape += [s, n // s]
    spectrum = spectrum.reshape(shape)
    alias_axes = [3 + 2 * i for i in range(dims)]
    coarse_axes = [4 + 2 * i for i in range(dims)]
    # (g, *coarse, out, in, *aliases) -> (g, *coarse, out, in·Πs): the stacked [K̂_j] per coarse ω'.
    order = [0, *coarse_axes, 1, 2, *alias_axes]
    stacked = spectrum.permute(order)
    stacked = stacked.reshape(*stacked.shape[: 1 + dims], shape[1], -1)
    if 1 in stacked.shape[-2:]:  # depthwise: a row or column vector, whose norm needs no SVD
        norms = torch.linalg.vector_norm(stacked, dim=(-2, -1))
    else:
        norms = torch.linalg.matrix_norm(stacked, ord=2)
    return float(norms.max()) / math.sqrt(math.prod(stride))


def nonnegative_map_norm(apply: Callable[[Tensor], Tensor], shape: Sequence[int]) -> float:
    """√(‖A‖₁‖A‖∞) ≥ ‖A‖₂ for a linear map A with nonnegative entries (averaging, summing, selecting):
    A·1 gives the row sums, Aᵀ·1 (one backward pass) the column sums."""
    ones = torch.ones(*shape, dtype=torch.float64, requires_grad=True)
    out = apply(ones)
    (cols,) = torch.autograd.grad(out.sum(), ones)
    return _up(math.sqrt(float(out.detach().max()) * float(cols.max())))


def multiplicity(apply: Callable[[Tensor], Tensor], shape: Sequence[int]) -> float:
    """For an op that only moves or copies elements: the most copies any input element gets
    (the gradient of sum(op(x)) counts them). ‖op‖₂ = √ of it."""
    ones = torch.ones(*shape, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(apply(ones).sum(), ones)
    return float(grad.max()) if grad.numel() else 0.0


def max_pool_factor(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> float:
    """‖maxpool(a) − maxpool(b)‖ ≤ √m ‖a − b‖ with m the most windows one input lies in:
    |max a − max b| ≤ max|a − b| per window, and each |a_j − b_j|² is counted at most m times.
    Per axis m ≤ min(k, ⌈((k − 1)d + 1)/s⌉) (a window spans (k − 1)d + 1 and holds k taps)."""
    m = 1
    for k, s, d in zip(kernel, stride, dilation):
        m *= min(k, -(-((k - 1) * d + 1) // s))
    return math.sqrt(m)


# ── the last step: from a logit-map bound to λ_max ──────────────────────────────────────────


def row_difference_bound(weight: Tensor) -> float:
    """¼ max_{a,b} ‖W_a − W_b‖² = sup_p λ_max(Wᵀ(diag p − ppᵀ)W) for logits z = W h + b.

    uᵀ(diag p − ppᵀ)u = Var_p(u) ≤ ¼(max_y u_y − min_y u_y)² (Popoviciu, attained by half the mass
    on each extreme), and with u = W w, (u_a − u_b)² ≤ ‖W_a − W_b‖²‖w‖². So λ_max(F) ≤ this × L_h²
    where L_h bounds the Jacobian of the features h. It is never above ½‖W‖₂² (the MATH.md constant)."""
    w = weight.detach().to("cpu", torch.float64).reshape(weight.shape[0], -1)
    gram = w @ w.T
    diag = torch.diagonal(gram)
    dist = diag[:, None] + diag[None, :] - 2 * gram
    return _up(0.25 * float(dist.clamp_min(0).max()))
