"""Upper bounds on λ_max(F) for any torch module torch.fx can trace (docs/math.md, "Bounds from the graph").

`graph_bound(module, input_shape)` holds at every input (one number per model);
`local_bound(module, x, radius)` holds on the L2 ball of that radius around x (at radius 0: at x).

Both walk the traced graph once in float64, node by node, keeping for every tensor that depends on the
input a bound L on the Lipschitz constant (L2 → Frobenius) of the map input → tensor, composed by the
rules of `lipschitz.py`: a product along a path, the sum over the operands of an addition (which is
(1 + L_branch) for a residual block), the root-sum-of-squares over the parts of a concatenation.
Bilinear operators (attention, a product of two activations) need the size of their operands, so
bounds on it travel along too (`_Mag`); where an operand can be arbitrarily large (dot-product
attention on raw inputs) there is no global constant and the bound is None with that reason.
The local walk also propagates, per element, how far each activation can move within the ball
(interval arithmetic refined by Lipschitz row norms), which fixes activation slopes and tells when a
piecewise-linear network's Jacobian is constant on the ball (then that Jacobian is used exactly).

The last step (lipschitz.row_difference_bound, and `_softmax_rules` for the local case) turns the
logit map's bound into one on λ_max(F) = sup_v Var_p(J_z v).
"""
from __future__ import annotations

import copy
import math
import operator
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fimaudit.lipschitz_bound import INF, UNBOUNDED_PRODUCT, Bound, Unsupported, ball_scope, last_step, scope_of
from fimaudit.lipschitz_bound import Mag as _Mag
from fimaudit_torch import lipschitz as lip
from fimaudit_torch.lipschitz import Activation

Tensor = torch.Tensor


@dataclass
class _Val:
    """What is known about one input-dependent tensor."""

    lip: float
    mag: _Mag
    delta: Tensor | None = None  # local: per-element bound on |value(x') − value(x)| over the ball
    constant: Tensor | None = None  # local: elements certainly constant on the ball (dead ReLUs)
    # False between a batch norm whose scale moved into the next layer and that layer: `lip` then
    # bounds relu(x + b/s), not the tensor itself, and must not cap its radii.
    own_lip: bool = True


@dataclass
class _Final:
    """The logits' last affine layer z = W h + b, if there is one, with L_h."""

    weight: Tensor
    lip_in: float


# ── public API ──────────────────────────────────────────────────────────────────────────────


def graph_bound(module: nn.Module, input_shape: Sequence[int], *, input_norm: float | None = None, output_name: str | int | None = None,
                outputs: str | None = None) -> Bound:
    """A bound on λ_max(F) at every input x of shape `input_shape` (no batch axis).

    `input_norm` states a domain ‖x‖₂ ≤ input_norm (e.g. √d for pixels in [0, 1]); it is only
    needed for attention or products of activations that no normalisation bounds, and the bound
    then holds on that domain only (`scope` says so). `output_name` picks the class scores from a
    dict (key) or tuple (index) output, as TorchModel's option does. `outputs` is what the adapter
    detected ("logits", "probabilities"): probabilities must come from a final softmax (or
    log-softmax) in the graph, whose input is then the logits; otherwise the bound is None."""
    start = time.perf_counter()
    scope = scope_of(input_norm)
    try:
        gm, x = _prepare(module, torch.zeros(1, *input_shape), double=False)
        walker = _Walker(gm, None, _Mag(input_norm or INF, input_norm or INF, input_norm or INF, input_norm or INF), output_name, outputs)
        walker.run(x)
        value, lz, rule = walker.global_value()
    except Unsupported as err:
        return Bound(None, "graph-lipschitz", scope, err.op, err.reason, seconds=time.perf_counter() - start)
    details = {"final_rule": rule, "operators": dict(walker.ops)}
    return Bound(value, "graph-lipschitz", scope, lipschitz=lz, seconds=time.perf_counter() - start, details=details)


def local_bound(module: nn.Module, x: Tensor, *, radius: float = 0.0, exact_limit: int = 20_000_000, lanczos: bool = True,
                output_name: str | int | None = None, outputs: str | None = None) -> Bound:
    """A bound on sup{λ_max(F(x')) : ‖x' − x‖₂ ≤ radius} for one input x (no batch axis).

    Where the network is piecewise linear and no activation (nor max-pool winner) can change within
    the ball, J_z is constant there: it is computed by autograd (when K·d ≤ exact_limit) and only p
    varies; at radius 0 the value is then λ_max(F(x)) itself (`exact`). Otherwise the local Lipschitz
    bound and the range of p over the ball are used. Where K·d > exact_limit and radius is 0, the
    exact value comes from Lanczos (`lanczos`; many autograd passes on large inputs). Float64 throughout."""
    start = time.perf_counter()
    scope = ball_scope(radius)
    try:
        gm, xb = _prepare(module, x.detach()[None], double=True)
        walker = _Walker(gm, float(radius), _Mag(), output_name, outputs)
        walker.run(xb)
        bound = walker.local_value(gm, xb, exact_limit, lanczos)
    except Unsupported as err:
        return Bound(None, "graph-lipschitz-local", scope, err.op, err.reason, radius=radius, seconds=time.perf_counter() - start)
    return replace(bound, scope=scope, radius=radius, seconds=time.perf_counter() - start)


def fixed_pattern_radius(module: nn.Module, x: Tensor, *, high: float = 1.0, span: float = 40.0, steps: int = 8) -> float:
    """The largest radius on which the walk certifies that no activation kink or max-pool winner is
    reached, so J_z is constant on that ball and λ_max(F) moves only through p: bisection in log2
    over [high·2^-span, high] (`steps` halvings; the certified lower end is returned). 0 where x is
    itself at a kink, where not even high·2^-span is certified, and for networks that are not
    piecewise linear."""
    try:
        gm, xb = _prepare(module, x.detach()[None], double=True)
    except Unsupported:
        return 0.0

    def fixed(r: float) -> bool:
        walker = _Walker(gm, r, _Mag())
        try:
            walker.run(xb)
        except Unsupported:
            return False
        return walker.fixed

    lo, hi = math.log2(high) - span, math.log2(high)
    if not fixed(0.0) or not fixed(2.0**lo):
        return 0.0
    if fixed(2.0**hi):
        return high
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fixed(2.0**mid) else (lo, mid)
    return 2.0**lo


def _prepare(module: nn.Module, x: Tensor, double: bool) -> tuple[torch.fx.GraphModule, Tensor]:
    """An eval-mode copy traced by torch.fx, and x on its device. The global walk runs the graph
    only for shapes and constants and keeps the module's dtype (weights go to float64 when their
    norms are taken); the local walk needs float64 values."""
    if isinstance(module, torch.jit.ScriptModule):
        raise Unsupported("TorchScript", "a scripted module has no torch.fx graph; bound the nn.Module it came from")
    net = copy.deepcopy(module).eval()
    net.requires_grad_(False)  # our copy: derivatives are taken with respect to the input only
    if double:
        net = net.to(torch.float64)
    if isinstance(net, torch.fx.GraphModule):  # already a graph: torch.export's .module(), a traced module
        return net, _on_device(net, x, double)
    try:
        gm = torch.fx.symbolic_trace(net)
    except Exception as err:  # tracing fails on data-dependent control flow: say so, bound nothing
        raise Unsupported("torch.fx.symbolic_trace", f"the module could not be traced ({type(err).__name__}: {err})") from err
    return gm, _on_device(net, x, double)


def _on_device(net: nn.Module, x: Tensor, double: bool) -> Tensor:
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = torch.float64 if double or param is None else param.dtype
    return x.to(device, dtype)


# ── the walk ─────────────────────────────────────────────────────────────────────────────────


class _Walker(torch.fx.Interpreter):
    """Runs the graph (values as usual) and, beside each input-dependent node, its `_Val`."""

    def __init__(self, gm: torch.fx.GraphModule, radius: float | None, input_mag: _Mag, output_name: str | int | None = None,
                 outputs: str | None = None) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.output_name = output_name
        self.outputs = outputs
        self.radius = radius
        self.input_mag = input_mag
        self.vals: dict[torch.fx.Node, Any] = {}
        self.data: set[torch.fx.Node] = set()
        self.discrete: set[torch.fx.Node] = set()
        # Local walk of a piecewise-linear network: where J_z can change in the ball (see _variation).
        self.piecewise_linear = True
        self.variation: list[tuple[str, Tensor, Tensor]] = []
        self.finals: dict[torch.fx.Node, _Final] = {}
        self.pre_softmax: dict[torch.fx.Node, tuple[torch.fx.Node, Tensor, Tensor | None]] = {}
        self.pending_fold: dict[torch.fx.Node, tuple[dict[str, Any], float, list[int]]] = {}
        # Global walk: batch-norm scales moved through a ReLU into the next layer's input channels.
        self.input_scale: dict[torch.fx.Node, Tensor] = {}
        self.fixed = True  # local: piecewise linear and no kink crossed in the ball
        self.kink_note: str | None = None
        self.ops: Counter[str] = Counter()
        self.final_output: tuple[torch.fx.Node, Tensor, Tensor | None] | None = None
        self.placeholder_seen = False
        self._current: torch.fx.Node | None = None
        self.shapes: dict[torch.fx.Node, tuple[int, ...]] = {}  # kept after values are dropped

    @property
    def local(self) -> bool:
        return self.radius is not None

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, Tensor):
            self.shapes[n] = tuple(result.shape)
        if n.op == "placeholder":
            if self.placeholder_seen:
                raise Unsupported(f"input {n.target}", "only single-input modules are supported")
            self.placeholder_seen = True
            self.data.add(n)
            delta = torch.full_like(result, self.radius) if self.radius is not None else None
            mag = _ball_mag(result.detach(), self.radius) if self.radius is not None else self.input_mag
            self.vals[n] = _Val(1.0, mag, delta)
        elif n.op == "output":
            self._record_output(n, result)
        elif n.op != "get_attr" and any(a in self.data for a in n.all_input_nodes):
            self._check_discrete(n, result)
            if _has_tensor(result):
                self.data.add(n)
                self.vals[n] = self._bound(n, result)
        self._forget(n)
        return result

    def _check_discrete(self, n: torch.fx.Node, result: Any) -> None:
        """An integer or boolean tensor computed from the input (argmax, a comparison) makes what
        uses it jump: no Lipschitz constant. Shapes and sizes (plain ints) are fine."""
        if any(a in self.discrete for a in n.all_input_nodes):
            raise Unsupported(_name_of(n), "uses an integer or boolean value computed from the input (argmax, comparison): not continuous")
        values = result if isinstance(result, (tuple, list)) else [result]
        if any(isinstance(v, Tensor) and not v.is_floating_point() for v in values):
            self.discrete.add(n)

    def _forget(self, n: torch.fx.Node) -> None:
        """Drop the per-element radii of nodes no longer used (the Interpreter drops their values)."""
        for gone in self.user_to_last_uses.get(n, []):
            val = self.vals.get(gone)
            if isinstance(val, _Val):
                val.delta = None

    def _record_output(self, n: torch.fx.Node, result: Any) -> None:
        arg: Any = n.args[0]
        name = self.output_name
        if isinstance(arg, (tuple, list)) and isinstance(name, str) and name.lstrip("-").isdigit():
            name = int(name)  # a tuple's index given as text (the CLI's --output-name), as TorchModel reads it
        if name is not None and isinstance(arg, (dict, tuple, list)):
            try:
                arg, result = arg[name], result[name]  # type: ignore[index]
            except (KeyError, IndexError, TypeError) as err:
                raise Unsupported("output", f"no output {self.output_name!r}") from err
        if isinstance(arg, (tuple, list)) and len(arg) == 1:
            arg, result = arg[0], result[0]
        if not isinstance(arg, torch.fx.Node) or not isinstance(result, Tensor) or arg not in self.data:
            raise Unsupported("output", "the module must return one tensor of class scores that depends on the input")
        self.final_output = (arg, result.detach(), self.val(arg).delta)

    # dispatch -----------------------------------------------------------------------------

    def _bound(self, n: torch.fx.Node, result: Any) -> Any:
        self._current = n
        name, handler, spec = _classify(self, n)
        self.ops[name] += 1
        val = handler(self, n, result, spec)
        if isinstance(val, _Val) and self.local and isinstance(result, Tensor) and self.radius is not None and val.own_lip:
            # Whatever the op, no element moves more than the whole tensor: |Δv_i| ≤ ‖Δv‖ ≤ L·r
            # (at radius 0 nothing moves; L may be infinite where a folded norm is pending).
            cap = val.lip * self.radius if self.radius > 0 else 0.0
            val.delta = cap * torch.ones_like(result) if val.delta is None else torch.clamp(val.delta, max=cap)
        return val

    def val(self, node: Any) -> _Val:
        v = self.vals[node]
        if not isinstance(v, _Val):
            raise Unsupported(str(node), "a tuple output used as a tensor")
        return v

    def mag(self, node: torch.fx.Node) -> _Mag:
        """The size bounds of a data node: stored (global) or from its value and radius (local)."""
        v = self.val(node)
        shape = tuple(self.env[node].shape)
        structural = v.mag.tidy(shape)
        if not self.local:
            return structural
        c = self.env[node].detach()
        d = v.delta if v.delta is not None else torch.zeros_like(c)
        here = _local_mag(c, d)
        # Both hold on the ball: the structural ones (a LayerNorm's output is bounded whatever its
        # input) are often far smaller than interval ones after several layers.
        return _Mag(min(here.frob, structural.frob), min(here.spec, structural.spec), min(here.row, structural.row),
                    min(here.elem, structural.elem)).tidy(shape)

    def center(self, node: Any) -> Any:
        return self.env[node] if isinstance(node, torch.fx.Node) else node

    def nonlinear(self, what: str) -> None:
        """A smooth nonlinear op: its Jacobian varies within any ball of positive radius."""
        if self.radius:
            self.note_kink(what)
            self.piecewise_linear = False

    def record_variation(self, n: torch.fx.Node, act: Activation, lo: Tensor, hi: Tensor, slope: Tensor, d: Tensor) -> None:
        """An activation whose slope may change in the ball, for the Jacobian-variation bound:
        the elements that can cross a kink, times how much their slope can change (≤ the larger
        slope when slopes are ≥ 0, else twice it), times their input's gradient bound δ/r."""
        assert self.radius
        moving = torch.zeros_like(lo, dtype=torch.bool)
        for t in act.kinks:
            moving |= (lo <= t) & (t <= hi)
        change = slope if act.nonnegative_slopes else 2 * slope
        self.variation.append((n.name, moving, change * d / self.radius))

    def note_kink(self, what: str) -> None:
        if self.fixed:
            self.kink_note = what
        self.fixed = False

    # the last step -------------------------------------------------------------------------

    def logits(self) -> tuple[torch.fx.Node, Tensor, Tensor | None]:
        """The logit node, its value and radii: the output, or the input of a trailing softmax."""
        if self.final_output is None:
            raise Unsupported("output", "no output")
        node, value, delta = self.final_output
        if node in self.pre_softmax:
            node, value, delta = self.pre_softmax[node]
        elif self.outputs == "probabilities":
            raise Unsupported("output", "the model returns probabilities, but not from a final softmax in the graph: no logits to bound")
        elif self.outputs not in (None, "logits", "log_probabilities"):
            raise Unsupported("output", f"outputs={self.outputs!r}: the bound is for softmax classifiers (logits or probabilities)")
        if value.numel() != value.shape[-1] or value.numel() < 2:
            raise Unsupported("output", f"expected one vector of class scores per input, got shape {tuple(value.shape)}")
        return node, value.reshape(-1), delta

    def global_value(self) -> tuple[float, float, str]:
        node, _, _ = self.logits()
        lz = self.val(node).lip
        final = self.finals.get(node)
        best, rule = last_step(lz, lip.row_difference_bound(final.weight) * final.lip_in**2 if final is not None else None)
        return best, lz, rule

    def local_value(self, gm: torch.fx.GraphModule, x: Tensor, exact_limit: int, lanczos: bool) -> Bound:
        node, z, delta = self.logits()
        val = replace(self.val(node), delta=delta)
        assert self.radius is not None
        r = self.radius
        final = self.finals.get(node)
        k, d = z.numel(), x.numel()
        logits_of = _logit_function(gm, node, tuple(x.shape))
        if self.fixed and k * d <= exact_limit:
            jac = torch.func.jacrev(logits_of)(x.reshape(-1).clone()).detach()
            value, exact = _fixed_pattern_bound(jac, z, r)
            method = EXACT if exact else "fixed activation pattern: exact Jacobian, range of p"
            return Bound(value, method, exact=exact, lipschitz=lip._up(float(torch.linalg.matrix_norm(jac, 2))), details={"operators": dict(self.ops)})
        if self.fixed and r == 0 and lanczos:
            # Too large for the K × d Jacobian: λ_max(F(x)) itself by Lanczos on J_zᵀMJ_z products.
            from fimaudit_torch.whitebox import exact_fisher

            lam = exact_fisher(logits_of, x.reshape(-1).clone(), method="lanczos").lambda_max
            return Bound(lam, EXACT_LANCZOS, exact=True, details={"operators": dict(self.ops)})
        diff = _logit_difference_radius(val, final, r)
        value, rule = _softmax_rules(z, diff, val.lip, final)
        details: dict[str, Any] = {"final_rule": rule, "operators": dict(self.ops),
                                   "pattern": "fixed" if self.fixed else f"not fixed ({self.kink_note})"}
        if not self.fixed and self.piecewise_linear and r > 0 and self.variation and k * d <= exact_limit:
            jac = torch.func.jacrev(logits_of)(x.reshape(-1).clone()).detach()
            change = _jacobian_change(gm, node, x, self.variation)
            varied = _varied_pattern_bound(jac, z, r, change)
            details["jacobian_change"] = change
            if varied < value:
                return Bound(varied, VARIED, lipschitz=lip._up(float(torch.linalg.matrix_norm(jac, 2))) + change, details=details)
        return Bound(value, "graph-lipschitz-local", lipschitz=val.lip, details=details)


def _name_of(n: torch.fx.Node) -> str:
    if n.op == "call_module":
        root = n.graph.owning_module
        return type(root.get_submodule(str(n.target))).__name__ if root is not None else str(n.target)
    return getattr(n.target, "__name__", str(n.target))


def _has_tensor(result: Any) -> bool:
    if isinstance(result, Tensor):
        return result.is_floating_point()
    if isinstance(result, (tuple, list)):
        return any(isinstance(r, Tensor) and r.is_floating_point() for r in result)
    return False


def _ball_mag(c: Tensor, r: float) -> _Mag:
    """Sizes on the L2 ball of radius r around c: every norm of c + Δ is within r of c's."""
    shape = tuple(c.shape)
    row = float(torch.linalg.vector_norm(c, dim=-1).max()) + r if c.dim() else float(c.abs()) + r
    spec = float(torch.linalg.matrix_norm(c.reshape(-1, *c.shape[-2:]), 2).max()) + r if c.dim() >= 2 else INF
    return _Mag(float(torch.linalg.vector_norm(c)) + r, spec, row, float(c.abs().max()) + r).tidy(shape)


def _local_mag(c: Tensor, d: Tensor) -> _Mag:
    """Sizes over the ball from the centre c and the per-element radius d: ‖c + Δ‖ ≤ ‖c‖ + ‖d‖."""
    ca, shape = c.abs(), tuple(c.shape)
    elem = float((ca + d).max()) if c.numel() else 0.0
    frob = float(torch.linalg.vector_norm(c)) + float(torch.linalg.vector_norm(d))
    if c.dim() >= 1 and c.numel():
        row = float((torch.linalg.vector_norm(c, dim=-1) + torch.linalg.vector_norm(d, dim=-1)).max())
    else:
        row = elem
    spec = INF
    if c.dim() >= 2 and c.numel():
        flat_c = c.reshape(-1, *c.shape[-2:])
        flat_d = d.reshape(-1, *d.shape[-2:])
        spec = float((torch.linalg.matrix_norm(flat_c, 2) + torch.linalg.matrix_norm(flat_d, "fro")).max())
    return _Mag(frob, spec, row, elem).tidy(shape)


# ── the softmax end: from logits to λ_max ───────────────────────────────────────────────────


VARIED = "exact Jacobian at x plus a bound on its change over the ball (unstable activations)"
EXACT = "exact at x (differentiable there: no activation at a kink; autograd Jacobian)"
EXACT_LANCZOS = "exact at x (differentiable there; Lanczos on autograd products J_z^T M J_z v)"


def _logit_function(gm: torch.fx.GraphModule, node: torch.fx.Node, shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """flat input ↦ logits (the graph cut at the logit node, before any trailing softmax)."""
    graph = torch.fx.Graph()
    mapping: dict[torch.fx.Node, torch.fx.Node] = {}
    graph.graph_copy(gm.graph, mapping)
    graph.output(mapping[node])
    sub = torch.fx.GraphModule(gm, graph)
    sub.graph.eliminate_dead_code()
    sub.recompile()

    def logits_of(flat: Tensor) -> Tensor:
        return sub(flat.reshape(shape)).reshape(-1)

    return logits_of


def _fisher_top(jac: Tensor, p: Tensor) -> float:
    """λ_max(J_zᵀ(diag p − ppᵀ)J_z) exactly, as the K × K problem M^{1/2} G M^{1/2}."""
    m = torch.diag(p) - torch.outer(p, p)
    evals, evecs = torch.linalg.eigh(m)
    root = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    gram = jac @ jac.T
    return float(torch.linalg.eigvalsh(root @ gram @ root)[-1].clamp_min(0))


def _fixed_pattern_bound(jac: Tensor, out: Tensor, r: float) -> tuple[float, bool]:
    """J constant on the ball: z(x') = z + J(x' − x) exactly, so only p moves.

    `out` is the logits. |Δ(z_a − z_b)| ≤ r‖J_a − J_b‖ bounds p's range; then
    λ(x') ≤ λ(x) + ‖G‖·‖M(p') − M(p)‖ with ‖M(p') − M(p)‖ ≤ max|Δp| + 2‖Δp‖ (G = JJᵀ)."""
    z = out.to(torch.float64)
    p = torch.softmax(z, 0)
    exact = _fisher_top(jac, p)
    if r == 0:
        return exact, True
    diff = _pair_distances(jac) * r
    lo, hi = _softmax_range(z, diff)
    dp = torch.maximum(hi - p, p - lo)
    gram_norm = float(torch.linalg.matrix_norm(jac @ jac.T, 2))
    perturbed = exact + gram_norm * (float(dp.max()) + 2 * float(torch.linalg.vector_norm(dp)))
    row_rule = 0.25 * float(diff.max() / r) ** 2 if r > 0 else INF
    return lip._up(min(perturbed, row_rule)), False


def _jacobian_change(gm: torch.fx.GraphModule, node: torch.fx.Node, x: Tensor, terms: list[tuple[str, Tensor, Tensor]]) -> float:
    """A bound E ≥ ‖J_z(x') − J_z(x)‖₂ over the ball, for a piecewise-linear network.

    J_z is multi-affine in the nonlinear nodes' local derivative maps D_t (slopes, max-pool winners),
    so J(x') − J(x) = Σ_t C_t (D_t(x') − D_t(x)) P_t(x'), telescoping in topological order: C_t is the
    Jacobian of the logits with respect to node t's output at x (downstream nodes as at x: exact, by
    autograd through a zero added to that output), P_t the Jacobian of t's input at x' (upstream nodes
    as at x'). D_t changes only at the elements recorded as unstable, by at most `change`, and the rows
    of P_t there have norm ≤ δ/r (the walk's per-element radius over r bounds each element's gradient on
    the ball for these operators). So ‖·‖ ≤ Σ_t ‖C_t restricted to the unstable elements‖₂ · ‖w_t‖₂."""
    graph = torch.fx.Graph()
    mapping: dict[torch.fx.Node, torch.fx.Node] = {}
    graph.graph_copy(gm.graph, mapping)
    by_name = {old.name: new for old, new in mapping.items()}
    anchor = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for i, (name, _, _) in enumerate(terms):
        with graph.inserting_after(anchor):
            anchor = graph.placeholder(f"_zero{i}")
        target = by_name[name]
        with graph.inserting_after(target):
            added = graph.call_function(operator.add, (target, anchor))
        target.replace_all_uses_with(added, delete_user_cb=lambda user, a=added: user is not a)  # type: ignore[misc]
    graph.output(mapping[node])
    sub = torch.fx.GraphModule(gm, graph)
    zeros = [torch.zeros_like(weight) for _, _, weight in terms]

    def logits_of(*extra: Tensor) -> Tensor:
        return sub(x, *extra).reshape(-1)

    blocks = torch.func.jacrev(logits_of, argnums=tuple(range(len(terms))))(*zeros)
    total = 0.0
    for (_, mask, weight), block in zip(terms, blocks):
        cols = block.detach().reshape(block.shape[0], -1)[:, mask.reshape(-1)]
        if cols.numel():
            total += float(torch.linalg.matrix_norm(cols, 2)) * float(torch.linalg.vector_norm(weight[mask]))
    return lip._up(total)


def _varied_pattern_bound(jac: Tensor, z: Tensor, r: float, change: float) -> float:
    """λ_max(F(x')) when J(x') = J + Δ with ‖Δ‖ ≤ E (= change): ‖M'^{1/2}J'‖ ≤ ‖M'^{1/2}J‖ + E/√2,
    the first term bounded as in _fixed_pattern_bound with |Δ(z_a − z_b)| ≤ r(‖J_a − J_b‖ + √2E);
    also ¼max(‖J_a − J_b‖ + √2E)² (Popoviciu)."""
    p = torch.softmax(z.to(torch.float64), 0)
    pairs = _pair_distances(jac) + math.sqrt(2) * change
    lo, hi = _softmax_range(z.to(torch.float64), pairs * r)
    dp = torch.maximum(hi - p, p - lo)
    gram_norm = float(torch.linalg.matrix_norm(jac @ jac.T, 2))
    inner = _fisher_top(jac, p) + gram_norm * (float(dp.max()) + 2 * float(torch.linalg.vector_norm(dp)))
    return lip._up(min((math.sqrt(inner) + change / math.sqrt(2)) ** 2, 0.25 * float(pairs.max()) ** 2))


def _pair_distances(rows: Tensor) -> Tensor:
    """‖row_a − row_b‖ for all pairs."""
    g = rows @ rows.T
    dg = torch.diagonal(g)
    return (dg[:, None] + dg[None, :] - 2 * g).clamp_min(0).sqrt()


def _softmax_range(z: Tensor, diff: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise range of p' = softmax(z') when |Δ(z_a − z_b)| ≤ diff[a, b]:
    p'_a = 1 / Σ_b exp(z'_b − z'_a), monotone in each difference."""
    gaps = z[None, :] - z[:, None]  # gaps[a, b] = z_b − z_a
    hi = 1.0 / torch.exp(gaps - diff).sum(1)
    lo = 1.0 / torch.exp(gaps + diff).sum(1)
    return lo, hi


def _logit_difference_radius(val: _Val, final: _Final | None, r: float) -> Tensor:
    """diff[a, b] ≥ |Δ(z_a − z_b)| over the ball: from per-logit radii, from √2·L_z·r, and from the
    last layer's row differences ‖W_a − W_b‖·L_h·r."""
    assert val.delta is not None
    d = val.delta.reshape(-1)
    diff = torch.clamp(d[:, None] + d[None, :], max=math.sqrt(2) * val.lip * r)
    if final is not None:
        w = final.weight.to(torch.float64).reshape(final.weight.shape[0], -1)
        diff = torch.minimum(diff, _pair_distances(w) * final.lip_in * r)
    return diff


def _softmax_rules(z: Tensor, diff: Tensor, lz: float, final: _Final | None) -> tuple[float, str]:
    """sup over the ball of sup_v Var_{p'}(J v), with ‖J v‖ ≤ L_z and p' in its range.

    Three bounds, the smallest is used:
    - ½ L_z² (Var_p(u) ≤ ½‖u‖², MATH.md);
    - ¼ max_ab ‖W_a − W_b‖² L_h² (Popoviciu through the last linear layer);
    - around the top class c: Var_p(u) ≤ Σ_{y≠c} p_y (u_y − u_c)², so with D = rows W_y − W_c and
      u = W(J_h v): ≤ L_h² λ_max(Dᵀ diag(p_hi) D); without a last layer, ≤ 2 L_z² Σ_{y≠c} p_hi_y.
    The last one is what makes confident inputs small: it scales with the mass off the top class."""
    lo, hi = _softmax_range(z.to(torch.float64), diff)
    c = int(torch.argmax(z))
    others = torch.ones_like(hi, dtype=torch.bool)
    others[c] = False
    candidates = {"1/2 L^2": 0.5 * lz * lz, "top-class mass": 2 * lz * lz * float(hi[others].sum())}
    if final is not None:
        w = final.weight.to(torch.float64).reshape(final.weight.shape[0], -1)
        candidates["row differences"] = lip.row_difference_bound(w) * final.lip_in**2
        rows = (w[others] - w[c]) * hi[others].sqrt()[:, None]
        candidates["top-class mass, last layer"] = float(torch.linalg.matrix_norm(rows, 2)) ** 2 * final.lip_in**2
    rule = min(candidates, key=lambda key: candidates[key])
    return lip._up(candidates[rule]), rule


# ── operator classification ─────────────────────────────────────────────────────────────────

Handler = Callable[["_Walker", torch.fx.Node, Any, Any], Any]


def _classify(w: _Walker, n: torch.fx.Node) -> tuple[str, Handler, Any]:
    """(name, handler, parameters) for a node, or Unsupported naming its operator."""
    if n.op == "call_module":
        mod = w.module.get_submodule(str(n.target))
        return _classify_module(n, mod)
    if n.op == "call_function":
        return _classify_function(w, n)
    if n.op == "call_method":
        return _classify_method(w, n)
    raise Unsupported(n.op, "unexpected node kind")


def _module_activation(mod: nn.Module) -> Activation | None:
    simple = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "silu", nn.Mish: "mish",
              nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Softsign: "softsign",
              nn.LogSigmoid: "logsigmoid", nn.Tanhshrink: "tanhshrink", nn.SELU: "selu"}
    if type(mod) in simple:
        return lip.activation(simple[type(mod)])
    if isinstance(mod, nn.Hardtanh):  # ReLU6 is a Hardtanh
        return lip.activation("clip", low=float(mod.min_val), high=float(mod.max_val))
    if isinstance(mod, nn.LeakyReLU):
        return lip.activation("leaky_relu", alpha=float(mod.negative_slope))
    if isinstance(mod, nn.PReLU):  # the sign matters only for how far two slopes can differ
        return lip.activation("leaky_relu", alpha=-float(mod.weight.detach().abs().max()))
    if isinstance(mod, nn.GELU):
        return lip.activation("gelu_tanh" if mod.approximate == "tanh" else "gelu")
    if isinstance(mod, nn.ELU):
        return lip.activation("elu", alpha=float(mod.alpha))
    if isinstance(mod, nn.CELU):
        return lip.activation("celu", alpha=float(mod.alpha))
    if isinstance(mod, nn.Softplus):
        return lip.activation("softplus", beta=float(mod.beta))
    if isinstance(mod, nn.Softshrink):
        return lip.activation("softshrink", lambd=float(mod.lambd))
    return None


def _classify_module(n: torch.fx.Node, mod: nn.Module) -> tuple[str, Handler, Any]:
    name = type(mod).__name__
    act = _module_activation(mod)
    if act is not None:
        return name, _h_activation, act
    if isinstance(mod, nn.Linear):
        return name, _h_affine, (mod.weight, mod.bias)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if mod.padding_mode != "zeros":
            raise Unsupported(name, f"padding_mode={mod.padding_mode!r}: only zero padding is bounded")
        return name, _h_conv, dict(weight=mod.weight, bias=mod.bias, stride=mod.stride, padding=mod.padding, dilation=mod.dilation, groups=mod.groups)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        if mod.running_var is None:
            raise Unsupported(name, "batch norm without running statistics normalises by the batch")
        return name, _h_batchnorm, (mod.weight, mod.bias, mod.running_mean, mod.running_var, mod.eps)
    if isinstance(mod, nn.LayerNorm):
        return name, _h_layernorm, (mod.weight, mod.bias, mod.eps, len(mod.normalized_shape))
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return name, _h_maxpool, dict(kernel=mod.kernel_size, stride=mod.stride, dilation=mod.dilation, padding=mod.padding, ceil=mod.ceil_mode)
    if isinstance(mod, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        return name, _h_adaptive_maxpool, mod.output_size
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return name, _h_nonnegative, None
    if isinstance(mod, (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
        return name, _h_selection, None
    if isinstance(mod, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                        nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d)):
        return name, _h_selection, None
    if isinstance(mod, nn.Softmax):
        return name, _h_softmax, mod.dim
    if isinstance(mod, nn.LogSoftmax):
        return name, _h_log_softmax, mod.dim
    if isinstance(mod, nn.MultiheadAttention):
        return name, _h_mha, mod
    raise Unsupported(name, "no Lipschitz rule for this module")


_FN_ACTIVATIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.silu: "silu", F.mish: "mish", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", F.softsign: "softsign", F.logsigmoid: "logsigmoid", F.tanhshrink: "tanhshrink",
    F.selu: "selu", torch.selu: "selu",
}
_METHOD_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
_SELECTION_FNS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
                  torch.chunk, torch.split, torch.unbind, torch.narrow, torch.movedim, torch.swapaxes, F.pad,
                  torch.clone, torch.t, F.dropout, F.dropout1d, F.dropout2d, torch.tile, torch.broadcast_to}
_SELECTION_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                      "chunk", "split", "unbind", "narrow", "expand", "expand_as", "repeat", "clone", "t", "movedim",
                      "swapaxes", "view_as", "reshape_as", "float", "double", "type_as", "to", "detach", "unflatten"}


def _activation_of_function(w: _Walker, n: torch.fx.Node) -> Activation | None:
    t = n.target
    kw = n.kwargs
    if t in _FN_ACTIVATIONS:
        return lip.activation(_FN_ACTIVATIONS[t])
    if t is F.gelu:
        return lip.activation("gelu_tanh" if kw.get("approximate", "none") == "tanh" else "gelu")
    if t is F.leaky_relu:
        return lip.activation("leaky_relu", alpha=float(_arg(n, 1, "negative_slope", 0.01)))
    if t is F.elu:
        return lip.activation("elu", alpha=float(_arg(n, 1, "alpha", 1.0)))
    if t is F.celu:
        return lip.activation("celu", alpha=float(_arg(n, 1, "alpha", 1.0)))
    if t is F.softplus:
        return lip.activation("softplus", beta=float(_arg(n, 1, "beta", 1.0)))
    if t is F.hardtanh:
        return lip.activation("clip", low=float(_arg(n, 1, "min_val", -1.0)), high=float(_arg(n, 2, "max_val", 1.0)))
    if t in (torch.clamp, torch.clip):
        return _clamp_activation(n)
    return None


def _clamp_activation(n: torch.fx.Node) -> Activation:
    low, high = _arg(n, 1, "min", None), _arg(n, 2, "max", None)
    if isinstance(low, torch.fx.Node) or isinstance(high, torch.fx.Node):
        raise Unsupported("clamp", "clamp with tensor bounds")
    return lip.activation("clip", low=-INF if low is None else float(low), high=INF if high is None else float(high))


def _arg(n: torch.fx.Node, index: int, name: str, default: Any) -> Any:
    if len(n.args) > index:
        return n.args[index]
    return n.kwargs.get(name, default)


def _classify_function(w: _Walker, n: torch.fx.Node) -> tuple[str, Handler, Any]:
    t = n.target
    name = getattr(t, "__name__", str(t))
    act = _activation_of_function(w, n)
    if act is not None:
        return name, _h_activation, act
    table: dict[Any, tuple[Handler, Any]] = {
        operator.add: (_h_add, 1.0), torch.add: (_h_add, 1.0), operator.iadd: (_h_add, 1.0),
        operator.sub: (_h_add, -1.0), torch.sub: (_h_add, -1.0), operator.isub: (_h_add, -1.0),
        operator.neg: (_h_scale, -1.0), torch.neg: (_h_scale, -1.0),
        operator.mul: (_h_mul, None), torch.mul: (_h_mul, None), operator.imul: (_h_mul, None),
        operator.truediv: (_h_div, None), torch.div: (_h_div, None),
        torch.cat: (_h_cat, None), torch.concat: (_h_cat, None), torch.stack: (_h_cat, None),
        operator.matmul: (_h_matmul, None), torch.matmul: (_h_matmul, None), torch.bmm: (_h_matmul, None),
        F.linear: (_h_linear_fn, None), F.conv1d: (_h_conv_fn, None), F.conv2d: (_h_conv_fn, None), F.conv3d: (_h_conv_fn, None),
        F.batch_norm: (_h_batchnorm_call, _FN_BN_ARGS), F.layer_norm: (_h_layernorm_fn, None),
        F.softmax: (_h_softmax, None), torch.softmax: (_h_softmax, None),
        F.log_softmax: (_h_log_softmax, None), torch.log_softmax: (_h_log_softmax, None),
        F.avg_pool1d: (_h_nonnegative, None), F.avg_pool2d: (_h_nonnegative, None), F.avg_pool3d: (_h_nonnegative, None),
        F.adaptive_avg_pool1d: (_h_nonnegative, None), F.adaptive_avg_pool2d: (_h_nonnegative, None),
        F.adaptive_avg_pool3d: (_h_nonnegative, None), torch.mean: (_h_nonnegative, None), torch.sum: (_h_nonnegative, None),
        F.max_pool1d: (_h_maxpool_fn, None), F.max_pool2d: (_h_maxpool_fn, None), F.max_pool3d: (_h_maxpool_fn, None),
        F.adaptive_max_pool2d: (_h_adaptive_maxpool_fn, None), F.adaptive_max_pool1d: (_h_adaptive_maxpool_fn, None),
        F.scaled_dot_product_attention: (_h_sdpa, None),
    }
    if t is operator.getitem:
        return "getitem", _h_getitem, None
    if isinstance(t, torch._ops.OpOverload):
        return _classify_aten(n, t)
    if t in table:
        handler, spec = table[t]
        return name, handler, spec
    if t in _SELECTION_FNS:
        return name, _h_selection, None
    raise Unsupported(name, "no Lipschitz rule for this function")


def _aten_tables() -> tuple[dict[Any, tuple[Handler, Any]], dict[Any, str], set[Any]]:
    """torch.export graphs (`program.module()`) call ATen overloads; their arguments follow the
    functional ones, so the same handlers apply."""
    a = torch.ops.aten
    handlers: dict[Any, tuple[Handler, Any]] = {
        a.conv1d.default: (_h_conv_fn, None), a.conv2d.default: (_h_conv_fn, None), a.conv3d.default: (_h_conv_fn, None),
        a.linear.default: (_h_linear_fn, None), a.batch_norm.default: (_h_batchnorm_call, _ATEN_BN_ARGS), a.layer_norm.default: (_h_layernorm_fn, None),
        a.add.Tensor: (_h_add, 1.0), a.sub.Tensor: (_h_add, -1.0), a.neg.default: (_h_scale, -1.0), a.mul.Tensor: (_h_mul, None),
        a.div.Tensor: (_h_div, None), a.cat.default: (_h_cat, None), a.stack.default: (_h_cat, None),
        a.matmul.default: (_h_matmul, None), a.bmm.default: (_h_matmul, None), a.softmax.int: (_h_softmax, None),
        a._softmax.default: (_h_softmax, None), a.log_softmax.int: (_h_log_softmax, None), a._log_softmax.default: (_h_log_softmax, None),
        a.max_pool2d.default: (_h_maxpool_fn, None), a.avg_pool2d.default: (_h_nonnegative, None), a.avg_pool1d.default: (_h_nonnegative, None),
        a.adaptive_avg_pool2d.default: (_h_nonnegative, None), a.adaptive_avg_pool1d.default: (_h_nonnegative, None),
        a.mean.dim: (_h_nonnegative, None), a.mean.default: (_h_nonnegative, None), a.sum.dim_IntList: (_h_nonnegative, None),
        a.scaled_dot_product_attention.default: (_h_sdpa, None),
    }
    activations = {a.relu.default: "relu", a.relu6.default: "relu6", a.sigmoid.default: "sigmoid", a.tanh.default: "tanh",
                   a.silu.default: "silu", a.mish.default: "mish", a.hardswish.default: "hardswish", a.hardsigmoid.default: "hardsigmoid",
                   a.selu.default: "selu"}
    selections = {a.view.default, a.reshape.default, a.flatten.using_ints, a.permute.default, a.transpose.int, a.squeeze.dim,
                  a.squeeze.default, a.squeeze.dims, a.unsqueeze.default, a.unflatten.int, a.expand.default, a.contiguous.default,
                  a.select.int, a.slice.Tensor, a.clone.default, a.dropout.default, a.t.default, a.split.Tensor, a.chunk.default,
                  a.pad.default, a.constant_pad_nd.default, a.alias.default, a.detach.default, a.repeat.default, a.narrow.default,
                  a.unbind.int, a.split_with_sizes.default, a._unsafe_view.default, a.index_select.default}
    return handlers, activations, selections


_ATEN: tuple[dict[Any, tuple[Handler, Any]], dict[Any, str], set[Any]] | None = None


def _classify_aten(n: torch.fx.Node, t: Any) -> tuple[str, Handler, Any]:
    global _ATEN
    if _ATEN is None:
        _ATEN = _aten_tables()
    handlers, activations, selections = _ATEN
    a = torch.ops.aten
    name = str(t)
    if t in activations:
        return name, _h_activation, lip.activation(activations[t])
    if t is a.gelu.default:
        return name, _h_activation, lip.activation("gelu_tanh" if n.kwargs.get("approximate", "none") == "tanh" else "gelu")
    if t is a.leaky_relu.default:
        return name, _h_activation, lip.activation("leaky_relu", alpha=float(_arg(n, 1, "negative_slope", 0.01)))
    if t in (a.hardtanh.default, a.clamp.default):
        low, high = _arg(n, 1, "min_val" if t is a.hardtanh.default else "min", None), _arg(n, 2, "max_val" if t is a.hardtanh.default else "max", None)
        if isinstance(low, torch.fx.Node) or isinstance(high, torch.fx.Node):
            raise Unsupported(name, "tensor bounds")
        default_low, default_high = (-1.0, 1.0) if t is a.hardtanh.default else (-INF, INF)
        return name, _h_activation, lip.activation("clip", low=default_low if low is None else float(low), high=default_high if high is None else float(high))
    if t is a.softplus.default:
        return name, _h_activation, lip.activation("softplus", beta=float(_arg(n, 1, "beta", 1.0)))
    if t is a.elu.default:
        scale, input_scale = float(_arg(n, 2, "scale", 1.0)), float(_arg(n, 3, "input_scale", 1.0))
        if scale != 1.0 or input_scale != 1.0:
            raise Unsupported(name, "scaled ELU")
        return name, _h_activation, lip.activation("elu", alpha=float(_arg(n, 1, "alpha", 1.0)))
    if t in handlers:
        handler, spec = handlers[t]
        return name, handler, spec
    if t in selections:
        return name, _h_selection, None
    raise Unsupported(name, "no Lipschitz rule for this ATen operator")


def _classify_method(w: _Walker, n: torch.fx.Node) -> tuple[str, Handler, Any]:
    m = str(n.target)
    if m in _METHOD_ACTIVATIONS:
        return m, _h_activation, lip.activation(_METHOD_ACTIVATIONS[m])
    if m in ("clamp", "clip"):
        return m, _h_activation, _clamp_activation(n)
    if m in _SELECTION_METHODS:
        if m == "to" and any(isinstance(a, torch.dtype) and not a.is_floating_point for a in list(n.args) + list(n.kwargs.values())):
            raise Unsupported("to", "conversion to a non-floating dtype")
        return m, _h_selection, None
    table: dict[str, tuple[Handler, Any]] = {
        "add": (_h_add, 1.0), "add_": (_h_add, 1.0), "sub": (_h_add, -1.0), "neg": (_h_scale, -1.0),
        "mul": (_h_mul, None), "div": (_h_div, None), "matmul": (_h_matmul, None), "bmm": (_h_matmul, None),
        "mean": (_h_nonnegative, None), "sum": (_h_nonnegative, None),
        "softmax": (_h_softmax, None), "log_softmax": (_h_log_softmax, None),
    }
    if m in table:
        handler, spec = table[m]
        return m, handler, spec
    raise Unsupported(f"Tensor.{m}", "no Lipschitz rule for this method")


# ── handlers: each returns the node's _Val ──────────────────────────────────────────────────


def _data_args(w: _Walker, n: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in _flat_args(n) if isinstance(a, torch.fx.Node) and a in w.data]


def _flat_args(n: torch.fx.Node) -> list[Any]:
    out: list[Any] = []
    torch.fx.node.map_aggregate((n.args, n.kwargs), lambda a: out.append(a) or a)  # type: ignore[func-returns-value]
    return out


def _only_data(w: _Walker, n: torch.fx.Node) -> torch.fx.Node:
    data = _data_args(w, n)
    if len(set(data)) != 1:
        raise Unsupported(str(n.target), "expected exactly one input-dependent operand")
    return data[0]


def _rerun(w: _Walker, n: torch.fx.Node, substitute: dict[torch.fx.Node, Any]) -> Any:
    """Apply the node's own operation with some operands replaced (ones, radii, |weights|), each
    moved to the device of the value it replaces (probes are built on the CPU; the module may not be)."""
    def value(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            if a not in substitute:
                return w.env[a]
            new, old = substitute[a], w.env[a]
            return new.to(old.device) if isinstance(new, Tensor) and isinstance(old, Tensor) else new
        return a

    args = torch.fx.node.map_aggregate(n.args, value)
    kwargs = torch.fx.node.map_aggregate(n.kwargs, value)
    if n.op == "call_module":
        return w.module.get_submodule(str(n.target))(*args, **kwargs)
    if n.op == "call_method":
        return getattr(args[0], str(n.target))(*args[1:], **kwargs)
    return n.target(*args, **kwargs)  # type: ignore[operator]


def _h_activation(w: _Walker, n: Any, result: Tensor, act: Activation) -> _Val:
    x = _only_data(w, n)
    xv = w.val(x)
    shape = tuple(result.shape)
    m = xv.mag.tidy(tuple(w.env[x].shape))
    numel, last = math.prod(shape), shape[-1] if shape else 1
    mag = _Mag(min(act.grow * m.frob + act.offset * math.sqrt(numel), act.cap * math.sqrt(numel)), INF,
               min(act.grow * m.row + act.offset * math.sqrt(last), act.cap * math.sqrt(last)),
               min(act.grow * m.elem + act.offset, act.cap))
    if not w.local:
        return _Val(act.lipschitz * xv.lip, mag, own_lip=xv.own_lip)
    c, d = w.env[x].detach(), xv.delta
    assert d is not None
    lo, hi = c - d, c + d
    slope = act.local_slope(lo, hi)
    if act.piecewise_linear or w.radius == 0:
        if act.crosses_kink(lo, hi):
            w.note_kink(f"{act.name} at {n.name}")
            if act.piecewise_linear and w.radius:
                w.record_variation(n, act, lo, hi, slope, d)
    else:
        w.note_kink(f"smooth {act.name} at {n.name}")
        w.piecewise_linear = False
    return _Val(float(slope.max()) * xv.lip if slope.numel() else 0.0, mag, slope * d, constant=slope == 0, own_lip=xv.own_lip)


def _h_affine(w: _Walker, n: torch.fx.Node, result: Tensor, spec: tuple[Tensor, Tensor | None]) -> _Val:
    weight, bias = spec
    x = _only_data(w, n)
    return _affine_val(w, n, x, weight, bias, result)


def _affine_val(w: _Walker, n: torch.fx.Node, x: torch.fx.Node, weight: Tensor, bias: Tensor | None, result: Tensor) -> _Val:
    """z = x Wᵀ + b along the last axis (every other axis is a batch of tokens)."""
    xv = w.val(x)
    true_wt = wt = weight.detach().to(torch.float64)
    scale_in = w.input_scale.pop(n, None)
    if scale_in is not None and w.env[x].dim() == 2:
        wt = wt * scale_in[None, :]
    elif scale_in is not None:  # the batch norm's channels are not this layer's features: no move
        raise Unsupported("batch_norm", "internal: a moved scale met a linear layer on another axis")
    norm = lip.spectral_norm(wt)
    if _sole_user_is_foldable_bn(n):
        w.pending_fold[n] = ({"linear": wt}, xv.lip, [])
    w.finals[n] = _Final(wt, xv.lip)
    lip_out = norm * xv.lip
    b = bias.detach().to(torch.float64) if bias is not None else None
    m = xv.mag.tidy(tuple(w.env[x].shape))
    tokens = result.numel() // result.shape[-1] if result.numel() else 0
    bn = float(torch.linalg.vector_norm(b)) if b is not None else 0.0
    row_norms = torch.linalg.vector_norm(true_wt, dim=1)
    true_norm = norm if scale_in is None else INF  # size bounds need the true norm: left open then
    mag = _Mag(true_norm * m.frob + math.sqrt(tokens) * bn, INF, true_norm * m.row + bn,
               float(row_norms.max()) * m.row + (float(b.abs().max()) if b is not None else 0.0))
    if not w.local:
        return _Val(lip_out, mag)
    d = xv.delta
    assert d is not None and w.radius is not None
    interval = F.linear(d, true_wt.abs())
    rows = torch.linalg.vector_norm(wt, dim=1) * xv.lip * w.radius
    return _Val(lip_out, mag, torch.minimum(interval, rows.expand_as(interval)))


def _h_linear_fn(w: _Walker, n: torch.fx.Node, result: Tensor, spec: Any) -> _Val:
    weight = w.center(_arg(n, 1, "weight", None))
    bias = w.center(_arg(n, 2, "bias", None))
    if any(isinstance(a, torch.fx.Node) and a in w.data for a in (n.args[1:] + tuple(n.kwargs.values()))):
        raise Unsupported("linear", "input-dependent weights")
    return _affine_val(w, n, _only_data(w, n), weight, bias, result)


_HOMOGENEOUS = {F.relu, torch.relu, torch.ops.aten.relu.default, "relu"}
_CONV_FNS = {F.conv1d, F.conv2d, F.conv3d, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.conv3d.default}
_LINEAR_FNS = {F.linear, torch.ops.aten.linear.default}


def _relu_then_linear(w: _Walker, n: torch.fx.Node) -> torch.fx.Node | None:
    """The convolution or linear layer fed by relu(n) when that is n's only use and its only use."""
    users = list(n.users)
    if len(users) != 1 or not users[0].args or users[0].args[0] is not n or not _positively_homogeneous(w, users[0]):
        return None
    nexts = list(users[0].users)
    if len(nexts) != 1 or not nexts[0].args or nexts[0].args[0] is not users[0] or _is_linear(w, nexts[0]) is None:
        return None
    return nexts[0]


def _positively_homogeneous(w: _Walker, u: torch.fx.Node) -> bool:
    """relu, and leaky relu with a slope ≥ 0: σ(s·t) = s·σ(t) for s > 0."""
    if u.op == "call_module":
        mod = w.module.get_submodule(str(u.target))
        return type(mod) is nn.ReLU or (type(mod) is nn.LeakyReLU and mod.negative_slope >= 0)
    if u.op in ("call_function", "call_method") and u.target in _HOMOGENEOUS:
        return True
    if u.target in (F.leaky_relu, torch.ops.aten.leaky_relu.default):
        return float(_arg(u, 1, "negative_slope", 0.01)) >= 0
    return False


def _is_linear(w: _Walker, v: torch.fx.Node) -> bool | None:
    """True for a linear layer, False for a zero-padded convolution, None for anything else."""
    if v.op == "call_module":
        mod = w.module.get_submodule(str(v.target))
        if isinstance(mod, nn.Linear):
            return True
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and mod.padding_mode == "zeros":
            return False
        return None
    if v.op == "call_function" and v.target in _LINEAR_FNS:
        return True
    if v.op == "call_function" and v.target in _CONV_FNS:
        return False
    return None


def _scaled_input_channels(weight: Tensor, scale: Tensor, groups: int) -> Tensor:
    """W·diag(s) on the input channels (grouped: channel c is column c mod in_g of group c // in_g)."""
    out_c, in_g = weight.shape[:2]
    per_out = scale.to(weight.device, weight.dtype).reshape(groups, in_g).repeat_interleave(out_c // groups, dim=0)
    return weight * per_out.reshape(out_c, in_g, *([1] * (weight.dim() - 2)))


def _sole_user_is_foldable_bn(n: torch.fx.Node) -> bool:
    """Batch norm (module, functional or ATen) is the only user of n, on n itself."""
    users = list(n.users)
    if len(users) != 1 or not users[0].args or users[0].args[0] is not n:
        return False
    user = users[0]
    if user.op == "call_function":
        return user.target in (F.batch_norm, torch.ops.aten.batch_norm.default)
    root = user.graph.owning_module
    return user.op == "call_module" and root is not None and isinstance(root.get_submodule(str(user.target)), nn.modules.batchnorm._BatchNorm)


def _h_conv(w: _Walker, n: torch.fx.Node, result: Tensor, spec: dict[str, Any]) -> _Val:
    return _conv_val(w, n, _only_data(w, n), spec, result)


def _h_conv_fn(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    x = _only_data(w, n)
    if any(isinstance(a, torch.fx.Node) and a in w.data for a in n.args[1:]):
        raise Unsupported(str(n.target), "input-dependent weights")
    dims = w.env[x].dim() - 2
    spec = dict(weight=w.center(_arg(n, 1, "weight", None)), bias=w.center(_arg(n, 2, "bias", None)),
                stride=_tuple(_arg(n, 3, "stride", 1), dims), padding=_arg(n, 4, "padding", 0),
                dilation=_tuple(_arg(n, 5, "dilation", 1), dims), groups=int(_arg(n, 6, "groups", 1)))
    return _conv_val(w, n, x, spec, result)


def _tuple(v: Any, dims: int) -> tuple[int, ...]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * dims


def _conv_val(w: _Walker, n: torch.fx.Node, x: torch.fx.Node, spec: dict[str, Any], result: Tensor) -> _Val:
    xv = w.val(x)
    size = _unpadded_size(w, x)
    true_weight = weight = spec["weight"].detach().to(torch.float64)
    scale_in = w.input_scale.pop(n, None)
    if scale_in is not None:
        weight = _scaled_input_channels(weight, scale_in, int(spec["groups"]))
    dims = weight.dim() - 2
    stride, dilation = _tuple(spec["stride"], dims), _tuple(spec["dilation"], dims)
    geometry = dict(size=size, stride=stride, dilation=dilation, groups=int(spec["groups"]))
    if _sole_user_is_foldable_bn(n):
        w.pending_fold[n] = ({"conv": weight, **geometry}, xv.lip, size)
        norm = INF  # the batch norm after it computes the folded (tighter) norm; nothing else reads this
    else:
        norm = lip.conv_norm(weight, size, stride, dilation, int(spec["groups"]))
    lip_out = norm * xv.lip
    bias = spec["bias"]
    b = bias.detach().to(torch.float64) if bias is not None else None
    per_channel = torch.linalg.vector_norm(true_weight.reshape(true_weight.shape[0], -1), dim=1)
    m = xv.mag.tidy(tuple(w.env[x].shape))
    positions = result[0, 0].numel()
    bn = float(torch.linalg.vector_norm(b)) if b is not None else 0.0
    # The size bound needs the true operator norm; with moved batch-norm scales it is left open.
    mag = _Mag((norm if scale_in is None else INF) * m.frob + math.sqrt(positions) * bn, INF, INF,
               float(per_channel.max()) * m.frob + (float(b.abs().max()) if b is not None else 0.0))
    if not w.local:
        return _Val(lip_out, mag)
    d = xv.delta
    assert d is not None and w.radius is not None
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    interval = conv(d, true_weight.abs(), None, stride, spec["padding"], dilation, int(spec["groups"]))
    # |Δ out_c| ≤ ‖W_c‖·‖Δ in‖, with the moved scales inside W when `in` is relu(x + b/s).
    row_norms = torch.linalg.vector_norm(weight.reshape(weight.shape[0], -1), dim=1)
    rows = (row_norms * xv.lip * w.radius).reshape(1, -1, *([1] * dims))
    return _Val(lip_out, mag, torch.minimum(interval, rows.expand_as(interval)))


def _unpadded_size(w: _Walker, x: torch.fx.Node) -> list[int]:
    """The spatial size for the convolution's Fourier grid. Zero padding right before it (its only
    user) is part of the same zero-padded convolution, whose bound needs only the unpadded size
    (N ≥ n + k − 1): the same grid the ONNX exporter's fused Conv(pads) gets."""
    size = list(w.env[x].shape[2:])
    if len(x.users) != 1 or not x.all_input_nodes:
        return size
    zero_pad = False
    if x.op == "call_module":
        mod = w.module.get_submodule(str(x.target))
        zero_pad = isinstance(mod, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)) or (
            isinstance(mod, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)) and mod.value == 0)
        pads = getattr(mod, "padding", ())
    elif x.op == "call_function" and x.target is F.pad:
        zero_pad = _arg(x, 2, "mode", "constant") == "constant" and _arg(x, 3, "value", 0) in (0, None)
        pads = _arg(x, 1, "pad", ())
    if not zero_pad or any(int(p) < 0 for p in pads):
        return size
    src = w.shapes.get(x.all_input_nodes[0])
    return list(src[2:]) if src is not None and len(src) == w.env[x].dim() else size


def _h_batchnorm(w: _Walker, n: torch.fx.Node, result: Tensor, spec: tuple[Any, ...]) -> _Val:
    weight, bias, mean, var, eps = spec
    return _bn_val(w, n, _only_data(w, n), weight, bias, mean, var, float(eps), result)


# Positions of (weight, bias, running_mean, running_var) in the two batch_norm calls; both have
# training at 5 and eps at 7.
_ATEN_BN_ARGS = (1, 2, 3, 4)  # aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
_FN_BN_ARGS = (3, 4, 1, 2)  # F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _h_batchnorm_call(w: _Walker, n: torch.fx.Node, result: Tensor, at: tuple[int, int, int, int]) -> _Val:
    if bool(_arg(n, 5, "training", False)):
        raise Unsupported("batch_norm", "training-mode batch norm normalises by the batch")
    weight, bias, mean, var = (w.center(_arg(n, i, name, None)) for i, name in zip(at, ("weight", "bias", "running_mean", "running_var")))
    return _bn_val(w, n, _only_data(w, n), weight, bias, mean, var, float(_arg(n, 7, "eps", 1e-5)), result)


def _bn_val(w: _Walker, n: torch.fx.Node, x: torch.fx.Node, weight: Any, bias: Any, mean: Any, var: Any, eps: float, result: Tensor) -> _Val:
    """Eval-mode batch norm is the diagonal map s_c = γ_c/√(var_c + ε) plus a shift; folded into a
    convolution or linear layer right before it (its only user) when there is one."""
    if var is None or isinstance(var, torch.fx.Node) and var in w.data:
        raise Unsupported("batch_norm", "no running statistics")
    var_t = var.detach().to(torch.float64)
    scale = (weight.detach().to(torch.float64) if weight is not None else torch.ones_like(var_t)) / torch.sqrt(var_t + eps)
    shift_b = bias.detach().to(torch.float64) if bias is not None else torch.zeros_like(var_t)
    shift = shift_b - scale * mean.detach().to(torch.float64)
    xv = w.val(x)
    fold = w.pending_fold.pop(x, None)
    moved = False
    if fold is not None:
        info, lip_before, _ = fold
        if "conv" in info:
            folded = info["conv"] * scale.reshape(-1, *([1] * (info["conv"].dim() - 1)))
            lip_out = lip.conv_norm(folded, info["size"], info["stride"], info["dilation"], info["groups"]) * lip_before
        else:
            folded = info["linear"] * scale[:, None]
            lip_out = lip.spectral_norm(folded) * lip_before
            w.finals[n] = _Final(folded, lip_before)
    else:
        lip_out = float(scale.abs().max()) * xv.lip
        consumer = _relu_then_linear(w, n) if bool((scale > 0).all()) else None
        kind = _is_linear(w, consumer) if consumer is not None else None
        if consumer is not None and ((kind and result.dim() == 2) or (kind is False and result.dim() > 2)):
            # relu(s⊙x + b) = s⊙relu(x + b/s) for s > 0: the scale moves into the next layer's input
            # channels, whose norm with them is often far below max(s)·norm (dead channels, whose
            # tiny running variance makes s huge, usually carry small weights).
            w.input_scale[consumer] = scale
            lip_out, moved = xv.lip, True
    view = (1, -1) + (1,) * (result.dim() - 2)
    m = xv.mag.tidy(tuple(w.env[x].shape))
    positions = result[0, 0].numel() if result.dim() > 2 else 1
    mag = _Mag(float(scale.abs().max()) * m.frob + math.sqrt(positions) * float(torch.linalg.vector_norm(shift)), INF, INF,
               float(scale.abs().max()) * m.elem + float(shift.abs().max()))
    if not w.local:
        return _Val(lip_out, mag, own_lip=not moved)
    assert xv.delta is not None
    return _Val(lip_out, mag, xv.delta * scale.abs().reshape(view), own_lip=not moved)


def _h_layernorm(w: _Walker, n: torch.fx.Node, result: Tensor, spec: tuple[Any, ...]) -> _Val:
    weight, bias, eps, ndim = spec
    return _ln_val(w, n, _only_data(w, n), weight, bias, float(eps), int(ndim), result)


def _h_layernorm_fn(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    shape = _arg(n, 1, "normalized_shape", None)
    ndim = len(shape) if isinstance(shape, (tuple, list)) else 1
    return _ln_val(w, n, _only_data(w, n), w.center(_arg(n, 2, "weight", None)), w.center(_arg(n, 3, "bias", None)),
                   float(_arg(n, 4, "eps", 1e-5)), ndim, result)


def _ln_val(w: _Walker, n: torch.fx.Node, x: torch.fx.Node, weight: Any, bias: Any, eps: float, ndim: int, result: Tensor) -> _Val:
    """y = γ ⊙ (u − mean u)/√(var u + ε) + β over the last `ndim` axes. The Jacobian of
    u ↦ (u − ū)/√(var + ε) is (1/s)(I − ûûᵀ/n)P with s = √(var + ε), so its norm is 1/s ≤ 1/√ε
    (attained at constant tokens): that is LayerNorm's global constant, times max|γ|. Locally s
    stays above √(σ_lo² + ε) where σ_lo is the smallest token std reachable in the ball. The output
    is bounded whatever the input: each token has ‖y‖ ≤ max|γ|·√n + ‖β‖."""
    xv = w.val(x)
    c = w.env[x].detach()
    tokens_shape = c.shape[: c.dim() - ndim]
    n_tok = math.prod(c.shape[c.dim() - ndim:])
    gamma = weight.detach().to(torch.float64).reshape(-1) if weight is not None else torch.ones(n_tok, dtype=torch.float64, device=c.device)
    beta = bias.detach().to(torch.float64).reshape(-1) if bias is not None else torch.zeros(n_tok, dtype=torch.float64, device=c.device)
    g = float(gamma.abs().max())
    token_norm = g * math.sqrt(n_tok) + float(torch.linalg.vector_norm(beta))
    count = math.prod(tokens_shape)
    mag = _Mag(math.sqrt(count) * token_norm, INF, token_norm if ndim == 1 else INF, g * math.sqrt(max(n_tok - 1, 0)) + float(beta.abs().max()))
    if not w.local:
        return _Val(g / math.sqrt(eps) * xv.lip, mag)
    w.nonlinear(f"layer norm at {n.name}")
    assert xv.delta is not None and w.radius is not None
    flat = c.reshape(count, n_tok)
    moved = torch.clamp(torch.linalg.vector_norm(xv.delta.reshape(count, n_tok), dim=1), max=xv.lip * w.radius)
    std_lo = torch.clamp(flat.std(dim=1, unbiased=False) - moved / math.sqrt(n_tok), min=0.0)
    inv_s = 1.0 / torch.sqrt(std_lo**2 + eps)
    delta = (gamma.abs()[None, :] * (moved * inv_s)[:, None]).reshape(c.shape)
    # The Jacobian is block-diagonal over tokens; a token that cannot move on the ball (a class
    # token, a constant) has a zero block whatever its std.
    active = inv_s[moved > 0] if w.radius else inv_s
    return _Val(g * (float(active.max()) if active.numel() else 0.0) * xv.lip, mag, delta)


def _h_selection(w: _Walker, n: torch.fx.Node, result: Any, _: Any) -> Any:
    """Reshapes, permutations, slices, copies, padding, dropout in eval mode: ops that only move or
    copy elements. Their norm is √(most copies of one element), counted by one backward pass."""
    x = _only_data(w, n)
    xv = w.val(x)
    shape = tuple(w.env[x].shape)

    def apply(t: Tensor) -> Any:
        return _rerun(w, n, {x: t})

    def total(t: Tensor) -> Tensor:
        out = apply(t)
        return sum((o.sum() for o in out), torch.zeros((), dtype=torch.float64)) if isinstance(out, (tuple, list)) else out

    copies = lip.multiplicity(total, shape)
    factor = math.sqrt(copies)
    m = xv.mag.tidy(shape)
    rows = _row_factor(apply, shape) if math.isfinite(m.row) else INF
    mag = _Mag(factor * m.frob, INF, rows * m.row, m.elem)
    if w.local:
        assert xv.delta is not None
        delta = _pad_zero(n, apply, xv.delta)
        if isinstance(result, (tuple, list)):
            return [_Val(factor * xv.lip, replace(mag), dd) for dd in delta]
        return _Val(factor * xv.lip, mag, delta)
    if isinstance(result, (tuple, list)):
        return [_Val(factor * xv.lip, mag) for _ in result]
    return _Val(factor * xv.lip, mag)


def _pad_zero(n: torch.fx.Node, apply: Callable[[Tensor], Any], delta: Tensor) -> Any:
    """The op applied to the radii; constant padding adds elements that never move (radius 0)."""
    if n.target is F.pad and n.kwargs.get("value", n.args[3] if len(n.args) > 3 else 0) not in (0, None):
        return apply(delta) - apply(torch.zeros_like(delta))
    return apply(delta)


def _row_factor(apply: Callable[[Tensor], Any], shape: tuple[int, ...]) -> float:
    """How an op moves vectors along the last axis: tag each element with its input row, apply the
    op, and count the distinct input rows feeding one output row (their parts are sub-vectors, so
    the output row's norm is at most √count times the input's). Copies within a row give INF."""
    if not shape:
        return INF
    tags = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
    out = apply(tags)
    if isinstance(out, (tuple, list)):
        return max(_row_count(o, shape[-1]) for o in out) if out else 1.0
    return _row_count(out, shape[-1])


def _row_count(out: Tensor, n_last: int) -> float:
    if out.dim() == 0 or out.numel() == 0:
        return 1.0
    rows = out.reshape(-1, out.shape[-1])
    sorted_rows, _ = torch.sort(rows, dim=1)
    if bool((sorted_rows[:, 1:] == sorted_rows[:, :-1]).any()):
        return INF
    owners = torch.div(rows, n_last, rounding_mode="floor")
    owners_sorted, _ = torch.sort(owners, dim=1)
    distinct = 1 + (owners_sorted[:, 1:] != owners_sorted[:, :-1]).sum(dim=1)
    return math.sqrt(float(distinct.max()))


def _h_getitem(w: _Walker, n: torch.fx.Node, result: Any, spec: Any) -> Any:
    src: Any = n.args[0]
    if isinstance(w.vals.get(src), list):
        index = n.args[1]
        if not isinstance(index, int):
            raise Unsupported("getitem", "non-constant tuple index")
        item = w.vals[src][index]
        if item is None:
            raise Unsupported("getitem", "this output of the previous operator is not bounded")
        return item
    if any(isinstance(a, torch.fx.Node) and a in w.data for a in _flat_args(n)[1:]):
        raise Unsupported("getitem", "indexing with input-dependent indices")
    return _h_selection(w, n, result, spec)


def _broadcast_factor(operand: Tensor, result: Tensor) -> float:
    """An operand broadcast to the result's shape is copied numel(result)/numel(operand) times."""
    return math.sqrt(result.numel() / max(1, operand.numel()))


def _h_add(w: _Walker, n: torch.fx.Node, result: Tensor, sign: float) -> _Val:
    """x ± y: the Lipschitz constants add (for a residual block x + g(x): (1 + L_g)·L_x)."""
    alpha = float(n.kwargs.get("alpha", 1.0))  # type: ignore[arg-type]
    operands = [a for a in n.args[:2]]
    coefs = [1.0, abs(sign * alpha)]
    lip_out, frob, elem = 0.0, 0.0, 0.0
    delta: Tensor | None = torch.zeros_like(result) if w.local else None
    for a, coef in zip(operands, coefs):
        if isinstance(a, torch.fx.Node) and a in w.data:
            av, value = w.val(a), w.env[a]
            factor = _broadcast_factor(value, result)
            lip_out += coef * factor * av.lip
            m = av.mag.tidy(tuple(value.shape))
            frob += coef * factor * m.frob
            elem += coef * m.elem
            if w.local:
                assert av.delta is not None and delta is not None
                delta = delta + coef * av.delta
        else:
            const = torch.as_tensor(w.center(a), dtype=torch.float64)
            frob += coef * float(torch.linalg.vector_norm(const.expand_as(result))) if const.numel() else 0.0
            elem += coef * (float(const.abs().max()) if const.numel() else 0.0)
    return _Val(lip_out, _Mag(frob, INF, INF, elem), delta)


def _h_scale(w: _Walker, n: torch.fx.Node, result: Tensor, factor: float) -> _Val:
    x = _only_data(w, n)
    xv = w.val(x)
    m = xv.mag
    delta = xv.delta * abs(factor) if xv.delta is not None else None
    return _Val(abs(factor) * xv.lip, _Mag(abs(factor) * m.frob, abs(factor) * m.spec, abs(factor) * m.row, abs(factor) * m.elem), delta)


def _h_mul(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    a, b = n.args[0], n.args[1]
    a_data = isinstance(a, torch.fx.Node) and a in w.data
    b_data = isinstance(b, torch.fx.Node) and b in w.data
    if a_data and b_data:
        return _product(w, n, a, b, result)  # type: ignore[arg-type]
    x, c = (a, b) if a_data else (b, a)
    return _times_constant(w, x, torch.as_tensor(w.center(c), dtype=torch.float64), result)  # type: ignore[arg-type]


def _h_div(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    a, b = n.args[0], n.args[1]
    if isinstance(b, torch.fx.Node) and b in w.data:
        raise Unsupported("div", "division by an input-dependent tensor")
    if n.kwargs.get("rounding_mode") is not None:
        raise Unsupported("div", "rounding division is not continuous")
    return _times_constant(w, a, 1.0 / torch.as_tensor(w.center(b), dtype=torch.float64), result)  # type: ignore[arg-type]


def _times_constant(w: _Walker, x: torch.fx.Node, c: Tensor, result: Tensor) -> _Val:
    """x ⊙ C: ‖Δ‖² = Σ_k c_k² Δx_{j(k)}² ≤ max_j (Σ over the copies of x_j of c²)·‖Δx‖²."""
    xv = w.val(x)
    value = w.env[x]
    ones = torch.ones_like(value, requires_grad=True)
    (weight,) = torch.autograd.grad((ones * (c * c)).sum(), ones)
    factor = math.sqrt(float(weight.max())) if weight.numel() else 0.0
    cmax = float(c.abs().max()) if c.numel() else 0.0
    delta = xv.delta * c.abs() if xv.delta is not None else None
    m = xv.mag.tidy(tuple(value.shape))
    return _Val(lip._up(factor) * xv.lip, _Mag(factor * m.frob, INF, INF, cmax * m.elem), delta)


def _product(w: _Walker, n: torch.fx.Node, a: torch.fx.Node, b: torch.fx.Node, result: Tensor) -> _Val:
    """a ⊙ b of two input-dependent tensors: x·sigmoid(x) is SiLU; otherwise the product rule
    ‖Δ(a⊙b)‖ ≤ ‖Δa‖·max|b| + max|a|·‖Δb‖, which needs both bounded (no constant exists if not)."""
    for x, s in ((a, b), (b, a)):
        if s.op in ("call_function", "call_method") and s.target in (torch.sigmoid, F.sigmoid, "sigmoid", torch.ops.aten.sigmoid.default) and s.args[0] is x:
            return _h_activation(w, _Proxyless(n, x), result, lip.activation("silu"))
    ma, mb = w.mag(a), w.mag(b)
    if not (math.isfinite(ma.elem) and math.isfinite(mb.elem)):
        raise Unsupported("mul", "product of two input-dependent tensors, one of them unbounded on this domain: no Lipschitz constant")
    av, bv = w.val(a), w.val(b)
    w.nonlinear(f"product at {n.name}")
    lip_out = _broadcast_factor(w.env[a], result) * av.lip * mb.elem + _broadcast_factor(w.env[b], result) * bv.lip * ma.elem
    delta = None
    if w.local:
        assert av.delta is not None and bv.delta is not None
        delta = w.env[a].abs() * bv.delta + av.delta * w.env[b].abs() + av.delta * bv.delta
    return _Val(lip_out, _Mag(min(ma.elem * mb.frob, ma.frob * mb.elem), INF, INF, ma.elem * mb.elem), delta)


class _Proxyless:
    """A stand-in node whose only data argument is x (to reuse the activation handler)."""

    def __init__(self, node: torch.fx.Node, x: torch.fx.Node) -> None:
        self.args = (x,)
        self.kwargs: dict[str, Any] = {}
        self.name = node.name
        self.op = "call_function"
        self.target = F.silu

    @property
    def all_input_nodes(self) -> list[torch.fx.Node]:
        return [self.args[0]]


def _h_cat(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    """Concatenation: ‖(Δa, Δb)‖² = ‖Δa‖² + ‖Δb‖², so the constants add in squares."""
    parts = n.args[0] if n.args else n.kwargs.get("tensors")
    assert isinstance(parts, (tuple, list))
    lips, frobs, elems = [], [], []
    for p in parts:
        if isinstance(p, torch.fx.Node) and p in w.data:
            pv = w.val(p)
            m = pv.mag.tidy(tuple(w.env[p].shape))
            lips.append(pv.lip)
            frobs.append(m.frob)
            elems.append(m.elem)
        else:
            const = torch.as_tensor(w.center(p), dtype=torch.float64)
            frobs.append(float(torch.linalg.vector_norm(const)))
            elems.append(float(const.abs().max()) if const.numel() else 0.0)
    delta = None
    if w.local:
        radii = {p: w.val(p).delta for p in parts if isinstance(p, torch.fx.Node) and p in w.data}
        delta = _rerun(w, n, {p: (radii[p] if p in radii else torch.zeros_like(w.env[p])) for p in parts if isinstance(p, torch.fx.Node)})
    lip_out = math.sqrt(sum(v * v for v in lips))
    return _Val(lip_out, _Mag(math.sqrt(sum(f * f for f in frobs)), INF, INF, max(elems)), delta)


def _h_nonnegative(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    """Averaging and summing maps (average pooling, adaptive pooling, mean, sum): linear with
    nonnegative weights, so ‖A‖₂ ≤ √(‖A‖₁‖A‖∞), exact for global average pooling (1/√n)."""
    x = _only_data(w, n)
    xv = w.val(x)
    shape = tuple(w.env[x].shape)
    norm = lip.nonnegative_map_norm(lambda t: _rerun(w, n, {x: t}), shape)
    delta = _rerun(w, n, {x: xv.delta}) if w.local and xv.delta is not None else None
    m = xv.mag.tidy(shape)
    row_sum = float(_rerun(w, n, {x: torch.ones(shape, dtype=torch.float64)}).max())
    return _Val(norm * xv.lip, _Mag(norm * m.frob, INF, INF, row_sum * m.elem), delta)


def _h_maxpool(w: _Walker, n: torch.fx.Node, result: Tensor, spec: dict[str, Any]) -> _Val:
    x = _only_data(w, n)
    dims = w.env[x].dim() - 2
    kernel = _tuple(spec["kernel"], dims)
    stride = _tuple(spec["stride"] if spec["stride"] else spec["kernel"], dims)
    dilation = _tuple(spec["dilation"], dims)
    factor = lip.max_pool_factor(kernel, stride, dilation)
    return _max_val(w, n, x, factor, dict(kernel=kernel, stride=stride, dilation=dilation, padding=_tuple(spec["padding"], dims), ceil=spec["ceil"]))


def _h_maxpool_fn(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    if bool(_arg(n, 6, "return_indices", False)):
        raise Unsupported("max_pool", "return_indices")
    kernel = _arg(n, 1, "kernel_size", None)
    stride = _arg(n, 2, "stride", None) or kernel
    spec = dict(kernel=kernel, stride=stride, dilation=_arg(n, 4, "dilation", 1), padding=_arg(n, 3, "padding", 0), ceil=bool(_arg(n, 5, "ceil_mode", False)))
    return _h_maxpool(w, n, result, spec)


def _h_adaptive_maxpool(w: _Walker, n: torch.fx.Node, result: Tensor, out_size: Any) -> _Val:
    """Adaptive max pooling: window i on an axis of n is [⌊in/o⌋, ⌈(i + 1)n/o⌉); the factor is √(most
    windows holding one position), per axis, multiplied."""
    x = _only_data(w, n)
    sizes = w.env[x].shape[2:]
    outs = _tuple(out_size, len(sizes)) if out_size is not None else tuple(result.shape[2:])
    m = 1
    for size, o in zip(sizes, outs):
        o = int(o) if o is not None else int(size)
        count = [0] * int(size)
        for i in range(o):
            for j in range((i * size) // o, -(-((i + 1) * size) // o)):
                count[j] += 1
        m *= max(count)
    return _max_val(w, n, x, math.sqrt(m), None)


def _h_adaptive_maxpool_fn(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    if bool(_arg(n, 2, "return_indices", False)):
        raise Unsupported("adaptive_max_pool", "return_indices")
    return _h_adaptive_maxpool(w, n, result, _arg(n, 1, "output_size", None))


def _max_val(w: _Walker, n: torch.fx.Node, x: torch.fx.Node, factor: float, geometry: dict[str, Any] | None) -> _Val:
    """|max a − max b| ≤ max|a − b| per window, so the op applied to the radii bounds the output's."""
    xv = w.val(x)
    m = xv.mag.tidy(tuple(w.env[x].shape))
    mag = _Mag(factor * m.frob, INF, INF, m.elem)
    if not w.local:
        return _Val(factor * xv.lip, mag)
    assert xv.delta is not None
    # On a ball of positive radius an element whose radius is 0 cannot move at all.
    constant = (xv.delta == 0) if w.radius else xv.constant
    delta = _rerun(w, n, {x: xv.delta})
    unstable = _changing_windows(w.env[x], xv.delta, geometry, constant)
    if unstable is None or bool(unstable.any()):
        w.note_kink(f"max-pool winner may change at {n.name}")
        if w.radius and unstable is not None and unstable.shape == delta.shape:
            # A changed winner swaps one input's gradient row for another's: at most twice the
            # largest gradient bound in the window (the pooled δ/r).
            w.variation.append((n.name, unstable, 2 * delta / w.radius))
        elif w.radius:
            w.piecewise_linear = False  # cannot say which windows change: no variation bound
    return _Val(factor * xv.lip, mag, delta)


def _changing_windows(c: Tensor, d: Tensor, geometry: dict[str, Any] | None, constant: Tensor | None) -> Tensor | None:
    """Per output of a 2-D max pool, whether its winner may change in the ball: False where one
    element stays the maximum (its lower end above every other element's upper end), or every
    element that could win is constant on the ball (a tie of dead ReLUs: the maximum is then constant
    too). None for other pools (not analysed)."""
    if geometry is None or c.dim() != 4 or geometry["ceil"]:
        return None
    pad = geometry["padding"]
    lo = F.pad(c - d, (pad[1], pad[1], pad[0], pad[0]), value=-INF)
    hi = F.pad(c + d, (pad[1], pad[1], pad[0], pad[0]), value=-INF)
    k, s, dil = geometry["kernel"], geometry["stride"], geometry["dilation"]
    lo_w = F.unfold(lo.reshape(-1, 1, *lo.shape[2:]), k, dilation=dil, stride=s)
    hi_w = F.unfold(hi.reshape(-1, 1, *hi.shape[2:]), k, dilation=dil, stride=s)
    best = lo_w.max(dim=1, keepdim=True).values
    contenders = hi_w >= best
    if constant is None:
        moving = contenders
    else:
        fixed = F.pad(constant.to(c.dtype), (pad[1], pad[1], pad[0], pad[0]), value=1.0)
        fixed_w = F.unfold(fixed.reshape(-1, 1, *fixed.shape[2:]), k, dilation=dil, stride=s) > 0.5
        moving = contenders & ~fixed_w
    steady = (contenders.sum(dim=1) <= 1) | (moving.sum(dim=1) == 0)
    out_h = (c.shape[2] + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // s[0] + 1
    out_w = (c.shape[3] + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // s[1] + 1
    return (~steady).reshape(c.shape[0], c.shape[1], out_h, out_w)


def _h_softmax(w: _Walker, n: torch.fx.Node, result: Tensor, dim: Any) -> _Val:
    """Softmax along one axis: each slice's Jacobian is diag p − ppᵀ, of norm ≤ ½. Every slice is a
    probability vector (‖·‖₂ ≤ 1), and along the last axis every matrix slice is row-stochastic, so
    its spectral norm is ≤ √(rows) (‖A‖₂² ≤ ‖A‖₁‖A‖∞)."""
    x = _only_data(w, n)
    axis = dim if dim is not None else _arg(n, 1, "dim", None)
    if axis is None:
        raise Unsupported("softmax", "implicit dim")
    axis = int(axis) % result.dim()
    xv = w.val(x)
    if result.numel() == result.shape[-1]:
        w.pre_softmax[n] = (x, w.env[x].detach().clone(), xv.delta)
    else:
        w.nonlinear(f"softmax at {n.name}")
    last = axis == result.dim() - 1
    rows = result.shape[-2] if result.dim() >= 2 else 1
    slices = result.numel() // result.shape[axis]
    mag = _Mag(math.sqrt(slices), math.sqrt(rows) if last else INF, 1.0 if last else INF, 1.0)
    delta = None
    if w.local:
        assert xv.delta is not None
        c = w.env[x].detach().movedim(axis, -1)
        dd = xv.delta.movedim(axis, -1)
        lo, hi = _softmax_box(c - dd, c + dd)
        p = torch.softmax(c, -1)
        delta = torch.maximum(hi - p, p - lo).movedim(-1, axis)
    return _Val(0.5 * xv.lip, mag, delta)


def _softmax_box(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Range of softmax along the last axis when each logit lies in [lo, hi] (p_i grows with z_i and
    falls with every other z_j)."""
    shift = hi.max(dim=-1, keepdim=True).values
    e_lo, e_hi = torch.exp(lo - shift), torch.exp(hi - shift)
    s_lo, s_hi = e_lo.sum(-1, keepdim=True), e_hi.sum(-1, keepdim=True)
    return e_lo / (s_hi - e_hi + e_lo), e_hi / (s_lo - e_lo + e_hi)


def _h_log_softmax(w: _Walker, n: torch.fx.Node, result: Tensor, dim: Any) -> _Val:
    """Only meaningful as the last op (F does not change); elsewhere ‖I − 1pᵀ‖ ≤ 1 + √K."""
    x = _only_data(w, n)
    xv = w.val(x)
    if result.numel() == result.shape[-1]:
        w.pre_softmax[n] = (x, w.env[x].detach().clone(), xv.delta)
    else:
        w.nonlinear(f"log_softmax at {n.name}")
    k = result.shape[-1]
    return _Val((1 + math.sqrt(k)) * xv.lip, _Mag(), None)


def _h_matmul(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    a, b = n.args[0], n.args[1]
    a_data = isinstance(a, torch.fx.Node) and a in w.data
    b_data = isinstance(b, torch.fx.Node) and b in w.data
    if a_data and b_data:
        return _bilinear(w, a, b, result)  # type: ignore[arg-type]
    if a_data:
        return _matmul_constant(w, a, torch.as_tensor(w.center(b), dtype=torch.float64), result, right=True)  # type: ignore[arg-type]
    return _matmul_constant(w, b, torch.as_tensor(w.center(a), dtype=torch.float64), result, right=False)  # type: ignore[arg-type]


def _matmul_constant(w: _Walker, x: torch.fx.Node, c: Tensor, result: Tensor, right: bool) -> _Val:
    """X @ C (or C @ X) with C constant: ‖C‖₂ per matrix slice; when X is shared by several slices
    of C (broadcast), those add in squares."""
    xv = w.val(x)
    value = w.env[x]
    if c.dim() < 2:
        raise Unsupported("matmul", "matrix-vector products with a constant vector are not handled")
    norms = torch.linalg.matrix_norm(c.reshape(-1, *c.shape[-2:]), 2)
    broadcast = _batch_numel(result) > _batch_numel(value)
    norm = lip._up(float(torch.sqrt((norms**2).sum())) if broadcast else float(norms.max()))
    if right and c.dim() == 2:
        w.finals[_node_of(w, result)] = _Final(c.T, xv.lip)
    delta = None
    if w.local:
        assert xv.delta is not None
        delta = xv.delta @ c.abs() if right else c.abs() @ xv.delta
    m = xv.mag.tidy(tuple(value.shape))
    return _Val(norm * xv.lip, _Mag(norm * m.frob, INF, norm * m.row if right else INF, INF), delta)


def _node_of(w: _Walker, result: Tensor) -> Any:
    """The node being computed (the Interpreter's current one)."""
    return w._current


def _batch_numel(t: Tensor) -> int:
    """How many matrices a (batched) matmul operand holds."""
    return t.numel() // (t.shape[-1] * t.shape[-2]) if t.dim() >= 2 and t.numel() else 1


def _bilinear(w: _Walker, a: torch.fx.Node, b: torch.fx.Node, result: Tensor) -> _Val:
    """A @ B of two input-dependent tensors (hand-written attention): per matrix slice
    ‖Δ(AB)‖_F ≤ ‖ΔA‖_F‖B‖₂ + ‖A‖₂‖ΔB‖_F, so L ≤ L_A·max‖B‖₂ + max‖A‖₂·L_B. Needs both bounded:
    dot-product attention has no global Lipschitz constant on unbounded inputs."""
    ma, mb = w.mag(a), w.mag(b)
    if not (math.isfinite(ma.spec) and math.isfinite(mb.spec)):
        raise Unsupported("matmul", UNBOUNDED_PRODUCT)
    av, bv = w.val(a), w.val(b)
    w.nonlinear("matrix product of two activations")
    lip_out = _broadcast_factor(w.env[a], result) * av.lip * mb.spec + _broadcast_factor(w.env[b], result) * bv.lip * ma.spec
    delta = None
    if w.local:
        assert av.delta is not None and bv.delta is not None
        ca, cb = w.env[a].abs(), w.env[b].abs()
        delta = ca @ bv.delta + av.delta @ cb + av.delta @ bv.delta
    return _Val(lip_out, _Mag(min(ma.spec * mb.frob, ma.frob * mb.spec), INF, INF, INF), delta)


def _attention_lipschitz(lq: float, lk: float, lv: float, rq: float, rk: float, rv: float, nq: int, nk: int, scale: float) -> float:
    """Dot-product attention O = softmax(s·QKᵀ)V, row by row (docs/math.md):
    ‖ΔO‖_F ≤ √N_q‖ΔV‖_F + (s·R_v/√2)(√N_k R_k‖ΔQ‖_F + √N_q R_q‖ΔK‖_F),
    with R the largest row norm of Q, K, V: the value path through a row-stochastic A (‖A‖₂ ≤ √N_q),
    the score path through diag a − aaᵀ, whose square root is ≤ 1/√2 and whose action on V is
    Var_a(V w) ≤ R_v²."""
    if not all(math.isfinite(r) for r in (rq, rk, rv)):
        raise Unsupported("attention", "queries/keys/values are not bounded on this domain (no LayerNorm before the attention): "
                          "dot-product attention has no global Lipschitz constant")
    return math.sqrt(nq) * lv + scale * rv / math.sqrt(2) * (math.sqrt(nk) * rk * lq + math.sqrt(nq) * rq * lk)


def _h_sdpa(w: _Walker, n: torch.fx.Node, result: Tensor, _: Any) -> _Val:
    q, k, v = cast(Any, n.args[0]), cast(Any, n.args[1]), cast(Any, n.args[2])
    mask = _arg(n, 3, "attn_mask", None)
    if isinstance(mask, torch.fx.Node) and mask in w.data:
        raise Unsupported("scaled_dot_product_attention", "input-dependent mask")
    vals, mags = [], []
    for t in (q, k, v):
        if not (isinstance(t, torch.fx.Node) and t in w.data):
            raise Unsupported("scaled_dot_product_attention", "constant query/key/value")
        vals.append(w.val(t))
        mags.append(w.mag(t))
    if float(_arg(n, 4, "dropout_p", 0.0)) > 0:
        raise Unsupported("scaled_dot_product_attention", "dropout_p > 0 makes the output random")
    w.nonlinear(f"attention at {n.name}")
    qv = w.env[q]
    scale = _arg(n, 6, "scale", None)
    s = float(scale) if scale is not None else 1.0 / math.sqrt(qv.shape[-1])
    nq, nk = qv.shape[-2], w.env[k].shape[-2]
    lip_out = _attention_lipschitz(vals[0].lip, vals[1].lip, vals[2].lip, mags[0].row, mags[1].row, mags[2].row, nq, nk, s)
    # Each output row is a convex combination of value rows.
    return _Val(lip_out, _Mag(math.sqrt(result.numel() // result.shape[-1]) * mags[2].row, INF, mags[2].row, mags[2].elem))


def _h_mha(w: _Walker, n: torch.fx.Node, result: Any, mod: nn.MultiheadAttention) -> list[_Val | None]:
    """nn.MultiheadAttention (eval, no masks): in-projections, per-head attention, concatenation,
    out-projection. Returns (output, None): the attention weights are not bounded here."""
    if _arg(n, 3, "key_padding_mask", None) is not None or _arg(n, 5, "attn_mask", None) is not None:
        raise Unsupported("MultiheadAttention", "masks are not handled")
    if mod.bias_k is not None or mod.add_zero_attn or not mod._qkv_same_embed_dim:
        raise Unsupported("MultiheadAttention", "bias_k/bias_v, add_zero_attn or separate q/k/v dims")
    q, k, v = cast(Any, n.args[0]), cast(Any, n.args[1]), cast(Any, n.args[2])
    heads, e = mod.num_heads, mod.embed_dim
    dh = e // heads
    weights = mod.in_proj_weight.detach().to(torch.float64).reshape(3, e, e)
    biases = (mod.in_proj_bias.detach().to(torch.float64).reshape(3, e) if mod.in_proj_bias is not None
              else torch.zeros(3, e, dtype=torch.float64, device=weights.device))
    lips, rows = [], []
    for i, t in enumerate((q, k, v)):
        if not (isinstance(t, torch.fx.Node) and t in w.data):
            raise Unsupported("MultiheadAttention", "constant query/key/value")
        lips.append(lip.spectral_norm(weights[i]) * w.val(t).lip)
        # Row norm of one head's projection: ‖W_h‖‖x‖ + ‖b_h‖, the largest over heads.
        head_w = weights[i].reshape(heads, dh, e)
        head_b = biases[i].reshape(heads, dh)
        rows.append(float((torch.linalg.matrix_norm(head_w, 2) * w.mag(t).row + torch.linalg.vector_norm(head_b, dim=1)).max()))
    w.nonlinear(f"attention at {n.name}")
    axis = 1 if mod.batch_first else 0
    nq, nk = w.env[q].shape[axis], w.env[k].shape[axis]
    inner = _attention_lipschitz(lips[0], lips[1], lips[2], rows[0], rows[1], rows[2], nq, nk, 1.0 / math.sqrt(dh))
    out_w = mod.out_proj.weight.detach().to(torch.float64)
    out_b = mod.out_proj.bias.detach().to(torch.float64) if mod.out_proj.bias is not None else torch.zeros(e, dtype=torch.float64, device=out_w.device)
    out_norm = lip.spectral_norm(out_w)
    row = out_norm * math.sqrt(heads) * rows[2] + float(torch.linalg.vector_norm(out_b))
    return [_Val(out_norm * inner, _Mag(math.sqrt(nq) * row, INF, row, INF)), None]
