"""The app as a user meets it: Voila serves app.ipynb, headless Chromium uploads photos and clicks Classify.

Needs Chromium (Debian: ``sudo apt-get install chromium``; elsewhere set ``LANDMARK_CHROMIUM=/path/to/chrome``)
and the ``playwright`` package (in requirements-dev.txt; ``playwright install`` is not needed). Skips otherwise.
``LANDMARK_SCREENSHOT=path.png`` also saves the page's screenshot there.

Run as a script it screenshots the app with a real model (for the README)::

    .venv/bin/python tests/test_app_browser.py --model checkpoints/transfer_exported.pt \\
        --out static_images/app_screenshot.png PHOTO [PHOTO ...]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # run as a script: make `src` and the test helpers importable
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

import pytest  # noqa: E402

from conftest import SHARED_DATA, make_photo  # noqa: E402
from test_app import CLASS_NAMES, export_tiny_model, jpeg_bytes  # noqa: E402
from src.app import classify_image_bytes, load_model  # noqa: E402
from src.data import list_classes  # noqa: E402
from src.images import ImageLoadError, open_image  # noqa: E402
from src.landmarks import display_name  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT = 90
BROKEN_FILE = ("broken.jpg", b"This is a text file that someone renamed to .jpg\n")

pytestmark = pytest.mark.slow


# -- driving Voila and Chromium (used by the test and by the screenshot script) ------------------------------

def find_chromium() -> str | None:
    for candidate in (os.environ.get("LANDMARK_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_voila(model_path: Path, log_path: Path, data_dir: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``scripts/app.sh`` on a free loopback port, in its own process group; returns ``(process, url)``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LANDMARK_DATA", "LANDMARK_QUICK")}
    env.update(LANDMARK_MODEL=str(model_path), PORT=str(port), LANDMARK_DEVICE="cpu",
               PYTHONUNBUFFERED="1")
    if data_dir is not None:
        env["LANDMARK_DATA"] = str(data_dir)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "app.sh")], cwd=REPO_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.3)
    stop_voila(proc)
    raise RuntimeError(f"voila did not listen on port {port} within {SERVER_START_TIMEOUT} s:\n"
                       f"{log_path.read_text()[-3000:]}")


def stop_voila(proc: subprocess.Popen) -> None:
    """End voila and the kernels it started (they share its process group)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def classify_in_browser(chromium: str, url: str, files: list[Path], screenshot: Path,
                        show_failures: bool = False, viewport=(1100, 1300)) -> str:
    """Open the app, upload ``files``, click Classify (and the failures button); returns the page's text."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(url, timeout=60_000)
            classify = page.locator("button", has_text="Classify")
            expect(classify).to_be_visible(timeout=60_000)

            # ipywidgets 8 hides the <input type=file>; its button opens the chooser.
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.locator("button.widget-upload", has_text="Choose photos").click()
            chooser.value.set_files([str(f) for f in files])
            n = len(files)
            expect(page.get_by_text(f"{n} photo{'s' if n != 1 else ''} chosen")).to_be_visible(timeout=20_000)
            classify.click()
            expect(page.get_by_text(re.compile(rf"Classified \d+ of {n} files?\."))).to_be_visible(timeout=60_000)
            if show_failures:
                page.locator("button", has_text="Show where the model fails").click()
                expect(page.get_by_text(re.compile(r"test photos right|No test photos|None of the test photos"))
                       ).to_be_visible(timeout=60_000)
            page.wait_for_timeout(500)  # let thumbnails and plots finish painting
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            text = page.inner_text("body")
            if page_errors:
                raise AssertionError(f"JavaScript errors on the page: {page_errors}")
            return text
        finally:
            browser.close()


# -- the test ----------------------------------------------------------------------------------------------------

def pick_photo(tmp_path: Path) -> tuple[Path, list[str]]:
    """A real landmark photo and the class names for the model: from ../shared when present, else generated."""
    test_dir = SHARED_DATA / "test"
    if test_dir.is_dir():
        for path in sorted(p for p in test_dir.rglob("*") if p.is_file()):
            try:
                open_image(path)
            except ImageLoadError:
                continue
            return path, list_classes(SHARED_DATA / "train")
    path = tmp_path / "landmark_photo.jpg"
    path.write_bytes(jpeg_bytes(1, 5, size=(320, 240)))
    return path, CLASS_NAMES


def make_test_photos(root: Path, class_names: list[str], n: int = 2) -> Path:
    """A tiny data set with the model's own class folders (so the failures section has something to check)."""
    for split in ("train", "test"):
        for label, name in enumerate(class_names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make_photo(folder / f"photo_{i}.jpg", label, 700 + i, size=(80, 60))
    return root


@pytest.fixture
def chromium_path() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: .venv/bin/pip install playwright (no `playwright install` needed)")
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium not found: install it (Debian/Ubuntu: sudo apt-get install chromium) "
                    "or set LANDMARK_CHROMIUM=/path/to/chromium")
    return path


def test_app_in_browser_classifies_photo_and_reports_broken_file(chromium_path, tmp_path):
    photo, class_names = pick_photo(tmp_path)
    model_path = export_tiny_model(tmp_path / "tiny_exported.pt", class_names=class_names)
    data_dir = make_test_photos(tmp_path / "test_photos", class_names)
    broken = tmp_path / BROKEN_FILE[0]
    broken.write_bytes(BROKEN_FILE[1])
    # What the page must show: the same model on the same bytes, computed here.
    # (the page uses the model's own threshold, as predict and tag do)
    expected = classify_image_bytes(load_model(model_path), photo.name, photo.read_bytes(), k=3)
    assert expected["error"] is None

    log_path = tmp_path / "voila.log"
    proc, url = start_voila(model_path, log_path, data_dir)
    try:
        shot = tmp_path / "app_screenshot.png"
        body = classify_in_browser(chromium_path, url, [photo, broken], shot, show_failures=True)
    finally:
        stop_voila(proc)

    assert "Classified 1 of 2 files. 1 could not be used (see its message below)." in body
    assert photo.name in body
    # The top-k rows: each landmark name followed by its percentage, exactly as computed here.
    for entry in expected["top"]:
        assert entry["name"] in {display_name(c) for c in class_names}
        row = re.escape(entry["name"]) + r"\s*" + re.escape(f"{100 * entry['prob']:.1f}%")
        assert re.search(row, body), f"{entry['name']} {100 * entry['prob']:.1f}% not shown:\n{body}"
    assert expected["verdict"] in body
    location = expected["top"][0]["location"] if expected["known"] else None
    if location:
        assert f"Where: {location['city']}" in body
    # The broken file: its own one-line message, and the other photo's result is not lost.
    assert re.search(r"broken\.jpg: not an image[^\n]*", body)
    # The failures section ran in the page's kernel on the test photos.
    assert re.search(r"\d+ of \d+ test photos right", body), body
    assert "Traceback" not in body and "Error" not in body
    assert shot.stat().st_size > 10_000
    if os.environ.get("LANDMARK_SCREENSHOT"):
        target = Path(os.environ["LANDMARK_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    log_text = log_path.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-3000:]


# -- the screenshot script ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot the app classifying photos with a real model.")
    parser.add_argument("photos", nargs="+", type=Path, help="photos to upload (a broken file is added)")
    parser.add_argument("--model", type=Path, required=True,
                        help="exported model, e.g. checkpoints/transfer_exported.pt")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "static_images" / "app_screenshot.png")
    parser.add_argument("--no-broken", action="store_true", help="do not add a broken file to the upload")
    parser.add_argument("--height", type=int, default=1100, help="browser window height in pixels")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("error: Chromium not found (sudo apt-get install chromium, or set LANDMARK_CHROMIUM)", file=sys.stderr)
        return 1
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        files = list(args.photos)
        if not args.no_broken:
            broken = Path(tmp) / BROKEN_FILE[0]
            broken.write_bytes(BROKEN_FILE[1])
            files.append(broken)
        log_path = Path(tmp) / "voila.log"
        proc, url = start_voila(args.model.resolve(), log_path)
        try:
            shot = Path(tmp) / "shot.png"
            classify_in_browser(chromium, url, files, shot, viewport=(1100, args.height))
        finally:
            stop_voila(proc)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, args.out)
    print(f"Saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
