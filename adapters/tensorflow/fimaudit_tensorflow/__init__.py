"""TensorFlow SavedModel adapter for fimaudit: `fimaudit.load_model("path/to/saved_model_dir")`.

A reference is handled when it is a local directory holding `saved_model.pb` (what Keras 3's
`model.export(dir, format="tf_saved_model")` writes). This module does not import TensorFlow:
every fimaudit.load_model call imports all registered adapters, and TensorFlow takes seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fimaudit.registry import SimpleAdapter
from fimaudit_tensorflow.manifest import directory_digest

if TYPE_CHECKING:
    from fimaudit_tensorflow.model import SavedModel

__all__ = ["SavedModel", "adapter", "directory_digest", "is_saved_model_dir", "load"]


def __getattr__(name: str) -> Any:
    if name == "SavedModel":
        from fimaudit_tensorflow.model import SavedModel

        return SavedModel
    raise AttributeError(f"module 'fimaudit_tensorflow' has no attribute {name!r}")


def is_saved_model_dir(reference: str) -> bool:
    """True for a local directory (no URL scheme) that holds a saved_model.pb."""
    if urlsplit(reference).scheme:
        return False
    path = Path(reference)
    return path.is_dir() and (path / "saved_model.pb").is_file()


def load(reference: str, **options: Any) -> SavedModel:
    """Options: signature, input_name, output_name, outputs, max_batch_size (see SavedModel)."""
    from fimaudit_tensorflow.model import SavedModel

    return SavedModel(reference, **options)


adapter = SimpleAdapter(name="tensorflow", package="fimaudit-tensorflow", loader=load, extra_check=is_saved_model_dir)
