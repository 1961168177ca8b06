"""``python -m src report``: the library page (map, gallery by landmark, counts) from a real tag CSV and real photo
files; a browser test renders it in headless Chromium with the network cut off (tiles excepted)."""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import SHARED_DATA, make_photo
from src.__main__ import main as cli
from src.landmarks import landmark_info
from src.report import TILE_HOSTS, build_report

COLUMNS = ["path", "status", "landmark", "class", "prob", "city", "country", "lat", "lon", "gps_source", "top_k",
           "top_k_probs", "error"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "static_images" / "library_report.png"


def ok_row(path: str, cls: str, prob: float = 0.91, gps: tuple[float, float] | None = None) -> dict:
    info = landmark_info(cls)
    lat, lon = gps or (info["lat"], info["lon"])
    return {"path": path, "status": "ok", "landmark": info["name"], "class": cls, "prob": f"{prob:.4f}",
            "city": info["city"], "country": info["country"], "lat": f"{lat:.6f}", "lon": f"{lon:.6f}",
            "gps_source": "exif" if gps else "landmark", "top_k": info["name"], "top_k_probs": f"{prob:.4f}",
            "error": ""}


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return path


def library(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """9 photos: 6 of 2 landmarks (one with its camera's GPS, one in a subfolder, one with a name to escape), 2 with
    no known landmark, 1 error, 1 listed but deleted since."""
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    rows = []
    for i in range(3):
        make_photo(photos / f"bridge_{i}.jpg", 0, i, size=(120, 90))
        rows.append(ok_row(f"bridge_{i}.jpg", "09.Golden_Gate_Bridge", 0.8 + i / 20))
    make_photo(photos / "trip" / "tower.png", 1, 9, size=(90, 120), fmt="PNG")
    rows.append(ok_row("trip/tower.png", "16.Eiffel_Tower", gps=(48.8584, 2.2945)))
    make_photo(photos / "a&b <tower>.jpg", 1, 10)
    rows.append(ok_row("a&b <tower>.jpg", "16.Eiffel_Tower", 0.66))
    make_photo(photos / "gone.jpg", 1, 11)
    rows.append(ok_row("gone.jpg", "16.Eiffel_Tower"))
    (photos / "gone.jpg").unlink()  # deleted after tagging: the page still lists it, without a preview
    for i in range(2):
        make_photo(photos / f"cat_{i}.jpg", 2, i)
        rows.append({"path": f"cat_{i}.jpg", "status": "no_known_landmark", "landmark": "no known landmark",
                     "prob": "0.2100"})
    (photos / "broken.jpg").write_bytes(b"")
    rows.append({"path": "broken.jpg", "status": "error", "error": f"{photos / 'broken.jpg'}: empty file (0 bytes)"})
    return write_csv(tmp_path / "tags.csv", rows), photos, rows


def sections(page: str) -> dict[str, list[str]]:
    """Gallery: landmark -> photo names, as the page lists them."""
    found = {}
    for match in re.finditer(r'<section class="lt-group" id="[^"]+" data-landmark="([^"]+)".*?</section>', page,
                             re.S):
        found[match.group(1)] = re.findall(r'<figure data-photo="([^"]+)"', match.group(0))
    return found


def test_report_page_counts_groups_and_needs_no_network(tmp_path, capsys):
    tags, photos, rows = library(tmp_path)
    out = tmp_path / "site" / "library.html"
    assert cli(["report", str(tags), "--photos", str(photos), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "9 photos, 6 tagged (2 landmarks), 2 no known landmark, 1 errors; 6 on the map" in printed.out
    assert "1 photos have no preview" in printed.err
    page = out.read_text(encoding="utf-8")
    counts = dict(re.findall(r'<b id="count-([a-z-]+)">(\d+)</b>', page))
    assert counts == {"photos": "9", "tagged": "6", "no-landmark": "2", "errors": "1", "on-map": "6"}
    assert sections(page) == {
        "Eiffel Tower": ["a&amp;b &lt;tower&gt;.jpg", "gone.jpg", "trip/tower.png"],
        "Golden Gate Bridge": ["bridge_0.jpg", "bridge_1.jpg", "bridge_2.jpg"],
        "No known landmark": ["cat_0.jpg", "cat_1.jpg"]}
    assert "a&b <tower>" not in page  # escaped everywhere
    assert "broken.jpg: " in page and "empty file" in page  # the error is listed with its reason
    thumbs = re.findall(r'<img id="thumb-\d+" src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(thumbs) == 7  # every readable photo once; gone.jpg has a placeholder
    for data in thumbs:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "JPEG" and max(img.size) <= 160
    # self-contained: Leaflet and MarkerCluster inlined; the tiles are the only network address it loads
    assert not re.findall(r'<(?:script|link)[^>]*(?:src|href)="https?://', page)
    assert "L.markerClusterGroup" in page and "Leaflet 1.9.4" in page
    assert set(re.findall(r'"(https://[^"/]+)/\{z\}', page)) == {f"https://{h}" for h in TILE_HOSTS}
    assert sorted(p.name for p in out.parent.iterdir()) == ["library.html"]  # no temporary file left


def test_report_finds_the_folder_tag_recorded(tmp_path, capsys):
    tags, photos, _ = library(tmp_path)
    assert cli(["report", str(tags)]) == 1  # no --photos and nothing recorded: one line saying what to do
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--photos" in err and "\n" not in err
    Path(f"{tags}.json").write_text(json.dumps({"folder": str(photos.resolve())}))
    assert cli(["report", str(tags)]) == 0
    assert sections(tags.with_suffix(".html").read_text(encoding="utf-8"))["Golden Gate Bridge"]


def test_report_refuses_a_csv_that_is_not_a_tag_csv(tmp_path, capsys):
    other = tmp_path / "accounts.csv"
    other.write_text("name,amount\nrent,1200\n")
    assert cli(["report", str(other), "--photos", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "accounts.csv" in err and "not a tag CSV" in err
    assert not (tmp_path / "x.html").exists()


# ---- in a browser ----------------------------------------------------------------------------------------------

@pytest.fixture
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed")
    for candidate in (os.environ.get("LANDMARK_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("Chromium not found (Debian/Ubuntu: sudo apt-get install chromium; or LANDMARK_CHROMIUM=path)")


def render(chromium: str, page_file: Path, screenshot: Path | None = None) -> dict:
    """Open the page offline (every request but the page's own file refused, tiles counted), open one popup,
    and report what is on screen."""
    from playwright.sync_api import sync_playwright

    requested = {"tiles": 0, "other": []}

    def route(request_route):
        url = request_route.request.url
        if url.startswith(("file://", "data:")):
            return request_route.continue_()
        if any(host in url for host in TILE_HOSTS):
            requested["tiles"] += 1
        else:
            requested["other"].append(url)
        return request_route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.route("**/*", route)
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            page.wait_for_selector(".lt-cluster, .lt-pin", timeout=15000)
            on_screen = page.evaluate("""() => {
                const clusters = [...document.querySelectorAll('.lt-cluster')].map(
                    c => [c.dataset.landmark, parseInt(c.textContent)]);
                return {clusters, pins: document.querySelectorAll('.lt-pin').length,
                        sections: [...document.querySelectorAll('section.lt-group[data-landmark]')].map(
                            s => [s.dataset.landmark, s.querySelectorAll('figure').length]),
                        gallery_images: [...document.querySelectorAll('.lt-thumbs img')].filter(
                            i => i.complete && i.naturalWidth > 0).length};
            }""")
            if screenshot is not None:
                page.wait_for_timeout(500)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
            # open the popup of one photo the way a click does (through its cluster)
            on_screen["popup"] = page.evaluate("""() => new Promise(resolve => {
                const group = window[Object.keys(window).find(k => k.startsWith('marker_cluster_'))];
                const marker = group.getLayers()[0];
                group.zoomToShowLayer(marker, () => {
                    marker.openPopup();
                    setTimeout(() => {
                        const box = document.querySelector('.leaflet-popup-content');
                        const img = box && box.querySelector('img');
                        resolve({name: box && box.querySelector('.lt-popup-name').textContent,
                                 image: !!(img && img.src.startsWith('data:image/jpeg') && img.naturalWidth > 0)});
                    }, 300);
                });
            })""")
            on_screen["errors"] = errors
        finally:
            browser.close()
    on_screen["requested"] = requested
    return on_screen


@pytest.mark.slow
def test_report_in_a_browser_shows_markers_gallery_and_popups_offline(chromium, tmp_path):
    tags, photos, _ = library(tmp_path)
    out = tmp_path / "library.html"
    summary = build_report(tags, photos, out)
    seen = render(chromium, out, screenshot=tmp_path / "shot.png")
    assert seen["errors"] == [] and seen["requested"]["other"] == []  # nothing but tiles wanted from the network
    clustered = sum(n for _, n in seen["clusters"])
    assert clustered + seen["pins"] == summary.on_map == 6  # every located photo is on the map, once
    assert {name for name, _ in seen["clusters"]} <= {"Golden Gate Bridge", "Eiffel Tower"}
    assert dict(seen["sections"]) == {"Eiffel Tower": 3, "Golden Gate Bridge": 3, "No known landmark": 2}
    assert seen["gallery_images"] == 7
    assert seen["popup"]["image"] and seen["popup"]["name"].endswith((".jpg", ".png"))
    assert (tmp_path / "shot.png").stat().st_size > 10_000


@pytest.mark.slow
def test_screenshot_of_a_real_library_for_the_docs(chromium, tmp_path):
    """The 13 shared landmarks (4 photos each) and 6 everyday photos; saved for docs/metadata.md when
    ``LANDMARK_SCREENSHOTS=1``."""
    if not (SHARED_DATA / "test").is_dir():
        pytest.skip(f"shared landmark photos not present at {SHARED_DATA}")
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = []
    for folder in sorted((SHARED_DATA / "test").iterdir()):
        for path in sorted(folder.iterdir())[:4]:
            shutil.copy(path, photos / path.name)
            rows.append(ok_row(path.name, folder.name, 0.9))
    for path in sorted((SHARED_DATA.parent / "everyday").rglob("*.jpg"))[:6]:
        shutil.copy(path, photos / path.name)
        rows.append({"path": path.name, "status": "no_known_landmark", "landmark": "no known landmark",
                     "prob": "0.2"})
    out = tmp_path / "library.html"
    build_report(write_csv(tmp_path / "tags.csv", rows), photos, out)
    shot = SCREENSHOT if os.environ.get("LANDMARK_SCREENSHOTS") else tmp_path / "shot.png"
    seen = render(chromium, out, screenshot=shot)
    assert len(seen["sections"]) == 14 and seen["errors"] == []


def test_report_draws_each_place_by_where_it_came_from_with_the_radius_of_estimates(tmp_path):
    """Camera GPS, a track, the capture time and a landmark are told apart on the map and in the legend; an
    estimate shows its accuracy radius and its evidence; a photo without a place is not on the map."""
    photos = tmp_path / "photos"
    photos.mkdir()
    columns = COLUMNS + ["location_source", "accuracy_m", "evidence"]
    rows = [
        dict(ok_row("camera.jpg", "16.Eiffel_Tower", gps=(48.8584, 2.2945)), location_source="camera"),
        {"path": "walk.jpg", "status": "no_known_landmark", "landmark": "no known landmark", "prob": "0.1",
         "lat": "48.85", "lon": "2.30", "location_source": "time", "accuracy_m": "350",
         "evidence": "camera.jpg, 4 min earlier"},
        {"path": "hike.jpg", "status": "no_known_landmark", "landmark": "no known landmark", "prob": "0.1",
         "lat": "47.4", "lon": "11.0", "location_source": "track", "accuracy_m": "12",
         "evidence": "track hike.gpx, between points 10 s apart"},
        dict(ok_row("scan.jpg", "09.Golden_Gate_Bridge"), location_source="landmark", accuracy_m="2000"),
        {"path": "home.jpg", "status": "no_known_landmark", "landmark": "no known landmark", "prob": "0.1",
         "location_source": "none"},
    ]
    for i, row in enumerate(rows):
        make_photo(photos / row["path"], i % 3, i)
    tags = tmp_path / "tags.csv"
    with open(tags, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in columns} for r in rows)
    summary = build_report(tags, photos, tmp_path / "lib.html")
    page = (tmp_path / "lib.html").read_text(encoding="utf-8")
    assert summary.on_map == 4 and summary.by_source == {"camera": 1, "track": 1, "time": 1, "landmark": 1}
    for source in ("camera", "track", "time", "landmark"):
        assert f'data-source=\\"{source}\\"' in page or f'data-source="{source}"' in page
    assert "estimated from the capture time (camera.jpg, 4 min earlier), within 350 m" in page
    assert "within 2.0 km" in page  # the landmark's radius
    assert page.count("L.circle(") == 3  # the three estimates; the camera's own GPS has no circle
