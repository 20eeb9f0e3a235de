"""The ONNX graph bound (fimaudit_onnx.bound) on graphs built with onnx.helper, against exact λ_max.

The reference Jacobian comes from onnxruntime on float64 graphs by central differences over the
coordinates: these networks are piecewise linear or smooth, and at d = 64 with h = 1e-6 the
differences are exact to ~1e-8 relative (a linear region is wider than the step at the tested inputs).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fimaudit_onnx.bound import SILU, graph_bound
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)
OPSET = [helper.make_opsetid("", 18)]


def model(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], shape: tuple[int, ...], out: str = "logits") -> onnx.ModelProto:
    inits = [numpy_helper.from_array(v.astype(np.float64) if v.dtype.kind == "f" else v, k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", *shape])],
                              [helper.make_tensor_value_info(out, TensorProto.DOUBLE, ["N", "K"])], inits)
    m = helper.make_model(graph, opset_imports=OPSET)
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def exact_lambda(m: onnx.ModelProto, x: np.ndarray, probabilities: bool = False, h: float = 1e-6) -> float:
    d = x.size
    eye = np.eye(d).reshape(d, *x.shape)
    batch = np.concatenate([x[None] + h * eye, x[None] - h * eye, x[None]]).astype(np.float64)
    out = run(m, batch).reshape(2 * d + 1, -1)
    z = np.log(out) if probabilities else out
    jac = ((z[:d] - z[d:2 * d]) / (2 * h)).T  # K × d
    p = np.exp(z[-1] - z[-1].max())
    p /= p.sum()
    f = jac.T @ (np.diag(p) - np.outer(p, p)) @ jac
    return float(np.linalg.eigvalsh(f)[-1])


def run(m: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    """onnxruntime where it has float64 kernels, onnx's reference evaluator (numpy) otherwise."""
    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": batch})[0]
    except Exception:  # e.g. no float64 Conv in onnxruntime
        from onnx.reference import ReferenceEvaluator

        return np.asarray(ReferenceEvaluator(m).run(None, {"x": batch})[0])


def inputs(shape: tuple[int, ...], n: int = 6) -> list[np.ndarray]:
    return [RNG.normal(size=shape) * s for s in np.linspace(0.5, 3, n)]


def test_mlp_bound_holds_and_uses_the_row_differences() -> None:
    w1, b1, w2, b2 = RNG.normal(size=(16, 64)) / 4, RNG.normal(size=16), RNG.normal(size=(10, 16)) / 2, RNG.normal(size=10)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Gemm", ["r", "w2", "b2"], ["z"], transB=1),
             helper.make_node("Softmax", ["z"], ["logits"], axis=1)]
    m = model(nodes, dict(w1=w1, b1=b1, w2=w2, b2=b2), (1, 8, 8))
    b = graph_bound(m)
    assert b.value is not None and "W_a - W_b" in b.details["final_rule"]
    d = ((w2[:, None, :] - w2[None, :, :]) ** 2).sum(-1).max()
    assert b.value == pytest.approx(0.25 * d * np.linalg.norm(w1, 2) ** 2, rel=1e-7)
    assert all(exact_lambda(m, x, probabilities=True) <= b.value for x in inputs((1, 8, 8)))


def conv_net() -> onnx.ModelProto:
    """Conv-BN-Relu, residual Add, depthwise conv, Concat, MaxPool, AveragePool, global pooling, Gemm."""
    c = 4
    w = dict(
        cw=RNG.normal(size=(c, 1, 3, 3)) / 2, cb=RNG.normal(size=c),
        s=RNG.uniform(0.5, 2, c), bb=RNG.normal(size=c), mu=RNG.normal(size=c), var=RNG.uniform(0.3, 2, c),
        dw=RNG.normal(size=(c, 1, 3, 3)), sw=RNG.normal(size=(c, 2 * c, 1, 1)) / 3,
        fw=RNG.normal(size=(10, c)), fb=RNG.normal(size=10),
    )
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["n1"], epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw"], ["d1"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("LeakyRelu", ["d1"], ["l1"], alpha=0.1),
        helper.make_node("Add", ["l1", "r1"], ["a1"]),
        helper.make_node("Concat", ["a1", "r1"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "sw"], ["s1"], strides=[2, 2]),
        helper.make_node("MaxPool", ["s1"], ["m1"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["m1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p1"], ["g1"]),
        helper.make_node("Flatten", ["g1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "fw", "fb"], ["logits"], transB=1),
    ]
    return model(nodes, w, (1, 8, 8))


def test_conv_graph_bound_holds() -> None:
    m = conv_net()
    b = graph_bound(m)
    assert b.value is not None, b.reason
    worst = max(exact_lambda(m, x) for x in inputs((1, 8, 8)))
    assert worst <= b.value
    assert b.details["operators"]["Conv"] == 3


def test_activation_islands_are_recognised() -> None:
    """x·Sigmoid(x) is SiLU; 0.5·x·(1 + Erf(x/√2)) is GELU (what opset-18 exporters write)."""
    w1, w2 = RNG.normal(size=(8, 64)) / 3, RNG.normal(size=(5, 8))
    silu = [helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["h", "s"], ["a"])]
    gelu = [helper.make_node("Div", ["h", "r2"], ["q"]), helper.make_node("Erf", ["q"], ["e"]), helper.make_node("Add", ["e", "one"], ["e1"]),
            helper.make_node("Mul", ["h", "e1"], ["m"]), helper.make_node("Mul", ["m", "half"], ["a"])]
    for body, const in ((silu, SILU), (gelu, 1.1289)):
        nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w1"], ["h"], transB=1), *body,
                 helper.make_node("Gemm", ["a", "w2"], ["logits"], transB=1)]
        m = model(nodes, dict(w1=w1, w2=w2, r2=np.array(math.sqrt(2)), one=np.array(1.0), half=np.array(0.5)), (1, 8, 8))
        b = graph_bound(m)
        assert b.value is not None, b.reason
        expected = 0.25 * ((w2[:, None] - w2[None]) ** 2).sum(-1).max() * (const * np.linalg.norm(w1, 2)) ** 2
        assert b.value == pytest.approx(expected, rel=1e-4)
        assert max(exact_lambda(m, x) for x in inputs((1, 8, 8))) <= b.value


def test_layernorm_attention_is_bounded_raw_attention_is_not() -> None:
    """Q Kᵀ of two input-dependent tensors: bounded after a LayerNorm (its output has a bounded
    norm whatever the input), refused with the operator named without one."""
    w = dict(wq=RNG.normal(size=(8, 8)) / 3, wk=RNG.normal(size=(8, 8)) / 3, wv=RNG.normal(size=(8, 8)) / 3,
             g=np.ones(8), bt=np.zeros(8), fw=RNG.normal(size=(10, 64)) / 4, shape=np.array([-1, 8, 8], dtype=np.int64),
             flat=np.array([-1, 64], dtype=np.int64), scale=np.array(1 / math.sqrt(8)))

    def attention(src: str) -> list[onnx.NodeProto]:
        return [helper.make_node("MatMul", [src, "wq"], ["q"]), helper.make_node("MatMul", [src, "wk"], ["k"]),
                helper.make_node("MatMul", [src, "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                helper.make_node("MatMul", ["q", "kt"], ["s0"]), helper.make_node("Mul", ["s0", "scale"], ["s"]),
                helper.make_node("Softmax", ["s"], ["a"], axis=-1), helper.make_node("MatMul", ["a", "v"], ["o"]),
                helper.make_node("Reshape", ["o", "flat"], ["of"]), helper.make_node("Gemm", ["of", "fw"], ["logits"], transB=1)]

    head = [helper.make_node("Reshape", ["x", "shape"], ["t"])]
    ln = [helper.make_node("LayerNormalization", ["t", "g", "bt"], ["n"], axis=-1, epsilon=1e-5)]
    with_ln = model(head + ln + attention("n"), w, (1, 8, 8))
    b = graph_bound(with_ln)
    assert b.value is not None and b.scope == "all inputs"
    assert max(exact_lambda(with_ln, x) for x in inputs((1, 8, 8))) <= b.value
    raw = model(head + attention("t"), {k: v for k, v in w.items() if k not in ("g", "bt")}, (1, 8, 8))
    refused = graph_bound(raw)
    assert refused.value is None and refused.unsupported_op == "MatMul" and "unbounded" in (refused.reason or "")
    stated = graph_bound(raw, input_norm=5.0)
    assert stated.value is not None and "5" in stated.scope
    for x in inputs((1, 8, 8)):
        assert exact_lambda(raw, 5.0 * x / np.linalg.norm(x)) <= stated.value


def test_unsupported_operator_is_named() -> None:
    nodes = [helper.make_node("Resize", ["x", "", "sc"], ["u"], mode="nearest"), helper.make_node("Flatten", ["u"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)]
    m = model(nodes, dict(sc=np.array([1, 1, 2, 2], dtype=np.float32), w=RNG.normal(size=(10, 256))), (1, 8, 8))
    b = graph_bound(m)
    assert b.value is None and b.unsupported_op == "Resize"


def test_square_is_not_an_activation() -> None:
    """x·x is no known activation and has no global constant: refused, not guessed."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Mul", ["f", "f"], ["sq"]),
             helper.make_node("Gemm", ["sq", "w"], ["logits"], transB=1)]
    b = graph_bound(model(nodes, dict(w=RNG.normal(size=(10, 64))), (1, 8, 8)))
    assert b.value is None and b.unsupported_op == "Mul"


def test_probabilities_need_a_final_softmax() -> None:
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["z"], transB=1),
             helper.make_node("Sigmoid", ["z"], ["logits"])]
    m = model(nodes, dict(w=RNG.normal(size=(10, 64))), (1, 8, 8))
    assert graph_bound(m, outputs="probabilities").unsupported_op == "output"
    assert graph_bound(m, outputs="logits").value is not None  # sigmoid outputs read as logits: the caller's claim
