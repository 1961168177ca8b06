"""Finding the landmark data set, and fetching it: download (resumable), verify, extract.

A data set is a folder with ``train/NN.Name/*`` and ``test/NN.Name/*`` (the course layout), or a zip of one.
:func:`resolve_data_dir` finds it (``data_dir``, ``$LANDMARK_DATA``, the default location) and downloads the course
zip only when there is nothing else. Environment: ``LANDMARK_DATA`` (a data folder or zip to use),
``LANDMARK_DATA_HOME`` (where downloads and extracted zips go, default ``PROJECT_ROOT/data``),
``LANDMARK_DATA_URL`` (the course zip's URL).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from .helpers import PROJECT_ROOT, OutputError, atomic_write_json

log = logging.getLogger(__name__)

COURSE_DATA_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "landmark_images"  # when LANDMARK_DATA_HOME is not set
DATA_ENV_VAR = "LANDMARK_DATA"  # a data folder or zip to use instead of the download
DATA_HOME_ENV_VAR = "LANDMARK_DATA_HOME"  # where downloads and extracted zips go (default PROJECT_ROOT/data)
DATA_URL_ENV_VAR = "LANDMARK_DATA_URL"  # where the course zip is downloaded from (default COURSE_DATA_URL)
ZIP_SOURCE_MARKER = ".landmark_zip_source.json"


class DataNotFoundError(RuntimeError):
    """No data set could be found or fetched; the message is one line and says what to do."""


# --------------------------------------------------------------------------------------------------------------
# Where the data is, and fetching it
# --------------------------------------------------------------------------------------------------------------

def data_home() -> Path:
    """The folder holding downloaded and extracted data: ``$LANDMARK_DATA_HOME``, else ``PROJECT_ROOT/data``."""
    override = os.environ.get(DATA_HOME_ENV_VAR)
    return Path(override).expanduser() if override else DEFAULT_DATA_DIR.parent


def default_data_dir() -> Path:
    """Where the course download is extracted: ``data_home()/landmark_images``."""
    return data_home() / DEFAULT_DATA_DIR.name


def data_url(url: str | None = None) -> str:
    """The course zip's URL: ``url``, else ``$LANDMARK_DATA_URL``, else :data:`COURSE_DATA_URL`."""
    return url or os.environ.get(DATA_URL_ENV_VAR) or COURSE_DATA_URL


def _has_layout(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def find_dataset_root(folder: str | os.PathLike) -> Path | None:
    """The folder holding ``train/`` and ``test/``: ``folder`` itself or one level below it (zips often nest)."""
    folder = Path(folder)
    if _has_layout(folder):
        return folder
    if folder.is_dir():
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
        for sub in subdirs:
            if _has_layout(sub):
                return sub
    return None


def _no_data_message(reason: str, url: str | None = None) -> str:
    url = data_url(url)
    fetch = "download it by hand" if url in reason else f"download {url} by hand"
    return (
        f"No landmark data: {reason}. Point the project at local data with "
        f"LANDMARK_DATA=/path/to/landmark_images (a folder with train/ and test/, or its .zip), "
        f"or pass data_dir=... / --data-dir, or {fetch}."
    )


class _BrokenTransfer(Exception):
    """The connection dropped mid-download; what arrived is kept in the ``.part`` file for a resume."""


class _WriteFailed(Exception):
    """Writing the download failed (a full disk): not retried, unlike a dropped connection."""


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-199/1000"`` -> ``(100, 1000)``; unknown parts are ``None``."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = span.partition("-")[0]
    return (int(start) if start.strip().isdigit() else None), (int(total) if total.strip().isdigit() else None)


def _download_once(url: str, part: Path, timeout: float, chunk_size: int, desc: str) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "landmark-tagger"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked past the end: the partial file is complete (the zip check decides)
            return
        raise DataNotFoundError(_no_data_message(f"download of {url} failed (HTTP {exc.code} {exc.reason})", url)
                                ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        kept = f"; {have} bytes kept in {part}, run again to resume" if have else ""
        raise DataNotFoundError(_no_data_message(f"cannot reach {url} ({reason}){kept}", url)) from None
    with response:
        start, total = _parse_content_range(response.headers.get("Content-Range"))
        length = response.headers.get("Content-Length")
        if have and (response.status != 206 or start != have):
            have = 0  # the server ignored the Range header (or answered another range): start over
        if total is None and length is not None:
            total = int(length) + have
        try:
            with open(part, "ab" if have else "wb") as fh, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc
            ) as bar:
                while True:
                    chunk = response.read(chunk_size)
                    if not chunk:
                        break
                    try:
                        fh.write(chunk)
                    except OSError as exc:  # our disk, not the network: retrying cannot help
                        raise _WriteFailed(exc) from None
                    bar.update(len(chunk))
        except _WriteFailed as failed:
            exc = failed.args[0]
            kept = part.stat().st_size if part.exists() else 0
            raise OutputError(exc.errno, f"{exc.strerror or exc} ({kept} bytes kept; free some space and run again "
                                         f"to resume)", str(part)) from None
        except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, reset, timeout
            raise _BrokenTransfer(f"broke off after {part.stat().st_size} bytes ({type(exc).__name__})") from None
    got = part.stat().st_size
    if total is not None and got < total:
        raise _BrokenTransfer(f"stopped at {got} of {total} bytes")


def download_file(url: str, dest: str | os.PathLike, timeout: float = 30.0, chunk_size: int = 1 << 20,
                  retries: int = 3, retry_wait: float = 1.0) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar, resuming from ``dest + '.part'`` when one is there.

    A dropped connection is resumed (HTTP Range) up to ``retries`` times; a server that ignores Range restarts
    from zero. The file only gets its final name once complete; the ``.part`` file survives a failure so the
    next call resumes. Raises :class:`DataNotFoundError` (one line) when the network or server fails.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _download_once(url, part, timeout, chunk_size, desc=f"Downloading {dest.name}")
            break
        except _BrokenTransfer as exc:
            if attempt >= retries:
                raise DataNotFoundError(_no_data_message(
                    f"download of {url} {exc}; the partial file {part} is kept, run again to resume", url)) from None
            log.warning("Download of %s %s; resuming (retry %d of %d)", url, exc, attempt + 1, retries)
            time.sleep(retry_wait * (attempt + 1))
    part.replace(dest)
    return dest


def verify_zip(path: str | os.PathLike) -> None:
    """Raise :class:`DataNotFoundError` (one line) unless the zip opens and every member's CRC checks."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            with tqdm(total=sum(m.file_size for m in members), unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"Checking {path.name}") as bar:
                for member in members:
                    try:
                        with zf.open(member) as fh:  # reading to the end checks the member's CRC
                            while chunk := fh.read(1 << 20):
                                bar.update(len(chunk))
                    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                            NotImplementedError) as exc:
                        reason = "fails its CRC check" if "CRC" in str(exc) else f"cannot be read ({exc})"
                        raise DataNotFoundError(
                            f"{path}: member {member.filename!r} {' '.join(reason.split())} (corrupt zip)") from None
    except DataNotFoundError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DataNotFoundError(f"{path}: not a valid zip file ({' '.join(str(exc).split())})") from None


def extract_zip(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Verify ``path`` then extract it so that ``dest`` holds ``train/`` and ``test/``.

    Extraction goes to a temporary folder beside ``dest`` that is renamed into place only when complete, so an
    interrupted or failed extraction never leaves a half data set at ``dest``.
    """
    path, dest = Path(path), Path(dest)
    verify_zip(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    except OSError as exc:
        raise OutputError(exc.errno, exc.strerror or str(exc), str(dest)) from None
    try:
        tmp_resolved = tmp.resolve()
        with zipfile.ZipFile(path) as zf:
            for member in tqdm(zf.infolist(), desc=f"Extracting {path.name}", unit="file"):
                if member.filename.split("/")[0] == "__MACOSX":  # macOS resource forks, not photos
                    continue
                if not (tmp_resolved / member.filename).resolve().is_relative_to(tmp_resolved):
                    raise DataNotFoundError(f"{path}: member {member.filename!r} escapes the target folder")
                zf.extract(member, tmp)
        root = find_dataset_root(tmp)
        if root is None:
            raise DataNotFoundError(f"{path}: the zip has no train/ and test/ folders (the course layout)")
        if dest.exists():
            shutil.rmtree(dest)
        root.replace(dest)
    except OSError as exc:  # a full disk or a read-only folder: an OSError, so the good zip is kept for a rerun
        raise OutputError(exc.errno, f"{exc.strerror or exc} (extracting {path.name}; nothing was left "
                                     f"half-extracted, free some space and run again)", str(dest)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _zip_stamp(zip_path: Path) -> dict:
    st = zip_path.stat()
    return {"zip": str(zip_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _from_zip(zip_path: Path) -> Path:
    """A local zip (``LANDMARK_DATA`` or ``data_dir``), extracted once under ``data_home()/extracted``.

    The extraction remembers which zip it came from (path, size, mtime) and is redone when the zip changes.
    The user's zip is never modified or deleted, even when it is corrupt.
    """
    tag = hashlib.sha1(str(zip_path.resolve()).encode()).hexdigest()[:8]
    dest = data_home() / "extracted" / f"{zip_path.stem}-{tag}"
    marker = dest / ZIP_SOURCE_MARKER
    stamp = _zip_stamp(zip_path)
    try:
        if _has_layout(dest) and json.loads(marker.read_text()) == stamp:
            return dest
    except (OSError, ValueError):
        pass
    extract_zip(zip_path, dest)
    atomic_write_json(marker, stamp)
    return dest


def resolve_data_dir(data_dir: str | os.PathLike | None = None, download: bool = True,
                     url: str | None = None) -> Path:
    """The data set's root folder (holding ``train/`` and ``test/``).

    Chosen in order by ``data_dir``, the ``LANDMARK_DATA`` environment variable (each a folder or a local zip
    in the course layout), or the default location ``data_home()/landmark_images``, downloading the course zip
    from ``data_url(url)`` there when it is missing. A second call finds the data and does nothing.
    """
    for source, value in (("data_dir", data_dir), (DATA_ENV_VAR, os.environ.get(DATA_ENV_VAR) or None)):
        if value is None:
            continue
        candidate = Path(value).expanduser().absolute()  # absolute: loaders keep working after a chdir
        if candidate.is_file() and (candidate.suffix.lower() == ".zip" or zipfile.is_zipfile(candidate)):
            return _from_zip(candidate)
        root = find_dataset_root(candidate)
        if root is None:
            what = "does not exist" if not candidate.exists() else "is not a landmark data set"
            raise DataNotFoundError(
                f"{candidate} (from {source}) {what}: it must be a folder with train/ and test/ class folders "
                f"like train/00.Haleakala_National_Park, or a .zip of one"
            )
        return root
    dest = default_data_dir()
    root = find_dataset_root(dest)
    if root is not None:
        return root
    if dest.is_dir() and any(dest.iterdir()):  # someone else's folder: never overwrite it
        raise DataNotFoundError(
            f"{dest} exists but has no train/ and test/ class folders; move it away so the course data can be "
            f"downloaded there, or set LANDMARK_DATA to your data"
        )
    if not download:
        raise DataNotFoundError(_no_data_message(f"nothing at {dest}", url))
    url = data_url(url)
    zip_path = dest.with_name(dest.name + ".zip")
    if not zip_path.exists():
        download_file(url, zip_path)
    try:
        return extract_zip(zip_path, dest)
    except DataNotFoundError as exc:
        zip_path.unlink(missing_ok=True)  # a corrupt download is useless; the next run fetches it afresh
        raise DataNotFoundError(f"{exc}; the downloaded file was removed, run again to download it afresh, or "
                                f"set LANDMARK_DATA to a local copy of the data") from None
