"""Predicting and tagging photos in bulk: ``python -m src predict`` and ``python -m src tag``; scoring an exported
model on labelled photos: ``python -m src evaluate``.

Both commands turn a file into model input the same way (:func:`src.predictor.load_image_tensor`), so a photo
gets the same answer from either. A file that is not a usable photo gets a one-line error naming it and the
reason; the others go on.

``tag`` decodes photos in worker threads (Pillow and torch release the GIL) while the main thread runs batched
forward passes, writes a CSV atomically, keeps a journal so a killed run loses at most the batch in flight, and
skips photos already tagged on a second run.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .helpers import OutputError, atomic_write_json, atomic_write_text, ensure_writable_dir
from .metadata import read_exif_gps, sidecar_path, write_sidecar
from .images import ImageLoadError, is_candidate_image
from .landmarks import NO_LANDMARK, describe, display_name, format_latlon, landmark_info
from .backends import resolve_device
from .pipeline import DEFAULT_BATCH_SIZE, PhotoResult, default_workers, iter_predictions  # noqa: F401 - re-exported
from .pipeline import error_line as _error_line
from .predictor import load_exported, load_image_tensor, top_k

# --------------------------------------------------------------------------------------------------------------
# Files -> predictions
# --------------------------------------------------------------------------------------------------------------

def make_record(path: str, probs: torch.Tensor | None, class_names: Sequence[str], k: int = 5,
                min_prob: float = 0.0, gps: tuple[float, float] | None = None, error: str | None = None) -> dict:
    """The answer for one photo as plain data (what ``predict --json`` prints and a ``tag`` row holds).

    ``status``: ``"ok"``, ``"low_confidence"`` (top probability below ``min_prob``: reported as "no known
    landmark" and given no landmark location) or ``"error"``. ``lat``/``lon``: the photo's own EXIF position when it
    has one (``gps_source: "exif"``), else the top landmark's (``"landmark"``), else none.
    """
    record = {"path": path, "status": "error", "landmark": None, "class": None, "prob": None, "city": None,
              "country": None, "lat": None, "lon": None, "gps_source": None, "top_k": [], "error": error}
    if probs is None:
        record["error"] = error or f"{path}: no prediction"
        return record
    best = top_k(probs, class_names, k)
    for folder, p in best:
        info = landmark_info(folder) or {}
        record["top_k"].append({"class": folder, "name": display_name(folder), "prob": round(p, 6),
                                "city": info.get("city"), "country": info.get("country"),
                                "lat": info.get("lat"), "lon": info.get("lon")})
    top = record["top_k"][0]
    record["prob"] = top["prob"]
    if top["prob"] < min_prob:
        record.update(status="low_confidence", landmark=NO_LANDMARK)
    else:
        record.update(status="ok", landmark=top["name"], city=top["city"], country=top["country"])
        record["class"] = top["class"]
        if top["lat"] is not None:
            record.update(lat=top["lat"], lon=top["lon"], gps_source="landmark")
    if gps is not None:
        record.update(lat=gps[0], lon=gps[1], gps_source="exif")
    return record


def format_record(record: dict) -> str:
    """Human-readable lines for one photo (what ``predict`` prints without ``--json``)."""
    if record["status"] == "error":
        return f"error: {record['error']}"
    lines = [record["path"]]
    if record["status"] == "low_confidence":
        lines.append(f"  {NO_LANDMARK} (best guess below the --min-prob threshold)")
    for i, entry in enumerate(record["top_k"], 1):
        lines.append(f"  {i}. {describe(entry['class'], entry['prob'])}")
    if record["gps_source"] == "exif":
        lines.append(f"  photo's own location (EXIF GPS): {format_latlon(record['lat'], record['lon'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------------------

def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photo files")
    parser.add_argument("--model", required=True, help="exported model (checkpoints/*_exported.pt)")
    parser.add_argument("-k", type=int, default=5, help="how many guesses per photo (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per photo (one per line)")
    parser.add_argument("--min-prob", type=float, default=0.0,
                        help="below this top probability, say 'no known landmark' (default 0: always guess)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (the best available)")


def predict_main(args: argparse.Namespace) -> int:
    """Predict each photo on its own (file -> :func:`load_image_tensor` -> the exported module, optimised for the
    CPU); bad files are reported and skipped.

    Exit status 0 only when every photo succeeded.
    """
    device = resolve_device(args.device)
    model = load_exported(args.model, device=device, optimize=True)
    class_names = list(model.class_names)
    resize_size = int(model.resize_size)
    failures = 0
    for image_path in args.images:
        try:
            image = load_image_tensor(image_path, resize_size)
            with torch.inference_mode():
                probs = model(image.unsqueeze(0).to(device))[0].float().cpu()
            record = make_record(image_path, probs, class_names, args.k, args.min_prob, read_exif_gps(image_path))
        except Exception as exc:  # one bad photo never stops the others
            record = make_record(image_path, None, class_names, error=_error_line(image_path, exc))
        if record["status"] == "error":
            failures += 1
            print(f"error: {record['error']}", file=sys.stderr)
            if args.json:
                print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(json.dumps(record, ensure_ascii=False) if args.json else format_record(record), flush=True)
    return 0 if failures == 0 else 1


# --------------------------------------------------------------------------------------------------------------
# tag: CSV rows, journal, resume
# --------------------------------------------------------------------------------------------------------------

CSV_COLUMNS = ["path", "status", "landmark", "class", "prob", "city", "country", "lat", "lon", "gps_source",
               "top_k", "top_k_probs", "error"]
DONE_STATUSES = ("ok", "low_confidence")  # rows kept on a rerun; "error" rows are tried again


def record_to_row(record: dict) -> dict[str, str]:
    """A record as a CSV row of strings (``top_k``/``top_k_probs`` joined with ``|``)."""
    def fmt(value, digits=None):
        if value is None:
            return ""
        return f"{value:.{digits}f}" if digits is not None else str(value)

    return {
        "path": record["path"], "status": record["status"], "landmark": fmt(record["landmark"]),
        "class": fmt(record["class"]), "prob": fmt(record["prob"], 4), "city": fmt(record["city"]),
        "country": fmt(record["country"]), "lat": fmt(record["lat"], 6 if record["gps_source"] == "exif" else 4),
        "lon": fmt(record["lon"], 6 if record["gps_source"] == "exif" else 4), "gps_source": fmt(record["gps_source"]),
        "top_k": "|".join(e["name"] for e in record["top_k"]),
        "top_k_probs": "|".join(f"{e['prob']:.4f}" for e in record["top_k"]),
        "error": fmt(record["error"]),
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
    if header != CSV_COLUMNS:
        if header_required:
            raise TagFileError(f"{source}: exists but is not a tag CSV written by this command (its header is "
                               f"{header}); move it or choose another --out")
        return []
    rows = []
    for values in reader:
        if len(values) != len(CSV_COLUMNS):
            continue  # a torn line from a killed run
        row = dict(zip(CSV_COLUMNS, values))
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
    parser.add_argument("folder", metavar="DIR", help="folder of photos (searched recursively)")
    parser.add_argument("--model", required=True, help="exported model (checkpoints/*_exported.pt)")
    parser.add_argument("--out", required=True, help="CSV to write (paths in it are relative to DIR)")
    parser.add_argument("-k", type=int, default=3, help="how many guesses per photo (default 3)")
    parser.add_argument("--min-prob", type=float, default=0.0,
                        help="below this top probability a photo is marked 'no known landmark' (status "
                             "low_confidence, no landmark location) instead of guessing (default 0)")
    parser.add_argument("--sidecar", action="store_true",
                        help="write PHOTO.xmp sidecars (e.g. photo.jpg.xmp) with GPS and keywords; originals are "
                             "never modified, and sidecars written by other programs are left alone")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"photos per forward pass (default {DEFAULT_BATCH_SIZE}, best on a CPU; 64 on a GPU)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, max 8)")
    parser.add_argument("--redo", action="store_true", help="tag every photo again instead of skipping done ones")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (the best available)")


@dataclass
class TagSummary:
    total: int = 0
    skipped: int = 0
    tagged: int = 0
    low_confidence: int = 0
    errors: int = 0
    sidecars_written: int = 0
    sidecars_kept: int = 0
    seconds: float = 0.0


def tag_folder(folder: str | os.PathLike, model, out: str | os.PathLike, k: int = 3, min_prob: float = 0.0,
               sidecar: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
               redo: bool = False, progress: bool = True, device: str = "cpu") -> TagSummary:
    """Tag every photo under ``folder`` into the CSV ``out``; see ``python -m src tag --help``.

    Resume: rows of a previous run (the CSV, plus the journal of a killed run) whose status is ``ok`` or
    ``low_confidence`` are kept and their photos skipped; ``error`` rows are tried again (the file may have been
    fixed, and failing is quick). Finished rows go to a journal after every batch (a killed run loses at most
    the batch in flight); the CSV is rewritten atomically at the end, or when the run is interrupted, sorted by
    path, and the journal removed. Error lines go to stderr.
    """
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    ensure_writable_dir(out.parent)  # a read-only or mistyped --out fails before any work
    if not isinstance(model, torch.nn.Module):
        model = load_exported(model, device=resolve_device(device), optimize=True)
    class_names = list(model.class_names)
    started = time.perf_counter()
    rows = read_existing_rows(out)  # also refuses an --out that is some other CSV, even with redo
    if redo:
        rows = {}
        journal_path(out).unlink(missing_ok=True)
    done = {p for p, row in rows.items() if row["status"] in DONE_STATUSES}
    photos = list_photos(folder, exclude=[out])
    relative = {p: p.relative_to(folder).as_posix() for p in photos}
    todo = [p for p in photos if relative[p] not in done]
    summary = TagSummary(total=len(photos), skipped=len(photos) - len(todo))
    if summary.skipped:
        tqdm.write(f"{summary.skipped} of {len(photos)} photos already tagged in {out}; tagging the other {len(todo)}")

    def count_sidecar(result: str) -> None:
        summary.sidecars_written += result == "written"
        summary.sidecars_kept += result == "kept"

    if sidecar:  # photos done in an earlier run without --sidecar get theirs now (no prediction needed)
        for p in photos:
            if relative[p] in done and not sidecar_path(p).exists():
                count_sidecar(write_sidecar(p, rows[relative[p]]))
    journal = Journal(journal_path(out)) if todo else None
    try:
        pending_rows: list[dict] = []
        for result in iter_predictions(model, todo, batch_size=batch_size, workers=workers, per_file=read_exif_gps,
                                       progress=progress, desc=f"Tagging {folder}"):
            name = relative[result.path]
            record = make_record(name, result.probs, class_names, k, min_prob, result.gps, error=result.error)
            if record["status"] == "error":
                summary.errors += 1
                tqdm.write(f"error: {record['error']}", file=sys.stderr)
            else:
                summary.tagged += 1
                summary.low_confidence += record["status"] == "low_confidence"
            row = record_to_row(record)
            rows[name] = row
            pending_rows.append(row)
            if sidecar and record["status"] != "error":
                count_sidecar(write_sidecar(result.path, row))
            if len(pending_rows) >= batch_size:
                journal.write(pending_rows)
                pending_rows = []
        if journal is not None and pending_rows:
            journal.write(pending_rows)
    finally:
        if journal is not None:
            journal.close()
        # Also on Ctrl-C or an unexpected error: everything finished so far lands in the CSV.
        atomic_write_text(out, rows_to_csv(rows[p] for p in sorted(rows)))
        journal_path(out).unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - started
    return summary


def tag_main(args: argparse.Namespace) -> int:
    """Exit status 0 when every photo was tagged (a low-confidence answer counts as tagged), 1 if any failed."""
    summary = tag_folder(args.folder, args.model, args.out, k=args.k, min_prob=args.min_prob, sidecar=args.sidecar,
                         batch_size=args.batch_size, workers=args.workers, redo=args.redo, device=args.device)
    new = summary.tagged + summary.errors
    rate = f", {new / summary.seconds:.1f} photos/s" if new and summary.seconds > 0 else ""
    parts = [f"{summary.total} photos: {summary.tagged} tagged ({summary.low_confidence} no known landmark), "
             f"{summary.skipped} already done, {summary.errors} failed{rate} -> {args.out}"]
    if args.sidecar:
        parts.append(f"{summary.sidecars_written} XMP sidecars written"
                     + (f", {summary.sidecars_kept} left alone (written by another program)"
                        if summary.sidecars_kept else ""))
    print("; ".join(parts))
    return 0 if summary.errors == 0 else 1


# --------------------------------------------------------------------------------------------------------------
# evaluate: accuracy of an exported file on labelled photos (what ships, not the training checkpoint)
# --------------------------------------------------------------------------------------------------------------

def evaluate_exported(model, samples: Sequence[tuple[str | os.PathLike, str]], k: int = 5,
                      batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                      progress: bool = True) -> dict:
    """Top-1 and top-``k`` accuracy of an exported model on ``samples`` = ``[(photo path, class folder name)]``.

    Labels are matched to the model's classes by folder name, so the data set's class order does not matter; a
    class the model does not know raises ``ValueError``. Unreadable photos are counted in ``errors`` (with their
    one-line reasons), not scored. Returns ``{"accuracy", "topk_accuracy", "k", "count", "errors",
    "per_class": {folder: accuracy}}``.
    """
    class_names = list(model.class_names)
    unknown = sorted({label for _, label in samples} - set(class_names))
    if unknown:
        raise ValueError(f"the model does not know the classes {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''} (it has {len(class_names)} classes)")
    k = max(1, min(int(k), len(class_names)))
    correct, correct_k, errors = 0, 0, []
    per_class: dict[str, list[int]] = {}
    labels = [label for _, label in samples]
    results = iter_predictions(model, [p for p, _ in samples], batch_size, workers, progress=progress,
                               desc="Evaluating")
    for label, result in zip(labels, results):
        if result.probs is None:
            errors.append(result.error)
            continue
        top = [name for name, _ in top_k(result.probs, class_names, k)]
        hit = top[0] == label
        correct += hit
        correct_k += label in top
        per_class.setdefault(label, [0, 0])
        per_class[label][0] += hit
        per_class[label][1] += 1
    count = sum(n for _, n in per_class.values())
    return {"accuracy": correct / count if count else 0.0, "topk_accuracy": correct_k / count if count else 0.0,
            "k": k, "count": count, "errors": errors,
            "per_class": {name: hits / n for name, (hits, n) in sorted(per_class.items())}}


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported model (checkpoints/*_exported.pt)")
    parser.add_argument("--data-dir", default=None,
                        help="data folder or zip (default: $LANDMARK_DATA, else data/landmark_images)")
    parser.add_argument("--split", default="test", choices=["test", "train"],
                        help="which folder of the data set to score (default: test)")
    parser.add_argument("-k", type=int, default=5, help="also report top-k accuracy (default 5)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (the best available)")


def evaluate_main(args: argparse.Namespace) -> int:
    from .data import resolve_data_dir, scan_split  # noqa: PLC0415

    model = load_exported(args.model, device=resolve_device(args.device), optimize=True)
    split_dir = resolve_data_dir(args.data_dir) / args.split
    samples = [(p, p.parent.name) for p, _ in scan_split(split_dir)]
    if not samples:
        raise ValueError(f"{split_dir}: no photos")
    result = evaluate_exported(model, samples, k=args.k, batch_size=args.batch_size)
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    width = max((len(display_name(c)) for c in result["per_class"]), default=0)
    for name, accuracy in result["per_class"].items():
        print(f"  {display_name(name):<{width}}  {accuracy:6.1%}")
    print(f"{args.split.capitalize()} accuracy of {args.model}: {result['accuracy']:.1%} "
          f"(top-{result['k']} {result['topk_accuracy']:.1%}) on {result['count']} photos in {split_dir}"
          + (f"; {len(result['errors'])} unreadable" if result["errors"] else ""))
    if args.json:
        atomic_write_json(args.json, {"model": str(args.model), "split_dir": str(split_dir), **result})
    return 0
