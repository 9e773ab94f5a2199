"""Dynamic micro-batching: many concurrent requests, one model call.

On a CPU a batch of 32 short texts costs little more than a batch of 1, so the
service collects concurrent requests into one call up to `max_batch` texts or
`max_wait_ms` after the first one arrived, whichever comes first. The queue is
bounded (`max_queue` texts): when it is full, `submit` raises `QueueFull` at
once and the HTTP layer answers 503 with Retry-After, instead of letting latency
grow without bound or memory run out.

One worker thread per model runs the model (ONNX Runtime and torch both release
the GIL while computing), so the event loop stays free to parse and answer
requests. Results come back to the caller's event loop through
`call_soon_threadsafe`. The predictor is read afresh for every batch, which is
what lets `swap()` install a reloaded model between two batches without
dropping or failing a request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("domaintune.serving")


class QueueFull(RuntimeError):
    """The bounded queue has no room for this request."""

    def __init__(self, retry_after: float):
        super().__init__(f"queue full; retry after {retry_after:.1f} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    inputs: list
    top_k: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    with_predictor: bool = False


class MicroBatcher:
    """submit(inputs) -> predictions, batched with other concurrent submits; bounded; swappable predictor."""

    def __init__(self, predictor, name: str, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch=None):
        self.predictor, self.name = predictor, name
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch  # callback(n_texts, seconds) for metrics
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued = 0  # texts waiting, not yet taken by the worker
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._seconds_per_text = 0.005  # running estimate, for Retry-After
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queued

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def swap(self, predictor) -> None:
        """Serve with `predictor` from the next batch on (the batch in flight finishes on the old one)."""
        with self._cond:
            self.predictor = predictor

    async def submit(self, inputs: list, top_k: int = 1, with_predictor: bool = False):
        """Predictions for `inputs`; with `with_predictor`, (predictions, the predictor that made them) - the
        one way to label a response with the right version while a swap is under way."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            if self._stop:
                raise QueueFull(1.0)
            if self._queued + len(inputs) > self.max_queue:
                raise QueueFull(max(1.0, round(self._queued * self._seconds_per_text, 1)))
            self._jobs.append(_Job(list(inputs), top_k, fut, loop, with_predictor=with_predictor))
            self._queued += len(inputs)
            self._cond.notify()
        return await fut

    def _take(self) -> list[_Job] | None:
        """Block until work arrives, then gather jobs up to max_batch texts or max_wait after the first."""
        with self._cond:
            while not self._jobs and not self._stop:
                self._cond.wait()
            if not self._jobs:
                return None
            deadline = self._jobs[0].enqueued + self.max_wait
            while self._queued < self.max_batch and not self._stop:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, n = [], 0
            while self._jobs and (not batch or n + len(self._jobs[0].inputs) <= self.max_batch):
                job = self._jobs.popleft()
                batch.append(job)
                n += len(job.inputs)
            self._queued -= n
            self._busy = True
            return batch

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            predictor = self.predictor
            t0 = time.perf_counter()
            try:
                # jobs with different top_k are predicted at the largest and cut back (one model call)
                k = max(j.top_k for j in jobs)
                flat = [x for j in jobs for x in j.inputs]
                preds = predictor.predict(flat, top_k=k)
                i = 0
                for j in jobs:
                    out = preds[i:i + len(j.inputs)]
                    i += len(j.inputs)
                    if j.top_k < k:
                        out = [_cut_top_k(p, j.top_k) for p in out]
                    j.loop.call_soon_threadsafe(_resolve, j.future, (out, predictor) if j.with_predictor else out, None)
            except Exception as e:  # one bad batch must fail its requests, not the worker
                log.exception("batch of %d requests failed on model %s", len(jobs), self.name)
                for j in jobs:
                    j.loop.call_soon_threadsafe(_resolve, j.future, None, e)
            dt_s = time.perf_counter() - t0
            n = sum(len(j.inputs) for j in jobs)
            self._seconds_per_text = 0.8 * self._seconds_per_text + 0.2 * dt_s / max(n, 1)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            if self.on_batch:
                self.on_batch(n, dt_s)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued and in-flight batch has finished; True when empty."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 30.0) -> None:
        self.drain(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)


def _resolve(fut: asyncio.Future, result, error) -> None:
    if fut.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _cut_top_k(pred: dict, k: int) -> dict:
    if "top_k" in pred:
        return {**pred, "top_k": pred["top_k"][:k]}
    return pred
