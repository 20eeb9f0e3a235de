"""numpy's BLAS held to one thread during a local audit, and given back afterwards."""
from __future__ import annotations

import numpy as np
import pytest

import fimaudit
from fimaudit import CallableModel, InputSpec
from fimaudit.threads import blas_thread_counts, numpy_blas_libraries, single_threaded_blas

needs_openblas = pytest.mark.skipif(not numpy_blas_libraries(), reason="numpy/scipy here use no OpenBLAS of their own wheels")


@needs_openblas
def test_blas_is_single_threaded_inside_and_restored_after() -> None:
    before = blas_thread_counts()
    assert before and len(before) == len(numpy_blas_libraries())
    with single_threaded_blas():
        assert blas_thread_counts() == [1] * len(before)
    assert blas_thread_counts() == before


@needs_openblas
def test_a_local_audit_runs_with_one_blas_thread_and_gives_it_back() -> None:
    seen: list[list[int]] = []
    w = np.random.default_rng(0).standard_normal((3, 4096))

    def predict(x: np.ndarray) -> np.ndarray:
        seen.append(blas_thread_counts())  # called while the estimators run on the main thread
        z = x @ w.T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    before = blas_thread_counts()
    model = CallableModel(predict, InputSpec((4096,), "float64"), 3)
    fimaudit.audit(model, np.random.default_rng(1).uniform(size=(2, 4096)), directions=16, seed=0)
    one = [1] * len(before)
    if before == one:
        pytest.skip("numpy's BLAS already runs one thread here (a single core): nothing to hold")
    start = seen.index(one)  # the model's load-time probes (batch dependence) run before the audit proper
    assert len(seen) - start >= 3 and all(counts == one for counts in seen[start:])
    assert blas_thread_counts() == before


def test_no_maps_file_means_nothing_is_touched(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert numpy_blas_libraries(tmp_path / "absent") == []
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libopenblas.so.0\n")
    assert numpy_blas_libraries(maps) == []  # a system OpenBLAS (a framework's, perhaps) is left alone


def test_a_mapped_file_with_a_non_utf8_name_is_no_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    maps = tmp_path / "maps"
    maps.write_bytes(b"7f00-7f01 r--p 00000000 08:01 2 /data/x\xff.npy\n"
                     b"7f02-7f03 r-xp 00000000 08:01 3 /venv/site-packages/numpy.libs/libscipy_openblas64_-1.so\n")
    assert [p.name for p in numpy_blas_libraries(maps)] == ["libscipy_openblas64_-1.so"]
