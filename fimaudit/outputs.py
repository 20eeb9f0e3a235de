"""What a classifier's raw outputs are (probabilities, logits, or one sigmoid probability), and
their conversion to validated float64 probabilities: the checks every adapter's outputs pass."""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from fimaudit.errors import ModelError, OutputError

# "sigmoid": a binary classifier with one output, the probability p of class 1, audited as the
# two-class distribution [1 - p, p].
OutputKind = Literal["probabilities", "logits", "sigmoid"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("probabilities", "logits", "sigmoid")

# float32 softmax rows sum to 1 within ~1e-6, rounded outputs (3 decimals, few classes) within
# ~1e-3; logits or scores almost never land this close to 1.
ROW_SUM_TOLERANCE = 1e-2

NOT_A_CLASSIFIER_FIX = (
    "audit a classifier's class-probability (or logit) output; for a binary classifier whose one "
    "output is the probability of class 1, declare outputs='sigmoid' (CLI: --outputs sigmoid)"
)


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
