"""Image folders and CSV files as audit inputs, checked against Pillow and a hand-written encoder."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fimaudit.data import load_inputs
from fimaudit.errors import DataError
from fimaudit.images import decode_png, load_image_folder

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
    with pytest.raises(DataError, match="differ in size"):
        load_image_folder(tmp_path, (3, 5, 4))


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
             "-k", "16", "--out", str(out), "-q"], capture_output=True, text=True, timeout=300,
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
