"""Audited inputs: loading them from files and checking them against the model's input spec."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fimaudit.errors import DataError
from fimaudit.images import load_image_folder
from fimaudit.model import InputSpec

_CHUNK_BYTES = 32 * 2**20


def load_inputs(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read inputs from .npy, .npz (array 'x' or the only array), .csv (one input a row) or a
    folder of images (float32 in [0, 1], arranged to `shape`, the model's input shape)."""
    p = Path(path)
    if p.is_dir():
        return load_image_folder(p, shape)
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
    for field in line.strip().split(","):
        try:
            float(field)
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


def scan(arr: np.ndarray) -> DataStats:
    """sha256 of the C-order bytes, standard deviation, peak magnitude and non-finite rows, by chunks."""
    h = hashlib.sha256()
    n_rows = len(arr)
    per_chunk = max(1, _CHUNK_BYTES // max(1, arr[0].nbytes))
    count, mean, m2, peak, bad, first_bad = 0, 0.0, 0.0, 0.0, 0, None
    for start in range(0, n_rows, per_chunk):
        chunk = np.ascontiguousarray(arr[start : start + per_chunk])
        h.update(chunk.tobytes())
        values = chunk.reshape(len(chunk), -1).astype(np.float64)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            bad += int((~finite).sum())
            first_bad = first_bad if first_bad is not None else start + int(np.flatnonzero(~finite)[0])
            values = values[finite]
        if values.size:
            with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                count, mean, m2 = _welford(count, mean, m2, values)
            peak = max(peak, float(np.abs(values).max()))
    std = float(np.sqrt(m2 / count)) if count else 0.0
    return DataStats(h.hexdigest(), std, peak, bad, first_bad)


def _welford(count: int, mean: float, m2: float, values: np.ndarray) -> tuple[int, float, float]:
    """Merge a chunk into running (count, mean, sum of squared deviations): Chan et al.'s update."""
    n = values.size
    chunk_mean = float(values.mean())
    chunk_m2 = float(((values - chunk_mean) ** 2).sum())
    total = count + n
    delta = chunk_mean - mean
    return total, mean + delta * n / total, m2 + chunk_m2 + delta * delta * count * n / total


def _shape_message(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    return f"the inputs have shape {got}, but the model takes inputs of shape (n, {', '.join(map(str, want))})."


def _shape_fix(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    d = int(np.prod(want))
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
