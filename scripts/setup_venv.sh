#!/usr/bin/env bash
# Create .venv (once) and install the given requirements file into it at the exact versions of requirements.lock,
# then the project itself, editable (`landmark-tagger` and `python -m src` from any folder run this checkout's src/);
# re-running only installs when a requirements file, the lock or pyproject.toml changed.
# Usage: scripts/setup_venv.sh requirements.txt|requirements-dev.txt
# A CPU-only machine can take PyTorch's CPU build (no CUDA libraries, about 4 GB less) where its index is
# reachable: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup_venv.sh ... (docs/development.md)
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "Creating the virtual environment .venv with $("$PYTHON" --version 2>&1) ..."
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$req")"
quiet=""  # pip's progress bars flood a log: plain lines when the output is not a terminal
[ -t 1 ] || quiet="--progress-bar off"
if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-cluster.txt -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
    echo "Installing $req into .venv at the versions pinned in requirements.lock:"
    grep -vE '^\s*(#|-r|$)' "$req" | sed 's/^/  /'
    if [ "$req" != requirements.txt ]; then
        echo "  and requirements.txt:"
        grep -vE '^\s*(#|-r|$)' requirements.txt | sed 's/^/    /'
    fi
    if [ "$(uname -s)" = Linux ] && [ -z "${PIP_EXTRA_INDEX_URL:-}${PIP_INDEX_URL:-}" ]; then
        echo "The first time this takes a while: .venv fills about 6.4 GB, 4.1 GB of it the CUDA libraries torch"
        echo "brings on Linux (used with an NVIDIA GPU; a CPU-only machine can skip them: docs/development.md)."
    fi
    .venv/bin/python -m pip install $quiet --upgrade pip
    .venv/bin/python -m pip install $quiet -r "$req" -c requirements.lock
    touch "$stamp"
    echo "Installed $req into .venv."
fi
# The project itself, editable: its console script `landmark-tagger` in .venv/bin, and `import src` from anywhere
# is this folder's src/. Done again when pyproject.toml changed or the install points at another folder.
project_stamp=".venv/.installed-project"
here="$(pwd -P)"
if [ ! -f "$project_stamp" ] || [ pyproject.toml -nt "$project_stamp" ] || [ "$(cat "$project_stamp")" != "$here" ] \
        || [ ! -x .venv/bin/landmark-tagger ]; then
    echo "Installing the project into .venv (editable: landmark-tagger runs $here/src) ..."
    # the venv's own setuptools builds it when recent enough (no download), else pip fetches one
    isolation="--no-build-isolation"
    .venv/bin/python -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 69)' \
        2>/dev/null || isolation=""
    .venv/bin/python -m pip install -q --no-deps $isolation -e .  # quiet: a few lines of its own say enough
    echo "$here" > "$project_stamp"
fi
