"""RapidOCR text-direction classifier (PaddleOCR ch_ppocr_mobile_v2.0_cls, 2 classes: 0 / 180 degrees).

Source: the ONNX file models/ch_ppocr_mobile_v2.0_cls_infer.onnx shipped inside the PyPI package
`rapidocr-onnxruntime` 1.4.4 (installed with --no-deps; the package itself is not imported, it needs
cv2). The graph ends in Softmax: it outputs probabilities (load_options {"outputs": "probabilities"}).
Its input is declared (N, 3, ?, ?); the cached copy only fixes the spatial dims to 48 x 192 (the
package's cls_image_shape) so that fimaudit sees a fixed input shape; nothing else is changed.

Preprocessing (ch_ppocr_cls/text_cls.py resize_norm_img): BGR uint8 line image, resized to height 48
keeping the aspect ratio (width ceil(48 w/h), at most 192), x/255, (x - 0.5)/0.5, zero-padded on the
right to width 192 (zero = mid gray in this space). cv2.resize (bilinear) is replaced by PIL bilinear.
Inputs (the set fixed by the rule below before any audit ran on it; none chosen or dropped by its result):
- LINES: the first 18 rendered lines (hand-picked fonts, sizes, colours; 8 rotated 180 degrees);
- MORE_LINES: 34 further strings, each rendered with the font, size and colour pair taken in turn
  from fixed cycles (every DejaVu text face, sizes 18-46 px, 7 colour pairs), every second one
  rotated 180 degrees;
- PAGE_CROPS: skimage.data.page(): every text line of the page (title, five body lines, the code
  line; bands read off the page's dark-pixel row profile) at full width, and each of them again as
  its left and right half (columns 0:192 and 192:384); rotation alternates over the full-width
  lines and goes in a checkerboard over the halves (band index + half index odd);
- TEXT_CROPS: four boxes around the handwritten formulas of skimage.data.text(), alternately rotated.
Full-width page lines are wider than 4:1, so resize_norm_img squeezes them to 192 columns, as the
package does with any long line.

Exact lambda_max: the ONNX graph converted to torch with onnx2torch (Constant nodes turned into
initializers first, as onnx2torch reads weights from initializers), run in float64; J = d log p / dx
(2 x d) by K = 2 reverse passes (torch.autograd.grad), A = diag(sqrt p) J, lambda_max = top eigenvalue of A A^T.
Everything is cached under cache/rapidocr-cls/; a second call only reads those files.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

try:
    from benchmarks.zoo_common import CACHE, ZooEntry, cache_files
except ImportError:  # run as a script from benchmarks/
    from zoo_common import CACHE, ZooEntry, cache_files  # type: ignore[no-redef]

NAME = "rapidocr-cls"
_FORMAT = 2  # bump when the inputs or the exact method change: the cache is rebuilt
SHAPE = (3, 48, 192)
LABELS = ("0", "180")
ONNX_IN_PACKAGE = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# (text, font file, size, foreground rgb, background rgb, rotate 180)
LINES = (
    ("The quick brown fox jumps", "DejaVuSans.ttf", 32, (0, 0, 0), (255, 255, 255), False),
    ("over the lazy dog", "DejaVuSerif.ttf", 28, (20, 20, 20), (240, 236, 220), True),
    ("Invoice No. 20417", "DejaVuSansMono.ttf", 26, (10, 10, 80), (255, 255, 255), False),
    ("Total due: 1,284.50 EUR", "DejaVuSans-Bold.ttf", 30, (0, 0, 0), (250, 250, 250), True),
    ("Fisher information", "DejaVuSerif-Italic.ttf", 36, (60, 0, 0), (255, 250, 240), False),
    ("Meeting at 10:30 in room B", "DejaVuSansCondensed.ttf", 24, (30, 30, 30), (230, 230, 230), False),
    ("OPEN 24 HOURS", "DejaVuSans-Bold.ttf", 40, (255, 255, 255), (180, 20, 20), True),
    ("tel. +49 30 1234567", "DejaVuSansMono-Bold.ttf", 22, (0, 0, 0), (255, 255, 200), False),
    ("Chapter 3: Results", "DejaVuSerif-Bold.ttf", 34, (0, 0, 0), (255, 255, 255), True),
    ("abcdefghijklmnopqrstuvwxyz", "DejaVuSans.ttf", 20, (40, 40, 40), (255, 255, 255), False),
    ("ROTATE ME", "DejaVuSansCondensed-Bold.ttf", 44, (0, 60, 0), (245, 245, 245), True),
    ("Best before 12/2026", "DejaVuSans-Oblique.ttf", 26, (0, 0, 0), (220, 210, 190), False),
    ("Keep out of reach of children", "DejaVuSerifCondensed.ttf", 24, (0, 0, 0), (255, 255, 255), True),
    ("Platform 9", "DejaVuSans.ttf", 38, (255, 220, 0), (20, 20, 60), False),
    ("x = 3.14159", "DejaVuSansMono.ttf", 30, (0, 0, 0), (255, 255, 255), True),
    ("Hello, world!", "DejaVuSerif.ttf", 42, (0, 0, 120), (255, 255, 255), False),
    ("Lorem ipsum dolor sit amet", "DejaVuSans-ExtraLight.ttf", 28, (0, 0, 0), (255, 255, 255), False),
    ("SALE -50%", "DejaVuSans-BoldOblique.ttf", 40, (200, 0, 0), (255, 255, 255), True),
)
# 34 more lines: font, size and colours from fixed cycles (index i), rotated when i is odd
MORE_TEXTS = (
    "Departure 14:25 Gate A12", "Nutrition Facts", "Serial: QX-7741-B", "Please ring the bell",
    "www.example.org", "Batch 0042 / Lot 17", "Handle with care", "EXIT", "Dear Sir or Madam,",
    "Net weight 500 g", "The results are shown in Table 2", "No parking", "Summer Festival 2025",
    "Receipt #88213", "pack my box with five dozen liquor jugs", "Room 404", "Caution: wet floor",
    "ISBN 978-3-16-148410-0", "Thank you for shopping", "Fig. 7. Training loss", "Qty 3 x 12.99",
    "MENU", "Station Road", "Made in Portugal", "Version 2.4.1 (build 311)", "Sincerely yours",
    "0123456789", "Do not bend", "Press START to continue", "Emergency exit only",
    "Temperature: -4 C", "Abstract", "Welcome home", "Page 12 of 40",
)
FONT_CYCLE = (
    "DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSansCondensed.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSerifCondensed.ttf", "DejaVuSans-ExtraLight.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansCondensed-Bold.ttf", "DejaVuSansCondensed-Oblique.ttf", "DejaVuSansCondensed-BoldOblique.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSerifCondensed-Bold.ttf", "DejaVuSerifCondensed-Italic.ttf", "DejaVuSerifCondensed-BoldItalic.ttf",
)
SIZE_CYCLE = (18, 24, 30, 36, 42, 22, 28, 34, 40, 46)
COLOUR_CYCLE = (  # (foreground, background)
    ((0, 0, 0), (255, 255, 255)), ((30, 30, 30), (240, 236, 220)), ((255, 255, 255), (20, 30, 90)),
    ((190, 0, 0), (255, 255, 255)), ((0, 70, 0), (225, 225, 225)), ((0, 0, 0), (255, 230, 60)),
    ((110, 110, 110), (255, 255, 255)),
)
MORE_LINES = tuple(
    (text, FONT_CYCLE[i % len(FONT_CYCLE)], SIZE_CYCLE[i % len(SIZE_CYCLE)], *COLOUR_CYCLE[i % len(COLOUR_CYCLE)], i % 2 == 1)
    for i, text in enumerate(MORE_TEXTS)
)
# text-line crops of skimage.data.page(): (rows, cols, rotate 180 degrees). The first three as before;
# then the other full-width lines, rotation alternating; then every line band as two halves, rotation
# in a checkerboard (band index + half index odd), so both halves are seen both ways up
_PAGE_BANDS = ((10, 38), (46, 64), (64, 82), (82, 100), (100, 118), (117, 136), (170, 191))
PAGE_CROPS = (
    ((12, 38), (0, 384), False), ((44, 64), (0, 384), True), ((64, 84), (0, 384), False),
    ((82, 100), (0, 384), True), ((100, 118), (0, 384), False), ((117, 136), (0, 384), True),
    ((170, 191), (0, 384), False),
) + tuple((band, half, (b + h) % 2 == 1) for b, band in enumerate(_PAGE_BANDS)
          for h, half in enumerate(((0, 192), (192, 384))))
# boxes (rows, cols) around the handwritten formulas of skimage.data.text() (172 x 448, slanted lines)
TEXT_CROPS = (((0, 36), (140, 448), False), ((20, 86), (90, 320), True), ((45, 110), (0, 230), False),
              ((100, 172), (50, 300), True))


INPUTS_NOTE = (
    f"Inputs ({len(LINES) + len(MORE_LINES) + len(PAGE_CROPS) + len(TEXT_CROPS)}, fixed by a rule before any audit ran, "
    f"none dropped): {len(LINES) + len(MORE_LINES)} text lines rendered with PIL in the DejaVu fonts ({len(LINES)} hand-picked, "
    f"{len(MORE_LINES)} with font, size 18-46 px and colours from fixed cycles), {len(PAGE_CROPS)} line crops of "
    "skimage.data.page() (every line at full width and as left and right halves) and "
    f"{len(TEXT_CROPS)} boxes of skimage.data.text(); "
    f"{sum(r for *_, r in LINES + MORE_LINES) + sum(r for *_, r in PAGE_CROPS + TEXT_CROPS)} of them rotated 180 degrees."
)


def package_onnx() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise RuntimeError("install it: pip install --no-deps rapidocr-onnxruntime==1.4.4")
    return Path(spec.origin).parent / ONNX_IN_PACKAGE


def _render(text: str, font: str, size: int, fg, bg, rotate: bool) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    f = ImageFont.truetype(str(FONT_DIR / font), size)
    left, top, right, bottom = f.getbbox(text)
    pad = max(4, size // 5)
    im = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), bg)
    ImageDraw.Draw(im).text((pad - left, pad - top), text, font=f, fill=fg)
    if rotate:
        im = im.rotate(180)
    return np.asarray(im)[..., ::-1].copy()  # BGR, as cv2.imread gives the package


def _page_crop(rows, cols, rotate: bool, source: str = "page") -> np.ndarray:
    import skimage.data as data

    img = getattr(data, source)()[rows[0]:rows[1], cols[0]:cols[1]]
    if rotate:
        img = img[::-1, ::-1]
    return np.stack([img] * 3, axis=-1).copy()


def resize_norm(img: np.ndarray) -> np.ndarray:
    """The package's resize_norm_img (cls_image_shape 3x48x192), with PIL bilinear for cv2.resize."""
    from PIL import Image

    c, h_out, w_out = SHAPE
    h, w = img.shape[:2]
    resized_w = min(w_out, int(math.ceil(h_out * w / float(h))))
    im = np.asarray(Image.fromarray(img).resize((resized_w, h_out), Image.BILINEAR), dtype=np.float32)
    im = im.transpose(2, 0, 1) / 255.0
    im = (im - 0.5) / 0.5
    out = np.zeros(SHAPE, dtype=np.float32)
    out[:, :, :resized_w] = im
    return out


def load_inputs() -> tuple[np.ndarray, list[str], list[int]]:
    images, names, truth = [], [], []
    for text, font, size, fg, bg, rot in LINES + MORE_LINES:
        images.append(resize_norm(_render(text, font, size, fg, bg, rot)))
        names.append(f"rendered '{text}' ({font} {size}px{', rotated 180' if rot else ''})")
        truth.append(int(rot))
    for source, crops in (("page", PAGE_CROPS), ("text", TEXT_CROPS)):
        for rows, cols, rot in crops:
            images.append(resize_norm(_page_crop(rows, cols, rot, source)))
            where = f"rows {rows[0]}:{rows[1]}" + ("" if tuple(cols) == (0, 384) else f" cols {cols[0]}:{cols[1]}")
            names.append(f"skimage.data.{source}() {where}{' rotated 180' if rot else ''}")
            truth.append(int(rot))
    return np.ascontiguousarray(np.stack(images), dtype=np.float32), names, truth


def fixed_shape_copy(src: Path, dst: Path) -> None:
    """Copy the package's ONNX with the input's spatial dims fixed to 48 x 192 (batch stays dynamic)."""
    import onnx

    model = onnx.load(str(src))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "N"
    for d, v in zip(list(dims)[1:], SHAPE):
        d.dim_value = v
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    out_dims[0].dim_param = "N"
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def to_torch(path: Path) -> torch.nn.Module:
    """onnx2torch conversion; Constant nodes become initializers (onnx2torch reads weights there)."""
    import onnx

    # A second call finds the stub below in sys.modules (find_spec raises on its missing __spec__).
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        # onnx2torch imports torchvision for its NMS / RoIAlign converters only (unused here); a CUDA
        # torchvision wheel from PyPI does not load against the CPU torch, so stand in a stub module.
        stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        stub.ops = ops
        ops.nms = ops.roi_align = ops.box_convert = None
        sys.modules.setdefault("torchvision", stub)
        sys.modules.setdefault("torchvision.ops", ops)
    import onnx2torch

    model = copy.deepcopy(onnx.load(str(path)))
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return onnx2torch.convert(model).eval()


def exact_lambda(net64: torch.nn.Module, inputs: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """float64: J = d log p / dx by jacrev (2 x d), A = diag(sqrt p) J, lambda_max(A A^T)."""
    shape = inputs.shape[1:]

    def logp(flat: torch.Tensor) -> torch.Tensor:
        prob = net64(flat.reshape(1, *shape))[0]
        assert prob.dtype == torch.float64
        return torch.log(prob)

    lam, secs = [], []
    for x in inputs:
        t0 = time.time()
        flat = torch.from_numpy(x.astype(np.float64).reshape(-1))
        with torch.no_grad():
            p = torch.exp(logp(flat))
        xg = flat.clone().requires_grad_(True)
        lp = logp(xg)
        jac = torch.stack([torch.autograd.grad(lp[k], xg, retain_graph=k + 1 < len(lp))[0]
                           for k in range(len(lp))])  # K reverse passes (jacrev's vmap trips on a Slice)
        a = p.sqrt()[:, None] * jac
        lam.append(float(torch.linalg.eigvalsh(a @ a.T)[-1]))
        secs.append(time.time() - t0)
    return np.array(lam, dtype=np.float64), secs


def exact_rows(inputs: np.ndarray) -> np.ndarray:
    """A = diag(sqrt p) d log p / dx per input, (n, 2, d), float64: for replaying the audit's directions
    with exact JVPs (benchmarks/real_models_split.py). Same computation as exact_lambda."""
    net64 = to_torch(package_onnx()).double()
    shape = inputs.shape[1:]
    rows = []
    for x in inputs:
        xg = torch.from_numpy(x.astype(np.float64).reshape(-1)).requires_grad_(True)
        lp = torch.log(net64(xg.reshape(1, *shape))[0])
        jac = torch.stack([torch.autograd.grad(lp[k], xg, retain_graph=k + 1 < len(lp))[0] for k in range(len(lp))])
        rows.append((torch.exp(lp.detach()).sqrt()[:, None] * jac).numpy())
    return np.stack(rows)


def prepare(cache: Path = CACHE, log=print) -> ZooEntry:
    folder = Path(cache) / NAME
    files = cache_files(cache, NAME)
    fresh = all(f.is_file() for f in files.values()) and json.loads(files["meta"].read_text()).get("format") == _FORMAT
    if not fresh:
        import onnxruntime as ort

        folder.mkdir(parents=True, exist_ok=True)
        src = package_onnx()
        shutil.copyfile(src, folder / src.name)  # the untouched file, for reference
        fixed_shape_copy(src, files["onnx"])
        inputs, names, truth = load_inputs()
        sess = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
        probs = sess.run(None, {sess.get_inputs()[0].name: inputs})[0]
        orig = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        probs_orig = orig.run(None, {orig.get_inputs()[0].name: inputs})[0]
        net = to_torch(src)
        with torch.no_grad():
            t32 = net(torch.from_numpy(inputs)).numpy()
        net64 = net.double()
        with torch.no_grad():
            t64 = net64(torch.from_numpy(inputs.astype(np.float64))).numpy()
        lam, secs = exact_lambda(net64, inputs)
        diffs = dict(fixed_vs_original_onnx=float(np.abs(probs - probs_orig).max()),
                     torch32_vs_ort=float(np.abs(t32 - probs).max()),
                     torch64_vs_ort=float(np.abs(t64 - probs).max()))
        log(f"[{NAME}] max abs prob diffs: {diffs}")
        pred = probs.argmax(1)
        meta = dict(format=_FORMAT, prob_diffs=diffs, input_names=names, true_rotation=truth, onnx_probs=probs.tolist(),
                    accuracy=float((pred == np.array(truth)).mean()), seconds=secs,
                    data_std=float(inputs.std()), input0_l2=float(np.linalg.norm(inputs[0])),
                    source_file=src.name)
        np.save(files["inputs"], inputs)
        np.save(files["exact"], lam)
        files["meta"].write_text(json.dumps(meta, indent=1))
    meta = json.loads(files["meta"].read_text())
    d = meta["prob_diffs"]
    notes = (
        "Preprocessing: package resize_norm_img (height 48, aspect kept, width <= 192, (x/255-0.5)/0.5, zero "
        "pad right), BGR channel order, PIL bilinear instead of cv2.resize. Input space: that tensor (3, 48, 192); "
        f"data std {meta['data_std']:.4g}, L2 norm of input 0 {meta['input0_l2']:.4g}. Output: probabilities "
        "(Softmax at the end of the graph), classes ('0', '180'). ONNX copy: input dims fixed to N x 3 x 48 x 192 "
        f"(max abs prob diff vs the original file {d['fixed_vs_original_onnx']:.2g}). Exact: onnx2torch 1.5.15 "
        f"conversion in float64, J of log p by 2 reverse passes; max abs prob diff torch float32 vs onnxruntime "
        f"{d['torch32_vs_ort']:.2g}, float64 {d['torch64_vs_ort']:.2g}. "
        f"Time per input {min(meta['seconds']):.2f}-{max(meta['seconds']):.2f} s. "
        f"Direction accuracy on these inputs {meta['accuracy']:.2f}. " + INPUTS_NOTE
    )
    return ZooEntry(
        name=NAME,
        source=f"PyPI rapidocr-onnxruntime 1.4.4, rapidocr_onnxruntime/{ONNX_IN_PACKAGE}",
        model_path=files["onnx"],
        inputs=np.load(files["inputs"]),
        exact_lambda=np.load(files["exact"]),
        input_names=meta["input_names"],
        notes=notes,
        load_options={"outputs": "probabilities"},
    )
