"""The adapter SDK (fimaudit.adapter): declared options, input shapes a model leaves open, inputs
to choose among, the one directory digest, and the Protocols of optional abilities. Real files and
real models throughout."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fimaudit_onnx
import fimaudit_tensorflow
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fimaudit
from fimaudit.adapter import FingerprintChecker, MultiFileAdapter, WhiteBoxModel, directory_digest, directory_files, manifest_sha256
from fimaudit.signing.attestation import directory_subjects
from fimaudit.registry import adapter_for, installed_adapters

# TorchScript files are still audited, so the tests script modules; torch deprecates that.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits.onnx"
CLI = [sys.executable, "-m", "fimaudit.cli"]


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


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"}, check=False)


# -- declared options ------------------------------------------------------------------------------

def test_unknown_option_refused_by_onnx_adapter() -> None:
    with pytest.raises(fimaudit.UsageError) as info:
        fimaudit.load_model(DIGITS, timeout=5, header_env="TOKEN")
    err = info.value
    assert err.exit_code == 2
    assert "the onnx adapter does not take the options header_env, timeout." == err.message
    # The fix lists every option the adapter does take.
    for option in fimaudit_onnx.OPTIONS:
        assert option in err.fix


def test_unknown_option_refused_by_torch_adapter(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import fimaudit_torch

    path = fimaudit_torch.save_torchscript(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), tmp_path / "m.pt", (4,))
    with pytest.raises(fimaudit.UsageError, match=r"^the torch adapter does not take the option timeout\.") as info:
        fimaudit.load_model(path, timeout=5)
    assert "factory" in info.value.fix and "input_shape" in info.value.fix
    assert fimaudit.load_model(path, device="cpu").num_classes == 3  # a declared option still passes


def test_cli_refuses_an_option_the_adapter_does_not_take(tmp_path: Path) -> None:
    res = run_cli("audit", str(DIGITS), "--data", str(ROOT / "examples" / "digits_test.npy"), "--timeout", "5",
                  "--limit", "1", "--out", str(tmp_path / "r.json"))
    assert res.returncode == 2, res.stderr
    assert "the onnx adapter does not take the option timeout" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "r.json").exists()


def test_every_declared_option_is_a_loader_parameter() -> None:
    """A declared option that the loader does not take would pass the check and then fail in __init__."""
    takes = {"onnx": set(inspect.signature(fimaudit_onnx.OnnxModel).parameters)}
    try:
        from fimaudit_torch.model import TorchModel, load_file

        takes["torch"] = set(inspect.signature(load_file).parameters) | set(inspect.signature(TorchModel).parameters)
    except ImportError:
        pass
    adapters, broken = installed_adapters()
    assert not broken
    for adapter in adapters:
        assert adapter.options, f"{adapter.name} declares no options"
        assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in adapter.options.items())
        if adapter.name in takes:
            assert set(adapter.options) <= takes[adapter.name], adapter.name


# -- input shapes a model leaves open -----------------------------------------------------------------

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
    res = run_cli(*common, "--input-shape", "3,6,5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["model"]["sha256"] == sha256(path) and report["model"]["reference"] == str(path)
    assert report["model"]["extra"]["input_shape_from"] == "input_shape"
    # Without --input-shape the shape of the array's rows is taken.
    res = run_cli(*common, "--out", str(out))
    assert res.returncode == 0, res.stderr
    model = json.loads(out.read_text())["model"]
    assert model["extra"]["input_shape"] == "3,6,5" and model["extra"]["input_shape_from"] == "data"
    assert model["sha256"] == sha256(path)


def test_torchscript_shape_from_data_and_checked_against_a_recorded_one(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import fimaudit_torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5))
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(net), str(bare))  # records no input shape
    model = fimaudit.load_model(bare, data_shape=(3, 6, 6))
    assert model.input_spec.shape == (3, 6, 6)
    assert model.identity.extra["input_shape_from"] == "data" and model.identity.sha256 == sha256(bare)
    with pytest.raises(fimaudit.ModelError, match=r"fails on probe inputs of shape \(7,\) \(taken from the audited data\)"):
        fimaudit.load_model(bare, data_shape=(7,))  # a flattened row cannot feed a conv net
    recorded = fimaudit_torch.save_torchscript(net, tmp_path / "recorded.pt", (3, 6, 6))
    with pytest.raises(fimaudit.UsageError, match=r"input_shape \(3, 5, 5\) does not fit the TorchScript file"):
        fimaudit.load_model(recorded, input_shape=(3, 5, 5))
    assert fimaudit.load_model(recorded, data_shape=(108,)).input_spec.shape == (3, 6, 6)


def test_torch_export_with_dynamic_height_and_width(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=2, max=64), 3: torch.export.Dim("w", min=2, max=64)}
    path = tmp_path / "dyn.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 8, 8),), dynamic_shapes=(dims,)), path)
    with pytest.raises(fimaudit.UsageError, match=r"leaves input dims open: \(3, \?, \?\)"):
        fimaudit.load_model(path)
    model = fimaudit.load_model(path, input_shape=(3, 9, 7))
    assert model.input_spec.shape == (3, 9, 7) and model.identity.sha256 == sha256(path)


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
    res = run_cli("audit", str(path), "--data", str(data), "--out", str(tmp_path / "r.json"))
    assert res.returncode == 2, res.stderr
    assert "--input NAME" in res.stderr and "Traceback" not in res.stderr


# -- one directory digest ------------------------------------------------------------------------------

@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """Nested files, a name with a space, a symlinked file (hashed, as TensorFlow reads it) and a
    symlinked directory (not followed: it could pull outside files in)."""
    root = tmp_path / "model"
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(300))
    (root / "assets with space.txt").write_text("vocab")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"not part of the model")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "linked_file").symlink_to(root / "assets with space.txt")
    return root


def test_one_directory_digest_for_adapter_and_attestation(model_dir: Path) -> None:
    digest, count = directory_digest(model_dir)
    names = [p.relative_to(model_dir).as_posix() for p in directory_files(model_dir)]
    assert names == ["assets with space.txt", "linked_file", "saved_model.pb", "variables/variables.data-00000-of-00001"]
    assert count == 4
    # The TensorFlow adapter names its models with the SDK's digest, not a copy of it.
    assert fimaudit_tensorflow.directory_digest is directory_digest
    # A signed report's subjects list the same files with the same digests: their manifest matches.
    subjects = directory_subjects(model_dir)
    assert [s.name for s in subjects] == names
    assert manifest_sha256((s.name, s.sha256) for s in subjects) == digest
    lines = "".join(f"{sha256(model_dir / n)}  {n}\n" for n in names)
    assert digest == hashlib.sha256(lines.encode()).hexdigest()


def test_digests_have_one_implementation() -> None:
    import fimaudit_torch.files

    import fimaudit.fileio

    # The digests live in the adapter SDK alone: no copy in the core's file helpers or an adapter.
    assert not hasattr(fimaudit.fileio, "file_sha256") and not hasattr(fimaudit.fileio, "manifest_sha256")
    assert not hasattr(fimaudit_torch.files, "file_sha256")
    assert not (Path(fimaudit_tensorflow.__file__).parent / "manifest.py").exists()


# -- optional abilities, as Protocols ----------------------------------------------------------------------

def test_optional_abilities_are_protocols(tmp_path: Path) -> None:
    onnx_model = fimaudit.load_model(DIGITS)
    assert not isinstance(onnx_model, WhiteBoxModel)
    assert isinstance(adapter_for(str(DIGITS)), MultiFileAdapter)
    assert not isinstance(adapter_for(str(DIGITS)), FingerprintChecker)
    assert isinstance(adapter_for("triton://127.0.0.1:8000/digits"), FingerprintChecker)
    torch = pytest.importorskip("torch")
    import fimaudit_torch

    torch_model = fimaudit_torch.TorchModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), input_shape=(4,))
    assert isinstance(torch_model, WhiteBoxModel)
    figures = torch_model.exact_fisher(np.zeros((1, 4), np.float32))
    assert figures[0].lambda_max >= 0 and figures[0].trace >= figures[0].lambda_max - 1e-12


def test_white_box_mode_found_by_protocol() -> None:
    with pytest.raises(fimaudit.UsageError, match="white-box mode needs a model with gradients; the 'onnx' adapter"):
        fimaudit.audit(fimaudit.load_model(DIGITS), np.zeros((1, 1, 8, 8), np.float32), white_box=True)
