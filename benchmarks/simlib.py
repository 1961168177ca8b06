"""A simulated year of one person's photo library, built from ``../shared/data``, with the truth kept beside it.

    from benchmarks.simlib import build_library
    truth = build_library("/tmp/sim", seed=2025, scale=1.0)   # /tmp/sim/library/..., /tmp/sim/tracks/*.gpx,
                                                              # /tmp/sim/truth.json
    python benchmarks/simlib.py /tmp/sim [--seed 2025] [--scale 1.0]

What it holds (every assumption is listed in docs/locate.md): a phone (Apple iPhone 12) that writes GPS
with a few metres of noise, its time-zone offset and GPS time; a camera (Canon EOS 80D, serial number) that writes
only its clock time (set to local time on trips, except one trip where it stayed on home time); a second person's
camera (Nikon Z 50) that shoots with the phone on a few home days and stays at home during the Japan trip; scans
without any EXIF; home days in Munich; a hike photographed by the camera alone, with a GPS logger's GPX track;
a day of landscapes; trips in other time zones to 5 landmarks the model knows (landmarks13 test photos) and to 4
it does not (new_landmarks test photos); flights with hours without photos; absurd EXIF on a few files.

The photos are copied (JPEG bytes as they are; PNG/WEBP/GIF converted to JPEG with Pillow so they can hold EXIF);
``../shared`` is only read. EXIF is written by ExifTool in two batch calls (``-csv=``), not a process per photo.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))   # simlib_plan beside this file, when imported from elsewhere

from simlib_plan import (  # noqa: E402
    DEVICES,
    HIKE_DAY,
    HOME,
    HOME_ZONE,
    LANDSCAPE_DAY,
    SHARED_DATA,
    TRIP_START,
    TRIPS,
    Planner,
    Shot,
    distance_m,
    offset_m,
)

__all__ = ["DEVICES", "SHARED_DATA", "build_library", "distance_m"]

# -------------------------------------------------------------------------------------------------------------
# Writing the library
# -------------------------------------------------------------------------------------------------------------

ABSURD_DATES = {"year_1970": "1970:01:01 00:{m:02d}:{s:02d}", "year_2099": "2099:{md} {hms}",
                "garbage_date": "0000:00:00 00:00:00", "garbage_date_2": "2025:13:45 27:61:00"}


def pick_absurd(shots: list[Shot], rng: random.Random) -> None:
    """Absurd EXIF on a few files: GPS 0,0 (two phone photos, one of a known landmark), a camera clock reset to
    1970 (a known landmark on a trip), a year 2099, and two unparseable dates."""
    def one(pred):
        found = [s for s in shots if s.absurd is None and pred(s)]
        return rng.choice(found) if found else None

    wanted = [("gps_0_0", lambda s: s.device == "phone" and s.day_kind == "home"),
              ("gps_0_0", lambda s: s.device == "phone" and s.content == "known"),
              ("year_1970", lambda s: s.device == "camera" and s.content == "known"),
              ("year_2099", lambda s: s.device == "camera" and s.day_kind == "home"),
              ("garbage_date", lambda s: s.device == "partner"),
              ("garbage_date_2", lambda s: s.device == "camera" and s.day_kind == "trip")]
    for what, pred in wanted:
        shot = one(pred)
        if shot is not None:
            shot.absurd = what


def subsample(shots: list[Shot], scale: float, rng: random.Random) -> list[Shot]:
    """``scale`` < 1: a share of each group (device, kind of day, landmark or not), at least one of each; the
    absurd ones are all kept."""
    if scale >= 1:
        return shots
    groups: dict[tuple, list[Shot]] = {}
    for shot in shots:
        groups.setdefault((shot.device, shot.day_kind, shot.content, shot.absurd is not None), []).append(shot)
    kept = []
    for key, items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        kept += items if key[3] else rng.sample(items, max(1, round(len(items) * scale)))
    return [s for s in shots if s in kept]


def local_clock(shot: Shot) -> datetime:
    """What the device's clock showed (naive): the true instant plus its drift, in the zone it was set to."""
    drift = DEVICES[shot.device].drift_s
    return (shot.utc + timedelta(seconds=drift)).astimezone(ZoneInfo(shot.clock_zone)).replace(tzinfo=None)


def name_files(shots: list[Shot]) -> None:
    """File names and folders as the devices and a person's imports make them."""
    counters = {k: d.counter for k, d in DEVICES.items()}
    scans = 0
    for shot in sorted(shots, key=lambda s: (s.utc is None, s.utc or datetime.min.replace(tzinfo=timezone.utc))):
        if shot.device == "scan":
            scans += 1
            shot.path = f"Scans/scan_{scans:03d}.jpg"
            continue
        n = counters[shot.device] = counters[shot.device] % 9999 + 1
        local = local_clock(shot)
        name = f"{DEVICES[shot.device].prefix}{n:04d}.JPG"
        if shot.device == "phone":
            shot.path = f"iPhone/{local:%Y}/{local:%m}/{name}"
        elif shot.device == "camera":
            if shot.trip:   # imported after the trip into one folder
                shot.path = f"Canon/{TRIP_START[shot.trip]:%Y-%m} {shot.trip}/{name}"
            else:
                event = {"hike": "Alpspitze", "landscape": "Berchtesgaden"}.get(shot.day_kind, "Munich")
                shot.path = f"Canon/{local:%Y-%m} {event}/{name}"
        else:
            shot.path = f"From Anna/{local:%Y-%m}/{name}"


def copy_photo(src: Path, dest: Path) -> None:
    """JPEG bytes as they are; other formats to JPEG (alpha over white, first frame of a GIF), pixels otherwise
    kept."""
    from PIL import Image  # noqa: PLC0415 - only the writer needs it

    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(src, dest)
        return
    with Image.open(src) as img:
        img.seek(0)
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        flat.save(dest, format="JPEG", quality=92)


def exif_row(shot: Shot, rng: random.Random) -> tuple[dict, dict]:
    """The tags to write (ExifTool names, printed values) and the photo's truth about what was written."""
    dev = DEVICES.get(shot.device)
    if dev is None:
        return {}, {"exif_time": None, "gps_written": None}
    local = local_clock(shot)
    stamp = f"{local:%Y:%m:%d %H:%M:%S}"
    tags = {"Make": dev.make, "Model": dev.model, "DateTimeOriginal": stamp, "CreateDate": stamp,
            "SerialNumber": dev.serial or "", "Software": "16.3" if dev.gps else ""}
    written = {"exif_time": stamp, "gps_written": None}
    if dev.gps:
        off = shot.utc.astimezone(ZoneInfo(shot.clock_zone)).utcoffset()
        minutes = int(off.total_seconds() // 60)
        offset = f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        tags.update(OffsetTimeOriginal=offset, OffsetTimeDigitized=offset, OffsetTime=offset,
                    SubSecTimeOriginal=f"{shot.utc.microsecond // 1000:03d}")
        sigma = 25.0 if rng.random() < 0.1 else 5.0      # indoors / between buildings: worse fixes
        if shot.absurd == "gps_0_0":
            lat, lon = 0.0, 0.0
        else:
            lat, lon = offset_m((shot.lat, shot.lon), rng.gauss(0, sigma), rng.gauss(0, sigma))
        tags.update(GPSLatitude=f"{abs(lat):.6f}", GPSLatitudeRef="N" if lat >= 0 else "S",
                    GPSLongitude=f"{abs(lon):.6f}", GPSLongitudeRef="E" if lon >= 0 else "W",
                    GPSDateStamp=f"{shot.utc:%Y:%m:%d}", GPSTimeStamp=f"{shot.utc:%H:%M:%S}",
                    GPSHPositioningError=f"{sigma * rng.uniform(0.8, 1.6):.1f}")
        written["gps_written"] = [round(lat, 6), round(lon, 6)]
    else:
        tags["SubSecTimeOriginal"] = f"{shot.utc.microsecond // 10000:02d}"
    if shot.absurd in ABSURD_DATES:
        bad = ABSURD_DATES[shot.absurd].format(m=local.minute, s=local.second, md=f"{local:%m:%d}",
                                               hms=f"{local:%H:%M:%S}")
        tags["DateTimeOriginal"] = tags["CreateDate"] = bad
        written["exif_time"] = bad
    return tags, written


def run_exiftool(rows: list[dict], files: list[Path], work: Path, raw: bool) -> None:
    """One ExifTool process writes every file's tags from a CSV (``raw``: values as they are, for dates ExifTool
    would refuse to convert)."""
    columns = sorted({k for row in rows for k in row} - {"SourceFile"})
    table, args = work / ("raw.csv" if raw else "tags.csv"), work / ("raw.args" if raw else "tags.args")
    with table.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["SourceFile"] + columns)
        writer.writeheader()
        writer.writerows(rows)
    args.write_text("".join(f"{f}\n" for f in files), encoding="utf-8")
    cmd = ["exiftool", "-q", "-q", "-overwrite_original", *(["-n"] if raw else []), f"-csv={table}", "-@", str(args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"exiftool failed writing {len(files)} photos: {done.stderr.strip()[:500]}")


def build_library(out_dir: str | Path, seed: int = 2025, scale: float = 1.0, data: str | Path = SHARED_DATA) -> dict:
    """Write the simulated library under ``out_dir/library``, the hike's GPX under ``out_dir/tracks`` and the truth
    to ``out_dir/truth.json`` (returned). ``out_dir/library`` must not exist yet. ``scale`` <= 1."""
    out, data = Path(out_dir), Path(data)
    if not (data / "landmarks13" / "test").is_dir() or not (data / "everyday").is_dir():
        raise FileNotFoundError(f"{data}: the shared photo sets (landmarks13, everyday, everyday2, new_landmarks) "
                                f"are not there")
    if shutil.which("exiftool") is None:
        raise RuntimeError("exiftool is not installed (apt install libimage-exiftool-perl)")
    if not 0 < scale <= 1:
        raise ValueError(f"scale {scale}: must be in (0, 1]")
    library, tracks = out / "library", out / "tracks"
    if library.exists():
        raise FileExistsError(f"{library}: already exists")
    tracks.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    planner = Planner(data, rng)
    busy = {HIKE_DAY, LANDSCAPE_DAY}
    for spec in TRIPS:
        busy |= planner.trip(spec)
    gpx = planner.hike(tracks, random.Random(seed + 1))
    planner.landscape_day()
    planner.home_days(busy)
    planner.scans()
    pick_absurd(planner.shots, rng)
    shots = subsample(planner.shots, scale, rng)
    name_files(shots)
    rows, raw_rows, files, photos = [], [], [], {}
    for shot in sorted(shots, key=lambda s: s.path):
        dest = library / shot.path
        copy_photo(data / shot.source, dest)
        tags, written = exif_row(shot, rng)
        if tags:
            files.append(dest)
            rows.append({"SourceFile": str(dest), **{k: v for k, v in tags.items() if k not in ("DateTimeOriginal",
                         "CreateDate") or shot.absurd not in ABSURD_DATES}})
            if shot.absurd in ABSURD_DATES:
                raw_rows.append({"SourceFile": str(dest), "DateTimeOriginal": tags["DateTimeOriginal"],
                                 "CreateDate": tags["CreateDate"]})
        dev = DEVICES.get(shot.device)
        record = asdict(shot)
        record.update(lat=round(shot.lat, 6), lon=round(shot.lon, 6), utc=shot.utc.isoformat() if shot.utc else None,
                      device=f"{dev.make} {dev.model}" if dev else None, device_key=shot.device,
                      serial=dev.serial if dev else None,
                      has_gps=bool(dev and dev.gps and shot.absurd != "gps_0_0"),
                      time_usable=bool(dev and shot.absurd not in ABSURD_DATES), **written)
        del record["path"]
        photos[shot.path] = record
    with tempfile.TemporaryDirectory(prefix="simlib_") as work:
        run_exiftool(rows, files, Path(work), raw=False)
        raw_files = [Path(r["SourceFile"]) for r in raw_rows]
        if raw_rows:
            run_exiftool(raw_rows, raw_files, Path(work), raw=True)
    truth = {"about": "simulated photo library (benchmarks/simlib.py); every assumption in docs/locate.md",
             "seed": seed, "scale": scale, "library": "library", "tracks": [gpx.relative_to(out).as_posix()],
             "home": {"name": "Munich", "lat": HOME[0], "lon": HOME[1], "zone": HOME_ZONE},
             "devices": {k: asdict(d) for k, d in DEVICES.items()},
             "trips": [{"name": t[0], "zone": t[1], "first_day": t[2].isoformat(), "landmark": t[7][1],
                        "landmark_kind": t[7][0], "camera_clock": t[10]} for t in TRIPS],
             "counts": count(photos), "photos": photos}
    (out / "truth.json").write_text(json.dumps(truth, indent=1, ensure_ascii=False), encoding="utf-8")
    return truth


def count(photos: dict) -> dict:
    values = list(photos.values())

    def by(key):
        out: dict[str, int] = {}
        for p in values:
            out[str(p[key])] = out.get(str(p[key]), 0) + 1
        return dict(sorted(out.items()))

    return {"photos": len(values), "by_device": by("device_key"), "by_day_kind": by("day_kind"),
            "by_content": by("content"), "with_camera_gps": sum(p["has_gps"] for p in values),
            "without_gps_with_time": sum(not p["has_gps"] and p["time_usable"] for p in values),
            "scans": sum(p["device_key"] == "scan" for p in values),
            "absurd": by("absurd"), "by_trip": by("trip")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    truth = build_library(args.out_dir, seed=args.seed, scale=args.scale)
    print(json.dumps(truth["counts"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
