"""The device path of the torch adapter, run on torch's CPU device (the same code runs on CUDA): the
counter generator's signs and perturbed inputs formed by torch, bit for bit those fimaudit forms in
numpy, and an audit through predict_perturbed equal to one whose inputs were formed on the host."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is installed by adapters/torch/install.sh")

from torch import nn  # noqa: E402

import fimaudit  # noqa: E402
from fimaudit import CallableModel, InputSpec  # noqa: E402
from fimaudit.conformance import check_model  # noqa: E402
from fimaudit.perturbations import Perturbations, SignRows, counter_key, materialize, sign_words  # noqa: E402
from fimaudit_torch import TorchModel  # noqa: E402
from fimaudit_torch import counter  # noqa: E402

CPU = torch.device("cpu")
SHAPE = (3, 24, 24)  # d = 1728: up to 2 x 32 (auto's forward samples) < d / 16 takes i.i.d. sign directions


def net() -> nn.Module:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.GELU(), nn.AvgPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    ).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.5)
    return module


def inputs(n: int) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 1, size=(n, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize(("seed", "index", "start", "stop", "d"), [(0, 0, 0, 7, 96), (5, 123, 40, 45, 1000), (2**40, 7, 3, 4, 33)])
def test_torch_words_and_signs_equal_numpy_bit_for_bit(seed: int, index: int, start: int, stop: int, d: int) -> None:
    rows = SignRows(counter_key(seed, index), start, stop, d)
    words = counter.sign_words(rows, CPU).numpy()
    assert words.min() >= 0 and words.max() < 2**32
    assert np.array_equal(words.astype(np.uint32), sign_words(rows.key, start, stop, d))
    assert np.array_equal(counter.signs(rows, CPU, torch.float32).numpy(), rows.signs())


@pytest.mark.parametrize(("dtype", "np_dtype"), [(torch.float32, "float32"), (torch.float64, "float64")])
def test_torch_forms_the_inputs_numpy_forms(dtype: torch.dtype, np_dtype: str) -> None:
    origin = inputs(1)[0].reshape(-1).astype(np_dtype)
    origin.flags.writeable = False
    request = Perturbations(origin, SHAPE, (2.0**-9, -(2.0**-9)), SignRows(counter_key(0, 1), 0, 6, origin.size), dtype=np_dtype)
    pieces = [inputs(2).astype(np_dtype), request[1:11]]
    formed = counter.form_inputs(pieces, CPU, dtype, SHAPE).numpy()
    assert formed.dtype == np.dtype(np_dtype)
    assert np.array_equal(formed, materialize(pieces))


def test_device_model_conforms_and_says_where_it_forms() -> None:
    model = TorchModel(net(), input_shape=SHAPE, device="cpu")
    check_model(model)  # includes predict_perturbed against predict_proba on host-formed inputs
    assert model.forms_on_device is False  # on the CPU nothing is saved: auto keeps numpy's generator


def test_audit_through_predict_perturbed_equals_the_host_formed_audit() -> None:
    x = inputs(3)
    model = TorchModel(net(), input_shape=SHAPE, device="cpu", max_batch_size=64)
    model._forms_on_device = True  # the device path on torch's CPU device: the code CUDA runs
    sent: list[int] = []
    original = model.predict_perturbed

    def counting(pieces):  # type: ignore[no-untyped-def]
        sent.append(sum(isinstance(p, Perturbations) for p in pieces))
        return original(pieces)

    model.predict_perturbed = counting  # type: ignore[method-assign]
    on_device = fimaudit.audit(model, x, directions=32, generator="counter", bootstrap=200)
    # The same function seen only through predict_proba: every input formed on the host.
    host = CallableModel(
        lambda b: TorchModel.predict_proba(model, b), InputSpec(SHAPE, "float32"), 5, name="host", max_batch_size=64, output_dtype="float32"
    )
    formed_here = fimaudit.audit(host, x, directions=32, generator="counter", bootstrap=200)
    assert sum(sent) > 0
    for a, b in zip(on_device.samples, formed_here.samples, strict=True):
        assert a.directions_kind == "rademacher"
        assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-9)
        assert a.lambda_max_ci == pytest.approx(b.lambda_max_ci, rel=1e-9)
        assert a.queries == b.queries
    exact = [f.lambda_max for f in model.exact_fisher(x)]
    for s, truth in zip(on_device.samples, exact, strict=True):
        assert abs(s.lambda_max / truth - 1) < 0.4
