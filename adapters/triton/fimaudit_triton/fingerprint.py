"""Behavioural fingerprints: what an endpoint answers on a fixed, seeded set of probe inputs.

An endpoint has no file to hash, so the report keeps its outputs on probes anyone can regenerate
from the seed; re-querying later and comparing within a tolerance says whether the endpoint still
serves the model that was audited. The fingerprint is a JSON string, so it fits the report's
`model.extra` (a str -> str map) as it is.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from fimaudit.adapter import InputSpec
from fimaudit.errors import UsageError

FORMAT = "fimaudit-triton-fingerprint/1"
PROBE_SEED = 20240917
PROBE_COUNT = 8
# Probabilities are kept to 9 significant digits: past float32's 7, so rounding never hides a change.
_DIGITS = 9


def probe_inputs(spec: InputSpec, seed: int = PROBE_SEED, count: int = PROBE_COUNT) -> np.ndarray:
    """Probe inputs drawn uniformly from the input's value range ([0, 1) when none is declared)."""
    low, high = spec.value_range or (0.0, 1.0)
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(count, *spec.shape)).astype(spec.dtype)


def encode(spec: InputSpec, probes: np.ndarray, probabilities: np.ndarray, seed: int = PROBE_SEED) -> str:
    """The fingerprint string for the probabilities an endpoint gave on `probes`."""
    low, high = spec.value_range or (0.0, 1.0)
    record = {
        "format": FORMAT,
        "seed": seed,
        "count": int(len(probes)),
        "shape": list(spec.shape),
        "dtype": spec.dtype,
        "range": [low, high],
        # Lets a verifier notice a numpy whose generator no longer draws the same probes.
        "probes_sha256": probes_digest(probes),
        "probabilities": [[float(f"{v:.{_DIGITS}g}") for v in row] for row in np.asarray(probabilities, dtype=np.float64)],
    }
    return json.dumps(record, separators=(",", ":"))


@dataclass(frozen=True)
class Fingerprint:
    """A decoded fingerprint: how to regenerate its probes, and the answers recorded on them."""

    spec: InputSpec
    seed: int
    count: int
    probes_sha256: str
    probabilities: np.ndarray

    def probes(self) -> np.ndarray:
        return probe_inputs(self.spec, self.seed, self.count)


def decode(text: str | dict[str, Any]) -> Fingerprint:
    """Parse a fingerprint string (or its already-parsed dict), or raise UsageError."""
    try:
        record = json.loads(text) if isinstance(text, str) else dict(text)
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}, expected {FORMAT!r}")
        spec = InputSpec(shape=tuple(int(v) for v in record["shape"]), dtype=str(record["dtype"]),
                         value_range=(float(record["range"][0]), float(record["range"][1])))
        probabilities = np.asarray(record["probabilities"], dtype=np.float64)
        return Fingerprint(spec, int(record["seed"]), int(record["count"]), str(record["probes_sha256"]), probabilities)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UsageError(
            f"the endpoint fingerprint cannot be read: {exc}",
            "pass the 'fingerprint' value from the report's model.extra exactly as written",
        ) from exc


def probes_digest(probes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(probes).tobytes()).hexdigest()
