"""``tag``'s library pass on real files: capture times, camera GPS and device written by ExifTool into generated
photos, a real (tiny) exported model, the CSV and the sidecars it writes, and a re-run after the library changed."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_tagging import CLASSES, MEAN, STD, TinyNet
from src.__main__ import main as cli
from src.locate import LocateOptions
from src.placing import PlacingOptions
from src.predictor import Predictor, export_torchscript
from src.tagging import tag_folder

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None,
                                reason="exiftool not installed (apt-get install libimage-exiftool-perl)")

PARIS = (48.8566, 2.3522)
# A one-morning library cannot show that the camera was with the phone (no landmark agreement, no history, no
# pixels: the tiny model has no embeddings); the user says so, as --together does on the command line.
TOGETHER = PlacingOptions(locate=LocateOptions(together={"Canon EOS 80D": "Apple iPhone 12"}))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """``golden_gate`` (the Golden Gate Bridge, p > 0.99, for every photo) and ``unsure`` (a third for each class:
    "no known landmark" everywhere), real small CNNs exported as tag uses them."""
    folder = tmp_path_factory.mktemp("models")
    unsure = TinyNet(favour=2)
    with torch.no_grad():
        unsure.fc.bias.zero_()
    out = {"golden_gate": folder / "golden_gate.pt", "unsure": folder / "unsure.pt"}
    for name, net in (("golden_gate", TinyNet(favour=0)), ("unsure", unsure)):
        export_torchscript(Predictor(net, CLASSES, MEAN, STD, img_size=32, arch="scratch"), out[name])
    return out


def shoot(path: Path, seed: int, when: str, offset: str | None = None, gps: tuple[float, float] | None = None,
          device: tuple[str, str] = ("Apple", "iPhone 12")) -> Path:
    """A photo as a device writes it: pixels, then DateTimeOriginal (+ offset, + GPS) by ExifTool."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)).save(path, quality=90)
    args = ["exiftool", "-q", "-overwrite_original", f"-DateTimeOriginal={when}", f"-Make={device[0]}",
            f"-Model={device[1]}"]
    if offset:
        args.append(f"-OffsetTimeOriginal={offset}")
    if gps:
        args += [f"-GPSLatitude={abs(gps[0])}", f"-GPSLatitudeRef={'N' if gps[0] >= 0 else 'S'}",
                 f"-GPSLongitude={abs(gps[1])}", f"-GPSLongitudeRef={'E' if gps[1] >= 0 else 'W'}"]
    subprocess.run([*args, str(path)], check=True)
    return path


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def sidecar_fields(photo: Path) -> dict:
    config = Path(__file__).resolve().parent.parent / "src" / "metadata_exiftool.config"
    out = subprocess.run(["exiftool", "-config", str(config), "-j", "-n", "-XMP:all",
                          str(photo.with_name(photo.name + ".xmp"))], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.jpg"))}


def paris_day(folder: Path) -> Path:
    """A morning in Paris: a phone with GPS (+01:00) every 20 min from 10:00 to 11:00 walking east, a camera without
    GPS or offset (its clock on local time) shooting in between, and a scan (no EXIF): 4 + 4 + 1 photos."""
    for i, minute in enumerate((0, 20, 40, 59)):
        shoot(folder / "phone" / f"IMG_000{i + 1}.JPG", i, f"2026:03:14 {10 + minute // 60}:{minute % 60:02d}:00",
              "+01:00", (PARIS[0], PARIS[1] + 0.01 * i))
    for i, minute in enumerate((14, 16, 33, 47)):
        shoot(folder / "camera" / f"_MG_00{i + 1}.JPG", 10 + i, f"2026:03:14 10:{minute}:00",
              device=("Canon", "Canon EOS 80D"))
    Image.new("RGB", (48, 40), (90, 90, 90)).save(folder / "scan_001.jpg")
    return folder


def test_a_camera_photo_takes_its_place_from_the_phone_photos_around_it_with_accuracy_and_evidence(tmp_path, models):
    library = paris_day(tmp_path / "library")
    before = digest(library)
    out = tmp_path / "tags.csv"
    summary = tag_folder(library, models["unsure"], out, sidecar=True, progress=False, placing=TOGETHER)
    rows = read_rows(out)
    phone = rows["phone/IMG_0001.JPG"]
    assert phone["location_source"] == "camera" and float(phone["lat"]) == pytest.approx(PARIS[0], abs=1e-5)
    camera = rows["camera/_MG_001.JPG"]
    assert camera["location_source"] == "time" and camera["status"] == "no_known_landmark"
    assert abs(float(camera["lat"]) - PARIS[0]) < 0.05 and abs(float(camera["lon"]) - PARIS[1]) < 0.05
    assert 0 < float(camera["accuracy_m"]) <= 25_000
    assert "IMG_0001.JPG" in camera["evidence"] or "IMG_0002.JPG" in camera["evidence"]
    scan = rows["scan_001.jpg"]
    assert scan["location_source"] == "none" and scan["lat"] == "" and scan["accuracy_m"] == ""
    assert summary.placing.sources.get("time") == 4
    # the estimate goes into the sidecar with its accuracy and its source; the photos themselves are untouched
    fields = sidecar_fields(library / "camera" / "_MG_001.JPG")
    assert fields["GPSLatitude"] == pytest.approx(float(camera["lat"]), abs=1e-4)
    assert fields["GPSHPositioningError"] == pytest.approx(float(camera["accuracy_m"]), abs=1)
    assert fields["GPSSource"].startswith("estimated from the capture time (")
    assert "Subject" not in fields  # no landmark: no keywords
    assert not (library / "scan_001.jpg.xmp").exists()  # nothing known, nothing written
    assert digest(library) == before


def test_a_landmark_far_from_the_photos_own_gps_is_withheld_and_the_csv_says_why(tmp_path, models):
    library = paris_day(tmp_path / "library")
    out = tmp_path / "tags.csv"
    first = tag_folder(library, models["golden_gate"], out, progress=False, placing=TOGETHER)  # "Golden Gate" always
    again = tag_folder(library, models["golden_gate"], out, progress=False, placing=TOGETHER)
    # the 4 phone photos (their GPS) and the 4 camera photos (their time): withheld, and said so on every run
    assert first.placing.withheld == again.placing.withheld == 8 and again.tagged == 0
    rows = read_rows(out)
    phone = rows["phone/IMG_0001.JPG"]
    assert phone["status"] == "no_known_landmark" and phone["landmark"] == "no known landmark"
    assert phone["location_source"] == "camera" and float(phone["lat"]) == pytest.approx(PARIS[0], abs=1e-5)
    assert "Golden Gate" in phone["location_note"] and "km" in phone["location_note"]
    assert phone["candidate"] == "09.Golden_Gate_Bridge"  # what the pixels said is kept
    # the camera's photos: the time says Paris, the pixels San Francisco: no place at all, and why
    camera = rows["camera/_MG_001.JPG"]
    assert camera["lat"] == "" and camera["location_source"] == "none" and camera["location_note"]
    assert camera["status"] == "no_known_landmark"
    # the scan has nothing but its pixels: placed by the landmark, as before, with the landmark's radius
    scan = rows["scan_001.jpg"]
    assert scan["status"] == "ok" and scan["location_source"] == "landmark" and float(scan["accuracy_m"]) > 0
    # --pixels-only: the pixels and the photo's own GPS (no capture times): the camera's photos are placed by the
    # landmark alone, as before; the phone's keep their GPS and lose the landmark it contradicts, as predict does
    pixels = tmp_path / "pixels.csv"
    assert cli(["tag", str(library), "--model", str(models["golden_gate"]), "--out", str(pixels),
                "--pixels-only"]) == 0
    rows = read_rows(pixels)
    phone = rows["phone/IMG_0001.JPG"]
    assert phone["status"] == "no_known_landmark" and phone["gps_source"] == "exif" and phone["lat"]
    assert phone["location_note"].startswith("landmark withheld: pixels say Golden Gate Bridge")
    assert rows["camera/_MG_001.JPG"]["location_source"] == "landmark"


def test_a_rerun_after_adding_a_gps_photo_updates_the_neighbours_estimates_and_their_sidecars(tmp_path, models):
    library = paris_day(tmp_path / "library")
    out = tmp_path / "tags.csv"
    tag_folder(library, models["unsure"], out, sidecar=True, progress=False, placing=TOGETHER)
    first = read_rows(out)["camera/_MG_001.JPG"]
    # the user imports a phone photo taken at 10:15: the camera photo at 10:14 is now placed by it
    near = (48.8600, 2.3640)
    shoot(library / "phone" / "IMG_0005.JPG", 5, "2026:03:14 10:15:00", "+01:00", near)
    summary = tag_folder(library, models["unsure"], out, sidecar=True, progress=False, placing=TOGETHER)
    assert summary.skipped == 9 and summary.tagged == 1  # only the new photo went through the model
    second = read_rows(out)["camera/_MG_001.JPG"]
    assert "IMG_0005.JPG" in second["evidence"] and second["evidence"] != first["evidence"]
    assert abs(float(second["lat"]) - near[0]) < abs(float(first["lat"]) - near[0])
    assert float(second["accuracy_m"]) < float(first["accuracy_m"])
    assert summary.places_changed >= 1
    fields = sidecar_fields(library / "camera" / "_MG_001.JPG")
    assert fields["GPSLatitude"] == pytest.approx(float(second["lat"]), abs=1e-4)
    # and removing it again brings the first estimate back; its row is gone
    (library / "phone" / "IMG_0005.JPG").unlink()
    tag_folder(library, models["unsure"], out, sidecar=True, progress=False, placing=TOGETHER)
    rows = read_rows(out)
    assert "phone/IMG_0005.JPG" not in rows
    assert rows["camera/_MG_001.JPG"]["evidence"] == first["evidence"]


def test_a_camera_photo_with_no_neighbour_within_the_max_gap_gets_no_place(tmp_path, models):
    library = paris_day(tmp_path / "library")
    out = tmp_path / "tags.csv"
    together = ["--together", "Canon EOS 80D=Apple iPhone 12"]
    assert cli(["tag", str(library), "--model", str(models["unsure"]), "--out", str(out), *together]) == 0
    assert read_rows(out)["camera/_MG_001.JPG"]["location_source"] == "time"
    assert cli(["tag", str(library), "--model", str(models["unsure"]), "--out", str(out), *together,
                "--max-gap", "5m"]) == 0
    rows = read_rows(out)
    assert rows["camera/_MG_001.JPG"]["location_source"] == "none"  # 6 and 14 min from the phone's photos
    # without --together: all 4 camera photos within 10 min of the phone's at the phone's own time zone, and at no
    # other zone, is a strong interleave: placed, and the evidence says how its clock was found
    assert cli(["tag", str(library), "--model", str(models["unsure"]), "--out", str(out)]) == 0
    camera = read_rows(out)["camera/_MG_001.JPG"]
    assert camera["location_source"] == "time" and "clock UTC+01:00 estimated from 4 of 4 photos" in camera["evidence"]
    # and with the camera's photos shifted 5 h (a clock nobody sets), no zone lines them up: no place, and why
    for path in sorted((library / "camera").glob("*.JPG")):
        subprocess.run(["exiftool", "-q", "-overwrite_original", "-DateTimeOriginal+=5:0:0", str(path)], check=True)
    assert cli(["tag", str(library), "--model", str(models["unsure"]), "--out", str(out)]) == 0
    camera = read_rows(out)["camera/_MG_001.JPG"]
    assert camera["location_source"] == "none" and camera["location_note"]
    assert cli(["tag", str(library), "--model", str(models["unsure"]), "--out", str(out), "--max-gap", "1h30"]) == 1


def test_pixel_sketches_keep_similarities_and_belong_to_their_model(tmp_path):
    import numpy as np

    from src.placing import embeddings_path, load_sketches, save_sketches, sketch

    rng = np.random.default_rng(1)
    a = rng.standard_normal(1280)
    b = a + 0.8 * rng.standard_normal(1280)  # a similar photo
    c = rng.standard_normal(1280)           # an unrelated one
    cos = lambda u, v: float(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))  # noqa: E731
    sa, sb, sc = (sketch(v).astype(np.float32) for v in (a, b, c))
    assert abs(cos(sa, sb) - cos(a, b)) < 0.15 and abs(cos(sa, sc) - cos(a, c)) < 0.15
    assert cos(sa, sb) > cos(sa, sc) + 0.4
    path = embeddings_path(tmp_path / "tags.csv")
    assert path.name == "tags.csv.embeddings.npz"
    save_sketches(path, "model-a", {"x.jpg": sketch(a), "y.jpg": sketch(b)})
    kept = load_sketches(path, "model-a")
    assert sorted(kept) == ["x.jpg", "y.jpg"] and np.array_equal(kept["x.jpg"], sketch(a))
    assert load_sketches(path, "model-b") == {}  # another model's embeddings are not comparable
    path.write_bytes(b"damaged")
    assert load_sketches(path, "model-a") == {}
