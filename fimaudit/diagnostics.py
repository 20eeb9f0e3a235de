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
_EPS = {"float16": float(np.finfo(np.float16).eps), "float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


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

    def repeat(self, again: np.ndarray) -> None:
        """Record the base output queried a second time."""
        self.noise = float(np.abs(again - self.base).max())
        if self.noise > 0:
            self.flags.append("nondeterministic")

    def pairs(self, plus: np.ndarray, minus: np.ndarray) -> None:
        """Record the outputs at x + hv and x − hv (or x) for a block of directions."""
        live = (plus > 0) | (minus > 0)
        diff = np.abs(plus - minus)
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
        shown = p[p > 0]
        q = np.maximum(eps * shown, floor)
        visible = float(np.sum(np.minimum(q * q / shown, shown)))
        zeros = int((p == 0).sum())
        hidden = zeros * floor if floor > 0 else (eps * float(p.max()) if zeros else 0.0)
        if saturated:
            flags.append("saturated")
        elif zeros:
            flags.append("zero_probabilities")
        return factor * (visible + hidden) / (4 * step * step), flags
