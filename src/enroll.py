"""``python -m src enroll``: add landmarks to a model without training, list them, remove them.

    python -m src enroll --model M --data-dir NEW [--locations places.json]   # every NEW/train/NN.Name/
    python -m src enroll --model M --data-dir NEW --location "Big Ben, London, United Kingdom, 51.5007, -0.1246"
    python -m src enroll --model M --list                                     # with the ones lacking a place
    python -m src enroll --model M --remove Big_Ben

A landmark is its reference photos' embeddings in the model's index (``M.index.npz``); its place comes from
``--location`` (one landmark: "name, city, country, lat, lon"), ``--locations`` (JSON: ``{"Big_Ben": {"name",
"city", "country", "lat", "lon"}}`` or a list of such objects with a ``"class"``), else ``src/landmarks.json``.
A landmark enrolled without a place is said so, with how to give it one: a photo of it is then recognised but
gets no location. The index is rewritten atomically: a killed enrol leaves the previous one intact.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .data import list_classes, scan_split
from .landmarks import format_latlon
from .pipeline import iter_predictions
from .recognizer import Recognizer, class_info


class EnrollError(ValueError):
    """A one-line problem with what was asked (no such folder, a landmark already known, bad locations file)."""


def read_locations(path: str | Path | None) -> dict[str, dict]:
    """``{name: {"name", "city", "country", "lat", "lon"}}`` from a user's JSON file (dict or list form)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnrollError(f"{path}: not a readable JSON file of locations ({' '.join(str(exc).split())})") from None
    if isinstance(data, dict) and "landmarks" in data and isinstance(data["landmarks"], (dict, list)):
        data = data["landmarks"]
    if isinstance(data, list):
        table = {}
        for item in data:
            if not isinstance(item, dict) or not (item.get("class") or item.get("name")):
                raise EnrollError(f"{path}: each location needs a \"class\" or \"name\" ({item!r})")
            table[str(item.get("class") or item.get("name"))] = item
        data = table
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise EnrollError(f"{path}: expected {{name: {{\"city\", \"country\", \"lat\", \"lon\"}}}} or a list of them")
    return data


LOCATION_EXAMPLE = '"Big Ben, London, United Kingdom, 51.5007, -0.1246"'


def parse_location(text: str) -> dict:
    """``"Big Ben, London, United Kingdom, 51.5007, -0.1246"`` -> ``{"name", "city", "country", "lat", "lon"}``:
    the last two parts are the latitude and longitude, the first the name, the second the city and what lies
    between them the country (which may itself hold a comma: "Korea, Republic of")."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) < 5 or not all(parts[:3]):
        raise EnrollError(f"--location {text!r}: expected \"name, city, country, latitude, longitude\", e.g. "
                          f"{LOCATION_EXAMPLE}")
    try:
        lat, lon = float(parts[-2]), float(parts[-1])
    except ValueError:
        raise EnrollError(f"--location {text!r}: latitude and longitude must be numbers in degrees, e.g. "
                          f"{LOCATION_EXAMPLE}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise EnrollError(f"--location {text!r}: latitude must be in [-90, 90] and longitude in [-180, 180] "
                          f"(got {lat}, {lon}; north and east are positive)")
    return {"name": parts[0], "city": parts[1], "country": ", ".join(parts[2:-2]), "lat": lat, "lon": lon}


def no_place_hint(model) -> str:
    return (f"give it one: python -m src enroll --model {model} --data-dir DIR --replace --location "
            f"\"NAME, CITY, COUNTRY, LAT, LON\" (--locations FILE.json for several)")


def enroll_folder(recognizer, data_dir: str | Path, split: str = "train", locations: dict | None = None,
                  replace: bool = False, progress: bool = True) -> list[dict]:
    """Enrol every class folder of ``data_dir/split`` (course layout); returns what each became. Saved once, at
    the end, atomically."""
    root = Path(data_dir) / split
    if not root.is_dir():
        raise EnrollError(f"{root}: no such folder (expected the course layout: {split}/NN.Name/*.jpg)")
    index = recognizer._require_index()
    folders = list_classes(root)
    for folder in folders:
        found = index.find_class(folder)
        if found is not None and not replace:
            raise EnrollError(f"{folder}: already known as {index.classes[found]['class']!r}; --replace replaces its "
                              f"reference photos, or --remove it first")
    samples = scan_split(root, folders)
    paths = [p for p, _ in samples]
    added = []
    by_class: dict[int, list] = {}
    for (path, label), result in zip(samples, iter_predictions(recognizer.backend, paths, progress=progress,
                                                               desc="Enrolling")):
        if result.embedding is None:
            print(f"error: {result.error}", file=sys.stderr)
            continue
        by_class.setdefault(label, []).append((Path(path).relative_to(root.parent).as_posix(), result.embedding))
    for label, folder in enumerate(folders):
        items = by_class.get(label, [])
        if not items:
            print(f"error: {root / folder}: no usable photos, not enrolled", file=sys.stderr)
            continue
        if index.find_class(folder) is not None:
            index.remove(folder)
        info = class_info(folder, locations, source="enrolled")
        number = index.add(info, np.stack([e.numpy() for _, e in items]), [r for r, _ in items])
        added.append(dict(index.classes[number], references=len(items)))
    if added:
        recognizer.save()
    return added


def has_place(landmark: dict) -> bool:
    return landmark.get("lat") is not None and landmark.get("lon") is not None


def print_landmarks(recognizer) -> None:
    rows = recognizer.landmarks()
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        place = ", ".join(str(v) for v in (r["city"], r["country"]) if v)
        if not has_place(r):
            place = "NO PLACE: recognised, but its photos get no location" + (f" ({place})" if place else "")
        print(f"  {r['name']:<{width}}  {r['references']:5d} photos  {r['source']:<8}  {place}")
    missing = [r["name"] for r in rows if not has_place(r)]
    print(f"{len(rows)} landmarks ({recognizer.method}), {len(missing)} without a place"
          + (f" ({', '.join(missing)})" if missing else ""))
    print(f"Threshold: {recognizer.threshold_note()}")


def add_enroll_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported model with its index (checkpoints/*_exported.pt)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--data-dir", help="add every landmark of DATA_DIR/train/NN.Name/ (course layout)")
    what.add_argument("--list", action="store_true", help="list the landmarks the model knows")
    what.add_argument("--remove", nargs="+", metavar="NAME", help="remove these landmarks (folder or readable name)")
    parser.add_argument("--split", default="train", help="the folder of DATA_DIR with the photos (default: train)")
    places = parser.add_mutually_exclusive_group()
    places.add_argument("--location", default=None, metavar='"NAME, CITY, COUNTRY, LAT, LON"',
                        help=f"where the one landmark of DATA_DIR is, e.g. {LOCATION_EXAMPLE} (latitude and "
                             f"longitude in degrees, north and east positive)")
    places.add_argument("--locations", default=None, metavar="FILE.json",
                        help="where several new landmarks are: {folder name: {name, city, country, lat, lon}} "
                             "(default: src/landmarks.json)")
    parser.add_argument("--replace", action="store_true", help="replace the photos of a landmark already known")


def enroll_main(args: argparse.Namespace) -> int:
    recognizer = Recognizer.load(args.model)
    if args.list:
        print_landmarks(recognizer)
        return 0
    if args.remove:
        recognizer._require_index()
        for name in args.remove:
            try:
                removed = recognizer.remove(name, save=False)
            except KeyError as exc:
                raise EnrollError(str(exc.args[0])) from None
            print(f"Removed {removed['name']} ({removed['references']} reference photos)")
        recognizer.save()
        return 0
    locations = read_locations(args.locations)
    if args.location is not None:  # checked before any photo is read
        place = parse_location(args.location)
        root = Path(args.data_dir) / args.split
        folders = list_classes(root) if root.is_dir() else []
        if len(folders) > 1:
            raise EnrollError(f"--location gives the place of one landmark, but {root} has {len(folders)} "
                              f"({', '.join(folders[:4])}{', ...' if len(folders) > 4 else ''}); give several "
                              f"with --locations FILE.json")
        locations = {folder: place for folder in folders}
    started = time.perf_counter()
    added = enroll_folder(recognizer, args.data_dir, args.split, locations, args.replace)
    seconds = time.perf_counter() - started
    n = sum(a["references"] for a in added)
    for a in added:
        place = ", ".join(str(v) for v in (a["city"], a["country"]) if v)
        where = f"{place}, {format_latlon(a['lat'], a['lon'])}" if has_place(a) else "NO PLACE"
        print(f"  {a['name']}: {a['references']} photos, {where}")
    print(f"Enrolled {len(added)} landmarks ({n} photos) in {seconds:.1f} s into {recognizer.index_path}")
    for a in added:
        if not has_place(a):  # a recognised Big Ben that gets no place is a question to the user
            print(f"warning: {a['name']} has no place: its photos will be recognised but get no location; "
                  f"{no_place_hint(args.model)}", file=sys.stderr)
    return 0 if added else 1
