"""What a photo's own metadata says about where and when it was taken: the evidence :mod:`src.locate` combines.

:func:`read_evidence` reads a whole library through ONE long-running ExifTool process (``-stay_open``, a few
hundred files per request, ``-j -n`` with an explicit tag list): capture time (``DateTimeOriginal`` + sub-seconds
+ ``OffsetTimeOriginal``), the photo's own GPS position and GPS time, the device (make, model, serial), from the
file and from its XMP sidecars (``photo.jpg.xmp``, ``photo.xmp``) where the file lacks them.

What we wrote is not evidence: a GPS position ``tag --sidecar`` / ``--write-into-photo`` estimated is recorded as
ours in the ``XMP-LandmarkTagger`` namespace (``Fields``, see :mod:`src.metadata`) and skipped here, or a re-run
would read its own guesses back as camera GPS. A position someone else wrote (the camera, digiKam, a person, or
a person who changed ours since) counts.

Absurd values are missing values, each with a one-sentence note on the photo: GPS exactly 0,0 (what a camera
without a fix writes), coordinates out of range or NaN, dates before 1990 or more than a day in the future,
unparseable dates, UTC offsets outside -12:00..+14:00. A photo with GPS time and local time but no offset tag
gets its offset from their difference (rounded to 15 min), with a note.

Without ExifTool, Pillow reads the EXIF of the file itself (no sidecars, no maker-note serial numbers), with one
warning for the run.
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tqdm.auto import tqdm

from .evidence_readers import (ExifToolReader, float_value, raw_from_exiftool, raw_from_pillow, text_value)
from .metadata import exiftool_available, sidecar_paths

MIN_YEAR = 1990                   # before digital cameras wrote EXIF; 1970/1980 are reset clocks
FUTURE_SLACK = timedelta(days=1)  # a capture time more than this after now (UTC) is a wrong clock
OFFSET_RANGE_MIN = (-12 * 60, 14 * 60)
BATCH = 200                       # files per ExifTool request: one round trip per batch, a note per failed file


@dataclass
class PhotoEvidence:
    """One photo's capture time, own GPS and device, after sanity checks (an absurd value is ``None`` + a note).

    ``time_local``: the wall-clock capture time the device wrote (DateTimeOriginal + sub-seconds), naive.
    ``utc_offset_min``: its offset to UTC in minutes (OffsetTimeOriginal, or derived from GPS time), ``None`` when
    the device did not say: then ``time_local`` is on the device's own clock, whose zone is unknown.
    ``gps``: the photo's own position ``(lat, lon)`` written by the camera or another program, never one we
    estimated. ``device``: ``"Make Model"`` plus ``" #serial"`` when present; ``None`` without EXIF (a scan).
    """
    path: str
    time_local: datetime | None = None
    utc_offset_min: int | None = None
    gps: tuple[float, float] | None = None
    gps_time: datetime | None = None          # GPSDateStamp + GPSTimeStamp, UTC (naive), when present and sane
    device: str | None = None
    notes: list[str] = field(default_factory=list)
    source: str = "file"                      # "file", "sidecar", "file+sidecar", "none"
    offset_derived: bool = False              # utc_offset_min came from GPS time - local time, not a tag

    @property
    def instant(self) -> datetime | None:
        """The capture instant in UTC (aware), when the time and its offset are both known."""
        if self.time_local is None or self.utc_offset_min is None:
            return None
        return (self.time_local - timedelta(minutes=self.utc_offset_min)).replace(tzinfo=timezone.utc)


def format_offset(minutes: int) -> str:
    """``120`` -> ``"+02:00"``, ``-570`` -> ``"-09:30"`` (the EXIF OffsetTime form)."""
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


# --------------------------------------------------------------------------------------------------------------
# Parsing and sanity checks (shared by the ExifTool and Pillow readers)
# --------------------------------------------------------------------------------------------------------------

_DATE = re.compile(r"^\s*(\d{4})[:-](\d{1,2})[:-](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?(\.\d+)?"
                   r"\s*(Z|[+-]\d{1,2}:?\d{2})?\s*$")
_OFFSET = re.compile(r"^\s*(?:(Z)|([+-])(\d{1,2}):?(\d{2}))\s*$")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def parse_offset_tag(value, notes: list[str], label: str) -> int | None:
    """An EXIF/XMP offset (``"+02:00"``, ``"Z"``) in minutes; ``None`` + a note when unreadable or out of range."""
    text = text_value(value)
    if text is None:
        return None
    m = _OFFSET.match(text)
    if not m:
        notes.append(f"{label} {text!r} is not a UTC offset; ignored.")
        return None
    if m.group(1):
        return 0
    minutes = int(m.group(3)) * 60 + int(m.group(4))
    minutes = -minutes if m.group(2) == "-" else minutes
    if int(m.group(4)) >= 60 or not OFFSET_RANGE_MIN[0] <= minutes <= OFFSET_RANGE_MIN[1]:
        notes.append(f"{label} {text} is outside -12:00..+14:00; ignored.")
        return None
    return minutes


def parse_datetime_tag(value, notes: list[str], label: str, utc: bool = False) -> tuple[datetime | None, int | None]:
    """``"2024:05:01 12:00:00[.12][+02:00]"`` (EXIF or XMP form) -> ``(naive datetime, offset minutes or None)``.

    ``None`` + a note for an unparseable date, a year before :data:`MIN_YEAR` or a time more than a day in the
    future (``utc``: the value is UTC; else local, which may run up to 14 h ahead of UTC)."""
    text = text_value(value)
    if text is None:
        return None, None
    m = _DATE.match(text)
    if not m:
        digits = re.sub(r"\D", "", text)
        reason = "is all zeros (no date set)" if digits and set(digits) == {"0"} else "is not a date"
        notes.append(f"{label} {text!r} {reason}; ignored.")
        return None, None
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    try:
        when = datetime(year, month, day, hour, minute, int(m.group(6) or 0))
    except ValueError:
        reason = "is all zeros (no date set)" if year == 0 else "is not a valid date"
        notes.append(f"{label} {text!r} {reason}; ignored.")
        return None, None
    if m.group(7):
        when += timedelta(microseconds=round(float("0" + m.group(7)) * 1e6))
    offset = parse_offset_tag(m.group(8), notes, label + " offset") if m.group(8) else None
    limit = _utc_now() + FUTURE_SLACK + (timedelta(0) if utc else timedelta(hours=14))
    if year < MIN_YEAR:
        notes.append(f"{label} {text} is before {MIN_YEAR} (a reset camera clock); ignored.")
        return None, None
    if when > limit:
        notes.append(f"{label} {text} is in the future; ignored.")
        return None, None
    return when, offset


def _subsec(value, notes: list[str], label: str) -> timedelta:
    text = text_value(value)
    if text is None:
        return timedelta(0)
    if not text.isdigit():
        notes.append(f"{label} {text!r} is not a fraction of a second; ignored.")
        return timedelta(0)
    return timedelta(microseconds=round(float("0." + text) * 1e6))


def check_gps(lat, lon, notes: list[str], label: str) -> tuple[float, float] | None:
    """``(lat, lon)`` when both are finite, in range and not exactly 0,0; else ``None`` + a note."""
    if lat is None and lon is None:
        return None
    if lat is None or lon is None:
        notes.append(f"{label} has a {'latitude' if lon is None else 'longitude'} only; ignored.")
        return None
    lat, lon = float_value(lat), float_value(lon)
    if not (math.isfinite(lat) and math.isfinite(lon)):
        notes.append(f"{label} is not a number; ignored.")
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        notes.append(f"{label} {lat:g},{lon:g} is out of range; ignored.")
        return None
    if lat == 0 and lon == 0:
        notes.append(f"{label} is exactly 0,0 (what a camera without a fix writes); ignored.")
        return None
    return round(lat, 7), round(lon, 7)


@dataclass
class _Part:
    """What one place (the file's EXIF, its embedded XMP, one sidecar) says, checked."""
    time: datetime | None = None
    offset: int | None = None
    gps: tuple[float, float] | None = None
    gps_time: datetime | None = None
    device: str | None = None


def _device(make, model, serial) -> str | None:
    make, model, serial = text_value(make), text_value(model), text_value(serial)
    if not make and not model:
        return None
    # "Canon" + "Canon EOS 80D" is "Canon EOS 80D", not "Canon Canon EOS 80D"
    name = model if make and model and model.lower().startswith(make.lower()) else " ".join(filter(None, (make,
                                                                                                        model)))
    return f"{name} #{serial}" if serial else name


def _interpret(raw: dict, notes: list[str], where: str) -> _Part:
    """Raw strings of one place (keys below) -> a checked :class:`_Part`; notes name ``where``."""
    part = _Part()
    part.time, inline_offset = parse_datetime_tag(raw.get("time"), notes, f"DateTimeOriginal{where}")
    if part.time is not None:
        part.time += _subsec(raw.get("subsec"), notes, f"SubSecTimeOriginal{where}")
        part.offset = inline_offset
        for key, label in (("offset", "OffsetTimeOriginal"), ("offset_any", "OffsetTime")):
            if part.offset is None and raw.get(key) is not None:
                part.offset = parse_offset_tag(raw.get(key), notes, label + where)
    if not raw.get("ours_gps"):
        part.gps = check_gps(raw.get("lat"), raw.get("lon"), notes, f"GPS position{where}")
    if raw.get("gps_datetime") is not None:
        stamp, stamp_offset = parse_datetime_tag(raw["gps_datetime"], notes, f"GPSDateTime{where}", utc=True)
        part.gps_time = stamp - timedelta(minutes=stamp_offset or 0) if stamp else None
    elif raw.get("gps_date") is not None and raw.get("gps_clock") is not None:
        text = f"{text_value(raw['gps_date'])} {text_value(raw['gps_clock'])}"
        part.gps_time, _ = parse_datetime_tag(text, notes, f"GPS date and time{where}", utc=True)
    part.device = _device(raw.get("make"), raw.get("model"), raw.get("serial"))
    return part


def _combine(path: str, parts: list[tuple[str, _Part]], notes: list[str]) -> PhotoEvidence:
    """One photo's evidence from its places in order of trust (file EXIF, file XMP, sidecars): each value from
    the first place that has it; the time and its offset from the same place."""
    ev = PhotoEvidence(path=path, notes=notes)
    used: set[str] = set()
    for origin, part in parts:
        if ev.time_local is None and part.time is not None:
            ev.time_local, ev.utc_offset_min = part.time, part.offset
            used.add(origin)
        elif ev.time_local is not None and ev.utc_offset_min is None and part.time == ev.time_local \
                and part.offset is not None:
            ev.utc_offset_min = part.offset  # a sidecar that knows the zone of the same clock reading
            used.add(origin)
        for name in ("gps", "gps_time", "device"):
            if getattr(ev, name) is None and getattr(part, name) is not None:
                setattr(ev, name, getattr(part, name))
                used.add(origin)
    ev.source = "+".join(s for s in ("file", "sidecar") if s in used) or "none"
    if ev.time_local is not None and ev.gps_time is not None:
        gap = (ev.time_local - ev.gps_time).total_seconds() / 60.0
        if ev.utc_offset_min is None:
            rounded = int(round(gap / 15.0)) * 15
            if OFFSET_RANGE_MIN[0] <= rounded <= OFFSET_RANGE_MIN[1]:
                ev.utc_offset_min, ev.offset_derived = rounded, True
                off = abs(gap - rounded)
                clock = f"; the clock is {off:.0f} min from GPS time" if off >= 1 else ""
                notes.append(f"UTC offset {format_offset(rounded)} derived from the GPS time (no offset tag){clock}.")
            else:
                notes.append(f"Local time is {gap / 60:+.1f} h from the GPS time, no UTC offset; none derived.")
        elif abs(gap - ev.utc_offset_min) > 15:
            notes.append(f"Local time minus its offset is {abs(gap - ev.utc_offset_min):.0f} min from the GPS time "
                         "(a wrong clock or an old GPS fix).")
    return ev


# --------------------------------------------------------------------------------------------------------------
# Reading a library: ExifTool (file + sidecars, one process) or Pillow (the file only)
# --------------------------------------------------------------------------------------------------------------

def _key(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _read_with_exiftool(photos: list[Path], keys: list[str], bar) -> dict[str, PhotoEvidence]:
    out: dict[str, PhotoEvidence] = {}
    with ExifToolReader() as reader:
        for start in range(0, len(photos), BATCH):
            chunk = photos[start:start + BATCH]
            cars = {p: sidecar_paths(p) for p in chunk}
            names = [str(p) for p in chunk] + [str(s) for p in chunk for s in cars[p]]
            passable = [n for n in names if "\n" not in n and "\r" not in n]  # -stay_open reads one per line
            found = reader.read(list(dict.fromkeys(passable))) if passable else {}
            for photo, key in zip(chunk, keys[start:start + BATCH]):
                notes: list[str] = []
                parts: list[tuple[str, _Part]] = []
                record = found.get(str(photo), "its name holds a line break")
                if isinstance(record, str) or record.get("ExifTool:Error"):
                    reason = record if isinstance(record, str) else record["ExifTool:Error"]
                    notes.append(f"ExifTool cannot read it ({reason}).")
                elif not str(record.get("File:MIMEType", "")).startswith(("image/", "video/")):
                    kind = record.get("File:FileType") or "nothing it knows"
                    notes.append(f"ExifTool reads it as {kind}, not a photo.")
                else:
                    exif, xmp = raw_from_exiftool(record)
                    parts += [("file", _interpret(exif, notes, "")),
                              ("file", _interpret(xmp, notes, " (XMP in the file)"))]
                    found_nothing = all(v in (None, False) for v in (*exif.values(), *xmp.values()))
                    if record.get("ExifTool:Warning") and found_nothing:
                        notes.append(f"ExifTool found nothing in it: {record['ExifTool:Warning']}.")
                for car in cars[photo]:
                    rec = found.get(str(car), "its name holds a line break")
                    if isinstance(rec, str) or rec.get("ExifTool:Error"):
                        notes.append(f"Sidecar {car.name} cannot be read; ignored.")
                        continue
                    parts.append(("sidecar", _interpret(raw_from_exiftool(rec)[1], notes, f" in {car.name}")))
                out[key] = _combine(key, parts, notes)
            bar.update(len(chunk))
    return out


def _read_with_pillow(photos: list[Path], keys: list[str], bar) -> dict[str, PhotoEvidence]:
    out: dict[str, PhotoEvidence] = {}
    for photo, key in zip(photos, keys):
        notes: list[str] = []
        try:
            parts = [("file", _interpret(raw_from_pillow(photo), notes, ""))]
        except Exception as exc:  # not an image, truncated, unreadable: a note, never a stopped batch
            notes.append(f"Pillow cannot read it ({type(exc).__name__}).")
            parts = []
        out[key] = _combine(key, parts, notes)
        bar.update(1)
    return out


def read_evidence(paths, root: str | os.PathLike | None = None, progress: bool = True,
                  exiftool: bool = True) -> dict[str, PhotoEvidence]:
    """Each photo's :class:`PhotoEvidence`, keyed by its path relative to ``root`` (POSIX), else ``str(path)``.

    ``exiftool``: read through one ExifTool process (file + sidecars); ``False``, or ExifTool not installed:
    Pillow reads the file's own EXIF (one warning on stderr when ExifTool was wanted but is missing). Never
    raises for one photo: a file that cannot be read gets a note and no values.
    """
    photos = [Path(p) for p in dict.fromkeys(paths)]
    root = Path(root) if root is not None else None
    keys = [_key(p, root) for p in photos]
    use_exiftool = exiftool and exiftool_available()
    if exiftool and not use_exiftool:
        print("warning: exiftool is not installed: reading EXIF with Pillow, from the photo files only (sidecars "
              "are not read); install it for sidecars (Debian/Ubuntu: apt-get install libimage-exiftool-perl; "
              "macOS: brew install exiftool)", file=sys.stderr)
    with tqdm(total=len(photos), disable=not progress, desc="Reading capture times and GPS", unit="photo") as bar:
        if use_exiftool:
            return _read_with_exiftool(photos, keys, bar)
        return _read_with_pillow(photos, keys, bar)
