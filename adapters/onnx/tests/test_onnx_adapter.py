"""The ONNX adapter (fimaudit_onnx) itself: the files it writes and reads compute the known
networks, their identity is the file's digest, the batch axis, the output head, its options, input
dims a file leaves open, and files with several inputs. The core's tests run the same networks in
memory (tests/known_models.py); this file is what ties those to real ONNX files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is installed with fimaudit-onnx (adapters/onnx)")
pytest.importorskip("onnxruntime", reason="onnxruntime is installed with fimaudit-onnx (adapters/onnx)")

import fimaudit_onnx  # noqa: E402
from cli_helpers import run  # noqa: E402
from known_models import KnownModel  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fimaudit  # noqa: E402
from fimaudit.conformance import check_model  # noqa: E402
from fimaudit.errors import ModelError, OutputError, UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]  # adapters/onnx/tests/ -> the repository
DIGITS = ROOT / "examples" / "digits.onnx"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_onnx(nodes: list[Any], inputs: list[Any], output: Any, initializers: list[Any], path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the adapter supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def dynamic_hw_onnx(path: Path, classes: int = 5) -> Path:
    """Conv 3->4 (3x3, same padding), tanh, global average pool, dense, softmax: input
    [batch, 3, H, W] with H and W dynamic, so any height and width run."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "conv_b"),
        numpy_helper.from_array(3 * rng.standard_normal((4, classes)).astype(np.float32), "dense_w"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "dense_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c"], ["t"]),
        helper.make_node("GlobalAveragePool", ["t"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "dense_w", "dense_b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])
    return save_onnx(nodes, [x], out, weights, path)


def flatten_dense_onnx(path: Path) -> Path:
    """Declared [batch, 1, H, W] with H, W dynamic, but a dense layer that only fits H * W = 64."""
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal((64, 4)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "h", "w"])
    out = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 4])
    return save_onnx(nodes, [x], out, weights, path)


def two_input_onnx(path: Path) -> Path:
    """softmax(a + b): two required inputs."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=1)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("a", "b")]
    out = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 4])
    return save_onnx(nodes, inputs, out, [], path)


# -- the known networks as files ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp64", "mlp32", "mlp64_batch1", "mlp64_logits"])
def test_files_compute_the_networks_the_core_tests_run_in_memory(name: str, request: pytest.FixtureRequest) -> None:
    known: KnownModel = request.getfixturevalue(name)
    from_file, in_memory = fimaudit.load_model(known.path), known.model()
    assert from_file.input_spec == in_memory.input_spec
    assert (from_file.num_classes, from_file.output_kind, from_file.output_dtype) == (in_memory.num_classes, in_memory.output_kind, in_memory.output_dtype)
    assert (from_file.max_batch_size == 1) == (known.batch == 1) and from_file.fixed_batch_size == known.batch
    rows = known.x[:1] if known.batch == 1 else known.x
    tolerance = 1e-6 if known.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(from_file.predict_proba(rows), in_memory.predict_proba(rows), rtol=tolerance, atol=tolerance)
    check_model(from_file)


def test_identity_is_the_files_digest(mlp64: KnownModel) -> None:
    report = fimaudit.audit(fimaudit.load_model(mlp64.path), mlp64.x[:2], directions=16)
    assert (report.model.reference, report.model.adapter, report.model.sha256) == (str(mlp64.path), "onnx", sha256(mlp64.path))


def test_fixed_batch_one_file(mlp64_batch1: KnownModel) -> None:
    single = fimaudit.load_model(mlp64_batch1.path)
    assert single.max_batch_size == 1 and single.fixed_batch_size == 1
    x = mlp64_batch1.x[:2]
    a = fimaudit.audit(single, x, directions=16, seed=1)
    assert fimaudit.audit(fimaudit.load_model(mlp64_batch1.path), x, directions=16, seed=1).samples == a.samples
    lam, _, _ = mlp64_batch1.exact(x)
    exact = fimaudit.audit(single, x, estimator="exact")
    assert [s.lambda_max for s in exact.samples] == pytest.approx(lam, rel=1e-4)


def test_convolutional_networks_get_small_batches_on_the_cpu(tmp_path: Path, mlp32: KnownModel) -> None:
    """On the CPU a graph with a convolution and inputs of 64 KiB or more gets batches of at most 16 inputs
    and 4 MiB (larger ones cost more per input there: docs/benchmarks/batch_size.md); smaller inputs and
    MLPs keep 64 MiB and 1,024; the max_batch_size option still decides where given."""
    conv = dynamic_hw_onnx(tmp_path / "conv.onnx")
    assert fimaudit.load_model(str(conv), input_shape=(3, 96, 96)).max_batch_size == 16  # 108 KiB an input
    assert fimaudit.load_model(str(conv), input_shape=(3, 256, 256)).max_batch_size == 5  # 4 MiB of 768 KiB inputs
    assert fimaudit.load_model(str(conv), input_shape=(3, 96, 96), max_batch_size=100).max_batch_size == 100
    assert fimaudit.load_model(str(conv), input_shape=(3, 64, 64)).max_batch_size == 1024  # 48 KiB an input
    assert fimaudit.load_model(str(mlp32.path)).max_batch_size == 1024


def test_a_convolution_inside_a_branch_is_found(tmp_path: Path) -> None:
    """The graph walk reaches the bodies of If nodes (and a graph without convolutions says so)."""
    from fimaudit_onnx import _convolutional

    def branch(op: str) -> Any:
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        return helper.make_graph([helper.make_node(op, ["x", "w"] if op == "Conv" else ["x"], ["y"])], op, [], [y])

    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    weights = [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")]
    for op, found in (("Conv", True), ("Relu", False)):
        node = helper.make_node("If", ["flag"], ["out"], then_branch=branch(op), else_branch=branch("Relu"))
        model = helper.make_model(helper.make_graph([node], "g", [flag, x], [out], weights))
        onnx.save(model, str(tmp_path / f"{op}.onnx"))
        assert _convolutional(tmp_path / f"{op}.onnx") is found


def test_logit_outputs_detected_and_softmaxed(mlp64_logits: KnownModel) -> None:
    model = fimaudit.load_model(mlp64_logits.path)
    assert model.output_kind == "logits"
    report = fimaudit.audit(model, mlp64_logits.x[:4], estimator="exact")
    assert report.model.output_kind == "logits"
    lam, _, p = mlp64_logits.exact(mlp64_logits.x[:4])
    assert [s.lambda_max for s in report.samples] == pytest.approx(lam, rel=1e-4)
    assert [s.confidence for s in report.samples] == pytest.approx(p.max(axis=1))


def head_onnx(path: Path, head: str) -> Path:
    """input (N, 4) float32 -> MatMul -> `head` (Softmax or Sigmoid) -> out (N, 3)."""
    w = numpy_helper.from_array(np.linspace(-1, 1, 12).astype(np.float32).reshape(4, 3), "w")
    last = helper.make_node(head, ["z"], ["out"], **({"axis": -1} if head == "Softmax" else {}))
    nodes = [helper.make_node("MatMul", ["input", "w"], ["z"]), last]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])
    return save_onnx(nodes, [x], out, [w], path)


def test_softmax_graph_detected_as_probabilities(tmp_path: Path) -> None:
    model = fimaudit.load_model(head_onnx(tmp_path / "soft.onnx", "Softmax"))
    assert model.output_kind == "probabilities" and model.num_classes == 3
    check_model(model)


def test_one_vs_rest_scores_refused_when_opened(tmp_path: Path) -> None:
    """Independent sigmoid scores are neither kind: refused when the file is opened, unless declared
    (then every answer is checked, and refused in the audit: tests/test_errors.py)."""
    path = head_onnx(tmp_path / "sigmoid.onnx", "Sigmoid")
    with pytest.raises(OutputError, match="neither probabilities nor logits"):
        fimaudit.load_model(path)
    assert fimaudit.load_model(path, outputs="probabilities").output_kind == "probabilities"


# -- the file and its options --------------------------------------------------------------------------

def test_missing_and_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        fimaudit.load_model(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match="cannot load"):
        fimaudit.load_model(corrupt)


def test_unknown_output_name(mlp64: KnownModel) -> None:
    with pytest.raises(UsageError, match="no output named 'nope'"):
        fimaudit.load_model(mlp64.path, output_name="nope")


def test_input_declared_huge_is_refused(tmp_path: Path) -> None:
    """A declared input of 10^12 floats is a broken export: refused before anything is allocated."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1_000_000, 1_000_000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1_000_000])
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[2], keepdims=0)
    model = helper.make_model(helper.make_graph([node], "huge", [x], [y]), opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, tmp_path / "huge.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.float32))
    res = run("audit", str(tmp_path / "huge.onnx"), "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r.json"), "-q")
    assert res.returncode == 4, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1000000, 1000000" in errors[0] and "Traceback" not in res.stderr, res.stderr


# -- input dims the file leaves open -----------------------------------------------------------------

def test_dynamic_hw_onnx_refused_without_a_shape(tmp_path: Path) -> None:
    path = dynamic_hw_onnx(tmp_path / "dyn.onnx")
    with pytest.raises(fimaudit.UsageError) as info:
        fimaudit.load_model(path)
    assert "leaves input dims open: (3, ?, ?)" in info.value.message
    assert "input_shape=" in info.value.fix and "--input-shape" in info.value.fix


def test_dynamic_hw_onnx_audited_with_input_shape(tmp_path: Path) -> None:
    path = dynamic_hw_onnx(tmp_path / "dyn.onnx")
    before = sha256(path)
    model = fimaudit.load_model(path, input_shape=(3, 6, 5))
    assert model.input_spec.shape == (3, 6, 5) and model.num_classes == 5
    ident = model.identity
    # The report names the original file, unchanged: no re-export, same digest.
    assert (ident.reference, ident.sha256) == (str(path), before) and sha256(path) == before
    assert ident.extra["input_shape"] == "3,6,5" and ident.extra["input_shape_from"] == "input_shape"
    x = np.random.default_rng(2).uniform(0, 1, (2, 3, 6, 5)).astype(np.float32)
    report = fimaudit.audit(model, x, directions=16, limit=1)
    assert report.model.sha256 == before and report.model.reference == str(path)
    assert len(report.samples) == 1 and report.samples[0].lambda_max > 0


@pytest.mark.parametrize(
    ("shape", "why"),
    [((1, 6, 5), r"does not fit .* \(3, \?, \?\)"), ((6, 5), r"does not fit"), ((3, 0, 5), r"not a shape of positive sizes")],
)
def test_input_shape_checked_against_the_fixed_dims(tmp_path: Path, shape: tuple[int, ...], why: str) -> None:
    path = dynamic_hw_onnx(tmp_path / "dyn.onnx")
    with pytest.raises(fimaudit.UsageError, match=why):
        fimaudit.load_model(path, input_shape=shape)
    with pytest.raises(fimaudit.UsageError, match=r"input_shape \(1, 8, 9\) does not fit"):
        fimaudit.load_model(DIGITS, input_shape=(1, 8, 9))  # a static model: must equal its shape
    assert fimaudit.load_model(DIGITS, input_shape=(1, 8, 8)).identity.extra.get("input_shape_from") is None


def test_shape_taken_from_the_data_where_the_model_records_none(tmp_path: Path) -> None:
    path = dynamic_hw_onnx(tmp_path / "dyn.onnx")
    model = fimaudit.load_model(path, data_shape=(3, 7, 4))
    assert model.input_spec.shape == (3, 7, 4) and model.identity.extra["input_shape_from"] == "data"
    # The user's shape wins over the data's; a static model ignores the data (it may be flattened rows).
    assert fimaudit.load_model(path, input_shape=(3, 5, 5), data_shape=(3, 7, 4)).input_spec.shape == (3, 5, 5)
    assert fimaudit.load_model(DIGITS, data_shape=(64,)).input_spec.shape == (1, 8, 8)
    with pytest.raises(fimaudit.UsageError, match=r"the data's input shape \(64,\) does not fit"):
        fimaudit.load_model(path, data_shape=(64,))


def test_a_shape_the_model_cannot_run_is_a_model_error(tmp_path: Path) -> None:
    path = flatten_dense_onnx(tmp_path / "flat.onnx")
    assert fimaudit.load_model(path, input_shape=(1, 8, 8)).num_classes == 4
    with pytest.raises(fimaudit.ModelError, match=r"fails on inputs of shape \(1, 4, 4\) \(taken from the audited data\)"):
        fimaudit.load_model(path, data_shape=(1, 4, 4))


def test_cli_audits_a_dynamic_hw_onnx_model_with_input_shape(tmp_path: Path) -> None:
    path = dynamic_hw_onnx(tmp_path / "dyn.onnx")
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(3).uniform(0, 1, (2, 3, 6, 5)).astype(np.float32))
    out = tmp_path / "r.json"
    common = ["audit", str(path), "--data", str(data), "--limit", "1", "--directions", "16", "-q"]
    res = run(*common, "--input-shape", "3,6,5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["model"]["sha256"] == sha256(path) and report["model"]["reference"] == str(path)
    assert report["model"]["extra"]["input_shape_from"] == "input_shape"
    # Without --input-shape the shape of the array's rows is taken.
    res = run(*common, "--out", str(out))
    assert res.returncode == 0, res.stderr
    model = json.loads(out.read_text())["model"]
    assert model["extra"]["input_shape"] == "3,6,5" and model["extra"]["input_shape_from"] == "data"
    assert model["sha256"] == sha256(path)


# -- choosing among several inputs ------------------------------------------------------------------

def test_two_input_model_names_the_input_option(tmp_path: Path) -> None:
    path = two_input_onnx(tmp_path / "two.onnx")
    with pytest.raises(fimaudit.UsageError) as info:
        fimaudit.load_model(path)
    assert "2 inputs ['a', 'b']" in info.value.message
    assert "--input NAME" in info.value.fix and "input_name=" in info.value.fix
    assert "input_name" in fimaudit_onnx.OPTIONS
    # Naming one does not make the other optional: say so instead of failing inside onnxruntime.
    with pytest.raises(fimaudit.ModelError, match=r"also requires the inputs \['b'\]"):
        fimaudit.load_model(path, input_name="a")
    with pytest.raises(fimaudit.UsageError, match="no input named 'c'"):
        fimaudit.load_model(path, input_name="c")
    assert fimaudit.load_model(DIGITS, input_name="input").input_spec.shape == (1, 8, 8)


def test_cli_two_input_error_names_the_flag(tmp_path: Path) -> None:
    path = two_input_onnx(tmp_path / "two.onnx")
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((2, 4), np.float32))
    res = run("audit", str(path), "--data", str(data), "--out", str(tmp_path / "r.json"))
    assert res.returncode == 2, res.stderr
    assert "--input NAME" in res.stderr and "Traceback" not in res.stderr
