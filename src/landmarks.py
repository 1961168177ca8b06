"""Where each landmark is: readable name, city, country and latitude/longitude, from ``src/landmarks.json``.

The file is keyed by class folder name (``"09.Golden_Gate_Bridge"``). A class it does not cover (a user's own
data set) still works everywhere; it just has no location.
"""
from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

from .geo import distance_m, format_km

LANDMARKS_FILE = Path(__file__).resolve().parent / "landmarks.json"
NO_LANDMARK = "no known landmark"
DEFAULT_RADIUS_M = 2_000.0  # how far from its point a landmark without its own "radius_m" can be photographed


@functools.lru_cache(maxsize=None)
def load_landmarks(path: str | None = None) -> dict[str, dict]:
    """``{folder name: {"name", "city", "country", "lat", "lon"[, "radius_m", "note"]}}`` from the data file."""
    with open(path or LANDMARKS_FILE, encoding="utf-8") as fh:
        return json.load(fh)["landmarks"]


def bare_name(folder_name: str) -> str:
    """``"09.Golden_Gate_Bridge"`` -> ``"golden gate bridge"``: the class without its number, for matching."""
    return re.sub(r"[\s_]+", " ", class_display_name(folder_name)).strip().lower()


@functools.lru_cache(maxsize=None)
def _by_bare_name() -> dict[str, dict]:
    table: dict[str, dict] = {}
    for key, info in load_landmarks().items():
        table.setdefault(bare_name(key), info)
    return table


def class_display_name(folder_name: str) -> str:
    """``"00.Haleakala_National_Park"`` -> ``"Haleakala National Park"``."""
    name = folder_name
    head, sep, tail = name.partition(".")
    if sep and head.isdigit():
        name = tail
    return name.replace("_", " ").strip()


def landmark_info(folder_name: str) -> dict | None:
    """Location facts of a class, or ``None`` for a class the data file does not know.

    Looked up by exact folder name first, then by the name without its number (so ``"Golden_Gate_Bridge"`` or a
    renumbered ``"03.Golden_Gate_Bridge"`` in a user's own data set still finds its place). Returns a copy.
    """
    info = load_landmarks().get(folder_name) or _by_bare_name().get(bare_name(folder_name))
    return dict(info) if info is not None else None


def landmark_radius_m(folder_name: str) -> float:
    """How far (metres) from its point a photo of the landmark can be taken: ``radius_m`` in the data file (km for
    natural areas and long structures), else :data:`DEFAULT_RADIUS_M`."""
    info = landmark_info(folder_name)
    return float(info.get("radius_m", DEFAULT_RADIUS_M)) if info else DEFAULT_RADIUS_M


def display_name(folder_name: str) -> str:
    """The readable name of a class: from the data file when known, else from the folder name."""
    info = landmark_info(folder_name)
    return info["name"] if info else class_display_name(folder_name)


def format_latlon(lat: float, lon: float) -> str:
    """``(37.8199, -122.4783)`` -> ``"37.8199 N, 122.4783 W"``."""
    return f"{abs(lat):.4f} {'N' if lat >= 0 else 'S'}, {abs(lon):.4f} {'E' if lon >= 0 else 'W'}"


def describe(folder_name: str, prob: float | None = None) -> str:
    """One line a person reads: ``"Golden Gate Bridge, San Francisco, 37.8199 N, 122.4783 W, 0.93"``.

    Classes without a known location give just the name (and probability).
    """
    info = landmark_info(folder_name)
    parts = [display_name(folder_name)]
    if info is not None:
        parts += [info["city"], format_latlon(info["lat"], info["lon"])]
    if prob is not None:
        parts.append(f"{prob:.2f}")
    return ", ".join(parts)


def xmp_gps_coordinate(value: float, is_latitude: bool) -> str:
    """A coordinate in XMP's ``GPSCoordinate`` form, degrees and decimal minutes: ``37.8199`` -> ``"37,49.1940N"``."""
    if not math.isfinite(value):
        raise ValueError(f"not a coordinate: {value}")
    ref = ("N" if value >= 0 else "S") if is_latitude else ("E" if value >= 0 else "W")
    value = abs(value)
    degrees = int(value)
    minutes = round((value - degrees) * 60.0, 4)
    if minutes >= 60.0:  # 59.99999 rounds up to the next degree
        degrees, minutes = degrees + 1, 0.0
    return f"{degrees},{minutes:.4f}{ref}"


def parse_xmp_gps_coordinate(text: str) -> float:
    """Inverse of :func:`xmp_gps_coordinate`; also reads the ``"DDD,MM,SSk"`` form."""
    text = text.strip()
    ref, body = text[-1].upper(), text[:-1]
    if ref not in "NSEW":
        raise ValueError(f"not an XMP GPS coordinate: {text!r}")
    parts = [float(p) for p in body.split(",")]
    value = parts[0] + (parts[1] / 60.0 if len(parts) > 1 else 0.0) + (parts[2] / 3600.0 if len(parts) > 2 else 0.0)
    return -value if ref in "SW" else value


def place_contradicts(name: str, confidence: float, lat: float | None, lon: float | None, radius_m: float,
                      where: tuple[float, float], what: str = "the photo's own GPS",
                      slack_m: float = 0.0) -> str | None:
    """Why a landmark cannot be what a photo taken at ``where`` shows (farther from it than its radius), or
    ``None`` when it can (or the landmark has no place): the one wording of "landmark withheld" everywhere."""
    if lat is None or lon is None:
        return None
    dist = distance_m(where[0], where[1], lat, lon)
    if dist <= radius_m + slack_m:
        return None
    return f"landmark withheld: pixels say {name} ({confidence:.2f}) but {what} puts it {format_km(dist)} from it"


def gps_contradicts(entry: dict, gps: tuple[float, float]) -> str | None:
    """:func:`place_contradicts` for a top-k entry (``class``, ``name``, ``prob``, ``lat``, ``lon``) and a photo's
    own GPS: a recognised landmark thousands of km from where the camera was is not that landmark."""
    radius = landmark_radius_m(entry["class"]) if entry.get("class") else DEFAULT_RADIUS_M
    return place_contradicts(entry["name"], float(entry["prob"]), entry.get("lat"), entry.get("lon"), radius, gps)
