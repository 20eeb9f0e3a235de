"""Triton adapter for fimaudit: audit a model where it is served, over HTTP or gRPC.

    fimaudit.load_model("triton://127.0.0.1:8000/digits")          # HTTP, newest version
    fimaudit.load_model("triton+grpc://127.0.0.1:8001/digits/3")   # gRPC, version 3

Schemes: triton and triton+http (HTTP), triton+https, triton+grpc, triton+grpcs. Extra request
headers (e.g. `Authorization: Bearer …`) come from the environment variable FIMAUDIT_TRITON_HEADERS,
one `Name: value` a line, and are never written into a report. See docs/adapters_triton.md.

tritonclient is imported only when a Triton model is loaded, so registering this adapter costs
other adapters' users nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fimaudit.adapter import SimpleAdapter
from fimaudit.errors import UsageError
from fimaudit_triton import fingerprint as _fp
from fimaudit_triton.endpoint import HEADER_ENV, SCHEMES, headers_from_env, parse_url

if TYPE_CHECKING:
    from fimaudit_triton.model import TritonModel

__all__ = [
    "DEFAULT_TOLERANCE", "HEADER_ENV", "FingerprintCheck", "TritonAdapter", "adapter", "check_fingerprint",
    "headers_from_env", "load", "parse_url",
]

# Largest difference in any probability that still counts as the same model: float32 outputs
# recomputed on other hardware or batch sizes move by ~1e-7; a retrained model by far more.
DEFAULT_TOLERANCE = 1e-5


# What `load` takes; fimaudit.load_model refuses anything else before a connection is opened.
OPTIONS = {
    "outputs": "declare the outputs: probabilities or logits (default: detected)",
    "output_name": "the output to audit (default: the float output named like 'prob', else the one float output)",
    "input_name": "the input to perturb, for a model with several (CLI: --input NAME)",
    "max_batch_size": "most inputs per request (default: the model's max_batch_size, else 256)",
    "timeout": "seconds allowed per request (default: 60)",
    "header_env": f"environment variable holding extra request headers, one 'Name: value' a line (default: {HEADER_ENV})",
    "headers": "extra request headers as a dict, from Python only (never written into a report)",
}


def load(reference: str, **options: Any) -> TritonModel:
    """Open the endpoint at `reference`; options as for TritonModel (outputs, output_name, …)."""
    from fimaudit_triton.model import TritonModel

    return TritonModel(reference, **options)


@dataclass(frozen=True)
class FingerprintCheck:
    """Whether an endpoint still answers the recorded probes as it did, and what it is now."""

    matches: bool
    max_abs_difference: float  # largest |p_now - p_recorded| over probes and classes; inf if shapes differ
    tolerance: float
    reason: str
    now: dict[str, str]  # the endpoint's identity.extra today: server, model version, config sha256

    def __bool__(self) -> bool:
        return self.matches


def check_fingerprint(
    url: str, recorded: str | dict[str, Any], tol: float = DEFAULT_TOLERANCE, **options: Any
) -> FingerprintCheck:
    """Re-query `url` on the recorded probes and compare with the recorded probabilities.

    `recorded` is the report's `model.extra["fingerprint"]`. Raises the usual ModelError when the
    endpoint cannot be reached or has no such model; a different model is a result, not an error.
    """
    if not tol >= 0:
        raise UsageError(f"the tolerance must be a number >= 0 (got {tol!r}).", f"the default is {DEFAULT_TOLERANCE}")
    expected = _fp.decode(recorded)
    probes = expected.probes()
    if _fp.probes_digest(probes) != expected.probes_sha256:
        raise UsageError(
            "this numpy draws different probe inputs from the seed than the one that made the fingerprint.",
            "verify with the numpy version used for the audit",
        )
    model = load(url, **options)
    try:
        now = dict(model.identity.extra)
        if model.input_spec.shape != expected.spec.shape or model.input_spec.dtype != expected.spec.dtype:
            why = f"input is now {list(model.input_spec.shape)} {model.input_spec.dtype}, was {list(expected.spec.shape)} {expected.spec.dtype}"
            return FingerprintCheck(False, float("inf"), tol, why, now)
        answered = model.predict_proba(probes)
    finally:
        model.close()
    return _compare(answered, expected.probabilities, tol, now)


def _compare(answered: np.ndarray, recorded: np.ndarray, tol: float, now: dict[str, str]) -> FingerprintCheck:
    if answered.shape != recorded.shape:
        why = f"the endpoint now answers {answered.shape[1]} classes, the audited model {recorded.shape[1]}"
        return FingerprintCheck(False, float("inf"), tol, why, now)
    worst = float(np.abs(answered - recorded).max())
    if worst <= tol:
        return FingerprintCheck(True, worst, tol, f"same outputs on {len(recorded)} probes within {tol:g} (max diff {worst:.3g})", now)
    return FingerprintCheck(False, worst, tol, f"outputs differ by up to {worst:.3g} on the probes (tolerance {tol:g})", now)


@dataclass
class TritonAdapter(SimpleAdapter):
    """The registered adapter, plus the endpoint check `fimaudit verify --endpoint` can call."""

    def check_fingerprint(self, reference: str, recorded: str | dict[str, Any], tol: float = DEFAULT_TOLERANCE, **options: Any) -> FingerprintCheck:
        return check_fingerprint(reference, recorded, tol, **options)


adapter = TritonAdapter(name="triton", package="fimaudit-triton", loader=load, schemes=tuple(SCHEMES), options=OPTIONS)
