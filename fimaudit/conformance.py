"""One conformance suite every adapter passes (in the spirit of scikit-learn's check_estimator).

`check_model(model)` queries a ProbabilityModel the way an audit does and raises
ConformanceError on the first contract it breaks; adapters' test suites call it on real models.
"""
from __future__ import annotations

import numpy as np

from fimaudit.errors import FimauditError
from fimaudit.adapter import ProbabilityModel
from fimaudit.perturbations import DevicePerturbing, Perturbations, Request, SignRows, counter_key, materialize


class ConformanceError(FimauditError):
    exit_code = 4


def _probe_inputs(model: ProbabilityModel, n: int, seed: int = 0) -> np.ndarray:
    spec = model.input_spec
    rng = np.random.default_rng(seed)
    low, high = spec.value_range or (0.0, 1.0)
    return rng.uniform(low, high, size=(n, *spec.shape)).astype(spec.dtype)


def check_model(model: ProbabilityModel, *, tolerance: float = 1e-5) -> None:
    """Raise ConformanceError naming the first broken contract; return None when all hold."""
    checks = (_check_description, _check_outputs, _check_batch_invariance, _check_determinism, _check_identity, _check_perturbed)
    for check in checks:
        check(model, tolerance)


def _fail(what: str) -> None:
    raise ConformanceError(what, "fix the adapter so that it honours the ProbabilityModel contract")


def _check_description(model: ProbabilityModel, tolerance: float) -> None:
    spec = model.input_spec
    if not spec.shape or any(int(v) < 1 for v in spec.shape):
        _fail(f"input_spec.shape {spec.shape} is not a shape of positive sizes")
    if np.dtype(spec.dtype).kind != "f":
        _fail(f"input_spec.dtype {spec.dtype} is not a floating-point type")
    if model.num_classes < 2:
        _fail(f"num_classes is {model.num_classes}; a classifier has at least 2")
    if model.max_batch_size < 1:
        _fail(f"max_batch_size is {model.max_batch_size}")
    if model.output_kind not in ("probabilities", "logits"):
        _fail(f"output_kind is {model.output_kind!r}")


def _check_outputs(model: ProbabilityModel, tolerance: float) -> None:
    n = min(3, model.max_batch_size)
    p = model.predict_proba(_probe_inputs(model, n))
    if p.shape != (n, model.num_classes) or p.dtype != np.float64:
        _fail(f"predict_proba returned {p.shape} {p.dtype}; expected ({n}, {model.num_classes}) float64")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-9) or (p < 0).any():
        _fail("predict_proba rows are not probability vectors")


def _check_batch_invariance(model: ProbabilityModel, tolerance: float) -> None:
    n = min(4, model.max_batch_size)
    x = _probe_inputs(model, n, seed=1)
    together = model.predict_proba(x)
    alone = np.concatenate([model.predict_proba(x[i : i + 1]) for i in range(n)])
    if not np.allclose(together, alone, atol=tolerance, rtol=0):
        _fail("a batch's outputs differ from the same inputs sent one at a time")


def _check_determinism(model: ProbabilityModel, tolerance: float) -> None:
    x = _probe_inputs(model, 1, seed=2)
    if not np.array_equal(model.predict_proba(x), model.predict_proba(x)):
        _fail("the same input gave different outputs twice (finite differences need determinism)")


def _check_identity(model: ProbabilityModel, tolerance: float) -> None:
    ident = model.identity
    if not ident.reference or not ident.adapter:
        _fail("identity has no reference or adapter name")
    if ident.sha256 is not None and (len(ident.sha256) != 64 or set(ident.sha256) - set("0123456789abcdef")):
        _fail(f"identity.sha256 {ident.sha256!r} is not a lowercase sha256 hex digest")


def _check_perturbed(model: ProbabilityModel, tolerance: float) -> None:
    """A model that forms Perturbations itself answers them as predict_proba answers the inputs formed here."""
    if not isinstance(model, DevicePerturbing):
        return
    spec = model.input_spec
    origin = _probe_inputs(model, 1, seed=3).reshape(-1)
    origin.flags.writeable = False
    scale = 0.01 * float(np.std(origin) or 1.0)
    request = Perturbations(origin, spec.shape, (scale, -scale), SignRows(counter_key(0, 0), 0, 2, origin.size), dtype=spec.dtype)
    # One input as an array beside three formed ones (the engine mixes them so), within one batch.
    pieces: list[Request] = [origin.reshape(1, *spec.shape), request[1 : min(4, model.max_batch_size)]]
    formed = model.predict_perturbed(pieces)
    reference = model.predict_proba(materialize(pieces))
    if formed.shape != reference.shape or not np.allclose(formed, reference, atol=tolerance, rtol=0):
        _fail("predict_perturbed's outputs differ from predict_proba's on the same inputs formed on the host")
