"""Audited inputs: loading them from files and checking them against the model's input spec."""
from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fimaudit.errors import DataError
from fimaudit.images import SkippedFile, read_image_folder
from fimaudit.adapter import InputSpec

# Bounds one chunk's float64 working copy: a scan's memory stays a few MiB whatever the file's size.
_CHUNK_BYTES = 4 * 2**20


@dataclass(frozen=True)
class InputSet:
    """Inputs as read from --data, with the files they came from when that was an image folder."""

    x: np.ndarray
    names: list[str] | None = None  # names[i]: the file of input i (image folders); None for array files
    skipped: list[SkippedFile] = field(default_factory=list)  # unreadable images left out by skip_unreadable


def load_inputs(path: str | Path, shape: tuple[int, ...] | None = None, *, skip_unreadable: bool = False) -> np.ndarray:
    """Read inputs from .npy, .npz (array 'x' or the only array), .csv (one input a row, or one
    flattened input a row) or a folder of images (float32 in [0, 1], arranged to `shape`, the
    model's input shape, channels converted to the model's)."""
    return load_input_set(path, shape, skip_unreadable=skip_unreadable).x


def load_input_set(path: str | Path, shape: tuple[int, ...] | None = None, *, skip_unreadable: bool = False) -> InputSet:
    """load_inputs, keeping which file each input came from and which unreadable images
    skip_unreadable left out (it has no effect on array files, which are read whole or not at all)."""
    p = Path(path)
    if p.is_dir():
        folder = read_image_folder(p, shape, skip_unreadable=skip_unreadable)
        return InputSet(folder.pixels, folder.names, folder.skipped)
    x = _load_array_file(p)
    return InputSet(x if shape is None else fit_to_spec(x, InputSpec(tuple(shape))))


def _load_array_file(p: Path) -> np.ndarray:
    if not p.is_file():
        raise DataError(f"the data file {p} does not exist.", "pass --data PATH to an existing .npy, .npz or .csv file or an image folder")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            # Memory-mapped: inputs are read as they are audited, never all held at once.
            return np.load(p, allow_pickle=False, mmap_mode="r")  # never unpickle an untrusted file
        if suffix == ".npz":
            return _from_npz(p)
        if suffix == ".csv":
            return _from_csv(p)
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {p} as {suffix} data: {exc}", "check that the file is a valid, non-pickled array file") from exc
    raise DataError(f"unsupported data file type '{suffix}' ({p}).", "use .npy, .npz (array named 'x'), .csv or a folder of images")


def _from_npz(p: Path) -> np.ndarray:
    with np.load(p, allow_pickle=False) as archive:
        names = list(archive.files)
        if "x" in names:
            return archive["x"]
        if len(names) == 1:
            return archive[names[0]]
    raise DataError(f"{p} holds arrays {names} and none is named 'x'.", "save the inputs under the name 'x' (np.savez(path, x=inputs))")


def _from_csv(p: Path) -> np.ndarray:
    with p.open() as f:
        first = f.readline()
    return np.loadtxt(p, delimiter=",", skiprows=1 if _is_header(first) else 0, ndmin=2)


def _is_header(line: str) -> bool:
    """A first row with a field that is not a number ('nan' and 'inf' are numbers: such rows are
    data, and check_inputs reports them, rather than being dropped as a header)."""
    for value in line.strip().split(","):
        try:
            float(value)
        except ValueError:
            return bool(line.strip())
    return False


def check_inputs(x: object, spec: InputSpec) -> tuple[np.ndarray, DataStats]:
    """The inputs as an (n, *spec.shape) array, or a DataError naming what is wrong."""
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"the inputs have dtype {arr.dtype}, not numbers.", "pass a numeric array (float32 or float64)")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError("the inputs are complex numbers.", "pass real-valued inputs")
    shape = tuple(spec.shape)
    if arr.shape == shape:
        arr = arr[None]  # one input without a batch axis
    if arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
        raise DataError("there are no inputs to audit (the array is empty).", "pass at least one input")
    if tuple(arr.shape[1:]) != shape:
        raise DataError(_shape_message(arr.shape, shape), _shape_fix(arr.shape, shape))
    stats = scan(arr)
    if stats.bad_rows:
        raise DataError(
            f"{stats.bad_rows} input(s) contain NaN or infinite values (first at index {stats.first_bad}).",
            "drop or repair those rows before auditing",
        )
    dtype = np.dtype(spec.dtype)
    limit = float(np.finfo(dtype).max) / 1e3 if dtype.kind == "f" else np.inf
    if stats.peak > limit:
        raise DataError(
            f"the inputs reach magnitude {stats.peak:.3g}, too close to the largest {spec.dtype} ({np.finfo(dtype).max:.3g}) to perturb.",
            "scale the inputs the way the model expects (e.g. pixels in [0, 1] or standardized)",
        )
    return arr, stats


@dataclass(frozen=True)
class DataStats:
    """What one streaming pass over the inputs learns (memory-mapped arrays stay on disk)."""

    sha256: str
    std: float
    peak: float
    bad_rows: int
    first_bad: int | None


def fit_to_spec(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """`arr` as (n, *spec.shape) when it holds one flattened input a row, as a CSV file or an .npy
    of shape (n, d) does, and d is the model's input size; otherwise `arr` as it is.

    A row is the input flattened in C order in the model's own layout (x.reshape(len(x), -1)):
    reshaped in C order, the bytes and so the data's digest are those of the shaped array.
    For files only (load_inputs with a shape, the CLI): check_inputs keeps refusing a flattened
    array passed to the SDK, whose caller has numpy at hand and gets the reshape in the error,
    where a CSV file has no way to hold anything but rows.
    """
    shape = tuple(spec.shape)
    if arr.ndim == 2 and arr.shape[1:] != shape and arr.shape[1] == spec.size:
        return arr.reshape(len(arr), *shape)
    return arr


def scan(arr: np.ndarray) -> DataStats:
    """sha256 of the C-order bytes, standard deviation, peak magnitude and non-finite rows, by chunks.

    Memory stays bounded by the chunk size, not the data: a memory-mapped file is read chunk by
    chunk with ordinary reads (see _file_chunks), so even the whole of a 20 GB .npy never counts
    towards this process's memory.
    """
    h = hashlib.sha256()
    count, mean, m2, peak, bad, first_bad = 0, 0.0, 0.0, 0.0, 0, None
    for start, chunk in _chunks(arr):
        h.update(chunk.data)  # C-contiguous: hashed in place, no bytes copy
        values = chunk.reshape(len(chunk), -1)
        finite = _finite_rows(values)
        if finite is not None:
            bad += int((~finite).sum())
            first_bad = first_bad if first_bad is not None else start + int(np.flatnonzero(~finite)[0])
            values = values[finite]
        if values.size:
            n, chunk_mean, chunk_m2, chunk_peak = _moments(values)
            count, mean, m2 = _merge(count, mean, m2, n, chunk_mean, chunk_m2)
            peak = max(peak, chunk_peak)
    std = float(np.sqrt(m2 / count)) if count else 0.0
    return DataStats(h.hexdigest(), std, peak, bad, first_bad)


def _rows_per_chunk(arr: np.ndarray) -> int:
    # Sized by the float64 copy _moments makes, the largest thing a chunk costs.
    per_row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * 8)
    return max(1, _CHUNK_BYTES // per_row)


def _chunks(arr: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, C-contiguous rows) over the array; a chunk is only valid until the next one."""
    window = _file_window(arr)
    if window is not None:
        yield from _file_chunks(arr, *window)
        return
    per_chunk = _rows_per_chunk(arr)
    for start in range(0, len(arr), per_chunk):
        yield start, np.ascontiguousarray(arr[start : start + per_chunk])


def _file_window(arr: np.ndarray) -> tuple[str, int] | None:
    """(file name, byte offset of arr's first element) for a C-contiguous memory-mapped array.

    Pages read through a map stay resident, and counted in RSS, until the map is closed, which the
    caller still needs open; so the scan reads the same bytes from the file instead.
    """
    if not isinstance(arr, np.memmap) or not arr.filename or not arr.flags.c_contiguous or arr.size == 0:
        return None
    mapping: object = arr
    while isinstance(mapping, np.ndarray):
        mapping = mapping.base
    if not isinstance(mapping, mmap.mmap):
        return None
    map_start = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    # np.memmap maps from the allocation boundary below its offset (see numpy.memmap.__new__).
    map_offset = arr.offset - arr.offset % mmap.ALLOCATIONGRANULARITY
    return str(arr.filename), map_offset + (arr.ctypes.data - map_start)


def _file_chunks(arr: np.ndarray, filename: str, offset: int) -> Iterator[tuple[int, np.ndarray]]:
    per_chunk = _rows_per_chunk(arr)
    row_bytes = arr[0].nbytes
    buffer = bytearray(per_chunk * row_bytes)  # reused: one chunk's worth of memory in all
    with open(filename, "rb") as f:
        f.seek(offset)
        for start in range(0, len(arr), per_chunk):
            rows = min(per_chunk, len(arr) - start)
            view = memoryview(buffer)[: rows * row_bytes]
            if f.readinto(view) != len(view):
                raise DataError(f"the data file {filename} ended early (truncated while being read?).",
                                "check the file is complete and not being written to, then rerun")
            yield start, np.frombuffer(view, dtype=arr.dtype).reshape(rows, *arr.shape[1:])


def _finite_rows(values: np.ndarray) -> np.ndarray | None:
    """Which rows are all finite, or None when all are (the common case costs one check)."""
    if values.dtype.kind not in "fc":
        return None  # integers and booleans are always finite
    finite = np.isfinite(values).all(axis=1)
    return None if finite.all() else finite


def _moments(values: np.ndarray) -> tuple[int, float, float, float]:
    """(count, mean, sum of squared deviations, peak magnitude) of a chunk, in float64."""
    work = values.astype(np.float64).ravel()
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        peak = float(max(work.max(), -work.min()))
        chunk_mean = float(work.mean())
        work -= chunk_mean  # in place: no second copy
        chunk_m2 = float(np.dot(work, work))
    return work.size, chunk_mean, chunk_m2, peak


def _merge(count: int, mean: float, m2: float, n: int, chunk_mean: float, chunk_m2: float) -> tuple[int, float, float]:
    """Merge a chunk into running (count, mean, sum of squared deviations): Chan et al.'s update."""
    total = count + n
    delta = chunk_mean - mean
    return total, mean + delta * n / total, m2 + chunk_m2 + delta * delta * count * n / total


def _flat_rows_of_another_size(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(got) == 2 and len(want) > 1 and got[1] != int(np.prod(want))


def _shape_message(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    d = int(np.prod(want))
    if _flat_rows_of_another_size(got, want):
        return (f"the inputs have shape {got}: rows of {got[1]} values, but the model takes inputs of shape "
                f"(n, {', '.join(map(str, want))}), {d} values each.")
    return f"the inputs have shape {got}, but the model takes inputs of shape (n, {', '.join(map(str, want))})."


def _shape_fix(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    d = int(np.prod(want))
    if _flat_rows_of_another_size(got, want):
        return f"pass one input flattened to {d} values a row (x.reshape(len(x), -1)), or an array of shape (n, {', '.join(map(str, want))})"
    if len(got) >= 2 and int(np.prod(got[1:])) == d:
        return f"reshape them: x.reshape(len(x), {', '.join(map(str, want))})"
    if len(got) == len(want) + 1 and got[1:] == want[::-1][: len(want)]:
        return "the axes look permuted (channels-last vs channels-first); transpose them"
    return f"pass inputs of shape (n, {', '.join(map(str, want))})"


def digest(arr: np.ndarray) -> str:
    """sha256 of the array's C-order bytes: together with shape and dtype it identifies the data."""
    return scan(arr).sha256


def input_scale(stats: DataStats) -> float:
    """The spread of the inputs (their standard deviation) that default step sizes are relative to."""
    # Constant or absurdly scaled data: fall back to the magnitude, then to unit scale.
    for candidate in (stats.std, stats.peak):
        if 1e-100 < candidate < 1e100:
            return candidate
    return 1.0


# --sample's draw, written down so that anyone can redo it without fimaudit or numpy: numpy's
# Generator streams may change between numpy versions, a committed selection must not.
SAMPLE_DOMAIN = b"fimaudit-sample/1\0"
SAMPLE_RULE = (
    "uniform without replacement, by Floyd's algorithm: for j = P-N .. P-1 take t = U_j mod (j+1) and add t, or j "
    "when t is already drawn; U_j is the big-endian integer of sha256('fimaudit-sample/1' NUL, decimal seed, NUL, "
    "the 32 bytes of population_sha256, j as 8 big-endian bytes); indices sorted ascending"
)


def draw_sample(population: int, n: int, seed: int, population_sha256: str) -> list[int]:
    """N distinct row indices of a population of P rows, sorted, drawn as SAMPLE_RULE says.

    The draw is seeded by the audit seed and the data's digest together, so a different
    selection needs a different recorded seed (or data): it cannot be re-rolled unseen.
    Floyd's algorithm costs N hashes whatever P is, and never holds a list of all P rows.
    """
    if not 0 < n <= population:
        raise ValueError(f"cannot draw {n} of {population} rows")
    base = hashlib.sha256(SAMPLE_DOMAIN + str(int(seed)).encode("ascii") + b"\0" + bytes.fromhex(population_sha256))
    chosen: set[int] = set()
    for j in range(population - n, population):
        h = base.copy()
        h.update(j.to_bytes(8, "big"))
        # A 256-bit number reduced mod j+1 < 2**63: the bias is below 2**-190.
        t = int.from_bytes(h.digest(), "big") % (j + 1)
        chosen.add(j if t in chosen else t)
    return sorted(chosen)


def indices_sha256(indices: Sequence[int]) -> str:
    """sha256 of the indices written in decimal, comma-separated, ascending: easy to recompute anywhere.

    Hashed by pieces, so the first ten million rows of a --limit cost no ten-million-item string."""
    ordered = indices if isinstance(indices, range) and indices.step > 0 else sorted(indices)
    h = hashlib.sha256()
    for start in range(0, len(ordered), 65536):
        piece = ",".join(str(int(i)) for i in ordered[start : start + 65536])
        h.update((piece if start == 0 else "," + piece).encode("ascii"))
    return h.hexdigest()


def rows_digest(arr: np.ndarray, rows: Sequence[int]) -> str:
    """sha256 of arr[rows]'s C-order bytes (what `digest` gives for that array), one row at a time:
    a memory-mapped file is read only at the chosen rows, never loaded whole."""
    h = hashlib.sha256()
    for i in rows:
        h.update(np.ascontiguousarray(arr[i]).data)
    return h.hexdigest()
