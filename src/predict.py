"""``python -m src predict``: the landmark of each photo given, or "no known landmark", with its top-k guesses.

Each photo is decoded as ``tag``, the app and the service decode it, and decided by :class:`src.recognizer.Recognizer`
with the model's calibrated threshold (``--min-prob`` overrides), so all of them give the same answer.
"""
from __future__ import annotations

import argparse
import json
import sys

from .backends import resolve_device
from .images import error_line
from .landmarks import NO_LANDMARK, format_latlon
from .metadata import read_exif_gps
from .pipeline import decode_for_batch
from .recognizer import Recognizer, shown_pair


def format_record(record: dict) -> str:
    """Human-readable lines for one photo (what ``predict`` prints without ``--json``)."""
    if record["status"] == "error":
        return f"error: {record['error']}"
    lines = [record["path"]]
    for i, entry in enumerate(record["top_k"], 1):
        parts = [entry["name"]]
        if entry["lat"] is not None:
            parts += [entry["city"] or "", format_latlon(entry["lat"], entry["lon"])]
        lines.append(f"  {i}. {', '.join(p for p in parts if p)}, {entry['prob']:.2f}")
    prob, threshold = shown_pair(record["prob"], record["threshold"])
    # an uncalibrated threshold is said with every decision, not once: its answers are guesses of unknown quality
    kind = "" if record.get("calibrated", True) else (
        ", set by hand" if record.get("threshold_source") == "set by hand" else ", UNCALIBRATED")
    if record["status"] == "ok":
        place = ", ".join(str(v) for v in (record["city"], record["country"]) if v)
        where = f" ({place})" if place else ""
        lines.append(f"  => {record['landmark']}{where}: confidence {prob} >= threshold {threshold}{kind}")
    elif record.get("note"):  # confident, but the photo's own GPS says it was taken elsewhere
        lines.append(f"  => {NO_LANDMARK}: {record['note']}")
    else:
        lines.append(f"  => {NO_LANDMARK}: the best guess has confidence {prob}, below the threshold "
                     f"{threshold}{kind}")
    if record["gps_source"] == "exif":
        lines.append(f"  photo's own location (EXIF GPS): {format_latlon(record['lat'], record['lon'])}")
    return "\n".join(lines)


def add_model_arguments(parser: argparse.ArgumentParser, k: int) -> None:
    """The options every command that decides photos shares: model, backend, device, -k, --min-prob."""
    parser.add_argument("--model", required=True,
                        help="exported model (checkpoints/*_exported.pt); its landmark index beside it is used")
    parser.add_argument("-k", type=int, default=k, help=f"how many guesses per photo (default {k})")
    parser.add_argument("--min-prob", type=float, default=None,
                        help="a landmark when its confidence >= this, else 'no known landmark' (default: the "
                             "threshold calibrated for the model, saved in its index)")
    parser.add_argument("--backend", default="auto", help="auto (default), torchscript or onnx")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (the best available)")


def load_recognizer(args: argparse.Namespace):
    return Recognizer.load(args.model, device=resolve_device(args.device), backend=args.backend,
                           min_prob=args.min_prob)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photo files")
    add_model_arguments(parser, k=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per photo (one per line)")


def with_threshold_info(record: dict, info: dict) -> dict:
    """A decided record with whether its threshold is calibrated and where it comes from (``calibrated``,
    ``threshold_source``): what ``predict --json`` and the service answer with every decision."""
    if record["status"] != "error":
        record = dict(record, calibrated=info["calibrated"], threshold_source=info["source"])
    return record


def predict_main(args: argparse.Namespace) -> int:
    """Exit status 0 only when every photo could be read (a "no known landmark" answer is a success)."""
    recognizer = load_recognizer(args)
    info = recognizer.threshold_info()
    if not args.json:
        print(info["note"], flush=True)
    failures = 0
    for image_path in args.images:
        try:
            image = decode_for_batch(image_path, recognizer.resize_size, recognizer.img_size)
            record = recognizer.records(image.unsqueeze(0), [image_path], args.k,
                                        gps=[read_exif_gps(image_path)])[0]
        except Exception as exc:  # one bad photo never stops the others
            record = recognizer.error_record(image_path, error_line(image_path, exc))
        record = with_threshold_info(record, info)
        if record["status"] == "error":
            failures += 1
            print(f"error: {record['error']}", file=sys.stderr)
            if args.json:
                print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(json.dumps(record, ensure_ascii=False) if args.json else format_record(record), flush=True)
    return 0 if failures == 0 else 1
