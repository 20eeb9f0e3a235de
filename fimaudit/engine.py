"""The query engine: every model query of an audit goes through here.

Estimators are generators: each yields a block of inputs (m, *shape) and receives their
probabilities (m, K) back. The engine interleaves the blocks of many samples into full batches of
the model's maximum size, so a 5-row request of one sample shares a batch with those of others,
counts every row it sends, retries transient faults and, for remote models, keeps several batches
in flight at once.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from fimaudit.errors import FimauditError, QueryError
from fimaudit.model import ProbabilityModel

R = TypeVar("R")
Task = Generator[np.ndarray, np.ndarray, R]


class TransientQueryError(QueryError):
    """Raised by adapters for faults worth retrying: timeouts, unavailable, 5xx, resets."""


@dataclass
class _Active(Generic[R]):
    key: Any
    task: Task[R]
    request: np.ndarray
    pos: int = 0
    parts: list[np.ndarray] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return len(self.request) - self.pos


class QueryEngine:
    """Batches, counts and retries the queries of one audit against one model."""

    def __init__(
        self,
        model: ProbabilityModel,
        *,
        concurrency: int = 1,
        retries: int = 3,
        backoff_seconds: float = 0.5,
    ) -> None:
        self.model = model
        self.batch_size = max(1, int(model.max_batch_size))
        self.concurrency = max(1, int(concurrency))
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.queries = 0
        self._count_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.concurrency) if self.concurrency > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def run(
        self,
        tasks: Iterable[tuple[Any, Task[R]]],
        on_done: Callable[[Any, R], None],
        max_active: int = 64,
    ) -> None:
        """Drive many estimator tasks to completion, calling on_done(key, result) as each ends."""
        source = iter(tasks)
        active: list[_Active[R]] = []
        exhausted = False
        while True:
            # Admit samples until there are enough pending rows to fill every batch in flight
            # (requests of 2 rows would otherwise leave batches half empty), within max_active.
            while not exhausted and len(active) < max_active and (
                len(active) < 2 or sum(a.remaining for a in active) < self.batch_size * self.concurrency
            ):
                nxt = next(source, None)
                if nxt is None:
                    exhausted = True
                    break
                entry = self._start(nxt[0], nxt[1], on_done)
                if entry is not None:
                    active.append(entry)
            if not active:
                return
            self._step(active, on_done)
            active = [a for a in active if a.request is not None]  # type: ignore[comparison-overlap]

    def _start(self, key: Any, task: Task[R], on_done: Callable[[Any, R], None]) -> _Active[R] | None:
        try:
            request = next(task)
        except StopIteration as stop:
            on_done(key, stop.value)
            return None
        return _Active(key, task, np.asarray(request))

    def _step(self, active: list[_Active[R]], on_done: Callable[[Any, R], None]) -> None:
        """Send up to `concurrency` full batches drawn from the active requests, then dispatch."""
        batches: list[np.ndarray] = []
        owners: list[list[tuple[_Active[R], int]]] = []
        cursor = iter(active)
        entry = next(cursor, None)
        while entry is not None and len(batches) < self.concurrency:
            pieces, taken, room = [], [], self.batch_size
            while entry is not None and room > 0:
                take = min(room, entry.remaining)
                if take:
                    pieces.append(entry.request[entry.pos : entry.pos + take])
                    taken.append((entry, take))
                    entry.pos += take
                    room -= take
                if entry.remaining == 0:
                    entry = next(cursor, None)
            batches.append(pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0))
            owners.append(taken)
        try:
            answers = self._predict_batches(batches)
        except QueryError as exc:
            # Name the samples whose queries were lost, so that nothing fails silently.
            lost = sorted({owner.key for taken in owners for owner, _ in taken})
            cls = TransientQueryError if isinstance(exc, TransientQueryError) else QueryError
            raise cls(f"{exc.message} Samples not audited: {lost}.", exc.fix) from exc
        for outputs, taken in zip(answers, owners):
            offset = 0
            for owner, count in taken:
                owner.parts.append(outputs[offset : offset + count])
                offset += count
        for owner in active:
            if owner.remaining == 0:
                self._answer(owner, on_done)

    def _answer(self, entry: _Active[R], on_done: Callable[[Any, R], None]) -> None:
        outputs = entry.parts[0] if len(entry.parts) == 1 else np.concatenate(entry.parts, axis=0)
        entry.parts = []
        try:
            entry.request = np.asarray(entry.task.send(outputs))
            entry.pos = 0
        except StopIteration as stop:
            entry.request = None  # type: ignore[assignment]
            on_done(entry.key, stop.value)

    def _predict_batches(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        if self._pool is None or len(batches) == 1:
            return [self._predict_with_retry(b) for b in batches]
        return list(self._pool.map(self._predict_with_retry, batches))

    def _predict_with_retry(self, batch: np.ndarray) -> np.ndarray:
        for attempt in range(self.retries + 1):
            try:
                out = self.model.predict_proba(batch)
                with self._count_lock:  # batches may finish on several threads at once
                    self.queries += len(batch)
                return out
            except TransientQueryError:
                if attempt == self.retries:
                    raise
                time.sleep(self.backoff_seconds * 2**attempt)
            except FimauditError:
                raise
            except Exception as exc:  # an adapter bug or a framework error: name it, keep the cause
                raise QueryError(
                    f"the model failed on a batch of {len(batch)} inputs: "
                    f"{type(exc).__name__}: {exc}",
                    "check that the inputs match the model's expected shape, dtype and range",
                ) from exc
        raise AssertionError("unreachable")
