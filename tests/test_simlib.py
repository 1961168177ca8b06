"""The simulated library of benchmarks/simlib.py writes what its truth says: read back with ExifTool and gpxpy."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import simlib  # noqa: E402

pytestmark = [
    pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed"),
    pytest.mark.skipif(not (simlib.SHARED_DATA / "landmarks13" / "test").is_dir(),
                       reason=f"shared photo sets not present at {simlib.SHARED_DATA}"),
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    truth = simlib.build_library(out, seed=7, scale=0.07)
    done = subprocess.run(["exiftool", "-json", "-n", "-r", "-G1", str(out / "library")], capture_output=True,
                          text=True, check=True)
    exif = {Path(r["SourceFile"]).relative_to(out / "library").as_posix(): r for r in json.loads(done.stdout)}
    return out, truth, exif


def test_library_holds_what_the_truth_lists(sim):
    out, truth, exif = sim
    photos = truth["photos"]
    on_disk = {p.relative_to(out / "library").as_posix() for p in (out / "library").rglob("*") if p.is_file()}
    assert on_disk == set(photos) == set(exif)
    assert 25 <= len(photos) <= 60
    assert json.loads((out / "truth.json").read_text(encoding="utf-8"))["counts"] == truth["counts"]
    kinds = {p["device_key"] for p in photos.values()}
    assert kinds == {"phone", "camera", "partner", "scan"}
    assert {p["content"] for p in photos.values()} == {"known", "untaught", "none"}
    assert {"gps_0_0", "year_1970", "year_2099", "garbage_date"} <= {p["absurd"] for p in photos.values()}
    for path in photos:   # every file is a JPEG a decoder reads, named like a camera does
        assert Path(path).name.startswith(("IMG_", "_MG_", "DSC_", "scan_"))
        with Image.open(out / "library" / path) as img:
            assert img.format == "JPEG"
    # a JPEG source keeps its pixels (only metadata was written)
    jpeg = next(p for p, t in photos.items() if t["source"].endswith(".jpg") and t["device_key"] != "scan")
    with Image.open(out / "library" / jpeg) as a, Image.open(simlib.SHARED_DATA / photos[jpeg]["source"]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_exif_as_each_device_writes_it(sim):
    _, truth, exif = sim
    checked = set()
    for path, t in truth["photos"].items():
        tags = exif[path]
        utc = datetime.fromisoformat(t["utc"]) if t["utc"] else None
        if t["device_key"] == "scan":
            assert not any(k.startswith(("ExifIFD:", "GPS:", "IFD0:")) for k in tags), path
            continue
        assert tags["IFD0:Model"] == t["device"].split(" ", 1)[1] or t["device"].endswith(tags["IFD0:Model"])
        assert str(tags["ExifIFD:DateTimeOriginal"]) == t["exif_time"]
        if t["device_key"] == "phone":
            local = datetime.strptime(t["exif_time"], "%Y:%m:%d %H:%M:%S")
            sign = 1 if tags["ExifIFD:OffsetTimeOriginal"][0] == "+" else -1
            hh, mm = tags["ExifIFD:OffsetTimeOriginal"][1:].split(":")
            as_utc = local - sign * timedelta(hours=int(hh), minutes=int(mm))
            assert abs(as_utc - utc.replace(tzinfo=None, microsecond=0)) < timedelta(seconds=1)
            gps = (tags["Composite:GPSLatitude"], tags["Composite:GPSLongitude"])   # signed
            if t["absurd"] == "gps_0_0":
                assert gps == (0, 0) and not t["has_gps"]
            else:
                assert t["has_gps"] and simlib.distance_m(gps, (t["lat"], t["lon"])) < 150, path
            assert tags["GPS:GPSTimeStamp"] == f"{utc:%H:%M:%S}"
        else:   # cameras: no GPS, no offset, their own clock (zone it was set to + drift), a serial number
            assert not any(k.startswith("GPS:") for k in tags) and "ExifIFD:OffsetTimeOriginal" not in tags
            assert str(tags["ExifIFD:SerialNumber"]) == t["serial"]
            if t["time_usable"]:
                clock = (utc + timedelta(seconds=simlib.DEVICES[t["device_key"]].drift_s)).astimezone(
                    ZoneInfo(t["clock_zone"])).replace(tzinfo=None, microsecond=0)
                assert t["exif_time"] == f"{clock:%Y:%m:%d %H:%M:%S}"
        checked.add(t["device_key"])
    assert checked == {"phone", "camera", "partner"}


def test_hike_track_follows_the_camera_photos(sim):
    gpxpy = pytest.importorskip("gpxpy")
    out, truth, _ = sim
    gpx = gpxpy.parse((out / truth["tracks"][0]).read_text(encoding="utf-8"))
    points = [p for trk in gpx.tracks for seg in trk.segments for p in seg.points]
    times = np.array([p.time.timestamp() for p in points])
    hike = [t for t in truth["photos"].values() if t["day_kind"] == "hike"]
    assert hike and all(t["device_key"] == "camera" for t in hike)
    for t in hike:
        instant = datetime.fromisoformat(t["utc"]).timestamp()
        assert times[0] < instant < times[-1]
        nearest = points[int(np.argmin(abs(times - instant)))]
        assert simlib.distance_m((nearest.latitude, nearest.longitude), (t["lat"], t["lon"])) < 100


def test_same_seed_same_library(sim, tmp_path):
    _, truth, _ = sim
    again = simlib.build_library(tmp_path, seed=7, scale=0.07)
    assert again["photos"] == truth["photos"]
    with pytest.raises(FileExistsError):
        simlib.build_library(tmp_path, seed=7, scale=0.07)
