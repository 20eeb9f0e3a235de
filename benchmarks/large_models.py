"""Known-answer model with a 1x224x224 input (d = 50,176) for the accuracy sweep.

The bundled digits MLP (examples/digits.onnx, tanh, 64 -> 32 -> 10, trained on 8x8 digits) is
lifted to 224x224 images: each 8x8 pixel becomes a 28x28 block, and the first layer's weight for
a block is spread evenly over its 784 pixels, so on a block-constant image the lifted network
computes exactly what the small one computes on the 8x8 image. Seeded random fine-scale weights
(column norm half that of the lifted weights) are then added, so that every one of the 50,176
coordinates has its own sensitivity and the Jacobian is not block-constant. No training is
needed, the build takes seconds, and the exact Fisher information follows from the stored
float32 weights (tests/reference.py, analytic Jacobian in float64).

Test inputs: the digits example's held-out images upsampled the same way, plus seeded Gaussian
pixel noise (std 0.02), clipped to [0, 1].

Writes, under benchmarks/models/ (gitignored; byte-for-byte reproducible from SEED):
  digits224.onnx          float32, input [N, 1, 224, 224], output "probabilities"
  digits224_weights.npz   W0, W1, b0, b1 (float32, as exported), "activation", "input_shape"
  digits224_test.npy      N_TEST_SAVED inputs, float32, (N, 1, 224, 224)

Run:  .venv/bin/python benchmarks/large_models.py   (other code calls ensure_digits224()).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from models import MODELS_DIR, _mlp_to_onnx, load_weights, save_weights  # noqa: E402

SMALL_SIDE = 8
UPSAMPLE = 28  # 8 * 28 = 224
INPUT_SHAPE: tuple[int, int, int] = (1, SMALL_SIDE * UPSAMPLE, SMALL_SIDE * UPSAMPLE)
SEED = 0
NOISE_STD = 0.02
# Fine-scale weights: column norm this fraction of the lifted weights' column norm.
FINE_WEIGHT_RATIO = 0.5
N_TEST_SAVED = 100
SMALL_WEIGHTS = ROOT / "examples" / "digits_weights.npz"
SMALL_TEST = ROOT / "examples" / "digits_test.npy"


@dataclass(frozen=True)
class Digits224Paths:
    onnx: Path
    weights: Path
    test: Path

    def all_exist(self) -> bool:
        return self.onnx.exists() and self.weights.exists() and self.test.exists()


def digits224_paths(out_dir: Path = MODELS_DIR) -> Digits224Paths:
    return Digits224Paths(out_dir / "digits224.onnx", out_dir / "digits224_weights.npz", out_dir / "digits224_test.npy")


def upsample(images: np.ndarray) -> np.ndarray:
    """(n, 1, 8, 8) -> (n, 1, 224, 224): each pixel becomes a constant 28x28 block."""
    return np.kron(images, np.ones((1, 1, UPSAMPLE, UPSAMPLE), dtype=images.dtype))


def lift_first_layer(w0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(64, H) -> (50176, H): block-spread weights plus seeded fine-scale weights."""
    hidden = w0.shape[1]
    blocks = w0.reshape(SMALL_SIDE, SMALL_SIDE, hidden)
    spread = np.repeat(np.repeat(blocks, UPSAMPLE, axis=0), UPSAMPLE, axis=1) / UPSAMPLE**2
    spread = spread.reshape(-1, hidden)
    d = spread.shape[0]
    # Per hidden unit, noise with column norm FINE_WEIGHT_RATIO x the lifted column's norm.
    col_norm = np.linalg.norm(spread, axis=0)
    fine = rng.standard_normal((d, hidden)) * (FINE_WEIGHT_RATIO * col_norm / np.sqrt(d))
    return spread + fine


def make_inputs(rng: np.random.Generator) -> np.ndarray:
    """Held-out digits, upsampled, with pixel noise, clipped to [0, 1], float32."""
    small = np.load(SMALL_TEST)[:N_TEST_SAVED].astype(np.float64)
    big = upsample(small) + rng.normal(scale=NOISE_STD, size=(len(small), *INPUT_SHAPE))
    return np.clip(big, 0.0, 1.0).astype(np.float32)


def build_digits224(out_dir: Path = MODELS_DIR, verbose: bool = True) -> Digits224Paths:
    """Lift the digits MLP, export the float32 ONNX model, its weights and test inputs."""
    paths = digits224_paths(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, biases, activation = load_weights(SMALL_WEIGHTS)
    weight_rng, input_rng = (np.random.default_rng([SEED, i]) for i in range(2))
    # Store the float32 parameters the ONNX file holds, so float64 references from the npz
    # describe exactly the model under audit.
    big_w = [lift_first_layer(weights[0], weight_rng).astype(np.float32), weights[1].astype(np.float32)]
    big_b = [b.astype(np.float32) for b in biases]
    _mlp_to_onnx()(big_w, big_b, activation=activation, output="probabilities",
                   input_shape=INPUT_SHAPE, dtype=np.float32, path=paths.onnx)
    save_weights(paths.weights, big_w, big_b, activation, INPUT_SHAPE)
    x = make_inputs(input_rng)
    np.save(paths.test, x)
    if verbose:
        _describe(big_w, big_b, activation, x)
    return paths


def _describe(weights: list[np.ndarray], biases: list[np.ndarray], activation: str, x: np.ndarray) -> None:
    """Accuracy against the digits labels and the spread of confidences, for the build log."""
    sys.path.insert(0, str(ROOT / "tests"))
    import reference
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, _, _, y_test = train_test_split(digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    p = reference.softmax(reference.mlp_forward(weights, biases, activation, x.reshape(len(x), -1)))
    acc = float(np.mean(p.argmax(1) == y_test[: len(x)]))
    print(f"digits224: accuracy {acc:.3f} on {len(x)} inputs, max-probability quartiles "
          f"{np.round(np.quantile(p.max(1), [0.25, 0.5, 0.75]), 3).tolist()}")


def ensure_digits224(out_dir: Path = MODELS_DIR) -> Digits224Paths:
    """Paths to the model files, building them first if any is missing."""
    paths = digits224_paths(out_dir)
    if not paths.all_exist():
        build_digits224(out_dir, verbose=False)
    return paths


if __name__ == "__main__":
    build_digits224()
