"""The adapter SDK (fimaudit.adapter): declared options, the one directory digest, and the
Protocols of optional abilities, checked on the installed adapters with real files. How each
adapter resolves input shapes and inputs is tested beside it (adapters/<name>/tests)."""
from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import fimaudit_onnx
import numpy as np
import pytest

import fimaudit
from fimaudit.adapter import FingerprintChecker, MultiFileAdapter, WhiteBoxModel, directory_digest, directory_files, manifest_sha256
from fimaudit.signing.attestation import directory_subjects
from fimaudit.registry import adapter_for, installed_adapters

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits.onnx"
CLI = [sys.executable, "-m", "fimaudit.cli"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    # A signed report's subjects list the same files with the same digests: their manifest matches.
    subjects = directory_subjects(model_dir)
    assert [s.name for s in subjects] == names
    assert manifest_sha256((s.name, s.sha256) for s in subjects) == digest
    lines = "".join(f"{sha256(model_dir / n)}  {n}\n" for n in names)
    assert digest == hashlib.sha256(lines.encode()).hexdigest()


def test_digests_have_one_implementation() -> None:
    import fimaudit.fileio

    # The digests live in the adapter SDK alone: no copy in the core's file helpers or an adapter.
    assert not hasattr(fimaudit.fileio, "file_sha256") and not hasattr(fimaudit.fileio, "manifest_sha256")
    fimaudit_tensorflow = pytest.importorskip("fimaudit_tensorflow", reason="fimaudit-tensorflow is installed by adapters/tensorflow/install.sh")
    # The TensorFlow adapter names its models with the SDK's digest, not a copy of it.
    assert fimaudit_tensorflow.directory_digest is directory_digest
    assert not (Path(fimaudit_tensorflow.__file__).parent / "manifest.py").exists()
    torch_files = pytest.importorskip("fimaudit_torch.files", reason="fimaudit-torch is installed by adapters/torch/install.sh")
    assert not hasattr(torch_files, "file_sha256")


# -- optional abilities, as Protocols ----------------------------------------------------------------------

def test_optional_abilities_are_protocols(tmp_path: Path) -> None:
    onnx_model = fimaudit.load_model(DIGITS)
    assert not isinstance(onnx_model, WhiteBoxModel)
    assert isinstance(adapter_for(str(DIGITS)), MultiFileAdapter)
    assert not isinstance(adapter_for(str(DIGITS)), FingerprintChecker)
    assert isinstance(adapter_for("triton://127.0.0.1:8000/digits"), FingerprintChecker)
    torch = pytest.importorskip("torch", reason="torch is installed by adapters/torch/install.sh")
    import fimaudit_torch

    # outputs declared: an unseeded random Linear can emit scores in [0, 1] that the detection rightly refuses
    torch_model = fimaudit_torch.TorchModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), input_shape=(4,), outputs="logits")
    assert isinstance(torch_model, WhiteBoxModel)
    figures = torch_model.exact_fisher(np.zeros((1, 4), np.float32))
    assert figures[0].lambda_max >= 0 and figures[0].trace >= figures[0].lambda_max - 1e-12


def test_white_box_mode_found_by_protocol() -> None:
    with pytest.raises(fimaudit.UsageError, match="white-box mode needs a model with gradients; the 'onnx' adapter"):
        fimaudit.audit(fimaudit.load_model(DIGITS), np.zeros((1, 1, 8, 8), np.float32), white_box=True)
