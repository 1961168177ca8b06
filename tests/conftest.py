"""Shared fixtures: small real data sets of generated photos, and the shared landmark photos when present."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "landmarks13"

# Each class gets its own colour pattern so that a tiny model can actually learn to tell them apart.
CLASS_COLOURS = [(200, 40, 40), (40, 180, 60), (50, 70, 210), (220, 200, 40), (160, 60, 200), (40, 200, 200)]
FORMATS = [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")]


def make_photo(path: Path, label: int, index: int, size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    """Write a small photo of class ``label``: a coloured background with a class-specific stripe, plus noise."""
    rng = np.random.default_rng(1000 * label + index)
    w, h = size
    base = np.array(CLASS_COLOURS[label % len(CLASS_COLOURS)], dtype=np.float64)
    img = np.tile(base, (h, w, 1)) + rng.normal(0, 25, (h, w, 3))
    if label % 2:
        img[:, : w // 3] = 255 - base
    else:
        img[: h // 3] = 255 - base
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, format=fmt or "JPEG")
    return path


def make_dataset(root: Path, n_classes: int = 3, n_train: int = 10, n_test: int = 4,
                 size: tuple[int, int] = (64, 48)) -> Path:
    """A course-layout data set (``train/NN.Name``, ``test/NN.Name``) of JPEG/PNG/WEBP photos; returns ``root``."""
    for split, n in (("train", n_train), ("test", n_test)):
        for label in range(n_classes):
            folder = root / split / f"{label:02d}.Landmark_{chr(65 + label)}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                fmt, ext = FORMATS[i % len(FORMATS)]
                make_photo(folder / f"img_{i:03d}{ext}", label, i + (0 if split == "train" else 500), size, fmt)
    return root


def refused_url(path: str = "/landmark_images.zip") -> str:
    """An http URL on 127.0.0.1 whose port was free a moment ago, so connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch) -> Path:
    """3 classes x (10 train, 4 test) generated photos; caches go to tmp, not the user's home."""
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "cache"))
    return make_dataset(tmp_path / "landmark_images")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data/landmarks13`` (13 real landmarks); the test skips where it is absent (a user's clone)."""
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip(f"shared landmark photos not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test reads the user's LANDMARK_DATA or writes caches into their home folder."""
    monkeypatch.delenv("LANDMARK_DATA", raising=False)
    if "LANDMARK_CACHE" not in os.environ:
        monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path_factory.getbasetemp() / "landmark_cache"))
    monkeypatch.setenv("LANDMARK_DEVICE", os.environ.get("LANDMARK_DEVICE", "cpu"))
    # Exports calibrate "no known landmark" only on photos a test gives them, never on ../shared by surprise.
    monkeypatch.setenv("LANDMARK_NEGATIVES", "none")
    # Downloads and extracted zips go to a tmp folder, never the project's data/, and the "course URL" is a local
    # port nobody listens on: a test that forgets to give data fails at once instead of fetching 1 GB.
    monkeypatch.setenv("LANDMARK_DATA_HOME", str(tmp_path_factory.getbasetemp() / "landmark_data_home"))
    monkeypatch.setenv("LANDMARK_DATA_URL", refused_url())
