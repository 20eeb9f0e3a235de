"""The query engine itself: batching, pipelining, failures named by sample, prompt interrupts."""
from __future__ import annotations

import ast
import threading
import time
from collections.abc import Generator

import numpy as np
import pytest

from fimaudit.engine import QueryEngine, TransientQueryError
from fimaudit.errors import EstimationError, QueryError
from fimaudit.model import CallableModel, InputSpec

SPEC = InputSpec(shape=(3,), dtype="float64")


def softmax_rows(batch: np.ndarray) -> np.ndarray:
    z = np.stack([batch.sum(axis=1), -batch.sum(axis=1)], axis=1)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def echo_task(rows: list[int]) -> Generator[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Asks for one block per entry of `rows` (that many inputs each) and returns the answers."""
    answers = []
    for i, n in enumerate(rows):
        answers.append((yield np.full((n, 3), float(i))))
    return answers


def run(engine: QueryEngine, tasks: dict[int, Generator]) -> dict[int, object]:  # type: ignore[type-arg]
    results: dict[int, object] = {}
    engine.run(tasks.items(), lambda key, value: results.__setitem__(key, value))
    engine.close()
    return results


@pytest.mark.parametrize("concurrency", [1, 3])
def test_every_sample_gets_its_own_answers_in_full_batches(concurrency: int) -> None:
    sizes: list[int] = []

    def fn(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return softmax_rows(batch)

    model = CallableModel(fn, SPEC, 2, max_batch_size=8)
    rng = np.random.default_rng(0)
    plans = {key: [int(n) for n in rng.integers(1, 20, size=3)] for key in range(40)}
    engine = QueryEngine(model, concurrency=concurrency)
    results = run(engine, {key: echo_task(rows) for key, rows in plans.items()})
    assert sorted(results) == list(range(40))
    for key, rows in plans.items():
        for i, (n, got) in enumerate(zip(rows, results[key])):  # type: ignore[call-overload]
            np.testing.assert_allclose(got, softmax_rows(np.full((n, 3), float(i))))
    total = sum(sum(rows) for rows in plans.values())
    assert engine.queries == total == sum(sizes)
    # Batches are full except where the model would otherwise have waited with nothing to do.
    assert len(sizes) <= -(-total // 8) + 4


def test_model_answers_the_next_batch_while_estimators_compute() -> None:
    second_call = threading.Event()
    calls = 0

    def fn(batch: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 2:
            second_call.set()
        return softmax_rows(batch)

    def task() -> Generator[np.ndarray, np.ndarray, bool]:
        yield np.zeros((4, 3))
        # The arithmetic on the first answers: with pipelining the model is already busy with
        # the next batch, so this wait ends at once; without, it would time out.
        return second_call.wait(timeout=5)

    model = CallableModel(fn, SPEC, 2, max_batch_size=4)
    results = run(QueryEngine(model, concurrency=1), {key: task() for key in range(6)})
    assert results[0] is True


def test_estimator_failure_names_the_sample() -> None:
    def task(key: int) -> Generator[np.ndarray, np.ndarray, int]:
        yield np.zeros((2, 3))
        if key == 3:
            raise ZeroDivisionError("boom")
        return key

    model = CallableModel(softmax_rows, SPEC, 2, max_batch_size=4)
    with pytest.raises(EstimationError, match=r"sample 3 failed: ZeroDivisionError: boom") as info:
        run(QueryEngine(model), {key: task(key) for key in range(6)})
    assert "bug" in info.value.fix


def test_recording_failure_names_the_sample() -> None:
    def record(key: int, value: object) -> None:
        raise OSError("disk full")

    engine = QueryEngine(CallableModel(softmax_rows, SPEC, 2))
    with pytest.raises(EstimationError, match=r"recording the result of sample 0 failed: OSError: disk full"):
        engine.run([(0, echo_task([2]))], record)


def test_failed_batch_names_every_lost_sample() -> None:
    in_failed_batch: set[int] = set()

    def fn(batch: np.ndarray) -> np.ndarray:
        if (batch >= 10).any():  # every sample's second block
            in_failed_batch.update(int(v) % 10 for v in batch[:, 0])  # each row's value names its sample
            raise QueryError("the server refused the batch.", "retry later")
        return softmax_rows(batch)

    def task(key: int) -> Generator[np.ndarray, np.ndarray, None]:
        yield np.full((2, 3), float(key))
        yield np.full((2, 3), 10.0 + key)

    model = CallableModel(fn, SPEC, 2, max_batch_size=4)
    with pytest.raises(QueryError, match=r"Samples not audited: \[[0-9, ]+\]\.") as info:
        run(QueryEngine(model, retries=0), {key: task(key) for key in range(5)})
    lost = ast.literal_eval(info.value.message.split("Samples not audited: ")[1].removesuffix("."))
    # The list itself, not a substring of it ("0" is in "[10]"): sorted keys, each once, every
    # sample of the failed batch among them (with those whose queries were still in flight).
    assert isinstance(lost, list) and lost == sorted(set(lost)) and set(lost) <= set(range(5))
    assert 0 in in_failed_batch and in_failed_batch <= set(lost)


def test_one_worker_sends_the_same_batches_whatever_the_timing() -> None:
    """With one worker and one batch queued behind it, which rows share a batch never depends on how
    fast the model answers or the samples compute: a model rounding differently by batch size then
    still gives the same bits from run to run."""
    def batches(seed: int | None) -> list[list[float]]:
        rng = np.random.default_rng(seed)
        sent: list[list[float]] = []

        def pause() -> None:
            if seed is not None:
                time.sleep(float(rng.uniform(0, 0.003)))

        def fn(batch: np.ndarray) -> np.ndarray:
            pause()
            sent.append(sorted(batch[:, 0]))
            return softmax_rows(batch)

        def task(key: int) -> Generator[np.ndarray, np.ndarray, None]:
            for i, n in enumerate([3, 5, 2, 4]):  # inputs labelled 10 key + block
                pause()  # the sample's own arithmetic, on the engine's thread
                yield np.full((n, 3), 10.0 * key + i)

        run(QueryEngine(CallableModel(fn, SPEC, 2, max_batch_size=8)), {key: task(key) for key in range(6)})
        return sent

    instant = batches(None)
    assert any(len(b) < 8 for b in instant) and len(instant) > 4  # partial batches, which hold what had come: the case at stake
    for seed in range(4):
        assert batches(seed) == instant


@pytest.mark.parametrize("stuck", ["backing off before a retry", "inside a slow request"])
def test_interrupt_does_not_wait_for_work_in_flight(stuck: str) -> None:
    release = threading.Event()

    def fn(batch: np.ndarray) -> np.ndarray:
        if (batch == 7.0).any():
            if stuck == "inside a slow request":
                release.wait(timeout=30)
            raise TransientQueryError("timed out.", "")
        return softmax_rows(batch)

    def slow_task() -> Generator[np.ndarray, np.ndarray, None]:
        yield np.full((1, 3), 7.0)

    def interrupt(key: int, value: object) -> None:
        raise KeyboardInterrupt

    model = CallableModel(fn, SPEC, 2, max_batch_size=1)
    engine = QueryEngine(model, concurrency=2, retries=5, backoff_seconds=30.0)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            try:
                engine.run([(0, slow_task()), (1, echo_task([1]))], interrupt)
            finally:
                engine.close()  # as the runner does: must not wait for the cancelled work either
        assert time.monotonic() - start < 10  # not the 30 s wait, let alone 5 retries of it
    finally:
        release.set()
