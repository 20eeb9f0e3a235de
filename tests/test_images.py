"""Image folders and CSV files as audit inputs, checked against Pillow and a hand-written encoder."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

# Pillow is the reference decoder here (and reads the formats beside PNG): in the test extra.
Image = pytest.importorskip("PIL.Image", reason="Pillow is installed with fimaudit[test]")

from fimaudit.data import load_input_set, load_inputs  # noqa: E402
from fimaudit.errors import DataError  # noqa: E402
from fimaudit.images import decode_png, load_image_folder, read_image_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(7)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
def test_png_decoder_matches_pillow(mode: str, tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    if mode == "I;16":
        pixels = RNG.integers(0, 2**16, size=(13, 17), dtype=np.uint16)
        Image.fromarray(pixels).save(path)  # Pillow picks I;16 for uint16
    else:
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
        pixels = RNG.integers(0, 256, size=(13, 17, channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    decoded, depth = decode_png(path.read_bytes())
    with Image.open(path) as img:
        expected = np.asarray(img)
    assert depth == (16 if mode == "I;16" else 8)
    np.testing.assert_array_equal(decoded, expected.reshape(decoded.shape))


@pytest.mark.parametrize("colours", [2, 4, 16, 200])  # Pillow packs 1, 2, 4 and 8 bits per index
def test_palette_png_matches_pillow(colours: int, tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    rgb = RNG.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").quantize(colours).save(path)
    decoded, _ = decode_png(path.read_bytes())
    with Image.open(path) as img:
        np.testing.assert_array_equal(decoded, np.asarray(img.convert("RGB")))


def encode_png(pixels: np.ndarray, filters: list[int]) -> bytes:
    """An RGB PNG whose row y uses filter filters[y]: each of the five filter types on purpose."""
    h, w, _ = pixels.shape
    raw = pixels.reshape(h, w * 3).astype(np.int64)
    lines = []
    for y, kind in enumerate(filters):
        row, up = raw[y], raw[y - 1] if y else np.zeros(w * 3, np.int64)
        left = np.concatenate([np.zeros(3, np.int64), row[:-3]])
        corner = np.concatenate([np.zeros(3, np.int64), up[:-3]])
        if kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
        else:
            pred = [np.zeros_like(row), left, up, (left + up) // 2][kind]
        lines.append(bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(lines))) + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["1", "L"])
def test_low_bit_grey_matches_pillow(mode: str, tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.fromarray(RNG.integers(0, 256, size=(5, 13), dtype=np.uint8)).convert(mode).save(path, bits=4 if mode == "L" else None)
    decoded, depth = decode_png(path.read_bytes())
    with Image.open(path) as img:
        expected = np.asarray(img.convert("L"))
    scale = 255 // (2**depth - 1)
    np.testing.assert_array_equal(decoded[..., 0].astype(np.int64) * scale, expected)


def test_every_png_filter_is_undone() -> None:
    pixels = RNG.integers(0, 256, size=(10, 7, 3), dtype=np.uint8)
    decoded, _ = decode_png(encode_png(pixels, [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]))
    np.testing.assert_array_equal(decoded, pixels)


def test_bad_pngs_are_data_errors(tmp_path: Path) -> None:
    good = encode_png(RNG.integers(0, 256, size=(4, 4, 3), dtype=np.uint8), [0] * 4)
    with pytest.raises(DataError, match="not a PNG"):
        decode_png(b"GIF89a" + good[6:])
    with pytest.raises(DataError, match="truncated"):
        decode_png(good[:40])
    flipped = bytearray(good)
    flipped[45] ^= 0xFF  # inside IDAT: the chunk's CRC no longer matches
    with pytest.raises(DataError, match="corrupt"):
        decode_png(bytes(flipped))
    path = tmp_path / "interlaced.png"
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(path, interlace=1)
    if path.read_bytes()[28] == 1:  # the IHDR interlace byte: Pillow honoured the request
        with pytest.raises(DataError, match="interlace 1"):
            decode_png(path.read_bytes())


def write_folder(root: Path, images: np.ndarray) -> list[Path]:
    """Half the images under class_a/, half under class_b/, as grey PNGs named out of order."""
    paths = []
    for i, img in enumerate(images):
        path = root / ("class_a" if i < len(images) // 2 else "class_b") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def test_folder_layout_and_scaling(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)
    write_folder(tmp_path, rgb)
    chw = load_image_folder(tmp_path, (3, 5, 4))
    assert chw.dtype == np.float32 and chw.shape == (6, 3, 5, 4)
    np.testing.assert_allclose(chw, rgb.transpose(0, 3, 1, 2) / 255, rtol=1e-6)
    np.testing.assert_allclose(load_image_folder(tmp_path, (5, 4, 3)), rgb / 255, rtol=1e-6)
    with pytest.raises(DataError, match=r"5x4 with 3 channel\(s\), but the model takes inputs of shape \(1, 28, 28\)"):
        load_image_folder(tmp_path, (1, 28, 28))
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "class_b" / "odd.png")
    with pytest.raises(DataError, match=r"class_b/odd\.png is 9x9 with 3 channel\(s\), but the model takes inputs of shape \(3, 5, 4\)"):
        load_image_folder(tmp_path, (3, 5, 4))
    with pytest.raises(DataError, match=r"differ in size: class_b/odd\.png is 9x9 with 3 channel\(s\), but class_a/000\.png is 5x4"):
        load_image_folder(tmp_path)  # no model shape: the first file is the reference


def test_empty_folder_and_missing_pillow_formats(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no images"):
        load_inputs(tmp_path, (3, 4, 4))
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(tmp_path / "a.jpg")
    assert load_inputs(tmp_path, (3, 4, 4)).shape == (1, 3, 4, 4)  # JPEG through Pillow


def test_cli_audits_an_image_folder_like_the_same_array(tmp_path: Path) -> None:
    digits = np.load(ROOT / "examples" / "digits_test.npy")[:6]  # (6, 1, 8, 8), values 0..16
    grey = np.round(digits[:, 0] * (255 / 16)).astype(np.uint8)
    folder = tmp_path / "images"
    write_folder(folder, grey)
    same = tmp_path / "same.npy"
    np.save(same, (grey[:, None] / np.float32(255)).astype(np.float32))
    reports = []
    for data, out in ((folder, tmp_path / "a.json"), (same, tmp_path / "b.json")):
        res = subprocess.run(
            [sys.executable, "-m", "fimaudit.cli", "audit", str(ROOT / "examples" / "digits.onnx"), "--data", str(data),
             "--directions", "16", "--out", str(out), "-q"], check=False, capture_output=True, text=True, timeout=300,
        )
        assert res.returncode == 0, res.stderr
        reports.append(json.loads(out.read_text()))
    folder_report, array_report = reports
    assert folder_report["data"]["sha256"] == array_report["data"]["sha256"]
    assert [s["lambda_max"] for s in folder_report["samples"]] == [s["lambda_max"] for s in array_report["samples"]]


def test_csv_first_row_of_nan_is_data_not_a_header(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("nan,1,2\n3,4,5\n")
    arr = load_inputs(path)
    assert arr.shape == (2, 3) and np.isnan(arr[0, 0])
    path.write_text("a,b,c\n1,2,3\n-inf,4,5e-3\n")
    arr = load_inputs(path)
    assert arr.shape == (2, 3) and arr[1, 0] == -np.inf


# --- channels: each image converted to the channels the model takes --------------------------------


def _write_mixed_channels(folder: Path) -> dict[str, np.ndarray]:
    """One 5x4 image of each kind a folder may mix, as uint8/uint16 arrays keyed by file name."""
    folder.mkdir(exist_ok=True)
    shape = (5, 4)
    arrays = {
        "a_rgb.png": RNG.integers(0, 256, size=(*shape, 3), dtype=np.uint8),
        "b_grey.png": RNG.integers(0, 256, size=shape, dtype=np.uint8),
        "c_rgba.png": RNG.integers(0, 256, size=(*shape, 4), dtype=np.uint8),
        "d_grey_alpha.png": RNG.integers(0, 256, size=(*shape, 2), dtype=np.uint8),
        "e_grey.bmp": RNG.integers(0, 256, size=shape, dtype=np.uint8),  # read through Pillow
        "f_grey16.png": RNG.integers(0, 2**16, size=shape, dtype=np.uint16),
    }
    modes = {"a_rgb.png": "RGB", "b_grey.png": "L", "c_rgba.png": "RGBA", "d_grey_alpha.png": "LA", "e_grey.bmp": "L"}
    for name, pixels in arrays.items():
        image = Image.fromarray(pixels, modes[name]) if name in modes else Image.fromarray(pixels)  # uint16: I;16
        image.save(folder / name)
    return arrays


def _expected_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1]: colour channels kept, alpha dropped, grey repeated."""
    scaled = pixels.astype(np.float64) / (65535 if pixels.dtype == np.uint16 else 255)
    if scaled.ndim == 2:
        scaled = scaled[..., None]
    colour = scaled[..., :3] if scaled.shape[2] >= 3 else scaled[..., :1]
    return np.concatenate([colour] * (3 // colour.shape[2]), axis=2)


def _expected_grey(pixels: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1]: grey kept, RGB(A) by the BT.601 luma, written out in integers first."""
    if pixels.ndim == 3 and pixels.shape[2] >= 3:
        r, g, b = (pixels[..., i].astype(np.int64) for i in range(3))
        return (299 * r + 587 * g + 114 * b) / (1000 * 255)
    grey = pixels[..., 0] if pixels.ndim == 3 else pixels
    return grey / (65535 if pixels.dtype == np.uint16 else 255)


@pytest.mark.parametrize("shape", [(3, 5, 4), (5, 4, 3), (1, 5, 4), (5, 4, 1), (5, 4)])
def test_mixed_channels_are_converted_to_what_the_model_takes(shape: tuple[int, ...], tmp_path: Path) -> None:
    arrays = _write_mixed_channels(tmp_path)
    folder = read_image_folder(tmp_path, shape)
    assert folder.names == sorted(arrays) and folder.skipped == []
    assert folder.pixels.dtype == np.float32 and folder.pixels.shape == (len(arrays), *shape)
    for got, name in zip(folder.pixels, folder.names):
        if 3 in shape:
            want = _expected_rgb(arrays[name])
            want = want.transpose(2, 0, 1) if shape[0] == 3 else want
        else:
            want = _expected_grey(arrays[name])
            want = want[None] if shape[0] == 1 else want[..., None] if len(shape) == 3 else want
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)


def test_grey_from_rgb_agrees_with_pillow_to_its_rounding(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    ours = load_image_folder(tmp_path, (16, 16))[0] * 255
    pillow = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), dtype=np.float64)  # rounded to integers
    assert np.abs(ours - pillow).max() <= 0.5 + 1e-3


def test_channels_without_a_standard_conversion_name_the_file(tmp_path: Path) -> None:
    Image.fromarray(RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8), "RGB").save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png is RGB \(3 channel\(s\)\), which has no standard conversion to the 2 channels"):
        load_image_folder(tmp_path, (2, 5, 4))


# --- unreadable files: named, and skippable with the reason recorded ----------------------------------


def _good(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8), "L").save(path)


def _encoded(fmt: str) -> bytes:
    buffer = BytesIO()
    Image.fromarray(RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), "RGB").save(buffer, fmt)
    return buffer.getvalue()


def _multipage(path: Path, pages: int = 3) -> None:
    images = [Image.fromarray(np.full((4, 4), 40 * i, np.uint8), "L") for i in range(pages)]
    images[0].save(path, save_all=True, append_images=images[1:])  # a real multipage TIFF / animated PNG


UNREADABLE = {
    "multipage.tif": (lambda p: _multipage(p), "it holds 3 images (a multipage or animated file)"),
    "animated.png": (lambda p: _multipage(p, 2), "it holds 2 images (a multipage or animated file)"),
    "truncated.png": (lambda p: p.write_bytes(_encoded("PNG")[:300]), "the PNG is truncated or corrupt"),
    "text.png": (lambda p: p.write_text("not an image\n"), "not a PNG file"),
    "truncated.jpg": (lambda p: p.write_bytes(_encoded("JPEG")[:-200]), "Pillow cannot decode it (image file is truncated"),
    "text.jpg": (lambda p: p.write_text("not an image\n"), "Pillow cannot decode it (cannot identify image file 'b_text.jpg')"),
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_an_unreadable_file_is_named_and_can_be_skipped(kind: str, tmp_path: Path) -> None:
    write, reason = UNREADABLE[kind]
    _good(tmp_path / "a_good.png", 10)
    bad = tmp_path / f"b_{kind}"
    write(bad)
    _good(tmp_path / "c_good.png", 30)
    with pytest.raises(DataError) as caught:
        load_image_folder(tmp_path, (1, 4, 4))
    assert f"cannot read the image {bad}: {reason}" in caught.value.message
    assert "remove the file" in caught.value.fix and "--skip-unreadable" in caught.value.fix
    folder = read_image_folder(tmp_path, (1, 4, 4), skip_unreadable=True)
    assert folder.names == ["a_good.png", "c_good.png"]
    np.testing.assert_array_equal(folder.pixels, np.stack([np.full((1, 4, 4), v / np.float32(255)) for v in (10, 30)]))
    [skipped] = folder.skipped
    assert skipped.name == bad.name and skipped.reason.startswith(reason)
    assert str(tmp_path) not in skipped.reason  # the report records the name, never the local path


def test_skipping_keeps_each_input_with_its_file(tmp_path: Path) -> None:
    values = {"class_a/0.png": 10, "class_b/2.png": 20, "class_b/4.png": 30}
    for name, value in values.items():
        _good(tmp_path / name, value)
    (tmp_path / "class_a" / "1.png").write_bytes(_encoded("PNG")[:100])
    _multipage(tmp_path / "class_b" / "3.tif")
    inputs = load_input_set(tmp_path, (4, 4), skip_unreadable=True)
    assert inputs.names == list(values)
    for pixels, name in zip(inputs.x, inputs.names):
        np.testing.assert_array_equal(pixels, np.full((4, 4), values[name] / np.float32(255)))
    assert [s.name for s in inputs.skipped] == ["class_a/1.png", "class_b/3.tif"]
    assert "truncated" in inputs.skipped[0].reason and "3 images" in inputs.skipped[1].reason


def test_a_folder_with_nothing_readable_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_text("not an image")
    _multipage(tmp_path / "b.tif")
    with pytest.raises(DataError, match=r"none of the 2 images under .* can be read \(first: a\.png: not a PNG file\)"):
        load_image_folder(tmp_path, (4, 4), skip_unreadable=True)


def test_names_of_undecodable_bytes_stay_json_safe(tmp_path: Path) -> None:
    _good(tmp_path / os.fsdecode(b"caf\xe9.png"), 50)  # Latin-1 bytes: not UTF-8
    folder = read_image_folder(tmp_path, (4, 4))
    assert folder.names == ["caf\\xe9.png"]
    json.dumps(folder.names)  # surrogates would raise here
