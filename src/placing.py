"""The library pass of ``tag``: where each photo was taken, from the whole library's evidence and the landmarks.

``tag`` decides each photo's landmark from its pixels (:mod:`src.recognizer`); this pass then reads every photo's
capture time, own GPS and device (:mod:`src.evidence`, one ExifTool process for the library), the GPS tracks the
user gave (:mod:`src.tracks`), and combines them with the pixel decisions (:mod:`src.locate`): a photo gets a
place with an accuracy radius and the evidence for it, or none and the reason. A landmark the photo's own GPS
contradicts is withheld. The pass is cheap (no model) and runs over the whole library on every run, so a photo
added or removed re-decides the estimates of its neighbours.

Rows are the tag CSV's (:mod:`src.tagging`); this module fills their location columns and, where the evidence
changed the landmark decision, their landmark columns.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .evidence import read_evidence
from .helpers import atomic_write_bytes
from .landmarks import DEFAULT_RADIUS_M, NO_LANDMARK, landmark_info, place_contradicts
from .locate import LandmarkCandidate, LocateOptions, Placement, locate_library
from .tracks import load_tracks

# The tag CSV's location columns (after its landmark columns).
LOCATION_COLUMNS = ["location_source", "accuracy_m", "evidence", "location_note", "candidate"]
# The columns a place or landmark decision shows in: when one changes, the photo's metadata is brought in line.
DECISION_COLUMNS = ("status", "landmark", "class", "lat", "lon", "location_source", "accuracy_m", "evidence")
# location_source -> gps_source, the column tag CSVs had before (read by older tools)
_GPS_SOURCE = {"camera": "exif", "landmark": "landmark", "landmark+time": "landmark", "time": "time",
               "track": "track"}


@dataclass
class PlacingOptions:
    """What ``tag`` uses besides the pixels. ``enabled`` False: pixels and the photo's own GPS only (as before)."""
    enabled: bool = True
    tracks: Sequence[str] = ()
    locate: LocateOptions = field(default_factory=LocateOptions)


@dataclass
class PlacingSummary:
    sources: dict = field(default_factory=dict)    # location_source -> photos
    withheld: int = 0                              # landmarks the evidence contradicted
    notes: int = 0                                 # photos whose metadata had absurd values (ignored, noted)

    def describe(self, changed: int = 0) -> str:
        """One line for a log: ``Places: 120 camera GPS, 80 capture time, ...; 3 landmarks withheld ...``."""
        words = {"camera": "camera GPS", "track": "GPS track", "time": "capture time", "landmark+time":
                 "landmark + capture time", "landmark": "landmark alone", "none": "no place"}
        counts = ", ".join(f"{self.sources[k]} {w}" for k, w in words.items() if self.sources.get(k))
        text = f"Places: {counts or 'no photos'}"
        if self.withheld:
            text += f"; {self.withheld} landmarks withheld (the photo's GPS or capture time says elsewhere)"
        if self.notes:
            text += f"; {self.notes} photos with absurd metadata ignored (see the CSV's location_note)"
        if changed:
            text += f"; {changed} places changed since the last run (new or removed evidence)"
        return text


# What the pixels add to "was this camera with the phone?": each photo's embedding, kept beside the CSV so that a
# re-run compares photos decided earlier too. A fixed random projection to 256 dimensions (cosine similarities
# kept to about +-0.06, Johnson-Lindenstrauss) in float16: 0.5 kB a photo, 25 MB for 50,000 photos.
SKETCH_DIM = 256


def embeddings_path(out: Path) -> Path:
    """``tags.csv`` -> ``tags.csv.embeddings.npz`` (beside the CSV, like ``tags.csv.json``: kept between runs)."""
    return out.with_name(f"{out.name}.embeddings.npz")


@functools.lru_cache(maxsize=4)
def _projection(dim: int) -> np.ndarray:
    return np.random.default_rng(dim).standard_normal((dim, SKETCH_DIM)).astype(np.float32)


def sketch(embedding: np.ndarray) -> np.ndarray:
    """A photo's embedding as a unit vector of :data:`SKETCH_DIM` float16 (the same projection every run)."""
    vector = np.asarray(embedding, dtype=np.float32).ravel()
    out = vector @ _projection(len(vector))
    return (out / max(float(np.linalg.norm(out)), 1e-12)).astype(np.float16)


def load_sketches(path: Path, model: str) -> dict[str, np.ndarray]:
    """The sketches a run of the same ``model`` kept (another model's, or a damaged file: none)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["model"]) != model:
                return {}
            return dict(zip(data["paths"].tolist(), data["vectors"]))
    except (OSError, ValueError, KeyError):
        return {}


def save_sketches(path: Path, model: str, sketches: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    names = sorted(sketches)
    np.savez(buffer, model=np.array(model), paths=np.array(names, dtype=str),
             vectors=np.stack([sketches[n] for n in names]) if names else np.zeros((0, SKETCH_DIM), np.float16))
    atomic_write_bytes(path, buffer.getvalue())


def classes_from_rows(rows) -> dict[str, dict]:
    """The landmarks a results CSV's rows name, by class key (for the library pass without the model: ``tag
    --from-results``): from ``landmarks.json``, else from the row that named it."""
    classes: dict[str, dict] = {}
    for row in rows:
        key = row.get("candidate") or ""
        if not key or key in classes:
            continue
        info = landmark_info(key)
        if info is not None:
            classes[key] = {"class": key, **{k: info.get(k) for k in ("name", "city", "country", "lat", "lon")}}
        elif row.get("class") == key:  # an enrolled landmark: what the row says of it
            here = row.get("gps_source") == "landmark" and row.get("lat") and row.get("lon")
            classes[key] = {"class": key, "name": row.get("landmark") or key, "city": row.get("city") or None,
                            "country": row.get("country") or None, "lat": float(row["lat"]) if here else None,
                            "lon": float(row["lon"]) if here else None}
    return classes


def candidate_from_row(row: dict, classes: Mapping[str, dict]) -> LandmarkCandidate | None:
    """What the pixels said of a photo (its top landmark, confidence and the threshold), from its CSV row."""
    if row.get("status") == "error" or not row.get("prob"):
        return None
    key = row.get("candidate") or ""
    if not key:  # a row from before the candidate column: its top landmark by name
        first = (row.get("top_k") or "").split("|")[0]
        key = next((k for k, c in classes.items() if c.get("name") == first), "")
    info = classes.get(key)
    if info is None:
        return None
    facts = landmark_info(key) or {}
    radius = facts.get("radius_m") or info.get("radius_m") or DEFAULT_RADIUS_M
    return LandmarkCandidate(key=key, name=info.get("name") or key, lat=info.get("lat"), lon=info.get("lon"),
                             radius_m=float(radius), confidence=float(row["prob"]),
                             threshold=float(row.get("threshold") or "nan"))


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def apply_placement(row: dict, placement: Placement, classes: Mapping[str, dict]) -> None:
    """Fill ``row``'s location columns, and its landmark columns with the landmark kept after the evidence."""
    info = classes.get(placement.landmark_key) if placement.landmark_key else None
    if info is not None:
        row.update(status="ok", landmark=info.get("name") or placement.landmark_key, **{"class": info["class"]},
                   city=info.get("city") or "", country=info.get("country") or "")
    elif row.get("status") == "ok" or row.get("status") == "no_known_landmark":
        row.update(status="no_known_landmark", landmark=NO_LANDMARK, city="", country="", **{"class": ""})
    has_place = placement.lat is not None and placement.lon is not None
    source = placement.source if has_place else "none"
    digits = 6 if source in ("camera", "track") else 5 if source == "time" else 4
    row.update(lat=_fmt(placement.lat, digits) if has_place else "",
               lon=_fmt(placement.lon, digits) if has_place else "",
               location_source=source, gps_source=_GPS_SOURCE.get(source, ""),
               accuracy_m=_fmt(placement.accuracy_m, 0) if has_place and source != "camera" else "",
               evidence=placement.evidence or "", location_note=placement.note or "")


def place_rows(folder: Path, rows: dict[str, dict], photos: Sequence[Path], classes: Mapping[str, dict],
               options: PlacingOptions, progress: bool = True,
               sketches: Mapping[str, np.ndarray] | None = None) -> PlacingSummary:
    """Place every photo of ``photos`` (under ``folder``; ``rows`` by relative path, changed in place).
    ``sketches``: unit vectors of the photos' pixels by path (:func:`sketch`), evidence for "whose camera"."""
    summary = PlacingSummary()
    relative = [p.relative_to(folder).as_posix() for p in photos]
    decided = [name for name in relative if name in rows and rows[name].get("status") != "error"]
    candidates = {name: candidate_from_row(rows[name], classes) for name in decided}
    evidence = {}
    if options.enabled:
        evidence = read_evidence([folder / name for name in decided], root=folder, progress=progress)
        tracks = load_tracks(options.tracks) if options.tracks else None
        placements = locate_library(evidence, candidates, tracks, options.locate,
                                    similarity={k: v.astype(np.float32) for k, v in (sketches or {}).items()} or None)
    else:
        placements = {name: pixel_placement(candidates[name], rows[name]) for name in decided}
    for name in decided:
        row, cand = rows[name], candidates[name]
        apply_placement(row, placements[name], classes)
        # named by the pixels, not kept after the evidence (derived each run: a rerun counts it again)
        summary.withheld += (cand is not None and cand.confidence >= cand.threshold and row["status"] != "ok"
                             and (options.locate.use_landmarks or not options.enabled))
        summary.sources[row["location_source"]] = summary.sources.get(row["location_source"], 0) + 1
        notes = evidence[name].notes if name in evidence else []
        if notes:  # absurd values the evidence ignored: said where the user looks for why a photo has no place
            row["location_note"] = "; ".join(n for n in (row["location_note"], *notes) if n)
            summary.notes += 1
    return summary


def pixel_placement(candidate: LandmarkCandidate | None, row: dict) -> Placement:
    """``--pixels-only``: the photo's own GPS (as the pixel pass read it), else a confident landmark's place."""
    named = candidate is not None and candidate.confidence >= candidate.threshold
    key = candidate.key if named else None
    if row.get("gps_source") == "exif" and row.get("lat") and row.get("lon"):
        gps = (float(row["lat"]), float(row["lon"]))
        far = place_contradicts(candidate.name, candidate.confidence, candidate.lat, candidate.lon,
                                candidate.radius_m, gps) if named else None
        return Placement(lat=gps[0], lon=gps[1], accuracy_m=None, source="camera", evidence="the photo's own GPS",
                         landmark_key=None if far else key, note=far or "")
    if named and candidate.lat is not None:
        return Placement(lat=candidate.lat, lon=candidate.lon, accuracy_m=candidate.radius_m, source="landmark",
                         evidence=f"{candidate.name}, confidence {candidate.confidence:.2f}", landmark_key=key)
    return Placement(lat=None, lon=None, accuracy_m=None, source="none", evidence="", landmark_key=key,
                     note="" if named else "no GPS and no known landmark (pixels only)")


def place_changed(before: dict, after: dict) -> bool:
    """Whether a photo placed by an earlier run now has another place or source (new or removed evidence)."""
    return bool(before.get("location_source")) and any(
        (before.get(c) or "") != (after.get(c) or "") for c in ("lat", "lon", "location_source"))


def decision_changed(before: dict | None, after: dict) -> bool:
    """Whether a photo's landmark or place differs from an earlier row's (its metadata then follows)."""
    return before is None or any((before.get(c) or "") != (after.get(c) or "") for c in DECISION_COLUMNS)


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` -> seconds (for ``--max-gap``)."""
    value = str(text).strip().lower()
    try:
        return float(value)
    except ValueError:
        pass
    total, number = 0.0, ""
    for char in value:
        if char.isdigit() or char == ".":
            number += char
        elif char in "hms" and number:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
        else:
            raise ValueError(f"{text!r}: not a duration (examples: 90s, 30m, 2h, 1h30m)")
    if number:
        raise ValueError(f"{text!r}: not a duration (a number needs a unit after another: 1h30m, not 1h30)")
    return total


def add_placing_arguments(parser) -> None:
    """``tag``'s options for the library's evidence."""
    group = parser.add_argument_group("where photos were taken (the library's own evidence; docs/locate.md)")
    group.add_argument("--track", action="append", default=[], metavar="FILE.gpx",
                       help="a GPS track (GPX) of the trip; photos taken along it are placed on it (repeatable)")
    group.add_argument("--track-offset", default=None, metavar="OFFSET",
                       help="GPS time minus the camera's clock, for photos without a time-zone offset, as "
                            "exiftool's Geosync: +1:30:00 (1 h 30 min), -45 (seconds), 1.5h")
    group.add_argument("--max-gap", default=None, metavar="DURATION",
                       help="the longest time to a photo with GPS that a photo may take its place from "
                            "(e.g. 30m, 2h; default: see docs/locate.md)")
    group.add_argument("--together", action="append", default=[], metavar="CAMERA=GPS_DEVICE",
                       help='a camera that was always with a GPS device, e.g. "Canon EOS 80D=Apple iPhone 12" '
                            "(repeatable; device names as the CSV's evidence shows them)")
    group.add_argument("--no-time", action="store_true", help="do not place photos from photos taken close in time")
    group.add_argument("--no-tracks", action="store_true", help="ignore --track files")
    group.add_argument("--no-landmarks", action="store_true",
                       help="places from GPS, tracks and capture times only: the pixels name no landmark and "
                            "place no photo")
    group.add_argument("--pixels-only", action="store_true",
                       help="only the pixels and each photo's own GPS, as before the library pass (no capture "
                            "times or tracks are read; a landmark far from the photo's own GPS is withheld, as "
                            "predict does)")


def placing_from_args(args) -> PlacingOptions:
    from .tracks import parse_offset  # noqa: PLC0415 - only when a track offset is given

    options = LocateOptions()
    if args.max_gap is not None:
        options.max_gap_s = parse_duration(args.max_gap)
    if args.track_offset is not None:
        options.track_offset = parse_offset(args.track_offset)
    together = {}
    for item in args.together:
        camera, sep, gps_device = item.partition("=")
        if not sep or not camera.strip() or not gps_device.strip():
            raise ValueError(f"--together {item!r}: give CAMERA=GPS_DEVICE, e.g. \"Canon EOS 80D=Apple iPhone 12\"")
        together[camera.strip()] = gps_device.strip()
    options.together = together
    options.use_time = not args.no_time
    options.use_tracks = not args.no_tracks
    options.use_landmarks = not args.no_landmarks
    return PlacingOptions(enabled=not args.pixels_only, tracks=[] if args.no_tracks else list(args.track),
                          locate=options)
