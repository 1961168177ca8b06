"""read_evidence: capture time, offsets, GPS and device from real files written by real ExifTool (and read back
through one ExifTool process, or Pillow without it); absurd values become None with a note; a position we
wrote is never read back as evidence."""
from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from src import evidence, evidence_readers
from src.evidence import PhotoEvidence, read_evidence
from src.metadata import update_metadata

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
READERS = [pytest.param(True, id="exiftool", marks=needs_exiftool), pytest.param(False, id="pillow")]


def jpeg(path: Path) -> Path:
    Image.new("RGB", (16, 12), (120, 90, 60)).save(path, "JPEG")
    return path


def exif_write(spec: dict[Path, list[str]]) -> None:
    """Write each file's tags with ONE exiftool process (``-@`` argument file, one ``-execute`` per file).
    ``#=`` values are written as given (no conversion), which lets absurd values through."""
    lines = []
    for path, tags in spec.items():
        lines += ["-overwrite_original", "-q", *tags, str(path), "-execute"]
    argfile = next(iter(spec)).parent / "args.txt"
    argfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    subprocess.run(["exiftool", "-@", str(argfile)], check=True, capture_output=True, timeout=60)
    argfile.unlink()


def photos_with(tmp_path: Path, spec: dict[str, list[str]]) -> dict[str, Path]:
    paths = {name: jpeg(tmp_path / f"{name}.jpg") for name in spec}
    exif_write({paths[name]: tags for name, tags in spec.items() if tags})
    return paths


@needs_exiftool
@pytest.mark.parametrize("use_exiftool", READERS)
def test_time_subseconds_offset_gps_and_device(tmp_path, use_exiftool):
    paths = photos_with(tmp_path, {"full": [
        "-DateTimeOriginal=2024:05:01 18:30:07", "-SubSecTimeOriginal=05", "-OffsetTimeOriginal=+05:30",
        "-GPSLatitude=33.8568", "-GPSLatitudeRef=S", "-GPSLongitude=151.2153", "-GPSLongitudeRef=E",
        "-GPSDateStamp=2024:05:01", "-GPSTimeStamp=13:00:06.5",
        "-Make=Canon", "-Model=Canon EOS 80D", "-SerialNumber=0123456"]})
    ev = read_evidence([paths["full"]], root=tmp_path, progress=False, exiftool=use_exiftool)["full.jpg"]
    assert ev.time_local == datetime(2024, 5, 1, 18, 30, 7, 50000)  # "05" is 0.05 s, not 0.5
    assert ev.utc_offset_min == 330 and not ev.offset_derived
    assert ev.instant == datetime(2024, 5, 1, 13, 0, 7, 50000, tzinfo=timezone.utc)
    assert ev.gps == pytest.approx((-33.8568, 151.2153))
    assert ev.gps_time == datetime(2024, 5, 1, 13, 0, 6, 500000)
    assert ev.device == "Canon EOS 80D #0123456"  # the make is not repeated
    assert ev.source == "file" and ev.notes == []


@needs_exiftool
@pytest.mark.parametrize("use_exiftool", READERS)
def test_absurd_values_are_missing_with_a_note(tmp_path, use_exiftool):
    good_time = ["-DateTimeOriginal=2024:05:01 12:00:00"]
    spec = {
        "gps00": good_time + ["-GPSLatitude#=0", "-GPSLatitudeRef=N", "-GPSLongitude#=0", "-GPSLongitudeRef=E"],
        "lat95": good_time + ["-GPSLatitude#=95", "-GPSLatitudeRef=N", "-GPSLongitude#=7", "-GPSLongitudeRef=E"],
        "y1970": ["-ExifIFD:DateTimeOriginal#=1970:01:01 00:00:00", "-OffsetTimeOriginal=+01:00"],
        "y2099": ["-ExifIFD:DateTimeOriginal#=2099:01:01 10:00:00"],
        "zeros": ["-ExifIFD:DateTimeOriginal#=0000:00:00 00:00:00"],
        "garbage": ["-ExifIFD:DateTimeOriginal#=garbage"],
        "offset": good_time + ["-ExifIFD:OffsetTimeOriginal#=+15:00"],
        "gpsdate": good_time + ["-GPSDateStamp#=1970:01:01", "-GPSTimeStamp=10:00:00"],
    }
    paths = photos_with(tmp_path, spec)
    found = read_evidence(list(paths.values()), root=tmp_path, progress=False, exiftool=use_exiftool)

    def check(name, attr, *words):
        ev = found[f"{name}.jpg"]
        assert getattr(ev, attr) is None, (name, getattr(ev, attr))
        assert len(ev.notes) == 1 and all(w in ev.notes[0] for w in words), (name, ev.notes)
        return ev

    check("gps00", "gps", "0,0")
    check("lat95", "gps", "out of range")
    assert check("y1970", "time_local", "before 1990").utc_offset_min is None
    check("y2099", "time_local", "future")
    check("zeros", "time_local", "all zeros")
    check("garbage", "time_local", "'garbage'", "not a date")
    ev = check("offset", "utc_offset_min", "+15:00", "outside -12:00..+14:00")
    assert ev.time_local == datetime(2024, 5, 1, 12)  # the time itself stays, on an unknown clock
    ev = check("gpsdate", "gps_time", "before 1990")
    assert ev.utc_offset_min is None and not ev.offset_derived  # nothing derived from a bad GPS time
    assert found["gps00.jpg"].time_local == datetime(2024, 5, 1, 12)


def test_gps_nan_is_missing_with_a_note(tmp_path):
    img, exif = Image.new("RGB", (8, 8)), Image.Exif()
    gps = exif.get_ifd(evidence_readers.GPS_IFD)
    gps.update({1: "N", 2: (IFDRational(0, 0), IFDRational(0, 1), IFDRational(0, 1)), 3: "E",
                4: (IFDRational(7, 1), IFDRational(0, 1), IFDRational(0, 1))})
    img.save(tmp_path / "nan.jpg", exif=exif)
    readers = [False] + ([True] if shutil.which("exiftool") else [])
    for use_exiftool in readers:  # Pillow reads NaN; ExifTool reads nothing for 0/0: both note it
        ev = read_evidence([tmp_path / "nan.jpg"], progress=False, exiftool=use_exiftool)[str(tmp_path / "nan.jpg")]
        assert ev.gps is None and len(ev.notes) == 1 and "GPS position" in ev.notes[0], (use_exiftool, ev.notes)


@needs_exiftool
@pytest.mark.parametrize("use_exiftool", READERS)
def test_offset_derived_from_gps_time(tmp_path, use_exiftool):
    paths = photos_with(tmp_path, {
        "phone": ["-DateTimeOriginal=2024:07:10 21:44:10", "-GPSDateStamp=2024:07:10", "-GPSTimeStamp=19:44:02",
                  "-GPSLatitude=45.4", "-GPSLatitudeRef=N", "-GPSLongitude=12.3", "-GPSLongitudeRef=E"],
        # across midnight UTC, negative offset, a few minutes of clock difference
        "night": ["-DateTimeOriginal=2024:07:10 20:10:00", "-GPSDateStamp=2024:07:11", "-GPSTimeStamp=00:14:00"],
        # a GPS week-number rollover (1024 weeks back): no offset can be derived from that
        "rollover": ["-DateTimeOriginal=2024:07:10 12:00:00", "-GPSDateStamp=2004:11:25", "-GPSTimeStamp=10:00:00"],
        # an offset tag that disagrees with the GPS time by 2 h: kept, with a note
        "disagree": ["-DateTimeOriginal=2024:07:10 12:00:00", "-OffsetTimeOriginal=+02:00",
                     "-GPSDateStamp=2024:07:10", "-GPSTimeStamp=08:00:00"]})
    found = read_evidence(list(paths.values()), root=tmp_path, progress=False, exiftool=use_exiftool)
    phone, night = found["phone.jpg"], found["night.jpg"]
    assert phone.utc_offset_min == 120 and phone.offset_derived
    assert phone.notes == ["UTC offset +02:00 derived from the GPS time (no offset tag)."]
    assert phone.instant == datetime(2024, 7, 10, 19, 44, 10, tzinfo=timezone.utc)
    assert night.utc_offset_min == -240 and night.offset_derived
    assert night.notes == ["UTC offset -04:00 derived from the GPS time (no offset tag); the clock is 4 min from GPS "
                           "time."]
    rollover = found["rollover.jpg"]
    assert rollover.utc_offset_min is None and not rollover.offset_derived and rollover.instant is None
    assert len(rollover.notes) == 1 and "none derived" in rollover.notes[0]
    disagree = found["disagree.jpg"]
    assert disagree.utc_offset_min == 120 and not disagree.offset_derived
    assert disagree.notes == ["Local time minus its offset is 120 min from the GPS time (a wrong clock or an old GPS "
                              "fix)."]


@needs_exiftool
def test_sidecar_evidence_fills_what_the_file_lacks(tmp_path):
    scan = jpeg(tmp_path / "scan.jpg")  # no EXIF; darktable/digiKam style sidecar photo.jpg.xmp holds it all
    camera = tmp_path / "camera.jpg"
    jpeg(camera)
    exif_write({camera: ["-DateTimeOriginal=2023:08:02 09:15:00", "-Make=FUJIFILM", "-Model=X-T3"]})
    subprocess.run(["exiftool", "-q", "-o", str(tmp_path / "scan.jpg.xmp"),
                    "-XMP-exif:DateTimeOriginal=2023:08:01 10:00:00.25+09:00", "-XMP-exif:GPSLatitude=35.6586",
                    "-XMP-exif:GPSLongitude=139.7454", "-XMP-tiff:Make=Apple", "-XMP-tiff:Model=iPhone 12"],
                   check=True, timeout=60)
    # Lightroom-style camera.xmp: a position the user set, and an offset for the same clock reading
    subprocess.run(["exiftool", "-q", "-o", str(tmp_path / "camera.xmp"),
                    "-XMP-exif:DateTimeOriginal=2023:08:02 09:15:00-04:00", "-XMP-exif:GPSLatitude=40.6892",
                    "-XMP-exif:GPSLongitude=-74.0445"], check=True, timeout=60)
    found = read_evidence([scan, camera], root=tmp_path, progress=False)
    s, c = found["scan.jpg"], found["camera.jpg"]
    assert s.source == "sidecar" and s.notes == []
    assert s.time_local == datetime(2023, 8, 1, 10, 0, 0, 250000) and s.utc_offset_min == 540
    assert s.gps == pytest.approx((35.6586, 139.7454)) and s.device == "Apple iPhone 12"
    assert c.source == "file+sidecar" and c.device == "FUJIFILM X-T3"
    assert c.time_local == datetime(2023, 8, 2, 9, 15) and c.utc_offset_min == -240
    assert c.gps == pytest.approx((40.6892, -74.0445))
    # without ExifTool the sidecars are not read: the file's own EXIF only
    p = read_evidence([scan, camera], root=tmp_path, progress=False, exiftool=False)
    assert p["scan.jpg"].source == "none" and p["camera.jpg"].gps is None


@needs_exiftool
def test_a_position_we_wrote_is_not_evidence(tmp_path):
    """A re-run must not read our own estimate back as camera GPS; a position someone changed since is theirs."""
    photo = jpeg(tmp_path / "IMG_0001.jpg")
    exif_write({photo: ["-DateTimeOriginal=2024:05:01 12:00:00", "-Make=Canon", "-Model=Canon EOS 80D"]})
    row = {"status": "no_known_landmark", "lat": "46.55", "lon": "7.98", "location_source": "time",
           "accuracy_m": "800", "evidence": "IMG_0002.jpg, 4 min earlier"}
    assert update_metadata(photo, row, {"tool": "landmark-tagger"}, sidecar=True, into_photo=True) == "written"
    sidecar = tmp_path / "IMG_0001.jpg.xmp"
    both = subprocess.run(["exiftool", "-n", "-s3", "-XMP-exif:GPSLatitude", str(sidecar), str(photo)],
                          capture_output=True, text=True, check=True, timeout=60).stdout
    assert both.count("46.55") == 2  # really written, into the sidecar and into the photo
    ev = read_evidence([photo], root=tmp_path, progress=False)["IMG_0001.jpg"]
    assert ev.gps is None and ev.notes == [] and ev.source == "file"
    assert ev.time_local == datetime(2024, 5, 1, 12) and ev.device == "Canon EOS 80D"

    # a landmark decision written the same way (status ok): its GPS is ours too
    row_ok = {"status": "ok", "landmark": "Eiffel Tower", "class": "x", "city": "Paris", "country": "France",
              "lat": "48.8583", "lon": "2.2945", "location_source": "landmark"}
    other = jpeg(tmp_path / "IMG_0003.jpg")
    update_metadata(other, row_ok, {"tool": "landmark-tagger"}, sidecar=True)
    assert read_evidence([other], progress=False)[str(other)].gps is None

    # a sidecar this tool wrote before it recorded its fields (CreatorTool ours, no namespace): ours whole
    old = jpeg(tmp_path / "IMG_0004.jpg")
    subprocess.run(["exiftool", "-q", "-o", str(tmp_path / "IMG_0004.jpg.xmp"), "-XMP-xmp:CreatorTool=landmark-tagger",
                    "-XMP-exif:GPSLatitude=40.7", "-XMP-exif:GPSLongitude=-74"], check=True, timeout=60)
    assert read_evidence([old], progress=False)[str(old)].gps is None

    # the user moved the pin in digiKam: that position is evidence now
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-exif:GPSLatitude=46.6",
                    "-XMP-exif:GPSLongitude=8.01", str(sidecar)], check=True, timeout=60)
    ev = read_evidence([photo], root=tmp_path, progress=False)["IMG_0001.jpg"]
    assert ev.gps == pytest.approx((46.6, 8.01)) and ev.source == "file+sidecar"


@pytest.mark.parametrize("use_exiftool", READERS)
def test_scans_and_unreadable_files_never_stop_the_batch(tmp_path, use_exiftool):
    scan = jpeg(tmp_path / "scan.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(scan.read_bytes()[:20])
    missing = tmp_path / "missing.jpg"
    dash = jpeg(tmp_path / "-dash.jpg")  # would be an option to exiftool if passed as it is
    img, exif = Image.new("RGB", (8, 8)), Image.Exif()
    exif[271], exif[272] = "Apple", "iPhone 12"
    exif.get_ifd(evidence_readers.EXIF_IFD)[36867] = "2024:02:03 04:05:06"
    img.save(tmp_path / "good.png", exif=exif)

    found = read_evidence([scan, empty, text, truncated, missing, dash, tmp_path / "good.png"], root=tmp_path,
                          progress=False, exiftool=use_exiftool)
    assert list(found) == ["scan.jpg", "empty.jpg", "notes.jpg", "truncated.jpg", "missing.jpg", "-dash.jpg",
                           "good.png"]
    for name in ("scan.jpg", "-dash.jpg"):
        assert found[name] == PhotoEvidence(path=name, source="none")  # a scan: nothing, and nothing wrong
    for name in ("empty.jpg", "notes.jpg", "truncated.jpg", "missing.jpg"):
        ev = found[name]
        assert ev.source == "none" and ev.device is None and len(ev.notes) == 1, (name, ev.notes)
        assert "cannot read" in ev.notes[0] or "not a photo" in ev.notes[0] or "nothing" in ev.notes[0]
    assert "File not found" in found["missing.jpg"].notes[0] or not use_exiftool
    good = found["good.png"]
    assert good.time_local == datetime(2024, 2, 3, 4, 5, 6) and good.device == "Apple iPhone 12"


@needs_exiftool
def test_one_exiftool_process_for_many_photos(tmp_path, monkeypatch):
    base = jpeg(tmp_path / "base.jpg")
    exif_write({base: ["-DateTimeOriginal=2024:05:01 12:00:00", "-OffsetTimeOriginal=-07:00"]})
    photos = []
    for i in range(2 * evidence.BATCH + 50):  # three requests to the one process
        photos.append(tmp_path / f"p{i:04d}.jpg")
        photos[-1].hardlink_to(base)
    starts = []
    original = evidence_readers.ExifToolReader._start
    monkeypatch.setattr(evidence_readers.ExifToolReader, "_start", lambda self: (starts.append(1), original(self)))
    found = read_evidence(photos, root=tmp_path, progress=False)
    assert len(starts) == 1
    assert len(found) == len(photos) and all(ev.utc_offset_min == -420 for ev in found.values())


def test_without_exiftool_pillow_reads_with_one_warning(tmp_path, monkeypatch, capsys):
    img, exif = Image.new("RGB", (8, 8)), Image.Exif()
    exif.get_ifd(evidence_readers.EXIF_IFD).update({36867: "2024:02:03 04:05:06", 36881: "-03:00"})
    for i in range(3):
        img.save(tmp_path / f"{i}.jpg", exif=exif)
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-bin"))  # a machine without exiftool
    found = read_evidence(sorted(tmp_path.glob("*.jpg")), root=tmp_path, progress=False)
    assert all(ev.instant == datetime(2024, 2, 3, 7, 5, 6, tzinfo=timezone.utc) for ev in found.values())
    err = capsys.readouterr().err
    assert err.count("warning: exiftool is not installed") == 1 and "sidecars are not read" in err


@needs_exiftool
def test_names_exiftool_cannot_echo(tmp_path):
    """A file name that is not UTF-8 (ExifTool answers "?" for those bytes) and one with spaces, quotes and CJK."""
    base = jpeg(tmp_path / "base.jpg")
    exif_write({base: ["-DateTimeOriginal=2024:05:01 12:00:00", "-OffsetTimeOriginal=+09:00"]})
    names = ["café 日本 'q' \"d\".jpg", "plain.jpg"]
    try:
        odd = tmp_path / ("lat" + b"\xe9".decode("utf-8", "surrogateescape") + ".jpg")
        shutil.copy(base, odd)
    except (OSError, UnicodeEncodeError):  # a file system that only takes UTF-8 names (macOS)
        odd = None
    for name in names:
        shutil.copy(base, tmp_path / name)
    photos = [tmp_path / n for n in names] + ([odd] if odd else []) + [tmp_path / "gone.jpg"]
    found = read_evidence(photos, root=tmp_path, progress=False)
    for path in photos[:-1]:
        assert found[path.name].utc_offset_min == 540 and found[path.name].notes == [], path.name
    assert found["gone.jpg"].notes == ["ExifTool cannot read it (File not found)."]
