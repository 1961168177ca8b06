"""Where each photo was taken, on a simulated year of one person's photos (:mod:`simlib`): the project's ``tag``
(the library's own evidence + the landmarks) against the pixels alone (``tag --pixels-only``, as before) and
PhotoPrism's rule (the nearest photo in time that has a place, within 36 h), in one run on the same library.

    python benchmarks/bench_locate.py                          # runs/base/transfer_exported.pt, seed 2025
    python benchmarks/bench_locate.py --sweep-gap              # + the project's method at several --max-gap
                                                               # (same flags as its main run, each on a fresh copy)
    python benchmarks/bench_locate.py --together "Canon EOS 80D=Apple iPhone 12"   # + a row with that user hint
    python benchmarks/bench_locate.py --model M --seed 7 --scale 0.5 --work /tmp/sim --keep

Each ``tag`` runs on its own copy of the library (what one run writes is never read by another). The project's
run writes sidecars and into the photos (``--sidecar --write-into-photo``), and every photo's own GPS is read
again with ExifTool afterwards: a photo whose own GPS changed counts (must be 0).

Metrics (issue #21): of the photos without camera GPS that have a usable capture time, the share placed within
25 km of where they were taken, placed wrong (> 25 km), not placed, the median accuracy radius given; the same
for the scans (no EXIF) and for the photos whose only time is absurd; known landmarks named right; photos without
a known landmark given a landmark name, among photos with and without camera GPS; places that came from an
absurd value; ``src.evidence.read_evidence``'s rate over the library. Assumptions: docs/locate.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from common import format_table, save_results

import simlib

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PROJECT / "runs" / "base" / "transfer_exported.pt"
RIGHT_KM = 25.0
PHOTOPRISM_WINDOW = timedelta(hours=36)
DEFAULT_GAPS = "15m,30m,1h,2h,6h"


def load() -> float:
    return round(os.getloadavg()[0], 2)


# -------------------------------------------------------------------------------------------------------------
# Reading the library back
# -------------------------------------------------------------------------------------------------------------

def read_exif(library: Path) -> dict[str, dict]:
    """Every photo's capture-time and GPS tags as ExifTool reads them (one process, tags by group: the photo's own
    GPS is the EXIF GPS IFD's; an estimate ``tag`` wrote is XMP-exif's), by path in the library."""
    tags = ["-ExifIFD:DateTimeOriginal", "-ExifIFD:OffsetTimeOriginal", "-GPS:GPSLatitude", "-GPS:GPSLongitude",
            "-GPS:GPSLatitudeRef", "-GPS:GPSLongitudeRef", "-XMP-exif:GPSLatitude", "-XMP-exif:GPSLongitude"]
    done = subprocess.run(["exiftool", "-json", "-n", "-G1", "-r", "-q", "-q", "-ext", "jpg", *tags, str(library)],
                          capture_output=True, text=True)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"exiftool could not read {library}: {done.stderr.strip()[:300]}")
    return {Path(r["SourceFile"]).relative_to(library).as_posix(): r for r in json.loads(done.stdout)}


def own_gps(record: dict) -> tuple[float, float] | None:
    """The EXIF GPS position (signed by its Ref tags), ``None`` without one."""
    if "GPS:GPSLatitude" not in record or "GPS:GPSLongitude" not in record:
        return None
    lat, lon = abs(float(record["GPS:GPSLatitude"])), abs(float(record["GPS:GPSLongitude"]))
    return (-lat if record.get("GPS:GPSLatitudeRef") == "S" else lat,
            -lon if record.get("GPS:GPSLongitudeRef") == "W" else lon)


def gps_changes(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Photos whose own GPS (EXIF, in the file) changed: those that had one (must be 0), those that had none and
    now have one in EXIF; and how many got an estimate in XMP-exif (what ``--write-into-photo`` writes)."""
    changed = [p for p, r in before.items() if own_gps(r) is not None and own_gps(after.get(p, {})) != own_gps(r)]
    added = [p for p, r in before.items() if own_gps(r) is None and own_gps(after.get(p, {})) is not None]
    xmp = [p for p, r in after.items() if "XMP-exif:GPSLatitude" in r]
    xmp_over_own = [p for p in xmp if own_gps(before.get(p, {})) is not None]
    return {"own_gps_changed": len(changed), "own_gps_changed_paths": changed[:20], "exif_gps_added": len(added),
            "xmp_gps_written": len(xmp), "xmp_gps_written_where_own_gps": len(xmp_over_own)}


# -------------------------------------------------------------------------------------------------------------
# The three methods
# -------------------------------------------------------------------------------------------------------------

def photoprism(exif: dict[str, dict]) -> dict[str, dict]:
    """PhotoPrism's rule: a photo without a place takes the place of the photo nearest in time that has one (its
    own GPS; 0,0 is none), within 36 h. Times as PhotoPrism compares them: UTC where the offset is known, the
    naive local time taken as UTC otherwise; no accuracy, no check."""
    def when(record):
        try:
            t = datetime.strptime(str(record.get("ExifIFD:DateTimeOriginal", "")), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            return None
        offset = str(record.get("ExifIFD:OffsetTimeOriginal", ""))
        if len(offset) == 6 and offset[0] in "+-":
            sign = 1 if offset[0] == "+" else -1
            t -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        return t

    placed, times = {}, {p: when(r) for p, r in exif.items()}
    with_place = sorted((t, p) for p, t in times.items()
                        if t is not None and own_gps(exif[p]) not in (None, (0.0, 0.0)))
    for path, record in exif.items():
        gps = own_gps(record)
        if gps is not None and gps != (0.0, 0.0):
            placed[path] = {"lat": gps[0], "lon": gps[1], "source": "camera", "accuracy_m": None}
            continue
        t = times[path]
        if t is None or not with_place:
            continue
        best = min(with_place, key=lambda tp: abs(tp[0] - t))
        if abs(best[0] - t) <= PHOTOPRISM_WINDOW:
            lat, lon = own_gps(exif[best[1]])
            placed[path] = {"lat": lat, "lon": lon, "source": "time", "accuracy_m": None}
    return placed


def tag_help() -> str:
    done = subprocess.run([sys.executable, "-m", "src", "tag", "--help"], capture_output=True, text=True, cwd=PROJECT)
    return done.stdout


def run_tag(library: Path, model: str, out: Path, extra: list[str]) -> tuple[dict[str, dict], float, str]:
    """``python -m src tag`` on ``library`` -> (rows by path, seconds, the command)."""
    cmd = [sys.executable, "-m", "src", "tag", str(library), "--model", str(model), "--out", str(out), *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT)
    seconds = time.perf_counter() - started
    if not out.exists():
        raise RuntimeError(f"tag failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    with out.open(newline="", encoding="utf-8") as fh:
        rows = {row["path"]: row for row in csv.DictReader(fh)}
    shown = " ".join(["python -m src tag LIB --model", Path(model).name, "--out", out.name, *extra])
    return rows, seconds, shown


def placements(rows: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str | None]]:
    """A tag CSV's places (``location_source``, else the older ``gps_source``) and landmark names."""
    places, names = {}, {}
    old = {"exif": "camera", "landmark": "landmark"}
    for path, row in rows.items():
        names[path] = (row.get("class") or row.get("landmark") or None) if row.get("status") == "ok" else None
        source = row.get("location_source") or old.get(row.get("gps_source", ""), "")
        if source in ("", "none") or not row.get("lat") or not row.get("lon"):
            continue
        acc = row.get("accuracy_m")
        places[path] = {"lat": float(row["lat"]), "lon": float(row["lon"]), "source": source,
                        "accuracy_m": float(acc) if acc not in (None, "") else None,
                        "evidence": row.get("evidence", "")}
    return places, names


# -------------------------------------------------------------------------------------------------------------
# Metrics
# -------------------------------------------------------------------------------------------------------------

def pct(n: int, d: int) -> float | None:
    return round(100.0 * n / d, 1) if d else None


def placement_metrics(truth: dict, places: dict, group: list[str]) -> dict:
    right, wrong, radii, errors = 0, 0, [], []
    for path in group:
        place = places.get(path)
        if place is None:
            continue
        km = simlib.distance_m((truth[path]["lat"], truth[path]["lon"]), (place["lat"], place["lon"])) / 1000
        if km <= RIGHT_KM:
            right += 1
        else:
            wrong += 1
            errors.append(km)
        if place.get("accuracy_m") is not None:
            radii.append(place["accuracy_m"])
    n = len(group)
    return {"n": n, "right": right, "wrong": wrong, "not_placed": n - right - wrong, "right_pct": pct(right, n),
            "wrong_pct": pct(wrong, n), "not_placed_pct": pct(n - right - wrong, n),
            "median_radius_m": round(statistics.median(radii)) if radii else None,
            "median_wrong_km": round(statistics.median(errors)) if errors else None}


def name_metrics(truth: dict, names: dict | None) -> dict:
    if names is None:
        return {}
    known = [p for p, t in truth.items() if t["content"] == "known"]
    others = [p for p, t in truth.items() if t["content"] != "known"]
    with_gps, without = [p for p in others if truth[p]["has_gps"]], [p for p in others if not truth[p]["has_gps"]]
    right = sum(names.get(p) == truth[p]["landmark"] for p in known)
    named_gps, named_nogps = sum(bool(names.get(p)) for p in with_gps), sum(bool(names.get(p)) for p in without)
    return {"known": len(known), "known_right": right, "known_right_pct": pct(right, len(known)),
            "not_known_with_gps": len(with_gps), "named_with_gps": named_gps,
            "named_with_gps_pct": pct(named_gps, len(with_gps)),
            "not_known_without_gps": len(without), "named_without_gps": named_nogps,
            "named_without_gps_pct": pct(named_nogps, len(without))}


def from_absurd(truth: dict, places: dict) -> int:
    """Places that came from an absurd value: a photo placed at 0,0, or a photo whose only time is absurd placed
    from a time (a time neighbour or a track)."""
    bad = 0
    for path, t in truth.items():
        place = places.get(path)
        if not t["absurd"] or place is None:
            continue
        if abs(place["lat"]) < 0.01 and abs(place["lon"]) < 0.01:
            bad += 1
        elif not t["time_usable"] and t["device_key"] != "scan" and place["source"] in ("time", "track",
                                                                                          "landmark+time"):
            bad += 1
    return bad


def evaluate(truth: dict, places: dict, names: dict | None) -> dict:
    timed = [p for p, t in truth.items() if not t["has_gps"] and t["time_usable"]]
    scans = [p for p, t in truth.items() if t["device_key"] == "scan"]
    untimed = [p for p, t in truth.items() if not t["time_usable"] and t["device_key"] != "scan"]
    return {"timed": placement_metrics(truth, places, timed), "scans": placement_metrics(truth, places, scans),
            "absurd_time": placement_metrics(truth, places, untimed), "names": name_metrics(truth, names),
            "placed_from_absurd": from_absurd(truth, places)}


def breakdown(truth: dict, places: dict) -> dict:
    """Where the GPS-less timed photos went, per device and situation: right / wrong / not placed."""
    out: dict[str, dict] = {}
    for path, t in truth.items():
        if t["has_gps"] or not t["time_usable"]:
            continue
        key = f"{t['device_key']}:{t['day_kind']}" + "".join(f":{s}" for s in t["situation"])
        if t["trip"] == "India" and t["device_key"] == "camera":
            key += ":camera_clock_home_time"
        place = places.get(path)
        if place is None:
            verdict = "not_placed"
        else:
            km = simlib.distance_m((t["lat"], t["lon"]), (place["lat"], place["lon"])) / 1000
            verdict = "right" if km <= RIGHT_KM else "wrong"
        out.setdefault(key, {"right": 0, "wrong": 0, "not_placed": 0})[verdict] += 1
    return dict(sorted(out.items()))


def wrong_list(truth: dict, places: dict, limit: int = 40) -> list[dict]:
    found = []
    for path, place in places.items():
        t = truth.get(path)
        if t is None or t["has_gps"]:
            continue
        km = simlib.distance_m((t["lat"], t["lon"]), (place["lat"], place["lon"])) / 1000
        if km > RIGHT_KM:
            found.append({"path": path, "km": round(km), "source": place["source"], "evidence": place.get("evidence"),
                          "accuracy_m": place.get("accuracy_m"), "truth_place": t["place"],
                          "situation": t["situation"], "utc": t["utc"]})
    return sorted(found, key=lambda w: -w["km"])[:limit]


def unplaced_reasons(truth: dict, rows: dict[str, dict]) -> dict[str, int]:
    """Why the GPS-less photos with a capture time got no place: the CSV's ``location_note`` (serials, file names
    and numbers blanked so that the same reason counts once), per device."""
    import re  # noqa: PLC0415 - only here

    out: dict[str, int] = {}
    for path, t in truth.items():
        row = rows.get(path, {})
        if t["has_gps"] or not t["time_usable"] or row.get("location_source") not in ("", "none", None):
            continue
        note = re.sub(r"#\S+|\S+\.JPG|\d+(\.\d+)?", "#", (row.get("location_note") or "no note").split(";")[0])
        key = f"{t['device_key']}: {note}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def row_of(method: str, m: dict, changes: dict | None, seconds: float | None) -> dict:
    def fmt(v, suffix=""):
        return "n/a" if v is None else f"{v}{suffix}"

    names = m["names"]
    return {"method": method,
            "timed_right": fmt(m["timed"]["right_pct"], " %"), "timed_wrong": fmt(m["timed"]["wrong_pct"], " %"),
            "timed_none": fmt(m["timed"]["not_placed_pct"], " %"),
            "radius": fmt(m["timed"]["median_radius_m"], " m"), "wrong_km": fmt(m["timed"]["median_wrong_km"], " km"),
            "scans": f"{m['scans']['right']}/{m['scans']['wrong']}/{m['scans']['not_placed']}",
            "known_right": fmt(names.get("known_right_pct"), " %"),
            "named_gps": fmt(names.get("named_with_gps_pct"), " %"),
            "named_nogps": fmt(names.get("named_without_gps_pct"), " %"),
            "gps_changed": fmt(changes["own_gps_changed"] if changes else None),
            "from_absurd": m["placed_from_absurd"], "seconds": fmt(None if seconds is None else round(seconds, 1)),
            "metrics": m}


COLUMNS = [("method", "method"), ("timed_right", "no GPS, timed: within 25 km"), ("timed_wrong", "wrong (> 25 km)"),
           ("timed_none", "not placed"), ("radius", "median radius"), ("wrong_km", "median error of wrong"),
           ("scans", "scans right/wrong/none"), ("known_right", "known landmarks named right"),
           ("named_gps", "no known landmark, named (with GPS)"), ("named_nogps", "(without GPS)"),
           ("gps_changed", "own GPS changed"), ("from_absurd", "placed from absurd value"), ("seconds", "s")]


# -------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--work", default=None, help="folder for the library and the runs (default: a temporary "
                                                     "one, removed unless --keep)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--sweep-gap", action="store_true", help="also run the project's method at each --gaps")
    parser.add_argument("--gaps", default=DEFAULT_GAPS, help=f"--max-gap values to sweep (default {DEFAULT_GAPS})")
    parser.add_argument("--together", action="append", default=[], metavar="CAMERA=GPS_DEVICE",
                        help="also run the project's method with this user hint (tag --together), as a row of its own")
    parser.add_argument("--no-write", action="store_true",
                        help="the project's run without --sidecar --write-into-photo")
    args = parser.parse_args(argv)
    args.argv = argv
    if not Path(args.model).exists():
        parser.error(f"{args.model}: no such model")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_locate_"))
    load_before = load()
    try:
        return run(args, work, load_before)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, load_before: float) -> int:
    started = time.perf_counter()
    truth_doc = simlib.build_library(work, seed=args.seed, scale=args.scale)
    library, gpx = work / "library", work / truth_doc["tracks"][0]
    truth = truth_doc["photos"]
    print(f"library: {len(truth)} photos in {time.perf_counter() - started:.1f} s -> {library}")
    before = read_exif(library)
    git = {"head": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=PROJECT).stdout.strip(),
           "src_uncommitted": sorted(line[3:] for line in subprocess.run(
               ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
               cwd=PROJECT).stdout.splitlines())}
    facts: dict = {"git": git, "seed": args.seed, "scale": args.scale, "library_counts": truth_doc["counts"],
                   "model": str(args.model), "load_before": load_before, "right_km": RIGHT_KM}

    # EXIF read rate of the project's reader (one ExifTool process for the library)
    try:
        from src.evidence import read_evidence  # noqa: PLC0415 - optional: older checkouts lack it
    except ImportError:
        read_evidence = None
    if read_evidence is not None:
        paths = sorted(library.rglob("*.JPG")) + sorted(library.rglob("*.jpg"))
        t0 = time.perf_counter()
        evidence = read_evidence(paths, root=library, progress=False)
        seconds = time.perf_counter() - t0
        absurd = [p for p, t in truth.items() if t["absurd"]]
        kept = [p for p in absurd if (truth[p]["absurd"] == "gps_0_0" and evidence[p].gps is not None)
                or (truth[p]["absurd"] != "gps_0_0" and evidence[p].time_local is not None)]
        facts["read_evidence"] = {"photos": len(paths), "seconds": round(seconds, 2),
                                  "photos_per_s": round(len(paths) / seconds, 1),
                                  "absurd_values_kept": len(kept), "absurd_photos": len(absurd)}
        print(f"read_evidence: {len(paths)} photos in {seconds:.2f} s ({len(paths) / seconds:.0f} photos/s)")

    helptext = tag_help()
    rows, results = [], {}
    # 1. the pixels alone, as before
    pixel_flags = ["--pixels-only"] if "--pixels-only" in helptext else \
        [f for f in ("--no-time", "--no-tracks") if f in helptext]
    lib_a = work / "lib_pixels"
    shutil.copytree(library, lib_a)
    tag_rows, seconds, cmd = run_tag(lib_a, args.model, work / "pixels.csv", pixel_flags)
    places, names = placements(tag_rows)
    facts["threshold"] = sorted({r.get("threshold", "") for r in tag_rows.values()} - {""})
    facts["model_index_mtime"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(
        Path(args.model).with_suffix(".index.npz").stat().st_mtime)) if Path(args.model).with_suffix(
        ".index.npz").exists() else None
    changes = gps_changes(before, read_exif(lib_a))
    results["pixels only (today)"] = {"command": cmd, "metrics": evaluate(truth, places, names), **changes}
    rows.append(row_of("pixels only (today)", results["pixels only (today)"]["metrics"], changes, seconds))
    # 2. PhotoPrism's rule (no landmark names: n/a)
    places = photoprism(before)
    results["PhotoPrism's rule"] = {"metrics": evaluate(truth, places, None),
                                    "wrong": wrong_list(truth, places), "breakdown": breakdown(truth, places)}
    rows.append(row_of("PhotoPrism's rule (36 h)", results["PhotoPrism's rule"]["metrics"], None, None))
    # 3. this project
    extra = ["--track", str(gpx)] + ([] if args.no_write else ["--sidecar", "--write-into-photo"])
    if "--track" in helptext:
        lib_b = work / "lib_project"
        shutil.copytree(library, lib_b)
        tag_rows, seconds, cmd = run_tag(lib_b, args.model, work / "project.csv", extra)
        cmd = cmd.replace(str(gpx), "tracks/" + gpx.name)
        places, names = placements(tag_rows)
        changes = gps_changes(before, read_exif(lib_b))
        sources: dict[str, int] = {}
        for row in tag_rows.values():
            sources[row.get("location_source", "")] = sources.get(row.get("location_source", ""), 0) + 1
        results["this project"] = {"command": cmd, "metrics": evaluate(truth, places, names), **changes,
                                   "location_sources": sources, "wrong": wrong_list(truth, places),
                                   "unplaced_reasons": unplaced_reasons(truth, tag_rows),
                                   "breakdown": breakdown(truth, places)}
        rows.append(row_of("this project", results["this project"]["metrics"], changes, seconds))
        if args.together:
            lib_t = work / "lib_together"
            shutil.copytree(library, lib_t)
            hints = [a for spec in args.together for a in ("--together", spec)]
            tag_rows, seconds, cmd = run_tag(lib_t, args.model, work / "together.csv", extra + hints)
            places, names = placements(tag_rows)
            changes = gps_changes(before, read_exif(lib_t))
            name = "this project + --together"
            results[name] = {"command": cmd.replace(str(gpx), "tracks/" + gpx.name),
                             "metrics": evaluate(truth, places, names), **changes, "wrong": wrong_list(truth, places),
                             "unplaced_reasons": unplaced_reasons(truth, tag_rows),
                             "breakdown": breakdown(truth, places)}
            rows.append(row_of(name, results[name]["metrics"], changes, seconds))
    else:
        results["this project"] = {"not_run": "this checkout's tag has no --track (the library pass is not there)"}
        print("this project: not run (tag has no --track in this checkout)")

    sweep = []
    if args.sweep_gap and "--max-gap" in helptext:
        for gap in args.gaps.split(","):
            lib_s = work / f"lib_gap_{gap}"
            shutil.copytree(library, lib_s)
            tag_rows, seconds, _ = run_tag(lib_s, args.model, work / f"gap_{gap}.csv", extra + ["--max-gap", gap])
            places, _ = placements(tag_rows)
            m = evaluate(truth, places, None)["timed"]
            sweep.append({"max_gap": gap, "right": f"{m['right_pct']} %", "wrong": f"{m['wrong_pct']} %",
                          "not_placed": f"{m['not_placed_pct']} %", "median_radius_m": m["median_radius_m"],
                          "metrics": m})
            shutil.rmtree(lib_s, ignore_errors=True)
            print(f"--max-gap {gap}: {m['right_pct']} % right, {m['wrong_pct']} % wrong")

    table = format_table(rows, COLUMNS)
    if sweep:
        table += "\n\n--max-gap sweep (this project, GPS-less photos with a capture time, this simulated library):\n"
        table += format_table(sweep, [("max_gap", "--max-gap"), ("right", "within 25 km"), ("wrong", "wrong"),
                                      ("not_placed", "not placed"), ("median_radius_m", "median radius (m)")])
    facts.update(load_after=load(), seconds=round(time.perf_counter() - started, 1), results=results, sweep=sweep,
                 uptime=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    save_results("bench_locate", "bench_locate.py", args.argv, rows, table, **facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
