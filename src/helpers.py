"""Small shared utilities: device choice, seeding, atomic file writes, quiet TorchScript."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Exported models and default training outputs; LANDMARK_CHECKPOINTS moves them (the notebook tests use it).
CHECKPOINTS_DIR = Path(os.environ.get("LANDMARK_CHECKPOINTS") or PROJECT_ROOT / "checkpoints")


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA, then Apple MPS, then CPU.

    The environment variable ``LANDMARK_DEVICE`` (e.g. ``cpu``) overrides the automatic choice.
    """
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
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash at any instant leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a truncated file behind (temporary file, fsync, rename)."""
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
