"""Find the adapter for a model reference among the installed `fimaudit.adapters` entry points."""
from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fimaudit.adapter import (  # noqa: F401  (Adapter, SimpleAdapter: re-exported for older imports)
    DATA_SHAPE,
    ENTRY_POINT_GROUP,
    Adapter,
    MultiFileAdapter,
    ProbabilityModel,
    SimpleAdapter,
    check_options,
)
from fimaudit.errors import AdapterNotFoundError, FimauditError
from fimaudit.model import check_batch_independence
from fimaudit.outputs import check_classes

# Only used to tell a user which package to install; adapters themselves declare what they handle.
_INSTALL_HINTS = {
    ".onnx": "fimaudit-onnx",
    ".pt": "fimaudit-torch",
    ".pt2": "fimaudit-torch",
    ".pth": "fimaudit-torch",
    ".ts": "fimaudit-torch",
    "triton": "fimaudit-triton",
    "triton+grpc": "fimaudit-triton",
    "triton+http": "fimaudit-triton",
    "triton+https": "fimaudit-triton",
    "triton+grpcs": "fimaudit-triton",
    "savedmodel": "fimaudit-tensorflow",
}


def installed_adapters() -> tuple[list[Adapter], dict[str, str]]:
    """Adapters registered by installed distributions, and those that failed to import (name: why).

    A broken plugin is set aside rather than raised, so it cannot hide the adapters that work.
    """
    found: list[Adapter] = []
    broken: dict[str, str] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            adapter = ep.load()
        except Exception as exc:  # any import-time failure of third-party code
            broken[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        if isinstance(adapter, Adapter):
            found.append(adapter)
        else:
            broken[ep.name] = f"not a fimaudit.adapter.Adapter (it lacks {', '.join(_missing_members(adapter))})"
    return found, broken


def _missing_members(obj: object) -> list[str]:
    members = ("name", "package", "suffixes", "schemes", "options", "handles", "load")
    return [m for m in members if not hasattr(obj, m)]


def load_model(reference: str | Path, *, data_shape: Sequence[int] | None = None, **options: Any) -> ProbabilityModel:
    """Load a model by reference (file path or URL) with the adapter that handles it.

    `options` go to the adapter, e.g. `outputs="logits"`, `output_name=...`, `max_batch_size=...`;
    one the adapter does not declare is a UsageError. `data_shape`, one input's shape in the data
    to be audited, is a hint, not an option: it reaches only adapters that declare it, which use it
    where the model records no input shape (ONNX dynamic dims, TorchScript).
    """
    ref = str(reference)
    adapter = adapter_for(ref)
    check_options(adapter, options)
    if data_shape is not None and DATA_SHAPE in adapter.options:
        options[DATA_SHAPE] = tuple(int(v) for v in data_shape)
    model = adapter.load(ref, **options)
    try:
        # Every adapter's model gets the same checks before an audit can trust it: a classifier
        # (not a one-output regressor), and outputs that do not depend on batch neighbours.
        check_classes(model.num_classes, model.output_kind)
        check_batch_independence(model)
    except FimauditError:
        model.close()
        raise
    return model


def model_files(path: Path) -> list[Path]:
    """The files the model file at `path` consists of, per the adapter that handles it.

    Just `[path]` when no installed adapter handles it or the format keeps everything in one file.
    """
    try:
        adapter = adapter_for(str(path))
    except AdapterNotFoundError:
        return [path]
    return list(adapter.model_files(path)) if isinstance(adapter, MultiFileAdapter) else [path]


def adapter_for(ref: str) -> Adapter:
    """The first installed adapter that handles `ref`, or AdapterNotFoundError saying what to install."""
    adapters, broken = installed_adapters()
    for adapter in adapters:
        if adapter.handles(ref):
            return adapter
    message = _no_adapter_message(ref, adapters)
    if broken:
        message += " These adapters are installed but failed to import: " + "; ".join(f"{k} ({v})" for k, v in broken.items()) + "."
    raise AdapterNotFoundError(message, _install_hint(ref))


def _no_adapter_message(ref: str, adapters: list[Adapter]) -> str:
    if not adapters:
        return f"no fimaudit adapter is installed, so nothing can load '{ref}'."
    listed = ", ".join(
        f"{a.name} ({', '.join(a.suffixes + tuple(s + '://' for s in a.schemes))})" for a in adapters
    )
    return f"no installed adapter handles '{ref}'. Installed: {listed}."


def _install_hint(ref: str) -> str:
    scheme = urlsplit(ref).scheme.lower()
    key = scheme if scheme in _INSTALL_HINTS else Path(ref).suffix.lower()
    if Path(ref).is_dir() and (Path(ref) / "saved_model.pb").exists():
        key = "savedmodel"
    package = _INSTALL_HINTS.get(key)
    if package:
        return f"pip install {package}  (or: pip install 'fimaudit[{package.split('-')[1]}]')"
    return "pass a model file or URL that an installed adapter supports (see the list above)"
