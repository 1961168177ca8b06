"""The code is lint clean: ``ruff check`` (rules in pyproject.toml) over src/, tests/, benchmarks/ and scripts/."""
from __future__ import annotations

import subprocess
import sys

from src.helpers import PROJECT_ROOT

LINTED = ["src", "tests", "benchmarks", "scripts"]


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           *LINTED], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    if "No module named ruff" in proc.stderr:
        raise AssertionError("ruff is not installed: pip install -r requirements-dev.txt")
    assert proc.returncode == 0, f"ruff check {' '.join(LINTED)}:\n{proc.stdout}{proc.stderr}"
