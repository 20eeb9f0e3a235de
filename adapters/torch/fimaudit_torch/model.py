"""TorchModel: a PyTorch classifier behind fimaudit's ProbabilityModel contract."""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fimaudit.adapter import (
    SHAPE_SOURCES,
    InputSpec,
    ModelIdentity,
    OutputKind,
    ProbabilityModel,
    default_batch_size,
    detect_output_kind,
    file_sha256,
    one_line,
    probe_outputs,
    resolve_input_shape,
    Request,
    materialize,
    run_in_fixed_batches,
    to_probabilities,
)
from fimaudit.errors import FimauditError, ModelError, OutputError, UsageError
from fimaudit.lipschitz_bound import Bound, ball_scope
from fimaudit_torch import files
from fimaudit_torch.bound import relu_network_bound
from fimaudit_torch.counter import form_inputs
from fimaudit_torch.whitebox import WhiteBoxFisher, exact_fisher

# Convolution layers by class name, as TorchScript keeps it (fimaudit.adapter.default_batch_size).
_CONV_NAMES = {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
# Other weight dtypes (bfloat16, ...) take float32 inputs, cast on the way in.
_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16"}
Factory = Callable[[], torch.nn.Module]


class TorchModel(ProbabilityModel):
    """A classifier given as an nn.Module (or TorchScript / torch.export module), run in eval mode.

    Queries run under torch.inference_mode on CUDA when available (else CPU). `input_shape` is one
    input's shape without the batch axis; `outputs` overrides the probabilities/logits detection;
    `output_name` picks a key (dict outputs) or an index (tuple outputs). `shape_from` ("input_shape"
    or "data") says who chose the shape of a file that records none; the report names it.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_shape: Sequence[int] | None = None,
        outputs: OutputKind | None = None,
        output_name: str | int | None = None,
        max_batch_size: int | None = None,
        device: str | torch.device | None = None,
        input_dtype: torch.dtype | None = None,
        fixed_batch: int | None = None,
        reference: str = "<torch.nn.Module>",
        sha256: str | None = None,
        source: str = "module",
        shape_from: str | None = None,
    ) -> None:
        if input_shape is None:
            raise UsageError(
                f"the input shape of {reference} is unknown.",
                "pass input_shape=(C, H, W) (one input, without the batch axis)",
            )
        if outputs not in (None, "probabilities", "logits"):
            raise UsageError(f"outputs must be 'probabilities' or 'logits' (got {outputs!r}).", "omit it to detect automatically")
        self.device = torch.device(device) if device is not None else _default_device()
        self._module = _prepare(module, self.device)
        self._dtype = input_dtype or _parameter_dtype(self._module)
        self._output_name = output_name
        self._reference, self._sha256, self._source, self._shape_from = reference, sha256, source, shape_from
        self._fixed_batch = fixed_batch
        self.fixed_batch_size = fixed_batch
        self.input_spec = InputSpec(shape=tuple(int(v) for v in input_shape), dtype=_DTYPES.get(self._dtype, "float32"))
        on_cpu = self.device.type == "cpu"
        self.max_batch_size = fixed_batch or max_batch_size or default_batch_size(
            self.input_spec, lambda: on_cpu and _convolutional(self._module))
        probe = self._probe()
        self.num_classes = int(probe.shape[1])
        self.output_dtype = str(probe.dtype) if probe.dtype in (np.float16, np.float64) else "float32"
        self.output_kind: OutputKind = outputs or detect_output_kind(probe)
        self._module64: tuple[torch.nn.Module, bool] | None = None
        self._forms_on_device: bool | None = None  # None: on a GPU (forms_on_device)

    # -- the ProbabilityModel contract ------------------------------------------------------
    def _raw_predict(self, batch: np.ndarray) -> np.ndarray:
        if self._fixed_batch and len(batch) != self._fixed_batch:
            return self._predict_padded(batch, self._fixed_batch)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self._dtype)
        with torch.inference_mode():
            return _to_numpy(self.forward(self._module, x))

    # -- perturbed inputs formed on the device (fimaudit.perturbations.DevicePerturbing) -------
    @property
    def forms_on_device(self) -> bool:
        """Whether forming inputs here saves the host work: on a GPU, not on the CPU (where it works the same,
        and the engine forms them on the host instead unless `_forms_on_device` says otherwise: tests)."""
        return self._forms_on_device if self._forms_on_device is not None else self.device.type != "cpu"

    def predict_perturbed(self, pieces: Sequence[Request]) -> np.ndarray:
        """Probabilities for a batch given as arrays and Perturbations, whose inputs are formed on the
        model's device from the counter generator: only the K outputs per row cross back to the host."""
        if self._fixed_batch:  # padded to the exported batch on the host: form them there too
            return self.predict_proba(materialize(pieces))
        spec_dtype = getattr(torch, self.input_spec.dtype)
        x = form_inputs(pieces, self.device, spec_dtype, self.input_spec.shape).to(self._dtype)
        with torch.inference_mode():
            raw = _to_numpy(self.forward(self._module, x))
        return to_probabilities(raw, len(x), self.num_classes, self.output_kind)

    @property
    def identity(self) -> ModelIdentity:
        extra = {"format": self._source, "input_dtype": self.input_spec.dtype}
        if self._shape_from is not None:
            extra["input_shape"] = ",".join(map(str, self.input_spec.shape))
            extra["input_shape_from"] = self._shape_from
        if self._sha256 is None:
            extra["weights_sha256"] = _weights_sha256(self._module)
        bound = self.sanity_bound
        if bound is not None:
            extra["sequential_bound"] = f"{bound:.6g}"  # not the graph bound: --bound gives model.lambda_max_bound
        return ModelIdentity(
            reference=self._reference,
            adapter="torch",
            sha256=self._sha256,
            provider=self.device.type,
            output_kind=self.output_kind,
            extra=extra,
        )

    # -- white box ----------------------------------------------------------------------------
    def exact_fisher(self, x: np.ndarray, method: str = "auto") -> list[WhiteBoxFisher]:
        """λ_max and tr F of each input from the model's own derivatives, in float64 where it runs.

        method: "jacobian" (K vector-Jacobian products, then the K×K eigenproblem), "lanczos"
        (eigsh on F v = J_zᵀ(diag p − ppᵀ)J_z v), or "auto" (Lanczos when K > 64).
        """
        module, is64 = self._float64_module()
        dtype = torch.float64 if is64 else self._dtype
        arr = np.asarray(x, dtype=np.float64).reshape(-1, *self.input_spec.shape)
        logits = self._logit_function(module)
        results = []
        for row in arr:
            flat = torch.from_numpy(row.reshape(-1)).to(self.device, dtype)
            results.append(exact_fisher(logits, flat, method=method, precision="float64" if is64 else "float32"))
        return results

    @functools.cached_property
    def sanity_bound(self) -> float | None:
        """½ Π‖W_l‖₂² for a plain sequential ReLU network (MATH.md): an upper bound on every λ_max."""
        return relu_network_bound(self._module, self.input_spec.shape)

    # -- bounds from the graph (audit --bound; the BoundedModel Protocol) ----------------------
    def lambda_max_bound(self) -> Bound:
        """graph_bound on the module: an upper bound on λ_max(F) at every input (docs/math.md,
        "Bounds from the graph"). Null, with the reason, for TorchScript (no torch.fx graph), modules
        torch.fx cannot trace, programs exported with a fixed batch, and operators without a rule."""
        from fimaudit_torch.graph_bound import graph_bound

        refused = self._unboundable("graph-lipschitz", "all inputs")
        if refused is not None:
            return refused
        try:
            return graph_bound(self._module, self.input_spec.shape, output_name=self._output_name, outputs=self.output_kind)
        except Exception as exc:  # a walk that fails (not an operator it refuses) bounds nothing
            return _failed("graph-lipschitz", "all inputs", None, exc)

    def local_lambda_max_bound(self, x: np.ndarray, radius: float) -> Bound:
        """local_bound on the module at one input: an upper bound on λ_max(F(x')) over ‖x' − x‖₂ ≤ radius
        (at radius 0, where x is no kink, λ_max(F(x)) itself), in float64. Lanczos is not used: where
        K·d is too large for the autograd Jacobian, the local Lipschitz rules give the bound."""
        from fimaudit_torch.graph_bound import local_bound

        scope = ball_scope(radius)
        refused = self._unboundable("graph-lipschitz-local", scope, radius)
        if refused is not None:
            return refused
        point = torch.from_numpy(np.array(x, dtype=np.float64).reshape(self.input_spec.shape))
        try:
            return local_bound(self._module, point, radius=float(radius), lanczos=False, output_name=self._output_name, outputs=self.output_kind)
        except Exception as exc:  # as above: null with the failure named, never a number
            return _failed("graph-lipschitz-local", scope, radius, exc)

    def _unboundable(self, method: str, scope: str, radius: float | None = None) -> Bound | None:
        """Null for a program exported with a fixed batch: its graph runs on that batch only."""
        if self._fixed_batch and self._fixed_batch != 1:
            return Bound(None, method, scope, "fixed batch", f"the program was exported for batches of exactly {self._fixed_batch}: "
                         "the graph walk runs one input; export it with a dynamic batch axis", radius=radius)
        return None

    # -- helpers ------------------------------------------------------------------------------
    def forward(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The module's class-score output for a batch, picked from tuple or dict outputs."""
        with _no_tf32(x.device.type == "cuda"):
            return _select_output(module(x), self._output_name)

    def _logit_function(self, module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """flat input (d,) -> logits (K,): log p for probability outputs (softmax(log p) = p)."""
        shape = self.input_spec.shape
        probabilities = self.output_kind == "probabilities"

        def logits(flat: torch.Tensor) -> torch.Tensor:
            out = self.forward(module, self._one_input_batch(flat.reshape(1, *shape)))[0]
            return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny)) if probabilities else out

        return logits

    def _float64_module(self) -> tuple[torch.nn.Module, bool]:
        """A float64 copy of the module, or the module itself when the copy fails or casts back.

        Scripted code may hard-code float32 (x.float(), typed constants); then the reference is
        computed in the model's own precision and says so.
        """
        if self._module64 is None:
            self._module64 = (self._module, False)
            try:
                with warnings.catch_warnings():
                    # Copying a torch.export module warns about internals it copies; nothing to act on.
                    warnings.simplefilter("ignore")
                    double = copy.deepcopy(self._module).double()
                probe = torch.zeros(1, *self.input_spec.shape, dtype=torch.float64, device=self.device)
                if self.forward(double, self._one_input_batch(probe)).dtype == torch.float64:
                    self._module64 = (double, True)
            except (RuntimeError, TypeError, NotImplementedError):
                pass  # keep the model's own precision
        return self._module64

    def _one_input_batch(self, x: torch.Tensor) -> torch.Tensor:
        """One input as the batch the module accepts: repeated up to a fixed batch size if it has one.

        Row 0 of the output depends on row 0 of the input alone (eval mode), so derivatives of
        output row 0 are those of the single input.
        """
        return x.expand(self._fixed_batch, *x.shape[1:]) if self._fixed_batch else x

    def _predict_padded(self, batch: np.ndarray, size: int) -> np.ndarray:
        """Programs exported with a fixed batch."""
        return run_in_fixed_batches(batch, size, self._run_chunk)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device, self._dtype)
        with torch.inference_mode():
            return _to_numpy(self.forward(self._module, x))

    def _probe(self) -> np.ndarray:
        try:
            fix = "wrap the module so that forward returns class probabilities or logits of shape (batch, classes)"
            return probe_outputs(self, self._fixed_batch or 2, "the module's output", fix)
        except FimauditError:
            raise
        except Exception as exc:  # torch raises RuntimeError (and others) from C++ on a wrong input shape
            raise ModelError(
                f"{self._reference} fails on probe inputs of shape {self.input_spec.shape}{self._shape_note()}: {one_line(exc)}",
                "pass the shape of one input the module was built for, input_shape=(C, H, W) (CLI: --input-shape)",
            ) from exc

    def _shape_note(self) -> str:
        return f" (taken from {SHAPE_SOURCES.get(self._shape_from, self._shape_from)})" if self._shape_from is not None else ""

    @classmethod
    def from_state_dict(cls, path: str | Path, factory: Factory, **options: Any) -> TorchModel:
        """Build `factory()` and load the weights in `path` (weights-only) into it, strictly."""
        return _from_state_dict(Path(path), factory, options)


def _failed(method: str, scope: str, radius: float | None, exc: Exception) -> Bound:
    return Bound(None, method, scope, None, f"the graph walk failed ({type(exc).__name__}: {one_line(exc)})", radius=radius)


def _from_state_dict(path: Path, factory: Factory, options: dict[str, Any], data_shape: tuple[int, ...] | None = None) -> TorchModel:
    _require_file(path)
    state = files.load_state_dict(path)
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"factory() returned a {type(module).__name__}, not an nn.Module.", "pass the module class or a function building it")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"the weights in {path} do not fit the factory's module: {exc}", "pass the factory the weights were saved from") from exc
    shape, source = resolve_input_shape(None, given=options.pop("input_shape", None), data=data_shape, model=f"the state_dict {path}")
    return TorchModel(
        module, input_shape=shape, reference=str(path), sha256=file_sha256(path), source="state_dict",
        shape_from=_named_source(source), **options,
    )


def load_file(reference: str, *, factory: Factory | None = None, data_shape: tuple[int, ...] | None = None, **options: Any) -> TorchModel:
    """Load a TorchScript file, a torch.export program, or (with `factory`) a state_dict.

    options: input_shape, outputs, output_name, max_batch_size, device (see TorchModel); data_shape,
    one input's shape in the audited data, is used where the file records no shape.
    """
    path = Path(reference)
    if factory is not None:
        return _from_state_dict(path, factory, options, data_shape)
    _require_file(path)
    kind = files.sniff_format(path)
    if kind == "export":
        return _from_export(path, options, data_shape)
    if kind == "torchscript":
        return _from_torchscript(path, options, data_shape)
    raise UsageError(
        f"{path} is a torch.save file (a state_dict or pickle), which holds no architecture.",
        "load it from Python: fimaudit.load_model(path, factory=MyNet, input_shape=...), or save the "
        "model with torch.export.save (.pt2) or fimaudit_torch.save_torchscript",
    )


def _from_torchscript(path: Path, options: dict[str, Any], data_shape: tuple[int, ...] | None) -> TorchModel:
    device = options.get("device") or _default_device()
    module, recorded = files.load_torchscript(path, str(device))
    shape, source = resolve_input_shape(
        recorded, given=options.pop("input_shape", None), data=data_shape, model=f"the TorchScript file {path}",
        fix="save it with fimaudit_torch.save_torchscript(module, path, input_shape), or export a .pt2 with torch.export (it records the shape)",
    )
    return TorchModel(
        module, input_shape=shape, reference=str(path), sha256=file_sha256(path), source="torchscript",
        shape_from=_named_source(source), **options,
    )


def _from_export(path: Path, options: dict[str, Any], data_shape: tuple[int, ...] | None) -> TorchModel:
    program = files.load_export(path)
    dims, dtype, fixed = files.export_input(program, path)
    # Dims exported as dynamic (other than the batch) are filled from input_shape, else the data.
    shape, source = resolve_input_shape(dims, given=options.pop("input_shape", None), data=data_shape, model=f"the program {path}")
    return TorchModel(
        program.module(), input_shape=shape, input_dtype=dtype, fixed_batch=fixed,
        reference=str(path), sha256=file_sha256(path), source="torch.export", shape_from=_named_source(source), **options,
    )


def _named_source(source: str) -> str | None:
    """The shape's source for the report, None when the file itself records the shape."""
    return None if source == "model" else source


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"the PyTorch file {path} does not exist.", "pass the path of an existing .pt, .pt2 or .pth file")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prepare(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not callable(module):
        raise UsageError(f"expected an nn.Module, got {type(module).__name__}.", "pass a torch.nn.Module")
    try:
        module.eval()
    except NotImplementedError:
        pass  # torch.export modules refuse eval(); they keep the mode they were exported in
    return module.to(device) if isinstance(module, torch.nn.Module) else module


def _parameter_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of the module's floating-point weights (float32 when it has none)."""
    tensors = [*module.parameters(), *module.buffers()] if isinstance(module, torch.nn.Module) else []
    for t in tensors:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _select_output(out: Any, name: str | int | None) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        keys = list(out)
        key = name if name is not None else (keys[0] if len(keys) == 1 else None)
        if key not in out:
            raise UsageError(f"the module returns a dict with keys {keys}.", "pick the class-score output with output_name=KEY (CLI: --output-name KEY)")
        return out[key]
    if isinstance(out, (tuple, list)) and out:
        index = int(name) if name is not None else 0
        return out[index]
    raise OutputError(f"the module returned a {type(out).__name__}, not a tensor.", "wrap the module so that forward returns a tensor")


def _to_numpy(out: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
    out = out.detach().to("cpu")
    return (out.float() if out.dtype == torch.bfloat16 else out).numpy()


def _convolutional(module: torch.nn.Module) -> bool:
    """Whether the module holds a convolution: a Conv layer (TorchScript keeps its class name as
    original_name), or a convolution call in a traced or exported graph."""
    for part in module.modules():
        if isinstance(part, torch.nn.modules.conv._ConvNd) or getattr(part, "original_name", None) in _CONV_NAMES:
            return True
        graph = getattr(part, "graph", None)
        if isinstance(graph, torch.fx.Graph) and any("conv" in str(node.target) for node in graph.nodes if node.op == "call_function"):
            return True
    return False


def _weights_sha256(module: torch.nn.Module) -> str:
    """A digest of a live module's weights (names, dtypes, shapes, bytes) for the report."""
    digest = hashlib.sha256()
    state = module.state_dict() if isinstance(module, torch.nn.Module) else {}
    for name, tensor in sorted(state.items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# TF32 (on by default for cuDNN convolutions) rounds inputs to 10 mantissa bits: outputs move by
# ~1e-3 relative, far above the differences a small finite-difference step makes, and differently
# at each batch size (measured on an H200: a ResNet-18 failed the batch-dependence probe and was
# queried one input per request). While any TorchModel runs on CUDA, full float32 is used; the
# user's settings come back when the last one finishes (counted, as batches run on threads).
_tf32_lock = threading.Lock()
_tf32_users = 0
_tf32_saved: tuple[bool, bool] = (True, False)


@contextlib.contextmanager
def _no_tf32(active: bool) -> Iterator[None]:
    global _tf32_users, _tf32_saved
    if not active:
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    with _tf32_lock:
        if _tf32_users == 0:
            _tf32_saved = (cudnn.allow_tf32, matmul.allow_tf32)
            cudnn.allow_tf32 = matmul.allow_tf32 = False
        _tf32_users += 1
    try:
        yield
    finally:
        with _tf32_lock:
            _tf32_users -= 1
            if _tf32_users == 0:
                cudnn.allow_tf32, matmul.allow_tf32 = _tf32_saved
