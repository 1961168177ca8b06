"""``pip install .`` gives the package ``src`` with its data file and a ``landmark-tagger`` command equal to
``python -m src``. Built offline from a copy of the sources (no build files left in the checkout)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from src.helpers import PROJECT_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    shutil.copytree(PROJECT_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--wheel-dir", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = out.glob("landmark_tagger-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def test_the_wheel_holds_the_package_and_its_landmark_table(wheel):
    names = set(wheel.namelist())
    assert {"src/__main__.py", "src/train.py", "src/predictor.py", "src/landmarks.json"} <= names
    assert {"src/metadata_exiftool.config", "src/report_assets/leaflet.js"} <= names  # sidecars, report page
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)


def test_the_console_script_is_python_m_src(wheel):
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "[console_scripts]" in text and "landmark-tagger = src.__main__:main" in text
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: torch==2.14.1" in metadata  # the pins of requirements.txt


def test_main_is_what_the_console_script_calls():
    proc = subprocess.run([sys.executable, "-c", "import sys; from src.__main__ import main; sys.exit(main())",
                           "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train" in proc.stdout and "predict" in proc.stdout
