"""CallableModel for a model held in memory, and the probe of whether a model's outputs depend
on the rest of its batch. The types an adapter implements live in the SDK, fimaudit.adapter;
the output checks in fimaudit.outputs."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fimaudit.adapter import InputSpec, ModelIdentity, OutputKind, ProbabilityModel, TransientQueryError, probe_inputs
from fimaudit.errors import FimauditError, ModelError, QueryError
from fimaudit.outputs import check_classes

# Batch-dependence probe: how many inputs are queried alone, among how many neighbours, and the
# tolerance in units of the output dtype's eps (see batch_tolerance). A float model run at another
# batch size differs only by accumulation order (a few eps); quantized activations move by ~1e-3.
BATCH_PROBE_ALONE = 3
BATCH_PROBE_SIZE = 8
BATCH_TOLERANCE_EPS = 256.0

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
    together, again = _raw_rows(model, x), _raw_rows(model, x)
    if together is None or again is None or not np.array_equal(together, again):
        return None
    alone = [_raw_rows(model, x[i : i + 1]) for i in range(min(BATCH_PROBE_ALONE, n))]
    rows = [a for a in alone if a is not None and a.shape[1] == together.shape[1]]
    if len(rows) != len(alone):
        return None
    single = np.concatenate(rows)
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
