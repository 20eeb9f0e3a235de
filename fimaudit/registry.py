"""Find the adapter for a model reference among the installed `fimaudit.adapters` entry points."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from fimaudit.errors import AdapterNotFoundError
from fimaudit.errors import FimauditError
from fimaudit.model import ProbabilityModel, check_batch_independence, check_classes

ENTRY_POINT_GROUP = "fimaudit.adapters"

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


class Adapter(Protocol):
    """What an adapter distribution exposes under the entry-point group."""

    name: str
    package: str
    suffixes: tuple[str, ...]
    schemes: tuple[str, ...]

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
    extra_check: Callable[[str], bool] | None = field(default=None)
    # For formats that keep data beside the model file (ONNX external data): every file the model
    # at a path consists of, itself first. Signing and `verify --model` hash all of them.
    model_files: Callable[[Path], list[Path]] | None = field(default=None)

    def handles(self, reference: str) -> bool:
        scheme = urlsplit(reference).scheme.lower()
        if scheme and scheme in self.schemes:
            return True
        if Path(reference).suffix.lower() in self.suffixes:
            return True
        return bool(self.extra_check and self.extra_check(reference))

    def load(self, reference: str, **options: Any) -> ProbabilityModel:
        return self.loader(reference, **options)


def installed_adapters() -> tuple[list[Adapter], dict[str, str]]:
    """Adapters registered by installed distributions, and those that failed to import (name: why).

    A broken plugin is set aside rather than raised, so it cannot hide the adapters that work.
    """
    found: list[Adapter] = []
    broken: dict[str, str] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except Exception as exc:  # any import-time failure of third-party code
            broken[ep.name] = f"{type(exc).__name__}: {exc}"
    return found, broken


def load_model(reference: str | Path, **options: Any) -> ProbabilityModel:
    """Load a model by reference (file path or URL) with the adapter that handles it.

    `options` go to the adapter, e.g. `outputs="logits"`, `output_name=...`, `max_batch_size=...`.
    """
    ref = str(reference)
    model = adapter_for(ref).load(ref, **options)
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
    lister = getattr(adapter, "model_files", None)
    return [path] if lister is None else list(lister(path))


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
