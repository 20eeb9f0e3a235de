"""One network, three adapters, one white-box reference.

A small conv net is built in PyTorch with a fixed seed, exported to ONNX and rebuilt in Keras with
the same weights (saved as a SavedModel whose input stays NCHW), so all three take the same x.
Audited with the same inputs and seed, the three black-box λ_max must agree within each other's
intervals, and with the white-box exact value (float64 autograd) within their interval for at
least 90% of the samples: the interval's nominal level is 95% and its measured coverage at
k = 256 is 90-98% (MATH.md), so a 90% bar over 40 samples fails only on a real disagreement.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Skipped only where a framework itself is absent; a broken adapter must fail, not skip.
torch = pytest.importorskip("torch", reason="torch is installed by adapters/torch/install.sh")
pytest.importorskip("tensorflow", reason="tensorflow-cpu is installed by adapters/tensorflow/install.sh")
pytest.importorskip("onnxscript", reason="onnxscript is installed by adapters/torch/install.sh")

# The adapter module first: it sets TensorFlow's environment (quiet logs, no oneDNN) before import.
import fimaudit_tensorflow.model  # noqa: E402, F401
import fimaudit_onnx  # noqa: E402, F401
import fimaudit_torch  # noqa: E402
import keras  # noqa: E402
import onnx  # noqa: E402
from torch import nn  # noqa: E402

import fimaudit  # noqa: E402

# torch.onnx.export's internals warn about their own deprecated pytree API; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning")
SHAPE = (3, 16, 16)  # d = 768 > 256 directions: the sketch, not the exact coordinate mode
CLASSES = 10
SAMPLES = 40
DIRECTIONS = 256
MIN_COVERAGE = 0.9


def torch_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, CLASSES),
    ).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(6.0)  # confident, input-dependent predictions (max p 0.24-0.75 on x below)
    return net


def keras_twin(net: nn.Sequential) -> keras.Model:
    """The same function in Keras: NCHW in, NHWC inside, back to NCHW before Flatten (same order)."""
    inp = keras.Input(shape=SHAPE, name="x")
    h = keras.layers.Permute((2, 3, 1))(inp)
    convs = [keras.layers.Conv2D(6, 3, padding="same", activation="tanh"), keras.layers.Conv2D(8, 3, padding="same", activation="tanh")]
    for conv in convs:
        h = keras.layers.AveragePooling2D(2)(conv(h))
    h = keras.layers.Flatten()(keras.layers.Permute((3, 1, 2))(h))
    dense = keras.layers.Dense(CLASSES)
    model = keras.Model(inp, dense(h))
    for conv, source in zip(convs, (net[0], net[3])):
        # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
        conv.set_weights([source.weight.detach().numpy().transpose(2, 3, 1, 0), source.bias.detach().numpy()])
    dense.set_weights([net[7].weight.detach().numpy().T, net[7].bias.detach().numpy()])
    return model


def save_onnx(net: nn.Module, path: Path) -> None:
    example = torch.zeros(2, *SHAPE)
    program = torch.onnx.export(
        net, (example,), dynamo=True, external_data=False, verbose=False,
        dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["x"], output_names=["logits"],
    )
    proto = program.model_proto
    strip_metadata(proto)
    onnx.save(proto, str(path))


def strip_metadata(proto: onnx.ModelProto) -> None:
    """The exporter records stack traces with local paths; keep only the computation."""
    proto.ClearField("metadata_props")
    proto.doc_string = ""
    graph = proto.graph
    for item in [*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        item.ClearField("metadata_props")
        item.doc_string = ""
    graph.ClearField("metadata_props")


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> dict[str, fimaudit.ProbabilityModel]:
    root = tmp_path_factory.mktemp("crosscheck")
    net = torch_net()
    save_onnx(net, root / "net.onnx")
    keras_twin(net).export(str(root / "savedmodel"), format="tf_saved_model", verbose=False)
    return {
        "torch": fimaudit_torch.TorchModel(net, input_shape=SHAPE),
        "onnx": fimaudit.load_model(root / "net.onnx"),
        "tensorflow": fimaudit.load_model(root / "savedmodel"),
    }


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    # Standardized-image-like inputs: they spread over several predicted classes.
    return np.random.default_rng(11).standard_normal((SAMPLES, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def reports(three: dict[str, fimaudit.ProbabilityModel], x: np.ndarray) -> dict[str, fimaudit.AuditReport]:
    return {name: fimaudit.audit(model, x, directions=DIRECTIONS, seed=0) for name, model in three.items()}


def test_onnx_file_has_no_local_paths(three: dict[str, fimaudit.ProbabilityModel]) -> None:
    path = Path(three["onnx"].identity.reference)
    assert str(Path.home()) not in path.read_bytes().decode("latin-1") and b".py" not in path.read_bytes()


def test_the_three_compute_the_same_function(three: dict[str, fimaudit.ProbabilityModel], x: np.ndarray) -> None:
    p = {name: model.predict_proba(x) for name, model in three.items()}
    assert np.abs(p["onnx"] - p["torch"]).max() < 1e-5
    assert np.abs(p["tensorflow"] - p["torch"]).max() < 1e-5
    assert len(set(np.argmax(p["torch"], axis=1))) >= 3  # the inputs are not all one class


@pytest.mark.slow  # the `reports` fixture audits in three frameworks: about 55 s
def test_black_box_estimates_agree_within_intervals(reports: dict[str, fimaudit.AuditReport]) -> None:
    names = list(reports)
    for i in range(SAMPLES):
        samples = {n: reports[n].samples[i] for n in names}
        for a in names:
            for b in names:
                low, high = samples[b].lambda_max_ci
                assert low <= samples[a].lambda_max <= high, (i, a, b)
        # Same directions, same function: the estimates differ only by float32 rounding.
        values = [s.lambda_max for s in samples.values()]
        assert max(values) / min(values) - 1 < 1e-2, (i, values)


@pytest.mark.slow  # the `reports` fixture audits in three frameworks: about 55 s
def test_white_box_lies_within_the_intervals(three: dict[str, fimaudit.ProbabilityModel], reports: dict[str, fimaudit.AuditReport], x: np.ndarray) -> None:
    exact = np.array([w.lambda_max for w in three["torch"].exact_fisher(x)])  # type: ignore[attr-defined]
    for name, report in reports.items():
        covered = [s.lambda_max_ci[0] <= e <= s.lambda_max_ci[1] for s, e in zip(report.samples, exact)]
        assert np.mean(covered) >= MIN_COVERAGE, (name, np.mean(covered))
        errors = np.abs(np.array([s.lambda_max for s in report.samples]) - exact) / exact
        # Median |N(0, 2/k)| is 0.674 * sqrt(2/k) = 6.0% at k = 256; twice that means something is off.
        assert np.median(errors) < 0.12, (name, np.median(errors))
