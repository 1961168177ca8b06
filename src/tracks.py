"""GPS tracks (GPX): where the carrier of a GPS logger was at a photo's capture instant, the way
``exiftool -geotag`` places photos on a track, with an accuracy radius and the evidence in words.

Matching ``exiftool -geotag`` (ExifTool 12.57, ``Image::ExifTool::Geotag``), so that a user who knows it gets the
same places:

* every point with a time counts (``<trkpt>``, ``<rtept>``, ``<wpt>``), from all files, merged and sorted by time
  (segments and tracks are not boundaries; two points at the same instant: the one loaded last);
* an instant between two points no more than ``GeoMaxIntSecs`` (default 1800 s, our default too) apart is
  interpolated linearly in latitude and longitude; the gap before the first point of a file counts as outside
  the track (``GeoMaxExtSecs``);
* points further apart, or an instant before the first / after the last point: the nearest point when it is no
  more than ``GeoMaxExtSecs`` (default 1800 s, ours too) away, else no place.

Accuracy radius (our addition; ExifTool writes none): a point's own accuracy is 5 m x its HDOP when the GPX
gives ``<hdop>`` (a typical GPS user range error of 5 m), else 10 m. Interpolated: the larger of the two
points' accuracies plus the straight-line distance to the nearer of the two points (at worst the carrier was
there). Nearest point at dt seconds: its accuracy plus dt x the faster of walking speed (1.4 m/s) and the track's
own speed around that point.

Clock offsets (``--track-offset``) use ExifTool's ``Geosync`` convention: the offset is GPS time minus camera
time, added to the camera's time (a camera 90 s slow: ``+1:30``).
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import gpxpy
import gpxpy.gpx

from .geo import distance_m

GEO_MAX_INT_SECS = 1800.0   # exiftool's GeoMaxIntSecs default: longest gap interpolated across
GEO_MAX_EXT_SECS = 1800.0   # exiftool's GeoMaxExtSecs default: furthest from the nearest point
UERE_M = 5.0                # metres per unit of HDOP
DEFAULT_FIX_M = 10.0        # a point without HDOP
WALK_MPS = 1.4              # the least speed assumed when a photo is placed at a point it was not taken at


class TrackError(ValueError):
    """A track file cannot be used (one line: the file and the reason)."""


@dataclass(frozen=True)
class TrackPoint:
    t: float            # seconds since the epoch, UTC
    lat: float
    lon: float
    accuracy_m: float
    file: str           # the file's name, for the evidence
    first: bool = False  # the first point of its file (exiftool: the gap before it is outside a track)


def format_duration(seconds: float) -> str:
    """``12`` -> ``"12 s"``, ``250`` -> ``"4 min"``, ``3900`` -> ``"1 h 5 min"`` (rounded: for the evidence)."""
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def format_offset(offset: timedelta) -> str:
    """A clock offset exactly, signed: ``+90 s``, ``-5 min``, ``+1 h 30 min``."""
    seconds = offset.total_seconds()
    sign, seconds = ("-" if seconds < 0 else "+"), abs(seconds)
    if seconds % 60:
        return f"{sign}{seconds:g} s"
    hours, minutes = divmod(int(seconds) // 60, 60)
    return sign + " ".join(p for p in (f"{hours} h" if hours else "", f"{minutes} min" if minutes else "") if p)


_UNIT = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)$")
_GEOSYNC = re.compile(r"^([+-]?)(\d+(?:\.\d*)?)(?:(?: |:)(\d+(?:\.\d*)?))*$")


def parse_offset(text: str | int | float | timedelta) -> timedelta:
    """A camera clock's offset for ``--track-offset``, in ExifTool's ``Geosync`` convention: GPS time minus camera
    time (a camera running 90 s slow: ``+90``), added to the camera's time before looking it up on the track.

    Forms: seconds (``"5400"``, ``"-45"``), ExifTool's ``[+-][[[DD ]HH:]MM:]SS[.ss]`` (``"+1:30"`` is 1 min 30 s
    as in ExifTool; one and a half hours is ``"+1:30:00"``), or a number with a unit (``"-45s"``, ``"5m"``,
    ``"1.5h"``). Raises ``ValueError`` (one line) otherwise.
    """
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return timedelta(seconds=float(text))
    value = str(text).strip()
    unit = _UNIT.match(value)
    if unit:
        seconds = float(unit.group(2)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit.group(3)]
        return timedelta(seconds=-seconds if unit.group(1) == "-" else seconds)
    if _GEOSYNC.match(value):
        parts = [float(p) for p in re.split(r"[ :]", value.lstrip("+-"))]
        if len(parts) <= 4 and all(p < 60 for p in parts[1:][-2:]):
            seconds = sum(p * m for p, m in zip(reversed(parts), (1, 60, 3600, 86400)))
            return timedelta(seconds=-seconds if value.startswith("-") else seconds)
    raise ValueError(f"track offset {value!r} is not a time offset (seconds like -45 or 90s, 5m, 1.5h, or "
                     "exiftool's [+-][[HH:]MM:]SS, where +1:30 is 1 min 30 s)")


def _utc_seconds(when: datetime) -> float:
    if when.tzinfo is None:  # GPX times are UTC; a naive instant is taken as UTC too
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _point_accuracy(point) -> float:
    hdop = getattr(point, "horizontal_dilution", None)
    try:
        hdop = float(hdop) if hdop is not None else None
    except (TypeError, ValueError):
        hdop = None
    return UERE_M * hdop if hdop is not None and math.isfinite(hdop) and hdop > 0 else DEFAULT_FIX_M


def _read_gpx(path: Path) -> list[TrackPoint]:
    try:
        with open(path, encoding="utf-8") as fh:
            gpx = gpxpy.parse(fh)
    except OSError as exc:
        raise TrackError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (gpxpy.gpx.GPXException, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrackError(f"{path}: not a GPX file gpxpy can read ({reason})") from None
    raw = [p for track in gpx.tracks for segment in track.segments for p in segment.points]
    raw += [p for route in gpx.routes for p in route.points] + list(gpx.waypoints)
    points = []
    for p in raw:
        try:
            lat, lon = float(p.latitude), float(p.longitude)
        except (TypeError, ValueError):
            continue
        if p.time is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            continue  # a planned route's points carry no time; a broken point is no evidence
        points.append(TrackPoint(_utc_seconds(p.time), lat, lon, _point_accuracy(p), path.name))
    if not points:
        raise TrackError(f"{path}: no points with a time (a planned route, not a recorded track?)")
    points.sort(key=lambda q: q.t)
    points[0] = replace(points[0], first=True)
    return points


class TrackSet:
    """GPS points of one or more track files, merged and sorted by time; see the module's notes for the rules."""

    def __init__(self, points: list[TrackPoint] = (), files: list[str] = (),
                 max_int_secs: float = GEO_MAX_INT_SECS, max_ext_secs: float = GEO_MAX_EXT_SECS):
        by_time: dict[float, TrackPoint] = {}
        for p in points:  # same instant: the one loaded last, as in exiftool
            by_time[p.t] = p
        self.points = [by_time[t] for t in sorted(by_time)]
        self.times = [p.t for p in self.points]
        self.files = list(files)
        self.max_int_secs, self.max_ext_secs = float(max_int_secs), float(max_ext_secs)

    def __len__(self) -> int:
        return len(self.points)

    def span(self) -> tuple[datetime, datetime] | None:
        """First and last point's time (UTC, aware), ``None`` when empty."""
        if not self.points:
            return None
        return tuple(datetime.fromtimestamp(t, timezone.utc) for t in (self.times[0], self.times[-1]))

    def _speed_around(self, i: int) -> float:
        speeds = [WALK_MPS]
        for j in (i - 1, i + 1):
            if 0 <= j < len(self.points) and self.times[j] != self.times[i]:
                a, b = self.points[i], self.points[j]
                speeds.append(distance_m(a.lat, a.lon, b.lat, b.lon) / abs(a.t - b.t))
        return max(speeds)

    def _nearest(self, i: int, t: float, where: str) -> tuple[float, float, float, str]:
        p = self.points[i]
        dt = abs(t - p.t)
        accuracy = p.accuracy_m + dt * self._speed_around(i)
        return p.lat, p.lon, accuracy, f"track {p.file}, {where}"

    def position_at(self, instant_utc: datetime, offset: timedelta = timedelta(0)
                    ) -> tuple[float, float, float, str] | None:
        """``(lat, lon, accuracy_m, evidence)`` on the track at ``instant_utc + offset`` (``offset``: GPS time minus
        camera time, see :func:`parse_offset`), or ``None`` when the track does not cover it. A naive instant is
        taken as UTC."""
        if not self.points:
            return None
        t = _utc_seconds(instant_utc) + offset.total_seconds()
        result = self._locate(t)
        if result is not None and offset:
            result = (*result[:3], f"{result[3]} (clock offset {format_offset(offset)})")
        return result

    def _locate(self, t: float) -> tuple[float, float, float, str] | None:
        times, n, ext = self.times, len(self.points), self.max_ext_secs
        if t < times[0]:
            if t < times[0] - ext:
                return None
            return self._nearest(0, t, f"{format_duration(times[0] - t)} before its first point")
        if t > times[-1]:
            if t > times[-1] + ext:
                return None
            return self._nearest(n - 1, t, f"{format_duration(t - times[-1])} after its last point")
        if n == 1:
            return self._nearest(0, t, "at a recorded point")
        i1 = min(bisect.bisect_right(times, t), n - 1)
        i0 = i1 - 1
        p0, p1 = self.points[i0], self.points[i1]
        gap = p1.t - p0.t
        limit = ext if (p1.first and self.max_int_secs) else self.max_int_secs
        if gap > limit:
            i = i0 if t - p0.t < p1.t - t else i1
            dt = abs(t - times[i])
            if dt > ext:
                return None
            side = "earlier" if i == i0 else "later"
            return self._nearest(i, t, f"nearest point {format_duration(dt)} {side} (points {format_duration(gap)} "
                                       "apart: too far to interpolate)")
        f = 0.0 if gap == 0 else (t - p0.t) / gap
        if f == 0.0:
            return p0.lat, p0.lon, p0.accuracy_m, f"track {p0.file}, at a recorded point"
        lon1 = p1.lon
        if abs(lon1 - p0.lon) > 180:  # across the antimeridian, as exiftool does
            lon1 += -360 if lon1 > p0.lon else 360
        lat = p0.lat + f * (p1.lat - p0.lat)
        lon = p0.lon + f * (lon1 - p0.lon)
        lon = (lon + 180) % 360 - 180
        accuracy = max(p0.accuracy_m, p1.accuracy_m) + min(f, 1 - f) * distance_m(p0.lat, p0.lon, p1.lat, p1.lon)
        files = p0.file if p0.file == p1.file else f"{p0.file} and {p1.file}"
        what = "track" if p0.file == p1.file else "tracks"
        return lat, lon, accuracy, f"{what} {files}, between points {format_duration(gap)} apart"


def load_tracks(paths, max_int_secs: float = GEO_MAX_INT_SECS, max_ext_secs: float = GEO_MAX_EXT_SECS) -> TrackSet:
    """The points of every GPX file in ``paths`` as one :class:`TrackSet`; raises :class:`TrackError` (one line
    naming the file) for a file that cannot be read or holds no point with a time."""
    points: list[TrackPoint] = []
    files = []
    for path in paths:
        path = Path(path)
        points += _read_gpx(path)
        files.append(str(path))
    return TrackSet(points, files, max_int_secs, max_ext_secs)
