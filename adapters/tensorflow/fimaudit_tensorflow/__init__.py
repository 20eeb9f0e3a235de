"""TensorFlow SavedModel adapter for fimaudit: `fimaudit.load_model("path/to/saved_model_dir")`.

A reference is handled when it is a local directory holding `saved_model.pb` (what Keras 3's
`model.export(dir, format="tf_saved_model")` writes). This module does not import TensorFlow:
every fimaudit.load_model call imports all registered adapters, and TensorFlow takes seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fimaudit.adapter import SimpleAdapter, directory_digest

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


# What `load` takes; fimaudit.load_model refuses anything else before TensorFlow is imported.
OPTIONS = {
    "signature": "the signature to audit (default: serving_default)",
    "input_name": "the signature input to perturb, for one with several (CLI: --input NAME)",
    "output_name": "the output to audit (default: the float output named like 'prob', else the first)",
    "outputs": "declare the outputs: probabilities or logits (default: detected)",
    "max_batch_size": "most inputs per call (default: from the input size, at most 1024)",
    "input_shape": "one input's shape without the batch axis, for inputs with open dims (CLI: --input-shape)",
    "data_shape": "one input's shape in the audited data, used where the signature leaves dims open",
}


def load(reference: str, **options: Any) -> SavedModel:
    """Options: see OPTIONS (and SavedModel)."""
    from fimaudit_tensorflow.model import SavedModel

    return SavedModel(reference, **options)


adapter = SimpleAdapter(
    name="tensorflow", package="fimaudit-tensorflow", loader=load, extra_check=is_saved_model_dir, options=OPTIONS,
)
