"""The adapter SDK: everything a framework adapter needs from fimaudit, in one module.

An adapter is a distribution that registers an `Adapter` under the entry-point group
`fimaudit.adapters` (docs/adapter_guide.md). It loads a model reference into a `ProbabilityModel`,
declares the options its loader takes, names the model by digest (`file_sha256`,
`directory_digest`), and may offer optional abilities, each a Protocol that fimaudit checks
with isinstance: `WhiteBoxModel`, `BoundedModel`, `FingerprintChecker`, `MultiFileAdapter` below, and
`DevicePerturbing` (fimaudit.perturbations: forming the sketch's perturbed inputs where the model runs).

The helpers that check outputs (probabilities versus logits, probes, fixed batches) live in
fimaudit.model, which builds on this module.
"""
from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import numpy as np

from fimaudit.errors import DataError, ModelError, OutputError, QueryError, UsageError
from fimaudit.lipschitz_bound import Bound
from fimaudit.outputs import (  # noqa: F401  (re-exported: the output checks adapters call)
    NOT_A_CLASSIFIER_FIX,
    OUTPUT_KINDS,
    OutputKind,
    detect_output_kind,
    output_form,
    to_probabilities,
)
from fimaudit.perturbations import (  # noqa: F401  (re-exported: what a model that forms inputs on its device takes)
    DevicePerturbing,
    Perturbations,
    Request,
    SignRows,
    materialize,
)

ENTRY_POINT_GROUP = "fimaudit.adapters"

# Option names with one meaning in every adapter that declares them, so a caller (the CLI) can
# pass them without knowing the adapter.
INPUT_SHAPE = "input_shape"  # one input's shape from the user: checked against the model's fixed dims
DATA_SHAPE = "data_shape"  # one input's shape in the audited data: used only where the model records none
# resolve_input_shape's answer to "where did this shape come from", in words for messages.
SHAPE_SOURCES = {"model": "the model itself", "input_shape": "the input_shape option", "data": "the audited data"}


# -- the model -----------------------------------------------------------------------------------

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

    def close(self) -> None:  # noqa: B027  (an optional hook: most models hold nothing to release)
        """Release sessions or connections; the default holds none."""


class TransientQueryError(QueryError):
    """Raised by adapters for faults worth retrying: timeouts, unavailable, 5xx, resets."""


# -- the adapter ---------------------------------------------------------------------------------

@runtime_checkable
class Adapter(Protocol):
    """What an adapter distribution exposes under the entry-point group.

    `options` maps each option its `load` accepts to one line of help; fimaudit.load_model refuses
    any other option before `load` runs, naming the adapter and these options.
    """

    name: str
    package: str
    suffixes: tuple[str, ...]
    schemes: tuple[str, ...]
    options: Mapping[str, str]

    def handles(self, reference: str) -> bool: ...

    def load(self, reference: str, **options: Any) -> ProbabilityModel: ...


@dataclass
class SimpleAdapter:
    """A ready-made Adapter: handles references by file suffix or URL scheme."""

    name: str
    package: str
    loader: Callable[..., ProbabilityModel]
    suffixes: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    extra_check: Callable[[str], bool] | None = None
    # For formats that keep data beside the model file (ONNX external data): every file the model
    # at a path consists of, itself first. Signing and `verify --model` hash all of them.
    file_lister: Callable[[Path], list[Path]] | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def handles(self, reference: str) -> bool:
        scheme = urlsplit(reference).scheme.lower()
        if scheme and scheme in self.schemes:
            return True
        if Path(reference).suffix.lower() in self.suffixes:
            return True
        return bool(self.extra_check and self.extra_check(reference))

    def load(self, reference: str, **options: Any) -> ProbabilityModel:
        return self.loader(reference, **options)

    def model_files(self, path: Path) -> list[Path]:
        """The files the model at `path` consists of: `[path]` unless the adapter lists more."""
        return [path] if self.file_lister is None else list(self.file_lister(path))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A framework's or server's error as one greppable line, for quoting in a fimaudit message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def check_options(adapter: Adapter, given: Iterable[str]) -> None:
    """UsageError unless every option in `given` is one the adapter declares."""
    unknown = sorted(set(given) - set(adapter.options))
    if not unknown:
        return
    takes = ", ".join(adapter.options) if adapter.options else "none"
    plural = "s" if len(unknown) > 1 else ""
    raise UsageError(
        f"the {adapter.name} adapter does not take the option{plural} {', '.join(unknown)}.",
        f"drop {', '.join(unknown)}; the {adapter.name} adapter takes these options: {takes}",
    )


# -- optional abilities, found by isinstance -----------------------------------------------------

class ExactFisher(Protocol):
    """One input's white-box figures."""

    @property
    def lambda_max(self) -> float: ...

    @property
    def trace(self) -> float: ...

    @property
    def method(self) -> str: ...


@runtime_checkable
class WhiteBoxModel(Protocol):
    """A model that computes λ_max and tr F from its own gradients (`audit --white-box`)."""

    def exact_fisher(self, x: np.ndarray, method: str = "auto") -> Sequence[ExactFisher]: ...


@runtime_checkable
class BoundedModel(Protocol):
    """A model that bounds λ_max(F) from its own graph and weights (`audit --bound`; docs/math.md,
    "Bounds from the graph"). Each method returns a `fimaudit.lipschitz_bound.Bound`; where the
    bound cannot be computed (an operator without a rule, a graph that cannot be read) its value is
    None with the operator and the reason named, never a number that might be wrong."""

    def lambda_max_bound(self) -> Bound:
        """An upper bound on λ_max(F(x)) at every input x (or on the domain its scope states)."""
        ...

    def local_lambda_max_bound(self, x: np.ndarray, radius: float) -> Bound | None:
        """An upper bound on λ_max(F(x')) over ‖x' − x‖₂ ≤ radius, for one input x (no batch axis);
        None where the adapter has no local bound (then only the global one is reported)."""
        ...


class FingerprintOutcome(Protocol):
    """Whether an endpoint still answers the recorded probes as it did."""

    @property
    def matches(self) -> bool: ...

    @property
    def max_abs_difference(self) -> float: ...

    @property
    def reason(self) -> str: ...


@runtime_checkable
class FingerprintChecker(Protocol):
    """An adapter that can re-query an endpoint on recorded probes (`verify --endpoint`)."""

    def check_fingerprint(self, reference: str, recorded: str | dict[str, Any], tol: float = ..., **options: Any) -> FingerprintOutcome: ...


@runtime_checkable
class MultiFileAdapter(Protocol):
    """An adapter whose model files may come with others (ONNX external data) that signing hashes."""

    def model_files(self, path: Path) -> list[Path]: ...


# -- input shapes --------------------------------------------------------------------------------

def resolve_input_shape(
    declared: Sequence[int | str | None] | None,
    *,
    given: Sequence[int] | None = None,
    data: Sequence[int] | None = None,
    model: str = "the model",
    fix: str = "",
) -> tuple[tuple[int, ...], str]:
    """One input's shape (no batch axis) and where it came from: "model", "input_shape" or "data".

    `declared` is the model's own shape after the batch axis, an int > 0 for a fixed dim and a
    name, None or -1 for an open one; None when the model records no shape at all. The user's
    `given` shape wins once it fits the fixed dims; the data's shape fills in only where the model
    leaves the shape open, since data may arrive flattened (a CSV row) for a model that fixes it.
    """
    if given is not None:
        shape = _positive_shape(given, "input_shape")
        _check_fits(declared, shape, model, "input_shape")
        return shape, "model" if _fixed(declared) == shape else "input_shape"
    fixed = _fixed(declared)
    if fixed is not None:
        return fixed, "model"
    if data is not None:
        shape = _positive_shape(data, "the data's input shape")
        _check_fits(declared, shape, model, "the data's input shape")
        return shape, "data"
    why = "does not record its input shape" if declared is None else f"leaves input dims open: {_show(declared)}"
    raise UsageError(
        f"{model} {why}.",
        (fix + "; or " if fix else "") + "pass input_shape=(C, H, W), one input without the batch axis "
        "(CLI: --input-shape C,H,W), or audit an array (.npy) of shape (n, C, H, W) to take it from the data",
    )


def _fixed(declared: Sequence[int | str | None] | None) -> tuple[int, ...] | None:
    """The declared shape when every dim is fixed, else None."""
    if declared is None:
        return None
    fixed = [v for v in declared if isinstance(v, int) and v > 0]
    return tuple(fixed) if len(fixed) == len(declared) else None


def _positive_shape(values: Sequence[int], what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise UsageError(f"{what} {tuple(values)!r} is not a shape of positive sizes.", "give one input's shape, e.g. (3, 32, 32)")
    return shape


def _check_fits(declared: Sequence[int | str | None] | None, shape: tuple[int, ...], model: str, what: str) -> None:
    if declared is None:
        return
    clash = len(declared) != len(shape) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(declared, shape))
    if clash:
        raise UsageError(
            f"{what} {shape} does not fit {model}, which takes inputs of shape {_show(declared)} (? is any size).",
            "pass input_shape= (CLI: --input-shape) with the model's fixed sizes, one input without the batch axis",
        )


def _show(declared: Sequence[int | str | None]) -> str:
    return "(" + ", ".join(str(v) if isinstance(v, int) and v > 0 else "?" for v in declared) + ")"


# -- digests -------------------------------------------------------------------------------------

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed so large models do not need to fit in memory."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError as exc:
        raise DataError(f"model file not found: {path}", "check the --model path") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}", "check that the model path is readable") from exc
    return digest.hexdigest()


def manifest_sha256(entries: Iterable[tuple[str, str]]) -> str:
    """sha256 of `<sha256>  <name>` lines sorted by name: one identity for a model made of several files.

    It is sha256sum's output format, so the digest can be recomputed with standard tools.
    """
    lines = [f"{digest}  {name}\n" for name, digest in sorted(entries)]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def directory_files(root: Path) -> list[Path]:
    """Every regular file under `root`, sorted by relative POSIX path.

    The one walk behind both a directory model's digest and a signed report's subjects, so the
    two always list the same files. Symlinked directories are not followed, so a link cannot pull
    outside files in.
    """
    found: list[Path] = []
    for directory, _, names in os.walk(root):
        found.extend(Path(directory) / name for name in names if (Path(directory) / name).is_file())
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def directory_digest(root: str | Path) -> tuple[str, int]:
    """(manifest_sha256 over every file under `root` named by relative POSIX path, file count).

    For plain file names it equals
    `(cd DIR && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum`.
    """
    base = Path(root)
    files = directory_files(base)
    return manifest_sha256((p.relative_to(base).as_posix(), file_sha256(p)) for p in files), len(files)


# -- helpers for adapters ------------------------------------------------------------------------

def shape_failure(path: object, shape: Sequence[int], shape_from: str, exc: BaseException) -> ModelError:
    """The error for a model that fails on inputs of a shape the user or the data supplied (the
    framework raises its own types when such a shape reaches a Reshape or a dense layer)."""
    return ModelError(
        f"{path} fails on inputs of shape {tuple(shape)} (taken from {SHAPE_SOURCES[shape_from]}): {one_line(exc)}",
        "pass the shape of one input the model was built for, input_shape= (CLI: --input-shape)",
    )


# Inputs per call where a local model leaves its batch axis open: one batch of float32 inputs near
# BATCH_BYTES, at most MAX_BATCH inputs. On the CPU a convolutional network's time per input grows with
# the batch past 2-32 inputs (cache misses): at 256, 1.9x on rapidocr's text-direction classifier (3x48x192,
# onnxruntime); at 64, 2.8x on EfficientNet-Lite1 through torch. Its audits took 1.8x (rapidocr, 16 inputs)
# and 1.14-1.19x (EfficientNet-Lite1) less time in small batches (docs/benchmarks/batch_size.md). So where
# inputs are large enough (CPU_CONV_MIN_BYTES) that each costs far more than a call, such a model gets at
# most CPU_CONV_BATCH inputs and CPU_CONV_BATCH_BYTES a call there. Small inputs keep large batches: a
# 28x28 CNN's audit was 7-13% slower in 16s (its time is the host's, per call), and MLPs keep gaining.
BATCH_BYTES = 64 * 2**20
MAX_BATCH = 1024
CPU_CONV_BATCH = 16
CPU_CONV_BATCH_BYTES = 4 * 2**20
CPU_CONV_MIN_BYTES = 64 * 2**10


def default_batch_size(spec: InputSpec, convolutional_on_cpu: Callable[[], bool] = lambda: False) -> int:
    """Inputs per call for a model whose batch axis is open. `convolutional_on_cpu` says whether the model
    is a convolutional network running on the CPU; it is asked only where the inputs are large enough for
    the answer to matter (reading a graph for it can take a while)."""
    row = 4 * max(1, spec.size)
    small = row >= CPU_CONV_MIN_BYTES and convolutional_on_cpu()
    rows, budget = (CPU_CONV_BATCH, CPU_CONV_BATCH_BYTES) if small else (MAX_BATCH, BATCH_BYTES)
    return int(max(1, min(rows, budget // row)))


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
