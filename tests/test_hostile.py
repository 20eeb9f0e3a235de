"""Property-based: no input array, model output or CLI argument makes fimaudit crash untyped."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from typer.testing import CliRunner

import fimaudit
from fimaudit import CallableModel, FimauditError, InputSpec
from fimaudit.cli import app

SHAPE = (2, 3)
W = np.random.default_rng(0).standard_normal((6, 4))
DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 5}


def _softmax_linear(batch: np.ndarray) -> np.ndarray:
    z = batch.reshape(len(batch), -1) @ W
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


MODEL = CallableModel(_softmax_linear, InputSpec(shape=SHAPE, dtype="float64"), num_classes=4)

dtypes = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64, np.bool_, np.complex64])
shapes = st.one_of(hnp.array_shapes(min_dims=0, max_dims=4, max_side=4), st.just((3, *SHAPE)), st.just(SHAPE), st.just((0, *SHAPE)))
values = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from([1e300, -1e300, 0.0, 255.0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=hnp.arrays(dtypes, shapes, elements=None) | hnp.arrays(np.float64, st.just((2, *SHAPE)), elements=values))
def test_any_input_array(x: np.ndarray) -> None:
    try:
        report = fimaudit.audit(MODEL, x, directions=4, bootstrap=100)
    except FimauditError as exc:
        assert exc.message and exc.exit_code in DOCUMENTED_EXIT_CODES
        return
    assert all(np.isfinite(s.lambda_max) and s.lambda_max >= 0 for s in report.samples)


outputs = hnp.arrays(
    np.float64, st.sampled_from([(1, 4), (1, 3), (1, 5), (4,), (1, 4, 1), (0,)]),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=64, min_value=None),
)


@settings(max_examples=300, deadline=None)
@given(out=outputs, kind=st.sampled_from(["probabilities", "logits"]))
def test_any_model_output(out: np.ndarray, kind: str) -> None:
    def answer(batch: np.ndarray) -> np.ndarray:
        return np.repeat(out, len(batch), axis=0) if out.ndim == 2 else out

    model = CallableModel(answer, InputSpec(shape=SHAPE, dtype="float64"), 4, outputs=kind, max_batch_size=1)  # type: ignore[arg-type]
    try:
        report = fimaudit.audit(model, np.zeros((1, *SHAPE)), directions=4, bootstrap=100)
    except FimauditError as exc:
        assert exc.message
        return
    s = report.samples[0]
    assert np.isfinite(s.lambda_max) and s.lambda_max >= 0  # constant outputs: lambda 0 or its floor


option_values = st.one_of(st.integers(-5, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str), st.text(max_size=6))


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from fimaudit_onnx.build import softmax_linear_to_onnx

    d = tmp_path_factory.mktemp("hostile_cli")
    softmax_linear_to_onnx(W.T, np.zeros(4), SHAPE, np.float64, path=d / "m.onnx")
    np.save(d / "x.npy", np.random.default_rng(1).uniform(0, 1, (2, *SHAPE)))
    return d / "m.onnx", d / "x.npy"


CLI_OPTIONS = ["--directions", "--seed", "--step", "--tau", "--limit", "--scheme", "--estimator", "--outputs", "--batch-size", "--concurrency"]


@pytest.mark.slow  # about 10 s: 150 audits through the command line
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(CLI_OPTIONS), value=option_values)
def test_any_cli_option_value(cli_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, option: str, value: str) -> None:
    model, data = cli_files
    out = tmp_path_factory.mktemp("out") / "r.json"
    args = ["audit", str(model), "--data", str(data), "--out", str(out), "-q", "--directions", "4", option, value]
    if option == "--directions":
        args = args[:-4] + [option, value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in DOCUMENTED_EXIT_CODES, (args, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
