"""The ONNX adapter's device path (fimaudit_onnx.device): perturbed inputs formed by torch and bound to
the session through I/O binding. On CUDA it runs on the GPU; here the same code runs with torch's CPU
device and the CPU provider, and must give exactly the audit whose inputs the host formed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is installed with fimaudit-onnx (adapters/onnx)")
pytest.importorskip("torch", reason="the device path forms inputs with torch (adapters/torch/install.sh)")

import fimaudit  # noqa: E402
from fimaudit.conformance import check_model  # noqa: E402
from fimaudit.perturbations import Perturbations, SignRows, counter_key, materialize  # noqa: E402
from fimaudit_onnx import OnnxModel  # noqa: E402
from fimaudit_onnx.build import mlp_to_onnx  # noqa: E402

SHAPE = (4, 32, 32)  # d = 4096: up to 2 x 64 (auto's forward samples) < d / 16 takes sign directions


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(11)
    d = int(np.prod(SHAPE))
    weights = [rng.standard_normal((d, 24)) * 3 / np.sqrt(d), rng.standard_normal((24, 5))]
    biases = [rng.standard_normal(24) * 0.1, rng.standard_normal(5) * 0.1]
    target = tmp_path_factory.mktemp("device") / "mlp.onnx"
    mlp_to_onnx(weights, biases, activation="tanh", input_shape=SHAPE, path=target)
    return target


def inputs(n: int) -> np.ndarray:
    return np.random.default_rng(2).uniform(0, 1, size=(n, *SHAPE)).astype(np.float32)


def bound_on_cpu(path: Path) -> OnnxModel:
    """The model with its device path switched on for the CPU: torch CPU tensors bound in place."""
    model = OnnxModel(path, providers=["CPUExecutionProvider"])
    model._forming_device = "cpu"
    return model


def test_on_the_cpu_provider_the_host_forms_inputs(path: Path) -> None:
    model = OnnxModel(path, providers=["CPUExecutionProvider"])
    assert model.forms_on_device is False
    assert fimaudit.audit(model, inputs(1), directions=32, bootstrap=100).config.generator == "numpy"


def test_bound_inputs_equal_host_inputs(path: Path) -> None:
    model = bound_on_cpu(path)
    check_model(model)  # predict_perturbed against predict_proba on host-formed inputs
    origin = inputs(1)[0].reshape(-1)
    origin.flags.writeable = False
    request = Perturbations(origin, SHAPE, (2.0**-8, -(2.0**-8)), SignRows(counter_key(0, 3), 0, 8, origin.size))
    pieces = [inputs(3), request[2:13]]
    assert np.array_equal(model.predict_perturbed(pieces), model.predict_proba(materialize(pieces)))


def test_audit_through_io_binding_equals_the_host_formed_audit(path: Path) -> None:
    x = inputs(3)
    bound = fimaudit.audit(bound_on_cpu(path), x, directions=64, generator="counter", bootstrap=200)
    host = fimaudit.audit(OnnxModel(path, providers=["CPUExecutionProvider"]), x, directions=64, generator="counter",
                          bootstrap=200)
    for a, b in zip(bound.samples, host.samples, strict=True):
        assert a.directions_kind == "rademacher"
        assert a.lambda_max == b.lambda_max and a.lambda_max_ci == b.lambda_max_ci and a.queries == b.queries
