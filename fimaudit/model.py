"""The one interface every framework adapter implements, and the checks applied to its outputs."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from fimaudit.errors import FimauditError, ModelError, OutputError, QueryError

# "sigmoid": a binary classifier with one output, the probability p of class 1, audited as the
# two-class distribution [1 - p, p].
OutputKind = Literal["probabilities", "logits", "sigmoid"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("probabilities", "logits", "sigmoid")

# float32 softmax rows sum to 1 within ~1e-6, rounded outputs (3 decimals, few classes) within
# ~1e-3; logits or scores almost never land this close to 1.
ROW_SUM_TOLERANCE = 1e-2

# Batch-dependence probe: how many inputs are queried alone, among how many neighbours, and the
# tolerance in units of the output dtype's eps (see batch_tolerance). A float model run at another
# batch size differs only by accumulation order (a few eps); quantized activations move by ~1e-3.
BATCH_PROBE_ALONE = 3
BATCH_PROBE_SIZE = 8
BATCH_TOLERANCE_EPS = 256.0

NOT_A_CLASSIFIER_FIX = (
    "audit a classifier's class-probability (or logit) output; for a binary classifier whose one "
    "output is the probability of class 1, declare outputs='sigmoid' (CLI: --outputs sigmoid)"
)


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
    # Set by check_batch_independence: the outputs for one input depended on the other inputs
    # of its batch, so the model is queried one input per request and every sample is flagged.
    batch_dependent: bool = False
    # Set once the batch-independence probe has run, so loading and auditing probe only once.
    batch_checked: bool = False
    # Adapters of models exported with a fixed batch axis set this: such a model cannot be asked
    # one input per request, so a batch-dependent one is refused instead.
    fixed_batch_size: int | None = None

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


def raw_width(k: int, kind: OutputKind) -> int:
    """Columns of the raw output of a K-class model: one for a sigmoid output, K otherwise."""
    return 1 if kind == "sigmoid" else k


def to_probabilities(raw: np.ndarray, n: int, k: int, kind: OutputKind) -> np.ndarray:
    """Check raw outputs and return float64 probabilities, or raise OutputError saying why."""
    check_classes(k, kind)
    width = raw_width(k, kind)
    if raw.ndim == 1 and (n == 1 and raw.shape[0] == width or width == 1 and raw.shape[0] == n):
        raw = raw.reshape(n, width)
    if raw.ndim != 2 or raw.shape != (n, width):
        raise OutputError(
            f"the model returned outputs of shape {raw.shape}; expected ({n}, {width}).",
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
    if kind == "sigmoid":
        return sigmoid_to_two_classes(out)
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


def check_classes(k: int, kind: OutputKind) -> None:
    """Raise unless `k` classes fit `kind`: a softmax over one class is always 1, so a one-output
    model (a regressor, or an undeclared sigmoid) would be audited as perfectly robust."""
    if kind not in OUTPUT_KINDS:
        raise ModelError(f"output kind {kind!r} is unknown.", f"declare one of {', '.join(OUTPUT_KINDS)}")
    if kind == "sigmoid" and k != 2:
        raise OutputError(
            f"outputs='sigmoid' declares a binary classifier, but the model has {k} classes.",
            "declare outputs='sigmoid' only for a model with one output, the probability of class 1",
        )
    if k < 2:
        raise OutputError(
            f"the model has {k} output{'s' if k != 1 else ''}, so it is not a classifier (a softmax over "
            "one output is always 1: every input would look perfectly robust).",
            NOT_A_CLASSIFIER_FIX,
        )


def sigmoid_to_two_classes(p: np.ndarray) -> np.ndarray:
    """(n, 1) probabilities of class 1 -> (n, 2) rows [1 - p, p], after checking 0 <= p <= 1."""
    bad = (p < 0) | (p > 1)
    if bad.any():
        raise OutputError(
            f"outputs='sigmoid' was declared, but the model returned values outside [0, 1] "
            f"({p.min():.4g} to {p.max():.4g}) in {int(bad.sum())} rows, so they are not probabilities.",
            "if the one output is a logit, end the model with a Sigmoid; if it is a regression output, "
            "it cannot be audited as a classifier",
        )
    return np.concatenate([1.0 - p, p], axis=1)


def output_form(width: int, declared: OutputKind | None, probe: Callable[[], np.ndarray]) -> tuple[int, OutputKind]:
    """(num_classes, output_kind) of a model whose output has `width` columns.

    A declared kind is trusted once it fits the width; otherwise `probe()` (raw outputs on a few
    inputs, only called when needed) decides, and outputs of neither kind are refused.
    """
    if width == 1 and declared == "sigmoid":
        return 2, "sigmoid"
    if declared == "sigmoid":
        check_classes(width, "sigmoid")
    check_classes(width, declared or "probabilities")
    return width, declared or detect_output_kind(probe())


def detect_output_kind(raw: np.ndarray) -> OutputKind:
    """"probabilities" or "logits" for raw probe outputs (n, K); OutputError for neither.

    The rule (documented in docs/adapters.md terms):
    - probabilities: every value >= 0 and every row sums to 1 within ROW_SUM_TOLERANCE;
    - neither, refused: every value within [0, 1] but rows not summing to 1 (independent per-class
      scores such as multi-label sigmoids), or rows that all sum to one constant c other than
      1 and 0 (scaled or shifted probabilities such as 2 * softmax(z), 100 * softmax(z),
      softmax(z) - 0.5): logits' row sums vary with the input, and centred logits sum to 0;
    - logits: anything else. A declared kind (outputs=...) skips this rule.
    """
    out = np.asarray(raw, dtype=np.float64)
    if out.ndim != 2 or not np.isfinite(out).all():
        return "logits"  # to_probabilities reports shape and non-finite values with their fix
    if looks_like_probabilities(out):
        return "probabilities"
    reason = _neither_reason(out)
    if reason is not None:
        raise OutputError(
            f"the model's outputs are neither probabilities nor logits: {reason}.",
            "export the class-probability (softmax) output, or declare outputs='logits' or "
            "outputs='probabilities' (CLI: --outputs) if you are sure of what they are",
        )
    return "logits"


def _neither_reason(out: np.ndarray) -> str | None:
    """Why outputs that are not probabilities cannot be logits either, or None if they can be."""
    sums = out.sum(axis=1)
    centre = float(np.median(sums))
    # Identical rows (a constant model) say nothing about how row sums vary.
    varied = len(out) > 1 and float(np.ptp(out, axis=0).max()) > 0
    constant = varied and float(np.ptp(sums)) <= ROW_SUM_TOLERANCE * max(1.0, abs(centre))
    if constant and abs(centre) > ROW_SUM_TOLERANCE:
        return f"every row sums to {centre:.6g} (scaled or shifted probabilities, not logits)"
    if out.min() >= -ROW_SUM_TOLERANCE and out.max() <= 1 + ROW_SUM_TOLERANCE:
        return (
            f"every value lies in [0, 1] but rows sum to between {sums.min():.4g} and {sums.max():.4g} "
            "(independent per-class scores, not a distribution over classes)"
        )
    return None


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
        # A sigmoid model's one output is read as two classes; num_classes may say 1 or 2.
        self.num_classes = 2 if outputs == "sigmoid" and int(num_classes) in (1, 2) else int(num_classes)
        check_classes(self.num_classes, outputs)
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
    if out.ndim == 2 and out.shape == (n, 1):
        raise OutputError(f"{what} has one value per input, so the model is not a classifier.", NOT_A_CLASSIFIER_FIX)
    if out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
        raise OutputError(f"{what} has shape {out.shape} for {n} inputs; a classifier output is (batch, classes).", fix)
    return out


def check_batch_independence(model: ProbabilityModel) -> None:
    """Probe once whether an input's outputs depend on its batch neighbours (e.g. dynamically
    quantized activations, whose scale is taken over the whole batch); if so, answer one input
    per request from now on and mark the model `batch_dependent`, or raise ModelError when the
    model's batch axis is fixed above 1 so that one input per request is impossible."""
    if model.batch_checked:
        return
    model.batch_checked = True
    if model.max_batch_size < 2:
        return
    found = _probe_with_retries(model)
    if found is None:
        return
    if model.fixed_batch_size is not None and model.fixed_batch_size > 1:
        raise ModelError(
            f"the model's outputs for an input depend on the other inputs of its batch ({found}), "
            f"and its batch axis is fixed at {model.fixed_batch_size}, so it cannot be queried one "
            "input at a time: finite differences would measure the neighbours, not the input.",
            "export the model with a dynamic (or size-1) batch axis, or without batch-wide "
            "operations such as dynamic quantization",
        )
    model.max_batch_size = 1
    model.batch_dependent = True


def _probe_with_retries(model: ProbabilityModel) -> str | None:
    """batch_dependence, with an adapter's own failures named as the engine names them in an audit."""
    try:
        return batch_dependence(model)
    except FimauditError:
        raise
    except Exception as exc:
        raise QueryError(
            f"the model failed while probing its batches: {type(exc).__name__}: {exc}",
            "check that the model answers a batch of inputs of its declared shape",
        ) from exc


def batch_dependence(model: ProbabilityModel) -> str | None:
    """How far outputs moved between an input alone and in a batch, or None when they did not
    (or when the batch itself is not reproducible: that is noise, for the diagnostics).

    Raw outputs are compared, not validated probabilities: an output that is invalid for other
    reasons is reported with its own message when the audit queries it.
    """
    n = min(BATCH_PROBE_SIZE, model.max_batch_size)
    x = _neighbour_probes(model.input_spec, n)
    together = _raw_rows(model, x)
    if together is None or not np.array_equal(together, _raw_rows(model, x)):
        return None
    alone = [_raw_rows(model, x[i : i + 1]) for i in range(min(BATCH_PROBE_ALONE, n))]
    if any(a is None or a.shape[1] != together.shape[1] for a in alone):
        return None
    single = np.concatenate(alone)  # type: ignore[arg-type]
    base = together[: len(single)]
    # Relative to the output's size, so large logits get the same ulp budget as probabilities.
    moved = float((np.abs(single - base) / np.maximum(1.0, np.abs(base))).max())
    if moved <= batch_tolerance(model.output_dtype):
        return None
    return f"an output moved by {moved:.3g} (relative) between a batch of 1 and a batch of {n}"


PROBE_ATTEMPTS = 3


def _raw_rows(model: ProbabilityModel, x: np.ndarray) -> np.ndarray | None:
    """Raw outputs as finite float64 rows (n, width), or None when they are not. A transient fault
    (an endpoint's 503) is retried as the engine would: it is no reason to refuse the model."""
    from fimaudit.engine import TransientQueryError  # the engine imports this module

    for attempt in range(PROBE_ATTEMPTS):
        try:
            raw = np.asarray(model._raw_predict(x))
            break
        except TransientQueryError:
            if attempt == PROBE_ATTEMPTS - 1:
                raise
    if raw.size == 0 or raw.size % len(x) or not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
        return None
    rows = raw.astype(np.float64).reshape(len(x), -1)
    return rows if np.isfinite(rows).all() else None


def batch_tolerance(output_dtype: str) -> float:
    """Largest relative output change put down to accumulation order at another batch size.

    256 eps of the output dtype, but at least 1e-6 (a steep float64 model amplifies a last-bit
    change in its logits) and at most 1e-4 (float16's 256 eps would be 0.25); dynamically
    quantized activations move outputs by 1e-3 and more.
    """
    dtype = np.dtype(output_dtype) if output_dtype in ("float16", "float32", "float64") else np.dtype(np.float32)
    return float(min(max(BATCH_TOLERANCE_EPS * np.finfo(dtype).eps, 1e-6), 1e-4))


def _neighbour_probes(spec: InputSpec, n: int) -> np.ndarray:
    """Probe inputs whose later rows are scaled up and down, so batch-wide statistics (ranges,
    means) differ with and without them; the first rows, queried alone too, are unscaled."""
    x = probe_inputs(spec, n, seed=7).astype(np.float64)
    scales = np.ones(n)
    scales[BATCH_PROBE_ALONE:] = np.geomspace(4.0, 0.25, max(0, n - BATCH_PROBE_ALONE))
    x *= scales.reshape(n, *([1] * len(spec.shape)))
    if spec.value_range is not None:
        x = np.clip(x, *spec.value_range)
    return x.astype(spec.dtype)
