"""How fast a library's capture times and GPS are read: ``read_evidence`` through ONE ExifTool ``-stay_open``
process, against one ``exiftool`` process per photo (what a naive script does), and against the Pillow fallback,
in the same run on the same files.

    python benchmarks/bench_evidence.py                  # 10,000 photos; 300 of them one exiftool call each
    python benchmarks/bench_evidence.py --n 2000 --per-call 100

Photos: ``--n`` copies of a few tiny generated JPEGs (64x48), their EXIF written by ONE ExifTool call
(``-csv=`` import): 60 % "phone" (time, offset, GPS, GPS time), 30 % "camera" (time, sub-seconds, make, model,
serial), 2 % absurd (GPS 0,0, year 1970), the rest scans without EXIF; 5 % get a ``photo.jpg.xmp`` sidecar
(read by ExifTool, not by Pillow). One call per photo is measured on the first ``--per-call`` photos only: at
~10 photos/s, 10,000 separate calls would take a quarter of an hour; its rate is per photo all the same. Each
row runs once; the machine's load average is recorded before and after.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import format_table, save_results

from src.evidence import read_evidence
from src.evidence_readers import COMMON_ARGS, TAGS
from src.metadata import CONFIG_FILE

SIDECAR = """<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>
<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>
<rdf:Description rdf:about='' xmlns:xmp='http://ns.adobe.com/xap/1.0/' xmlns:exif='http://ns.adobe.com/exif/1.0/'
 xmp:Rating='3' exif:GPSLatitude='{lat}' exif:GPSLongitude='{lon}'/>
</rdf:RDF></x:xmpmeta>
<?xpacket end='w'?>
"""


def load() -> float:
    return round(os.getloadavg()[0], 2)


def dms(value: float, pos: str, neg: str) -> str:
    """XMP's GPS form: ``46,33.000N``."""
    hemi = pos if value >= 0 else neg
    value = abs(value)
    return f"{int(value)},{(value - int(value)) * 60:.4f}{hemi}"


def make_library(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` tiny JPEGs with varied EXIF written by one ``exiftool -csv=`` call, plus a few sidecars."""
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    bases = []
    for i in range(4):
        base = folder / f".base{i}.jpg"
        Image.new("RGB", (64, 48), (40 * i, 90, 200 - 40 * i)).save(base, quality=80)
        bases.append(base)
    rows, photos = [], []
    header = ["SourceFile", "DateTimeOriginal", "SubSecTimeOriginal", "OffsetTimeOriginal", "GPSLatitude",
              "GPSLatitudeRef", "GPSLongitude", "GPSLongitudeRef", "GPSDateStamp", "GPSTimeStamp", "Make", "Model",
              "SerialNumber"]
    for i in range(n):
        path = folder / f"IMG_{i:05d}.jpg"
        shutil.copyfile(bases[i % len(bases)], path)
        photos.append(path)
        kind = rng.random()
        day, sec = rng.randrange(1, 28), rng.randrange(86400)
        when = f"2024:03:{day:02d} {sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
        row = dict.fromkeys(header, "")
        row["SourceFile"] = str(path)
        if kind < 0.60:  # a phone: time, offset, GPS, GPS time
            lat, lon = rng.uniform(-60, 70), rng.uniform(-179, 179)
            utc = (sec - 3600) % 86400
            row.update(DateTimeOriginal=when, OffsetTimeOriginal="+01:00", GPSLatitude=f"{abs(lat):.6f}",
                       GPSLatitudeRef="N" if lat >= 0 else "S", GPSLongitude=f"{abs(lon):.6f}",
                       GPSLongitudeRef="E" if lon >= 0 else "W", GPSDateStamp=f"2024:03:{day:02d}",
                       GPSTimeStamp=f"{utc // 3600:02d}:{utc // 60 % 60:02d}:{utc % 60:02d}", Make="Apple",
                       Model="iPhone 12")
        elif kind < 0.90:  # a camera: its own clock only
            row.update(DateTimeOriginal=when, SubSecTimeOriginal=f"{rng.randrange(100):02d}", Make="Canon",
                       Model="Canon EOS 80D", SerialNumber=str(1000 + i % 3))
        elif kind < 0.92:  # absurd values
            row.update(DateTimeOriginal="1970:01:01 00:00:00", GPSLatitude="0", GPSLatitudeRef="N",
                       GPSLongitude="0", GPSLongitudeRef="E")
        else:
            continue  # a scan: no EXIF at all
        rows.append(row)
        if rng.random() < 0.05:
            lat, lon = rng.uniform(-60, 70), rng.uniform(-179, 179)
            path.with_name(path.name + ".xmp").write_text(SIDECAR.format(lat=dms(lat, "N", "S"),
                                                                         lon=dms(lon, "E", "W")), encoding="utf-8")
    for base in bases:
        base.unlink()
    meta = folder.parent / "meta.csv"
    with open(meta, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    subprocess.run(["exiftool", "-q", "-q", "-overwrite_original", f"-csv={meta}", *[r["SourceFile"] for r in rows]],
                   check=True, timeout=3600)
    return photos


def one_call_per_photo(photos: list[Path]) -> int:
    """``exiftool -j -n`` with the same options and tags, one process per photo; returns how many answers hold a
    DateTimeOriginal (absurd ones too: not checked, unlike the other rows' "with time")."""
    found = 0
    for path in photos:
        out = subprocess.run(["exiftool", "-config", str(CONFIG_FILE), *COMMON_ARGS, *TAGS, str(path)],
                             capture_output=True, text=True, timeout=60).stdout
        found += "DateTimeOriginal" in out
    return found


def summary(found: dict) -> dict:
    values = list(found.values())
    return {"with_time": sum(ev.time_local is not None for ev in values),
            "with_gps": sum(ev.gps is not None for ev in values),
            "with_device": sum(ev.device is not None for ev in values),
            "with_notes": sum(bool(ev.notes) for ev in values),
            "from_sidecar": sum("sidecar" in ev.source for ev in values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000, help="photos (default 10000)")
    parser.add_argument("--per-call", type=int, default=300,
                        help="photos read with one exiftool process each (default 300)")
    args = parser.parse_args(argv)
    if shutil.which("exiftool") is None:
        print("exiftool is not installed", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench_evidence."))
    try:
        load_before = load()
        start = time.perf_counter()
        photos = make_library(work / "library", args.n)
        made_s = time.perf_counter() - start
        print(f"{len(photos)} photos written in {made_s:.1f} s (one exiftool -csv= call)", file=sys.stderr)
        subset = photos[:args.per_call]
        rows = []

        def row(method, n, seconds, **extra):
            rows.append({"method": method, "photos": n, "seconds": round(seconds, 2),
                         "photos_per_s": round(n / seconds, 1), **extra})

        start = time.perf_counter()
        per_call_found = one_call_per_photo(subset)
        row("exiftool, one process per photo", len(subset), time.perf_counter() - start,
            with_time=per_call_found)
        start = time.perf_counter()
        small = read_evidence(subset, root=work / "library", progress=False)
        row("read_evidence (one exiftool process), same photos", len(subset), time.perf_counter() - start,
            **summary(small))
        start = time.perf_counter()
        found = read_evidence(photos, root=work / "library", progress=False)
        row("read_evidence (one exiftool process)", len(photos), time.perf_counter() - start, **summary(found))
        start = time.perf_counter()
        pillow = read_evidence(photos, root=work / "library", progress=False, exiftool=False)
        row("read_evidence (Pillow fallback, no sidecars)", len(photos), time.perf_counter() - start,
            **summary(pillow))
        base = rows[0]["photos_per_s"]
        for r in rows:
            r["x_one_call_per_photo"] = round(r["photos_per_s"] / base, 1)
        same = sum(found[k].time_local == pillow[k].time_local and found[k].utc_offset_min == pillow[k].utc_offset_min
                   and found[k].device == pillow[k].device for k in found)
        table = format_table(rows, [("method", "method"), ("photos", "photos"), ("seconds", "s"),
                                    ("photos_per_s", "photos/s"), ("x_one_call_per_photo", "x per-photo calls"),
                                    ("with_time", "with time"), ("with_gps", "with GPS"),
                                    ("from_sidecar", "from sidecar"), ("with_notes", "with notes")])
        save_results("bench_evidence", "bench_evidence.py", argv, rows, table, n=len(photos),
                     per_call_subset=len(subset), library_written_s=round(made_s, 1),
                     pillow_agrees_on_time_offset_device=same, load_before=load_before, load_after=load())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
