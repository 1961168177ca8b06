"""``predict`` and ``tag`` on real files, including every kind of odd or broken photo an upload folder holds."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from src.__main__ import main as cli
from src.landmarks import parse_xmp_gps_coordinate
from src.predictor import Predictor, export_torchscript, load_exported, load_image_tensor
from src.metadata import read_exif_gps, sidecar_path
from src.pipeline import iter_predictions
from src.recognizer import Recognizer
from src.tagging import CSV_COLUMNS, TagFileError, journal_path, tag_folder

CLASSES = ["09.Golden_Gate_Bridge", "16.Eiffel_Tower", "07.My_Back_Garden"]
MEAN, STD = [0.48, 0.45, 0.41], [0.23, 0.22, 0.24]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class TinyNet(nn.Module):
    """A real small CNN. ``favour`` makes one class win on every photo (bias), for tests about what is written."""

    def __init__(self, num_classes: int = 3, favour: int | None = None, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, num_classes)
        if favour is not None:
            with torch.no_grad():
                self.fc.weight.mul_(0.01)
                self.fc.bias.zero_()
                self.fc.bias[favour] = 6.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Exported files: ``varied`` (photo-dependent answers) and ``golden_gate`` (always the Golden Gate Bridge)."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, net in (("varied", TinyNet()), ("golden_gate", TinyNet(favour=0))):
        out[name] = folder / f"{name}.pt"
        export_torchscript(Predictor(net, CLASSES, MEAN, STD, img_size=32, arch="scratch"), out[name])
    return out


def photo(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 5.0 + seed), np.cos(yy / 4.0), np.sin((xx + yy) / 9.0)], -1) * 90 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid-looking PNG whose header declares ``width x height`` (2.7 gigapixels here) in a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


GOOD = ["orientation.jpg", "gray.png", "rgba.png", "cmyk.jpg", "16bit.png", "anim.gif", "webp_named.jpg",
        "plain.jpg", "gps.jpg"]
BAD = {"truncated.jpg": "truncated", "empty.jpg": "empty", "text.jpg": "not an image",
       "bomb.png": "too large"}


def make_zoo(folder: Path) -> Path:
    """Every kind of file a photo folder holds: good photos in odd formats and modes, and broken ones."""
    folder.mkdir(parents=True, exist_ok=True)
    base = photo((80, 60), seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    base.transpose(Image.Transpose.ROTATE_90).save(folder / "orientation.jpg", exif=exif, quality=95)
    base.convert("L").save(folder / "gray.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))))
    rgba.save(folder / "rgba.png")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)).save(folder / "16bit.png")
    frames = [photo((50, 40), seed=s).convert("P") for s in (2, 3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    photo((70, 50), seed=4).save(folder / "webp_named.jpg", format="WEBP")  # a WEBP that says it is a JPEG
    photo((64, 48), seed=5).save(folder / "plain.jpg", quality=95)
    gps = Image.Exif()
    gps[0x8825] = {1: "N", 2: (48.0, 51.0, 30.24), 3: "E", 4: (2.0, 17.0, 40.2)}  # 48.8584 N, 2.2945 E
    photo((64, 48), seed=6).save(folder / "gps.jpg", exif=gps)
    buffer = io.BytesIO()
    photo((200, 150), seed=7).save(buffer, format="JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("This is a shopping list, not a photo.\n")
    (folder / "bomb.png").write_bytes(decompression_bomb())
    (folder / "notes.txt").write_text("not a photo, and named so: never listed\n")
    (folder / ".hidden.jpg").write_bytes(b"")  # hidden files are skipped, not reported
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- decoding odd files --------------------------------------------------------------------------------------------

def test_every_odd_file_predicts_or_gets_a_clear_error(tmp_path, models):
    zoo = make_zoo(tmp_path / "zoo")
    model = load_exported(models["varied"])
    paths = [zoo / n for n in GOOD + list(BAD)]
    results = {r.path.name: r for r in iter_predictions(model, paths, batch_size=4, workers=2, progress=False)}
    for name in GOOD:
        assert results[name].error is None and results[name].probs.shape == (3,), name
    for name, reason in BAD.items():
        error = results[name].error
        assert error is not None and results[name].probs is None, name
        assert error.startswith(str(zoo / name)) and reason in error and "\n" not in error, error


def test_exif_orientation_is_applied(tmp_path):
    base = photo((80, 60), seed=1)
    base.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "stored_rotated.png", exif=exif)
    upright = load_image_tensor(tmp_path / "upright.png", 36)
    rotated = load_image_tensor(tmp_path / "stored_rotated.png", 36)
    assert upright.shape == (3, 36, 48) and torch.equal(upright, rotated)  # 60 px high, resized to 36


def test_exif_gps_is_read_and_bogus_gps_ignored(tmp_path):
    zoo = make_zoo(tmp_path / "zoo")
    lat, lon = read_exif_gps(zoo / "gps.jpg")
    assert lat == pytest.approx(48.8584, abs=1e-4) and lon == pytest.approx(2.2945, abs=1e-4)
    assert read_exif_gps(zoo / "plain.jpg") is None
    assert read_exif_gps(zoo / "text.jpg") is None
    south_west = Image.Exif()
    south_west[0x8825] = {1: "S", 2: (33.0, 51.0, 24.48), 3: "W", 4: (70.0, 0.0, 0.0)}
    photo().save(tmp_path / "sw.jpg", exif=south_west)
    assert read_exif_gps(tmp_path / "sw.jpg") == pytest.approx((-33.8568, -70.0), abs=1e-4)
    null_island = Image.Exif()
    null_island[0x8825] = {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)}
    photo().save(tmp_path / "zero.jpg", exif=null_island)
    assert read_exif_gps(tmp_path / "zero.jpg") is None


# ---- predict -------------------------------------------------------------------------------------------------------

def test_predict_command_reports_bad_files_and_goes_on(tmp_path, models, capsys):
    zoo = make_zoo(tmp_path / "zoo")
    files = [str(zoo / "plain.jpg"), str(zoo / "text.jpg"), str(zoo / "anim.gif"), str(zoo / "bomb.png"),
             str(tmp_path / "missing.jpg")]
    assert cli(["predict", "--model", str(models["golden_gate"]), "-k", "2", *files]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3
    for line, name in zip(errors, ["text.jpg", "bomb.png", "missing.jpg"]):
        assert line.startswith("error: ") and name in line
    out = captured.out
    assert f"{zoo / 'plain.jpg'}\n  1. Golden Gate Bridge, San Francisco, 37.8199 N, 122.4783 W, 1.00\n" in out
    assert str(zoo / "anim.gif") in out and "2. " in out
    # all good: exit status 0
    assert cli(["predict", "--model", str(models["golden_gate"]), str(zoo / "plain.jpg")]) == 0


def test_predict_json_one_object_per_image(tmp_path, models, capsys):
    zoo = make_zoo(tmp_path / "zoo")
    files = [zoo / "plain.jpg", zoo / "gps.jpg", zoo / "empty.jpg"]
    assert cli(["predict", "--model", str(models["golden_gate"]), "--json", "-k", "3", *map(str, files)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["path"] for r in records] == [str(f) for f in files]
    plain, gps, empty = records
    assert plain["status"] == "ok" and plain["landmark"] == "Golden Gate Bridge" and plain["prob"] > 0.9
    assert (plain["lat"], plain["lon"], plain["gps_source"]) == (37.8199, -122.4783, "landmark")
    assert [e["class"] for e in plain["top_k"]][0] == "09.Golden_Gate_Bridge" and len(plain["top_k"]) == 3
    unknown = next(e for e in plain["top_k"] if e["class"] == "07.My_Back_Garden")
    assert unknown["name"] == "My Back Garden" and unknown["lat"] is None  # a class with no known location
    # a photo with its own GPS reports that, not the guess
    assert gps["gps_source"] == "exif" and gps["lat"] == pytest.approx(48.8584, abs=1e-4)
    # ... and the Golden Gate Bridge its pixels suggest is 8,950 km from it: withheld, and the record says why
    assert gps["status"] == "no_known_landmark" and gps["landmark"] == "no known landmark" and gps["class"] is None
    assert gps["note"].startswith("landmark withheld: pixels say Golden Gate Bridge") and "km from it" in gps["note"]
    assert gps["top_k"][0]["class"] == "09.Golden_Gate_Bridge"  # what the pixels said is kept
    assert empty["status"] == "error" and "empty file" in empty["error"] and empty["top_k"] == []


def test_predict_min_prob_says_no_known_landmark(tmp_path, models, capsys):
    photo().save(tmp_path / "a.jpg")
    assert cli(["predict", "--model", str(models["varied"]), "--json", "--min-prob", "0.99",
                str(tmp_path / "a.jpg")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "no_known_landmark" and record["landmark"] == "no known landmark"
    assert record["lat"] is None and record["top_k"]  # the guesses are still listed


def test_predict_with_a_bad_model_file_is_one_line(tmp_path, capsys):
    photo().save(tmp_path / "a.jpg")
    (tmp_path / "model.pt").write_text("nope")
    assert cli(["predict", "--model", str(tmp_path / "model.pt"), str(tmp_path / "a.jpg")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "model.pt" in err and "\n" not in err


# ---- tag -----------------------------------------------------------------------------------------------------------

def test_tag_and_predict_agree_on_every_photo(tmp_path, models):
    """tag resizes in worker threads before batching; the probabilities equal predicting each photo alone."""
    zoo = make_zoo(tmp_path / "zoo")
    for i, size in enumerate([(300, 200), (200, 300), (31, 90), (500, 181)]):
        photo(size, seed=10 + i).save(zoo / f"size_{i}.png")
    plain = load_exported(models["varied"])
    optimized = load_exported(models["varied"], optimize=True)  # what the predict and tag commands use
    assert optimized is not plain and list(optimized.class_names) == CLASSES
    paths = [zoo / n for n in GOOD] + sorted(zoo.glob("size_*.png"))
    for model in (plain, optimized):
        batched = list(iter_predictions(model, paths, batch_size=5, workers=3, progress=False))
        with torch.no_grad():
            for result in batched:
                alone = plain(load_image_tensor(result.path, plain.resize_size)[None])[0]
                assert (result.probs - alone).abs().max() <= 1e-5, result.path.name


def test_tag_folder_with_broken_files_tags_the_good_ones(tmp_path, models, capsys):
    zoo = make_zoo(tmp_path / "zoo")
    (zoo / "sub").mkdir()
    photo(seed=20).save(zoo / "sub" / "nested.jpg")
    before = digest(zoo)
    out = tmp_path / "tags.csv"
    assert cli(["tag", str(zoo), "--model", str(models["golden_gate"]), "--out", str(out), "-k", "2",
                "--batch-size", "4"]) == 1  # some photos failed
    captured = capsys.readouterr()
    rows = {r["path"]: r for r in read_csv(out)}
    assert set(rows) == set(GOOD) | set(BAD) | {"sub/nested.jpg"}  # one row per photo, relative paths, no junk
    assert list(read_csv(out)[0].keys()) == CSV_COLUMNS
    for name in GOOD + ["sub/nested.jpg"]:
        row = rows[name]
        assert row["top_k"].split("|")[0] == "Golden Gate Bridge" and len(row["top_k_probs"].split("|")) == 2
        if name != "gps.jpg":
            assert row["status"] == "ok" and row["landmark"] == "Golden Gate Bridge" and row["error"] == ""
    assert (rows["plain.jpg"]["lat"], rows["plain.jpg"]["lon"], rows["plain.jpg"]["gps_source"]) == (
        "37.8199", "-122.4783", "landmark")
    # gps.jpg's own GPS is in Paris: the Golden Gate Bridge the pixels see is withheld, and the CSV says why
    gps = rows["gps.jpg"]
    assert gps["gps_source"] == "exif" and float(gps["lat"]) == pytest.approx(48.8584, abs=1e-4)
    assert gps["status"] == "no_known_landmark" and "Golden Gate Bridge" in gps["location_note"]
    for name, reason in BAD.items():
        assert rows[name]["status"] == "error" and reason in rows[name]["error"] and rows[name]["landmark"] == ""
        assert f"error: {zoo / name}" in captured.err
    assert "9 tagged" in captured.out or "10 tagged" in captured.out
    assert digest(zoo) == before  # originals untouched, nothing written into the folder
    assert not journal_path(out).exists()


def test_tag_second_run_skips_done_photos_and_retries_errors(tmp_path, models, capsys):
    zoo = make_zoo(tmp_path / "zoo")
    out = tmp_path / "tags.csv"
    tag_folder(zoo, models["golden_gate"], out, progress=False)
    first = {r["path"]: r for r in read_csv(out)}
    # mark one done row so we can see it is kept, not recomputed (its top-k: the landmark columns are derived from
    # the kept pixel decision and the library's evidence on every run)
    rows_one = read_csv(out)
    for row in rows_one:
        if row["path"] == "plain.jpg":
            row["top_k"] = "Kept From Run One|" + row["top_k"].partition("|")[2]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows_one)
    (zoo / "text.jpg").unlink()
    photo(seed=30).save(zoo / "text.jpg")  # the user fixed a broken file
    photo(seed=31).save(zoo / "new.jpg")  # and added one
    summary = tag_folder(zoo, models["golden_gate"], out, progress=False)
    rows = read_csv(out)
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(by_path) == len(first) + 1  # no duplicates
    assert by_path["plain.jpg"]["top_k"].startswith("Kept From Run One|")
    assert by_path["text.jpg"]["status"] == "ok" and by_path["new.jpg"]["status"] == "ok"
    assert by_path["empty.jpg"]["status"] == "error"  # still broken, tried again
    assert summary.skipped == len(GOOD) and summary.tagged == 2 and summary.errors == len(BAD) - 1
    assert [r["path"] for r in rows] == sorted(by_path)


def test_tag_resumes_from_the_journal_of_a_killed_run(tmp_path, models):
    zoo = make_zoo(tmp_path / "zoo")
    out = tmp_path / "tags.csv"
    journal = journal_path(out)
    header = ",".join(CSV_COLUMNS)
    decided_by = Recognizer.load(models["golden_gate"]).decided_by()  # what this run decides with
    done = (f"plain.jpg,ok,From The Journal,09.Golden_Gate_Bridge,0.9900,,,,,,From The Journal,0.9900,,0.9000,"
            f"classifier,{decided_by},,,,,,09.Golden_Gate_Bridge")
    torn = "gray.png,ok,Golden Gate Br"  # the line being written when the process died
    journal.write_text(f"{header}\n{done}\n{torn}")
    tag_folder(zoo, models["golden_gate"], out, progress=False)
    rows = {r["path"]: r for r in read_csv(out)}
    assert rows["plain.jpg"]["top_k"] == "From The Journal"  # not predicted again (a prediction gives top 3)
    assert rows["gray.png"]["landmark"] == "Golden Gate Bridge" and rows["gray.png"]["status"] == "ok"
    assert len(read_csv(out)) == len(GOOD) + len(BAD) and not journal.exists()


@pytest.mark.slow
def test_tag_killed_midway_then_rerun_completes_without_duplicates(tmp_path, models):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(120):
        photo((96, 72), seed=i).save(folder / f"p{i:03d}.jpg")
    out = tmp_path / "tags.csv"
    cmd = [sys.executable, "-m", "src", "tag", str(folder), "--model", str(models["varied"]), "--out", str(out),
           "--batch-size", "4", "--workers", "1", "--min-prob", "0"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = journal_path(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") > 9:  # header + at least two batches
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode != 0, "the first run should have been killed part-way"
    done_before = journal.read_text().count("\n") - 1
    assert 8 <= done_before < 120 and not out.exists()  # killed part-way: rows only in the journal
    rerun = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = read_csv(out)
    assert sorted(r["path"] for r in rows) == [f"p{i:03d}.jpg" for i in range(120)]
    assert all(r["status"] == "ok" for r in rows) and not journal.exists()
    assert f"{done_before} of 120 photos already tagged" in rerun.stderr + rerun.stdout


def test_tag_min_prob_marks_no_known_landmark(tmp_path, models):
    zoo = make_zoo(tmp_path / "zoo")
    out = tmp_path / "tags.csv"
    summary = tag_folder(zoo, models["varied"], out, min_prob=0.99, progress=False)
    rows = {r["path"]: r for r in read_csv(out)}
    assert summary.low_confidence == len(GOOD)
    for name in GOOD:
        row = rows[name]
        assert row["status"] == "no_known_landmark" and row["landmark"] == "no known landmark" and row["class"] == ""
        assert row["top_k"] != ""  # the guesses are kept for inspection
        if name == "gps.jpg":
            assert row["gps_source"] == "exif"  # its own location is still a fact
        else:
            assert row["lat"] == row["lon"] == row["gps_source"] == ""


needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None,
                                    reason="exiftool not installed (apt-get install libimage-exiftool-perl)")


@needs_exiftool
def test_tag_sidecars(tmp_path, models, capsys):
    zoo = make_zoo(tmp_path / "zoo")
    foreign = sidecar_path(zoo / "gray.png")
    foreign.write_text("<x:xmpmeta>darktable edit history</x:xmpmeta>")  # not XMP ExifTool can read
    before = {n: h for n, h in digest(zoo).items() if not n.endswith(".xmp")}
    out = tmp_path / "tags.csv"
    assert cli(["tag", str(zoo), "--model", str(models["golden_gate"]), "--out", str(out), "--sidecar"]) == 1
    captured = capsys.readouterr()
    assert "metadata: " in captured.out and "1 failed" in captured.out
    assert f"error: {foreign}: not an XMP sidecar ExifTool can read; left as it is" in captured.err
    after = {n: h for n, h in digest(zoo).items() if not n.endswith(".xmp")}
    assert after == before  # no photo modified
    assert foreign.read_text() == "<x:xmpmeta>darktable edit history</x:xmpmeta>"
    for name in BAD:
        assert not sidecar_path(zoo / name).exists()
    ns = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "exif": "http://ns.adobe.com/exif/1.0/",
          "dc": "http://purl.org/dc/elements/1.1/", "photoshop": "http://ns.adobe.com/photoshop/1.0/"}
    # gps.jpg's own GPS (Paris) contradicts the landmark: no landmark, and its position is in the photo already
    assert not sidecar_path(zoo / "gps.jpg").exists()
    for name, (lat, lon) in {"plain.jpg": (37.8199, -122.4783), "cmyk.jpg": (37.8199, -122.4783)}.items():
        path = zoo / f"{name}.xmp"
        assert path == sidecar_path(zoo / name)
        desc = ET.parse(path).getroot().find(".//rdf:Description", ns)
        got_lat = parse_xmp_gps_coordinate(desc.get(f"{{{ns['exif']}}}GPSLatitude"))
        got_lon = parse_xmp_gps_coordinate(desc.get(f"{{{ns['exif']}}}GPSLongitude"))
        assert got_lat == pytest.approx(lat, abs=1e-4) and got_lon == pytest.approx(lon, abs=1e-4)
        keywords = [li.text for li in desc.findall("dc:subject/rdf:Bag/rdf:li", ns)]
        assert keywords == ["Golden Gate Bridge", "San Francisco", "United States"]
        assert desc.get(f"{{{ns['photoshop']}}}City") == "San Francisco"
    # ExifTool's serialisation: the photo's position and the landmark's (in LocationShown), once each
    assert (zoo / "plain.jpg.xmp").read_text().count("GPSLatitude='37,49.194N'") == 2


@needs_exiftool
def test_sidecars_for_photos_tagged_earlier_without_them(tmp_path, models):
    zoo = make_zoo(tmp_path / "zoo")
    out = tmp_path / "tags.csv"
    tag_folder(zoo, models["golden_gate"], out, progress=False)
    assert not list(zoo.glob("*.xmp"))
    summary = tag_folder(zoo, models["golden_gate"], out, sidecar=True, progress=False)
    # every photo but gps.jpg (its own GPS contradicts the landmark, and its position is in the photo already)
    assert summary.tagged == 0 and summary.metadata == {"written": len(GOOD) - 1, "nothing": 1}
    assert sidecar_path(zoo / "plain.jpg").exists()


def test_tag_refuses_to_overwrite_a_foreign_csv(tmp_path, models):
    make_zoo(tmp_path / "zoo")
    out = tmp_path / "accounts.csv"
    out.write_text("name,amount\nrent,1200\n")
    for redo in (False, True):
        with pytest.raises(TagFileError, match="not a tag CSV"):
            tag_folder(tmp_path / "zoo", models["golden_gate"], out, redo=redo, progress=False)
    assert out.read_text() == "name,amount\nrent,1200\n"


def test_tag_missing_folder_is_one_line(tmp_path, models, capsys):
    assert cli(["tag", str(tmp_path / "nowhere"), "--model", str(models["golden_gate"]), "--out",
                str(tmp_path / "t.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and "\n" not in err
    assert not (tmp_path / "t.csv").exists()


def test_tag_on_the_shared_photos(tmp_path, models, shared_data):
    """Real web photos (JPEG/PNG/WEBP/GIF, lying extensions): every one gets a row, and none fails."""
    folder = tmp_path / "photos"
    shutil.copytree(shared_data / "test" / "00.Alhambra_Palace", folder)
    out = tmp_path / "tags.csv"
    summary = tag_folder(folder, models["varied"], out, k=3, progress=False)
    rows = read_csv(out)
    assert summary.errors == 0 and len(rows) == summary.total == len(list(folder.iterdir()))


# ---- evaluate: accuracy of an exported file on labelled photos -------------------------------------------------------

def _labelled_folder(root: Path, classes=CLASSES, per_class=(3, 2, 1)) -> Path:
    """``root/test/<class>/`` photos (a data set's layout), plus one unreadable file in the first class."""
    for c, n in zip(classes, per_class):
        folder = root / "test" / c
        folder.mkdir(parents=True)
        for i in range(n):
            photo((64, 48), seed=10 * len(c) + i).save(folder / f"p{i}.png")
    (root / "test" / classes[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "train").mkdir()
    return root


def test_evaluate_scores_an_exported_file_by_class_name(tmp_path, models, capsys):
    data = _labelled_folder(tmp_path / "data")
    out_json = tmp_path / "scores.json"
    assert cli(["evaluate", "--model", str(models["golden_gate"]), "--data-dir", str(data), "-k", "2",
                "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    # golden_gate answers class 0 on every photo: right on the 3 Golden Gate photos of 6 readable ones
    assert "Test accuracy" in captured.out and "50.0%" in captured.out and "on 6 photos" in captured.out
    assert "1 unreadable" in captured.out
    [error] = [line for line in captured.err.splitlines() if "error:" in line]  # one line for the bad file
    assert error.startswith("error:") and "broken.jpg" in error
    scores = json.loads(out_json.read_text())
    assert scores["accuracy"] == pytest.approx(0.5) and scores["count"] == 6 and len(scores["errors"]) == 1
    assert scores["per_class"] == {"07.My_Back_Garden": 0.0, "09.Golden_Gate_Bridge": 1.0, "16.Eiffel_Tower": 0.0}
    assert scores["k"] == 2


def test_evaluate_matches_the_predictions_of_tag(tmp_path, models):
    from src.evaluation import evaluate_exported

    data = _labelled_folder(tmp_path / "data")
    model = load_exported(models["varied"])
    samples = [(p, p.parent.name) for p in sorted((data / "test").rglob("*.png"))]
    result = evaluate_exported(model, samples, k=1, progress=False)
    predicted = [CLASSES[int(r.probs.argmax())] for r in iter_predictions(model, [p for p, _ in samples],
                                                                         progress=False)]
    expected = sum(p == label for p, (_, label) in zip(predicted, samples)) / len(samples)
    assert result["accuracy"] == pytest.approx(expected) and result["topk_accuracy"] == pytest.approx(expected)


def test_evaluate_refuses_classes_the_model_does_not_know(tmp_path, models, capsys):
    data = _labelled_folder(tmp_path / "data", classes=[CLASSES[0], "42.Atlantis"], per_class=(1, 1))
    assert cli(["evaluate", "--model", str(models["varied"]), "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "42.Atlantis" in err and "\n" not in err
