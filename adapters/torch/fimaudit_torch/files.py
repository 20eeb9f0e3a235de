"""Reading PyTorch model files without ever unpickling arbitrary Python objects.

Three formats, told apart by the members of their zip archive rather than by suffix (a `.pt` can be
TorchScript or a torch.save pickle):
- TorchScript (`torch.jit.save`): `code/` and `constants.pkl`. Its loader is TorchScript's own C++
  unpickler, which builds only TorchScript types and runs no Python.
- torch.export (`torch.export.save`, `.pt2`): an `archive_format` member. torch.export.load may fall
  back to a full pickle load for some members, so it runs with TORCH_FORCE_WEIGHTS_ONLY_LOAD set.
  That switch covers torch.load only: "opaque" constants go through plain pickle.loads and
  AOTInductor members are native libraries it dlopens. So the archive is inspected first
  (inspect_export_archive) and refused if any member would be unpickled or loaded as code.
- anything else written by torch.save: loaded with `weights_only=True` as a state_dict.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from fimaudit.errors import ModelError, UsageError
from fimaudit_torch.archive import inspect_export_archive

FileFormat = Literal["torchscript", "export", "pickle"]
# The archive member in which save_torchscript records the input shape (TorchScript has none).
META_FILE = "fimaudit.json"
_FORCE_SAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def sniff_format(path: Path) -> FileFormat:
    """Which of the three formats `path` holds, from its archive's member names."""
    if not zipfile.is_zipfile(path):
        return "pickle"  # the legacy (pre-1.6) torch.save format is a bare pickle stream
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "export"
    if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


def load_torchscript(path: Path, device: str) -> tuple[torch.nn.Module, tuple[int, ...] | None]:
    """The scripted module and the input shape recorded by save_torchscript, if any."""
    extra = {META_FILE: ""}
    try:
        with _quiet_torchscript():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError subclasses from C++
        raise ModelError(f"torch.jit.load cannot read {path}: {exc}", "check that the file was written by torch.jit.save") from exc
    return module, _recorded_shape(extra[META_FILE], path)


def _recorded_shape(text: str | bytes, path: Path) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = json.loads(text)["input_shape"]
        return tuple(int(v) for v in shape)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path} holds a malformed {META_FILE}: {exc}", "write it with fimaudit_torch.save_torchscript") from exc


@contextlib.contextmanager
def _weights_only_everywhere() -> Iterator[None]:
    """Make every torch.load inside the block weights-only, even where the caller asked otherwise.

    torch.export.load retries a failed weights-only load of example inputs with a full unpickle, and
    loads "use_pickle" weights with weights_only=False; this environment switch overrides both.
    It is process-wide while set, so loads in other threads are made safer too, never less safe.
    """
    before = os.environ.get(_FORCE_SAFE)
    os.environ[_FORCE_SAFE] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_FORCE_SAFE, None)
        else:
            os.environ[_FORCE_SAFE] = before


def load_export(path: Path) -> Any:
    """The torch.export.ExportedProgram in `path`, loaded weights-only after inspecting the archive."""
    inspect_export_archive(path)
    try:
        with _weights_only_everywhere():
            return torch.export.load(str(path))
    except pickle.UnpicklingError as exc:
        raise _refused(path, exc) from exc
    except Exception as exc:
        raise ModelError(f"torch.export.load cannot read {path}: {exc}", "check that the file was written by torch.export.save") from exc


def export_input(program: Any, path: Path) -> tuple[tuple[int | None, ...], torch.dtype, int | None]:
    """(shape without batch, None for a symbolic size; dtype; fixed batch size or None) of the
    program's one tensor input."""
    users = list(program.graph_signature.user_inputs)
    metas = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in users]
    if len(metas) != 1 or not isinstance(metas[0], torch.Tensor) or metas[0].dim() < 2:
        raise ModelError(
            f"{path} takes {len(metas)} input(s); fimaudit audits programs with one (batch, ...) tensor input.",
            "export a wrapper module whose forward takes the one input to audit",
        )
    dims = list(metas[0].shape)
    fixed = dims[0] if isinstance(dims[0], int) else None
    # Symbolic sizes (exported with dynamic height or width) are None: the shape is chosen at load.
    return tuple(int(v) if isinstance(v, int) else None for v in dims[1:]), metas[0].dtype, fixed


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torch.save'd mapping of names to tensors, loaded weights-only (no arbitrary objects)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused(path, exc) from exc
    except Exception as exc:
        raise ModelError(f"torch.load cannot read {path}: {exc}", "check that the file was written by torch.save") from exc
    # A common checkpoint layout nests the weights under "state_dict".
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors).",
            "save the weights with torch.save(module.state_dict(), path)",
        )
    return {str(k): v for k, v in obj.items()}


def _refused(path: Path, exc: Exception) -> ModelError:
    # torch's message opens by suggesting weights_only=False; quote only the line naming the culprit.
    lines = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
    culprit = f" ({lines[0]})" if lines else ""
    return ModelError(
        f"{path} contains pickled Python objects other than tensors, which fimaudit refuses to "
        f"unpickle: loading them could run arbitrary code{culprit}.",
        "save only tensors: torch.save(module.state_dict(), path), torch.jit.save or torch.export.save",
    )


def save_torchscript(module: torch.nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Script `module` (or keep it if already scripted) and save it with its input shape recorded.

    TorchScript stores no input shape, so this is what lets `fimaudit audit net.pt` run from the CLI.
    """
    shape = tuple(int(v) for v in input_shape)
    if not shape or min(shape) < 1:
        raise UsageError(f"input_shape {input_shape} is not a shape of positive sizes.", "pass e.g. input_shape=(3, 32, 32)")
    target = Path(path)
    with _quiet_torchscript():
        scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module.eval())
        torch.jit.save(scripted, str(target), _extra_files={META_FILE: json.dumps({"input_shape": list(shape)})})
    return target


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """TorchScript is deprecated in favour of torch.export, but audited files still arrive in it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
        yield
