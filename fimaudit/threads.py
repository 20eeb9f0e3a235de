"""numpy's and scipy's BLAS held to one thread while a local audit runs.

The engine runs the model on a worker thread while the estimators compute on the main one. A
local model's framework (onnxruntime, torch) already uses every core; numpy's BLAS then starts as
many threads again for the estimators' products, and the two pools oversubscribe the cores. On
EfficientNet-Lite1 on 2 cores that made the audit take 2.29x raw inference, against 1.03x with
numpy's BLAS on one thread (docs/benchmarks/overhead_efficientnet.md). The estimators' products are
small (r x r, k x K) and gain little from threads.

Only the OpenBLAS libraries that numpy and scipy load (found in /proc/self/maps, under their
`numpy.libs` / `scipy.libs` folders) are touched, never a model framework's own BLAS, and their
thread counts are restored afterwards. Where none is found (another platform, another BLAS), this
does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from pathlib import Path

# Symbol prefixes of OpenBLAS builds: plain, and the scipy-openblas wheels' (with 64-bit ints: suffix 64_).
_PREFIXES = ("openblas", "scipy_openblas")
_SUFFIXES = ("", "64_")
_OWNERS = ("numpy.libs", "scipy.libs", "numpy", "scipy")

Control = tuple[Callable[[], int], Callable[[int], None]]


def numpy_blas_libraries(maps: Path = Path("/proc/self/maps")) -> list[Path]:
    """The OpenBLAS shared libraries numpy and scipy have loaded into this process."""
    try:
        # Bytes, decoded as the OS names files: a mapped file's name need not be UTF-8.
        lines = os.fsdecode(maps.read_bytes()).splitlines()
    except OSError:
        return []
    found = {Path(line.split()[-1]) for line in lines if len(line.split()) >= 6 and "openblas" in line.split()[-1].lower()}
    return sorted(p for p in found if p.parent.name in _OWNERS)


def _control(path: Path) -> Control | None:
    """get_num_threads / set_num_threads of one OpenBLAS library, or None."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                return get, put
    return None


def blas_thread_counts() -> list[int]:
    """The thread count of each numpy/scipy OpenBLAS library loaded (for tests and diagnostics)."""
    return [control[0]() for control in filter(None, map(_control, numpy_blas_libraries()))]


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold numpy's and scipy's OpenBLAS to one thread inside the block; restore them after."""
    saved: list[tuple[Control, int]] = []
    for control in filter(None, map(_control, numpy_blas_libraries())):
        saved.append((control, control[0]()))
        control[1](1)
    try:
        yield
    finally:
        for (_, put), count in saved:
            put(count)
