"""The one interface every framework adapter implements, and the checks applied to its outputs."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from fimaudit.errors import OutputError

OutputKind = Literal["probabilities", "logits"]

# float32 softmax rows sum to 1 within ~1e-6, rounded outputs (3 decimals, few classes) within
# ~1e-3; logits or scores almost never land this close to 1.
ROW_SUM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class InputSpec:
    """What one input looks like: shape without the batch axis, dtype, optional value range."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ModelIdentity:
    """What the report attests the audited model to be."""

    reference: str
    adapter: str
    sha256: str | None = None
    provider: str | None = None
    output_kind: OutputKind = "probabilities"
    extra: dict[str, str] = field(default_factory=dict)


class ProbabilityModel(abc.ABC):
    """A classifier seen only through its probability outputs.

    Adapters implement `_raw_predict` (one batch of at most `max_batch_size` rows, in the model's
    own dtype) and describe the model; `predict_proba` turns raw outputs into validated float64
    probabilities, softmaxing logits where the adapter found (or the user declared) logits.
    """

    input_spec: InputSpec
    num_classes: int
    max_batch_size: int
    output_kind: OutputKind
    # Precision of the raw outputs; it sets the default finite-difference step.
    output_dtype: str = "float32"

    @abc.abstractmethod
    def _raw_predict(self, batch: np.ndarray) -> np.ndarray:
        """Return the model's raw outputs (n, K) for a batch of n <= max_batch_size inputs."""

    @property
    @abc.abstractmethod
    def identity(self) -> ModelIdentity:
        """Who this model is, for the report."""

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Validated float64 probabilities (n, K) for n <= max_batch_size inputs."""
        x = np.asarray(batch, dtype=self.input_spec.dtype)
        raw = np.asarray(self._raw_predict(x))
        return to_probabilities(raw, len(x), self.num_classes, self.output_kind)

    def close(self) -> None:
        """Release sessions or connections; the default holds none."""


def softmax(z: np.ndarray) -> np.ndarray:
    """Row softmax in float64, shifted by the row maximum so no exponent overflows."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def to_probabilities(raw: np.ndarray, n: int, k: int, kind: OutputKind) -> np.ndarray:
    """Check raw outputs and return float64 probabilities, or raise OutputError saying why."""
    if raw.ndim == 1 and n == 1 and raw.shape[0] == k:
        raw = raw[None, :]
    if raw.ndim != 2 or raw.shape != (n, k):
        raise OutputError(
            f"the model returned outputs of shape {raw.shape}; expected ({n}, {k}).",
            "check that the chosen output is the class-probability (or logit) output",
        )
    if not np.issubdtype(raw.dtype, np.number) or np.issubdtype(raw.dtype, np.complexfloating):
        raise OutputError(f"the model returned {raw.dtype} outputs, not real numbers.")
    out = raw.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise OutputError(
            f"the model returned non-finite outputs (NaN or inf) in {int(bad.any(axis=1).sum())} "
            f"of {n} rows (first: row {row}).",
            "the model is numerically broken on these inputs, or the inputs are out of range",
        )
    if kind == "logits":
        return softmax(out)
    check_probability_rows(out)
    # Not renormalised: that would move rounded outputs off their grid and hide the quantisation
    # that the diagnostics look for; the log-differences cancel any common factor anyway.
    return out


def check_probability_rows(p: np.ndarray) -> None:
    """Raise OutputError unless every row is non-negative and sums to 1."""
    if (p < 0).any():
        raise OutputError(
            f"the model returned negative values (min {p.min():.4g}), so its outputs are not "
            "probabilities.",
            "if the model outputs logits, pass outputs='logits' (CLI: --outputs logits)",
        )
    sums = p.sum(axis=1)
    worst = float(np.abs(sums - 1.0).max())
    if worst > ROW_SUM_TOLERANCE:
        raise OutputError(
            f"output rows sum to values between {sums.min():.6g} and {sums.max():.6g}, not 1, "
            "so they are not probabilities.",
            "if the model outputs logits or scores, pass outputs='logits' (CLI: --outputs logits)",
        )


def looks_like_probabilities(raw: np.ndarray) -> bool:
    """Heuristic used by adapters on probe outputs: rows non-negative and summing to 1."""
    out = np.asarray(raw, dtype=np.float64)
    if out.ndim != 2 or not np.isfinite(out).all() or (out < 0).any():
        return False
    return bool(np.abs(out.sum(axis=1) - 1.0).max() <= ROW_SUM_TOLERANCE)


class CallableModel(ProbabilityModel):
    """Wrap any Python function batch -> (n, K) outputs, e.g. a model held in memory."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        input_spec: InputSpec,
        num_classes: int,
        *,
        outputs: OutputKind = "probabilities",
        max_batch_size: int = 256,
        name: str = "callable",
        output_dtype: str = "float64",
    ) -> None:
        self._fn = fn
        self.input_spec = input_spec
        self.num_classes = int(num_classes)
        self.output_kind = outputs
        self.max_batch_size = int(max_batch_size)
        self.output_dtype = output_dtype
        self._name = name

    def _raw_predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(batch))

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(reference=self._name, adapter="callable", output_kind=self.output_kind)


def run_in_fixed_batches(batch: np.ndarray, size: int, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Outputs of a model that only takes exactly `size` rows: chunk, pad the last chunk by
    repeating its last row, and drop the padded rows' outputs."""
    outs = []
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        pad = size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(np.asarray(run(chunk)).reshape(size, -1)[: size - pad])
    return np.concatenate(outs)


def probe_inputs(spec: InputSpec, n: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs for adapters' probes (output kind, class count)."""
    return np.random.default_rng(seed).standard_normal((n, *spec.shape)).astype(spec.dtype)


def probe_outputs(model: ProbabilityModel, n: int, what: str, fix: str) -> np.ndarray:
    """Raw outputs on `n` probe inputs, checked to be (n, classes >= 2); OutputError otherwise.

    `what` names the output in the message (e.g. "the output 'probs'"), `fix` says what to do.
    """
    out = np.asarray(model._raw_predict(probe_inputs(model.input_spec, n)))
    if out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
        raise OutputError(f"{what} has shape {out.shape} for {n} inputs; a classifier output is (batch, classes).", fix)
    return out
