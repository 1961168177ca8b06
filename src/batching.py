"""The service's engine room: dynamic batching (photos from concurrent requests grouped into batches by one
gathering thread, with a maximum batch and a maximum wait, run on parallel runners) and its Prometheus metrics.
:mod:`src.serve` is the HTTP side.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .pipeline import stack_images

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Dynamic batching: one gathering thread, photos grouped across requests, batches run on parallel runners
# --------------------------------------------------------------------------------------------------------------

@dataclass
class _Job:
    future: Future
    image: torch.Tensor | None = None
    name: str = ""
    key: tuple = ()                         # (k, min_prob): the decision's settings for this photo
    gps: tuple | None = None                # the photo's own EXIF position
    call: Callable[[], Any] | None = None   # a task on the model, run with no batch in flight (enrol, remove)
    request: int = 0                        # which request it belongs to


_STOP = object()


class Batcher:
    """Feeds the recognizer from one gathering thread: photos submitted from any thread are grouped into batches of
    at most ``max_batch`` (waiting at most ``max_wait_s`` after the first for more while the model is idle; photos that
    piled up during a forward pass go into the next one at once), whatever each request's ``k`` and ``min_prob``
    (they only change the decision, made per photo after the forward pass). Futures cancelled meanwhile (a
    request that timed out) are skipped. Other calls on the model (adding a landmark) run on the gathering
    thread while no batch is in flight, so the index never changes under a search.

    ``expecting(requests)``: whether photos of other requests than ``requests`` (the ids queued) may still come;
    when it says no (a lone client), the model does not wait at all.

    ``runners``: the forward passes to run batches on, in parallel (default: the recognizer's backend alone). On
    a 2-core CPU, two ONNX Runtime sessions of one thread each pass 1.2-1.6x the photos of one session of two
    threads (docs/serve.md); the gathering thread hands a batch to whichever is free, so photos pile up into the
    next batch while both are busy. The decisions (index search) are made one batch at a time, and other calls
    on the model wait until no batch is in flight."""

    def __init__(self, recognizer, max_batch: int = 8, max_wait_s: float = 0.005,
                 on_batch: Callable[[int, float], None] | None = None,
                 expecting: Callable[[set], bool] | None = None, runners: Sequence[Callable] | None = None):
        self.recognizer = recognizer
        self.expecting = expecting
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.on_batch = on_batch
        self.runners = list(runners) if runners else [recognizer.backend]
        self._idle: queue.Queue = queue.Queue()
        for i in range(len(self.runners)):
            self._idle.put(i)
        self._decide = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=len(self.runners), thread_name_prefix="landmark-forward")
        self._queue: queue.Queue = queue.Queue()
        self._pending: deque = deque()
        self._thread = threading.Thread(target=self._run, name="landmark-model", daemon=True)
        self._thread.start()

    def queued(self) -> int:
        return self._queue.qsize() + len(self._pending)

    def submit(self, image: torch.Tensor, name: str, k: int, min_prob: float | None, gps=None,
               request: int = 0) -> Future:
        future: Future = Future()
        self._queue.put(_Job(future, image, name, (int(k), min_prob), gps, request=request))
        return future

    def call(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._queue.put(_Job(future, call=fn))
        return future

    def close(self, timeout: float | None = None) -> None:
        """Finish what was submitted, then stop the threads."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._pool.shutdown(wait=not self._thread.is_alive())

    def _all_runners(self) -> list[int]:
        """Wait until no batch is in flight; the caller puts the runners back."""
        return [self._idle.get() for _ in self.runners]

    def _next(self, timeout: float | None) -> Any:
        try:
            return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _run(self) -> None:
        stopping = False
        while not (stopping and not self._pending):
            if not self._pending:
                job = self._next(None)
                if job is _STOP:
                    stopping = True
                    continue
                self._pending.append(job)
            head = self._pending[0]
            if head.call is not None:
                self._pending.popleft()
                runners = self._all_runners()
                try:
                    if head.future.set_running_or_notify_cancel():
                        try:
                            head.future.set_result(head.call())
                        except BaseException as exc:  # noqa: BLE001 - handed to the caller
                            head.future.set_exception(exc)
                finally:
                    for i in runners:
                        self._idle.put(i)
                continue
            runner = self._idle.get()  # photos queue up meanwhile: the next batch takes them all
            deadline = time.monotonic() + self.max_wait_s
            while not stopping:  # gather: everything already queued, then wait a little for more
                photos = sum(1 for j in self._pending if j.call is None)
                if photos >= self.max_batch:
                    break
                wait = deadline - time.monotonic()
                if self.expecting is not None and not self.expecting({j.request for j in self._pending}):
                    wait = 0.0  # no other request is inside: nothing to wait for
                job = self._next(wait)
                if job is None:
                    break
                if job is _STOP:
                    stopping = True
                    break
                self._pending.append(job)
            batch, rest = [], deque()
            for job in self._pending:  # photos up to max_batch; calls keep their place after them
                (batch if len(batch) < self.max_batch and job.call is None else rest).append(job)
            self._pending = rest
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if batch:
                self._pool.submit(self._forward, batch, runner)
            else:
                self._idle.put(runner)
        for i in self._all_runners():  # the last batches answered before close() returns
            self._idle.put(i)

    def _forward(self, batch: list[_Job], runner: int = 0) -> None:
        """One forward pass for the whole batch; the decisions per request settings (``k``, ``min_prob``)."""
        start = time.perf_counter()
        rec = self.recognizer
        try:
            probs, embedding = self.runners[runner](stack_images([j.image for j in batch]))
            groups: dict[tuple, list[int]] = {}
            for i, job in enumerate(batch):
                groups.setdefault(job.key, []).append(i)
            with self._decide:
                for (k, min_prob), rows in groups.items():
                    records = rec.decide(probs[rows], embedding[rows] if embedding is not None else None,
                                         [batch[i].name for i in rows], k=k, min_prob=min_prob,
                                         gps=[batch[i].gps for i in rows])
                    for i, record in zip(rows, records):
                        batch[i].future.set_result(record)
        except BaseException as exc:  # noqa: BLE001 - every request of the batch gets the error
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._idle.put(runner)
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------

class Metrics:
    """Prometheus metrics in a registry of their own (several apps in one process, as in the tests)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: PLC0415

        self.registry = CollectorRegistry()
        self.requests = Counter("landmark_requests", "HTTP requests answered", ["endpoint", "code"],
                                registry=self.registry)
        self.errors = Counter("landmark_errors", "Errors by kind", ["kind"], registry=self.registry)
        self.photos = Counter("landmark_photos", "Photos answered, by status", ["status"], registry=self.registry)
        self.latency = Histogram("landmark_request_seconds", "Request latency (seconds)", ["endpoint"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch_size = Histogram("landmark_batch_size", "Photos per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.forward_seconds = Histogram("landmark_forward_seconds", "Time of one batched forward pass",
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=self.registry)
        self.admitted_seconds = Histogram("landmark_admitted_request_seconds",
                                          "Time of a request let in, from its headers to its answer (upload included)",
                                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)
        self.queue_length = Gauge("landmark_queue_length", "Photos waiting for the model", registry=self.registry)
        self.in_flight = Gauge("landmark_requests_in_flight", "Requests inside the service", registry=self.registry)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest  # noqa: PLC0415

        return generate_latest(self.registry)
