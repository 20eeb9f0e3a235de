"""An upper bound on λ_max(F) at every input, read from an ONNX graph (docs/math.md, "Bounds from the graph").

`graph_bound("model.onnx")` reads the file with the `onnx` package only (initializers, node types,
shape inference, and onnx's reference evaluator for constant sub-graphs and for moving index tags
through reshapes); no runtime, no framework. It composes the same certified rules as the torch
adapter's `fimaudit_torch.graph_bound` (one L per input-dependent tensor: products along a path,
sums for additions, root-sum-of-squares for concatenations; size bounds for bilinear operators),
so for the same network exported to ONNX it gives the same number or a larger one (the exporter
may decompose an operator, e.g. nn.MultiheadAttention into MatMul/Softmax, whose generic rule is
looser than the dedicated one). Operators without a rule give None with the operator named.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fimaudit.lipschitz_bound import (  # noqa: F401  (GELU, SILU...: the constants, also read from here)
    GELU,
    GELU_TANH,
    INF,
    MISH,
    SELU_ALPHA,
    SELU_SCALE,
    SILU,
    UNBOUNDED_PRODUCT,
    Bound,
    Unsupported,
    last_step,
    scope_of,
)
from fimaudit.lipschitz_bound import Mag as _Mag
from fimaudit.lipschitz_bound import up as _up


@dataclass
class _Val:
    lip: float
    mag: _Mag
    shape: tuple[int, ...]


def graph_bound(model: str | Path | onnx.ModelProto, input_shape: Sequence[int] | None = None, *,
                input_name: str | None = None, output_name: str | None = None, input_norm: float | None = None,
                outputs: str | None = None) -> Bound:
    """A bound on λ_max(F) at every input of the ONNX classifier (logits or probabilities output).

    `input_shape` (no batch axis) is needed only where the file leaves dims open; `input_norm`
    states a domain ‖x‖₂ ≤ input_norm for attention without normalisation (see graph_bound in
    fimaudit_torch). `outputs` is what the adapter detected ("logits", "probabilities"):
    probabilities must come from a final Softmax/LogSoftmax in the graph."""
    start = time.perf_counter()
    scope = scope_of(input_norm)
    try:
        walk = _Graph(_load(model), input_shape, input_name, output_name, input_norm)
        walk.outputs = outputs
        value, lz, rule = walk.run()
    except Unsupported as err:
        return Bound(None, "graph-lipschitz-onnx", scope, err.op, err.reason, seconds=time.perf_counter() - start)
    return Bound(value, "graph-lipschitz-onnx", scope, lipschitz=lz, seconds=time.perf_counter() - start,
                 details={"final_rule": rule, "operators": walk.ops})


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if proto.functions:
        from onnx import inliner

        proto = inliner.inline_local_functions(proto)
    return proto


# ── numeric rules (numpy twins of fimaudit_torch.lipschitz) ──────────────────────────────────


def _spectral(m: np.ndarray) -> float:
    """Largest ‖·‖₂ over the matrices of m (…, a, b)."""
    if m.size == 0:
        return 0.0
    return _up(float(np.linalg.svd(m.astype(np.float64), compute_uv=False).max()))


def _conv_norm(weight: np.ndarray, size: Sequence[int], stride: Sequence[int], dilation: Sequence[int], groups: int) -> float:
    """Fourier bound of a zero-padded, strided, grouped convolution (see fimaudit_torch.lipschitz.conv_norm):
    max over coarse frequencies of √(λ_max(Σ_aliases K̂K̂ᴴ)/Πs), on a grid N ≥ n + k_eff − 1."""
    w = weight.astype(np.float64)
    if any(d != 1 for d in dilation):
        spatial = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dilation)]
        dense = np.zeros((*w.shape[:2], *spatial))
        dense[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dilation)] = w
        w = dense
    out_c, in_g = w.shape[:2]
    dims = w.ndim - 2
    if all(k == 1 for k in w.shape[2:]):  # constant spectrum: ‖W‖ per group
        return _spectral(w.reshape(groups, out_c // groups, in_g))
    grid = [-(-(n + k - 1) // s) * s for n, k, s in zip(size, w.shape[2:], stride)]
    blocks = w.reshape(groups, out_c // groups, in_g, *w.shape[2:])
    chunk = max(1, int(2e7 // max(1, (out_c // groups) * in_g * math.prod(grid))))
    best = 0.0
    for start in range(0, groups, chunk):
        spectrum = np.fft.fftn(blocks[start:start + chunk], s=grid, axes=tuple(range(3, 3 + dims)))
        shape = list(spectrum.shape[:3])
        for n, s in zip(grid, stride):
            shape += [s, n // s]
        spectrum = spectrum.reshape(shape)
        order = [0, *[4 + 2 * i for i in range(dims)], 1, 2, *[3 + 2 * i for i in range(dims)]]
        stacked = spectrum.transpose(order)
        stacked = stacked.reshape(*stacked.shape[: 1 + dims], shape[1], -1)
        if 1 in stacked.shape[-2:]:
            best = max(best, float(np.sqrt((np.abs(stacked) ** 2).sum(axis=(-2, -1))).max()))
        else:
            best = max(best, float(np.linalg.svd(stacked, compute_uv=False)[..., 0].max()))
    return _up(best / math.sqrt(math.prod(stride)))


def _row_difference(w: np.ndarray) -> float:
    """¼ max_ab ‖W_a − W_b‖² for logits z = W h + b (Popoviciu; see lipschitz.row_difference_bound)."""
    g = w @ w.T
    d = np.diag(g)
    return _up(0.25 * float(np.clip(d[:, None] + d[None, :] - 2 * g, 0, None).max()))


def _max_pool_factor(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> float:
    m = 1
    for k, s, d in zip(kernel, stride, dilation):
        m *= min(k, -(-((k - 1) * d + 1) // s))
    return math.sqrt(m)


def _average_pool_norm(shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pads: Sequence[int], include_pad: bool, ceil: bool) -> float:
    """√(‖A‖₁‖A‖∞) for ONNX AveragePool, one axis at a time (the 2-D operator is their Kronecker
    product: the divisor is a product of per-axis counts either way)."""
    total = 1.0
    dims = len(kernel)
    for i, (n, k, s) in enumerate(zip(shape, kernel, stride)):
        before, after = pads[i], pads[i + dims]
        span = n + before + after - k
        outs = (-(-span // s) if ceil else span // s) + 1
        rows = np.zeros((outs, n))
        for o in range(outs):
            lo, hi = o * s - before, o * s - before + k
            cols = range(max(lo, 0), min(hi, n))
            div = k if include_pad else max(1, len(cols))
            if include_pad and hi > n + after:  # windows past the padded end count only to it
                div = min(hi, n + after) - lo
            for c in cols:
                rows[o, c] = 1.0 / div
        total *= math.sqrt(rows.sum(1).max() * rows.sum(0).max())
    return _up(total)


# ── the walk ─────────────────────────────────────────────────────────────────────────────────


class _Graph:
    def __init__(self, model: onnx.ModelProto, input_shape: Sequence[int] | None, input_name: str | None,
                 output_name: str | None, input_norm: float | None) -> None:
        self.model = model
        self.opsets = list(model.opset_import)
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.consts]
        if input_name is None and len(inputs) != 1:
            raise Unsupported("inputs", f"{len(inputs)} graph inputs: name the one to bound (input_name)")
        self.input = input_name or inputs[0].name
        self.output = output_name or graph.output[0].name
        self.shapes = _infer_shapes(model, self.input, input_shape)
        elem = next(i.type.tensor_type.elem_type for i in graph.input if i.name == self.input)
        self.dtype = helper.tensor_dtype_to_np_dtype(elem)
        start = input_norm if input_norm is not None else INF
        self.vals: dict[str, _Val] = {self.input: _Val(1.0, _Mag(start, start, start, start), self.shapes[self.input])}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        self.finals: dict[str, tuple[np.ndarray, float]] = {}
        self.pending_fold: dict[str, tuple[np.ndarray, dict[str, Any], float]] = {}
        self.input_scale: dict[int, np.ndarray] = {}  # batch-norm scales moved through a ReLU (by node id)
        self.ops: dict[str, int] = {}
        self.outputs: str | None = None

    def run(self) -> tuple[float, float, str]:
        for node in self.model.graph.node:
            for out in node.output:
                self.producer[out] = node
        self._constants_first()
        fused, skipped = _elementwise_islands(self)
        for node in self.model.graph.node:
            if all(o in self.consts for o in node.output if o):
                continue
            if id(node) in skipped:
                continue
            if id(node) in fused:
                root, act = fused[id(node)]
                self.ops[act.name] = self.ops.get(act.name, 0) + 1
                act.apply(self, node, root)
                continue
            data = [i for i in node.input if i in self.vals]
            if data and node.op_type in ("Shape", "Size"):
                self._shape_of(node)
                continue
            if not data:
                self._constant(node)
                continue
            self.ops[node.op_type] = self.ops.get(node.op_type, 0) + 1
            handler = _HANDLERS.get(node.op_type)
            if handler is None:
                raise Unsupported(node.op_type, f"no Lipschitz rule for this operator (node {node.name!r})")
            handler(self, node)
        return self._final()

    # constants ------------------------------------------------------------------------------

    def _constants_first(self) -> None:
        """Evaluate every node that does not depend on the input's values (weights transposed by
        the exporter, shape arithmetic), before the walk: the islands need their scalars."""
        data = {self.input}
        for node in self.model.graph.node:
            ins = [i for i in node.input if i]
            if node.op_type in ("Shape", "Size") and ins and ins[0] in data and ins[0] in self.shapes:
                self.vals_shape_only(node)
            elif any(i in data for i in ins) or any(i not in self.consts for i in ins):
                data.update(node.output)
            else:
                self._constant(node)

    def vals_shape_only(self, node: onnx.NodeProto) -> None:
        shape = np.array(self.shapes[node.input[0]], dtype=np.int64)
        if node.op_type == "Size":
            self.consts[node.output[0]] = np.array(shape.prod(), dtype=np.int64)
            return
        start, end = int(_attr(node, "start", 0)), _attr(node, "end", None)
        self.consts[node.output[0]] = shape[start:None if end is None else int(end)]

    def _constant(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Constant":
            self.consts[node.output[0]] = numpy_helper.to_array(_attr(node, "value", None)) if _attr(node, "value", None) is not None else _constant_attr(node)
            return
        missing = [name for name in node.input if name and name not in self.consts]
        if missing:
            raise Unsupported(node.op_type, f"operand {missing[0]!r} is neither constant nor input-dependent")
        feeds = {name: self.consts[name] for name in node.input if name}
        for name, value in zip(node.output, _evaluate(node, feeds, self.opsets)):
            self.consts[name] = value

    def _shape_of(self, node: onnx.NodeProto) -> None:
        """Shape/Size of an input-dependent tensor: a constant, since shapes are fixed."""
        shape = np.array(self.vals[node.input[0]].shape, dtype=np.int64)
        if node.op_type == "Size":
            self.consts[node.output[0]] = np.array(shape.prod(), dtype=np.int64)
            return
        start, end = int(_attr(node, "start", 0)), _attr(node, "end", None)
        self.consts[node.output[0]] = shape[start:None if end is None else int(end)]

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise Unsupported(name, "expected a constant operand")
        return np.asarray(self.consts[name])

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.vals:
            return self.vals[name].shape
        if name in self.consts:
            return tuple(np.shape(self.consts[name]))
        if name in self.shapes:
            return self.shapes[name]
        raise Unsupported(name, "unknown shape after shape inference")

    def put(self, node: onnx.NodeProto, lip: float, mag: _Mag, index: int = 0) -> None:
        name = node.output[index]
        shape = self.out_shape(node, index)
        self.vals[name] = _Val(lip, mag.tidy(shape), shape)

    def out_shape(self, node: onnx.NodeProto, index: int = 0) -> tuple[int, ...]:
        """The inferred shape, or where inference gave up (shapes computed at run time), the shape
        of the node's output on zeros of its input shapes (onnx's reference evaluator)."""
        name = node.output[index]
        if name not in self.shapes:
            feeds = {i: (np.zeros(self.vals[i].shape, dtype=self.dtype) if i in self.vals else self.const(i)) for i in node.input if i}
            for out, value in zip(node.output, _evaluate(node, feeds, self.opsets)):
                self.shapes[out] = tuple(value.shape)
        return self.shapes[name]

    def single(self, node: onnx.NodeProto) -> _Val:
        data = [i for i in node.input if i in self.vals]
        if len(set(data)) != 1:
            raise Unsupported(node.op_type, "expected exactly one input-dependent operand")
        return self.vals[data[0]]

    # the end ----------------------------------------------------------------------------------

    def _final(self) -> tuple[float, float, str]:
        name = self.output
        node = self.producer.get(name)
        stripped = False
        while node is not None and node.op_type in ("Softmax", "LogSoftmax", "Identity"):
            stripped |= node.op_type != "Identity"
            name = node.input[0]
            node = self.producer.get(name)
        if self.outputs == "probabilities" and not stripped:
            raise Unsupported("output", "the model returns probabilities, but not from a final Softmax in the graph: no logits to bound")
        if self.outputs not in (None, "logits", "probabilities", "log_probabilities"):
            raise Unsupported("output", f"outputs={self.outputs!r}: the bound is for softmax classifiers (logits or probabilities)")
        if name not in self.vals:
            raise Unsupported("output", f"{name!r} does not depend on the input")
        shape = self.vals[name].shape
        if math.prod(shape) != shape[-1] or shape[-1] < 2:
            raise Unsupported("output", f"expected one vector of class scores per input, got shape {shape}")
        lz = self.vals[name].lip
        final = self.finals.get(name)
        best, rule = last_step(lz, _row_difference(final[0]) * final[1] ** 2 if final is not None else None)
        return best, lz, rule


def _infer_shapes(model: onnx.ModelProto, input_name: str, input_shape: Sequence[int] | None) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor with the input fixed to batch 1 (and `input_shape`)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name != input_name:
            continue
        dims = inp.type.tensor_type.shape.dim
        wanted = [1, *input_shape] if input_shape is not None else None
        for i, d in enumerate(dims):
            if wanted is not None:
                d.ClearField("dim_param")
                d.dim_value = wanted[i]
            elif not d.HasField("dim_value"):
                if i != 0:
                    raise Unsupported("input", "the input has open dims besides the batch: pass input_shape")
                d.ClearField("dim_param")
                d.dim_value = 1
    del m.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: list[onnx.OperatorSetIdProto]) -> list[np.ndarray]:
    """Run one node on numpy values with onnx's reference evaluator (constants, moved tags)."""
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None) for name, v in feeds.items()]
    outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output if name]
    graph = helper.make_graph([node], "one", inputs, outputs)
    model = helper.make_model(graph, opset_imports=opsets)
    result = ReferenceEvaluator(model).run(None, feeds)
    return [np.asarray(r) for r in result]


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant_attr(node: onnx.NodeProto) -> np.ndarray:
    for key in ("value_float", "value_floats", "value_int", "value_ints"):
        v = _attr(node, key, None)
        if v is not None:
            return np.asarray(v)
    raise Unsupported("Constant", "unsupported constant attribute")


# ── elementwise islands: activations the exporter spelled out (GELU as Erf, SiLU as x·Sigmoid) ──

_FUSABLE = {"Erf", "Tanh", "Sigmoid", "Mul", "Add", "Sub", "Div", "Pow", "Neg", "Exp", "Log", "Softplus", "Relu", "Min", "Max", "Clip"}


@dataclass(frozen=True)
class _Known:
    """A recognised elementwise activation: sup|σ'| and |σ(t)| ≤ grow·|t| + offset."""

    name: str
    lipschitz: float
    grow: float = 1.0
    offset: float = 0.0

    def apply(self, g: _Graph, node: onnx.NodeProto, root: str) -> None:
        x = g.vals[root]
        numel, last = math.prod(x.shape), x.shape[-1] if x.shape else 1
        mag = _Mag(self.grow * x.mag.frob + self.offset * math.sqrt(numel), INF, self.grow * x.mag.row + self.offset * math.sqrt(last),
                   self.grow * x.mag.elem + self.offset)
        g.shapes.setdefault(node.output[0], x.shape)
        g.put(node, self.lipschitz * x.lip, mag)


def _known_functions() -> list[tuple[_Known, Callable[[np.ndarray], np.ndarray]]]:
    from math import erf

    verf = np.vectorize(erf)
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    c = math.sqrt(2 / math.pi)
    return [
        (_Known("gelu", GELU), lambda t: 0.5 * t * (1 + verf(t / math.sqrt(2)))),
        (_Known("gelu_tanh", GELU_TANH), lambda t: 0.5 * t * (1 + np.tanh(c * (t + 0.044715 * t**3)))),
        (_Known("silu", SILU), lambda t: t * sig(t)),
        (_Known("mish", MISH), lambda t: t * np.tanh(np.log1p(np.exp(t)))),
        (_Known("hardswish", 1.5), lambda t: t * np.clip(t + 3, 0, 6) / 6),
    ]


def _elementwise_islands(g: _Graph) -> tuple[dict[int, tuple[str, _Known]], set[int]]:
    """Chains of elementwise ops that all start from one tensor x and leave through one output
    compute y = f(x) elementwise. f is sampled on [−10, 10] with onnx's reference evaluator; when it
    matches a known activation (to 1e-5, float32 constants), that activation's certified constant
    is used (with 1e-6 relative margin for the rounded constants). Unmatched chains are left to the
    per-operator rules."""
    root: dict[str, str] = {}
    members: dict[str, list[onnx.NodeProto]] = {}
    data = {g.input}
    for node in g.model.graph.node:
        ins = [i for i in node.input if i]
        if not any(i in data for i in ins):
            continue
        data.update(node.output)
        roots = {root.get(i, i) for i in ins if i in data}
        scalars = all(i in data or (i in g.consts and np.size(g.consts[i]) == 1) for i in ins)
        if node.op_type in _FUSABLE and len(roots) == 1 and scalars and len(node.output) == 1:
            r = roots.pop()
            root[node.output[0]] = r
            members.setdefault(r, []).append(node)
    fused: dict[int, tuple[str, _Known]] = {}
    skipped: set[int] = set()
    for r, nodes in members.items():
        outs = {n.output[0] for n in nodes}
        exits = [n for n in nodes if _used_outside(g, n.output[0], outs)]
        if len(exits) != 1 or len(nodes) < 2:
            continue
        known = _identify(g, r, nodes, exits[0])
        if known is not None:
            fused[id(exits[0])] = (r, known)
            skipped.update(id(n) for n in nodes if n is not exits[0])
    return fused, skipped


def _used_outside(g: _Graph, name: str, inside: set[str]) -> bool:
    if name in {o.name for o in g.model.graph.output}:
        return True
    return any(name in n.input and not (len(n.output) == 1 and n.output[0] in inside) for n in g.model.graph.node)


def _identify(g: _Graph, r: str, nodes: list[onnx.NodeProto], exit_node: onnx.NodeProto) -> _Known | None:
    from onnx.reference import ReferenceEvaluator

    grid = np.linspace(-10, 10, 4001).astype(g.dtype)
    consts = sorted({i for n in nodes for i in n.input if i and i in g.consts})
    inits = [numpy_helper.from_array(np.asarray(g.consts[c]).reshape(()) if np.size(g.consts[c]) == 1 else np.asarray(g.consts[c]), c) for c in consts]
    elem = helper.np_dtype_to_tensor_dtype(grid.dtype)
    graph = helper.make_graph(list(nodes), "island", [helper.make_tensor_value_info(r, elem, [len(grid)])],
                              [helper.make_tensor_value_info(exit_node.output[0], onnx.TensorProto.UNDEFINED, None)], inits)
    try:
        outs: Any = ReferenceEvaluator(helper.make_model(graph, opset_imports=g.opsets)).run(None, {r: grid})
        y = np.asarray(outs[0], dtype=np.float64)
    except Exception:  # a chain the evaluator cannot run on a 1-D grid is simply not fused
        return None
    t = grid.astype(np.float64)
    for known, f in _known_functions():
        if y.shape == t.shape and np.all(np.abs(y - f(t)) <= 1e-5 * (1 + np.abs(f(t)))):
            return _Known(known.name, known.lipschitz * (1 + 1e-6), known.grow, known.offset)
    return None


# ── handlers ─────────────────────────────────────────────────────────────────────────────────


def _activation(const: float, grow: float = 1.0, offset: float = 0.0, cap: float = INF) -> Callable[[_Graph, onnx.NodeProto], None]:
    def handle(g: _Graph, node: onnx.NodeProto) -> None:
        x = g.single(node)
        m, shape = x.mag, x.shape
        numel, last = math.prod(shape), shape[-1] if shape else 1
        mag = _Mag(min(grow * m.frob + offset * math.sqrt(numel), cap * math.sqrt(numel)), INF,
                   min(grow * m.row + offset * math.sqrt(last), cap * math.sqrt(last)), min(grow * m.elem + offset, cap))
        g.put(node, const * x.lip, mag)

    return handle


def _h_leaky(g: _Graph, node: onnx.NodeProto) -> None:
    a = abs(float(_attr(node, "alpha", 0.01)))
    _activation(max(1.0, a), max(1.0, a))(g, node)


def _h_prelu(g: _Graph, node: onnx.NodeProto) -> None:
    a = float(np.abs(g.const(node.input[1])).max())
    _activation(max(1.0, a), max(1.0, a))(g, node)


def _h_elu(g: _Graph, node: onnx.NodeProto) -> None:
    a = abs(float(_attr(node, "alpha", 1.0)))
    _activation(max(1.0, a), max(1.0, a))(g, node)


def _h_selu(g: _Graph, node: onnx.NodeProto) -> None:
    a, s = float(_attr(node, "alpha", SELU_ALPHA)), float(_attr(node, "gamma", SELU_SCALE))
    top = s * max(1.0, abs(a))
    _activation(top, top)(g, node)


def _h_clip(g: _Graph, node: onnx.NodeProto) -> None:
    low = float(g.const(node.input[1])) if len(node.input) > 1 and node.input[1] else -INF
    high = float(g.const(node.input[2])) if len(node.input) > 2 and node.input[2] else INF
    if len(node.input) == 1:  # opset < 11: attributes
        low, high = float(_attr(node, "min", -INF)), float(_attr(node, "max", INF))
    cap = max(abs(low), abs(high)) if math.isfinite(low) and math.isfinite(high) else INF
    _activation(1.0 if low < high else 0.0, 1.0, max(0.0, low, -high), cap)(g, node)


def _h_hardsigmoid(g: _Graph, node: onnx.NodeProto) -> None:
    _activation(abs(float(_attr(node, "alpha", 0.2))), 0.0, 1.0, 1.0)(g, node)


def _h_gelu(g: _Graph, node: onnx.NodeProto) -> None:
    _activation(GELU_TANH if _attr(node, "approximate", b"none") in (b"tanh", "tanh") else GELU)(g, node)


def _h_softplus(g: _Graph, node: onnx.NodeProto) -> None:
    _activation(1.0, 1.0, math.log(2.0))(g, node)


def _h_linear_part(g: _Graph, node: onnx.NodeProto, x: _Val, wt: np.ndarray, bias: np.ndarray | None, moved: np.ndarray | None = None) -> None:
    """out = x Wᵀ + b along the last axis (W: out × in); `moved`: batch-norm scales of the inputs."""
    true_norm = norm = _spectral(wt)
    rows = np.linalg.norm(wt, axis=1)
    if moved is not None:
        wt = wt * moved[None, :]
        norm, true_norm = _spectral(wt), INF
    m = x.mag
    tokens = math.prod(x.shape[:-1]) if len(x.shape) > 1 else 1
    bn = float(np.linalg.norm(bias)) if bias is not None else 0.0
    mag = _Mag(true_norm * m.frob + math.sqrt(tokens) * bn, INF, true_norm * m.row + bn,
               float(rows.max()) * m.row + (float(np.abs(bias).max()) if bias is not None else 0.0))
    g.finals[node.output[0]] = (wt, x.lip)
    g.put(node, norm * x.lip, mag)


def _h_gemm(g: _Graph, node: onnx.NodeProto) -> None:
    if int(_attr(node, "transA", 0)):
        raise Unsupported("Gemm", "transA=1")
    if node.input[1] in g.vals:
        raise Unsupported("Gemm", "input-dependent weights")
    w = g.const(node.input[1]).astype(np.float64) * float(_attr(node, "alpha", 1.0))
    wt = w if int(_attr(node, "transB", 0)) else w.T
    bias = g.const(node.input[2]).astype(np.float64) * float(_attr(node, "beta", 1.0)) if len(node.input) > 2 and node.input[2] else None
    _h_linear_part(g, node, g.vals[node.input[0]], wt, bias, g.input_scale.pop(id(node), None))


def _h_matmul(g: _Graph, node: onnx.NodeProto) -> None:
    a, b = node.input[0], node.input[1]
    if a in g.vals and b in g.vals:
        _bilinear(g, node, g.vals[a], g.vals[b])
        return
    right = a in g.vals
    x = g.vals[a if right else b]
    c = g.const(b if right else a).astype(np.float64)
    if c.ndim == 2 and right:
        _h_linear_part(g, node, x, c.T, None, g.input_scale.pop(id(node), None))
        return
    if c.ndim < 2:
        raise Unsupported("MatMul", "product with a constant vector")
    norms = np.linalg.svd(c.reshape(-1, *c.shape[-2:]), compute_uv=False)[:, 0]
    broadcast = _batch_numel(g.out_shape(node)) > _batch_numel(x.shape)
    norm = _up(float(np.sqrt((norms**2).sum())) if broadcast else float(norms.max()))
    g.put(node, norm * x.lip, _Mag(norm * x.mag.frob, INF, norm * x.mag.row if right else INF, INF))


def _batch_numel(shape: Sequence[int]) -> int:
    return math.prod(shape[:-2]) if len(shape) >= 2 else 1


def _bilinear(g: _Graph, node: onnx.NodeProto, a: _Val, b: _Val) -> None:
    """A @ B of two input-dependent tensors: L ≤ L_A·max‖B‖₂ + max‖A‖₂·L_B (per matrix slice)."""
    if not (math.isfinite(a.mag.spec) and math.isfinite(b.mag.spec)):
        raise Unsupported("MatMul", UNBOUNDED_PRODUCT)
    out = g.out_shape(node)
    fa = math.sqrt(max(1.0, _batch_numel(out) / max(1, _batch_numel(a.shape))))
    fb = math.sqrt(max(1.0, _batch_numel(out) / max(1, _batch_numel(b.shape))))
    lip = fa * a.lip * b.mag.spec + fb * b.lip * a.mag.spec
    g.put(node, lip, _Mag(min(a.mag.spec * b.mag.frob, a.mag.frob * b.mag.spec), INF, INF, INF))


def _h_conv(g: _Graph, node: onnx.NodeProto) -> None:
    if node.input[1] in g.vals:
        raise Unsupported("Conv", "input-dependent weights")
    x = g.vals[node.input[0]]
    true_w = w = g.const(node.input[1]).astype(np.float64)
    dims = w.ndim - 2
    stride = list(_attr(node, "strides", [1] * dims))
    dilation = list(_attr(node, "dilations", [1] * dims))
    groups = int(_attr(node, "group", 1))
    moved = g.input_scale.pop(id(node), None)
    if moved is not None:
        w = _scale_in(w, moved, groups)
    size = list(x.shape[2:])
    bias = g.const(node.input[2]).astype(np.float64) if len(node.input) > 2 and node.input[2] else None
    geometry = dict(size=size, stride=stride, dilation=dilation, groups=groups)
    if g.consumers.get(node.output[0], 0) == 1 and _next_op(g, node.output[0]) == "BatchNormalization":
        g.pending_fold[node.output[0]] = (w, geometry, x.lip)
        norm = INF
    else:
        norm = _conv_norm(w, size, stride, dilation, groups)
    positions = math.prod(g.out_shape(node)[2:])
    per_channel = np.linalg.norm(true_w.reshape(true_w.shape[0], -1), axis=1)
    bn = float(np.linalg.norm(bias)) if bias is not None else 0.0
    mag = _Mag((norm if moved is None else INF) * x.mag.frob + math.sqrt(positions) * bn, INF, INF,
               float(per_channel.max()) * x.mag.frob + (float(np.abs(bias).max()) if bias is not None else 0.0))
    g.put(node, norm * x.lip, mag)


def _next_op(g: _Graph, name: str) -> str | None:
    for node in g.model.graph.node:
        if name in node.input:
            return node.op_type
    return None


def _h_batchnorm(g: _Graph, node: onnx.NodeProto) -> None:
    x = g.vals[node.input[0]]
    scale_p, bias_p, mean, var = (g.const(n).astype(np.float64) for n in node.input[1:5])
    eps = float(_attr(node, "epsilon", 1e-5))
    if int(_attr(node, "training_mode", 0)):
        raise Unsupported("BatchNormalization", "training mode")
    scale = scale_p / np.sqrt(var + eps)
    shift = bias_p - scale * mean
    fold = g.pending_fold.pop(node.input[0], None)
    if fold is not None:
        w, geo, lip_before = fold
        lip = _conv_norm(w * scale.reshape(-1, *([1] * (w.ndim - 1))), geo["size"], geo["stride"], geo["dilation"], geo["groups"]) * lip_before
    else:
        lip = float(np.abs(scale).max()) * x.lip
        consumer = _relu_then_linear(g, node.output[0]) if bool((scale > 0).all()) else None
        if consumer is not None and (consumer.op_type == "Conv") == (len(x.shape) > 2):
            # relu(s⊙x + b) = s⊙relu(x + b/s) for s > 0: the scale moves into the next layer's
            # input channels (fimaudit_torch.graph_bound._bn_val).
            g.input_scale[id(consumer)] = scale
            lip = x.lip
    positions = math.prod(x.shape[2:]) if len(x.shape) > 2 else 1
    g.put(node, lip, _Mag(float(np.abs(scale).max()) * x.mag.frob + math.sqrt(positions) * float(np.linalg.norm(shift)), INF, INF,
                          float(np.abs(scale).max()) * x.mag.elem + float(np.abs(shift).max())))


def _users(g: _Graph, name: str) -> list[onnx.NodeProto]:
    return [n for n in g.model.graph.node if name in n.input]


def _relu_then_linear(g: _Graph, name: str) -> onnx.NodeProto | None:
    """The Conv / Gemm / MatMul fed by Relu(name) (or LeakyRelu with alpha ≥ 0), each the only user."""
    users = _users(g, name)
    if len(users) != 1 or users[0].input[0] != name or name in {o.name for o in g.model.graph.output}:
        return None
    act = users[0]
    if not (act.op_type == "Relu" or (act.op_type == "LeakyRelu" and float(_attr(act, "alpha", 0.01)) >= 0)):
        return None
    nexts = _users(g, act.output[0])
    if len(nexts) != 1 or nexts[0].input[0] != act.output[0]:
        return None
    nxt = nexts[0]
    if nxt.op_type == "Conv" or (nxt.op_type == "Gemm" and not int(_attr(nxt, "transA", 0))):
        return nxt
    if nxt.op_type == "MatMul" and nxt.input[1] in g.consts and np.ndim(g.consts[nxt.input[1]]) == 2:
        return nxt
    return None


def _scale_in(w: np.ndarray, scale: np.ndarray, groups: int) -> np.ndarray:
    """W·diag(s) on a convolution's input channels (grouped: channel c is column c mod in_g)."""
    out_c, in_g = w.shape[:2]
    per_out = np.repeat(scale.reshape(groups, in_g), out_c // groups, axis=0)
    return w * per_out.reshape(out_c, in_g, *([1] * (w.ndim - 2)))


def _h_layernorm(g: _Graph, node: onnx.NodeProto) -> None:
    """Global constant max|γ|/√ε; each normalised slice has ‖y‖ ≤ max|γ|√n + ‖β‖ (fimaudit_torch._ln_val)."""
    x = g.vals[node.input[0]]
    axis = int(_attr(node, "axis", -1)) % len(x.shape)
    eps = float(_attr(node, "epsilon", 1e-5))
    n = math.prod(x.shape[axis:])
    gamma = g.const(node.input[1]).astype(np.float64).reshape(-1) if len(node.input) > 1 and node.input[1] else np.ones(n)
    beta = g.const(node.input[2]).astype(np.float64).reshape(-1) if len(node.input) > 2 and node.input[2] else np.zeros(n)
    gmax = float(np.abs(gamma).max())
    token = gmax * math.sqrt(n) + float(np.linalg.norm(beta))
    count = math.prod(x.shape[:axis])
    mag = _Mag(math.sqrt(count) * token, INF, token if axis == len(x.shape) - 1 else INF, gmax * math.sqrt(max(n - 1, 0)) + float(np.abs(beta).max()))
    g.put(node, gmax / math.sqrt(eps) * x.lip, mag)


def _broadcast(g: _Graph, name: str, out: tuple[int, ...]) -> float:
    return math.sqrt(math.prod(out) / max(1, math.prod(g.shape(name))))


def _h_add(g: _Graph, node: onnx.NodeProto) -> None:
    out = g.out_shape(node)
    lip = frob = elem = 0.0
    for name in node.input:
        if name in g.vals:
            v = g.vals[name]
            f = _broadcast(g, name, out)
            lip += f * v.lip
            frob += f * v.mag.frob
            elem += v.mag.elem
        else:
            c = g.const(name).astype(np.float64)
            frob += float(np.linalg.norm(np.broadcast_to(c, out))) if c.size else 0.0
            elem += float(np.abs(c).max()) if c.size else 0.0
    # A constant added to the last linear layer's output keeps its row differences.
    data = [name for name in node.input if name in g.vals]
    if len(data) == 1 and data[0] in g.finals and node.op_type == "Add":
        g.finals[node.output[0]] = g.finals[data[0]]
    g.put(node, lip, _Mag(frob, INF, INF, elem))


def _h_neg(g: _Graph, node: onnx.NodeProto) -> None:
    x = g.single(node)
    g.put(node, x.lip, x.mag)


def _h_mul(g: _Graph, node: onnx.NodeProto) -> None:
    a, b = node.input[0], node.input[1]
    if a in g.vals and b in g.vals:
        _product(g, node, a, b)
        return
    x, c = (a, b) if a in g.vals else (b, a)
    _times(g, node, x, g.const(c).astype(np.float64))


def _h_div(g: _Graph, node: onnx.NodeProto) -> None:
    if node.input[1] in g.vals:
        raise Unsupported("Div", "division by an input-dependent tensor")
    _times(g, node, node.input[0], 1.0 / g.const(node.input[1]).astype(np.float64))


def _times(g: _Graph, node: onnx.NodeProto, x: str, c: np.ndarray) -> None:
    """x ⊙ C: √(max over x's elements of Σ over their copies of c²) (fimaudit_torch._times_constant)."""
    v = g.vals[x]
    out = g.out_shape(node)
    squares = np.broadcast_to(c * c, out)
    # Sum the squares over the axes along which x is broadcast (x's size 1 or missing).
    xs = (1,) * (len(out) - len(v.shape)) + tuple(v.shape)
    axes = tuple(i for i, (a, o) in enumerate(zip(xs, out)) if a == 1 and o != 1)
    per_element = squares.sum(axis=axes) if axes else squares
    factor = _up(math.sqrt(float(per_element.max()))) if per_element.size else 0.0
    cmax = float(np.abs(c).max()) if c.size else 0.0
    g.put(node, factor * v.lip, _Mag(factor * v.mag.frob, INF, INF, cmax * v.mag.elem))


def _product(g: _Graph, node: onnx.NodeProto, a: str, b: str) -> None:
    """x·Sigmoid(x) is SiLU; otherwise the product rule, which needs both factors bounded."""
    for x, s in ((a, b), (b, a)):
        prod = g.producer.get(s)
        if prod is not None and prod.op_type == "Sigmoid" and prod.input[0] == x:
            v = g.vals[x]
            g.put(node, SILU * v.lip, _Mag(v.mag.frob, INF, v.mag.row, v.mag.elem))
            return
    va, vb = g.vals[a], g.vals[b]
    if not (math.isfinite(va.mag.elem) and math.isfinite(vb.mag.elem)):
        raise Unsupported("Mul", "product of two input-dependent tensors, one of them unbounded on this domain: no Lipschitz constant")
    out = g.out_shape(node)
    lip = _broadcast(g, a, out) * va.lip * vb.mag.elem + _broadcast(g, b, out) * vb.lip * va.mag.elem
    g.put(node, lip, _Mag(min(va.mag.elem * vb.mag.frob, va.mag.frob * vb.mag.elem), INF, INF, va.mag.elem * vb.mag.elem))


def _h_concat(g: _Graph, node: onnx.NodeProto) -> None:
    lips, frobs, elems = [], [], []
    for name in node.input:
        if name in g.vals:
            v = g.vals[name]
            lips.append(v.lip)
            frobs.append(v.mag.frob)
            elems.append(v.mag.elem)
        else:
            c = g.const(name)
            frobs.append(float(np.linalg.norm(c)))
            elems.append(float(np.abs(c).max()) if c.size else 0.0)
    g.put(node, math.sqrt(sum(v * v for v in lips)), _Mag(math.sqrt(sum(f * f for f in frobs)), INF, INF, max(elems)))


def _h_selection(g: _Graph, node: onnx.NodeProto) -> None:
    """Reshape, Transpose, Slice, Gather, Pad, Expand, Split, ...: ops that only move or copy elements.
    Tag every element with its index + 1, run the op (reference evaluator), count the copies."""
    data = [i for i in node.input if i in g.vals]
    if len(data) != 1 or node.input[0] != data[0]:
        raise Unsupported(node.op_type, "input-dependent indices or shapes")
    x = g.vals[data[0]]
    tags = np.arange(1, math.prod(x.shape) + 1, dtype=np.float64).reshape(x.shape)
    feeds = {name: (tags if name == data[0] else g.const(name)) for name in node.input if name}
    if node.op_type == "Pad" and len(node.input) > 2 and node.input[2]:
        feeds[node.input[2]] = np.zeros_like(g.const(node.input[2]), dtype=np.float64)
    outs = _evaluate(node, feeds, g.opsets)
    counts = np.bincount(np.concatenate([o.astype(np.int64).ravel() for o in outs]), minlength=tags.size + 1)[1:]
    factor = math.sqrt(float(counts.max())) if counts.size else 0.0
    for i, o in enumerate(outs):
        rows = _row_factor(o, x.shape[-1] if x.shape else 1)
        g.shapes.setdefault(node.output[i], tuple(o.shape))
        g.put(node, factor * x.lip, _Mag(factor * x.mag.frob, INF, rows * x.mag.row, x.mag.elem), i)


def _h_identity(g: _Graph, node: onnx.NodeProto) -> None:
    x = g.single(node)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    if node.op_type == "Cast" and int(_attr(node, "to", 1)) not in floats:
        raise Unsupported("Cast", "cast to a non-floating type")
    g.shapes.setdefault(node.output[0], x.shape)
    g.vals[node.output[0]] = _Val(x.lip, x.mag, x.shape)
    if node.input[0] in g.finals:
        g.finals[node.output[0]] = g.finals[node.input[0]]


def _row_factor(out: np.ndarray, n_last: int) -> float:
    """Distinct input rows feeding one output row (tags are index + 1); INF on copies within a row."""
    if out.ndim == 0 or out.size == 0:
        return 1.0
    rows = np.sort(out.reshape(-1, out.shape[-1]).astype(np.int64), axis=1)
    if np.any(rows[:, 1:] == rows[:, :-1]):
        return INF
    owners = np.sort((rows - 1) // n_last, axis=1)
    distinct = 1 + (owners[:, 1:] != owners[:, :-1]).sum(axis=1)
    return math.sqrt(float(distinct.max()))


def _h_maxpool(g: _Graph, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("MaxPool", "indices output")
    x = g.single(node)
    kernel = list(_attr(node, "kernel_shape", []))
    stride = list(_attr(node, "strides", [1] * len(kernel)))
    dilation = list(_attr(node, "dilations", [1] * len(kernel)))
    f = _max_pool_factor(kernel, stride, dilation)
    g.put(node, f * x.lip, _Mag(f * x.mag.frob, INF, INF, x.mag.elem))


def _h_averagepool(g: _Graph, node: onnx.NodeProto) -> None:
    x = g.single(node)
    kernel = list(_attr(node, "kernel_shape", []))
    dims = len(kernel)
    stride = list(_attr(node, "strides", [1] * dims))
    if list(_attr(node, "dilations", [1] * dims)) != [1] * dims:
        raise Unsupported("AveragePool", "dilation")
    auto = _attr(node, "auto_pad", b"NOTSET")
    if auto not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise Unsupported("AveragePool", f"auto_pad={auto!r}")
    pads = list(_attr(node, "pads", [0] * (2 * dims)))
    f = _average_pool_norm(x.shape[2:], kernel, stride, pads, bool(_attr(node, "count_include_pad", 0)), bool(_attr(node, "ceil_mode", 0)))
    g.put(node, f * x.lip, _Mag(f * x.mag.frob, INF, INF, x.mag.elem))


def _h_global_average(g: _Graph, node: onnx.NodeProto) -> None:
    x = g.single(node)
    n = math.prod(x.shape[2:])
    g.put(node, x.lip / math.sqrt(n), _Mag(x.mag.frob / math.sqrt(n), INF, INF, x.mag.elem))


def _h_global_max(g: _Graph, node: onnx.NodeProto) -> None:
    x = g.single(node)
    g.put(node, x.lip, _Mag(x.mag.frob, INF, INF, x.mag.elem))


def _h_reduce(g: _Graph, node: onnx.NodeProto) -> None:
    """ReduceMean: 1/√n per reduced group; ReduceSum: √n; ReduceMax/Min: 1 (max over a group)."""
    x = g.single(node)
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in g.const(node.input[1]).ravel()]
    if axes is None or len(axes) == 0:
        if int(_attr(node, "noop_with_empty_axes", 0)):
            _h_identity(g, node)
            return
        axes = list(range(len(x.shape)))
    n = math.prod(x.shape[int(a) % len(x.shape)] for a in axes)
    factor = {"ReduceMean": 1 / math.sqrt(n), "ReduceSum": math.sqrt(n), "ReduceMax": 1.0, "ReduceMin": 1.0}[node.op_type]
    elem = x.mag.elem * (n if node.op_type == "ReduceSum" else 1.0)
    g.put(node, factor * x.lip, _Mag(factor * x.mag.frob, INF, INF, elem))


def _h_softmax(g: _Graph, node: onnx.NodeProto) -> None:
    x = g.single(node)
    axis = int(_attr(node, "axis", -1)) % len(x.shape)
    last = axis == len(x.shape) - 1
    rows = x.shape[-2] if len(x.shape) >= 2 else 1
    slices = math.prod(x.shape) // x.shape[axis]
    g.put(node, 0.5 * x.lip, _Mag(math.sqrt(slices), math.sqrt(rows) if last else INF, 1.0 if last else INF, 1.0))


def _h_log_softmax(g: _Graph, node: onnx.NodeProto) -> None:
    x = g.single(node)
    g.put(node, (1 + math.sqrt(x.shape[-1])) * x.lip, _Mag())


_HANDLERS: dict[str, Callable[[_Graph, onnx.NodeProto], None]] = {
    "Relu": _activation(1.0), "LeakyRelu": _h_leaky, "PRelu": _h_prelu, "Clip": _h_clip,
    "Sigmoid": _activation(0.25, 0.0, 1.0, 1.0), "Tanh": _activation(1.0, 0.0, 1.0, 1.0),
    "HardSigmoid": _h_hardsigmoid, "HardSwish": _activation(1.5), "Elu": _h_elu, "Selu": _h_selu,
    "Celu": _activation(1.0), "Softplus": _h_softplus, "Softsign": _activation(1.0, 0.0, 1.0, 1.0),
    "Gelu": _h_gelu, "Mish": _activation(MISH),
    "Gemm": _h_gemm, "MatMul": _h_matmul, "Conv": _h_conv, "BatchNormalization": _h_batchnorm,
    "LayerNormalization": _h_layernorm,
    "Add": _h_add, "Sub": _h_add, "Neg": _h_neg, "Mul": _h_mul, "Div": _h_div, "Concat": _h_concat,
    "Reshape": _h_selection, "Transpose": _h_selection, "Slice": _h_selection, "Gather": _h_selection,
    "Pad": _h_selection, "Expand": _h_selection, "Split": _h_selection, "Tile": _h_selection,
    "Squeeze": _h_selection, "Unsqueeze": _h_selection, "Flatten": _h_selection, "DepthToSpace": _h_selection,
    "SpaceToDepth": _h_selection,
    "Identity": _h_identity, "Dropout": _h_identity, "Cast": _h_identity,
    "MaxPool": _h_maxpool, "AveragePool": _h_averagepool, "GlobalAveragePool": _h_global_average,
    "GlobalMaxPool": _h_global_max, "ReduceMean": _h_reduce, "ReduceSum": _h_reduce, "ReduceMax": _h_reduce,
    "ReduceMin": _h_reduce, "Softmax": _h_softmax, "LogSoftmax": _h_log_softmax,
}
