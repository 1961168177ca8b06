"""Photo files -> model outputs, in bulk: decoding in worker threads while the main thread runs batched forward
passes (Pillow and torch release the GIL). Used by ``tag``, ``evaluate`` and the notebooks' scoring.

Every file is turned into model input the same way as ``predict`` and the app do
(:func:`src.images.decode_for_batch_array`), so a photo gets the same answer from each. A file that is not a usable
photo gets a one-line error naming it and the reason; the others go on.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends import as_backend, parallel_runners
from .images import decode_for_batch_array, error_line

DEFAULT_BATCH_SIZE = 8  # on a CPU, per-photo cost is lowest at small batches (cache); a GPU wants --batch-size 64


@dataclass
class PhotoResult:
    """One photo's outcome: probabilities over the classes (and its embedding when the model gives one), or the
    one-line error. ``extra``: what the caller's ``per_file`` function returned for it (e.g. its EXIF GPS)."""

    path: Path
    probs: torch.Tensor | None = None
    error: str | None = None
    extra: Any = None
    embedding: torch.Tensor | None = None

    @property
    def gps(self):  # what tag asks per_file for
        return self.extra


def decode_for_batch(source, resize_size: int, crop_size: int, name: str | None = None) -> torch.Tensor:
    """A photo (path or bytes) as the uint8 ``[3, R, R]`` tensor a batch stacks (see ``decode_for_batch_array``)."""
    return torch.from_numpy(decode_for_batch_array(source, resize_size, crop_size, name=name))


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(images)``, by NumPy on the CPU: torch's parallel copy of a batch of photos costs ~14 ms with 2
    threads (thread start-up; NumPy: 0.2 ms), time the forward pass and the decoders need."""
    if all(image.device.type == "cpu" and not image.requires_grad for image in images):
        return torch.from_numpy(np.stack([image.numpy() for image in images]))
    return torch.stack(list(images))


def _decode(path: Path, resize_size: int, crop_size: int, per_file: Callable | None):
    try:
        image = decode_for_batch(path, resize_size, crop_size)
    except Exception as exc:  # every failure of one photo stays with that photo
        return None, error_line(path, exc), None
    return image, None, (per_file(path) if per_file is not None else None)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def iter_predictions(model, paths: Sequence[str | os.PathLike], batch_size: int = DEFAULT_BATCH_SIZE,
                     workers: int | None = None, per_file: Callable | None = None, progress: bool = True,
                     desc: str = "Tagging", parallel: bool = True) -> Iterator[PhotoResult]:
    """Run ``model`` (a backend, or a loaded exported module) on every photo of ``paths``; yields one
    :class:`PhotoResult` per path, in order.

    At most two batches are decoded ahead, so memory stays bounded on any folder size. On a CPU with ONNX
    Runtime, batches run on two sessions of one thread each at once (:func:`src.backends.parallel_runners`):
    more photos per second than one session of two threads, decoding included (docs/serve.md); ``parallel=False``
    keeps to ``model`` alone.
    """
    backend = as_backend(model)
    many = parallel and len(paths) > 2 * max(1, int(batch_size))  # else not worth opening more sessions
    runners = parallel_runners(backend) if many else [backend]
    paths = [Path(p) for p in paths]
    resize_size, crop_size = backend.resize_size, backend.img_size
    batch_size = max(1, int(batch_size))
    workers = workers or default_workers()
    bar = tqdm(total=len(paths), desc=desc, unit="photo", disable=not progress or len(paths) < 2)
    pending: deque = deque()
    next_index = 0
    pool = ThreadPoolExecutor(max_workers=workers)

    def fill() -> None:
        nonlocal next_index
        while next_index < len(paths) and len(pending) < 2 * batch_size + workers:
            path = paths[next_index]
            pending.append((path, pool.submit(_decode, path, resize_size, crop_size, per_file)))
            next_index += 1

    forward = ThreadPoolExecutor(max_workers=len(runners)) if len(runners) > 1 else None
    in_flight: deque = deque()  # (batch, rows with a photo, its outputs or their future), in order

    def results(batch, good, outputs) -> Iterator[PhotoResult]:
        probs, embedding = outputs.result() if hasattr(outputs, "result") else outputs
        row_of = {i: r for r, i in enumerate(good)}
        for i, (path, _, error, extra) in enumerate(batch):
            r = row_of.get(i)
            yield PhotoResult(path, probs[r].clone() if r is not None else None, error, extra,
                              embedding[r].clone() if r is not None and embedding is not None else None)
        bar.update(len(batch))

    try:
        fill()
        turn = 0
        while pending:
            batch = []
            while pending and len(batch) < batch_size:
                path, future = pending.popleft()
                batch.append((path, *future.result()))
                fill()
            good = [i for i, (_, image, _, _) in enumerate(batch) if image is not None]
            images = stack_images([batch[i][1] for i in good]) if good else None
            if forward is None:
                yield from results(batch, good, backend(images) if good else (None, None))
                continue
            if len(in_flight) == len(runners):  # every runner busy: the oldest batch's answers first
                yield from results(*in_flight.popleft())
            # round robin with at most one batch per runner in flight: a runner never runs two batches at once
            in_flight.append((batch, good, forward.submit(runners[turn % len(runners)], images) if good
                              else (None, None)))
            turn += 1
        while in_flight:
            yield from results(*in_flight.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # stopped early: do not decode what nobody will read
        if forward is not None:
            forward.shutdown(wait=True, cancel_futures=True)
        bar.close()
