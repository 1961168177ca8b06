"""Tagging a platform's backlog on a Ray cluster: ``python -m src tag SOURCE --model M --out RESULTS --ray ADDRESS``.

The same decisions as ``tag`` on one machine, on Ray Data (docs/cluster.md):

- the driver lists SOURCE (a folder, a text file of photo paths/URIs, or an object-store prefix) and leaves out
  the photos RESULTS already holds, decided by the same model, index and threshold (a killed run resumes);
- CPU tasks read each photo's bytes and decode it with the project's own decoding (:func:`src.pipeline.
  decode_for_batch`: JPEG draft mode, the model's resize), plus its EXIF GPS; a photo that cannot be read is an
  error row, never a failed task;
- an actor pool runs the exported model (one load per actor: ONNX Runtime or TorchScript, ``--ray-threads``
  each, a GPU each when the cluster has GPUs) and decides with :class:`src.recognizer.Recognizer`, the same index
  and calibrated threshold as ``tag``; a dead actor is restarted by Ray and its batches retried;
- rows are written as Parquet shards (``RESULTS/parts/RUN/*.parquet``) as they finish, then merged into
  ``RESULTS/tags.csv`` (tag's columns) for ``report`` and ``tag --from-results RESULTS --sidecar``, the local step
  that writes photo managers' metadata with ``tag``'s writer.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import choose_backend_file
from .cluster_io import (RESULTS_CSV, Listing, RowFormat, list_source, local_photo, merge_results, new_run_folder,
                         decode_batch, read_job, read_shards, write_job)
from .helpers import atomic_write_text, ensure_writable_dir, sweep_stale_temporaries
from .index import index_path_for
from .metadata import MetadataError, check_exiftool, update_metadata
from .placing import PlacingOptions, classes_from_rows, place_rows, placing_from_args
from .recognizer import Recognizer

DONE_STATUSES = ("ok", "no_known_landmark")  # as tag: rows kept on a rerun when decided the same way
# Fault tolerance is Ray Data's own: a model replica that dies (a lost node, an OOM kill) is restarted and the
# batches it held are retried (its actor pools default to max_restarts=-1, max_task_retries=-1), a decoding task
# whose worker died is retried (Ray's max_retries=3); tests/test_cluster.py kills a replica mid-run.
PHOTOS_PER_BLOCK = 64  # input rows per decoding task: small enough to spread 1,000 photos over a few nodes
DECODE_MEMORY = 512 << 20  # per decoding task: its worker (Ray, Arrow, Pillow; no torch) ~0.2 GB, a photo 0.3 GB


@dataclass
class ClusterSummary:
    total: int = 0
    skipped: int = 0
    tagged: int = 0
    no_landmark: int = 0
    errors: int = 0
    seconds: float = 0.0
    first_result_s: float | None = None
    rows: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# What runs on the workers
# --------------------------------------------------------------------------------------------------------------

class InferActor:
    """One model replica: loads the exported model and its index once (from the bytes the driver sent, so the
    workers need no copy of the model file), then decides batch after batch."""

    def __init__(self, files: dict, model_name: str, backend: str, device: str, threads: int,
                 min_prob: float | None, k: int, decided_by: str, fmt: RowFormat):
        import torch  # noqa: PLC0415 - imported in the worker process

        torch.set_num_threads(max(1, int(threads)))  # ONNX Runtime sessions take their thread count from it
        folder = Path(tempfile.mkdtemp(prefix="landmark-tagger-model."))
        try:
            for name, data in files.items():
                (folder / name).write_bytes(data)
            self.recognizer = Recognizer.load(folder / model_name, device=device, backend=backend,
                                              min_prob=min_prob)
        finally:  # everything is in memory now
            shutil.rmtree(folder, ignore_errors=True)
        self.threshold = self.recognizer.min_prob
        self.k, self.decided_by, self.fmt = k, decided_by, fmt

    def __call__(self, batch: dict) -> dict:
        import torch  # noqa: PLC0415 - imported in the worker process

        names = [str(n) for n in batch["name"]]
        errors = [str(e) for e in batch["error"]]
        good = [i for i, e in enumerate(errors) if not e]
        decided = {}
        if good:
            images = torch.from_numpy(np.ascontiguousarray(batch["image"][good]))
            probs, embedding = self.recognizer.backend(images)
            gps = [None if np.isnan(batch["lat"][i]) else (float(batch["lat"][i]), float(batch["lon"][i]))
                   for i in good]
            records = self.recognizer.decide(probs, embedding, [names[i] for i in good], self.k, self.threshold, gps)
            decided = dict(zip(good, records))
        rows = []
        for i, name in enumerate(names):
            record = decided.get(i) or self.recognizer.error_record(name, errors[i])
            row = self.fmt.to_row(record)
            row.update(decided_by=self.decided_by, metadata="")
            rows.append(row)
        return {c: np.array([row.get(c) or "" for row in rows], dtype=object) for c in self.fmt.columns}


# --------------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------------

def model_files(model: str | os.PathLike, backend: str) -> tuple[dict, str, str]:
    """``({file name: bytes}, the name to load, backend)``: the one file the backend runs and the index beside the
    model, sent to the actors."""
    name, file = choose_backend_file(model, backend)
    files = {file.name: file.read_bytes()}
    index = index_path_for(model)
    if index.is_file():
        files[index_path_for(file).name] = index.read_bytes()
    return files, file.name, name


def connect(address: str) -> bool:
    """Join the cluster at ``address`` (``local``: start a Ray instance here). The workers get this ``src``
    package through Ray's runtime environment, so the cluster needs the dependencies, not a checkout. Returns
    whether this call connected (and so should disconnect at the end)."""
    import ray  # noqa: PLC0415 - only the cluster job needs Ray

    if ray.is_initialized():  # a caller (a notebook, a test) connected already
        return False
    package = str(Path(__file__).resolve().parent)
    runtime_env = {"py_modules": [package], "excludes": ["__pycache__", "*.pyc"]}
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=True,
             logging_level="warning")
    return True


def plan(recognizer_threads: int, actors: int | None) -> dict:
    """How the actor pool is sized: GPUs per actor when the cluster has GPUs (one actor per GPU unless told),
    else ``actors`` of ``recognizer_threads`` CPUs each (unless told: half the CPUs to the replicas, the rest
    decoding: a photo costs the model several times what it costs the decoder; bench_cluster: on 4 CPUs 2
    one-thread replicas ran 1.4-1.6x one, once running)."""
    import ray  # noqa: PLC0415 - only the cluster job needs Ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if gpus:
        return {"actors": actors or gpus, "num_gpus": 1, "num_cpus": 1, "device": "cuda", "cpus": cpus, "gpus": gpus}
    share = max(1, cpus // (2 * max(1, recognizer_threads)))
    return {"actors": actors or share, "num_gpus": 0, "num_cpus": recognizer_threads, "device": "cpu",
            "cpus": cpus, "gpus": 0}


def tag_on_ray(source: str | os.PathLike, model: str | os.PathLike, results: str | os.PathLike, fmt: RowFormat,
               address: str = "local", actors: int | None = None, threads: int = 1, k: int = 3,
               min_prob: float | None = None, batch_size: int = 8, backend: str = "auto", redo: bool = False,
               progress: bool = True, on_first_result=None) -> ClusterSummary:
    """Decide every photo of ``source`` on Ray into the folder ``results``; see the module docstring.

    ``on_first_result``: called once, with the seconds since the start, when the first shard is written.
    """
    import ray  # noqa: PLC0415 - only the cluster job needs Ray
    import ray.data  # noqa: PLC0415 - idem

    started = time.perf_counter()
    results = Path(results)
    if results.exists() and not results.is_dir():
        raise NotADirectoryError(f"{results}: --out with --ray is a results folder (Parquet shards + {RESULTS_CSV}),"
                                 f" not a file")
    ensure_writable_dir(results)
    recognizer = Recognizer.load(model, backend=backend, min_prob=min_prob)  # fails here, not on every worker
    decided_by = recognizer.decided_by(min_prob)
    listing = list_source(source, exclude=results)
    job = {"source": listing.source, "kind": listing.kind, "folder": listing.folder, "decided_by": decided_by,
           "provenance": recognizer.provenance(min_prob)}
    done = set() if redo else {r["path"] for r in read_shards(results, ["path", "status", "decided_by"])
                               if r["status"] in DONE_STATUSES and r["decided_by"] == decided_by}
    todo = [(u, n) for u, n in zip(listing.uris, listing.names) if n not in done]
    summary = ClusterSummary(total=len(listing.names), skipped=len(listing.names) - len(todo))
    print(f"{summary.total} photos in {listing.source}: {summary.skipped} already decided in {results} by the same "
          f"model, index and threshold; deciding {len(todo)}", file=sys.stderr)
    write_job(results, job)
    if todo:
        connected = connect(address)
        try:
            _run(todo, recognizer, results, fmt, job, actors, threads, k, min_prob, batch_size, backend, progress,
                 started, summary, on_first_result)
        finally:
            if connected:
                ray.shutdown()
    rows = merge_results(results, fmt, job)
    new = {n for _, n in todo}
    for name in new:
        status = rows.get(name, {}).get("status")
        summary.tagged += status in DONE_STATUSES
        summary.no_landmark += status == "no_known_landmark"
        summary.errors += status == "error"
    summary.rows = rows
    summary.seconds = time.perf_counter() - started
    return summary


def _run(todo, recognizer, results, fmt, job, actors, threads, k, min_prob, batch_size, backend, progress,
         started, summary, on_first_result) -> None:
    import pyarrow as pa  # noqa: PLC0415 - only the cluster job needs Arrow
    import ray.data  # noqa: PLC0415 - only the cluster job needs Ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = bool(progress)
    context.execution_options.preserve_order = False  # rows carry their path; finish in any order
    sizing = plan(threads, actors)
    files, model_name, backend_name = model_files(recognizer.model_path, backend)
    print(f"Ray cluster: {sizing['cpus']} CPUs, {sizing['gpus']} GPUs; {sizing['actors']} model replicas "
          f"({backend_name}, {sizing['device']}, {threads} thread(s) each)", file=sys.stderr)
    per_block = max(batch_size, min(PHOTOS_PER_BLOCK, -(-len(todo) // max(1, 2 * sizing["cpus"]))))
    tables = [pa.table({"uri": [u for u, _ in todo[i:i + per_block]], "name": [n for _, n in todo[i:i + per_block]]})
              for i in range(0, len(todo), per_block)]
    dataset = ray.data.from_arrow(tables)
    # memory= reserves what decoding a big photo takes; it also keeps Ray Data from fusing the decoding into the
    # model replicas (same resources otherwise), so decoding scales with the cluster's CPUs, not the replicas
    decoded = dataset.map_batches(decode_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                                  memory=DECODE_MEMORY,
                                  fn_kwargs={"resize_size": recognizer.resize_size, "crop_size": recognizer.img_size})
    decided = decoded.map_batches(
        InferActor, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=sizing["actors"]),
        fn_constructor_kwargs={"files": files, "model_name": model_name, "backend": backend_name,
                               "device": sizing["device"], "threads": threads, "min_prob": min_prob, "k": k,
                               "decided_by": job["decided_by"], "fmt": fmt},
        num_cpus=sizing["num_cpus"], num_gpus=sizing["num_gpus"] or None)
    run_folder = new_run_folder(results)
    watcher = _FirstResult(run_folder, started, summary, on_first_result)
    try:
        decided.write_parquet(str(run_folder))
    finally:
        watcher.stop()


class _FirstResult:
    """Notes when the first shard of a run appears (time to first result), on a small polling thread."""

    def __init__(self, folder: Path, started: float, summary: ClusterSummary, callback):
        import threading  # noqa: PLC0415 - only here

        self.folder, self.started, self.summary, self.callback = folder, started, summary, callback
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.wait(0.05):
            if self.folder.is_dir() and any(self.folder.glob("*.parquet")):
                self._found()
                return

    def _found(self) -> None:
        if self.summary.first_result_s is None:
            self.summary.first_result_s = time.perf_counter() - self.started
            if self.callback is not None:
                self.callback(self.summary.first_result_s)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        if self.folder.is_dir() and any(self.folder.glob("*.parquet")):
            self._found()


# --------------------------------------------------------------------------------------------------------------
# Metadata from cluster results: the local step
# --------------------------------------------------------------------------------------------------------------

def metadata_from_results(results: str | os.PathLike, fmt: RowFormat, sidecar: bool = True,
                          into_photo: bool = False, placing: PlacingOptions | None = None) -> dict:
    """Place the results' photos from the library's own evidence (``tag``'s library pass, :mod:`src.placing`,
    when they are a folder on this machine and ``placing`` is given), then write (or remove) our metadata of the
    photos that are here with ``tag``'s writer (:func:`src.metadata.update_metadata`), and record both in
    ``RESULTS/tags.csv``.

    Returns counts: outcome word -> photos, plus ``"not local"`` and ``"failed"``."""
    results = Path(results)
    job = read_job(results)
    out = results / RESULTS_CSV
    rows = fmt.read_rows(out)
    if placing is not None and job["kind"] == "folder":
        folder = Path(job["folder"])
        photos = [folder / name for name in sorted(rows) if (folder / name).is_file()]
        summary = place_rows(folder, rows, photos, classes_from_rows(rows.values()), placing)
        print(summary.describe())
    targets = {t for t, on in (("sidecar", sidecar), ("photo", into_photo)) if on}
    if targets:
        check_exiftool()
    if job["kind"] == "folder":
        sweep_stale_temporaries(job["folder"])  # once per run: what killed writers left beside the photos
    counts: dict[str, int] = {}
    try:
        for name in sorted(rows):
            row = rows[name]
            earlier = {t for t in row.get("metadata", "").split("+") if t}
            wanted = targets | earlier
            if row["status"] == "error" or not wanted or (row["status"] != "ok" and not row.get("lat") and not earlier):
                continue  # nothing to write (no landmark, no place) and nothing of ours to remove
            photo = local_photo(job, name)
            if photo is None:
                counts["not local"] = counts.get("not local", 0) + 1
                continue
            try:
                word = update_metadata(photo, row, job["provenance"], sidecar="sidecar" in wanted,
                                       into_photo="photo" in wanted)
            except MetadataError as exc:  # the decision stands; its metadata is left as it was
                counts["failed"] = counts.get("failed", 0) + 1
                print(f"error: {exc}", file=sys.stderr)
                continue
            counts[word] = counts.get(word, 0) + 1
            row["metadata"] = "+".join(t for t in ("sidecar", "photo") if t in wanted)
    finally:  # also on Ctrl-C: what was written is recorded
        atomic_write_text(out, fmt.to_csv(rows[p] for p in sorted(rows)))
    return counts


# --------------------------------------------------------------------------------------------------------------
# Command line (the arguments are tag's: src.tagging adds them and calls cluster_main)
# --------------------------------------------------------------------------------------------------------------

def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    # --from-results needs no model: require_tag_arguments asks for --model (and DIR, --out) in the other modes
    parser._option_string_actions["--model"].required = False
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="decide on a Ray cluster (Ray Data): 'local' starts one here, 'auto' or HOST:PORT joins "
                             "a running one; DIR may then also be a text file of photo paths/URIs or an object-store "
                             "prefix (s3://..., gs://...), and --out is a results folder (docs/cluster.md)")
    parser.add_argument("--ray-actors", type=int, default=None, metavar="N",
                        help="model replicas (default: one per GPU, or one per 2 CPUs of the cluster)")
    parser.add_argument("--ray-threads", type=int, default=1, metavar="T",
                        help="ONNX Runtime / torch threads per model replica on a CPU (default 1)")
    parser.add_argument("--from-results", metavar="RESULTS", default=None,
                        help="write the metadata (--sidecar, --write-into-photo) of the photos of a cluster run's "
                             "results folder that are on this machine; no model needed")


def require_tag_arguments(args: argparse.Namespace) -> None:
    """What ``tag`` needs in each of its modes (argparse cannot say it: DIR, --out and --model are optional for
    ``--from-results`` only)."""
    if args.from_results:
        if args.folder or args.ray:
            raise ValueError("--from-results RESULTS takes no DIR and no --ray: it writes the metadata of a finished "
                             "run's photos on this machine")
        return
    missing = [what for what, value in (("DIR", args.folder), ("--out", args.out), ("--model", args.model))
               if not value]
    if missing:
        raise ValueError(f"tag needs {', '.join(missing)} (python -m src tag DIR --model M --out OUT)")


def cluster_main(args: argparse.Namespace, fmt: RowFormat) -> int:
    if args.from_results:
        counts = metadata_from_results(args.from_results, fmt, sidecar=args.sidecar, into_photo=args.write_into_photo,
                                       placing=placing_from_args(args))
        words = ", ".join(f"{n} {word}" for word, n in sorted(counts.items())) or "nothing to write"
        print(f"metadata from {args.from_results}: {words}")
        return 1 if counts.get("failed") else 0
    if args.sidecar or args.write_into_photo:
        raise ValueError("--ray writes results only (the photos' folders may be on no worker); write the metadata "
                         "afterwards, where the photos are: python -m src tag --from-results RESULTS --sidecar")
    summary = tag_on_ray(args.folder, args.model, args.out, fmt, address=args.ray, actors=args.ray_actors,
                         threads=args.ray_threads, k=args.k, min_prob=args.min_prob, batch_size=args.batch_size,
                         backend=args.backend, redo=args.redo)
    new = summary.tagged + summary.errors
    rate = f", {new / summary.seconds:.1f} photos/s" if new and summary.seconds > 0 else ""
    print(f"{summary.total} photos: {summary.tagged} tagged ({summary.tagged - summary.no_landmark} with a landmark, "
          f"{summary.no_landmark} no known landmark), {summary.skipped} already done, {summary.errors} failed{rate} "
          f"-> {Path(args.out) / RESULTS_CSV}" + (f" (first result after {summary.first_result_s:.0f} s)"
                                                     if summary.first_result_s is not None else ""))
    return 0 if summary.errors == 0 else 1


__all__ = ["ClusterSummary", "InferActor", "Listing", "RowFormat", "add_cluster_arguments", "cluster_main",
           "decode_batch", "metadata_from_results", "require_tag_arguments", "tag_on_ray"]
