"""The TensorFlow SavedModel adapter on real directories written by Keras 3's model.export."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Skipped only where TensorFlow itself is absent; a broken adapter must fail, not skip.
pytest.importorskip("tensorflow", reason="tensorflow-cpu is installed by adapters/tensorflow/install.sh")

# The adapter module first: it sets TensorFlow's environment (quiet logs, no oneDNN) before import.
import fimaudit_tensorflow.model  # noqa: E402, F401
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import fimaudit  # noqa: E402
import fimaudit_tensorflow  # noqa: E402
from fimaudit.conformance import check_model  # noqa: E402

SHAPE = (6, 6, 2)  # d = 72: the audit's exact coordinate mode applies
CLASSES = 4


def build(softmax: bool, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape=SHAPE, name="pixels")
    h = keras.layers.Conv2D(3, 3, padding="same", activation="tanh")(inp)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(CLASSES, activation="softmax" if softmax else None)(h)
    model = keras.Model(inp, out)
    model.set_weights([3 * w for w in model.get_weights()])  # confident predictions
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("savedmodels")
    dirs = {"logits": root / "logits", "probs": root / "probs", "fixed": root / "fixed"}
    build(softmax=False).export(str(dirs["logits"]), format="tf_saved_model", verbose=False)
    build(softmax=True).export(str(dirs["probs"]), format="tf_saved_model", verbose=False)
    save_fixed_batch(build(softmax=False), dirs["fixed"], batch=2)
    return dirs


def save_fixed_batch(model: keras.Model, path: Path, batch: int) -> None:
    """A plain tf.Module SavedModel (not Keras' export) whose signature fixes the batch size."""
    module = tf.Module()
    module.model = model  # tracks the variables

    @tf.function(input_signature=[tf.TensorSpec((batch, *SHAPE), tf.float32, name="pixels")])
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": model(pixels)}

    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *SHAPE)).astype(np.float32)


def manifest_digest(root: Path) -> tuple[str, int]:
    """The documented identity, computed here without the adapter's code."""
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    text = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}\n" for p in files)
    return hashlib.sha256(text.encode()).hexdigest(), len(files)


@pytest.mark.parametrize("kind, expected", [("logits", "logits"), ("probs", "probabilities"), ("fixed", "logits")])
def test_conformance_identity_and_detection(saved: dict[str, Path], kind: str, expected: str) -> None:
    model = fimaudit.load_model(saved[kind])
    check_model(model)
    assert model.output_kind == expected and model.num_classes == CLASSES
    assert model.input_spec.shape == SHAPE and model.input_spec.dtype == "float32"
    ident = model.identity
    digest, count = manifest_digest(saved[kind])
    assert ident.adapter == "tensorflow" and ident.sha256 == digest
    assert ident.extra["manifest_files"] == str(count) and count >= 3
    assert ident.extra["signature"] == "serving_default" and ident.extra["input"] == "pixels"


def test_fixed_batch_is_padded(saved: dict[str, Path]) -> None:
    fixed, free = fimaudit.load_model(saved["fixed"]), fimaudit.load_model(saved["logits"])
    assert fixed.max_batch_size == 2
    x = inputs(5, seed=2)
    np.testing.assert_allclose(fixed.predict_proba(x), free.predict_proba(x), atol=1e-7)


def exact_lambda(model_dir: Path, x: np.ndarray) -> list[float]:
    """λ_max from the SavedModel's own gradients (tf.GradientTape), independent of the audit."""
    loaded = tf.saved_model.load(str(model_dir))  # held: the signature needs its variables alive
    fn = loaded.signatures["serving_default"]
    out = []
    for row in x:
        v = tf.constant(row[None])
        with tf.GradientTape() as tape:
            tape.watch(v)
            z = fn(pixels=v)["output_0"][0]
        jz = tape.jacobian(z, v).numpy().reshape(CLASSES, -1).astype(np.float64)
        p = np.exp(z.numpy() - z.numpy().max()).astype(np.float64)
        p /= p.sum()
        a = np.sqrt(p)[:, None] * (jz - p @ jz)
        out.append(float(np.linalg.eigvalsh(a @ a.T)[-1]))
    return out


def test_audit_matches_gradients(saved: dict[str, Path]) -> None:
    x = inputs(3, seed=1)
    report = fimaudit.audit(fimaudit.load_model(saved["logits"]), x, directions=144, seed=0)
    assert all(s.method == "exact" for s in report.samples)  # 2d = 144 <= 144 directions
    assert [s.lambda_max for s in report.samples] == pytest.approx(exact_lambda(saved["logits"], x), rel=1e-2)


def test_signature_and_output_choice(saved: dict[str, Path]) -> None:
    with pytest.raises(fimaudit.UsageError, match="serving_default"):
        fimaudit.load_model(saved["logits"], signature="nope")
    with pytest.raises(fimaudit.UsageError, match="output_0"):
        fimaudit.load_model(saved["logits"], output_name="scores")
    named = fimaudit.load_model(saved["logits"], signature="serving_default", output_name="output_0", outputs="logits")
    assert named.identity.extra["output"] == "output_0"


def test_handles_only_saved_model_directories(saved: dict[str, Path], tmp_path: Path) -> None:
    adapter = fimaudit_tensorflow.adapter
    assert adapter.handles(str(saved["logits"]))
    assert not adapter.handles(str(tmp_path))  # a directory without saved_model.pb
    assert not adapter.handles(f"http://localhost/{saved['logits']}")


def test_identity_is_the_sdks_directory_digest() -> None:
    # Not a copy: a signed report's subjects (fimaudit.signing) list the files the same walk finds.
    from fimaudit.adapter import directory_digest

    assert fimaudit_tensorflow.directory_digest is directory_digest


def test_identity_changes_when_any_file_changes(saved: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(saved["logits"], copy)
    base, count = fimaudit_tensorflow.directory_digest(copy)
    assert base == fimaudit.load_model(saved["logits"]).identity.sha256  # the path is not part of it
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    assert len(files) == count
    seen = {base}
    for path in files:
        original = path.read_bytes()
        path.write_bytes(original + b"\0")
        seen.add(fimaudit_tensorflow.directory_digest(copy)[0])
        path.write_bytes(original)
    assert len(seen) == count + 1  # every single-file change gave a new digest
    assert fimaudit_tensorflow.directory_digest(copy)[0] == base
    files[0].rename(files[0].with_name("renamed"))
    assert fimaudit_tensorflow.directory_digest(copy)[0] != base


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs GNU coreutils")
def test_identity_matches_the_documented_shell_recipe(saved: dict[str, Path]) -> None:
    recipe = "find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum"
    res = subprocess.run(["bash", "-c", recipe], cwd=saved["logits"], capture_output=True, text=True, check=True)
    assert res.stdout.split()[0] == fimaudit_tensorflow.directory_digest(saved["logits"])[0]


def test_cli_audits_a_saved_model_directory(saved: dict[str, Path], tmp_path: Path) -> None:
    data, out = tmp_path / "x.npy", tmp_path / "report.json"
    np.save(data, inputs(3, seed=4))
    cmd = [sys.executable, "-m", "fimaudit.cli", "audit", str(saved["probs"]), "--data", str(data), "--out", str(out),
           "--directions", "16", "--estimator", "sketch", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["model"]["adapter"] == "tensorflow" and report["model"]["output_kind"] == "probabilities"
    assert report["model"]["sha256"] == manifest_digest(saved["probs"])[0]
    assert report["summary"]["n"] == 3 and all(s["lambda_max"] > 0 for s in report["samples"])


def test_cli_bound_is_refused_naming_the_adapter(saved: dict[str, Path], tmp_path: Path) -> None:
    """The tensorflow adapter reads no graph bound (no BoundedModel): --bound is a usage error naming it,
    raised before any query is spent."""
    data, out = tmp_path / "x.npy", tmp_path / "report.json"
    np.save(data, inputs(2, seed=4))
    cmd = [sys.executable, "-m", "fimaudit.cli", "audit", str(saved["probs"]), "--data", str(data), "--out", str(out), "--bound", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and not out.exists()
    assert "--bound needs a model whose graph and weights can be read; the 'tensorflow' adapter computes no bound" in " ".join(res.stderr.split())


def test_open_height_and_width_take_input_shape_or_the_data(tmp_path: Path) -> None:
    """A signature with height and width left open (None): refused without a shape, audited with
    input_shape or the data's shape, and named by the same directory digest either way."""
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(None, None, 2), name="pixels")
    h = keras.layers.Conv2D(3, 3, padding="same", activation="tanh")(inp)
    out = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(h))
    path = tmp_path / "open_hw"
    keras.Model(inp, out).export(str(path), format="tf_saved_model", verbose=False)
    with pytest.raises(fimaudit.UsageError, match=r"leaves input dims open: \(\?, \?, 2\)"):
        fimaudit.load_model(path)
    given = fimaudit.load_model(path, input_shape=(5, 7, 2))
    from_data = fimaudit.load_model(path, data_shape=SHAPE)
    assert given.input_spec.shape == (5, 7, 2) and from_data.input_spec.shape == SHAPE
    assert given.identity.extra["input_shape_from"] == "input_shape" and from_data.identity.extra["input_shape_from"] == "data"
    assert given.identity.sha256 == from_data.identity.sha256 == fimaudit_tensorflow.directory_digest(path)[0]
    with pytest.raises(fimaudit.UsageError, match=r"input_shape \(5, 7, 3\) does not fit"):
        fimaudit.load_model(path, input_shape=(5, 7, 3))
    check_model(from_data)
