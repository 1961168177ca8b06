"""Getting the data: a real HTTP server on 127.0.0.1 serving a generated course-layout zip (download, resume,
servers ignoring Range, corrupt zips), local folders and zips through LANDMARK_DATA, and the no-network message."""
from __future__ import annotations

import argparse
import io
import os
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import make_dataset, refused_url
from src import download as data_module
from src.data import load_landmark_data
from src.download import DataNotFoundError, download_file, resolve_data_dir
from src.data_cli import add_data_arguments, data_main


# ---------------------------------------------------------------------------------------------------------------
# A small HTTP server with Range support, a switch to ignore Range, and a switch to drop a connection
# ---------------------------------------------------------------------------------------------------------------

class ZipServer:
    def __init__(self, payload: bytes):
        self.payload = payload
        self.requests: list[dict] = []  # path and headers of every GET
        self.cut_after: int | None = None  # drop the next response after this many body bytes
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if self.path != "/landmark_images.zip":
                    self.send_error(404, "Not Found")
                    return
                data, start = server.payload, 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    cut, server.cut_after = server.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops mid-body
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/landmark_images.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def zip_folder(folder: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> bytes:
    """The folder's files as a zip (stored, so bytes can be corrupted precisely), names under ``prefix``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
    return buf.getvalue()


def corrupt_a_member(payload: bytes) -> bytes:
    """Flip one byte inside the largest member's data: the zip still opens but that member's CRC fails."""
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    local_header = payload[info.header_offset: info.header_offset + 30]
    name_len = int.from_bytes(local_header[26:28], "little")
    extra_len = int.from_bytes(local_header[28:30], "little")
    pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    return payload[:pos] + bytes([payload[pos] ^ 0xFF]) + payload[pos + 1:]


@pytest.fixture(scope="module")
def course_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("course") / "landmark_images", n_classes=2, n_train=5, n_test=2,
                        size=(40, 30))


@pytest.fixture(scope="module")
def course_zip(course_data) -> bytes:
    return zip_folder(course_data, extra={"__MACOSX/._junk": b"apple double"})


@pytest.fixture
def server(course_zip):
    srv = ZipServer(course_zip)
    yield srv
    srv.close()


@pytest.fixture
def home(tmp_path, monkeypatch, server) -> Path:
    """Downloads go to a tmp LANDMARK_DATA_HOME; the course URL is the local server's."""
    monkeypatch.setenv("LANDMARK_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LANDMARK_DATA_URL", server.url)
    return tmp_path / "home"


def same_files(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and not p.name.startswith("."))
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and not p.name.startswith("."))
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.rglob("*") if p.name.endswith((".extracting", ".part", ".tmp")))


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


# ---------------------------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------------------------

def test_download_extracts_and_a_second_call_does_nothing(home, server, course_data):
    root = resolve_data_dir()
    assert root == home / "landmark_images"
    assert same_files(root, course_data)
    assert not (root / "__MACOSX").exists() and not (home / "__MACOSX").exists()
    assert (home / "landmark_images.zip").read_bytes() == server.payload
    assert leftovers(home) == []
    assert len(server.requests) == 1 and server.requests[0]["range"] is None

    assert resolve_data_dir() == root  # found: no request, nothing rewritten
    data = load_landmark_data()
    assert len(server.requests) == 1
    assert data.root == root and len(data.train) + len(data.valid) == 10 and data.bad_files == []


def test_resume_after_a_dropped_connection(server, tmp_path):
    dest = tmp_path / "dl" / "landmark_images.zip"
    server.cut_after = 5000
    with pytest.raises(DataNotFoundError) as info:
        download_file(server.url, dest, retries=0, chunk_size=1024)
    assert "resume" in one_line(info)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == 5000 and not dest.exists()  # what arrived is kept, under a temporary name

    download_file(server.url, dest, retries=0, chunk_size=1024)  # the next call asks for the rest
    assert server.requests[-1]["range"] == "bytes=5000-"
    assert dest.read_bytes() == server.payload and not part.exists()


def test_a_dropped_connection_is_resumed_within_one_call(server, tmp_path):
    dest = tmp_path / "landmark_images.zip"
    server.cut_after = 3000
    download_file(server.url, dest, retries=2, retry_wait=0)
    assert [r["range"] for r in server.requests] == [None, "bytes=3000-"]
    assert dest.read_bytes() == server.payload


def test_resolve_resumes_a_partial_download_left_by_an_earlier_run(home, server, course_data):
    home.mkdir(parents=True)
    (home / "landmark_images.zip.part").write_bytes(server.payload[:7000])
    root = resolve_data_dir()
    assert [r["range"] for r in server.requests] == ["bytes=7000-"]
    assert same_files(root, course_data) and leftovers(home) == []


def test_a_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "landmark_images.zip"
    dest.with_name(dest.name + ".part").write_bytes(b"x" * 4000)  # stale bytes that must not survive
    download_file(server.url, dest, retries=0)
    assert server.requests[0]["range"] == "bytes=4000-"
    assert dest.read_bytes() == server.payload


def test_a_complete_partial_file_is_accepted_when_the_server_says_416(server, tmp_path):
    dest = tmp_path / "landmark_images.zip"
    dest.with_name(dest.name + ".part").write_bytes(server.payload)
    download_file(server.url, dest, retries=0)
    assert dest.read_bytes() == server.payload


@pytest.mark.parametrize("kind", ["crc", "not_a_zip", "no_layout"])
def test_a_corrupt_download_is_a_clear_error_and_leaves_nothing_half_done(home, server, course_zip, kind, tmp_path):
    if kind == "crc":
        server.payload = corrupt_a_member(course_zip)
    elif kind == "not_a_zip":
        server.payload = b"<html><body>Access denied</body></html>\n" * 50
    else:
        flat = tmp_path / "flat"
        flat.mkdir()
        (flat / "photo.jpg").write_bytes(b"whatever")
        server.payload = zip_folder(flat)
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir()
    msg = one_line(info)
    assert {"crc": "CRC", "not_a_zip": "not a valid zip", "no_layout": "train/ and test/"}[kind] in msg
    assert "landmark_images.zip" in msg and "removed" in msg
    assert not (home / "landmark_images").exists()  # nothing half-extracted
    assert not (home / "landmark_images.zip").exists()  # the useless download is gone...
    assert leftovers(home) == []

    server.payload = course_zip  # ...so the next run fetches it afresh and succeeds
    assert (resolve_data_dir() / "train").is_dir()


def test_a_zip_nested_one_folder_deep(home, server, course_data):
    server.payload = zip_folder(course_data, prefix="landmark_images/")
    root = resolve_data_dir()
    assert root == home / "landmark_images" and same_files(root, course_data)


def test_a_zip_member_escaping_the_folder_is_refused(home, server, course_data):
    server.payload = zip_folder(course_data, extra={"../../evil.txt": b"gotcha"})
    with pytest.raises(DataNotFoundError, match="escapes"):
        resolve_data_dir()
    assert not list(home.parent.rglob("evil.txt")) and not (home / "landmark_images").exists()


def test_http_error_is_one_line(home, server, monkeypatch):
    monkeypatch.setenv("LANDMARK_DATA_URL", server.url.replace("landmark_images.zip", "missing.zip"))
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir()
    assert "HTTP 404" in one_line(info) and "LANDMARK_DATA" in str(info.value)


def test_no_network_and_no_data_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LANDMARK_DATA_HOME", str(tmp_path / "home"))
    url = refused_url()
    monkeypatch.setenv("LANDMARK_DATA_URL", url)
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir()
    assert time.perf_counter() - start < 10  # refused at once, no 30 s timeout or retries
    msg = one_line(info)
    assert msg.startswith("No landmark data: cannot reach " + url)
    assert "LANDMARK_DATA=" in msg and "--data-dir" in msg
    assert not (tmp_path / "home" / "landmark_images").exists()

    with pytest.raises(DataNotFoundError, match="nothing at"):
        resolve_data_dir(download=False)
    # The URL can also be given directly, and the data command reports the same one line.
    with pytest.raises(DataNotFoundError, match="cannot reach http://127.0.0.1"):
        resolve_data_dir(url=refused_url())
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    with pytest.raises(DataNotFoundError, match="LANDMARK_DATA"):
        data_main(parser.parse_args([]))


def test_default_location_is_the_project_data_folder_unless_redirected(monkeypatch, tmp_path):
    monkeypatch.delenv("LANDMARK_DATA_HOME")
    assert data_module.default_data_dir() == data_module.PROJECT_ROOT / "data" / "landmark_images"
    monkeypatch.setenv("LANDMARK_DATA_HOME", str(tmp_path))
    assert data_module.default_data_dir() == tmp_path / "landmark_images"
    monkeypatch.delenv("LANDMARK_DATA_URL")
    assert data_module.data_url() == data_module.COURSE_DATA_URL


# ---------------------------------------------------------------------------------------------------------------
# Local data: LANDMARK_DATA and the explicit argument
# ---------------------------------------------------------------------------------------------------------------

def test_landmark_data_folder(home, server, course_data, monkeypatch, tmp_path):
    monkeypatch.setenv("LANDMARK_DATA", str(course_data))
    assert resolve_data_dir() == course_data
    nested = tmp_path / "outer"
    nested.mkdir()
    (nested / "landmark_images").symlink_to(course_data, target_is_directory=True)
    monkeypatch.setenv("LANDMARK_DATA", str(nested))  # one level above the data: found too
    assert resolve_data_dir() == nested / "landmark_images"
    assert server.requests == [] and not home.exists()  # no download, nothing written


def test_landmark_data_zip(home, server, course_data, course_zip, monkeypatch, tmp_path):
    user_zip = tmp_path / "my copy" / "landmark_images.zip"
    user_zip.parent.mkdir()
    user_zip.write_bytes(zip_folder(course_data, prefix="landmark_images/"))
    monkeypatch.setenv("LANDMARK_DATA", str(user_zip))
    root = resolve_data_dir()
    assert (home / "extracted") in root.parents and same_files(root, course_data)
    assert server.requests == []

    calls = []
    real_extract = data_module.extract_zip
    monkeypatch.setattr(data_module, "extract_zip", lambda *a: calls.append(a) or real_extract(*a))
    assert resolve_data_dir() == root and calls == []  # extracted once

    # The user replaces the zip: the extraction follows.
    smaller = make_dataset(tmp_path / "smaller", n_classes=2, n_train=3, n_test=1, size=(20, 20))
    user_zip.write_bytes(zip_folder(smaller))
    os.utime(user_zip, ns=(time.time_ns(), time.time_ns() + 10**9))
    root2 = resolve_data_dir()
    assert len(calls) == 1 and root2 == root and same_files(root2, smaller)
    assert leftovers(home) == []


def test_a_corrupt_local_zip_is_reported_and_kept(home, course_zip, monkeypatch, tmp_path):
    user_zip = tmp_path / "landmark_images.zip"
    user_zip.write_bytes(corrupt_a_member(course_zip))
    monkeypatch.setenv("LANDMARK_DATA", str(user_zip))
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir()
    assert "CRC" in one_line(info) and str(user_zip) in str(info.value)
    assert user_zip.exists()  # the user's own file is never deleted
    assert not list(home.glob("extracted/*/train"))
    assert leftovers(home) == []
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 but not really")
    with pytest.raises(DataNotFoundError, match="not a valid zip"):
        resolve_data_dir(bad)


def test_explicit_argument_beats_the_environment(home, server, course_data, monkeypatch, tmp_path):
    other = make_dataset(tmp_path / "other", n_classes=2, n_train=2, n_test=1, size=(16, 16))
    monkeypatch.setenv("LANDMARK_DATA", str(course_data))
    assert resolve_data_dir(other) == other
    assert resolve_data_dir(str(other)) == other
    assert resolve_data_dir() == course_data
    monkeypatch.setenv("LANDMARK_DATA", str(tmp_path / "missing"))
    assert resolve_data_dir(other) == other  # a wrong env var does not matter when an argument is given
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir()
    assert "LANDMARK_DATA" in one_line(info) and "missing" in str(info.value)
    assert server.requests == []


def test_a_foreign_folder_at_the_download_location_is_never_overwritten(home, server):
    mine = home / "landmark_images" / "Photos"
    mine.mkdir(parents=True)
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir()
    assert "move it away" in one_line(info)
    assert (mine / "holiday.jpg").read_bytes() == b"precious" and server.requests == []
