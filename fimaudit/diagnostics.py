"""What breaks finite differences, detected per sample rather than averaged away.

- nondeterministic outputs: the base input is queried twice; any difference is a noise floor;
- quantized or rounded outputs: finite differences that are exactly zero, or on a coarse grid;
- saturated outputs: p exactly 1 (the other classes underflow to 0) at the output precision;
- zero probabilities below 1 (e.g. an endpoint returning only its top-k classes).

Each class's output c is known to within q_c: its rounding (eps · p_c for floating-point outputs),
the grid step of quantized outputs, or the noise floor. A difference |p_c(x+hv) − p_c(x−hv)| below
q_c is invisible, and then |(A v)_c| < min(q_c/√p_c, √p_c) / 2h. Hence the level below which
lambda_max cannot be measured with this step:
    λ_max ≤ tr F < [Σ_c min(q_c²/p_c, p_c) + hidden] / (4h²),
where `hidden` bounds the mass of classes reported as exactly 0 (eps · p_max for a float output that
rounded to 1; q per class for quantized or noisy outputs).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# More exactly-equal finite-difference pairs than this (among live classes) means quantized outputs.
QUANTIZED_FRACTION = 0.2
# Differences kept to test whether they all sit on one grid (integer multiples of the smallest).
GRID_SAMPLE = 4096
# Above this top probability the top class's change is read from the others' (the outputs sum to 1):
# their rounding, eps * (1 - p_top) in all, is then below the top class's own, eps * p_top. Near
# saturation this matters: a float32 p_top = 1 - 1e-11 never moves off 1.0 (its row reads 0 while the
# true one is tiny), and its rounding eps / 2h would otherwise set a resolution level that forbids the
# small steps a sharply curved network needs (docs/math.md, "Choosing the step").
COMPLEMENT_ABOVE = 2 / 3
_EPS = {"float16": float(np.finfo(np.float16).eps), "float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def complement_class(p: np.ndarray) -> int | None:
    """The class whose output change is read from the others' (see COMPLEMENT_ABOVE), or None."""
    top = int(np.argmax(p))
    return top if p[top] > COMPLEMENT_ABOVE else None


@dataclass
class ResolutionProbe:
    """Accumulates, over one sample's finite-difference pairs, how many were exactly equal."""

    base: np.ndarray
    output_dtype: str = "float32"
    equal_pairs: int = 0
    live_pairs: int = 0
    min_step: float = np.inf
    noise: float = 0.0
    flags: list[str] = field(default_factory=list)
    steps: list[np.ndarray] = field(default_factory=list)
    kept: int = 0
    # Read from the others, so its own pairs say nothing about quantisation (a pinned p_top = 1.0
    # would otherwise count as a run of exactly-equal pairs).
    complement: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.complement = complement_class(self.base)

    def repeat(self, again: np.ndarray) -> None:
        """Record the base output queried a second time."""
        self.noise = float(np.abs(again - self.base).max())
        if self.noise > 0:
            self.flags.append("nondeterministic")

    def pairs(self, plus: np.ndarray, minus: np.ndarray) -> None:
        """Record the outputs at x + hv and x − hv (or x) for a block of directions."""
        live = (plus > 0) | (minus > 0)
        diff = np.abs(plus - minus)
        if self.complement is not None:
            # The complement's column left out by zeroing it in these fresh arrays: np.delete would copy
            # both inputs, a cost that a 1000-class model pays on every row.
            live[..., self.complement] = False
            diff[..., self.complement] = 0.0
        self.live_pairs += int(live.sum())
        self.equal_pairs += int((live & (diff == 0)).sum())
        nonzero = diff[diff > 0]
        if nonzero.size:
            self.min_step = min(self.min_step, float(nonzero.min()))
            if self.kept < GRID_SAMPLE:
                self.steps.append(nonzero[: GRID_SAMPLE - self.kept])
                self.kept += len(self.steps[-1])

    def on_grid(self) -> bool:
        """True when the observed changes are all integer multiples of the smallest one.

        Continuous (float) outputs essentially never pass this; rounded ones always do.
        """
        if self.kept < 8 or not np.isfinite(self.min_step):
            return False
        with np.errstate(over="ignore", invalid="ignore"):  # a subnormal smallest step: inf, not on a grid
            ratio = np.concatenate(self.steps) / self.min_step
            return bool(np.mean(np.abs(ratio - np.round(ratio)) < 1e-3) > 0.95 and ratio.max() < 1e6)

    @property
    def equal_fraction(self) -> float:
        return self.equal_pairs / self.live_pairs if self.live_pairs else 1.0

    def resolution(self, step: float, factor: float = 1.0) -> tuple[float, list[str]]:
        """(lambda level below which nothing is measurable, diagnostic flags).

        `factor` scales the central-difference level to the scheme: an invisible change q costs
        q/(2h) in central differences, q/h in forward ones (x4 in lambda) and about 3q/h in
        Richardson's (4/h weight on the h/2 pair, x9).
        """
        flags = list(self.flags)
        eps = _EPS.get(self.output_dtype, _EPS["float32"])
        floor = self.noise
        saturated = float(self.base.max()) >= 1.0
        if (self.equal_fraction > QUANTIZED_FRACTION or self.on_grid()) and not saturated:
            flags.append("quantized_outputs")
            floor = max(floor, self.min_step if np.isfinite(self.min_step) else 0.0)
        p = self.base
        q = np.maximum(eps * p, floor)
        if self.complement is not None:
            # Each other class's rounding (and any floor: noise, a grid) adds to the complement's.
            rest = float(np.delete(p, self.complement).sum())
            q[self.complement] = max(2 * eps * rest, floor * float(np.sqrt(p.size - 1)))
        live = p > 0
        visible = float(np.sum(np.minimum(q[live] ** 2 / p[live], p[live])))
        zeros = int((p == 0).sum())
        hidden = zeros * floor if floor > 0 else (eps * float(p.max()) if zeros else 0.0)
        if saturated:
            flags.append("saturated")
        elif zeros:
            flags.append("zero_probabilities")
        return factor * (visible + hidden) / (4 * step * step), flags
