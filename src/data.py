"""The landmark photos: where they are, getting them, checking them, and the data loaders.

A data set is a folder with ``train/NN.Name/*`` and ``test/NN.Name/*`` (the course layout), or a zip of one.
Class names come from the folders; nothing assumes 50 classes.

Environment: ``LANDMARK_DATA`` (a data folder or zip to use), ``LANDMARK_DATA_HOME`` (where downloads and
extracted zips go, default ``PROJECT_ROOT/data``), ``LANDMARK_DATA_URL`` (the course zip's URL),
``LANDMARK_CACHE`` (where derived data goes when the data folder is read-only, or always when set).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

from .distributed import cpu_share, distributed_sampler, is_distributed
from .helpers import PROJECT_ROOT, OutputError, atomic_write_json
from .images import ImageLoadError, is_candidate_image, limit_aspect_ratio, open_image

log = logging.getLogger(__name__)

COURSE_DATA_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "landmark_images"  # when LANDMARK_DATA_HOME is not set
DATA_ENV_VAR = "LANDMARK_DATA"  # a data folder or zip to use instead of the download
DATA_HOME_ENV_VAR = "LANDMARK_DATA_HOME"  # where downloads and extracted zips go (default PROJECT_ROOT/data)
DATA_URL_ENV_VAR = "LANDMARK_DATA_URL"  # where the course zip is downloaded from (default COURSE_DATA_URL)
CACHE_ENV_VAR = "LANDMARK_CACHE"
CACHE_DIR_NAME = ".landmark_cache"
DEFAULT_IMG_SIZE = 224
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


# --------------------------------------------------------------------------------------------------------------
# Classes, samples, checking the files, the split
# --------------------------------------------------------------------------------------------------------------

def class_display_name(folder_name: str) -> str:
    """``"00.Haleakala_National_Park"`` -> ``"Haleakala National Park"``."""
    name = folder_name
    head, sep, tail = name.partition(".")
    if sep and head.isdigit():
        name = tail
    return name.replace("_", " ").strip()


def list_classes(split_dir: str | os.PathLike) -> list[str]:
    """Class folder names of one split, sorted (``00.`` prefixes make that the course's order)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataNotFoundError(f"{split_dir}: no such folder")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataNotFoundError(f"{split_dir}: no class folders inside")
    return classes


def scan_split(split_dir: str | os.PathLike, class_names: Sequence[str] | None = None) -> list[tuple[Path, int]]:
    """``(path, class index)`` for every candidate photo of a split, in a fixed order (class, then file name).

    Photos are found by content later, not by extension; hidden files and junk like ``.DS_Store`` are ignored.
    """
    split_dir = Path(split_dir)
    found = list_classes(split_dir)
    if class_names is None:
        class_names = found
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise DataNotFoundError(f"{split_dir}: class folders {unknown} are not among the training classes")
    samples = []
    for name in found:
        folder = split_dir / name
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for fname in sorted(files):
                if is_candidate_image(fname):
                    samples.append((Path(root) / fname, index[name]))
    samples.sort(key=lambda s: (s[1], str(s[0].relative_to(split_dir))))
    return samples


def cache_dir_for(data_root: str | os.PathLike) -> Path:
    """Where derived data (file checks, mean/std, features) for a data set is cached.

    Next to the data when that folder is writable; otherwise (read-only data such as ``../shared``) under
    ``$LANDMARK_CACHE`` or ``~/.cache/landmark_tagger``, in a folder named after the data set's path.
    """
    data_root = Path(data_root).resolve()
    override = os.environ.get(CACHE_ENV_VAR)
    if not override:
        local = data_root / CACHE_DIR_NAME
        try:
            # Mode bits, not os.access: root may write anywhere, but a folder marked read-only stays untouched.
            if not data_root.stat().st_mode & stat.S_IWUSR:
                raise PermissionError(f"{data_root} is marked read-only")
            local.mkdir(exist_ok=True)
            probe = local / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
            return local
        except OSError:
            pass
    base = Path(override) if override else Path.home() / ".cache" / "landmark_tagger"
    tag = hashlib.sha1(str(data_root).encode()).hexdigest()[:12]
    out = base / f"{data_root.name}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def fingerprint(paths: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """A key that changes when a file is added, removed, renamed or rewritten (name, size, mtime)."""
    h = hashlib.sha1()
    for p in sorted(map(str, paths)):
        st = os.stat(p)
        rel = os.path.relpath(p, root) if root else p
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _check_one(path: Path) -> str | None:
    try:
        open_image(path, draft_size=64)
        return None
    except ImageLoadError as exc:
        return exc.reason


@dataclass
class CheckResult:
    good: list[tuple[Path, int]]
    bad: list[tuple[Path, str]] = field(default_factory=list)


def check_images(samples: Sequence[tuple[Path, int]], cache_file: Path | None = None,
                 desc: str = "Checking photos") -> CheckResult:
    """Decode every file once; report (log, one line each) and leave out the ones that are not usable photos.

    Results are cached per file (keyed by size and mtime) so a second run checks only what changed.
    """
    cache: dict[str, list] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    keys, todo = [], []
    for path, _ in samples:
        try:
            st = path.stat()
            key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:  # a broken symlink, say: open_image reports it like any other unreadable file
            key = f"{path.absolute()}|unreadable"
        keys.append(key)
        if key not in cache:
            todo.append((key, path))
    if todo:
        workers = min(8, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(lambda kp: _check_one(kp[1]), todo), total=len(todo), desc=desc,
                                unit="img", disable=len(todo) < 200))
        for (key, _), reason in zip(todo, results):
            cache[key] = [reason]
        if cache_file is not None:
            try:
                atomic_write_json(cache_file, {k: cache[k] for k in keys})
            except OSError as exc:
                log.debug("could not write %s: %s", cache_file, exc)
    result = CheckResult(good=[])
    for (path, label), key in zip(samples, keys):
        reason = cache[key][0]
        if reason is None:
            result.good.append((path, label))
        else:
            result.bad.append((path, reason))
            log.warning("Skipping %s: %s", path, reason)
    return result


def _stable_order_key(path: Path, seed: int) -> str:
    # Folder and file name (not the absolute path) and the seed, through sha1 (not Python's salted hash()):
    # the same split on every run and machine, wherever the data set lives.
    name = f"{path.parent.name}/{path.name}"
    return hashlib.sha1(f"{seed}:{name}".encode()).hexdigest() + name


def stratified_split(samples: Sequence[tuple[Path, int]], valid_size: float = 0.2,
                     seed: int = 42) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Split per class into train/valid, the same on every run and machine (hash order, not an RNG)."""
    if not 0 <= valid_size < 1:
        raise ValueError(f"valid_size must be in [0, 1), got {valid_size}")
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, valid = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: _stable_order_key(s[0], seed))
        n_valid = int(round(len(items) * valid_size))
        if valid_size > 0 and len(items) > 1:
            n_valid = min(max(n_valid, 1), len(items) - 1)
        valid.extend(items[:n_valid])
        train.extend(items[n_valid:])
    key = lambda s: (s[1], s[0].name, str(s[0]))  # noqa: E731
    return sorted(train, key=key), sorted(valid, key=key)


def limit_samples(samples: Sequence[tuple[Path, int]], limit: int) -> list[tuple[Path, int]]:
    """At most ``limit`` samples, taken round-robin over the classes so every class stays represented.

    ``limit`` <= 0 (or ``None``) keeps everything.
    """
    if limit is None or limit <= 0 or limit >= len(samples):
        return list(samples)
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    out, i = [], 0
    while len(out) < limit:
        for label in sorted(by_class):
            if i < len(by_class[label]) and len(out) < limit:
                out.append(by_class[label][i])
        i += 1
    return sorted(out, key=lambda s: (s[1], str(s[0])))


@dataclass
class LandmarkData:
    """Everything known about one data set: root, classes, checked samples per split, bad files."""
    root: Path
    class_names: list[str]
    train: list[tuple[Path, int]]
    valid: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    bad_files: list[tuple[Path, str]]
    cache_dir: Path

    @property
    def display_names(self) -> list[str]:
        return [class_display_name(c) for c in self.class_names]


def load_landmark_data(data_dir: str | os.PathLike | None = None, valid_size: float = 0.2, seed: int = 42,
                       download: bool = True, url: str | None = None) -> LandmarkData:
    """Find the data, list and check every photo, and split train/valid deterministically.

    Files that cannot be decoded are logged (path and reason, one line each), left out, and listed in
    ``bad_files``; junk such as ``.DS_Store`` is ignored.
    """
    root = resolve_data_dir(data_dir, download=download, url=url)
    class_names = list_classes(root / "train")
    cache_dir = cache_dir_for(root)
    train_all = check_images(scan_split(root / "train", class_names), cache_dir / "checked_train.json",
                             desc="Checking train photos")
    test = check_images(scan_split(root / "test", class_names), cache_dir / "checked_test.json",
                        desc="Checking test photos")
    train, valid = stratified_split(train_all.good, valid_size, seed)
    return LandmarkData(root=root, class_names=class_names, train=train, valid=valid, test=test.good,
                        bad_files=train_all.bad + test.bad, cache_dir=cache_dir)


# --------------------------------------------------------------------------------------------------------------
# Normalisation statistics
# --------------------------------------------------------------------------------------------------------------

MEAN_STD_VERSION = 1  # bump when the computation changes, so old cached values are not reused
MEAN_STD_CACHE_ENTRIES = 8


def downscaled_pixels(path: str | os.PathLike, size: int = 64) -> np.ndarray:
    """The photo squeezed to ``size`` x ``size`` RGB, as float64 in [0, 1], shape ``[size*size, 3]``.

    Mean/std only need colour statistics, so a small image gives the same answer far faster than full size.
    """
    img = open_image(path, draft_size=size)
    img = img.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0


def _channel_sums(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    arr = downscaled_pixels(path, size)
    return arr.sum(0), (arr**2).sum(0), arr.shape[0]


def compute_mean_and_std(data_dir: str | os.PathLike | None = None, size: int = 64,
                         samples: Sequence[tuple[Path, int]] | None = None, cache: bool = True,
                         valid_size: float = 0.2, seed: int = 42) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training photos, on images downscaled to ``size`` x ``size``.

    By default the photos of the training split only: ``train/`` minus the validation photos (split with
    ``valid_size`` and ``seed`` as :func:`get_data_loaders` does), never ``test/``. ``samples`` overrides that.
    Cached in the data set's cache folder, keyed to those files (names, sizes, times), so a changed data set
    recomputes.
    """
    root = resolve_data_dir(data_dir)
    if samples is None:
        samples = load_landmark_data(root, valid_size=valid_size, seed=seed).train
    paths = [Path(p) for p, _ in samples]
    if not paths:
        raise DataNotFoundError(f"{root}: no usable training photos to compute mean/std from")
    key = f"v{MEAN_STD_VERSION}-{size}-{fingerprint(paths, root)}"
    cache_file = cache_dir_for(root) / "mean_std.json"
    entries: dict = {}
    if cache and cache_file.exists():
        try:
            entries = json.loads(cache_file.read_text()).get("entries", {})
            hit = entries.get(key)
            if hit is not None:
                return [float(x) for x in hit["mean"]], [float(x) for x in hit["std"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            entries = {}
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    failed = []
    with ThreadPoolExecutor(_resolve_workers(-1) * 2) as pool:
        futures = pool.map(lambda p: _safe_channel_sums(p, size), paths)
        for result in tqdm(futures, total=len(paths), desc="Computing mean/std", unit="img",
                           disable=len(paths) < 200):
            if isinstance(result, ImageLoadError):
                failed.append(result)
                continue
            s, sq, n = result
            total += s
            total_sq += sq
            count += n
    for exc in failed:  # checked files do not fail here, unless they changed since; never silently
        log.warning("Left out of mean/std: %s", exc)
    if count == 0:
        raise DataNotFoundError(f"{root}: none of the {len(paths)} training photos could be read for mean/std")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    mean_l, std_l = [float(x) for x in mean], [float(x) for x in std]
    if cache and not failed:
        entries = dict(list(entries.items())[-(MEAN_STD_CACHE_ENTRIES - 1):])
        entries[key] = {"mean": mean_l, "std": std_l, "n_images": len(paths), "size": size}
        try:
            atomic_write_json(cache_file, {"entries": entries})
        except OSError as exc:
            log.debug("could not write %s: %s", cache_file, exc)
    return mean_l, std_l


def _safe_channel_sums(path: Path, size: int):
    try:
        return _channel_sums(path, size)
    except ImageLoadError as exc:
        return exc


# --------------------------------------------------------------------------------------------------------------
# Transforms, data set, loaders
# --------------------------------------------------------------------------------------------------------------

MAX_ASPECT = 8  # longer side at most this many times the resize target (real photos are far below)


def resize_size_for(img_size: int) -> int:
    """The shorter-side resize before a center crop of ``img_size`` (256 for 224, as in ImageNet practice)."""
    return int(math.floor(img_size * 256 / 224))


class LimitAspectRatio:
    """Transform: an extreme strip (a 4000x3 panorama slice, a 50000x1 line) becomes its central part of at most
    :data:`src.images.MAX_ASPECT_RATIO` to 1, all a center crop can see; otherwise ``Resize(max_size=...)`` would
    shrink its shorter side to zero pixels (an error), and without ``max_size`` it would need gigabytes."""

    def __call__(self, img):
        return limit_aspect_ratio(img) if isinstance(img, Image.Image) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def get_transforms(split: str, img_size: int = DEFAULT_IMG_SIZE, mean: Sequence[float] = (0.5, 0.5, 0.5),
                   std: Sequence[float] = (0.5, 0.5, 0.5), augment: str = "standard") -> transforms.Compose:
    """Training: random resized crop, flip and mild colour changes; valid/test: resize + center crop.

    ``augment``: ``"standard"`` (above), ``"strong"`` (adds TrivialAugment and random erasing) or
    ``"course"`` (Resize(256) + RandomCrop(224) + flip, as the course notebooks do).
    """
    resize = resize_size_for(img_size)
    # max_size: a 4000x2 panorama strip would otherwise become 512000x256 pixels before the crop.
    resize_op = transforms.Resize(resize, max_size=MAX_ASPECT * resize, antialias=True)
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    strip = LimitAspectRatio()
    if split != "train":
        return transforms.Compose([strip, resize_op, transforms.CenterCrop(img_size), *normalize])
    if augment == "course":
        return transforms.Compose([strip, resize_op, transforms.RandomCrop(img_size, pad_if_needed=True),
                                   transforms.RandomHorizontalFlip(), *normalize])
    ops = [strip, transforms.RandomResizedCrop(img_size, scale=(0.25, 1.0), antialias=True),
           transforms.RandomHorizontalFlip()]
    if augment == "strong":
        ops.append(transforms.TrivialAugmentWide())
        return transforms.Compose([*ops, *normalize, transforms.RandomErasing(p=0.25)])
    if augment != "standard":
        raise ValueError(f"augment must be one of 'standard', 'strong', 'course'; got {augment!r}")
    ops.append(transforms.ColorJitter(0.2, 0.2, 0.2))
    return transforms.Compose([*ops, *normalize])


class LandmarkDataset(Dataset):
    """Photos and labels; decodes with :func:`src.images.open_image` (any format, EXIF orientation applied).

    ``cache_images=True`` decodes each photo once, resized so its shorter side is ``cache_size``, and keeps it in
    memory as uint8: later epochs skip decoding entirely (what a GPU run needs to stay fed).
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform=None, class_names: Sequence[str] = (),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 cache_images: bool = False, cache_size: int = 256):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.class_names = list(class_names)
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.cache_size = cache_size
        self.bad_files: dict[str, str] = {}  # path -> reason, for files that failed after the up-front check
        self._cache: list[np.ndarray | None] | None = [None] * len(self.samples) if cache_images else None

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        if self._cache is None:
            return open_image(path, draft_size=self.cache_size)
        arr = self._cache[index]
        if arr is None:
            img = open_image(path, draft_size=self.cache_size)
            scale = self.cache_size / min(img.size)
            if scale < 1:
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.BILINEAR, reducing_gap=2.0)
            arr = np.asarray(img, dtype=np.uint8)
            self._cache[index] = arr
        return Image.fromarray(arr)

    def __getitem__(self, index: int):
        # A photo that fails now (changed or removed since it was checked) is reported and replaced by the next
        # readable one, so an epoch never dies half-way.
        for step in range(len(self.samples)):
            i = (index + step) % len(self.samples)
            try:
                img = self.load_image(i)
            except ImageLoadError as exc:
                if exc.path not in self.bad_files:
                    log.warning("Skipping %s (replaced by another photo)", exc)
                self.bad_files[exc.path] = exc.reason
                continue
            label = self.samples[i][1]
            return (self.transform(img) if self.transform is not None else img), label
        raise ImageLoadError(self.samples[index][0], "no photo of this data set can be read")


def _resolve_workers(num_workers: int | None) -> int:
    """``-1``/``None``: one worker per CPU this process may use (a container's limit, not the host's count),
    shared among the training processes of one machine in a torchrun job."""
    if num_workers is None or num_workers < 0:
        try:
            return cpu_share(len(os.sched_getaffinity(0)))
        except AttributeError:  # macOS, Windows
            return cpu_share(os.cpu_count() or 1)
    return num_workers


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 42,
                sampler=None, drop_last: bool = False, distributed: bool | None = None) -> DataLoader:
    """A DataLoader with pinned memory on CUDA, persistent workers, and a seeded shuffle.

    ``distributed`` (default: whether this is a torchrun job): each process gets its share of the data, through
    :func:`src.distributed.distributed_sampler` (training: ``DistributedSampler``, call ``set_epoch`` every
    epoch; evaluation: an exact, unpadded shard). ``batch_size`` is then per process.
    """
    if sampler is None and (is_distributed() if distributed is None else distributed):
        sampler = distributed_sampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
        generator=generator, drop_last=drop_last,
    )


def get_data_loaders(batch_size: int = 32, valid_size: float = 0.2, num_workers: int = -1, limit: int = -1,
                     data_dir: str | os.PathLike | None = None, img_size: int = DEFAULT_IMG_SIZE,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None, seed: int = 42,
                     augment: str = "standard", cache_images: bool = False,
                     data: LandmarkData | None = None, distributed: bool | None = None) -> dict[str, DataLoader]:
    """Data loaders ``{"train", "valid", "test"}`` over the landmark photos.

    Images come out as float tensors ``[B, 3, img_size, img_size]`` normalised with the data set's own mean/std
    (computed on the training split unless given). Each loader's ``.dataset`` carries ``class_names``, ``mean``
    and ``std``. ``limit`` > 0 keeps at most that many photos per split (all classes kept), for quick runs.
    The train/valid split is stratified per class and the same on every run and machine.
    In a torchrun job (``distributed``, default: detected) each process loads its share and ``batch_size`` is per
    process (see :func:`make_loader`).
    """
    if data is None:
        data = load_landmark_data(data_dir, valid_size=valid_size, seed=seed)
    if mean is None or std is None:
        mean, std = compute_mean_and_std(data.root, samples=data.train)
    num_workers = _resolve_workers(num_workers)
    loaders = {}
    for split, samples in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        dataset = LandmarkDataset(limit_samples(samples, limit), get_transforms(split, img_size, mean, std, augment),
                                  class_names=data.class_names, mean=mean, std=std, cache_images=cache_images,
                                  cache_size=resize_size_for(img_size))
        loaders[split] = make_loader(dataset, batch_size, shuffle=(split == "train"), num_workers=num_workers,
                                     seed=seed, distributed=distributed)
    return loaders


# --------------------------------------------------------------------------------------------------------------
# Looking at the data
# --------------------------------------------------------------------------------------------------------------

def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize``: back to [0, 1] for display."""
    m = torch.as_tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * s + m).clamp(0, 1)


def visualize_one_batch(data_loaders: dict[str, DataLoader], max_n: int = 5, split: str = "train"):
    """Show up to ``max_n`` un-normalised images of one batch with their landmark names; returns the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting is optional for library users

    loader = data_loaders[split]
    ds = loader.dataset
    images, labels = next(iter(loader))
    images = denormalize(images[:max_n], ds.mean, ds.std)
    n = images.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.4), squeeze=False)
    for ax, img, label in zip(axes[0], images, labels[:max_n]):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(class_display_name(ds.class_names[int(label)]), fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_channel_histograms(data_loaders: dict[str, DataLoader], split: str = "train", bins: int = 64):
    """RGB channel histograms of one batch before and after normalisation; returns the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    loader = data_loaders[split]
    ds = loader.dataset
    images, _ = next(iter(loader))
    raw = denormalize(images, ds.mean, ds.std)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, data, title in ((axes[0], raw, "before normalisation (pixel value in [0, 1])"),
                            (axes[1], images, "after normalisation (data set mean/std)")):
        for c, colour in enumerate(("red", "green", "blue")):
            ax.hist(data[:, c].flatten().numpy(), bins=bins, color=colour, alpha=0.45, label=colour)
        ax.set_title(title, fontsize=10)
        ax.legend()
    fig.tight_layout()
    return fig
