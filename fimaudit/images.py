"""Folders of images as audit inputs.

PNG is decoded here with the standard library's zlib (grey of 1 to 16 bits, grey+alpha, RGB and
RGBA of 8 or 16 bits, palette images; not interlaced, not animated), so the core needs no imaging
library; other formats (JPEG, BMP, ...) are read through Pillow when it is installed. Pixels become
float32 in [0, 1], laid out as the model's input takes them (channels first or last, grey with or
without a channel axis), with the channels converted to the model's: alpha dropped, grey repeated
into RGB, RGB reduced to grey by the BT.601 luminance. Any other preprocessing (mean/std
normalisation, resizing) belongs in an .npy file.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fimaudit.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PILLOW_SUFFIXES = {".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGE_SUFFIXES = {".png"} | PILLOW_SUFFIXES
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_MODES = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}  # samples per pixel -> what they mean
# ITU-R BT.601 luma weights, those of Pillow's convert("L") and OpenCV's RGB2GRAY; applied in
# float, so a grey input keeps the precision an 8-bit conversion would round away.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
SKIP_HINT = "or pass --skip-unreadable (skip_unreadable=True) to audit the other images without it"


class UnreadableImage(DataError):
    """A file that cannot be decoded as one image (corrupt, truncated, multipage, not an image).

    The only failure skip_unreadable skips: a wrong size or a missing library is not the file's
    fault alone, and skipping it could silently drop most of a folder.
    """

    def __init__(self, where: Path | str, reason: str, fix: str = "re-export the image") -> None:
        self.where = where
        self.reason = reason  # names no path: the report records it beside the file's own name
        super().__init__(f"cannot read the image {where}: {reason}.", fix)


@dataclass(frozen=True)
class SkippedFile:
    """An image file left out of the audit by skip_unreadable, and why."""

    name: str  # relative to the folder, as ImageFolder.names
    reason: str


@dataclass(frozen=True)
class ImageFolder:
    """The readable images under a folder, in sorted file order."""

    pixels: np.ndarray  # (n, *shape) float32 in [0, 1]; (n, H, W, C) when no shape was given
    names: list[str]  # names[i] is the file pixels[i] came from, relative to the folder
    skipped: list[SkippedFile]  # files left out by skip_unreadable, in sorted order


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder` (recursively, e.g. one subfolder per class), in sorted order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"the folder {folder} holds no images.", f"put files with suffixes {sorted(IMAGE_SUFFIXES)} in it")
    return files


def load_image_folder(folder: Path, shape: tuple[int, ...] | None = None, *, skip_unreadable: bool = False) -> np.ndarray:
    """All images under `folder` as one float32 array (n, *shape), pixel values in [0, 1]."""
    return read_image_folder(folder, shape, skip_unreadable=skip_unreadable).pixels


def read_image_folder(folder: Path, shape: tuple[int, ...] | None = None, *, skip_unreadable: bool = False) -> ImageFolder:
    """The images under `folder`, each fitted to `shape` (the model's input shape), with their
    file names; with skip_unreadable, files that cannot be decoded are left out and listed."""
    pixels: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[SkippedFile] = []
    for path in image_files(folder):
        name = relative_name(path, folder)
        try:
            image = read_image(path)
        except UnreadableImage as exc:
            if not skip_unreadable:
                raise UnreadableImage(path, exc.reason, f"{exc.fix}; or remove the file, {SKIP_HINT}") from exc
            skipped.append(SkippedFile(name, exc.reason))
            continue
        pixels.append(image if shape is None else fit_image(image, tuple(shape), path))
        names.append(name)
    if not pixels:
        first = skipped[0]
        raise DataError(f"none of the {len(skipped)} images under {folder} can be read (first: {first.name}: {first.reason}).",
                        "check the files are valid images")
    if shape is None:
        _require_one_size(pixels, names, folder)
    return ImageFolder(np.stack(pixels), names, skipped)


def relative_name(path: Path, folder: Path) -> str:
    """The file's path under the folder, '/'-separated, undecodable bytes written as \\xNN (JSON-safe)."""
    return os.fsencode(path.relative_to(folder).as_posix()).decode("utf-8", "backslashreplace")


def _require_one_size(images: list[np.ndarray], names: list[str], folder: Path) -> None:
    # Without the model's shape there is no target to convert channels to: all must agree as read.
    for image, name in zip(images, names):
        if image.shape != images[0].shape:
            raise DataError(
                f"the images under {folder} differ in size: {name} is {_describe(image)}, but {names[0]} is {_describe(images[0])}.",
                "resize them to one size (the model's input size) first",
            )


def _describe(image: np.ndarray) -> str:
    h, w, c = image.shape
    return f"{h}x{w} with {c} channel(s)"


def fit_image(image: np.ndarray, shape: tuple[int, ...], where: Path | str) -> np.ndarray:
    """One (H, W, C) image in the model's layout `shape`: (C, H, W), (H, W, C) or (H, W), its
    channels converted to the model's; a DataError naming `where` (the file) when it cannot fit."""
    shape = tuple(int(v) for v in shape)
    layout = _layout(shape, image.shape)
    if layout is None:
        raise DataError(
            f"the image {where} is {_describe(image)}, but the model takes inputs of shape {shape}.",
            "resize or convert the images to the model's input size and channels, or pass an .npy file",
        )
    kind, channels = layout
    converted = convert_channels(image, channels)
    if converted is None:
        raise DataError(
            f"the image {where} is {_MODES.get(image.shape[2], '?')} ({image.shape[2]} channel(s)), which has no standard "
            f"conversion to the {channels} channels the model takes (shape {shape}).",
            "convert the images to the model's channels, or pass an .npy file",
        )
    if kind == "chw":
        return converted.transpose(2, 0, 1)
    return converted[..., 0] if kind == "hw" else converted


def _layout(shape: tuple[int, ...], image_shape: tuple[int, ...]) -> tuple[str, int] | None:
    """How an image of `image_shape` (H, W, C) fits the model's `shape`: ('hw', 1), ('hwc', C)
    or ('chw', C), or None when its height and width fit no reading of `shape`."""
    h, w, c = image_shape
    if shape == (h, w):
        return "hw", 1
    if len(shape) != 3:
        return None
    readings = [(kind, size[0]) for kind, size, hw in (("hwc", shape[2:], shape[:2]), ("chw", shape[:1], shape[1:])) if hw == (h, w)]
    # Best first: no conversion, then a standard one. The sort is stable and channels-last is
    # listed first, so where both fit equally (a 3x3 RGB image, a (3, 3, 3) model) it is the
    # reading taken before channel conversion existed.
    ranked = sorted(readings, key=lambda reading: (reading[1] != c, reading[1] not in (1, 3)))
    return ranked[0] if ranked else None


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray | None:
    """(H, W, C) pixels with `channels` channels, or None when there is no standard conversion.

    Alpha is dropped, not composited: the background it would be composited on is unknown, and
    the colour channels are what the picture holds. Grey becomes RGB by repetition; RGB becomes
    grey by the BT.601 luminance.
    """
    c = image.shape[2]
    if c == channels:
        return image
    if c in (2, 4):
        image, c = image[..., : c - 1], c - 1
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if c == 3 and channels == 1:
        return luminance(image)
    return None


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] as (H, W, 1) float32 grey, by the BT.601 weights."""
    return (rgb.astype(np.float64) @ LUMA_WEIGHTS).astype(np.float32)[..., None]


def read_image(path: Path) -> np.ndarray:
    """One image as float32 (H, W, C) in [0, 1]; UnreadableImage, naming the file, when the
    file cannot be decoded as one image."""
    if path.suffix.lower() == ".png":
        pixels, depth = decode_png(_read_bytes(path), path)
    else:
        pixels, depth = _with_pillow(path)
    return (pixels.astype(np.float32) / np.float32(2**depth - 1)).astype(np.float32)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnreadableImage(path, f"the file cannot be read ({exc.strerror or type(exc).__name__})", "check its permissions") from exc


def _with_pillow(path: Path) -> tuple[np.ndarray, int]:
    try:
        from PIL import Image  # optional: only formats other than PNG need it
    except ImportError as exc:
        # Not UnreadableImage: every such file would be skipped for want of a library.
        raise DataError(f"reading {path.suffix} images ({path}) needs Pillow.", "pip install pillow, or convert the images to PNG") from exc
    # What Pillow raises on a malformed file: OSError (incl. truncated and unidentified files),
    # SyntaxError and ValueError from plugins' parsers, EOFError, struct.error, and its bomb guard.
    failures = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
    try:
        with Image.open(path) as img:
            _require_one_frame(path, getattr(img, "n_frames", 1))
            arr = np.asarray(img.convert("RGB" if img.mode not in ("L", "RGB", "RGBA") else img.mode))
    except failures as exc:
        # Pillow's messages quote the full path; the reason is recorded beside the file's name.
        reason = str(exc).replace(str(path), path.name) or type(exc).__name__
        raise UnreadableImage(path, f"Pillow cannot decode it ({reason})", "check that the file is a valid image") from exc
    return (arr[..., None] if arr.ndim == 2 else arr), 8


def _require_one_frame(where: Path | str, frames: int) -> None:
    # An input is one image: auditing the first page alone would silently drop the rest.
    if frames > 1:
        raise UnreadableImage(
            where, f"it holds {frames} images (a multipage or animated file), and an input is one image",
            "save each page as its own file",
        )


def decode_png(data: bytes, where: Path | str = "PNG data") -> tuple[np.ndarray, int]:
    """(H, W, C) unsigned integer pixels and their bit depth; UnreadableImage (a DataError) for
    anything unsupported."""
    if not data.startswith(PNG_SIGNATURE):
        raise UnreadableImage(where, "not a PNG file", "check the file, or give it the suffix of its real format")
    chunks = _chunks(data, where)
    width, height, depth, colour, _ = _header(chunks, where)  # interlaced images were refused
    _require_one_frame(where, _animation_frames(chunks))
    try:
        raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    except zlib.error as exc:
        raise UnreadableImage(where, f"corrupt image data ({exc})") from exc
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


def _animation_frames(chunks: list[tuple[bytes, bytes]]) -> int:
    """Frames of an animated PNG (its acTL chunk), 1 for a still one: the IDAT is only the first."""
    control = next((body for kind, body in chunks if kind == b"acTL" and len(body) == 8), None)
    return struct.unpack(">I", control[:4])[0] if control is not None else 1


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
            raise UnreadableImage(where, f"the PNG is truncated or corrupt (chunk {kind!r})")
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            return chunks
    raise UnreadableImage(where, "the PNG is truncated (no IEND chunk)")


def _header(chunks: list[tuple[bytes, bytes]], where: Path | str) -> tuple[int, int, int, int, int]:
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise UnreadableImage(where, "the PNG has no valid header")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    # Bit depths below 8 exist only for grey (0) and palette (3) images.
    allowed = (1, 2, 4, 8, 16) if colour == 0 else (1, 2, 4, 8) if colour == 3 else (8, 16)
    if colour not in _CHANNELS or depth not in allowed or interlace:
        raise UnreadableImage(
            where, f"unsupported PNG (bit depth {depth}, colour type {colour}, interlace {interlace})",
            "save it as a non-interlaced PNG, or install Pillow and use another format",
        )
    return width, height, depth, colour, interlace


def _unfilter(raw: bytes, height: int, stride: int, bpp: int, where: Path | str) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth) into (height, stride) bytes."""
    if len(raw) != height * (stride + 1):
        raise UnreadableImage(where, "the image data has the wrong size")
    lines = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = lines[y, 0], lines[y, 1:]
        if kind > 4:
            raise UnreadableImage(where, f"unknown PNG filter {kind} in row {y}")
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
        raise UnreadableImage(where, "the palette image has a missing or short palette", "re-export the image as RGB")
    return colours[indices]
