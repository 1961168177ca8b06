"""GPS tracks: our positions on a GPX track against real ``exiftool -geotag`` on the same track and photos (between
points, at a point, across a gap, beyond the ends, with a clock offset), accuracy radii, broken files."""
from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from src.evidence import read_evidence
from src.tracks import (DEFAULT_FIX_M, GEO_MAX_EXT_SECS, GEO_MAX_INT_SECS, TrackError, distance_m, load_tracks,
                        parse_offset)

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=timezone.utc)
# (seconds after T0, lat, lon, hdop) of hike.gpx, then hike2.gpx after a 70 min gap (over twice 30 min)
HIKE = [(0, 46.0000, 7.0000, 1.2), (12, 46.0010, 7.0020, 0.9), (42, 46.0030, 7.0010, None),
        (300, 46.0100, 7.0050, 2.0)]
HIKE2 = [(4500, 46.0200, 7.0300, 1.0), (4518, 46.0210, 7.0310, 1.0)]
# photo name -> (seconds after T0 in UTC, offset written to the photo)
PHOTOS = {"between": (6, "+02:00"), "at_point": (12, "+02:00"), "subsec": (30.5, "+02:00"),
          "other_zone": (6, "-05:00"), "gap_near_start": (420, "+02:00"), "gap_near_end": (4200, "+02:00"),
          "gap_middle_far": (2400, "+02:00"), "before_start": (-600, "+02:00"), "long_before": (-3600, "+02:00"),
          "after_end": (5718, "+02:00"), "long_after": (8000, "+02:00"), "between_files": (4490, "+02:00"),
          "short_gap": (100, "+02:00")}


def gpx(path: Path, points) -> Path:
    rows = []
    for sec, lat, lon, hdop in points:
        stamp = (T0 + timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%SZ")
        extra = f"<hdop>{hdop}</hdop>" if hdop is not None else ""
        rows.append(f'<trkpt lat="{lat}" lon="{lon}"><ele>1000</ele><time>{stamp}</time>{extra}</trkpt>')
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<gpx version="1.1" creator="test" '
                    'xmlns="http://www.topografix.com/GPX/1/1"><trk><name>hike</name><trkseg>'
                    + "\n".join(rows) + "</trkseg></trk></gpx>\n", encoding="utf-8")
    return path


def write_photos(folder: Path) -> dict[str, Path]:
    """JPEGs whose DateTimeOriginal + SubSecTimeOriginal + OffsetTimeOriginal say the instants of PHOTOS."""
    folder.mkdir()
    lines, paths = [], {}
    for name, (sec, offset) in PHOTOS.items():
        path = folder / f"{name}.jpg"
        Image.new("RGB", (16, 12), (90, 120, 60)).save(path)
        sign, hh, mm = (-1 if offset[0] == "-" else 1), int(offset[1:3]), int(offset[4:6])
        local = T0 + timedelta(seconds=sec) + sign * timedelta(hours=hh, minutes=mm)
        subsec = f"{local.microsecond // 10000:02d}"
        lines += ["-overwrite_original", "-q", f"-DateTimeOriginal={local:%Y:%m:%d %H:%M:%S}",
                  f"-SubSecTimeOriginal={subsec}", f"-OffsetTimeOriginal={offset}", str(path), "-execute"]
        paths[name] = path
    (folder / "args.txt").write_text("\n".join(lines) + "\n")
    subprocess.run(["exiftool", "-@", str(folder / "args.txt")], check=True, capture_output=True, timeout=60)
    (folder / "args.txt").unlink()
    return paths


def exiftool_geotag(photos: dict[str, Path], tracks: list[Path], *extra: str) -> dict[str, tuple[float, float]]:
    """Copies of the photos geotagged by ``exiftool -geotag``; returns the positions it wrote."""
    root = next(iter(photos.values())).parent.parent
    folder = root / f"exiftool{len(list(root.glob('exiftool*')))}"
    folder.mkdir()
    for path in photos.values():
        shutil.copy2(path, folder / path.name)
    args = ["exiftool", "-q", "-q", "-overwrite_original", "-geotime<SubSecDateTimeOriginal", *extra]
    for track in tracks:
        args += ["-geotag", str(track)]
    subprocess.run(args + [str(folder)], capture_output=True, timeout=120)  # photos it cannot place: warnings
    out = subprocess.run(["exiftool", "-j", "-n", "-GPSLatitude", "-GPSLongitude", str(folder)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {Path(r["SourceFile"]).stem: (r["GPSLatitude"], r["GPSLongitude"])
            for r in json.loads(out) if "GPSLatitude" in r}


@pytest.fixture
def hike(tmp_path):
    tracks = [gpx(tmp_path / "hike.gpx", HIKE), gpx(tmp_path / "hike2.gpx", HIKE2)]
    return tracks, write_photos(tmp_path / "photos")


def ours(photos: dict[str, Path], tracks, offset=timedelta(0), **limits) -> dict[str, tuple]:
    track_set = load_tracks(tracks, **limits)
    found = read_evidence(list(photos.values()), progress=False)
    out = {}
    for name, path in photos.items():
        position = track_set.position_at(found[str(path)].instant, offset)
        if position is not None:
            out[name] = position
    return out


def assert_same_places(ours_found: dict, theirs: dict) -> None:
    assert set(ours_found) == set(theirs), (sorted(ours_found), sorted(theirs))
    for name, (lat, lon) in theirs.items():
        assert distance_m(ours_found[name][0], ours_found[name][1], lat, lon) < 2.0, name


@needs_exiftool
def test_same_places_as_exiftool_geotag(hike):
    tracks, photos = hike
    theirs = exiftool_geotag(photos, tracks)
    found = ours(photos, tracks)
    assert_same_places(found, theirs)
    assert {"long_before", "long_after", "gap_middle_far"}.isdisjoint(found)  # more than 30 min from any point
    assert "between" in found and "other_zone" in found and "between_files" in found  # the sanity of the setup

    lat, lon, acc, text = found["between"]
    spacing = distance_m(46.0, 7.0, 46.001, 7.002)
    assert (lat, lon) == pytest.approx((46.0005, 7.001))
    assert acc == pytest.approx(max(1.2, 0.9) * 5 + 0.5 * spacing)  # the rule in the module's notes
    assert text == "track hike.gpx, between points 12 s apart"
    assert found["other_zone"][:2] == pytest.approx((lat, lon))  # same instant, other wall clock
    assert found["at_point"] == (46.001, 7.002, pytest.approx(0.9 * 5), "track hike.gpx, at a recorded point")
    assert found["subsec"][0] == pytest.approx(46.001 + 18.5 / 30 * 0.002)  # sub-seconds count
    spacing = distance_m(46.001, 7.002, 46.003, 7.001)
    assert found["subsec"][2] == pytest.approx(DEFAULT_FIX_M + 11.5 / 30 * spacing)  # no <hdop>: 10 m
    assert found["gap_near_start"][3].startswith("track hike.gpx, nearest point 2 min earlier (points 1 h 10 min apart")
    assert found["before_start"][3] == "track hike.gpx, 10 min before its first point"
    assert found["before_start"][2] > 600 * 1.4  # 10 min away: at least a walk's radius
    assert found["after_end"][3] == "track hike2.gpx, 20 min after its last point"


@needs_exiftool
def test_same_places_as_exiftool_with_a_clock_offset_and_other_limits(hike):
    """``--track-offset +1:30`` is exiftool's ``-geosync=+1:30`` (90 s, added to the camera time); shorter
    GeoMaxIntSecs / GeoMaxExtSecs give the same places as exiftool's ``-api`` options."""
    tracks, photos = hike
    theirs = exiftool_geotag(photos, tracks, "-geosync=+1:30")
    found = ours(photos, tracks, parse_offset("+1:30"))
    assert_same_places(found, theirs)
    assert found["before_start"][3].endswith("(clock offset +90 s)")
    assert "long_before" not in found

    # hike.gpx split in two files: the 258 s before the second file's first point count as outside a track
    # (GeoMaxExtSecs), as in exiftool, while 30 s inside one file are over GeoMaxIntSecs
    split = [gpx(tracks[0].parent / "part1.gpx", HIKE[:3]), gpx(tracks[0].parent / "part2.gpx", HIKE[3:]), tracks[1]]
    theirs = exiftool_geotag(photos, split, "-api", "GeoMaxIntSecs=20", "-api", "GeoMaxExtSecs=700")
    found = ours(photos, split, max_int_secs=20, max_ext_secs=700)
    assert_same_places(found, theirs)
    assert "too far to interpolate" in found["subsec"][3]  # points 30 s apart: nearest, not between
    assert found["short_gap"][3] == "tracks part1.gpx and part2.gpx, between points 4 min apart"
    assert "after_end" not in found and "before_start" in found


def test_track_limits_default_to_exiftools():
    assert GEO_MAX_INT_SECS == 1800 and GEO_MAX_EXT_SECS == 1800


def test_antimeridian_and_naive_instants(tmp_path):
    track = load_tracks([gpx(tmp_path / "sea.gpx", [(0, -17.0, 179.99, None), (60, -17.0, -179.99, None)])])
    lat, lon, _, _ = track.position_at(T0.replace(tzinfo=None) + timedelta(seconds=45))  # naive: UTC
    assert lat == pytest.approx(-17.0) and lon == pytest.approx(-179.995)
    assert len(track) == 2 and track.span() == (T0, T0 + timedelta(seconds=60))


@pytest.mark.parametrize("text,seconds", [("+1:30", 90), ("1:30:00", 5400), ("-0:45", -45), ("5400", 5400),
                                          ("-45s", -45), ("5m", 300), ("1.5h", 5400), ("+1 02:00:00", 93600)])
def test_parse_offset(text, seconds):
    assert parse_offset(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "1:75", "+1h30", "--5"])
def test_parse_offset_refuses_garbage_in_one_line(text):
    with pytest.raises(ValueError) as err:
        parse_offset(text)
    assert "\n" not in str(err.value) and "is not a time offset" in str(err.value)


def test_broken_and_timeless_tracks_are_one_line_errors(tmp_path):
    good = gpx(tmp_path / "good.gpx", HIKE)
    broken = tmp_path / "broken.gpx"
    broken.write_text(good.read_text()[:200])
    route = tmp_path / "route.gpx"
    route.write_text('<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
                     '<rte><rtept lat="46" lon="7"/><rtept lat="46.1" lon="7.1"/></rte></gpx>')
    binary = tmp_path / "photo.gpx"
    binary.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    for path, words in ((broken, "not a GPX file"), (route, "no points with a time"), (binary, "not a GPX file"),
                        (tmp_path / "missing.gpx", "cannot be read")):
        with pytest.raises(TrackError) as err:
            load_tracks([good, path])
        message = str(err.value)
        assert message.startswith(str(path)) and words in message and "\n" not in message, message
