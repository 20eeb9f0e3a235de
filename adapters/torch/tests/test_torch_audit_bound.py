"""`fimaudit audit --bound` on PyTorch files and modules: TorchModel's bounds from its graph (the
BoundedModel Protocol) in the report, each checked against the exact λ_max from autograd at every
audited input; null with the operator or the reason named where no bound can be computed."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Skipped only where torch itself is absent; a broken adapter must fail, not skip.
torch = pytest.importorskip("torch", reason="torch is installed by adapters/torch/install.sh")

import fimaudit_torch  # noqa: E402
from cli_helpers import run  # noqa: E402
from torch import nn  # noqa: E402

import fimaudit  # noqa: E402
from fimaudit.adapter import BoundedModel  # noqa: E402
from fimaudit.render import render_html  # noqa: E402
from fimaudit.report import AuditReport  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
SHAPE = (3, 8, 8)
CLASSES = 5


class Residual(nn.Module):
    """Convolution, batch norm (eval, with running statistics), ReLU, a residual block, max pooling
    and a linear head: the operators a ResNet is made of."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(torch.relu(h + self.block(h)))


class SqueezeExcite(nn.Module):
    """y · sigmoid(g(y)): no global Lipschitz constant (y large while g stays put), bounded on a ball."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.se = nn.Linear(4, 4)
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        s = torch.sigmoid(self.se(y.mean((2, 3))))
        return self.fc((y * s[:, :, None, None]).mean((2, 3)))


def seeded(factory: Callable[[], nn.Module], seed: int = 0, scale: float = 2.0) -> nn.Module:
    """factory() with seeded weights scaled up (confident, varied predictions) and batch-norm
    statistics that are not the identity."""
    torch.manual_seed(seed)
    net = factory()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bounded_models")
    net = seeded(Residual)
    example = torch.from_numpy(inputs(2))
    out = {"export": root / "residual.pt2", "torchscript": root / "residual.pt", "upsample": root / "upsample.pt2",
           "static": root / "static.pt2", "data": root / "x.npy"}
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)), out["export"])
    torch.export.save(torch.export.export(net, (example,)), out["static"])  # batch fixed at 2
    fimaudit_torch.save_torchscript(net, out["torchscript"], SHAPE)
    upsample = seeded(lambda: nn.Sequential(nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(3 * 16 * 16, CLASSES)))
    torch.export.save(torch.export.export(upsample, (example,), dynamic_shapes=({0: batch},)), out["upsample"])
    np.save(out["data"], inputs(6, seed=1))
    return out


def audit_cli(model: Path, data: Path, out: Path) -> AuditReport:
    res = run("audit", str(model), "--data", str(data), "--out", str(out), "--directions", "16", "-q", "--bound")
    assert res.returncode == 0, res.stderr
    return AuditReport.load(out)


def test_cli_bounds_a_pt2_file_and_every_bound_holds(files: dict[str, Path], tmp_path: Path) -> None:
    report = audit_cli(files["export"], files["data"], tmp_path / "r.json")
    model = fimaudit.load_model(files["export"])
    assert isinstance(model, BoundedModel)
    exact = [w.lambda_max for w in model.exact_fisher(np.load(files["data"]))]  # autograd, float64
    assert all("float32" not in w.method for w in model.exact_fisher(np.load(files["data"])[:1]))
    glob = report.model.lambda_max_bound
    assert glob is not None and glob.value is not None and glob.scope == "all inputs" and glob.unsupported_operator is None
    assert glob.value >= max(exact) and glob.lipschitz is not None and "torch.fx graph" in glob.method
    for s, lam in zip(report.samples, exact):
        local = s.lambda_max_bound
        assert local is not None and local.value is not None, local
        # Every local constant is at most the global one; both are rounded up by 1e-9 on the way.
        assert local.radius == s.step_norm and local.value >= lam and local.value <= glob.value * (1 + 1e-6)
    assert report.schema_version == "1.8" and glob.local.startswith("6 of 6 samples bounded: sup of lambda_max(F(x'))")
    page = render_html(report)
    assert "<h2>Bound from the graph</h2>" in page and page.count("<td class='bound'>") == 6


def test_torchscript_file_gets_a_null_bound_naming_it(files: dict[str, Path], tmp_path: Path) -> None:
    report = audit_cli(files["torchscript"], files["data"], tmp_path / "r.json")
    glob = report.model.lambda_max_bound
    assert glob is not None and glob.value is None and glob.unsupported_operator == "TorchScript" and "torch.fx" in (glob.reason or "")
    assert all(s.lambda_max_bound is not None and s.lambda_max_bound.unsupported_operator == "TorchScript" for s in report.samples)
    raw = json.loads((tmp_path / "r.json").read_text())
    assert raw["model"]["lambda_max_bound"]["value"] is None and raw["samples"][0]["lambda_max_bound"]["value"] is None


def test_an_unsupported_operator_is_named(files: dict[str, Path]) -> None:
    model = fimaudit.load_model(files["upsample"])
    report = fimaudit.audit(model, inputs(2), directions=16, bound=True)
    glob = report.model.lambda_max_bound
    assert glob is not None and glob.value is None and "upsample" in (glob.unsupported_operator or "").lower() and glob.reason
    assert all(s.lambda_max_bound is not None and s.lambda_max_bound.value is None for s in report.samples)


def test_no_global_constant_but_local_bounds_that_hold() -> None:
    """Squeeze-excitation has no global Lipschitz constant: the global bound is null naming the
    product, while each input's ball has a bound, above the exact value there."""
    model = fimaudit_torch.TorchModel(seeded(SqueezeExcite), input_shape=SHAPE)
    x = inputs(4, seed=2)
    report = fimaudit.audit(model, x, directions=16, bound=True)
    glob = report.model.lambda_max_bound
    assert glob is not None and glob.value is None and glob.unsupported_operator == "mul"
    for s, white in zip(report.samples, model.exact_fisher(x)):
        assert s.lambda_max_bound is not None and s.lambda_max_bound.value is not None
        assert s.lambda_max_bound.value >= white.lambda_max


def test_live_module_with_probabilities_and_radius_zero() -> None:
    """A softmax head (probabilities) is bounded through its logits; at radius 0 a piecewise-linear
    net away from kinks gets λ_max(F(x)) itself, equal to the white-box value."""
    net = seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, CLASSES), nn.Softmax(dim=1)))
    model = fimaudit_torch.TorchModel(net, input_shape=SHAPE)
    assert model.output_kind == "probabilities"
    x = inputs(3, seed=3)
    glob = model.lambda_max_bound()
    for row, white in zip(x, model.exact_fisher(x)):
        at = model.local_lambda_max_bound(row, 0.0)
        assert at.exact and at.value == pytest.approx(white.lambda_max, rel=1e-9)
        assert glob.value is not None and glob.value >= white.lambda_max


def test_fixed_batch_program_is_null_with_the_reason(files: dict[str, Path]) -> None:
    model = fimaudit.load_model(files["static"])
    bound = model.lambda_max_bound()
    assert bound.value is None and bound.unsupported_op == "fixed batch" and "batches of exactly 2" in (bound.reason or "")
    assert model.local_lambda_max_bound(inputs(1)[0], 0.1).value is None
