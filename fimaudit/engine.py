"""The query engine: every model query of an audit goes through here.

Estimators are generators: each yields a block of m inputs (an array (m, *shape), or Perturbations
that describe them: fimaudit.perturbations) and receives their probabilities (m, K) back. Described
inputs are formed once, straight into the batch they are sent in, or by the model itself where it
forms them on its device. The engine interleaves the blocks of many samples into full batches of
the model's maximum size, so a 5-row request of one sample shares a batch with those of others,
counts every row it sends, retries transient faults, and keeps `concurrency` batches running on
worker threads and one more queued (formed) behind them while the estimators' arithmetic runs on the
calling thread: the model (local or remote) never waits for numpy, and numpy never waits for the
model when it need not.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from fimaudit.adapter import ProbabilityModel, TransientQueryError
from fimaudit.errors import EstimationError, FimauditError, QueryError
from fimaudit.perturbations import DevicePerturbing, Perturbations, Request, materialize

R = TypeVar("R")
# A request is an array of inputs, or Perturbations a device model forms itself (fimaudit.perturbations).
Task = Generator[Request, np.ndarray, R]
# One batch: the requests' slices, in order (formed into one array by materialize, or by the model).
Batch = list[Request]
OnDone = Callable[[Any, R], None]


@dataclass(eq=False)
class _Active(Generic[R]):
    """One sample's task and its current request: rows sent so far and answers received."""

    key: Any
    task: Task[R]
    request: Request
    sent: int = 0
    received: int = 0
    parts: dict[int, np.ndarray] = field(default_factory=dict)  # answers by row offset

    @property
    def unsent(self) -> int:
        return len(self.request) - self.sent

    @property
    def answered(self) -> bool:
        return self.received == len(self.request)


# (sample, first row, row count) for each slice of one batch.
_Owners = list[tuple[_Active[Any], int, int]]


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
        # Even at concurrency 1 the model runs on a worker thread, so that one batch is answered
        # while the estimators compute on the results of the previous one.
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="fimaudit-query")
        self._closed = threading.Event()
        # The model itself where it forms described inputs on its device; else the engine forms them.
        self._device_model = model if isinstance(model, DevicePerturbing) and model.forms_on_device else None

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers; with `cancel` (an interrupt), drop queued batches and do not wait.
        Only the first call acts: a later plain close() must not wait for what a cancel left."""
        if self._closed.is_set():
            return
        self._closed.set()  # a worker sleeping before a retry gives up instead
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)

    def run(self, tasks: Iterable[tuple[Any, Task[R]]], on_done: OnDone[R], max_active: int = 64) -> None:
        """Drive many estimator tasks to completion, calling on_done(key, result) as each ends."""
        source = iter(tasks)
        active: list[_Active[R]] = []
        inflight: dict[Future[np.ndarray], _Owners] = {}
        exhausted = False
        try:
            while True:
                exhausted = exhausted or self._admit(source, active, on_done, max_active)
                self._submit(active, inflight, idle_ok=exhausted or len(active) >= max_active)
                if not inflight:
                    if not active:
                        return
                    continue  # nothing could be sent: admission brings more rows next round
                self._receive(inflight)
                # Keep the model busy with the rows already waiting before computing on the answers (a
                # sample's next request can take a while: its directions, its statistics).
                idle_ok = exhausted or len(active) >= max_active
                self._submit(active, inflight, idle_ok)
                self._advance_answered(active, inflight, on_done, idle_ok)
        except BaseException:
            # An error or Ctrl-C: drop the queued batches and leave running ones behind rather
            # than wait out their timeouts and retries.
            self.close(cancel=True)
            raise

    def _admit(self, source: Iterator[tuple[Any, Task[R]]], active: list[_Active[R]], on_done: OnDone[R], max_active: int) -> bool:
        """Start samples until their unsent rows fill every batch that may be in flight plus one
        more (so the next batch is ready when a worker frees); returns True once the source is empty."""
        want = self.batch_size * (self.concurrency + 1)
        while len(active) < max_active and (len(active) < 2 or sum(a.unsent for a in active) < want):
            nxt = next(source, None)
            if nxt is None:
                return True
            entry = self._start(nxt[0], nxt[1], on_done)
            if entry is not None:
                active.append(entry)
        return False

    def _start(self, key: Any, task: Task[R], on_done: OnDone[R]) -> _Active[R] | None:
        try:
            request = self._advance(key, task, None)
        except StopIteration as stop:
            self._finish(key, stop.value, on_done)
            return None
        return _Active(key, task, request)

    def _submit(self, active: list[_Active[R]], inflight: dict[Future[np.ndarray], _Owners], idle_ok: bool) -> None:
        """Send full batches while a worker is free, and one more queued behind the running ones (formed
        here while the model runs, unless the model forms it on its device): a worker starts it the moment
        it frees, without waiting for this thread to wake, receive and send. A partial batch goes only
        where the model would otherwise sit idle with no more rows to come (no admission possible,
        nothing in flight): sent any earlier, it would leave the rows that come meanwhile for another
        small batch (more calls: a GPU's or an endpoint's cost)."""
        while len(inflight) <= self.concurrency:
            unsent = sum(a.unsent for a in active)
            if unsent == 0 or (unsent < self.batch_size and not (idle_ok and not inflight)):
                return
            batch, owners = self._take_batch(active)
            if len(inflight) >= self.concurrency and self._device_model is None:
                batch = [materialize(batch)]  # one batch of inputs held while it waits
            inflight[self._pool.submit(self._predict_with_retry, batch)] = owners

    def _take_batch(self, active: list[_Active[R]]) -> tuple[Batch, _Owners]:
        pieces: list[Request] = []
        owners: _Owners = []
        room = self.batch_size
        for entry in active:
            take = min(room, entry.unsent)
            if take == 0:
                continue
            pieces.append(entry.request[entry.sent : entry.sent + take])
            owners.append((entry, entry.sent, take))
            entry.sent += take
            room -= take
            if room == 0:
                break
        return pieces, owners

    def _receive(self, inflight: dict[Future[np.ndarray], _Owners]) -> None:
        """Wait for a batch and hand its rows to the samples they belong to: one batch at a time, the
        oldest of those finished. With one worker that is always the oldest sent, so every batch holds
        the same rows from run to run, and a model whose rounding depends on the batch size (BLAS,
        onnxruntime) gives the same bits; with several, a slow batch holds up none of the others."""
        finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
        future = next(f for f in inflight if f in finished)
        owners = inflight.pop(future)
        try:
            outputs = future.result()
        except QueryError as exc:
            raise self._lost(exc, owners, inflight) from exc
        offset = 0
        for entry, start, count in owners:
            entry.parts[start] = outputs[offset : offset + count]
            entry.received += count
            offset += count

    def _advance_answered(
        self, active: list[_Active[R]], inflight: dict[Future[np.ndarray], _Owners], on_done: OnDone[R], idle_ok: bool
    ) -> None:
        """Advance every answered sample; after each, send what is ready, so that the model starts on one
        sample's next rows while the next sample computes (an idle model otherwise waits for all)."""
        for entry in [a for a in active if a.answered]:
            self._answer(entry, on_done)
            if entry.request is None:
                active.remove(entry)
            else:
                self._submit(active, inflight, idle_ok)

    def _lost(self, exc: QueryError, owners: _Owners, inflight: dict[Future[np.ndarray], _Owners]) -> QueryError:
        """The same error, naming every sample whose queries were lost, so nothing fails silently."""
        lost = sorted({entry.key for entry, _, _ in owners} | {e.key for o in inflight.values() for e, _, _ in o})
        cls = TransientQueryError if isinstance(exc, TransientQueryError) else QueryError
        return cls(f"{exc.message} Samples not audited: {lost}.", exc.fix)

    def _answer(self, entry: _Active[R], on_done: OnDone[R]) -> None:
        parts = [entry.parts[start] for start in sorted(entry.parts)]
        outputs = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        entry.parts, entry.sent, entry.received = {}, 0, 0
        try:
            entry.request = self._advance(entry.key, entry.task, outputs)
        except StopIteration as stop:
            entry.request = None  # type: ignore[assignment]
            self._finish(entry.key, stop.value, on_done)

    @staticmethod
    def _advance(key: Any, task: Task[R], outputs: np.ndarray | None) -> Request:
        """The task's next request; an estimator's own failure is named with its sample."""
        try:
            request = next(task) if outputs is None else task.send(outputs)
            return request if isinstance(request, Perturbations) else np.asarray(request)
        except (StopIteration, FimauditError):
            raise
        except Exception as exc:
            raise EstimationError(
                f"the estimate of sample {key} failed: {type(exc).__name__}: {exc}",
                "this is a fimaudit bug: please report it with the model and this input; "
                "with --journal, the samples finished so far are kept",
            ) from exc

    @staticmethod
    def _finish(key: Any, result: R, on_done: OnDone[R]) -> None:
        try:
            on_done(key, result)
        except FimauditError:
            raise
        except Exception as exc:
            raise EstimationError(
                f"recording the result of sample {key} failed: {type(exc).__name__}: {exc}",
                "check that the journal's folder is writable and has space, then rerun to resume",
            ) from exc

    def _predict(self, batch: Batch) -> np.ndarray:
        """One batch's probabilities: Perturbations go to a model that forms them on its device, else are
        formed here, straight into one batch."""
        if self._device_model is not None and any(isinstance(p, Perturbations) for p in batch):
            return self._device_model.predict_perturbed(batch)
        return self.model.predict_proba(materialize(batch))

    def _predict_with_retry(self, batch: Batch) -> np.ndarray:
        rows = sum(len(p) for p in batch)
        for attempt in range(self.retries + 1):
            try:
                out = self._predict(batch)
                with self._count_lock:  # batches may finish on several threads at once
                    self.queries += rows
                return out
            except TransientQueryError:
                if attempt == self.retries or self._closed.wait(self.backoff_seconds * 2**attempt):
                    raise
            except FimauditError:
                raise
            except Exception as exc:  # an adapter bug or a framework error: name it, keep the cause
                raise QueryError(
                    f"the model failed on a batch of {rows} inputs: "
                    f"{type(exc).__name__}: {exc}",
                    "check that the inputs match the model's expected shape, dtype and range",
                ) from exc
        raise AssertionError("unreachable")
