"""Photo metadata: a photo's own GPS (EXIF), and what ``tag`` decided written where photo managers read it.

Writing goes through ExifTool (Debian/Ubuntu ``libimage-exiftool-perl``, macOS ``brew install exiftool``), the
reference implementation of XMP that darktable, digiKam and Lightroom users already trust: it merges into an
existing sidecar and keeps every element it does not change (darktable's edit history, ratings, the user's own
keywords), writes XMP structures (``Iptc4xmpExt:LocationShown``) and writes into JPEG/PNG/WEBP files without
re-encoding them. One ``exiftool -stay_open`` process serves a whole run (through ``pyexiftool``), so a photo
costs a read and a write, not two Perl start-ups.

What is ours is recorded in our own namespace (``XMP-LandmarkTagger``, see ``metadata_exiftool.config``): the
keywords and single fields we added, with their values. A later run replaces or removes exactly those, and
never a value someone else wrote or changed since (a location the camera or the user recorded is never
replaced). Which fields those are, for a row of the tag CSV, is :mod:`src.metadata_fields`.
"""
from __future__ import annotations

import atexit
import glob
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from PIL import Image, ImageSequence

from .images import MAX_IMAGE_PIXELS, is_candidate_image
from .metadata_fields import (CREATOR_TOOL, ESTIMATED_SOURCES, NS, _adopt_earlier_version, _as_list,
                              _meaningful, plan_changes, wanted_fields)

CONFIG_FILE = Path(__file__).resolve().with_name("metadata_exiftool.config")
# Pillow's name of a format -> the file name endings ExifTool accepts for it (it refuses a WEBP named .jpg)
INTO_PHOTO_FORMATS = {"JPEG": (".jpg", ".jpeg", ".jpe"), "PNG": (".png",), "WEBP": (".webp",)}
# Strength of each outcome, to combine a sidecar's and the photo's into the one word a caller counts.
_RANK = {"written": 5, "updated": 4, "removed": 3, "unchanged": 2, "unsupported": 1, "nothing": 0}


class MetadataError(ValueError):
    """One photo's metadata could not be written (one line naming the file and the reason); nothing was changed."""


# --------------------------------------------------------------------------------------------------------------
# EXIF GPS (Pillow: a header read, cheap enough for the decoding threads of ``tag``)
# --------------------------------------------------------------------------------------------------------------

GPS_IFD = 0x8825


def _dms_to_degrees(dms, ref) -> float | None:
    try:
        parts = [float(v) for v in dms]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not parts or len(parts) > 3 or not all(math.isfinite(v) for v in parts):
        return None
    parts += [0.0] * (3 - len(parts))
    value = parts[0] + parts[1] / 60.0 + parts[2] / 3600.0
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    ref = str(ref or "").strip("\x00 ").upper()
    return -value if ref in ("S", "W") else value


def read_exif_gps(path: str | os.PathLike) -> tuple[float, float] | None:
    """The photo's own GPS position ``(lat, lon)`` from its EXIF, or ``None`` when it has none (or a bogus one).

    Reads only the header. ``(0, 0)`` is treated as "no fix" (cameras write it when they have none).
    """
    try:
        with Image.open(path) as img:
            gps = img.getexif().get_ifd(GPS_IFD)
    except Exception:  # no EXIF, unreadable EXIF, not an image: no GPS either way
        return None
    if not gps or 2 not in gps or 4 not in gps:
        return None
    lat = _dms_to_degrees(gps.get(2), gps.get(1))
    lon = _dms_to_degrees(gps.get(4), gps.get(3))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    return round(lat, 6), round(lon, 6)


# --------------------------------------------------------------------------------------------------------------
# Sidecar names
# --------------------------------------------------------------------------------------------------------------

def sidecar_path(photo: Path) -> Path:
    """``photo.jpg`` -> ``photo.jpg.xmp``: the sidecar we create (darktable/digiKam convention; unlike
    Lightroom's ``photo.xmp`` it never makes ``photo.jpg`` and ``photo.png`` share one sidecar)."""
    photo = Path(photo)
    return photo.with_name(photo.name + ".xmp")


def sidecar_paths(photo: Path) -> list[Path]:
    """The sidecars of ``photo`` that exist: ``photo.jpg.xmp`` and/or Lightroom's/Immich's ``photo.xmp``.

    ``photo.xmp`` counts only when no other photo shares the stem (``photo.jpg`` + ``photo.png``: whose would it
    be?); then only ``photo.jpg.xmp`` is used.
    """
    photo = Path(photo)
    ours, lightroom = sidecar_path(photo), photo.with_suffix(".xmp")  # the same file for a name without ending
    found = [p for p in dict.fromkeys((ours, lightroom)) if p.is_file()]
    if lightroom != ours and lightroom in found:
        siblings = [p for p in photo.parent.glob(glob.escape(photo.stem) + ".*")
                    if p != photo and p.suffix.lower() != ".xmp" and is_candidate_image(p)]
        if siblings:
            found.remove(lightroom)
    return found


# --------------------------------------------------------------------------------------------------------------
# The ExifTool process
# --------------------------------------------------------------------------------------------------------------

_lock = threading.Lock()
_process = None
_scratch: Path | None = None


def exiftool_available() -> bool:
    return shutil.which("exiftool") is not None


def check_exiftool() -> None:
    """Raise :class:`MetadataError` (one line, how to install it) when ExifTool is missing: call before a run."""
    if not exiftool_available():
        raise MetadataError("exiftool is not installed; it writes the XMP metadata (Debian/Ubuntu: apt-get install "
                            "libimage-exiftool-perl; macOS: brew install exiftool; others: exiftool.org)")


def _shutdown() -> None:
    global _process
    if _process is not None:
        try:
            _process.terminate()
        except Exception:  # already gone: nothing to stop
            pass
        _process = None
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)


def _exiftool(*args: str, subject: Path | str | None = None) -> str:
    """Run one ExifTool command in the shared ``-stay_open`` process; returns stdout; raises on its errors."""
    global _process
    import exiftool  # noqa: PLC0415 - only commands that write metadata need it

    check_exiftool()
    if any("\n" in a for a in args):  # -stay_open reads one argument per line
        raise MetadataError(f"{subject or args[-1]}: a line break in a file name or value cannot be passed to exiftool")
    with _lock:
        if _process is None or not _process.running:
            _process = exiftool.ExifTool(common_args=[], config_file=str(CONFIG_FILE), encoding="utf-8")
            _process.run()
            atexit.register(_shutdown)
        out = _process.execute(*args)
        status, err = _process.last_status, _process.last_stderr or ""
    errors = [line.strip() for line in err.splitlines() if line.strip().startswith("Error")]
    if status != 0 or errors:
        reason = errors[0] if errors else (err.strip().splitlines() or [f"exit status {status}"])[0]
        raise MetadataError(f"{subject or args[-1]}: exiftool: {reason.removeprefix('Error: ')}")
    return out


def _read(path: Path) -> dict:
    """XMP of ``path`` (and its EXIF GPS) as ``{"XMP-dc:Subject": [...], ...}``; every value a string (exactly as
    written: a keyword "1.50" stays "1.50"), lists and structures as lists and dicts."""
    out = _exiftool("-j", "-struct", "-G1", "-n", "-XMP:all", "-GPS:GPSLatitude", "-GPS:GPSLongitude", str(path))
    data = json.loads(out, parse_float=str, parse_int=str)[0] if out.strip() else {}
    data.pop("SourceFile", None)
    return data


def _write(source: Path | None, target: Path, assign: dict, delete: list[str], subject: Path) -> None:
    """``target`` becomes ``source`` + the changes (``source`` None: a new XMP file). ``source`` is copied and the
    copy edited in place: ExifTool 12.57 (Debian 12) writes WEBP in place but not through ``-o``."""
    global _scratch
    with _lock:
        if _scratch is None:  # ExifTool takes structures (LocationShown) from a JSON file; ours, private
            _scratch = Path(tempfile.mkdtemp(prefix="landmark-tagger-exiftool."))
            atexit.register(_shutdown)
    request = _scratch / f"{uuid.uuid4().hex}.json"
    request.write_text(json.dumps([{"SourceFile": "*", **assign}], ensure_ascii=False), encoding="utf-8")
    try:
        args = ["-n", "-api", "Compact=Shorthand,OneDesc", f"-j={request}", *[f"-{tag}=" for tag in delete]]
        if source is None:
            _exiftool(*args, "-o", str(target), subject=subject)
        else:
            shutil.copyfile(source, target)
            _exiftool(*args, "-overwrite_original", str(target), subject=subject)
    finally:
        request.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Writing a file atomically
# --------------------------------------------------------------------------------------------------------------

def _temporary_beside(path: Path) -> Path:
    # same folder (one rename), hidden (never listed as a photo), same ending (ExifTool picks the format by it);
    # the PID tells a later tag run whether the writer is still alive (src.helpers.sweep_stale_temporaries)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _open_checked(path: Path) -> Image.Image:
    img = Image.open(path)
    if img.width * img.height > MAX_IMAGE_PIXELS:  # declares 100 Mpx in a few bytes: not decoded (a bomb)
        img.close()
        raise ValueError(f"{img.width}x{img.height} pixels")
    return img


def _same_pixels(a: Path, b: Path) -> bool:
    def frames(path: Path) -> list[tuple]:
        with _open_checked(path) as img:
            return [(frame.mode, frame.size, frame.tobytes()) for frame in ImageSequence.Iterator(img)]

    try:
        return frames(a) == frames(b)
    except Exception:  # a photo that does not decode cannot be shown unchanged: it is not written
        return False


def _update_file(path: Path, wanted: dict | None, is_photo: bool, gps_allowed: bool = True) -> str:
    exists = path.exists() and (is_photo or path.stat().st_size > 0)
    current = _read(path) if exists else {}
    if exists and not is_photo and not _meaningful(current) and b"rdf:RDF" not in path.read_bytes():
        raise MetadataError(f"{path}: not an XMP sidecar ExifTool can read; left as it is (move it away to let "
                            "this tool write one)")
    current = _adopt_earlier_version(current)
    if wanted is None and not any(k.startswith(NS + ":") for k in current):
        return "unchanged" if exists else "nothing"
    assign, delete = plan_changes(current, wanted, gps_allowed)
    if not assign and not delete:
        return "unchanged"
    if not is_photo and exists and wanted is None and not _meaningful(
            {k: v for k, v in current.items() if k not in delete and not k.startswith(NS + ":")}
            | {k: v for k, v in assign.items() if _as_list(v)}):
        try:
            path.unlink()  # nothing left but what we had written: the sidecar goes with it
        except OSError as exc:
            raise MetadataError(f"{path}: cannot remove ({exc.strerror or exc})") from None
        return "removed"
    try:
        _replace(path, exists, is_photo, assign, delete)
    except OSError as exc:  # a read-only folder, a full disk: one line, and the old file is as it was
        raise MetadataError(f"{path}: cannot write ({exc.strerror or exc})") from None
    if not exists:
        return "written"
    return "removed" if wanted is None else "updated"


def _replace(path: Path, exists: bool, is_photo: bool, assign: dict, delete: list[str]) -> None:
    """Write the changed file beside ``path`` and rename it over ``path`` (a crash leaves the old or the new)."""
    tmp = _temporary_beside(path)
    try:
        _write(path if exists else None, tmp, assign, delete, subject=path)
        if is_photo:
            if not _same_pixels(tmp, path):  # ExifTool does not re-encode; checked, not assumed
                raise MetadataError(f"{path}: writing the metadata would change the decoded pixels; photo left as "
                                    "it was")
            shutil.copystat(path, tmp)  # same permissions and date (apps fall back to it as the photo's date)
        elif exists:
            shutil.copymode(path, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def update_metadata(photo: Path, row: dict, provenance: dict, sidecar: bool = True, into_photo: bool = False) -> str:
    """Bring ``photo``'s metadata in line with its tag CSV ``row``; returns one word for the caller to count.

    ``row["status"] == "ok"``: our fields (GPS + datum, ``Iptc4xmpExt:LocationShown``, ``photoshop:City/Country``,
    ``dc:subject``, ``lr:hierarchicalSubject``, ``digiKam:TagsList``, provenance in ``XMP-LandmarkTagger``) are
    merged into every existing sidecar (``photo.jpg.xmp``, ``photo.xmp``), or a new ``photo.jpg.xmp``; anything
    else: fields we wrote earlier are removed (the decision changed) and a sidecar left empty is deleted.
    ``into_photo``: the same in the photo file itself (JPEG, PNG, WEBP), atomically, its decoded pixels checked
    unchanged; never for an ``error`` row, never replacing the photo's own position.

    Words: ``"written"`` (new sidecar), ``"updated"``, ``"removed"``, ``"unchanged"``, ``"nothing"`` (nothing to
    write, nothing to remove), ``"unsupported"`` (into_photo on a format we do not write into). Raises
    :class:`MetadataError` (one line: file and reason; nothing changed) for an unreadable sidecar, a write
    ExifTool refuses, or a missing ExifTool.
    """
    photo = Path(photo)
    wanted = wanted_fields(row, provenance)
    results = []
    if sidecar:
        targets = sidecar_paths(photo) or [sidecar_path(photo)]
        results += [_update_file(target, wanted, is_photo=False) for target in targets]
    if into_photo and row.get("status") != "error":
        results.append(_update_photo(photo, wanted))
    return max(results, key=_RANK.__getitem__) if results else "nothing"


def _update_photo(photo: Path, wanted: dict | None) -> str:
    try:
        if not stat.S_ISREG(os.lstat(photo).st_mode):
            return "unsupported"  # a link (replacing it would cut it), a pipe, a folder: never written into
        with _open_checked(photo) as img:
            kind = img.format
    except Exception as exc:  # tag decoded it a moment ago; if it cannot be opened now, it is not touched
        raise MetadataError(f"{photo}: cannot be opened to write metadata into it ({type(exc).__name__})") from None
    if photo.suffix.lower() not in INTO_PHOTO_FORMATS.get(kind, ()):
        return "unsupported"
    # the camera's position is in the photo already: only an estimated one is worth writing into it
    return _update_file(photo, wanted, is_photo=True,
                        gps_allowed=wanted is not None and wanted["location_source"] in ESTIMATED_SOURCES)


def write_sidecar(photo: Path, row: dict) -> str:
    """Sidecar only, provenance without a model: the call of a ``tag`` that predates :func:`update_metadata`.

    Keeps that caller's contract: never raises for one photo; a sidecar that cannot be written is reported on
    stderr (one line) and counted ``"kept"`` (left as it is).
    """
    try:
        return update_metadata(photo, row, {"tool": CREATOR_TOOL}, sidecar=True, into_photo=False)
    except MetadataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return "kept"
