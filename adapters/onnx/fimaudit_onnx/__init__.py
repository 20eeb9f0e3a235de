"""ONNX Runtime adapter for fimaudit: `fimaudit.load_model("model.onnx")`."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fimaudit.adapter import (
    InputSpec,
    ModelIdentity,
    OutputKind,
    ProbabilityModel,
    Request,
    SimpleAdapter,
    default_batch_size,
    file_sha256,
    materialize,
    manifest_sha256,
    one_line,
    output_form,
    probe_inputs,
    resolve_input_shape,
    run_in_fixed_batches,
    shape_failure,
    to_probabilities,
)
from fimaudit.errors import ModelError, UsageError
from fimaudit.lipschitz_bound import Bound
from fimaudit_onnx.device import device_of, run_formed

__all__ = ["OnnxModel", "adapter", "external_data_files", "load", "model_files"]

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16"}
# Operators that make a graph a convolutional network (fimaudit.adapter.default_batch_size).
_CONVOLUTIONS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"}
# Refuse one input larger than this: probing and perturbing it needs several copies in memory, and
# a declared shape like [N, 1000000, 1000000] (4 TB an input) is a broken export, not a model to audit.
_MAX_INPUT_BYTES = 2**30

# What `load` takes; fimaudit.load_model refuses anything else before the file is opened.
OPTIONS = {
    "outputs": "declare the outputs: probabilities, logits or sigmoid (default: detected)",
    "output_name": "the output to audit (default: the float output named like 'prob', else the first)",
    "input_name": "the input to perturb, for a model listing several (CLI: --input NAME)",
    "input_shape": "one input's shape without the batch axis, for inputs with open dims (CLI: --input-shape)",
    "data_shape": "one input's shape in the audited data, used where the file leaves dims open",
    "max_batch_size": "most inputs per onnxruntime call (default: from the input size, at most 1024; on the CPU "
                      "at most 16 for a convolutional network with inputs of 64 KiB or more)",
    "providers": "onnxruntime execution providers, in order (default: CUDA when present, then CPU)",
}


class OnnxModel(ProbabilityModel):
    """A classifier in an ONNX file, run by onnxruntime (CUDA when available, else CPU)."""

    def __init__(
        self,
        path: str | Path,
        *,
        outputs: OutputKind | None = None,
        output_name: str | None = None,
        input_name: str | None = None,
        max_batch_size: int | None = None,
        providers: list[str] | None = None,
        input_shape: tuple[int, ...] | None = None,
        data_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"the ONNX file {self.path} does not exist.", "pass the path of an existing .onnx file")
        # Checked before onnxruntime opens anything, so an escaping location is never read.
        self._files = model_files(self.path)
        self._session = _open_session(self.path, providers)
        self._input = _pick_input(self._session, input_name)
        self._output = _pick_output(self._session, output_name)
        self.input_spec, self._fixed_batch, self._shape_from = _input_spec(self._input, input_shape, data_shape, self.path)
        self.output_dtype = _DTYPES.get(self._output.type, "float32")
        self.fixed_batch_size = self._fixed_batch
        on_cpu = self._session.get_providers()[0] == "CPUExecutionProvider"
        self.max_batch_size = self._fixed_batch or max_batch_size or default_batch_size(
            self.input_spec, lambda: on_cpu and _convolutional(self.path))
        self.num_classes, self.output_kind = output_form(self._width(), outputs or self._softmax_head(), self._probe)
        if self._shape_from != "model":
            self._probe(1)  # a shape chosen outside the file is run once here, so a wrong one is named as such
        self._sha256 = _files_sha256(self._files)
        # Where the counter generator's inputs are formed (fimaudit_onnx.device): "cuda", or None (the host).
        self._forming_device = device_of(self._session)

    @property
    def identity(self) -> ModelIdentity:
        extra = {"input": self._input.name, "output": self._output.name, "output_dtype": self.output_dtype}
        if self._shape_from != "model":
            # The file leaves some input dims open: say which shape was audited, and who chose it.
            extra["input_shape"] = ",".join(map(str, self.input_spec.shape))
            extra["input_shape_from"] = self._shape_from
        if len(self._files) > 1:
            # The weights live beside the .onnx file: the identity must change when they do.
            extra["external_data"] = ", ".join(_relative_name(f, self.path.parent) for f in self._files[1:])
            extra["sha256_of"] = "manifest of per-file sha256 lines '<sha256>  <path>', sorted by path"
        return ModelIdentity(
            reference=str(self.path),
            adapter="onnx",
            sha256=self._sha256,
            provider=self._session.get_providers()[0],
            output_kind=self.output_kind,
            extra=extra,
        )

    # -- bounds from the graph (audit --bound; the BoundedModel Protocol) ----------------------
    def lambda_max_bound(self) -> Bound:
        """An upper bound on λ_max(F) at every input, read from the file's graph with the onnx package
        (fimaudit_onnx.bound): null, with the operator named, where an operator has no rule."""
        from fimaudit_onnx.bound import graph_bound

        try:
            return graph_bound(self.path, self.input_spec.shape, input_name=self._input.name, output_name=self._output.name,
                               outputs=self.output_kind)
        except Exception as exc:  # a graph the walk cannot read (onnx's own errors): null with the failure named
            return Bound(None, "graph-lipschitz-onnx", reason=f"the graph walk failed ({type(exc).__name__}: {one_line(exc)})")

    def local_lambda_max_bound(self, x: np.ndarray, radius: float) -> None:
        """No local bound from an ONNX graph: only the global one (the torch adapter has local ones)."""
        return None

    # -- perturbed inputs formed on the GPU (fimaudit.perturbations.DevicePerturbing) -----------
    @property
    def forms_on_device(self) -> bool:
        """On the CUDA provider with torch and the torch adapter beside this one (fimaudit_onnx.device)."""
        return self._forming_device is not None

    def predict_perturbed(self, pieces: Sequence[Request]) -> np.ndarray:
        """Probabilities for a batch of arrays and Perturbations: formed on the GPU and bound in place
        where forms_on_device, else formed here (the same inputs either way)."""
        if self._forming_device is None or self._fixed_batch:
            return self.predict_proba(materialize(pieces))
        raw = run_formed(self._session, self._input.name, self._output.name, pieces, self.input_spec.dtype,
                         self.input_spec.shape, self._forming_device)
        return to_probabilities(raw, len(raw), self.num_classes, self.output_kind)

    def _raw_predict(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if self._fixed_batch and n != self._fixed_batch:
            return self._predict_fixed(batch)
        return self._run(batch)

    def _predict_fixed(self, batch: np.ndarray) -> np.ndarray:
        """Models exported with a fixed batch size."""
        return run_in_fixed_batches(batch, int(self._fixed_batch or 1), self._run)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run([self._output.name], {self._input.name: batch})
        return np.asarray(out)

    def _probe(self, n: int = 4) -> np.ndarray:
        shape = list(self.input_spec.shape)
        try:
            return np.asarray(self._raw_predict(probe_inputs(self.input_spec, n)))
        except MemoryError as exc:  # inputs under _MAX_INPUT_BYTES can still outgrow a small machine
            raise ModelError(
                f"out of memory probing {self.path} with {n} input(s) of shape {shape} ({self.input_spec.dtype}).",
                "check the model's declared input shape, or audit on a machine with more memory",
            ) from exc
        except Exception as exc:
            if self._shape_from == "model":
                raise  # the file's own shape: a broken model, reported as before
            raise shape_failure(self.path, shape, self._shape_from, exc) from exc

    def _width(self) -> int:
        """Columns of the chosen output: classes, or 1 for a one-output (sigmoid) model."""
        dims = self._output.shape
        if len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 0:
            return int(dims[1])
        out = self._probe(1)
        if out.ndim != 2:
            raise ModelError(
                f"the output '{self._output.name}' has shape {out.shape}; a classifier output is (batch, classes).",
                "name the class-score output with output_name= (CLI: --output-name NAME)",
            )
        return int(out.shape[1])

    def _softmax_head(self) -> OutputKind | None:
        """"probabilities" when a Softmax node produces the output; None leaves it to the probe."""
        return "probabilities" if _producer_op(self.path, self._output.name) == "Softmax" else None


def _open_session(path: Path, providers: list[str] | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    wanted = providers or _default_providers(ort.get_available_providers())
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"onnxruntime cannot load {path}: {exc}", "check that the file is a valid ONNX model") from exc


def _default_providers(available: list[str]) -> list[str]:
    """CUDA then CPU where a GPU is present; CPU alone otherwise.

    Asking for CUDA on a machine without an NVIDIA driver makes onnxruntime log a loud load failure
    before it falls back, so the driver's device node decides whether to ask at all.
    """
    gpu = Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()
    order = ("CUDAExecutionProvider", "CPUExecutionProvider") if gpu else ("CPUExecutionProvider",)
    return [p for p in order if p in available]


def _pick_input(session: Any, name: str | None) -> Any:
    """The input to perturb. onnxruntime lists only required inputs (overridable initializers keep
    their stored values), and fimaudit feeds one, so a model must need exactly that one."""
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    if name is None and len(inputs) != 1:
        raise UsageError(
            f"the model has {len(inputs)} inputs {names}; fimaudit perturbs one and feeds no others.",
            "name the input to audit with --input NAME (input_name=); the model must not require the others, "
            "so re-export it with them fixed as constants",
        )
    chosen = [i for i in inputs if name is None or i.name == name]
    if not chosen:
        raise UsageError(f"the model has no input named '{name}'.", f"choose one of {names} with --input NAME (input_name=)")
    picked = chosen[0].name
    others = [n for n in names if n != picked]
    if others:
        raise ModelError(
            f"the model also requires the inputs {others}, and fimaudit feeds only the one it perturbs ('{picked}').",
            f"re-export the model with {others} fixed as constants, so that '{picked}' is its only input",
        )
    return chosen[0]


def _pick_output(session: Any, name: str | None) -> Any:
    outputs = session.get_outputs()
    if name is not None:
        for item in outputs:
            if item.name == name:
                return item
        raise UsageError(f"the model has no output named '{name}'.", f"choose one of {[o.name for o in outputs]}")
    tensors = [o for o in outputs if o.type in _DTYPES]
    if not tensors:
        raise ModelError(
            f"the model has no floating-point tensor output (outputs: {[(o.name, o.type) for o in outputs]}).",
            "export the model with a (batch, classes) float output of probabilities or logits",
        )
    named = [o for o in tensors if "prob" in o.name.lower()]
    return (named or tensors)[0]


def _input_spec(
    item: Any, given: tuple[int, ...] | None, data: tuple[int, ...] | None, path: Path,
) -> tuple[InputSpec, int | None, str]:
    """(spec, fixed batch size or None, where the shape came from: "model", "input_shape", "data").

    Dims the file leaves open after the batch axis (dynamic height and width) are filled from the
    input_shape option, else from the data; the file itself is never changed, so its digest stays.
    """
    dtype = _DTYPES.get(item.type)
    if dtype is None:
        raise ModelError(f"the input '{item.name}' has type {item.type}; fimaudit perturbs floating-point inputs.", "audit a model with a float input")
    dims = list(item.shape)
    if not dims:
        raise ModelError(f"the input '{item.name}' is a scalar.", "audit a model whose input has a batch axis")
    shape, source = resolve_input_shape(dims[1:], given=given, data=data, model=f"the input '{item.name}' of {path}")
    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    _check_input_size(item.name, [dims[0], *shape], dtype)
    return InputSpec(shape=shape, dtype=dtype), fixed, source


def _check_input_size(name: str, dims: list[Any], dtype: str) -> None:
    # Python ints: the product of huge declared sizes must not overflow as numpy's would.
    size = np.dtype(dtype).itemsize
    for v in dims[1:]:
        size *= int(v)
    if size > _MAX_INPUT_BYTES:
        raise ModelError(
            f"the input '{name}' declares shape {dims}: one input would take {size:.3g} bytes of {dtype}, "
            f"more than the {_MAX_INPUT_BYTES // 2**20} MiB fimaudit can probe and perturb.",
            "check the model's declared input shape (re-export it with the real input size)",
        )


def _convolutional(path: Path) -> bool:
    """Whether the graph (or a function or subgraph in it) holds a convolution."""
    import onnx

    model = _graph(path)
    return model is not None and any(isinstance(part, onnx.NodeProto) and part.op_type in _CONVOLUTIONS for part in _walk(model))


def _producer_op(path: Path, output: str) -> str | None:
    """The op type of the node that produces `output`, read from the graph without running it."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for node in graph.node:
        if output in node.output:
            return str(node.op_type)
    return None


def model_files(path: Path) -> list[Path]:
    """The model file followed by the external data files it references, sorted, without repeats.

    A file that is not a readable ONNX graph references nothing: it stands alone (its digest then
    decides, e.g. a mismatch on verify), and loading it fails in onnxruntime with its own message.
    """
    path = Path(path)
    return [path] if _graph(path) is None else [path, *external_data_files(path)]


def _graph(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises DecodeError and others from protobuf
        return None


def external_data_files(path: Path) -> list[Path]:
    """The files holding the model's external tensors, each checked to lie inside the model's folder.

    ONNX resolves a tensor's "location" relative to the model's folder; one that escapes it (absolute,
    "..", or a symlink pointing out) would make the audit read, and the identity depend on, files
    that are not part of the model.
    """
    import onnx

    model = _graph(path)
    if model is None:
        raise ModelError(f"cannot read the ONNX graph of {path}.", "check that the file is a valid ONNX model")
    locations = {_location(t, path) for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL}
    return sorted({_inside_folder(path, location) for location in locations})


def _all_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto in the model: initializers and node attributes, in subgraphs and functions too."""
    import onnx

    for part in _walk(model):
        if isinstance(part, onnx.GraphProto):
            yield from part.initializer
            for sparse in part.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            continue
        for attribute in part.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def _walk(model: Any) -> Iterator[Any]:
    """Every GraphProto and NodeProto of the model: the main graph, the functions' nodes, and the subgraphs
    (If, Loop and Scan bodies) beneath any node, with their nodes."""
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield graph
            nodes.extend(graph.node)
            continue
        node = nodes.pop()
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


def _location(tensor: Any, path: Path) -> str:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    if not entries.get("location"):
        raise ModelError(
            f"the tensor '{tensor.name}' in {path} is external but names no location.",
            "re-save the model with onnx.save_model(..., save_as_external_data=True)",
        )
    return entries["location"]


def _inside_folder(path: Path, location: str) -> Path:
    folder = path.parent.resolve()
    target = (path.parent / location).resolve()
    if PurePosixPath(location).is_absolute() or Path(location).is_absolute() or ".." in PurePosixPath(location).parts or not target.is_relative_to(folder):
        raise ModelError(
            f"{path} references external data at {location!r}, outside the model's folder {path.parent}.",
            "re-save the model with its external data files in the same folder (location='weights.bin')",
        )
    if not target.is_file():
        raise ModelError(f"the external data file {location!r} that {path} references does not exist.", f"put {location} beside {path.name}")
    return path.parent / PurePosixPath(location)


def _relative_name(file: Path, folder: Path) -> str:
    return file.relative_to(folder).as_posix()


def _files_sha256(files: list[Path]) -> str:
    """The model file's sha256 alone (as before external data was covered), else the manifest's."""
    if len(files) == 1:
        return file_sha256(files[0])
    return manifest_sha256([(_relative_name(f, files[0].parent), file_sha256(f)) for f in files])


def load(reference: str, **options: Any) -> OnnxModel:
    return OnnxModel(reference, **options)


adapter = SimpleAdapter(
    name="onnx", package="fimaudit-onnx", loader=load, suffixes=(".onnx",), file_lister=model_files, options=OPTIONS,
)
