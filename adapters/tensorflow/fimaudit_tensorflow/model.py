"""SavedModel: a TensorFlow SavedModel signature behind fimaudit's ProbabilityModel contract."""
from __future__ import annotations

import os

# Before TensorFlow is imported: its C++ logging reads these once. oneDNN's custom kernels are off
# as well, since they may round differently by batch size and finite differences need the same
# input to give the same output whatever batch it arrives in.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fimaudit.adapter import (  # noqa: E402
    InputSpec,
    ModelIdentity,
    OutputKind,
    ProbabilityModel,
    directory_digest,
    resolve_input_shape,
)
from fimaudit.errors import FimauditError, ModelError, UsageError  # noqa: E402
from fimaudit.adapter import default_batch_size, detect_output_kind, probe_outputs, run_in_fixed_batches, shape_failure  # noqa: E402

DEFAULT_SIGNATURE = "serving_default"
_DTYPES = {tf.float32: "float32", tf.float64: "float64", tf.float16: "float16"}


class SavedModel(ProbabilityModel):
    """One signature of a SavedModel directory, called with one float input tensor.

    `signature` defaults to serving_default; `input_name` / `output_name` pick among several inputs
    or outputs (an output with "prob" in its name is preferred); `outputs` overrides the detection
    of probabilities versus logits.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        signature: str | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
        outputs: OutputKind | None = None,
        max_batch_size: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        data_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.path = Path(path)
        self._loaded = _load(self.path)  # keeps the signature's variables alive
        self._signature = signature or DEFAULT_SIGNATURE
        self._fn = _pick_signature(self._loaded, self._signature, self.path)
        self._input, spec = _pick_input(self._fn, input_name)
        self._output, out_spec = _pick_output(self._fn, output_name)
        self.input_spec, self._fixed_batch, self._shape_from = _input_spec(self._input, spec, input_shape, data_shape)
        self.fixed_batch_size = self._fixed_batch
        self.output_dtype = _DTYPES.get(out_spec.dtype, "float32")
        self.max_batch_size = self._fixed_batch or max_batch_size or default_batch_size(self.input_spec)
        probe = self._probe()
        self.num_classes = int(probe.shape[1])
        self.output_kind: OutputKind = outputs or detect_output_kind(probe)
        self._sha256, self._files = directory_digest(self.path)

    def _raw_predict(self, batch: np.ndarray) -> np.ndarray:
        if self._fixed_batch and len(batch) != self._fixed_batch:
            return self._predict_padded(batch, self._fixed_batch)
        return self._call(batch)

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(
            reference=str(self.path),
            adapter="tensorflow",
            sha256=self._sha256,
            provider=_provider(),
            output_kind=self.output_kind,
            extra={
                "signature": self._signature,
                "input": self._input,
                "output": self._output,
                "output_dtype": self.output_dtype,
                "manifest_files": str(self._files),
                "sha256_of": "manifest of per-file sha256 lines '<sha256>  <path>', sorted by path",
                **self._shape_extra(),
            },
        )

    def _shape_extra(self) -> dict[str, str]:
        """For a signature that leaves input dims open: the shape audited, and who chose it."""
        if self._shape_from == "model":
            return {}
        return {"input_shape": ",".join(map(str, self.input_spec.shape)), "input_shape_from": self._shape_from}

    def _call(self, batch: np.ndarray) -> np.ndarray:
        result = self._fn(**{self._input: tf.constant(batch)})
        return np.asarray(result[self._output])

    def _predict_padded(self, batch: np.ndarray, size: int) -> np.ndarray:
        """Signatures with a fixed batch size."""
        return run_in_fixed_batches(batch, size, self._call)

    def _probe(self) -> np.ndarray:
        try:
            fix = "name the class-score output with output_name= (CLI: --output-name NAME)"
            return probe_outputs(self, self._fixed_batch or 2, f"the output '{self._output}'", fix)
        except FimauditError:
            raise
        except Exception as exc:
            if self._shape_from == "model":
                raise  # the signature's own shape: a broken model, reported as before
            raise shape_failure(self.path, self.input_spec.shape, self._shape_from, exc) from exc


def _load(path: Path) -> Any:
    if not (path / "saved_model.pb").is_file():
        raise ModelError(f"{path} is not a SavedModel directory (no saved_model.pb).", "pass the directory written by model.export(dir)")
    try:
        return tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many error types while parsing graphs
        raise ModelError(f"tf.saved_model.load cannot read {path}: {exc}", "check that the directory is a complete SavedModel") from exc


def _pick_signature(loaded: Any, name: str, path: Path) -> Any:
    signatures = dict(loaded.signatures)
    if name not in signatures:
        raise UsageError(
            f"{path} has no signature '{name}' (it has {sorted(signatures) or 'none'}).",
            "name one of its signatures with signature= (or export the model with a serving signature)",
        )
    return signatures[name]


def _pick_input(fn: Any, name: str | None) -> tuple[str, tf.TensorSpec]:
    args, kwargs = fn.structured_input_signature
    if args:
        raise ModelError("the signature takes positional inputs; serving signatures take named ones.", "export with model.export(dir)")
    if name is None:
        if len(kwargs) != 1:
            raise ModelError(f"the signature has {len(kwargs)} inputs {sorted(kwargs)}.", "name the one to audit with input_name=")
        name = next(iter(kwargs))
    if name not in kwargs:
        raise UsageError(f"the signature has no input named '{name}'.", f"choose one of {sorted(kwargs)}")
    return name, kwargs[name]


def _pick_output(fn: Any, name: str | None) -> tuple[str, tf.TensorSpec]:
    outputs = {k: v for k, v in fn.structured_outputs.items()}
    if name is not None:
        if name not in outputs:
            raise UsageError(f"the signature has no output named '{name}'.", f"choose one of {sorted(outputs)}")
        return name, outputs[name]
    floats = sorted(k for k, v in outputs.items() if v.dtype in _DTYPES)
    if not floats:
        raise ModelError(f"the signature has no floating-point output ({sorted(outputs)}).", "export a (batch, classes) float output")
    named = [k for k in floats if "prob" in k.lower()]
    chosen = (named or floats)[0]
    return chosen, outputs[chosen]


def _input_spec(
    name: str, spec: tf.TensorSpec, given: tuple[int, ...] | None, data: tuple[int, ...] | None,
) -> tuple[InputSpec, int | None, str]:
    """(spec, fixed batch or None, where the shape came from): open dims after the batch axis are
    filled from input_shape, else from the data (resolve_input_shape)."""
    dtype = _DTYPES.get(spec.dtype)
    if dtype is None:
        raise ModelError(f"the input '{name}' has dtype {spec.dtype.name}; fimaudit perturbs floating-point inputs.", "audit a model with a float input")
    dims = spec.shape.as_list() if spec.shape.rank is not None else None
    if dims is not None and not dims:
        raise ModelError(f"the input '{name}' is a scalar.", "audit a model whose input has a batch axis")
    declared = None if dims is None else dims[1:]
    shape, source = resolve_input_shape(declared, given=given, data=data, model=f"the input '{name}'")
    return InputSpec(shape=shape, dtype=dtype), (dims[0] if dims else None), source


def _provider() -> str:
    return "tensorflow-gpu" if tf.config.list_physical_devices("GPU") else "tensorflow-cpu"
