#!/usr/bin/env bash
# Set up .venv with the test tooling and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
