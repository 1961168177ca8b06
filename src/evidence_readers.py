"""Raw metadata of photos and sidecars, before any check: through one long-running ExifTool process, or through
Pillow when ExifTool is missing. :mod:`src.evidence` turns these raw values into checked evidence.

Both readers give the same raw keys per place (a file's EXIF, the XMP in a file or in a sidecar): ``time``,
``subsec``, ``offset``, ``offset_any``, ``lat``/``lon`` (signed), ``gps_date`` + ``gps_clock`` or
``gps_datetime``, ``make``, ``model``, ``serial``, and ``ours_gps`` (a position we wrote ourselves).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from PIL import Image

from .metadata import CONFIG_FILE
from .metadata_fields import CREATOR_TOOL, NS


def text_value(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip("\x00 \t\r\n")
    return text or None


def float_value(value) -> float:
    try:
        return float(text_value(value))
    except (TypeError, ValueError):
        return math.nan


def signed_degrees(value, ref) -> float | None:
    """EXIF stores unsigned degrees and a reference letter; S and W are negative."""
    if value is None:
        return None
    number = float_value(value)
    ref = (text_value(ref) or "").upper()
    return -abs(number) if ref.startswith(("S", "W")) else number


# --------------------------------------------------------------------------------------------------------------
# ExifTool: one -stay_open process for the whole library
# --------------------------------------------------------------------------------------------------------------

# Plain tag names, not "-GROUP:Tag": ExifTool matches a grouped request against every tag it extracts, which
# made a request 4x slower; -a keeps each group's value and -G1 names the group in the answer.
TAGS = ("-FileType", "-MIMEType", "-Error", "-Warning", "-DateTimeOriginal", "-SubSecTimeOriginal",
        "-OffsetTimeOriginal", "-OffsetTime", "-GPSLatitude", "-GPSLatitudeRef", "-GPSLongitude", "-GPSLongitudeRef",
        "-GPSDateStamp", "-GPSTimeStamp", "-GPSDateTime", "-Make", "-Model", "-SerialNumber", "-BodySerialNumber",
        "-InternalSerialNumber", "-CreatorTool", "-Fields")
# -e: no composite tags (unused; a third of the time); -fast: no scan for trailers after the image
COMMON_ARGS = ("-j", "-n", "-G1", "-a", "-e", "-fast", "-charset", "filename=utf8")
_SERIALS = ("SerialNumber", "BodySerialNumber", "InternalSerialNumber")


def ours_fields(record: dict) -> set[str]:
    """The XMP fields of ``record`` that we wrote and nobody changed since (as :func:`src.metadata.plan_changes`
    decides): ``{"XMP-exif:GPSLatitude", ...}``."""
    fields = record.get(f"{NS}:Fields")
    if fields is None and record.get("XMP-xmp:CreatorTool") == CREATOR_TOOL:
        return {"XMP-exif:GPSLatitude", "XMP-exif:GPSLongitude"}  # a sidecar of ours from before the namespace
    ours = set()
    for item in fields if isinstance(fields, list) else [fields] if fields else []:
        tag, _, value = str(item).partition("=")
        current, recorded = float_value(record.get(tag)), float_value(value)
        if math.isfinite(current) and math.isfinite(recorded) and abs(current - recorded) < 1e-6:
            ours.add(tag)
    return ours


def raw_from_exiftool(record: dict) -> tuple[dict, dict]:
    """One ExifTool JSON record (``-G1``) -> raw values of its EXIF and of its XMP."""
    def get(*keys):
        return next((record[k] for k in keys if record.get(k) not in (None, "")), None)

    serial_keys = [k for k in record if k.split(":")[-1] in _SERIALS and not k.startswith("XMP")]
    exif = {"time": get("ExifIFD:DateTimeOriginal", "IFD0:DateTimeOriginal"),
            "subsec": get("ExifIFD:SubSecTimeOriginal"), "offset": get("ExifIFD:OffsetTimeOriginal"),
            "offset_any": get("ExifIFD:OffsetTime"),
            "lat": signed_degrees(get("GPS:GPSLatitude"), get("GPS:GPSLatitudeRef")),
            "lon": signed_degrees(get("GPS:GPSLongitude"), get("GPS:GPSLongitudeRef")),
            "gps_date": get("GPS:GPSDateStamp"), "gps_clock": get("GPS:GPSTimeStamp"),
            "make": get("IFD0:Make"), "model": get("IFD0:Model"), "serial": get(*serial_keys)}
    ours = ours_fields(record)
    xmp = {"time": get("XMP-exif:DateTimeOriginal"), "lat": get("XMP-exif:GPSLatitude"),
           "lon": get("XMP-exif:GPSLongitude"), "gps_datetime": get("XMP-exif:GPSDateTime"),
           "ours_gps": bool(ours & {"XMP-exif:GPSLatitude", "XMP-exif:GPSLongitude"}),
           "make": get("XMP-tiff:Make"), "model": get("XMP-tiff:Model"),
           "serial": get("XMP-aux:SerialNumber", "XMP-exifEX:BodySerialNumber")}
    return exif, xmp


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by Python as surrogates
        return False
    return True


def _exiftool_arg(path: str) -> bytes:
    # a name starting with "-" would be read as an option
    return os.fsencode(os.path.join(".", path) if path.startswith("-") else path)


class ExifToolReader:
    """One ``exiftool -stay_open`` process; :meth:`read` returns ``{path: record or error line}``."""

    def __init__(self):
        import exiftool  # noqa: PLC0415 - optional at run time: without ExifTool, Pillow reads the EXIF

        self._module = exiftool
        self._process = None

    def __enter__(self):
        self._start()
        return self

    def __exit__(self, *exc):
        self._stop()

    def _start(self) -> None:
        self._process = self._module.ExifTool(common_args=list(COMMON_ARGS), config_file=str(CONFIG_FILE),
                                              encoding="utf-8")
        self._process.run()

    def _stop(self) -> None:
        if self._process is not None:
            try:
                self._process.terminate()
            except Exception:  # already gone: nothing to stop
                pass
            self._process = None

    def _execute(self, files: list[str]) -> dict[str, dict | str]:
        raw = self._process.execute(*TAGS, *[_exiftool_arg(f) for f in files], raw_bytes=True)
        text = raw.decode("utf-8", "surrogateescape")
        records = json.loads(text, parse_float=str, parse_int=str) if text.strip() else []
        stderr = self._process.last_stderr or b""
        errors = (stderr.decode("utf-8", "surrogateescape") if isinstance(stderr, bytes) else stderr).splitlines()
        found: dict[str, dict | str] = {}
        if len(files) == 1 and len(records) == 1:
            found[files[0]] = records[0]  # its name may not be UTF-8: ExifTool's SourceFile then has "?" in it
        for rec in records:
            source = rec.get("SourceFile", "")
            found.setdefault(source[2:] if source.startswith("./-") else source, rec)
        for f in files:
            if f not in found:
                said = [e.split(" - ")[0].removeprefix("Error: ") for e in errors if e.endswith(" - " + f)]
                found[f] = said[0] if said else "no answer"
        return found

    def read(self, files: list[str]) -> dict[str, dict | str]:
        odd = [f for f in files if not _utf8(f)]
        if odd and len(files) > 1:  # one request each, so that the answer needs no name to be matched by
            out = self.read([f for f in files if _utf8(f)]) if len(odd) < len(files) else {}
            for f in odd:
                out.update(self.read([f]))
            return out
        try:
            return self._execute(files)
        except Exception as exc:  # the process died or answered garbage: restart, then one file at a time
            if len(files) == 1:
                self._stop()
                self._start()
                return {files[0]: f"exiftool failed ({type(exc).__name__})"}
            self._stop()
            self._start()
            out: dict[str, dict | str] = {}
            for f in files:
                out.update(self.read([f]))
            return out


# --------------------------------------------------------------------------------------------------------------
# Pillow: the fallback without ExifTool (the file's EXIF only)
# --------------------------------------------------------------------------------------------------------------

EXIF_IFD, GPS_IFD = 0x8769, 0x8825


def _dms(value):
    try:
        parts = [float(v) for v in value]
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan
    if not parts or len(parts) > 3:
        return math.nan
    parts += [0.0] * (3 - len(parts))
    return parts[0] + parts[1] / 60.0 + parts[2] / 3600.0


def raw_from_pillow(path: Path) -> dict:
    """The file's EXIF as the raw values :func:`_interpret` takes; raises for a file Pillow cannot open."""
    with Image.open(path) as img:
        exif = img.getexif()
        sub, gps = exif.get_ifd(EXIF_IFD), exif.get_ifd(GPS_IFD)
    raw = {"time": sub.get(36867) or exif.get(36867), "subsec": sub.get(37521), "offset": sub.get(36881),
           "offset_any": sub.get(36880), "make": exif.get(271), "model": exif.get(272), "serial": sub.get(42033)}
    if 2 in gps or 4 in gps:
        raw["lat"] = signed_degrees(_dms(gps[2]), gps.get(1)) if 2 in gps else None
        raw["lon"] = signed_degrees(_dms(gps[4]), gps.get(3)) if 4 in gps else None
    if 29 in gps and 7 in gps:
        h, m, s = (float_value(v) for v in gps[7]) if len(gps[7]) == 3 else (math.nan,) * 3
        if all(math.isfinite(v) for v in (h, m, s)):
            raw["gps_date"], raw["gps_clock"] = gps[29], f"{int(h):02d}:{int(m):02d}:{s:06.3f}"
        else:
            raw["gps_date"], raw["gps_clock"] = gps[29], "garbage"
    return raw
