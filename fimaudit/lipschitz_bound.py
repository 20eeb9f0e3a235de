"""Upper bounds on λ_max(F) read from a model's graph and weights: what every adapter that computes
them shares (docs/math.md, "Bounds from the graph").

The core computes no such bound (it never imports a framework). An adapter's model offers them
through the `BoundedModel` Protocol (fimaudit.adapter) and returns a `Bound`; the report records it
(report.ModelBound, report.SampleBound). The graph walkers of the torch and ONNX adapters
(graph_bound.py, bound.py) build on the pieces here: the result type, the refusal of an operator, the size
bounds carried beside each tensor, the float64 safety margin, the closed-form activation constants
and the last step's rules. Pure Python: imports nothing of fimaudit.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

INF = math.inf
# Computed norms are multiplied by (1 + SAFETY) so float64 rounding cannot make them fall below the true ones.
SAFETY = 1e-9

# Global Lipschitz constants sup|σ'| of smooth activations, with the margin (derivations in
# docs/math.md; the torch adapter's lipschitz.py computes them afresh and its tests check they agree):
# GELU = Φ(√2) + √2φ(√2); SiLU = σ'(t*) with t*(2s(t*) − 1) = 2; Mish and tanh-GELU from the zeros of σ''.
GELU = 1.1289041463140603 * (1 + SAFETY)
GELU_TANH = 1.128993069788765 * (1 + SAFETY)
SILU = 1.0998393212297064 * (1 + SAFETY)
MISH = 1.088498162341226 * (1 + SAFETY)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805

# Where a global bound holds without a stated domain.
ALL_INPUTS = "all inputs"
# The last step, logit map → λ_max(F) (docs/math.md): the rules a global bound may end with.
RULE_HALF = "1/2 L^2"
RULE_ROWS = "1/4 max_ab ||W_a - W_b||^2 L_h^2 (last linear layer)"


def up(value: float) -> float:
    """A computed norm, rounded up so float64 rounding cannot make it fall below the true one."""
    return float(value) * (1.0 + SAFETY)


def scope_of(input_norm: float | None) -> str:
    """Where a global bound holds: every input, or the stated domain ‖x‖₂ ≤ input_norm."""
    return ALL_INPUTS if input_norm is None else f"inputs with ||x||_2 <= {input_norm:g}"


def ball_scope(radius: float) -> str:
    """Where a local bound holds: at x itself (radius 0), or on the L2 ball around it."""
    return "x" if radius == 0 else f"||x' - x||_2 <= {radius:g}"


@dataclass(frozen=True)
class Bound:
    """An upper bound on λ_max(F), or None with the operator and reason that prevented one.

    `scope` says where it holds: "all inputs" (global), a stated domain, or the L2 ball of `radius`
    around the input (local; "x" at radius 0). `exact` is True when `value` is λ_max(F(x)) itself
    (a fixed activation pattern and an autograd Jacobian), not a bound. `lipschitz` bounds ‖J_z‖₂
    over the same scope. `method` names how it was computed (see `describe`); `details` holds the
    walker's extras (the last step's rule, the operators met)."""

    value: float | None
    method: str
    scope: str = ALL_INPUTS
    unsupported_op: str | None = None
    reason: str | None = None
    lipschitz: float | None = None
    radius: float | None = None
    exact: bool = False
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def describe(self) -> str:
        """The method in words, for the report: what was composed and, for the Lipschitz routes, the
        last step's rule. Other methods (a fixed activation pattern's exact Jacobian) name themselves."""
        if self.method not in METHODS:
            return self.method
        rule = self.details.get("final_rule")
        return f"{METHODS[self.method]}; last step: {rule}" if rule else METHODS[self.method]


# What each walker's method name means, in the report's words (docs/math.md, "Bounds from the graph").
_COMPOSED = ("a bound L on the logit map's Lipschitz constant, composed over the {graph} (products along paths, sums at "
             "additions, root-sum-of-squares at concatenations; certified operator norms), then lambda_max <= 1/2 L^2 or the "
             "last linear layer's row rule")
METHODS = {
    "graph-lipschitz": _COMPOSED.format(graph="module's torch.fx graph"),
    "graph-lipschitz-onnx": _COMPOSED.format(graph="ONNX graph"),
    "graph-lipschitz-local": "local Lipschitz bounds of the logit map on the ball (per-element interval radii, activation "
    "slopes over their ranges), then the softmax rules over the range of p on the ball",
}


class Unsupported(Exception):
    """An operator the bound cannot handle; the bound is then None, never a guess."""

    def __init__(self, op: str, reason: str) -> None:
        super().__init__(f"{op}: {reason}")
        self.op = op
        self.reason = reason


@dataclass
class Mag:
    """Bounds on a tensor's size over the scope: Frobenius norm, spectral norm of every matrix over
    its last two axes, ℓ2 norm of every vector along its last axis, largest |entry|."""

    frob: float = INF
    spec: float = INF
    row: float = INF
    elem: float = INF

    def tidy(self, shape: Sequence[int]) -> Mag:
        """Each bound implies others: elem ≤ row ≤ frob, spec ≤ min(frob, √rows·row), row ≤ √n·elem."""
        n_last = shape[-1] if shape else 1
        rows = shape[-2] if len(shape) >= 2 else 1
        numel = math.prod(shape) if shape else 1
        frob = min(self.frob, math.sqrt(numel) * self.elem)
        row = min(self.row, frob, math.sqrt(n_last) * self.elem)
        spec = min(self.spec, frob, math.sqrt(rows) * row)
        return Mag(frob, spec, row, min(self.elem, row))


def last_step(lipschitz: float, row_rule: float | None) -> tuple[float, str]:
    """λ_max from a bound L on ‖J_z‖: ½L², or the last linear layer's ¼max‖W_a − W_b‖²L_h² where
    given (`row_rule`) and smaller; with the rule used."""
    best, rule = 0.5 * lipschitz * lipschitz, RULE_HALF
    if row_rule is not None and row_rule < best:
        best, rule = row_rule, RULE_ROWS
    return best, rule


# The message for a product of two input-dependent tensors that nothing bounds (both walkers).
UNBOUNDED_PRODUCT = ("product of two input-dependent tensors (attention) whose size is unbounded on this domain: "
                     "no Lipschitz constant; normalise before it (LayerNorm) or state an input domain")
