"""Small shared utilities: device choice, seeding, atomic file writes, quiet TorchScript."""
from __future__ import annotations

import contextlib
import hashlib
import errno
import glob
import io
import json
import os
import random
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the file helpers here serve processes that never run a model (the cluster's
# decoding tasks, the metadata writer), and importing torch costs them seconds and half a gigabyte

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Exported models and default training outputs; LANDMARK_CHECKPOINTS moves them (the notebook tests use it).
CHECKPOINTS_DIR = Path(os.environ.get("LANDMARK_CHECKPOINTS") or PROJECT_ROOT / "checkpoints")


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA, then Apple MPS, then CPU.

    The environment variable ``LANDMARK_DEVICE`` (e.g. ``cpu``) overrides the automatic choice.
    """
    import torch  # noqa: PLC0415 - see the imports
    if device is not None:
        return torch.device(device)
    env = os.environ.get("LANDMARK_DEVICE")
    if env:
        return torch.device(env)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 42) -> None:
    """Seed python, numpy and torch (all devices) in one call."""
    import torch  # noqa: PLC0415 - see the imports
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it; done once, at import, before any thread starts
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class OutputError(OSError):
    """An output file could not be written (read-only folder, disk full, ...): one line naming the file.

    Subclasses ``OSError`` and keeps its ``errno``; ``filename`` is the file the user asked for, not the
    temporary file the failure happened on.
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _make_dir(folder: Path, target: Path) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``; failures become :class:`OutputError` naming ``target``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder should be: say so, not "File exists"
        raise OutputError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target)) from None
    except OSError as exc:
        raise OutputError(exc.errno, exc.strerror or str(exc), str(target)) from None


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it (a probe, removed at once).

    Commands call it before their work, so a read-only, full or mistyped output folder fails at once with one
    line (:class:`OutputError`), not after an hour of training.
    """
    folder = Path(folder)
    _make_dir(folder, folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
    except OSError as exc:
        raise OutputError(exc.errno, exc.strerror or str(exc), str(folder)) from None
    os.close(fd)
    os.unlink(probe)
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash at any instant leaves either the old file or the new one, never half a file. The new file gets the
    old one's permissions, or the usual ones for a new file (``0o666`` less the umask), not ``mkstemp``'s private
    ``0o600``. A file system error (read-only folder, disk full) raises :class:`OutputError` naming ``path``;
    the old file is then left exactly as it was.
    """
    path = Path(path)
    _make_dir(path.parent, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(exc.errno, exc.strerror or str(exc), str(path)) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
            os.chmod(tmp_path, mode)
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        remove_stale_temporaries(path)
    except OutputError:
        raise
    except OSError as exc:  # writing the temporary file failed (disk full, file size limit, ...)
        if exc.filename is not None and str(exc.filename) != str(tmp_path):
            raise  # not the output's own failure (a file read while writing, say): leave it as it is
        raise OutputError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


STALE_TEMPORARY_S = 3600.0


def remove_stale_temporaries(path: str | os.PathLike, older_than_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Remove the temporary files that writers of ``path`` killed mid-write (SIGKILL, power loss) left beside it:
    ``.NAME.PID.*.tmp`` of a process no longer running, untouched for ``older_than_s``. The age guard keeps a live
    writer on another machine (a shared folder, where its PID means nothing here) safe. Returns what was removed."""
    path = Path(path)
    removed = []
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        try:
            if now - tmp.stat().st_mtime >= older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to remove: leave it
            continue
    return removed


# Our writers' temporaries beside a file NAME: atomic_path's ``.NAME.PID.XXXXXXXX.tmp`` (mkstemp's 8 characters),
# src.metadata's ``.NAME[.PID].hhhhhhhh.tmp.EXT`` (EXT: NAME's own ending, which ExifTool picks the format by) and
# ExifTool's own ``<that>_exiftool_tmp`` when it was killed rewriting one.
_TEMPORARY = re.compile(r"\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp(?P<ext>\.[^.]+?)?(?:_exiftool_tmp)?")


def is_our_temporary(filename: str) -> tuple[bool, int | None]:
    """``(True, PID or None)`` when ``filename`` is named like a temporary our atomic writers make."""
    match = _TEMPORARY.fullmatch(filename)
    if match is None:
        return False, None
    pid = int(match["pid"]) if match["pid"] else None
    if match["ext"]:  # metadata's: the temporary keeps its target's ending
        return match["name"].lower().endswith(match["ext"].lower()), pid
    return pid is not None, pid  # atomic_path's always carry the PID


def sweep_stale_temporaries(folder: str | os.PathLike, older_than_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Remove, under ``folder`` (recursively, hidden folders skipped), the temporaries that our writers killed
    mid-write (SIGKILL, power loss) left beside photos, sidecars and CSVs: only files named like ours (see
    :func:`is_our_temporary`), untouched for ``older_than_s`` and, when the name has one, of a PID no longer
    running. ``tag`` calls it once per run. Returns what was removed."""
    removed = []
    now = time.time()
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            ours, pid = is_our_temporary(name) if name.startswith(".") else (False, None)
            if not ours or (pid is not None and _process_alive(pid)):
                continue
            path = Path(root, name)
            try:
                if now - path.lstat().st_mtime >= older_than_s:
                    path.unlink()
                    removed.append(path)
            except OSError:  # gone already, or a read-only folder: left as it is
                continue
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a truncated file behind (temporary file, fsync, rename)."""
    import torch  # noqa: PLC0415 - see the imports

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence TorchScript's deprecation warnings: the course requires TorchScript, users need not see them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        yield


def in_notebook() -> bool:
    """True inside a Jupyter kernel (for live plots), False in scripts and tests."""
    try:
        from IPython import get_ipython  # noqa: PLC0415

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except Exception:  # IPython missing or broken: certainly not a notebook
        return False


def is_quick_mode() -> bool:
    """``LANDMARK_QUICK=1`` runs notebooks on a tiny data set for one epoch (the test suite uses it)."""
    return os.environ.get("LANDMARK_QUICK", "") not in ("", "0", "false", "False")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
