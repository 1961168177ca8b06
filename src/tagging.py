"""Tagging a folder of photos: ``python -m src tag DIR --model M --out tags.csv [--sidecar]``.

Every photo is decided by :class:`src.recognizer.Recognizer` (a landmark with a calibrated confidence, or "no
known landmark"), decoded in worker threads while batched forward passes run (:mod:`src.pipeline`). The CSV is
written atomically, a journal keeps what a killed run finished, and a second run skips photos already decided
*by the same model, index and threshold*: when any of them changed, those photos are decided again, and the CSV
and the metadata we wrote (sidecars, ``--write-into-photo``) are updated together, with what changed reported.
A file that is not a usable photo gets a one-line error naming it and the reason; the others go on.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from .backends import resolve_device
from .cluster import add_cluster_arguments, cluster_main, require_tag_arguments
from .cluster_io import RowFormat
from .helpers import OutputError, atomic_write_json, atomic_write_text, ensure_writable_dir, sweep_stale_temporaries
from .images import is_candidate_image
from .metadata import MetadataError, check_exiftool, read_exif_gps, update_metadata
from .pipeline import DEFAULT_BATCH_SIZE, iter_predictions
from .placing import (LOCATION_COLUMNS, PlacingOptions, PlacingSummary, add_placing_arguments, decision_changed,
                      embeddings_path, load_sketches, place_changed, place_rows, placing_from_args, save_sketches,
                      sketch)
from .predict import add_model_arguments
from .recognizer import as_recognizer

# --------------------------------------------------------------------------------------------------------------
# tag: CSV rows, journal, resume
# --------------------------------------------------------------------------------------------------------------

# The first 13 columns are those of CSVs written before "no known landmark" was calibrated; such a CSV is read
# (its rows count as decided by an unknown model, so they are decided again) and rewritten with all columns.
CSV_COLUMNS_V1 = ["path", "status", "landmark", "class", "prob", "city", "country", "lat", "lon", "gps_source",
                  "top_k", "top_k_probs", "error"]
CSV_COLUMNS_V2 = CSV_COLUMNS_V1 + ["threshold", "method", "decided_by", "metadata"]
# V3: where each photo was taken and from what (src.placing): rows of a V2 CSV are placed on the next run.
CSV_COLUMNS = CSV_COLUMNS_V2 + LOCATION_COLUMNS
DONE_STATUSES = ("ok", "no_known_landmark")  # rows kept on a rerun (if decided the same way); errors are retried
OLD_STATUSES = {"low_confidence": "no_known_landmark"}


def record_to_row(record: dict) -> dict[str, str]:
    """A record as a CSV row of strings (``top_k``/``top_k_probs`` joined with ``|``). ``prob`` and ``threshold``
    with the 6 decimals the recogniser compares (the library pass re-derives the pixels' decision from them)."""
    def fmt(value, digits=None):
        if value is None:
            return ""
        return f"{value:.{digits}f}" if digits is not None else str(value)

    return {
        "path": record["path"], "status": record["status"], "landmark": fmt(record["landmark"]),
        "class": fmt(record["class"]), "prob": fmt(record["prob"], 6), "city": fmt(record["city"]),
        "country": fmt(record["country"]), "lat": fmt(record["lat"], 6 if record["gps_source"] == "exif" else 4),
        "lon": fmt(record["lon"], 6 if record["gps_source"] == "exif" else 4), "gps_source": fmt(record["gps_source"]),
        "top_k": "|".join(e["name"] for e in record["top_k"]),
        "top_k_probs": "|".join(f"{e['prob']:.4f}" for e in record["top_k"]),
        "error": fmt(record["error"]), "threshold": fmt(record.get("threshold"), 6),
        "method": fmt(record.get("method")),
        "candidate": record["top_k"][0]["class"] if record["top_k"] else "",
    }


def rows_to_csv(rows: Iterable[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in CSV_COLUMNS})
    return buffer.getvalue()


class TagFileError(ValueError):
    """An output file that is not a tag CSV of this tool (so it is never overwritten)."""


def _parse_rows(text: str, source: Path, header_required: bool) -> list[dict]:
    if not text.strip():
        return []
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header not in (CSV_COLUMNS, CSV_COLUMNS_V2, CSV_COLUMNS_V1):
        if header_required:
            raise TagFileError(f"{source}: exists but is not a tag CSV written by this command (its header is "
                               f"{header}); move it or choose another --out")
        return []
    rows = []
    for values in reader:
        if len(values) != len(header):
            continue  # a torn line from a killed run
        row = dict.fromkeys(CSV_COLUMNS, "")
        row.update(zip(header, values))
        row["status"] = OLD_STATUSES.get(row["status"], row["status"])
        if row["path"] and row["status"] in (*DONE_STATUSES, "error"):
            rows.append(row)
    return rows


def journal_path(out: Path) -> Path:
    """Where a running ``tag`` appends finished rows (hidden, beside the CSV; merged in and removed at the end)."""
    return out.with_name(f".{out.name}.journal")


def read_existing_rows(out: Path) -> dict[str, dict]:
    """Rows of a previous run, by path: the CSV itself plus the journal a killed run left behind.

    Raises :class:`TagFileError` if ``out`` exists and is not a tag CSV of this tool.
    """
    rows: dict[str, dict] = {}
    if out.exists():
        for row in _parse_rows(out.read_text(encoding="utf-8"), out, header_required=True):
            rows[row["path"]] = row
    journal = journal_path(out)
    if journal.exists():
        text = journal.read_text(encoding="utf-8", errors="replace")
        if not text.endswith("\n"):  # the last line was being written when the run died
            text = text[: text.rfind("\n") + 1]
        for row in _parse_rows(text, journal, header_required=False):
            rows[row["path"]] = row
    return rows


class Journal:
    """Append-only record of finished rows. Flushed after every batch, so a killed process loses only the batch
    in flight (the operating system has the rest); fsynced every few seconds, which bounds what a power cut can
    lose without paying a disk sync per batch. Rewriting the whole CSV stays a once-per-run cost."""

    FSYNC_SECONDS = 5.0

    def __init__(self, path: Path):
        self.path = path
        self.synced = time.monotonic()
        new = not path.exists() or path.stat().st_size == 0
        if not new:  # a torn last line (a full disk, a kill mid-write): cut it, or the next row would join it
            with open(path, "rb+") as fh:
                data = fh.read()
                if not data.endswith(b"\n"):
                    fh.truncate(data.rfind(b"\n") + 1)
                    new = data.rfind(b"\n") < 0
        self.fh = open(path, "a", encoding="utf-8", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        if new:
            self.writer.writeheader()

    def write(self, rows: Sequence[dict]) -> None:
        try:
            for row in rows:
                self.writer.writerow(row)
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError as exc:  # a full disk: say which file (the OS error names none)
            raise OutputError(exc.errno, exc.strerror or str(exc), str(self.path)) from None

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError:  # the rows that did not fit were reported by write(); the CSV is still to be written
            pass


def list_photos(folder: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Candidate photos under ``folder``, recursively, in a fixed order; hidden files/folders and junk skipped."""
    excluded = {p.resolve() for p in exclude}
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if is_candidate_image(name) and path.resolve() not in excluded:
                found.append(path)
    return found


# --------------------------------------------------------------------------------------------------------------
# tag
# --------------------------------------------------------------------------------------------------------------

def add_tag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", nargs="?",
                        help="folder of photos (searched recursively); with --ray also a text file listing photos or "
                             "an object-store prefix")
    add_model_arguments(parser, k=3)
    parser.add_argument("--out", help="CSV to write (paths in it are relative to DIR); with --ray a results folder")
    parser.add_argument("--sidecar", action="store_true",
                        help="write XMP sidecars (photo.jpg.xmp, or merge into an existing photo.jpg.xmp/photo.xmp "
                             "of another program, keeping its content) with the place; photos with no known "
                             "landmark get none")
    parser.add_argument("--write-into-photo", action="store_true",
                        help="also write the same fields into the photo files themselves (JPEG/PNG/WEBP), "
                             "atomically, pixels untouched; off by default")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"photos per forward pass (default {DEFAULT_BATCH_SIZE}, best on a CPU; 64 on a GPU)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, max 8)")
    parser.add_argument("--redo", action="store_true",
                        help="decide every photo again, even those decided by this same model and threshold")
    add_placing_arguments(parser)
    add_cluster_arguments(parser)


@dataclass
class TagSummary:
    total: int = 0
    skipped: int = 0
    tagged: int = 0
    no_landmark: int = 0
    errors: int = 0
    metadata: dict = field(default_factory=dict)   # outcome word -> count (written, updated, removed, ...)
    metadata_errors: int = 0
    changed: list = field(default_factory=list)    # (path, before, after) of decisions that changed
    places_changed: int = 0                        # photos placed before whose place changed (new evidence)
    placing: PlacingSummary = field(default_factory=PlacingSummary)
    threshold_note: str = ""                       # what decided them: shown with every summary
    redecided: int = 0
    seconds: float = 0.0

    @property
    def low_confidence(self) -> int:  # the name of this count before "no known landmark" was calibrated
        return self.no_landmark


def _verdict(row: dict) -> str:
    return row.get("landmark") or "" if row.get("status") == "ok" else (
        "no known landmark" if row.get("status") == "no_known_landmark" else "error")


def run_info_path(out: Path) -> Path:
    """``tags.csv`` -> ``tags.csv.json``: the photo folder and what decided the rows (read by ``report``)."""
    return out.with_name(out.name + ".json")


def _metadata_targets(sidecar: bool, into_photo: bool) -> str:
    return "+".join(t for t, on in (("sidecar", sidecar), ("photo", into_photo)) if on)


def tag_folder(folder: str | os.PathLike, model, out: str | os.PathLike, k: int = 3, min_prob: float | None = None,
               sidecar: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
               redo: bool = False, progress: bool = True, device: str = "cpu", into_photo: bool = False,
               backend: str = "auto", placing: PlacingOptions | None = None) -> TagSummary:
    """Tag every photo under ``folder`` into the CSV ``out``; see the module docstring and ``tag --help``.

    ``model``: a :class:`~src.recognizer.Recognizer`, a loaded exported module, or a path to an exported file.
    ``min_prob`` None: the model's calibrated threshold. ``placing``: what besides the pixels places the photos
    (:class:`src.placing.PlacingOptions`; default: all of the library's evidence).
    """
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    sweep_stale_temporaries(folder)  # once per run: what writers killed mid-write left beside the photos
    ensure_writable_dir(out.parent)  # a read-only or mistyped --out fails before any work
    recognizer = as_recognizer(model, device=resolve_device(device), backend=backend)
    decided_by = recognizer.decided_by(min_prob)
    provenance = recognizer.provenance(min_prob)
    started = time.perf_counter()
    previous = read_existing_rows(out)  # also refuses an --out that is some other CSV, even with redo
    rows = {name: dict(row) for name, row in previous.items()}  # changed in place below; previous stays as it was
    done = set() if redo else {p for p, row in rows.items()
                               if row["status"] in DONE_STATUSES and row.get("decided_by") == decided_by}
    photos = list_photos(folder, exclude=[out])
    relative = {p: p.relative_to(folder).as_posix() for p in photos}
    todo = [p for p in photos if relative[p] not in done]
    todo_set = set(todo)
    summary = TagSummary(total=len(photos), skipped=len(photos) - len(todo),
                         threshold_note=provenance.get("threshold_note", ""))
    summary.redecided = sum(1 for p in todo if relative[p] in previous and previous[relative[p]]["status"] != "error")
    if summary.skipped:
        tqdm.write(f"{summary.skipped} of {len(photos)} photos already tagged in {out} (by the same model, index "
                   f"and threshold); tagging the other {len(todo)}")
    targets = _metadata_targets(sidecar, into_photo)

    def apply_metadata(photo: Path, row: dict, earlier: str) -> None:
        """Our metadata follows the decision: where asked now, or where an earlier run wrote it."""
        parts = set(f"{targets}+{earlier}".split("+"))
        wanted = "+".join(t for t in ("sidecar", "photo") if t in parts)
        if not wanted:
            return
        try:
            word = update_metadata(photo, row, provenance, sidecar="sidecar" in wanted, into_photo="photo" in wanted)
        except MetadataError as exc:  # the photo's decision stands in the CSV; its metadata is left as it was
            summary.metadata_errors += 1
            tqdm.write(f"error: {exc}", file=sys.stderr)
            row["metadata"] = earlier
            return
        summary.metadata[word] = summary.metadata.get(word, 0) + 1
        row["metadata"] = wanted

    if targets:
        check_exiftool()  # one line now, not one error per photo
    journal = Journal(journal_path(out)) if todo else None
    model_tag = decided_by.split("/")[0]  # the model file: its embeddings are comparable, whatever the threshold
    sketches = load_sketches(embeddings_path(out), model_tag)
    try:
        pending_rows: list[dict] = []
        threshold = recognizer.min_prob if min_prob is None else float(min_prob)
        for result in iter_predictions(recognizer.backend, todo, batch_size=batch_size, workers=workers,
                                       per_file=read_exif_gps, progress=progress, desc=f"Tagging {folder}"):
            name = relative[result.path]
            if result.probs is None:
                record = recognizer.error_record(name, result.error)
                summary.errors += 1
                tqdm.write(f"error: {record['error']}", file=sys.stderr)
            else:
                emb = None if result.embedding is None else result.embedding.unsqueeze(0)
                record = recognizer.decide(result.probs.unsqueeze(0), emb, [name], k, threshold, [result.gps])[0]
                summary.tagged += 1
                if result.embedding is not None:
                    sketches[name] = sketch(result.embedding.numpy())
            row = record_to_row(record)
            row["decided_by"] = decided_by
            row["metadata"] = (previous.get(name) or {}).get("metadata", "")
            rows[name] = row
            pending_rows.append(row)
            if len(pending_rows) >= batch_size:
                journal.write(pending_rows)
                pending_rows = []
        if journal is not None and pending_rows:
            journal.write(pending_rows)
        # The library pass: every photo's place from the whole library's evidence (photos decided now or earlier:
        # a photo added or removed changes its neighbours' estimates), then the metadata follows the decisions.
        for gone in set(rows) - set(relative.values()):
            del rows[gone]  # its photo was removed from the folder: no longer evidence, no longer a row
        sketches = {name: sketches[name] for name in relative.values() if name in sketches}
        save_sketches(embeddings_path(out), model_tag, sketches)
        summary.placing = place_rows(folder, rows, photos, {c["class"]: c for c in recognizer.classes()},
                                     placing or PlacingOptions(), progress=progress, sketches=sketches)
        wanted_targets = set(targets.split("+")) - {""}
        for p in photos:
            name = relative[p]
            row, before = rows.get(name), previous.get(name)
            if row is None or row["status"] == "error":
                continue
            summary.no_landmark += row["status"] == "no_known_landmark" and p in todo_set
            if before is not None and before["status"] != "error":
                if _verdict(before) != _verdict(row):
                    summary.changed.append((name, _verdict(before), _verdict(row)))
                summary.places_changed += place_changed(before, row)
            written = set(row.get("metadata", "").split("+")) - {""}
            if wanted_targets - written or (written and decision_changed(before, row)):
                apply_metadata(p, row, row.get("metadata", ""))
    finally:
        if journal is not None:
            journal.close()
        # Also on Ctrl-C or an unexpected error: everything finished so far lands in the CSV.
        atomic_write_text(out, rows_to_csv(rows[p] for p in sorted(rows)))
        journal_path(out).unlink(missing_ok=True)
        atomic_write_json(run_info_path(out), {"folder": str(folder.resolve()), "csv": out.name,
                                               "decided_by": decided_by, **provenance})
    summary.seconds = time.perf_counter() - started
    return summary


def tag_main(args: argparse.Namespace) -> int:
    """Exit status 0 when every photo was decided ("no known landmark" counts as decided), 1 if any failed."""
    require_tag_arguments(args)
    if args.ray or args.from_results:  # the backlog job on Ray, or its metadata step (src/cluster.py)
        return cluster_main(args, RowFormat(tuple(CSV_COLUMNS), record_to_row, rows_to_csv, read_existing_rows))
    summary = tag_folder(args.folder, args.model, args.out, k=args.k, min_prob=args.min_prob, sidecar=args.sidecar,
                         batch_size=args.batch_size, workers=args.workers, redo=args.redo, device=args.device,
                         into_photo=args.write_into_photo, backend=args.backend, placing=placing_from_args(args))
    new = summary.tagged + summary.errors
    rate = f", {new / summary.seconds:.1f} photos/s" if new and summary.seconds > 0 else ""
    parts = [f"{summary.total} photos: {summary.tagged} tagged ({summary.tagged - summary.no_landmark} with a "
             f"landmark, {summary.no_landmark} no known landmark), {summary.skipped} already done, {summary.errors} "
             f"failed in {summary.seconds:.0f} s{rate} -> {args.out}"]
    if summary.metadata or summary.metadata_errors:
        words = ", ".join(f"{n} {word}" for word, n in sorted(summary.metadata.items()))
        parts.append(f"metadata: {words}" + (f", {summary.metadata_errors} failed" if summary.metadata_errors else ""))
    print("; ".join(parts))
    if summary.threshold_note:  # what decided them, with every summary: an uncalibrated threshold says so each time
        print(f"Threshold: {summary.threshold_note}")
    print(summary.placing.describe(summary.places_changed))
    if summary.redecided:
        print(f"{summary.redecided} photos decided again (model, landmark index or threshold changed): "
              f"{len(summary.changed)} changed their answer" + (":" if summary.changed else ""))
        for name, before, after in summary.changed[:20]:
            print(f"  {name}: {before} -> {after}")
        if len(summary.changed) > 20:
            print(f"  ... and {len(summary.changed) - 20} more (see {args.out})")
    return 0 if summary.errors == 0 and summary.metadata_errors == 0 else 1
