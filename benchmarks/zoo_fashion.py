"""Two small CNNs trained here on Fashion-MNIST, for benchmarks/real_models.py.

  fashion-cnn-relu-maxpool   (conv3x3-ReLU-maxpool2) x2 + dense, logits out
  fashion-cnn-gelu-avgpool   (conv3x3-GELU-avgpool2) x2 + dense, logits out

Input space: raw pixels in [0, 1], shape (1, 28, 28), no normalization (the network sees x as is).
Training: Adam (lr 1e-3, batch 128) on all 60000 training images, seeded, one torch thread pool of 2.
The exported ONNX graph outputs logits (load_options {"outputs": "logits"}); node doc strings and
metadata (which hold local source paths) are stripped. Exact lambda_max: a float64 copy of the
trained network, J = d log_softmax / dx (10 x 784) by torch.func.jacrev, A = diag(sqrt p) J,
lambda_max = top eigenvalue of A A^T.

Everything is cached under cache/<name>/ (weights.pt, model.onnx, inputs.npy, exact_lambda.npy,
meta.json); a second call only reads those files.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    from benchmarks.zoo_common import CACHE, ZooEntry, cache_files
    from benchmarks.robust_zoo import FASHION_DIR, _read_idx
except ImportError:  # run as a script from benchmarks/
    from zoo_common import CACHE, ZooEntry, cache_files  # type: ignore[no-redef]
    from robust_zoo import FASHION_DIR, _read_idx  # type: ignore[no-redef]

RELU_NAME = "fashion-cnn-relu-maxpool"
GELU_NAME = "fashion-cnn-gelu-avgpool"
# 24 fixed test images: every 416th of the 10000, starting at 0 (a spread over the file, all classes).
INPUT_INDICES = tuple(range(0, 10000, 416))[:24]
EPOCHS = {"relu": 12, "gelu": 12}  # the GELU net reached 0.8948 at 12 (still rising slowly: 20 would likely pass 0.90)
BATCH = 128
LR = 1e-3
SEED = 0
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def build(kind: str) -> nn.Sequential:
    """kind "relu": conv-ReLU-maxpool x2 + dense; "gelu": conv-GELU-avgpool x2 + dense."""
    act = nn.ReLU if kind == "relu" else nn.GELU
    pool = nn.MaxPool2d if kind == "relu" else nn.AvgPool2d
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), act(), pool(2),   # 16x14x14
        nn.Conv2d(16, 32, 3, padding=1), act(), pool(2),  # 32x7x7
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def load_fashion_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); images float32 (n, 1, 28, 28) in [0, 1]."""
    def images(name: str) -> np.ndarray:
        return (_read_idx(FASHION_DIR / name).astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)

    def labels(name: str) -> np.ndarray:
        return _read_idx(FASHION_DIR / name).astype(np.int64)

    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


def train(kind: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
          epochs: int | None = None, log=print) -> tuple[nn.Sequential, list[float]]:
    epochs = EPOCHS[kind] if epochs is None else epochs
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    net = build(kind)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    history = []
    for epoch in range(epochs):
        net.train()
        t0 = time.time()
        for idx in torch.randperm(len(xt), generator=gen).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
        acc = test_accuracy(net, x_te, y_te)
        history.append(acc)
        log(f"[{kind}] epoch {epoch + 1}/{epochs}: test accuracy {acc:.4f} ({time.time() - t0:.0f} s)")
    return net.eval(), history


def test_accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(b)).argmax(1) for b in np.array_split(x, 20)]).numpy()
    return float((pred == y).mean())


def exact_lambda(net: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """lambda_max(F) per input: float64 autograd Jacobian of log-softmax, A = diag(sqrt p) J."""
    import copy

    net64 = copy.deepcopy(net).double().eval()
    shape = inputs.shape[1:]

    def logp(flat: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(net64(flat.reshape(1, *shape)), dim=1)[0]

    out = []
    for x in inputs:
        flat = torch.from_numpy(x.astype(np.float64).reshape(-1))
        with torch.no_grad():
            p = torch.exp(logp(flat))
        jac = torch.func.jacrev(logp)(flat)            # (K, d)
        a = p.sqrt()[:, None] * jac
        out.append(float(torch.linalg.eigvalsh(a @ a.T)[-1]))
    return np.array(out)


def export_onnx(net: nn.Module, path: Path, example: np.ndarray) -> None:
    import onnx

    x = torch.from_numpy(example[:2].copy())
    tmp = path.with_suffix(".tmp.onnx")
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(net.eval(), (x,), str(tmp), input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), external_data=False, dynamo=True)
    model = onnx.load(str(tmp))
    _strip(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    tmp.unlink()


def _strip(model) -> None:
    """Drop doc strings and metadata (the exporter records local source paths there)."""
    model.doc_string = ""
    del model.metadata_props[:]

    def graph(g) -> None:
        g.doc_string = ""
        del g.metadata_props[:]
        for coll in (g.input, g.output, g.value_info, g.initializer):
            for item in coll:
                item.doc_string = ""
                if hasattr(item, "metadata_props"):
                    del item.metadata_props[:]
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    graph(model.graph)
    for fn in model.functions:
        fn.doc_string = ""
        for node in fn.node:
            node.doc_string = ""
            del node.metadata_props[:]


def onnx_agreement(path: Path, net: nn.Module, inputs: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["logits"], {"input": inputs})
    with torch.no_grad():
        ref = net(torch.from_numpy(inputs)).numpy()
    return float(np.abs(out - ref).max())


def prepare(kind: str, name: str, cache: Path = CACHE, log=print) -> ZooEntry:
    folder = Path(cache) / name
    files = cache_files(cache, name, weights="weights.pt")
    if not all(p.is_file() for p in files.values()):
        folder.mkdir(parents=True, exist_ok=True)
        x_tr, y_tr, x_te, y_te = load_fashion_images()
        if files["weights"].is_file():
            net = build(kind)
            net.load_state_dict(torch.load(files["weights"], weights_only=True))
            net.eval()
            history = [test_accuracy(net, x_te, y_te)]
        else:
            net, history = train(kind, x_tr, y_tr, x_te, y_te, log=log)
            torch.save(net.state_dict(), files["weights"])
        idx = np.array(INPUT_INDICES)
        inputs = np.ascontiguousarray(x_te[idx])
        export_onnx(net, files["onnx"], inputs)
        diff = onnx_agreement(files["onnx"], net, inputs)
        lam = exact_lambda(net, inputs)
        np.save(files["inputs"], inputs)
        np.save(files["exact"], lam)
        names = [f"fashion-mnist t10k #{i} ({CLASS_NAMES[y_te[i]]})" for i in idx]
        meta = dict(test_accuracy=history[-1], accuracy_history=history, epochs=EPOCHS[kind], seed=SEED,
                    onnx_max_abs_logit_diff=diff, input_names=names, input_indices=idx.tolist())
        files["meta"].write_text(json.dumps(meta, indent=1))
    meta = json.loads(files["meta"].read_text())
    arch = ("(conv3x3 16 - ReLU - maxpool2) (conv3x3 32 - ReLU - maxpool2) dense 1568->10" if kind == "relu"
            else "(conv3x3 16 - GELU - avgpool2) (conv3x3 32 - GELU - avgpool2) dense 1568->10")
    notes = (f"{arch}; trained here: Adam lr {LR}, batch {BATCH}, {meta['epochs']} epochs, seed {meta['seed']}, "
             f"test accuracy {meta['test_accuracy']:.4f}. Inputs: raw pixels in [0, 1], shape (1, 28, 28), "
             f"no normalization. ONNX outputs logits. Exact: float64 torch.func.jacrev of log_softmax, "
             f"lambda_max(A A^T), A = diag(sqrt p) J. ONNX Runtime vs torch logits, max abs diff on the inputs: "
             f"{meta['onnx_max_abs_logit_diff']:.2e}.")
    return ZooEntry(
        name=name,
        source=f"trained by benchmarks/zoo_fashion.py on Fashion-MNIST ({FASHION_DIR})",
        model_path=files["onnx"],
        inputs=np.load(files["inputs"]),
        exact_lambda=np.load(files["exact"]),
        input_names=list(meta["input_names"]),
        notes=notes,
        load_options={"outputs": "logits"},
    )


def prepare_relu(cache: Path = CACHE) -> ZooEntry:
    return prepare("relu", RELU_NAME, cache)


def prepare_gelu(cache: Path = CACHE) -> ZooEntry:
    return prepare("gelu", GELU_NAME, cache)



DITHERED_NAME = "fashion-cnn-relu-maxpool-dithered"


def prepare_relu_dithered(cache: Path = CACHE) -> ZooEntry:
    """The ReLU + max-pool model on the same images plus one grey level of uniform noise (as a sensor
    adds). On the clean images the flat zero background makes max-pool windows tie exactly, where the
    model has no derivative and autograd's figure is one arbitrary choice among the one-sided ones;
    dithered, there are no exact ties, so the autograd value is the derivative the black box measures."""
    base = prepare_relu(cache)
    folder = Path(cache) / DITHERED_NAME
    inputs_file, exact_file = folder / "inputs.npy", folder / "exact_lambda.npy"
    if not (inputs_file.is_file() and exact_file.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng(SEED).uniform(0, 1 / 255, size=base.inputs.shape).astype(np.float32)
        inputs = np.clip(base.inputs + noise, 0, 1).astype(np.float32)
        net = build("relu")
        net.load_state_dict(torch.load(Path(cache) / RELU_NAME / "weights.pt", weights_only=True))
        net.eval()
        np.save(inputs_file, inputs)
        np.save(exact_file, exact_lambda(net, inputs))
    return ZooEntry(
        name=DITHERED_NAME, source=base.source, model_path=base.model_path,
        inputs=np.load(inputs_file), exact_lambda=np.load(exact_file),
        input_names=[f"{n}, + U(0, 1/255) dither" for n in base.input_names],
        notes=base.notes + " Inputs dithered by U(0, 1/255) (seed 0) so no max-pool window ties exactly.",
        load_options=base.load_options,
    )
