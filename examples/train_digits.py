"""Train a small tanh MLP on scikit-learn's bundled digits and export it to ONNX.

Writes, next to this script:
  digits.onnx          float32 model, input [N, 1, 8, 8] in [0, 1], output
                       "probabilities" [N, 10]
  digits_test.npy      300 held-out inputs, float32, shape (300, 1, 8, 8)
  digits_weights.npz   the exported weights (W0, W1, b0, b1), "activation" and
                       "input_shape", so exact Fisher references can be computed

Every output is byte-for-byte reproducible: fixed seeds, and the .npz is
written with fixed zip timestamps (np.savez stamps the current time).

Run:  PYTHONPATH=adapters/onnx python examples/train_digits.py
"""

from __future__ import annotations

import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
INPUT_SHAPE: tuple[int, ...] = (1, 8, 8)
ACTIVATION = "tanh"
SEED = 0
N_TEST_SAVED = 300

try:
    from fimaudit_onnx.build import mlp_to_onnx
except ImportError:  # running from a checkout without the adapter installed
    sys.path.insert(0, str(HERE.parent / "adapters" / "onnx"))
    from fimaudit_onnx.build import mlp_to_onnx


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1] (raw pixels are 0..16), stratified fixed split."""
    digits = load_digits()
    x = digits.data / 16.0
    return train_test_split(
        x, digits.target, test_size=0.25, random_state=SEED, stratify=digits.target
    )


def train(x_train: np.ndarray, y_train: np.ndarray) -> MLPClassifier:
    clf = MLPClassifier(
        hidden_layer_sizes=(32,), activation=ACTIVATION, random_state=SEED, max_iter=1000
    )
    # A ConvergenceWarning would only mean "stopped at max_iter"; the result
    # is still deterministic, so keep the example output clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return clf


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz (a zip of .npy files) whose bytes depend only on arrays."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)


def export(clf: MLPClassifier, out_dir: Path) -> list[np.ndarray]:
    """Save the ONNX model and the float32 weights it actually contains."""
    # The npz stores the float32-rounded parameters, so a float64 reference
    # built from it describes exactly the function inside digits.onnx.
    weights = [w.astype(np.float32) for w in clf.coefs_]
    biases = [b.astype(np.float32) for b in clf.intercepts_]
    mlp_to_onnx(
        weights, biases, activation=ACTIVATION, output="probabilities",
        input_shape=INPUT_SHAPE, dtype=np.float32, path=out_dir / "digits.onnx",
    )
    arrays: dict[str, np.ndarray] = {f"W{i}": w for i, w in enumerate(weights)}
    arrays |= {f"b{i}": b for i, b in enumerate(biases)}
    arrays["activation"] = np.array(ACTIVATION)
    arrays["input_shape"] = np.array(INPUT_SHAPE, dtype=np.int64)
    save_npz_deterministic(out_dir / "digits_weights.npz", arrays)
    return weights


def onnx_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float | None:
    """Accuracy of the exported file itself, when onnxruntime is available."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"input": x})[0]
    return float(np.mean(probs.argmax(axis=1) == y))


def main(out_dir: Path = HERE) -> None:
    x_train, x_test, y_train, y_test = load_data()
    clf = train(x_train, y_train)
    print(f"train accuracy: {clf.score(x_train, y_train):.4f}")
    print(f"test accuracy:  {clf.score(x_test, y_test):.4f}  (n={len(y_test)})")
    export(clf, out_dir)
    x_test32 = x_test.reshape(-1, *INPUT_SHAPE).astype(np.float32)
    np.save(out_dir / "digits_test.npy", x_test32[:N_TEST_SAVED])
    acc = onnx_accuracy(out_dir / "digits.onnx", x_test32, y_test)
    if acc is not None:
        print(f"ONNX test accuracy: {acc:.4f}")


if __name__ == "__main__":
    main()
