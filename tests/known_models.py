"""Known-answer classifiers: MLPs built from known weights, so every figure has an independent exact
reference (reference.py, analytic Jacobians).

A KnownModel offers the same function two ways:
- `model()`: a CallableModel computing the network in numpy, in the weights' dtype. This is what the
  core's tests (estimators, runner, report, policy, journal) audit: no ONNX needed.
- `path`: an ONNX file of the network, written by the ONNX adapter's builder on first use, for the
  tests that go through `fimaudit.load_model` or the command line.

Imported as a plain module (`from known_models import KnownModel`): pyproject's pytest settings put
tests/ on sys.path. The shared fixtures built from it live in the repository's root conftest.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import reference

from fimaudit import CallableModel, InputSpec


@dataclass(frozen=True)
class KnownModel:
    """Weights and biases (scikit-learn's layout: weights[l] is (in, out)), the hidden activation,
    the output head, and a few inputs x of shape (n, *input shape)."""

    directory: Path
    name: str
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activation: str
    x: np.ndarray
    output: str = "probabilities"
    batch: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.weights[0].dtype

    @property
    def classes(self) -> int:
        return int(self.weights[-1].shape[1])

    def exact(self, x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lambda_max, trace, p) per input, from the analytic Jacobian."""
        return reference.exact_mlp_fisher(self.weights, self.biases, self.activation, self.x if x is None else x)

    @cached_property
    def path(self) -> Path:
        """The network as an ONNX file (dynamic batch axis unless `batch` fixes it), written once."""
        from fimaudit_onnx.build import mlp_to_onnx

        path = self.directory / f"{self.name}.onnx"
        mlp_to_onnx(self.weights, self.biases, activation=self.activation, output=self.output, input_shape=self.shape,
                     dtype=self.dtype.type, batch=self.batch, path=path)
        return path

    def model(self, max_batch_size: int | None = None, outputs: str | None = None, rowwise: bool = False) -> CallableModel:
        """The network in numpy, computed in its own dtype as onnxruntime computes the file; `outputs`
        declares another output kind than the head's (as a user may, wrongly). With `rowwise`, each input
        is computed alone: BLAS rounds a batch of one or three rows differently from larger ones, and
        onnxruntime too, so only such a model answers every row the same whatever the batch."""
        dtype = self.dtype
        activation = np.tanh if self.activation == "tanh" else (lambda a: np.maximum(a, 0))
        weights, biases, output = self.weights, self.biases, self.output

        def forward(batch: np.ndarray) -> np.ndarray:
            if rowwise and len(batch) > 1:
                return np.concatenate([forward(row[None]) for row in batch])
            h = np.asarray(batch, dtype=dtype).reshape(len(batch), -1)
            for w, b in zip(weights[:-1], biases[:-1]):
                h = activation(h @ w + b)
            z = h @ weights[-1] + biases[-1]
            if output == "logits":
                return z
            if output == "sigmoid":
                return 1 / (1 + np.exp(-z))
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        model = CallableModel(forward, InputSpec(shape=self.shape, dtype=dtype.name), self.classes, outputs=outputs or output,  # type: ignore[arg-type]
                              max_batch_size=self.batch or max_batch_size or 256, name=self.name, output_dtype=dtype.name)
        model.fixed_batch_size = self.batch
        return model


def make_known(
    directory: Path, name: str, *, hidden: tuple[int, ...], shape: tuple[int, ...], classes: int,
    dtype: type = np.float64, activation: str = "tanh", output: str = "probabilities",
    batch: int | None = None, n: int = 12, seed: int = 0, scale: float = 1.0,
) -> KnownModel:
    """Random weights scaled by `scale / sqrt(fan-in)`, biases of 0.1 x N(0, 1), n inputs uniform in [0, 1)."""
    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(shape)), *hidden, classes]
    weights = [(rng.standard_normal((a, b)) * scale / np.sqrt(a)).astype(dtype) for a, b in zip(sizes, sizes[1:])]
    biases = [(0.1 * rng.standard_normal(b)).astype(dtype) for b in sizes[1:]]
    x = rng.uniform(0, 1, size=(n, *shape)).astype(dtype)
    return KnownModel(directory, name, weights, biases, activation, x, output, batch)
