"""Known-answer model with a 3x32x32 input for the accuracy benchmark.

The digits images are upsampled 8x8 -> 32x32, given three slightly different
channels plus seeded noise, and fitted by a one-hidden-layer tanh MLP. The
input dimension (3072) is realistic for image audits, while the exact Fisher
information stays cheap to compute from the stored weights.

Writes, under benchmarks/models/ (all byte-for-byte reproducible):
  digits32.onnx          float32, input [N, 3, 32, 32], output "probabilities"
  digits32_weights.npz   W0, W1, b0, b1 (float32, as exported), "activation",
                         "input_shape"; read it with load_weights()
  digits32_test.npy      200 held-out inputs, float32, (200, 3, 32, 32)

Run:  PYTHONPATH=adapters/onnx python benchmarks/models.py
Other code should call ensure_digits32(), which builds only what is missing.
"""

from __future__ import annotations

import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

MODELS_DIR = Path(__file__).resolve().parent / "models"
INPUT_SHAPE: tuple[int, int, int] = (3, 32, 32)
ACTIVATION = "tanh"
HIDDEN = 64
SEED = 0
NOISE_STD = 0.02
N_TEST_SAVED = 200
# Channel c is image * (1 + 0.1 c): distinct but correlated channels.
_CHANNEL_GAINS = np.array([1.0, 1.1, 1.2])


@dataclass(frozen=True)
class Digits32Paths:
    onnx: Path
    weights: Path
    test: Path

    def all_exist(self) -> bool:
        return self.onnx.exists() and self.weights.exists() and self.test.exists()


def digits32_paths(out_dir: Path = MODELS_DIR) -> Digits32Paths:
    return Digits32Paths(
        onnx=out_dir / "digits32.onnx",
        weights=out_dir / "digits32_weights.npz",
        test=out_dir / "digits32_test.npy",
    )


def make_digits32(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, 3, 32, 32) float64 in [0, 1], labels (n,)) from bundled digits."""
    digits = load_digits()
    images = digits.images / 16.0  # (n, 8, 8) in [0, 1]
    # Each 8x8 pixel becomes a 4x4 block, so the upsampled image is piecewise
    # constant and the 3072-dim input has strongly correlated coordinates.
    big = np.kron(images, np.ones((1, 4, 4)))
    channels = big[:, None, :, :] * _CHANNEL_GAINS[None, :, None, None]
    noise = np.random.default_rng(seed).normal(scale=NOISE_STD, size=channels.shape)
    # Dividing by the largest gain maps the clean signal into [0, 1]; the
    # clip only trims noise that pushes a pixel outside that range.
    x = np.clip((channels + noise) / _CHANNEL_GAINS.max(), 0.0, 1.0)
    return x, digits.target


def train(x_train: np.ndarray, y_train: np.ndarray, seed: int = SEED) -> MLPClassifier:
    # max_iter caps training time (~seconds on 2 cores); hitting it only
    # stops early, the fit stays deterministic.
    clf = MLPClassifier(
        hidden_layer_sizes=(HIDDEN,), activation=ACTIVATION, random_state=seed, max_iter=300
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train.reshape(len(x_train), -1), y_train)
    return clf


def save_weights(
    path: Path,
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    activation: str,
    input_shape: tuple[int, ...],
) -> None:
    """Write W{i}, b{i}, activation, input_shape as a reproducible .npz.

    np.savez stamps the current time into the zip, so entries are written
    with a fixed date to keep reruns byte-identical.
    """
    arrays: dict[str, np.ndarray] = {f"W{i}": w for i, w in enumerate(weights)}
    arrays |= {f"b{i}": b for i, b in enumerate(biases)}
    arrays["activation"] = np.array(activation)
    arrays["input_shape"] = np.array(input_shape, dtype=np.int64)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)


def load_weights(npz_path: Path | str) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(weights, biases, activation) from a weights .npz, upcast to float64.

    Reads both digits32_weights.npz and examples/digits_weights.npz (same
    layout). Upcasting float32 is exact, so references stay faithful.
    """
    with np.load(npz_path, allow_pickle=False) as data:
        n_layers = sum(1 for key in data.files if key.startswith("W"))
        weights = [data[f"W{i}"].astype(np.float64) for i in range(n_layers)]
        biases = [data[f"b{i}"].astype(np.float64) for i in range(n_layers)]
        activation = str(data["activation"])
    return weights, biases, activation


def _mlp_to_onnx() -> Callable[..., Any]:
    """Import the builder, falling back to the in-repo adapter source."""
    try:
        from fimaudit_onnx.build import mlp_to_onnx
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters" / "onnx"))
        from fimaudit_onnx.build import mlp_to_onnx
    return mlp_to_onnx


def build_digits32(out_dir: Path = MODELS_DIR, verbose: bool = True) -> Digits32Paths:
    """Train, export and save the benchmark model and its test inputs."""
    paths = digits32_paths(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = make_digits32()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    start = time.perf_counter()
    clf = train(x_train, y_train)
    # Store the float32 parameters that the ONNX file holds, so float64
    # references computed from the npz describe exactly that model.
    weights = [w.astype(np.float32) for w in clf.coefs_]
    biases = [b.astype(np.float32) for b in clf.intercepts_]
    _mlp_to_onnx()(
        weights, biases, activation=ACTIVATION, output="probabilities",
        input_shape=INPUT_SHAPE, dtype=np.float32, path=paths.onnx,
    )
    save_weights(paths.weights, weights, biases, ACTIVATION, INPUT_SHAPE)
    np.save(paths.test, x_test[:N_TEST_SAVED].astype(np.float32))
    if verbose:
        x_flat = x_test.reshape(len(x_test), -1)
        print(f"trained in {time.perf_counter() - start:.1f} s, {clf.n_iter_} epochs")
        print(f"test accuracy: {clf.score(x_flat, y_test):.4f} (n={len(y_test)})")
    return paths


def ensure_digits32(out_dir: Path = MODELS_DIR) -> Digits32Paths:
    """Paths to the benchmark artifacts, building them first if any is missing."""
    paths = digits32_paths(out_dir)
    if not paths.all_exist():
        build_digits32(out_dir, verbose=False)
    return paths


if __name__ == "__main__":
    build_digits32()
