"""XMP metadata written for photo managers (issue 16): every sidecar and photo is read back with ExifTool itself,
in a separate process, and the values it reports are asserted; nothing of anyone else's is lost or replaced."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.landmarks import landmark_info
from src.metadata import (
    CONFIG_FILE,
    MetadataError,
    read_exif_gps,
    sidecar_path,
    sidecar_paths,
    update_metadata,
)

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None,
                                reason="exiftool not installed (apt-get install libimage-exiftool-perl)")

PROVENANCE = {"tool": "landmark-tagger", "model": "lite0_exported.pt", "model_sha256": "ab" * 32,
              "method": "retrieval", "threshold": 0.42}

DARKTABLE_SIDECAR = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmp:Rating="4"
    xmpMM:DerivedFrom="holiday.jpg"
    darktable:xmp_version="5"
    darktable:history_end="2">
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:num="0" darktable:operation="exposure" darktable:enabled="1" darktable:params="0000c03f"/>
     <rdf:li darktable:num="1" darktable:operation="crop" darktable:enabled="1" darktable:params="cdcc4c3e"/>
    </rdf:Seq>
   </darktable:history>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
     <rdf:li>San Francisco</rdf:li>
     <rdf:li>1.50</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def read_back(path: Path) -> dict:
    """What ExifTool (a fresh process, not ours) reads from ``path``: XMP and EXIF GPS, by group, numbers as text."""
    out = subprocess.run(["exiftool", "-config", str(CONFIG_FILE), "-j", "-struct", "-G1", "-n", "-XMP:all",
                          "-GPS:all", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out, parse_float=str, parse_int=str)[0]


def tag_row(cls: str = "09.Golden_Gate_Bridge", status: str = "ok", prob: str = "0.9312",
            gps: tuple[float, float] | None = None) -> dict:
    """A tag CSV row as ``tag`` writes it: the landmark's location, or the photo's own (``gps``: EXIF)."""
    info = landmark_info(cls)
    row = {"path": "x.jpg", "status": status, "landmark": info["name"], "class": cls, "prob": prob,
           "city": info["city"], "country": info["country"], "lat": f"{info['lat']:.4f}",
           "lon": f"{info['lon']:.4f}", "gps_source": "landmark", "top_k": info["name"], "error": ""}
    if gps is not None:
        row.update(lat=f"{gps[0]:.6f}", lon=f"{gps[1]:.6f}", gps_source="exif")
    if status != "ok":
        row.update(landmark="no known landmark" if status != "error" else "", city="", country="", lat="", lon="",
                   gps_source="exif" if gps else "")
        row["class"] = ""
    return row


def make_photo(path: Path, seed: int = 0, fmt: str | None = None, mode: str = "RGB", **save) -> Path:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)).convert(mode)
    img.save(path, format=fmt, **save)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixels(path: Path) -> list[np.ndarray]:
    with Image.open(path) as img:
        frames = []
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            frames.append(np.asarray(img.convert("RGBA")).copy())
        return frames


def assert_ours(data: dict, cls: str = "09.Golden_Gate_Bridge", gps: tuple[float, float] | None = None,
                gps_from: str = "inferred from the landmark") -> None:
    """Every field of ours, once, with the values of ``cls`` (GPS: the landmark's, or ``gps``)."""
    info = landmark_info(cls)
    lat, lon = gps or (info["lat"], info["lon"])
    assert float(data["XMP-exif:GPSLatitude"]) == pytest.approx(lat, abs=1e-5)
    assert float(data["XMP-exif:GPSLongitude"]) == pytest.approx(lon, abs=1e-5)
    assert data["XMP-exif:GPSMapDatum"] == "WGS-84"
    assert data["XMP-photoshop:City"] == info["city"] and data["XMP-photoshop:Country"] == info["country"]
    for keyword in (info["name"], info["city"], info["country"]):
        assert data["XMP-dc:Subject"].count(keyword) == 1, keyword
    path = f"Places|{info['country']}|{info['city']}|{info['name']}"
    assert data["XMP-lr:HierarchicalSubject"].count(path) == 1
    assert data["XMP-digiKam:TagsList"].count(path.replace("|", "/")) == 1
    [shown] = [s for s in data["XMP-iptcExt:LocationShown"] if s.get("LocationName") == info["name"]]
    assert shown["City"] == info["city"] and shown["CountryName"] == info["country"]
    # LocationShown is where the landmark stands, even when the camera stood elsewhere
    assert float(shown["GPSLatitude"]) == pytest.approx(info["lat"], abs=1e-5)
    assert float(shown["GPSLongitude"]) == pytest.approx(info["lon"], abs=1e-5)
    assert data["XMP-LandmarkTagger:Tool"] == "landmark-tagger"
    assert data["XMP-LandmarkTagger:Model"] == PROVENANCE["model"]
    assert data["XMP-LandmarkTagger:ModelSHA256"] == PROVENANCE["model_sha256"]
    assert data["XMP-LandmarkTagger:Method"] == "retrieval"
    assert float(data["XMP-LandmarkTagger:Threshold"]) == pytest.approx(0.42)
    assert float(data["XMP-LandmarkTagger:Confidence"]) == pytest.approx(0.9312)
    assert data["XMP-LandmarkTagger:LandmarkClass"] == cls
    assert data["XMP-LandmarkTagger:LocationSource"] == "inferred from the landmark"
    assert data["XMP-LandmarkTagger:GPSSource"] == gps_from


def assert_none_of_ours(data: dict) -> None:
    assert not [k for k in data if k.startswith(("XMP-LandmarkTagger:", "XMP-lr:", "XMP-digiKam:", "XMP-exif:",
                                                 "XMP-photoshop:"))]
    assert not any("landmark-tagger" in json.dumps(s) for s in data.get("XMP-iptcExt:LocationShown", []))


# ---- sidecars ----------------------------------------------------------------------------------------------------

def test_new_sidecar_holds_every_field_and_the_photo_is_untouched(tmp_path):
    photo = make_photo(tmp_path / "bridge.jpg")
    before = sha(photo)
    assert update_metadata(photo, tag_row(), PROVENANCE) == "written"
    assert sidecar_paths(photo) == [tmp_path / "bridge.jpg.xmp"]
    data = read_back(tmp_path / "bridge.jpg.xmp")
    assert_ours(data)
    assert data["XMP-dc:Subject"] == ["Golden Gate Bridge", "San Francisco", "United States"]
    assert sha(photo) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bridge.jpg", "bridge.jpg.xmp"]
    assert update_metadata(photo, tag_row(), PROVENANCE) == "unchanged"  # a rerun: nothing to do


def test_a_country_with_a_slash_stays_one_level_of_the_hierarchy(tmp_path):
    photo = make_photo(tmp_path / "falls.jpg")
    update_metadata(photo, tag_row("06.Niagara_Falls"), PROVENANCE)
    data = read_back(sidecar_path(photo))
    city = landmark_info("06.Niagara_Falls")["city"].replace(" / ", " & ")  # "Niagara Falls, Ontario / New York"
    assert data["XMP-lr:HierarchicalSubject"] == [f"Places|Canada & United States|{city}|Niagara Falls"]
    assert data["XMP-digiKam:TagsList"] == [f"Places/Canada & United States/{city}/Niagara Falls"]
    assert {"Canada", "United States"} <= set(data["XMP-dc:Subject"])


def test_darktable_sidecar_keeps_its_elements_gains_ours_once_and_loses_only_ours(tmp_path):
    photo = make_photo(tmp_path / "holiday.jpg")
    sidecar = sidecar_path(photo)
    sidecar.write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    theirs = read_back(sidecar)
    kept = ["XMP-darktable:History", "XMP-darktable:Xmp_version", "XMP-darktable:History_end", "XMP-xmp:Rating",
            "XMP-xmpMM:DerivedFrom"]

    assert update_metadata(photo, tag_row(), PROVENANCE) == "updated"
    data = read_back(sidecar)
    assert {k: data[k] for k in kept} == {k: theirs[k] for k in kept}
    assert_ours(data)
    # the user's keywords stay, in their order; "San Francisco" was theirs already and is not added twice
    assert data["XMP-dc:Subject"] == ["holiday", "San Francisco", "1.50", "Golden Gate Bridge", "United States"]

    # a second run: one copy of each field; another run with another answer replaces ours
    assert update_metadata(photo, tag_row(), PROVENANCE) == "unchanged"
    assert update_metadata(photo, tag_row("16.Eiffel_Tower", prob="0.9312"), PROVENANCE) == "updated"
    data = read_back(sidecar)
    assert_ours(data, "16.Eiffel_Tower")
    assert "Golden Gate Bridge" not in json.dumps(data) and len(data["XMP-iptcExt:LocationShown"]) == 1
    assert data["XMP-dc:Subject"] == ["holiday", "San Francisco", "1.50", "Eiffel Tower", "Paris", "France"]

    # the decision changed to "no known landmark": ours go, theirs stay (their "San Francisco" too)
    assert update_metadata(photo, tag_row(status="no_known_landmark"), PROVENANCE) == "removed"
    data = read_back(sidecar)
    assert_none_of_ours(data)
    assert {k: data[k] for k in kept} == {k: theirs[k] for k in kept}
    assert data["XMP-dc:Subject"] == ["holiday", "San Francisco", "1.50"]
    assert ">1.50<" in sidecar.read_text(encoding="utf-8")  # a keyword that looks like a number stays as written
    assert update_metadata(photo, tag_row(status="no_known_landmark"), PROVENANCE) == "unchanged"


def test_lightroom_style_sidecar_is_used_unless_two_photos_share_its_name(tmp_path):
    photo = make_photo(tmp_path / "IMG_1.jpg")
    lightroom = tmp_path / "IMG_1.xmp"
    lightroom.write_text(DARKTABLE_SIDECAR.replace("darktable:", "crs:").replace(
        'xmlns:crs="http://darktable.sf.net/"', 'xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"'))
    assert update_metadata(photo, tag_row(), PROVENANCE) == "updated"
    assert not sidecar_path(photo).exists()
    data = read_back(lightroom)
    assert_ours(data) and data["XMP-xmp:Rating"] == "4" and "XMP-crs:History" in data

    # IMG_2.jpg and IMG_2.png: whose would IMG_2.xmp be? Neither is guessed; each gets its own sidecar
    for ext in ("jpg", "png"):
        make_photo(tmp_path / f"IMG_2.{ext}")
    shared = tmp_path / "IMG_2.xmp"
    shared.write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    before = sha(shared)
    assert update_metadata(tmp_path / "IMG_2.jpg", tag_row(), PROVENANCE) == "written"
    assert sha(shared) == before and sidecar_path(tmp_path / "IMG_2.jpg").exists()


def test_a_sidecar_holding_only_ours_is_deleted_when_the_decision_changes(tmp_path):
    photo = make_photo(tmp_path / "a.jpg")
    update_metadata(photo, tag_row(), PROVENANCE)
    assert update_metadata(photo, tag_row(status="no_known_landmark"), PROVENANCE) == "removed"
    assert not sidecar_path(photo).exists()
    other = make_photo(tmp_path / "b.jpg")
    for status in ("no_known_landmark", "error"):
        assert update_metadata(other, tag_row(status=status), PROVENANCE) == "nothing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.jpg"]


def test_a_location_someone_else_recorded_is_never_replaced(tmp_path):
    photo = make_photo(tmp_path / "munich.jpg")
    sidecar = sidecar_path(photo)
    sidecar.write_text(DARKTABLE_SIDECAR.replace(
        'xmp:Rating="4"', 'xmp:Rating="4" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
        'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" exif:GPSLatitude="48,8.22N" '
        'exif:GPSLongitude="11,34.5E" photoshop:City="Munich"'), encoding="utf-8")
    assert update_metadata(photo, tag_row(), PROVENANCE) == "updated"
    data = read_back(sidecar)
    assert float(data["XMP-exif:GPSLatitude"]) == pytest.approx(48.137, abs=1e-4)  # the user's, kept
    assert data["XMP-photoshop:City"] == "Munich" and data["XMP-photoshop:Country"] == "United States"
    assert "XMP-LandmarkTagger:GPSSource" not in data and "Golden Gate Bridge" in data["XMP-dc:Subject"]
    update_metadata(photo, tag_row(status="no_known_landmark"), PROVENANCE)
    data = read_back(sidecar)
    assert float(data["XMP-exif:GPSLongitude"]) == pytest.approx(11.575, abs=1e-4)
    assert data["XMP-photoshop:City"] == "Munich" and "XMP-photoshop:Country" not in data


def test_the_cameras_gps_is_kept_in_the_photo_and_copied_to_the_sidecar(tmp_path):
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.24), 3: "E", 4: (2.0, 17.0, 40.2)}  # 48.8584 N, 2.2945 E
    photo = make_photo(tmp_path / "camera.jpg", exif=exif, quality=95)
    row = tag_row("09.Golden_Gate_Bridge", gps=read_exif_gps(photo))
    assert update_metadata(photo, row, PROVENANCE, sidecar=True, into_photo=True) == "written"
    assert_ours(read_back(sidecar_path(photo)), gps=(48.8584, 2.2945),
                gps_from="copied from the photo's own EXIF GPS")
    in_photo = read_back(photo)
    assert float(in_photo["GPS:GPSLatitude"]) == pytest.approx(48.8584, abs=1e-4)  # the camera's, untouched
    assert "XMP-exif:GPSLatitude" not in in_photo and in_photo["XMP-photoshop:City"] == "San Francisco"
    assert read_exif_gps(photo) == pytest.approx((48.8584, 2.2945), abs=1e-4)


def test_an_unreadable_sidecar_is_one_line_and_left_as_it_is(tmp_path):
    photo = make_photo(tmp_path / "a.jpg")
    sidecar_path(photo).write_text("<x:xmpmeta>darktable edit history</x:xmpmeta>")
    with pytest.raises(MetadataError) as err:
        update_metadata(photo, tag_row(), PROVENANCE)
    assert str(sidecar_path(photo)) in str(err.value) and "\n" not in str(err.value)
    assert sidecar_path(photo).read_text() == "<x:xmpmeta>darktable edit history</x:xmpmeta>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.jpg.xmp"]  # no temporary file left


# ---- into the photo ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,fmt,mode,save", [("p.jpg", "JPEG", "RGB", {"quality": 90}),
                                                 ("p.png", "PNG", "RGBA", {}),
                                                 ("p.webp", "WEBP", "RGB", {"quality": 80})])
def test_write_into_photo_leaves_the_decoded_pixels_identical(tmp_path, name, fmt, mode, save):
    photo = make_photo(tmp_path / name, fmt=fmt, mode=mode, **save)
    os.utime(photo, (1_600_000_000, 1_600_000_000))
    before = pixels(photo)
    assert update_metadata(photo, tag_row(), PROVENANCE, sidecar=False, into_photo=True) == "updated"
    data = read_back(photo)
    assert_ours(data)
    after = pixels(photo)
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))
    assert photo.stat().st_mtime == 1_600_000_000  # apps use it as the date of a photo without EXIF dates
    assert not sidecar_path(photo).exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert update_metadata(photo, tag_row(), PROVENANCE, sidecar=False, into_photo=True) == "unchanged"
    assert update_metadata(photo, tag_row(status="no_known_landmark"), PROVENANCE, sidecar=False,
                           into_photo=True) == "removed"
    assert_none_of_ours(read_back(photo))
    assert all(np.array_equal(a, b) for a, b in zip(pixels(photo), before))


def test_write_into_photo_refuses_what_it_cannot_write_and_never_touches_an_error(tmp_path):
    gif = tmp_path / "anim.gif"
    frames = [Image.new("P", (20, 10), i) for i in (1, 2)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    liar = make_photo(tmp_path / "webp_named.jpg", fmt="WEBP")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    assert update_metadata(gif, tag_row(), PROVENANCE, sidecar=False, into_photo=True) == "unsupported"
    assert update_metadata(liar, tag_row(), PROVENANCE, sidecar=False, into_photo=True) == "unsupported"
    assert update_metadata(broken, tag_row(status="error"), PROVENANCE, sidecar=True, into_photo=True) == "nothing"
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before
    # with sidecars on, the photos ExifTool cannot write into still get theirs
    assert update_metadata(liar, tag_row(), PROVENANCE, sidecar=True, into_photo=True) == "written"
    assert_ours(read_back(sidecar_path(liar)))


# ---- end to end: python -m src tag --sidecar / --write-into-photo, then report ------------------------------------

@pytest.mark.slow
def test_tag_command_writes_updates_and_removes_metadata_end_to_end(tmp_path):
    """The real command in its own process: sidecars (new, darktable's, Lightroom's), the camera's GPS kept,
    an unchanged rerun touching nothing, ``--write-into-photo`` with the pixels kept, and a threshold that turns
    every answer into "no known landmark" taking all our fields away again; then ``report`` finds the folder."""
    import subprocess
    import sys

    from test_tagging import CLASSES, MEAN, STD, TinyNet

    from src.predictor import Predictor, export_torchscript

    model = tmp_path / "golden_gate.pt"  # answers the Golden Gate Bridge (p > 0.99) for every photo
    export_torchscript(Predictor(TinyNet(favour=0), CLASSES, MEAN, STD, img_size=32, arch="scratch"), model)
    photos = tmp_path / "photos"
    photos.mkdir()
    make_photo(photos / "plain.jpg", 1)
    make_photo(photos / "holiday.jpg", 2)
    sidecar_path(photos / "holiday.jpg").write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    make_photo(photos / "IMG_1.png", 3, fmt="PNG")
    (photos / "IMG_1.xmp").write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    exif = Image.Exif()  # the camera's own GPS, 1.4 km from the bridge's point (a photo of it, from the Presidio)
    exif[0x8825] = {1: "N", 2: (37.0, 48.0, 28.8), 3: "W", 4: (122.0, 28.0, 30.0)}
    make_photo(photos / "camera.jpg", 4, exif=exif)
    (photos / "broken.jpg").write_bytes(b"")
    pixels_before = {p.name: pixels(p) for p in photos.glob("*.[jp][pn]g") if p.stat().st_size}
    out = tmp_path / "tags.csv"
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def tag(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "src", "tag", str(photos), "--model", str(model), "--out",
                               str(out), *extra], capture_output=True, text=True, timeout=300, env=env)

    first = tag("--sidecar", "--min-prob", "0.5")
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr[-2000:]  # broken.jpg failed
    assert "metadata: 2 updated, 2 written" in first.stdout, first.stdout  # darktable's, Lightroom's; 2 new
    plain = read_back(sidecar_path(photos / "plain.jpg"))
    assert plain["XMP-LandmarkTagger:Model"] == "golden_gate.pt"
    assert plain["XMP-LandmarkTagger:ModelSHA256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert plain["XMP-LandmarkTagger:Method"] == "classifier" and float(plain["XMP-LandmarkTagger:Threshold"]) == 0.5
    assert plain["XMP-photoshop:City"] == "San Francisco" and plain["XMP-lr:HierarchicalSubject"] == [
        "Places|United States|San Francisco|Golden Gate Bridge"]
    holiday = read_back(sidecar_path(photos / "holiday.jpg"))
    assert "XMP-darktable:History" in holiday and holiday["XMP-dc:Subject"][:3] == ["holiday", "San Francisco",
                                                                                    "1.50"]
    assert read_back(photos / "IMG_1.xmp")["XMP-photoshop:Country"] == "United States"
    assert not sidecar_path(photos / "IMG_1.png").exists()  # Lightroom's sidecar was used, not a second one
    camera = read_back(sidecar_path(photos / "camera.jpg"))
    assert float(camera["XMP-exif:GPSLatitude"]) == pytest.approx(37.808, abs=1e-4)
    assert not sidecar_path(photos / "broken.jpg").exists()

    sidecars = {p.name: sha(p) for p in photos.glob("*.xmp")}
    again = tag("--sidecar", "--min-prob", "0.5")  # nothing changed: nothing written
    assert {p.name: sha(p) for p in photos.glob("*.xmp")} == sidecars and "metadata" not in again.stdout

    into = tag("--sidecar", "--write-into-photo", "--min-prob", "0.5", "--redo")
    assert "Traceback" not in into.stderr, into.stderr[-2000:]
    for name, before in pixels_before.items():
        assert all(np.array_equal(a, b) for a, b in zip(pixels(photos / name), before)), name
        assert read_back(photos / name)["XMP-photoshop:City"] == "San Francisco", name
    assert "XMP-exif:GPSLatitude" not in read_back(photos / "camera.jpg")
    assert read_exif_gps(photos / "camera.jpg") == pytest.approx((37.808, -122.475), abs=1e-4)

    gone = tag("--min-prob", "0.9999")  # every decision changes to "no known landmark"
    assert "Traceback" not in gone.stderr and "removed" in gone.stdout, gone.stdout + gone.stderr[-2000:]
    assert not sidecar_path(photos / "plain.jpg").exists()  # only ours was in it
    for path in (sidecar_path(photos / "holiday.jpg"), photos / "IMG_1.xmp", photos / "plain.jpg"):
        assert_none_of_ours(read_back(path))
    assert read_back(sidecar_path(photos / "holiday.jpg"))["XMP-dc:Subject"] == ["holiday", "San Francisco", "1.50"]
    assert read_exif_gps(photos / "camera.jpg") == pytest.approx((37.808, -122.475), abs=1e-4)

    report = subprocess.run([sys.executable, "-m", "src", "report", str(out)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert report.returncode == 0 and "0 tagged" in report.stdout and "4 no known landmark" in report.stdout, (
        report.stdout + report.stderr)


def test_a_sidecar_of_the_earlier_version_is_taken_over(tmp_path):
    """``tag --sidecar`` before this module wrote whole sidecars of its own (hand-built XML): they are ours."""
    photo = make_photo(tmp_path / "old.jpg")
    sidecar_path(photo).write_text(
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/" '
        'x:xmptk="landmark-tagger">\n <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:CreatorTool="landmark-tagger" exif:GPSVersionID="2.2.0.0" '
        'exif:GPSMapDatum="WGS-84" exif:GPSLatitude="48,51.5040N" exif:GPSLongitude="2,17.6700E" '
        'photoshop:City="Paris" photoshop:Country="France">\n   <dc:subject><rdf:Bag><rdf:li>Eiffel Tower</rdf:li>'
        '<rdf:li>Paris</rdf:li><rdf:li>France</rdf:li></rdf:Bag></dc:subject>\n  </rdf:Description>\n </rdf:RDF>\n'
        '</x:xmpmeta>\n<?xpacket end="w"?>\n', encoding="utf-8")
    assert update_metadata(photo, tag_row(), PROVENANCE) == "updated"
    data = read_back(sidecar_path(photo))
    assert_ours(data)  # the Golden Gate Bridge's GPS, city and keywords replaced the old answer's
    assert "Eiffel Tower" not in json.dumps(data) and "XMP-xmp:CreatorTool" not in data
    assert update_metadata(photo, tag_row(status="no_known_landmark"), PROVENANCE) == "removed"
    assert not sidecar_path(photo).exists()
