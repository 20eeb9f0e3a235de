"""Folders of images as audit inputs.

PNG is decoded here with the standard library's zlib (grey of 1 to 16 bits, grey+alpha, RGB and
RGBA of 8 or 16 bits, palette images; not interlaced), so the core needs no imaging library; other formats (JPEG,
BMP, ...) are read through Pillow when it is installed. Pixels become float32 in [0, 1], laid out
as the model's input takes them (channels first or last, grey with or without a channel axis);
any other preprocessing (mean/std normalisation, resizing) belongs in an .npy file.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from fimaudit.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PILLOW_SUFFIXES = {".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGE_SUFFIXES = {".png"} | PILLOW_SUFFIXES
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder` (recursively, e.g. one subfolder per class), in sorted order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"the folder {folder} holds no images.", f"put files with suffixes {sorted(IMAGE_SUFFIXES)} in it")
    return files


def load_image_folder(folder: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """All images under `folder` as one float32 array (n, *shape), pixel values in [0, 1]."""
    images = [read_image(p) for p in image_files(folder)]
    sizes = {img.shape for img in images}
    if len(sizes) > 1:
        raise DataError(f"the images under {folder} differ in size: {sorted(sizes)}.", "resize them to the model's input size first")
    stacked = np.stack(images)  # (n, H, W, C)
    return arrange(stacked, shape) if shape is not None else stacked


def arrange(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(n, H, W, C) images in the model's layout: (C, H, W), (H, W, C), (H, W) or (1, H, W)."""
    n, h, w, c = images.shape
    if c in (2, 4) and c - 1 in (shape[0], shape[-1]):
        images, c = images[..., : c - 1], c - 1  # an alpha channel the model does not take
    candidates = {
        (c, h, w): lambda: images.transpose(0, 3, 1, 2),
        (h, w, c): lambda: images,
    }
    if c == 1:
        candidates[(h, w)] = lambda: images[..., 0]
    arrange_to = candidates.get(tuple(shape))
    if arrange_to is None:
        raise DataError(
            f"the images are {h}x{w} with {c} channel(s), but the model takes inputs of shape {tuple(shape)}.",
            "resize or convert the images to the model's input size and channels, or pass an .npy file",
        )
    return np.ascontiguousarray(arrange_to())


def read_image(path: Path) -> np.ndarray:
    """One image as float32 (H, W, C) in [0, 1]."""
    if path.suffix.lower() == ".png":
        pixels, depth = decode_png(path.read_bytes(), path)
    else:
        pixels, depth = _with_pillow(path)
    return (pixels.astype(np.float32) / np.float32(2**depth - 1)).astype(np.float32)


def _with_pillow(path: Path) -> tuple[np.ndarray, int]:
    try:
        from PIL import Image  # optional: only formats other than PNG need it
    except ImportError as exc:
        raise DataError(f"reading {path.suffix} images needs Pillow.", "pip install pillow, or convert the images to PNG") from exc
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB" if img.mode not in ("L", "RGB", "RGBA") else img.mode))
    except OSError as exc:
        raise DataError(f"cannot read the image {path}: {exc}", "check that the file is a valid image") from exc
    return (arr[..., None] if arr.ndim == 2 else arr), 8


def decode_png(data: bytes, where: Path | str = "PNG data") -> tuple[np.ndarray, int]:
    """(H, W, C) unsigned integer pixels and their bit depth; DataError for anything unsupported."""
    if not data.startswith(PNG_SIGNATURE):
        raise DataError(f"{where} is not a PNG file.", "check the file, or give it the suffix of its real format")
    chunks = _chunks(data, where)
    width, height, depth, colour, interlace = _header(chunks, where)
    try:
        raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    except zlib.error as exc:
        raise DataError(f"{where}: corrupt image data ({exc}).", "re-export the image") from exc
    channels = _CHANNELS[colour]
    pixel_bytes = max(1, channels * depth // 8)
    rows = _unfilter(raw, height, -(-width * channels * depth // 8), pixel_bytes, where)
    if depth == 16:
        pixels = rows.view(">u2").astype(np.uint16)
    elif depth < 8:
        pixels = _unpack(rows, depth, width)
    else:
        pixels = rows
    pixels = pixels.reshape(height, width, channels)
    if colour == 3:
        return _palette(chunks, pixels[..., 0], where), 8
    return pixels, depth


def _unpack(rows: np.ndarray, depth: int, width: int) -> np.ndarray:
    """1-, 2- or 4-bit samples, packed from the high bits of each byte, one value each."""
    shifts = np.arange(8 - depth, -1, -depth, dtype=np.uint8)
    values = (rows[:, :, None] >> shifts) & np.uint8(2**depth - 1)
    return values.reshape(len(rows), -1)[:, :width]


def _chunks(data: bytes, where: Path | str) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body, crc = data[pos + 8 : pos + 8 + length], data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4 or zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise DataError(f"{where}: the PNG is truncated or corrupt (chunk {kind!r}).", "re-export the image")
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            return chunks
    raise DataError(f"{where}: the PNG is truncated (no IEND chunk).", "re-export the image")


def _header(chunks: list[tuple[bytes, bytes]], where: Path | str) -> tuple[int, int, int, int, int]:
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise DataError(f"{where}: the PNG has no valid header.", "re-export the image")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    # Bit depths below 8 exist only for grey (0) and palette (3) images.
    allowed = (1, 2, 4, 8, 16) if colour == 0 else (1, 2, 4, 8) if colour == 3 else (8, 16)
    if colour not in _CHANNELS or depth not in allowed or interlace:
        raise DataError(
            f"{where}: unsupported PNG (bit depth {depth}, colour type {colour}, interlace {interlace}).",
            "save it as a non-interlaced PNG, or install Pillow and use another format",
        )
    return width, height, depth, colour, interlace


def _unfilter(raw: bytes, height: int, stride: int, bpp: int, where: Path | str) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth) into (height, stride) bytes."""
    if len(raw) != height * (stride + 1):
        raise DataError(f"{where}: the image data has the wrong size.", "re-export the image")
    lines = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = lines[y, 0], lines[y, 1:]
        if kind > 4:
            raise DataError(f"{where}: unknown PNG filter {kind} in row {y}.", "re-export the image")
        out[y] = _unfilter_row(int(kind), line, previous, bpp)
        previous = out[y]
    return out


def _unfilter_row(kind: int, line: np.ndarray, up: np.ndarray, bpp: int) -> np.ndarray:
    if kind == 0:
        return line
    if kind == 2:
        return line + up  # uint8 arithmetic wraps modulo 256, as the filter defines
    if kind == 1:
        # Sub: each byte adds the one bpp before it, i.e. a running sum per byte position mod bpp.
        padded = np.concatenate([line, np.zeros((-len(line)) % bpp, np.uint8)]).reshape(-1, bpp)
        return np.cumsum(padded, axis=0, dtype=np.uint8).reshape(-1)[: len(line)]
    # Average and Paeth depend on the byte just decoded: a sequential loop over the row.
    cur = bytearray(line.tobytes())
    above = up.tobytes()
    for i in range(len(cur)):
        left = cur[i - bpp] if i >= bpp else 0
        corner = above[i - bpp] if i >= bpp else 0
        predictor = (left + above[i]) // 2 if kind == 3 else _paeth(left, above[i], corner)
        cur[i] = (cur[i] + predictor) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _palette(chunks: list[tuple[bytes, bytes]], indices: np.ndarray, where: Path | str) -> np.ndarray:
    table = b"".join(body for kind, body in chunks if kind == b"PLTE")
    colours = np.frombuffer(table, np.uint8).reshape(-1, 3) if table and len(table) % 3 == 0 else None
    if colours is None or indices.max() >= len(colours):
        raise DataError(f"{where}: the palette image has a missing or short palette.", "re-export the image as RGB")
    return colours[indices]
