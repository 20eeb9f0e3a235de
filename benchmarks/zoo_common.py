"""Shared shape of a real-model benchmark entry (benchmarks/real_models.py).

Each third-party or trained model is prepared by its own module (benchmarks/zoo_*.py) exposing
`prepare(cache: Path) -> ZooEntry`: the model file as fimaudit loads it, real inputs preprocessed
as the model expects, and the exact lambda_max per input from the framework's own autograd.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "models" / "real"  # git-ignored (benchmarks/models/)


@dataclass
class ZooEntry:
    name: str                 # short id, e.g. "efficientnet-lite1"
    source: str               # where the weights come from (package name and version, file inside it)
    model_path: Path          # what fimaudit.load_model takes (an .onnx file, a SavedModel folder, ...)
    inputs: np.ndarray        # (n, *input shape), float32, preprocessed as the model expects
    exact_lambda: np.ndarray  # (n,) exact lambda_max(F) at each input, from autograd, same input space
    input_names: list[str] = field(default_factory=list)  # what each input is (file, photo name)
    notes: str = ""           # preprocessing, output kind, exact method, output agreement model vs autograd copy
    load_options: dict[str, object] = field(default_factory=dict)  # extra kwargs for fimaudit.load_model


def cache_files(cache: Path, name: str, **extra: str) -> dict[str, Path]:
    """The files an entry keeps under cache/<name>/: the model, inputs, exact values, metadata, and `extra`."""
    folder = Path(cache) / name
    names = dict(onnx="model.onnx", inputs="inputs.npy", exact="exact_lambda.npy", meta="meta.json", **extra)
    return {key: folder / file for key, file in names.items()}
