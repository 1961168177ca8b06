"""What the cluster job (:mod:`src.cluster`) reads and writes, without Ray: the photos of a SOURCE (a folder, a text
file listing photos, or an object-store prefix), their bytes, and the results folder (Parquet shards, one folder
per run, merged into the tag CSV that ``report`` and the metadata writer read).

Object stores go through pyarrow's filesystems (``s3://``, ``gs://``, ``hdfs://``, ``file://``), and any other
fsspec URI (``az://``, ...) through fsspec: credentials are theirs (environment variables, ``~/.aws``, an instance
role; docs/cluster.md).
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .helpers import atomic_write_json, atomic_write_text
from .images import ImageLoadError, decode_for_batch_array, error_line, is_candidate_image
from .metadata import read_exif_gps

RESULTS_CSV = "tags.csv"   # what ``report`` and ``tag --from-results`` read
PARTS = "parts"            # Parquet shards: parts/RUN/*.parquet, RUN sortable by time
JOB_FILE = "job.json"      # the source, and what decided the rows
# A "photo" bigger than this is refused before it is read: the decoder would refuse it anyway (pixel guard), after
# moving it across the network into a worker's memory.
MAX_PHOTO_BYTES = 256 << 20


@dataclass(frozen=True)
class RowFormat:
    """The tag CSV's row: its columns, a decided record as a row, rows as CSV text, and the rows of an existing
    CSV. :mod:`src.tagging` owns them and hands them over (it imports this package's cluster job, so the job
    cannot import it back)."""

    columns: tuple
    to_row: Callable[[dict], dict]
    to_csv: Callable
    read_rows: Callable[[Path], dict]


@dataclass
class Listing:
    """The photos of a SOURCE: ``uris`` (what a worker reads: a local absolute path or a URI) and ``names`` (the
    row's ``path``: relative to SOURCE for a folder, the URI or path as listed otherwise), in a fixed order."""

    source: str
    kind: str                  # "folder", "list" or "uri"
    uris: list[str]
    names: list[str]
    folder: str                # what the run-info JSON records (``report`` joins it with the names)


def is_uri(text: str) -> bool:
    """``s3://bucket/key``, ``file:///photos``: a scheme, then ``://``."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def filesystem_for(uri: str):
    """``(pyarrow filesystem, path inside it)`` for a URI: pyarrow's own for s3/gs/hdfs/file, fsspec's otherwise."""
    import pyarrow.fs as pafs  # noqa: PLC0415 - only the cluster job reads object stores

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception:  # a scheme pyarrow does not know: fsspec's, wrapped for pyarrow
        import fsspec  # noqa: PLC0415 - only for schemes pyarrow lacks

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def list_source(source: str | os.PathLike, exclude: Path | None = None) -> Listing:
    """The candidate photos of ``source`` (folders and names starting with "." skipped, like ``tag``), sorted.

    ``exclude``: a folder left out (the results folder, when it is inside SOURCE).
    """
    text = os.fspath(source)
    if is_uri(text):
        return _list_prefix(text)
    path = Path(text)
    if path.is_dir():
        return _list_folder(path, exclude)
    if path.is_file():
        return _list_file(path)
    raise FileNotFoundError(f"{text}: no such folder, list file or object-store prefix")


def _list_folder(folder: Path, exclude: Path | None) -> Listing:
    root = folder.resolve()
    skip = exclude.resolve() if exclude is not None else None
    uris, names = [], []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(here, d) != skip)
        for name in sorted(files):
            if is_candidate_image(name):
                full = Path(here, name)
                uris.append(str(full))
                names.append(full.relative_to(root).as_posix())
    return Listing(str(folder), "folder", uris, names, str(root))


def _list_file(list_file: Path) -> Listing:
    """One photo per line (a path, relative ones to the list file's folder, or a URI); blank and # lines skipped."""
    base = list_file.resolve().parent
    seen, uris, names = set(), [], []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#") or entry in seen:
            continue
        seen.add(entry)
        names.append(entry)
        uris.append(entry if is_uri(entry) else str(base / entry))
    return Listing(str(list_file), "list", uris, names, str(base))


def _list_prefix(prefix: str) -> Listing:
    import pyarrow.fs as pafs  # noqa: PLC0415 - only the cluster job lists object stores

    scheme = prefix.split("://", 1)[0]
    fs, base = filesystem_for(prefix)
    base = base.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = sorted(i.path for i in infos if i.type == pafs.FileType.File
                   and not _hidden(i.path[len(base):].lstrip("/")) and is_candidate_image(i.path))
    uris = [f"{scheme}://{p}" for p in found]
    return Listing(prefix, "uri", uris, list(uris), prefix)


def read_photo_bytes(uri: str, filesystems: dict) -> bytes:
    """The bytes of the photo at ``uri`` (``filesystems``: a per-process cache of opened filesystems)."""
    scheme, path = uri.split("://", 1)
    key = f"{scheme}://{path.split('/', 1)[0]}"  # one filesystem per bucket (S3 regions differ between buckets)
    try:
        if key not in filesystems:
            filesystems[key] = filesystem_for(uri)[0]
    except Exception as exc:  # an unknown scheme, no credentials: the photo's error, not the job's
        raise ImageLoadError(uri, f"cannot open its filesystem ({type(exc).__name__}: {exc})") from None
    fs = filesystems[key]
    try:
        with fs.open_input_file(path) as fh:
            size = fh.size()
            if size > MAX_PHOTO_BYTES:
                raise ImageLoadError(uri, f"file too large for a photo ({size} bytes, limit {MAX_PHOTO_BYTES})")
            return fh.read()
    except ImageLoadError:
        raise
    except Exception as exc:  # missing, forbidden, a network error after the filesystem's own retries
        raise ImageLoadError(uri, f"cannot read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


# --------------------------------------------------------------------------------------------------------------
# Decoding, on the cluster's CPU workers: nothing here imports torch (a decoding process never loads a model; torch
# would cost each one seconds at start and half a gigabyte)
# --------------------------------------------------------------------------------------------------------------

_FILESYSTEMS: dict = {}  # per worker process: opened object-store filesystems


def decode_batch(batch: dict, resize_size: int, crop_size: int) -> dict:
    """CPU task: ``{"uri", "name"}`` -> ``{"name", "image" uint8 [n, 3, R, R], "error", "lat", "lon"}``; a photo
    that cannot be read or decoded gets its one-line error and a blank image."""
    names = [str(n) for n in batch["name"]]
    images = np.zeros((len(names), 3, resize_size, resize_size), dtype=np.uint8)
    errors = np.full(len(names), "", dtype=object)
    lat, lon = np.full(len(names), np.nan), np.full(len(names), np.nan)
    for i, uri in enumerate(str(u) for u in batch["uri"]):
        try:
            if "://" in uri:
                data = read_photo_bytes(uri, _FILESYSTEMS)
                images[i] = decode_for_batch_array(data, resize_size, crop_size, name=uri)
                gps = read_exif_gps(io.BytesIO(data))
            else:  # a local (or shared) path: read exactly as tag reads it
                images[i] = decode_for_batch_array(Path(uri), resize_size, crop_size)
                gps = read_exif_gps(uri)
        except Exception as exc:  # every failure of one photo stays with that photo
            errors[i] = error_line(uri, exc)
            continue
        if gps is not None:
            lat[i], lon[i] = gps
    return {"name": np.array(names, dtype=object), "image": images, "error": errors, "lat": lat, "lon": lon}


# --------------------------------------------------------------------------------------------------------------
# The results folder
# --------------------------------------------------------------------------------------------------------------

def new_run_folder(results: Path) -> Path:
    """``RESULTS/parts/RUN`` for a new run: RUN sorts by start time, so a later run's row for a photo wins."""
    return results / PARTS / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"


def shard_files(results: Path) -> list[Path]:
    """Every Parquet shard in ``results``, oldest run first. A shard a killed run left half-written (no footer)
    is removed, with a line saying so: its photos are simply decided again."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - only the cluster job reads Parquet

    files = []
    for path in sorted((results / PARTS).glob("*/*.parquet")):
        try:
            pq.read_metadata(path)
        except Exception as exc:  # torn by a kill mid-write
            print(f"{path}: unreadable shard of an interrupted run ({type(exc).__name__}); removed, its photos "
                  f"will be decided again", file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        files.append(path)
    return files


def read_shards(results: Path, columns: list[str] | None = None) -> list[dict]:
    """Rows of every shard, oldest run first (a photo may appear once per run that decided it)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - only the cluster job reads Parquet

    rows: list[dict] = []
    for path in shard_files(results):
        rows.extend(pq.read_table(path, columns=columns).to_pylist())
    return rows


def merge_results(results: Path, fmt: RowFormat, job: dict) -> dict[str, dict]:
    """The shards as one tag CSV (``RESULTS/tags.csv``, atomic; the newest row of each photo) and its run-info
    JSON (read by ``report``). What ``tag --from-results`` recorded as written (the ``metadata`` column) is kept."""
    out = results / RESULTS_CSV
    earlier = fmt.read_rows(out) if out.exists() else {}
    rows: dict[str, dict] = {}
    for row in read_shards(results):
        row = {c: row.get(c) or "" for c in fmt.columns}
        row["metadata"] = (earlier.get(row["path"]) or {}).get("metadata", "")
        rows[row["path"]] = row
    atomic_write_text(out, fmt.to_csv(rows[p] for p in sorted(rows)))
    atomic_write_json(out.with_name(out.name + ".json"), {"folder": job["folder"], "csv": out.name,
                                                          "source": job["source"], "decided_by": job["decided_by"],
                                                          **job["provenance"]})
    return rows


def write_job(results: Path, job: dict) -> None:
    atomic_write_json(results / JOB_FILE, job)


def read_job(results: Path) -> dict:
    path = results / JOB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({results} is not the results folder of a cluster run)")
    return json.loads(path.read_text(encoding="utf-8"))


def local_photo(job: dict, name: str) -> Path | None:
    """Where the photo of a result row is on this machine, or None (an object-store URI, a file not here)."""
    if job["kind"] == "folder":
        path = Path(job["folder"]) / name
    elif name.startswith("file://"):
        path = Path(filesystem_for(name)[1])
    elif is_uri(name):
        return None
    else:
        path = Path(job["folder"]) / name  # an absolute name stays absolute
    return path if path.is_file() else None
