"""Outputs that break finite differences are detected and reported, as real ONNX graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import fimaudit

K, D = 4, 6
X = np.random.default_rng(0).uniform(0, 1, (6, D)).astype(np.float32)


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_t", TensorProto.FLOAT, [], [value]))


def _build(path: Path, nodes: list[onnx.NodeProto], *, logit_scale: float = 1.0) -> Path:
    """input (N, D) -> z = (x W) * scale -> nodes -> out (N, K); a softmax head unless nodes say otherwise."""
    w = np.random.default_rng(1).standard_normal((D, K)).astype(np.float32) * 2
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["z0"]),
            _const("scale", logit_scale),
            helper.make_node("Mul", ["z0", "scale"], ["z"]),
            *nodes,
        ],
        "degenerate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", D])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", K])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [D, K], w.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _audit(path: Path, **kwargs) -> fimaudit.AuditReport:
    return fimaudit.audit(fimaudit.load_model(path, outputs="probabilities"), X, directions=32, estimator="sketch", **kwargs)


def test_healthy_model_has_no_flags(tmp_path: Path) -> None:
    report = _audit(_build(tmp_path / "ok.onnx", [helper.make_node("Softmax", ["z"], ["out"], axis=-1)]))
    assert all(s.flags == [] for s in report.samples)
    assert all(s.lambda_max > 100 * s.lambda_max_resolution for s in report.samples)
    assert report.summary.flags == {}


def test_rounded_outputs_are_flagged_with_a_resolution_floor(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Softmax", ["z"], ["p"], axis=-1),
        _const("thousand", 1000.0),
        helper.make_node("Mul", ["p", "thousand"], ["p1000"]),
        helper.make_node("Round", ["p1000"], ["r"]),
        helper.make_node("Div", ["r", "thousand"], ["out"]),
    ]
    report = _audit(_build(tmp_path / "rounded.onnx", nodes))
    for s in report.samples:
        assert "quantized_outputs" in s.flags
        assert s.lambda_max_resolution > 0
        assert s.lambda_max >= s.lambda_max_resolution or "below_resolution" not in s.flags
    # a larger step lifts the differences above the 1e-3 grid, so the floor drops
    coarse = _audit(_build(tmp_path / "rounded2.onnx", nodes), step=0.2)
    assert np.median([s.lambda_max_resolution for s in coarse.samples]) < np.median([s.lambda_max_resolution for s in report.samples])


def test_saturated_outputs_give_an_upper_bound_not_zero(tmp_path: Path) -> None:
    report = _audit(_build(tmp_path / "sat.onnx", [helper.make_node("Softmax", ["z"], ["out"], axis=-1)], logit_scale=1000.0))
    saturated = [s for s in report.samples if s.confidence == 1.0]
    assert len(saturated) >= 4  # logits x1000: most rows round to exactly one-hot in float32
    invisible = [s for s in saturated if s.lambda_max_raw == 0.0]  # every other class is exactly 0
    assert len(invisible) >= 3
    assert all("saturated" in s.flags for s in saturated)
    for s in invisible:
        assert "below_resolution" in s.flags
        assert s.lambda_max == pytest.approx(s.lambda_max_resolution) and s.lambda_max > 0
        assert s.lambda_max_ci == (0.0, pytest.approx(s.lambda_max_resolution))
        assert s.epsilon_tau is not None  # a finite, conservative radius instead of infinity
    assert report.summary.flags["saturated"] == len(saturated)


def test_nondeterministic_outputs_are_flagged(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("RandomNormalLike", ["z"], ["noise"], scale=1e-3),
        helper.make_node("Add", ["z", "noise"], ["zn"]),
        helper.make_node("Softmax", ["zn"], ["out"], axis=-1),
    ]
    report = _audit(_build(tmp_path / "noisy.onnx", nodes))
    assert all("nondeterministic" in s.flags for s in report.samples)
    # the noise floor lifts the resolution level far above float32 rounding (~1e-10 here)
    assert all(s.lambda_max_resolution > 1e-4 for s in report.samples)
    healthy = _audit(_build(tmp_path / "ok.onnx", [helper.make_node("Softmax", ["z"], ["out"], axis=-1)]))
    assert max(s.lambda_max_resolution for s in healthy.samples) < 1e-6


def test_top_k_outputs_are_flagged(tmp_path: Path) -> None:
    two = helper.make_tensor("k2", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Softmax", ["z"], ["p"], axis=-1),
        helper.make_node("Constant", [], ["k"], value=two),
        helper.make_node("TopK", ["p", "k"], ["vals", "idx"], axis=-1),
        helper.make_node("Mul", ["p", "zero"], ["zeros"]),
        helper.make_node("ScatterElements", ["zeros", "idx", "vals"], ["top"], axis=-1),
        helper.make_node("ReduceSum", ["top", "axes"], ["total"], keepdims=1),
        helper.make_node("Div", ["top", "total"], ["out"]),
        _const("zero", 0.0),
        helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes_t", TensorProto.INT64, [1], [-1])),
    ]
    nodes = nodes[-2:] + nodes[:-2]  # constants first (topological order)
    report = _audit(_build(tmp_path / "topk.onnx", nodes))
    assert all("zero_probabilities" in s.flags for s in report.samples)
