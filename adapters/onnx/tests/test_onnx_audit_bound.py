"""`fimaudit audit --bound` on ONNX files: OnnxModel's bound from the file's graph (the BoundedModel
Protocol, fimaudit_onnx.bound) in the report, checked against the known networks' exact λ_max at every
audited input; signed and verified with it; null with the operator named where an operator has no rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is installed with fimaudit-onnx (adapters/onnx)")
pytest.importorskip("onnxruntime", reason="onnxruntime is installed with fimaudit-onnx (adapters/onnx)")

from cli_helpers import run  # noqa: E402
from known_models import KnownModel  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fimaudit  # noqa: E402
from fimaudit.adapter import BoundedModel  # noqa: E402
from fimaudit.render import render_html  # noqa: E402
from fimaudit.report import AuditReport  # noqa: E402
from fimaudit.signing import AuditPredicate, attest, generate_keypair, load_public_key, load_signing_key, verify  # noqa: E402


def test_cli_bounds_an_onnx_file_above_every_exact_value(mlp64: KnownModel, tmp_path: Path) -> None:
    data, out = tmp_path / "x.npy", tmp_path / "report.json"
    np.save(data, mlp64.x)
    res = run("audit", str(mlp64.path), "--data", str(data), "--out", str(out), "--directions", "16", "--bound")
    assert res.returncode == 0, res.stderr
    assert "lambda_max bound from the graph (all inputs):" in res.stdout
    report = AuditReport.load(out)
    b = report.model.lambda_max_bound
    assert b is not None and b.value is not None and b.scope == "all inputs" and "ONNX graph" in b.method
    assert b.value >= float(mlp64.exact()[0].max())
    # The ONNX adapter has no local bound: the samples carry none, and the report says why.
    assert all(s.lambda_max_bound is None for s in report.samples)
    assert b.local == "none: the 'onnx' adapter computes no local bound, only the global one"
    page = render_html(report)
    assert "<h2>Bound from the graph</h2>" in page and f"{b.value:.4g}" in page and "class='global-bound'" in page
    assert "<th>bound</th>" not in page  # no local bounds: no column of dashes


def test_logits_file_bound_holds(mlp64_logits: KnownModel) -> None:
    model = fimaudit.load_model(str(mlp64_logits.path))
    assert isinstance(model, BoundedModel) and model.output_kind == "logits"
    bound = model.lambda_max_bound()
    assert bound.value is not None and bound.value >= float(mlp64_logits.exact()[0].max())
    assert model.local_lambda_max_bound(mlp64_logits.x[0], 0.1) is None


def test_signed_report_carries_the_bound(mlp64: KnownModel, tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "auditor")
    model = fimaudit.load_model(str(mlp64.path))
    report = fimaudit.audit(model, mlp64.x[:4], directions=16, bound=True)
    envelope = attest(report, load_signing_key(key_path), model_path=mlp64.path)
    result = verify(envelope, load_public_key(pub_path), mlp64.path)
    assert result.subject_ok and result.predicate.report.model.lambda_max_bound == report.model.lambda_max_bound
    assert result.predicate.report.model.lambda_max_bound is not None and result.predicate.report.model.lambda_max_bound.value is not None
    # The signed method says the graph was read as well as the outputs.
    assert isinstance(result.predicate, AuditPredicate)
    assert result.predicate.method.access.endswith("and the model's graph and weights to bound lambda_max")


def resize_onnx(path: Path) -> Path:
    """Resize (nearest, x2), Flatten, Gemm, Softmax: onnxruntime runs it; the bound has no rule for Resize."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"),
        numpy_helper.from_array(rng.standard_normal((4 * 4 * 2, 3)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("Flatten", ["u"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 2, 2])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph(nodes, "resize", [x], [out], weights)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def test_an_unsupported_operator_gives_null_with_the_operator_named(tmp_path: Path) -> None:
    path = resize_onnx(tmp_path / "resize.onnx")
    data, out = tmp_path / "x.npy", tmp_path / "report.json"
    np.save(data, np.random.default_rng(1).uniform(0, 1, (3, 2, 2, 2)).astype(np.float32))
    res = run("audit", str(path), "--data", str(data), "--out", str(out), "--directions", "16", "--bound")
    assert res.returncode == 0, res.stderr
    assert "lambda_max bound from the graph: none (unsupported operator Resize: no Lipschitz rule" in " ".join(res.stdout.split())
    raw = json.loads(out.read_text())["model"]["lambda_max_bound"]
    assert raw["value"] is None and raw["unsupported_operator"] == "Resize" and "no Lipschitz rule" in raw["reason"]
    assert "none (operator Resize:" in render_html(AuditReport.load(out))
